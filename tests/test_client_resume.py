"""The resume cursor (evkit.client.resume) with plain values: no sockets, no server.

Each test feeds the payloads of the server messages a subscriber would read, in the
order it would read them, and checks where the cursor would resume and what it counted.
"""

from __future__ import annotations

from evkit.client.resume import MAX_GAP_REPORTS, ResumeCursor


def test_an_empty_cursor_takes_the_welcome_position_and_epoch() -> None:
    cursor = ResumeCursor()
    cursor.welcomed({"clientId": "ws-1", "epoch": "e1", "lastId": "41"})
    assert (cursor.last_id, cursor.epoch) == ("41", "e1")
    cursor.advanced("42")
    assert (cursor.last_id, cursor.epoch) == ("42", "e1")


def test_a_welcome_without_position_leaves_an_empty_cursor_empty() -> None:
    cursor = ResumeCursor()
    cursor.welcomed({"clientId": "ws-1"})
    assert (cursor.last_id, cursor.epoch) == (None, None)


def test_the_same_stream_keeps_the_cursor() -> None:
    cursor = ResumeCursor("10", "e1")
    cursor.welcomed({"epoch": "e1", "lastId": "50"})
    assert (cursor.last_id, cursor.epoch, cursor.pending_epoch) == ("10", "e1", None)


def test_a_new_stream_is_adopted_with_its_first_event_only() -> None:
    cursor = ResumeCursor("10", "e1")
    cursor.welcomed({"epoch": "e2", "lastId": "3"})
    # A drop now resumes from the old stream's cursor again.
    assert (cursor.last_id, cursor.epoch) == ("10", "e1")
    cursor.advanced("4")
    assert (cursor.last_id, cursor.epoch, cursor.pending_epoch) == ("4", "e2", None)


def test_a_new_stream_is_adopted_at_the_end_of_its_replay() -> None:
    cursor = ResumeCursor("10", "e1")
    cursor.welcomed({"epoch": "e2", "lastId": "3"})
    counted = cursor.replay_ended({"since": "10", "count": 0, "complete": True, "epoch": "e2"})
    assert not counted
    assert (cursor.last_id, cursor.epoch) == ("3", "e2")  # the welcome's position, covered


def test_replayed_moves_to_the_position_it_covered_and_adds_its_count() -> None:
    cursor = ResumeCursor("10", "e1")
    cursor.welcomed({"epoch": "e1", "lastId": "20"})
    cursor.advanced("15")
    cursor.replay_ended({"since": "10", "count": 5, "complete": True, "lastId": "18"})
    assert (cursor.last_id, cursor.replayed, cursor.gaps) == ("18", 5, 0)
    cursor.welcomed({"epoch": "e1", "lastId": "30"})
    cursor.replay_ended({"since": "18", "count": 2, "complete": True})
    assert (cursor.last_id, cursor.replayed) == ("30", 7)  # the welcome's position


def test_an_incomplete_replay_without_a_gap_message_counts_a_gap() -> None:
    cursor = ResumeCursor("10", "e1")
    cursor.welcomed({"epoch": "e1", "lastId": "90"})
    report = {"since": "10", "count": 10, "complete": False}
    assert cursor.replay_ended(report)
    assert (cursor.gaps, cursor.gap_reports) == (1, [report])


def test_a_gap_message_counts_once_and_the_incomplete_replay_after_it_does_not() -> None:
    cursor = ResumeCursor("10", "e1")
    cursor.welcomed({"epoch": "e1", "lastId": "90"})
    gap = {"since": "10", "reason": "trimmed", "complete": False}
    assert cursor.gap(gap)
    assert not cursor.replay_ended({"since": "10", "count": 10, "complete": False})
    assert (cursor.gaps, cursor.gap_reports) == (1, [gap])


def test_a_gap_announced_again_after_a_cut_counts_once() -> None:
    cursor = ResumeCursor("10", "e1")
    gap = {"since": "10", "reason": "trimmed"}
    cursor.welcomed({"epoch": "e1", "lastId": "90"})
    assert cursor.gap(gap)
    # Cut before any replayed event: the next connection resumes from "10" again.
    cursor.welcomed({"epoch": "e1", "lastId": "95"})
    assert not cursor.gap(gap)
    assert not cursor.replay_ended({"since": "10", "count": 3, "complete": False})
    assert cursor.gaps == 1
    # A gap from another position is another gap.
    cursor.welcomed({"epoch": "e1", "lastId": "99"})
    assert cursor.gap({"since": cursor.last_id, "reason": "trimmed"})
    assert cursor.gaps == 2


def test_gap_reports_are_bounded_and_the_count_goes_on() -> None:
    cursor = ResumeCursor("0", "e1")
    for since in range(MAX_GAP_REPORTS + 5):
        cursor.welcomed({"epoch": "e1"})
        cursor.gap({"since": str(since)})
    assert cursor.gaps == MAX_GAP_REPORTS + 5
    assert len(cursor.gap_reports) == MAX_GAP_REPORTS
