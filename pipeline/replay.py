r"""Replay an event log (JSON lines or CSV, optionally gzipped) into the events topic.

A backfill keeps event time: every event goes out with its own ``timestamp``, keyed by
``user_id``, through a producer configured by :func:`pipeline.clients.producer_config`
(idempotence, ``acks=all``, murmur2). Everything but the sender is Kafka-free and tested
without a broker:

* :func:`read_log` yields every record of a log with its line number, its byte position
  and either the validated event or the reason a worker would reject it;
* :class:`Pacer` spaces events out (a rate, or the log's own pacing sped up) on an
  injected clock;
* :class:`DeliveryWatermark` turns out-of-order delivery confirmations into the position
  a :class:`CheckpointState` may record: every record before it is settled;
* :func:`replay_log` ties them together against a :class:`Sink` (:class:`KafkaSink` in
  production, nothing in a dry run).

``replay_command`` is ``recloop replay``; docs/replay.md describes it.

Example:
    >>> import tempfile, pathlib
    >>> from datetime import UTC, datetime
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> _ = log.write_text(
    ...     '{"event_id":"e1","user_id":"u1","type":"click","item_id":"i1",'
    ...     '"timestamp":"2026-01-01T00:00:00Z"}\n{oops\n'
    ... )
    >>> limits = ValidationLimits(max_event_bytes=65536, max_future_skew_s=300, min_event_year=1990)
    >>> check = EventCheck(limits, lambda: datetime(2026, 6, 1, tzinfo=UTC))
    >>> [(r.line, r.error and r.error.reason) for r in read_log(log, "jsonl", check)]
    [(1, None), (2, 'invalid_json')]

"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal, Protocol

import click
from pydantic import BaseModel, ConfigDict, ValidationError

from operators.files import write_atomic
from operators.validation import (
    InvalidEvent,
    ValidationLimits,
    decode_event,
    decode_unkeyed,
    encode_event,
    user_key,
)
from pipeline.settings import LimitSettings, Settings
from schemas.events import ITEM_EVENTS, Context, Event, Impression, Preference, event_to_json

LogFormat = Literal["jsonl", "csv"]
Clock = Callable[[], float]
WallClock = Callable[[], datetime]
Sleep = Callable[[float], object]

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
#: How much of the log's beginning its identity hashes (with its size).
HEAD_BYTES = 64 * 1024
#: Rejections listed in the summary line; ``--rejects`` keeps every one.
MAX_LISTED_REJECTIONS = 100
#: The one reason beyond the dead-letter reasons: a CSV record the csv module cannot read.
INVALID_CSV = "invalid_csv"

_EVENT_MODELS: tuple[type[BaseModel], ...] = (*ITEM_EVENTS, Impression, Preference)
#: CSV columns: every top-level event field, plus ``context.<field>`` for the context.
EVENT_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(name for model in _EVENT_MODELS for name in model.model_fields)
)
CONTEXT_COLUMNS: tuple[str, ...] = tuple(f"context.{name}" for name in Context.model_fields)
#: How a CSV cell becomes a JSON value; any other column is a string.
INTEGER_COLUMNS = frozenset({"schema_version", "position"})
NUMBER_COLUMNS = frozenset({"dwell_ms", "value"})
JSON_COLUMNS = frozenset({"item_ids", "context"})


class ReplayError(Exception):
    """The replay cannot start or go on: a bad header, an unreadable file, a checkpoint mismatch."""


# -- reading ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """A place in the log: ``offset`` bytes (decompressed) and ``line`` lines before it."""

    offset: int = 0
    line: int = 0

    def as_dict(self) -> dict[str, int]:
        """A JSON-ready form."""
        return {"line": self.line, "offset": self.offset}


@dataclass(frozen=True)
class LogRecord:
    """One record of the log: a line of JSONL, or a CSV record (possibly several lines).

    Exactly one of ``event`` and ``error`` is set, or neither for a blank line.
    """

    line: int  #: the (1-based) line the record starts on
    end: Position  #: the position just after it
    disk: int  #: bytes of the file read so far (compressed bytes for gzip): for progress
    raw: bytes  #: the record as it is in the log, without its line ending
    event: Event | None = None
    error: InvalidEvent | None = None

    @property
    def blank(self) -> bool:
        """Whether the record is an empty line."""
        return self.event is None and self.error is None


def validation_limits(limits: LimitSettings) -> ValidationLimits:
    """The worker's validation limits, taken from the settings."""
    names = [f.name for f in dataclasses.fields(ValidationLimits)]
    return ValidationLimits(**{name: getattr(limits, name) for name in names})


class EventCheck:
    """Validates records as a worker does: the contract, the size limit, event-time plausibility.

    It calls :func:`operators.validation.decode_event`, so a rejected record carries the
    reason a worker would dead-letter it with. The key is the event's own ``user_id``
    (the replay keys every event so), hence never ``key_mismatch``. ``now`` is the clock
    ``timestamp_in_future`` is judged against.
    """

    def __init__(self, limits: ValidationLimits, now: WallClock) -> None:
        self.limits = limits
        self.now = now

    def json_line(self, raw: bytes) -> Event:
        """Validate one JSON-encoded event.

        Raises:
            InvalidEvent: with the worker's reason.

        """
        return self._sendable(decode_unkeyed(raw, now=self.now(), limits=self.limits))

    def fields(self, fields: dict[str, object]) -> Event:
        """Validate an event given as fields (a CSV record); see :meth:`json_line`."""
        try:
            raw = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:  # a JSON cell's escape of a lone surrogate: as escaped,
            raw = json.dumps(fields, separators=(",", ":")).encode()  # the check names it
        event = decode_event(raw, key=user_key(fields), now=self.now(), limits=self.limits)
        return self._sendable(event)

    def _sendable(self, event: Event) -> Event:
        encode_event(event, self.limits)  # what is produced must pass the size limit too
        return event


