"""recloop's topics: their names, their layout, and creating them on the broker.

======================  =========  ===========================================
topic (after prefix)    key        what it carries
======================  =========  ===========================================
``events``              user id    click, skip, dwell, not_relevant, impression,
                                   rating (JSON, ``schemas/json/event``)
``items``               item id    catalog records (compacted; null = removed)
``item-feedback``       item id    per-item signals from the events agent
``item-state``          item id    item state every worker follows (compacted;
                                   null = deleted)
``snapshots``           user id    ranked recommendations (compacted)
``dead-letters``        as given   invalid events, original bytes, reason headers
``audit``               user id    every de-escalation adjustment (basis, change,
                                   expiry)
``metrics``             worker id  each worker's live metrics, every
                                   ``metrics.interval_s`` (JSON, docs/metrics.md)
======================  =========  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pipeline.settings import KafkaSettings

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


@dataclass(frozen=True)
class TopicSpec:
    """One topic recloop reads or writes."""

    name: str
    config: dict[str, str]


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    """Every topic recloop needs, with its full name and configuration."""
    plain: dict[str, str] = {}
    return [
        TopicSpec(kafka.topic("events"), plain),
        TopicSpec(kafka.topic("items"), COMPACTED),
        TopicSpec(kafka.topic("item-feedback"), plain),
        TopicSpec(kafka.topic("item-state"), COMPACTED),
        TopicSpec(kafka.topic("snapshots"), COMPACTED),
        TopicSpec(kafka.topic("dead-letters"), plain),
        TopicSpec(kafka.topic("audit"), plain),
        TopicSpec(kafka.topic("metrics"), plain),
    ]


def replica_config(kafka: KafkaSettings) -> dict[str, str]:
    """What every topic recloop writes needs for its replicas, changelogs included.

    ``min.insync.replicas`` when there is more than one replica: ``acks=all`` then waits
    for that many copies (with one, the broker's default of one is all there is).
    """
    if kafka.replication_factor > 1:
        return {"min.insync.replicas": str(kafka.min_insync_replicas)}
    return {}


def create_topics(
    kafka: KafkaSettings, bootstrap_servers: str, timeout_s: float = 30.0
) -> list[str]:
    """Create any of recloop's topics that do not exist yet; returns the names created.

    Partitions and replication come from the settings. An existing topic is left as it
    is (a partition count that differs from the settings is reported as an error, since
    co-partitioned topics must agree).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    specs = topic_specs(kafka)
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = []
    for spec in specs:
        if spec.name in existing:
            have = len(existing[spec.name].partitions)
            if have != kafka.partitions:
                raise RuntimeError(
                    f"topic {spec.name} has {have} partitions but the settings say "
                    f"{kafka.partitions}; co-partitioned topics must agree"
                )
            continue
        config = {**spec.config, **replica_config(kafka)}
        wanted.append(
            NewTopic(spec.name, kafka.partitions, kafka.replication_factor, config=config)
        )
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created
