"""One turn of the loop for one user: event in, new state, new snapshot, item feedback out.

This is the whole per-event logic, Kafka-free, so the live agent and the offline replay
(``recloop evaluate``) run exactly the same code and reach the same recommendations.

Example:
    >>> from datetime import datetime, timezone
    >>> from operators.catalog import Catalog
    >>> from schemas.events import Click
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> click = Click(event_id="e1", user_id="u1", item_id="i1", type="click", timestamp=t)
    >>> step = process_event(click, None, Catalog(), LoopConfig(), generated_at=t)
    >>> step.profile.events_applied, step.snapshot.version, step.feedback[0].target
    (1, 1, 1.0)

"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from operators.catalog import Catalog
from operators.profile import (
    ProfileLimits,
    UserProfile,
    apply_signal,
    next_snapshot_version,
    record_event,
)
from operators.ranking import MODEL_VERSION, RankingParams, rank_items
from operators.signals import Signal, SignalRules, impression_signals, signal_of
from schemas.events import Event, Impression, NotRelevant
from schemas.snapshot import Snapshot


@dataclass(frozen=True)
class LoopConfig:
    """Everything the per-event logic needs to know, derived once from the settings."""

    signals: SignalRules = field(default_factory=SignalRules)
    limits: ProfileLimits = field(default_factory=ProfileLimits)
    ranking: RankingParams = field(default_factory=RankingParams)


@dataclass(frozen=True)
class ItemFeedback:
    """What one event says about one item, sent to the item's owner (keyed by item id)."""

    item_id: str
    target: float
    weight: float
    event_time: datetime
    event_id: str

    def to_json(self) -> bytes:
        """Compact JSON bytes for the item-feedback topic."""
        return json.dumps(
            {
                "item_id": self.item_id,
                "target": self.target,
                "weight": self.weight,
                "event_time": self.event_time.isoformat(),
                "event_id": self.event_id,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ItemFeedback:
        """The record :meth:`to_json` wrote."""
        raw = json.loads(data)
        return cls(
            item_id=raw["item_id"],
            target=float(raw["target"]),
            weight=float(raw["weight"]),
            event_time=datetime.fromisoformat(raw["event_time"]),
            event_id=raw["event_id"],
        )


@dataclass(frozen=True)
class Step:
    """The outcome of one event. ``snapshot`` is ``None`` for a duplicate event."""

    profile: UserProfile
    snapshot: Snapshot | None
    feedback: tuple[ItemFeedback, ...] = ()

    @property
    def duplicate(self) -> bool:
        """The event had been applied before and changed nothing."""
        return self.snapshot is None


def _signals(event: Event, catalog: Catalog, rules: SignalRules) -> list[Signal]:
    if isinstance(event, Impression):
        return impression_signals(event, rules)
    state = catalog.get(event.item_id)
    expected = state.record.duration_ms if state is not None and state.record else None
    signal = signal_of(event, expected, rules)
    return [signal] if signal is not None else []


def process_event(
    event: Event,
    profile: UserProfile | None,
    catalog: Catalog,
    config: LoopConfig,
    generated_at: datetime,
) -> Step:
    """Apply one validated event to the user's state and rank anew.

    Args:
        event: the validated event.
        profile: the user's state, ``None`` for a new user.
        catalog: every item this worker knows.
        config: rules, bounds and ranking weights.
        generated_at: wall-clock time for the snapshot (from the injected clock).

    """
    current = profile if profile is not None else UserProfile.new(event.user_id)
    if current.has_seen(event.event_id):
        return Step(profile=current, snapshot=None)
    updated = record_event(current, event.event_id, event.timestamp, config.limits)
    feedback = []
    for signal in _signals(event, catalog, config.signals):
        state = catalog.get(signal.item_id)
        updated = apply_signal(
            updated,
            signal,
            state.category if state is not None else None,
            config.limits,
            blocks=isinstance(event, NotRelevant),
        )
        feedback.append(
            ItemFeedback(
                signal.item_id, signal.target, signal.weight, event.timestamp, event.event_id
            )
        )
    updated = next_snapshot_version(updated)
    items = rank_items(updated, catalog, event.timestamp.timestamp(), config.ranking)
    snapshot = Snapshot(
        user_id=updated.user_id,
        version=updated.snapshot_version,
        generated_at=generated_at,
        event_time=event.timestamp,
        source_event_id=event.event_id,
        model_version=MODEL_VERSION,
        items=items,
    )
    return Step(profile=updated, snapshot=snapshot, feedback=tuple(feedback))
