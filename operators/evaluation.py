"""Prequential (test-then-train) evaluation of recommenders over an event log.

The protocol (the one ``../shared/datasets/README.md`` states for its reference figures):

1. Events are replayed in log order (timestamp order). Consecutive item events with the
   same user, item and timestamp form one *interaction* (a MovieLens import turns each
   rating into one interaction: e.g. ``click``, ``dwell``, ``rating``).
2. An interaction is *positive* when it holds a ``rating`` of 4 or more; an interaction
   without a rating is positive when it holds a ``dwell`` of at least 30 s (the long-dwell
   threshold), so implicit-only logs (the synthetic world) can be evaluated too.
3. Before any recommender learns from a positive interaction, each recommender is asked
   for the user's top ``k`` (10), excluding every item the user has interacted with
   before (any item event type; impressions do not count). It is a *hit* when the
   interaction's item is in that list. A positive on an item the user had already
   interacted with could never be a hit; it is not evaluated (and is counted apart).
4. Then every recommender learns from every event of the interaction, in order.

Figures per recommender: Recall@k (hits / positives); nDCG@k (one relevant item, so
``1 / log2(rank + 1)`` for a hit at 1-based ``rank``, else 0, averaged over positives);
catalog coverage (share of available catalog items shown in at least one evaluated
list); intra-list diversity (share of item pairs of a list whose categories differ,
averaged over lists of two items or more); novelty (mean self-information
``-log2 p(i)`` of the items shown, with ``p(i) = (n_i + 1) / (N + |I|)``: ``n_i``
interactions with the item so far, ``N`` all interactions so far, ``|I|`` catalog
items); serendipity (share of hits whose category the user had never interacted with);
and events, wall time and events per second (time spent inside the recommender).

Recommenders implement :class:`Recommender`. :class:`LoopRecommender` runs the live
pipeline's own operators (:func:`operators.feedback_loop.process_event` and the item
agent's :func:`operators.catalog.fold_item_feedback`); the others are reference
points: global popularity, River's online matrix factorisation, item-item co-occurrence
learned online or frozen at the half of the log.

Example:
    >>> from datetime import UTC, datetime
    >>> from schemas.catalog import ItemRecord
    >>> from schemas.events import Dwell
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> items = [ItemRecord(item_id=i, category="c", created_at=t) for i in ("a", "b")]
    >>> log = [Dwell(type="dwell", event_id=f"e{n}", user_id=u, item_id="b", dwell_ms=6e4,
    ...              timestamp=t) for n, u in enumerate(("u1", "u2"))]
    >>> pop = PopularityRecommender(items)  # u1 is shown "a" (a tie), u2 then "b"
    >>> result = evaluate(log, {"pop": pop}, items, EvaluationConfig(k=1))
    >>> result.figures["pop"].hits, result.figures["pop"].positives
    (1, 2)

"""

from __future__ import annotations

import html
import itertools
import math
import statistics
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from river import optim, reco

from operators.catalog import (
    ItemState,
    expire_uncatalogued,
    fold_item_feedback,
    sweep_interval,
)
from operators.deescalation import Adjustment, part_of_day
from operators.feedback_loop import LoopConfig, apply_event, process_event
from operators.files import write_atomic
from operators.model import RankingModel
from operators.profile import UserProfile, next_snapshot_version
from operators.ranking import rank_rows, user_unit
from schemas.catalog import ItemRecord, parse_item
from schemas.events import (
    ITEM_EVENTS,
    Click,
    Dwell,
    Event,
    Forget,
    NotRelevant,
    Rating,
    Skip,
    parse_event,
)
from schemas.snapshot import Snapshot

#: Category given to items the catalog does not describe.
UNKNOWN_CATEGORY = "unknown"


class Recommender(Protocol):
    """What the harness needs from a recommender."""

    def learn(self, event: Event) -> None:
        """Fold one event in (called for every event of the log, in order)."""

    def recommend(self, user_id: str, k: int, exclude: frozenset[str], now: datetime) -> list[str]:
        """The user's top ``k`` item ids at event time ``now``, none of them in ``exclude``."""


class ProtocolViolation(RuntimeError):
    """A recommender returned a list the protocol does not allow."""


@dataclass(frozen=True)
class PositiveRule:
    """When an event says the user liked the item (see the module docs).

    Attributes:
        min_rating: a ``rating`` at or above this is positive.
        min_dwell_ms: a ``dwell`` at or above this is positive (long dwell).

    """

    min_rating: float = 4.0
    min_dwell_ms: float = 30_000.0

    def event_is_positive(self, event: Event) -> bool:
        """Whether this one event is a positive signal (a high rating or a long dwell)."""
        if isinstance(event, Rating):
            return event.value >= self.min_rating
        return isinstance(event, Dwell) and event.dwell_ms >= self.min_dwell_ms

    def interaction_is_positive(self, events: Sequence[Event]) -> bool:
        """Whether an interaction is positive: its rating decides when it has one."""
        ratings = [e for e in events if isinstance(e, Rating)]
        if ratings:
            return any(self.event_is_positive(r) for r in ratings)
        return any(self.event_is_positive(e) for e in events)


@dataclass(frozen=True)
class EvaluationConfig:
    """The harness's knobs.

    Attributes:
        k: length of each evaluated list.
        positive: what counts as a positive interaction.
        curve_every: one point of the Recall curve every this many positives.
        split_event: index of the first event of the log's second half; figures are also
            reported for the positives from there on (``None``: no split).
        split_at_half: without ``split_event``, work it out at the end of the run (as
            :func:`measure_log` would have): the run's result carries the config with
            the number, so a run needs no first pass over the log.

    """

    k: int = 10
    positive: PositiveRule = field(default_factory=PositiveRule)
    curve_every: int = 1000
    split_event: int | None = None
    split_at_half: bool = False

    def measured(self, size: LogSize) -> EvaluationConfig:
        """The config with the split :func:`measure_log` found, when it is to be at half."""
        if self.split_event is not None or not self.split_at_half:
            return self
        return replace(self, split_event=size.split_event, split_at_half=False)


