"""Benchmark serving: ``GET /users/{id}/recommendations`` latency at a fixed offered load.

One worker with its web server on, a synthetic catalog, and a few events for each of
``--users`` users; once every user's snapshot is served, an open-loop client (aiohttp,
one connection pool, this process) sends requests at ``--rate`` per second:

* reference: ``GET /ping`` on the same server (``{"ok": true}``, no work): the cost of
  the web server, the event loop it shares with the agents, and this client;
* recloop: ``GET /users/{id}/recommendations`` for a user drawn at random (seeded).

Requests are scheduled at fixed times (``i / rate``) whatever the answers do, and each
latency runs from the scheduled send time to the end of the body, so a stalled server
is charged for every request it delayed (no coordinated omission). The two routes take
turns in blocks (``--blocks`` each) so that noise from other users of the machine falls
on both. A warm-up of ``--warmup`` seconds per route is not measured.

With one worker every user is local: no forward. With ``--two-workers`` a second worker
joins the group (each then owns half the partitions) and the same load goes to the first
worker: requests for users on the other worker's partitions are forwarded once, and
their fraction and latency are reported apart.

Prints ONE JSON line; progress goes to stderr.

    .venv/bin/python scripts/bench_serving.py [--rate 500] [--duration 20] [--warmup 5]
        [--users 300] [--items 2000] [--two-workers] [--quick]

Target (issue 7): p99 <= 10 ms at 500 requests/s (one worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from _bench import (
    bootstrap_of,
    clean_up,
    encode_events,
    environment,
    isolated_settings,
    latency_summary,
    load_average,
    log,
    mix,
    produce_all,
    run_id,
    send_catalog,
    start_worker,
    synthetic_log,
    wait_for_catalog,
    with_state_dir,
)
from bench_scale import wait_for_group

from operators.synthetic import SyntheticWorld
from pipeline.settings import Settings
from pipeline.web import SERVED_BY_HEADER
from pipeline.worker_process import WorkerProcess

TARGET_P99_MS = 10.0
TARGET_RATE = 500.0
REQUEST_TIMEOUT_S = 5.0
#: after the second worker is healthy: let the rebalance's after-work (commits) pass
SETTLE_S = 5.0


@dataclass(frozen=True)
class Sample:
    """One request: when it was due, when its answer was read, and what it was."""

    due: float
    done: float
    status: int  # 0: no answer (connection error or timeout)
    served_by: str

    @property
    def latency_ms(self) -> float:
        """From the scheduled send time to the end of the body."""
        return 1000 * (self.done - self.due)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web_settings(settings: Settings, state_dir: Path) -> Settings:
    """The worker settings with the web server on a free port and its own state dir."""
    worker = settings.worker.model_copy(
        update={"web_enabled": True, "web_host": "127.0.0.1", "web_port": free_port()}
    )
    return with_state_dir(settings.model_copy(update={"worker": worker}), state_dir)


def base_url(settings: Settings) -> str:
    """Where a worker with these settings serves the API."""
    return f"http://{settings.worker.web_host}:{settings.worker.web_port}"


async def _request(session: aiohttp.ClientSession, url: str, due: float) -> Sample:
    status, served_by = 0, ""
    try:
        async with session.get(url) as response:
            await response.read()
            status, served_by = response.status, response.headers.get(SERVED_BY_HEADER, "")
    except (aiohttp.ClientError, TimeoutError):
        pass
    return Sample(due, time.perf_counter(), status, served_by)


async def open_loop(
    session: aiohttp.ClientSession, url_for: Callable[[int], str], rate: float, seconds: float
) -> list[Sample]:
    """Send request ``i`` to ``url_for(i)`` at ``start + i / rate`` for ``seconds``.

    Each request is started at its time whether or not earlier ones were answered; a
    late event loop starts the overdue ones together, and they are timed from when they
    were due.
    """
    start = time.perf_counter() + 0.005
    tasks: list[asyncio.Task[Sample]] = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_request(session, url_for(i), due)))
    return list(await asyncio.gather(*tasks))


def _interval(block: Sequence[Sample]) -> float:
    """The time between two requests of a block (its requests are due evenly)."""
    return (block[-1].due - block[0].due) / (len(block) - 1) if len(block) > 1 else 0.0


def summarize(blocks: Sequence[Sequence[Sample]]) -> dict[str, Any]:
    """Latency over every request (failures count with the time they took), rates, errors.

    The offered rate is per scheduled second (a block of n requests ``1 / rate`` apart
    is n / rate seconds of load); the achieved one counts the 200 answers over each
    block's span, from its first due time to its last answer or the end of its schedule,
    whichever is later (longer than scheduled when the server fell behind).
    """
    samples = [s for block in blocks for s in block]
    scheduled = sum(len(block) * _interval(block) for block in blocks if block)
    span = sum(
        max(*(s.done for s in block), block[-1].due + _interval(block)) - block[0].due
        for block in blocks
        if block
    )
    ok = [s for s in samples if s.status == 200]
    errors: dict[str, int] = {}
    for s in samples:
        if s.status != 200:
            errors[str(s.status or "no_answer")] = errors.get(str(s.status or "no_answer"), 0) + 1
    return {
        "latency_ms": latency_summary([s.latency_ms for s in samples]),
        "offered_per_s": round(len(samples) / scheduled, 1) if scheduled else None,
        "achieved_ok_per_s": round(len(ok) / span, 1) if span else None,
        "errors": dict(sorted(errors.items())),
    }


@dataclass
class Load:
    """The measured load: which URLs, how fast, how long, in how many blocks."""

    rate: float
    warmup_s: float
    duration_s: float
    blocks: int
    users: Sequence[str]
    seed: int

    def user_urls(self, base: str) -> Callable[[int], str]:
        """Request ``i`` asks for a user drawn at random (the same draw for every run)."""
        rng = np.random.default_rng([self.seed, 0x5E7])
        picks = rng.integers(0, len(self.users), size=int(self.rate * self.duration_s) + 1)
        users = self.users
        return lambda i: f"{base}/users/{users[int(picks[i % len(picks)])]}/recommendations"


def _shifted(url_for: Callable[[int], str], offset: int) -> Callable[[int], str]:
    return lambda i: url_for(offset + i)


Blocks = dict[str, list[list[Sample]]]


async def measure(base: str, load: Load) -> Blocks:
    """Warm up, then alternate ``/ping`` and recommendation blocks; the samples per block."""
    routes: dict[str, Callable[[int], str]] = {
        "ping": lambda _i: f"{base}/ping",
        "recommendations": load.user_urls(base),
    }
    block_s = load.duration_s / load.blocks
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    samples: Blocks = {name: [] for name in routes}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for url_for in routes.values():
            await open_loop(session, url_for, load.rate, load.warmup_s)
        for block in range(load.blocks):
            for name, url_for in routes.items():
                offset = block * int(load.rate * block_s)  # a new stretch of the user draw
                samples[name].append(
                    await open_loop(session, _shifted(url_for, offset), load.rate, block_s)
                )
    return samples


def one_worker_figures(samples: Blocks) -> dict[str, Any]:
    """Each route's figures, and recommendations against ping."""
    ping = summarize(samples["ping"])
    recs = summarize(samples["recommendations"])
    return {"recommendations": recs, "reference_ping": ping, **_ratio(recs, ping)}


