"""UserProfile and its folds (operators/profile.py): bounded, immutable, restorable."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from operators.embedding import EmbeddingParams
from operators.profile import (
    ProfileLimits,
    UserProfile,
    apply_signal,
    next_snapshot_version,
    record_event,
)
from operators.signals import Signal

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
LIMITS = ProfileLimits()
SMALL = ProfileLimits(history_size=5, dedupe_window=7, max_categories=3, max_blocked=4)


def _like(item_id: str) -> Signal:
    return Signal(item_id, 1.0, 0.75)


def _skip(item_id: str) -> Signal:
    return Signal(item_id, -0.3, 0.75)


def _not_relevant(item_id: str) -> Signal:
    return Signal(item_id, -1.0, 0.25, explicit=True)


def _busy_profile(limits: ProfileLimits, n: int = 300, categories: int = 10) -> UserProfile:
    """A profile after ``n`` events of every kind, over many items and categories."""
    profile = UserProfile.new("user-1")
    for k in range(n):
        profile = record_event(profile, f"e{k}", T0 + timedelta(seconds=k), limits)
        signal = [_like, _skip, _not_relevant][k % 3](f"item-{k}")
        profile = apply_signal(
            profile, signal, f"cat-{k % categories}", limits, blocks=signal.explicit
        )
        profile = next_snapshot_version(profile)
    return profile


def test_a_new_profile_is_empty() -> None:
    profile = UserProfile.new("user-1")

    assert profile.user_id == "user-1"
    assert (profile.events_applied, profile.snapshot_version, profile.last_event_at) == (0, 0, None)
    assert profile.excluded() == frozenset()
    assert not profile.has_seen("e1")


def test_recording_an_event_counts_it_and_remembers_its_id() -> None:
    profile = record_event(UserProfile.new("u"), "e1", T0, LIMITS)

    assert profile.events_applied == 1
    assert profile.has_seen("e1") and not profile.has_seen("e2")
    assert profile.last_event_at == T0.isoformat()


def test_a_later_event_moves_the_user_clock_forward() -> None:
    profile = record_event(UserProfile.new("u"), "e1", T0, LIMITS)

    later = record_event(profile, "e2", T0 + timedelta(minutes=5), LIMITS)

    assert datetime.fromisoformat(later.last_event_at or "") == T0 + timedelta(minutes=5)


def test_a_late_event_does_not_move_last_event_at_backwards() -> None:
    profile = record_event(UserProfile.new("u"), "e1", T0, LIMITS)

    late = record_event(profile, "e0", T0 - timedelta(hours=1), LIMITS)

    assert late.last_event_at == T0.isoformat()
    assert late.events_applied == 2 and late.has_seen("e0")


def test_lateness_compares_instants_not_wall_clock_text() -> None:
    profile = record_event(UserProfile.new("u"), "e1", T0, LIMITS)
    # 11:30 at +02:00 is 09:30 UTC: half an hour before T0 although it reads later
    earlier_instant = datetime(2026, 11, 22, 11, 30, tzinfo=timezone(timedelta(hours=2)))

    late = record_event(profile, "e0", earlier_instant, LIMITS)

    assert datetime.fromisoformat(late.last_event_at or "") == T0


def test_a_liked_item_raises_its_category_and_joins_the_history() -> None:
    profile = apply_signal(UserProfile.new("u"), _like("i1"), "drama", LIMITS)

    assert profile.affinity == {"drama": 0.75}
    assert profile.history == ("i1",)
    assert "i1" in profile.excluded()
    assert profile.blocked == ()


def test_the_excluded_set_is_kept_per_profile_and_a_changed_profile_has_its_own() -> None:
    liked = apply_signal(UserProfile.new("u"), _like("i1"), "drama", LIMITS)
    assert liked.excluded() is liked.excluded()  # asked twice, built once
    blocked = apply_signal(liked, _not_relevant("i2"), "drama", LIMITS, blocks=True)
    assert blocked.excluded() == {"i1", "i2"} and liked.excluded() == {"i1"}
    assert liked.evolve(history=("i3",)).excluded() == {"i3"}
    assert replace(liked, blocked=("i4",)).excluded() == {"i1", "i4"}


def test_a_skip_lowers_the_category_and_leaves_the_item_recommendable() -> None:
    profile = apply_signal(UserProfile.new("u"), _skip("i1"), "drama", LIMITS)

    assert profile.affinity["drama"] < 0
    assert profile.history == ()
    assert "i1" not in profile.excluded()


def test_not_relevant_blocks_the_item() -> None:
    profile = apply_signal(UserProfile.new("u"), _not_relevant("i1"), "drama", LIMITS, blocks=True)

    assert profile.blocked == ("i1",)
    assert "i1" in profile.excluded()
    assert profile.affinity["drama"] == pytest.approx(-0.25)


def test_an_unknown_category_leaves_the_affinities_alone() -> None:
    profile = apply_signal(UserProfile.new("u"), _like("i1"), None, LIMITS)

    assert profile.affinity == {}
    assert profile.history == ("i1",)


def test_affinities_add_up_per_category() -> None:
    profile = UserProfile.new("u")
    for n in range(4):
        profile = apply_signal(profile, _like(f"i{n}"), "drama", LIMITS)
    profile = apply_signal(profile, _skip("x"), "drama", LIMITS)

    assert profile.affinity["drama"] == pytest.approx(4 * 0.75 - 0.3 * 0.75)


def test_consuming_an_item_again_moves_it_to_the_newest_end_without_duplicates() -> None:
    profile = UserProfile.new("u")
    for item in ["a", "b", "c", "a"]:
        profile = apply_signal(profile, _like(item), None, LIMITS)

    assert profile.history == ("b", "c", "a")


def test_every_bound_holds_after_many_events() -> None:
    profile = _busy_profile(SMALL)

    assert len(profile.history) == SMALL.history_size
    assert len(profile.recent_event_ids) == SMALL.dedupe_window
    assert len(profile.affinity) == SMALL.max_categories
    assert len(profile.blocked) == SMALL.max_blocked
    assert profile.events_applied == 300 and profile.snapshot_version == 300


def test_the_bounds_keep_the_newest_entries() -> None:
    profile = _busy_profile(SMALL)

    assert profile.recent_event_ids == tuple(f"e{k}" for k in range(293, 300))
    assert profile.has_seen("e299") and not profile.has_seen("e292")
    assert profile.blocked == ("item-290", "item-293", "item-296", "item-299")
    assert profile.history[-1] == "item-299"


def test_the_default_bounds_hold_too() -> None:
    # 3,300 events: 1,100 blocks and 100 categories, past every default bound
    profile = _busy_profile(LIMITS, n=3_300, categories=100)

    assert len(profile.history) == LIMITS.history_size
    assert len(profile.recent_event_ids) == LIMITS.dedupe_window
    assert len(profile.blocked) == LIMITS.max_blocked
    assert len(profile.affinity) == LIMITS.max_categories


def test_over_the_category_bound_the_strongest_feelings_survive_either_way() -> None:
    limits = ProfileLimits(max_categories=3)
    profile = UserProfile.new("u")
    profile = apply_signal(profile, Signal("i1", 1.0, 1.0), "loved", limits)
    profile = apply_signal(profile, Signal("i2", -1.0, 0.9), "hated", limits)
    profile = apply_signal(profile, Signal("i3", 0.3, 0.75), "meh", limits)
    profile = apply_signal(profile, Signal("i4", 1.0, 0.75), "new", limits)

    assert set(profile.affinity) == {"loved", "hated", "new"}


def test_a_new_interest_gets_in_when_every_kept_category_is_as_strong() -> None:
    # every kept category holds one click's worth; the newcomer's first click ties with
    # them, and it must not be the one trimmed, or no new interest could ever get in
    limits = ProfileLimits(max_categories=4)
    profile = UserProfile.new("u")
    for n, category in enumerate(["a", "b", "c", "d"]):
        profile = apply_signal(profile, _like(f"i{n}"), category, limits)
    for n in range(10):
        profile = apply_signal(profile, _like(f"anime-{n}"), "anime", limits)

    assert profile.affinity["anime"] == pytest.approx(10 * 1.0 * 0.75)
    assert len(profile.affinity) == 4


def test_folds_return_new_profiles_and_leave_the_old_one_alone() -> None:
    before = apply_signal(UserProfile.new("u"), _like("i1"), "drama", LIMITS)
    frozen_copy = UserProfile.restore(before.snapshot())

    after = apply_signal(before, _like("i2"), "drama", LIMITS)
    after = record_event(after, "e9", T0, LIMITS)
    after = next_snapshot_version(after)

    assert before == frozen_copy
    assert after != before
    assert before.affinity == {"drama": 0.75}


def test_profiles_are_frozen() -> None:
    profile = UserProfile.new("u")

    with pytest.raises(FrozenInstanceError):
        profile.events_applied = 5  # type: ignore[misc]


def test_evolve_is_replace_and_refuses_a_field_the_profile_lacks() -> None:
    profile = apply_signal(UserProfile.new("u"), _like("i1"), "drama", LIMITS)

    evolved = profile.evolve(events_applied=7, paused=("category:drama",))

    assert evolved == replace(profile, events_applied=7, paused=("category:drama",))
    assert profile.events_applied == 0 and profile.paused == ()
    with pytest.raises(FrozenInstanceError):
        evolved.events_applied = 8  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field events"):
        profile.evolve(events=1)


def test_next_snapshot_version_adds_exactly_one() -> None:
    profile = UserProfile.new("u")

    assert next_snapshot_version(next_snapshot_version(profile)).snapshot_version == 2


def test_snapshot_and_restore_round_trip_exactly() -> None:
    profile = _busy_profile(SMALL)
    profile = apply_signal(profile, Signal("Zoë's pick 🎬", 1 / 3, 0.75), "ünïcode", SMALL)

    restored = UserProfile.restore(profile.snapshot())

    assert restored == profile
    assert restored.affinity == profile.affinity
    assert restored.snapshot() == profile.snapshot()


def test_a_restored_profile_keeps_deduplicating_and_excluding() -> None:
    profile = _busy_profile(SMALL)

    restored = UserProfile.restore(profile.snapshot())

    assert restored.has_seen("e299")
    assert restored.excluded() == profile.excluded()


def test_the_snapshot_is_compact_versioned_json() -> None:
    data = UserProfile.new("u").snapshot()

    assert isinstance(data, bytes)
    assert b" " not in data
    assert json.loads(data)["v"] == 1


def test_everything_consumed_stays_known_beyond_the_history() -> None:
    profile = _busy_profile(SMALL)  # 100 likes and 100 ratings-like signals, history of 5

    assert profile.consumed is not None
    assert all(profile.has_consumed(f"item-{k}") for k in range(0, 300, 3))  # every like
    assert not profile.has_consumed("item-1")  # a skip is not consumption
    assert UserProfile.restore(profile.snapshot()).has_consumed("item-0")


def test_the_user_embedding_follows_signals_about_catalogued_items() -> None:
    params = EmbeddingParams(dim=4)
    towards = np.array([1.0, 0.0, 0.0, 0.0])

    liked = apply_signal(UserProfile.new("u"), _like("a"), "drama", LIMITS, item_unit=towards,
                         embedding=params)  # fmt: skip
    unknown = apply_signal(liked, _like("b"), None, LIMITS)  # no unit: the vector stays

    assert liked.vector == (0.75, 0.0, 0.0, 0.0)
    assert unknown.vector == liked.vector
    assert UserProfile.restore(liked.snapshot()) == liked


def test_a_full_profile_stays_within_its_stated_size() -> None:
    # the default bounds, every one of them full, plus a 64-d embedding and a full filter
    profile = _busy_profile(LIMITS, n=3_300, categories=100)
    params = EmbeddingParams()
    vector = tuple(np.round(np.random.default_rng(1).standard_normal(params.dim), 6).tolist())

    size = len(replace(profile, vector=vector).snapshot())

    assert size < 32 * 1024  # docs/architecture.md states the bound


def test_the_hard_size_bound_holds_for_ids_json_must_escape() -> None:
    # the longest ids, of the one kind JSON writes at two bytes a character, in every
    # id-holding bound: 1,000 blocked, 500 event ids, 256 pauses, the history, the likes;
    # and the penalties, tags and affinities full, their keys scoped to the longest surface
    # (256 characters of four bytes each)
    from operators.catalog import ItemState
    from operators.feedback_loop import LoopConfig, apply_event
    from schemas.catalog import ItemRecord
    from schemas.events import Click, Context, NotRelevant, Preference

    config = LoopConfig()
    catalog = config.new_catalog()
    at = datetime(2026, 1, 10, tzinfo=UTC)

    def wide(n: int, kind: str) -> str:
        return f"{kind}{n}".ljust(128, '"')

    for n in range(1_000):
        record = ItemRecord(item_id=wide(n, "i"), category=wide(n % 100, "g"),
                            creator=wide(n, "r"), created_at=at)  # fmt: skip
        catalog.put(ItemState(item_id=record.item_id, record=record))
    surface = Context(surface="\U0001f600" * 256)
    profile = None
    for n in range(1_000):
        event = NotRelevant(type="not_relevant", event_id=wide(n, "e"), user_id="u",
                            item_id=wide(n, "i"), timestamp=at + timedelta(seconds=n),
                            context=surface)  # fmt: skip
        profile = apply_event(event, profile, catalog, config).profile
    for n in range(600):
        click = Click(type="click", event_id=wide(n, "k"), user_id="u", item_id=wide(n, "l"),
                      timestamp=at)  # fmt: skip
        profile = apply_event(click, profile, catalog, config).profile
    for n in range(300):
        pause = Preference(type="preference", action="pause_category", event_id=wide(n, "p"),
                           user_id="u", category=wide(n, "c"), timestamp=at)  # fmt: skip
        profile = apply_event(pause, profile, catalog, config).profile
    assert profile is not None
    assert len(profile.blocked) == config.limits.max_blocked and len(profile.paused) == 256
    assert len(profile.affinity) == config.limits.max_categories
    assert len(profile.penalties) == config.deescalation.max_penalties

    assert len(profile.evidence) == config.limits.max_categories
    size = len(profile.snapshot())

    assert 600 * 1024 < size < 660 * 1024  # docs/architecture.md states the bound


def test_an_id_over_128_bytes_is_refused_though_it_has_only_128_characters() -> None:
    from pydantic import ValidationError

    from schemas.events import Click

    at = datetime(2026, 1, 10, tzinfo=UTC)
    Click(type="click", event_id="e", user_id="u", item_id="\U0001f600" * 32, timestamp=at)
    with pytest.raises(ValidationError, match="at most 128 bytes"):
        Click(type="click", event_id="e", user_id="u", item_id="\U0001f600" * 33, timestamp=at)
    # and a profile keeps such characters as UTF-8, 4 bytes each (not 12 as \\ud83d\\ude00):
    # the id is in the history and the recent likes, 96 bytes longer than 32 ASCII ones
    wide, plain = (
        apply_signal(UserProfile.new("u"), Signal(item_id, 1.0, 0.75), None, LIMITS)
        for item_id in ("\U0001f600" * 32, "x" * 32)
    )
    assert len(wide.snapshot()) - len(plain.snapshot()) == 2 * 96
    assert UserProfile.restore(wide.snapshot()) == wide


def test_each_category_counts_the_likes_and_misses_it_got() -> None:
    profile = UserProfile.new("u")
    shown = Signal("i3", -0.05, 0.75, shown_only=True)
    for signal, category in [(_like("i1"), "drama"), (_like("i2"), "drama"),
                             (_skip("i3"), "drama"), (shown, "comedy"),
                             (_not_relevant("i4"), "comedy"), (Signal("i5", 0.3, 0.75), "anime"),
                             (_like("i6"), None)]:  # fmt: skip
        profile = apply_signal(profile, signal, category, LIMITS)

    # a short dwell (0.3) is neither a like nor a miss; an unknown category counts nowhere
    assert profile.evidence == {"drama": (2, 1), "comedy": (0, 2)}
    assert UserProfile.restore(profile.snapshot()) == profile


def test_the_evidence_is_bounded_with_the_affinities() -> None:
    profile = _busy_profile(SMALL, n=300, categories=10)

    assert set(profile.evidence) <= set(profile.affinity)
    assert len(profile.evidence) <= SMALL.max_categories


def test_a_snapshot_from_before_the_evidence_restores_without_it() -> None:
    raw = json.loads(_busy_profile(SMALL).snapshot())
    del raw["evidence"]

    restored = UserProfile.restore(json.dumps(raw).encode())

    assert restored.evidence == {}


def test_pushing_an_item_moves_it_to_the_newest_place_once() -> None:
    from operators.profile import _push

    assert _push(("a", "b", "c"), "a", 3) == ("b", "c", "a")
    assert _push(("a", "b", "c"), "d", 3) == ("b", "c", "d")
    assert _push(("a", "b", "a", "c"), "a", 10) == ("b", "c", "a")  # a restored duplicate
    assert _push((), "a", 2) == ("a",)
