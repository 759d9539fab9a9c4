"""Shared pieces of the broker benchmarks (``scripts/bench_*.py``).

Each benchmark runs on its own topic prefix, consumer group and state directory (see
:func:`isolated_settings`), drives real worker processes (``pipeline/worker_process.py``)
and prints ONE JSON line; progress goes to stderr (:func:`log`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from operators.synthetic import SyntheticUser, SyntheticWorld
from pipeline.broker import embedded_broker, resolve_bootstrap
from pipeline.clients import producer_config, wait_for_records
from pipeline.settings import Settings, load_settings
from pipeline.topics import create_topics, delete_matching, owned_by
from pipeline.worker_process import WorkerProcess
from schemas.catalog import ItemRecord, item_to_json
from schemas.events import Event, Impression, event_to_json

#: how many items an impression in the synthetic log shows
IMPRESSION_SIZE = 10


def log(message: str) -> None:
    """One line of progress on stderr (stdout is for the JSON line)."""
    print(message, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank: the ``ceil(q n)``-th smallest.

    So the p99 of 100 values is the 99th, not the largest (``q n`` is rounded first:
    0.95 x 1000 is 950.0000000000001 in floating point).
    """
    ordered = sorted(values)
    rank = math.ceil(round(len(ordered) * q, 9))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max (ms, rounded) and the count."""
    if not values_ms:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    return {
        "p50": round(percentile(values_ms, 0.50), 2),
        "p95": round(percentile(values_ms, 0.95), 2),
        "p99": round(percentile(values_ms, 0.99), 2),
        "max": round(max(values_ms), 2),
        "n": len(values_ms),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other people share these cores)."""
    return [round(x, 2) for x in os.getloadavg()]


def broker_label() -> str:
    """``embedded`` unless the environment names a broker."""
    return "given" if os.environ.get("RECLOOP__KAFKA__BOOTSTRAP_SERVERS") else "embedded"


