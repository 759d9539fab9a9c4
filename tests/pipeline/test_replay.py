"""``recloop replay`` without a broker: reading, filters, pacing, dry run, checkpoints."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from operators.catalog import Catalog
from operators.feedback_loop import LoopConfig, process_event
from operators.profile import ProfileLimits, UserProfile
from operators.synthetic import SyntheticWorld
from operators.validation import InvalidEvent, ValidationLimits, decode_event
from pipeline.cli import cli
from pipeline.clients import encode_line
from pipeline.replay import (
    CONTEXT_COLUMNS,
    EVENT_COLUMNS,
    INTEGER_COLUMNS,
    NUMBER_COLUMNS,
    CheckpointState,
    DeliveryWatermark,
    EventCheck,
    Interruption,
    LogRecord,
    Pacer,
    Position,
    ReplayError,
    ReplayOptions,
    ReplaySummary,
    TimeRange,
    detect_format,
    parse_time,
    read_log,
    replay_log,
    stop_on_signals,
)
from schemas.events import EVENT_ADAPTER, Event, event_to_json, parse_event

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = ValidationLimits(max_event_bytes=2048, max_future_skew_s=300, min_event_year=1990)
CHECK = EventCheck(LIMITS, lambda: NOW)


def click_line(n: int, user: str = "u1", when: datetime | None = None) -> str:
    moment = (when or T0 + timedelta(minutes=n)).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"event_id": f"e{n}", "user_id": user, "type": "click", "item_id": f"i{n % 7}",
         "timestamp": moment}
    )  # fmt: skip


def world_events(users: int = 3, per_user: int = 6) -> list[Event]:
    world = SyntheticWorld.generate(seed=4, n_items=20, n_users=users, n_categories=3)
    events = [e for user in world.users for e in world.events_for(user, per_user)]
    return sorted(events, key=lambda e: (e.timestamp, e.user_id))


def jsonl(events: list[Event]) -> str:
    return "".join(event_to_json(e).decode() + "\n" for e in events)


def csv_text(events: list[Event]) -> str:
    """A CSV log as documented: a header of field names, context.* columns, JSON lists."""
    columns = [*EVENT_COLUMNS, *CONTEXT_COLUMNS]
    columns.remove("context")
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for event in events:
        fields = json.loads(event_to_json(event))
        for name, value in fields.pop("context", {}).items():
            fields[f"context.{name}"] = value
        if "item_ids" in fields:
            fields["item_ids"] = json.dumps(fields["item_ids"])
        writer.writerow(fields)
    return out.getvalue()


def records(path: Path, fmt: str = "jsonl", start: Position | None = None) -> list[LogRecord]:
    return list(read_log(path, fmt, CHECK, start or Position()))  # type: ignore[arg-type]


# -- reading ------------------------------------------------------------------------------
def test_jsonl_records_carry_line_numbers_positions_and_worker_reasons(tmp_path: Path) -> None:
    unknown = {"event_id": "x", "user_id": "u1", "type": "teleport", "timestamp": "2026-01-01Z"}
    lines = [
        "\ufeff" + click_line(1),  # a byte-order mark on the first line is not part of it
        "{broken",
        "",
        click_line(2, when=NOW + timedelta(hours=1)),
        json.dumps(unknown),
        click_line(3).replace('"i3"', '"' + "i" * 3000 + '"'),
        click_line(4) + "\r",  # CRLF line ending
    ]
    path = tmp_path / "log.jsonl"
    data = "\n".join(lines).encode() + b"\n" + b'{"user_id": "\xff"}\n'
    path.write_bytes(data)

    got = records(path)

    assert [r.line for r in got] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r.error.reason if r.error else None for r in got] == [
        None, "invalid_json", None, "timestamp_in_future", "unknown_type", "too_large", None,
        "invalid_utf8",
    ]  # fmt: skip
    assert got[2].blank and not got[0].blank
    assert got[0].event is not None and got[0].event.event_id == "e1"
    assert got[6].event is not None and got[6].event.event_id == "e4"
    assert got[1].raw == b"{broken"
    assert got[-1].end == Position(len(data), 8)
    assert got[0].end.offset == len(lines[0].encode()) + 1


def test_a_start_position_resumes_on_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(click_line(n) for n in range(1, 6)) + "\n")
    third = records(path)[2]

    rest = records(path, start=third.end)

    assert [r.line for r in rest] == [4, 5]
    assert [r.event.event_id for r in rest if r.event] == ["e4", "e5"]
    with pytest.raises(ReplayError, match="not the start of a line"):
        records(path, start=Position(third.end.offset + 3, 3))


def test_csv_and_jsonl_logs_of_the_same_events_read_the_same(tmp_path: Path) -> None:
    events = world_events()
    events.append(
        parse_event(
            '{"event_id":"imp-1","user_id":"user-0000","type":"impression",'
            '"item_ids":["item-00001","item-00002"],"timestamp":"2026-01-02T00:00:00+02:00",'
            '"context":{"surface":"home","device":"tv"},"recommendation_id":"r1"}'
        )
    )
    (tmp_path / "log.jsonl").write_text(jsonl(events))
    (tmp_path / "log.csv").write_text(csv_text(events))

    from_jsonl = [r.event for r in records(tmp_path / "log.jsonl")]
    from_csv = [r.event for r in records(tmp_path / "log.csv", "csv")]

    assert from_csv == from_jsonl == events
    assert from_csv[-1] is not None and from_csv[-1].timestamp.utcoffset() == timedelta(hours=2)


def test_csv_cells_become_typed_fields_and_bad_rows_are_rejected_with_a_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "event_id,user_id,type,timestamp,item_id,dwell_ms,position,context.surface\n"
        "e1,u1,dwell,2026-01-01T00:00:00Z,i1,1500,3,home\n"
        'e2,u1,click,2026-01-01T00:01:00Z,"a,b",,,\n'  # a quoted comma
        "e3,u1,dwell,2026-01-01T00:02:00Z,i1,slow,,\n"
        'e4,u1,click,2026-01-01T00:03:00Z,"multi\nline",,,\n'  # one record over two lines
        "e5,u1,click,2026-01-01T00:04:00Z,i1,,,,surplus\n"
        "\n"
        "e6,u1,click,2026-01-01T00:05:00Z,i1,,,\n"
    )

    got = records(path, "csv")

    assert [r.line for r in got] == [2, 3, 4, 5, 7, 8, 9]
    first = got[0].event
    assert first is not None and first.type == "dwell"
    assert (first.dwell_ms, first.position) == (1500.0, 3)
    assert first.context is not None and first.context.surface == "home"
    assert got[1].event is not None and got[1].event.item_id == "a,b"  # type: ignore[union-attr]
    assert got[2].error is not None and got[2].error.reason == "schema_violation"
    assert "dwell_ms" in got[2].error.detail
    assert got[3].error is not None and got[3].raw.count(b"\n") == 1  # the whole record
    assert got[4].error is not None and got[4].error.reason == "invalid_csv"
    assert got[5].blank and got[6].event is not None and got[6].event.event_id == "e6"
    assert got[-1].end == Position(len(path.read_bytes()), 9)


def test_csv_resumes_after_a_position_reading_the_header_again(tmp_path: Path) -> None:
    path = tmp_path / "log.csv.gz"
    events = world_events()
    path.write_bytes(gzip.compress(csv_text(events).encode()))
    everything = records(path, "csv")

    rest = records(path, "csv", start=everything[4].end)

    assert [r.event for r in rest] == events[5:]
    assert rest[0].line == everything[5].line


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("event_id,user_id,kind,timestamp", "'kind' are not event fields"),
        ("u1,e1,click", "are not event fields"),  # no header row at all
        ("event_id,user_id,event_id", "appear twice"),
        ("event_id,context,context.surface", "one JSON column or as context"),
    ],
)
def test_a_bad_csv_header_refuses_the_whole_log(tmp_path: Path, header: str, problem: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(header + "\ne1,u1,click\n")
    with pytest.raises(ReplayError, match=problem):
        records(path, "csv")
    # the command refuses to start (exit code 2), before it would reach a broker
    env = {"RECLOOP__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # nothing listens there
    for dry in (["--dry-run"], []):
        result = CliRunner().invoke(cli, ["replay", "-q", *dry, str(path)], env=env)
        assert result.exit_code == 2, result.output
        assert problem in result.output


def test_a_quoted_csv_header_after_a_byte_order_mark_reads_as_without_it(tmp_path: Path) -> None:
    rows = ['"event_id","user_id","type","item_id","timestamp"',
            '"e1","u1","click","i1","2026-01-01T00:00:00Z"']  # fmt: skip
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(rows) + "\n", encoding="utf-8")
    marked = tmp_path / "marked.csv"
    marked.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")  # as Excel writes it

    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    got = [(r.event, r.error) for r in records(marked, "csv")]
    assert got == [(r.event, r.error) for r in records(plain, "csv")]
    assert got[0][0] is not None and got[0][0].event_id == "e1"


def test_every_numeric_event_field_is_typed_in_csv() -> None:
    schema = EVENT_ADAPTER.json_schema()
    numeric: dict[str, set[str]] = {"integer": set(), "number": set()}
    for model in schema["$defs"].values():
        for name, spec in model.get("properties", {}).items():
            kinds = [spec.get("type")] + [s.get("type") for s in spec.get("anyOf", [])]
            for kind in ("integer", "number"):
                if kind in kinds:
                    numeric[kind].add(name)
    assert numeric["number"] - NUMBER_COLUMNS == set()
    assert numeric["integer"] - INTEGER_COLUMNS == set()
    assert "const" in json.dumps(schema)  # schema_version is a constant 1: an integer column


def test_gzip_logs_read_like_plain_ones(tmp_path: Path) -> None:
    text = jsonl(world_events())
    (tmp_path / "log.jsonl").write_text(text)
    (tmp_path / "log.jsonl.gz").write_bytes(gzip.compress(text.encode()))

    plain = records(tmp_path / "log.jsonl")
    packed = records(tmp_path / "log.jsonl.gz")

    assert [(r.line, r.end, r.event) for r in packed] == [(r.line, r.end, r.event) for r in plain]


def test_a_damaged_gzip_log_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(world_events()).encode())[:-30])
    with pytest.raises(ReplayError, match="cannot be read"):
        records(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.jsonl", "jsonl"), ("a.ndjson.gz", "jsonl"), ("x.2026-01.CSV", "csv"), ("b.csv.gz", "csv")],
)
def test_the_format_comes_from_the_name(name: str, expected: str) -> None:
    assert detect_format(Path(name)) == expected


def test_an_unknown_name_asks_for_the_format() -> None:
    with pytest.raises(ReplayError, match="--format"):
        detect_format(Path("events.log"))


# -- filters ------------------------------------------------------------------------------
def test_the_time_range_includes_since_and_excludes_until() -> None:
    window = TimeRange(parse_time("2026-01-01T00:10:00Z"), parse_time("2026-01-01T02:20:00+02:00"))
    assert not window.contains(T0 + timedelta(minutes=9, seconds=59))
    assert window.contains(T0 + timedelta(minutes=10))
    assert window.contains(T0 + timedelta(minutes=19, seconds=59))
    assert not window.contains(T0 + timedelta(minutes=20))
    assert TimeRange().contains(T0)


def test_times_without_an_offset_or_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2026-01-01T00:00:00")
    with pytest.raises(ValueError, match="not an ISO 8601"):
        parse_time("yesterday")
    with pytest.raises(ValueError, match="must be before"):
        TimeRange(T0, T0)


# -- pacing -------------------------------------------------------------------------------
class FakeClock:
    """Monotonic time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def sent_at(pacer: Pacer, clock: FakeClock, times: list[datetime], work: float = 0) -> list[float]:
    out = []
    for moment in times:
        pacer.wait(moment)
        out.append(round(clock.now - 100.0, 6))
        clock.now += work  # time spent producing
    return out


