"""The main job: a closed loop of simulated users and a real worker, through Kafka.

A worker runs in a child process on the (embedded) broker; the catalog goes to the items
topic; then each simulated user (:mod:`operators.simulator`) acts on the newest snapshot
they received (an impression, clicks with dwell and ratings, skips, "not relevant",
answers to prompts), each event goes to the events topic, and the snapshot that answers
the user's last event is their next list. Every user runs their own loop; the traffic is
paced (a cap on events per second and on events awaiting their snapshot), so the worker
is kept busy but not flooded. At the drift round some users' tastes change.

At the end: a table on the terminal, and ``report.json`` plus ``report.html`` (inline
SVG plots) in the run's directory: CTR per round against baselines computed from the
users' hidden tastes, the drift and the recovery, de-escalation at work, and the
event -> snapshot latency (produce to consume of the snapshot naming that event).

Every run uses its own topic prefix, consumer group and state directory, so runs never
see each other.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)

from operators.files import write_atomic
from operators.simulator import Scoreboard, SessionClock, Simulation, percentiles
from pipeline.clients import poll_ready, producer_config, wait_for_records
from pipeline.settings import Settings
from pipeline.topics import create_topics, delete_matching, owned_by
from pipeline.worker_process import WorkerProcess
from schemas.catalog import item_to_json
from schemas.events import Context, Event, Preference, event_to_json
from schemas.snapshot import Snapshot, parse_snapshot


@dataclass(frozen=True)
class DemoOptions:
    """How big the demo is. The defaults finish in under three minutes on two cores."""

    users: int = 32
    rounds: int = 25
    items: int = 400
    seed: int = 7
    #: the drift happens after this share of the rounds (``None``: no drift)
    drift_at: float | None = 0.6
    #: where the report and the worker's state go (default ``var/demo/<run>``)
    out_dir: Path | None = None
    #: live progress on stderr
    progress: bool = True
    #: at most this many events per second, all users together (``None``: no cap)
    rate: float | None = 60.0
    #: at most this many events waiting for their snapshot at any time: the load adapts
    #: to what the worker can answer, so the latency is the pipeline's, not a queue the
    #: demo built up (``None``: no limit, a saturation test)
    in_flight: int | None = 8
    #: time budget of the whole run: the users stop early enough for the run to end
    #: within it, and the report covers the rounds every user finished (``None``: none)
    duration_s: float | None = 160.0
    #: give up when no snapshot arrives for this long
    stall_timeout_s: float = 60.0
    #: leave the run's topics on the broker (default: delete them at the end)
    keep_topics: bool = False

    @property
    def drift_round(self) -> int | None:
        """The first round played with the drifted tastes."""
        if self.drift_at is None:
            return None
        # rounded first: 50 x 0.58 is 28.999999999999996 in floating point
        return math.floor(round(self.rounds * self.drift_at, 9)) + 1

    def check(self) -> None:
        """Raise ``ValueError`` with a clear message when the sizes make no demo."""
        if self.users < 1:
            raise ValueError(f"--users must be at least 1, not {self.users}")
        if self.rounds < 2:
            raise ValueError(f"--rounds must be at least 2, not {self.rounds}")
        if self.items < 20:
            raise ValueError(f"--items must be at least 20, not {self.items}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"--rate must be positive, not {self.rate}")
        if self.duration_s is not None and self.duration_s <= STOP_RESERVE_S:
            raise ValueError(f"--duration must be over {STOP_RESERVE_S:g} s, not {self.duration_s}")
        if self.in_flight is not None and self.in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {self.in_flight}")
        if self.drift_at is not None and not 0 < self.drift_at < 1:
            raise ValueError(f"--drift-at must be between 0 and 1 (exclusive), not {self.drift_at}")
        drift = self.drift_round
        if drift is not None and not 2 <= drift <= self.rounds:
            raise ValueError(
                f"--drift-at {self.drift_at} puts the drift at round {drift}; with "
                f"{self.rounds} rounds it must fall between round 2 and round {self.rounds}"
            )


#: A CI-sized run (``--short``): about half a minute including the worker's start.
SHORT = DemoOptions(users=16, rounds=16, items=200, drift_at=0.5)
#: The categories the simulated catalog uses.
CATEGORIES = 8
#: Event time between two sessions of a user.
SESSION_GAP = timedelta(hours=1)
#: Seconds of the time budget kept for stopping the worker and writing the report.
STOP_RESERVE_S = 15.0
#: After the time budget, how long to wait for the snapshots of events already sent.
DRAIN_S = 5.0


def _connect(
    worker: WorkerProcess, settings: Settings, sim: Simulation
) -> tuple[Producer, Consumer]:
    """Publish the catalog and open the snapshot consumer; a failure stops the worker."""
    kafka, bootstrap = settings.kafka, settings.kafka.bootstrap_servers
    assert bootstrap is not None
    try:  # until the loop's own try owns the worker, a failure must not orphan it
        producer = Producer(producer_config(bootstrap))
        for item in sim.catalog.items:
            producer.produce(
                kafka.topic("items"), key=item.item_id.encode(), value=item_to_json(item)
            )
        producer.flush(30)
        return producer, _snapshot_consumer(settings)
    except BaseException:
        worker.stop()
        raise


def run_demo(settings: Settings, options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the closed-loop demo and write its report; returns the exit code.

    0: every user played every round, or the time budget stopped them (the report says
    ``complete: false`` and covers the rounds every user finished); 1: the run failed.

    Args:
        settings: resolved settings (``kafka.bootstrap_servers`` set); the demo uses its
            own topic prefix, app id and state directory on that broker.
        options: the size of the run.
        out: where the table goes (default stdout); progress goes to stderr.

    Raises:
        ValueError: the options make no demo.

    """
    options.check()
    out = out or sys.stdout
    bootstrap = settings.kafka.bootstrap_servers
    if bootstrap is None:
        raise ValueError("run_demo needs settings with kafka.bootstrap_servers set")
    started = time.monotonic()
    run = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
    base = options.out_dir or Path("var") / "demo" / run
    worker_settings = _run_settings(settings, f"recloop-demo-{run}", base / "state")
    kafka = worker_settings.kafka
    print(_header(options, bootstrap, kafka.topic_prefix, base), file=out, flush=True)
    # event time: one session per round an hour apart, the last one just behind the clock
    now = datetime.now(UTC).replace(microsecond=0)
    clock = SessionClock(now - SESSION_GAP * (options.rounds + 1), SESSION_GAP)
    sim = Simulation.generate(
        options.seed, options.users, options.items, clock, CATEGORIES, options.drift_round
    )
    create_topics(kafka, bootstrap)
    worker = WorkerProcess(worker_settings, base / "worker.yaml", base / "worker.log")
    worker.start()
    producer, consumer = _connect(worker, worker_settings, sim)
    loop = _Loop(sim, options, producer, consumer, kafka.topic("events"), clock)
    loop.alive = lambda: worker.running
    if options.duration_s is not None:
        loop.deadline = started + options.duration_s - STOP_RESERVE_S
    timing: dict[str, float] = {}
    try:
        if not worker.wait_for_log("events agent ready", timeout_s=90):
            print("the worker did not become ready:\n" + worker.log_tail(), file=out)
            return 1
        timing["worker_ready_s"] = time.monotonic() - started
        if not wait_for_records(
            bootstrap, kafka.topic("item-state"), kafka.partitions, len(sim.catalog.items)
        ) or not loop.warm_up(min(settings.ranking.k, options.items)):
            print("the catalog did not reach the worker:\n" + worker.log_tail(), file=out)
            return 1
        timing["catalog_ready_s"] = time.monotonic() - started
        complete = loop.run()
        timing["loop_s"] = loop.elapsed
    finally:
        consumer.close()
        producer.flush(10)
        worker.stop()
        if not options.keep_topics:
            _delete_topics(bootstrap, f"recloop-demo-{run}")
    timing["total_s"] = time.monotonic() - started
    document = _document(loop, options, run, kafka.topic_prefix, bootstrap, timing, complete)
    _write_reports(document, base)
    _print_end(document, base, out)
    code = _exit_code(loop, complete)
    if code:
        print("the run stopped early:\n" + worker.log_tail(), file=out)
    return code


