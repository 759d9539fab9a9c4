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

import random
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from operators.catalog import Catalog, ItemFeedback, ItemParams, ItemState
from operators.deescalation import (
    Adjustment,
    DeescalationParams,
    describe,
    may_prompt,
    part_of_day,
    react,
    steer,
    tags_at,
)
from operators.index import IndexParams, ItemIndex
from operators.model import RankingModel
from operators.profile import (
    POSITIVE_TARGET,
    ProfileLimits,
    UserProfile,
    apply_signal,
    next_snapshot_version,
    record_event,
)
from operators.ranking import (
    MODEL_VERSION,
    RankingParams,
    head_candidates,
    heuristic_head,
    newest,
    rank_items,
)
from operators.signals import Signal, SignalRules, impression_signals, signal_of
from schemas.events import Dwell, Event, Forget, Impression, NotRelevant, Preference, Skip
from schemas.snapshot import Notice, Prompt, PromptChoice, RankedItem, Snapshot

__all__ = [
    "ItemFeedback",
    "LoopConfig",
    "Step",
    "answer",
    "apply_event",
    "process_event",
    "rank_now",
]


#: recent prompts a profile keeps at the least (more when the prompt limits are higher)
_PROMPTS_KEPT = 20


@dataclass(frozen=True)
class LoopConfig:
    """Everything the per-event logic needs to know, derived once from the settings."""

    signals: SignalRules = field(default_factory=SignalRules)
    limits: ProfileLimits = field(default_factory=ProfileLimits)
    ranking: RankingParams = field(default_factory=RankingParams)
    items: ItemParams = field(default_factory=ItemParams)
    #: how many of the user's previous positives a new positive is counted with
    covisit_window: int = 20
    deescalation: DeescalationParams = field(default_factory=DeescalationParams)
    index: IndexParams = field(default_factory=IndexParams)

    def new_catalog(self, index: ItemIndex | None = None) -> Catalog:
        """An empty catalog in this embedding space, with a new index (or ``index``)."""
        return Catalog(
            self.items.embedding,
            index if index is not None else self.index.new_index(self.items.embedding.dim),
            reindex_below=self.index.reindex_below,
        )


@dataclass(frozen=True)
class Step:
    """The outcome of one event. ``snapshot`` is ``None`` for a duplicate or a forget."""

    profile: UserProfile
    snapshot: Snapshot | None
    feedback: tuple[ItemFeedback, ...] = ()
    #: what de-escalation changed (for the audit topic)
    adjustments: tuple[Adjustment, ...] = ()
    #: the event was a ``forget``: the caller erases the user's state and snapshot
    #: (``profile`` is then a new, empty one, never to be stored)
    forgotten: bool = False

    @property
    def duplicate(self) -> bool:
        """The event had been applied before and changed nothing."""
        return self.snapshot is None and not self.forgotten


class Applied(NamedTuple):
    """What :func:`apply_event` did."""

    profile: UserProfile
    feedback: tuple[ItemFeedback, ...]
    duplicate: bool
    adjustments: tuple[Adjustment, ...] = ()


def _signals(event: Event, catalog: Catalog, rules: SignalRules) -> list[Signal]:
    if isinstance(event, Impression):
        return impression_signals(event, rules)
    if isinstance(event, Forget) or event.item_id is None:  # about no item
        return []
    state = catalog.get(event.item_id)
    expected = state.record.duration_ms if state is not None and state.record else None
    signal = signal_of(event, expected, rules)
    return [signal] if signal is not None else []


def _newly_liked(item_id: str, before: UserProfile, after: UserProfile) -> bool:
    return item_id in after.recent_positives and item_id not in before.recent_positives


def _feedback_for(
    event: Event, signal: Signal, newly_liked: bool, before: UserProfile, window: int
) -> list[ItemFeedback]:
    """The item-side records one signal produces: its own, and co-visits when newly liked."""
    co_items = (
        tuple(r for r in newest(before.recent_positives, window) if r != signal.item_id)
        if newly_liked
        else ()
    )
    records = [
        ItemFeedback(
            signal.item_id, signal.target, signal.weight, event.timestamp, event.event_id,
            co_items=co_items, user_id=event.user_id,
        )
    ]  # fmt: skip
    records.extend(
        ItemFeedback(other, 0.0, 0.0, event.timestamp, event.event_id, kind="covisit",
                     co_items=(signal.item_id,))
        for other in co_items
    )  # fmt: skip
    return records