# -- metrics ---------------------------------------------------------------------------


def ndcg_of_hit(rank: int | None) -> float:
    """The nDCG of a list with one relevant item found at 1-based ``rank`` (``None``: missed).

    Example:
        >>> ndcg_of_hit(1), round(ndcg_of_hit(3), 4), ndcg_of_hit(None)
        (1.0, 0.5, 0.0)

    """
    return 0.0 if rank is None else 1.0 / math.log2(rank + 1)


def intra_list_diversity(categories: Sequence[str]) -> float | None:
    """Share of the list's item pairs whose categories differ (``None`` below two items).

    Example:
        >>> round(intra_list_diversity(["a", "a", "b"]), 4)
        0.6667

    """
    n = len(categories)
    if n < 2:
        return None
    counts: dict[str, int] = defaultdict(int)
    for category in categories:
        counts[category] += 1
    pairs = n * (n - 1) / 2
    same = sum(c * (c - 1) / 2 for c in counts.values())
    return (pairs - same) / pairs


def self_information(item_interactions: int, all_interactions: int, catalog_size: int) -> float:
    """``-log2`` of an item's smoothed popularity share (see the module docs).

    Example:
        >>> self_information(0, 2, 2)
        2.0

    """
    share = (item_interactions + 1) / (all_interactions + max(catalog_size, 1))
    return -math.log2(share)


@dataclass
class _Tally:
    """Running sums for one recommender over one range of the log."""

    positives: int = 0
    hits: int = 0
    ndcg: float = 0.0

    def add(self, rank: int | None) -> None:
        self.positives += 1
        self.hits += rank is not None
        self.ndcg += ndcg_of_hit(rank)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "positives": self.positives,
            "hits": self.hits,
            "recall_at_k": self.hits / self.positives if self.positives else 0.0,
            "ndcg_at_k": self.ndcg / self.positives if self.positives else 0.0,
        }


@dataclass
class RecommenderFigures:
    """Everything measured about one recommender in one run."""

    overall: _Tally = field(default_factory=_Tally)
    after_split: _Tally = field(default_factory=_Tally)
    shown: set[str] = field(default_factory=set)
    diversity_sum: float = 0.0
    diversity_lists: int = 0
    novelty_sum: float = 0.0
    novelty_items: int = 0
    serendipitous_hits: int = 0
    events: int = 0
    seconds: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)
    #: what a recommender reports about itself at the end (see ``extra_figures``)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positives(self) -> int:
        """Positives evaluated."""
        return self.overall.positives

    @property
    def hits(self) -> int:
        """Positives whose item was in the list."""
        return self.overall.hits

    @property
    def recall(self) -> float:
        """Recall@k over the whole log."""
        return self.overall.hits / self.overall.positives if self.overall.positives else 0.0

    def as_dict(self, catalog_size: int) -> dict[str, Any]:
        """The figures as a JSON-ready dict."""
        return {
            **self.overall.as_dict(),
            "coverage": len(self.shown) / catalog_size if catalog_size else 0.0,
            "diversity": (
                self.diversity_sum / self.diversity_lists if self.diversity_lists else None
            ),
            "novelty": self.novelty_sum / self.novelty_items if self.novelty_items else None,
            "serendipity": self.serendipitous_hits / self.hits if self.hits else None,
            "events": self.events,
            "wall_time_s": round(self.seconds, 3),
            "events_per_s": round(self.events / self.seconds, 1) if self.seconds else None,
            "after_split": self.after_split.as_dict(),
            "recall_curve": [[p, round(r, 6)] for p, r in self.curve],
            **self.extra,
        }


@dataclass
class EvaluationResult:
    """The outcome of one run: per-recommender figures plus what the log held."""

    config: EvaluationConfig
    figures: dict[str, RecommenderFigures]
    catalog_size: int
    events: int = 0
    interactions: int = 0
    users: int = 0
    positives: int = 0
    repeat_positives: int = 0
    wall_time_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """One JSON document: the protocol, the log, then one section per recommender."""
        rule = self.config.positive
        return {
            "protocol": {
                "k": self.config.k,
                "order": "log order (timestamp, user, item, event type)",
                "positive": f"rating >= {rule.min_rating:g}; without a rating, "
                f"dwell >= {rule.min_dwell_ms:g} ms",
                "exclude": "every item the user interacted with before (any item event)",
                "evaluated": "before the recommender learns any event of the interaction",
                "split_event": self.config.split_event,
                "curve_every": self.config.curve_every,
            },
            "log": {
                "events": self.events,
                "interactions": self.interactions,
                "users": self.users,
                "catalog_items": self.catalog_size,
                "positives": self.positives,
                "repeat_positives_not_evaluated": self.repeat_positives,
                "wall_time_s": round(self.wall_time_s, 3),
                "events_per_s": (
                    round(self.events / self.wall_time_s, 1) if self.wall_time_s else None
                ),
            },
            "recommenders": {
                name: figures.as_dict(self.catalog_size) for name, figures in self.figures.items()
            },
        }


def merge_results(parts: Sequence[EvaluationResult], order: Sequence[str]) -> EvaluationResult:
    """One result from runs of disjoint sets of recommenders over the same log.

    Each part asked the same questions (they depend on the log alone), so what the log
    held must agree; the recommenders' figures are put together in ``order``, and the
    wall time is the longest part's (they ran side by side).

    Raises:
        ValueError: the parts did not replay the same log, or share a recommender.

    """
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]

    def log_of(r: EvaluationResult) -> tuple[int, ...]:
        return (r.events, r.interactions, r.users, r.positives, r.repeat_positives,
                r.catalog_size)  # fmt: skip

    figures: dict[str, RecommenderFigures] = {}
    for part in parts:
        if log_of(part) != log_of(first) or part.config != first.config:
            raise ValueError(f"runs over different logs: {log_of(part)} and {log_of(first)}")
        if figures.keys() & part.figures.keys():
            raise ValueError(f"a recommender ran twice: {sorted(figures.keys() & part.figures)}")
        figures.update(part.figures)
    ranked = {name: figures[name] for name in order if name in figures}
    ranked.update((n, f) for n, f in figures.items() if n not in ranked)
    return replace(first, figures=ranked, wall_time_s=max(p.wall_time_s for p in parts))


