"""The fault suite: crashes, a broker restart, a lost worker, duplicates, disorder, disks.

Each stream test checks the same claim (docs/guarantees.md): every event counts exactly
once in its user's state, and every user ends with a snapshot reflecting all of their
events. The proof is a comparison with a from-scratch offline replay of the same log
(the operators the worker runs, applied in log order, as tests/integration/test_parity.py
does):

* the final snapshot of every user has the replay's ``version`` (one per applied event),
  ``source_event_id`` (the user's last event) and ``event_time``;
* every snapshot ever published, republished ones included, names the event the replay
  gives that version: version ``v`` of a user always comes from their ``v``-th event, so
  no event was applied twice, skipped or applied out of order;
* the final user state on the ``<app_id>-users-changelog`` topic (what any worker
  restores) equals the replay's profile in every field but the embedding (event count,
  history, blocked items, seen event ids, affinities, penalties, streaks, tags...).

What is not compared: the ranked items and the user embedding, which also depend on
item state and on each worker's own model, and so on when each item update reached the
worker (at-least-once on the item side, see docs/guarantees.md). The figures each test
measures (redelivered events, republished snapshots, rebalance time) are printed as one
JSON line (``pytest -s``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from operators.catalog import ItemState, apply_feedback
from operators.feedback_loop import process_event
from operators.index import ItemIndex
from operators.model import RankingModel
from operators.profile import UserProfile
from operators.synthetic import EPOCH, SyntheticWorld
from pipeline.app import loop_config
from pipeline.embedded_kafka import EmbeddedKafka, default_cache_dir
from pipeline.settings import Settings
from pipeline.worker_process import WorkerProcess
from schemas.events import Click, Event, event_to_json
from schemas.snapshot import Snapshot
from tests.integration.harness import Harness, Record, TopicTail, free_port, scrape_metrics

pytestmark = pytest.mark.integration

#: a small catalog keeps ranking cheap, so 20,000 events take about a minute
N_ITEMS = 40
WARMUP_USER = "__warmup__"


# -- the offline replay ------------------------------------------------------------------
@dataclass
class Expected:
    """What a from-scratch offline replay of the log says each user's state must be."""

    by_user: dict[str, list[Event]]
    profiles: dict[str, UserProfile]
    snapshots: dict[str, Snapshot]

    def version_of(self, user_id: str, event_id: str) -> int | None:
        """The snapshot version the user's event must produce (1 for their first event)."""
        for n, event in enumerate(self.by_user.get(user_id, ()), start=1):
            if event.event_id == event_id:
                return n
        return None


def interleaved(world: SyntheticWorld, per_user: int, start: datetime = EPOCH) -> list[Event]:
    """Every user's events, interleaved as a live stream would carry them (event time)."""
    events = (e for user in world.users for e in world.events_for(user, per_user, start))
    return sorted(events, key=lambda e: (e.timestamp, e.user_id))


def replay(world: SyntheticWorld, log: list[Event], settings: Settings) -> Expected:
    """The same operators as the worker, in log order, item feedback applied at once."""
    config = loop_config(settings)
    catalog = config.new_catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    model = RankingModel(learning_rate=settings.ranking.model_learning_rate)
    profiles: dict[str, UserProfile] = {}
    snapshots: dict[str, Snapshot] = {}
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in log:
        step = process_event(
            event, profiles.get(event.user_id), catalog, config, event.timestamp, model
        )
        profiles[event.user_id] = step.profile
        if step.snapshot is None:  # a duplicate in the log itself
            continue
        by_user[event.user_id].append(event)
        snapshots[event.user_id] = step.snapshot
        for record in step.feedback:
            state = catalog.get(record.item_id) or ItemState(item_id=record.item_id)
            catalog.put(apply_feedback(state, record, config.items))
    return Expected(dict(by_user), profiles, snapshots)