def _learn_from_like(
    model: RankingModel, before: UserProfile, item_id: str, event: Event, catalog: Catalog,
    params: RankingParams,
) -> None:  # fmt: skip
    """Test-then-train the model on one like, from the candidates just before it.

    The model re-ranks the heuristic's best ``model_rerank`` candidates, so it learns
    from the likes that came from there: the liked item is the positive, the negatives
    are drawn from the other candidates there (from the rest only when the head is
    short) by a generator seeded with the event id, so a replay draws the same ones. A
    like from further down says nothing about the order within the head; learning from
    it taught the model to push the head's strongest candidates down (MovieLens 100K:
    Recall@10 0.2025 learning from every like, 0.2068 from these; docs/evaluation.md).
    The head is the one :func:`~operators.ranking.rank_rows` re-ranks: among the
    candidates a list may show (nothing paused, nothing consumed long ago), so a like of
    an item that was no candidate (consumed before, or brought by no source) teaches
    nothing either. A like the cheap sources already rule out of the head is settled
    before the index is searched (:func:`~operators.ranking.head_candidates`).
    """
    found = head_candidates(before, catalog, event.timestamp.timestamp(), params, item_id)
    positive = found.features.get(item_id) if found is not None else None
    if found is None or positive is None:  # it cannot be in the head, or is no candidate
        return
    # the head one longer: when the like is in the head proper, the rest of it is the
    # head of the others, the negatives are drawn from; past it only when they are fewer
    # than the negatives wanted
    head, tail = heuristic_head(found, params, params.model_rerank + 1, before,
                                rest=params.model_negatives > params.model_rerank)  # fmt: skip
    if item_id not in head[: params.model_rerank]:
        return
    head.remove(item_id)
    rng = random.Random(zlib.crc32(event.event_id.encode()))
    from_head = min(len(head), params.model_negatives)
    from_tail = min(len(tail), params.model_negatives - from_head)
    picked = rng.sample(head, from_head) + rng.sample(tail, from_tail)
    model.learn([positive], [found.features[i] for i in picked])


def apply_event(
    event: Event,
    profile: UserProfile | None,
    catalog: Catalog,
    config: LoopConfig,
    model: RankingModel | None = None,
) -> Applied:
    """Fold one validated event into the user's state, without ranking.

    Returns the new profile, the item feedback to send to the items' owners, and whether
    the event was a duplicate (then nothing changed and nothing is sent). When a model is
    given it learns from every new like of an item in the head it re-ranks (it is the one
    piece of state updated in place: the caller owns it and checkpoints it).
    """
    if isinstance(event, Forget):  # nothing of the old profile survives, not even its ids
        return Applied(UserProfile.new(event.user_id), (), False)
    current = profile if profile is not None else UserProfile.new(event.user_id)
    if current.has_seen(event.event_id):
        return Applied(current, (), True)
    updated = record_event(current, event.event_id, event.timestamp, config.limits)
    feedback: list[ItemFeedback] = []
    adjustments: list[Adjustment] = []
    if isinstance(event, Preference):
        updated, steered = _preference(event, updated, config)
        adjustments.extend(steered)
    for signal in _signals(event, catalog, config.signals):
        state = catalog.get(signal.item_id)
        before = updated
        updated = apply_signal(
            updated,
            signal,
            state.category if state is not None else None,
            config.limits,
            blocks=isinstance(event, NotRelevant),
            # only catalogued items move the user's embedding: a bare id says nothing
            item_unit=catalog.unit(signal.item_id) if state and state.record else None,
            embedding=catalog.embedding,
        )
        newly_liked = _newly_liked(signal.item_id, before, updated)
        updated, changed = _deescalate(event, signal, state, updated, config)
        adjustments.extend(changed)
        records = _feedback_for(event, signal, newly_liked, before, config.covisit_window)
        if model is not None and newly_liked:
            _learn_from_like(model, before, signal.item_id, event, catalog, config.ranking)
        feedback.extend(records)
    if adjustments or updated.tags:
        # at the user's newest time, not a late event's own: a penalty does not decay
        # before its time, so an older time would state later expiries and bring back
        # tags that have faded
        now = _user_now(updated, event.timestamp)
        tags = tags_at(updated.penalties, now.timestamp(), config.deescalation)
        updated = updated.evolve(tags=tags)
    return Applied(updated, tuple(feedback), False, tuple(adjustments))