def detect_format(path: Path) -> LogFormat:
    """The format a log's name says: ``.jsonl``/``.ndjson``/``.json`` or ``.csv``, maybe ``.gz``.

    Raises:
        ReplayError: the name says neither.

    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if last == ".csv":
        return "csv"
    raise ReplayError(
        f"cannot tell the format of {path} from its name; pass --format jsonl or --format csv"
    )


Stream = io.BufferedReader | gzip.GzipFile


@contextmanager
def _open_log(path: Path) -> Iterator[tuple[Stream, IO[bytes]]]:
    """The log's decompressed bytes (gzip is recognised by its magic bytes) and the file."""
    disk = path.open("rb")
    try:
        gzipped = disk.read(2) == GZIP_MAGIC
        disk.seek(0)
        if not gzipped:
            yield disk, disk
            return
        with gzip.GzipFile(fileobj=disk, mode="rb") as stream:
            yield stream, disk
    finally:
        disk.close()


def _seek(stream: Stream, start: Position, path: Path) -> None:
    """Move to ``start``, which must be the beginning of a line (or the end of the log)."""
    if start.offset == 0:
        return
    stream.seek(start.offset - 1)
    before = stream.read(1)
    at_end = before != b"" and stream.peek(1)[:1] == b""
    if before != b"\n" and not at_end:
        raise ReplayError(
            f"the checkpoint's position (line {start.line}, byte {start.offset}) is not the "
            f"start of a line of {path}: the log changed since the checkpoint was written"
        )


def _jsonl_records(
    stream: Stream, disk: IO[bytes], start: Position, check: EventCheck
) -> Iterator[LogRecord]:
    offset, line = start.offset, start.line
    for chunk in stream:
        offset += len(chunk)
        line += 1
        raw = chunk.rstrip(b"\r\n")
        if line == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        end = Position(offset, line)
        if not raw.strip():
            yield LogRecord(line, end, disk.tell(), raw)
            continue
        try:
            event = check.json_line(raw)
        except InvalidEvent as exc:
            yield LogRecord(line, end, disk.tell(), raw, error=exc)
        else:
            yield LogRecord(line, end, disk.tell(), raw, event=event)


@dataclass(frozen=True)
class _CsvRow:
    line: int
    end: Position
    raw: bytes
    cells: list[str] | None  # None: the csv module could not read the record
    problem: str = ""


def _csv_rows(stream: Stream, start: Position) -> Iterator[_CsvRow]:
    """CSV records with their lines and bytes; a quoted cell may span lines."""
    consumed: list[bytes] = []

    def text_lines() -> Iterator[str]:
        at_start = start.offset == 0
        for chunk in stream:
            consumed.append(chunk)
            text = chunk.decode("utf-8", "surrogateescape")  # bad bytes are reported per row
            if at_start:  # a byte-order mark goes before the csv module reads a quote
                text, at_start = text.removeprefix("\ufeff"), False
            yield text

    reader = csv.reader(text_lines(), strict=True)
    offset, line = start.offset, start.line
    while True:
        problem = ""
        cells: list[str] | None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            cells, problem = None, str(exc)
        if not consumed:
            return
        raw = b"".join(consumed)
        first = line + 1
        offset, line = offset + len(raw), line + len(consumed)
        consumed.clear()
        yield _CsvRow(first, Position(offset, line), raw.rstrip(b"\r\n"), cells, problem)


def _csv_columns(row: _CsvRow | None, path: Path) -> list[str]:
    if row is None:
        return []
    if row.cells is None:
        raise ReplayError(f"{path}: the CSV header (line {row.line}) is unreadable: {row.problem}")
    columns = [c.strip() for c in row.cells]
    known = (*EVENT_COLUMNS, *CONTEXT_COLUMNS)
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ReplayError(
            f"{path}: CSV column(s) {', '.join(map(repr, unknown))} are not event fields; "
            f"the first row must name the columns, from: {', '.join(known)}"
        )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ReplayError(f"{path}: CSV column(s) {', '.join(repeated)} appear twice")
    if "context" in columns and any(c.startswith("context.") for c in columns):
        raise ReplayError(f"{path}: give the context as one JSON column or as context.* columns")
    return columns


#: An integer and a number written as JSON writes them: Python's int() and float() would
#: also take ``1_0``, `` 3 `` and ``nan``, which a JSON line could not hold.
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _cell(name: str, cell: str) -> object:
    try:
        if name in INTEGER_COLUMNS:
            return int(cell) if _INTEGER.fullmatch(cell) else cell
        if name in NUMBER_COLUMNS:
            return float(cell) if _NUMBER.fullmatch(cell) else cell
        if name in JSON_COLUMNS:
            return json.loads(cell)
    except (ValueError, RecursionError):
        pass  # left as text: the contract check names the field and the problem
    return cell


