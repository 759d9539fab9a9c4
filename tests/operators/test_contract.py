"""One contract over every operator value: pickling, snapshot/restore, purity, determinism.

Values are rebuilt from scratch for every test from a seeded world, so no test can see
another's leftovers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from operators.catalog import Catalog, ItemState
from operators.feedback_loop import ItemFeedback, LoopConfig, Step, process_event
from operators.profile import ProfileLimits, UserProfile, apply_signal, record_event
from operators.ranking import RankingParams, rank_items
from operators.signals import Signal, SignalRules, impression_signals, signal_of
from operators.synthetic import SyntheticWorld
from operators.validation import InvalidEvent, ValidationLimits
from schemas.events import Click, Dwell, Event, Impression, NotRelevant, Rating, Skip

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
GENERATED_AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
HALF_LIFE = 3600.0


def _world() -> SyntheticWorld:
    return SyntheticWorld.generate(seed=5, n_items=24, n_users=2, n_categories=4)


def _catalog() -> Catalog:
    world = _world()
    catalog = Catalog()
    for n, item in enumerate(world.items):
        state = ItemState(item.item_id, record=item)
        for k in range(n % 3):
            state = state.with_feedback(1.0, T0 - timedelta(minutes=k), HALF_LIFE)
        catalog.put(state)
    catalog.put(ItemState("withdrawn", popularity=3.0, popularity_t=T0.timestamp()))
    return catalog


def _profile() -> UserProfile:
    world = _world()
    profile: UserProfile | None = None
    catalog = _catalog()
    for event in world.events_for(world.users[0], 25):
        profile = process_event(event, profile, catalog, LoopConfig(), GENERATED_AT).profile
    assert profile is not None
    return profile


def _step() -> Step:
    event = _events()["dwell"]
    return process_event(event, _profile(), _catalog(), LoopConfig(), GENERATED_AT)


def _events() -> dict[str, Event]:
    common: dict[str, Any] = {"user_id": "user-0000", "timestamp": T0}
    return {
        "click": Click(type="click", event_id="c", item_id="item-00001", **common),
        "skip": Skip(type="skip", event_id="s", item_id="item-00002", **common),
        "dwell": Dwell(type="dwell", event_id="d", item_id="item-00003", dwell_ms=5e4, **common),
        "not_relevant": NotRelevant(
            type="not_relevant", event_id="n", item_id="item-00004", reason="other", **common
        ),
        "rating": Rating(type="rating", event_id="r", item_id="item-00005", value=1.5, **common),
        "impression": Impression(
            type="impression", event_id="i", item_ids=["item-00006", "item-00007"], **common
        ),
        "unknown-item": Click(type="click", event_id="u", item_id="not-in-catalog", **common),
        "duplicate": Click(type="click", event_id="user-0000-e00003", item_id="x", **common),
    }


VALUES: dict[str, Callable[[], object]] = {
    "UserProfile": _profile,
    "UserProfile-new": lambda: UserProfile.new("u"),
    "ItemState": lambda: next(iter(_catalog())).with_feedback(1.0, T0, HALF_LIFE),
    "ItemState-removed": lambda: ItemState("gone", popularity=0.5, positives=1),
    "Catalog": _catalog,
    "LoopConfig": lambda: LoopConfig(
        signals=SignalRules(dwell_long_ms=1.0),
        limits=ProfileLimits(history_size=3),
        ranking=RankingParams(k=4),
    ),
    "Step": _step,
    "Step-duplicate": lambda: process_event(
        _events()["duplicate"], _profile(), _catalog(), LoopConfig(), GENERATED_AT
    ),
    "ItemFeedback": lambda: _step().feedback[0],
    "Signal": lambda: Signal("i", -0.3, 0.75),
    "SignalRules": SignalRules,
    "ProfileLimits": ProfileLimits,
    "RankingParams": RankingParams,
    "ValidationLimits": lambda: ValidationLimits(1024, 30.0, 1990),
    "SyntheticWorld": _world,
    "SyntheticUser": lambda: _world().users[1],
    "Snapshot": lambda: _step().snapshot,
    "ItemRecord": lambda: _world().items[0],
    **{f"event-{kind}": functools.partial(copy.copy, event) for kind, event in _events().items()},
}
RESTORABLE = ["UserProfile", "UserProfile-new", "ItemState", "ItemState-removed", "Catalog"]
FROZEN = [name for name in VALUES if name != "Catalog"]


def _same(left: object, right: object) -> bool:
    """Equality, by content for the one mutable container without ``__eq__``."""
    if isinstance(left, Catalog) and isinstance(right, Catalog):
        return left.snapshot() == right.snapshot() and all(
            right.get(state.item_id) == state for state in left
        )
    return left == right


def test_the_contract_covers_distinct_values() -> None:
    built = {name: make() for name, make in VALUES.items()}

    assert all(value is not None for value in built.values())
    assert isinstance(built["ItemFeedback"], ItemFeedback)
    assert isinstance(built["Step-duplicate"], Step) and built["Step-duplicate"].duplicate
    assert not _same(built["UserProfile"], built["UserProfile-new"])
    assert not _same(_catalog(), Catalog())


@pytest.mark.parametrize("name", VALUES)
def test_pickling_round_trips(name: str) -> None:
    value = VALUES[name]()

    restored = pickle.loads(pickle.dumps(value))

    assert type(restored) is type(value)
    assert _same(restored, value)


def test_invalid_event_pickling_round_trips() -> None:
    error = InvalidEvent("too_large", "70000 bytes")

    restored = pickle.loads(pickle.dumps(error))

    assert (restored.reason, restored.detail) == ("too_large", "70000 bytes")


@pytest.mark.parametrize("name", RESTORABLE)
def test_snapshot_and_restore_round_trip(name: str) -> None:
    value: Any = VALUES[name]()

    restored = type(value).restore(value.snapshot())

    assert _same(restored, value)
    assert restored.snapshot() == value.snapshot()
    assert isinstance(value.snapshot(), bytes)


@pytest.mark.parametrize("name", FROZEN)
def test_values_are_immutable(name: str) -> None:
    value = VALUES[name]()
    expected: type[Exception]
    if isinstance(value, BaseModel):
        field, expected = next(iter(type(value).model_fields)), ValidationError
    else:
        assert dataclasses.is_dataclass(value)
        field, expected = dataclasses.fields(value)[0].name, dataclasses.FrozenInstanceError
    before = copy.deepcopy(value)

    with pytest.raises(expected):
        setattr(value, field, None)
    assert value == before


@pytest.mark.parametrize("kind", list(_events()))
@pytest.mark.parametrize("new_user", [False, True], ids=["known-user", "new-user"])
def test_process_event_does_not_mutate_its_inputs(kind: str, new_user: bool) -> None:
    event, profile, catalog, config = _events()[kind], _profile(), _catalog(), LoopConfig()
    saved = copy.deepcopy((event, profile, catalog, config))

    step = process_event(event, None if new_user else profile, catalog, config, GENERATED_AT)

    assert event == saved[0]
    assert profile == saved[1] and profile.affinity == saved[1].affinity
    assert _same(catalog, saved[2])
    assert config == saved[3]
    assert step.duplicate == (kind == "duplicate" and not new_user)


@pytest.mark.parametrize("kind", list(_events()))
def test_process_event_is_deterministic(kind: str) -> None:
    def once() -> Step:
        return process_event(_events()[kind], _profile(), _catalog(), LoopConfig(), GENERATED_AT)

    first, second = once(), once()

    assert first == second
    assert pickle.dumps(first) == pickle.dumps(second)


def _pure_calls() -> dict[str, tuple[Callable[..., object], tuple[object, ...]]]:
    profile, catalog, events = _profile(), _catalog(), _events()
    impression = events["impression"]
    assert isinstance(impression, Impression)
    return {
        "rank_items": (rank_items, (profile, catalog, T0.timestamp(), RankingParams())),
        "apply_signal": (apply_signal, (profile, Signal("i", 1.0, 0.5), "x", ProfileLimits())),
        "record_event": (record_event, (profile, "e-new", T0, ProfileLimits())),
        "signal_of": (signal_of, (events["dwell"], 60_000.0, SignalRules())),
        "impression_signals": (impression_signals, (impression, SignalRules())),
        "with_feedback": (next(iter(catalog)).with_feedback, (1.0, T0, HALF_LIFE)),
        "events_for": (_world().events_for, (_world().users[0], 10)),
    }


@pytest.mark.parametrize("name", list(_pure_calls()))
def test_operators_are_pure(name: str) -> None:
    function, arguments = _pure_calls()[name]
    saved = copy.deepcopy(arguments)

    first = function(*arguments)
    second = function(*arguments)

    assert all(_same(now, before) for now, before in zip(arguments, saved, strict=True))
    assert first == second


def test_a_seed_makes_the_synthetic_world_repeatable() -> None:
    one, two = SyntheticWorld.generate(seed=9), SyntheticWorld.generate(seed=9)
    other = SyntheticWorld.generate(seed=10)

    assert one == two
    assert one.events_for(one.users[0], 50) == two.events_for(two.users[0], 50)
    assert other != one
    assert other.events_for(other.users[0], 50) != one.events_for(one.users[0], 50)
