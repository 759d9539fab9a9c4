"""signal_of and impression_signals (operators/signals.py): what each event teaches."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from operators.signals import Signal, SignalRules, impression_signals, signal_of
from schemas.events import Click, Dwell, Event, Impression, NotRelevant, Rating, Skip

T = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
RULES = SignalRules()


def _click() -> Click:
    return Click(type="click", event_id="e", user_id="u", item_id="i", timestamp=T)


def _skip() -> Skip:
    return Skip(type="skip", event_id="e", user_id="u", item_id="i", timestamp=T)


def _not_relevant() -> NotRelevant:
    return NotRelevant(type="not_relevant", event_id="e", user_id="u", item_id="i", timestamp=T)


def _dwell(dwell_ms: float) -> Dwell:
    return Dwell(
        type="dwell", event_id="e", user_id="u", item_id="i", timestamp=T, dwell_ms=dwell_ms
    )


def _rating(value: float) -> Rating:
    return Rating(type="rating", event_id="e", user_id="u", item_id="i", timestamp=T, value=value)


def _signal(event: Event, expected_ms: float | None = None, rules: SignalRules = RULES) -> Signal:
    signal = signal_of(event, expected_ms, rules)
    assert signal is not None
    return signal


def test_a_click_is_a_full_implicit_positive() -> None:
    signal = _signal(_click())

    assert signal == Signal(item_id="i", target=1.0, weight=RULES.implicit_weight)
    assert signal.positive and not signal.explicit


def test_a_skip_is_a_weak_implicit_negative() -> None:
    skip = _signal(_skip())

    assert not skip.positive and not skip.explicit
    assert -1.0 < skip.target < 0.0
    assert abs(skip.target) < abs(_signal(_not_relevant()).target)


def test_not_relevant_is_the_strongest_negative_and_explicit() -> None:
    signal = _signal(_not_relevant())

    assert signal.target == -1.0
    assert signal.explicit
    assert signal.weight == RULES.explicit_weight


def test_the_default_weights_are_implicit_to_explicit_three_to_one() -> None:
    implicit, explicit = _signal(_click()).weight, _signal(_rating(5)).weight

    assert implicit == pytest.approx(3 * explicit)


@pytest.mark.parametrize(
    ("dwell_ms", "target"),
    [
        pytest.param(0, -0.2, id="none"),
        pytest.param(4_999, -0.2, id="under-short"),
        pytest.param(5_000, 0.3, id="at-short"),
        pytest.param(29_999, 0.3, id="under-long"),
        pytest.param(30_000, 1.0, id="at-long"),
        pytest.param(86_400_000, 1.0, id="a-day"),
    ],
)
def test_dwell_without_a_known_duration_uses_the_thresholds(dwell_ms: float, target: float) -> None:
    assert _signal(_dwell(dwell_ms)).target == target


@pytest.mark.parametrize(
    ("dwell_ms", "target"),
    [
        pytest.param(5_999, -0.2, id="under-10pct"),
        pytest.param(6_000, 0.3, id="at-10pct"),
        pytest.param(29_999, 0.3, id="under-half"),
        pytest.param(30_000, 1.0, id="at-half"),
        pytest.param(90_000, 1.0, id="longer-than-the-item"),
    ],
)
def test_dwell_is_judged_as_a_share_of_the_known_duration(dwell_ms: float, target: float) -> None:
    assert _signal(_dwell(dwell_ms), expected_ms=60_000).target == target


def test_the_same_dwell_means_opposite_things_on_short_and_long_items() -> None:
    forty_seconds = _dwell(40_000)

    on_a_half_hour_show = _signal(forty_seconds, expected_ms=1_800_000)
    on_a_one_minute_clip = _signal(forty_seconds, expected_ms=60_000)
    unknown_length = _signal(forty_seconds, expected_ms=None)

    assert not on_a_half_hour_show.positive
    assert on_a_one_minute_clip.positive
    assert unknown_length.positive


def test_a_short_dwell_on_a_short_item_is_positive() -> None:
    assert _signal(_dwell(4_000), expected_ms=6_000).target == 1.0
    assert _signal(_dwell(4_000)).target == -0.2


def test_dwell_is_implicit() -> None:
    signal = _signal(_dwell(60_000))

    assert not signal.explicit and signal.weight == RULES.implicit_weight


def test_custom_dwell_thresholds_are_honoured() -> None:
    rules = SignalRules(dwell_long_ms=10_000, dwell_short_ms=1_000)

    assert _signal(_dwell(10_000), rules=rules).target == 1.0
    assert _signal(_dwell(999), rules=rules).target == -0.2
    assert _signal(_dwell(10_000)).target == 0.3


@pytest.mark.parametrize(
    ("stars", "target"),
    [(0, -1.0), (1, -0.6), (2.5, 0.0), (3, 0.2), (4, 0.6), (5, 1.0)],
)
def test_a_rating_maps_zero_to_five_stars_onto_minus_one_to_one(
    stars: float, target: float
) -> None:
    signal = _signal(_rating(stars))

    assert signal.target == pytest.approx(target)
    assert signal.explicit and signal.weight == RULES.explicit_weight


def test_every_rating_target_stays_within_minus_one_and_one() -> None:
    targets = [_signal(_rating(tenth / 10)).target for tenth in range(51)]

    assert min(targets) == -1.0 and max(targets) == 1.0
    assert targets == sorted(targets)


def test_custom_strengths_are_honoured() -> None:
    rules = SignalRules(
        skip_target=-0.5, not_relevant_target=-0.9, implicit_weight=0.6, explicit_weight=0.4
    )

    assert _signal(_skip(), rules=rules) == Signal("i", -0.5, 0.6)
    assert _signal(_not_relevant(), rules=rules) == Signal("i", -0.9, 0.4, explicit=True)


def test_an_impression_has_no_single_item_signal() -> None:
    shown = Impression(
        type="impression", event_id="e", user_id="u", timestamp=T, item_ids=["a", "b"]
    )

    assert signal_of(shown, None, RULES) is None


def test_an_impression_is_a_weak_negative_for_every_item_shown_in_order() -> None:
    shown = Impression(
        type="impression", event_id="e", user_id="u", timestamp=T, item_ids=["b", "a", "c"]
    )

    signals = impression_signals(shown, RULES)

    assert [s.item_id for s in signals] == ["b", "a", "c"]
    assert all(not s.positive and not s.explicit for s in signals)
    assert all(abs(s.target) < abs(_signal(_skip()).target) for s in signals)


def test_an_item_listed_in_several_slots_counts_once() -> None:
    shown = Impression(
        type="impression", event_id="e", user_id="u", timestamp=T,
        item_ids=["a", "b", "a", "a", "c", "b"],
    )  # fmt: skip

    signals = impression_signals(shown, RULES)

    assert [s.item_id for s in signals] == ["a", "b", "c"]


def test_a_click_outweighs_the_impression_that_showed_the_item() -> None:
    shown = Impression(type="impression", event_id="e", user_id="u", timestamp=T, item_ids=["i"])
    (impression,) = impression_signals(shown, RULES)
    click = _signal(_click())

    assert impression.target * impression.weight + click.target * click.weight > 0