def replay_in_background(
    world: SyntheticWorld, log: list[Event], settings: Settings
) -> concurrent.futures.Future[Expected]:
    """The replay in a thread, so it runs while the worker does (two cores)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(replay, world, log, settings)
    pool.shutdown(wait=False)
    return future


# -- what the live pipeline published ----------------------------------------------------
@dataclass
class SnapshotWatch:
    """Every snapshot on the snapshots topic, folded as it is read (each record once)."""

    tail: TopicTail
    #: user -> (version, source event id, event time) of the highest version seen
    latest: dict[str, tuple[int, str, str | None]] = field(default_factory=dict)
    #: (user, version) -> how often it was published, and the event ids it named
    published: Counter[tuple[str, int]] = field(default_factory=Counter)
    events_of: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    records: int = 0

    def fold(self, records: list[Record]) -> None:
        """Take new records into account."""
        for record in records:
            if record.value is None:
                continue
            snap = json.loads(record.value)
            user, version = snap["user_id"], snap["version"]
            if user == WARMUP_USER:
                continue
            self.records += 1
            self.published[(user, version)] += 1
            self.events_of[(user, version)].add(snap["source_event_id"])
            if user not in self.latest or version > self.latest[user][0]:
                self.latest[user] = (version, snap["source_event_id"], snap.get("event_time"))

    def poll(self) -> None:
        """Read what arrived since the last call."""
        self.fold(self.tail.poll())

    def wait(self, done: Callable[[SnapshotWatch], bool], timeout_s: float) -> bool:
        """Read until ``done(self)`` holds or time runs out."""

        def check(fresh: list[Record]) -> bool:
            self.fold(fresh)
            return done(self)

        return check([]) or self.tail.read_until(check, timeout_s)

    def version(self, user: str) -> int:
        """The highest version of the user's snapshots seen (0 for none)."""
        return self.latest[user][0] if user in self.latest else 0

    def complete(self, expected: Expected) -> bool:
        """Every user's latest snapshot comes from their last event."""
        return all(self.version(user) >= len(events) for user, events in expected.by_user.items())

    def behind(self, expected: Expected) -> str:
        """Who lacks a snapshot of their last event, for a failure message."""
        late = {
            user: f"{self.version(user)} of {len(events)}"
            for user, events in expected.by_user.items()
            if self.version(user) < len(events)
        }
        return f"{len(late)} users behind (latest version seen): {late}"

    def event_ids(self) -> set[str]:
        """The events whose snapshot was published."""
        return {e for ids in self.events_of.values() for e in ids}


def changelog_profiles(harness: Harness) -> dict[str, UserProfile]:
    """The last value per user on the users table's changelog: what a worker restores."""
    topic = f"{harness.settings.worker.app_id}-users-changelog"
    with harness.tail(topic, full_name=True) as tail:
        records = tail.read_to_end()
    final: dict[str, bytes | None] = {}
    for record in records:
        assert record.key is not None
        final[json.loads(record.key)] = record.value  # Faust writes str keys as JSON
    return {user: UserProfile.restore(v) for user, v in final.items() if v is not None}


def _differences(live: UserProfile, replayed: UserProfile) -> list[str]:
    """The fields (embedding aside) where two profiles differ."""
    return [
        f.name
        for f in dataclasses.fields(UserProfile)
        if f.name != "vector" and getattr(live, f.name) != getattr(replayed, f.name)
    ]


def check_exactly_once(
    expected: Expected, watch: SnapshotWatch, profiles: dict[str, UserProfile]
) -> dict[str, int]:
    """Assert the claim (module docstring); return the figures seen on the way."""
    problems: list[str] = []
    for user in expected.by_user:
        want = expected.snapshots[user]
        got = watch.latest.get(user)
        if got is None:
            problems.append(f"{user}: no snapshot at all")
            continue
        version, event_id, event_time = got
        if (version, event_id) != (want.version, want.source_event_id):
            problems.append(
                f"{user}: final snapshot v{version} from {event_id}, "
                f"replay v{want.version} from {want.source_event_id}"
            )
        elif event_time is None or datetime.fromisoformat(event_time) != want.event_time:
            problems.append(f"{user}: final event time {event_time}, replay {want.event_time}")
        live = profiles.get(user)
        if live is None:
            problems.append(f"{user}: no state on the changelog")
        elif diff := _differences(live, expected.profiles[user]):
            problems.append(
                f"{user}: state differs from the replay in {diff} (events applied "
                f"{live.events_applied}, replay {expected.profiles[user].events_applied})"
            )
    for (user, version), event_ids in watch.events_of.items():
        if user not in expected.by_user:
            problems.append(f"a snapshot for {user}, who sent nothing")
            continue
        events = expected.by_user[user]
        if not 1 <= version <= len(events) or event_ids != {events[version - 1].event_id}:
            problems.append(f"{user}: version {version} came from {sorted(event_ids)}")
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:15])
    missing = sum(
        (user, v) not in watch.published
        for user, events in expected.by_user.items()
        for v in range(1, len(events) + 1)
    )
    return {
        "users": len(expected.by_user),
        "events": sum(len(e) for e in expected.by_user.values()),
        "snapshots_published": watch.records,
        "snapshots_republished": sum(n - 1 for n in watch.published.values()),
        # an intermediate version whose record was lost in a crash (later ones cover it)
        "intermediate_snapshots_never_published": missing,
    }


