"""rank_items (operators/ranking.py): what is recommended, in which order, and why."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from operators.bloom import Bloom
from operators.catalog import Catalog, ItemState
from operators.deescalation import DeescalationParams
from operators.profile import ProfileLimits, UserProfile, record_event
from operators.ranking import (
    RankingParams,
    candidate_features,
    drawn_categories,
    exploration_slots,
    rank_items,
    rank_rows,
)
from operators.synthetic import SyntheticWorld
from schemas.catalog import ItemRecord

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
NOW = T0.timestamp()
#: the ranking alone: no exploration slots, no cold-start cap (tested on their own below)
PARAMS = RankingParams(explore_min=0.0, explore_max=0.0, cold_start_category_cap=None)
ALL = replace(PARAMS, k=200)


def _ids(profile: UserProfile, catalog: Catalog, params: RankingParams = PARAMS) -> list[str]:
    return [item.item_id for item in rank_items(profile, catalog, NOW, params)]


def _boost(catalog: Catalog, item_id: str, times: int, when: datetime = T0) -> None:
    state = catalog.get(item_id)
    assert state is not None
    for _ in range(times):
        state = state.with_feedback(1.0, when, half_life_s=PARAMS.popularity_half_life_s)
    catalog.put(state)


def test_an_empty_catalog_recommends_nothing() -> None:
    assert rank_items(UserProfile.new("u"), Catalog(), NOW, PARAMS) == []


def test_a_new_user_gets_k_items_that_say_why(catalog: Catalog) -> None:
    ranked = rank_items(UserProfile.new("u"), catalog, NOW, PARAMS)

    assert len(ranked) == PARAMS.k
    assert all(item.reasons for item in ranked)
    # nothing is known yet: every item is offered as something to try, and says in what
    assert all(item.reasons == [f"something to try in {item.category}"] for item in ranked)


def test_k_is_honoured_and_a_small_catalog_is_returned_whole(catalog: Catalog) -> None:
    assert len(_ids(UserProfile.new("u"), catalog, replace(PARAMS, k=3))) == 3
    assert len(_ids(UserProfile.new("u"), catalog, ALL)) == len(catalog) == 60


def test_consumed_items_are_never_recommended(catalog: Catalog) -> None:
    profile = replace(UserProfile.new("u"), history=("item-00001", "item-00059"))

    shown = _ids(profile, catalog, ALL)

    assert "item-00001" not in shown and "item-00059" not in shown
    assert len(shown) == 58


def test_blocked_items_are_never_recommended_even_when_most_popular(catalog: Catalog) -> None:
    _boost(catalog, "item-00007", times=50)
    profile = replace(UserProfile.new("u"), blocked=("item-00007",))

    assert "item-00007" in _ids(UserProfile.new("u"), catalog)
    assert "item-00007" not in _ids(profile, catalog, ALL)


def test_unavailable_items_are_never_recommended(catalog: Catalog) -> None:
    withdrawn = catalog.get("item-00002")
    assert withdrawn is not None and withdrawn.record is not None
    catalog.put(withdrawn.with_record(withdrawn.record.model_copy(update={"available": False})))
    catalog.put(ItemState("item-unknown", popularity=99.0, popularity_t=NOW))
    _boost(catalog, "item-00002", times=50)

    shown = _ids(UserProfile.new("u"), catalog, ALL)

    assert "item-00002" not in shown and "item-unknown" not in shown
    assert len(shown) == 59


def test_scores_are_in_descending_order(catalog: Catalog) -> None:
    _boost(catalog, "item-00004", times=3)
    _boost(catalog, "item-00010", times=1)
    profile = replace(UserProfile.new("u"), affinity={"drama": 1.0, "comedy": -2.0})

    scores = [item.score for item in rank_items(profile, catalog, NOW, ALL)]

    assert scores == sorted(scores, reverse=True)


def test_ranking_is_deterministic_whatever_order_the_catalog_was_filled_in(
    world: SyntheticWorld,
) -> None:
    profile = replace(UserProfile.new("u"), affinity={"drama": 0.5})
    results = []
    for seed in range(4):
        catalog = Catalog()
        for record in random.Random(seed).sample(world.items, len(world.items)):
            catalog.put(ItemState(record.item_id, record=record))
        results.append(rank_items(profile, catalog, NOW, PARAMS))

    assert all(result == results[0] for result in results)


def test_ties_are_broken_by_item_id(catalog: Catalog) -> None:
    ranked = rank_items(UserProfile.new("u"), catalog, NOW, PARAMS)
    ids = [item.item_id for item in ranked]

    assert len({item.score for item in ranked}) == 1  # a genuine tie
    # among equal scores the lowest item id comes first
    assert ids == sorted(s.item_id for s in catalog)[: PARAMS.k]


def test_the_liked_category_comes_first_and_says_so(
    catalog: Catalog, world: SyntheticWorld
) -> None:
    profile = replace(UserProfile.new("u"), affinity={"thriller": 1.5, "drama": 0.2})

    ranked = rank_items(profile, catalog, NOW, ALL)

    thrillers = sum(1 for item in world.items if item.category == "thriller")
    assert [item.category for item in ranked[:thrillers]] == ["thriller"] * thrillers
    assert ranked[thrillers].category == "drama"
    assert "because you like thriller" in ranked[0].reasons


def test_a_disliked_category_sinks_below_unknown_ones(catalog: Catalog) -> None:
    profile = replace(UserProfile.new("u"), affinity={"drama": -3.0})

    ranked = rank_items(profile, catalog, NOW, ALL)

    assert {item.category for item in ranked[-10:]} == {"drama"}
    assert "drama" not in {item.category for item in ranked[:-10]}
    assert not any("because you like" in reason for reason in ranked[-1].reasons)


def test_popular_items_rise_and_say_so(catalog: Catalog) -> None:
    _boost(catalog, "item-00003", times=10)
    _boost(catalog, "item-00008", times=2)

    ranked = rank_items(UserProfile.new("u"), catalog, NOW, PARAMS)

    assert [item.item_id for item in ranked[:2]] == ["item-00003", "item-00008"]
    category = catalog.get("item-00003").category  # type: ignore[union-attr]
    assert ranked[0].reasons == [f"popular in {category}"]


def test_old_popularity_fades_against_recent_popularity(catalog: Catalog) -> None:
    long_ago = T0 - timedelta(seconds=10 * PARAMS.popularity_half_life_s)
    _boost(catalog, "item-00011", times=100, when=long_ago)
    _boost(catalog, "item-00012", times=1)

    assert _ids(UserProfile.new("u"), catalog)[0] == "item-00012"


def test_a_strong_affinity_can_outrank_popularity(catalog: Catalog) -> None:
    _boost(catalog, "item-00001", times=5)  # comedy
    profile = replace(UserProfile.new("u"), affinity={"drama": 10.0})

    affinity_led = replace(PARAMS, affinity_weight=1.0)
    top = rank_items(profile, catalog, NOW, affinity_led)[0]

    assert top.category == "drama"
    # with the default weights a single strong popularity signal still wins
    assert rank_items(profile, catalog, NOW, PARAMS)[0].item_id == "item-00001"


def test_the_weights_change_the_blend(catalog: Catalog) -> None:
    _boost(catalog, "item-00001", times=5)  # comedy
    profile = replace(UserProfile.new("u"), affinity={"drama": 10.0})
    popularity_only = replace(PARAMS, affinity_weight=0.0)

    assert _ids(profile, catalog, popularity_only)[0] == "item-00001"


def test_ranking_does_not_change_the_profile_or_the_catalog(catalog: Catalog) -> None:
    _boost(catalog, "item-00005", times=2)
    profile = replace(UserProfile.new("u"), affinity={"drama": 1.0}, history=("item-00000",))
    before_profile, before_catalog = profile.snapshot(), catalog.snapshot()

    rank_items(profile, catalog, NOW, PARAMS)

    assert profile.snapshot() == before_profile
    assert catalog.snapshot() == before_catalog


@pytest.mark.parametrize("k", [1, 10, 50])
def test_scores_are_finite_and_rounded(catalog: Catalog, k: int) -> None:
    _boost(catalog, "item-00005", times=3)
    profile = replace(UserProfile.new("u"), affinity={"drama": 1e300, "comedy": -1e300})

    ranked = rank_items(profile, catalog, NOW, replace(PARAMS, k=k))

    assert len(ranked) == k
    assert all(abs(item.score) <= 3.0 and round(item.score, 6) == item.score for item in ranked)


# -- co-visitation (the learning core's first candidate source) ----------------------


def _covisit(catalog: Catalog, a: str, b: str, times: int = 1) -> None:
    for one, other in ((a, b), (b, a)):
        state = catalog.get(one)
        assert state is not None
        catalog.put(state.with_covisits([other] * times, 1.0, max_neighbours=200))


def test_items_liked_together_are_recommended_with_the_reason(catalog: Catalog) -> None:
    _covisit(catalog, "item-00007", "item-00042", times=3)
    profile = replace(UserProfile.new("u"), recent_positives=("item-00007",),
                      history=("item-00007",))  # fmt: skip

    ranked = rank_items(profile, catalog, NOW, PARAMS)

    assert ranked[0].item_id == "item-00042"
    assert ranked[0].reasons[0] == "because you liked Comedy #7"
    assert "item-00007" not in [item.item_id for item in ranked]


def test_recent_used_zero_seeds_no_candidates_from_the_likes(catalog: Catalog) -> None:
    profile = replace(UserProfile.new("u"), recent_positives=("item-00007",),
                      history=("item-00007",))  # fmt: skip
    none_used = replace(PARAMS, recent_used=0)
    never_together = rank_items(profile, catalog, NOW, none_used)
    _covisit(catalog, "item-00007", "item-00042", times=3)

    ranked = rank_items(profile, catalog, NOW, none_used)

    # the like's co-visited neighbour is not pulled up: the list is as before
    assert ranked == never_together and ranked[0].item_id != "item-00042"


def test_recent_likes_count_more_than_older_ones(catalog: Catalog) -> None:
    _covisit(catalog, "item-00001", "item-00010")  # old like's neighbour
    _covisit(catalog, "item-00002", "item-00020")  # recent like's neighbour
    profile = replace(UserProfile.new("u"), recent_positives=("item-00001", "item-00002"))

    assert _ids(profile, catalog)[:2] == ["item-00020", "item-00010"]


def test_blockbusters_are_damped_by_their_popularity(catalog: Catalog) -> None:
    _covisit(catalog, "item-00001", "item-00010", times=2)
    _covisit(catalog, "item-00001", "item-00011", times=3)
    _boost(catalog, "item-00011", times=50)  # liked by everybody, with everything
    profile = replace(UserProfile.new("u"), recent_positives=("item-00001",))
    cosine_only = replace(PARAMS, trending_weight=0.0, affinity_weight=0.0)

    assert _ids(profile, catalog, cosine_only)[:2] == ["item-00010", "item-00011"]


def test_the_category_cap_diversifies_the_list(catalog: Catalog, world: SyntheticWorld) -> None:
    profile = replace(UserProfile.new("u"), affinity={"comedy": 5.0})
    comedy_led = replace(PARAMS, affinity_weight=1.0)
    capped = replace(PARAMS, affinity_weight=1.0, category_cap=3)

    uncapped_categories = [i.category for i in rank_items(profile, catalog, NOW, comedy_led)]
    capped_categories = [i.category for i in rank_items(profile, catalog, NOW, capped)]

    assert uncapped_categories.count("comedy") == 10
    assert capped_categories.count("comedy") == 3 and len(capped_categories) == 10


def test_work_does_not_grow_with_the_catalog_beyond_the_candidate_budgets(
    catalog: Catalog,
) -> None:
    for n in range(60):
        _boost(catalog, f"item-{n:05d}", times=1 + n % 7)
    tight = replace(PARAMS, k=5, trending_candidates=8, category_candidates=0)

    ranked = rank_items(UserProfile.new("u"), catalog, NOW, tight)

    assert len(ranked) == 5
    # only the 8 trending candidates were scored: the best 5 of them, by decayed popularity
    assert all(catalog.get(i.item_id).positives >= 5 for i in ranked)  # type: ignore[union-attr]


def test_the_model_only_reorders_the_heuristics_best(catalog: Catalog) -> None:
    from operators.model import RankingModel

    for n in range(12):
        _boost(catalog, f"item-{n:05d}", times=12 - n)  # a clear popularity order
    contrarian = RankingModel(learning_rate=0.5)
    for _ in range(300):  # learns to prefer the least popular
        contrarian.learn([{"trend": 0.0, "log_popularity": 0.0}],
                         [{"trend": 1.0, "log_popularity": 3.0}])  # fmt: skip
    params = replace(PARAMS, model_weight=1.0, model_warmup=1, model_rerank=3)
    profile = UserProfile.new("u")

    plain = _ids(profile, catalog)
    with_model = [i.item_id for i in rank_items(profile, catalog, NOW, params, contrarian)]

    assert set(with_model[:3]) == set(plain[:3]) and with_model[:3] != plain[:3]
    assert with_model[3:] == plain[3:]


def test_a_model_head_longer_than_the_search_window_still_gives_way_to_other_categories() -> None:
    # with more rows re-ranked than the cap's window looks at, the widened search skipped
    # the rows past the window: the cap gave way with other categories still there
    from operators.model import RankingModel

    catalog = Catalog()
    for n in range(40):
        _put_old(catalog, f"a{n:02d}", "a", likes=60 - n)
    for n in range(10):
        _put_old(catalog, f"b{n:02d}", f"b{n % 5}", likes=10 - n // 2)
    model = RankingModel()
    for _ in range(200):
        model.learn([{"trend": 1.0}], [{"trend": 0.0}])
    params = replace(DEFAULTS, model_rerank=50, model_warmup=1, explore_max=0.0, explore_min=0.0)

    ranked = rank_items(UserProfile.new("u"), catalog, NOW, params, model)
    categories = Counter(item.category for item in ranked)

    assert len(ranked) == DEFAULTS.k
    assert max(categories.values()) <= DEFAULTS.cold_start_category_cap


# -- exploration, cold start, embeddings and the consumed-set filter --------------------

DEFAULTS = RankingParams()


def _consumed(profile: UserProfile, n: int) -> UserProfile:
    """The profile of a user who consumed ``n`` items outside this catalog."""
    bloom = Bloom.empty(2000)
    for i in range(n):
        bloom = bloom.add(f"elsewhere-{i}")
    return replace(profile, consumed=bloom)


def test_exploration_shrinks_as_recloop_learns_the_user_but_never_vanishes() -> None:
    new = exploration_slots(UserProfile.new("u"), DEFAULTS)
    some = exploration_slots(_consumed(UserProfile.new("u"), 20), DEFAULTS)
    lots = exploration_slots(_consumed(UserProfile.new("u"), 1500), DEFAULTS)

    assert new == 3 and some == 2 and lots == 1
    assert exploration_slots(UserProfile.new("u"), replace(DEFAULTS, explore_max=0.0)) == 0


def test_the_last_slots_go_to_the_long_tail_and_say_so(catalog: Catalog) -> None:
    for n in range(20):
        _boost(catalog, f"item-{n:05d}", times=30 - n)  # a popular head...
    taste = catalog.unit("item-00035")  # the user's embedding brings in tail items too
    assert taste is not None
    # a well-known user: 1 slot
    profile = replace(_consumed(UserProfile.new("u"), 1500), vector=tuple(taste.tolist()))
    params = replace(DEFAULTS, trending_candidates=20, fresh_candidates=0, similarity_weight=0.0)

    ranked = rank_items(profile, catalog, NOW, params)

    assert len(ranked) == 10
    head = {f"item-{n:05d}" for n in range(20)}
    assert all(item.item_id in head for item in ranked[:9])
    assert ranked[9].item_id not in head
    assert any(r.startswith("a lesser-known pick") for r in ranked[9].reasons)


CATEGORIES = ["comedy", "documentary", "drama", "romance", "sci-fi", "thriller"]


def _known(evidence: dict[str, tuple[int, int]], lists: int = 0) -> UserProfile:
    """A well-known user (1 exploration slot) with this evidence, after ``lists`` lists."""
    profile = _consumed(UserProfile.new("u"), 1500)
    affinity = {c: float(likes - misses) for c, (likes, misses) in evidence.items()}
    return replace(profile, evidence=evidence, affinity=affinity, snapshot_version=lists)


def test_category_draws_are_repeatable_and_follow_the_evidence(catalog: Catalog) -> None:
    params = replace(DEFAULTS, explore_categories=1)
    missed = {"drama": (1, 200)}  # shown often, almost never liked
    loved = {"drama": (200, 1)}

    draws = [drawn_categories(_known(missed, n), catalog, params) for n in range(300)]
    favourite = [drawn_categories(_known(loved, n), catalog, params) for n in range(300)]

    assert all(len(d) == 1 for d in draws)
    assert draws == [drawn_categories(_known(missed, n), catalog, params) for n in range(300)]
    tried = [d[0] for d in draws]
    assert tried.count("drama") == 0  # the evidence says no: never worth a slot
    # every category the user has no evidence for gets tried, about alike (60 each)
    assert all(35 < tried.count(c) < 85 for c in CATEGORIES if c != "drama")
    # a loved category is drawn mostly, unknown ones still now and then
    assert 150 < [d[0] for d in favourite].count("drama") < 300
    assert drawn_categories(_known(missed, 1), catalog, replace(params, k=10)) == draws[1]
    assert drawn_categories(_known(missed), catalog, DEFAULTS) == ()  # off by default
    assert drawn_categories(UserProfile.new("u"), catalog, params) == ()  # cold start
    assert drawn_categories(_known(missed), Catalog(), params) == ()


def test_category_draws_do_not_depend_on_the_order_items_arrived(catalog: Catalog) -> None:
    # a worker's catalog fills in the order its partitions deliver, the replay's in file order
    reversed_ = Catalog()
    for state in reversed(list(catalog)):
        reversed_.put(state)
    params = replace(DEFAULTS, explore_categories=2)

    for n in range(50):
        profile = _known({"drama": (2, 5)}, n)
        assert drawn_categories(profile, catalog, params) == drawn_categories(
            profile, reversed_, params
        )


def test_the_learner_draws_as_the_list_it_learns_from(catalog: Catalog) -> None:
    # the learner ranks the profile the like has just been counted in: same draws, so the
    # candidates a replay gathered for the question are re-used, not gathered again
    params = replace(DEFAULTS, explore_categories=1)
    for n in range(20):
        shown = _known({"drama": (2, 5)}, n)
        counted = record_event(shown, f"e{n}", T0, ProfileLimits())
        assert drawn_categories(counted, catalog, params) == drawn_categories(
            shown, catalog, params
        )
        found = candidate_features(shown, catalog, NOW, params)
        assert candidate_features(counted, catalog, NOW, params) is found


def test_only_categories_with_an_available_item_are_drawn(catalog: Catalog) -> None:
    # a category an item had before, or whose only items went: every worker's catalog
    # holds what the topic says now, whatever came before
    changed = catalog.get("item-00001")
    assert changed is not None and changed.record is not None
    catalog.put(changed.with_record(changed.record.model_copy(update={"category": "typo"})))
    catalog.put(changed)
    for n in range(0, 60, 6):  # every drama item goes
        catalog.remove(f"item-{n:05d}")
    fresh = Catalog()
    for state in catalog:
        fresh.put(state)
    params = replace(DEFAULTS, explore_categories=1)

    assert catalog.sorted_categories() == fresh.sorted_categories()
    assert "drama" not in catalog.sorted_categories() and len(catalog.sorted_categories()) == 5
    for n in range(50):
        profile = _known({"comedy": (2, 5)}, n)
        drawn = drawn_categories(profile, catalog, params)
        assert drawn == drawn_categories(profile, fresh, params)
        assert drawn[0] not in ("typo", "drama")


def test_no_more_categories_are_drawn_than_the_list_explores(catalog: Catalog) -> None:
    params = replace(DEFAULTS, explore_categories=5)
    profile = _known({"drama": (3, 3)})

    assert len(drawn_categories(profile, catalog, params)) == exploration_slots(profile, params)


def test_two_category_slots_draw_two_categories(catalog: Catalog) -> None:
    params = replace(DEFAULTS, explore_categories=2, explore_min=0.2)  # 2 slots
    for n in range(50):
        drawn = drawn_categories(_known({"drama": (3, 3)}, n), catalog, params)
        assert len(set(drawn)) == 2 and set(drawn) <= set(CATEGORIES)


def test_a_drawn_category_takes_the_exploration_slot(catalog: Catalog) -> None:
    for n in range(10):
        _boost(catalog, f"item-{6 * n:05d}", times=30 - n)  # only drama is popular
    profile = _known({"drama": (40, 2), "comedy": (0, 30)})
    params = replace(DEFAULTS, explore_categories=1, trending_candidates=10)
    seen = set()
    for events in range(40):
        user = replace(profile, snapshot_version=events)
        drawn = drawn_categories(user, catalog, params)
        ranked = rank_items(user, catalog, NOW, params)
        rows = rank_rows(user, catalog, NOW, params)

        assert len(ranked) == 10
        assert [item.item_id for item in ranked] == [row[1] for row in rows.rows]
        explored = [item for item in ranked if item.item_id in rows.explored]
        assert len(explored) == 1 and explored[0].category == drawn[0]
        category = explored[0].category
        if explored[0].item_id in rows.found.popular:  # a drawn category's popular item
            assert f"something to try in {category}" in explored[0].reasons
        else:
            assert f"a lesser-known pick in {category}" in explored[0].reasons
        seen.add(drawn[0])
    # without the draw the list holds nothing but what the user already likes
    plain = rank_rows(profile, catalog, NOW, replace(params, explore_categories=0))
    assert {state.category for _, _, state in plain.rows} == {"drama"}
    assert len(seen) >= 4 and "comedy" not in seen


def test_the_unexplained_rows_are_the_explained_list(catalog: Catalog) -> None:
    for n in range(20):
        _boost(catalog, f"item-{n:05d}", times=30 - n)
    taste = catalog.unit("item-00035")
    assert taste is not None
    profile = replace(_consumed(UserProfile.new("u"), 20), vector=tuple(taste.tolist()))
    params = replace(DEFAULTS, trending_candidates=20, fresh_candidates=0)

    ranked = rank_items(profile, catalog, NOW, params)
    rows = rank_rows(profile, catalog, NOW, params)

    assert [(i.item_id, i.score) for i in ranked] == [(i, round(s, 6)) for s, i, _ in rows.rows]
    # exploration's picks are the rows the list calls lesser-known or new
    assert rows.explored and rows.explored == {
        i.item_id for i in ranked
        if any(r.startswith(("a lesser-known pick", "something new")) for r in i.reasons)
    }  # fmt: skip


def test_fresh_items_are_explored_and_called_new(world: SyntheticWorld) -> None:
    catalog = Catalog()
    for item in world.items:
        catalog.put(
            ItemState(
                item.item_id,
                record=item.model_copy(update={"created_at": T0 - timedelta(days=400)}),
            )
        )
    for n in range(12):
        _boost(catalog, f"item-{n:05d}", times=5)
    newcomer = world.items[30].model_copy(update={"item_id": "brand-new", "created_at": T0})
    catalog.put(ItemState("brand-new", record=newcomer))
    params = replace(DEFAULTS, trending_candidates=50)

    ranked = rank_items(_consumed(UserProfile.new("u"), 1500), catalog, NOW, params)

    assert ranked[-1].item_id == "brand-new"
    assert f"something new in {newcomer.category}" in ranked[-1].reasons


def test_items_dated_ahead_are_not_fresh_and_what_just_came_out_is() -> None:
    # a catalog may date items ahead (MovieLens: 78 films released after the first
    # rating); newest first, they filled every fresh slot and were explored as "new"
    catalog = Catalog()
    for n in range(200):
        _put_old(catalog, f"old{n:03d}", ["drama", "comedy"][n % 2], likes=n % 7)
    for n in range(30):
        record = ItemRecord(item_id=f"ahead{n:02d}", category="drama",
                            created_at=T0 + timedelta(days=300 + n))  # fmt: skip
        catalog.put(ItemState(item_id=record.item_id, record=record))
    justout = ItemRecord(item_id="justout", category="comedy", created_at=T0 - timedelta(days=1))
    catalog.put(ItemState(item_id="justout", record=justout))

    found = candidate_features(UserProfile.new("u"), catalog, NOW, DEFAULTS)
    ranked = rank_items(UserProfile.new("u"), catalog, NOW, DEFAULTS)

    assert found.fresh == {"justout"}
    assert catalog.newest(5, NOW - 86_400 * 30, NOW) == ["justout"]
    assert catalog.newest(3) == ["ahead29", "ahead28", "ahead27"]  # no bound: by date
    assert not any(item.item_id.startswith("ahead") and "something new" in " ".join(item.reasons)
                   for item in ranked)  # fmt: skip


def test_a_new_user_gets_popular_items_from_several_categories(catalog: Catalog) -> None:
    for n in range(0, 60, 6):  # every sixth item: all of one category, the most popular
        _boost(catalog, f"item-{n:05d}", times=20)
    for n in range(1, 60, 6):
        _boost(catalog, f"item-{n:05d}", times=10)

    ranked = rank_items(UserProfile.new("u"), catalog, NOW, DEFAULTS)
    categories = [item.category for item in ranked]

    assert max(categories.count(c) for c in set(categories)) <= DEFAULTS.cold_start_category_cap
    assert len(set(categories)) >= 4
    assert "popular in" in " ".join(ranked[0].reasons)


def _put_old(catalog: Catalog, item_id: str, category: str, likes: int) -> None:
    """An item created long ago (nothing fresh), with ``likes`` likes."""
    record = ItemRecord(item_id=item_id, category=category, created_at=T0 - timedelta(days=100))
    catalog.put(ItemState(item_id=item_id, record=record))
    _boost(catalog, item_id, times=likes)


def _one_category_leads(n: int = 300) -> Catalog:
    """``n`` items over five categories; drama's, a fifth of them, are all more popular."""
    catalog = Catalog()
    categories = ["drama", "comedy", "horror", "news", "sport"]
    for k in range(n):
        _put_old(catalog, f"i{k:03d}", categories[k % 5], 6 if k % 5 == 0 else 1)
    return catalog


