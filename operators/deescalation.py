"""De-escalation: hear dissatisfaction, adjust with restraint, say what changed.

When a user says an item is not relevant, or skips item after item in one session, this
operator turns it into *penalties*: a number in ``[0, max_penalty]`` per category or
creator that down-weights those items, decays by half every ``half_life_s`` of event time,
deepens with repeated dissatisfaction up to its cap (never a ban), and relaxes when the
user's behaviour contradicts it (a like in a penalised category halves its penalty).
Every change is an :class:`Adjustment` with its basis (which events, which rule) and its
expiry, for the snapshot's notice and for the audit topic.

The ranking applies a penalty ``p`` twice: scores of the items it covers are scaled by
``1 - p``, and the list may hold at most ``max(1, floor(n x (1 - p)))`` items of a
penalised category, where ``n`` is how many it would have held without the penalty. So a
not_relevant (``p`` 0.75) on one of ten thrillers leaves two thrillers, the ones the user
is likeliest to want, and the category comes back as the penalty decays.

Example:
    >>> params = DeescalationParams()
    >>> penalties = deepen({}, "category:thriller", params.explicit_step, 0.0, params)
    >>> round(penalty_at(penalties, "category:thriller", params.half_life_s, params), 3)
    0.375

"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "Adjustment",
    "DeescalationParams",
    "daypart",
    "deepen",
    "part_of_day",
    "penalty_at",
    "relax",
    "relaxes_at",
    "split_key",
]

#: (penalty, event time in seconds when it had that value)
Penalty = tuple[float, float]


@dataclass(frozen=True)
class DeescalationParams:
    """How strongly and for how long dissatisfaction changes a user's lists."""

    #: event-time seconds for a penalty to halve (2 days)
    half_life_s: float = 2 * 24 * 3600.0
    #: added to the item's category (and creator) by a ``not_relevant``
    explicit_step: float = 0.75
    #: added to the item's category by ``not_relevant`` with reason ``too_many_of_these``
    too_many_step: float = 0.85
    #: added to each category of a frustration streak (gentler than explicit)
    streak_step: float = 0.4
    #: skips or short dwells in a row, within one session, that make a streak
    streak_length: int = 3
    #: a skip this long (seconds) after the previous one starts a new streak
    streak_gap_s: float = 1800.0
    #: no penalty ever goes above this: a category is never removed by feedback alone
    max_penalty: float = 0.9
    #: a like in a penalised category or by a penalised creator keeps this share of it
    relax_factor: float = 0.5
    #: dissatisfaction on one surface (``context.surface``), or in one part of the day
    #: when ``time_of_day`` is on, counts this much elsewhere
    global_share: float = 0.5
    #: condition penalties on the part of the day of the event (night, morning,
    #: afternoon, evening) in the UTC offset its timestamp carries: turn it on when the
    #: producers send their users' local time (UTC timestamps give UTC parts of the day)
    time_of_day: bool = False
    #: items whose embedding is at least ``neighbour_similarity`` (cosine) close to a
    #: disliked item get up to ``neighbour_step`` of penalty, decaying like the others;
    #: the last ``max_disliked`` disliked items count
    neighbour_step: float = 0.5
    neighbour_similarity: float = 0.5
    max_disliked: int = 10
    #: below this a penalty no longer counts (it has relaxed; tags expire then)
    floor: float = 0.1
    #: penalties kept per user (the strongest)
    max_penalties: int = 32
    #: pauses kept per user; past it the oldest pause lapses (and is audited as resumed)
    max_pauses: int = 256
    #: prompts: at most this many per session and per day (event time), this far apart
    prompts_per_session: int = 1
    prompts_per_day: int = 3
    prompt_gap_s: float = 600.0