def csv_fields(columns: list[str], cells: list[str]) -> dict[str, object]:
    """The event fields of one CSV record: empty cells are absent fields.

    Raises:
        InvalidEvent: more cells than columns (``invalid_csv``) or bytes that are not
            UTF-8 (``invalid_utf8``).

    """
    if len(cells) > len(columns):
        raise InvalidEvent(
            INVALID_CSV, f"{len(cells)} cells, but the header names {len(columns)} columns"
        )
    fields: dict[str, object] = {}
    context: dict[str, object] = {}
    for name, cell in zip(columns, cells, strict=False):
        if cell == "":
            continue
        try:
            cell.encode()
        except UnicodeEncodeError:
            raise InvalidEvent("invalid_utf8", f"{name}: bytes that are not UTF-8") from None
        if name.startswith("context."):
            context[name.removeprefix("context.")] = cell
        else:
            fields[name] = _cell(name, cell)
    if context:
        fields["context"] = context
    return fields


def _csv_records(
    path: Path, stream: Stream, disk: IO[bytes], start: Position, check: EventCheck
) -> Iterator[LogRecord]:
    rows = _csv_rows(stream, Position())
    header = next(rows, None)
    columns = _csv_columns(header, path)
    if header is None:
        return
    if start.offset > header.end.offset:
        _seek(stream, start, path)
        rows = _csv_rows(stream, start)
    for row in rows:
        disk_at = disk.tell()
        if row.cells is None:
            error = InvalidEvent(INVALID_CSV, f"not a CSV record: {row.problem}")
            yield LogRecord(row.line, row.end, disk_at, row.raw, error=error)
            continue
        if not row.cells or not any(row.cells):
            yield LogRecord(row.line, row.end, disk_at, row.raw)
            continue
        try:
            event = check.fields(csv_fields(columns, row.cells))
        except InvalidEvent as exc:
            yield LogRecord(row.line, row.end, disk_at, row.raw, error=exc)
        else:
            yield LogRecord(row.line, row.end, disk_at, row.raw, event=event)


def csv_header(path: Path) -> list[str]:
    """The columns a CSV log's header row names, checked as :func:`read_log` checks them.

    Raises:
        ReplayError: the file cannot be read, or its header names unknown or repeated
            columns (a replay refuses such a log before it starts).

    """
    try:
        with _open_log(path) as (stream, _disk):
            return _csv_columns(next(_csv_rows(stream, Position()), None), path)
    except (OSError, EOFError) as exc:
        raise ReplayError(f"{path} cannot be read: {exc}") from exc


def read_log(
    path: Path, log_format: LogFormat, check: EventCheck, start: Position = Position()
) -> Iterator[LogRecord]:
    """Every record of the log from ``start`` on, valid or not, in order.

    Args:
        path: the log; gzip-compressed when it starts with gzip's magic bytes.
        log_format: ``jsonl`` (one event per line) or ``csv`` (a header row naming the
            event fields, see :func:`csv_fields`).
        check: how records are validated.
        start: where to resume (a position a checkpoint recorded).

    Raises:
        ReplayError: the file cannot be read (damaged gzip, bad CSV header, a start
            that is not the beginning of a line).

    """
    try:
        with _open_log(path) as (stream, disk):
            if log_format == "csv":
                yield from _csv_records(path, stream, disk, start, check)
                return
            _seek(stream, start, path)
            yield from _jsonl_records(stream, disk, start, check)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ReplayError(f"{path} cannot be read: {exc}") from exc