@pytest.mark.parametrize("category_cap", [None, 3, 5])
def test_the_caps_hold_when_the_best_forty_candidates_are_all_one_category(
    category_cap: int | None,
) -> None:
    # the head the caps used to look at (4 x k) held only drama, so the list was all drama;
    # and a category_cap above the cold-start cap switched the stricter one off
    catalog = _one_category_leads()
    params = replace(DEFAULTS, category_cap=category_cap)

    categories = [item.category for item in rank_items(UserProfile.new("u"), catalog, NOW, params)]

    assert len(categories) == params.k
    assert max(categories.count(c) for c in set(categories)) <= DEFAULTS.cold_start_category_cap


@pytest.mark.parametrize(
    "spec",
    [
        # one long-tail item explored; the fill added a second of its category from the head
        [("c0", 30, 50), ("c1", 3, 45), ("c2", 3, 44), ("c3", 3, 43), ("c4", 61, 2),
         ("c3", 1, 1)],
        # exploration short; the fill spilled c0 from the head past the cap, though sixty
        # candidates of three other categories waited outside it
        [("c0", 34, 50), ("c1", 2, 45), ("c2", 2, 44), ("c3", 2, 43), ("c4", 20, 2),
         ("c5", 20, 2), ("c6", 20, 2)],
    ],
)  # fmt: skip
def test_the_cap_holds_over_the_whole_list_when_exploration_comes_up_short(
    spec: list[tuple[str, int, int]],
) -> None:
    catalog, n = Catalog(), 0
    for category, count, likes in spec:
        for _ in range(count):
            _put_old(catalog, f"i{n:03d}", category, likes)
            n += 1

    rows = rank_rows(UserProfile.new("u"), catalog, NOW, DEFAULTS).rows
    categories = [row[2].category for row in rows]

    assert len(rows) == DEFAULTS.k
    assert max(categories.count(c) for c in set(categories)) <= DEFAULTS.cold_start_category_cap


