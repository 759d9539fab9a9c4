"""Benchmark ItemIndex (hnswlib) against exact numpy search, measured in the same run.

For each size: build the index from seeded random unit vectors, then time single queries
(k=10) through the index and through the reference (exact top-10: one matrix-vector
product plus argpartition), compute recall@10 against the reference, and measure memory.
Then move 1,000 items a little (the way an item's embedding turns as it learns) and time
re-indexing them one at a time, the cost a worker pays per re-indexed item, and the
recall@10 after it; up to 20,000 items, re-index 0.7x the items one at a time as well,
which runs a compaction, and report the slowest write. Prints ONE JSON line; progress
goes to stderr.

    .venv/bin/python scripts/bench_retrieval.py [--sizes 10000,100000] [--dim 64]
        [--queries 1000] [--seed 0] [--threads 1] [--ef-search N] [--ef-construction N]
        [--m N]

The reference's matrix-vector product runs in OpenBLAS, which reads OPENBLAS_NUM_THREADS
(recorded in the output, never set here); hnswlib uses no BLAS.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from operators.index import ItemIndex

K = 10
EXCLUSIONS = (100, 1000)
EXCLUSION_QUERIES = 200
#: Items moved and re-indexed one at a time; how far each moves (cosine about 0.99).
UPDATES = 1000
UPDATE_NOISE = 0.15
#: Up to this size, also re-index 0.7x the items one at a time: enough to run a
#: compaction, whose steps bound the slowest write.
CHURN_MAX_SIZE = 20_000
CHURN_SHARE = 0.7
Matrix = npt.NDArray[np.float32]
T = TypeVar("T")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rss_mb() -> float:
    """Current resident set size (MB), from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _unit(rng: np.random.Generator, n: int, dim: int) -> Matrix:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _exact_top(items: Matrix, query: Matrix) -> npt.NDArray[np.intp]:
    """The reference: exact top-K rows of ``items`` by inner product, best first."""
    scores = items @ query
    top = np.argpartition(scores, -K)[-K:]
    ordered: npt.NDArray[np.intp] = top[np.argsort(-scores[top])]
    return ordered


def _timed(call: Callable[[Matrix], T], queries: Matrix) -> tuple[list[float], list[T]]:
    """Per-query latencies (microseconds) and answers, after a short warm-up."""
    for query in queries[:10]:  # warm caches and lazy allocations
        call(query)
    timings: list[float] = []
    answers: list[T] = []
    for query in queries:
        start = time.perf_counter_ns()
        answer = call(query)
        timings.append((time.perf_counter_ns() - start) / 1e3)
        answers.append(answer)
    return timings, answers


