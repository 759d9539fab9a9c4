"""The prequential harness: metrics, the test-then-train order, and the recommenders.

The synthetic comparison always runs; the MovieLens 100K one (``dataset`` marker) reads
the real files in place and skips, naming the path, when they are absent.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from operators.deescalation import part_of_day
from operators.evaluation import (
    RECOMMENDER_NAMES,
    CooccurrenceRecommender,
    EvaluationConfig,
    EvaluationResult,
    LoopRecommender,
    PopularityRecommender,
    ProtocolViolation,
    Recommender,
    RiverMFRecommender,
    evaluate,
    funk_mf,
    interactions,
    intra_list_diversity,
    measure_log,
    merge_results,
    ndcg_of_hit,
    render_report,
    self_information,
    standard_recommenders,
    write_report,
)
from operators.model import RankingModel
from operators.movielens import MovieLensRating, RatingMapping, rating_events
from operators.ranking import rank_items
from operators.synthetic import SyntheticWorld
from pipeline.offline_commands import _watching, evaluate_command, import_group
from schemas.catalog import ItemRecord, item_to_json
from schemas.events import Dwell, Event, Impression, Rating, Skip, event_to_json

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: Recall@10 of global popularity on MovieLens 100K, from ../shared/datasets/README.md.
README_POPULARITY_RECALL = 0.099


def item(item_id: str, category: str) -> ItemRecord:
    return ItemRecord(item_id=item_id, category=category, created_at=T0)


def rated(user: int, movie: int, stars: float, minute: int) -> list[Event]:
    """The events of one made-up rating, as the MovieLens import produces them."""
    rating = MovieLensRating(int((T0 + timedelta(minutes=minute)).timestamp()), user, movie, stars)
    return list(rating_events(rating, RatingMapping()))


class ScriptedRecommender:
    """Shows each user a fixed list, minus what must be excluded; learns nothing."""

    def __init__(self, lists: dict[str, list[str]]) -> None:
        self.lists = lists

    def learn(self, event: Event) -> None:
        pass

    def recommend(self, user_id: str, k: int, exclude: frozenset[str], now: datetime) -> list[str]:
        return [i for i in self.lists.get(user_id, []) if i not in exclude][:k]


class SpyRecommender:
    """Records every call, in order, with what it had learned at the time."""

    def __init__(self) -> None:
        self.learned: list[str] = []
        self.questions: list[tuple[str, datetime, frozenset[str], tuple[str, ...]]] = []

    def learn(self, event: Event) -> None:
        self.learned.append(event.event_id)

    def recommend(self, user_id: str, k: int, exclude: frozenset[str], now: datetime) -> list[str]:
        self.questions.append((user_id, now, exclude, tuple(self.learned)))
        return []


def synthetic_log(world: SyntheticWorld, events_per_user: int) -> list[Event]:
    """Every user's events, interleaved in time order."""
    events = [e for user in world.users for e in world.events_for(user, events_per_user)]
    return sorted(events, key=lambda e: (e.timestamp, e.user_id))


def without_timings(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: without_timings(v) for k, v in document.items()
                if k not in ("wall_time_s", "events_per_s")}  # fmt: skip
    return document


# -- metrics ---------------------------------------------------------------------------


def test_metric_helpers_on_hand_computed_values() -> None:
    assert ndcg_of_hit(1) == 1.0
    assert ndcg_of_hit(3) == pytest.approx(0.5)
    assert ndcg_of_hit(None) == 0.0
    assert intra_list_diversity(["x", "x", "y"]) == pytest.approx(2 / 3)
    assert intra_list_diversity(["x", "y", "z"]) == 1.0
    assert intra_list_diversity(["x", "x"]) == 0.0
    assert intra_list_diversity(["x"]) is None
    # never-seen item in a 4-item catalog before any interaction: p = 1/4
    assert self_information(0, 0, 4) == pytest.approx(2.0)
    # 1 of 4 interactions, 4 items: p = 2/8
    assert self_information(1, 4, 4) == pytest.approx(2.0)