def redelivered(
    offsets: list[tuple[int, int]], log: list[Event], committed: dict[int, int], applied: set[str]
) -> int:
    """Events at or past the committed offsets that had been applied already: read again."""
    return sum(
        1
        for (partition, offset), event in zip(offsets, log, strict=True)
        if offset >= committed.get(partition, -1) and event.event_id in applied
    )


def send_log(harness: Harness, log: list[Event]) -> list[tuple[int, int]]:
    """Produce the log (keyed by user); where each event landed."""
    return harness.send_raw_located((e.user_id.encode(), event_to_json(e)) for e in log)


def report(name: str, figures: dict[str, Any]) -> None:
    """One JSON line of figures (shown with ``pytest -s``)."""
    print(json.dumps({"test": name, **figures}, sort_keys=True))


def stream_settings(settings: Settings, partitions: int = 2) -> Settings:
    """Per-test settings with a quick model/index checkpoint."""
    kafka = settings.kafka.model_copy(update={"partitions": partitions})
    worker = settings.worker.model_copy(update={"checkpoint_s": 5.0})
    return settings.model_copy(update={"kafka": kafka, "worker": worker})


# -- 1. kill -9 mid-stream ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_killed_mid_stream_applies_every_event_exactly_once(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = stream_settings(kafka_settings)
    world = SyntheticWorld.generate(seed=17, n_items=N_ITEMS, n_users=500, n_categories=6)
    log = interleaved(world, per_user=40)
    assert len(log) == 20_000
    began = time.monotonic()
    harness = Harness(settings, tmp_path)
    harness.send_items(world.items)
    worker = harness.worker()
    worker.start()
    with harness.tail("snapshots") as tail:
        try:
            harness.wait_until_worker_sees_catalog()
            offsets = send_log(harness, log)
            future = replay_in_background(world, log, settings)
            watch = SnapshotWatch(tail)
            assert watch.wait(lambda w: w.records >= len(log) // 4, 240), worker.log_tail()
            worker.kill()
            killed_after = watch.records
            watch.wait(lambda w: False, 3)  # whatever was published before the kill
            applied_before = watch.event_ids()
            committed = harness.committed(settings.worker.app_id)
            restarted = time.monotonic()
            worker.start()  # the same state directory and app id
            expected = future.result()
            assert watch.wait(lambda w: w.complete(expected), 600), (
                watch.behind(expected) + "\n" + worker.log_tail()
            )
            finished = time.monotonic()
        finally:
            worker.stop()
    figures = check_exactly_once(expected, watch, changelog_profiles(harness))
    again = redelivered(offsets, log, committed, applied_before)
    assert again > 0, "the kill fell on a commit: nothing was redelivered, nothing proved"
    report(
        "kill -9",
        {
            **figures,
            "killed_after_snapshots": killed_after,
            "committed_at_kill": sum(max(0, o) for o in committed.values()),
            "events_redelivered_after_kill": again,
            "seconds_restart_to_done": round(finished - restarted, 1),
            "seconds_total": round(finished - began, 1),
        },
    )


# -- 2. the broker restarts mid-stream ---------------------------------------------------
@pytest.fixture
def own_broker(base_settings: Settings, tmp_path: Path) -> Iterator[EmbeddedKafka]:
    """A second embedded broker for this test alone (the shared one is never touched).

    It reuses the shared cache's jars, so it needs no Maven run; its data and ports are
    its own, and a restart comes back on the same ports.
    """
    jars = EmbeddedKafka(base_settings.cache_dir or default_cache_dir()).ensure_jars()
    broker = EmbeddedKafka(tmp_path / "own-broker", jar_dir=jars, heap="384m")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_broker_restart_mid_stream_needs_no_action_and_loses_nothing(
    kafka_settings: Settings, own_broker: EmbeddedKafka, tmp_path: Path
) -> None:
    info = own_broker.status()
    assert info is not None
    kafka = kafka_settings.kafka.model_copy(update={"bootstrap_servers": info.bootstrap_servers})
    settings = stream_settings(kafka_settings.model_copy(update={"kafka": kafka}))
    world = SyntheticWorld.generate(seed=23, n_items=N_ITEMS, n_users=200, n_categories=6)
    log = interleaved(world, per_user=20)
    harness = Harness(settings, tmp_path)
    harness.send_items(world.items)
    worker = harness.worker()
    worker.start()
    with harness.tail("snapshots") as tail:
        try:
            harness.wait_until_worker_sees_catalog()
            send_log(harness, log)
            future = replay_in_background(world, log, settings)
            watch = SnapshotWatch(tail)
            assert watch.wait(lambda w: w.records >= len(log) // 3, 240), worker.log_tail()
            pid = worker.proc.pid if worker.proc else None
            stopped_at = time.monotonic()
            own_broker.stop()
            time.sleep(5)  # the worker sees the broker gone (refused connections)
            assert worker.running, worker.log_tail()
            own_broker.start()
            back_at = time.monotonic()
            stopped_after = watch.records
            expected = future.result()
            assert watch.wait(lambda w: w.complete(expected), 300), (
                watch.behind(expected) + "\n" + worker.log_tail()
            )
            finished = time.monotonic()
            # the same process carried on: nobody restarted it
            assert worker.running and worker.proc is not None and worker.proc.pid == pid
        finally:
            worker.stop()
    figures = check_exactly_once(expected, watch, changelog_profiles(harness))
    report(
        "broker restart",
        {
            **figures,
            "broker_stopped_after_snapshots": stopped_after,
            "seconds_broker_down": round(back_at - stopped_at, 1),
            "seconds_back_to_done": round(finished - back_at, 1),
        },
    )


# -- 3. two workers, one dies ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_when_one_of_two_workers_dies_the_other_takes_over_its_users(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = stream_settings(kafka_settings, partitions=4)
    world = SyntheticWorld.generate(seed=29, n_items=N_ITEMS, n_users=200, n_categories=6)
    log = interleaved(world, per_user=20)
    harness = Harness(settings, tmp_path)
    harness.send_items(world.items)
    group = settings.worker.app_id

    ports = {"a": free_port(), "b": free_port()}

    def on_own_state(name: str) -> WorkerProcess:
        worker = settings.worker.model_copy(update={
            "state_dir": tmp_path / f"state-{name}", "web_enabled": True, "web_port": ports[name],
        })  # fmt: skip
        own = settings.model_copy(update={"worker": worker})
        return harness.worker(name, own)  # a dead member leaves after worker.session_timeout_s

    def catalogs_full() -> bool:  # each worker ranks with every item (see below)
        try:
            return all(
                scrape_metrics(port).get(("recloop_catalog_items", ()), 0) >= N_ITEMS
                for port in ports.values()
            )
        except OSError:  # a web server not listening yet
            return False

    survivor, victim = on_own_state("a"), on_own_state("b")
    survivor.start()
    victim.start()
    with harness.tail("snapshots") as tail:
        try:
            for worker in (survivor, victim):
                assert worker.wait_for_log("events agent ready", 120), worker.log_tail()
            assert wait_for(lambda: _split(harness.group_members(group)), 120), (
                f"the two workers never shared the partitions: {harness.group_members(group)}"
            )
            # the warm-up user's partition proves one worker's catalog only: a worker that
            # ranks before its catalog is complete learns affinities without categories
            assert wait_for(catalogs_full, 120), "a worker never saw the whole catalog"
            send_log(harness, log)
            future = replay_in_background(world, log, settings)
            watch = SnapshotWatch(tail)
            assert watch.wait(lambda w: w.records >= len(log) // 3, 240), victim.log_tail()
            victim.kill()
            killed_at = time.monotonic()
            killed_after = watch.records
            assert wait_for(lambda: harness.group_members(group) == [{0, 1, 2, 3}], 120), (
                f"the survivor never took every partition: {harness.group_members(group)}"
            )
            taken_over = time.monotonic()
            expected = future.result()
            assert watch.wait(lambda w: w.complete(expected), 300), (
                watch.behind(expected) + "\n" + survivor.log_tail()
            )
            finished = time.monotonic()
            assert survivor.running, survivor.log_tail()
        finally:
            survivor.stop()
            victim.stop()
    figures = check_exactly_once(expected, watch, changelog_profiles(harness))
    report(
        "two workers, one dies",
        {
            **figures,
            "killed_after_snapshots": killed_after,
            "seconds_kill_to_rebalanced": round(taken_over - killed_at, 1),
            "seconds_kill_to_done": round(finished - killed_at, 1),
        },
    )


def _split(members: list[set[int]]) -> bool:
    """Two members, each owning some of the four partitions."""
    return len(members) == 2 and all(members) and set.union(*members) == {0, 1, 2, 3}


def wait_for(check: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> bool:
    """Ask ``check`` until it holds or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every_s)
    return False


# -- 4. duplicates and disorder ----------------------------------------------------------
T0 = EPOCH + timedelta(days=30)


def _click(user: str, n: int, item: str, at: datetime, event_id: str | None = None) -> Event:
    return Click(
        type="click", event_id=event_id or f"{user}-e{n}", user_id=user, item_id=item,
        timestamp=at,
    )  # fmt: skip


def item_states(harness: Harness) -> dict[str, ItemState]:
    """The latest state of every item on the item-state topic."""
    with harness.tail("item-state") as tail:
        records = tail.read_to_end()
    return {
        r.key.decode(): ItemState.restore(r.value)
        for r in records
        if r.key is not None and r.value is not None
    }


def test_duplicates_count_once_and_late_events_count_at_their_own_time(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """The dedupe window is 5 ids here, so going past it is cheap to show.

    Duplicates: a resent event (same bytes) and a reused id with other content are
    ignored, with no snapshot and no item feedback; an id older than the window counts
    again (the documented bound). Disorder: an event arriving after newer ones is
    applied, not dropped; the user's clock (``last_event_at``) does not go back; and an
    item's popularity folds it in at its own event time, so two items given the same two
    likes in opposite arrival orders end with the same popularity.
    """
    limits = kafka_settings.limits.model_copy(update={"dedupe_window": 5})
    settings = stream_settings(kafka_settings.model_copy(update={"limits": limits}))
    world = SyntheticWorld.generate(seed=31, n_items=N_ITEMS, n_users=1, n_categories=6)
    item = [i.item_id for i in world.items]
    day = timedelta(days=1)
    half_life = timedelta(seconds=settings.ranking.popularity_half_life_s)
    dup = [_click("dup", n, item[n], T0 + n * day) for n in range(1, 5)]
    old = [_click("old", n, item[10 + n], T0 + n * day) for n in range(1, 8)]
    log: list[Event] = [
        *dup,
        dup[1],  # the same event again
        _click("dup", 9, item[9], T0 + 9 * day, event_id=dup[2].event_id),  # id reused
        _click("dup", 5, item[5], T0 + 5 * day),
        *old,
        old[0],  # 7 ids later: outside the window of 5, so it counts again
        # X is liked now, then late (two half-lives earlier); Y in time order
        _click("x-now", 1, item[30], T0),
        _click("x-late", 1, item[30], T0 - 2 * half_life),
        _click("y-early", 1, item[31], T0 - 2 * half_life),
        _click("y-now", 1, item[31], T0),
        # a user's late event: applied, and the user's clock stays at the newest
        _click("late", 1, item[20], T0 + 2 * day),
        _click("late", 2, item[21], T0 + 3 * day),
        _click("late", 3, item[22], T0 + 1 * day),
    ]
    expected = replay(world, log, settings)
    harness = Harness(settings, tmp_path)
    harness.send_items(world.items)
    worker = harness.worker()
    worker.start()
    with harness.tail("snapshots") as tail:
        try:
            harness.wait_until_worker_sees_catalog()
            watch = SnapshotWatch(tail)
            applied: Counter[str] = Counter()
            for event in log:
                harness.send_events([event])
                user, n = event.user_id, applied[event.user_id]
                if n < len(expected.by_user[user]) and (
                    expected.by_user[user][n].event_id == event.event_id
                ):  # not a duplicate: wait for its snapshot, so item updates keep log order
                    applied[user] += 1
                    assert watch.wait(lambda w, k=(user, n + 1): k in w.published, 60), (  # type: ignore[misc]
                        worker.log_tail()
                    )
            assert watch.complete(expected)
            watch.wait(lambda w: False, 2)  # a snapshot for a duplicate would show now
        finally:
            worker.stop()
    figures = check_exactly_once(expected, watch, changelog_profiles(harness))
    assert figures["snapshots_republished"] == 0  # no crash here: one snapshot per event
    assert watch.latest["dup"][:2] == (5, "dup-e5")
    assert watch.latest["old"][:2] == (8, "old-e1")  # beyond the window: counted again
    states = item_states(harness)
    assert states[item[2]].feedback_events == 1  # the resent event sent no feedback
    assert states[item[9]].feedback_events == 0  # the reused id was not applied at all
    x, y = states[item[30]], states[item[31]]
    assert (x.positives, y.positives) == (2, 2)
    assert x.popularity == pytest.approx(1.25) and y.popularity == pytest.approx(1.25)
    assert x.popularity_t == y.popularity_t == T0.timestamp()
    late = changelog_profiles(harness)["late"]
    assert late.events_applied == 3 and late.last_event_at == (T0 + 3 * day).isoformat()
    report("duplicates and disorder", figures)


# -- 5. an unwritable state directory, a full disk ---------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only: a skip elsewhere), unmounted afterwards.

    Read-only is the one way to make a directory unwritable for root, who ignores
    permission bits; a small size is a disk that fills up.
    """
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root only): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture(params=["inside a read-only mount", "a read-only mount", "below a file"])
def unwritable_state_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A state directory the worker cannot write, each way it happens."""
    if request.param == "below a file":  # needs no root: mkdir fails with "Not a directory"
        (tmp_path / "a-file").write_text("")
        yield tmp_path / "a-file" / "state"
        return
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        yield mount / "state" if request.param == "inside a read-only mount" else mount


def test_an_unwritable_state_directory_stops_the_worker_with_one_clear_error(
    kafka_settings: Settings, tmp_path: Path, unwritable_state_dir: Path
) -> None:
    worker_settings = kafka_settings.worker.model_copy(update={"state_dir": unwritable_state_dir})
    settings = kafka_settings.model_copy(update={"worker": worker_settings})
    worker = Harness(settings, tmp_path).worker()
    worker.start()
    try:
        code = worker.wait(60)
    finally:
        worker.kill()
    output = worker.log_path.read_text(errors="replace")
    assert code is not None and code != 0, output
    assert f"the state directory {unwritable_state_dir} is not writable" in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) <= 2, output  # one error, not a storm


@pytest.mark.slow
def test_a_full_disk_stops_the_worker_and_a_restart_with_space_loses_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """The disk fills while events flow: the worker stops by itself with a non-zero code;
    freed, a restart on the same state directory applies every event exactly once, and
    the model and index checkpoints (written atomically) load as they were."""
    world = SyntheticWorld.generate(seed=37, n_items=N_ITEMS, n_users=20, n_categories=6)
    log = interleaved(world, per_user=30)
    expected = replay(world, log, kafka_settings)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        worker_settings = kafka_settings.worker.model_copy(
            update={"state_dir": disk / "state", "checkpoint_s": 1.0}
        )
        settings = kafka_settings.model_copy(update={"worker": worker_settings})
        harness = Harness(settings, tmp_path)
        harness.send_items(world.items)
        worker = harness.worker()
        model_file = disk / "state" / "ranking-model.bin"
        index_file = disk / "state" / "item-index.bin"
        with harness.tail("snapshots") as tail:
            watch = SnapshotWatch(tail)
            try:
                worker.start()
                harness.wait_until_worker_sees_catalog()
                send_log(harness, log[:200])
                before = replay(world, log[:200], kafka_settings)
                assert watch.wait(lambda w: w.complete(before), 120), (
                    watch.behind(before) + "\n" + worker.log_tail()
                )
                assert wait_for(lambda: model_file.exists() and index_file.exists(), 30)
                filler = disk / "filler"
                with pytest.raises(OSError, match="No space left"), filler.open("wb") as out:
                    while True:
                        out.write(b"\0" * 65536)
                send_log(harness, log[200:])
                code = worker.wait(120)
                assert code is not None and code != 0, worker.log_tail()
                first_run = worker.log_path.read_text(errors="replace")
                assert "No space left on device" in first_run
                stopped_after = watch.records
                filler.unlink()
                worker.log_path.rename(worker.log_path.with_suffix(".first-run.log"))
                worker.start()
                assert watch.wait(lambda w: w.complete(expected), 180), (
                    watch.behind(expected) + "\n" + worker.log_tail()
                )
            finally:
                worker.stop()
        second_run = worker.log_path.read_text(errors="replace")
        model = RankingModel.restore(model_file.read_bytes())
        index = ItemIndex.load(index_file)
    figures = check_exactly_once(expected, watch, changelog_profiles(harness))
    # the checkpoints were whole: neither was found damaged and rebuilt on restart
    assert "unreadable" not in second_run and "item index unusable" not in second_run
    assert model.updates > 0 and len(index) > 0
    report(
        "full disk",
        {
            **figures,
            "snapshots_before_stop": stopped_after,
            "tracebacks_in_the_stopping_log": first_run.count("Traceback"),
        },
    )