def _user_now(profile: UserProfile, before_any: datetime) -> datetime:
    """The user's clock: their newest event time (``before_any`` for a user without events)."""
    last = profile.last_event_at
    return datetime.fromisoformat(last) if last is not None else before_any


def _preference(
    event: Preference, profile: UserProfile, config: LoopConfig
) -> tuple[UserProfile, tuple[Adjustment, ...]]:
    """Apply a preference event's pause, resume, "something different" or opt-out."""
    action = event.action
    if action in ("prompts_off", "prompts_on"):
        return profile.evolve(prompts_off=action == "prompts_off"), ()
    if action in ("explanations_off", "explanations_on"):
        return profile.evolve(explanations_off=action == "explanations_off"), ()
    key = (
        f"category:{event.category}" if event.category
        else f"creator:{event.creator}" if event.creator else None
    )  # fmt: skip
    favourites = tuple(
        c for c, a in sorted(profile.affinity.items(), key=lambda kv: (-kv[1], kv[0])) if a > 0
    )
    steering = steer(profile.penalties, profile.paused, action=action, key=key,
                     event_id=event.event_id, when=event.timestamp, favourites=favourites,
                     params=config.deescalation)  # fmt: skip
    updated = profile.evolve(penalties=steering.penalties, paused=steering.paused)
    return updated, steering.adjustments


def _deescalate(
    event: Event, signal: Signal, state: ItemState | None, profile: UserProfile, config: LoopConfig
) -> tuple[UserProfile, tuple[Adjustment, ...]]:
    """Let de-escalation react to one signal: penalties, the frustration streak."""
    if isinstance(event, NotRelevant):
        kind = "not_relevant"
    elif isinstance(event, Skip) or (isinstance(event, Dwell) and signal.target < 0):
        kind = "frustration"
    else:
        kind = "neutral"
    record = state.record if state is not None else None
    reaction = react(
        profile.penalties, profile.streak, profile.streak_session,
        event_id=event.event_id, when=event.timestamp,
        session=event.session_id,
        surface=event.surface,
        part=part_of_day(event.timestamp, config.deescalation),
        kind=kind, target=signal.target,
        category=record.category if record else None,
        creator=record.creator if record else None,
        reason=event.reason if isinstance(event, NotRelevant) else None,
        params=config.deescalation, liked=signal.target >= POSITIVE_TARGET,
    )  # fmt: skip
    disliked = profile.disliked
    if kind == "not_relevant" and getattr(event, "reason", None) != "seen_it":
        entry = (signal.item_id, event.timestamp.timestamp())
        # the newest by event time: a late dislike takes no newer one's place (the sort is
        # stable, so dislikes that came in time order stay in arrival order)
        by_time = tuple(sorted((*disliked, entry), key=lambda dislike: dislike[1]))
        disliked = newest(by_time, config.deescalation.max_disliked)
    if (
        reaction.penalties == profile.penalties
        and reaction.streak == profile.streak
        and reaction.streak_session == profile.streak_session
        and disliked == profile.disliked
    ):
        return profile, reaction.adjustments
    updated = profile.evolve(penalties=reaction.penalties, streak=reaction.streak,
                             streak_session=reaction.streak_session, disliked=disliked)  # fmt: skip
    return updated, reaction.adjustments