@dataclass(frozen=True)
class TimeRange:
    """Event times to replay: ``since`` (inclusive) to ``until`` (exclusive); ``None`` is open."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for moment in (self.since, self.until):
            if moment is not None and moment.tzinfo is None:
                raise ValueError("time range bounds need a UTC offset")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(f"since ({self.since}) must be before until ({self.until})")

    def contains(self, moment: datetime) -> bool:
        """Whether an event at ``moment`` is replayed."""
        return (self.since is None or moment >= self.since) and (
            self.until is None or moment < self.until
        )


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (``2026-01-01T00:00:00Z``).

    Raises:
        ValueError: not ISO 8601, or no offset.

    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time, e.g. 2026-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset, e.g. 2026-01-01T00:00:00Z")
    return moment


# -- pacing -------------------------------------------------------------------------------
class Pacer:
    """When to send each event: at most ``rate`` per second, or the log's own pacing sped up.

    With ``speed`` an event is due ``(its time - the first event's time) / speed`` after
    the first was sent (an event older than the first is due at once). Due times are
    absolute, so sleeping late never accumulates drift. With neither: no waiting.

    Example:
        >>> now = [0.0]
        >>> def sleep(seconds):
        ...     now[0] += seconds
        >>> pacer = Pacer(rate=2.0, clock=lambda: now[0], sleep=sleep)
        >>> from datetime import UTC, datetime
        >>> for _ in range(3):
        ...     pacer.wait(datetime(2026, 1, 1, tzinfo=UTC))
        >>> now[0]
        1.0

    """

    def __init__(
        self,
        rate: float | None = None,
        speed: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if rate is not None and speed is not None:
            raise ValueError("give a rate or a speed, not both")
        if (rate is not None and rate <= 0) or (speed is not None and speed <= 0):
            raise ValueError("rate and speed must be positive")
        self.rate = rate
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._started: float | None = None
        self._first: datetime | None = None
        self._count = 0

    def wait(self, event_time: datetime) -> None:
        """Sleep until the next event, at ``event_time``, is due."""
        if self.rate is None and self.speed is None:
            return
        now = self._clock()
        if self._started is None or self._first is None:
            self._started, self._first = now, event_time
        if self.rate is not None:
            due = self._started + self._count / self.rate
        else:
            assert self.speed is not None
            lead = max(0.0, (event_time - self._first).total_seconds())
            due = self._started + lead / self.speed
        self._count += 1
        if due > now:
            self._sleep(due - now)


# -- delivery and checkpoints ---------------------------------------------------------------
@dataclass
class _Slot:
    end: Position
    settled: bool = False


class DeliveryWatermark:
    """The furthest position before which every record is settled.

    Settled: delivered (confirmed by the broker), rejected, blank or out of range.
    Deliveries are confirmed out of order (one partition may be faster than another), so
    the watermark stops at the first record still in flight, and for good at one whose
    delivery failed: a checkpoint never skips a record that did not reach the topic.
    """

    def __init__(self, start: Position) -> None:
        self.position = start
        self._slots: deque[_Slot] = deque()

    @property
    def in_flight(self) -> int:
        """Records after the watermark not settled yet (failed ones included)."""
        return sum(not slot.settled for slot in self._slots)

    def settle(self, end: Position) -> None:
        """A record that needs no delivery ends at ``end``."""
        if self._slots:
            self._slots.append(_Slot(end, settled=True))
        else:
            self.position = end

    def expect(self, end: Position) -> Callable[[bool], None]:
        """A record ending at ``end`` was sent; call the result with whether it was delivered."""
        slot = _Slot(end)
        self._slots.append(slot)

        def delivered(ok: bool) -> None:
            if ok:
                slot.settled = True
                while self._slots and self._slots[0].settled:
                    self.position = self._slots.popleft().end

        return delivered


class CheckpointState(BaseModel):
    """What a checkpoint file holds: which log, which replay, and how far it got.

    ``offset`` and ``line`` are just after the last record whose fate is settled (its
    delivery confirmed, or it was rejected or skipped); a resumed replay starts there.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    log: str
    log_size: int
    log_head_sha256: str
    format: LogFormat
    topic: str
    since: datetime | None
    until: datetime | None
    offset: int
    line: int
    complete: bool
    saved_at: datetime

    @property
    def position(self) -> Position:
        """Where a resumed replay starts."""
        return Position(self.offset, self.line)

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically (a reader sees the previous one or this one)."""
        data = self.model_dump_json(indent=1).encode()
        write_atomic(path, lambda out: out.write(data))

    @classmethod
    def load(cls, path: Path) -> CheckpointState:
        """Read a checkpoint file.

        Raises:
            ReplayError: unreadable or not a checkpoint.

        """
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ReplayError(
                f"checkpoint {path} is unreadable ({str(exc).splitlines()[0]}); "
                "delete it to replay from the beginning"
            ) from None

    def mismatches(self, other: CheckpointState) -> list[str]:
        """How ``other`` (this replay, about to start) differs from this saved checkpoint."""
        problems = []
        if (self.log_size, self.log_head_sha256) != (other.log_size, other.log_head_sha256):
            problems.append(
                f"it was written for {self.log} ({self.log_size} bytes, first bytes sha256 "
                f"{self.log_head_sha256[:12]}), not {other.log} ({other.log_size} bytes, "
                f"sha256 {other.log_head_sha256[:12]})"
            )
        for name in ("format", "topic", "since", "until"):
            saved, now = getattr(self, name), getattr(other, name)
            if saved != now:
                problems.append(f"its {name} was {saved}, this replay's is {now}")
        return problems


def log_identity(path: Path) -> tuple[str, int, str]:
    """A log's path, size and the sha256 of its first :data:`HEAD_BYTES` bytes."""
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    return str(path.resolve()), path.stat().st_size, hashlib.sha256(head).hexdigest()


# -- the replay ---------------------------------------------------------------------------
class Sink(Protocol):
    """Where valid events go: the events topic, through an idempotent producer."""

    @property
    def topic(self) -> str:
        """The topic's full name."""

    def send(self, key: bytes, value: bytes, delivered: Callable[[str | None], None]) -> None:
        """Queue one record; :meth:`poll` and :meth:`flush` call ``delivered(error or None)``."""

    def poll(self) -> None:
        """Serve delivery reports that are ready, without waiting."""

    def flush(self, timeout_s: float) -> int:
        """Wait for every queued record's report; returns how many are still unconfirmed."""


class Progress(Protocol):
    """Shows how far the replay is (a progress bar on stderr, or nothing)."""

    def start(self, total: int, done: int) -> None:
        """The log has ``total`` bytes on disk, ``done`` of them before the start."""

    def update(self, done: int, summary: ReplaySummary, elapsed_s: float) -> None:
        """``done`` bytes of the file read; ``summary`` so far."""

    def close(self) -> None:
        """The replay ended."""


class Interruption:
    """A stop request (SIGINT/SIGTERM): the replay finishes cleanly and saves its checkpoint."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        """Whether to stop."""
        return self._event.is_set()

    def request(self, name: str = "stop") -> None:
        """Ask the replay to stop after the record in hand; ``name`` is the signal's."""
        self.signal_name = name
        self._event.set()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when a stop is requested (the pacer's sleep)."""
        self._event.wait(seconds)


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay (the command's options)."""

    log_format: LogFormat
    time_range: TimeRange = TimeRange()
    rate: float | None = None
    speed: float | None = None
    checkpoint: Path | None = None
    checkpoint_every_s: float = 5.0
    rejects: Path | None = None
    dedupe_window: int = 500  #: the workers' ``limits.dedupe_window`` (dry-run advice)
    flush_timeout_s: float = 120.0


@dataclass
class ReplaySummary:
    """What a replay did; :meth:`as_dict` is the command's summary line."""

    log: str
    log_format: LogFormat
    dry_run: bool
    topic: str | None
    records: int = 0
    valid: int = 0
    produced: int = 0
    rejected: int = 0
    out_of_range: int = 0
    blank: int = 0
    delivery_failures: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    rejections: list[dict[str, object]] = field(default_factory=list)
    delivery_errors: list[str] = field(default_factory=list)
    resumed_from: Position | None = None
    position: Position = Position()
    complete: bool = False
    interrupted: str | None = None
    aborted: str | None = None
    elapsed_s: float = 0.0
    events_per_user: Counter[str] = field(default_factory=Counter)
    dedupe_window: int = 500
    lag: int | None = None

    def reject(self, record: LogRecord) -> None:
        """Count a rejected record (and list it, up to :data:`MAX_LISTED_REJECTIONS`)."""
        assert record.error is not None
        self.rejected += 1
        self.rejected_by_reason[record.error.reason] += 1
        if len(self.rejections) < MAX_LISTED_REJECTIONS:
            self.rejections.append(
                {"line": record.line, "reason": record.error.reason, "detail": record.error.detail}
            )

    def as_dict(self) -> dict[str, object]:
        """The JSON summary line."""
        document: dict[str, object] = {
            "log": self.log,
            "format": self.log_format,
            "dry_run": self.dry_run,
            "topic": self.topic,
            "records": self.records,
            "valid": self.valid,
            "produced": self.produced,
            "rejected": self.rejected,
            "out_of_range": self.out_of_range,
            "blank": self.blank,
            "delivery_failures": self.delivery_failures,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "rejections": self.rejections,
            "rejections_truncated": self.rejected > len(self.rejections),
            "delivery_errors": self.delivery_errors[:20],
            "resumed_from": self.resumed_from.as_dict() if self.resumed_from else None,
            "position": self.position.as_dict(),
            "complete": self.complete,
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.valid / self.elapsed_s, 1) if self.elapsed_s else None,
            "lag": self.lag,
        }
        if self.dry_run:
            counts = self.events_per_user.values()
            document["users"] = len(self.events_per_user)
            document["max_events_per_user"] = max(counts, default=0)
            document["users_over_dedupe_window"] = sum(c > self.dedupe_window for c in counts)
            document["dedupe_window"] = self.dedupe_window
        return document

    @property
    def exit_code(self) -> int:
        """0 all done and nothing rejected; 1 rejections, failures or an abort; 128+signal."""
        if self.interrupted is not None:
            return 128 + _signal_number(self.interrupted)
        bad = self.rejected or self.delivery_failures or self.aborted or self.lag
        return 1 if bad else 0


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name])
    except KeyError:
        return 2  # stopped by a caller, not a signal: report it as an interrupt