# -- the log ---------------------------------------------------------------------------


def interaction_key(event: Event) -> tuple[str, str, datetime, str]:
    """Events with equal keys, one after the other, form one interaction."""
    if not isinstance(event, ITEM_EVENTS):  # impressions and preferences stand alone
        return (event.user_id, "", event.timestamp, event.event_id)
    return (event.user_id, event.item_id, event.timestamp, "")


def interactions(events: Iterable[Event]) -> Iterator[list[Event]]:
    """The log cut into interactions (consecutive events with the same user, item, time)."""
    for _, group in itertools.groupby(events, key=interaction_key):
        yield list(group)


def first_interactions(events: Iterable[Event], limit: int | None) -> Iterator[Event]:
    """The events of the first ``limit`` interactions (all of them for ``None``)."""
    if limit is None:
        yield from events
        return
    for group in itertools.islice(interactions(events), limit):
        yield from group


@dataclass(frozen=True)
class LogSize:
    """How long a log is, and where its second half starts."""

    events: int
    interactions: int
    split_event: int


def measure_log(events: Iterable[Event]) -> LogSize:
    """Count a log's events and interactions; the split is counted in interactions.

    Example:
        >>> measure_log([])
        LogSize(events=0, interactions=0, split_event=0)

    """
    starts = [0]
    for group in interactions(events):
        starts.append(starts[-1] + len(group))
    return LogSize(events=starts[-1], interactions=len(starts) - 1,
                   split_event=second_half_start(starts[:-1]))  # fmt: skip


