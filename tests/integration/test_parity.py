"""The live pipeline and the offline replay agree: same operators, same recommendations."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from operators.catalog import Catalog, ItemState, apply_feedback
from operators.feedback_loop import process_event
from operators.model import RankingModel
from operators.profile import UserProfile
from operators.synthetic import SyntheticWorld
from pipeline.app import loop_config
from pipeline.settings import Settings
from schemas.events import Event, Impression
from schemas.snapshot import Snapshot
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def _probe(user_id: str, n: int, after: Event) -> Impression:
    """An event that teaches nothing (an impression of an unknown item): a fresh ranking."""
    return Impression(
        type="impression", event_id=f"probe-{user_id}-{n}", user_id=user_id,
        item_ids=["no-such-item"], timestamp=after.timestamp + timedelta(hours=1),
    )  # fmt: skip


def _replay(
    world: SyntheticWorld, log: list[Event], probes: list[Impression], settings: Settings
) -> tuple[dict[str, Snapshot], int]:
    """What `recloop evaluate` does: the same operators, item feedback applied at once."""
    config = loop_config(settings)
    catalog = Catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    profiles: dict[str, UserProfile] = {}
    model = RankingModel(learning_rate=settings.ranking.model_learning_rate)
    latest: dict[str, Snapshot] = {}
    item_updates = 0
    for event in [*log, *probes]:
        step = process_event(event, profiles.get(event.user_id), catalog, config,
                             event.timestamp, model)  # fmt: skip
        profiles[event.user_id] = step.profile
        if event not in probes:
            item_updates += len(step.feedback)
        for record in step.feedback:
            state = catalog.get(record.item_id) or ItemState(item_id=record.item_id)
            catalog.put(apply_feedback(state, record, config.items))
        assert step.snapshot is not None
        latest[event.user_id] = step.snapshot
    return latest, item_updates


def test_final_recommendations_agree_with_the_offline_replay(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    world = SyntheticWorld.generate(seed=21, n_items=40, n_users=4, n_categories=4)
    log = sorted(
        (e for user in world.users for e in world.events_for(user, 12)),
        key=lambda e: (e.timestamp, e.user_id),
    )
    probes = [_probe(u.user_id, 1, log[-1]) for u in world.users]
    expected, item_updates = _replay(world, log, probes, kafka_settings)

    harness = Harness(kafka_settings, tmp_path)
    harness.send_items(world.items)
    worker = harness.worker()
    worker.start()
    try:
        harness.wait_until_worker_sees_catalog()
        harness.send_events(log)
        last = {e.user_id: e.event_id for e in log}
        harness.snapshots(lambda s: all(u in s and s[u].source_event_id == e
                                        for u, e in last.items()))  # fmt: skip
        # every item update the replay made must have reached the worker before the probes
        # rank (the probes themselves change nothing); the follower fetches within ~10 ms
        assert harness.wait_for_count("item-state", len(world.items) + item_updates)
        time.sleep(0.5)
        harness.send_events(probes)
        wanted = {u.user_id: f"probe-{u.user_id}-1" for u in world.users}
        live = harness.snapshots(
            lambda s: all(u in s and s[u].source_event_id == e for u, e in wanted.items())
        )
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
