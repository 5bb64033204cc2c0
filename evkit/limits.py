"""Rate and count limits: token buckets and per-address connection accounting.

Pure: the clock is passed in (``time.monotonic`` by default), so the arithmetic is
tested with plain numbers. Not thread-safe; the broadcaster's loop owns them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["AddressLimits", "TokenBucket"]

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; :meth:`take` spends one."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self) -> bool:
        """Spend a token if one is there; False means the caller is over the rate."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class AddressLimits:
    """Open connections per address and new connections per second per address.

    At most ``max_addresses`` addresses are tracked for the rate; idle ones are
    forgotten first, so memory stays bounded whatever the number of peers.
    """

    def __init__(
        self,
        per_address: int,
        new_per_second: float,
        clock: Clock = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        self.per_address = per_address
        self.new_per_second = new_per_second
        self.max_addresses = max_addresses
        self._clock = clock
        self.open: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, address: str) -> str | None:
        """None if a new connection from ``address`` may open, else the reason it may not."""
        if self.open.get(address, 0) >= self.per_address:
            return "too_many_connections_per_ip"
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                # The oldest idle ones: addresses with open connections keep their bucket,
                # and must not shield the idle ones behind them from eviction.
                idle = [key for key in self._buckets if key not in self.open]
                for key in idle[: self.max_addresses // 10 or 1]:
                    del self._buckets[key]
            bucket = self._buckets[address] = TokenBucket(
                self.new_per_second, max(1.0, self.new_per_second), self._clock
            )
        if not bucket.take():
            return "connection_rate"
        return None

    def opened(self, address: str) -> None:
        self.open[address] = self.open.get(address, 0) + 1

    def closed(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)
