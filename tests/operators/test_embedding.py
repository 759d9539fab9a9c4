"""Embeddings (operators/embedding.py) and the catalog's item index that follows them."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest

from operators.catalog import Catalog, ItemFeedback, ItemParams, ItemState, apply_feedback
from operators.embedding import (
    EmbeddingParams,
    add_taste,
    item_embedding,
    item_prior,
    unit,
    update_user_vector,
    user_code,
)
from operators.index import ItemIndex
from schemas.catalog import ItemRecord

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
PARAMS = EmbeddingParams()


def _record(item_id: str, category: str = "drama", **extra: object) -> ItemRecord:
    return ItemRecord.model_validate({"item_id": item_id, "category": category,
                                      "created_at": T0, **extra})  # fmt: skip


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_codes_are_fixed_per_name_and_nearly_orthogonal() -> None:
    a, b = user_code("alice", PARAMS), user_code("bob", PARAMS)

    assert np.array_equal(a, user_code("alice", PARAMS))
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert abs(float(a @ b)) < 0.5
    assert not np.array_equal(a, user_code("alice", EmbeddingParams(seed=1)))
    with pytest.raises(ValueError):
        a[0] = 1.0  # shared and cached: read-only


def test_a_new_item_starts_next_to_its_category() -> None:
    drama_1 = item_prior(_record("d1", tags=["period"]), PARAMS)
    drama_2 = item_prior(_record("d2", tags=["crime"]), PARAMS)
    comedy = item_prior(_record("c1", "comedy", tags=["crime"]), PARAMS)

    assert np.linalg.norm(drama_1) == pytest.approx(PARAMS.prior_weight)
    assert _cos(drama_1, drama_2) > 0.6
    assert _cos(drama_1, drama_2) > _cos(drama_2, comedy) > _cos(drama_1, comedy)
    assert not item_prior(None, PARAMS).any()


def test_items_with_the_same_features_start_close_but_not_at_one_point() -> None:
    one = item_prior(_record("d1", tags=["period"]), PARAMS)
    two = item_prior(_record("d2", tags=["period"]), PARAMS)
    other_tag = item_prior(_record("d3", tags=["crime"]), PARAMS)
    without_own_code = EmbeddingParams(identity_weight=0.0)

    assert 0.9 < _cos(one, two) < 0.99
    assert _cos(one, two) > _cos(one, other_tag)
    assert np.array_equal(item_prior(_record("d1", tags=["period"]), PARAMS), one)
    assert np.array_equal(
        item_prior(_record("d1", tags=["period"]), without_own_code),
        item_prior(_record("d2", tags=["period"]), without_own_code),
    )


@pytest.mark.parametrize(("identity_weight", "finds_itself"), [(0.25, True), (0.0, False)])
def test_the_index_tells_new_items_with_the_same_features_apart(
    identity_weight: float, finds_itself: bool
) -> None:
    # 400 items without feedback in 4 categories: without their own codes, each category
    # is one point, 100 equal vectors, and no search can tell which of them it found
    params = EmbeddingParams(identity_weight=identity_weight)
    catalog = Catalog(params)
    for n in range(400):
        record = _record(f"i{n:03d}", f"c{n % 4}")
        catalog.put(ItemState(item_id=record.item_id).with_record(record))
    items = sorted(catalog.states)

    found = [catalog.similar(v, 1)[0][0] for i in items if (v := catalog.unit(i)) is not None]

    assert (found == items) is finds_itself
    if finds_itself:
        rng = np.random.default_rng(7)
        queries = [rng.standard_normal(params.dim) for _ in range(50)]
        assert (catalog.index_recall(queries, 10) or 0.0) >= 0.95


def test_a_record_embedding_of_any_length_is_projected_into_the_space() -> None:
    near = item_prior(_record("a", embedding=[1.0, 0.0, 0.2]), PARAMS)
    close = item_prior(_record("b", embedding=[0.9, 0.1, 0.2]), PARAMS)
    far = item_prior(_record("c", embedding=[-1.0, 0.3, -0.5]), PARAMS)

    assert _cos(near, close) > _cos(near, far)


@pytest.mark.parametrize("scale", [1e200, 1e300, 1e-200, 1e-300])
def test_only_the_direction_of_a_record_embedding_matters(scale: float) -> None:
    # np.linalg.norm overflows (or underflows) for such components, which used to drop
    # the record's embedding from its prior without a word
    plain = item_prior(_record("a", embedding=[1.0, 2.0, 3.0]), PARAMS)
    without = item_prior(_record("a"), PARAMS)

    scaled = item_prior(_record("a", embedding=[scale, 2 * scale, 3 * scale]), PARAMS)

    assert np.allclose(scaled, plain)
    assert not np.allclose(scaled, without)
    assert np.linalg.norm(scaled) == pytest.approx(PARAMS.prior_weight)


def test_a_record_embedding_at_the_float_limit_still_counts() -> None:
    largest = np.finfo(np.float64).max

    prior = item_prior(_record("a", embedding=[largest, largest, -largest]), PARAMS)

    assert np.allclose(prior, item_prior(_record("a", embedding=[1.0, 1.0, -1.0]), PARAMS))


def test_items_liked_by_the_same_users_end_up_close() -> None:
    taste: dict[str, tuple[float, ...]] = {"a": (), "b": (), "c": ()}
    for user in range(30):
        liked = ("a", "b") if user < 20 else ("c",)
        for item in liked:
            taste[item] = add_taste(taste[item], f"user-{user}", 0.75, PARAMS)
    vectors = {i: item_embedding(_record(i), t, PARAMS) for i, t in taste.items()}

    assert _cos(vectors["a"], vectors["b"]) > 0.8
    assert _cos(vectors["a"], vectors["c"]) < 0.5


def test_taste_is_a_sum_so_the_order_of_feedback_does_not_matter() -> None:
    signals = [(f"u{n}", random.Random(n).choice([1.0, -0.225, 0.75])) for n in range(40)]
    forward: tuple[float, ...] = ()
    for user, strength in signals:
        forward = add_taste(forward, user, strength, PARAMS)
    backward: tuple[float, ...] = ()
    for user, strength in reversed(signals):
        backward = add_taste(backward, user, strength, PARAMS)

    assert forward == pytest.approx(backward, abs=1e-5)
    assert len(forward) == PARAMS.dim


def test_a_taste_of_another_dimension_starts_again() -> None:
    old = add_taste((), "u1", 1.0, EmbeddingParams(dim=8))

    assert len(add_taste(old, "u1", 1.0, PARAMS)) == PARAMS.dim
    prior = item_prior(_record("a"), PARAMS)
    assert np.array_equal(item_embedding(_record("a"), old, PARAMS), prior)


def test_the_user_vector_moves_towards_likes_and_away_from_dislikes() -> None:
    liked = unit(item_prior(_record("a"), PARAMS))
    assert liked is not None

    towards = update_user_vector((), liked, 0.75, PARAMS)
    away = update_user_vector(towards, liked, -1.0, PARAMS)

    assert float(np.asarray(towards) @ liked) > 0.7
    assert float(np.asarray(away) @ liked) < 0


def test_unit_refuses_zero_and_non_finite_vectors() -> None:
    assert unit(np.zeros(4)) is None
    assert unit(np.array([np.inf, 0.0])) is None
    assert unit(np.array([3.0, 4.0])) == pytest.approx([0.6, 0.8])


def test_feedback_teaches_the_item_its_taste_and_only_signals_do() -> None:
    params = ItemParams()
    state = ItemState("a", record=_record("a"))
    signal = ItemFeedback("a", 1.0, 0.75, T0, "e1", user_id="u1")
    covisit = ItemFeedback("a", 0.0, 0.0, T0, "e2", kind="covisit", co_items=("b",))
    anonymous = ItemFeedback("a", 1.0, 0.75, T0, "e3")

    taught = apply_feedback(state, signal, params)

    assert np.asarray(taught.taste) == pytest.approx(0.75 * user_code("u1", params.embedding))
    assert apply_feedback(taught, covisit, params).taste == taught.taste
    assert apply_feedback(taught, anonymous, params).taste == taught.taste
    assert ItemState.restore(taught.snapshot()) == taught
    assert ItemFeedback.from_json(signal.to_json()) == signal


# -- the catalog's index ---------------------------------------------------------------


def _catalog(n: int = 30, **kwargs: object) -> Catalog:
    catalog = Catalog(**kwargs)  # type: ignore[arg-type]
    for i in range(n):
        record = _record(f"i{i:02d}", ["drama", "comedy", "horror"][i % 3])
        catalog.put(ItemState(record.item_id, record=record))
    return catalog


def test_the_index_follows_the_catalog_lazily_and_in_one_batch() -> None:
    catalog = _catalog()

    assert len(catalog.index) == 0  # nothing indexed until somebody asks
    near = catalog.similar(catalog.unit("i00"), 5)  # type: ignore[arg-type]

    assert len(catalog.index) == 30
    # same category, no tags: the same prior, so every drama is as near as i00 itself
    assert near[0][1] == pytest.approx(1.0, abs=1e-5)
    assert {item_id for item_id, _ in near} <= {f"i{i:02d}" for i in range(0, 30, 3)}
    assert catalog.sync_index() == 0  # nothing changed since


def test_the_index_drops_withdrawn_and_removed_items_and_takes_returning_ones() -> None:
    catalog = _catalog()
    catalog.sync_index()
    state = catalog.get("i03")
    assert state is not None and state.record is not None

    catalog.put(state.with_record(state.record.model_copy(update={"available": False})))
    catalog.remove("i06")

    found = {item_id for item_id, _ in catalog.neighbours("i00", 29)}
    assert "i03" not in found and "i06" not in found and len(found) == 27
    catalog.put(state)
    assert "i03" in {item_id for item_id, _ in catalog.neighbours("i00", 29)}


def test_an_item_is_reindexed_only_when_its_embedding_turns() -> None:
    catalog = _catalog(3)
    catalog.sync_index()
    state = catalog.get("i00")
    assert state is not None
    before = catalog.index.vector("i00")

    # one tiny nudge: under the tolerance, the index keeps the old vector
    catalog.put(apply_feedback(state, ItemFeedback("i00", 0.01, 1.0, T0, "e", user_id="u"),
                               ItemParams()))  # fmt: skip
    assert catalog.sync_index() == 0
    assert np.array_equal(catalog.index.vector("i00"), before)  # type: ignore[arg-type]
    # many likes from strangers: the item turns, and is indexed anew
    for n in range(20):
        state = catalog.get("i00")
        assert state is not None
        feedback = ItemFeedback("i00", 1.0, 0.75, T0, f"e{n}", user_id=f"u{n}")
        catalog.put(apply_feedback(state, feedback, ItemParams()))
    assert catalog.sync_index() == 1
    current = catalog.unit("i00")
    assert current is not None
    assert float(catalog.index.vector("i00") @ current) > 0.999  # type: ignore[operator]


def test_a_loaded_index_is_reused_and_pruned_of_items_the_catalog_lost() -> None:
    first = _catalog(10)
    first.sync_index()
    saved = ItemIndex.restore(first.index.snapshot())
    saved.upsert("gone", np.ones(PARAMS.dim))

    second = _catalog(10, index=saved)

    assert second.sync_index() == 0  # every vector already in place: nothing re-inserted
    assert second.prune_index() == 1
    assert "gone" not in second.index and len(second.index) == 10


def test_an_index_of_another_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="dim"):
        Catalog(EmbeddingParams(dim=16), index=ItemIndex(dim=8))
