"""The catalog follower against the real broker: every partition, from the beginning."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from operators.catalog import ItemState
from operators.synthetic import SyntheticWorld
from pipeline.catalog_follower import CatalogFollower
from pipeline.settings import Settings
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def test_a_follower_started_on_a_new_topic_sees_every_later_record(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(kafka_settings, tmp_path)  # creates the topics just now
    follower = CatalogFollower(
        harness.bootstrap, harness.topic("item-state"), kafka_settings.kafka.partitions
    )
    follower.start()
    try:
        assert asyncio.run(follower.wait_caught_up(5))  # nothing there yet
        world = SyntheticWorld.generate(seed=2, n_items=30, n_users=1, n_categories=3)
        for item in world.items:
            state = ItemState(item_id=item.item_id, record=item)
            harness.producer.produce(harness.topic("item-state"), key=item.item_id.encode(),
                                     value=state.snapshot())  # fmt: skip
        harness.producer.produce(harness.topic("item-state"), key=b"item-00003", value=None)
        harness.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(follower.catalog) != 29:
            follower.drain()
            time.sleep(0.05)
    finally:
        follower.stop()
    assert len(follower.catalog) == 29  # 30 items, one tombstoned
    assert follower.catalog.get("item-00003") is None
    assert follower.catalog.get("item-00004") is not None
    assert follower.errors == []


def test_following_a_topic_that_does_not_exist_is_a_clear_error(kafka_bootstrap: str) -> None:
    follower = CatalogFollower(kafka_bootstrap, "recloop-no-such-topic.item-state", 4)
    with pytest.raises(RuntimeError, match="recloop topics create"):
        follower.start(timeout_s=2)