def _exit_code(loop: _Loop, complete: bool) -> int:
    """1 when the run failed: events lost, or stopped early by anything but the budget."""
    return int(bool(loop.delivery_failures) or (not complete and not loop.out_of_time))


def _print_end(document: dict[str, Any], base: Path, out: TextIO) -> None:
    print(render_table(document), file=out)
    print(f"\nreport: {base / 'report.html'}\nfigures: {base / 'report.json'}", file=out)
    run = document["run"]
    if run["stopped_by_time_budget"]:
        print(
            f"the time budget ({run['options']['duration_s']} s) ran out after round "
            f"{run['rounds_done']}: the figures cover the rounds every user finished",
            file=out,
        )


def _header(options: DemoOptions, bootstrap: str, prefix: str, base: Path) -> str:
    drift = options.drift_round
    return (
        f"recloop demo: {options.users} users x {options.rounds} rounds, {options.items} items, "
        f"seed {options.seed}, "
        + (f"taste drift at round {drift}" if drift else "no drift")
        + f"\nbroker {bootstrap}; topics {prefix}*; output {base}"
    )


def _run_settings(settings: Settings, name: str, state_dir: Path) -> Settings:
    """The settings of one run: its own topic prefix, app id (group) and state directory."""
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": f"{name}."}),
            "worker": settings.worker.model_copy(update={"state_dir": state_dir, "app_id": name}),
        }
    )


