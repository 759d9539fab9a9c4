"""Benchmark freshness: from an event being produced to its snapshot being consumed.

For each offered rate (``--rates``, events per second), on a fresh topic prefix:

* reference: an echo through the broker. A paced producer (this thread) sends the
  synthetic log to a plain topic; a consumer (another thread) reads it back; the latency
  is produce call to record received, matched by ``event_id``.
* recloop: the same log, at the same rate, to the events topic of one worker ranking a
  synthetic catalog; a consumer reads the snapshots topic. A snapshot of version *v*
  answers every event of its user up to the user's *v*-th (a burst of one user's events
  processed in one batch gets one snapshot, the last one's: it answers them all).

Each phase runs ``--warmup`` seconds (not measured) then ``--duration`` seconds
(measured), then waits up to ``--drain`` seconds for the answers still missing. Each rate
gets its own topics and a fresh worker, so one rate's backlog never spills into the next.
Prints ONE JSON line; progress goes to stderr.

    .venv/bin/python scripts/bench_freshness.py [--rates 500,2000] [--duration 25]
        [--warmup 5] [--drain 15] [--items 2000] [--users 500] [--quick]

Target (issue 7): p99 <= 50 ms at 500 events/s. When the worker falls behind, the
latency grows without bound: the events still unanswered after the drain count with the
time they had waited (so the percentiles are lower bounds, flagged), and the backlog
when the producer stopped is reported.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _bench import (
    bootstrap_of,
    clean_up,
    create_topic,
    environment,
    isolated_settings,
    latency_summary,
    load_average,
    log,
    mix,
    new_producer,
    output_rate,
    run_id,
    send_catalog,
    start_worker,
    synthetic_log,
    wait_for_catalog,
)
from confluent_kafka import Consumer, Producer, TopicPartition

from operators.synthetic import SyntheticWorld
from pipeline.clients import end_offset, wait_for_records
from pipeline.settings import Settings
from schemas.events import Event, event_to_json

TARGET_P99_MS = 50.0
TARGET_RATE = 500
WARM_EVENTS = 20

#: (event id, key, value)
Payload = tuple[str, bytes, bytes]


@dataclass(frozen=True)
class Pace:
    """How one paced phase runs."""

    rate: float
    warmup_s: float
    duration_s: float
    drain_s: float

    def events(self) -> int:
        """How many events a phase needs at most."""
        return int(self.rate * (self.warmup_s + self.duration_s) * 1.02) + 100


def tail_consumer(bootstrap: str, topic: str, partitions: int, group: str) -> Consumer:
    """A consumer of ``topic`` from its current end, fetching as soon as data is there."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})  # fmt: skip
    deadline = time.monotonic() + 30
    ends = [end_offset(consumer, topic, p, deadline) for p in range(partitions)]
    if None in ends:
        raise RuntimeError(f"no end offsets for {topic}")
    consumer.assign([TopicPartition(topic, p, e) for p, e in enumerate(ends) if e is not None])
    return consumer


class AnswerReader:
    """A thread that reads answers and notes when the first answer to each sent id came."""

    def __init__(self, consumer: Consumer, answers: Callable[[bytes], Sequence[str]]) -> None:
        self.consumer, self.answers = consumer, answers
        self.sent: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="answers", daemon=True)

    def __enter__(self) -> AnswerReader:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _read(self) -> None:
        while not self._stop.is_set():
            # poll, not consume(n, timeout): consume waits for n records or the timeout
            message = self.consumer.poll(0.05)
            now = time.perf_counter()
            value = None if message is None or message.error() else message.value()
            for event_id in self.answers(value) if value is not None else ():
                if event_id in self.sent and event_id not in self.answered:
                    self.answered[event_id] = now

    def wait(self, ids: Sequence[str], until: float) -> None:
        """Wait until every one of ``ids`` is answered, or ``until`` (perf_counter) passes."""
        pending = [e for e in ids if e not in self.answered]
        while pending and time.perf_counter() < until:
            time.sleep(0.05)
            pending = [e for e in pending if e not in self.answered]


