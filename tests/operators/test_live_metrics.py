"""Live metrics (operators/live_metrics.py): a scripted scenario with exact figures."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from operators.catalog import Catalog, ItemState
from operators.deescalation import Adjustment
from operators.live_metrics import Histogram, LiveMetrics, LiveMetricsParams, ShownList
from operators.profile import UserProfile
from schemas.catalog import ItemRecord
from schemas.events import Click, Dwell, Event, Impression, NotRelevant, Rating, Skip
from schemas.snapshot import RankedItem, Snapshot, snapshot_to_json

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
CATEGORIES = {"a": "x", "b": "x", "c": "y", "d": "z"}


@pytest.fixture
def catalog() -> Catalog:
    catalog = Catalog()
    for item_id, category in CATEGORIES.items():
        record = ItemRecord(item_id=item_id, category=category, created_at=T0)
        catalog.put(ItemState(item_id=item_id, record=record))
    return catalog


def profile(user: str, applied: int, **extra: object) -> UserProfile:
    return replace(UserProfile.new(user), events_applied=applied, **extra)  # type: ignore[arg-type]


def listed(*items: str) -> ShownList:
    return ShownList(items, tuple(CATEGORIES[i] for i in items))


def snapshot(user: str, *items: str) -> Snapshot:
    return Snapshot(
        user_id=user,
        version=1,
        generated_at=T0,
        source_event_id="s",
        model_version="m",
        items=[RankedItem(item_id=i, score=1.0, category=CATEGORIES[i]) for i in items],
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def adjustment(key: str, rule: str = "not_relevant", reason: str | None = None) -> Adjustment:
    return Adjustment(key, rule, 0.0, 0.75, T0, None, ("e",), reason)


class Script:
    """Feeds events to one LiveMetrics with the lists before and after each."""

    def __init__(self, metrics: LiveMetrics, catalog: Catalog) -> None:
        self.metrics = metrics
        self.catalog = catalog

    def __call__(
        self,
        event: Event,
        before: UserProfile | None,
        shown: Sequence[str] | None,
        after: Sequence[str],
        *,
        now: float = 0.0,
        latency: float | None = None,
        adjustments: Sequence[Adjustment] = (),
        after_profile: UserProfile | None = None,
    ) -> None:
        self.metrics.observe(
            event,
            before=before,
            after=after_profile or before or UserProfile.new(event.user_id),
            shown=listed(*shown) if shown is not None else None,
            snapshot=snapshot(event.user_id, *after),
            adjustments=adjustments,
            catalog=self.catalog,
            now=now,
            latency_s=latency,
        )


def test_ctr_conversion_and_serendipity_count_only_items_of_the_latest_list(
    catalog: Catalog,
) -> None:
    metrics = LiveMetrics(LiveMetricsParams(cold_start_events=2))
    step = Script(metrics, catalog)
    imp = Impression(
        type="impression", event_id="i1", user_id="u", item_ids=["a", "b", "c"], timestamp=at(0)
    )
    step(imp, None, ["a", "b"], ["a", "c"])  # cold: 3 slots, 2 recommended
    step(
        Click(type="click", event_id="c1", user_id="u", item_id="a", timestamp=at(1)),
        profile("u", 1),
        ["a", "c"],
        ["c", "b"],
    )
    # warm from here (2 events before); a click on d, which was not in the list
    step(
        Click(type="click", event_id="c2", user_id="u", item_id="d", timestamp=at(2)),
        profile("u", 2),
        ["c", "b"],
        ["c", "b"],
    )
    warm_imp = Impression(
        type="impression", event_id="i2", user_id="u", item_ids=["c", "b", "d"], timestamp=at(3)
    )
    step(warm_imp, profile("u", 3), ["c", "b"], ["c", "b"])
    # a click on c (category y), which the user already likes: not serendipitous
    step(
        Click(type="click", event_id="c3", user_id="u", item_id="c", timestamp=at(4)),
        profile("u", 4, affinity={"y": 0.5}),
        ["c", "b"],
        ["b"],
    )
    # conversions: a long dwell (no length known: dwell_long_ms) and a 4-star rating on
    # listed items; a short dwell, a 3-star rating and a 5-star rating off the list do not
    for n, event in enumerate(
        [
            Dwell(
                type="dwell",
                event_id="d1",
                user_id="u",
                item_id="b",
                dwell_ms=60_000.0,
                timestamp=at(5),
            ),
            Dwell(
                type="dwell",
                event_id="d2",
                user_id="u",
                item_id="b",
                dwell_ms=1_000.0,
                timestamp=at(6),
            ),
            Rating(
                type="rating", event_id="r1", user_id="u", item_id="b", value=4.0, timestamp=at(7)
            ),
            Rating(
                type="rating", event_id="r2", user_id="u", item_id="b", value=3.0, timestamp=at(8)
            ),
            Rating(
                type="rating", event_id="r3", user_id="u", item_id="a", value=5.0, timestamp=at(9)
            ),
        ]
    ):
        step(event, profile("u", 5 + n), ["b"], ["b"])

    figures = metrics.figures(0.0, len(catalog))
    assert figures["impressions"] == {"cold": 3, "warm": 3}
    assert figures["recommended_impressions"] == {"cold": 2, "warm": 2}
    assert figures["clicks"] == {"cold": 1, "warm": 2}
    assert figures["recommended_clicks"] == {"cold": 1, "warm": 1}
    assert figures["ctr"] == {"all": 0.5, "cold": 0.5, "warm": 0.5}
    assert figures["conversions"] == {"cold": 0, "warm": 2}
    assert figures["conversion_rate"] == 0.5  # 2 conversions / 4 recommended impressions
    assert figures["serendipity"] == 0.5  # the first click (x, new to the user) of two
    assert figures["events_by_type"] == {"click": 3, "dwell": 2, "impression": 2, "rating": 3}


def test_list_figures_coverage_diversity_novelty_and_filter_bubble(catalog: Catalog) -> None:
    metrics = LiveMetrics(LiveMetricsParams(window_s=100.0))
    step = Script(metrics, catalog)
    unit_a = catalog.unit("a")
    assert unit_a is not None
    user = profile("u", 0, vector=tuple(unit_a))
    step(
        Skip(type="skip", event_id="s1", user_id="u", item_id="d", timestamp=at(0)),
        None,
        None,
        ["a", "c"],
        now=0.0,
        after_profile=user,
    )
    step(
        Skip(type="skip", event_id="s2", user_id="u", item_id="d", timestamp=at(1)),
        user,
        ["a", "c"],
        ["a", "b"],
        now=50.0,
        after_profile=user,
    )
    step(
        Skip(type="skip", event_id="s3", user_id="u", item_id="c", timestamp=at(2)),
        user,
        ["a", "b"],
        ["b"],
        now=120.0,
        after_profile=profile("u", 3),
    )

    figures = metrics.figures(120.0, len(catalog))
    # a (last listed at 50) and b (120) are within 100 s of 120; c (0) is not
    assert figures["recommended_items"] == 2
    assert figures["catalog_coverage"] == 0.5
    assert figures["lists"] == 3
    assert figures["diversity"] == pytest.approx((1.0 + 0.0) / 2)  # [x, y] and [x, x]
    # novelty counts the item events before each list: none, then d once, then d twice
    first = 2.0  # -log2(1 / 4) for a and c
    second = -math.log2(1 / 5)  # a and b, unseen, with N = 1
    third = -math.log2(1 / 6)  # b, unseen, with N = 2
    assert figures["novelty_bits"] == pytest.approx((first + second + third) / 3)
    # the last list's user has no embedding: it has no bubble score
    cosines = [
        float(np.mean([1.0, float(unit_a @ catalog.unit("c"))])),  # type: ignore[operator]
        float(np.mean([1.0, float(unit_a @ catalog.unit("b"))])),  # type: ignore[operator]
    ]
    assert figures["filter_bubble"] == pytest.approx(sum(cosines) / 2)
    assert metrics.figures(500.0, len(catalog))["catalog_coverage"] == 0.0


def test_deescalation_shares_reengagement_and_latency(catalog: Catalog) -> None:
    metrics = LiveMetrics(LiveMetricsParams(reengage_within=2))
    step = Script(metrics, catalog)
    # u marks c (y) not relevant: y was 1 of 4, and is gone from the next list
    step(
        NotRelevant(type="not_relevant", event_id="n1", user_id="u", item_id="c", timestamp=at(0)),
        profile("u", 5),
        ["c", "a", "b", "d"],
        ["a", "b", "d"],
        latency=0.01,
        adjustments=[adjustment("category:y"), adjustment("creator:k")],
    )
    # v marks a (x) not relevant, scoped to a surface: x was 2 of 4, then 1 of 4
    step(
        NotRelevant(type="not_relevant", event_id="n2", user_id="v", item_id="a", timestamp=at(0)),
        profile("v", 5),
        ["a", "b", "c", "d"],
        ["b", "c", "d", "c"],
        latency=0.03,
        adjustments=[adjustment("category:x"), adjustment("category:x@surface:home")],
    )
    # seen_it is no dissatisfaction
    step(
        NotRelevant(
            type="not_relevant",
            event_id="n3",
            user_id="w",
            item_id="a",
            reason="seen_it",
            timestamp=at(0),
        ),
        profile("w", 5),
        ["a"],
        ["b"],
        latency=0.02,
    )
    # u comes back with a click on their second event after: re-engaged
    step(
        Skip(type="skip", event_id="u2", user_id="u", item_id="a", timestamp=at(1)),
        profile("u", 6),
        ["a"],
        ["a"],
        latency=0.04,
    )
    step(
        Click(type="click", event_id="u3", user_id="u", item_id="b", timestamp=at(3)),
        profile("u", 7),
        ["a"],
        ["a"],
    )
    # v likes only on the fourth event after: resolved, but not re-engaged
    for n in range(3):
        step(
            Skip(type="skip", event_id=f"v{n}", user_id="v", item_id="d", timestamp=at(n + 1)),
            profile("v", 6 + n),
            ["b"],
            ["b"],
        )
    step(
        Rating(type="rating", event_id="v9", user_id="v", item_id="d", value=5.0, timestamp=at(10)),
        profile("v", 9),
        ["b"],
        ["b"],
    )

    d = metrics.figures(0.0, len(catalog))["deescalation"]
    assert d["adjustments"] == {"not_relevant/none": 4}
    assert d["dissatisfactions"] == 2
    assert d["lists_measured"] == {"not_relevant": 2, "skip_streak": 0}
    assert d["share_before"]["not_relevant"] == pytest.approx((0.25 + 0.5) / 2)
    assert d["share_after"]["not_relevant"] == pytest.approx((0.0 + 0.25) / 2)
    assert d["category_emptied"] == {"not_relevant": 1, "skip_streak": 0}
    assert d["share_before"]["skip_streak"] is None
    assert (d["resolved"], d["reengaged"], d["reengagement_rate"]) == (2, 1, 0.5)
    assert d["mean_events_to_resolution"] == 3.0  # 2 and 4
    assert d["mean_seconds_to_resolution"] == (180 + 600) / 2
    latency = metrics.figures(0.0, 4)["latency_s"]
    assert latency["0.5"] == pytest.approx(0.025)  # of 0.01, 0.03, 0.02, 0.04
    assert latency["0.99"] == pytest.approx(0.0397)
    assert d["latency_s"]["0.5"] == pytest.approx(0.02)  # the two dissatisfactions
    assert metrics.latency.count == 4 and metrics.deescalation_latency.count == 2


def test_a_skip_streak_is_measured_under_its_own_rule(catalog: Catalog) -> None:
    metrics = LiveMetrics()
    Script(metrics, catalog)(
        Skip(type="skip", event_id="s3", user_id="u", item_id="c", timestamp=at(0)),
        profile("u", 5),
        ["c", "c", "a", "b"],
        ["c", "a", "b", "d"],
        adjustments=[adjustment("category:y", rule="skip_streak")],
    )
    d = metrics.figures(0.0, 4)["deescalation"]
    assert d["dissatisfactions"] == 1
    assert d["share_before"]["skip_streak"] == 0.5
    assert d["share_after"]["skip_streak"] == 0.25
    assert d["adjustments"] == {"skip_streak/none": 1}


def test_only_the_latest_users_with_an_open_dissatisfaction_are_kept(catalog: Catalog) -> None:
    metrics = LiveMetrics(LiveMetricsParams(max_users=1))
    step = Script(metrics, catalog)
    for user in ("u", "v"):
        step(
            NotRelevant(
                type="not_relevant",
                event_id=f"n-{user}",
                user_id=user,
                item_id="c",
                timestamp=at(0),
            ),
            profile(user, 5),
            ["a"],
            ["a"],
        )
    assert list(metrics.open) == ["v"]


def test_each_dissatisfaction_counts_on_its_own_and_one_like_resolves_them_all(
    catalog: Catalog,
) -> None:
    metrics = LiveMetrics(LiveMetricsParams(reengage_within=3))
    step = Script(metrics, catalog)
    for n in range(3):  # three in a row: the like comes 4, 3 and 2 events after them
        step(
            NotRelevant(type="not_relevant", event_id=f"n{n}", user_id="u", item_id="c",
                        timestamp=at(n)),
            profile("u", 5 + n), ["a"], ["a"],
        )  # fmt: skip
    old = LiveMetrics.restore(metrics.snapshot())
    step(Skip(type="skip", event_id="s", user_id="u", item_id="a", timestamp=at(3)),
         profile("u", 8), ["a"], ["a"])  # fmt: skip
    step(Click(type="click", event_id="c", user_id="u", item_id="b", timestamp=at(4)),
         profile("u", 9), ["a"], ["a"])  # fmt: skip

    d = metrics.figures(0.0, len(catalog))["deescalation"]
    assert (d["dissatisfactions"], d["resolved"], d["reengaged"]) == (3, 3, 2)
    assert d["reengagement_rate"] == pytest.approx(2 / 3)
    assert d["mean_events_to_resolution"] == 3.0  # 4, 3 and 2
    assert not metrics.open
    assert old.open == {"u": [(2, at(0).timestamp()), (1, at(1).timestamp()),
                              (0, at(2).timestamp())]}  # fmt: skip


def test_a_snapshot_from_before_per_dissatisfaction_counting_restores() -> None:
    metrics = LiveMetrics()
    written = json.loads(metrics.snapshot())
    written["open"] = [["u1", 2, 60.0]]  # one open dissatisfaction per user, as then
    restored = LiveMetrics.restore(json.dumps(written).encode())
    assert restored.open == {"u1": [(2, 60.0)]}


def test_histogram_buckets_are_cumulative_and_negative_latency_counts_as_zero() -> None:
    histogram = Histogram(bounds=(0.01, 0.1), window=3)
    for value in (-0.5, 0.01, 0.05, 2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.01, 2), (0.1, 3), (math.inf, 4)]
    assert histogram.total == pytest.approx(2.06)
    assert list(histogram.recent) == [0.01, 0.05, 2.0]  # the window keeps the last three
    assert Histogram().quantiles() == {0.5: None, 0.95: None, 0.99: None}


def test_shown_list_reads_the_snapshot_json_and_round_trips_its_own_encoding() -> None:
    snap = snapshot("u", "a", "c")
    assert ShownList.from_json(snapshot_to_json(snap)) == ShownList.of(snap) == listed("a", "c")
    unknown = ShownList(("a", "é/b c"), ("x", None))
    assert ShownList.decode(unknown.encode()) == unknown
    assert ShownList.decode(ShownList((), ()).encode()) == ShownList((), ())


def test_snapshot_and_restore_round_trip_and_carry_on_alike(catalog: Catalog) -> None:
    params = LiveMetricsParams(reengage_within=3)
    metrics = LiveMetrics(params)
    step = Script(metrics, catalog)
    step(
        Impression(
            type="impression", event_id="i", user_id="u", item_ids=["a", "b"], timestamp=at(0)
        ),
        None,
        ["a"],
        ["a", "c"],
        latency=0.2,
    )
    step(
        NotRelevant(type="not_relevant", event_id="n", user_id="u", item_id="c", timestamp=at(1)),
        profile("u", 1),
        ["a", "c"],
        ["a"],
        adjustments=[adjustment("category:y")],
        latency=0.1,
    )

    restored = LiveMetrics.restore(metrics.snapshot(), params)
    assert restored.figures(10.0, 4) == metrics.figures(10.0, 4)
    assert restored.snapshot() == metrics.snapshot()
    click = Click(type="click", event_id="c", user_id="u", item_id="a", timestamp=at(2))
    Script(restored, catalog)(click, profile("u", 2), ["a"], ["b"], now=5.0)
    step(click, profile("u", 2), ["a"], ["b"], now=5.0)
    assert restored.figures(10.0, 4) == metrics.figures(10.0, 4)
    assert restored.figures(10.0, 4)["deescalation"]["reengaged"] == 1


def test_forget_drops_what_is_kept_about_the_user() -> None:
    metrics = LiveMetrics(LiveMetricsParams())
    metrics.open["u1"] = [(2, 0.0)]
    metrics.open["u2"] = [(1, 0.0)]

    metrics.forget("u1")
    metrics.forget("nobody")

    assert list(metrics.open) == ["u2"]


def test_a_long_re_engagement_window_keeps_every_dissatisfaction_it_can_still_resolve(
    catalog: Catalog,
) -> None:
    metrics = LiveMetrics(LiveMetricsParams(reengage_within=50))
    step = Script(metrics, catalog)
    for n in range(40):
        step(NotRelevant(type="not_relevant", event_id=f"n{n}", user_id="u", item_id="c",
                         timestamp=at(n)), profile("u", 5 + n), ["a"], ["a"])  # fmt: skip
    step(Click(type="click", event_id="c", user_id="u", item_id="b", timestamp=at(41)),
         profile("u", 46), ["a"], ["a"])  # fmt: skip
    d = metrics.figures(0.0, len(catalog))["deescalation"]
    assert (d["dissatisfactions"], d["resolved"], d["reengaged"]) == (40, 40, 40)
