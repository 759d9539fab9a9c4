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

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import murmur2
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


def partition_of(key: bytes, partitions: int) -> int:
    """The partition a keyed record belongs in: murmur2, the Java client's and Faust's.

    Events and the tables built from them are co-partitioned by it, so a user's events
    must all be in this partition of the events topic.
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


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


class TopicsNotReady(RuntimeError):
    """The broker's metadata still lacks some of recloop's topics (or their leaders)."""


def missing_topics(listed: Mapping[str, Any], kafka: KafkaSettings) -> list[str]:
    """The recloop topics that ``listed`` (``ClusterMetadata.topics``) lacks or cannot serve.

    A topic counts as missing when it is not listed, is listed with an error, has fewer
    partitions than the settings say, or has a partition without a leader.
    """
    missing = []
    for spec in topic_specs(kafka):
        topic = listed.get(spec.name)
        if (
            topic is None
            or topic.error is not None
            or len(topic.partitions) < kafka.partitions
            or any(partition.leader < 0 for partition in topic.partitions.values())
        ):
            missing.append(spec.name)
    return missing


def wait_for_topics(
    kafka: KafkaSettings,
    bootstrap_servers: str,
    timeout_s: float = 120.0,
    *,
    admin: Any = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[list[str]], None] | None = None,
) -> None:
    """Return once the broker's metadata lists every recloop topic, each partition led.

    A broker that has just started, or is still loading many partitions, can answer
    metadata requests from a view that lacks topics created moments before. A worker
    whose consumer group is assigned then gets no partition of the topics it cannot
    see, and the consumer notices only at its next metadata refresh, minutes later: it
    would sit idle. ``on_wait`` hears the missing names once, when the first answer
    lacks some.

    Raises:
        TopicsNotReady: some are still missing after ``timeout_s``, named.

    """
    client = admin if admin is not None else AdminClient({"bootstrap.servers": bootstrap_servers})
    deadline = clock() + timeout_s
    told = False
    while True:
        try:
            missing = missing_topics(client.list_topics(timeout=5).topics, kafka)
        except KafkaException as exc:  # the broker does not answer yet: not ready either
            missing = [f"(metadata: {exc})"]
        if not missing:
            return
        if on_wait is not None and not told:
            on_wait(missing)
            told = True
        if clock() >= deadline:
            raise TopicsNotReady(
                f"after {timeout_s:.0f} s the broker at {bootstrap_servers} still does not "
                f"list these topics with a leader for every partition: {', '.join(missing)}"
            )
        sleep(0.25)


def owned_by(name: str) -> Callable[[str], bool]:
    """Whether a topic or consumer group belongs to the run or app ``name``.

    Its topics are ``<name>.*`` (a topic prefix of ``<name>.``) and ``<name>-*`` (Faust's
    changelogs and internal topics of the app id ``name``); its groups ``name`` (the app
    id) and ``<name>-*``. Nobody else's match, provided names are unique.
    """
    return lambda candidate: candidate == name or candidate.startswith((f"{name}.", f"{name}-"))


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete_matching` deleted, and what it could not (with the reason)."""

    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


#: Topics per delete request (a sweep of thousands goes in several).
_DELETE_BATCH = 500


def delete_matching(
    bootstrap_servers: str,
    topics: Callable[[str], bool],
    groups: Callable[[str], bool] | None = None,
    timeout_s: float = 30.0,
) -> Deleted:
    """Delete every topic, and consumer group, whose name the predicate accepts.

    For runs, tests and demos cleaning up after themselves: failures are collected in
    :attr:`Deleted.errors`, never raised (what is left over is clutter). A group with
    members still in it is not deleted (``NON_EMPTY_GROUP``).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 3})
    deleted = Deleted()
    try:
        names = sorted(t for t in admin.list_topics(timeout=timeout_s).topics if topics(t))
    except KafkaException as exc:
        deleted.errors.append(f"listing the topics: {exc}")
        names = []
    for batch in _batches(names, _DELETE_BATCH):
        for name, future in admin.delete_topics(batch, operation_timeout=timeout_s).items():
            try:
                future.result()
                deleted.topics.append(name)
            except KafkaException as exc:
                deleted.errors.append(f"topic {name}: {exc}")
    if groups is None:
        return deleted
    try:
        listed = admin.list_consumer_groups(request_timeout=timeout_s).result().valid
    except KafkaException as exc:
        deleted.errors.append(f"listing the consumer groups: {exc}")
        return deleted
    ids = sorted(g.group_id for g in listed if groups(g.group_id))
    # a coordinator still loading its groups (a broker just started) answers "retry"
    deadline = time.monotonic() + timeout_s
    while ids:
        retry = []
        for batch in _batches(ids, _DELETE_BATCH):
            for group, future in admin.delete_consumer_groups(
                batch, request_timeout=timeout_s
            ).items():
                try:
                    future.result()
                    deleted.groups.append(group)
                except KafkaException as exc:
                    if exc.args[0].retriable() and time.monotonic() < deadline:
                        retry.append(group)
                    else:
                        deleted.errors.append(f"group {group}: {exc}")
        ids = retry
        if ids:
            time.sleep(0.5)
    return deleted


def _batches(names: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(names), size):
        yield names[start : start + size]