def _ratio(recs: dict[str, Any], ping: dict[str, Any]) -> dict[str, Any]:
    a, b = recs["latency_ms"], ping["latency_ms"]
    ratios = {q: round(a[q] / b[q], 2) if a[q] and b[q] else None for q in ("p50", "p99")}
    return {"ratio_to_ping": ratios}


def two_worker_figures(samples: Blocks, here: str) -> dict[str, Any]:
    """As :func:`one_worker_figures`, with the requests the owner answered split out."""
    recs = [s for block in samples["recommendations"] for s in block]
    forwarded = [s for s in recs if s.served_by and s.served_by != here]
    local = [s for s in recs if not s.served_by or s.served_by == here]
    figures = one_worker_figures(samples)
    figures["forwarded_fraction"] = round(len(forwarded) / len(recs), 3) if recs else None
    figures["local"] = {"latency_ms": latency_summary([s.latency_ms for s in local])}
    figures["forwarded"] = {"latency_ms": latency_summary([s.latency_ms for s in forwarded])}
    return figures


async def wait_until_served(base: str, users: Sequence[str], timeout_s: float = 180.0) -> None:
    """Poll until every user's recommendations answer 200 at ``base``.

    Raises:
        RuntimeError: some did not within ``timeout_s``.

    """
    pending = list(users)
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while pending and time.monotonic() < deadline:
            answers = await asyncio.gather(
                *(_request(session, f"{base}/users/{u}/recommendations", 0.0) for u in pending)
            )
            pending = [u for u, a in zip(pending, answers, strict=True) if a.status != 200]
            if pending:
                await asyncio.sleep(1.0)
    if pending:
        raise RuntimeError(f"{len(pending)} users never served at {base}, e.g. {pending[:3]}")