def test_a_rate_spaces_events_evenly_without_drift() -> None:
    clock = FakeClock()
    pacer = Pacer(rate=4.0, clock=clock, sleep=clock.sleep)
    times = [T0] * 5
    assert sent_at(pacer, clock, times, work=0.1) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_speed_replays_the_logs_own_gaps_scaled() -> None:
    clock = FakeClock()
    pacer = Pacer(speed=60.0, clock=clock, sleep=clock.sleep)
    offsets = [0, 60, 60, 30, 3600]  # seconds after the first event; one out of order
    times = [T0 + timedelta(hours=5, seconds=s) for s in offsets]
    assert sent_at(pacer, clock, times) == [0.0, 1.0, 1.0, 1.0, 60.0]


def test_without_a_rate_or_speed_nothing_waits() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    sent_at(pacer, clock, [T0, T0 + timedelta(days=1)])
    assert clock.sleeps == []
    with pytest.raises(ValueError, match="not both"):
        Pacer(rate=1, speed=1)


# -- delivery watermark -----------------------------------------------------------------
def test_the_watermark_waits_for_the_first_record_in_flight() -> None:
    mark = DeliveryWatermark(Position())
    first = mark.expect(Position(10, 1))
    second = mark.expect(Position(20, 2))
    mark.settle(Position(25, 3))  # a rejected line behind them
    third = mark.expect(Position(30, 4))

    second(True)
    assert mark.position == Position()
    first(True)
    assert mark.position == Position(25, 3)
    third(False)  # a failed delivery holds the watermark for good
    assert mark.position == Position(25, 3) and mark.in_flight == 1