class _NoProgress:
    def start(self, total: int, done: int) -> None:
        pass

    def update(self, done: int, summary: ReplaySummary, elapsed_s: float) -> None:
        pass

    def close(self) -> None:
        pass


class _Replay:
    """One run of :func:`replay_log` (the state its steps share)."""

    def __init__(
        self,
        path: Path,
        options: ReplayOptions,
        check: EventCheck,
        sink: Sink | None,
        clock: Clock,
        sleep: Sleep,
        interruption: Interruption,
        progress: Progress,
        wall_clock: WallClock,
    ) -> None:
        self.path, self.options, self.check, self.sink = path, options, check, sink
        self.clock, self.interruption, self.progress = clock, interruption, progress
        self.wall_clock = wall_clock
        self.pacer = Pacer(options.rate, options.speed, clock=clock, sleep=sleep)
        self.summary = ReplaySummary(
            log=str(path), log_format=options.log_format, dry_run=sink is None,
            topic=sink.topic if sink else None, dedupe_window=options.dedupe_window,
        )  # fmt: skip
        self.identity = log_identity(path)
        self.start = self._resume()
        self.watermark = DeliveryWatermark(self.start)
        self.rejects: IO[str] | None = None
        self.started_at = self.last_saved = self.last_shown = clock()
        self.disk = 0

    def _state(self, position: Position, complete: bool) -> CheckpointState:
        assert self.sink is not None
        log, size, head = self.identity
        return CheckpointState(
            log=log, log_size=size, log_head_sha256=head, format=self.options.log_format,
            topic=self.sink.topic, since=self.options.time_range.since,
            until=self.options.time_range.until, offset=position.offset, line=position.line,
            complete=complete, saved_at=self.wall_clock(),
        )  # fmt: skip

    def _resume(self) -> Position:
        path = self.options.checkpoint
        if path is None or not path.exists():
            return Position()
        saved = CheckpointState.load(path)
        problems = saved.mismatches(self._state(Position(), complete=False))
        if problems:
            raise ReplayError(
                f"checkpoint {path} does not match this replay: {'; '.join(problems)}. "
                "Use another --checkpoint, or delete this one to replay from the beginning."
            )
        self.summary.resumed_from = saved.position
        return saved.position

    def run(self) -> ReplaySummary:
        if self.options.rejects is not None:
            self.options.rejects.parent.mkdir(parents=True, exist_ok=True)
            mode = "a" if self.summary.resumed_from else "w"
            self.rejects = self.options.rejects.open(mode, encoding="utf-8")
        self.progress.start(self.path.stat().st_size, self._disk_at_start())
        exhausted = False
        try:
            for record in read_log(self.path, self.options.log_format, self.check, self.start):
                # a failure a poll reported is final: nothing more is sent after it
                if self.interruption.requested or self.summary.delivery_failures:
                    break
                if not self._take(record):
                    break
                self._tick(record.disk)
            else:
                exhausted = not self.interruption.requested
        except ReplayError as exc:
            self.summary.aborted = str(exc)
        finally:
            self._finish(exhausted)
        return self.summary

    def _disk_at_start(self) -> int:
        # a gzipped log's position on disk is unknown before reading; plain ones match
        with self.path.open("rb") as handle:
            gzipped = handle.read(2) == GZIP_MAGIC
        return 0 if gzipped else self.start.offset

    def _take(self, record: LogRecord) -> bool:
        """Handle one record; False when the replay must stop before sending it."""
        summary = self.summary
        if record.blank:
            summary.blank += 1
            self.watermark.settle(record.end)
            return True
        summary.records += 1
        if record.error is not None:
            summary.reject(record)
            self._write_reject(record)
            self.watermark.settle(record.end)
            return True
        event = record.event
        assert event is not None
        if not self.options.time_range.contains(event.timestamp):
            summary.out_of_range += 1
            self.watermark.settle(record.end)
            return True
        if self.sink is None:
            summary.valid += 1
            summary.events_per_user[event.user_id] += 1
            self.watermark.settle(record.end)
            return True
        self.pacer.wait(event.timestamp)
        if self.interruption.requested or summary.delivery_failures:
            return False
        summary.valid += 1
        confirm = self.watermark.expect(record.end)

        def delivered(error: str | None) -> None:
            confirm(error is None)
            if error is None:
                summary.produced += 1
            else:
                summary.delivery_failures += 1
                summary.delivery_errors.append(f"line {record.line}: {error}")

        self.sink.send(event.user_id.encode(), event_to_json(event), delivered)
        return not summary.delivery_failures  # a failed delivery stops the replay

    def _write_reject(self, record: LogRecord) -> None:
        if self.rejects is None or record.error is None:
            return
        entry = {
            "line": record.line,
            "reason": record.error.reason,
            "detail": record.error.detail,
            # surrogateescape + JSON's \\udcXX escapes: bytes that are not UTF-8 survive
            "raw": record.raw.decode("utf-8", "surrogateescape"),
        }
        self.rejects.write(json.dumps(entry) + "\n")

    def _tick(self, disk: int) -> None:
        self.disk = disk
        if self.sink is not None:
            self.sink.poll()
        now = self.clock()
        if now - self.last_shown >= 0.2:
            self.last_shown = now
            self.progress.update(disk, self.summary, now - self.started_at)
        if self.options.checkpoint and now - self.last_saved >= self.options.checkpoint_every_s:
            self.last_saved = now
            self._save(complete=False)

    def _save(self, complete: bool) -> None:
        if self.rejects is not None:  # a checkpoint never covers a reject not on disk yet
            self.rejects.flush()
            os.fsync(self.rejects.fileno())
        if self.options.checkpoint is not None:
            self._state(self.watermark.position, complete).save(self.options.checkpoint)

    def _finish(self, exhausted: bool) -> None:
        summary = self.summary
        if self.sink is not None:
            unconfirmed = self.sink.flush(self.options.flush_timeout_s)
            if unconfirmed:
                summary.delivery_failures += unconfirmed
                summary.delivery_errors.append(
                    f"{unconfirmed} records unconfirmed after {self.options.flush_timeout_s:g}s"
                )
        summary.position = self.watermark.position
        summary.complete = (
            exhausted
            and summary.aborted is None
            and not summary.delivery_failures
            and self.watermark.in_flight == 0
        )
        if self.interruption.requested:
            summary.interrupted = self.interruption.signal_name
        self._save(summary.complete)
        if self.rejects is not None:
            self.rejects.close()
        summary.elapsed_s = self.clock() - self.started_at
        done = self.path.stat().st_size if summary.complete else self.disk
        self.progress.update(done, summary, summary.elapsed_s)
        self.progress.close()