def test_a_category_cap_reaches_past_a_head_of_one_category_for_a_known_user() -> None:
    catalog = _one_category_leads()
    known = _consumed(UserProfile.new("u"), 50)
    params = replace(PARAMS, category_cap=3)

    categories = [item.category for item in rank_items(known, catalog, NOW, params)]

    assert len(categories) == 10 and categories.count("drama") == 3


def test_items_close_to_a_dislike_make_way_for_the_next_best_beyond_the_first_k() -> None:
    # a not_relevant that sets no category penalty (wrong_language) still sinks the items
    # close to the disliked one: the next best, past the first k, take their places
    catalog = Catalog()

    def put(item_id: str, category: str, creator: str, likes: int) -> None:
        record = ItemRecord(item_id=item_id, category=category, creator=creator,
                            tags=[f"t-{creator}"], created_at=T0 - timedelta(days=100))  # fmt: skip
        catalog.put(ItemState(item_id=item_id, record=record))
        _boost(catalog, item_id, times=likes)

    put("bad", "drama", "studio-x", 0)
    for n in range(10):
        put(f"x{n}", "drama", "studio-x", 30 - n)  # the best ten: close to "bad"
        put(f"o{n}", f"cat{n}", f"other{n}", 18 - n)  # the next best, unlike it
    profile = replace(_consumed(UserProfile.new("u"), 5), blocked=("bad",),
                      disliked=(("bad", NOW),))  # fmt: skip

    rules = DeescalationParams()
    shown = [i.item_id for i in rank_items(profile, catalog, NOW, PARAMS, deescalation=rules)]
    plain = [i.item_id for i in rank_items(replace(profile, disliked=()), catalog, NOW, PARAMS,
                                           deescalation=rules)]  # fmt: skip

    assert plain == [f"x{n}" for n in range(10)]
    assert sum(i.startswith("o") for i in shown) >= 5