def test_every_figure_on_a_hand_computed_log() -> None:
    catalog = [item("a", "x"), item("b", "x"), item("c", "y"), item("d", "z")]
    t = [T0 + timedelta(minutes=n) for n in range(7)]

    def dwell(n: int, user: str, item_id: str) -> Dwell:
        return Dwell(type="dwell", event_id=f"e{n}", user_id=user, item_id=item_id,
                     dwell_ms=60_000.0, timestamp=t[n])  # fmt: skip

    log: list[Event] = [
        dwell(1, "u1", "a"),  # positive: list [a, c, b] -> hit at rank 1, new category x
        Skip(type="skip", event_id="e2", user_id="u1", item_id="d", timestamp=t[2]),
        dwell(3, "u1", "b"),  # positive: [c, b] (a, d excluded) -> rank 2, x already known
        Skip(type="skip", event_id="e4", user_id="u2", item_id="b", timestamp=t[4]),
        dwell(5, "u2", "d"),  # positive: [a, c] (b excluded) -> miss
        dwell(6, "u2", "b"),  # positive on an item u2 already had: not evaluated
    ]
    lists = {"u1": ["a", "c", "b"], "u2": ["a", "b", "c"]}
    config = EvaluationConfig(k=10, curve_every=1, split_event=4)
    result = evaluate(log, {"fixed": ScriptedRecommender(lists)}, catalog, config)
    figures = result.as_dict()["recommenders"]["fixed"]

    assert (figures["positives"], figures["hits"]) == (3, 2)
    assert figures["recall_at_k"] == pytest.approx(2 / 3)
    assert figures["ndcg_at_k"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3)
    assert figures["coverage"] == pytest.approx(3 / 4)  # a, b, c shown; d never
    assert figures["diversity"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    # list 1 before anything: 3 x 2 bits; list 2 after 2 interactions (a, d): c and b
    # unseen, p = 1/6; list 3 after 4 (a, d, b, b): a seen once p = 2/8, c unseen p = 1/8
    assert figures["novelty"] == pytest.approx((6 + 2 * math.log2(6) + 2 + 3) / 7)
    assert figures["serendipity"] == pytest.approx(1 / 2)
    assert figures["recall_curve"] == [[1, 1.0], [2, 1.0], [3, pytest.approx(2 / 3)]]
    assert figures["after_split"] == {"positives": 1, "hits": 0, "recall_at_k": 0.0,
                                      "ndcg_at_k": 0.0}  # fmt: skip
    assert figures["events"] == 6
    log_figures = result.as_dict()["log"]
    assert log_figures["positives"] == 4
    assert log_figures["repeat_positives_not_evaluated"] == 1
    assert (log_figures["users"], log_figures["interactions"]) == (2, 6)


def test_a_rating_decides_whether_its_interaction_is_positive() -> None:
    catalog = [item("m1", "x"), item("m2", "x")]
    log = rated(1, 1, 3.0, 0) + rated(1, 2, 4.0, 1)  # 3 stars: a click, yet not positive
    result = evaluate(log, {"fixed": ScriptedRecommender({"u1": ["m1", "m2"]})}, catalog)
    assert result.positives == 1
    assert result.figures["fixed"].hits == 1


# -- the order of questions and lessons ------------------------------------------------


def test_no_recommender_learns_an_interaction_before_it_is_evaluated() -> None:
    catalog = [item(f"m{n}", "x") for n in range(1, 6)]
    log = (rated(1, 1, 5, 0) + rated(2, 1, 4, 0) + rated(1, 2, 2, 1) + rated(1, 3, 4, 2)
           + rated(1, 4, 1, 2) + rated(2, 5, 5, 3))  # fmt: skip
    spy = SpyRecommender()
    evaluate(log, {"spy": spy}, catalog)

    assert spy.learned == [e.event_id for e in log]  # every event, once, in order
    positives = [
        g for g in interactions(log) if any(isinstance(e, Rating) and e.value >= 4 for e in g)
    ]
    assert len(spy.questions) == len(positives) == 4
    for group, (user, now, exclude, learned) in zip(positives, spy.questions, strict=True):
        head = group[0]
        assert (user, now) == (head.user_id, head.timestamp)
        assert not {e.event_id for e in group} & set(learned)
        # everything earlier in the log had been learned, nothing later
        assert list(learned) == [e.event_id for e in log[: log.index(head)]]
        earlier = {e.item_id for e in log[: log.index(head)]
                   if not isinstance(e, Impression) and e.user_id == user}  # fmt: skip
        assert exclude == earlier


def test_a_list_with_an_excluded_item_is_a_protocol_violation() -> None:
    catalog = [item("m1", "x"), item("m2", "x")]

    class Cheater(ScriptedRecommender):
        def recommend(self, user_id: str, k: int, exclude: frozenset[str],
                      now: datetime) -> list[str]:  # fmt: skip
            return ["m1", "m2"]

    log = rated(1, 1, 5, 0) + rated(1, 2, 5, 1)
    with pytest.raises(ProtocolViolation, match="cheat returned"):
        evaluate(log, {"cheat": Cheater({})}, catalog)


# -- the recommenders ------------------------------------------------------------------


def test_popularity_counts_each_users_positive_once_and_breaks_ties_by_id() -> None:
    catalog = [item(f"m{n}", "x") for n in (1, 2, 3, 4)]
    pop = PopularityRecommender(catalog)
    for event in rated(1, 9, 5, 0):  # not in the catalog: never shown
        pop.learn(event)
    for user, movie, stars in [(1, 3, 5), (2, 3, 4), (3, 2, 5), (4, 1, 2)]:
        for event in rated(user, movie, stars, 1):  # click + long dwell + rating: one count
            pop.learn(event)
    assert pop.recommend("u9", 10, frozenset(), T0) == ["m3", "m2", "m1", "m4"]
    assert pop.recommend("u9", 2, frozenset({"m3"}), T0) == ["m2", "m1"]


def test_the_static_model_stops_learning_at_the_split_but_still_reads_recent_likes() -> None:
    catalog = [item(f"m{n}", "x") for n in (1, 2, 3)]
    first_half = rated(1, 1, 5, 0) + rated(1, 2, 5, 1)  # m1 with m2
    # then m1 with m3, twice, and u4 likes m1
    second_half = [
        e
        for u, m, t in [(2, 1, 2), (2, 3, 3), (3, 1, 4), (3, 3, 5), (4, 1, 6)]
        for e in rated(u, m, 5, t)
    ]
    static = CooccurrenceRecommender(catalog, frozen_after=len(first_half))
    online = CooccurrenceRecommender(catalog)
    for event in first_half + second_half:
        static.learn(event)
        online.learn(event)
    exclude = frozenset({"m1"})
    assert online.recommend("u4", 1, exclude, T0) == ["m3"]
    assert static.recommend("u4", 1, exclude, T0) == ["m2"]  # u4's like of m1 was read
    assert static.frozen and not online.frozen


def test_matrix_factorisation_lists_have_no_side_effect_on_the_model() -> None:
    catalog = [item(f"m{n}", "x") for n in (1, 2, 3)]
    mf = RiverMFRecommender(funk_mf(seed=3, n_factors=4), catalog)
    for event in rated(1, 1, 5, 0) + rated(2, 2, 5, 1):
        mf.learn(event)
    users_before = set(mf.model.u_latents)
    assert len(mf.recommend("stranger", 2, frozenset({"m1"}), T0)) == 2
    assert set(mf.model.u_latents) == users_before
    assert "m1" not in mf.recommend("u1", 3, frozenset({"m1"}), T0)


def test_matrix_factorisation_breaks_ties_by_item_id_however_many_tie() -> None:
    # a user the model has not met scores 0 everywhere: argpartition picked any ten of
    # the 1,682 tied items (m969, m97, ...) instead of the first ten ids
    catalog = [item(f"m{n}", "x") for n in range(1, 1683)]
    mf = RiverMFRecommender(funk_mf(seed=3, n_factors=4), catalog)
    first_ids = sorted(f"m{n}" for n in range(1, 1683))[:10]
    assert mf.recommend("stranger", 10, frozenset(), T0) == first_ids
    assert mf.recommend("stranger", 10, frozenset({"m1"}), T0) == [
        *first_ids[1:],
        sorted(f"m{n}" for n in range(1, 1683))[10],
    ]


def test_standard_runs_are_repeatable_from_their_seed() -> None:
    world = SyntheticWorld.generate(seed=4, n_items=40, n_users=8, n_categories=4)
    log = synthetic_log(world, 25)
    split = measure_log(log).split_event
    config = EvaluationConfig(curve_every=10, split_event=split)

    def run() -> dict[str, Any]:
        recommenders = standard_recommenders(list(world.items), seed=9, split_event=split)
        return without_timings(evaluate(log, recommenders, world.items, config).as_dict())  # type: ignore[no-any-return]

    first, second = run(), run()
    assert first == second
    assert set(first["recommenders"]) == {"recloop", "popularity", "funk_mf", "biased_mf",
                                          "static_cooccurrence", "cooccurrence"}  # fmt: skip


def test_a_split_worked_out_at_the_end_is_the_one_a_first_pass_measures() -> None:
    world = SyntheticWorld.generate(seed=5, n_items=40, n_users=8, n_categories=4)
    log = synthetic_log(world, 25)
    measured = EvaluationConfig(curve_every=10, split_event=measure_log(log).split_event)
    at_half = EvaluationConfig(curve_every=10, split_at_half=True)
    assert at_half.measured(measure_log(log)) == measured
    names = ("recloop", "popularity")

    def run(config: EvaluationConfig) -> EvaluationResult:
        recommenders = standard_recommenders(list(world.items), 9, None, only=names)
        return evaluate(log, recommenders, world.items, config)

    first, second = run(measured), run(at_half)
    assert second.config == measured  # the result carries the number, ready to merge
    assert without_timings(first.as_dict()) == without_timings(second.as_dict())
    assert (
        0
        < second.figures["recloop"].after_split.positives
        < second.figures["recloop"].overall.positives
    )
    # a run with no split at all reports none
    none = run(EvaluationConfig(curve_every=10))
    assert none.config.split_event is None and none.figures["recloop"].after_split.positives == 0


def test_recloop_beats_popularity_for_users_with_hidden_tastes() -> None:
    # items are drawn uniformly, so popularity carries no signal; each user likes two of
    # six categories (0.8 vs 0.05), which recloop's loop should pick up
    world = SyntheticWorld.generate(seed=2, n_items=120, n_users=40, n_categories=6)
    log = synthetic_log(world, 80)
    result = evaluate(
        log,
        {"recloop": LoopRecommender(world.items), "popularity": PopularityRecommender(world.items)},
        world.items,
    )
    recloop, popularity = result.figures["recloop"], result.figures["popularity"]
    assert recloop.positives == popularity.positives > 300
    assert recloop.recall > 1.5 * popularity.recall
    assert recloop.recall - popularity.recall > 0.05


def test_recloop_reports_its_online_models_river_figures() -> None:
    world = SyntheticWorld.generate(seed=2, n_items=120, n_users=40, n_categories=6)
    log = synthetic_log(world, 80)
    model = RankingModel(seed=1)
    result = evaluate(
        log,
        {"recloop": LoopRecommender(world.items, model=model),
         "recloop_no_model": LoopRecommender(world.items)},
        world.items,
    )  # fmt: skip
    document = result.as_dict()["recommenders"]
    reported = document["recloop"]["model"]

    assert reported["updates"] == model.updates > 300  # one per like from the head
    assert reported["version"] == f"logreg-{model.updates}"
    # the predictions before each like beat chance: the model learned the hidden tastes
    assert 0.5 < reported["roc_auc"] <= 1.0
    assert 0.0 < reported["log_loss"] < math.log(2)  # below a coin's
    assert reported["drifts"] == model.drifts
    assert document["recloop_no_model"]["model"] is None


def test_recloop_is_asked_for_the_list_the_user_would_see() -> None:
    world = SyntheticWorld.generate(seed=6, n_items=60, n_users=12, n_categories=4)
    recommender = LoopRecommender(world.items, model=RankingModel(seed=1))
    log = synthetic_log(world, 40)
    for event in log:
        recommender.learn(event)
    user = log[-1].user_id
    profile, now = recommender.profiles[user], log[-1].timestamp
    config = recommender.config
    live = [i.item_id for i in rank_items(profile, recommender.catalog, now.timestamp(),
                                          config.ranking, recommender.model, config.deescalation,
                                          None, part_of_day(now, config.deescalation))]  # fmt: skip
    consumed = profile.excluded()

    # what the ranker excludes by itself: the very same ten, exploration slots included
    assert len(consumed) > 10 and recommender.recommend(user, 10, consumed, now) == live
    # items the list would not show anyway change nothing (no longer list, no other slots)
    elsewhere = sorted({i.item_id for i in world.items} - set(live) - consumed)[:20]
    assert recommender.recommend(user, 10, consumed | set(elsewhere), now) == live
    # more excluded (a skipped item is excluded by the protocol, not by the ranker):
    # still ten, from a widened list, none of them excluded
    more = consumed | set(live[:3])
    fewer = recommender.recommend(user, 10, more, now)
    assert len(fewer) == 10 and not set(fewer) & more


def test_recloop_without_per_event_snapshots_shows_the_same_lists() -> None:
    world = SyntheticWorld.generate(seed=6, n_items=60, n_users=12, n_categories=4)
    log = synthetic_log(world, 40)

    def run(snapshots: bool) -> dict[str, Any]:
        recommender = LoopRecommender(world.items, model=RankingModel(seed=1), snapshots=snapshots)
        document = evaluate(log, {"recloop": recommender}, world.items).as_dict()
        return without_timings(document)  # type: ignore[no-any-return]

    assert run(snapshots=True) == run(snapshots=False)


def test_the_baselines_in_a_process_beside_recloop_give_the_same_document(
    tmp_path: Path,
) -> None:
    world = SyntheticWorld.generate(seed=5, n_items=50, n_users=10, n_categories=4)
    log = synthetic_log(world, 30)
    (tmp_path / "events.jsonl").write_bytes(b"".join(event_to_json(e) + b"\n" for e in log))
    (tmp_path / "items.jsonl").write_bytes(b"".join(item_to_json(i) + b"\n" for i in world.items))
    one, two = (run_evaluate(tmp_path, "--jobs", str(jobs)) for jobs in (1, 2))
    # recloop's process works the split out at the end, unless a limit asks for a first
    # pass (the static baseline's process always measures first): the same document
    measured = run_evaluate(tmp_path, "--limit", "1000000")
    assert (one["inputs"]["processes"], two["inputs"]["processes"]) == (1, 2)
    del one["inputs"], two["inputs"], measured["inputs"]
    assert without_timings(one) == without_timings(two) == without_timings(measured)
    assert list(two["recommenders"]) == list(RECOMMENDER_NAMES)
    assert two["protocol"]["split_event"] == measure_log(log).split_event
    assert two["recommenders"]["recloop"]["after_split"]["positives"] > 0


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_bad_line_fails_the_evaluation_without_a_first_pass(tmp_path: Path, jobs: int) -> None:
    world = SyntheticWorld.generate(seed=5, n_items=30, n_users=6, n_categories=3)
    lines = [event_to_json(e) + b"\n" for e in synthetic_log(world, 20)]
    lines.insert(len(lines) // 2, b'{"type": "click", "user_id": "u1"}\n')
    (tmp_path / "events.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "items.jsonl").write_bytes(b"".join(item_to_json(i) + b"\n" for i in world.items))
    evaluated = CliRunner().invoke(
        evaluate_command,
        [str(tmp_path / "events.jsonl"), "--items", str(tmp_path / "items.jsonl"),
         "--jobs", str(jobs)],
    )  # fmt: skip
    assert evaluated.exit_code != 0
    assert isinstance(evaluated.exception, ValidationError)
    assert not evaluated.stdout.strip()  # no document


def test_a_failure_beside_stops_the_first_run_at_its_next_look() -> None:
    steps: list[int] = []
    failed: Future[EvaluationResult] = Future()
    advance = _watching(steps.append, [failed])
    advance(4000)
    failed.set_exception(ValueError("line 7: not an event"))
    advance(95)  # not yet time to look
    with pytest.raises(ValueError, match="line 7"):
        advance(1)
    assert steps == [4000, 95, 1]


def test_merging_runs_over_different_logs_is_refused() -> None:
    world = SyntheticWorld.generate(seed=5, n_items=30, n_users=6, n_categories=3)
    log = synthetic_log(world, 20)
    full = evaluate(log, {"popularity": PopularityRecommender(world.items)}, world.items)
    part = evaluate(log[:40], {"recloop": LoopRecommender(world.items)}, world.items)
    with pytest.raises(ValueError, match="different logs"):
        merge_results([full, part], RECOMMENDER_NAMES)
    again = evaluate(log, {"popularity": PopularityRecommender(world.items)}, world.items)
    with pytest.raises(ValueError, match="ran twice"):
        merge_results([full, again], RECOMMENDER_NAMES)


# -- the report ------------------------------------------------------------------------


def test_the_report_draws_one_curve_per_recommender(tmp_path: Path) -> None:
    world = SyntheticWorld.generate(seed=4, n_items=30, n_users=5, n_categories=3)
    log = synthetic_log(world, 20)
    recommenders: dict[str, Recommender] = {
        "popularity": PopularityRecommender(world.items),
        "cooccurrence": CooccurrenceRecommender(world.items),
    }
    document = evaluate(log, recommenders, world.items, EvaluationConfig(curve_every=5)).as_dict()
    page = render_report(document)
    assert page.count("<polyline") == 2
    assert "popularity" in page and "cooccurrence" in page
    write_report(document, tmp_path / "report" / "index.html")
    assert (tmp_path / "report" / "index.html").read_text(encoding="utf-8") == page
    assert not list((tmp_path / "report").glob(".*"))


# -- the real MovieLens 100K -----------------------------------------------------------

#: The first ratings of MovieLens 100K the whole comparison replays. The full log takes
#: far longer than a test may, because recloop's operator ranks on every event (see
#: docs/evaluation.md for the full run).
DATASET_LIMIT = 5_000


@pytest.fixture(scope="module")
def movielens_import(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens 100K imported by the CLI into a temporary folder (never the repository)."""
    out = tmp_path_factory.mktemp("ml-100k")
    imported = CliRunner().invoke(
        import_group, ["movielens", str(movielens_dir), "--out", str(out)]
    )
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout)["ratings"] == 100_000
    return out


def run_evaluate(folder: Path, *options: str) -> dict[str, Any]:
    """``recloop evaluate`` on an imported folder; the JSON document it printed."""
    evaluated = CliRunner().invoke(
        evaluate_command,
        [str(folder / "events.jsonl"), "--items", str(folder / "items.jsonl"), *options],
    )
    assert evaluated.exit_code == 0, evaluated.output
    document: dict[str, Any] = json.loads(evaluated.stdout)
    return document


@pytest.mark.dataset
def test_whole_comparison_on_the_first_movielens_ratings(movielens_import: Path) -> None:
    report = movielens_import / "report.html"
    # with the worker's per-event snapshots, which the default skips (the same lists)
    document = run_evaluate(movielens_import, "--report", str(report), "--snapshots",
                            "--limit", str(DATASET_LIMIT))  # fmt: skip
    assert document["log"]["interactions"] == DATASET_LIMIT
    sections = document["recommenders"]
    assert set(sections) == {"recloop", "popularity", "funk_mf", "biased_mf",
                             "static_cooccurrence", "cooccurrence"}  # fmt: skip
    for name, figures in sections.items():
        for key in ("recall_at_k", "ndcg_at_k", "coverage", "diversity", "novelty",
                    "serendipity", "events_per_s"):  # fmt: skip
            assert isinstance(figures[key], float), (name, key, figures[key])
        assert figures["positives"] == document["log"]["positives"] > 2500
        assert figures["after_split"]["positives"] > 1000
        assert figures["recall_curve"][-1][0] == figures["positives"]
    popularity = sections["popularity"]["recall_at_k"]
    assert popularity == pytest.approx(README_POPULARITY_RECALL, abs=0.02)
    assert report.read_text(encoding="utf-8").count("<polyline") == len(sections)


@pytest.mark.dataset
def test_popularity_over_the_whole_log_matches_the_datasets_readme(
    movielens_import: Path,
) -> None:
    # the protocol check on exactly the README's setting: all 100,000 ratings
    document = run_evaluate(movielens_import, "--only", "popularity")
    assert document["log"]["interactions"] == 100_000
    recall = document["recommenders"]["popularity"]["recall_at_k"]
    assert recall == pytest.approx(README_POPULARITY_RECALL, abs=0.02)


@pytest.mark.dataset
@pytest.mark.slow
@pytest.mark.timeout(1500)  # several minutes on two cores: well over the default
def test_recloop_meets_the_issue_targets_over_the_whole_log(movielens_import: Path) -> None:
    # The targets of the learning-core issue, on all 100,000 ratings, in one run with
    # popularity: Recall@10 >= 0.20 and at least twice popularity's, coverage >= 40%,
    # and the item index at >= 0.95 recall@10 against exact search (several minutes).
    document = run_evaluate(movielens_import, "--only", "recloop,popularity")
    recloop, popularity = (
        document["recommenders"]["recloop"],
        document["recommenders"]["popularity"],
    )

    assert document["log"]["interactions"] == 100_000
    assert recloop["recall_at_k"] >= 0.20
    assert recloop["recall_at_k"] >= 2 * popularity["recall_at_k"]
    assert recloop["coverage"] >= 0.40
    assert recloop["index"]["recall_at_10_vs_exact"] >= 0.95
    assert recloop["index"]["graph_recall_at_10"] >= 0.95  # the graph alone
    assert recloop["index"]["queries"] == document["log"]["users"]


@pytest.mark.dataset
def test_the_replay_benchmark_reports_recloop_beside_its_references(
    movielens_dir: Path, tmp_path: Path
) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_evaluate.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dataset", str(movielens_dir), "--limit", "1500",
         "--jobs", "1"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip

    (line,) = done.stdout.splitlines()  # one JSON line, progress on stderr
    figures = json.loads(line)
    assert figures["interactions"] == 1500 and figures["target_met"] is None  # a prefix
    assert set(figures["references_s"]) == {"popularity", "funk_mf", "biased_mf",
                                            "static_cooccurrence", "cooccurrence"}  # fmt: skip
    assert 0 < figures["recloop_s"] < figures["wall_s"]
    assert 0.0 <= figures["recall_at_10"] <= 1.0 and figures["snapshots"] is False


def test_the_tally_resolves_every_open_dissatisfaction_with_the_next_like() -> None:
    from operators.evaluation import DeescalationTally
    from schemas.events import Click, NotRelevant, Skip

    t = datetime(2026, 1, 1, tzinfo=UTC)
    tally = DeescalationTally(within=3)
    for n in range(3):  # the like comes 4, 3 and 2 events after them
        tally.observe(NotRelevant(type="not_relevant", event_id=f"n{n}", user_id="u",
                                  item_id=f"i{n}", timestamp=t + timedelta(minutes=n)),
                      (), None, None)  # fmt: skip
    tally.observe(NotRelevant(type="not_relevant", event_id="v", user_id="v", item_id="i0",
                              timestamp=t), (), None, None)  # fmt: skip
    assert tally.as_dict()["unresolved"] == 4
    tally.observe(Skip(type="skip", event_id="s", user_id="u", item_id="i9",
                       timestamp=t + timedelta(minutes=3)), (), None, None)  # fmt: skip
    tally.observe(Click(type="click", event_id="c", user_id="u", item_id="i8",
                        timestamp=t + timedelta(minutes=4)), (), None, None)  # fmt: skip

    figures = tally.as_dict()
    assert figures["dissatisfactions"] == 4
    assert figures["re_engagement_within_3_events"] == 0.5  # 2 of u's 3; v's is open
    assert figures["median_events_to_resolution"] == 3.0
    assert figures["median_hours_to_resolution"] == 3 / 60
    assert figures["unresolved"] == 1


def test_the_replay_expires_items_without_a_catalog_record_as_the_workers_do() -> None:
    # it kept their states for ever, so its lists drifted from the live pipeline's
    from schemas.events import Click

    world = SyntheticWorld.generate(seed=3, n_items=40, n_users=4, n_categories=4)
    items = [i.item_id for i in world.items]
    loop = LoopRecommender(world.items)
    n = 0

    def click(user: str, item: str, at: datetime) -> None:
        nonlocal n
        n += 1
        loop.learn(Click(type="click", event_id=f"e{n}", user_id=user, item_id=item, timestamp=at))

    for user in ("u1", "u2"):
        click(user, "ghost", T0)
        click(user, items[7], T0 + timedelta(minutes=1))
    click("u3", items[1], T0 + timedelta(days=6, hours=23))
    assert loop.catalog.get("ghost") is not None  # within the TTL (7 days)
    click("u3", items[2], T0 + timedelta(days=7, hours=1))
    assert loop.catalog.get("ghost") is None
    # a co-visit for the ghost, before the next sweep (an hour later) could hide it
    click("u1", items[3], T0 + timedelta(days=7, hours=1, minutes=30))
    assert loop.catalog.get("ghost") is None
    click("u4", "ghost", T0 + timedelta(days=9))  # a signal starts afresh
    ghost = loop.catalog.get("ghost")
    assert ghost is not None and ghost.positives == 1
