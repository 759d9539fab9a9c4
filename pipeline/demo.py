"""The main job: a worker on the (embedded) broker, synthetic users, snapshots as they change.

Every run uses its own topic prefix and state directory, so runs never see each other.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from operators.synthetic import SyntheticUser, SyntheticWorld
from pipeline.clients import producer_config, wait_for_records
from pipeline.settings import Settings
from pipeline.topics import create_topics
from pipeline.worker_process import WorkerProcess
from schemas.catalog import item_to_json
from schemas.events import Event, event_to_json
from schemas.snapshot import Snapshot, parse_snapshot


def _describe(snapshot: Snapshot, top: int = 5) -> str:
    cats = [item.category or "?" for item in snapshot.items[:top]]
    return ", ".join(cats)


def _share(snapshot: Snapshot, categories: set[str]) -> float:
    if not snapshot.items:
        return 0.0
    return sum(1 for item in snapshot.items if item.category in categories) / len(snapshot.items)


def run_demo(settings: Settings, users: int, events_per_user: int, seed: int) -> int:
    """Run the demo; returns 0 when every user's last event reached a snapshot."""
    assert settings.kafka.bootstrap_servers is not None
    run = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    kafka = settings.kafka.model_copy(update={"topic_prefix": f"recloop-demo-{run}."})
    base = Path("var") / "demo" / run
    worker_settings = settings.model_copy(
        update={
            "kafka": kafka,
            "worker": settings.worker.model_copy(
                update={"state_dir": base / "state", "app_id": f"recloop-demo-{run}"}
            ),
        }
    )
    bootstrap = settings.kafka.bootstrap_servers
    print(f"broker {bootstrap}; topics {kafka.topic_prefix}*; state {base}")
    create_topics(kafka, bootstrap)
    world = SyntheticWorld.generate(seed=seed, n_items=120, n_users=users, n_categories=6)
    worker = WorkerProcess(worker_settings, base / "worker.yaml", base / "worker.log")
    worker.start()
    producer = Producer(producer_config(bootstrap))
    for item in world.items:
        producer.produce(kafka.topic("items"), key=item.item_id.encode(), value=item_to_json(item))
    producer.flush(30)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"demo-{run}", "enable.auto.commit": False}
    )
    consumer.assign(
        [
            TopicPartition(kafka.topic("snapshots"), p, OFFSET_BEGINNING)
            for p in range(kafka.partitions)
        ]
    )
    try:
        if not worker.wait_for_log("events agent ready", timeout_s=90):
            print("the worker did not become ready:\n" + worker.log_tail())
            return 1
        if not wait_for_records(
            bootstrap, kafka.topic("item-state"), kafka.partitions, len(world.items)
        ):
            print("the catalog did not reach the item-state topic:\n" + worker.log_tail())
            return 1
        return _drive(world, events_per_user, producer, consumer, kafka.topic("events"))
    finally:
        consumer.close()
        worker.stop()


def _drive(
    world: SyntheticWorld,
    events_per_user: int,
    producer: Producer,
    consumer: Consumer,
    topic: str,
) -> int:
    streams: dict[str, list[Event]] = {
        u.user_id: world.events_for(u, events_per_user) for u in world.users
    }
    by_id: dict[str, SyntheticUser] = {u.user_id: u for u in world.users}
    latest: dict[str, Snapshot] = {}
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    for n in range(events_per_user):
        for user in world.users:
            event = streams[user.user_id][n]
            sent_at[event.event_id] = time.monotonic()
            producer.produce(topic, key=user.user_id.encode(), value=event_to_json(event))
        producer.flush(10)
        wanted = {u.user_id: streams[u.user_id][n].event_id for u in world.users}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            latest.get(uid) is None or latest[uid].source_event_id != eid
            for uid, eid in wanted.items()
        ):
            message = consumer.poll(0.1)
            value = message.value() if message is not None and not message.error() else None
            if value is None:
                continue
            snapshot = parse_snapshot(value)
            latest[snapshot.user_id] = snapshot
            if snapshot.source_event_id in sent_at:
                latencies.append((time.monotonic() - sent_at[snapshot.source_event_id]) * 1000)
            event = next(
                e for e in streams[snapshot.user_id] if e.event_id == snapshot.source_event_id
            )
            item = getattr(event, "item_id", "-")
            print(
                f"{snapshot.user_id} v{snapshot.version:<3} after {event.type:<12} {item}: "
                f"top-5 [{_describe(snapshot)}]"
            )
            if snapshot.notice is not None:  # de-escalation: what was heard, what changed
                print(f"    notice: {snapshot.notice.heard}; {snapshot.notice.change}")
            if snapshot.prompt is not None:
                choices = " | ".join(c.label for c in snapshot.prompt.choices)
                print(f"    prompt: {snapshot.prompt.question} [{choices}]")
    missing = [
        uid
        for uid in streams
        if latest.get(uid) is None or latest[uid].source_event_id != streams[uid][-1].event_id
    ]
    print("\nuser        favourites               share of favourites in the final top-10")
    for uid, snapshot in sorted(latest.items()):
        user = by_id[uid]
        favs = {c for c, p in user.taste.items() if p >= 0.5}
        print(f"{uid}   {', '.join(sorted(favs)):<24} {_share(snapshot, favs):.0%}")
    if latencies:
        ordered = sorted(latencies)
        p50 = ordered[len(ordered) // 2]
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        print(
            f"\nevent -> snapshot latency over {len(ordered)} snapshots: "
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"
        )
    counts = Counter(s.model_version for s in latest.values())
    print(f"model versions: {dict(counts)}")
    if missing:
        print(f"no final snapshot for: {', '.join(missing)}")
        return 1
    return 0
