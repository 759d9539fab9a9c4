"""Reading skipped records back from the real broker (pipeline/offsets.py)."""

from __future__ import annotations

from pathlib import Path

from pipeline.offsets import KafkaRecordFetcher
from pipeline.settings import Settings
from tests.integration.harness import Harness


def test_the_fetcher_reads_back_exactly_the_records_of_a_range(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(kafka_settings, tmp_path)
    sent = [(b"u1", f"record {n}".encode()) for n in range(6)]
    where = harness.send_raw_located(sent)
    partition = where[0][0]
    assert {p for p, _ in where} == {partition}  # one key, one partition
    offsets = [o for _, o in where]
    fetcher = KafkaRecordFetcher(harness.bootstrap, timeout_s=30)
    topic = harness.topic("events")

    middle = fetcher.fetch(topic, partition, offsets[1], offsets[4])
    assert [(r.offset, r.key, r.value) for r in middle] == [
        (offsets[n], b"u1", f"record {n}".encode()) for n in (1, 2, 3)
    ]
    assert all(r.timestamp_ms > 0 for r in middle)
    # a range reaching past the end gives what is there, and returns at the end of the log
    assert [r.offset for r in fetcher.fetch(topic, partition, offsets[4], offsets[5] + 10)] == [
        offsets[4],
        offsets[5],
    ]
    assert fetcher.fetch(topic, partition, offsets[5] + 1, offsets[5] + 5) == []


def test_a_range_retention_cut_into_gives_what_the_partition_still_holds(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    harness = Harness(kafka_settings, tmp_path)
    where = harness.send_raw_located([(b"u2", f"record {n}".encode()) for n in range(6)])
    partition, offsets = where[0][0], [o for _, o in where]
    topic = harness.topic("events")
    # retention removes the first three: the log now starts at the fourth record
    admin = AdminClient({"bootstrap.servers": harness.bootstrap})
    cut = TopicPartition(topic, partition, offsets[3])
    for future in admin.delete_records([cut]).values():
        future.result(timeout=30)

    fetched = KafkaRecordFetcher(harness.bootstrap, timeout_s=30).fetch(
        topic, partition, offsets[0], offsets[5] + 1
    )

    assert [r.value for r in fetched] == [f"record {n}".encode() for n in (3, 4, 5)]
