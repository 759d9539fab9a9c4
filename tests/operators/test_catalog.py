"""ItemState and Catalog (operators/catalog.py): availability, decaying popularity, replicas."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from operators.catalog import (
    Catalog,
    ItemFeedback,
    ItemParams,
    ItemState,
    apply_feedback,
    expire_uncatalogued,
    expiry_of,
    fold_item_feedback,
    snapshot_expired,
    sweep_interval,
    uncatalogued_expired,
)
from operators.embedding import item_embedding, item_prior, unit
from operators.synthetic import SyntheticWorld

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
HOUR = 3600.0


def test_an_item_with_a_record_is_available_in_its_category(world: SyntheticWorld) -> None:
    record = world.items[0]

    state = ItemState(item_id=record.item_id, record=record)

    assert state.available
    assert state.category == record.category


def test_an_item_the_catalog_does_not_know_is_not_available() -> None:
    state = ItemState(item_id="ghost")

    assert not state.available
    assert state.category is None


def test_a_withdrawn_or_removed_item_is_not_available(world: SyntheticWorld) -> None:
    record = world.items[0]
    state = ItemState(item_id=record.item_id, record=record)

    withdrawn = state.with_record(record.model_copy(update={"available": False}))
    removed = state.with_record(None)

    assert not withdrawn.available and withdrawn.category == record.category
    assert not removed.available
    assert state.available  # the original value is untouched


def test_popularity_halves_after_one_half_life() -> None:
    state = ItemState("i").with_feedback(1.0, T0, half_life_s=HOUR)
    t = T0.timestamp()

    assert state.popularity_at(t, HOUR) == pytest.approx(1.0)
    assert state.popularity_at(t + HOUR, HOUR) == pytest.approx(0.5)
    assert state.popularity_at(t + 2 * HOUR, HOUR) == pytest.approx(0.25)


def test_popularity_does_not_grow_when_asked_about_an_earlier_time() -> None:
    state = ItemState("i").with_feedback(1.0, T0, half_life_s=HOUR)

    assert state.popularity_at(T0.timestamp() - 10 * HOUR, HOUR) == pytest.approx(1.0)


def test_positive_feedback_adds_up_after_decay() -> None:
    state = ItemState("i").with_feedback(1.0, T0, half_life_s=HOUR)

    state = state.with_feedback(1.0, T0 + timedelta(hours=1), half_life_s=HOUR)

    assert state.popularity_at((T0 + timedelta(hours=1)).timestamp(), HOUR) == pytest.approx(1.5)
    assert (state.positives, state.feedback_events) == (2, 2)


def test_negative_feedback_is_counted_but_adds_no_popularity() -> None:
    state = ItemState("i").with_feedback(1.0, T0, half_life_s=HOUR)

    state = state.with_feedback(-1.0, T0 + timedelta(hours=1), half_life_s=HOUR)

    assert state.popularity_at((T0 + timedelta(hours=1)).timestamp(), HOUR) == pytest.approx(0.5)
    assert (state.positives, state.feedback_events) == (1, 2)


def test_an_item_with_only_negative_feedback_has_no_popularity() -> None:
    state = ItemState("i").with_feedback(-0.3, T0, half_life_s=HOUR)

    assert state.popularity_at(T0.timestamp(), HOUR) == 0.0
    assert (state.positives, state.feedback_events) == (0, 1)


def test_late_feedback_counts_at_its_own_time() -> None:
    now = T0 + timedelta(hours=2)
    state = ItemState("i").with_feedback(1.0, now, half_life_s=HOUR)

    late = state.with_feedback(1.0, T0, half_life_s=HOUR)  # two half-lives older

    assert late.popularity_at(now.timestamp(), HOUR) == pytest.approx(1.25)
    assert late.popularity_t == now.timestamp()


@pytest.mark.parametrize("seed", range(5))
def test_popularity_does_not_depend_on_the_order_feedback_arrives_in(seed: int) -> None:
    feedback = [(1.0 if n % 3 else -0.3, T0 + timedelta(minutes=17 * n)) for n in range(12)]
    shuffled = random.Random(seed).sample(feedback, len(feedback))
    end = (T0 + timedelta(days=1)).timestamp()

    def fold(items: list[tuple[float, datetime]]) -> ItemState:
        state = ItemState("i")
        for target, when in items:
            state = state.with_feedback(target, when, half_life_s=HOUR)
        return state

    in_order, out_of_order = fold(feedback), fold(shuffled)

    assert out_of_order.popularity_at(end, HOUR) == pytest.approx(in_order.popularity_at(end, HOUR))
    assert out_of_order.positives == in_order.positives == 8


def test_item_state_snapshot_restores_exactly(world: SyntheticWorld) -> None:
    state = ItemState(item_id=world.items[3].item_id, record=world.items[3])
    state = state.with_feedback(1.0, T0, half_life_s=HOUR)
    state = state.with_feedback(-0.2, T0 + timedelta(seconds=1), half_life_s=HOUR)

    restored = ItemState.restore(state.snapshot())

    assert restored == state
    assert restored.snapshot() == state.snapshot()
    assert restored.available and restored.category == world.items[3].category


def test_a_removed_item_state_restores_as_unavailable() -> None:
    state = ItemState("gone").with_feedback(1.0, T0, half_life_s=HOUR)

    restored = ItemState.restore(state.snapshot())

    assert restored == state
    assert not restored.available


def test_the_catalog_stores_replaces_and_forgets_items(world: SyntheticWorld) -> None:
    catalog = Catalog()
    first, second = world.items[0], world.items[1]

    catalog.put(ItemState(first.item_id, record=first))
    catalog.put(ItemState(second.item_id, record=second))
    catalog.put(ItemState(first.item_id, record=first, positives=7))
    catalog.remove(second.item_id)
    catalog.remove("never-there")

    assert len(catalog) == 1
    assert catalog.get(second.item_id) is None
    state = catalog.get(first.item_id)
    assert state is not None and state.positives == 7
    assert [s.item_id for s in catalog] == [first.item_id]


def test_the_catalog_snapshot_restores_every_item(catalog: Catalog) -> None:
    some = next(iter(catalog))
    catalog.put(some.with_feedback(1.0, T0, half_life_s=HOUR))
    catalog.put(ItemState("withdrawn"))

    restored = Catalog.restore(catalog.snapshot())

    assert len(restored) == len(catalog) == 61
    for state in catalog:
        assert restored.get(state.item_id) == state
    assert restored.snapshot() == catalog.snapshot()


def test_an_empty_catalog_round_trips() -> None:
    restored = Catalog.restore(Catalog().snapshot())

    assert len(restored) == 0


# -- co-visitation, feedback and the trending order ----------------------------------


def test_covisits_are_counted_and_bounded_to_the_strongest() -> None:
    state = ItemState(item_id="a").with_covisits(["b", "c", "b", "a"], 1.0, max_neighbours=10)
    assert dict(state.neighbours) == {"b": 2.0, "c": 1.0}  # never its own neighbour
    bounded = state.with_covisits(["d", "d", "d", "e"], 1.0, max_neighbours=2)
    assert dict(bounded.neighbours) == {"d": 3.0, "b": 2.0}


def test_apply_feedback_handles_signals_and_covisits() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    params = ItemParams(popularity_half_life_s=3600.0, max_neighbours=5)
    liked = ItemFeedback("a", 1.0, 0.75, t, "e1", co_items=("b", "c"))
    covisit = ItemFeedback("a", 0.0, 0.0, t, "e2", kind="covisit", co_items=("d",))

    state = apply_feedback(apply_feedback(ItemState(item_id="a"), liked, params), covisit, params)

    assert state.positives == 1 and state.popularity == 1.0  # the co-visit is no new like
    assert dict(state.neighbours) == {"b": 1.0, "c": 1.0, "d": 1.0}
    assert ItemFeedback.from_json(liked.to_json()) == liked
    assert ItemState.restore(state.snapshot()) == state


def test_top_orders_by_decayed_popularity_then_freshness(world: SyntheticWorld) -> None:
    catalog = Catalog()
    for item in world.items[:6]:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    t = datetime(2026, 6, 1, tzinfo=UTC)
    old = catalog.get("item-00001")
    new = catalog.get("item-00002")
    assert old is not None and new is not None
    # three likes a week ago weigh less than two today at a one-day half-life
    for _ in range(3):
        old = old.with_feedback(1.0, t - timedelta(days=7), half_life_s=86400)
    for _ in range(2):
        new = new.with_feedback(1.0, t, half_life_s=86400)
    catalog.put(old)
    catalog.put(new)

    top = catalog.top(6, half_life_s=86400)

    assert top[:2] == ["item-00002", "item-00001"]
    rest = [catalog.get(i) for i in top[2:]]
    created = [s.created_t for s in rest if s is not None]
    assert created == sorted(created, reverse=True)  # no feedback yet: newest first
    assert catalog.top(6, half_life_s=86400, category=world.items[3].category) == [
        world.items[3].item_id
    ]


def test_top_follows_items_that_change_category_or_are_withdrawn(world: SyntheticWorld) -> None:
    catalog = Catalog()
    for item in world.items[:12]:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    first = world.items[0]
    before = catalog.top(12, half_life_s=3600, category=first.category)
    assert first.item_id in before

    moved = first.model_copy(update={"category": "a-new-category"})
    catalog.put(ItemState(item_id=first.item_id, record=moved))
    assert first.item_id not in catalog.top(12, half_life_s=3600, category=first.category)
    assert catalog.top(12, half_life_s=3600, category="a-new-category") == [first.item_id]

    withdrawn = world.items[1].model_copy(update={"available": False})
    catalog.put(ItemState(item_id=withdrawn.item_id, record=withdrawn))
    catalog.remove(world.items[2].item_id)
    everything = catalog.top(12, half_life_s=3600)
    assert withdrawn.item_id not in everything and world.items[2].item_id not in everything
    assert len(everything) == 10


def test_neighbour_arrays_follow_every_state_of_a_source(catalog: Catalog) -> None:
    source = catalog.get("item-00000")
    assert source is not None
    grown = source.with_covisits(["item-00001", "unseen", "item-00002"], 1.0, max_neighbours=4)
    catalog.put(grown)
    first = catalog.neighbour_arrays(grown)[0]
    # a new neighbour is appended; then the bound prunes and reorders the map
    more = grown.with_covisits(["item-00003"], 1.0, max_neighbours=4)
    catalog.put(more)
    pruned = more.with_covisits(["item-00002", "item-00004", "item-00005"], 1.0, 4)
    catalog.put(pruned)

    for state in (grown, more, pruned):
        rows = catalog.neighbour_arrays(state)[0].tolist()
        assert [catalog.row_id(row) for row in rows] == list(state.neighbours)
        counts = catalog.neighbour_arrays(state)[1].tolist()
        assert counts == list(state.neighbours.values())
    assert [catalog.row_id(row) for row in first.tolist()] == ["item-00001", "unseen", "item-00002"]
    unseen = catalog.rows(["unseen"])[0]
    assert unseen > 0 and not catalog.columns().available[unseen]  # a row, but no item
    assert catalog.unit("unseen") is None


def test_the_embedding_follows_taste_and_a_new_record_but_not_co_visits(
    world: SyntheticWorld,
) -> None:
    """The catalog keeps each item's prior; only feedback with taste or a new record moves it."""
    catalog = Catalog()
    item = world.items[0]
    catalog.put(ItemState(item_id=item.item_id, record=item))
    prior = catalog.unit(item.item_id)
    assert prior is not None
    np.testing.assert_allclose(prior, item_prior(item, catalog.embedding) / 2.0)  # weight 2

    params = ItemParams()
    co_visit = ItemFeedback(item.item_id, 0.0, 0.0, T0, "e1", kind="covisit", co_items=("x",))
    stored = catalog.get(item.item_id)
    assert stored is not None
    state = apply_feedback(stored, co_visit, params)
    catalog.put(state)
    np.testing.assert_array_equal(catalog.unit(item.item_id), prior)

    like = ItemFeedback(item.item_id, 1.0, 1.0, T0, "e2", user_id="u1")
    state = apply_feedback(state, like, params)
    catalog.put(state)
    liked = unit(item_embedding(item, state.taste, catalog.embedding))
    assert liked is not None and not np.allclose(liked, prior)
    np.testing.assert_array_equal(catalog.unit(item.item_id), liked)
    assert item.item_id in catalog.top(1, half_life_s=3600)  # the like reached the orders

    moved = item.model_copy(update={"category": "a-new-category"})
    catalog.put(state.with_record(moved))
    recategorised = unit(item_embedding(moved, state.taste, catalog.embedding))
    assert recategorised is not None
    np.testing.assert_array_equal(catalog.unit(item.item_id), recategorised)
    assert catalog.top(1, half_life_s=3600, category="a-new-category") == [item.item_id]

    catalog.remove(item.item_id)  # a removed item has no embedding, until it is back
    assert catalog.unit(item.item_id) is None
    catalog.put(state)
    np.testing.assert_array_equal(catalog.unit(item.item_id), liked)