def _snapshot_consumer(settings: Settings) -> Consumer:
    """A consumer of every partition of the run's snapshots topic, from the start."""
    kafka = settings.kafka
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"{settings.worker.app_id}-users",  # assigned, never joins: no commits
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    topic = kafka.topic("snapshots")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(kafka.partitions)])
    return consumer


def _delete_topics(bootstrap: str, base: str) -> None:
    """Delete the run's topics (``<base>.*``, and Faust's ``<base>-*`` changelogs) and group."""
    deleted = delete_matching(bootstrap, owned_by(base), owned_by(base))
    if deleted.errors:  # the report is written; leftovers are only clutter
        print(f"could not delete all of the run's topics ({deleted.errors[0]})", file=sys.stderr)


class _Loop:
    """The closed loop: users act on their newest snapshot; snapshots answer events."""

    def __init__(
        self,
        sim: Simulation,
        options: DemoOptions,
        producer: Producer,
        consumer: Consumer,
        topic: str,
        clock: SessionClock,
    ) -> None:
        self.sim = sim
        self.options = options
        self.producer = producer
        self.consumer = consumer
        self.topic = topic
        self.clock = clock
        self.board = Scoreboard(drift_round=options.drift_round)
        self.sent_at: dict[str, tuple[float, int]] = {}  # event id -> (when, the user's round)
        #: each user's events not answered yet, in the order sent: a snapshot answers its
        #: event and every earlier one (a burst gets one snapshot, the last event's)
        self.unanswered: dict[str, deque[str]] = {}
        self.latencies: list[float] = []
        self.by_round: dict[int, list[float]] = {}
        self.waiting: dict[str, str] = {}  # user -> the event whose snapshot is their next list
        self.outbox: deque[Event] = deque()  # decided, waiting for their turn (the rate)
        self.next_send = 0.0
        self.sent = 0
        self.snapshots = 0
        self.delivery_failures = 0
        self.notices: Counter[str] = Counter()
        self.prompts = 0
        self.examples: list[dict[str, str]] = []
        self.elapsed = 0.0
        self.alive: Callable[[], bool] = lambda: True  # the worker still runs
        self.out_of_time = False
        self.deadline: float | None = None  # monotonic time the users must stop by
        self.progress = _Progress(options.rounds, sys.stderr) if options.progress else None

    def _send(self, event: Event) -> None:
        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                self.delivery_failures += 1

        user = self.sim.users.get(event.user_id)
        self.sent_at[event.event_id] = (time.monotonic(), user.rounds if user else -1)
        self.unanswered.setdefault(event.user_id, deque()).append(event.event_id)
        self.producer.produce(
            self.topic,
            key=event.user_id.encode(),
            value=event_to_json(event),
            on_delivery=on_delivery,
        )
        self.sent += 1

    def _receive(self, timeout_s: float) -> list[Snapshot]:
        received = []
        # each snapshot is timed when it arrives, never after waiting for a full batch
        for message in poll_ready(self.consumer, max(0.001, timeout_s)):
            now = time.monotonic()  # when the snapshot reached the user
            value = message.value() if message.error() is None else None
            if value is None:
                continue
            snapshot = parse_snapshot(value)
            self._answered(snapshot, now)
            self.snapshots += 1
            self._note(snapshot)
            received.append(snapshot)
        self.producer.poll(0)
        return received

    def _answered(self, snapshot: Snapshot, now: float) -> None:
        """Time every event the snapshot answers: its own and the user's earlier ones."""
        queue = self.unanswered.get(snapshot.user_id)
        if not queue or snapshot.source_event_id not in self.sent_at:
            return  # a snapshot sent again, or of an event already answered
        while queue:
            event_id = queue.popleft()
            sent = self.sent_at.pop(event_id, None)
            if sent is not None:
                latency = (now - sent[0]) * 1000.0
                self.latencies.append(latency)
                self.by_round.setdefault(sent[1], []).append(latency)
            if event_id == snapshot.source_event_id:
                break

    def _note(self, snapshot: Snapshot) -> None:
        """Count the notices and prompts the worker sent, keep a few as examples."""
        if snapshot.notice is not None:
            self.notices[snapshot.notice.kind] += 1
            if len(self.examples) < 3 and snapshot.notice.kind == "preferences_adjusted":
                example = {"user": snapshot.user_id, "heard": snapshot.notice.heard,
                           "change": snapshot.notice.change}  # fmt: skip
                if snapshot.prompt is not None:
                    labels = " | ".join(c.label for c in snapshot.prompt.choices)
                    example["prompt"] = f"{snapshot.prompt.question} [{labels}]"
                self.examples.append(example)
        if snapshot.prompt is not None:
            self.prompts += 1

    def warm_up(self, k: int, timeout_s: float = 60.0) -> bool:
        """Ask for a list until it is full: the worker's catalog has arrived."""
        deadline = time.monotonic() + timeout_s
        n = 0
        while time.monotonic() < deadline:
            n += 1
            event = Preference(
                type="preference",
                event_id=f"warmup-{n}",
                user_id="__warmup__",
                action="prompts_on",
                timestamp=self.clock.at(0),
                context=Context(surface="warmup"),
            )
            self._send(event)
            self.producer.flush(10)
            wait_until = time.monotonic() + 10
            while time.monotonic() < wait_until:
                answers = [s for s in self._receive(0.2) if s.source_event_id == event.event_id]
                if answers:
                    if len(answers[0].items) >= k:
                        self.latencies.clear()  # the warm-up is not the figure
                        self.by_round.clear()
                        self.sent_at.clear()
                        self.unanswered.clear()
                        self.sent = 0
                        return True
                    break
            time.sleep(0.5)
        return False

    def _release(self) -> float:
        """Send what the rate and the in-flight limit allow; returns how long to wait."""
        interval = 1.0 / self.options.rate if self.options.rate else 0.0
        window = self.options.in_flight
        now = time.monotonic()
        self.next_send = max(self.next_send, now - interval)  # no bursts to catch up
        while self.outbox and self.next_send <= now:
            if window is not None and len(self.sent_at) >= window:
                break  # wait for snapshots: they free the window
            self._send(self.outbox.popleft())
            self.next_send += interval
        self.producer.poll(0)
        if not self.outbox or (window is not None and len(self.sent_at) >= window):
            return 0.05
        return max(0.0, self.next_send - now)

    def run(self) -> bool:
        """Play every user's rounds; returns whether all of them finished."""
        started = time.monotonic()
        if self.progress is not None:
            self.progress.started = started
        for user_id in self.sim.users:
            event = self.sim.hello(user_id)
            self.outbox.append(event)
            self.waiting[user_id] = event.event_id
        last_snapshot = time.monotonic()
        rounds = self.options.rounds
        while self.waiting:
            if self.deadline is not None and time.monotonic() > self.deadline:
                self._stop_in_time()
                break
            wait = self._release()
            received = self._receive(min(0.05, wait))
            if received or self.outbox:
                last_snapshot = time.monotonic()
            elif time.monotonic() - last_snapshot > self.options.stall_timeout_s:
                break
            if not received and not self.alive():
                break
            for snapshot in received:
                user_id = snapshot.user_id
                if self.waiting.get(user_id) != snapshot.source_event_id:
                    continue
                if self.sim.users[user_id].rounds >= rounds:
                    del self.waiting[user_id]
                    continue
                visit = self.sim.visit(user_id, snapshot)
                self.board.add(visit)
                self.outbox.extend(visit.events)
                self.waiting[user_id] = visit.events[-1].event_id
            if self.progress is not None:
                self.progress.show(self)
        self.elapsed = time.monotonic() - started
        if self.progress is not None:
            self.progress.show(self, final=True)
        return not self.out_of_time and not self.waiting and self.delivery_failures == 0

    def _stop_in_time(self) -> None:
        """Out of time: send nothing more, collect the snapshots of what was sent."""
        self.out_of_time = True
        self.outbox.clear()
        self.waiting.clear()
        until = time.monotonic() + DRAIN_S
        while self.sent_at and time.monotonic() < until:
            self._receive(0.05)