def process_event(
    event: Event,
    profile: UserProfile | None,
    catalog: Catalog,
    config: LoopConfig,
    generated_at: datetime,
    model: RankingModel | None = None,
) -> Step:
    """Apply one validated event to the user's state and rank anew.

    Args:
        event: the validated event.
        profile: the user's state, ``None`` for a new user.
        catalog: every item this worker knows.
        config: rules, bounds and ranking weights.
        generated_at: wall-clock time for the snapshot (from the injected clock).
        model: the online ranking model, learning from likes and scoring candidates.

    """
    if isinstance(event, Forget):
        return Step(profile=UserProfile.new(event.user_id), snapshot=None, forgotten=True)
    updated, feedback, duplicate, adjustments = apply_event(event, profile, catalog, config, model)
    if duplicate:
        return Step(profile=updated, snapshot=None)
    profile, snapshot = answer(event, next_snapshot_version(updated), adjustments, catalog,
                               config, generated_at, model)  # fmt: skip
    return Step(profile=profile, snapshot=snapshot, feedback=feedback, adjustments=adjustments)


def answer(
    event: Event,
    profile: UserProfile,
    adjustments: tuple[Adjustment, ...],
    catalog: Catalog,
    config: LoopConfig,
    generated_at: datetime,
    model: RankingModel | None = None,
) -> tuple[UserProfile, Snapshot]:
    """The snapshot that answers ``event``: the user's list ranked anew, notice and prompt.

    The ranking half of :func:`process_event`, for a profile that already holds the event
    and counts its version (:func:`~operators.profile.next_snapshot_version`). A worker
    that coalesces a burst of one user's events applies each with :func:`apply_event` and
    answers only the last: its snapshot is the one :func:`process_event` would have
    produced for it. Returns the profile (a prompt is remembered in it) and the snapshot.

    Args:
        event: the event answered (the newest applied).
        profile: the user's state after it.
        adjustments: what de-escalation changed on this event (for the notice and prompt).
        catalog: every item this worker knows.
        config: rules, bounds and ranking weights.
        generated_at: wall-clock time for the snapshot (from the injected clock).
        model: the online ranking model.

    """
    updated = profile
    surface = event.surface
    # a late event changes the list the user sees now: ranked at the user's newest time,
    # and its notice and prompt speak of that time too
    now, items = rank_now(updated, catalog, config, event.timestamp, model, surface)
    # a like that relaxes a penalty ("contradicted") is no miss: nothing to ask about
    missed = any(a.rule != "contradicted" for a in adjustments)
    prompt = _prompt(event, updated, items, missed, now, catalog, config.deescalation)
    if prompt is not None:
        session = event.session_id
        asked = (now.timestamp(), session or "")
        # may_prompt counts these: keep as many as the per-day and per-session limits
        rules = config.deescalation
        kept = max(_PROMPTS_KEPT, rules.prompts_per_day, rules.prompts_per_session)
        updated = updated.evolve(prompted=newest((*updated.prompted, asked), kept))
    notice = _notice(adjustments, event, now, catalog, updated) if adjustments else None
    if updated.explanations_off:  # the user opted out: no notice (nor reasons, above)
        notice = None
    snapshot = Snapshot(
        user_id=updated.user_id,
        version=updated.snapshot_version,
        generated_at=generated_at,
        event_time=event.timestamp,
        source_event_id=event.event_id,
        model_version=MODEL_VERSION if model is None else f"{MODEL_VERSION}+{model.version}",
        items=items,
        notice=notice,
        prompt=prompt,
    )
    return updated, snapshot


def rank_now(
    profile: UserProfile,
    catalog: Catalog,
    config: LoopConfig,
    before_any: datetime,
    model: RankingModel | None = None,
    surface: str | None = None,
) -> tuple[datetime, list[RankedItem]]:
    """The user's list as of their newest event time, for ``surface``; and that time.

    Every list the worker builds is ranked at the user's newest event time (a late event
    changes the list the user sees now), ``before_any`` for a user without events, in the
    part of the day of that time. A user who opted out of explanations gets no reasons.
    """
    now = _user_now(profile, before_any)
    rules = config.deescalation
    items = rank_items(profile, catalog, now.timestamp(), config.ranking, model, rules, surface,
                       part_of_day(now, rules))  # fmt: skip
    if profile.explanations_off:
        items = [item.model_copy(update={"reasons": []}) for item in items]
    return now, items


