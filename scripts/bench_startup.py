"""Benchmark a worker's start with a large catalog: how long its event loop stops turning.

A worker starting with an empty (or stale) item index catches up with the item-state
topic, then indexes every item before it serves. Both steps run on the worker's event
loop, which also serves health checks, metrics scrapes and the item agents, so what
matters is the loop's longest stall, not only the total time. For each step this script
measures, in the same run and on the same seeded catalog:

* **catch-up**: the follower's queue holding one state per item, applied by
  ``CatalogFollower.wait_caught_up`` (slices of ``CATCH_UP_SLICE`` records, the loop
  turning between them), against the reference, one ``drain()`` of the whole queue;
* **index build**: ``pipeline.app.index_in_batches`` (the worker's way: batches written
  from a thread, hnswlib releasing the GIL), against the reference,
  ``Catalog.sync_index()`` called on the loop (what the worker did before).

A ticker coroutine records the longest gap between two of its turns (it asks to run
again every millisecond). Both builds must index the same items. Prints ONE JSON line;
progress goes to stderr. No broker: the follower is fed its records directly.

    .venv/bin/python scripts/bench_startup.py [--items 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from operators.catalog import Catalog, ItemState
from operators.synthetic import SyntheticWorld
from pipeline.app import _BUILD_BATCH, index_in_batches
from pipeline.catalog_follower import CATCH_UP_SLICE, CatalogFollower


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """Run ``work`` on the loop; its wall time and the loop's longest stall meanwhile (s)."""
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)  # let the ticker take its first turn
    start = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - start
    done = True
    await ticking
    return elapsed, longest


def _follower(states: list[bytes], catalog: Catalog) -> CatalogFollower:
    """A follower (never started) whose poll thread would have queued ``states``."""
    follower = CatalogFollower("127.0.0.1:9", "bench.item-state", 1, catalog)
    for offset, value in enumerate(states):
        follower._queue.put((f"item-{offset:05d}".encode(), value, 0, offset))
    follower._targets = {0: len(states)}
    return follower


async def _bench(items: int, seed: int) -> dict[str, Any]:
    world = SyntheticWorld.generate(seed=seed, n_items=items, n_users=1, n_categories=8)
    states = [ItemState(item_id=r.item_id, record=r).snapshot() for r in world.items]
    _log(f"{items} item states ready")

    async def drain_at_once(follower: CatalogFollower) -> None:
        follower.drain()

    async def catch_up(follower: CatalogFollower) -> None:
        assert await follower.wait_caught_up(timeout_s=3600)

    figures: dict[str, Any] = {}
    catalogs: dict[str, Catalog] = {}
    for name, step in (("reference", drain_at_once), ("worker", catch_up)):
        follower = _follower(states, Catalog())
        elapsed, stall = await _timed(lambda f=follower, s=step: s(f))  # type: ignore[misc]
        assert len(follower.catalog) == items
        catalogs[name] = follower.catalog
        figures[f"catch_up_{name}"] = {
            "s": round(elapsed, 2),
            "longest_stall_ms": round(stall * 1e3, 1),
        }
        _log(f"catch-up, {name}: {elapsed:.1f} s, longest stall {stall * 1e3:.0f} ms")

    async def on_the_loop(catalog: Catalog) -> None:
        catalog.sync_index()

    async def in_batches(catalog: Catalog) -> None:
        await index_in_batches(catalog)

    for name, build in (("reference", on_the_loop), ("worker", in_batches)):
        catalog = catalogs[name]
        elapsed, stall = await _timed(lambda c=catalog, b=build: b(c))  # type: ignore[misc]
        figures[f"index_build_{name}"] = {
            "s": round(elapsed, 2),
            "longest_stall_ms": round(stall * 1e3, 1),
        }
        _log(f"index build, {name}: {elapsed:.1f} s, longest stall {stall * 1e3:.0f} ms")
    indexed = [len(c.index) for c in catalogs.values()]
    assert indexed == [items, items], indexed
    assert sorted(catalogs["reference"].index.ids()) == sorted(catalogs["worker"].index.ids())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = asyncio.run(_bench(args.items, args.seed))
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "items": args.items,
                "catch_up_slice": CATCH_UP_SLICE,
                "build_batch": _BUILD_BATCH,
                "cpus": os.cpu_count(),
                **figures,
            }
        )
    )


if __name__ == "__main__":
    main()