class _Progress:
    """One live line on stderr: rounds, events, recent CTR and p95 latency.

    On a terminal it redraws itself (carriage return); in a log it prints a line now and then.
    """

    def __init__(self, rounds: int, stream: TextIO, every_s: float = 0.25) -> None:
        self.rounds = rounds
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s if self.tty else 10.0
        self.last = 0.0
        self.started = time.monotonic()

    def show(self, loop: _Loop, final: bool = False) -> None:
        """Redraw (at most every ``every_s`` seconds, and at the end)."""
        now = time.monotonic()
        if not final and now - self.last < self.every_s:
            return
        self.last = now
        visits = loop.board.visits
        users = max(1, len(loop.sim.users))
        done = len(visits) / users
        recent = visits[-users:]
        shown = sum(v.impressions for v in recent)
        ctr = sum(v.clicks for v in recent) / shown if shown else 0.0
        expected = sum(v.expected_ctr * v.impressions for v in recent) / shown if shown else 0.0
        p95 = float(np.percentile(loop.latencies[-500:], 95)) if loop.latencies else 0.0
        width = 24
        filled = round(width * min(1.0, done / self.rounds))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] round {done:4.1f}/{self.rounds} "
            f"| events {loop.sent:6d} ({loop.sent / max(1e-9, now - self.started):3.0f}/s) "
            f"| CTR {ctr:.3f} (expected {expected:.3f}) "
            f"| p95 {p95:5.0f} ms | {now - self.started:4.0f} s"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# -- the report -----------------------------------------------------------------------