async def wait_until_healthy(base: str, timeout_s: float = 180.0) -> None:
    """Poll ``/healthz`` until it answers 200: ready, not recovering, caught up.

    Raises:
        RuntimeError: it did not within ``timeout_s``.

    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            if (await _request(session, f"{base}/healthz", 0.0)).status == 200:
                return
            await asyncio.sleep(1.0)
    raise RuntimeError(f"{base} not healthy within {timeout_s:.0f} s")


async def served_by(base: str) -> str:
    """The URL a worker names itself by (its ``X-Recloop-Served-By``)."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/ping") as response:
        return response.headers[SERVED_BY_HEADER]


def _alive(worker: WorkerProcess) -> None:
    if not worker.running:
        raise RuntimeError("a worker died:\n" + worker.log_tail())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; the figures as a dict."""
    env = environment()
    name = run_id("serve", args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="recloop-bench-"))
    settings = isolated_settings(name, workdir, args.partitions)
    world = SyntheticWorld.generate(args.seed, n_items=args.items, n_users=args.users)
    events = synthetic_log(world, args.users * args.events_per_user, args.seed)
    users = [u.user_id for u in world.users]
    load = Load(args.rate, args.warmup, args.duration, args.blocks, users, args.seed)
    first = web_settings(settings, workdir / "state-0")
    workers: list[WorkerProcess] = []
    result: dict[str, Any] = {}
    try:
        producer = send_catalog(settings, world.items)
        workers.append(start_worker(first, workdir, "worker-0"))
        wait_for_catalog(settings, len(world.items), workers[0])
        produce_all(producer, settings.kafka.topic("events"), encode_events(events))
        base = base_url(first)
        asyncio.run(wait_until_served(base, users))
        log(f"{name}: {len(users)} users served at {base}; one worker, {args.rate:.0f}/s ...")
        result["one_worker"] = one_worker_figures(asyncio.run(measure(base, load)))
        _alive(workers[0])
        log(f"  {json.dumps(result['one_worker'])}")
        if args.two_workers:
            second = web_settings(settings, workdir / "state-1")
            workers.append(start_worker(second, workdir, "worker-1"))
            wait_for_group(bootstrap_of(settings), settings.worker.app_id, 2)
            for url in (base, base_url(second)):
                asyncio.run(wait_until_healthy(url))
            asyncio.run(wait_until_served(base, users))
            time.sleep(SETTLE_S)
            log("  two workers, load on worker-0 ...")
            samples = asyncio.run(measure(base, load))
            here = asyncio.run(served_by(base))
            result["two_workers"] = two_worker_figures(samples, here)
            for worker in workers:
                _alive(worker)
            log(f"  {json.dumps(result['two_workers'])}")
    finally:
        for n, worker in enumerate(workers):
            code = worker.stop()
            if code not in (0, None):
                log(f"worker-{n} exited with {code}:\n{worker.log_tail()}")
        if not args.keep:
            clean_up(bootstrap_of(settings), name, [name], workdir)
    one = result["one_worker"]["recommendations"]
    p99 = one["latency_ms"]["p99"]
    met = p99 is not None and p99 <= TARGET_P99_MS and not one["errors"]
    return {
        "benchmark": "serving",
        "offered_requests_per_s": args.rate,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "blocks": args.blocks,
        "users": args.users,
        "items": args.items,
        "partitions": args.partitions,
        "mix": mix(events),
        **result,
        "target_p99_ms": TARGET_P99_MS,
        "target_at_requests_per_s": TARGET_RATE,
        "p99_met": met if args.rate >= TARGET_RATE else None,
        **env,
        "load_average_end": load_average(),
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="requests/s offered")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds per route, unmeasured")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per route")
    parser.add_argument("--blocks", type=int, default=4, help="turns each route takes")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--two-workers", action="store_true", help="also measure forwarding")
    parser.add_argument("--quick", action="store_true", help="2 s warm-up, 6 s measured")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the state dir")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration, args.blocks = 2.0, 6.0, 2
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
