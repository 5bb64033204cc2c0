"""evkit's clients of a broadcaster: reading (:class:`Subscriber`) and writing
(:class:`Forwarder`, made by :func:`connect`), over one reconnect core.

- :mod:`~evkit.client.reconnect`: the connection kept open, backoff with full jitter,
  refused handshakes, the status other threads may read.
- :mod:`~evkit.client.resume`: the resume position (``since`` / ``epoch``), replays
  and gaps: pure.
- :mod:`~evkit.client.subscriber`: :class:`Subscriber`, events to a callback.
- :mod:`~evkit.client.outbox`: events waiting to be published, filled on any thread.
- :mod:`~evkit.client.publisher`: ``publish`` bursts confirmed by ``ping``/``pong``.
- :mod:`~evkit.client.forwarder`: :class:`Forwarder` and :func:`connect`, a bus
  forwarded on evkit's loop thread.
- :mod:`~evkit.client.stats`, :mod:`~evkit.client.deprecation`: the counters'
  snapshot form, renamed keywords.

Every message is built and read through :mod:`evkit.protocol`; evkit's loop is reached
only through :mod:`evkit._loop`. Nothing here imports the server or pandas.
"""

from __future__ import annotations

from evkit.client.forwarder import Forwarder, connect
from evkit.client.subscriber import Subscriber, SubscriberStats

__all__ = ["Forwarder", "Subscriber", "SubscriberStats", "connect"]