def _document(
    loop: _Loop,
    options: DemoOptions,
    run: str,
    prefix: str,
    bootstrap: str,
    timing: dict[str, float],
    complete: bool,
) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    board = loop.board
    rounds_done = min((user.rounds for user in loop.sim.users.values()), default=0)
    if loop.out_of_time:  # the figures cover the rounds every user finished
        board = Scoreboard(board.drift_round, [v for v in board.visits if v.round <= rounds_done])
    deescalation = board.deescalation()
    deescalation["notices_sent"] = dict(sorted(loop.notices.items()))
    deescalation["prompts_sent"] = loop.prompts
    deescalation["examples"] = loop.examples
    hidden = {"out_dir", "progress", "keep_topics"}
    options_dict = {k: v for k, v in asdict(options).items() if k not in hidden}
    return {
        "run": {
            "id": run,
            "complete": complete,
            "rounds_done": rounds_done,
            "stopped_by_time_budget": loop.out_of_time,
            "options": options_dict,
            "drift_round": options.drift_round,
            "categories": list(loop.sim.catalog.categories),
            "broker": bootstrap,
            "topic_prefix": prefix,
        },
        "summary": board.summary(),
        "rounds": board.by_round(),
        "deescalation": deescalation,
        "latency_ms": {k: round(v, 3) for k, v in percentiles(loop.latencies).items()},
        # by the round the user was in when sending (0: the first request)
        "latency_by_round_ms": [
            {"round": n, **{k: round(v, 3) for k, v in percentiles(values).items()}}
            for n, values in sorted(loop.by_round.items())
        ],
        "events": {
            "sent": loop.sent,
            "by_type": board.event_counts(),
            "snapshots_received": loop.snapshots,
            "unanswered": len(loop.sent_at),
            "delivery_failures": loop.delivery_failures,
            "per_s": round(loop.sent / loop.elapsed, 1) if loop.elapsed else None,
            "items_clicked": int((loop.sim.clicks > 0).sum()),
        },
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
    }


