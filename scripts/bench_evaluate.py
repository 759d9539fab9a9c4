"""Benchmark the offline replay on MovieLens 100K: its wall time against the 2-minute target.

Imports ``--dataset`` (MovieLens 100K, ``../shared/datasets/ml-100k`` by default) into a
temporary folder, deleted afterwards (its licence forbids keeping a copy), and runs
``recloop evaluate`` on it exactly as a user would, in a process of its own: all six
recommenders, ``--jobs`` processes. The reference is measured in the same run: the
baselines (popularity, River's matrix factorisations, item co-occurrence) replay the
same log with the same questions, and each one's own time is reported beside recloop's.
Prints ONE JSON line; progress goes to stderr.

    .venv/bin/python scripts/bench_evaluate.py [--limit N] [--jobs 2] [--snapshots]

Target (issue 4): the whole replay of ML-100K in under 2 minutes on this machine.
Without the dataset it prints ``{"skipped": ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import load_average, log

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "datasets" / "ml-100k"
TARGET_S = 120.0


def _recloop(*args: str) -> tuple[dict[str, Any], float]:
    """Run ``python -m pipeline ARGS`` from the repository; its JSON output and wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"recloop {args[0]} failed ({done.returncode}):\n{done.stderr}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document, elapsed


def _commit() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    return done.stdout.strip() or None


def run(dataset: Path, limit: int | None, jobs: int, snapshots: bool) -> dict[str, Any]:
    """Import, replay, and the figures of the replay against its target and references."""
    if not (dataset / "u.data").is_file():
        return {"benchmark": "evaluate", "skipped": f"no MovieLens 100K at {dataset}"}
    with tempfile.TemporaryDirectory(prefix="recloop-bench-evaluate-") as scratch:
        log(f"importing {dataset}")
        imported, import_s = _recloop("import", "movielens", str(dataset), "--out", scratch)
        options = ["--jobs", str(jobs), "--snapshots" if snapshots else "--no-snapshots"]
        if limit is not None:
            options += ["--limit", str(limit)]
        log(f"replaying {imported['events']} events ({' '.join(options)})")
        document, wall_s = _recloop(
            "evaluate", f"{scratch}/events.jsonl", "--items", f"{scratch}/items.jsonl", *options
        )
    sections = document["recommenders"]
    recloop = sections["recloop"]
    references = {name: s["wall_time_s"] for name, s in sections.items() if name != "recloop"}
    slowest = max(references.values()) if references else None
    return {
        "benchmark": "evaluate",
        "commit": _commit(),
        "dataset": dataset.name,
        "interactions": document["log"]["interactions"],
        "events": document["log"]["events"],
        "snapshots": snapshots,
        "jobs": jobs,
        "import_s": round(import_s, 1),
        "wall_s": round(wall_s, 1),
        "target_s": TARGET_S if limit is None else None,
        "target_met": wall_s < TARGET_S if limit is None else None,
        "recloop_s": recloop["wall_time_s"],
        "references_s": references,
        "recloop_vs_slowest_reference": (
            round(recloop["wall_time_s"] / slowest, 1) if slowest else None
        ),
        "recall_at_10": round(recloop["recall_at_k"], 4),
        "popularity_recall_at_10": (
            round(sections["popularity"]["recall_at_k"], 4) if "popularity" in sections else None
        ),
        "coverage": round(recloop["coverage"], 4),
        "index_recall_at_10_vs_exact": recloop["index"]["recall_at_10_vs_exact"],
        "graph_recall_at_10": recloop["index"]["graph_recall_at_10"],
        "load_average": load_average(),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET,
                        help="the MovieLens 100K folder (u.data, u.item)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N ratings (no target then)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--snapshots", action="store_true", help="recloop also builds each event's snapshot"
    )
    args = parser.parse_args(argv)
    print(json.dumps(run(args.dataset, args.limit, args.jobs, args.snapshots)))


if __name__ == "__main__":
    main()
