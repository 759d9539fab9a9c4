"""Benchmark the live metrics' cost per event against the per-event loop itself.

Replays a synthetic world through ``process_event`` (the events agent's work, the
reference) and, on the same events, through what the agent adds for the live metrics
(the previous list from the stored latest snapshot, ``LiveMetrics.observe``), and one read of
every figure (what a scrape or a metrics record costs). Prints ONE JSON line.

    .venv/bin/python scripts/bench_live_metrics.py [--users 200] [--events 50] [--items 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from operators.catalog import ItemState
from operators.feedback_loop import LoopConfig, process_event
from operators.live_metrics import LiveMetrics
from operators.profile import UserProfile
from operators.synthetic import SyntheticWorld
from pipeline.web import decode_latest, encode_latest
from schemas.events import Event
from schemas.snapshot import snapshot_to_json

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--events", type=int, default=50, help="events per user")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    world = SyntheticWorld.generate(args.seed, n_items=args.items, n_users=args.users)
    config = LoopConfig()
    catalog = config.new_catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    events: list[Event] = sorted(
        (e for user in world.users for e in world.events_for(user, args.events)),
        key=lambda e: (e.timestamp, e.event_id),
    )
    profiles: dict[str, UserProfile] = {}
    latest: dict[str, bytes] = {}
    metrics = LiveMetrics()
    loop_s = metrics_s = 0.0
    for event in events:
        before = profiles.get(event.user_id)
        t0 = time.perf_counter()
        step = process_event(event, before, catalog, config, NOW)
        assert step.snapshot is not None
        encoded = snapshot_to_json(step.snapshot)
        t1 = time.perf_counter()
        previous = latest.get(event.user_id)
        shown = decode_latest(previous)[1] if previous is not None else None
        metrics.observe(
            event, before=before, after=step.profile, shown=shown, snapshot=step.snapshot,
            adjustments=step.adjustments, catalog=catalog, now=t1, latency_s=0.005,
        )  # fmt: skip
        t2 = time.perf_counter()
        loop_s += t1 - t0
        metrics_s += t2 - t1
        profiles[event.user_id] = step.profile
        latest[event.user_id] = encode_latest(None, step.snapshot, encoded)
    t3 = time.perf_counter()
    figures = metrics.figures(time.perf_counter(), len(catalog))
    read_s = time.perf_counter() - t3
    n = len(events)
    print(
        json.dumps(
            {
                "events": n,
                "items": args.items,
                "loop_us_per_event": round(1e6 * loop_s / n, 1),
                "metrics_us_per_event": round(1e6 * metrics_s / n, 1),
                "metrics_share_of_loop": round(metrics_s / loop_s, 4),
                "read_all_figures_ms": round(1e3 * read_s, 3),
                "lists": figures["lists"],
                "catalog_coverage": figures["catalog_coverage"],
            }
        )
    )


if __name__ == "__main__":
    main()