def environment() -> dict[str, Any]:
    """Where and when a benchmark ran: date, cores, load average, broker."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_start": load_average(),
        "broker": broker_label(),
    }


def run_id(name: str, seed: int) -> str:
    """A name no other run uses: topic prefix, app id (consumer group) and state dirs."""
    return f"bench-{name}-{int(time.time())}-{os.getpid()}-{seed}"


def isolated_settings(
    name: str, workdir: Path, partitions: int, log_level: str = "warn"
) -> Settings:
    """The environment's settings, resolved, with this run's own topics, group and state.

    The topic prefix is ``<name>.`` and the app id ``<name>``, so everything the run
    creates on the broker starts with ``name`` (see :func:`delete_run`).
    """
    settings = resolve_bootstrap(load_settings(None, os.environ))
    kafka = settings.kafka.model_copy(update={"topic_prefix": f"{name}.", "partitions": partitions})
    worker = settings.worker.model_copy(
        update={"state_dir": workdir / "state", "app_id": name, "log_level": log_level}
    )
    return settings.model_copy(update={"kafka": kafka, "worker": worker})


def with_state_dir(settings: Settings, state_dir: Path) -> Settings:
    """The same worker settings with another state directory (a second worker)."""
    worker = settings.worker.model_copy(update={"state_dir": state_dir})
    return settings.model_copy(update={"worker": worker})


def bootstrap_of(settings: Settings) -> str:
    """The resolved bootstrap servers."""
    bootstrap = settings.kafka.bootstrap_servers
    if bootstrap is None:
        raise RuntimeError("bootstrap servers not resolved")
    return bootstrap


def create_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Create one plain topic (a benchmark's own, e.g. the echo reference's)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 5})  # no info chatter
    for future in admin.create_topics(
        [NewTopic(topic, partitions, 1)], operation_timeout=timeout_s
    ).values():
        future.result()


def delete_run(bootstrap: str, name: str, groups: Iterable[str] = ()) -> int:
    """Delete the run's topics and the given consumer groups; how many topics went.

    The run's topics are ``<name>.*`` (its prefix) and ``<name>-*`` (Faust's changelogs
    and internal topics of the app id ``name`` or ``name-...``); nobody else's match.
    """
    deleted = delete_matching(bootstrap, owned_by(name), set(groups).__contains__)
    for error in deleted.errors:
        log(f"could not delete {error}")
    return len(deleted.topics)


def clean_up(bootstrap: str, name: str, groups: Iterable[str], workdir: Path) -> None:
    """Delete the run's topics and groups (:func:`delete_run`) and its working directory."""
    try:
        delete_run(bootstrap, name, groups)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def produce_all(producer: Producer, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Produce ``(key, value)`` records as fast as the producer takes them; flush; count.

    Raises:
        RuntimeError: some records were not delivered within 60 s.

    """
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
        producer.poll(0)
        count += 1
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}")
    return count


def produce_items(producer: Producer, settings: Settings, items: Iterable[ItemRecord]) -> int:
    """Send a catalog to the items topic."""
    return produce_all(
        producer,
        settings.kafka.topic("items"),
        ((item.item_id.encode(), item_to_json(item)) for item in items),
    )


def new_producer(settings: Settings) -> Producer:
    """A producer configured as recloop's own clients are (idempotent, acks=all)."""
    return Producer(producer_config(bootstrap_of(settings)))


def send_catalog(settings: Settings, items: Iterable[ItemRecord]) -> Producer:
    """Create the run's topics and send the catalog; the producer, for the events."""
    create_topics(settings.kafka, bootstrap_of(settings))
    producer = new_producer(settings)
    produce_items(producer, settings, items)
    return producer


def start_worker(
    settings: Settings, workdir: Path, name: str = "worker", timeout_s: float = 180.0
) -> WorkerProcess:
    """Start a worker process and wait until its events agent is ready.

    Raises:
        RuntimeError: it died or did not get ready in time (with the end of its log).

    """
    worker = WorkerProcess(settings, workdir / f"{name}.yaml", workdir / f"{name}.log")
    worker.start()
    if not worker.wait_for_log("events agent ready", timeout_s=timeout_s):
        tail = worker.log_tail()
        worker.stop()
        raise RuntimeError(f"{name} not ready:\n{tail}")
    return worker


def wait_for_catalog(settings: Settings, items: int, worker: WorkerProcess) -> None:
    """Wait until the worker has republished every item on the item-state topic.

    Raises:
        RuntimeError: it did not within two minutes.

    """
    k, bootstrap = settings.kafka, bootstrap_of(settings)
    if not wait_for_records(bootstrap, k.topic("item-state"), k.partitions, items, 120):
        raise RuntimeError("the catalog did not reach item-state:\n" + worker.log_tail())


def wait_for_group(bootstrap: str, group: str, members: int, timeout_s: float = 180.0) -> None:
    """Wait until the consumer group is stable with ``members`` members.

    Raises:
        RuntimeError: it was not within ``timeout_s``.

    """
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 5})
    deadline = time.monotonic() + timeout_s
    seen = "unknown"
    while time.monotonic() < deadline:
        description = admin.describe_consumer_groups([group])[group].result()
        seen = f"{description.state} with {len(description.members)} members"
        if str(description.state).endswith("STABLE") and len(description.members) == members:
            return
        time.sleep(0.5)
    raise RuntimeError(f"group {group} not stable with {members} members: {seen}")


def synthetic_log(world: SyntheticWorld, n_events: int, seed: int) -> list[Event]:
    """``n_events`` events of the world's users, interleaved as live traffic would be.

    Each user's own events (:meth:`SyntheticWorld.events_for`: clicks, dwells, skips and
    some not_relevant, following their taste) keep their order; every fifth event is an
    impression of :data:`IMPRESSION_SIZE` random items. Users are interleaved by a seeded
    shuffle.
    """
    rng = np.random.default_rng([seed, 0xBE7C])
    users = world.users
    base, extra = divmod(n_events, len(users))
    per_user = [base + (1 if u < extra else 0) for u in range(len(users))]
    streams = [_user_stream(world, user, n, rng) for user, n in zip(users, per_user, strict=True)]
    order = rng.permutation(np.repeat(np.arange(len(users)), per_user))
    cursors = [0] * len(users)
    merged: list[Event] = []
    for u in order:
        merged.append(streams[int(u)][cursors[int(u)]])
        cursors[int(u)] += 1
    return merged


def _user_stream(
    world: SyntheticWorld, user: SyntheticUser, count: int, rng: np.random.Generator
) -> list[Event]:
    impressions = count // 5
    base = world.events_for(user, count - impressions)
    stream: list[Event] = []
    n_items = len(world.items)
    for n, event in enumerate(base):
        stream.append(event)
        if len(stream) < count and n % 4 == 3:
            shown = rng.choice(n_items, size=min(IMPRESSION_SIZE, n_items), replace=False)
            stream.append(
                Impression(
                    type="impression",
                    event_id=f"{user.user_id}-imp{n:05d}",
                    user_id=user.user_id,
                    item_ids=[world.items[int(i)].item_id for i in shown],
                    timestamp=event.timestamp + timedelta(seconds=30),
                )
            )
    return stream


