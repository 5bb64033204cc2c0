"""Recordings: ``evkit.load`` / ``read_events``, ``RecordingWriter`` and ``evkit record/replay``.

Both formats are checked the same way: a SQLite file (the durable store's own format,
whether a server or the writer made it) and JSON Lines. The command-line tests run
``python -m evkit`` in subprocesses against servers started here, with every wait
bounded and every process killed in ``finally``.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import evkit
from evkit.collector import FIXED_COLUMNS
from evkit.recording import RecordingWriter, read_events
from evkit.store.sqlite_format import read_records
from evkit.testing import wait_until
from tests.cli_support import run_evkit, started

BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
BASE = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
CLI_TIMEOUT = 15.0

EVENTS: list[dict[str, Any]] = [
    {
        "type": "repo.commit.created",
        "timestamp": BASE_MS,
        "id": "1",
        "payload": {"correlationId": "req-1", "path": "/src", "commitHash": "ab12"},
    },
    {
        "type": "github.api.started",
        "timestamp": BASE_MS + 1000,
        "id": "2",
        "payload": {"correlationId": "req-1", "endpoint": "/repos"},
    },
    {
        "type": "github.api.completed",
        "timestamp": BASE_MS + 2000,
        "id": "3",
        "payload": {"correlationId": "req-1", "endpoint": "/repos", "duration": 12.5},
    },
    {
        "type": "claude.session.started",
        "timestamp": BASE_MS + 3000,
        "id": "4",
        "payload": {"correlationId": "req-2", "sessionId": "s-1"},
    },
    {
        "type": "performance.slowOperation.detected",
        "timestamp": BASE_MS + 4000,
        "id": "5",
        "payload": {"service": "github", "operation": "api", "duration": 900, "threshold": 500},
    },
    {
        "type": "repo.push.completed",
        "timestamp": BASE_MS + 5000,
        "id": "6",
        "payload": {"correlationId": "req-2", "duration": 30, "meta": {"branch": "main"}},
    },
]


def write_recording(path: Path, events: Sequence[dict[str, Any]]) -> Path:
    with RecordingWriter(path) as writer:
        for event in events:
            writer.write(event)
    return path


def sqlite_ids(path: Path) -> list[int]:
    connection = sqlite3.connect(path)
    try:
        return [record.id for record in read_records(connection)]
    finally:
        connection.close()


@pytest.fixture(params=["events.db", "events.jsonl"])
def recording(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """``EVENTS`` written by RecordingWriter, as SQLite and as JSON Lines."""
    return write_recording(tmp_path / request.param, EVENTS)


def loaded_ids(source: Any, **filters: Any) -> list[str]:
    return list(evkit.load(source, **filters)["id"])


# -- evkit.load: the collector's frame ------------------------------------------------------


def emit_sample() -> None:
    """Events of every shape a frame has to hold, emitted on the global bus."""

    @evkit.emits("github.api")
    def call_github(endpoint: str) -> str:
        return endpoint

    with evkit.correlation("req-7"):
        evkit.emit("repo.commit.created", {"path": "/src", "commitHash": "ab12"})
        call_github("/repos")
        evkit.emit("repo.push.completed", {"duration": 30, "meta": {"branch": "main"}})
    evkit.emit("claude.session.started", {"sessionId": "s-1", "workingDirectory": "/w"})
    evkit.emit(
        "performance.slowOperation.detected",
        {"service": "github", "operation": "api", "duration": 900, "threshold": 500},
    )
    evkit.emit("system", {"ok": True, "id": "payload-id", "note": None})
    for n in range(10):
        evkit.emit("graphql.query.completed", {"operationName": f"Q{n}", "duration": n + 0.5})


@contextmanager
def sample_store(path: Path) -> Iterator[evkit.Collector]:
    """A server storing the sample in SQLite at ``path``; yields a capture of what was
    emitted. The server is stopped (the store closed) on the way out."""
    captured = evkit.capture()
    srv = evkit.serve(port=0, store=f"sqlite:///{path}")
    try:
        emit_sample()
        yield captured
    finally:
        srv.stop()
        captured.stop()


def test_load_sqlite_store_matches_the_collector_frame(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with sample_store(path) as captured:
        evkit.flush()
        while_running = evkit.load(path)  # read while the server's writer holds the file
    expected = captured.to_dataframe()
    loaded = evkit.load(path)

    assert len(loaded) == len(expected) == 17
    assert tuple(loaded.columns[: len(FIXED_COLUMNS)]) == FIXED_COLUMNS
    assert list(loaded.columns) == list(expected.columns)
    assert loaded.dtypes.equals(expected.dtypes)
    assert list(loaded["id"]) == [str(i) for i in range(1, 18)]
    assert str(loaded["id"].dtype) == "string"
    assert isinstance(loaded["timestamp"].dtype, pd.DatetimeTZDtype)
    assert str(loaded["timestamp"].dtype.tz) == "UTC"
    assert loaded["duration_ms"].dtype == "float64"
    pd.testing.assert_frame_equal(loaded.drop(columns="id"), expected.drop(columns="id"))
    pd.testing.assert_frame_equal(while_running, loaded)


def test_load_jsonl_written_by_the_writer_matches_the_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with sample_store(path) as captured:
        pass
    lines = write_recording(tmp_path / "e.jsonl", list(read_events(path)))
    copy = write_recording(tmp_path / "copy.db", list(read_events(lines)))

    from_store = evkit.load(path)
    pd.testing.assert_frame_equal(evkit.load(lines), from_store)
    pd.testing.assert_frame_equal(evkit.load(copy), from_store)
    pd.testing.assert_frame_equal(
        evkit.load(lines).drop(columns="id"), captured.to_dataframe().drop(columns="id")
    )


def test_load_reads_frames_as_the_events_were_recorded(recording: Path) -> None:
    assert list(read_events(recording)) == EVENTS
    frame = evkit.load(recording)
    assert list(frame["id"]) == ["1", "2", "3", "4", "5", "6"]
    assert list(frame["service"])[:2] == ["repo", "github"]
    assert list(frame["entity"])[:2] == ["commit", "api"]
    assert list(frame["action"])[:2] == ["created", "started"]
    assert frame["duration_ms"].fillna(-1).tolist() == [-1, -1, 12.5, -1, 900.0, 30.0]
    assert frame["meta.branch"].tolist()[-1] == "main"
    assert frame["timestamp"].iloc[0] == pd.Timestamp(BASE)


def test_load_an_empty_recording_gives_the_fixed_columns(tmp_path: Path) -> None:
    for name in ("empty.db", "empty.jsonl"):
        frame = evkit.load(write_recording(tmp_path / name, []))
        assert frame.empty
        assert tuple(frame.columns) == FIXED_COLUMNS


# -- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["*"], ["1", "2", "3", "4", "5", "6"]),
        (["github.api.*"], ["2", "3"]),
        (["repo.*", "claude.*"], ["1", "4", "6"]),
        (["*.completed"], ["3", "6"]),
        ("repo.*", ["1", "6"]),  # one pattern given as a string, as collect() takes it
        (["nothing.*"], []),
    ],
)
def test_load_filters_by_patterns(recording: Path, patterns: Any, expected: list[str]) -> None:
    assert loaded_ids(recording, patterns=patterns) == expected


def test_load_rejects_a_malformed_pattern(recording: Path) -> None:
    with pytest.raises(evkit.InvalidPatternError):
        evkit.load(recording, patterns=["bad pattern!"])


def test_load_filters_by_correlation_id(recording: Path) -> None:
    assert loaded_ids(recording, correlation_id="req-1") == ["1", "2", "3"]
    assert loaded_ids(recording, correlation_id="req-2") == ["4", "6"]
    assert loaded_ids(recording, correlation_id="req-404") == []


@pytest.mark.parametrize(
    "since",
    [
        BASE + timedelta(seconds=2),
        (BASE + timedelta(seconds=2)).astimezone(timezone(timedelta(hours=2))),
        "2023-11-15T00:13:22+02:00",
        "2023-11-14T22:13:22Z",
        BASE_MS + 2000,
        float(BASE_MS + 2000),
        pd.Timestamp(BASE_MS + 2000, unit="ms", tz="UTC"),
    ],
    ids=["datetime", "datetime+02", "iso+02", "isoZ", "epoch-ms", "epoch-ms-float", "pandas"],
)
def test_load_time_bounds_accept_every_form_and_are_inclusive(recording: Path, since: Any) -> None:
    assert loaded_ids(recording, since=since) == ["3", "4", "5", "6"]
    assert loaded_ids(recording, until=since) == ["1", "2", "3"]
    assert loaded_ids(recording, since=since, until=since) == ["3"]


def test_load_filters_combine(recording: Path) -> None:
    frame = evkit.load(
        recording,
        patterns=["*.completed", "*.started"],
        correlation_id="req-1",
        since=BASE + timedelta(seconds=1, milliseconds=500),
        until="2023-11-14T22:13:30+00:00",
    )
    assert list(frame["id"]) == ["3"]


@pytest.mark.parametrize(
    "naive", [datetime(2023, 11, 14, 22, 13, 22), "2023-11-14T22:13:22"], ids=["datetime", "iso"]
)
def test_load_rejects_naive_times(recording: Path, naive: Any) -> None:
    with pytest.raises(ValueError, match=r"since=.* has no time zone; evkit timestamps are UTC"):
        evkit.load(recording, since=naive)
    with pytest.raises(ValueError, match=r"until=.* has no time zone"):
        evkit.load(recording, until=naive)


def test_load_rejects_times_it_cannot_read(recording: Path) -> None:
    with pytest.raises(ValueError, match="Invalid isoformat"):
        evkit.load(recording, since="yesterday")
    with pytest.raises(TypeError, match="since must be a time"):
        evkit.load(recording, since=True)
    with pytest.raises(TypeError, match="until must be a datetime, an ISO string or epoch"):
        evkit.load(recording, until=[1])


# -- sources ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.db", "missing.jsonl"])
def test_load_unknown_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"no recording at {tmp_path / name}"):
        evkit.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        evkit.load(f"sqlite:///{tmp_path}/{name}")
    assert not (tmp_path / name).exists()  # looking did not create it


def test_load_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_recording(tmp_path / "rel.db", EVENTS)
    monkeypatch.chdir(tmp_path)
    assert len(evkit.load("sqlite:///rel.db")) == 6
    assert len(evkit.load(f"sqlite:///{tmp_path}/rel.db")) == 6  # sqlite:////abs/rel.db
    assert len(evkit.load("rel.db")) == 6
    # The same URL the server was given, retention options and all.
    assert len(evkit.load("sqlite:///rel.db?max_events=100&max_age=60")) == 6
    assert len(evkit.load(f"sqlite:///{tmp_path}/rel.db?max_events=100")) == 6


@pytest.mark.parametrize("folder", ["with space", "with?question", "with#hash", "with%41percent"])
def test_load_sqlite_from_a_folder_with_uri_characters(tmp_path: Path, folder: str) -> None:
    path = write_recording(tmp_path / folder / "e.db", EVENTS)
    assert len(evkit.load(path)) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]  # no stray file made


def test_load_rejects_other_urls() -> None:
    with pytest.raises(ValueError, match=r"cannot read 'redis://localhost/0': give a file path"):
        evkit.load("redis://localhost/0")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not a JSON event"),
        ("[1, 2]", r"not an evkit event \(a JSON list, not an object\)"),
        ("42", r"not an evkit event \(a JSON int, not an object\)"),
        ('{"timestamp": 1, "payload": {}}', "no 'type' string"),
        ('{"type": "a.b", "timestamp": "noon", "payload": {}}', "'timestamp' is not epoch"),
        ('{"type": "a.b", "timestamp": 1, "payload": [1]}', "'payload' is not an object"),
    ],
)
def test_load_malformed_jsonl_names_the_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = orjson.dumps(EVENTS[0]).decode()
    path.write_text(f"{good}\n\n{line}\n{good}\n")  # the blank line 2 is skipped, not an error
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{problem}"):
        evkit.load(path)


def test_load_jsonl_tolerates_blank_lines_and_a_missing_newline(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    lines = [orjson.dumps(e).decode() for e in EVENTS]
    path.write_text("\n" + "\n\n".join(lines))
    assert list(read_events(path)) == EVENTS


# -- RecordingWriter ---------------------------------------------------------------------------


def test_writer_ignores_an_event_written_again_after_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    write_recording(path, EVENTS[:3])
    replayed = dict(EVENTS[2], payload={"changed": True})  # same id 3: already recorded
    write_recording(path, [replayed, *EVENTS[3:]])
    assert sqlite_ids(path) == [1, 2, 3, 4, 5, 6]
    assert list(read_events(path)) == EVENTS  # the first copy of id 3 is kept


def test_writer_ignores_a_duplicate_within_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with RecordingWriter(path) as writer:
        writer.write(EVENTS[0])
        writer.write(EVENTS[0])
        writer.write(EVENTS[1])
        assert writer.count == 3  # what it was given
    assert sqlite_ids(path) == [1, 2]


def test_writer_gives_events_without_numeric_ids_the_next_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    unnumbered = [
        {"type": "a.b.c", "timestamp": BASE_MS, "payload": {"n": 1}},
        {"type": "a.b.c", "timestamp": BASE_MS, "id": "abc", "payload": {"n": 2}},
        {"type": "a.b.c", "timestamp": BASE_MS, "id": "7", "payload": {"n": 3}},
        {"type": "a.b.c", "timestamp": BASE_MS, "id": "x-1", "payload": {"n": 4}},
    ]
    write_recording(path, unnumbered)
    assert sqlite_ids(path) == [1, 2, 7, 8]
    # A later writer continues after the largest id in the file.
    write_recording(path, [{"type": "a.b.c", "timestamp": BASE_MS, "payload": {"n": 5}}])
    assert sqlite_ids(path) == [1, 2, 7, 8, 9]
    assert [e["payload"]["n"] for e in read_events(path)] == [1, 2, 3, 4, 5]
    assert evkit.load(path)["id"].fillna("-").tolist()[:3] == ["-", "abc", "7"]  # their own ids


@pytest.mark.parametrize("name", ["e.db", "e.jsonl"])
def test_writer_keeps_the_frame_bytes_it_is_given(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    frame = b'{"type":"a.b.c","timestamp":1700000000000,"id":"1","payload":{"x": 1.50}}'
    with RecordingWriter(path) as writer:
        writer.write(orjson.loads(frame), frame)
    if name.endswith(".jsonl"):
        assert path.read_bytes() == frame + b"\n"
    else:
        connection = sqlite3.connect(path)
        try:
            [stored] = [record.frame for record in read_records(connection)]
        finally:
            connection.close()
        assert stored == frame


def test_writer_appends_to_an_existing_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    write_recording(path, EVENTS[:2])
    write_recording(path, EVENTS[2:])
    assert list(read_events(path)) == EVENTS


def test_writer_commits_every_thousand_events_without_flush(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    writer = RecordingWriter(path)
    try:
        for n in range(1, 1001):
            writer.write({"type": "a.b.c", "timestamp": BASE_MS, "id": str(n), "payload": {}})
        assert len(sqlite_ids(path)) == 1000
    finally:
        writer.close()


# -- the command line ---------------------------------------------------------------------------


def record_cli(srv: evkit.Server, out: Path, count: int, emit: Callable[[], None]) -> str:
    """Run ``evkit record``; emit once it is connected; its stdout once it exits."""
    with started("record", "--url", srv.url, "--out", str(out), "--count", str(count)) as run:
        wait_until(
            lambda: srv.stats()["clients"] == 1 or run.process.poll() is not None,
            "the recorder has connected",
        )
        assert run.process.poll() is None, "".join(run.stderr)
        emit()
        evkit.flush()
        assert run.process.wait(CLI_TIMEOUT) == 0, "".join(run.stderr)
    return "".join(run.stdout)


@pytest.mark.parametrize("name", ["x.db", "x.jsonl"])
def test_cli_record(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    srv = evkit.serve(port=0)
    try:

        def emit() -> None:
            for n in range(60):  # more than --count: the recorder stops at 50
                evkit.emit("repo.commit.created", {"n": n}, correlation_id=f"req-{n % 3}")

        stdout = record_cli(srv, out, 50, emit)
    finally:
        srv.stop()
    assert f"recorded 50 events into {out}" in stdout
    frame = evkit.load(out)
    assert len(frame) == 50
    assert list(frame["id"]) == [str(i) for i in range(1, 51)]
    assert list(frame["n"]) == list(range(50))
    assert list(evkit.load(out, correlation_id="req-1")["n"]) == list(range(1, 50, 3))


def test_cli_replay_publishes_the_recording_in_order(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    srv = evkit.serve(port=0, store=f"sqlite:///{path}")
    try:
        emit_sample()
    finally:
        srv.stop()
    recorded = [(e["type"], e["payload"]) for e in read_events(path)]
    assert len(recorded) == 17

    target = evkit.serve(port=0)
    try:
        with evkit.collect(target, ["*"]) as col:
            result = run_evkit("replay", str(path), "--url", target.url, "--speed", "50")
            assert result.returncode == 0, result.stderr
            assert f"replayed 17 events to {target.url} at 50x" in result.stdout
            col.wait(count=17, timeout=10)
            received = [(e["type"], e["payload"]) for e in col.recent(100)]
    finally:
        target.stop()
    assert received == recorded


def test_cli_replay_honours_the_recorded_spacing(tmp_path: Path) -> None:
    path = tmp_path / "spaced.jsonl"
    path.write_text(
        "".join(
            orjson.dumps(
                {"type": "job.step.done", "timestamp": BASE_MS + 1000 * n, "payload": {"n": n}}
            ).decode()
            + "\n"
            for n in range(3)
        )
    )
    target = evkit.serve(port=0)
    try:
        with evkit.collect(target, ["job.*"]) as col:
            result = run_evkit("replay", str(path), "--url", target.url, "--speed", "10")
            assert result.returncode == 0, result.stderr
            col.wait(count=3, timeout=10)
            received = col.recent(10)
    finally:
        target.stop()
    assert [e["payload"]["n"] for e in received] == [0, 1, 2]
    # 1 s apart at 10x: sent about 100 ms apart. The server stamps each on arrival, so a
    # busy machine delays a stamp, never advances one: a wide window around 200 ms total
    # (no spacing would give ~0 ms, spacing at 1x 2,000 ms). A behaviour check, not a benchmark.
    stamps = [e["timestamp"] for e in received]
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert all(gap >= 50 for gap in gaps), gaps
    assert 150 <= stamps[-1] - stamps[0] < 2000, stamps


def test_cli_replay_filters_by_patterns(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "x.jsonl", EVENTS)
    target = evkit.serve(port=0)
    try:
        with evkit.collect(target, ["*"]) as col:
            result = run_evkit(
                "replay", str(path), "--url", target.url, "--speed", "1000", "--patterns", "repo.*"
            )
            assert result.returncode == 0, result.stderr
            col.wait(count=2, timeout=10)
            evkit.flush()
            assert [e["type"] for e in col.recent(10)] == [
                "repo.commit.created",
                "repo.push.completed",
            ]
    finally:
        target.stop()


def test_cli_replay_errors(tmp_path: Path) -> None:
    srv = evkit.serve(port=0)
    try:
        missing = run_evkit("replay", str(tmp_path / "missing.db"), "--url", srv.url)
        assert missing.returncode == 1
        assert f"evkit: no recording at {tmp_path / 'missing.db'}" in missing.stderr
        slow = run_evkit("replay", str(tmp_path / "missing.db"), "--url", srv.url, "--speed", "0")
        assert slow.returncode == 2
        assert "--speed must be positive" in slow.stderr
    finally:
        srv.stop()


def test_cli_replay_of_a_malformed_recording_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n")
    srv = evkit.serve(port=0)
    try:
        result = run_evkit("replay", str(path), "--url", srv.url)
    finally:
        srv.stop()
    assert result.returncode == 1
    assert "bad.jsonl:1: not a JSON event" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_listens_to_a_live_server_for_its_seconds(server: evkit.Server) -> None:
    loaded: list[pd.DataFrame] = []

    def listen() -> None:
        loaded.append(evkit.load(server.url, ["repo.*"], seconds=3.0))

    listener = threading.Thread(target=listen)
    listener.start()
    wait_until(lambda: server.stats()["clients"] == 1, "load() has subscribed")
    evkit.emit("repo.commit.created", {"n": 1}, correlation_id="req-1")
    evkit.emit("claude.session.started", {"n": 2})
    evkit.emit("repo.push.completed", {"n": 3})
    evkit.flush()
    listener.join(15)
    [frame] = loaded
    assert list(frame.columns[: len(FIXED_COLUMNS)]) == list(FIXED_COLUMNS)
    assert list(frame["type"]) == ["repo.commit.created", "repo.push.completed"]


def test_load_of_a_live_server_needs_seconds_and_a_server(server: evkit.Server) -> None:
    with pytest.raises(ValueError, match="needs seconds="):
        evkit.load(server.url)
    with pytest.raises(evkit.ConnectError, match="could not connect"):
        evkit.load("ws://127.0.0.1:9/ws/events", seconds=1, connect_timeout=1)