def test_a_withdrawn_item_sets_no_scale_for_the_co_visitation_of_the_others(
    catalog: Catalog,
) -> None:
    _covisit(catalog, "item-00001", "item-00010", times=20)  # the strongest, then withdrawn
    _covisit(catalog, "item-00001", "item-00011", times=2)
    withdrawn = catalog.get("item-00010")
    assert withdrawn is not None and withdrawn.record is not None
    catalog.put(withdrawn.with_record(withdrawn.record.model_copy(update={"available": False})))
    profile = replace(UserProfile.new("u"), recent_positives=("item-00001",),
                      history=("item-00001",))  # fmt: skip

    found = candidate_features(profile, catalog, NOW, PARAMS)

    assert "item-00010" not in found.features
    assert found.features["item-00011"]["covisit"] == 1.0  # the best candidate's


def test_a_new_user_gets_long_tail_items_when_no_item_is_fresh() -> None:
    # nothing personal brings a new user candidates: with no item created lately the list
    # was all trending head, and its exploration slots went to more of it
    catalog = Catalog()
    for n in range(2000):
        # a quarter of the catalog has had some feedback
        _put_old(catalog, f"i{n:04d}", f"c{n % 10}", 1 + n % 7 if n % 4 == 0 else 0)
    profile = UserProfile.new("u")

    ranking = rank_rows(profile, catalog, NOW, DEFAULTS)

    assert len(ranking.explored) == exploration_slots(profile, DEFAULTS) == 3
    assert not ranking.explored & ranking.found.popular
    assert len(ranking.rows) == DEFAULTS.k


