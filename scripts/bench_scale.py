"""Benchmark scale: on-disk state per user and per item, and throughput with 1 and 2 workers.

For each worker count (``--workers``, default 1 and 2) on a fresh topic prefix with
``--partitions`` partitions (default 4): the catalog goes to the items topic, the workers
start (one app id, a state directory each) and the benchmark waits until their group is
stable and every item is on item-state; then the synthetic log of ``--events`` events is
produced in one burst and the rate runs from the first to the last snapshot, by the
Kafka record timestamps of the snapshots topic, as in ``bench_throughput.py``. (The
workers run before the burst, unlike bench_throughput's one worker started on a
pre-produced topic, so a second worker joining is not timed as a rebalance.)

After the single-worker run the worker is stopped cleanly and its state is measured:

* local: the RocksDB directories of the ``users``, ``snapshots`` and ``items`` tables
  (all files, and the data files alone: SST and write-ahead log), the item index file
  and the ranking model checkpoint;
* logical: the latest value per key of each table's changelog topic (what a compacted
  changelog converges to);
* broker: the changelog topics' segment files in the embedded broker's data directory
  (not compacted yet: every update is there).

Per user: the ``users`` and ``snapshots`` tables; per item: the ``items`` table and the
index. The reference beside them: the bytes of the events each user sent (key + value).
Prints ONE JSON line; progress goes to stderr.

    .venv/bin/python scripts/bench_scale.py [--items 2000] [--users 500] [--events 20000]
        [--partitions 4] [--workers 1,2] [--quick] [--keep]

Issue 7 sets no number for scale; ideal scaling on this 2-core machine is 2.0x.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import (
    Rate,
    bootstrap_of,
    broker_data_dir,
    clean_up,
    dir_bytes,
    encode_events,
    environment,
    isolated_settings,
    load_average,
    log,
    mix,
    output_rate,
    produce_all,
    run_id,
    send_catalog,
    start_worker,
    synthetic_log,
    wait_for_catalog,
    wait_for_group,
    with_state_dir,
)
from bench_throughput import parser as throughput_parser
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from operators.synthetic import SyntheticWorld
from pipeline.clients import end_offset
from pipeline.settings import Settings
from pipeline.worker_process import WorkerProcess

PER_USER_TABLES = ("users", "snapshots")
PER_ITEM_TABLES = ("items",)
SETTLE_S = 5.0
DATA_FILE = re.compile(r"^(\d+\.log|.*\.sst)$")


def workers_rate(
    settings: Settings, world: SyntheticWorld, records: list[tuple[bytes, bytes]],
    workers: int, workdir: Path,
) -> tuple[Rate, list[Path]]:  # fmt: skip
    """Run ``workers`` workers, send the log in one burst, time the snapshots; stop them."""
    bootstrap = bootstrap_of(settings)
    producer = send_catalog(settings, world.items)
    states = [workdir / f"state-{n}" for n in range(workers)]
    procs: list[WorkerProcess] = []
    try:
        for n, state in enumerate(states):
            procs.append(start_worker(with_state_dir(settings, state), workdir, f"worker-{n}"))
            if n == 0:  # the catalog first, so no rebalance interrupts it
                wait_for_catalog(settings, len(world.items), procs[0])
        wait_for_group(bootstrap, settings.worker.app_id, workers)
        time.sleep(SETTLE_S)  # the table recovery after the last rebalance
        log(f"  {workers} worker(s) ready; producing {len(records)} events")
        started = time.monotonic()
        produce_all(producer, settings.kafka.topic("events"), records)
        log(f"  produced in {time.monotonic() - started:.1f} s")
        return output_rate(
            settings, "snapshots", len(records), lambda: all(p.running for p in procs)
        ), states
    finally:
        for n, proc in enumerate(procs):
            code = proc.stop()
            if code not in (0, None):
                log(f"worker-{n} exited with {code}:\n{proc.log_tail()}")


def local_state(state_dir: Path) -> dict[str, dict[str, int]]:
    """Bytes per table (all files, and SST + WAL alone), the index and the model."""
    tables: dict[str, dict[str, int]] = {}
    for db in sorted((state_dir / "v1" / "tables").glob("*.db")):
        table = db.name.rsplit("-", 1)[0]
        entry = tables.setdefault(table, {"all_files": 0, "data_files": 0, "partitions": 0})
        entry["all_files"] += dir_bytes(db)
        entry["data_files"] += sum(f.stat().st_size for f in db.iterdir()
                                   if f.is_file() and DATA_FILE.match(f.name))  # fmt: skip
        entry["partitions"] += 1
    for name, path in (("item_index", "item-index.bin"), ("ranking_model", "ranking-model.bin")):
        size = (state_dir / path).stat().st_size if (state_dir / path).exists() else 0
        tables[name] = {"all_files": size, "data_files": size, "partitions": 1}
    return tables


def changelog_logical(settings: Settings, table: str) -> dict[str, int]:
    """Keys and latest key + value bytes of one table's changelog topic."""
    k = settings.kafka
    topic = f"{settings.worker.app_id}-{table}-changelog"
    consumer = Consumer({"bootstrap.servers": bootstrap_of(settings),
                         "group.id": f"{settings.worker.app_id}-sizes",
                         "enable.auto.commit": False})  # fmt: skip
    deadline = time.monotonic() + 30
    ends = [end_offset(consumer, topic, p, deadline) or 0 for p in range(k.partitions)]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(k.partitions)])
    latest: dict[bytes, int] = {}
    records, read_until = 0, time.monotonic() + 120
    try:
        while records < sum(ends) and time.monotonic() < read_until:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is not None:
                    continue
                records += 1
                key, value = message.key() or b"", message.value()
                if value is None:
                    latest.pop(key, None)
                else:
                    latest[key] = len(key) + len(value)
    finally:
        consumer.close()
    return {"records": records, "keys": len(latest), "latest_bytes": sum(latest.values())}


