"""process_event (operators/feedback_loop.py): one turn of the loop for one user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from operators.catalog import Catalog
from operators.feedback_loop import (
    ItemFeedback,
    LoopConfig,
    Step,
    current_snapshot,
    process_event,
)
from operators.profile import ProfileLimits, UserProfile
from operators.ranking import MODEL_VERSION
from operators.synthetic import SyntheticWorld
from schemas.events import Click, Context, Dwell, Event, Impression, NotRelevant, Skip
from schemas.snapshot import Snapshot, parse_snapshot, snapshot_to_json

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _click(event_id: str, item_id: str, when: datetime = T0, user: str = "u1") -> Click:
    return Click(type="click", event_id=event_id, user_id=user, item_id=item_id, timestamp=when)


def _run(
    events: list[Event], catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> list[Step]:
    """Feed events through the loop the way the agent does, one user's state carried over."""
    steps: list[Step] = []
    profile: UserProfile | None = None
    for event in events:
        step = process_event(event, profile, catalog, config, generated_at=generated_at)
        profile = step.profile
        steps.append(step)
    return steps


def _snapshot(step: Step) -> Snapshot:
    assert step.snapshot is not None
    return step.snapshot


def test_the_first_event_of_a_new_user_produces_snapshot_version_1(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    step = process_event(_click("e1", "item-00000"), None, catalog, config, generated_at)

    snapshot = _snapshot(step)
    assert step.profile.user_id == "u1" and step.profile.events_applied == 1
    assert (snapshot.user_id, snapshot.version, snapshot.source_event_id) == ("u1", 1, "e1")
    assert snapshot.generated_at == generated_at
    assert snapshot.event_time == T0
    assert snapshot.model_version == MODEL_VERSION
    assert len(snapshot.items) == config.ranking.k
    assert not step.duplicate


def test_snapshot_versions_increase_by_one_per_event(
    world: SyntheticWorld, catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    events = world.events_for(world.users[0], 40)

    steps = _run(events, catalog, config, generated_at)

    assert [_snapshot(s).version for s in steps] == list(range(1, 41))
    assert [_snapshot(s).source_event_id for s in steps] == [e.event_id for e in events]
    assert steps[-1].profile.events_applied == 40


def test_a_duplicate_event_changes_nothing_and_publishes_nothing(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    first = process_event(_click("e1", "item-00000"), None, catalog, config, generated_at)

    again = process_event(_click("e1", "item-00000"), first.profile, catalog, config, generated_at)

    assert again.snapshot is None and again.duplicate
    assert again.profile == first.profile
    assert again.feedback == ()


def test_a_duplicate_id_is_recognised_whatever_its_content(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    first = process_event(_click("e1", "item-00000"), None, catalog, config, generated_at)
    replayed = Skip(
        type="skip",
        event_id="e1",
        user_id="u1",
        item_id="item-00005",
        timestamp=T0 + timedelta(minutes=1),
    )

    step = process_event(replayed, first.profile, catalog, config, generated_at)

    assert step.duplicate and step.profile == first.profile


def test_duplicates_interleaved_in_a_stream_do_not_advance_the_version(
    world: SyntheticWorld, catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    events = world.events_for(world.users[1], 10)
    with_replays = [e for event in events for e in (event, event)]

    steps = _run(with_replays, catalog, config, generated_at)

    published = [s.snapshot.version for s in steps if s.snapshot is not None]
    assert published == list(range(1, 11))
    assert steps[-1].profile.events_applied == 10


def test_a_clicked_item_disappears_from_the_recommendations(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    before = process_event(_click("e0", "item-00001"), None, catalog, config, generated_at)
    top = _snapshot(before).items[0].item_id

    after = process_event(_click("e1", top), before.profile, catalog, config, generated_at)

    assert top not in [item.item_id for item in _snapshot(after).items]


def test_not_relevant_blocks_the_item_from_every_later_snapshot(
    world: SyntheticWorld, catalog: Catalog, generated_at: datetime
) -> None:
    user = world.users[2]
    limits = ProfileLimits(history_size=5)  # so only the block keeps it out, not the history
    config = LoopConfig(limits=limits)
    target = "item-00013"
    rejected = NotRelevant(
        type="not_relevant",
        event_id="nr",
        user_id=user.user_id,
        item_id=target,
        timestamp=T0 - timedelta(days=400),
    )
    later: list[Event] = [rejected]
    for n, event in enumerate(world.events_for(user, 150)):
        later.append(event)
        if n % 10 == 0:
            later.append(world.impression(user, [target, "item-00014"], n))

    steps = _run(later, catalog, config, generated_at)

    assert len([s for s in steps if s.snapshot is not None]) == len(later)
    assert all(target not in [item.item_id for item in _snapshot(step).items] for step in steps)
    assert target in steps[-1].profile.blocked


def test_a_blocked_item_stays_blocked_after_a_later_click(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    rejected = NotRelevant(
        type="not_relevant", event_id="nr", user_id="u1", item_id="item-00020", timestamp=T0
    )

    steps = _run(
        [rejected, _click("c", "item-00020", T0 + timedelta(minutes=1))],
        catalog,
        config,
        generated_at,
    )

    assert "item-00020" in steps[-1].profile.blocked


def test_the_liked_category_leads_after_a_few_clicks(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    # items are round-robin over 6 categories: 0, 6, 12 are all drama
    clicks: list[Event] = [
        _click(f"e{n}", f"item-{6 * n:05d}", T0 + timedelta(minutes=n)) for n in range(3)
    ]

    snapshot = _snapshot(_run(clicks, catalog, config, generated_at)[-1])

    # 10 drama items, 3 of them consumed: the other 7 lead the list
    assert [item.category for item in snapshot.items[:7]] == ["drama"] * 7
    assert "drama" not in {item.category for item in snapshot.items[7:]}
    assert all("because you like drama" in item.reasons for item in snapshot.items[:7])


def test_a_synthetic_user_is_shown_their_hidden_taste(
    world: SyntheticWorld, catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    user = world.users[0]
    liked = {c for c, p in user.taste.items() if p > 0.5}

    snapshot = _snapshot(_run(world.events_for(user, 30), catalog, config, generated_at)[-1])

    assert snapshot.items[0].category in liked


def test_each_item_event_sends_one_feedback_record_to_the_item(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    step = process_event(_click("e1", "item-00002"), None, catalog, config, generated_at)

    weight = config.signals.implicit_weight
    assert step.feedback == (ItemFeedback("item-00002", 1.0, weight, T0, "e1", user_id="u1"),)


def test_an_impression_sends_weak_negatives_for_every_item_shown(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    shown = Impression(
        type="impression",
        event_id="imp",
        user_id="u1",
        timestamp=T0,
        item_ids=["item-00001", "item-00002", "not-in-catalog"],
    )

    step = process_event(shown, None, catalog, config, generated_at)

    assert [f.item_id for f in step.feedback] == ["item-00001", "item-00002", "not-in-catalog"]
    assert all(f.target == config.signals.impression_target for f in step.feedback)
    assert step.profile.history == ()  # shown is not consumed
    assert _snapshot(step).version == 1


def test_being_shown_pushes_the_users_embedding_weakly_and_keeps_their_recent_likes(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    liked = [f"item-{n:05d}" for n in range(1, 6)]
    profile = None
    for n, item_id in enumerate(liked):
        profile = process_event(
            _click(f"c{n}", item_id), profile, catalog, config, generated_at
        ).profile
    assert profile is not None
    affinity = dict(profile.affinity)

    shown = [*liked, *(f"item-{n:05d}" for n in range(6, 36))]  # the likes, and 30 more
    after = profile
    for n in range(3):  # the same list, shown three times without a click
        impression = Impression(type="impression", event_id=f"imp{n}", user_id="u1",
                                timestamp=T0, item_ids=shown)  # fmt: skip
        after = process_event(impression, after, catalog, config, generated_at).profile

    # no decay (it took 0.9 per item shown: 0.9^105 of the taste left): the embedding is
    # what the likes built plus the weak pushes, exactly
    strength = config.signals.impression_target * config.signals.implicit_weight
    pushes = 3 * strength * sum(catalog.unit(i) for i in shown)  # type: ignore[misc]
    assert np.allclose(np.array(after.vector), np.array(profile.vector) + pushes, atol=1e-4)
    assert after.recent_positives == profile.recent_positives
    # the weak negatives are for the items shown, and the categories they are in
    assert any(after.affinity[c] < affinity.get(c, 0.0) for c in after.affinity)


def test_dwell_is_judged_against_the_catalog_duration(
    world: SyntheticWorld, catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    long_item = next(i for i in world.items if i.duration_ms == 1_800_000.0)
    watched = Dwell(
        type="dwell",
        event_id="d1",
        user_id="u1",
        item_id=long_item.item_id,
        timestamp=T0,
        dwell_ms=40_000,
    )
    unknown = Dwell(
        type="dwell",
        event_id="d2",
        user_id="u1",
        item_id="not-in-catalog",
        timestamp=T0,
        dwell_ms=40_000,
    )

    on_long = process_event(watched, None, catalog, config, generated_at)
    on_unknown = process_event(unknown, None, catalog, config, generated_at)

    assert on_long.feedback[0].target < 0  # 40 s of a 30 min show: barely started
    assert long_item.item_id not in on_long.profile.history
    assert on_unknown.feedback[0].target == 1.0  # 40 s is a long dwell by the thresholds
    assert on_unknown.profile.history == ("not-in-catalog",)


def test_an_event_about_an_unknown_item_still_updates_the_user(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    step = process_event(_click("e1", "brand-new"), None, catalog, config, generated_at)

    assert step.profile.history == ("brand-new",)
    assert step.profile.affinity == {}
    assert _snapshot(step).version == 1


def test_ranking_decays_popularity_to_the_event_time(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    half_life = config.ranking.popularity_half_life_s
    two_half_lives_ago = T0 - timedelta(seconds=2 * half_life)
    recent, old = catalog.get("item-00030"), catalog.get("item-00031")
    assert recent is not None and old is not None
    catalog.put(recent.with_feedback(1.0, T0, half_life))
    for _ in range(3):
        old = old.with_feedback(1.0, two_half_lives_ago, half_life)
    catalog.put(old)

    now = process_event(_click("e1", "brand-new", T0), None, catalog, config, generated_at)
    back_then = process_event(
        _click("e1", "brand-new", two_half_lives_ago), None, catalog, config, generated_at
    )

    assert _snapshot(now).items[0].item_id == "item-00030"  # 1 now beats 3 quartered
    assert _snapshot(back_then).items[0].item_id == "item-00031"


def test_a_replay_of_the_same_events_reaches_the_same_snapshots(
    world: SyntheticWorld, catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    events = world.events_for(world.users[3], 60)

    first = _run(events, catalog, config, generated_at)
    second = _run(events, Catalog.restore(catalog.snapshot()), config, generated_at)

    assert first == second


def test_snapshots_satisfy_the_published_contract(
    world: SyntheticWorld, catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    steps = _run(world.events_for(world.users[4], 20), catalog, config, generated_at)

    for step in steps:
        snapshot = _snapshot(step)
        assert parse_snapshot(snapshot_to_json(snapshot)) == snapshot


def test_a_restored_profile_continues_where_it_left_off(
    world: SyntheticWorld, catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    events = world.events_for(world.users[0], 30)
    straight = _run(events, catalog, config, generated_at)
    halfway = _run(events[:15], catalog, config, generated_at)[-1].profile

    resumed = UserProfile.restore(halfway.snapshot())
    rest = []
    for event in events[15:]:
        step = process_event(event, resumed, catalog, config, generated_at)
        resumed = step.profile
        rest.append(step)

    assert rest == straight[15:]


def test_item_feedback_round_trips_through_json() -> None:
    offset = T0.astimezone(UTC) + timedelta(microseconds=7)
    feedback = ItemFeedback("item-1", -0.3, 0.75, offset, "e-1")

    assert ItemFeedback.from_json(feedback.to_json()) == feedback


# -- co-visitation feedback ----------------------------------------------------------


def test_a_new_like_is_counted_with_the_previous_likes_both_ways(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    events: list[Event] = [
        _click("e1", "item-00001"),
        _click("e2", "item-00002", T0 + timedelta(minutes=1)),
        _click("e3", "item-00003", T0 + timedelta(minutes=2)),
    ]
    steps = _run(events, catalog, config, generated_at)

    third = [(f.item_id, f.kind, f.co_items) for f in steps[2].feedback]
    assert third == [
        ("item-00003", "signal", ("item-00001", "item-00002")),
        ("item-00001", "covisit", ("item-00003",)),
        ("item-00002", "covisit", ("item-00003",)),
    ]
    assert steps[2].profile.recent_positives == ("item-00001", "item-00002", "item-00003")


def test_liking_the_same_item_again_adds_no_covisits(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    dwell = Dwell(type="dwell", event_id="e3", user_id="u1", item_id="item-00002",
                  dwell_ms=300_000.0, timestamp=T0 + timedelta(minutes=2))  # fmt: skip
    steps = _run(
        [_click("e1", "item-00001"), _click("e2", "item-00002", T0 + timedelta(minutes=1)), dwell],
        catalog, config, generated_at,
    )  # fmt: skip

    assert [(f.kind, f.co_items) for f in steps[2].feedback] == [("signal", ())]


def test_the_covisit_window_bounds_the_fan_out(catalog: Catalog, generated_at: datetime) -> None:
    config = LoopConfig(covisit_window=2)
    events: list[Event] = [
        _click(f"e{n}", f"item-{n:05d}", T0 + timedelta(minutes=n)) for n in range(1, 6)
    ]
    steps = _run(events, catalog, config, generated_at)

    signal = steps[-1].feedback[0]
    assert signal.co_items == ("item-00003", "item-00004")
    assert len(steps[-1].feedback) == 3


def test_a_covisit_window_of_zero_counts_a_like_with_no_other(
    catalog: Catalog, generated_at: datetime
) -> None:
    config = LoopConfig(covisit_window=0)
    events: list[Event] = [
        _click(f"e{n}", f"item-{n:05d}", T0 + timedelta(minutes=n)) for n in range(1, 6)
    ]
    steps = _run(events, catalog, config, generated_at)

    assert [record.co_items for record in steps[-1].feedback] == [()]  # no covisit records


def test_a_disliked_item_leaves_the_recent_likes(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    nope = NotRelevant(type="not_relevant", event_id="e2", user_id="u1", item_id="item-00001",
                       timestamp=T0 + timedelta(minutes=1))  # fmt: skip
    steps = _run([_click("e1", "item-00001"), nope], catalog, config, generated_at)

    assert steps[0].profile.recent_positives == ("item-00001",)
    assert steps[1].profile.recent_positives == ()


def test_forget_erases_the_profile_and_later_events_start_afresh(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    from operators.feedback_loop import apply_event
    from schemas.events import Forget

    steps = _run([_click("e1", "item-00000"), _click("e2", "item-00001")], catalog, config,
                 generated_at)  # fmt: skip
    remembered = steps[-1].profile
    forget = Forget(type="forget", event_id="f1", user_id="u1", timestamp=T0)

    step = process_event(forget, remembered, catalog, config, generated_at)

    assert step.forgotten and not step.duplicate and step.snapshot is None
    assert step.profile == UserProfile.new("u1")
    assert (step.feedback, step.adjustments) == ((), ())
    assert apply_event(forget, remembered, catalog, config).profile == UserProfile.new("u1")
    # the forgotten events' ids went with the profile: e1 again counts as new
    again = process_event(_click("e1", "item-00000"), step.profile, catalog, config, generated_at)
    assert _snapshot(again).version == 1 and again.profile.events_applied == 1
    assert again.profile.history == ("item-00000",)


def test_the_replay_drops_a_forgotten_users_profile(catalog: Catalog) -> None:
    from operators.evaluation import LoopRecommender
    from schemas.events import Forget

    recommender = LoopRecommender(
        [state.record for state in catalog if state.record is not None], snapshots=False
    )
    recommender.learn(_click("e1", "item-00000"))
    assert "u1" in recommender.profiles

    recommender.learn(Forget(type="forget", event_id="f1", user_id="u1", timestamp=T0))

    assert "u1" not in recommender.profiles


def test_a_late_event_is_ranked_at_the_users_newest_time(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    from dataclasses import replace

    from operators.ranking import rank_items

    # popularity that reads differently on the late event's day and on the user's newest
    for n, (likes, day) in enumerate([(10.0, -60), (1.0, 29), (3.0, 10)]):
        state = catalog.get(f"item-0001{n}")
        assert state is not None
        t = (T0 + timedelta(days=day)).timestamp()
        catalog.put(replace(state, popularity=likes, popularity_t=t, positives=int(likes)))
    steps = _run([_click("e1", "item-00000", T0 + timedelta(days=30))], catalog, config,
                 generated_at)  # fmt: skip
    late = process_event(_click("e2", "item-00001", T0), steps[-1].profile, catalog, config,
                         generated_at)  # fmt: skip

    now = (T0 + timedelta(days=30)).timestamp()
    expected = rank_items(late.profile, catalog, now, config.ranking, None, config.deescalation)
    assert _snapshot(late).event_time == T0  # the snapshot still names the event it answers
    assert [i.item_id for i in _snapshot(late).items] == [i.item_id for i in expected]
    assert [i.score for i in _snapshot(late).items] == [i.score for i in expected]


def test_a_lost_snapshot_is_rebuilt_as_its_event_produced_it(
    catalog: Catalog, config: LoopConfig, generated_at: datetime
) -> None:
    kids = Context(surface="kids")
    events: list[Event] = [
        Click(type="click", event_id=f"e{n}", user_id="u1", item_id=f"item-000{6 * n:02d}",
              timestamp=T0 + timedelta(minutes=n), context=kids)
        for n in range(6)
    ]  # fmt: skip
    events.append(NotRelevant(type="not_relevant", event_id="nr", user_id="u1",
                              item_id="item-00036", timestamp=T0 + timedelta(minutes=6),
                              context=kids))  # fmt: skip
    late = Click(type="click", event_id="late", user_id="u1", item_id="item-00001",
                 timestamp=T0 - timedelta(hours=3), context=kids)  # fmt: skip
    answered = _run([*events, late], catalog, config, generated_at)[-1]
    sent = _snapshot(answered)

    rebuilt = current_snapshot(late, answered.profile, catalog, config, generated_at)

    # what consumers had: the late event's time, the list ranked for its surface
    assert (rebuilt.version, rebuilt.source_event_id) == (sent.version, "late")
    assert rebuilt.event_time == sent.event_time == late.timestamp
    assert rebuilt.items == sent.items
