"""Producing events and catalog records, and tailing snapshots, with confluent-kafka.

Producers use the Java client's murmur2 partitioner, the same one Faust (aiokafka) uses,
so a key lands in the same partition whichever client wrote it; and idempotence with
``acks=all``, so a retry never writes a record twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from operators.validation import InvalidEvent, ValidationLimits, decode_unkeyed, encode_event
from schemas.catalog import item_to_json, parse_item
from schemas.snapshot import Snapshot

Kind = Literal["events", "items"]
log = logging.getLogger(__name__)


def poll_ready(consumer: Any, timeout_s: float, more: int = 500) -> list[Any]:
    """The records already fetched: waits up to ``timeout_s`` for the first, not for more.

    ``poll`` returns as soon as one record is there, while ``consume(n, timeout)`` would
    wait for ``n`` records or the whole timeout; so poll for the first, then take up to
    ``more`` already in without waiting. Empty when nothing came in time.
    """
    first = consumer.poll(timeout_s)
    return [first, *consumer.consume(num_messages=more, timeout=0)] if first is not None else []


def producer_config(bootstrap_servers: str) -> dict[str, object]:
    """Settings every recloop producer uses."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 2,
    }


@dataclass
class ProduceReport:
    """What happened to each input line."""

    accepted: int = 0
    rejected: int = 0
    delivery_failures: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready summary (the first 20 errors)."""
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "delivery_failures": self.delivery_failures,
            "errors": self.errors[:20],
        }


def encode_line(
    line: str, kind: Kind, limits: ValidationLimits, now: datetime
) -> tuple[bytes, bytes]:
    """Validate one JSON line and return (key, value) as the topic expects them.

    An event is checked as the worker checks it (:func:`operators.validation.decode_event`:
    the contract, the size limit, invisible characters, a plausible event time at ``now``),
    and the bytes sent against the size limit too.

    Raises:
        ValueError: the line is not a valid event or catalog record.

    """
    try:
        if kind == "events":
            event = decode_unkeyed(line.encode(), now=now, limits=limits)
            return event.user_id.encode(), encode_event(event, limits)
        item = parse_item(line)
        return item.item_id.encode(), item_to_json(item)
    except InvalidEvent as exc:
        raise ValueError(f"{exc.reason}: {exc.detail}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ValueError(f"{where}: {first['msg']}") from None


def produce_waiting(
    producer: Producer,
    topic: str,
    key: bytes,
    value: bytes | None,
    on_delivery: Callable[[Any, Any], None],
    poll_s: float = 0.05,
) -> None:
    """Queue one record, waiting for room when the client's local queue is full.

    confluent-kafka raises ``BufferError`` then; serving delivery reports drains it.
    """
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(poll_s)


def produce_lines(
    lines: Iterable[str],
    topic: str,
    kind: Kind,
    bootstrap_servers: str,
    limits: ValidationLimits,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ProduceReport:
    """Validate JSON lines and produce the valid ones; report what was accepted and rejected.

    Events are validated as the worker validates them (see :func:`encode_line`), with
    ``limits`` (the worker's) and ``clock`` (the wall clock) for the event-time checks.
    """
    report = ProduceReport()
    producer = Producer(producer_config(bootstrap_servers))

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            report.delivery_failures += 1
            report.errors.append(f"delivery failed: {err}")

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            key, value = encode_line(line, kind, limits, clock())
        except ValueError as exc:
            report.rejected += 1
            report.errors.append(f"line {number}: {exc}")
            continue
        produce_waiting(producer, topic, key, value, on_delivery)
        producer.poll(0)
        report.accepted += 1
    remaining = producer.flush(30)
    if remaining:
        report.delivery_failures += remaining
        report.errors.append(f"{remaining} records were not delivered within 30s")
    report.accepted -= report.delivery_failures
    return report


def tail_snapshots(
    bootstrap_servers: str,
    topic: str,
    group_id: str | None,
    from_beginning: bool,
    user_id: str | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[Snapshot]:
    """Yield snapshots as they arrive (optionally for one user) until idle for too long.

    A record that is not a valid snapshot is logged as a warning (where it is and why)
    and passed over, so one bad record does not stop a tail.
    """
    from pipeline.sdk import SnapshotConsumer  # the SDK builds on this module

    with SnapshotConsumer(
        bootstrap_servers=bootstrap_servers,
        topic=topic,
        group_id=group_id,
        start="earliest" if from_beginning else "latest",
        on_error=lambda exc: log.warning("skipped a record: %s", exc),
    ) as consumer:
        for snapshot in consumer.snapshots(idle_timeout_s):
            if user_id is None or snapshot.user_id == user_id:
                yield snapshot


def snapshot_line(snapshot: Snapshot) -> str:
    """One snapshot as a JSON line."""
    return json.dumps(snapshot.model_dump(mode="json", exclude_none=True), separators=(",", ":"))


def wait_for_records(
    bootstrap_servers: str, topic: str, partitions: int, count: int, timeout_s: float = 60.0
) -> bool:
    """Wait until ``topic`` holds at least ``count`` records in all (e.g. an agent caught up).

    Right after a topic is created its partitions may still be electing leaders; such
    answers mean "not yet", not failure.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "recloop-count"})
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ends = [end_offset(consumer, topic, p, deadline) for p in range(partitions)]
            if None in ends:
                return False
            if sum(e for e in ends if e is not None) >= count:
                return True
            time.sleep(0.1)
        return False
    finally:
        consumer.close()


def end_offset(consumer: Consumer, topic: str, partition: int, deadline: float) -> int | None:
    """A partition's end offset, or ``None`` if it cannot be had before ``deadline``.

    Right after a topic is created its partitions may still be electing leaders and
    answer "not leader": that means "not yet", so ask again until the deadline.
    """
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), 5)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)
