"""Turn each event into a learning signal: a target in [-1, 1] and a weight.

The learning-core issue grows this into full signal fusion; the rules here already hold:
click and long dwell are positive, skip weakly negative, not_relevant strongly negative,
a rating explicit, an impression without a click weakly negative for what was shown.

Example:
    >>> from datetime import datetime, timezone
    >>> from schemas.events import Skip
    >>> skip = Skip(event_id="e", user_id="u", item_id="i", type="skip",
    ...             timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc))
    >>> signal_of(skip, expected_ms=None, rules=SignalRules()).target
    -0.3

"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import Click, Dwell, Event, Impression, NotRelevant, Preference, Rating, Skip


@dataclass(frozen=True)
class Signal:
    """What one event teaches about one item: ``target`` in [-1, 1], ``weight`` >= 0."""

    item_id: str
    target: float
    weight: float
    explicit: bool = False
    #: the item was only shown (an impression): a weak negative that does not fade the
    #: user's embedding (one list would, once per item) nor touch their recent likes
    shown_only: bool = False

    @property
    def positive(self) -> bool:
        """Whether the user showed interest."""
        return self.target > 0


@dataclass(frozen=True)
class SignalRules:
    """Thresholds and strengths; the defaults weigh implicit to explicit 3:1."""

    dwell_long_ms: float = 30_000.0
    dwell_short_ms: float = 5_000.0
    implicit_weight: float = 0.75
    explicit_weight: float = 0.25
    skip_target: float = -0.3
    impression_target: float = -0.05
    not_relevant_target: float = -1.0


def _dwell_target(dwell_ms: float, expected_ms: float | None, rules: SignalRules) -> float:
    if expected_ms:
        share = dwell_ms / expected_ms
        if share >= 0.5:
            return 1.0
        return -0.2 if share < 0.1 else 0.3
    if dwell_ms >= rules.dwell_long_ms:
        return 1.0
    if dwell_ms < rules.dwell_short_ms:
        return -0.2
    return 0.3


def signal_of(event: Event, expected_ms: float | None, rules: SignalRules) -> Signal | None:
    """The signal one item event carries, or ``None`` for events about several items.

    Args:
        event: a validated event.
        expected_ms: the item's expected consumption time when the catalog knows it.
        rules: thresholds and strengths.

    """
    imp, exp = rules.implicit_weight, rules.explicit_weight
    match event:
        case Click():
            return Signal(event.item_id, 1.0, imp)
        case Dwell():
            return Signal(event.item_id, _dwell_target(event.dwell_ms, expected_ms, rules), imp)
        case Skip():
            return Signal(event.item_id, rules.skip_target, imp)
        case NotRelevant():
            return Signal(event.item_id, rules.not_relevant_target, exp, explicit=True)
        case Rating():
            # 0..5 stars onto [-1, 1] with 3 stars as a mild positive.
            return Signal(event.item_id, (event.value - 2.5) / 2.5, exp, explicit=True)
        case Preference(action="more_like", item_id=str(item_id)):
            # "more like this" is an explicit like of the item
            return Signal(item_id, 1.0, exp, explicit=True)
        case Impression() | Preference():
            return None
    return None


def impression_signals(event: Impression, rules: SignalRules) -> list[Signal]:
    """Weak negatives for every item shown, once each; a later click outweighs them.

    An item listed in several slots was still shown once: one event must not weigh as
    much as many (a client repeating an id 200 times would otherwise outweigh ten clicks).
    """
    return [
        Signal(item_id, rules.impression_target, rules.implicit_weight, shown_only=True)
        for item_id in dict.fromkeys(event.item_ids)
    ]
