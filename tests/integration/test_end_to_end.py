"""Events to snapshots through the real broker, with a real worker process."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from operators.index import ItemIndex
from operators.synthetic import SyntheticWorld
from pipeline.settings import Settings
from pipeline.worker_process import WorkerProcess
from schemas.events import Click, Dwell, Event
from schemas.snapshot import Snapshot
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(seed=5, n_items=24, n_users=2, n_categories=3)


@pytest.fixture
def harness(kafka_settings: Settings, tmp_path: Path, world: SyntheticWorld) -> Harness:
    h = Harness(kafka_settings, tmp_path)
    h.send_items(world.items)
    return h


@pytest.fixture
def worker(harness: Harness, world: SyntheticWorld) -> Iterator[WorkerProcess]:
    process = harness.worker()
    process.start()
    try:
        assert harness.wait_for_count("item-state", len(world.items)), process.log_tail()
        harness.wait_until_worker_sees_catalog()
        yield process
    finally:
        process.stop()


def click(n: int, user: str, item: str) -> Event:
    return Click(
        type="click",
        event_id=f"{user}-e{n}",
        user_id=user,
        item_id=item,
        timestamp=T0 + timedelta(minutes=n),
    )


def latest_is(user: str, event_id: str) -> object:
    return lambda latest: user in latest and latest[user].source_event_id == event_id


def test_events_lead_to_a_snapshot_that_reflects_them(
    harness: Harness, worker: WorkerProcess, world: SyntheticWorld
) -> None:
    first, second = world.items[0], world.items[3]  # same category (round-robin over 3)
    harness.send_events(
        [
            click(1, "alice", first.item_id),
            Dwell(
                type="dwell",
                event_id="alice-e2",
                user_id="alice",
                item_id=second.item_id,
                dwell_ms=240_000.0,
                timestamp=T0 + timedelta(minutes=2),
            ),
        ]
    )

    latest = harness.snapshots(latest_is("alice", "alice-e2"))  # type: ignore[arg-type]

    assert "alice" in latest, worker.log_tail()
    snap = latest["alice"]
    assert snap.version == 2 and snap.source_event_id == "alice-e2"
    assert snap.event_time == T0 + timedelta(minutes=2)
    shown = [item.item_id for item in snap.items]
    assert len(shown) == 10
    assert first.item_id not in shown and second.item_id not in shown
    assert snap.items[0].category == first.category
    assert any(f"because you like {first.category}" in r for r in snap.items[0].reasons)


def test_malformed_events_are_dead_lettered_and_the_next_valid_one_is_processed(
    harness: Harness, worker: WorkerProcess, world: SyntheticWorld
) -> None:
    def event(kind: str, **extra: object) -> bytes:
        body = {
            "event_id": "bad",
            "user_id": "bob",
            "type": kind,
            "item_id": "i",
            "timestamp": "2026-11-01T10:00:00Z",
            **extra,
        }
        return json.dumps(body).encode()

    no_user = json.loads(event("click"))
    del no_user["user_id"]
    bad = [
        (b'{"event_id": "x", "user_id": ', "invalid_json"),
        (event("teleport"), "unknown_type"),
        (json.dumps(no_user).encode(), "missing_field"),
        (event("dwell", dwell_ms=-1.0), "schema_violation"),
        (event("click", note="x" * 100_000), "too_large"),
    ]
    for raw, _ in bad:
        harness.send_raw(b"bob", raw)
    harness.send_events([click(1, "bob", world.items[1].item_id)])

    letters = harness.read("dead-letters", lambda records: len(records) >= len(bad))
    latest = harness.snapshots(latest_is("bob", "bob-e1"))  # type: ignore[arg-type]

    assert [r.headers["recloop.dlq.reason"].decode() for r in letters] == [r for _, r in bad]
    assert [r.value for r in letters] == [raw for raw, _ in bad]
    assert all(r.headers["recloop.dlq.topic"].decode() == harness.topic("events") for r in letters)
    offsets = [int(r.headers["recloop.dlq.offset"]) for r in letters]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(bad)
    assert latest["bob"].version == 1, worker.log_tail()
    assert worker.running


def test_user_state_survives_a_restart_and_a_lost_state_directory(
    harness: Harness, world: SyntheticWorld, kafka_settings: Settings
) -> None:
    liked = world.items[2]

    logs: list[str] = []
    ready = f", {len(world.items)} indexed)"  # (the warm-up adds an uncatalogued item)

    def run_once(events: list[Event], until_event: str) -> Snapshot:
        process = harness.worker()
        process.start()
        try:
            harness.wait_until_worker_sees_catalog()
            harness.send_events(events)
            latest = harness.snapshots(latest_is("carol", until_event))  # type: ignore[arg-type]
            assert "carol" in latest and latest["carol"].source_event_id == until_event, (
                process.log_tail()
            )
            return latest["carol"]
        finally:
            assert process.stop() == 0, process.log_tail()
            logs.append(process.log_path.read_text(errors="replace"))
            process.log_path.unlink()

    index_file = kafka_settings.worker.state_dir / "item-index.bin"
    first = run_once([click(1, "carol", liked.item_id)], "carol-e1")
    assert first.version == 1
    assert first.model_version.endswith("+logreg-1")  # the ranking model learned one like
    assert (kafka_settings.worker.state_dir / "ranking-model.bin").exists()
    # the item index was built from item state and saved on the way out
    assert sorted(ItemIndex.load(index_file).ids()) == sorted(i.item_id for i in world.items)
    index_file.write_bytes(b"not an index")  # a damaged file costs a rebuild, nothing else

    # same state directory: RocksDB holds the profile; the duplicate e1 is ignored
    second = run_once(
        [click(1, "carol", liked.item_id), click(2, "carol", world.items[5].item_id)], "carol-e2"
    )
    assert second.version == 2
    assert liked.item_id not in [i.item_id for i in second.items]
    assert second.model_version.endswith("+logreg-2")  # resumed from its checkpoint
    # the catalog was caught up before the first event: the index rebuilt in one batch
    assert "item index unusable" in logs[-1] and ready in logs[-1]
    assert len(ItemIndex.load(index_file)) == len(world.items)

    # empty state directory: the profile comes back from the changelog topic
    shutil.rmtree(kafka_settings.worker.state_dir)
    third = run_once([click(3, "carol", world.items[8].item_id)], "carol-e3")
    assert third.version == 3
    # the model is a worker's local state: with its directory gone it starts afresh
    assert third.model_version.endswith("+logreg-1")
    shown = [i.item_id for i in third.items]
    assert liked.item_id not in shown and world.items[5].item_id not in shown
    assert third.items[0].category == liked.category