def test_without_a_trending_head_there_is_no_long_tail_past_it(catalog: Catalog) -> None:
    # the "long tail" past a head of none was the most popular items, explored and
    # called lesser-known picks
    for n in range(20):
        _boost(catalog, f"item-{n:05d}", times=5)
    params = replace(DEFAULTS, trending_candidates=0, fresh_candidates=0)

    assert rank_items(UserProfile.new("u"), catalog, NOW, params) == []


def test_items_consumed_before_the_history_stay_out(catalog: Catalog) -> None:
    bloom = Bloom.empty(2000)
    for n in range(0, 60, 2):
        bloom = bloom.add(f"item-{n:05d}")  # long forgotten by the bounded history
    profile = replace(UserProfile.new("u"), consumed=bloom)

    shown = _ids(profile, catalog)

    assert len(shown) == 10
    assert all(int(i.split("-")[1]) % 2 == 1 for i in shown)


def test_items_consumed_long_ago_stay_out_however_many_lead_the_list() -> None:
    # the filter was checked on the best 2 x k candidates only: when most of those were
    # consumed, the ones that moved up into the list were never checked
    catalog = Catalog()
    for n in range(40):
        _put_old(catalog, f"i{n:02d}", f"c{n % 8}", 60 - n)
    consumed = [f"i{n:02d}" for n in (*range(15), *range(20, 30))]
    bloom = Bloom.empty(2000)
    for item_id in consumed:
        bloom = bloom.add(item_id)
    profile = replace(UserProfile.new("u"), consumed=bloom)

    shown = _ids(profile, catalog, replace(PARAMS, category_cap=None))

    assert len(shown) == 10 and not set(shown) & set(consumed)
    assert set(shown) == {f"i{n:02d}" for n in (*range(15, 20), *range(30, 35))}


