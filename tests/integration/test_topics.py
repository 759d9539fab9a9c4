"""Creating, waiting for and deleting topics and groups on the real broker."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pipeline.settings import Settings
from pipeline.topics import create_topics, delete_matching, owned_by, topic_specs, wait_for_topics

pytestmark = pytest.mark.integration


def test_created_topics_are_listed_before_the_wait_returns(kafka_settings: Settings) -> None:
    kafka = kafka_settings.kafka
    assert kafka.bootstrap_servers is not None
    create_topics(kafka, kafka.bootstrap_servers)
    wait_for_topics(kafka, kafka.bootstrap_servers, timeout_s=60)
    listed = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10)
    for spec in topic_specs(kafka):
        assert len(listed.topics[spec.name].partitions) == kafka.partitions


def test_deleting_a_run_takes_its_topics_and_groups_and_nobody_elses(
    kafka_bootstrap: str, unique_name: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    mine = [f"{unique_name}.events", f"{unique_name}-users-changelog"]
    other = f"{unique_name}x.events"  # shares the start of the name, not the run's prefix
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in [*mine, other]]).values():
        future.result()
    for group in (unique_name, f"{unique_name}-readers", f"{unique_name}x"):
        # a committed offset makes the group exist (and outlive its consumer)
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                             "enable.auto.commit": False})  # fmt: skip
        consumer.commit(offsets=[TopicPartition(mine[0], 0, 0)], asynchronous=False)
        consumer.close()
    try:
        deleted = delete_matching(kafka_bootstrap, owned_by(unique_name), owned_by(unique_name))
        assert deleted.errors == []
        assert sorted(deleted.topics) == sorted(mine)
        assert deleted.groups == sorted([unique_name, f"{unique_name}-readers"])
        left = admin.list_topics(timeout=10).topics
        assert other in left and not any(t in left for t in mine)
        groups = {g.group_id for g in admin.list_consumer_groups().result().valid}
        assert unique_name not in groups and f"{unique_name}-readers" not in groups
    finally:
        delete_matching(kafka_bootstrap, lambda t: t == other, lambda g: g == f"{unique_name}x")
