"""The live pipeline and the offline replay agree: same operators, same recommendations."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from operators.catalog import ItemState, apply_feedback
from operators.feedback_loop import process_event
from operators.model import RankingModel
from operators.profile import UserProfile
from operators.synthetic import SyntheticWorld
from pipeline.app import loop_config
from pipeline.settings import Settings
from schemas.events import Event, Impression
from schemas.snapshot import Snapshot, parse_snapshot
from tests.integration.harness import Harness, Record

pytestmark = pytest.mark.integration


def _probe(user_id: str, n: int, after: Event) -> Impression:
    """An event that teaches nothing (an impression of an unknown item): a fresh ranking."""
    return Impression(
        type="impression", event_id=f"probe-{user_id}-{n}", user_id=user_id,
        item_ids=["no-such-item"], timestamp=after.timestamp + timedelta(hours=1),
    )  # fmt: skip


def _replay(
    world: SyntheticWorld, log: list[Event], probes: list[Impression], settings: Settings
) -> tuple[dict[str, Snapshot], dict[str, Snapshot], list[int]]:
    """What `recloop evaluate` does: the same operators, item feedback applied at once.

    Returns the last snapshot per user, every snapshot by its event id and, after each
    event of ``log``, how many item updates had been made so far.
    """
    config = loop_config(settings)
    catalog = config.new_catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    profiles: dict[str, UserProfile] = {}
    model = RankingModel(learning_rate=settings.ranking.model_learning_rate)
    latest: dict[str, Snapshot] = {}
    every: dict[str, Snapshot] = {}
    item_updates: list[int] = []
    for event in [*log, *probes]:
        step = process_event(event, profiles.get(event.user_id), catalog, config,
                             event.timestamp, model)  # fmt: skip
        profiles[event.user_id] = step.profile
        if event not in probes:
            item_updates.append((item_updates[-1] if item_updates else 0) + len(step.feedback))
        for record in step.feedback:
            state = catalog.get(record.item_id) or ItemState(item_id=record.item_id)
            catalog.put(apply_feedback(state, record, config.items))
        assert step.snapshot is not None
        latest[event.user_id] = step.snapshot
        every[event.event_id] = step.snapshot
    return latest, every, item_updates


def _exploring(settings: Settings, explore_categories: int) -> Settings:
    ranking = settings.ranking.model_copy(update={"explore_categories": explore_categories})
    return settings.model_copy(update={"ranking": ranking})


def _lists(snapshots: dict[str, Snapshot]) -> list[list[str]]:
    return [[item.item_id for item in snapshot.items] for snapshot in snapshots.values()]


@pytest.mark.parametrize("explore_categories", [0, 1])
def test_final_recommendations_agree_with_the_offline_replay(
    kafka_settings: Settings, tmp_path: Path, explore_categories: int
) -> None:
    """Event by event, as a steady stream: each event's item updates reach the worker
    before the next event, as the replay applies them at once.

    A user's embedding folds in the embedding of each item they react to as the worker
    sees it at that moment; under a burst, an item update still in flight (a few
    milliseconds) would make the live embedding differ slightly from the replay's.
    Everything else (co-visitation, popularity, item embeddings) is order-free.
    With category-level exploration on, the workers draw the same categories too.
    """
    kafka_settings = _exploring(kafka_settings, explore_categories)
    world = SyntheticWorld.generate(seed=21, n_items=40, n_users=4, n_categories=4)
    log = sorted(
        (e for user in world.users for e in world.events_for(user, 8)),
        key=lambda e: (e.timestamp, e.user_id),
    )
    probes = [_probe(u.user_id, 1, log[-1]) for u in world.users]
    expected, expected_every, item_updates = _replay(world, log, probes, kafka_settings)
    if explore_categories:  # the draws change what users are shown
        unchanged, _, _ = _replay(world, log, probes, _exploring(kafka_settings, 0))
        assert _lists(unchanged) != _lists(expected)

    harness = Harness(kafka_settings, tmp_path)
    harness.send_items(world.items)
    worker = harness.worker()
    worker.start()
    try:
        harness.wait_until_worker_sees_catalog()
        ours = {item.item_id.encode() for item in world.items}  # not the warm-up's

        def item_states(n: int) -> Callable[[list[Record]], bool]:
            return lambda records: sum(r.key in ours for r in records) >= n

        before = 0
        for event, updates in zip(log, item_updates, strict=True):
            harness.send_events([event])
            if updates > before:  # its item updates are on the item-state topic...
                found = harness.read("item-state", item_states(len(world.items) + updates))
                assert item_states(len(world.items) + updates)(found)
            else:
                harness.snapshots(lambda s, e=event: e.user_id in s  # type: ignore[misc]
                                  and s[e.user_id].source_event_id == e.event_id)  # fmt: skip
            before = updates
            time.sleep(0.1)  # ...and the follower (fetching within ~10 ms) has them
        harness.send_events(probes)
        wanted = {u.user_id: f"probe-{u.user_id}-1" for u in world.users}
        live = harness.snapshots(
            lambda s: all(u in s and s[u].source_event_id == e for u, e in wanted.items())
        )
        records = harness.read("snapshots", lambda r: False, timeout_s=2)
        every = [parse_snapshot(r.value) for r in records if r.value]
    finally:
        worker.stop()

    reasons = {r for snap in live.values() for item in snap.items for r in item.reasons}
    assert any(r.startswith("because you liked") for r in reasons)  # co-visitation at work
    for user in world.users:
        mine, theirs = live[user.user_id], expected[user.user_id]
        assert len(mine.items) == 10
        assert [i.item_id for i in mine.items] == [i.item_id for i in theirs.items], user.user_id
        assert [i.score for i in mine.items] == pytest.approx([i.score for i in theirs.items])
        assert [i.reasons for i in mine.items] == [i.reasons for i in theirs.items]
        assert mine.model_version == theirs.model_version
    # not only the end: every snapshot along the way is the one the replay made
    compared = 0
    for snap in every:
        replayed = expected_every.get(snap.source_event_id)
        if replayed is not None:
            compared += 1
            assert [i.item_id for i in snap.items] == [i.item_id for i in replayed.items]
            assert [i.score for i in snap.items] == pytest.approx([i.score for i in replayed.items])
    assert compared == len(log) + len(probes)