# -- the replay ---------------------------------------------------------------------------
class FakeSink:
    """Records what was sent; confirms deliveries in reverse order (partitions race)."""

    topic = "t.events"

    def __init__(
        self,
        clock: FakeClock | None = None,
        fail: set[str] | None = None,
        on_send: Callable[[int], None] | None = None,
    ) -> None:
        self.sent: list[tuple[bytes, bytes, float]] = []
        self._pending: list[tuple[bytes, Callable[[str | None], None]]] = []
        self._clock = clock
        self._fail = fail or set()
        self._on_send = on_send

    def send(self, key: bytes, value: bytes, delivered: Callable[[str | None], None]) -> None:
        self.sent.append((key, value, self._clock() if self._clock else 0.0))
        self._pending.append((value, delivered))
        if self._on_send:
            self._on_send(len(self.sent))

    def poll(self) -> None:
        if len(self._pending) >= 3:  # deliveries come in batches, out of order
            self.flush(0)

    def flush(self, timeout_s: float) -> int:
        pending, self._pending = self._pending, []
        for value, delivered in reversed(pending):
            failed = json.loads(value)["event_id"] in self._fail
            delivered("broker said no" if failed else None)
        return 0

    def event_ids(self) -> list[str]:
        return [json.loads(value)["event_id"] for _, value, _ in self.sent]


