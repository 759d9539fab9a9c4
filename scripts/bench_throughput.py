"""Benchmark sustained throughput: events per second through ONE worker doing the full work.

A synthetic catalog and users (``operators/synthetic.py``) make a log of ``--events``
events (clicks, dwells, skips, impressions, some not_relevant). On a fresh topic prefix:

1. the catalog goes to the items topic and a worker runs until every item is on the
   item-state topic, then stops (so the measured run ranks a full catalog);
2. the log is produced to the events topic while no worker runs;
3. references on that same topic: a plain confluent-kafka consumer, then a do-nothing
   Faust agent (its own app, built by :func:`create_noop_app`, consuming and committing);
4. the worker starts again (same app id and state) and does the full work on every event
   (validate, state update, learning, retrieval, ranking, snapshot publish).

recloop's rate runs from the first to the last snapshot on the snapshots topic, by the
Kafka record timestamps (CreateTime, set by the worker's producer as it sends); the
references' from the first to the last event they receive, by their own clock. Prints ONE
JSON line; progress goes to stderr.

    .venv/bin/python scripts/bench_throughput.py [--items 2000] [--users 500]
        [--events 20000] [--partitions 4] [--seed 0] [--quick] [--keep]

Targets (issue 7): >= 5,000 events/s per worker, and >= 0.5x the do-nothing Faust agent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faust
from _bench import (
    Rate,
    bootstrap_of,
    clean_up,
    encode_events,
    environment,
    isolated_settings,
    load_average,
    log,
    mix,
    new_producer,
    output_rate,
    produce_all,
    run_id,
    send_catalog,
    start_worker,
    synthetic_log,
    wait_for_catalog,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from operators.synthetic import SyntheticWorld
from pipeline.settings import Settings

TARGET_EVENTS_PER_S = 5000.0
TARGET_RATIO = 0.5
NOOP_FLAG = "--noop-agent"
RESULT_MARK = '{"count":'


# -- reference 1: a plain confluent-kafka consumer ----------------------------------------
def plain_consumer_rate(
    bootstrap: str, topic: str, group: str, expected: int, timeout_s: float = 120.0
) -> Rate:
    """Read ``expected`` records of ``topic`` with a plain consumer, then commit.

    Timed from ``assign()`` (no group join to wait for) to the commit after the last
    record, so the first fetch counts against it: a conservative reference.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})  # fmt: skip
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    count = 0
    deadline = time.monotonic() + timeout_s
    try:
        first = time.time()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        while count < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None and message.value() is not None:
                    count += 1
        consumer.commit(asynchronous=False)
        last = time.time()
    finally:
        consumer.close()
    if count < expected:
        raise RuntimeError(f"plain consumer read {count} of {expected} in {timeout_s:.0f} s")
    return Rate(count, first, last, first_batch=0, clock="the consumer's wall clock")


# -- reference 2: a do-nothing Faust agent, in its own process ----------------------------
def create_noop_app(
    app_id: str, bootstrap: str, topic: str, partitions: int, commit_interval_s: float,
    expected: int,
) -> faust.App:  # fmt: skip
    """A Faust app whose one agent reads ``topic`` raw, commits, and does nothing else.

    When it has seen ``expected`` events it prints one JSON line (count and the wall-clock
    times of the first and the last) on stdout.
    """
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=partitions,
        broker_commit_interval=commit_interval_s,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw", partitions=partitions)

    async def noop(stream: Any) -> None:
        count, first = 0, 0.0
        async for _event in stream.events():
            count += 1
            if count == 1:
                first = time.time()
            if count == expected:
                result = {"count": count, "first": first, "last": time.time()}
                print(json.dumps(result, separators=(",", ":")), flush=True)

    app.agent(source, name="noop")(noop)
    return app


