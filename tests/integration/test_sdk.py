"""The SDK against the real broker: a round trip through a worker, consumer options, failures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from operators.synthetic import SyntheticWorld
from pipeline.sdk import (
    Delivery,
    DeliveryError,
    EventProducer,
    LatestSnapshots,
    SnapshotConsumer,
    SnapshotError,
    SnapshotMessage,
)
from pipeline.settings import Settings
from pipeline.worker_process import WorkerProcess
from schemas.snapshot import Snapshot, snapshot_to_json
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(seed=11, n_items=24, n_users=2, n_categories=3)


@pytest.fixture
def harness(kafka_settings: Settings, tmp_path: Path) -> Harness:
    return Harness(kafka_settings, tmp_path)


@pytest.fixture
def worker(harness: Harness) -> Iterator[WorkerProcess]:
    process = harness.worker()
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_round_trip_catalog_and_events_to_snapshots(
    kafka_settings: Settings, harness: Harness, world: SyntheticWorld, worker: WorkerProcess
) -> None:
    items = [item.item_id for item in world.items]
    with EventProducer(kafka_settings) as producer:
        catalog = [producer.send_item(item) for item in world.items]
        producer.flush()
        assert all(d.done() and not d.failed for d in catalog)
        assert harness.wait_for_count("item-state", len(items)), worker.log_tail()
        harness.wait_until_worker_sees_catalog()

        alice = [
            producer.impression("alice", items[:5], recommendation_id="r1"),
            producer.click("alice", items[0], recommendation_id="r1", position=0),
            producer.dwell("alice", items[0], 240_000),
            producer.rating("alice", items[3], 4.5),
            producer.not_relevant("alice", items[1], "not_interested"),
        ]
        bob = [
            producer.skip("bob", items[2]),
            producer.preference("bob", "more_like", item_id=items[6]),
        ]
        producer.flush()
    sent: list[Delivery[object]] = [*alice, *bob]
    assert all(d.done() and not d.failed and d.offset is not None for d in sent)

    with SnapshotConsumer(kafka_settings) as consumer:
        latest = LatestSnapshots(consumer)
        last_alice = alice[-1].record.event_id
        a = latest.wait_for("alice", lambda s: s.source_event_id == last_alice, timeout_s=90)
        b = latest.wait_for("bob", lambda s: s.source_event_id == bob[-1].record.event_id)
    assert a.version == len(alice), worker.log_tail()  # the version counts every event
    assert b.version == len(bob)
    assert a.items and items[1] not in [i.item_id for i in a.items]  # "not relevant" heard
    assert {"alice", "bob"} <= set(latest.as_dict())

    # Keys land where Faust puts them: a user's snapshots share the partition of their events
    # (a burst may be answered by one snapshot: read until each user's last is there).
    with SnapshotConsumer(kafka_settings, start="earliest") as consumer:
        seen: dict[str, set[int]] = {}
        newest = {"alice": 0, "bob": 0}
        while newest != {"alice": len(alice), "bob": len(bob)}:
            message = consumer.poll_message(10)
            assert message is not None, f"snapshots went missing: {newest}"
            if message.user_id not in newest or message.snapshot is None:
                continue  # the harness's warm-up user
            newest[message.user_id] = max(newest[message.user_id], message.snapshot.version)
            seen.setdefault(f"{message.user_id}/partition", set()).add(message.partition)
    assert seen["alice/partition"] == {d.partition for d in alice}
    assert seen["bob/partition"] == {d.partition for d in bob}

    # The same event id twice is applied once: the resent click makes no new snapshot.
    with EventProducer(kafka_settings) as producer:
        producer.send(alice[1].record)
        again = producer.skip("alice", items[4])
    with SnapshotConsumer(kafka_settings) as consumer:
        latest = LatestSnapshots(consumer)
        final = latest.wait_for("alice", lambda s: s.source_event_id == again.record.event_id)
    assert final.version == len(alice) + 1


# -- the consumer's options, on snapshots written directly -----------------------------------

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def snapshot(user: str, version: int) -> bytes:
    return snapshot_to_json(
        Snapshot(
            user_id=user,
            version=version,
            generated_at=NOW,
            source_event_id=f"{user}-e{version}",
            model_version="test",
            items=[],
        )
    )


def write(harness: Harness, records: list[tuple[str, bytes | None]]) -> None:
    for key, value in records:
        harness.producer.produce(harness.topic("snapshots"), key=key.encode(), value=value)
    harness.flush()


def drain(consumer: SnapshotConsumer, count: int, timeout_s: float = 30.0) -> list[SnapshotMessage]:
    messages: list[SnapshotMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll_message(0.5)
        if message is not None:
            messages.append(message)
    return messages


def test_tombstones_forget_users_and_iteration_skips_them(harness: Harness) -> None:
    write(harness, [("a", snapshot("a", 1)), ("b", snapshot("b", 1)), ("a", snapshot("a", 2))])
    write(harness, [("b", None)])
    with SnapshotConsumer(harness.settings) as consumer:
        latest = LatestSnapshots(consumer)
        applied, deadline = 0, time.monotonic() + 30
        while applied < 4 and time.monotonic() < deadline:
            applied += latest.update(0.5)
        assert applied == 4
        a = latest.get("a")
        assert a is not None and a.version == 2
        assert "b" not in latest and latest.get("b") is None and len(latest) == 1
    with SnapshotConsumer(harness.settings) as consumer:
        got = []
        for snap in consumer.snapshots(idle_timeout_s=3):
            got.append((snap.user_id, snap.version))
    assert sorted(got) == [("a", 1), ("a", 2), ("b", 1)]  # no None for the tombstone


def test_a_bad_record_raises_with_its_position_and_polling_goes_on(harness: Harness) -> None:
    write(harness, [("a", snapshot("a", 1)), ("a", b"{not a snapshot"), ("a", snapshot("a", 2))])
    versions = []
    with SnapshotConsumer(harness.settings) as consumer:
        with pytest.raises(SnapshotError) as raised:
            for _ in range(3):
                snap = consumer.poll(20)
                assert snap is not None
                versions.append(snap.version)
        after = consumer.poll(20)
    assert versions == [1]
    assert raised.value.offset == 1 and raised.value.topic == harness.topic("snapshots")
    assert "not a valid snapshot" in str(raised.value)
    assert after is not None and after.version == 2

    reported: list[SnapshotError] = []
    with SnapshotConsumer(harness.settings, on_error=reported.append) as consumer:
        got = [s.version for s in consumer.snapshots(idle_timeout_s=3)]
    assert got == [1, 2] and [e.offset for e in reported] == [1]


def test_start_offsets_and_consumer_groups(harness: Harness, unique_name: str) -> None:
    write(harness, [("a", snapshot("a", 1)), ("a", snapshot("a", 2)), ("a", snapshot("a", 3))])
    with SnapshotConsumer(harness.settings) as consumer:
        first = drain(consumer, 3)
    partition = first[0].partition
    assert [m.offset for m in first] == [0, 1, 2]

    with SnapshotConsumer(harness.settings, start={partition: 2}) as consumer:
        assert [m.snapshot.version for m in drain(consumer, 1) if m.snapshot] == [3]

    group = f"{unique_name}-readers"
    with SnapshotConsumer(harness.settings, group_id=group) as consumer:
        assert len(drain(consumer, 3)) == 3  # commits its position when it closes
    with SnapshotConsumer(harness.settings, start="latest") as latest_only:
        assert latest_only.poll(5) is None  # joined at the end: the old ones are not read
        write(harness, [("a", snapshot("a", 4))])
        fresh = latest_only.poll(30)
    assert fresh is not None and fresh.version == 4
    with SnapshotConsumer(harness.settings, group_id=group) as consumer:
        resumed = drain(consumer, 1)
    assert [m.snapshot.version for m in resumed if m.snapshot] == [4]  # after its commit


# -- delivery failures reach the caller ------------------------------------------------------


def test_a_missing_topic_is_a_delivery_failure_not_a_new_topic(
    kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-missing."
    failed: list[Delivery[object]] = []
    producer = EventProducer(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=prefix,
        config={"topic.metadata.propagation.max.ms": 2000},
    )
    delivery = producer.click("alice", "i1", on_delivery=failed.append)
    with pytest.raises(DeliveryError) as raised:
        producer.flush()
    assert raised.value.failures == [delivery] == failed
    assert delivery.error is not None
    assert delivery.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert f"{prefix}events" in str(raised.value)
    producer.close()  # everything was reported: nothing left to raise
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert f"{prefix}events" not in topics

    with (  # close() at the end of the block raises: the record was never delivered
        pytest.raises(DeliveryError, match="UNKNOWN_TOPIC_OR_PART"),
        EventProducer(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=prefix,
            config={"topic.metadata.propagation.max.ms": 2000},
        ) as scoped,
    ):
        scoped.skip("alice", "i1")


def test_a_record_the_broker_refuses_is_reported_on_its_handle(
    kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}."
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    events = f"{prefix}events"
    admin.create_topics([NewTopic(events, 1, 1, config={"max.message.bytes": "1024"})])[
        events
    ].result()
    with EventProducer(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix) as producer:
        # max.message.bytes limits a whole batch: sent together, both would be refused
        assert producer.click("alice", "i1").result().offset == 0
        big = producer.impression("alice", [f"item-{n:05d}" for n in range(150)])
        with pytest.raises(DeliveryError, match="MSG_SIZE_TOO_LARGE") as raised:
            big.result()
        assert raised.value.failures == [big] and big.record.item_ids[0] == "item-00000"
        with pytest.raises(DeliveryError) as at_flush:  # reported again until a flush
            producer.flush()
        assert at_flush.value.failures == [big]