def write_log(tmp_path: Path, lines: list[str], name: str = "log.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def run(
    path: Path, sink: FakeSink | None, fmt: str = "jsonl", clock: FakeClock | None = None,
    interruption: Interruption | None = None, **options: object,
) -> ReplaySummary:  # fmt: skip
    clock = clock or FakeClock()
    return replay_log(
        path, ReplayOptions(log_format=fmt, **options), CHECK, sink,  # type: ignore[arg-type]
        clock=clock, sleep=clock.sleep, interruption=interruption,
        wall_clock=lambda: NOW,
    )  # fmt: skip


def test_valid_events_go_out_keyed_by_user_with_their_own_timestamps(tmp_path: Path) -> None:
    events = world_events()
    sink = FakeSink()
    summary = run(write_log(tmp_path, jsonl(events).splitlines()), sink)

    assert [parse_event(value) for _, value, _ in sink.sent] == events
    assert [key for key, _, _ in sink.sent] == [e.user_id.encode() for e in events]
    assert summary.produced == summary.valid == len(events)
    assert summary.complete and summary.exit_code == 0


def test_invalid_lines_are_reported_and_kept_with_their_original_bytes(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    bad_bytes = b'{"event_id": "\xff\xfe"}'
    path.write_bytes(
        "\n".join([click_line(1), "{broken", click_line(2)]).encode() + b"\n" + bad_bytes + b"\n"
    )
    rejects = tmp_path / "out" / "rejects.jsonl"
    sink = FakeSink()

    summary = run(path, sink, rejects=rejects)

    assert sink.event_ids() == ["e1", "e2"]
    assert summary.rejected == 2 and summary.exit_code == 1
    assert summary.rejected_by_reason == {"invalid_json": 1, "invalid_utf8": 1}
    assert [r["line"] for r in summary.rejections] == [2, 4]
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(k["line"], k["reason"]) for k in kept] == [(2, "invalid_json"), (4, "invalid_utf8")]
    assert kept[0]["raw"] == "{broken"
    assert kept[1]["raw"].encode("utf-8", "surrogateescape") == bad_bytes  # nothing lost


