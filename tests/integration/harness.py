"""Talking to the real broker from integration tests: produce, and read topics back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from pipeline.clients import producer_config, wait_for_records
from pipeline.settings import Settings
from pipeline.topics import create_topics
from pipeline.worker_process import WorkerProcess
from schemas.catalog import ItemRecord, item_to_json
from schemas.events import Event, event_to_json
from schemas.snapshot import Snapshot, parse_snapshot


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


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
            if len(latest["__warmup__"].items) >= k:
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