def test_exact_search_covers_the_available_embedded_items_only(world: SyntheticWorld) -> None:
    catalog = Catalog()
    for item in world.items[:30]:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    first, second = world.items[0].item_id, world.items[1].item_id
    catalog.put(catalog.get(first).with_covisits(["neighbour-only"], 1.0, 10))  # type: ignore[union-attr]
    withdrawn = world.items[2].model_copy(update={"available": False})
    catalog.put(ItemState(item_id=withdrawn.item_id, record=withdrawn))
    catalog.remove(second)
    query = catalog.unit(first)
    assert query is not None

    (found,) = catalog.exact_similar([query], 100)

    listed = [item.item_id for item in world.items[:30] if item.item_id not in {
        second, withdrawn.item_id}]  # fmt: skip
    assert sorted(i for i, _ in found) == sorted(listed)
    assert found[0] == (first, pytest.approx(1.0))
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    assert catalog.index_recall([query], 5) == 1.0  # a tiny graph finds the exact five


def test_the_catalog_keeps_a_bounded_number_of_priors(
    world: SyntheticWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("operators.catalog._PRIORS_KEPT", 3)
    catalog = Catalog()
    for item in world.items[:5]:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    assert len(catalog._priors) == 3  # the two oldest were dropped
    item = world.items[0]  # its prior was dropped: computed again, the same embedding
    state = apply_feedback(
        catalog.get(item.item_id) or ItemState(item_id=item.item_id),
        ItemFeedback(item.item_id, 1.0, 1.0, T0, "e1", user_id="u1"),
        ItemParams(),
    )
    catalog.put(state)
    expected = unit(item_embedding(item, state.taste, catalog.embedding))
    assert expected is not None
    np.testing.assert_array_equal(catalog.unit(item.item_id), expected)


def test_under_churn_the_catalog_holds_rows_for_what_it_holds_and_ranks_as_a_fresh_one() -> None:
    # every id kept its row (an embedding row and the columns) after its item went: a
    # catalog publishing news grew with every item ever published
    from operators.profile import UserProfile
    from operators.ranking import RankingParams, rank_items
    from schemas.catalog import ItemRecord

    def state(n: int) -> ItemState:
        record = ItemRecord(item_id=f"news-{n}", category=f"c{n % 7}", tags=[f"t{n % 11}"],
                            created_at=T0 - timedelta(days=1))  # fmt: skip
        held = ItemState(item_id=record.item_id, record=record)
        # liked with an item still held and with one already gone (a neighbour-only id)
        return held.with_covisits([f"news-{n - 1}", f"news-{n - 600}"], 1.0, 200).with_feedback(
            1.0, T0, 86_400.0
        )

    churned = Catalog()
    for n in range(12_000):
        churned.put(state(n))
        if n >= 500:
            churned.remove(f"news-{n - 500}")
    fresh = Catalog()
    for n in range(12_000 - 500, 12_000):
        fresh.put(state(n))

    assert len(churned) == len(fresh) == 500
    assert len(churned.columns().positives) <= 4096  # rows for 500 items, not 12,000
    profile = UserProfile(user_id="u", recent_positives=("news-11990", "news-11700"),
                          affinity={"c3": 2.0})  # fmt: skip
    params = RankingParams(explore_min=0.0, explore_max=0.0)
    ranked = [(i.item_id, i.score) for i in rank_items(profile, churned, T0.timestamp(), params)]
    assert ranked == [
        (i.item_id, i.score) for i in rank_items(profile, fresh, T0.timestamp(), params)
    ]
    assert churned.similar(np.ones(churned.embedding.dim) / 8.0, 5) == fresh.similar(
        np.ones(fresh.embedding.dim) / 8.0, 5
    )


def test_ids_only_named_as_neighbours_never_set_the_rows_renumbering_off() -> None:
    # a row is given to every id a held item names as a co-visit neighbour (items since
    # removed, in a news catalog); counting those, every removal renumbered every row
    from operators.profile import UserProfile
    from operators.ranking import RankingParams, rank_rows
    from schemas.catalog import ItemRecord

    catalog = Catalog()
    for n in range(150):
        record = ItemRecord(item_id=f"h{n}", category="c", created_at=T0 - timedelta(days=1))
        catalog.put(ItemState(item_id=record.item_id, record=record))
    for s in range(10):
        state = catalog.get(f"h{s}")
        assert state is not None
        catalog.put(state.with_covisits([f"gone{s}-{j}" for j in range(150)], 1.0, 10**6))
    user = UserProfile(user_id="u", recent_positives=tuple(f"h{s}" for s in range(10)))
    rank_rows(user, catalog, T0.timestamp(), RankingParams())
    columns = catalog.columns()

    for n in range(100, 120):
        catalog.remove(f"h{n}")
        rank_rows(user, catalog, T0.timestamp(), RankingParams())

    assert catalog.columns() is columns  # the same arrays: nothing was renumbered


# -- items without a catalog record expire ----------------------------------------------

DAY = 24 * HOUR


def _signal(item_id: str, at: datetime, target: float = 1.0, kind: str = "signal") -> ItemFeedback:
    co = ("other",) if kind == "covisit" else ()
    return ItemFeedback(item_id, target, 1.0, at, f"e-{at.timestamp()}", kind=kind,  # type: ignore[arg-type]
                        co_items=co, user_id="u1" if kind == "signal" else None)  # fmt: skip


def test_every_signal_moves_the_time_an_uncatalogued_item_is_kept_from() -> None:
    params = ItemParams(uncatalogued_ttl_s=DAY)
    skipped = apply_feedback(ItemState("i"), _signal("i", T0, target=-0.3), params)
    assert skipped.popularity_t == T0.timestamp()  # a skip counts as activity too
    later = T0 + timedelta(hours=2)
    assert not uncatalogued_expired(
        apply_feedback(skipped, _signal("i", later), params), T0.timestamp() + DAY, params
    )
    late = apply_feedback(skipped, _signal("i", T0 - timedelta(hours=1)), params)
    assert late.popularity_t == T0.timestamp()  # a late signal never moves it back


def test_only_a_state_without_a_record_and_without_feedback_for_the_ttl_expires(
    world: SyntheticWorld,
) -> None:
    params = ItemParams(uncatalogued_ttl_s=7 * DAY)
    ghost = apply_feedback(ItemState("ghost"), _signal("ghost", T0), params)
    record = world.items[0]
    known = apply_feedback(ItemState(record.item_id, record=record), _signal(record.item_id, T0),
                           params)  # fmt: skip
    withdrawn = known.with_record(record.model_copy(update={"available": False}))
    at_ttl, before_ttl = T0.timestamp() + 7 * DAY, T0.timestamp() + 7 * DAY - 1

    assert uncatalogued_expired(ghost, at_ttl, params)
    assert not uncatalogued_expired(ghost, before_ttl, params)
    assert not uncatalogued_expired(known, at_ttl + 365 * DAY, params)
    assert not uncatalogued_expired(withdrawn, at_ttl + 365 * DAY, params)  # withdrawn: kept
    assert not uncatalogued_expired(ghost, at_ttl + 365 * DAY, ItemParams(uncatalogued_ttl_s=0))
    # the sweep decides from the bytes, as from the state
    for state in (ghost, known, withdrawn, known.with_record(None)):
        for now_t in (before_ttl, at_ttl, at_ttl + 365 * DAY):
            assert snapshot_expired(state.snapshot(), now_t, params) == uncatalogued_expired(
                state, now_t, params
            )
    assert not snapshot_expired(ghost.snapshot(), at_ttl, ItemParams(uncatalogued_ttl_s=0))
    tricky = apply_feedback(ItemState('x"popularity_t":1,"record":null'), _signal("x", T0), params)
    assert ItemState.popularity_t_of(tricky.snapshot()) == T0.timestamp()


def test_an_expiry_deletes_only_what_is_still_expired_when_the_owner_folds_it() -> None:
    params = ItemParams(uncatalogued_ttl_s=DAY)
    ghost = apply_feedback(ItemState("ghost"), _signal("ghost", T0), params)
    sweep = T0 + timedelta(days=1)
    expire = expiry_of("ghost", sweep)
    assert ItemFeedback.from_json(expire.to_json()) == expire

    assert fold_item_feedback(ghost, [expire], params) == (None, 1)
    # a like the owner folds first (sent before the sweep's record reached it) keeps it
    liked, expired = fold_item_feedback(
        ghost, [_signal("ghost", sweep - timedelta(hours=1)), expire], params
    )
    assert liked is not None and liked.positives == 2 and expired == 0
    # a signal after the expiry starts afresh (and the expiry still counts)
    again, expired = fold_item_feedback(ghost, [expire, _signal("ghost", sweep)], params)
    assert again is not None and again.positives == 1 and expired == 1  # not 2: the old went
    assert again.popularity_t == sweep.timestamp()
    assert fold_item_feedback(None, [expire], params) == (None, 0)
    # nothing to expire: the very same state comes back (the agent then sends nothing)
    assert fold_item_feedback(ghost, [expiry_of("ghost", T0)], params).state is ghost
    with pytest.raises(ValueError, match="fold_item_feedback"):
        apply_feedback(ghost, expire, params)


def test_a_covisit_never_brings_back_an_item_that_has_no_state() -> None:
    # the id stays in the recent likes of users who liked it: each of their later likes
    # sends it a co-visit, which rebuilt the state expired already, on every worker
    params = ItemParams(uncatalogued_ttl_s=DAY)
    covisit = _signal("ghost", T0 + timedelta(days=2), kind="covisit")
    assert fold_item_feedback(None, [covisit], params) == (None, 0)
    ghost = apply_feedback(ItemState("ghost"), _signal("ghost", T0), params)
    kept = fold_item_feedback(ghost, [covisit], params).state
    assert kept is not None and kept.neighbours == {"other": 1.0}


def test_the_replays_sweep_removes_expired_uncatalogued_states_in_event_time(
    world: SyntheticWorld,
) -> None:
    params = ItemParams(uncatalogued_ttl_s=DAY)
    catalog = Catalog()
    record = world.items[0]
    catalog.put(ItemState(record.item_id, record=record))
    for item_id, at in (("old", T0), ("new", T0 + timedelta(hours=20))):
        catalog.put(apply_feedback(ItemState(item_id), _signal(item_id, at), params))
    now_t = (T0 + timedelta(days=1)).timestamp()

    gone = expire_uncatalogued(catalog, ["old", "new", record.item_id, "never"], now_t, params)

    assert gone == ["old"]
    assert catalog.get("old") is None and catalog.get("new") is not None
    assert catalog.get(record.item_id) is not None
    assert sweep_interval(ItemParams(uncatalogued_ttl_s=HOUR)) == HOUR / 10
    assert sweep_interval(ItemParams()) == 3600.0  # 7 days: hourly
    assert sweep_interval(ItemParams(uncatalogued_ttl_s=3.0)) == 1.0


def test_a_skip_leaves_an_items_place_in_the_trending_orders() -> None:
    # a skip decays the popularity to its own time and adds nothing: the key is the same,
    # or every order holding the item would count it as fallen and be rebuilt
    rng = random.Random(3)
    half_life = 7 * 24 * 3600.0
    for _ in range(2000):
        t = T0 + timedelta(seconds=rng.uniform(0, 1e8))
        state = ItemState("i").with_feedback(rng.uniform(0.1, 1e4), t, half_life)
        later = t + timedelta(seconds=rng.uniform(0, 1e7))
        skipped = state.with_feedback(-0.3, later, half_life)
        assert skipped.popularity != state.popularity or later == t
        assert skipped.trending_key(half_life) == state.trending_key(half_life)


def test_a_co_visit_changes_only_the_neighbours_a_catalog_reads(catalog: Catalog) -> None:
    state = catalog.get("item-00003")
    assert state is not None
    liked = state.with_feedback(1.0, T0, 3600.0)
    catalog.put(liked)
    row = catalog.rows(["item-00003"])[0]
    before = [column[row] for column in catalog.columns()]
    top = catalog.top(5, 3600.0)
    visited = liked.with_covisits(["item-00004"], 1.0, 200)
    catalog.put(visited)

    assert catalog.get("item-00003") is visited
    assert [column[row] for column in catalog.columns()] == before
    assert catalog.top(5, 3600.0) == top and top[0] == "item-00003"
    assert catalog.neighbour_arrays(visited)[1].tolist() == [1.0]
    again = visited.with_feedback(1.0, T0 + timedelta(hours=1), 3600.0)  # a like still counts
    catalog.put(again)
    assert catalog.columns().positives[row] == 2