def test_the_time_range_skips_events_outside_it(tmp_path: Path) -> None:
    path = write_log(tmp_path, [click_line(n) for n in range(10)])
    sink = FakeSink()
    window = TimeRange(T0 + timedelta(minutes=3), T0 + timedelta(minutes=7))

    summary = run(path, sink, time_range=window)

    assert sink.event_ids() == ["e3", "e4", "e5", "e6"]
    assert summary.out_of_range == 6 and summary.exit_code == 0


def test_a_speed_paces_the_sends_by_event_time(tmp_path: Path) -> None:
    times = [T0, T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)]
    path = write_log(tmp_path, [click_line(n, when=t) for n, t in enumerate(times)])
    clock = FakeClock()
    sink = FakeSink(clock)

    run(path, sink, clock=clock, speed=60.0)

    assert [round(t - 100.0, 6) for _, _, t in sink.sent] == [0.0, 2.0, 3.0]


def test_a_dry_run_sends_nothing_and_reports_what_would_be_rejected(tmp_path: Path) -> None:
    lines = [click_line(n, user=f"u{n % 2}") for n in range(7)]
    lines[3] = lines[3].replace('"click"', '"teleport"')
    lines[5] = "not json"
    path = write_log(tmp_path, lines)

    summary = run(path, None, dedupe_window=2)
    report = summary.as_dict()

    assert report["dry_run"] is True and report["produced"] == 0
    assert (report["valid"], report["rejected"]) == (5, 2)
    assert report["rejected_by_reason"] == {"invalid_json": 1, "unknown_type": 1}
    assert [(r["line"], r["reason"]) for r in summary.rejections] == [
        (4, "unknown_type"), (6, "invalid_json"),
    ]  # fmt: skip
    # u0 has 4 valid events (0, 2, 4, 6), u1 one (1): one user is over a window of 2
    assert (report["max_events_per_user"], report["users_over_dedupe_window"]) == (4, 1)
    assert summary.exit_code == 1
    clean = run(write_log(tmp_path, [click_line(1)], "clean.jsonl"), None)
    assert clean.exit_code == 0


