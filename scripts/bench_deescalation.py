"""Benchmark de-escalation through the real broker: how fast and how strong.

A worker process runs on the configured broker (the embedded one when none is set).
Each of ``--users`` users likes six thrillers, then says one thriller is not relevant.
Every event is produced alone and timed until its snapshot arrives on the snapshots
topic; the users' clicks, measured in the same run on the same worker, are the
reference. Prints ONE JSON line; progress goes to stderr.

    .venv/bin/python scripts/bench_deescalation.py [--users 40] [--seed 0]

Targets (issue 5): the snapshot after a not_relevant arrives within 100 ms (p95) of the
event being produced, and holds at least 70 % fewer items of the disliked category than
the snapshot before, but not none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _bench import (
    bootstrap_of,
    broker_label,
    isolated_settings,
    percentile,
    send_catalog,
    start_worker,
    wait_for_catalog,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from operators.synthetic import striped_catalog
from schemas.catalog import ItemRecord
from schemas.events import Click, Event, NotRelevant, event_to_json
from schemas.snapshot import Snapshot, parse_snapshot

CATEGORIES = ("thriller", "comedy", "drama", "documentary")
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
TARGET_P95_MS = 100.0
LIKES = (0, 4, 8, 12, 16, 20)


def _items() -> list[ItemRecord]:
    return striped_catalog(200, created_at=T0 - timedelta(days=400), width=3)


def _thrillers(snapshot: Snapshot) -> int:
    return sum(1 for item in snapshot.items if item.category == "thriller")


def _share(snapshot: Snapshot) -> float:
    """The thrillers' share of the list (however long ``ranking.k`` makes it)."""
    return _thrillers(snapshot) / len(snapshot.items) if snapshot.items else 0.0


class Timer:
    """Produces one event and waits for the snapshot it causes."""

    def __init__(self, producer: Producer, consumer: Consumer, topic: str) -> None:
        self.producer, self.consumer, self.topic = producer, consumer, topic

    def send(self, event: Event, timeout_s: float = 20.0) -> tuple[float, Snapshot]:
        started = time.perf_counter()
        self.producer.produce(self.topic, key=event.user_id.encode(), value=event_to_json(event))
        self.producer.flush(10)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.05)
            if message is None or message.error() is not None or message.value() is None:
                continue
            snapshot = parse_snapshot(message.value())
            if snapshot.source_event_id == event.event_id:
                return (time.perf_counter() - started) * 1000, snapshot
        raise TimeoutError(f"no snapshot for {event.event_id} within {timeout_s:.0f} s")


def run(users: int, seed: int) -> dict[str, Any]:
    """The whole benchmark; the figures as a dict."""
    run_id = f"bench-deesc-{int(time.time())}-{seed}"
    workdir = Path(tempfile.mkdtemp(prefix="recloop-bench-"))
    settings = isolated_settings(run_id, workdir, partitions=2)
    bootstrap, kafka = bootstrap_of(settings), settings.kafka
    items = _items()
    producer = send_catalog(settings, items)
    worker = start_worker(settings, workdir, timeout_s=120)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": run_id,
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})  # fmt: skip
    try:
        wait_for_catalog(settings, len(items), worker)
        consumer.assign(
            [TopicPartition(kafka.topic("snapshots"), p, OFFSET_BEGINNING) for p in (0, 1)]
        )
        timer = Timer(producer, consumer, kafka.topic("events"))
        # warm-up: the worker's first events pay for imports, caches and the first index sync
        for n in range(5):
            timer.send(Click(type="click", event_id=f"warm-{n}", user_id="warm",
                             item_id=f"i{n:03d}", timestamp=T0))  # fmt: skip
        clicks: list[float] = []
        dislikes: list[float] = []
        before_after: list[tuple[int, int, bool]] = []
        shares: list[tuple[float, float]] = []  # the thrillers' share before and after
        for u in range(users):
            user = f"user-{seed}-{u}"
            offset = 4 * (u % 40)  # different thrillers for different users
            before: Snapshot | None = None
            for n, like in enumerate(LIKES):
                ms, before = timer.send(Click(
                    type="click", event_id=f"{user}-c{n}", user_id=user,
                    item_id=f"i{(like + offset) % 200:03d}", timestamp=T0 + timedelta(minutes=n),
                ))  # fmt: skip
                clicks.append(ms)
            ms, after = timer.send(NotRelevant(
                type="not_relevant", event_id=f"{user}-nr", user_id=user,
                item_id=f"i{(24 + offset) % 200:03d}", reason="not_interested",
                timestamp=T0 + timedelta(minutes=10),
            ))  # fmt: skip
            dislikes.append(ms)
            assert before is not None
            before_after.append((_thrillers(before), _thrillers(after), after.notice is not None))
            shares.append((_share(before), _share(after)))
            print(f"{user}: not_relevant -> snapshot {ms:.1f} ms, thrillers "
                  f"{before_after[-1][0]} -> {before_after[-1][1]}", file=sys.stderr)  # fmt: skip
    finally:
        consumer.close()
        worker.stop()
    drops = [1 - a / b for b, a, _ in before_after if b]
    p95 = percentile(dislikes, 0.95)
    return {
        "benchmark": "deescalation",
        "users": users,
        "broker": broker_label(),
        "not_relevant_to_snapshot_ms": {
            "p50": round(statistics.median(dislikes), 1),
            "p95": round(p95, 1),
            "max": round(max(dislikes), 1),
            "n": len(dislikes),
        },
        "reference_click_to_snapshot_ms": {
            "p50": round(statistics.median(clicks), 1),
            "p95": round(percentile(clicks, 0.95), 1),
            "n": len(clicks),
        },
        "target_p95_ms": TARGET_P95_MS,
        "p95_met": p95 <= TARGET_P95_MS,
        "category_share": {
            "before_mean": round(statistics.mean(b for b, _ in shares), 3),
            "after_mean": round(statistics.mean(a for _, a in shares), 3),
            "drop_min": round(min(drops), 3) if drops else None,
            "none_left": sum(1 for b, a, _ in before_after if b and a == 0),
            "drop_met": bool(drops)
            and min(drops) >= 0.7
            and all(a > 0 for b, a, _ in before_after if b),
        },
        "notice_present": sum(1 for *_, notice in before_after if notice) / len(before_after),
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.users, args.seed)))


if __name__ == "__main__":
    main()