def test_the_users_embedding_brings_in_items_like_the_ones_liked(catalog: Catalog) -> None:
    liked = catalog.unit("item-00004")  # a romance, with a category prior
    assert liked is not None
    profile = replace(UserProfile.new("u"), vector=tuple(liked.tolist()))
    nothing_else = replace(PARAMS, trending_candidates=0, fresh_candidates=0,
                           neighbour_candidates=0)  # fmt: skip

    ranked = rank_items(profile, catalog, NOW, nothing_else)

    assert len(ranked) == 10
    same = {item.category for item in ranked}
    assert same == {catalog.get("item-00004").category}  # type: ignore[union-attr]


def test_neighbours_of_a_recent_like_explain_themselves(catalog: Catalog) -> None:
    profile = replace(UserProfile.new("u"), recent_positives=("item-00004",),
                      history=("item-00004",))  # fmt: skip
    # a category holds 10 items: the 5 nearest share the like's category prior
    only_neighbours = replace(PARAMS, trending_candidates=0, fresh_candidates=0,
                              longtail_candidates=0, embedding_candidates=0,
                              neighbour_candidates=5)  # fmt: skip

    ranked = rank_items(profile, catalog, NOW, only_neighbours)

    assert len(ranked) == only_neighbours.neighbour_candidates
    title = catalog.get("item-00004").record.title  # type: ignore[union-attr]
    assert all(f"because you liked {title}" in item.reasons for item in ranked)


