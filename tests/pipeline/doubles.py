"""Test doubles for the pipeline tier: where the agents' output goes, and a fixed catalog."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from operators.catalog import Catalog
from pipeline.app import Recloop, create_app
from pipeline.offsets import Fetched
from pipeline.settings import load_settings


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


#: The request limit of Faust's producer (aiokafka's ``max_request_size`` default).
PRODUCER_MAX_REQUEST = 1_000_000


@dataclass
class RecordingEmitter:
    """Records what is sent, refusing what Faust's producer (aiokafka) would refuse."""

    sent: list[Sent] = field(default_factory=list)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        assert not (key is None and value is None), "aiokafka refuses a record with neither"
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > PRODUCER_MAX_REQUEST:
            raise RuntimeError(f"MessageSizeTooLargeError: {size} bytes")  # as aiokafka
        self.sent.append(Sent(topic, key, value, dict(headers)))

    def to(self, suffix: str) -> list[Sent]:
        return [s for s in self.sent if s.topic.endswith(suffix)]


@dataclass
class ProducerBuffer:
    """Faust's producer buffer, where table writes queue their changelog records, as a
    busy event loop sees it: each flush sends one record and gives up (Faust's gives up
    after 0.1 s without progress)."""

    pending: list[Any] = field(default_factory=list)
    sent: list[Any] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.pending)

    def put(self, record: Any) -> None:
        self.pending.append(record)
        self.log.append("queued")

    async def flush(self) -> None:
        if self.pending:
            self.sent.append(self.pending.pop(0))
            self.log.append("sent")


class FixedCatalog:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def start(self) -> None:
        pass

    async def wait_caught_up(self, timeout_s: float = 60.0) -> bool:
        return True

    def drain(self, limit: int | None = None) -> int:
        return 0

    def stop(self) -> None:
        pass


async def until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Let the loop run until ``done()`` (an agent finishing a batch), at most ``timeout_s``.

    Faust's test context returns from ``put`` once the stream has read the event; an
    agent that batches may still be working on it when the test goes on (or stops it).
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not done after {timeout_s} s")
        await asyncio.sleep(0.01)


@dataclass
class StoredRecords:
    """A topic's records as the broker would give them back (:class:`RecordFetcher`)."""

    records: dict[tuple[str, int], list[Fetched]] = field(default_factory=dict)
    asked: list[tuple[str, int, int, int]] = field(default_factory=list)

    def fetch(self, topic: str, partition: int, start: int, end: int) -> list[Fetched]:
        self.asked.append((topic, partition, start, end))
        held = self.records.get((topic, partition), [])
        return [r for r in held if start <= r.offset < end]


def pipeline_app(
    catalog: Catalog, env: dict[str, str], emitter: RecordingEmitter, now: datetime
) -> tuple[Recloop, list[BaseException]]:
    """The real Faust app, ready for Faust's test context, with no broker behind it.

    The memory store replaces RocksDB, ``emitter`` the producer and ``catalog`` the item
    follower; the table writes' changelog records go to a :class:`ProducerBuffer`. What
    would stop a worker process (``on_fatal``) is collected in the returned list instead.
    """
    settings = load_settings(
        None,
        {
            "RECLOOP__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "RECLOOP__WORKER__STORE": "memory://",
            "RECLOOP__KAFKA__TOPIC_PREFIX": "p.",
            # Faust's test context puts every event in partition 0, which with one
            # partition is every key's (the worker refuses an event outside its key's)
            "RECLOOP__KAFKA__PARTITIONS": "1",
            **env,
        },
    )
    app = create_app(
        settings,
        clock=lambda: now,
        emitter=emitter,
        catalog_source=FixedCatalog(catalog),
        record_fetcher=StoredRecords(),
    )
    app.app.finalize()
    app.app.flow_control.resume()
    app.app.producer.buffer = ProducerBuffer()  # type: ignore[misc]
    fatal: list[BaseException] = []
    app.on_fatal = fatal.append
    return app, fatal


def close_pipeline_app(app: Recloop, fatal: list[BaseException]) -> None:
    """Check no agent failed, then free what Faust's test context left open."""
    assert not fatal, f"an agent failed: {fatal!r}"
    # test_context builds the consumer, whose (never started) thread owns an event loop
    thread = getattr(app.app.consumer, "_thread", None)
    if thread is not None and not thread.thread_loop.is_closed():
        thread.thread_loop.close()
