"""The SDK without a broker: typed helpers, validation before sending, injected clock and ids.

The producer points at a loopback port where nothing listens: records can be queued but
never delivered, which is what the close-time tests want.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from operators.validation import InvalidEvent
from pipeline.sdk import (
    Delivery,
    DeliveryError,
    EventProducer,
    LatestSnapshots,
    SnapshotConsumer,
    SnapshotMessage,
)
from pipeline.settings import KafkaSettings, LimitSettings, Settings
from schemas.catalog import ItemRecord
from schemas.events import Click, parse_event
from schemas.snapshot import Snapshot

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
QUIET = {"log_level": 0}  # librdkafka would log every refused connection to stderr


@pytest.fixture
def nowhere() -> str:
    """A loopback address where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def producer(nowhere: str) -> Iterator[EventProducer]:
    ids = iter(f"id-{n}" for n in range(1, 1000))
    p = EventProducer(
        bootstrap_servers=nowhere,
        topic_prefix="t.",
        clock=lambda: NOW,
        new_event_id=lambda: next(ids),
        flush_timeout_s=0.2,
        config=QUIET,
    )
    yield p
    if len(p):
        with pytest.raises(DeliveryError):
            p.close()
    p.close()


def test_helpers_build_the_contract_events_with_injected_clock_and_ids(
    producer: EventProducer,
) -> None:
    sent = [
        producer.click("alice", "i1", position=2, recommendation_id="r1"),
        producer.skip("alice", "i2"),
        producer.dwell("alice", "i3", 95_000),
        producer.not_relevant("alice", "i4", "seen_it", context={"surface": "home"}),
        producer.rating("alice", "i5", 4.5),
        producer.impression("alice", ["i1", "i2"], recommendation_id="r1"),
        producer.preference("alice", "pause_category", category="drama", prompt_id="p1"),
    ]
    events = [d.record for d in sent]
    assert [e.type for e in events] == [
        "click", "skip", "dwell", "not_relevant", "rating", "impression", "preference",
    ]  # fmt: skip
    assert [e.event_id for e in events] == [f"id-{n}" for n in range(1, 8)]
    assert all(e.timestamp == NOW and e.user_id == "alice" for e in events)
    assert all(d.topic == "t.events" and d.key == b"alice" for d in sent)
    click, _, dwell, not_relevant, rating, impression, preference = events
    assert (click.position, click.recommendation_id) == (2, "r1")
    assert dwell.dwell_ms == 95_000
    assert not_relevant.reason == "seen_it"
    assert not_relevant.context is not None and not_relevant.context.surface == "home"
    assert rating.value == 4.5
    assert impression.item_ids == ["i1", "i2"]
    assert (preference.action, preference.category) == ("pause_category", "drama")
    assert len(producer) == 7  # queued: nothing can be delivered here
    assert not any(d.done() for d in sent)


def test_given_ids_and_timestamps_win_over_the_generated_ones(producer: EventProducer) -> None:
    at = NOW - timedelta(hours=1)
    event = producer.click("bob", "i1", event_id="mine", timestamp=at).record
    assert (event.event_id, event.timestamp) == ("mine", at)


