"""Every offset of an input partition reaches its agent, or is read back and put in front.

Faust does not deliver every offset of a partition to its agent. Around a rebalance it
skips the events it fetched in the previous generation *and acknowledges them*
(``Stream._c_aiter``), so its next commit moves past events nobody processed, and its
commit lets a single unacknowledged event at the head of a partition through
(``Consumer._new_offset``). The fault suite saw events lost this way when one of two
workers died (docs/guarantees.md).

So recloop checks for itself. The ``progress`` table (changelogged, one entry per input
partition, written in that partition) holds the last offset an agent finished. Before a
batch is processed, each partition's offsets must follow on from there; where they jump,
the missing records are read back from the topic (:class:`KafkaRecordFetcher`) and
processed first, as Faust events of their own. What the topic no longer holds (a
transaction marker, a record past retention) is nothing to refill. The user state's
dedupe makes a refill that turns out to be a redelivery harmless.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import monotonic
from typing import Any, Protocol

import faust
import faust.streams
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from faust.types import Message

log = logging.getLogger(__name__)


@contextmanager
def processing(source: Any) -> Iterator[None]:
    """Make ``source`` (a Faust event) the one in hand while its table reads and writes run.

    Faust sends a table write to the changelog partition, and stores it in the RocksDB
    partition, of the event being processed (``faust.current_event()``). The stream sets
    that event as it yields it; a batch is processed after the stream has moved on, so
    each write names its own event here (a pipeline test pins the partitions).
    """
    token = faust.streams._current_event.set(weakref.ref(source))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


@dataclass(frozen=True)
class Fetched:
    """One record read back from a topic."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


class RecordFetcher(Protocol):
    """Reads records back from a topic partition (blocking; agents call it in a thread)."""

    def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Fetched]:
        """The records with offsets in ``[start, end)`` the partition still holds, in order."""


class KafkaRecordFetcher:
    """:class:`RecordFetcher` over a short-lived consumer that only reads (no group, no commits).

    Args:
        bootstrap_servers: the broker.
        timeout_s: how long one fetch may take before it fails.

    """

    def __init__(self, bootstrap_servers: str, timeout_s: float = 30.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s

    def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Fetched]:
        """Read from ``start`` until the first offset at or past ``end`` (or the log's end)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"recloop-refill-{uuid.uuid4().hex}",  # never joined: assign only
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # a range that retention cut into starts where the partition now starts
                # (the default, the log's end, would skip what it still holds)
                "auto.offset.reset": "earliest",
            }
        )
        records: list[Fetched] = []
        deadline = monotonic() + self.timeout_s
        try:
            consumer.assign([TopicPartition(topic, partition, start)])
            while True:
                if monotonic() > deadline:
                    raise TimeoutError(
                        f"reading {topic}[{partition}] offsets {start}..{end - 1} back took "
                        f"over {self.timeout_s:.0f} s"
                    )
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return records
                    raise KafkaException(error)
                offset = message.offset()
                assert offset is not None
                if offset >= end:
                    return records
                records.append(
                    Fetched(
                        offset=offset,
                        key=message.key(),
                        value=message.value(),
                        timestamp_ms=message.timestamp()[1],
                        headers=_headers(message.headers()),
                    )
                )
        finally:
            consumer.close()


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """A consumed record's headers as (name, bytes) pairs (a consumer gives a list)."""
    return tuple(
        (str(name), value if isinstance(value, bytes) else b"") for name, value in raw or ()
    )


def refilled_event(app: faust.App, like: Any, record: Fetched) -> faust.Event:
    """A Faust event for a record read back, on the partition (and generation) of ``like``."""
    message = like.message
    headers = list(record.headers)
    refill = Message(
        message.topic,
        message.partition,
        record.offset,
        record.timestamp_ms / 1000,
        message.timestamp_type,
        headers,
        record.key,
        record.value,
        None,
        tp=message.tp,
        generation_id=message.generation_id,
    )
    return faust.Event(app, record.key, record.value, headers, refill)


@dataclass
class Refill:
    """What :meth:`Progress.complete` found: the batch to process and what it put in it."""

    batch: list[Any]
    #: ids of the events read back (never acknowledged: Faust never delivered them)
    refilled: set[int]


class Progress:
    """The last offset finished per input partition, and the refill of any gap after it.

    Args:
        app: the worker's Faust app (for the refilled events).
        table: the ``progress`` table (key ``topic:partition``, value the offset as text).
        fetcher: where missing records are read back from.

    """

    def __init__(self, app: faust.App, table: Any, fetcher: RecordFetcher) -> None:
        self.app = app
        self.table = table
        self.fetcher = fetcher
        #: events read back so far (the gaps Faust left)
        self.refilled = 0

    @staticmethod
    def key(message: Any) -> str:
        """The table key of a message's partition."""
        return f"{message.topic}:{message.partition}"

    def _finished(self, source: Any) -> int | None:
        with processing(source):
            stored = self.table.get(self.key(source.message))
        return int(stored) if stored is not None else None

    async def complete(self, batch: Sequence[Any]) -> Refill:
        """``batch`` with every record missing before or between its events put in place."""
        expected: dict[str, int | None] = {}
        out: list[Any] = []
        refilled: set[int] = set()
        for source in batch:
            message = source.message
            key = self.key(message)
            if key not in expected:
                finished = self._finished(source)
                expected[key] = finished + 1 if finished is not None else None
            start = expected[key]
            if start is not None and message.offset > start:
                records = await asyncio.get_running_loop().run_in_executor(
                    None, self.fetcher.fetch, message.topic, message.partition, start,
                    message.offset,
                )  # fmt: skip
                if records:
                    log.warning(
                        "%s[%d]: offsets %d..%d never reached the agent; %d read back",
                        message.topic, message.partition, start, message.offset - 1,
                        len(records),
                    )  # fmt: skip
                for record in records:
                    event = refilled_event(self.app, source, record)
                    refilled.add(id(event))
                    out.append(event)
                self.refilled += len(records)
            out.append(source)
            expected[key] = max(start or 0, message.offset + 1)
        return Refill(out, refilled)

    def record(self, batch: Sequence[Any]) -> None:
        """Note each partition's last offset in ``batch`` as finished (never moving back)."""
        last: dict[str, Any] = {}
        for source in batch:
            last[self.key(source.message)] = source
        for key, source in last.items():
            finished = self._finished(source)
            offset = source.message.offset
            if finished is None or offset > finished:
                with processing(source):
                    self.table[key] = str(offset).encode()