def test_exploration_never_brings_back_what_was_consumed_long_ago(catalog: Catalog) -> None:
    for n in range(20):
        _boost(catalog, f"item-{n:05d}", times=30 - n)
    taste = catalog.unit("item-00035")
    assert taste is not None
    bloom = Bloom.empty(2000)
    for n in range(20, 60):
        if n != 41:
            bloom = bloom.add(f"item-{n:05d}")  # the whole tail but one, long ago
    for n in range(1500):
        bloom = bloom.add(f"elsewhere-{n}")
    profile = replace(UserProfile.new("u"), vector=tuple(taste.tolist()), consumed=bloom)
    params = replace(DEFAULTS, trending_candidates=20, fresh_candidates=0, similarity_weight=0.0)

    ranked = rank_items(profile, catalog, NOW, params)

    tail = [i.item_id for i in ranked if int(i.item_id.split("-")[1]) >= 20]
    assert tail in ([], ["item-00041"])


def test_feature_dicts_and_scores_come_from_the_same_columns(catalog: Catalog) -> None:
    from operators.ranking import FEATURES, candidate_features, heuristic_head, heuristic_scores

    for n in range(0, 20, 2):
        state = catalog.get(f"item-{n:05d}")
        assert state is not None
        catalog.put(state.with_covisits([f"item-{m:05d}" for m in range(1, 40, 3)], 1.0, 200))
    profile = replace(UserProfile.new("u"), recent_positives=("item-00000", "item-00002"),
                      history=("item-00000", "item-00002"), affinity={"cat-1": 2.0})  # fmt: skip

    found = candidate_features(profile, catalog, NOW, PARAMS)
    scores = heuristic_scores(found, PARAMS)

    assert list(found.features) == list(scores) and "item-00000" not in scores
    for item_id, features in found.features.items():
        assert list(features) == list(FEATURES)
        assert found.features[item_id] is features  # built once, then shared
        assert scores[item_id] == (
            features["covisit"]
            + PARAMS.trending_weight * features["trend"]
            + PARAMS.affinity_weight * features["affinity"]
            + PARAMS.similarity_weight * features["similarity"]
        )
    by_score = sorted(scores, key=lambda i: (-scores[i], i))
    head, rest = heuristic_head(found, PARAMS, 5, profile)
    assert head == by_score[:5] and rest == sorted(by_score[5:])
    assert heuristic_head(found, PARAMS, 5, profile, rest=False) == (head, [])
    # for a user, among what a list may show: nothing consumed long ago (past the history)
    gone = by_score[1]
    bloom = Bloom.empty(100)
    for item_id in (*profile.history, gone):
        bloom = bloom.add(item_id)
    consumed = replace(profile, consumed=bloom)
    head, rest = heuristic_head(found, PARAMS, 5, consumed)
    shown = [i for i in by_score if i != gone]
    assert head == shown[:5] and rest == sorted(shown[5:])


def test_sums_by_row_add_in_input_order_on_both_paths() -> None:
    import numpy as np

    from operators import ranking

    rng = np.random.default_rng(5)
    rows = rng.integers(0, 50, 400).astype(np.intp)
    values = rng.random(400) * rng.choice([1.0, 1e-9, 1e9], 400)
    expected: dict[int, float] = {}
    for row, value in zip(rows.tolist(), values.tolist(), strict=True):
        expected[row] = expected.get(row, 0.0) + value

    dense = ranking._sum_by_row(rows, values, 50)
    sparse = ranking._sum_by_row(rows, values, 10**6)  # far longer than the rows: sorts

    for unique, sums in (dense, sparse):
        assert unique.tolist() == sorted(expected)
        assert sums.tolist() == [expected[row] for row in sorted(expected)]


def test_a_user_who_consumed_a_liked_categorys_most_popular_items_gets_its_next_ones() -> None:
    # the category source read a fixed-length head and dropped what the user had
    # consumed: a loyal user's favourite category brought no candidate at all, and only
    # co-visitation and the embedding (both narrowing) were left
    records = [
        ItemRecord(item_id=f"{c}-{n:02d}", category=c, created_at=T0 - timedelta(days=400))
        for c in ("drama", "comedy") for n in range(60)
    ]  # fmt: skip
    catalog = Catalog()
    for record in records:
        catalog.put(ItemState(item_id=record.item_id, record=record))
    for n in range(60):  # drama-00 most popular, then drama-01, ...; comedy above them all
        _boost(catalog, f"drama-{n:02d}", 70 - n)
        _boost(catalog, f"comedy-{n:02d}", 200 - n)
    params = replace(
        PARAMS, category_candidates=20, trending_candidates=30, k=200,
        embedding_candidates=0, neighbour_candidates=0, fresh_candidates=0,
    )  # fmt: skip
    seen = (*(f"drama-{n:02d}" for n in range(25)), *(f"comedy-{n:02d}" for n in range(10)))
    profile = replace(UserProfile.new("u"), affinity={"drama": 3.0}, history=seen)
    profile = _consumed(profile, 35)  # not a new user: no long-tail source

    found = candidate_features(profile, catalog, NOW, params)

    dramas = sorted(i for i in found.ids if i.startswith("drama"))
    assert dramas == [f"drama-{n:02d}" for n in range(25, 45)]  # the next twenty
    # the trending head is what is popular now, consumed or not (which then drops out)
    comedies = sorted(i for i in found.ids if i.startswith("comedy"))
    assert comedies == [f"comedy-{n:02d}" for n in range(10, 30)]
    assert found.features["comedy-10"]["trend"] == pytest.approx(190 / 200)


