"""Pipeline-tier fixtures: the real Faust app, driven through Faust's test context.

No broker: the memory store replaces RocksDB, a recording emitter replaces the producer and
a fixed catalog replaces the item-state follower.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from operators.catalog import Catalog, ItemState
from operators.synthetic import SyntheticWorld
from pipeline.app import Recloop
from tests.pipeline.doubles import RecordingEmitter, close_pipeline_app, pipeline_app

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(seed=3, n_items=40, n_users=4, n_categories=4)


@pytest.fixture
def emitter() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def batch() -> tuple[int, float]:
    """The agents' batch size and window (ms): one event at a time unless a test says so.

    A test of coalescing parametrizes it with ``(n, long window)`` and puts exactly ``n``
    events, so the batch is the same however slow the machine.
    """
    return 1, 5.0


@pytest.fixture
def partitions() -> int:
    """The events topic's partitions: one unless a test says so (each key's is then 0)."""
    return 1


@pytest_asyncio.fixture
async def recloop(
    world: SyntheticWorld, emitter: RecordingEmitter, batch: tuple[int, float], partitions: int
) -> AsyncIterator[Recloop]:
    catalog = Catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    env = {
        "RECLOOP__WORKER__BATCH_MAX": str(batch[0]),
        "RECLOOP__WORKER__BATCH_WINDOW_MS": str(batch[1]),
        "RECLOOP__KAFKA__PARTITIONS": str(partitions),
    }
    app, fatal = pipeline_app(catalog, env, emitter, NOW)
    yield app
    close_pipeline_app(app, fatal)
