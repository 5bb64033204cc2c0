"""evkit.limits with a fake clock: token buckets and per-address connection accounting."""

from __future__ import annotations

import pytest

from evkit.limits import AddressLimits, TokenBucket


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def takes(bucket: TokenBucket, count: int) -> list[bool]:
    return [bucket.take() for _ in range(count)]


# -- TokenBucket ----------------------------------------------------------------------------


def test_bucket_starts_full_and_refuses_past_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=3, clock=FakeClock())
    assert takes(bucket, 5) == [True, True, True, False, False]


def test_bucket_refills_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=3, clock=clock)  # steps exact in binary floats
    takes(bucket, 3)
    clock.advance(0.125)  # half a token
    assert not bucket.take()
    clock.advance(0.125)  # the other half: one token in all
    assert takes(bucket, 2) == [True, False]
    clock.advance(0.625)  # two and a half tokens
    assert takes(bucket, 3) == [True, True, False]


def test_bucket_never_holds_more_than_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst=2, clock=clock)
    clock.advance(3600)
    assert takes(bucket, 3) == [True, True, False]


def test_refused_takes_do_not_spend_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.take()
    for _ in range(100):
        assert not bucket.take()
    clock.advance(1.0)
    assert bucket.take()


def test_fractional_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=0.5, burst=1, clock=clock)
    assert bucket.take()
    clock.advance(1.9)
    assert not bucket.take()
    clock.advance(0.1)
    assert bucket.take()


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (1, 0.5)])
def test_bucket_rejects_nonsense_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0 and burst >= 1"):
        TokenBucket(rate, burst)


# -- AddressLimits ---------------------------------------------------------------------------


def test_open_connections_per_address_are_capped_and_freed() -> None:
    limits = AddressLimits(per_address=2, new_per_second=1000, clock=FakeClock())
    for _ in range(2):
        assert limits.admit("10.0.0.1") is None
        limits.opened("10.0.0.1")
    assert limits.admit("10.0.0.1") == "too_many_connections_per_ip"
    assert limits.admit("10.0.0.2") is None  # another address is not affected
    limits.closed("10.0.0.1")
    assert limits.admit("10.0.0.1") is None
    limits.opened("10.0.0.1")
    limits.closed("10.0.0.1")
    limits.closed("10.0.0.1")
    assert "10.0.0.1" not in limits.open  # nothing left open: the entry is gone


def test_closed_more_often_than_opened_never_goes_negative() -> None:
    limits = AddressLimits(per_address=1, new_per_second=1000, clock=FakeClock())
    limits.closed("10.0.0.1")
    assert limits.open == {}
    assert limits.admit("10.0.0.1") is None


def test_new_connections_per_second_per_address() -> None:
    clock = FakeClock()
    limits = AddressLimits(per_address=100, new_per_second=2, clock=clock)
    assert [limits.admit("10.0.0.1") for _ in range(3)] == [None, None, "connection_rate"]
    assert limits.admit("10.0.0.2") is None
    clock.advance(0.5)
    assert [limits.admit("10.0.0.1") for _ in range(2)] == [None, "connection_rate"]


def test_a_slow_rate_still_admits_one_connection() -> None:
    clock = FakeClock()
    limits = AddressLimits(per_address=100, new_per_second=0.1, clock=clock)
    assert limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") == "connection_rate"
    clock.advance(10)
    assert limits.admit("10.0.0.1") is None


def test_the_open_cap_is_checked_before_spending_a_rate_token() -> None:
    clock = FakeClock()
    limits = AddressLimits(per_address=1, new_per_second=1, clock=clock)
    assert limits.admit("10.0.0.1") is None
    limits.opened("10.0.0.1")
    for _ in range(5):
        assert limits.admit("10.0.0.1") == "too_many_connections_per_ip"
    limits.closed("10.0.0.1")
    clock.advance(1.0)
    assert limits.admit("10.0.0.1") is None


def test_tracked_addresses_stay_bounded_and_open_ones_are_kept() -> None:
    clock = FakeClock()
    limits = AddressLimits(per_address=10, new_per_second=1, clock=clock, max_addresses=100)
    assert limits.admit("busy") is None
    limits.opened("busy")
    for n in range(1000):
        assert limits.admit(f"10.0.{n // 256}.{n % 256}") is None
        assert len(limits._buckets) <= 100
    # The open address kept its bucket (spent), so it is still rate limited.
    assert limits.admit("busy") == "connection_rate"


def test_open_addresses_at_the_front_do_not_stop_eviction() -> None:
    # The oldest entries belong to long-lived connections; idle ones behind them must
    # still be forgotten, or a stream of new addresses grows memory without bound.
    clock = FakeClock()
    limits = AddressLimits(per_address=10, new_per_second=1, clock=clock, max_addresses=10)
    for address in ("open-1", "open-2"):
        assert limits.admit(address) is None
        limits.opened(address)
    for n in range(500):
        assert limits.admit(f"10.1.{n // 256}.{n % 256}") is None
        assert len(limits._buckets) <= 10
    assert {"open-1", "open-2"} <= set(limits._buckets)