def test_past_the_history_the_consumed_set_filter_keeps_a_category_source_going() -> None:
    # items consumed before the 200-item history are only in the consumed-set filter:
    # the category head read them as unconsumed, and the ranking dropped them later
    records = [
        ItemRecord(item_id=f"drama-{n:02d}", category="drama", created_at=T0 - timedelta(days=400))
        for n in range(60)
    ]
    catalog = Catalog()
    for record in records:
        catalog.put(ItemState(item_id=record.item_id, record=record))
    for n in range(60):
        _boost(catalog, f"drama-{n:02d}", 70 - n)
    params = replace(
        PARAMS, category_candidates=20, trending_candidates=0, k=200,
        embedding_candidates=0, neighbour_candidates=0, fresh_candidates=0,
    )  # fmt: skip
    bloom = Bloom.empty(2000)
    for n in range(20):  # long ago: in the filter, not in the history
        bloom = bloom.add(f"drama-{n:02d}")
    history = tuple(f"elsewhere-{n}" for n in range(5))
    profile = replace(UserProfile.new("u"), affinity={"drama": 3.0}, history=history,
                      consumed=bloom)  # fmt: skip

    found = candidate_features(profile, catalog, NOW, params)

    assert sorted(found.ids) == [f"drama-{n:02d}" for n in range(20, 40)]


def test_the_learners_shortcut_only_skips_likes_the_head_cannot_hold(catalog: Catalog) -> None:
    """``head_candidates`` stops early only when the whole gathering's head lacks the item.

    The catalog is small and the cheap sources narrow (ten trending, eight co-visited), so
    the index's searches, the category heads and the fresh items bring candidates the
    shortcut never sees; pauses and a consumed-set filter past the history are mixed in.
    """
    import numpy as np

    from operators.ranking import head_candidates, heuristic_head

    rng = random.Random(3)
    ids = sorted(catalog.states)
    for item_id in ids:
        _boost(catalog, item_id, rng.randrange(6))
    for n in range(0, 40, 3):
        state = catalog.get(ids[n])
        assert state is not None
        catalog.put(state.with_covisits(rng.sample(ids, 15), 1.0, 200))
    params = replace(PARAMS, model_rerank=5, covisit_candidates=8, trending_candidates=10)
    categories = sorted({s.category for s in catalog.states.values() if s.category})
    profiles = []
    for n in range(12):
        liked = tuple(rng.sample(ids[:40], 4))
        vector = np.random.default_rng(n).normal(size=catalog.embedding.dim)
        profile = replace(
            UserProfile.new(f"u{n}"), recent_positives=liked,
            history=(*liked, *rng.sample(ids, 3)), vector=tuple(vector.tolist()),
            affinity={c: rng.uniform(-1.0, 2.0) for c in rng.sample(categories, 3)},
        )  # fmt: skip
        if n % 3 == 1:
            paused = rng.sample(categories, len(categories) // 2)
            profile = replace(profile, paused=tuple(f"category:{c}" for c in paused))
        if n % 3 == 2:
            bloom = Bloom.empty(100)
            for item_id in (*profile.history, *rng.sample(ids, 8)):
                bloom = bloom.add(item_id)
            profile = replace(profile, consumed=bloom)
        profiles.append(profile)

    outcomes: Counter[tuple[bool, bool]] = Counter()
    for profile in profiles:
        for item_id in ids:
            catalog.remember(None, None)  # nothing to re-use: the shortcut is tried
            shortcut = head_candidates(profile, catalog, NOW, params, item_id)
            found = candidate_features(profile, catalog, NOW, params)
            head, _ = heuristic_head(found, params, params.model_rerank + 1, profile)
            in_head = item_id in head[: params.model_rerank]
            assert not (shortcut is None and in_head), (profile.user_id, item_id)
            if shortcut is not None:
                assert shortcut is found  # the whole gathering, kept for the next ask
            outcomes[shortcut is None, item_id in found.features] += 1

    assert outcomes[True, True] > 50  # candidates outranked by the cheap sources alone
    assert outcomes[False, True] > 50  # and candidates it had to gather everything for
    assert outcomes[True, False] > 0  # consumed or blocked: no candidate at all


def test_the_strongest_cut_orders_by_value_then_id_as_python_sorts_pairs() -> None:
    import numpy as np

    from operators import ranking

    catalog = Catalog()
    ids = [f"item-{n:03d}" for n in range(60)]
    rng = random.Random(11)
    for item_id in rng.sample(ids, len(ids)):  # rows handed out in shuffled order
        catalog.put(ItemState(item_id=item_id))
    for trial in range(200):
        order = rng.sample(ids, len(ids))  # neighbour maps fill in arrival order
        # few distinct values: long runs of ties, at the cut and inside it
        values = np.array([float(rng.randrange(1 + trial % 7)) for _ in order])
        n = rng.randrange(1, 70)
        expected = [i for _, i in sorted(zip((-values).tolist(), order, strict=True))][:n]
        assert ranking._strongest(values, catalog.rows(order), n, catalog) == expected, trial