@pytest.mark.parametrize(
    ("send", "complaint"),
    [
        (lambda p: p.dwell("u", "i", -1), "dwell_ms"),
        (lambda p: p.rating("u", "i", 7), "value"),
        (lambda p: p.click("", "i"), "user_id"),
        (lambda p: p.click("u", "i", timestamp=datetime(2026, 1, 1)), "timezone"),  # noqa: DTZ001
        (lambda p: p.impression("u", []), "item_ids"),
        (lambda p: p.preference("u", "more_like"), "needs item_id"),
        (lambda p: p.preference("u", "prompts_off", category="x"), "takes no category"),
        (lambda p: p.not_relevant("u", "i", "boring"), "reason"),
        (lambda p: p.click("u", "i", colour="red"), "colour"),
    ],
)
def test_invalid_input_raises_a_clear_error_and_sends_nothing(
    producer: EventProducer, send: object, complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        send(producer)
    assert len(producer) == 0


def test_event_time_is_checked_against_the_injected_clock(producer: EventProducer) -> None:
    with pytest.raises(InvalidEvent) as raised:
        producer.click("u", "i", timestamp=NOW + timedelta(hours=1))
    assert raised.value.reason == "timestamp_in_future"
    with pytest.raises(InvalidEvent) as raised:
        producer.click("u", "i", timestamp=datetime(1980, 1, 1, tzinfo=UTC))
    assert raised.value.reason == "timestamp_too_old"
    assert len(producer) == 0


def test_send_revalidates_a_model_built_without_validation(producer: EventProducer) -> None:
    bogus = Click.model_construct(
        type="click", event_id="e1", user_id="u", item_id="", timestamp=NOW, schema_version=1
    )
    with pytest.raises(InvalidEvent, match="item_id"):
        producer.send(bogus)
    item = ItemRecord.model_construct(item_id="i1", category="", created_at=NOW)
    with pytest.raises(ValidationError, match="category"):
        producer.send_item(item)
    assert len(producer) == 0


def test_size_limit_comes_from_the_settings(nowhere: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=nowhere, topic_prefix="s.")
    settings = Settings(kafka=kafka, limits=LimitSettings(max_event_bytes=256))
    with EventProducer(settings, clock=lambda: NOW, config=QUIET) as producer:
        with pytest.raises(InvalidEvent) as raised:
            producer.impression("u", [f"item-{n}" for n in range(40)])
        assert raised.value.reason == "too_large"
        assert len(producer) == 0


def test_send_produces_the_contract_json_keyed_by_user(producer: EventProducer) -> None:
    delivery = producer.send(
        Click(type="click", event_id="e1", user_id="carol", item_id="i9", timestamp=NOW)
    )
    assert delivery.key == b"carol"
    assert delivery.record.event_id == "e1"
    assert not delivery.done() and not delivery.failed


def test_items_are_keyed_by_item_id_and_tombstones_need_an_id(producer: EventProducer) -> None:
    record = ItemRecord(item_id="i1", category="drama", created_at=NOW)
    delivery = producer.send_item(record)
    assert (delivery.topic, delivery.key, delivery.record) == ("t.items", b"i1", record)
    assert producer.remove_item("i1").record is None
    with pytest.raises(ValueError, match="item_id"):
        producer.remove_item("")


def test_settings_that_weaken_the_guarantees_are_refused(nowhere: str) -> None:
    for config in (
        {"acks": 1},
        {"enable.idempotence": False},
        {"partitioner": "consistent"},
        {"request.required.acks": 1},  # another name for acks
        {"default.topic.config": {"partitioner": "consistent_random"}},  # a topic setting
        {"default.topic.config": {"acks": 0}},
    ):
        with pytest.raises(ValueError, match="not allowed"):
            EventProducer(bootstrap_servers=nowhere, config=config)
    for same in ({"acks": -1}, {"enable.idempotence": True}, {"partitioner": "murmur2_random"}):
        EventProducer(bootstrap_servers=nowhere, config=same).close()  # nothing sent


def test_where_to_connect_must_be_given_once(nowhere: str) -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        EventProducer(KafkaSettings())
    with pytest.raises(ValueError, match="not both"):
        EventProducer(KafkaSettings(bootstrap_servers=nowhere), bootstrap_servers=nowhere)
    kafka = KafkaSettings(bootstrap_servers=nowhere, topic_prefix="x.")
    producer = EventProducer(kafka, config=QUIET)
    assert (producer.events_topic, producer.items_topic) == ("x.events", "x.items")
    producer.close()


def test_close_reports_what_was_never_delivered(nowhere: str) -> None:
    seen: list[Delivery[object]] = []
    producer = EventProducer(
        bootstrap_servers=nowhere, flush_timeout_s=0.2, clock=lambda: NOW, config=QUIET
    )
    delivery = producer.click("u", "i", on_delivery=seen.append)
    with pytest.raises(DeliveryError) as raised:
        producer.flush(0.1)
    assert raised.value.undelivered == 1 and "unconfirmed" in str(raised.value)
    with pytest.raises(DeliveryError) as raised:
        producer.close()
    assert raised.value.undelivered == 1
    assert raised.value.failures == [delivery]  # the purge failed it, and it is named
    assert seen == [delivery] and delivery.failed
    assert delivery.error is not None and "PURGE" in delivery.error.name()
    with pytest.raises(DeliveryError, match="not delivered"):
        delivery.result(0.1)
    with pytest.raises(RuntimeError, match="closed"):
        producer.click("u", "i")


def test_a_callback_that_raises_is_logged_and_kept_never_raised_by_close(nowhere: str) -> None:
    def broken(delivery: Delivery[object]) -> None:
        raise LookupError("callback bug")

    producer = EventProducer(
        bootstrap_servers=nowhere, flush_timeout_s=0.1, clock=lambda: NOW, config=QUIET
    )
    first = producer.click("u", "i", on_delivery=broken)
    second = producer.click("u", "j")
    with pytest.raises(DeliveryError) as raised:  # what was lost, as without the callback
        producer.close()
    assert raised.value.failures == [first, second] and second.failed
    assert [str(e) for e in producer.callback_errors] == ["callback bug"]


def test_a_failing_body_is_not_masked_by_the_close_error(nowhere: str) -> None:
    with (
        pytest.raises(KeyError) as raised,
        EventProducer(
            bootstrap_servers=nowhere, flush_timeout_s=0.1, clock=lambda: NOW, config=QUIET
        ) as p,
    ):
        p.click("u", "i")
        raise KeyError("boom")
    assert any("when closing the producer" in note for note in raised.value.__notes__)


def test_the_wire_format_is_what_the_contract_parses(producer: EventProducer) -> None:
    event = producer.dwell("u", "i", 1200.0, context={"device": "tv"}).record
    from schemas.events import event_to_json

    raw = event_to_json(event)
    assert parse_event(raw) == event
    assert json.loads(raw)["timestamp"].endswith("Z")


# -- LatestSnapshots over a scripted source -------------------------------------------------


def snapshot(user: str, version: int, event_id: str) -> Snapshot:
    return Snapshot(
        user_id=user,
        version=version,
        generated_at=NOW,
        source_event_id=event_id,
        model_version="m1",
        items=[],
    )


class ScriptedConsumer:
    """Hands out prepared records, one per poll, then nothing."""

    def __init__(self, messages: list[SnapshotMessage]) -> None:
        self.messages = messages
        self.polls = 0

    def poll_message(self, timeout_s: float = 1.0) -> SnapshotMessage | None:
        self.polls += 1
        return self.messages.pop(0) if self.messages else None


def message(user: str, snap: Snapshot | None, offset: int) -> SnapshotMessage:
    return SnapshotMessage(user, snap, 0, offset)


def test_latest_keeps_the_last_snapshot_per_user_and_forgets_on_tombstones() -> None:
    source = ScriptedConsumer(
        [
            message("a", snapshot("a", 1, "e1"), 0),
            message("b", snapshot("b", 1, "e2"), 1),
            message("a", snapshot("a", 2, "e3"), 2),
            message("b", None, 3),
        ]
    )
    latest = LatestSnapshots(source)
    assert latest.get("a") is None
    assert latest.update() == 4
    a = latest.get("a")
    assert a is not None and a.version == 2
    assert "b" not in latest and latest.get("b") is None and len(latest) == 1


def test_wait_for_polls_until_the_predicate_holds() -> None:
    source = ScriptedConsumer([message("a", snapshot("a", v, f"e{v}"), v) for v in range(1, 4)])
    latest = LatestSnapshots(source)
    found = latest.wait_for("a", lambda s: s.source_event_id == "e3", timeout_s=5)
    assert found.version == 3


def test_wait_for_names_what_it_saw_when_it_times_out() -> None:
    latest = LatestSnapshots(ScriptedConsumer([message("a", snapshot("a", 1, "e1"), 0)]))
    with pytest.raises(TimeoutError, match="version 1 from event e1"):
        latest.wait_for("a", lambda s: s.version > 1, timeout_s=0.3)
    with pytest.raises(TimeoutError, match="none was seen"):
        latest.wait_for("zed", timeout_s=0.1)


def test_a_record_over_the_client_size_limit_is_refused_at_once(nowhere: str) -> None:
    with EventProducer(
        bootstrap_servers=nowhere, config={**QUIET, "message.max.bytes": 1000}, clock=lambda: NOW
    ) as producer:
        with pytest.raises(DeliveryError, match="refused before sending"):
            producer.impression("u", [f"item-{n:05d}" for n in range(150)])
        assert len(producer) == 0


def test_explicit_start_offsets_apply_once_not_again_after_a_rebalance(nowhere: str) -> None:
    from confluent_kafka import TopicPartition

    class Assigning:
        def __init__(self) -> None:
            self.assigned: list[list[tuple[int, int]]] = []

        def assign(self, partitions: list[TopicPartition]) -> None:
            self.assigned.append([(tp.partition, tp.offset) for tp in partitions])

    consumer = SnapshotConsumer(bootstrap_servers=nowhere, group_id="g", start={0: 120, 1: 98})
    fake = Assigning()
    try:
        first = [TopicPartition(consumer.topic, p) for p in (0, 1)]
        consumer._on_assign(fake, first)
        # a rebalance: the group's members change and the partitions come back
        consumer._on_assign(fake, [TopicPartition(consumer.topic, p) for p in (0, 1, 2)])
    finally:
        consumer.close()
    assert fake.assigned == [[(0, 120), (1, 98)]]  # then the committed positions hold


def test_an_impression_of_one_string_is_refused_not_split_into_characters(
    producer: EventProducer,
) -> None:
    with pytest.raises(TypeError, match="not one string"):
        producer.impression("u", "movie-7")
    assert len(producer) == 0