def _write_reports(document: dict[str, Any], base: Path) -> None:
    data = json.dumps(document, indent=2, default=str).encode()
    write_atomic(base / "report.json", lambda handle: handle.write(data))
    page = render_html(document).encode("utf-8")
    write_atomic(base / "report.html", lambda handle: handle.write(page))


def _f(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_table(document: dict[str, Any]) -> str:
    """The terminal report: CTR per round, then the story in a few lines."""
    drift = document["run"]["drift_round"]
    header = (
        f"{'round':>5} {'CTR':>6} {'expected':>8} {'popular':>8} {'random':>7} {'best':>6} "
        f"{'drifting':>8} {'staying':>7} {'far':>5} {'NR':>3} {'notices':>7}"
    )
    lines = [
        "",
        "CTR per round: clicks / items shown; expected = what the users' hidden tastes give",
        "the list shown; popular / random / best = the same for the best non-personalised",
        "list, a random list and the best list possible; far = share far from taste",
        "",
        header,
    ]
    for row in document["rounds"]:
        mark = " <- drift" if drift is not None and row["round"] == drift else ""
        lines.append(
            f"{row['round']:>5} {_f(row['ctr']):>6} {_f(row['expected_ctr']):>8} "
            f"{_f(row['popularity_ctr']):>8} {_f(row['random_ctr']):>7} "
            f"{_f(row['oracle_ctr']):>6} {_f(row['drifting_expected_ctr']):>8} "
            f"{_f(row['staying_expected_ctr']):>7} {_f(row['far_share'], 2):>5} "
            f"{row['not_relevant']:>3} {row['notices']:>7}{mark}"
        )
    s = document["summary"]
    lines += ["", "the loop learns (expected CTR):"]
    if s:
        lines.append(
            f"  first round {_f(s['first_round'])} -> before the drift {_f(s['before_drift'])} "
            f"(observed {_f(s['before_drift_observed'])}); best non-personalised "
            f"{_f(s['before_drift_popularity'])}, random {_f(s['before_drift_random'])}, "
            f"best possible {_f(s['before_drift_oracle'])}"
        )
        d = s.get("drift")
        if d:
            lines.append(
                f"  taste drift at round {d['round']} ({d['drifting_users']} users): their CTR "
                f"{_f(d['drifting_before'])} -> {_f(d['drifting_dip'])} at the drift -> "
                f"{_f(d['drifting_end'])} at the end "
                f"(best non-personalised {_f(d['drifting_end_popularity'])})"
            )
    e = document["deescalation"]
    lines += [
        "de-escalation:",
        f"  {e['not_relevant']} not relevant {e['reasons']}; the marked category's share of "
        f"the list {_f(e['share_before'], 2)} -> {_f(e['share_after'], 2)} on the next list",
        f"  notices {e['notices_sent']}, prompts {e['prompts_sent']} (answered with a pause: "
        f"{e['prompts_answered']})",
        f"  share of the lists far from taste: {_f(e['far_share_first_round'], 2)} in round 1, "
        f"{_f(e['far_share_before_drift'], 2)} before the drift, "
        f"{_f(e['far_share_at_drift'], 2)} at it, {_f(e['far_share_end'], 2)} at the end",
    ]
    for example in e["examples"][:1]:
        lines.append(f"  e.g. {example['user']}: {example['heard']}; {example['change']}")
    lat, ev, t = document["latency_ms"], document["events"], document["timing_s"]
    if lat:
        lines.append(
            f"event -> snapshot latency over {lat['count']} snapshots: p50 {_f(lat['p50'], 1)} ms, "
            f"p95 {_f(lat['p95'], 1)} ms, p99 {_f(lat['p99'], 1)} ms (max {_f(lat['max'], 1)})"
        )
    lines.append(
        f"{ev['sent']} events ({ev['per_s']} per s) {ev['by_type']}; "
        f"worker ready after {t.get('worker_ready_s', '-')} s, loop {t.get('loop_s', '-')} s, "
        f"total {t.get('total_s', '-')} s"
    )
    return "\n".join(lines)


# -- HTML and SVG ---------------------------------------------------------------------

_COLOURS = {
    "recloop (expected)": "#1f77b4",
    "recloop (observed)": "#9ecae1",
    "best non-personalised": "#ff7f0e",
    "random": "#7f7f7f",
    "best possible": "#2ca02c",
    "drifting users": "#d62728",
    "staying users": "#1f77b4",
    "far-from-taste share": "#9467bd",
    "p50": "#1f77b4",
    "p95": "#d62728",
}

Series = dict[str, Sequence[float | None]]


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Series,
    marker: float | None = None,
    marker_label: str = "",
    y_label: str = "",
    x_label: str = "round",
    dashed: Sequence[str] = (),
) -> str:
    """An inline SVG line chart; ``None`` values leave gaps."""
    width, height, pad, legend = 760, 300, 46, 190
    plot_w, plot_h = width - 2 * pad - legend, height - 2 * pad
    values = [v for ys in series.values() for v in ys if v is not None]
    y_max = max(values, default=1.0) or 1.0
    step = _nice_step(y_max)
    y_top = step * (int(y_max / step) + 1)
    x_min, x_max = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = (x_max - x_min) or 1.0

    def x_of(x: float) -> float:
        return pad + plot_w * (x - x_min) / span

    def y_of(y: float) -> float:
        return height - pad - plot_h * y / y_top

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{pad}" y="20" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{pad}" y="{pad}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    tick = 0.0
    while tick <= y_top + 1e-9:
        y = y_of(tick)
        svg.append(
            f'<line x1="{pad}" x2="{pad + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{pad - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{tick:g}</text>"
        )
        tick = round(tick + step, 10)
    for x in xs:
        if len(xs) <= 30 or int(x) % 5 == 0:
            svg.append(
                f'<text x="{x_of(x):.1f}" y="{height - pad + 15}" font-size="10" '
                f'text-anchor="middle">{x:g}</text>'
            )
    svg.append(
        f'<text x="{pad + plot_w / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text x="12" y="{pad + plot_h / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {pad + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    if marker is not None:
        mx = x_of(marker - 0.5)  # between the last round before and the first after
        svg.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{pad}" y2="{pad + plot_h}" stroke="#d62728" '
            f'stroke-dasharray="4 3"/><text x="{mx + 4:.1f}" y="{pad + 12}" font-size="11" '
            f'fill="#d62728">{html.escape(marker_label)}</text>'
        )
    for n, (name, ys) in enumerate(series.items()):
        colour = _COLOURS.get(name, "#444")
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        for segment in _segments(xs, ys):
            points = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in segment)
            svg.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} '
                f'points="{points}"/>'
            )
        last = next((y for y in reversed(ys) if y is not None), None)
        svg.append(
            f'<text x="{pad + plot_w + 12}" y="{pad + 16 * n + 10}" font-size="12" '
            f'fill="{colour}">{html.escape(name)}'
            + (f" ({last:.3f})" if last is not None else "")
            + "</text>"
        )
    svg.append("</svg>")
    return "\n".join(svg)