def replay_log(
    path: Path,
    options: ReplayOptions,
    check: EventCheck,
    sink: Sink | None,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    interruption: Interruption | None = None,
    progress: Progress | None = None,
    wall_clock: WallClock | None = None,
) -> ReplaySummary:
    """Replay a log into ``sink`` (``None``: a dry run that only validates).

    Records are read in order; blank lines, invalid records (listed, and written to
    ``options.rejects``) and events outside the time range are skipped; the others are
    paced and sent, keyed by ``user_id``. On an interruption, a failed delivery or an
    unreadable log the replay stops, waits for what it sent, and saves its checkpoint;
    a replay with the same checkpoint continues after the last settled record.

    Args:
        path: the log.
        options: format, filters, pacing, checkpoint and rejects files.
        check: validates each record as a worker would.
        sink: where events go, or ``None`` for a dry run (no checkpoint then).
        clock: monotonic seconds, for pacing, progress and checkpoint intervals.
        sleep: the pacer's sleep (default: the interruption's, which wakes on a stop).
        interruption: set by a signal handler to stop cleanly.
        progress: shows progress (default: nothing).
        wall_clock: the time written into checkpoints.

    Raises:
        ReplayError: the checkpoint does not match this log and these options.

    """
    if sink is None and options.checkpoint is not None:
        raise ValueError("a dry run neither reads nor writes checkpoints")
    interruption = interruption or Interruption()
    run = _Replay(
        path, options, check, sink, clock, sleep or interruption.sleep, interruption,
        progress or _NoProgress(), wall_clock or (lambda: datetime.now(UTC)),
    )  # fmt: skip
    return run.run()