def paced_phase(
    producer: Producer,
    topic: str,
    payloads: Sequence[Payload],
    consumer: Consumer,
    answers: Callable[[bytes], Sequence[str]],
    pace: Pace,
) -> dict[str, Any]:
    """Send ``payloads`` to ``topic`` at ``pace.rate``; time each until its answer is read.

    Only events sent after the warm-up count. ``answers`` gives the ids of the events an
    answer answers; they are matched against the ids of the events sent.
    """
    with AnswerReader(consumer, answers) as reader:
        sent = reader.sent
        start = time.perf_counter()
        measure_from, end = start + pace.warmup_s, start + pace.warmup_s + pace.duration_s
        measured: list[str] = []
        n = 0
        while (now := time.perf_counter()) < end:
            due = start + n / pace.rate
            if due > now:
                time.sleep(due - now)
                continue
            if n >= len(payloads):
                raise RuntimeError(f"the log ran out after {n} events")
            event_id, key, value = payloads[n]
            sent[event_id] = time.perf_counter()
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
            if sent[event_id] >= measure_from:
                measured.append(event_id)
            n += 1
        stopped = time.perf_counter()
        backlog = n - len(reader.answered)
        producer.flush(30)
        reader.wait(measured, stopped + pace.drain_s)
    waited = time.perf_counter()
    answered = reader.answered
    latencies = [1000 * (answered.get(e, waited) - sent[e]) for e in measured]
    unanswered = sum(1 for e in measured if e not in answered)
    window = stopped - measure_from
    in_window = sum(1 for t in answered.values() if measure_from <= t <= stopped)
    return {
        "sent_per_s": round(len(measured) / window, 1),
        "answered_per_s": round(in_window / window, 1),
        "latency_ms": latency_summary(latencies),
        "unanswered_after_drain": unanswered,
        "latency_is_lower_bound": unanswered > 0,
        "backlog_at_end": backlog,
    }


def _event_id(value: bytes) -> Sequence[str]:
    """The echo's answer: the event itself."""
    try:
        found = json.loads(value).get("event_id")
    except (ValueError, AttributeError):
        return ()
    return (found,) if isinstance(found, str) else ()


class Versions:
    """What a snapshot answers: its user's events up to its version, not answered before."""

    def __init__(self, payloads: Sequence[Payload], answered: Sequence[Payload] = ()) -> None:
        #: each user's event ids in the order they are sent (a version counts them),
        #: ``answered`` (sent and answered before) first
        self.by_user: dict[str, list[str]] = {}
        for event_id, key, _ in [*answered, *payloads]:
            self.by_user.setdefault(key.decode(), []).append(event_id)
        self.done: dict[str, int] = {}
        for _, key, _ in answered:
            self.done[key.decode()] = self.done.get(key.decode(), 0) + 1

    def __call__(self, value: bytes) -> Sequence[str]:
        """The event ids a snapshot record answers."""
        try:
            snapshot = json.loads(value)
            user, version = snapshot["user_id"], int(snapshot["version"])
        except (ValueError, KeyError, TypeError):
            return ()
        done = self.done.get(user, 0)
        if version <= done:
            return ()
        self.done[user] = version
        return self.by_user.get(user, [])[done:version]


def echo_phase(settings: Settings, payloads: Sequence[Payload], pace: Pace) -> dict[str, Any]:
    """The reference: produce to a plain topic, consume it back, at the same pace."""
    bootstrap, k = bootstrap_of(settings), settings.kafka
    topic = k.topic("echo")
    create_topic(bootstrap, topic, k.partitions)
    wait_for_records(bootstrap, topic, k.partitions, 0)  # leaders elected
    consumer = tail_consumer(bootstrap, topic, k.partitions, f"{k.topic_prefix}echo")
    try:
        return paced_phase(new_producer(settings), topic, payloads, consumer, _event_id, pace)
    finally:
        consumer.close()