@dataclass(frozen=True)
class Adjustment:
    """One change to one penalty, with why and until when (an audit record)."""

    key: str
    rule: str
    before: float
    after: float
    event_time: datetime
    expires_at: datetime | None
    basis: tuple[str, ...]
    reason: str | None = None

    @property
    def subject(self) -> str:
        """What the penalty is about: the category or creator name."""
        return base_key(self.key).split(":", 1)[1]

    def to_record(self, user_id: str, event_id: str) -> dict[str, object]:
        """The JSON-ready audit record."""
        return {
            "user_id": user_id,
            "event_id": event_id,
            "event_time": self.event_time.isoformat(),
            "rule": self.rule,
            "reason": self.reason,
            "basis": list(self.basis),
            "key": self.key,
            "before": round(self.before, 6),
            "after": round(self.after, 6),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def _decayed(penalty: Penalty, t: float, half_life_s: float) -> float:
    value, since = penalty
    return value * math.pow(2.0, -max(0.0, t - since) / half_life_s)


def penalty_at(
    penalties: Mapping[str, Penalty], key: str, t: float, params: DeescalationParams
) -> float:
    """The penalty on ``key`` at event time ``t`` (0 when none, or decayed below the floor)."""
    penalty = penalties.get(key)
    if penalty is None:
        return 0.0
    value = _decayed(penalty, t, params.half_life_s)
    return value if value >= params.floor else 0.0


def relaxes_at(value: float, t: float, params: DeescalationParams) -> datetime | None:
    """When a penalty of ``value`` at ``t`` decays below the floor (``None``: already)."""
    if value < params.floor:
        return None
    seconds = t + params.half_life_s * math.log2(value / params.floor)
    return datetime.fromtimestamp(seconds, tz=UTC)


def _bounded(penalties: dict[str, Penalty], t: float, params: DeescalationParams) -> None:
    for key in [k for k, p in penalties.items() if _decayed(p, t, params.half_life_s) < 1e-3]:
        del penalties[key]
    if len(penalties) > params.max_penalties:
        strongest = sorted(
            penalties.items(), key=lambda kv: -_decayed(kv[1], t, params.half_life_s)
        )
        penalties.clear()
        penalties.update(strongest[: params.max_penalties])


def _anchor(penalties: Mapping[str, Penalty], key: str, t: float) -> float:
    """When a change at ``t`` to ``key`` is stated: ``t``, or the penalty's own later time.

    A late event never moves a penalty's time back, which would decay it twice over.
    """
    penalty = penalties.get(key)
    return max(t, penalty[1]) if penalty is not None else t


def deepen(
    penalties: Mapping[str, Penalty], key: str, step: float, t: float, params: DeescalationParams
) -> dict[str, Penalty]:
    """The penalties with ``key`` deepened by ``step`` at ``t``, capped at ``max_penalty``.

    A late step (``t`` before the penalty's own time) counts as decayed since ``t``.
    """
    updated = dict(penalties)
    at = _anchor(updated, key, t)
    current = _decayed(updated[key], at, params.half_life_s) if key in updated else 0.0
    late_step = _decayed((step, t), at, params.half_life_s)
    updated[key] = (min(params.max_penalty, current + late_step), at)
    _bounded(updated, at, params)
    return updated


def relax(
    penalties: Mapping[str, Penalty], key: str, t: float, params: DeescalationParams
) -> dict[str, Penalty]:
    """The penalties with ``key`` relaxed by ``relax_factor`` (contradicting behaviour).

    Late or not, the penalty keeps its own time when that is the later one.
    """
    updated = dict(penalties)
    if key in updated:
        at = _anchor(updated, key, t)
        updated[key] = (_decayed(updated[key], at, params.half_life_s) * params.relax_factor, at)
        _bounded(updated, at, params)
    return updated


# -- detection: which events change which penalties ------------------------------------

#: A streak entry: the event id, the category of the item skipped ("" when unknown) and
#: the event time in seconds. A streak holds its entries in event-time order, consecutive
#: ones at most ``streak_gap_s`` apart, whatever order the skips arrived in.
StreakEntry = tuple[str, str, float]


def streak_at(streak: tuple[StreakEntry, ...]) -> float | None:
    """When the streak's newest skip happened (``None`` for no streak).

    Its last entry's time: a streak is kept in event-time order (:func:`_in_time_order`).
    """
    return streak[-1][2] if streak else None


def _in_time_order(
    streak: tuple[StreakEntry, ...], params: DeescalationParams
) -> tuple[StreakEntry, ...]:
    """The streak as the run of its skips in event time, ending at the newest.

    A no-op on every streak this module keeps; a profile stored before streaks followed
    event time may hold a late skip last, and reads as the run it stood for.
    """
    if len(streak) < 2:  # most events find no streak, or one skip
        return streak
    ordered = sorted(streak, key=lambda entry: entry[2])  # stable: ties keep their order
    start = len(ordered) - 1
    while start > 0 and ordered[start][2] - ordered[start - 1][2] <= params.streak_gap_s:
        start -= 1
    return tuple(ordered[max(start, 0) :])


def _after(streak: tuple[StreakEntry, ...], t: float) -> tuple[StreakEntry, ...]:
    """The skips of the streak later than ``t``: what a break of it at ``t`` leaves.

    In event time a break (a like, a not_relevant, a skip in another session) ends the
    skips before it; the ones after it, delivered before a late break, stay the streak.
    """
    if not streak or streak[0][2] > t:  # nothing to end (the common case: no streak)
        return streak
    return tuple(entry for entry in streak if entry[2] > t)


def _with_skip(
    streak: tuple[StreakEntry, ...], streak_session: str | None, entry: StreakEntry,
    session: str | None, params: DeescalationParams,
) -> tuple[tuple[StreakEntry, ...], str | None]:  # fmt: skip
    """The streak and its session after one more skip, by event time.

    A skip after the streak's newest extends it, or starts a new one (another session,
    or more than ``streak_gap_s`` later). A late skip joins it where its time falls, if
    within ``streak_gap_s`` of a neighbour in time; too long before it, or from another
    session, it is one the streak had left behind by then, and changes nothing but ending
    the skips before it. Skips the streak dropped already are not recalled.
    """
    t = entry[2]
    newest = streak_at(streak)
    if newest is None or t >= newest:
        if session != streak_session or (newest is not None and t - newest > params.streak_gap_s):
            return (entry,), session
        return (*streak, entry), streak_session
    if session != streak_session:
        return _after(streak, t), streak_session
    at = bisect_right([s for _, _, s in streak], t)
    if at == 0 and streak[0][2] - t > params.streak_gap_s:
        return streak, streak_session
    return (*streak[:at], entry, *streak[at:]), streak_session


#: the parts of the day by the hour they start at
DAYPARTS = ((0, "night"), (6, "morning"), (12, "afternoon"), (18, "evening"))


def daypart(when: datetime) -> str:
    """The part of the day at ``when``, in ``when``'s own UTC offset.

    A sender that writes local time with its offset (``2026-11-23T21:05:00+01:00``)
    gets its users' evenings; UTC timestamps give UTC parts of the day.
    """
    return [name for start, name in DAYPARTS if when.hour >= start][-1]


def part_of_day(when: datetime, params: DeescalationParams) -> str | None:
    """The part of the day penalties are scoped to at ``when`` (``None`` when that is off)."""
    return daypart(when) if params.time_of_day else None


def split_key(key: str) -> tuple[str, str | None, str | None]:
    """A penalty key's base (``category:<name>``, ``creator:<name>``), surface and daypart.

    Scoped keys read ``<base>@surface:<surface>@daypart:<daypart>``, either part optional.
    """
    rest, _, part = key.partition("@daypart:")
    base, _, surface = rest.partition("@surface:")
    return base, surface or None, part or None


def base_key(key: str) -> str:
    """The ``category:<name>`` / ``creator:<name>`` part of a possibly scoped key."""
    return split_key(key)[0]


@dataclass(frozen=True)
class Reaction:
    """What one event did to a user's penalties, streak and tags."""

    penalties: dict[str, Penalty]
    streak: tuple[StreakEntry, ...]
    streak_session: str | None
    adjustments: tuple[Adjustment, ...]


def penalty_keys(category: str | None, creator: str | None) -> tuple[str, ...]:
    """The ``category:`` and ``creator:`` keys a penalty or a pause may name an item by.

    An item without a category (or creator) has no such key, so a key that names
    ``None`` never catches it.
    """
    return tuple(
        key for key in (f"category:{category}" if category else None,
                        f"creator:{creator}" if creator else None) if key
    )  # fmt: skip


def _change(
    penalties: dict[str, Penalty], key: str, step: float | None, when: datetime, rule: str,
    basis: tuple[str, ...], reason: str | None, params: DeescalationParams,
) -> tuple[dict[str, Penalty], Adjustment]:  # fmt: skip
    t = when.timestamp()
    at = _anchor(penalties, key, t)  # before and after, both at the penalty's time
    before = penalty_at(penalties, key, at, params)
    updated = (
        deepen(penalties, key, step, t, params)
        if step is not None
        else relax(penalties, key, t, params)
    )
    after = penalty_at(updated, key, at, params)
    return updated, Adjustment(key, rule, before, after, when, relaxes_at(after, at, params),
                               basis, reason)  # fmt: skip


def react(
    penalties: Mapping[str, Penalty],
    streak: tuple[StreakEntry, ...],
    streak_session: str | None,
    *,
    event_id: str,
    when: datetime,
    session: str | None,
    kind: str,
    target: float,
    surface: str | None = None,
    part: str | None = None,
    category: str | None,
    creator: str | None,
    reason: str | None,
    params: DeescalationParams,
    liked: bool,
) -> Reaction:
    """Fold one item signal into the user's penalties.

    Args:
        penalties: the user's penalties.
        streak: the user's current frustration streak (its skips in event-time order).
        streak_session: the session that streak belongs to.
        event_id: the event's id (the basis of any change).
        when: the event's time.
        session: the event's ``context.session_id``.
        surface: the event's ``context.surface``: the penalty is full there and
            ``global_share`` of it elsewhere.
        part: the event's part of the day (see :func:`daypart`), or ``None``: like
            ``surface``, the penalty is full then and ``global_share`` of it otherwise.
        kind: ``not_relevant`` (explicit), ``frustration`` (a skip or a short dwell),
            or anything else (neutral).
        target: the signal's target.
        category: the item's category, when the catalog knows the item.
        creator: the item's creator, when known.
        reason: the ``not_relevant`` reason, if any.
        params: the rules.
        liked: the signal marks the item as liked (it may contradict a penalty).

    """
    current = dict(penalties)
    adjustments: list[Adjustment] = []
    keys = penalty_keys(category, creator)
    t = when.timestamp()
    streak = _in_time_order(streak, params)
    if kind == "not_relevant":
        left = _after(streak, t)  # a late one ends only the skips before it
        streak, streak_session = left, (streak_session if left else session)
        # seen_it: seen elsewhere, says nothing about the taste; wrong_language: about the
        # item's language, which the catalog does not record (its embedding neighbours
        # still sink, see DeescalationParams.neighbour_step)
        if reason not in ("seen_it", "wrong_language"):
            for key in keys:
                if key.startswith("creator:") and reason == "too_many_of_these":
                    continue  # about the amount of a category, not the creator
                step = (
                    params.too_many_step
                    if reason == "too_many_of_these"
                    else (params.explicit_step)
                )
                for scoped, scoped_step in _scoped(key, step, surface, part, params):
                    current, adjustment = _change(
                        current,
                        scoped,
                        scoped_step,
                        when,
                        "not_relevant",
                        (event_id,),
                        reason,
                        params,
                    )
                    adjustments.append(adjustment)
    elif kind == "frustration":
        entry = (event_id, category or "", t)
        streak, streak_session = _with_skip(streak, streak_session, entry, session, params)
        if len(streak) >= params.streak_length:
            basis = tuple(e for e, _, _ in streak)
            # the streak happened when its newest skip did, whichever skip came in last
            newest = streak[-1][2]
            at = when if newest == t else datetime.fromtimestamp(newest, tz=when.tzinfo)
            at_part = daypart(at) if part is not None and at is not when else part
            for name in sorted({c for _, c, _ in streak if c}):
                for scoped, step in _scoped(f"category:{name}", params.streak_step, surface,
                                            at_part, params):  # fmt: skip
                    current, adjustment = _change(current, scoped, step, at, "skip_streak",
                                                  basis, None, params)  # fmt: skip
                    adjustments.append(adjustment)
            streak = ()
    elif liked:
        streak = _after(streak, t)  # a late like ends only the skips before it
        covered = [k for k in sorted(current) if base_key(k) in keys]
        for key in covered:
            if penalty_at(current, key, t, params) > 0:
                current, adjustment = _change(current, key, None, when, "contradicted",
                                              (event_id,), None, params)  # fmt: skip
                adjustments.append(adjustment)
    return Reaction(current, streak, streak_session, tuple(adjustments))


def _scoped(
    key: str, step: float, surface: str | None, part: str | None, params: DeescalationParams
) -> list[tuple[str, float]]:
    """The penalty keys one step goes to: everywhere, or mostly where and when it happened."""
    scope = (f"@surface:{surface}" if surface else "") + (f"@daypart:{part}" if part else "")
    if not scope:
        return [(key, step)]
    return [(key, step * params.global_share), (f"{key}{scope}", step)]


def active_penalties(
    penalties: Mapping[str, Penalty],
    t: float,
    surface: str | None,
    params: DeescalationParams,
    part: str | None = None,
) -> dict[str, float]:
    """The penalties that count at ``t`` on ``surface`` in ``part`` of the day, by base key.

    A penalty scoped to this surface and part of the day (or to one of them) counts where
    it is stronger than the global one; penalties scoped elsewhere do not count here.
    """
    active: dict[str, float] = {}
    for key in penalties:
        base, on, during = split_key(key)
        if (on and on != surface) or (during and during != part):
            continue
        value = penalty_at(penalties, key, t, params)
        if value > active.get(base, 0.0):
            active[base] = value
    return active


def neighbour_weight(disliked_t: float, t: float, params: DeescalationParams) -> float:
    """How much a dislike at ``disliked_t`` still weighs on its neighbours at ``t``."""
    weight = params.neighbour_step * math.pow(2.0, -max(0.0, t - disliked_t) / params.half_life_s)
    return weight if weight >= params.floor else 0.0


def tags_at(
    penalties: Mapping[str, Penalty], t: float, params: DeescalationParams
) -> dict[str, str]:
    """The profile tags the penalties stand for at ``t``, each with its expiry (ISO)."""
    tags: dict[str, str] = {}
    latest: datetime | None = None
    for key in sorted(penalties):
        value = penalty_at(penalties, key, t, params)
        expiry = relaxes_at(value, t, params)
        if expiry is None:
            continue
        kind, name = key.split(":", 1)
        tags[f"{kind}_deprioritized:{name}"] = expiry.isoformat()
        latest = expiry if latest is None or expiry > latest else latest
    if latest is not None:
        tags["preferences_adjusted"] = latest.isoformat()
    return tags


def describe(adjustments: tuple[Adjustment, ...], title: str, now: datetime) -> tuple[str, str]:
    """What was heard and what changed, in words a UI can show."""
    first = adjustments[0]
    first_what = _what(first.key)
    heard = {
        "skip_streak": "You skipped several recommendations in a row",
        "contradicted": f"You liked {title}",
        "paused": f"You asked to pause {first_what}",
        "resumed": f"You asked to see {first_what} again",
        "something_different": "You asked for something different",
    }.get(first.rule, f"You said {title} is not relevant to you")
    if first.rule == "not_relevant" and first.reason:
        heard += f" ({first.reason.replace('_', ' ')})"
    changes = []
    for adjustment in adjustments:
        what = _what(adjustment.key)
        if adjustment.rule == "contradicted":
            changes.append(f"showing {what} again more often")
        elif adjustment.rule == "paused":
            changes.append(f"not showing {what} until you resume them")
        elif adjustment.rule == "resumed":
            changes.append(f"showing {what} again")
        elif adjustment.expires_at is not None:
            changes.append(f"showing fewer {what} for {_span(adjustment.expires_at - now)}")
    return heard, "; ".join(changes) or "nothing else changes"


def _what(key: str) -> str:
    base, surface, part = split_key(key)
    kind, name = base.split(":", 1)
    what = name if kind == "category" else f"items by {name}"
    if surface:
        what = f"{what} on {surface}"
    if part:
        what = f"{what} at night" if part == "night" else f"{what} in the {part}"
    return what


def _span(delta: object) -> str:
    seconds = max(0.0, delta.total_seconds())  # type: ignore[attr-defined]
    if seconds >= 36 * 3600:
        return f"the next {round(seconds / 86400)} days"
    if seconds >= 90 * 60:
        return f"the next {round(seconds / 3600)} hours"
    return "a little while"


# -- steering: preference events and prompts -------------------------------------------


@dataclass(frozen=True)
class Steering:
    """What one preference event did to the user's penalties, pauses and opt-outs."""

    penalties: dict[str, Penalty]
    paused: tuple[str, ...]
    adjustments: tuple[Adjustment, ...]


def steer(
    penalties: Mapping[str, Penalty],
    paused: tuple[str, ...],
    *,
    action: str,
    key: str | None,
    event_id: str,
    when: datetime,
    favourites: tuple[str, ...],
    params: DeescalationParams,
) -> Steering:
    """Apply one ``preference`` action (the opt-outs are the caller's flags).

    Args:
        penalties: the user's penalties.
        paused: the ``category:`` / ``creator:`` keys the user paused.
        action: the preference event's action.
        key: ``category:<name>`` or ``creator:<name>`` for pause and resume actions.
        event_id: the event's id (the basis of the change).
        when: the event's time.
        favourites: the user's favourite categories, best first (``something_different``
            turns them down gently).
        params: the rules.

    """
    current, pauses = dict(penalties), list(paused)
    adjustments: list[Adjustment] = []
    t = when.timestamp()
    scoped = [k for k in current if base_key(k) == key] if key is not None else []
    if action.startswith("pause_") and key is not None and key not in pauses:
        before = max((penalty_at(current, k, t, params) for k in scoped), default=0.0)
        for k in scoped:  # the pause supersedes every penalty on it, on every surface
            del current[k]
        pauses = [*pauses, key]
        adjustments.append(Adjustment(key, "paused", before, 1.0, when, None, (event_id,)))
        for lapsed in pauses[: -params.max_pauses]:
            adjustments.append(Adjustment(lapsed, "resumed", 1.0, 0.0, when, None, (event_id,),
                                          "too_many_pauses"))  # fmt: skip
        pauses = pauses[-params.max_pauses :]
    elif action.startswith("resume_") and key is not None:
        before = (
            1.0
            if key in pauses
            else max((penalty_at(current, k, t, params) for k in scoped), default=0.0)
        )
        pauses = [k for k in pauses if k != key]
        for k in scoped:
            del current[k]
        if before > 0:
            adjustments.append(Adjustment(key, "resumed", before, 0.0, when, None, (event_id,)))
    elif action == "something_different":
        for name in favourites[:2]:
            key_of = f"category:{name}"
            step, rule = params.streak_step, "something_different"
            current, adjustment = _change(
                current, key_of, step, when, rule, (event_id,), None, params
            )
            adjustments.append(adjustment)
    return Steering(current, tuple(pauses), tuple(adjustments))


def may_prompt(
    prompted: tuple[tuple[float, str], ...],
    session: str | None,
    t: float,
    params: DeescalationParams,
) -> bool:
    """Whether the rate limits allow a prompt now (per session, per day, and apart)."""
    if any(t - when < params.prompt_gap_s for when, _ in prompted):
        return False
    if session is not None and (
        sum(1 for _, s in prompted if s == session) >= params.prompts_per_session
    ):
        return False
    return sum(1 for when, _ in prompted if t - when < 86_400) < params.prompts_per_day