# -- Kafka ------------------------------------------------------------------------------
class KafkaSink:
    """The events topic through confluent-kafka, configured as every recloop producer is."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        from confluent_kafka import Producer

        from pipeline.clients import produce_waiting, producer_config

        self._topic = topic
        self._producer = Producer(producer_config(bootstrap_servers))
        self._produce = produce_waiting

    @property
    def topic(self) -> str:
        """The topic's full name."""
        return self._topic

    def send(self, key: bytes, value: bytes, delivered: Callable[[str | None], None]) -> None:
        """Queue one record, waiting for room when the producer's queue is full."""

        def report(error: Any, _message: object) -> None:
            delivered(None if error is None else str(error))

        self._produce(self._producer, self._topic, key, value, report)

    def poll(self) -> None:
        """Serve ready delivery reports."""
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait for every report; returns the records still unconfirmed."""
        return int(self._producer.flush(timeout_s))


def consumer_lag(
    bootstrap_servers: str,
    topic: str,
    group: str,
    timeout_s: float,
    stop: Callable[[], bool] = lambda: False,
    sleep: Sleep = time.sleep,
) -> int:
    """Wait until ``group`` has consumed ``topic`` to its end; returns the lag left (0: done).

    The group's committed offsets are read (no member joins it), so this is safe to run
    beside the workers. A partition the group never committed counts from its start.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": group, "enable.auto.commit": False}
    )
    deadline = time.monotonic() + timeout_s
    lag = -1
    try:
        while True:
            try:
                metadata = consumer.list_topics(topic, timeout=10).topics[topic]
                wanted = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
                lag = 0
                for tp in consumer.committed(wanted, timeout=10):
                    low, high = consumer.get_watermark_offsets(tp, timeout=10)
                    lag += high - (tp.offset if tp.offset >= 0 else low)
            except KafkaException:
                lag = -1  # not answerable yet (a leader moving): ask again
            if lag == 0 or time.monotonic() >= deadline or stop():
                return lag if lag >= 0 else 1
            sleep(0.5)
    finally:
        consumer.close()


# -- the command ------------------------------------------------------------------------
class ProgressBar:
    """A progress bar on stderr with the event rate and an ETA (click's, no new dependency)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None
        self._base = 0
        self._shown = 0
        self._text = ""

    def start(self, total: int, done: int) -> None:
        """Show the bar; the ETA counts the bytes still to read."""
        self._base = self._shown = done
        self._bar = click.progressbar(
            length=max(1, total - done), label=self._label, file=sys.stderr, show_eta=True,
            show_percent=True, width=24, item_show_func=lambda _item: self._text,
        )  # fmt: skip
        self._bar.__enter__()

    def update(self, done: int, summary: ReplaySummary, elapsed_s: float) -> None:
        """Advance to ``done`` bytes and show the counts."""
        rate = summary.valid / elapsed_s if elapsed_s > 0 else 0.0
        skipped = f"  {summary.out_of_range:,} out of range" if summary.out_of_range else ""
        self._text = f"{summary.valid:,} events {rate:,.0f}/s  {summary.rejected:,} rejected"
        self._text += skipped
        step = max(0, done - self._shown)
        self._shown += step
        self._bar.update(step)

    def close(self) -> None:
        """Finish the bar's line."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@contextmanager
def stop_on_signals(interruption: Interruption) -> Iterator[None]:
    """SIGINT and SIGTERM request a clean stop; a second one acts as it normally would."""
    previous: dict[signal.Signals, Any] = {}

    def handle(number: int, _frame: FrameType | None) -> None:
        interruption.request(signal.Signals(number).name)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class IsoTime(click.ParamType):
    """A click parameter: an ISO 8601 time with a UTC offset."""

    name = "ISO-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse the option's text."""
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class ReplayRefused(click.ClickException):
    """The replay cannot start: a bad option, header or checkpoint (exit code 2)."""

    exit_code = 2


