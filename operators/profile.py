"""Per-user state: category affinities, a bounded history, blocked items, seen event ids.

A :class:`UserProfile` is an immutable value: :func:`apply_signal` and friends return a
new one. It round-trips through :meth:`UserProfile.snapshot` / :meth:`UserProfile.restore`
(compact JSON), which is what the worker keeps in its RocksDB table. Every collection is
bounded (see ``LimitSettings``), so a user's state never grows without limit.

Example:
    >>> p = UserProfile.new("u1")
    >>> UserProfile.restore(p.snapshot()) == p
    True

"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from operators.bloom import Bloom
from operators.embedding import EmbeddingParams, Vector, update_user_vector
from operators.signals import Signal


@dataclass(frozen=True)
class ProfileLimits:
    """Bounds on one user's state."""

    history_size: int = 200
    dedupe_window: int = 500
    max_categories: int = 64
    max_blocked: int = 1000
    recent_positives: int = 20
    #: items the consumed-set filter is sized for (1% false positives at that count)
    consumed_capacity: int = 2000


@dataclass(frozen=True)
class UserProfile:
    """Everything recloop remembers about one user."""

    user_id: str
    events_applied: int = 0
    snapshot_version: int = 0
    last_event_at: str | None = None
    affinity: dict[str, float] = field(default_factory=dict)
    history: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    recent_event_ids: tuple[str, ...] = ()
    recent_positives: tuple[str, ...] = ()
    #: the user's embedding (empty until the first signal about a known item)
    vector: tuple[float, ...] = ()
    #: every item ever consumed, beyond the bounded history (``None``: nothing yet)
    consumed: Bloom | None = None
    #: de-escalation: penalty per ``category:<name>`` / ``creator:<name>``, as
    #: (value, event time in seconds); see operators.deescalation
    penalties: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: the current frustration streak: (event id, category, time) of consecutive skips
    streak: tuple[tuple[str, str, float], ...] = ()
    streak_session: str | None = None
    #: tags for product teams and UIs, each with its expiry (ISO 8601)
    tags: dict[str, str] = field(default_factory=dict)
    #: ``category:<name>`` / ``creator:<name>`` the user paused (never shown until resumed)
    paused: tuple[str, ...] = ()
    #: the user opted out of prompts / of explanations (notices and reasons)
    prompts_off: bool = False
    explanations_off: bool = False
    #: recent prompts: (event time in seconds, session id or "")
    prompted: tuple[tuple[float, str], ...] = ()
    #: the latest items marked not relevant, with when (their neighbours are penalised)
    disliked: tuple[tuple[str, float], ...] = ()
    #: per category of ``affinity``: how many signals liked it and how many missed it (a
    #: negative target: a skip, an unclicked impression, not relevant...): the evidence
    #: category-level exploration draws from (operators.ranking)
    evidence: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def new(cls, user_id: str) -> UserProfile:
        """An empty profile for a user recloop has not seen."""
        return cls(user_id=user_id)

    def evolve(self, **changes: Any) -> UserProfile:
        """A copy with ``changes`` to its fields.

        What :func:`dataclasses.replace` does, without re-running ``__init__`` (a tenth of
        the time): every event makes a few of these.

        Raises:
            TypeError: a change names no field of the profile.

        """
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"UserProfile has no field {', '.join(sorted(unknown))}")
        evolved = object.__new__(UserProfile)
        evolved.__dict__.update(self.__dict__, **changes)
        evolved.__dict__.pop("_excluded", None)  # kept by excluded(), for this state only
        return evolved

    def has_seen(self, event_id: str) -> bool:
        """Whether this event was already applied (within the dedupe window)."""
        return event_id in self.recent_event_ids

    def excluded(self) -> frozenset[str]:
        """Items never to recommend again: consumed (recently) or marked not relevant.

        Items consumed longer ago are in :attr:`consumed`; see :meth:`has_consumed`. The
        set is kept with the profile (a ranking and the learner both ask; a changed
        profile is a new one), so the index can keep its labels for the next search.
        """
        kept: frozenset[str] | None = self.__dict__.get("_excluded")
        if kept is None:
            kept = self.__dict__["_excluded"] = frozenset(self.history).union(self.blocked)
        return kept

    def has_consumed(self, item_id: str) -> bool:
        """Whether the user ever consumed the item (the filter's rare false positives too)."""
        return self.consumed is not None and item_id in self.consumed

    def snapshot(self) -> bytes:
        """Compact JSON bytes of this profile."""
        return json.dumps(
            {
                "v": 1,
                "user_id": self.user_id,
                "events_applied": self.events_applied,
                "snapshot_version": self.snapshot_version,
                "last_event_at": self.last_event_at,
                "affinity": self.affinity,
                "history": self.history,
                "blocked": self.blocked,
                "recent_event_ids": self.recent_event_ids,
                "recent_positives": self.recent_positives,
                "vector": self.vector,
                "consumed": (
                    base64.b64encode(self.consumed.to_bytes()).decode()
                    if self.consumed is not None
                    else None
                ),
                "penalties": self.penalties,
                "streak": self.streak,
                "streak_session": self.streak_session,
                "tags": self.tags,
                "paused": self.paused,
                "prompts_off": self.prompts_off,
                "explanations_off": self.explanations_off,
                "prompted": self.prompted,
                "disliked": self.disliked,
                "evidence": self.evidence,
            },
            separators=(",", ":"),
            ensure_ascii=False,  # UTF-8: a character outside the BMP takes 4 bytes, not 12
        ).encode()

    @classmethod
    def restore(cls, data: bytes) -> UserProfile:
        """The profile :meth:`snapshot` wrote."""
        raw = json.loads(data)
        consumed = raw.get("consumed")
        return cls(
            user_id=raw["user_id"],
            events_applied=raw["events_applied"],
            snapshot_version=raw["snapshot_version"],
            last_event_at=raw["last_event_at"],
            affinity=dict(raw["affinity"]),
            history=tuple(raw["history"]),
            blocked=tuple(raw["blocked"]),
            recent_event_ids=tuple(raw["recent_event_ids"]),
            recent_positives=tuple(raw.get("recent_positives", ())),
            vector=tuple(raw.get("vector", ())),
            consumed=Bloom.from_bytes(base64.b64decode(consumed)) if consumed else None,
            penalties={k: (float(v), float(t)) for k, (v, t) in raw.get("penalties", {}).items()},
            streak=tuple((str(e), str(c), float(t)) for e, c, t in raw.get("streak", ())),
            streak_session=raw.get("streak_session"),
            tags=dict(raw.get("tags", {})),
            paused=tuple(raw.get("paused", ())),
            prompts_off=bool(raw.get("prompts_off", False)),
            explanations_off=bool(raw.get("explanations_off", False)),
            prompted=tuple((float(t), str(s)) for t, s in raw.get("prompted", ())),
            disliked=tuple((str(i), float(t)) for i, t in raw.get("disliked", ())),
            evidence={c: (int(h), int(m)) for c, (h, m) in raw.get("evidence", {}).items()},
        )