def _noop_child(spec: str) -> None:
    """Run the do-nothing app in this process until SIGTERM (the parent's reference)."""
    args = json.loads(spec)
    app = create_noop_app(**args)
    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def noop_agent_rate(
    settings: Settings, app_id: str, expected: int, workdir: Path, timeout_s: float = 180.0
) -> Rate:
    """Run the do-nothing Faust agent over the events topic in a child process."""
    spec = {
        "app_id": app_id,
        "bootstrap": bootstrap_of(settings),
        "topic": settings.kafka.topic("events"),
        "partitions": settings.kafka.partitions,
        "commit_interval_s": settings.worker.commit_interval_s,
        "expected": expected,
    }
    out, err = workdir / "noop.out", workdir / "noop.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), NOOP_FLAG, json.dumps(spec)],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=workdir,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and child.poll() is None:
            text = out.read_text(errors="replace")  # Faust writes terminal codes there too
            start = text.find(RESULT_MARK)
            end = text.find("}", start) if start >= 0 else -1
            if end > 0:  # the whole line is there
                result = json.loads(text[start : end + 1])
                return Rate(result["count"], result["first"], result["last"],
                            clock="the agent's wall clock")  # fmt: skip
            time.sleep(0.2)
        tail = "\n".join(err.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the do-nothing agent did not finish:\n{tail}")
    finally:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# -- recloop -------------------------------------------------------------------------------
def prepare_catalog(settings: Settings, world: SyntheticWorld, workdir: Path) -> None:
    """Create the topics, send the catalog, run a worker until it is all on item-state."""
    send_catalog(settings, world.items)
    worker = start_worker(settings, workdir, "catalog-worker")
    try:
        wait_for_catalog(settings, len(world.items), worker)
    finally:
        code = worker.stop()
    if code != 0:
        raise RuntimeError(f"the catalog worker exited with {code}:\n{worker.log_tail()}")


def recloop_rate(settings: Settings, expected: int, workdir: Path, name: str = "worker") -> Rate:
    """Start a worker over the events already on the topic; time its snapshots."""
    worker = start_worker(settings, workdir, name)
    try:
        return output_rate(settings, "snapshots", expected, lambda: worker.running)
    finally:
        code = worker.stop()
        if code not in (0, None):
            log(f"{name} exited with {code}:\n{worker.log_tail()}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; the figures as a dict."""
    env = environment()
    name = run_id("tput", args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="recloop-bench-"))
    settings = isolated_settings(name, workdir, args.partitions)
    bootstrap = bootstrap_of(settings)
    world = SyntheticWorld.generate(args.seed, n_items=args.items, n_users=args.users)
    events = synthetic_log(world, args.events, args.seed)
    log(f"{name}: {len(events)} events, {args.items} items, {args.users} users")
    try:
        started = time.monotonic()
        prepare_catalog(settings, world, workdir)
        log(f"catalog on item-state after {time.monotonic() - started:.0f} s")
        produce_all(new_producer(settings), settings.kafka.topic("events"), encode_events(events))
        log("events produced; plain consumer ...")
        topic = settings.kafka.topic("events")
        plain = plain_consumer_rate(bootstrap, topic, f"{name}-plain", len(events))
        log(f"  plain consumer: {plain.per_s:.0f} events/s; do-nothing Faust agent ...")
        noop = noop_agent_rate(settings, f"{name}-noop", len(events), workdir)
        log(f"  do-nothing Faust agent: {noop.per_s:.0f} events/s; recloop worker ...")
        recloop = recloop_rate(settings, len(events), workdir)
        log(f"  recloop: {recloop.per_s:.0f} events/s")
    finally:
        if not args.keep:
            clean_up(bootstrap, name, [name, f"{name}-plain", f"{name}-noop"], workdir)
    ratio = recloop.per_s / noop.per_s
    return {
        "benchmark": "throughput",
        "events": len(events),
        "items": args.items,
        "users": args.users,
        "partitions": args.partitions,
        "mix": mix(events),
        "recloop_worker": recloop.as_dict(),
        "reference_noop_faust_agent": noop.as_dict(),
        "reference_plain_consumer": plain.as_dict(),
        "ratio_recloop_to_noop_faust": round(ratio, 4),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "events_per_s_met": recloop.per_s >= TARGET_EVENTS_PER_S,
        "target_ratio_to_noop_faust": TARGET_RATIO,
        "ratio_met": ratio >= TARGET_RATIO,
        **env,
        "load_average_end": load_average(),
    }


def parser() -> argparse.ArgumentParser:
    """The command line (shared with ``bench_scale.py``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3,000 events instead of --events")
    p.add_argument("--keep", action="store_true", help="keep the topics and the state dir")
    return p


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    if len(sys.argv) == 3 and sys.argv[1] == NOOP_FLAG:
        _noop_child(sys.argv[2])
        return
    args = parser().parse_args()
    if args.quick:
        args.events = 3000
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