def _percentiles(timings: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(timings, [50, 99])
    return {"p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1)}


def _recall(
    index: ItemIndex, items: Matrix, ids: list[str], queries: Matrix
) -> tuple[list[float], list[float], float]:
    """Index and exact latencies per query, and the index's recall@K against exact."""
    hnsw, found = _timed(lambda query: index.query(query, k=K), queries)
    exact, truth = _timed(lambda query: _exact_top(items, query), queries)
    hits = sum(
        len({ids[i] for i in expected.tolist()} & {item for item, _ in answer})
        for answer, expected in zip(found, truth, strict=True)
    )
    return hnsw, exact, hits / (K * len(queries))


def _churn(
    index: ItemIndex, items: Matrix, ids: list[str], rng: np.random.Generator
) -> dict[str, float]:
    """Re-index ``CHURN_SHARE`` of the items one at a time: every write's latency."""
    writes: list[float] = []
    compactions = index.compactions
    for row in range(int(CHURN_SHARE * len(ids))):
        moved = items[row] + UPDATE_NOISE * _unit(rng, 1, items.shape[1])[0]
        start_ns = time.perf_counter_ns()
        index.upsert(ids[row], moved)
        writes.append((time.perf_counter_ns() - start_ns) / 1e6)
    return {
        "reindexes": len(writes),
        "compactions": index.compactions - compactions,
        "mean_ms": round(float(np.mean(writes)), 3),
        "p99_ms": round(float(np.percentile(writes, 99)), 2),
        "max_ms": round(max(writes), 1),
        "total_s": round(sum(writes) / 1e3, 2),
    }


def bench_size(
    size: int, dim: int, n_queries: int, seed: int, params: dict[str, int]
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, size])
    items = _unit(rng, size, dim)
    queries = _unit(rng, n_queries, dim)
    ids = [f"item-{i:07d}" for i in range(size)]
    gc.collect()

    rss_before = _rss_mb()
    start = time.perf_counter()
    index = ItemIndex.build(dim, zip(ids, items, strict=True), **params)
    build_s = time.perf_counter() - start
    rss_growth = _rss_mb() - rss_before
    _log(f"size {size}: built in {build_s:.1f} s")

    hnsw, exact, recall = _recall(index, items, ids, queries)
    _log(f"size {size}: recall@{K} {recall:.4f}")

    with_exclusions: dict[str, dict[str, float]] = {}
    for count in EXCLUSIONS:
        excluded = [ids[i] for i in rng.choice(size, min(count, size - K), replace=False)]
        query_excluding = functools.partial(index.query, k=K, exclude=excluded)
        timings, _ = _timed(query_excluding, queries[:EXCLUSION_QUERIES])
        with_exclusions[str(count)] = _percentiles(timings)

    moved = rng.choice(size, min(UPDATES, size), replace=False)
    items[moved] += UPDATE_NOISE * _unit(rng, len(moved), dim)
    items[moved] /= np.linalg.norm(items[moved], axis=1, keepdims=True)
    updates: list[float] = []
    for row in moved.tolist():
        start_ns = time.perf_counter_ns()
        index.upsert(ids[row], items[row])
        updates.append((time.perf_counter_ns() - start_ns) / 1e3)
    _, _, recall_after = _recall(index, items, ids, queries)
    _log(f"size {size}: re-indexing {np.mean(updates):.0f} us an item, then {recall_after:.4f}")

    churn = _churn(index, items, ids, rng) if size <= CHURN_MAX_SIZE else None
    if churn is not None:
        _log(f"size {size}: churn {churn}")

    start = time.perf_counter()
    snapshot = index.snapshot()
    snapshot_s = time.perf_counter() - start
    start = time.perf_counter()
    restored = ItemIndex.restore(snapshot)
    restore_s = time.perf_counter() - start
    same = restored.query(queries[0], k=K) == index.query(queries[0], k=K)
    snapshot_mb = len(snapshot) / 2**20
    del snapshot, restored

    hnsw_p = _percentiles(hnsw)
    exact_p = _percentiles(exact)
    return {
        "size": size,
        "build_s": round(build_s, 2),
        "build_items_per_s": round(size / build_s),
        "hnsw_query": hnsw_p,
        "exact_query": exact_p,
        "speedup_p50": round(exact_p["p50_us"] / hnsw_p["p50_us"], 1),
        "recall_at_10": round(recall, 4),
        "hnsw_query_with_exclusions": with_exclusions,
        "reindex_one": _percentiles(updates) | {"mean_us": round(float(np.mean(updates)), 1)},
        "recall_at_10_after_reindex": round(recall_after, 4),
        "churn_one_at_a_time": churn,
        "snapshot_mb": round(snapshot_mb, 1),
        "snapshot_s": round(snapshot_s, 2),
        "restore_s": round(restore_s, 2),
        "restore_same_results": same,
        "rss_growth_mb": round(rss_growth, 1),
        "vectors_mb": round(items.nbytes / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated item counts")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="hnswlib insert threads (more: faster builds, graph no longer seed-determined)",
    )
    parser.add_argument("--ef-search", type=int, default=None, help="override the default")
    parser.add_argument("--m", type=int, default=None, help="override the default")
    parser.add_argument("--ef-construction", type=int, default=None, help="override the default")
    args = parser.parse_args(argv)

    params = {"seed": args.seed, "num_threads": args.threads}
    if args.ef_search is not None:
        params["ef_search"] = args.ef_search
    if args.m is not None:
        params["m"] = args.m
    if args.ef_construction is not None:
        params["ef_construction"] = args.ef_construction
    sizes = [int(size) for size in args.sizes.split(",") if size]
    started = time.perf_counter()
    results = [bench_size(size, args.dim, args.queries, args.seed, params) for size in sizes]
    print(
        json.dumps(
            {
                "benchmark": "retrieval",
                "reference": "exact numpy top-10 (matrix-vector product + argpartition)",
                "dim": args.dim,
                "k": K,
                "queries": args.queries,
                "seed": args.seed,
                # max_elements is left out: build() sizes each index to its item count.
                "index_params": {
                    name: value
                    for name, value in ItemIndex(args.dim, **params).params().items()
                    if name != "max_elements"
                },
                "cpus": os.cpu_count(),
                "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "hnswlib": importlib.metadata.version("hnswlib"),
                "numpy": np.__version__,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "wall_s": round(time.perf_counter() - started, 1),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
