"""The demo's simulated users (operators/simulator.py) and the long-tail catalog."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from operators.simulator import (
    Scoreboard,
    SessionClock,
    SimParams,
    Simulation,
    Visit,
    percentiles,
)
from operators.synthetic import LongTailCatalog
from schemas.events import Click, Dwell, Impression, NotRelevant, Preference, event_to_json
from schemas.events import parse_event as parse
from schemas.snapshot import Prompt, PromptChoice, RankedItem, Snapshot

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CLOCK = SessionClock(T0, timedelta(hours=1))


def _sim(
    seed: int = 3, users: int = 4, items: int = 200, drift_round: int | None = None
) -> Simulation:
    return Simulation.generate(seed, users, items, CLOCK, drift_round=drift_round)


def _snapshot(
    user_id: str, item_ids: list[str], version: int = 1, prompt: Prompt | None = None
) -> Snapshot:
    return Snapshot(
        user_id=user_id,
        version=version,
        generated_at=T0,
        source_event_id=f"src-{version}",
        model_version="test",
        items=[RankedItem(item_id=i, score=1.0) for i in item_ids],
        prompt=prompt,
    )


def _items_of(sim: Simulation, categories: set[str]) -> list[str]:
    return [i.item_id for i in sim.catalog.items if i.category in categories]


def _names(sim: Simulation, user_id: str, threshold: float = 0.5) -> set[str]:
    taste = sim.users[user_id].taste
    return {sim.catalog.categories[c] for c in taste.favourites(threshold)}


def _disliked(sim: Simulation, user_id: str) -> str:
    taste = sim.users[user_id].taste.categories
    return sim.catalog.categories[int(np.argmin(taste))]


def _clicked_categories(sim: Simulation, visits: list[Visit]) -> Counter[str]:
    category = {i.item_id: i.category for i in sim.catalog.items}
    return Counter(category[e.item_id] for v in visits for e in v.events if isinstance(e, Click))


def _play(sim: Simulation, user_id: str, lists: list[list[str]]) -> list[Visit]:
    return [sim.visit(user_id, _snapshot(user_id, shown, n + 1)) for n, shown in enumerate(lists)]


# -- the catalog ------------------------------------------------------------------------


def test_the_catalog_has_a_long_tail_of_category_sizes_and_specialised_creators() -> None:
    catalog = LongTailCatalog.generate(seed=5, n_items=400, n_categories=8)
    sizes = Counter(item.category for item in catalog.items).most_common()
    assert len(sizes) == 8 and sizes[0][1] >= 2.5 * sizes[-1][1]
    homes: dict[str, set[str]] = {}
    for item in catalog.items:
        homes.setdefault(item.creator or "", set()).add(item.category)
    assert all(len(categories) == 1 for categories in homes.values())
    by_creator = Counter(item.creator for item in catalog.items).most_common()
    assert by_creator[0][1] >= 4 * by_creator[-1][1]  # a few prolific creators
    quality = sorted(catalog.quality)
    assert quality[0] >= 0 and quality[-1] <= 1 and np.mean(quality) < 0.5 < quality[-1]
    assert LongTailCatalog.generate(seed=5, n_items=400, n_categories=8) == catalog
    assert LongTailCatalog.generate(seed=6, n_items=400, n_categories=8) != catalog


def test_a_tiny_catalog_still_has_every_category_and_bad_sizes_are_refused() -> None:
    catalog = LongTailCatalog.generate(seed=1, n_items=9, n_categories=8)
    assert len(catalog.items) == 9 and len({i.category for i in catalog.items}) == 8
    with pytest.raises(ValueError, match="n_items"):
        LongTailCatalog.generate(seed=1, n_items=3, n_categories=8)
    with pytest.raises(ValueError, match="n_categories"):
        LongTailCatalog.generate(seed=1, n_items=30, n_categories=13)
    with pytest.raises(ValueError, match="n_categories must be at least 5"):
        Simulation.generate(1, 2, 40, CLOCK, n_categories=4)
    with pytest.raises(ValueError, match="n_users"):
        Simulation.generate(1, 0, 40, CLOCK)


# -- what users do -------------------------------------------------------------------------


def test_a_user_clicks_items_of_their_taste_far_more_than_others() -> None:
    sim = _sim()
    user = "user-0000"
    liked = _names(sim, user)
    mixed = sim.catalog.items[:100]
    rng = np.random.default_rng(0)
    lists = [
        [mixed[int(i)].item_id for i in rng.choice(100, 10, replace=False)] for _ in range(300)
    ]
    clicks = _clicked_categories(sim, _play(sim, user, lists))
    shown = Counter(mixed[int(i)].category for i in range(100))
    on_taste = sum(clicks[c] for c in liked) / sum(clicks.values())
    shown_on_taste = sum(shown[c] for c in liked) / 100
    assert on_taste > 0.6 > shown_on_taste + 0.2
    assert clicks[_disliked(sim, user)] == 0


def test_the_top_of_the_list_is_looked_at_and_clicked_more() -> None:
    sim = _sim()
    user = "user-0001"
    pool = _items_of(sim, _names(sim, user))
    rng = np.random.default_rng(1)
    lists = [[pool[int(i)] for i in rng.permutation(len(pool))[:10]] for _ in range(400)]
    positions = Counter(
        e.position for v in _play(sim, user, lists) for e in v.events if isinstance(e, Click)
    )
    top, bottom = positions[0] + positions[1], positions[8] + positions[9]
    assert top > 2 * bottom > 0


def test_expected_ctr_is_what_users_do_on_average() -> None:
    sim = _sim()
    user = "user-0002"
    shown = [i.item_id for i in sim.catalog.items[:10]]
    visits = _play(sim, user, [shown] * 1500)
    observed = sum(v.clicks for v in visits) / sum(v.impressions for v in visits)
    assert visits[0].expected_ctr == pytest.approx(observed, abs=0.02)
    assert 0 < observed < 1


def test_a_list_of_favourites_beats_the_baselines_and_the_best_list_beats_everything() -> None:
    sim = _sim()
    user = "user-0003"
    favourites = sorted(
        _items_of(sim, _names(sim, user)),
        key=lambda i: -sim.liking(user)[int(i.split("-")[1])],
    )[:10]
    popularity, random_ctr, best = sim.baselines(user, 10)
    good = sim.expected_ctr(user, favourites)
    bad = sim.expected_ctr(user, _items_of(sim, {_disliked(sim, user)})[:10])
    assert bad == 0.0 < random_ctr < popularity < good <= best + 1e-12
    # the best list is the liked items best first: reversing it costs (position bias)
    assert sim.expected_ctr(user, favourites[::-1]) < good


def test_a_click_comes_with_a_dwell_in_proportion_to_liking_and_items_are_consumed() -> None:
    sim = _sim()
    user = "user-0000"
    pool = _items_of(sim, set(sim.catalog.categories))[:60]
    visits = _play(sim, user, [pool[n : n + 10] for n in range(0, 60, 10)] * 20)
    events = [e for v in visits for e in v.events]
    liking = sim.liking(user)
    duration = {i.item_id: i.duration_ms or 1.0 for i in sim.catalog.items}
    pairs = [
        (liking[int(d.item_id.split("-")[1])], d.dwell_ms / duration[d.item_id])
        for d in events
        if isinstance(d, Dwell)
    ]
    clicks = [e for e in events if isinstance(e, Click)]
    assert len(pairs) == len(clicks) > 10
    low = [share for like, share in pairs if like < 0.3]
    high = [share for like, share in pairs if like >= 0.5]
    assert low and high and np.mean(high) > np.mean(low) + 0.3
    assert {int(c.item_id.split("-")[1]) for c in clicks} == sim.users[user].consumed


def test_items_far_from_taste_are_marked_not_relevant_again_and_again() -> None:
    sim = _sim()
    user = "user-0001"
    disliked = _items_of(sim, {_disliked(sim, user)})
    liked = _items_of(sim, _names(sim, user))
    lists = [disliked[n % 5 : n % 5 + 4] + liked[n * 6 : n * 6 + 6] for n in range(6)]
    visits = _play(sim, user, lists)
    marks = [e for v in visits for e in v.events if isinstance(e, NotRelevant)]
    assert len(marks) >= 3 and all(m.item_id in disliked for m in marks)
    assert {m.reason for m in marks} == {"too_many_of_these"}  # 4 of a kind in each list
    one = _play(sim, user, [disliked[:1] + liked[40:49]] * 10)
    reasons = {e.reason for v in one for e in v.events if isinstance(e, NotRelevant)}
    assert reasons == {"not_interested"}
    # each visit's marks are measured in the next list: here the category stayed
    assert visits[1].after_not_relevant and visits[1].after_not_relevant[0][1] == 0.4


def test_a_prompt_to_pause_a_category_far_from_taste_is_answered() -> None:
    sim = _sim()
    user = "user-0002"
    far, near = _disliked(sim, user), sorted(_names(sim, user))[0]
    shown = _items_of(sim, _names(sim, user))[:10]

    def prompt(category: str) -> Prompt:
        return Prompt(
            prompt_id="p1",
            question="Want to steer what you see?",
            choices=[PromptChoice(label="pause", action="pause_category", category=category)],
        )

    answers = [
        e
        for n in range(20)
        for e in sim.visit(user, _snapshot(user, shown, n + 1, prompt(far))).events
        if isinstance(e, Preference)
    ]
    assert answers and all(a.category == far and a.prompt_id == "p1" for a in answers)
    assert all(
        not isinstance(e, Preference)
        for n in range(20)
        for e in sim.visit(user, _snapshot(user, shown, n + 30, prompt(near))).events
    )


def test_drift_moves_clicks_to_other_categories_and_the_old_ones_get_marked() -> None:
    sim = _sim(users=8, drift_round=11)
    drifting = [u for u, user in sim.users.items() if user.drifts_to is not None]
    assert len(drifting) == 4  # drift_share 0.5
    user = drifting[0]
    before_taste = _names(sim, user)
    drifts_to = sim.users[user].drifts_to
    assert drifts_to is not None
    after_taste = {sim.catalog.categories[c] for c in drifts_to.favourites()}
    assert not before_taste & after_taste
    pool = _items_of(sim, before_taste | after_taste)
    rng = np.random.default_rng(2)
    lists = [[pool[int(i)] for i in rng.permutation(len(pool))[:10]] for _ in range(20)]
    visits = _play(sim, user, lists)
    early, late = visits[:10], visits[10:]
    assert not any(v.drifted for v in early) and all(v.drifted for v in late)
    assert all(v.drifts for v in visits)
    clicks_early, clicks_late = _clicked_categories(sim, early), _clicked_categories(sim, late)
    assert sum(clicks_early[c] for c in before_taste) > 3 * sum(
        clicks_early[c] for c in after_taste
    )
    assert sum(clicks_late[c] for c in after_taste) > 3 * sum(clicks_late[c] for c in before_taste)
    marked = {m.item_id for v in late for m in v.events if isinstance(m, NotRelevant)}
    category = {i.item_id: i.category for i in sim.catalog.items}
    assert marked and {category[i] for i in marked} <= before_taste
    assert max(v.far_share for v in late) > 0.3 > max(v.far_share for v in early)


def test_the_same_seed_gives_the_same_events_and_another_seed_others() -> None:
    def run(seed: int) -> list[bytes]:
        sim = _sim(seed=seed, users=3, drift_round=3)
        out = []
        for user in sim.users:
            out.append(event_to_json(sim.hello(user)))
            for n in range(5):
                shown = [i.item_id for i in sim.catalog.items[n * 7 : n * 7 + 10]]
                out.extend(
                    event_to_json(e) for e in sim.visit(user, _snapshot(user, shown, n + 1)).events
                )
        return out

    first = run(4)
    assert first == run(4)
    assert first != run(5)


def test_every_event_is_valid_keyed_by_its_user_unique_and_timed_by_the_clock() -> None:
    sim = _sim()
    seen: set[str] = set()
    for user in sim.users:
        for n in range(6):
            shown = [i.item_id for i in sim.catalog.items[n * 10 : n * 10 + 10]]
            visit = sim.visit(user, _snapshot(user, shown, n + 1))
            assert isinstance(visit.events[0], Impression) and visit.events[0].item_ids == shown
            times = [e.timestamp for e in visit.events]
            assert times == sorted(times) and times[0] == CLOCK.at(n + 1)
            for event in visit.events:
                assert parse(event_to_json(event)) == event and event.user_id == user
                assert event.event_id not in seen
                seen.add(event.event_id)
    hello = sim.hello("user-0000")
    assert isinstance(hello, Preference) and hello.action == "prompts_on"
    empty = sim.visit("user-0000", _snapshot("user-0000", [], 99))
    assert len(empty.events) == 1 and empty.impressions == 0  # still asks for a list


# -- figures ------------------------------------------------------------------------------


def _visit(user: str, round_no: int, clicks: int, expected: float, **extra: object) -> Visit:
    fields: dict[str, object] = {
        "user_id": user, "round": round_no, "drifted": False, "drifts": False, "events": (),
        "impressions": 10, "clicks": clicks, "expected_ctr": expected,
        "popularity_ctr": 0.1, "random_ctr": 0.05, "oracle_ctr": 0.3, "far_share": 0.0,
    }  # fmt: skip
    fields.update(extra)
    return Visit(**fields)


def test_the_scoreboard_tells_the_story_round_by_round() -> None:
    board = Scoreboard(drift_round=3)
    board.add(_visit("a", 1, 0, 0.05))
    board.add(_visit("b", 1, 1, 0.07, drifts=True))
    board.add(_visit("a", 2, 2, 0.20, not_relevant=(("drama", 0.4),)))
    board.add(_visit("b", 2, 2, 0.22, drifts=True))
    board.add(_visit("a", 3, 2, 0.18, after_not_relevant=(("drama", 0.1),)))
    board.add(_visit("b", 3, 0, 0.02, drifts=True, drifted=True, far_share=0.5))
    board.add(_visit("a", 4, 2, 0.19))
    board.add(_visit("b", 4, 2, 0.15, drifts=True, drifted=True))
    rows = board.by_round()
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["ctr"] == pytest.approx(0.05) and rows[0]["expected_ctr"] == pytest.approx(0.06)
    assert rows[2]["drifting_expected_ctr"] == pytest.approx(0.02)
    assert rows[2]["staying_expected_ctr"] == pytest.approx(0.18)
    summary = board.summary(window=2)
    assert summary["first_round"] == pytest.approx(0.06)
    assert summary["before_drift"] == pytest.approx((0.06 + 0.21) / 2)
    assert summary["drift"]["drifting_dip"] == pytest.approx(0.02)
    assert summary["drift"]["drifting_end"] == pytest.approx((0.02 + 0.15) / 2)
    deescalation = board.deescalation()
    assert deescalation["pairs"] == 1
    assert (deescalation["share_before"], deescalation["share_after"]) == (0.4, 0.1)
    assert deescalation["far_share_at_drift"] == pytest.approx(0.25)
    assert board.clicks == 11 and board.impressions == 80


def test_percentiles() -> None:
    figures = percentiles([float(n) for n in range(1, 101)])
    assert figures["p50"] == pytest.approx(50.5) and figures["p99"] == pytest.approx(99.01)
    assert figures["count"] == 100 and figures["max"] == 100.0
    assert percentiles([]) == {}
    with pytest.raises(ValueError, match="non-finite"):
        percentiles([1.0, float("nan")])


def test_params_give_a_falling_examination_curve() -> None:
    exam = SimParams().examination(10)
    assert exam[0] == 1.0 and all(np.diff(exam) < 0) and exam[-1] > 0.1