def mix(events: Iterable[Event]) -> dict[str, int]:
    """How many events of each type."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event.type] = counts.get(event.type, 0) + 1
    return dict(sorted(counts.items()))


def encode_events(events: Iterable[Event]) -> list[tuple[bytes, bytes]]:
    """Events as the events topic carries them: (user id, JSON)."""
    return [(event.user_id.encode(), event_to_json(event)) for event in events]


@dataclass(frozen=True)
class Rate:
    """A sustained rate: ``count`` records between the first and the last one seen.

    ``first_batch`` records arrived together with the first one; the rate counts only
    the records after them, over the time from the first to the last.
    """

    count: int
    first_s: float
    last_s: float
    first_batch: int = 1
    clock: str = ""

    @property
    def seconds(self) -> float:
        """From the first record to the last."""
        return self.last_s - self.first_s

    @property
    def per_s(self) -> float:
        """Records per second after the first batch."""
        if self.seconds <= 0:
            return float("nan")
        return (self.count - self.first_batch) / self.seconds

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "events_per_s": round(self.per_s, 1) if math.isfinite(self.per_s) else None,
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "clock": self.clock,
        }


_TIMESTAMP_TYPES = {TIMESTAMP_CREATE_TIME: "CreateTime", TIMESTAMP_LOG_APPEND_TIME: "LogAppendTime"}


def output_rate(
    settings: Settings,
    topic_name: str,
    expected: int,
    alive: Callable[[], bool],
    idle_timeout_s: float = 60.0,
) -> Rate:
    """Read one of the run's topics from the beginning until ``expected`` events are covered.

    On the snapshots topic a record covers every event of its user up to its ``version``
    (a burst of one user's events in one batch gets one snapshot, the last one's), so
    the events counted are the sum over users of the highest version seen; on any other
    topic each record is one. The rate runs from the earliest to the latest Kafka record
    timestamp (set by the worker's producer as it sends, so the reader's own delays do
    not count).

    Raises:
        RuntimeError: the workers died, or nothing arrived for ``idle_timeout_s``.

    """
    k = settings.kafka
    topic = k.topic(topic_name)
    consumer = Consumer({"bootstrap.servers": bootstrap_of(settings),
                         "group.id": f"{k.topic_prefix}rate-reader",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(k.partitions)])
    stamps: list[int] = []
    kinds: set[str] = set()
    versions: dict[str, int] = {}
    covered = first_batch = 0
    last_progress = last_report = time.monotonic()
    try:
        while covered < expected:
            messages = consumer.consume(1000, timeout=0.5)
            now = time.monotonic()
            for message in messages:
                if message.error() is None:
                    kind, stamp = message.timestamp()
                    kinds.add(_TIMESTAMP_TYPES.get(kind, str(kind)))
                    stamps.append(stamp)
                    if topic_name == "snapshots" and message.value() is not None:
                        snapshot = json.loads(message.value())
                        user, version = snapshot["user_id"], snapshot["version"]
                        covered += max(0, version - versions.get(user, 0))
                        versions[user] = max(version, versions.get(user, 0))
                    else:
                        covered += 1
                    if len(stamps) == 1:
                        first_batch = covered
            if messages:
                last_progress = now
            elif now - last_progress > idle_timeout_s or not alive():
                raise RuntimeError(
                    f"{topic}: {covered} of {expected} events, then nothing for "
                    f"{now - last_progress:.0f} s (workers alive: {alive()})"
                )
            if now - last_report > 10:
                last_report = now
                log(f"  {topic_name}: {covered}/{expected} events ({len(stamps)} records)")
    finally:
        consumer.close()
    return Rate(
        count=covered,
        first_s=min(stamps) / 1000,
        last_s=max(stamps) / 1000,
        first_batch=first_batch,
        clock="Kafka record timestamps of the output (" + "/".join(sorted(kinds)) + ")",
    )


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def broker_data_dir(settings: Settings) -> Path | None:
    """The embedded broker's data directory (``None`` for a broker named by the env)."""
    if settings.kafka.bootstrap_servers and broker_label() == "given":
        return None
    info = embedded_broker(settings).status()
    return Path(info.data_dir) if info is not None else None