def broker_changelog_bytes(settings: Settings, table: str) -> int | None:
    """Segment bytes of a changelog topic in the embedded broker's data dir (else None)."""
    data_dir = broker_data_dir(settings)
    if data_dir is None:
        return None
    topic = f"{settings.worker.app_id}-{table}-changelog"
    return sum(
        f.stat().st_size
        for p in range(settings.kafka.partitions)
        for f in (data_dir / f"{topic}-{p}").glob("*.log")
    )


def state_figures(
    settings: Settings, state_dir: Path, users: int, items: int, input_bytes: int
) -> dict[str, Any]:
    """Bytes per user and per item: local, logical (changelog) and on the broker."""
    local = local_state(state_dir)
    logical = {t: changelog_logical(settings, t) for t in PER_USER_TABLES + PER_ITEM_TABLES}
    broker = {t: broker_changelog_bytes(settings, t) for t in PER_USER_TABLES + PER_ITEM_TABLES}

    def per(tables: tuple[str, ...], n: int, extra: int = 0) -> dict[str, float | None]:
        on_broker = [broker[t] for t in tables]
        return {
            "local_all_files": round((sum(local[t]["all_files"] for t in tables) + extra) / n),
            "local_data_files": round((sum(local[t]["data_files"] for t in tables) + extra) / n),
            "logical_latest": round(sum(logical[t]["latest_bytes"] for t in tables) / n),
            "changelog_on_broker": None
            if None in on_broker
            else round(sum(b or 0 for b in on_broker) / n),
        }

    return {
        "bytes_per_user": per(PER_USER_TABLES, users),
        "bytes_per_item": per(PER_ITEM_TABLES, items, extra=local["item_index"]["all_files"]),
        "reference_input_bytes_per_user": round(input_bytes / users),
        "local_total_bytes": dir_bytes(state_dir),
        "local": local,
        "changelogs": {t: {**logical[t], "broker_segment_bytes": broker[t]} for t in logical},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; the figures as a dict."""
    env = environment()
    base = run_id("scale", args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="recloop-bench-"))
    world = SyntheticWorld.generate(args.seed, n_items=args.items, n_users=args.users)
    events = synthetic_log(world, args.events, args.seed)
    records = encode_events(events)
    log(f"{base}: {len(events)} events, {args.items} items, {args.users} users")
    rates: dict[int, Rate] = {}
    state: dict[str, Any] | None = None
    groups: list[str] = []
    try:
        for workers in sorted({int(w) for w in args.workers.split(",")}):
            name = f"{base}-w{workers}"
            settings = isolated_settings(name, workdir / name, args.partitions)
            groups.append(name)
            log(f"{workers} worker(s) on {args.partitions} partitions ...")
            rate, states = workers_rate(settings, world, records, workers, workdir / name)
            rates[workers] = rate
            log(f"  {rate.per_s:.0f} events/s")
            if workers == 1:
                input_bytes = sum(len(k) + len(v) for k, v in records)
                state = state_figures(settings, states[0], args.users, args.items, input_bytes)
    finally:
        if not args.keep:  # every worker count's topics start with the run's name
            clean_up(bootstrap_of(isolated_settings(base, workdir, 1)), base, groups, workdir)
    one, two = rates.get(1), rates.get(2)
    return {
        "benchmark": "scale",
        "events": len(events),
        "items": args.items,
        "users": args.users,
        "events_per_user": round(len(events) / args.users, 1),
        "partitions": args.partitions,
        "mix": mix(events),
        "throughput": {f"workers_{w}": r.as_dict() for w, r in rates.items()},
        "speedup_2_vs_1": round(two.per_s / one.per_s, 3) if one and two else None,
        "target": "none set in issue 7; ideal speedup on 2 cores is 2.0",
        "state": state,
        **env,
        "load_average_end": load_average(),
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    parser = throughput_parser()
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    args = parser.parse_args()
    if args.quick:
        args.events = 3000
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