def _broker_settings(ctx: click.Context) -> Settings:
    """The settings with the broker resolved and recloop's topics created."""
    from confluent_kafka import KafkaException

    from pipeline.broker import resolve_bootstrap
    from pipeline.embedded_kafka import BrokerError
    from pipeline.topics import create_topics

    settings = ctx.find_object(Settings) or Settings()
    try:
        settings = resolve_bootstrap(settings)
        assert settings.kafka.bootstrap_servers is not None
        create_topics(settings.kafka, settings.kafka.bootstrap_servers)
    except (BrokerError, KafkaException, RuntimeError) as exc:  # e.g. no broker answers
        raise click.ClickException(str(exc)) from exc
    return settings


_positive = click.FloatRange(min=0, min_open=True)
_FORMATS: dict[str, LogFormat] = {"jsonl": "jsonl", "csv": "csv"}


@click.command("replay")
@click.argument("log_path", metavar="LOG",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--format", "log_format", type=click.Choice(["auto", "jsonl", "csv"]),
              default="auto", show_default=True,
              help="auto: from the name (.jsonl/.ndjson/.json or .csv, maybe .gz).")  # fmt: skip
@click.option("--since", type=IsoTime(), default=None,
              help="Only events at or after this time (ISO 8601, with an offset).")  # fmt: skip
@click.option("--until", type=IsoTime(), default=None,
              help="Only events before this time (exclusive).")  # fmt: skip
@click.option("--rate", type=_positive, default=None, help="Events per second.")
@click.option("--speed", type=_positive, default=None,
              help="The log's own pacing, sped up by this factor (60: 1 h in 1 min).")  # fmt: skip
@click.option("--dry-run", is_flag=True,
              help="Validate only: produce nothing; say what would be rejected.")  # fmt: skip
@click.option("--checkpoint", "checkpoint_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Resume from this file if it exists; record progress in it.")  # fmt: skip
@click.option("--checkpoint-every", type=_positive, default=5.0, show_default=True,
              help="Seconds between checkpoint saves.")  # fmt: skip
@click.option("--rejects", "rejects_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Write rejected records here (JSON lines: line, reason, raw).")  # fmt: skip
@click.option("--wait-for-lag", is_flag=True,
              help="Then wait until group worker.app_id has consumed it all.")  # fmt: skip
@click.option("--lag-timeout", type=_positive, default=600.0, show_default=True,
              help="Seconds --wait-for-lag waits at most.")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def replay_command(
    ctx: click.Context, log_path: Path, log_format: str, since: datetime | None,
    until: datetime | None, rate: float | None, speed: float | None, dry_run: bool,
    checkpoint_path: Path | None, checkpoint_every: float, rejects_path: Path | None,
    wait_for_lag: bool, lag_timeout: float, quiet: bool,
) -> None:  # fmt: skip
    """Replay the event log LOG (JSONL or CSV, maybe gzipped) into the events topic.

    Events keep their own timestamps and are keyed by user_id. Prints one JSON summary
    line. Exit code 0: all done, nothing rejected; 1: records rejected (also in a dry
    run), delivery failures, lag left; 2: refused to start; 128+N: stopped by signal N,
    checkpoint saved. See docs/replay.md.
    """
    if rate is not None and speed is not None:
        raise ReplayRefused("--rate and --speed exclude each other")
    if dry_run and (checkpoint_path is not None or wait_for_lag):
        raise ReplayRefused("--dry-run produces nothing: no --checkpoint, no --wait-for-lag")
    try:
        time_range = TimeRange(since, until)
        fmt = detect_format(log_path) if log_format == "auto" else _FORMATS[log_format]
        if fmt == "csv":  # a bad header refuses the log before anything is sent
            csv_header(log_path)
    except (ValueError, ReplayError) as exc:
        raise ReplayRefused(str(exc)) from exc
    settings = ctx.find_object(Settings) or Settings()
    sink: KafkaSink | None = None
    if not dry_run:
        settings = _broker_settings(ctx)
        assert settings.kafka.bootstrap_servers is not None
        sink = KafkaSink(settings.kafka.bootstrap_servers, settings.kafka.topic("events"))
    options = ReplayOptions(
        log_format=fmt, time_range=time_range, rate=rate, speed=speed,
        checkpoint=checkpoint_path, checkpoint_every_s=checkpoint_every, rejects=rejects_path,
        dedupe_window=settings.limits.dedupe_window,
    )  # fmt: skip
    check = EventCheck(validation_limits(settings.limits), lambda: datetime.now(UTC))
    interruption = Interruption()
    progress = None if quiet else ProgressBar("validating" if dry_run else "replaying")
    with stop_on_signals(interruption):
        try:
            summary = replay_log(
                log_path, options, check, sink, interruption=interruption, progress=progress
            )
        except ReplayError as exc:
            raise ReplayRefused(str(exc)) from exc
        settled = summary.interrupted is None and summary.aborted is None
        if wait_for_lag and settled and not summary.delivery_failures:
            assert settings.kafka.bootstrap_servers is not None
            if not quiet:
                click.echo(f"waiting for group {settings.worker.app_id} to catch up", err=True)
            summary.lag = consumer_lag(
                settings.kafka.bootstrap_servers, settings.kafka.topic("events"),
                settings.worker.app_id, lag_timeout, lambda: interruption.requested,
                interruption.sleep,
            )  # fmt: skip
            if interruption.requested:
                summary.interrupted = interruption.signal_name
    click.echo(json.dumps(summary.as_dict()))
    sys.exit(summary.exit_code)
