"""The outbox between emitting threads and a publisher (evkit.client.outbox): plain values."""

from __future__ import annotations

import threading

from evkit.bus import Event
from evkit.client.outbox import Outbox


def event(n: int) -> Event:
    return Event("svc.item.done", 0, {"n": n})


def numbers(events: list[Event]) -> list[int]:
    return [e.payload["n"] for e in events]


class Wakes:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, full: bool) -> None:
        self.calls.append(full)


def test_the_sender_is_woken_once_per_take_and_again_for_a_full_batch() -> None:
    wakes = Wakes()
    outbox = Outbox(100, 3, wakes)
    for n in range(4):
        outbox.put(event(n))
    assert wakes.calls == [False, True]  # the first event, then a whole batch
    taken, position = outbox.take(10)
    assert (numbers(taken), position) == ([0, 1, 2, 3], 4)
    outbox.put(event(4))
    assert wakes.calls == [False, True, False]  # taken since: woken again


def test_past_its_size_the_oldest_go_and_are_counted() -> None:
    overflows: list[int] = []
    outbox = Outbox(3, 100, Wakes(), overflows.append)
    for n in range(5):
        outbox.put(event(n))
    taken, position = outbox.take(10)
    assert numbers(taken) == [2, 3, 4]
    assert position == 5  # the dropped ones left too
    assert outbox.counts()["dropped"] == 2
    assert overflows == [1]  # the first drop, then every 10,000th


def test_a_burst_is_in_flight_until_settled() -> None:
    outbox = Outbox(10, 10, Wakes())
    for n in range(4):
        outbox.put(event(n))
    _, position = outbox.take(3)
    assert outbox.counts()["buffered"] == 4  # 1 waiting, 3 in flight
    assert not outbox.confirmed(outbox.appended)
    outbox.settle(position, forwarded=2, rejected=1)
    counts = outbox.counts()
    assert (counts["forwarded"], counts["rejected"], counts["buffered"]) == (2, 1, 1)
    assert outbox.confirmed(3)
    assert not outbox.confirmed(4)


def test_a_requeued_burst_goes_back_first_and_drops_the_oldest_past_the_size() -> None:
    outbox = Outbox(4, 10, Wakes())
    for n in range(4):
        outbox.put(event(n))
    taken, _ = outbox.take(3)
    outbox.put(event(4))
    outbox.put(event(5))
    outbox.requeue(taken)  # room for 1 of the 3: the newest of them stays
    taken, position = outbox.take(10)
    assert numbers(taken) == [2, 3, 4, 5]
    counts = outbox.counts()
    assert (counts["dropped"], counts["buffered"]) == (2, 4)
    outbox.settle(position, forwarded=4, rejected=0)
    assert outbox.confirmed(outbox.appended)


def test_unsendable_events_are_counted() -> None:
    outbox = Outbox(4, 10, Wakes())
    outbox.count_unsendable()
    assert outbox.counts()["unsendable"] == 1


def test_puts_from_many_threads_lose_nothing() -> None:
    outbox = Outbox(100_000, 500, Wakes())

    def put_many(base: int) -> None:
        for n in range(5_000):
            outbox.put(event(base + n))

    threads = [threading.Thread(target=put_many, args=(i * 5_000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken, position = outbox.take(100_000)
    assert position == outbox.appended == 20_000
    assert sorted(numbers(taken)) == list(range(20_000))
