"""RankingModel (operators/model.py): River's contract, online learning, fast scoring."""

from __future__ import annotations

import copy
import pickle
import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from river import metrics

from operators.bloom import Bloom
from operators.catalog import Catalog
from operators.feedback_loop import LoopConfig, apply_event, process_event
from operators.model import METRICS_WINDOW, Features, RankingModel
from operators.profile import UserProfile
from operators.ranking import MODEL_VERSION, RankingParams
from schemas.events import Click, Skip


def _examples(seed: int, n: int) -> list[tuple[dict[str, float], bool]]:
    """Likes have high co-visitation, passes high trend: a pattern the model must find."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        liked = rng.random() < 0.3
        rows.append(({"covisit": rng.uniform(0.5, 1.0) if liked else rng.uniform(0.0, 0.5),
                      "trend": rng.uniform(0.0, 1.0),
                      "log_popularity": rng.uniform(0, 5)}, liked))  # fmt: skip
    return rows


def _train(model: RankingModel, rows: list[tuple[dict[str, float], bool]]) -> None:
    for features, liked in rows:
        model.learn([features], []) if liked else model.learn([], [features])


def test_the_model_learns_what_users_like() -> None:
    model = RankingModel(learning_rate=0.1)
    _train(model, _examples(1, 2000))

    liked = model.score({"covisit": 0.9, "trend": 0.5, "log_popularity": 2.0})
    passed = model.score({"covisit": 0.1, "trend": 0.5, "log_popularity": 2.0})
    assert liked > 0.6 > passed
    figures = model.figures()
    assert figures["roc_auc"] > 0.9 and figures["updates"] == 2000
    assert model.version == "logreg-2000"


def _exact_auc(scored: list[tuple[float, bool]]) -> float:
    """The share of (liked, passed) pairs the scores order right; ties count half."""
    liked = [p for p, y in scored if y]
    passed = [p for p, y in scored if not y]
    right = sum((a > b) + 0.5 * (a == b) for a in liked for b in passed)
    return right / (len(liked) * len(passed))


def test_the_online_figures_are_exact_over_the_latest_window() -> None:
    model = RankingModel(learning_rate=0.1)
    assert model.figures()["roc_auc"] is None and model.figures()["log_loss"] is None
    model.learn([{"covisit": 0.9}], [])
    assert model.figures()["roc_auc"] is None  # one label only: undefined
    assert model.figures()["log_loss"] is not None

    # the users' taste turns round after two windows: what they liked they now pass over
    turned = [(features, not liked) for features, liked in _examples(6, 2 * METRICS_WINDOW)]
    scored = []
    for features, liked in turned + _examples(7, METRICS_WINDOW):
        scored.append((model.score(features), liked))  # what learn scores before it learns
        _train(model, [(features, liked)])

    figures = model.figures()
    assert figures["roc_auc"] == pytest.approx(_exact_auc(scored[-METRICS_WINDOW:]), abs=1e-9)
    # the latest window, not the whole stream: the window holds the turn the model took
    # time to follow, which the two windows of the old taste before it dilute
    assert figures["roc_auc"] < _exact_auc(scored) - 0.01
    assert figures["updates"] == 3 * METRICS_WINDOW + 1


def test_the_auc_is_undefined_while_the_window_holds_one_kind_of_example() -> None:
    model = RankingModel()
    _train(model, _examples(9, 100))  # likes and passes
    assert model.figures()["roc_auc"] is not None
    for _ in range(METRICS_WINDOW):  # likes alone (say model_negatives set to 0)
        model.learn([{"covisit": 0.9}], [])
    assert model.figures()["roc_auc"] is None
    assert model.figures()["log_loss"] is not None


def test_the_checkpoint_stays_bounded_however_long_the_model_learns() -> None:
    model = RankingModel()
    rows = _examples(10, 12 * METRICS_WINDOW)
    _train(model, rows[: 2 * METRICS_WINDOW])
    early = len(model.snapshot())
    _train(model, rows[2 * METRICS_WINDOW :])  # without reading its figures in between
    assert len(model.snapshot()) < 1.2 * early


def test_a_checkpoint_from_before_the_windowed_figures_keeps_its_learning() -> None:
    model = RankingModel(seed=3)
    _train(model, _examples(7, 300))
    old = copy.deepcopy(model)
    old.auc, old.log_loss = metrics.ROCAUC(), metrics.LogLoss()  # as they were written
    del old.recent
    row = {"covisit": 0.4, "trend": 0.3, "log_popularity": 1.0}

    restored = RankingModel.restore(pickle.dumps(old))

    assert restored.score(row) == model.score(row) and restored.updates == 300
    assert restored.figures()["roc_auc"] is None  # the figures start afresh
    _train(restored, _examples(8, 50))
    assert restored.figures()["roc_auc"] is not None


def test_fast_scoring_equals_rivers_own_prediction() -> None:
    model = RankingModel()
    _train(model, _examples(2, 300))
    rows = [features for features, _ in _examples(3, 50)] + [{}, {"unseen": 1.0}]

    fast = model.score_many(rows)

    assert fast == pytest.approx([model.score(row) for row in rows], abs=1e-9)


def test_scoring_columns_gives_the_very_scores_of_scoring_rows() -> None:
    import numpy as np

    model = RankingModel()
    # "affinity" is constant (no spread: River leaves it out), "similarity" never seen
    _train(model, [({**f, "affinity": 0.5}, liked) for f, liked in _examples(4, 300)])
    names = ("covisit", "trend", "affinity", "log_popularity", "similarity")
    rng = np.random.default_rng(4)
    columns = rng.uniform(-3.0, 3.0, size=(len(names), 40))
    columns[0, :5] = [1e6, -1e6, 0.0, 1e-12, 3.0]  # saturated both ways

    rows = [dict(zip(names, columns[:, n].tolist(), strict=True)) for n in range(40)]
    assert model.score_columns(names, columns) == model.score_many(rows)
    assert model.score_columns(names, columns[:, :0]) == []


def test_learning_never_mutates_its_input_and_scoring_has_no_side_effects() -> None:
    model = RankingModel()
    positive, negative = {"covisit": 0.7, "trend": 0.1}, {"covisit": 0.1, "trend": 0.8}
    frozen = (dict(positive), dict(negative))
    model.learn([positive], [negative])
    before = model.snapshot()

    model.score(positive)
    model.score_many([positive, negative])

    assert (positive, negative) == frozen
    assert model.snapshot() == before


def test_pickling_and_snapshots_round_trip() -> None:
    model = RankingModel(learning_rate=0.02, l2=0.001, seed=4)
    _train(model, _examples(4, 200))
    row = {"covisit": 0.4, "trend": 0.3, "log_popularity": 1.0}

    for clone in (RankingModel.restore(model.snapshot()), pickle.loads(pickle.dumps(model))):
        assert clone.score(row) == model.score(row)
        assert (clone.learning_rate, clone.l2, clone.seed) == (0.02, 0.001, 4)
        assert clone.figures() == model.figures()
    with pytest.raises(TypeError):
        RankingModel.restore(pickle.dumps({"not": "a model"}))


def test_same_data_same_model() -> None:
    a, b = RankingModel(seed=9), RankingModel(seed=9)
    rows = _examples(5, 300)
    _train(a, rows)
    _train(b, copy.deepcopy(rows))
    assert a.snapshot() == b.snapshot()


def test_the_loop_trains_on_new_likes_only_and_names_the_model(catalog: Catalog) -> None:
    t0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    model = RankingModel()
    events = [
        Click(type="click", event_id="e1", user_id="u", item_id="item-00001", timestamp=t0),
        Skip(type="skip", event_id="e2", user_id="u", item_id="item-00002",
             timestamp=t0 + timedelta(minutes=1)),
        Click(type="click", event_id="e3", user_id="u", item_id="item-00001",
              timestamp=t0 + timedelta(minutes=2)),
        Click(type="click", event_id="e4", user_id="u", item_id="item-00003",
              timestamp=t0 + timedelta(minutes=3)),
    ]  # fmt: skip
    profile = None
    updates = []
    for event in events:
        step = process_event(event, profile, catalog, LoopConfig(), t0, model)
        profile = step.profile
        updates.append(model.updates)
        assert step.snapshot is not None
        assert step.snapshot.model_version == f"{MODEL_VERSION}+logreg-{model.updates}"

    assert updates == [1, 1, 1, 2]  # the skip and the repeated like teach nothing


class _Spy(RankingModel):
    """A model that keeps what it was taught."""

    def __init__(self) -> None:
        super().__init__()
        self.taught: list[tuple[list[Features], list[Features]]] = []

    def learn(self, positives: Sequence[Features], negatives: Sequence[Features]) -> None:
        self.taught.append(([dict(p) for p in positives], [dict(n) for n in negatives]))
        super().learn(positives, negatives)


def test_the_model_learns_from_likes_of_the_head_it_reranks(catalog: Catalog) -> None:
    # a new user: the heuristic orders candidates by trend alone; items 1, 2, 3 have 3, 2
    # and 1 likes, so with a head of 2 a like of item 1 or 2 teaches the re-ranker and a
    # like of an item nobody liked yet (far down) does not
    t0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    for n, item_id in ((3, "item-00001"), (2, "item-00002"), (1, "item-00003")):
        state = catalog.get(item_id)
        assert state is not None
        for _ in range(n):
            state = state.with_feedback(1.0, t0, 7 * 24 * 3600.0)
        catalog.put(state)
    config = LoopConfig(ranking=replace(RankingParams(), model_rerank=2, model_negatives=2))

    def like(item_id: str, profile: UserProfile | None = None) -> _Spy:
        model = _Spy()
        event = Click(type="click", event_id=f"like-{item_id}", user_id="u", item_id=item_id,
                      timestamp=t0 + timedelta(minutes=1))  # fmt: skip
        apply_event(event, profile, catalog, config, model)
        return model

    assert like("item-00009").taught == []  # from far down the list: nothing learned
    (((positive,), negatives),) = like("item-00001").taught
    assert positive["trend"] == pytest.approx(1.0)  # the most popular item sets the scale
    # the negatives are the head the like came from (the next two), not the rest
    assert sorted(n["trend"] for n in negatives) == pytest.approx([1 / 3, 2 / 3], rel=1e-3)
    assert like("item-00002").taught != []  # second: still in the head
    assert like("item-00003").taught == []  # third: just past it
    # the head is the one a list is ranked from: an item the user consumed long ago (the
    # consumed-set filter, past the history) is never shown, so it is not in it
    consumed = replace(UserProfile.new("u"), consumed=Bloom.empty(100).add("item-00001"))
    assert like("item-00001", consumed).taught == []
    (((positive,), negatives),) = like("item-00003", consumed).taught
    assert positive["trend"] == pytest.approx(1 / 3, rel=1e-3)  # second of those shown
    assert all(n["trend"] != pytest.approx(1.0) for n in negatives)
    # an item no source brought (the catalog does not know it) teaches nothing either
    assert like("not-in-the-catalog").taught == []


def test_a_restored_model_takes_a_new_learning_rate() -> None:
    model = RankingModel(learning_rate=0.05)
    model.learn([{"covisit": 1.0}], [{"covisit": 0.0}])
    restored = RankingModel.restore(model.snapshot())

    restored.set_learning_rate(0.5)
    fast, slow = RankingModel.restore(restored.snapshot()), RankingModel.restore(model.snapshot())
    fast.learn([{"covisit": 1.0}], [{"covisit": 0.0}])
    slow.learn([{"covisit": 1.0}], [{"covisit": 0.0}])

    assert fast.learning_rate == 0.5
    assert fast.score({"covisit": 1.0}) > slow.score({"covisit": 1.0})
    with pytest.raises(ValueError):
        fast.set_learning_rate(0.0)