def test_an_interrupted_replay_resumes_from_its_checkpoint_and_sends_each_event_once(
    tmp_path: Path,
) -> None:
    lines = [click_line(n) for n in range(20)]
    lines.insert(5, "{broken")
    path = write_log(tmp_path, lines)
    checkpoint = tmp_path / "replay.checkpoint"
    rejects = tmp_path / "rejects.jsonl"
    stop = Interruption()
    first = FakeSink(on_send=lambda n: stop.request("SIGINT") if n == 8 else None)

    interrupted = run(path, first, checkpoint=checkpoint, rejects=rejects, interruption=stop,
                      checkpoint_every_s=0.0)  # fmt: skip

    saved = CheckpointState.load(checkpoint)
    assert interrupted.interrupted == "SIGINT" and not interrupted.complete
    assert interrupted.exit_code == 130
    assert first.event_ids() == [f"e{n}" for n in range(8)]
    assert (saved.line, saved.complete) == (9, False)  # 8 events and the broken line
    assert saved.offset == sum(len(line) + 1 for line in lines[:9])

    second = FakeSink()
    resumed = run(path, second, checkpoint=checkpoint, rejects=rejects)

    assert second.event_ids() == [f"e{n}" for n in range(8, 20)]
    assert resumed.resumed_from == Position(saved.offset, 9) and resumed.complete
    assert CheckpointState.load(checkpoint).complete
    assert len(rejects.read_text().splitlines()) == 1  # the broken line, reported once

    third = FakeSink()
    again = run(path, third, checkpoint=checkpoint)
    assert third.sent == [] and again.complete and again.exit_code == 0


def test_periodic_checkpoints_never_pass_a_record_still_in_flight(tmp_path: Path) -> None:
    path = write_log(tmp_path, [click_line(n) for n in range(10)])
    checkpoint = tmp_path / "cp.json"
    seen: list[int] = []

    class Watching(FakeSink):
        def send(self, key: bytes, value: bytes, delivered: Callable[[str | None], None]) -> None:
            if checkpoint.exists():
                seen.append(CheckpointState.load(checkpoint).line)
            super().send(key, value, delivered)

        def poll(self) -> None:  # confirms only on flush: nothing is ever settled early
            pass

    run(path, Watching(), checkpoint=checkpoint, checkpoint_every_s=0.0)

    assert seen and set(seen) == {0}
    assert CheckpointState.load(checkpoint).line == 10


def test_a_failed_delivery_stops_the_replay_before_it(tmp_path: Path) -> None:
    path = write_log(tmp_path, [click_line(n) for n in range(10)])
    checkpoint = tmp_path / "cp.json"
    sink = FakeSink(fail={"e4"})

    summary = run(path, sink, checkpoint=checkpoint)

    assert summary.delivery_failures == 1 and summary.exit_code == 1
    assert "line 5: broker said no" in summary.delivery_errors
    # e5 went out before the failure was known (the sink confirms three at a time);
    # nothing is sent once it is, so the retry repeats only what was in flight
    assert sink.event_ids() == ["e0", "e1", "e2", "e3", "e4", "e5"]
    assert CheckpointState.load(checkpoint).line == 4  # e0..e3 confirmed
    retry = FakeSink()
    run(path, retry, checkpoint=checkpoint)
    assert retry.event_ids()[0] == "e4" and retry.event_ids()[-1] == "e9"


def test_a_checkpoint_refuses_another_log_or_other_filters(tmp_path: Path) -> None:
    path = write_log(tmp_path, [click_line(n) for n in range(5)])
    checkpoint = tmp_path / "cp.json"
    run(path, FakeSink(), checkpoint=checkpoint)

    other = write_log(tmp_path, [click_line(n) for n in range(6)], "other.jsonl")
    with pytest.raises(ReplayError, match=r"does not match this replay: it was written for"):
        run(other, FakeSink(), checkpoint=checkpoint)
    with pytest.raises(ReplayError, match="its since was None"):
        run(path, FakeSink(), checkpoint=checkpoint, time_range=TimeRange(since=T0))
    with pytest.raises(ReplayError, match="its format was jsonl"):
        run(path, FakeSink(), "csv", checkpoint=checkpoint)

    moved = tmp_path / "moved.jsonl"  # the same bytes elsewhere are the same log
    moved.write_bytes(path.read_bytes())
    assert run(moved, FakeSink(), checkpoint=checkpoint).complete

    checkpoint.write_text("{not a checkpoint")
    with pytest.raises(ReplayError, match="unreadable"):
        run(path, FakeSink(), checkpoint=checkpoint)


def test_a_signal_requests_a_clean_stop_once(tmp_path: Path) -> None:
    stop = Interruption()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == before  # a second one acts as usual
    assert signal.getsignal(signal.SIGTERM) == before


