"""Talking to the real broker from integration tests: produce, and read topics back."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from pipeline.clients import producer_config, wait_for_records
from pipeline.settings import Settings
from pipeline.topics import create_topics
from pipeline.worker_process import WorkerProcess
from schemas.catalog import ItemRecord, item_to_json
from schemas.events import Event, event_to_json
from schemas.snapshot import Snapshot, parse_snapshot

#: one Prometheus sample: (name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """A TCP port free on loopback now (for a worker's web server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_metrics(port: int) -> Samples:
    """``GET /metrics`` of the worker serving on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        return parse_metrics(answer.read().decode())


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int = -1
    offset: int = -1


class TopicTail:
    """One topic read from the beginning and kept, each record read once.

    ``Harness.read`` starts over on every call; a fault test that watches tens of
    thousands of records grow keeps one tail and asks it again and again.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.records: list[Record] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"tail-{topic}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )

    def poll(self, timeout_s: float = 0.2) -> list[Record]:
        """Read what arrived since the last call (waiting at most ``timeout_s``)."""
        fresh: list[Record] = []
        for message in self._consumer.consume(2000, timeout=timeout_s):
            if message.error() is not None:
                continue
            headers = {k: v or b"" for k, v in (message.headers() or [])}
            fresh.append(
                Record(
                    message.key(),
                    message.value(),
                    headers,
                    message.partition() or 0,
                    message.offset() or 0,
                )
            )
        self.records.extend(fresh)
        return fresh

    def read_until(self, until: Callable[[list[Record]], bool], timeout_s: float = 60.0) -> bool:
        """Poll until ``until(new records)`` holds (it sees each record once) or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if until(self.poll()):
                return True
        return False

    def read_to_end(self, timeout_s: float = 60.0) -> list[Record]:
        """Everything up to the end offsets as they are now; raises if it cannot get there."""
        ends = {}
        for p in range(self.partitions):
            tp = TopicPartition(self.topic, p)
            ends[p] = int(self._consumer.get_watermark_offsets(tp, timeout=10)[1])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = self._consumer.position(
                [TopicPartition(self.topic, p) for p in range(self.partitions)]
            )
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions):
                return self.records
            self.poll()
        raise AssertionError(f"{self.topic}: could not read up to {ends} in {timeout_s:.0f}s")

    def close(self) -> None:
        """Leave the topic."""
        self._consumer.close()

    def __enter__(self) -> TopicTail:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Harness:
    """One test's view of its own topics on the real broker."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        assert settings.kafka.bootstrap_servers is not None
        self.settings = settings
        self.bootstrap = settings.kafka.bootstrap_servers
        self.workdir = workdir
        self.producer = Producer(producer_config(self.bootstrap))
        create_topics(settings.kafka, self.bootstrap)

    def topic(self, name: str) -> str:
        return self.settings.kafka.topic(name)

    def worker(self, name: str = "worker", settings: Settings | None = None) -> WorkerProcess:
        return WorkerProcess(
            settings or self.settings, self.workdir / f"{name}.yaml", self.workdir / f"{name}.log"
        )

    def tail(self, name: str, full_name: bool = False) -> TopicTail:
        """A :class:`TopicTail` of one of this test's topics (or of any topic by full name)."""
        topic = name if full_name else self.topic(name)
        return TopicTail(self.bootstrap, topic, self.settings.kafka.partitions)

    def send_raw_located(
        self, messages: Iterable[tuple[bytes | None, bytes | None]]
    ) -> list[tuple[int, int]]:
        """Send raw messages in order; returns where each landed, as (partition, offset)."""
        where: list[tuple[int, int] | None] = []

        def delivered(index: int) -> Callable[[object, object], None]:
            def record(err: object, message: object) -> None:
                assert err is None, err
                where[index] = (message.partition(), message.offset())  # type: ignore[attr-defined]

            return record

        for index, (key, value) in enumerate(messages):
            where.append(None)
            self.producer.produce(
                self.topic("events"), key=key, value=value, on_delivery=delivered(index)
            )
            self.producer.poll(0)
        self.flush()
        assert None not in where
        return [w for w in where if w is not None]

    def group_members(self, group: str, name: str = "events") -> list[set[int]]:
        """The partitions of one of this test's topics each live member of ``group`` owns."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topic = self.topic(name)
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
        return [
            {tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic}
            for member in description.members
        ]

    def committed(self, group: str, name: str = "events") -> dict[int, int]:
        """The offsets ``group`` committed on one of this test's topics (-1: none yet)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            parts = [
                TopicPartition(self.topic(name), p) for p in range(self.settings.kafka.partitions)
            ]
            return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        finally:
            consumer.close()

    def send_items(self, items: Iterable[ItemRecord]) -> int:
        count = 0
        for item in items:
            self.producer.produce(
                self.topic("items"), key=item.item_id.encode(), value=item_to_json(item)
            )
            count += 1
        assert self.producer.flush(30) == 0
        return count

    def send_events(self, events: Iterable[Event]) -> None:
        for event in events:
            self.send_raw(event.user_id.encode(), event_to_json(event))
        assert self.producer.flush(30) == 0

    def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        self.producer.produce(self.topic("events"), key=key, value=value)
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def read(
        self, name: str, until: Callable[[list[Record]], bool], timeout_s: float = 60.0
    ) -> list[Record]:
        """Read a topic from the beginning until ``until(records)`` holds or time runs out."""
        topic = self.topic(name)
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{topic}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for p in range(self.settings.kafka.partitions)
            ]
        )
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and not until(records):
                for message in consumer.consume(500, timeout=0.2):
                    if message.error() is not None:
                        continue
                    headers = {k: v or b"" for k, v in (message.headers() or [])}
                    records.append(Record(message.key(), message.value(), headers))
        finally:
            consumer.close()
        return records

    def wait_for_count(self, name: str, count: int, timeout_s: float = 60.0) -> bool:
        return wait_for_records(
            self.bootstrap, self.topic(name), self.settings.kafka.partitions, count, timeout_s
        )

    def wait_until_worker_sees_catalog(self, k: int = 10, timeout_s: float = 60.0) -> None:
        """Send throwaway events until a snapshot is full: the worker's catalog has arrived.

        The catalog reaches a worker asynchronously (item agent, item-state topic, follower);
        tests that assert on ranking wait for it instead of racing it.
        """
        deadline = time.monotonic() + timeout_s
        n = 0
        while time.monotonic() < deadline:
            n += 1
            event_id = f"warmup-{n}"
            body = (
                f'{{"event_id":"{event_id}","user_id":"__warmup__","type":"impression",'
                f'"item_ids":["__none__"],"timestamp":"2026-01-01T00:00:00Z"}}'
            )
            self.send_raw(b"__warmup__", body.encode())
            self.flush()
            latest = self.snapshots(
                lambda snaps, eid=event_id: (
                    "__warmup__" in snaps  # type: ignore[misc]
                    and snaps["__warmup__"].source_event_id == eid
                ),
                timeout_s=10,
            )
            warm = latest.get("__warmup__")  # none yet: a busy worker, ask again
            if warm is not None and len(warm.items) >= k:
                return
        raise AssertionError("the worker never ranked a full list: is the catalog reaching it?")

    def send_and_wait(self, events: list[Event], timeout_s: float = 60.0) -> Snapshot:
        """Send ``events`` and return the snapshot the last of them produced."""
        self.send_events(events)
        last = events[-1]
        latest = self.snapshots(
            lambda s: last.user_id in s and s[last.user_id].source_event_id == last.event_id,
            timeout_s,
        )
        assert last.user_id in latest, f"no snapshot for {last.event_id}"
        return latest[last.user_id]

    def snapshots(
        self, until: Callable[[dict[str, Snapshot]], bool], timeout_s: float = 60.0
    ) -> dict[str, Snapshot]:
        """The latest snapshot per user, read until ``until`` holds."""
        latest: dict[str, Snapshot] = {}

        def done(records: list[Record]) -> bool:
            latest.clear()
            for record in records:
                if record.value is not None:
                    snap = parse_snapshot(record.value)
                    if snap.user_id not in latest or snap.version > latest[snap.user_id].version:
                        latest[snap.user_id] = snap
            return until(latest)

        self.read("snapshots", done, timeout_s)
        return latest
