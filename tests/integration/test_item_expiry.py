"""Items without a catalog record leave every worker after their TTL, through the broker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from operators.synthetic import SyntheticWorld
from pipeline.settings import Settings
from schemas.events import Click, Event
from tests.integration.harness import Harness, Record

pytestmark = pytest.mark.integration


def _click(n: int, item: str) -> Event:
    now = datetime.now(UTC)  # event time now: the TTL runs from it on the worker's clock
    return Click(type="click", event_id=f"alice-e{n}", user_id="alice", item_id=item,
                 timestamp=now)  # fmt: skip


def _states(records: list[Record], key: bytes) -> list[bytes | None]:
    return [r.value for r in records if r.key == key]


def test_an_uncatalogued_items_state_is_tombstoned_after_the_ttl_and_catalogued_ones_stay(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    world = SyntheticWorld.generate(seed=5, n_items=12, n_users=1, n_categories=3)
    limits = kafka_settings.limits.model_copy(update={"uncatalogued_item_ttl_s": 3.0})
    settings = kafka_settings.model_copy(update={"limits": limits})
    harness = Harness(settings, tmp_path)
    harness.send_items(world.items)
    known = world.items[0].item_id
    worker = harness.worker()
    worker.start()
    try:
        assert harness.wait_for_count("item-state", len(world.items)), worker.log_tail()
        harness.send_and_wait([_click(1, "ghost-1"), _click(2, known)])

        def expired(records: list[Record]) -> bool:
            states = _states(records, b"ghost-1")
            return len(states) >= 2 and states[0] is not None and states[-1] is None

        records = harness.read("item-state", expired, timeout_s=45)
        assert expired(records), f"no tombstone for ghost-1: {worker.log_tail()}"
        assert all(s is not None for s in _states(records, known.encode()))
        # the items table on the owner lost it too: a tombstone on its changelog
        changelog = f"{settings.worker.app_id}-items-changelog"
        with harness.tail(changelog, full_name=True) as tail:
            gone = lambda: [r.value for r in tail.records if r.key == b'"ghost-1"'][-1:] == [None]  # noqa: E731
            assert tail.read_until(lambda _: gone(), timeout_s=30)
        # later feedback starts a new state, which expires again in its turn
        harness.send_and_wait([_click(3, "ghost-1")])
        again = harness.read(
            "item-state", lambda rs: _states(rs, b"ghost-1").count(None) >= 2, timeout_s=45
        )
        assert _states(again, b"ghost-1").count(None) == 2, worker.log_tail()
    finally:
        worker.stop()