# -- idempotence: what the workers' dedupe window covers --------------------------------
@pytest.mark.parametrize(("window", "reapplied"), [(500, 0), (10, 0), (4, 10)])
def test_a_second_replay_is_a_no_op_only_within_the_dedupe_window(
    window: int, reapplied: int
) -> None:
    events = [parse_event(click_line(n)) for n in range(10)]
    config = LoopConfig(limits=ProfileLimits(dedupe_window=window))
    profile: UserProfile | None = None
    counted = []
    for event in events + events:  # the same log, replayed twice
        step = process_event(event, profile, Catalog(), config, NOW)
        profile = step.profile
        counted.append(step.snapshot is not None)
    assert all(counted[:10])
    assert sum(counted[10:]) == reapplied


# -- the command (no broker: a dry run never connects) ------------------------------------
def test_the_dry_run_command_prints_one_summary_line_and_exits_by_verdict(tmp_path: Path) -> None:
    good = write_log(tmp_path, [click_line(1), click_line(2)], "good.jsonl")
    bad = write_log(tmp_path, [click_line(1), "{"], "bad.jsonl")
    env = {"RECLOOP__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # nothing listens there

    ok = CliRunner().invoke(cli, ["replay", "--dry-run", "-q", str(good)], env=env)
    rejected = CliRunner().invoke(cli, ["replay", "--dry-run", "-q", str(bad)], env=env)

    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["valid"] == 2
    assert rejected.exit_code == 1
    assert json.loads(rejected.stdout)["rejections"][0]["line"] == 2
    assert len(rejected.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "5", "--speed", "2"], "exclude each other"),
        (["--dry-run", "--checkpoint", "cp.json"], "no --checkpoint"),
        (["--since", "2026-01-01T00:00:00"], "no UTC offset"),
        (["--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z"], "before"),
        (["--format", "auto", "--log-name", "events.log"], "cannot tell the format"),
    ],
)
def test_the_command_refuses_contradictory_options(
    tmp_path: Path, args: list[str], message: str
) -> None:
    name = args.pop(-1) if "--log-name" in args else "events.jsonl"
    args = [a for a in args if a != "--log-name"]
    log = write_log(tmp_path, [click_line(1)], name)
    result = CliRunner().invoke(cli, ["replay", "-q", *args, str(log)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def _just_under(limit: int) -> dict[str, object]:
    """A dwell event of exactly ``limit`` bytes as written, longer re-encoded (95000.0)."""
    body: dict[str, object] = {"event_id": "e1", "user_id": "u1", "type": "dwell", "item_id": "i",
                               "dwell_ms": 95000, "timestamp": "2026-05-31T10:15:00Z",
                               "context": {"surface": ""}}  # fmt: skip
    body["context"] = {"surface": "s" * (limit - len(json.dumps(body, separators=(",", ":"))))}
    assert len(json.dumps(body, separators=(",", ":"))) == limit
    return body


def test_an_event_whose_bytes_as_sent_are_over_the_limit_is_refused_as_the_worker_would() -> None:
    limits = ValidationLimits(max_event_bytes=256, max_future_skew_s=300, min_event_year=1990)
    check = EventCheck(limits, lambda: NOW)
    body = _just_under(256)
    line = json.dumps(body, separators=(",", ":")).encode()

    for validate in (lambda: check.json_line(line), lambda: check.fields(body)):
        with pytest.raises(InvalidEvent) as refused:
            validate()
        assert refused.value.reason == "too_large"
    # the worker refuses what would have been sent
    with pytest.raises(InvalidEvent, match="over the limit"):
        decode_event(event_to_json(parse_event(line)), key=b"u1", now=NOW, limits=limits)


def test_recloop_produce_checks_each_event_as_the_worker_does() -> None:
    limits = ValidationLimits(max_event_bytes=256, max_future_skew_s=300, min_event_year=1990)
    good = json.dumps(_event_fields("e0", "2026-05-31T10:00:00Z"))
    key, value = encode_line(good, "events", limits, NOW)
    assert decode_event(value, key=key, now=NOW, limits=limits).event_id == "e0"
    refused = {
        "timestamp_in_future": json.dumps(_event_fields("e1", "2099-01-01T00:00:00Z")),
        "timestamp_too_old": json.dumps(_event_fields("e2", "1970-01-01T00:00:00Z")),
        "schema_violation": json.dumps(
            {**_event_fields("e3", "2026-05-31T10:00:00Z"), "user_id": "u\u200b1"}
        ),
        "too_large": json.dumps(_just_under(256), separators=(",", ":")),
    }
    for reason, line in refused.items():
        with pytest.raises(ValueError, match=reason):
            encode_line(line, "events", limits, NOW)


def _event_fields(event_id: str, timestamp: str) -> dict[str, object]:
    return {"event_id": event_id, "user_id": "u1", "type": "click", "item_id": "i1",
            "timestamp": timestamp}  # fmt: skip


def test_recloop_produce_waits_for_a_full_local_queue_instead_of_dying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.clients

    class FullOnce:  # confluent-kafka raises BufferError while its local queue is full
        def __init__(self, _config: object) -> None:
            self.sent: list[bytes] = []
            self.full = True

        def produce(self, _topic: str, *, key: bytes, value: bytes, on_delivery: object) -> None:
            if self.full:
                self.full = False
                raise BufferError("Local: Queue full")
            self.sent.append(value)

        def poll(self, _timeout: float) -> int:
            return 0

        def flush(self, _timeout: float) -> int:
            return 0

    producers: list[FullOnce] = []
    monkeypatch.setattr(
        pipeline.clients, "Producer", lambda c: producers.append(FullOnce(c)) or producers[-1]
    )
    lines = [json.dumps(_event_fields(f"e{n}", "2026-05-31T10:00:00Z")) for n in range(3)]

    report = pipeline.clients.produce_lines(
        lines, "events", "events", "127.0.0.1:9", LIMITS, lambda: NOW
    )

    assert (report.accepted, report.rejected) == (3, 0)
    assert [parse_event(v).event_id for v in producers[0].sent] == ["e0", "e1", "e2"]


def test_a_lone_surrogate_escaped_in_a_csv_json_cell_is_rejected_as_in_a_json_line(
    tmp_path: Path,
) -> None:
    # json.loads turns the cell's escape into a character UTF-8 cannot encode
    path = tmp_path / "log.csv"
    path.write_text(
        "event_id,user_id,type,timestamp,item_ids\n"
        'e1,u1,impression,2026-01-01T00:00:00Z,"[""\\udc80""]"\n'
        'e2,u1,impression,2026-01-01T00:01:00Z,"[""i1""]"\n'
    )
    line = tmp_path / "log.jsonl"
    line.write_text(
        '{"event_id":"e1","user_id":"u1","type":"impression",'
        '"timestamp":"2026-01-01T00:00:00Z","item_ids":["\\udc80"]}\n'
    )

    got = records(path, "csv")

    assert got[0].error is not None and got[0].error.reason == "invalid_json"
    assert got[0].error.reason == records(line, "jsonl")[0].error.reason  # type: ignore[union-attr]
    assert got[1].event is not None  # and the replay goes on


@pytest.mark.parametrize(
    ("column", "cell", "typed"),
    [
        ("position", "3", 3),
        ("position", "-2", -2),
        ("position", "1_0", "1_0"),  # int() would read 10
        ("position", " 3 ", " 3 "),
        ("position", "+3", "+3"),
        ("dwell_ms", "1500", 1500.0),
        ("dwell_ms", "1.5e3", 1500.0),
        ("dwell_ms", "1_500", "1_500"),
        ("dwell_ms", "nan", "nan"),
        ("dwell_ms", "Infinity", "Infinity"),
        ("dwell_ms", ".5", ".5"),
    ],
)
def test_csv_numbers_convert_only_as_json_writes_them(
    column: str, cell: str, typed: object
) -> None:
    from pipeline.replay import csv_fields

    assert csv_fields([column], [cell]) == {column: typed}