def _nice_step(top: float) -> float:
    """A round tick step giving about five ticks up to ``top``."""
    raw = top / 5
    magnitude = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _segments(xs: Sequence[float], ys: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((x, y))
    return [s for s in segments if s]


def bar_chart(title: str, bars: Sequence[tuple[str, float]], unit: str = "") -> str:
    """An inline SVG horizontal bar chart."""
    width, row, pad, label_w = 760, 26, 30, 260
    height = pad + row * len(bars) + 16
    top = max((v for _, v in bars), default=1.0) or 1.0
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="0" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    for n, (label, value) in enumerate(bars):
        y = pad + row * n
        w = (width - label_w - 90) * value / top
        svg.append(
            f'<text x="{label_w - 8}" y="{y + 15}" font-size="12" text-anchor="end">'
            f'{html.escape(label)}</text><rect x="{label_w}" y="{y + 3}" width="{w:.1f}" '
            f'height="{row - 8}" fill="#1f77b4"/><text x="{label_w + w + 6:.1f}" y="{y + 15}" '
            f'font-size="12">{value:.3g}{html.escape(unit)}</text>'
        )
    svg.append("</svg>")
    return "\n".join(svg)


def render_html(document: dict[str, Any]) -> str:
    """A self-contained HTML page: the plots (inline SVG) and the figures."""
    rows = document["rounds"]
    xs = [float(r["round"]) for r in rows]
    drift = document["run"]["drift_round"]

    def col(name: str) -> list[float | None]:
        return [r[name] for r in rows]

    ctr = line_chart(
        "Click-through rate per round",
        xs,
        {
            "recloop (expected)": col("expected_ctr"),
            "recloop (observed)": col("ctr"),
            "best non-personalised": col("popularity_ctr"),
            "random": col("random_ctr"),
            "best possible": col("oracle_ctr"),
        },
        marker=drift,
        marker_label="taste drift",
        y_label="CTR",
        dashed=("best possible", "random", "best non-personalised"),
    )
    charts = [ctr]
    if drift is not None:
        charts.append(
            line_chart(
                "Users whose taste drifts vs the others (expected CTR of their lists)",
                xs,
                {
                    "drifting users": col("drifting_expected_ctr"),
                    "staying users": col("staying_expected_ctr"),
                },
                marker=drift,
                marker_label="taste drift",
                y_label="CTR",
            )
        )
    e = document["deescalation"]
    charts.append(
        line_chart(
            "Share of each list far from the user's taste",
            xs,
            {"far-from-taste share": col("far_share")},
            marker=drift,
            marker_label="taste drift",
            y_label="share",
        )
    )
    if e["share_before"] is not None:
        charts.append(
            bar_chart(
                "A category marked not relevant: its share of the list",
                [
                    ("in the list the user marked it in", e["share_before"]),
                    ("in the user's next list", e["share_after"] or 0.0),
                ],
            )
        )
    lat = document["latency_ms"]
    per_round = [r for r in document["latency_by_round_ms"] if r["round"] >= 1]
    if per_round:
        charts.append(
            line_chart(
                "Event -> snapshot latency per round",
                [float(r["round"]) for r in per_round],
                {"p50": [r["p50"] for r in per_round], "p95": [r["p95"] for r in per_round]},
                y_label="ms",
            )
        )
    if lat:
        charts.append(
            bar_chart(
                f"Event -> snapshot latency ({lat['count']} snapshots)",
                [(name, lat[name]) for name in ("p50", "p95", "p99", "max")],
                unit=" ms",
            )
        )
    examples = "".join(
        f"<li><b>{html.escape(x['user'])}</b>: {html.escape(x['heard'])}; "
        f"{html.escape(x['change'])}"
        + (f"<br><i>{html.escape(x['prompt'])}</i>" if "prompt" in x else "")
        + "</li>"
        for x in e["examples"]
    )
    run = document["run"]
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>recloop closed-loop demo</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:64em}svg{display:block;"
        "margin:1.5em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}</style>",
        "</head><body>",
        "<h1>recloop closed-loop demo</h1>",
        f"<p>Run {html.escape(run['id'])} ({'complete' if run['complete'] else 'INCOMPLETE'}): "
        f"{html.escape(json.dumps(run['options']))}. Simulated users with hidden tastes act on "
        "the newest snapshot the real pipeline sent them, through Kafka. <i>Expected</i> CTR "
        "is what their hidden tastes give the list they were shown (position bias included); "
        "the baselines are the same for other lists shown to the same users at the same "
        "moment.</p>",
        *charts,
        "<h2>De-escalation examples</h2>",
        f"<ul>{examples or '<li>none</li>'}</ul>",
        "<h2>Figures</h2>",
        f"<pre>{html.escape(render_table(document))}</pre>",
        "</body></html>",
    ])  # fmt: skip


def options_with(base: DemoOptions, **changes: Any) -> DemoOptions:
    """``base`` with the given fields changed, ``None`` values ignored."""
    return replace(base, **{k: v for k, v in changes.items() if v is not None})