def current_snapshot(
    event: Event,
    profile: UserProfile,
    catalog: Catalog,
    config: LoopConfig,
    generated_at: datetime,
    model: RankingModel | None = None,
) -> Snapshot:
    """The snapshot of the user's latest applied event, ranked anew from their profile.

    For when the one that event produced was lost (a crash between writing the profile
    and its snapshot), and ``event`` (that latest event, delivered again) is at hand: the
    same version, source event and event time, the list ranked from the same state at the
    user's newest time for the event's surface, as :func:`answer` ranked it; a notice or
    prompt it carried is not rebuilt.
    """
    surface = event.surface
    _, items = rank_now(profile, catalog, config, event.timestamp, model, surface)
    return Snapshot(
        user_id=profile.user_id,
        version=profile.snapshot_version,
        generated_at=generated_at,
        event_time=event.timestamp,
        source_event_id=event.event_id,
        model_version=MODEL_VERSION if model is None else f"{MODEL_VERSION}+{model.version}",
        items=items,
    )


def _prompt(
    event: Event, profile: UserProfile, items: list[RankedItem], missed: bool, now: datetime,
    catalog: Catalog, params: DeescalationParams,
) -> Prompt | None:  # fmt: skip
    """One clarifying choice, when recloop is unsure and the user receptive; else ``None``.

    Unsure: this event told recloop its lists missed (a not_relevant, a skip streak, a
    request for something different; not a like that relaxed a penalty), so its
    confidence in them is low. Receptive: not
    opted out, not in a frustration streak, a few events in, and the per-session,
    per-day and spacing limits allow it at ``now``, the user's newest event time (a late
    event is answered now, so it is asked now).
    """
    if not missed or profile.prompts_off or profile.streak or profile.events_applied < 3:
        return None
    if isinstance(event, Preference):  # the user is steering already
        return None
    session = event.session_id
    if not may_prompt(profile.prompted, session, now.timestamp(), params):
        return None
    choices: list[PromptChoice] = []
    liked = next((i for i in reversed(profile.recent_positives) if catalog.get(i)), None)
    if liked is not None:
        title = catalog.title(liked)
        choices.append(PromptChoice(label=f"More like {title}", action="more_like", item_id=liked))
    choices.append(PromptChoice(label="Something different", action="something_different"))
    # the category to offer pausing: the one of the item that missed, else the list's top
    item_id = getattr(event, "item_id", None) or (items[0].item_id if items else None)
    about = catalog.get(item_id) if item_id else None
    record = about.record if about is not None else None
    if (
        record is not None
        and record.category
        and f"category:{record.category}" not in profile.paused
    ):
        choices.append(PromptChoice(label=f"Pause {record.category} for now",
                                    action="pause_category", category=record.category))  # fmt: skip
    return Prompt(prompt_id=f"{event.event_id}-prompt", question="Want to steer what you see?",
                  choices=choices)  # fmt: skip


def _notice(
    adjustments: tuple[Adjustment, ...], event: Event, now: datetime, catalog: Catalog,
    profile: UserProfile,
) -> Notice:  # fmt: skip
    """What the next snapshot tells the user about the change this event made.

    Spans ("for the next 6 days") run from ``now``, the user's newest event time: a late
    event's change is seen from then on, in the list ranked at that time.
    """
    item_id = getattr(event, "item_id", None)
    title = catalog.title(item_id) if item_id else "it"
    heard, change = describe(adjustments, title, now)
    relaxed = all(a.rule == "contradicted" for a in adjustments)
    expiries = [a.expires_at for a in adjustments if a.expires_at is not None]
    return Notice(
        kind="preferences_relaxed" if relaxed else "preferences_adjusted",
        heard=heard,
        change=change,
        relaxes_at=max(expiries) if expiries and not relaxed else None,
        tags=sorted(profile.tags),
    )