def recloop_phase(
    settings: Settings,
    world: SyntheticWorld,
    warm: Sequence[Payload],
    payloads: Sequence[Payload],
    pace: Pace,
    workdir: Path,
) -> dict[str, Any]:
    """A fresh worker with the catalog, warmed up, then the log at the given pace."""
    bootstrap, k = bootstrap_of(settings), settings.kafka
    producer = send_catalog(settings, world.items)
    worker = start_worker(settings, workdir)
    try:
        wait_for_catalog(settings, len(world.items), worker)
        # the first events pay for the index build and the caches: not part of the phase
        for _, key, value in warm:
            producer.produce(k.topic("events"), key=key, value=value)
        producer.flush(30)
        try:
            output_rate(settings, "snapshots", len(warm), lambda: worker.running, 120)
        except RuntimeError as exc:
            raise RuntimeError(f"no snapshots for the warm-up events ({exc}):\n"
                               + worker.log_tail()) from exc  # fmt: skip
        consumer = tail_consumer(bootstrap, k.topic("snapshots"), k.partitions, k.topic_prefix)
        answers = Versions(payloads, answered=warm)
        try:
            result = paced_phase(producer, k.topic("events"), payloads, consumer, answers, pace)
        finally:
            consumer.close()
        if not worker.running:
            raise RuntimeError("the worker died:\n" + worker.log_tail())
        return result
    finally:
        worker.stop()


def _payloads(events: Sequence[Event]) -> list[Payload]:
    return [(e.event_id, e.user_id.encode(), event_to_json(e)) for e in events]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; the figures as a dict."""
    env = environment()
    name = run_id("fresh", args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="recloop-bench-"))
    rates = [float(r) for r in args.rates.split(",")]
    paces = [Pace(r, args.warmup, args.duration, args.drain) for r in rates]
    world = SyntheticWorld.generate(args.seed, n_items=args.items, n_users=args.users)
    events = synthetic_log(world, WARM_EVENTS + max(p.events() for p in paces), args.seed)
    warm, payloads = _payloads(events[:WARM_EVENTS]), _payloads(events[WARM_EVENTS:])
    log(f"{name}: rates {rates}, {len(payloads)} events ready")
    results: list[dict[str, Any]] = []
    groups: list[str] = []
    try:
        for pace in paces:
            rate_name = f"{name}-r{int(pace.rate)}"
            settings = isolated_settings(rate_name, workdir / rate_name, args.partitions)
            groups.append(rate_name)
            log(f"{pace.rate:.0f} events/s: echo reference ...")
            echo = echo_phase(settings, payloads, pace)
            log(f"  echo: {json.dumps(echo['latency_ms'])}; recloop ...")
            recloop = recloop_phase(settings, world, warm, payloads, pace, workdir / rate_name)
            log(f"  recloop: {json.dumps(recloop['latency_ms'])}, "
                f"backlog {recloop['backlog_at_end']}")  # fmt: skip
            results.append({"offered_events_per_s": pace.rate, "recloop": recloop,
                            "reference_echo": echo})  # fmt: skip
    finally:
        if not args.keep:  # every rate's topics start with the run's name
            clean_up(bootstrap_of(isolated_settings(name, workdir, 1)), name, groups, workdir)
    at_target = [r["recloop"] for r in results if r["offered_events_per_s"] == TARGET_RATE]
    p99 = at_target[0]["latency_ms"]["p99"] if at_target else None
    met = None
    if at_target and p99 is not None:
        met = p99 <= TARGET_P99_MS and not at_target[0]["latency_is_lower_bound"]
    return {
        "benchmark": "freshness",
        "items": args.items,
        "users": args.users,
        "partitions": args.partitions,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "drain_s": args.drain,
        "mix": mix(events),
        "rates": results,
        "target_p99_ms": TARGET_P99_MS,
        "target_at_events_per_s": TARGET_RATE,
        "p99_met": met,
        **env,
        "load_average_end": load_average(),
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,2000", help="offered events/s, comma-separated")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds, not measured")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds measured")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for answers")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 s warm-up, 8 s measured")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the state dir")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration, args.drain = 2.0, 8.0, 5.0
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