def second_half_start(starts: Sequence[int]) -> int:
    """The first event of the log's second half, given each interaction's first event.

    Example:
        >>> second_half_start([0, 2, 3, 5, 6]), second_half_start([])
        (3, 0)

    """
    return starts[len(starts) // 2] if starts else 0


def read_events(path: Path, limit: int | None = None) -> Iterator[Event]:
    """The events of a JSON-lines file, validated one line at a time.

    Args:
        path: one event per line (blank lines skipped).
        limit: stop after this many interactions (for a MovieLens import: ratings).

    """

    def lines() -> Iterator[Event]:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield parse_event(line)

    return first_interactions(lines(), limit)


def read_catalog(path: Path) -> list[ItemRecord]:
    """The catalog records of a JSON-lines file."""
    with path.open("rb") as handle:
        return [parse_item(line) for line in handle if line.strip()]


# -- the harness -----------------------------------------------------------------------


def evaluate(
    events: Iterable[Event],
    recommenders: Mapping[str, Recommender],
    catalog: Sequence[ItemRecord],
    config: EvaluationConfig | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> EvaluationResult:
    """Run every recommender over the log in one pass, test-then-train (see module docs).

    Args:
        events: the log, in order.
        recommenders: by name; all see exactly the same events and questions.
        catalog: the items (categories for diversity and serendipity; coverage is over the
            available ones).
        config: ``k``, the positive rule, the curve resolution and the split.
        timer: seconds, monotonic (injected so tests can control it).

    Raises:
        ProtocolViolation: a recommender returned more than ``k`` items, an item twice or
            an excluded item.

    """
    config = config or EvaluationConfig()
    categories = {item.item_id: item.category for item in catalog}
    available = sum(1 for item in catalog if item.available)
    result = EvaluationResult(
        config=config,
        figures={name: RecommenderFigures() for name in recommenders},
        catalog_size=available,
    )
    user_items: dict[str, set[str]] = defaultdict(set)
    user_categories: dict[str, set[str]] = defaultdict(set)
    item_interactions: dict[str, int] = defaultdict(int)

    def novelty_of(item: str) -> float:
        return self_information(item_interactions[item], result.interactions, available)

    # the split worked out at the end: each interaction's first event, each question's
    # event and rank per recommender
    deferred = config.split_event is None and config.split_at_half
    starts: list[int] = []
    asked: dict[str, list[tuple[int, int | None]]] = {name: [] for name in recommenders}
    started = timer()
    for group in interactions(events):
        head = group[0]
        index = result.events
        if deferred:
            starts.append(index)
        if isinstance(head, ITEM_EVENTS):
            item, user = head.item_id, head.user_id
            if config.positive.interaction_is_positive(group):
                result.positives += 1
                if item in user_items[user]:
                    result.repeat_positives += 1
                else:
                    ranks = _ask_all(
                        recommenders, result, config, user, item, head.timestamp,
                        frozenset(user_items[user]),
                        after_split=config.split_event is not None and index >= config.split_event,
                        serendipitous=categories.get(item, UNKNOWN_CATEGORY)
                        not in user_categories[user],
                        categories=categories,
                        novelty_of=novelty_of,
                        timer=timer,
                    )  # fmt: skip
                    if deferred:
                        for name, rank in ranks.items():
                            asked[name].append((index, rank))
            user_items[user].add(item)
            user_categories[user].add(categories.get(item, UNKNOWN_CATEGORY))
            item_interactions[item] += 1
            result.interactions += 1
        for event in group:
            for name, recommender in recommenders.items():
                t0 = timer()
                recommender.learn(event)
                figures = result.figures[name]
                figures.seconds += timer() - t0
                figures.events += 1
        result.events += len(group)
    result.users = len(user_items)
    result.wall_time_s = timer() - started
    if deferred:  # measure_log's split, from the starts this pass kept
        split = second_half_start(starts)
        result.config = replace(config, split_event=split, split_at_half=False)
        for name, questions in asked.items():
            tally = result.figures[name].after_split
            for index, rank in questions:
                if index >= split:
                    tally.add(rank)
    for name, figures in result.figures.items():
        if figures.positives and (not figures.curve or figures.curve[-1][0] != figures.positives):
            figures.curve.append((figures.positives, figures.recall))
        extra = getattr(recommenders[name], "extra_figures", None)
        if extra is not None:
            figures.extra = extra()
    return result


def _ask_all(
    recommenders: Mapping[str, Recommender],
    result: EvaluationResult,
    config: EvaluationConfig,
    user: str,
    item: str,
    now: datetime,
    exclude: frozenset[str],
    *,
    after_split: bool,
    serendipitous: bool,
    categories: Mapping[str, str],
    novelty_of: Callable[[str], float],
    timer: Callable[[], float],
) -> dict[str, int | None]:
    """Ask every recommender for the user's list and score it against ``item``.

    Returns:
        Each recommender's rank of ``item`` (1-based; ``None``: not in the list).

    """
    ranks: dict[str, int | None] = {}
    for name, recommender in recommenders.items():
        t0 = timer()
        shown = recommender.recommend(user, config.k, exclude, now)
        figures = result.figures[name]
        figures.seconds += timer() - t0
        if len(shown) > config.k or len(set(shown)) != len(shown) or exclude.intersection(shown):
            raise ProtocolViolation(
                f"{name} returned {shown!r} for {user} (k={config.k}; it must hold at most k "
                "distinct items, none the user interacted with)"
            )
        rank = ranks[name] = shown.index(item) + 1 if item in shown else None
        figures.overall.add(rank)
        if after_split:
            figures.after_split.add(rank)
        if rank is not None and serendipitous:
            figures.serendipitous_hits += 1
        figures.shown.update(shown)
        diversity = intra_list_diversity([categories.get(i, UNKNOWN_CATEGORY) for i in shown])
        if diversity is not None:
            figures.diversity_sum += diversity
            figures.diversity_lists += 1
        for shown_item in shown:
            figures.novelty_sum += novelty_of(shown_item)
        figures.novelty_items += len(shown)
        if figures.positives % config.curve_every == 0:
            figures.curve.append((figures.positives, figures.recall))
    return ranks


# -- recommenders ----------------------------------------------------------------------


def _candidates(items: Iterable[ItemRecord]) -> list[str]:
    """Recommendable item ids, sorted (the order every tie falls back to)."""
    return sorted(item.item_id for item in items if item.available)


class LoopRecommender:
    """recloop itself: the live per-event operator and item-state update, offline.

    Every event goes through :func:`operators.feedback_loop.process_event` with the user's
    profile (kept in a dict, as the worker keeps it in its table) and the worker's online
    ranking model; every :class:`~operators.catalog.ItemFeedback` of the step is folded
    into the item's state at once with :func:`operators.catalog.fold_item_feedback`, the item
    agent's own logic (live, that happens a moment later, through Kafka), and items without
    a catalog record expire as the workers' sweeps expire them, in event time. A list is
    :func:`operators.ranking.rank_rows` (the worker's ranking, unexplained) at the
    question's event time: the worker's ``k`` items less the excluded ones, and only
    when that leaves fewer than ``k``, a list with ``k`` widened by the excluded items
    the profile does not already exclude, filtered the same way.

    Args:
        items: the catalog records.
        config: the same rules, bounds and ranking weights the worker uses.
        model: the online ranking model (the worker always has one; ``None`` ranks by
            the heuristic alone).
        snapshots: only fold each event in with
            :func:`operators.feedback_loop.apply_event` (``False``, the default: the
            worker's state change, without the per-event ranking whose result a replay
            discards), or also build each event's snapshot as the worker does (``True``,
            about 2.5 times slower). The lists agree (a test checks it on a synthetic
            log) except where the item index differs: each ranking syncs the index
            first, so per-event snapshots write it in smaller batches and compact it at
            other moments (on MovieLens 100K: 11,208 hits against 11,207).

    """

    def __init__(
        self,
        items: Iterable[ItemRecord],
        config: LoopConfig | None = None,
        model: RankingModel | None = None,
        snapshots: bool = False,
    ) -> None:
        self.config = config or LoopConfig()
        self.model = model
        self.snapshots = snapshots
        #: with ``snapshots``, the one the last event produced (``None``: a duplicate)
        self.last_snapshot: Snapshot | None = None
        self.catalog = self.config.new_catalog()
        for record in items:
            self.catalog.put(ItemState(item_id=record.item_id).with_record(record))
        self.profiles: dict[str, UserProfile] = {}
        self.duplicates = 0
        self.deescalation = DeescalationTally()
        #: ids whose state has no catalog record, and when the next sweep is due
        self._uncatalogued: set[str] = set()
        self._next_sweep = -math.inf

    def _list(self, profile: UserProfile, event: Event) -> list[str | None]:
        """The categories of the list the worker would publish for ``profile`` now.

        Ranked, as the worker ranks in answer to ``event``, at the user's newest event
        time (a late event's); unexplained, as only the categories are counted.
        """
        rules, last = self.config.deescalation, profile.last_event_at
        when = max(event.timestamp, datetime.fromisoformat(last)) if last else event.timestamp
        surface = event.surface
        ranking = rank_rows(profile, self.catalog, when.timestamp(), self.config.ranking,
                            self.model, rules, surface, part_of_day(when, rules))  # fmt: skip
        return [state.category for _, _, state in ranking.rows]

    def learn(self, event: Event) -> None:
        """Apply one event as the worker would."""
        if isinstance(event, Forget):  # the worker deletes the profile
            self.profiles.pop(event.user_id, None)
            return
        previous = self.profiles.get(event.user_id)
        measure = self.deescalation.wants_lists(
            event, previous, self.config.deescalation.streak_length
        )
        before = (
            self._list(previous or UserProfile.new(event.user_id), event) if (measure) else None
        )
        if self.snapshots:
            step = process_event(
                event, previous, self.catalog, self.config, generated_at=event.timestamp,
                model=self.model,
            )  # fmt: skip
            profile, feedback, duplicate = step.profile, step.feedback, step.duplicate
            adjustments = step.adjustments
            self.last_snapshot = step.snapshot
        else:
            profile, feedback, duplicate, adjustments = apply_event(
                event, previous, self.catalog, self.config, self.model
            )
            if not duplicate:
                profile = next_snapshot_version(profile)  # as process_event counts it
        if duplicate:
            self.duplicates += 1
            return
        self.profiles[event.user_id] = profile
        after = self._list(profile, event) if before is not None and adjustments else None
        self.deescalation.observe(event, adjustments, before, after)
        items = self.config.items
        for record in feedback:
            state = fold_item_feedback(self.catalog.get(record.item_id), (record,), items).state
            if state is not None:
                self.catalog.put(state)
                if state.record is None:
                    self._uncatalogued.add(record.item_id)
        self._sweep(event.timestamp.timestamp())

    def _sweep(self, now_t: float) -> None:
        """Expire items without a catalog record, as the workers' sweeps do (in event time)."""
        items = self.config.items
        if not self._uncatalogued or items.uncatalogued_ttl_s <= 0 or now_t < self._next_sweep:
            return
        self._uncatalogued.difference_update(
            expire_uncatalogued(self.catalog, list(self._uncatalogued), now_t, items)
        )
        self._next_sweep = now_t + sweep_interval(items)

    def extra_figures(self, k: int = 10) -> dict[str, Any]:
        """What recloop reports about itself at the end of the run.

        The de-escalation tally; the online model's own River figures
        (:meth:`~operators.model.RankingModel.figures`, ``None`` without a model); the
        item index: its size and recall@k against exact search, the queries being the
        users' own embeddings, the vectors the ranker queries with.
        """
        queries = [
            v for p in self.profiles.values() if (v := user_unit(p, self.catalog)) is not None
        ]
        recall = self.catalog.index_recall(queries, k)
        graph = self.catalog.index.recall(queries, k)  # synced by index_recall
        return {
            "deescalation": self.deescalation.as_dict(),
            "model": self.model.figures() if self.model is not None else None,
            "index": {
                "items": len(self.catalog.index),
                "queries": len(queries),
                f"recall_at_{k}_vs_exact": round(recall, 4) if recall is not None else None,
                # the graph alone, against exact search over the vectors it holds (above,
                # an item's indexed vector may lag its embedding: ``reindex_below``)
                f"graph_recall_at_{k}": round(graph, 4) if graph is not None else None,
                "ef_search": self.catalog.index.ef_search,
                "m": self.catalog.index.m,
            },
        }

    def recommend(self, user_id: str, k: int, exclude: frozenset[str], now: datetime) -> list[str]:
        """The live ranker's top ``k`` for the user at ``now``, without ``exclude``."""
        profile = self.profiles.get(user_id) or UserProfile.new(user_id)
        rules = self.config.deescalation
        # the list the user would see (k items, exploration slots included); only when
        # the exclusions leave fewer than k, a list widened by what the profile does not
        # already exclude. The ids alone: a replay counts hits, it never reads reasons.
        for widened in dict.fromkeys((k, k + len(exclude - profile.excluded()))):
            params = replace(self.config.ranking, k=widened)
            ranked = rank_rows(profile, self.catalog, now.timestamp(), params, self.model,
                               rules, None, part_of_day(now, rules))  # fmt: skip
            kept = [i for _, i, _ in ranked.rows if i not in exclude][:k]
            if len(kept) == k:
                break
        return kept


def is_like(event: Event) -> bool:
    """Whether the event is a like that resolves a dissatisfaction: a click, 4+ stars."""
    return isinstance(event, Click) or (isinstance(event, Rating) and event.value >= 4)


def fold_dissatisfaction(
    opened: MutableMapping[str, list[tuple[int, float]]],
    user: str,
    t: float,
    *,
    liked: bool,
    dissatisfied: bool,
    keep: int | None = None,
) -> list[tuple[int, float]]:
    """Fold one of ``user``'s events into their open dissatisfactions (``opened[user]``).

    Each open one counts the event. A like resolves them all, each on its own: they are
    returned as (events it took, event time it was opened at). A dissatisfying event then
    opens one more, at ``t``; the ``keep`` newest are kept (all when ``None``). The live
    metrics and :class:`DeescalationTally` count re-engagement alike through this.
    """
    resolved: list[tuple[int, float]] = []
    pending = opened.get(user)
    if pending is not None:
        counted = [(seen + 1, since) for seen, since in pending]
        if liked:
            del opened[user]
            resolved = counted
        else:
            opened[user] = counted
    if dissatisfied:
        kept = [*opened.get(user, ()), (0, t)]
        opened[user] = kept[-keep:] if keep is not None else kept
    return resolved


class DeescalationTally:
    """What de-escalation did in a replay: the list before and after, and what followed.

    For the first ``sample`` events that changed a user's penalties (a not_relevant, a
    skip streak), the user's list just before and just after: the share of the penalised
    category in each. For every dissatisfaction (a not_relevant, or a streak): whether
    the user came back to a like within ``within`` of their next events (re-engagement),
    and how many events and hours that took (time to resolution). Each dissatisfaction
    counts on its own: the user's next like resolves all their open ones.
    """

    def __init__(self, sample: int = 1000, within: int = 10) -> None:
        self.sample = sample
        self.within = within
        self.dissatisfactions = 0
        self.adjusting = 0
        self.measured = 0
        self.share_before = 0.0
        self.share_after = 0.0
        self.emptied = 0
        self.re_engaged = 0
        self.resolved_events: list[int] = []
        self.resolved_hours: list[float] = []
        self._open: dict[str, list[tuple[int, float]]] = {}  # see fold_dissatisfaction

    def wants_lists(self, event: Event, profile: UserProfile | None, streak_length: int) -> bool:
        """Whether to rank before and after this event: it may adjust (while sampling)."""
        if self.measured >= self.sample:
            return False
        if isinstance(event, NotRelevant):
            return event.reason != "seen_it"
        streak = len(profile.streak) if profile is not None else 0
        return isinstance(event, Skip | Dwell) and streak >= streak_length - 1

    def observe(
        self,
        event: Event,
        adjustments: tuple[Adjustment, ...],
        before: list[str | None] | None,
        after: list[str | None] | None,
    ) -> None:
        """Count one applied event, given the categories of the lists before and after it."""
        rules = {a.rule for a in adjustments}
        dissatisfied = (isinstance(event, NotRelevant) and event.reason != "seen_it") or (
            "skip_streak" in rules
        )
        t = event.timestamp.timestamp()
        for seen, since in fold_dissatisfaction(
            self._open, event.user_id, t, liked=is_like(event), dissatisfied=dissatisfied
        ):
            self.re_engaged += int(seen <= self.within)
            self.resolved_events.append(seen)
            self.resolved_hours.append((t - since) / 3600)
        self.dissatisfactions += int(dissatisfied)
        if "not_relevant" in rules or "skip_streak" in rules:
            self.adjusting += 1
        if before is not None and after is not None:
            categories = {a.subject for a in adjustments if a.key.startswith("category:")}
            if categories and before:

                def share(items: list[str | None]) -> float:
                    return sum(c in categories for c in items) / len(items)

                self.measured += 1
                self.share_before += share(before)
                self.share_after += share(after) if after else 0.0
                self.emptied += int(share(before) > 0 and (not after or share(after) == 0))

    def as_dict(self) -> dict[str, Any]:
        """The figures, JSON-ready."""

        def median(values: list[float] | list[int]) -> float | None:
            return float(statistics.median(values)) if values else None

        measured = self.measured or 1
        return {
            "dissatisfactions": self.dissatisfactions,
            "adjusting_events": self.adjusting,
            "lists_measured": self.measured,
            "penalised_category_share_before": round(self.share_before / measured, 4),
            "penalised_category_share_after": round(self.share_after / measured, 4),
            "penalised_category_removed_entirely": self.emptied,
            f"re_engagement_within_{self.within}_events": (
                round(self.re_engaged / self.dissatisfactions, 4) if self.dissatisfactions else None
            ),
            "median_events_to_resolution": median(self.resolved_events),
            "median_hours_to_resolution": median(self.resolved_hours),
            "unresolved": sum(map(len, self._open.values())),
        }


class _PositivePairs:
    """Remembers which (user, item) pairs have already counted as positive."""

    def __init__(self, rule: PositiveRule) -> None:
        self.rule = rule
        self._seen: set[tuple[str, str]] = set()

    def new_positive(self, event: Event) -> bool:
        """Whether ``event`` makes its (user, item) pair positive for the first time."""
        if not isinstance(event, ITEM_EVENTS) or not self.rule.event_is_positive(event):
            return False
        pair = (event.user_id, event.item_id)
        if pair in self._seen:
            return False
        self._seen.add(pair)
        return True


class _PopularityOrder:
    """Items by (count desc, id asc), re-sorted lazily (nearly sorted: cheap)."""

    def __init__(self, candidates: list[str]) -> None:
        self.counts: dict[str, int] = dict.fromkeys(candidates, 0)
        self._order = list(candidates)
        self._dirty = False

    def add(self, item: str) -> None:
        if item in self.counts:
            self.counts[item] += 1
            self._dirty = True

    def top(self, k: int, exclude: frozenset[str] | set[str]) -> list[str]:
        if self._dirty:
            counts = self.counts
            self._order.sort(key=lambda i: (-counts[i], i))
            self._dirty = False
        return list(itertools.islice((i for i in self._order if i not in exclude), k))


class PopularityRecommender:
    """Global popularity: the items with the most positive users so far.

    Args:
        items: the catalog records (candidates).
        rule: what counts as positive (rating >= 4 or a long dwell; one count per user).

    """

    def __init__(self, items: Iterable[ItemRecord], rule: PositiveRule | None = None) -> None:
        self.rule = rule or PositiveRule()
        self._pairs = _PositivePairs(self.rule)
        self._order = _PopularityOrder(_candidates(items))

    def learn(self, event: Event) -> None:
        """Count a user's first positive signal for an item."""
        if self._pairs.new_positive(event):
            assert isinstance(event, ITEM_EVENTS)
            self._order.add(event.item_id)

    def recommend(self, user_id: str, k: int, exclude: frozenset[str], now: datetime) -> list[str]:
        """The ``k`` most popular items not in ``exclude`` (ties by item id)."""
        return self._order.top(k, exclude)


Normalisation = Literal["none", "conditional", "cosine"]


class CooccurrenceRecommender:
    """Item-item co-occurrence of each user's recent positives, learned online.

    Each new positive ``(u, j)`` adds one to ``C[i][j]`` and ``C[j][i]`` for every item
    ``i`` among ``u``'s last ``window`` positives. A user's list scores each item ``j`` by
    the sum, over the user's last ``history`` positives ``h``, of ``C[h][j]`` normalised
    by ``normalise``: ``"none"`` (raw counts), ``"conditional"`` (``C[h][j] / n_h``, the
    share of ``h``'s fans who also liked ``j``) or ``"cosine"`` (``C[h][j] / sqrt(n_h n_j)``),
    ``n`` being positives per item. Ties go to the more popular item, then the smaller
    id; a list with fewer than ``k`` scored items is completed by popularity.

    With ``frozen_after`` set it is the *static* baseline: co-occurrences and popularity
    stop changing after that many events (a model trained once on the first part of the
    log), while each user's recent positives, the query, keep being read.

    Rows are dense ``float32`` arrays, allocated for items with a positive: memory grows
    with (items liked) x (catalog), 11 MB for MovieLens 100K.

    Args:
        items: the catalog records (candidates).
        window: positives of a user that a new positive co-occurs with.
        history: the user's latest positives a list is built from.
        normalise: how co-occurrence counts are weighed (see above).
        rule: what counts as positive.
        frozen_after: events after which the model is frozen (``None``: never).

    """

    def __init__(
        self,
        items: Iterable[ItemRecord],
        window: int = 20,
        history: int = 10,
        normalise: Normalisation = "none",
        rule: PositiveRule | None = None,
        frozen_after: int | None = None,
    ) -> None:
        self.window = window
        self.history = history
        self.normalise = normalise
        self.rule = rule or PositiveRule()
        self.frozen_after = frozen_after
        self._pairs = _PositivePairs(self.rule)
        self._ids = _candidates(items)
        self._index = {item: n for n, item in enumerate(self._ids)}
        self._counts = np.zeros(len(self._ids))
        self._rows: dict[int, np.ndarray] = {}
        self._recent: dict[str, deque[int]] = {}
        self._learned = 0

    @property
    def frozen(self) -> bool:
        """Whether the model no longer changes."""
        return self.frozen_after is not None and self._learned >= self.frozen_after

    def _row(self, index: int) -> np.ndarray:
        row = self._rows.get(index)
        if row is None:
            row = self._rows[index] = np.zeros(len(self._ids), dtype=np.float32)
        return row

    def learn(self, event: Event) -> None:
        """Fold a user's first positive signal for an item into the co-occurrences."""
        frozen = self.frozen
        self._learned += 1
        if not self._pairs.new_positive(event):
            return
        assert isinstance(event, ITEM_EVENTS)
        index = self._index.get(event.item_id)
        if index is None:
            return
        recent = self._recent.get(event.user_id)
        if recent is None:
            recent = self._recent[event.user_id] = deque(maxlen=max(self.window, self.history))
        if not frozen:
            # a user's positives are distinct items (one per pair), so no index repeats
            others = list(itertools.islice(reversed(recent), self.window))
            if others:
                self._row(index)[others] += 1.0
                for other in others:
                    self._row(other)[index] += 1.0
            self._counts[index] += 1.0
        recent.append(index)

    def recommend(self, user_id: str, k: int, exclude: frozenset[str], now: datetime) -> list[str]:
        """The items co-occurring most with the user's recent positives."""
        counts = self._counts
        scores = np.zeros(len(self._ids))
        for seen in itertools.islice(reversed(self._recent.get(user_id, ())), self.history):
            row = self._rows.get(seen)
            if row is None:
                continue
            if self.normalise == "none":
                scores += row
            elif self.normalise == "conditional":
                scores += row / max(counts[seen], 1.0)
            else:
                scores += row / np.sqrt(max(counts[seen], 1.0) * np.maximum(counts, 1.0))
        banned = [self._index[i] for i in exclude if i in self._index]
        scores[banned] = 0.0
        scored = np.flatnonzero(scores > 0)
        if len(scored) > k:
            # everything tied with the k-th best stays in, so ties are settled below
            threshold = np.partition(scores[scored], len(scored) - k)[len(scored) - k]
            scored = scored[scores[scored] >= threshold]
        chosen = sorted(scored.tolist(), key=lambda n: (-scores[n], -counts[n], n))[:k]
        if len(chosen) < k:
            taken = set(chosen) | set(banned)
            by_popularity = np.lexsort((np.arange(len(counts)), -counts)).tolist()
            chosen += itertools.islice(
                (n for n in by_popularity if n not in taken), k - len(chosen)
            )
        return [self._ids[n] for n in chosen]


MFTarget = Literal["positive", "rating"]


class RiverMFRecommender:
    """River's online matrix factorisation (``reco.FunkMF`` or ``reco.BiasedMF``).

    ``target="positive"`` learns ``y = 1`` from each user's first positive signal for an
    item (positive-only, as the datasets README's reference); ``target="rating"`` learns
    the stars of every ``rating`` event. A list scores every candidate at once from the
    model's latent vectors (and biases), read without touching the model; items and users
    the model has not met score 0 (plus the global mean), ties by item id.

    Args:
        model: a fresh ``reco.FunkMF`` or ``reco.BiasedMF`` (its seed makes runs repeat).
        items: the catalog records (candidates).
        target: what is learned (see above).
        rule: what counts as positive for ``target="positive"``.

    """

    def __init__(
        self,
        model: Any,
        items: Iterable[ItemRecord],
        target: MFTarget = "positive",
        rule: PositiveRule | None = None,
    ) -> None:
        self.model = model
        self.target = target
        self.rule = rule or PositiveRule()
        self._pairs = _PositivePairs(self.rule)
        self._ids = _candidates(items)
        self._index = {item: n for n, item in enumerate(self._ids)}
        self._biased = hasattr(model, "i_biases")
        self._latents = np.zeros((len(self._ids), model.n_factors))
        self._biases = np.zeros(len(self._ids))

    def learn(self, event: Event) -> None:
        """One SGD step on the model for a positive (or rated) pair."""
        if self.target == "rating":
            if not isinstance(event, Rating):
                return
            y = event.value
        elif self._pairs.new_positive(event):
            y = 1.0
        else:
            return
        assert isinstance(event, ITEM_EVENTS)
        self.model.learn_one(event.user_id, event.item_id, y)
        row = self._index.get(event.item_id)
        if row is not None:
            self._latents[row] = self.model.i_latents[event.item_id]
            if self._biased:
                self._biases[row] = self.model.i_biases[event.item_id]

    def recommend(self, user_id: str, k: int, exclude: frozenset[str], now: datetime) -> list[str]:
        """The ``k`` best-scored candidates for the user."""
        user = self.model.u_latents.get(user_id)  # .get: never creates the user
        scores = self._biases.copy() if self._biased else np.zeros(len(self._ids))
        if user is not None:
            scores += self._latents @ np.asarray(user)
        banned = [self._index[i] for i in exclude if i in self._index]
        scores[banned] = -np.inf
        wanted = min(k, len(self._ids) - len(banned))
        if wanted <= 0:
            return []
        top = np.argpartition(-scores, wanted - 1)[:wanted]
        # ties by item id (candidates are sorted, so by index): argpartition picks any of
        # the items tied at the cut (all of them, for a user the model has not met), so
        # every one of those competes for the last places
        contenders = np.flatnonzero(scores >= scores[top].min())
        order = sorted(contenders.tolist(), key=lambda n: (-scores[n], n))[:wanted]
        return [self._ids[n] for n in order]


def funk_mf(seed: int, n_factors: int = 32, learning_rate: float = 0.05, l2: float = 0.01) -> Any:
    """A seeded ``reco.FunkMF`` with the evaluation's defaults (k=32, SGD)."""
    return reco.FunkMF(
        n_factors=n_factors,
        optimizer=optim.SGD(learning_rate),
        l2=l2,
        initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
        seed=seed,
    )


def biased_mf(seed: int, n_factors: int = 32, learning_rate: float = 0.01, l2: float = 0.05) -> Any:
    """A seeded ``reco.BiasedMF`` with the evaluation's defaults (k=32, SGD)."""
    return reco.BiasedMF(
        n_factors=n_factors,
        bias_optimizer=optim.SGD(learning_rate),
        latent_optimizer=optim.SGD(learning_rate),
        l2_bias=l2,
        l2_latent=l2,
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
        seed=seed,
    )


#: The recommenders of a standard run, in report order.
RECOMMENDER_NAMES: tuple[str, ...] = (
    "recloop", "popularity", "funk_mf", "biased_mf", "static_cooccurrence", "cooccurrence",
)  # fmt: skip
#: Run only when asked for (``only``): recloop without its online model (the heuristic).
OPTIONAL_RECOMMENDERS: tuple[str, ...] = ("recloop_no_model",)


def standard_recommenders(
    items: Sequence[ItemRecord],
    seed: int,
    split_event: int | None,
    loop_config: LoopConfig | None = None,
    only: Iterable[str] | None = None,
    model_learning_rate: float = 0.05,
    loop_snapshots: bool = False,
) -> dict[str, Recommender]:
    """The recommenders of a standard run, by name (see :data:`RECOMMENDER_NAMES`).

    Args:
        items: the catalog records.
        seed: for the models with randomness (River's matrix factorisation).
        split_event: where the static model freezes (``None``: it never does).
        loop_config: recloop's rules and weights (the worker's defaults when ``None``).
        only: a subset of the names (:data:`RECOMMENDER_NAMES` and
            :data:`OPTIONAL_RECOMMENDERS`), in any order.
        model_learning_rate: of recloop's online ranking model, as the worker's setting.
        loop_snapshots: recloop also builds every event's snapshot, as the worker does
            (see :class:`LoopRecommender`: nearly the same lists, slower).

    Raises:
        ValueError: ``only`` names an unknown recommender.

    """
    known = RECOMMENDER_NAMES + OPTIONAL_RECOMMENDERS
    wanted = list(only) if only is not None else list(RECOMMENDER_NAMES)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"unknown recommenders {unknown}; known: {', '.join(known)}")
    builders: dict[str, Callable[[], Recommender]] = {
        "recloop": lambda: LoopRecommender(
            items,
            loop_config,
            RankingModel(learning_rate=model_learning_rate, seed=seed),
            loop_snapshots,
        ),
        "popularity": lambda: PopularityRecommender(items),
        "funk_mf": lambda: RiverMFRecommender(funk_mf(seed), items, target="positive"),
        "biased_mf": lambda: RiverMFRecommender(biased_mf(seed), items, target="rating"),
        "static_cooccurrence": lambda: CooccurrenceRecommender(items, frozen_after=split_event),
        "cooccurrence": lambda: CooccurrenceRecommender(items),
        "recloop_no_model": lambda: LoopRecommender(items, loop_config, None, loop_snapshots),
    }
    return {name: builders[name]() for name in known if name in wanted}


# -- the report ------------------------------------------------------------------------

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def render_report(document: Mapping[str, Any], title: str = "recloop evaluation") -> str:
    """A self-contained HTML page: the figures table and Recall@k over time (inline SVG)."""
    sections: Mapping[str, Mapping[str, Any]] = document["recommenders"]
    k = document["protocol"]["k"]
    width, height, pad, legend = 900, 360, 48, 170
    plot_w, plot_h = width - 2 * pad - legend, height - 2 * pad
    curves = {name: s["recall_curve"] for name, s in sections.items() if s["recall_curve"]}
    x_max = max((c[-1][0] for c in curves.values()), default=1) or 1
    y_max = max((r for c in curves.values() for _, r in c), default=0.0)
    y_max = max(0.05, math.ceil(y_max * 20) / 20)

    def x_of(p: float) -> float:
        return pad + plot_w * p / x_max

    def y_of(r: float) -> float:
        return height - pad - plot_h * r / y_max

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="Recall@{k} over time">',
        f'<rect x="{pad}" y="{pad}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for step in range(round(y_max / 0.05) + 1):
        y = y_of(step * 0.05)
        svg.append(
            f'<line x1="{pad}" x2="{pad + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{pad - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{step * 0.05:.2f}</text>"
        )
    svg.append(
        f'<text x="{pad + plot_w / 2}" y="{height - 12}" font-size="12" text-anchor="middle">'
        f"positives evaluated (of {x_max}); Recall@{k} so far</text>"
    )
    for n, (name, curve) in enumerate(curves.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = " ".join(f"{x_of(p):.1f},{y_of(r):.1f}" for p, r in curve)
        svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        svg.append(
            f'<text x="{pad + plot_w + 12}" y="{pad + 16 * n + 10}" font-size="12" '
            f'fill="{colour}">{html.escape(name)} ({curve[-1][1]:.3f})</text>'
        )
    svg.append("</svg>")
    columns = ("recall_at_k", "ndcg_at_k", "coverage", "diversity", "novelty", "serendipity",
               "events_per_s", "wall_time_s")  # fmt: skip
    rows = [
        "<tr><th>recommender</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        + "<th>recall after split</th></tr>"
    ]
    for name, section in sections.items():
        cells = "".join(f"<td>{_fmt(section[c])}</td>" for c in columns)
        split = _fmt(section["after_split"]["recall_at_k"]) if section["after_split"][
            "positives"] else "—"  # fmt: skip
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}<td>{split}</td></tr>")
    log = document["log"]
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{log['events']} events, {log['interactions']} interactions, {log['users']} users, "
        f"{log['catalog_items']} items, {log['positives']} positives; "
        f"k = {k}; wall time {log['wall_time_s']} s.</p>",
        f"<h2>Recall@{k} over time (cumulative)</h2>",
        *svg,
        "<h2>Figures</h2>",
        "<table>",
        *rows,
        "</table>",
        "</body></html>",
    ])  # fmt: skip


def write_report(document: Mapping[str, Any], path: Path) -> None:
    """Write :func:`render_report` to ``path`` atomically."""
    page = render_report(document).encode("utf-8")
    write_atomic(path, lambda handle: handle.write(page))
