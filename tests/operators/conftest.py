"""Operator-tier fixtures: a seeded synthetic world and a catalog built from it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from operators.catalog import Catalog, ItemState
from operators.feedback_loop import LoopConfig
from operators.synthetic import SyntheticWorld

#: The injected wall clock for every snapshot these tests generate.
GENERATED_AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def world() -> SyntheticWorld:
    """60 items over 6 categories (round-robin) and 5 users with hidden tastes."""
    return SyntheticWorld.generate(seed=11, n_items=60, n_users=5, n_categories=6)


@pytest.fixture
def catalog(world: SyntheticWorld) -> Catalog:
    """Every item of ``world``, available, with no feedback yet."""
    catalog = Catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    return catalog


@pytest.fixture
def config() -> LoopConfig:
    """The default rules, bounds and ranking weights."""
    return LoopConfig()


@pytest.fixture
def generated_at() -> datetime:
    """The injected wall-clock time."""
    return GENERATED_AT
