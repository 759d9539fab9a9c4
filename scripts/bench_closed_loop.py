"""Benchmark the closed loop offline: how well lists fit users' hidden tastes, round by round.

The demo's simulated users (``operators/simulator.py``) act on the lists the worker's own
operators give them, without Kafka: ``operators.evaluation.LoopRecommender`` with
per-event snapshots, the replay's loop (``process_event``, item feedback folded at once,
items without a record swept). The run is deterministic and takes about 10 s. Per round
it reports the expected CTR of recloop's lists and, measured in the same run for the
same users at the same moment, of the best list no personalisation can beat and of the
best list possible; and how narrow the lists are (the share of the most common
category) and how many of the user's best categories they hold.

This is what showed that without any drift the loop's expected CTR falls after a
dozen rounds, faster than the best possible list's: see docs/demo.md ("Long runs").
Settings come from the environment as for a worker (``RECLOOP__RANKING__...``), so a
ranking setting can be tried here before a demo. Prints ONE JSON line; progress goes
to stderr.

    .venv/bin/python scripts/bench_closed_loop.py [--rounds 25] [--users 32] [--items 400]
        [--seed 7] [--drift-at ROUND]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from operators.evaluation import LoopRecommender
from operators.model import RankingModel
from operators.simulator import SessionClock, Simulation
from pipeline.app import loop_config
from pipeline.settings import load_settings
from schemas.events import Event
from schemas.snapshot import Snapshot

CATEGORIES = 8  # as the demo
START = datetime(2026, 11, 1, tzinfo=UTC)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _loop(sim: Simulation) -> LoopRecommender:
    """One worker's state offline, as the replay keeps it, building each event's snapshot."""
    settings = load_settings(None, dict(os.environ))
    model = RankingModel(learning_rate=settings.ranking.model_learning_rate)
    return LoopRecommender(sim.catalog.items, loop_config(settings), model, snapshots=True)


def _apply(loop: LoopRecommender, event: Event) -> Snapshot | None:
    loop.learn(event)
    return loop.last_snapshot


def _favourites(sim: Simulation, user_id: str) -> set[str]:
    """The user's two best categories now (their hidden taste)."""
    taste = sim.users[user_id].taste.categories
    order = np.argsort(-np.asarray(taste))[:2]
    return {sim.catalog.categories[int(i)] for i in order}


def run(rounds: int, users: int, items: int, seed: int, drift_at: int | None) -> dict[str, Any]:
    clock = SessionClock(START, timedelta(hours=1))
    sim = Simulation.generate(seed, users, items, clock, CATEGORIES, drift_at)
    loop = _loop(sim)
    latest: dict[str, Snapshot] = {}
    for user_id in sim.users:
        snapshot = _apply(loop, sim.hello(user_id))
        assert snapshot is not None
        latest[user_id] = snapshot
    per_round: list[dict[str, Any]] = []
    for number in range(1, rounds + 1):
        expected, best, popular, narrow, both = [], [], [], [], []
        for user_id in sim.users:
            snapshot = latest[user_id]
            visit = sim.visit(user_id, snapshot)
            expected.append(visit.expected_ctr)
            best.append(visit.oracle_ctr)
            popular.append(visit.popularity_ctr)
            shown = Counter(item.category for item in snapshot.items)
            narrow.append(max(shown.values()) / len(snapshot.items) if shown else 0.0)
            both.append(len(_favourites(sim, user_id) & set(shown)) == 2)
            for event in visit.events:
                answered = _apply(loop, event)
                if answered is not None:
                    latest[user_id] = answered
        row = {
            "round": number,
            "expected_ctr": round(float(np.mean(expected)), 4),
            "best_possible_ctr": round(float(np.mean(best)), 4),
            "best_non_personalised_ctr": round(float(np.mean(popular)), 4),
            "top_category_share": round(float(np.mean(narrow)), 3),
            "lists_with_both_favourites": round(float(np.mean(both)), 3),
        }
        per_round.append(row)
        _log(json.dumps(row))
    return {"rounds": per_round}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift-at", type=int, default=None, help="round of the drift (none)")
    args = parser.parse_args()
    started = time.perf_counter()
    figures = run(args.rounds, args.users, args.items, args.seed, args.drift_at)
    rows = figures["rounds"]
    peak = max(rows, key=lambda r: r["expected_ctr"])
    last = rows[-1]
    keys = ("round", "expected_ctr", "best_possible_ctr")
    print(
        json.dumps(
            {
                "benchmark": "closed_loop",
                "users": args.users,
                "items": args.items,
                "seed": args.seed,
                "drift_at": args.drift_at,
                "settings_from_env": sorted(k for k in os.environ if k.startswith("RECLOOP__")),
                "peak": {key: peak[key] for key in keys},
                "end": {key: last[key] for key in keys},
                "mean_expected_ctr": round(float(np.mean([r["expected_ctr"] for r in rows])), 4),
                "wall_s": round(time.perf_counter() - started, 1),
                **figures,
            }
        )
    )


if __name__ == "__main__":
    main()