#: A signal at least this strong marks the item as liked (click, long dwell, 4+ stars).
POSITIVE_TARGET = 0.5


def _push(items: tuple[str, ...], value: str, limit: int) -> tuple[str, ...]:
    """Append ``value`` (moving it to the end if present), keeping the newest ``limit``."""
    while value in items:  # scans in C (a restored profile may hold an item twice)
        at = items.index(value)
        items = items[:at] + items[at + 1 :]
    return (*items, value)[-limit:]


_FIELDS = frozenset(f.name for f in fields(UserProfile))


def record_event(
    profile: UserProfile, event_id: str, event_time: datetime, limits: ProfileLimits
) -> UserProfile:
    """Count one applied event and remember its id for de-duplication."""
    last = profile.last_event_at
    newest = event_time.isoformat()
    if last is not None and datetime.fromisoformat(last) > event_time:
        newest = last  # a late event does not move the user's clock backwards
    return profile.evolve(
        events_applied=profile.events_applied + 1,
        last_event_at=newest,
        recent_event_ids=(*profile.recent_event_ids, event_id)[-limits.dedupe_window :],
    )


def apply_signal(
    profile: UserProfile,
    signal: Signal,
    category: str | None,
    limits: ProfileLimits,
    blocks: bool = False,
    item_unit: Vector | None = None,
    embedding: EmbeddingParams | None = None,
) -> UserProfile:
    """Fold one item signal into the profile.

    Args:
        profile: the user's current state.
        signal: what the event says about the item.
        category: the item's category, when the catalog knows the item.
        limits: bounds on the state.
        blocks: the user asked never to see this item again (``not_relevant``).
        item_unit: the item's unit embedding, when the catalog knows the item; the user's
            embedding moves towards it (a like) or away from it (a negative signal). An
            item only shown (``signal.shown_only``) pushes it away weakly without fading
            what it held: an impression of a list would otherwise decay the embedding
            once per item and turn it away from everything recloop shows; nor does being
            shown take an item out of the recent likes.
        embedding: the embedding space's parameters (required with ``item_unit``).

    """
    affinity, evidence = profile.affinity, profile.evidence
    if category is not None:
        affinity = dict(affinity)
        felt = affinity[category] = affinity.get(category, 0.0) + signal.target * signal.weight
        evidence = _count(evidence, category, signal)
        if len(affinity) > limits.max_categories:
            # keep the categories the user feels most strongly about, either way, and the
            # one just felt: trimming it would lock a new interest out for good once every
            # kept category is as strong as one signal
            others = sorted(
                ((c, a) for c, a in affinity.items() if c != category),
                key=lambda kv: abs(kv[1]), reverse=True,
            )  # fmt: skip
            affinity = dict(others[: limits.max_categories - 1])
            affinity[category] = felt
            evidence = {c: n for c, n in evidence.items() if c in affinity}
    history = profile.history
    consumed = profile.consumed
    if signal.target > 0 or signal.explicit or blocks:
        history = _push(history, signal.item_id, limits.history_size)
        if consumed is None:
            consumed = Bloom.empty(limits.consumed_capacity)
        consumed = consumed.add(signal.item_id)
    vector = profile.vector
    if item_unit is not None and embedding is not None:
        vector = update_user_vector(vector, item_unit, signal.target * signal.weight, embedding,
                                    decay=not signal.shown_only)  # fmt: skip
    blocked = (
        _push(profile.blocked, signal.item_id, limits.max_blocked) if blocks else profile.blocked
    )
    recent = profile.recent_positives
    if signal.target >= POSITIVE_TARGET:
        recent = _push(recent, signal.item_id, limits.recent_positives)
    elif signal.target < 0 and not signal.shown_only and signal.item_id in recent:
        recent = tuple(item for item in recent if item != signal.item_id)
    return profile.evolve(
        affinity=affinity, history=history, blocked=blocked, recent_positives=recent,
        vector=vector, consumed=consumed, evidence=evidence,
    )  # fmt: skip


def _count(
    evidence: dict[str, tuple[int, int]], category: str, signal: Signal
) -> dict[str, tuple[int, int]]:
    """``evidence`` with the signal counted for ``category``: a like, a miss or neither."""
    liked, missed = signal.target >= POSITIVE_TARGET, signal.target < 0
    if not (liked or missed):
        return evidence
    likes, misses = evidence.get(category, (0, 0))
    return {**evidence, category: (likes + liked, misses + missed)}


def next_snapshot_version(profile: UserProfile) -> UserProfile:
    """The profile with its snapshot counter advanced by one."""
    return profile.evolve(snapshot_version=profile.snapshot_version + 1)
