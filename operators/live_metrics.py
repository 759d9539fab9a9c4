"""Live recommendation metrics, computed in the stream: one worker's view, Kafka-free.

The events agent hands every applied event to :meth:`LiveMetrics.observe` with what it
knew just before (the user's profile and latest list) and what the event produced (the
new profile, the snapshot, the de-escalation adjustments, how long it took to reach its
snapshot). One call costs O(k) for a list of k items (plus one k x dim product for the
filter-bubble score, and O(n) for an impression of n items); ratios, means and
percentiles are derived only when read (:meth:`LiveMetrics.figures`).

Definitions (``docs/metrics.md`` has the exported names):

* *cohort*: ``cold`` when the user had fewer than ``cold_start_events`` applied events
  before this one, else ``warm``.
* *recommended impression*: one slot of an ``impression`` event whose item was in the
  user's latest list (the snapshot before the event). *Recommended click*: a ``click``
  on an item in that list. **CTR** = recommended clicks / recommended impressions.
* **Conversion** = conversions / recommended impressions; a conversion is a dwell that
  is a full positive signal (at least half the item's length, or ``dwell_long_ms`` when
  the length is unknown) or a rating of 4 or more, on an item in the latest list.
* **Serendipity**: the share of recommended clicks on an item whose category the user
  had no affinity for before (the category was new to them).
* **Catalog coverage**: distinct items in the lists emitted within the last
  ``window_s`` seconds of wall time, over the catalog's size.
* **Intra-list diversity**: the share of item pairs of a list whose categories differ
  (:func:`operators.evaluation.intra_list_diversity`); **novelty**: the mean
  self-information ``-log2((n_i + 1) / (N + |I|))`` of a list's items, ``n_i`` the item
  events this worker processed for item ``i`` before the list, ``N`` all of them,
  ``|I|`` the catalog size (:func:`operators.evaluation.self_information`);
  **filter-bubble score**: the mean cosine between each listed item's embedding and the
  user's embedding after the event. All three are means over the last ``window_lists``
  lists that have them.
* **De-escalation**: adjustments counted by rule and reason; for a ``not_relevant`` or
  a skip streak that penalised categories, the share of those categories in the list
  before and in the list after; a *dissatisfaction* (``not_relevant`` other than
  ``seen_it``, or a completed skip streak) is *resolved* by the user's next like (a click
  or a rating of 4 or more, as in the offline :class:`operators.evaluation.DeescalationTally`)
  and counts as *re-engaged* when that like came within ``reengage_within`` events of it.
  Each dissatisfaction counts on its own: a like resolves all of the user's open ones.
* **Latency**: seconds from the event's Kafka message timestamp (the producer's create
  time, or the broker's append time on topics that use it) to the moment the worker
  handed the snapshot to its producer.

State is per worker (the partitions it owns) and in memory; :meth:`LiveMetrics.snapshot`
and :meth:`LiveMetrics.restore` round-trip it, and the worker starts afresh on restart,
as Prometheus counters do.

Example:
    >>> from datetime import UTC, datetime
    >>> from operators.catalog import Catalog
    >>> from operators.profile import UserProfile
    >>> from schemas.events import Click
    >>> from schemas.snapshot import RankedItem, Snapshot
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> click = Click(type="click", event_id="e1", user_id="u", item_id="a", timestamp=t)
    >>> after = Snapshot(user_id="u", version=2, generated_at=t, source_event_id="e1",
    ...                  model_version="m", items=[RankedItem(item_id="b", score=1.0)])
    >>> metrics = LiveMetrics()
    >>> metrics.observe(click, before=UserProfile.new("u"), after=UserProfile.new("u"),
    ...                 shown=ShownList(("a",), ("c",)), snapshot=after, adjustments=(),
    ...                 catalog=Catalog(), now=0.0, latency_s=0.01)
    >>> metrics.recommended_clicks["cold"], metrics.figures(0.0, 1)["ctr"]["all"]
    (1, None)

"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from operators.catalog import Catalog
from operators.deescalation import Adjustment, base_key
from operators.evaluation import (
    UNKNOWN_CATEGORY,
    fold_dissatisfaction,
    intra_list_diversity,
    is_like,
    self_information,
)
from operators.profile import UserProfile
from operators.signals import SignalRules, signal_of
from schemas.events import ITEM_EVENTS, Click, Dwell, Event, Impression, NotRelevant, Rating
from schemas.snapshot import Snapshot

COHORTS = ("cold", "warm")
#: Upper bounds (seconds) of the latency histograms' buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: The percentiles reported from the recent latencies.
QUANTILES = (0.5, 0.95, 0.99)
#: The adjustments whose lists are measured before and after.
MEASURED_RULES = ("not_relevant", "skip_streak")
#: A user's open dissatisfactions kept, newest (or ``reengage_within`` + 1 when that is
#: more): an older one is past the re-engagement window and is dropped unresolved.
MAX_OPEN_PER_USER = 32


@dataclass(frozen=True)
class LiveMetricsParams:
    """Windows and thresholds of the live metrics (see ``MetricsSettings``)."""

    cold_start_events: int = 5
    #: wall-clock seconds of catalog coverage
    window_s: float = 3600.0
    #: lists (and latencies) the rolling means and percentiles are computed over
    window_lists: int = 1000
    reengage_within: int = 10
    #: users whose open dissatisfaction is tracked (the least recent are forgotten)
    max_users: int = 100_000
    signals: SignalRules = field(default_factory=SignalRules)


@dataclass(frozen=True)
class ShownList:
    """What one snapshot recommended: item ids and their categories, in rank order."""

    items: tuple[str, ...]
    categories: tuple[str | None, ...]

    @classmethod
    def of(cls, snapshot: Snapshot) -> ShownList:
        """The list a snapshot carries."""
        return cls(
            tuple(i.item_id for i in snapshot.items), tuple(i.category for i in snapshot.items)
        )

    def encode(self) -> bytes:
        """Compact bytes: ``item US category`` per item, joined by RS (ids hold no controls)."""
        return "\x1e".join(
            f"{item}\x1f{category or ''}"
            for item, category in zip(self.items, self.categories, strict=True)
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ShownList:
        """The list :meth:`encode` wrote."""
        if not data:
            return cls((), ())
        pairs = [entry.partition("\x1f") for entry in data.decode().split("\x1e")]
        return cls(tuple(p[0] for p in pairs), tuple(p[2] or None for p in pairs))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ShownList:
        """The list of a JSON-encoded snapshot (as on the snapshots topic), unvalidated."""
        items = json.loads(raw).get("items", ())
        return cls(tuple(str(i["item_id"]) for i in items), tuple(i.get("category") for i in items))


class Histogram:
    """Latencies: counts per bucket (Prometheus ``le`` bounds), their sum, and the recent ones.

    Args:
        bounds: upper bounds of the buckets, ascending (``+Inf`` is implied).
        window: how many of the latest observations the percentiles are taken over.

    """

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS, window: int = 1000) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)

    def observe(self, value: float) -> None:
        """Count one value (a negative one, from clock skew, counts as 0)."""
        value = max(0.0, value)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.recent.append(value)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` per bucket, ending with ``+Inf``."""
        running, out = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantiles(self, qs: Sequence[float] = QUANTILES) -> dict[float, float | None]:
        """The percentiles of the recent values (linear interpolation), ``None`` when empty."""
        if not self.recent:
            return dict.fromkeys(qs)
        values = np.quantile(np.fromiter(self.recent, dtype=np.float64), qs)
        return {q: float(v) for q, v in zip(qs, values, strict=True)}

    def state(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {"counts": self.counts, "total": self.total, "recent": list(self.recent)}

    def load(self, state: Mapping[str, Any]) -> None:
        """Take the state :meth:`state` returned (same bounds)."""
        self.counts = [int(n) for n in state["counts"]]
        self.total = float(state["total"])
        self.recent.clear()
        self.recent.extend(float(v) for v in state["recent"])


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


class LiveMetrics:
    """One worker's live figures about its recommendations (see the module docs).

    Args:
        params: windows and thresholds.

    """

    def __init__(self, params: LiveMetricsParams | None = None) -> None:
        self.params = params if params is not None else LiveMetricsParams()
        window = self.params.window_lists
        self.events_by_type: dict[str, int] = {}
        self.impressions = dict.fromkeys(COHORTS, 0)
        self.recommended_impressions = dict.fromkeys(COHORTS, 0)
        self.clicks = dict.fromkeys(COHORTS, 0)
        self.recommended_clicks = dict.fromkeys(COHORTS, 0)
        self.conversions = dict.fromkeys(COHORTS, 0)
        self.serendipitous_clicks = 0
        self.lists = 0
        self.diversity: deque[float] = deque(maxlen=window)
        self.novelty: deque[float] = deque(maxlen=window)
        self.filter_bubble: deque[float] = deque(maxlen=window)
        #: item -> wall time it was last in a list (oldest first)
        self.recommended_at: OrderedDict[str, float] = OrderedDict()
        #: item events per catalogued item, and in all, for novelty
        self.item_events: dict[str, int] = {}
        self.all_item_events = 0
        #: (rule, reason or "none") -> adjustments
        self.adjustments: dict[tuple[str, str], int] = {}
        self.share_measured = dict.fromkeys(MEASURED_RULES, 0)
        self.share_before = dict.fromkeys(MEASURED_RULES, 0.0)
        self.share_after = dict.fromkeys(MEASURED_RULES, 0.0)
        self.share_emptied = dict.fromkeys(MEASURED_RULES, 0)
        self.dissatisfactions = 0
        self.reengaged = 0
        self.resolved = 0
        self.resolution_events = 0
        self.resolution_seconds = 0.0
        #: user -> their open dissatisfactions, oldest first: (events since it, its event
        #: time); users whose first one is the least recent first
        self.open: OrderedDict[str, list[tuple[int, float]]] = OrderedDict()
        self.latency = Histogram(window=window)
        self.deescalation_latency = Histogram(window=window)

    def forget(self, user_id: str) -> None:
        """Drop what is kept about one user (a ``forget``): their open dissatisfaction."""
        self.open.pop(user_id, None)

    # -- the hot path ---------------------------------------------------------------------

    def observe(
        self,
        event: Event,
        *,
        before: UserProfile | None,
        after: UserProfile,
        shown: ShownList | None,
        snapshot: Snapshot,
        adjustments: Sequence[Adjustment],
        catalog: Catalog,
        now: float,
        latency_s: float | None,
        new_list: bool = True,
    ) -> None:
        """Count one applied event and the snapshot it produced.

        Args:
            event: the validated event.
            before: the user's profile before the event (``None``: a new user).
            after: the profile after it.
            shown: the user's latest list before the event (``None``: none yet).
            snapshot: the snapshot the event produced.
            adjustments: what de-escalation changed.
            catalog: the worker's items (categories, lengths, embeddings, size).
            now: wall-clock seconds (the worker's injected clock).
            latency_s: event message timestamp to snapshot emit, when known.
            new_list: whether ``snapshot`` is counted as a list shown (a burst of one
                user's events coalesced into one snapshot counts it once, with the last).

        """
        applied = before.events_applied if before is not None else 0
        cohort = "cold" if applied < self.params.cold_start_events else "warm"
        self.events_by_type[event.type] = self.events_by_type.get(event.type, 0) + 1
        listed = frozenset(shown.items) if shown is not None else frozenset()
        if isinstance(event, Impression):
            self.impressions[cohort] += len(event.item_ids)
            self.recommended_impressions[cohort] += sum(i in listed for i in event.item_ids)
        elif isinstance(event, Click):
            self.clicks[cohort] += 1
            if event.item_id in listed:
                self.recommended_clicks[cohort] += 1
                state = catalog.get(event.item_id)
                category = state.category if state is not None else None
                known = before.affinity if before is not None else {}
                self.serendipitous_clicks += int(category is not None and category not in known)
        elif isinstance(event, Dwell | Rating) and event.item_id in listed:
            self.conversions[cohort] += int(self._converts(event, catalog))
        if new_list:
            self._observe_list(snapshot, after, catalog, now)
        if isinstance(event, ITEM_EVENTS) and catalog.get(event.item_id) is not None:
            self.item_events[event.item_id] = self.item_events.get(event.item_id, 0) + 1
            self.all_item_events += 1
        dissatisfied = self._observe_deescalation(event, adjustments, shown, snapshot)
        if latency_s is not None:
            self.latency.observe(latency_s)
            if dissatisfied:
                self.deescalation_latency.observe(latency_s)

    def _converts(self, event: Dwell | Rating, catalog: Catalog) -> bool:
        if isinstance(event, Rating):
            return event.value >= 4
        state = catalog.get(event.item_id)
        expected = state.record.duration_ms if state is not None and state.record else None
        signal = signal_of(event, expected, self.params.signals)
        return signal is not None and signal.target >= 1.0

    def _observe_list(
        self, snapshot: Snapshot, profile: UserProfile, catalog: Catalog, now: float
    ) -> None:
        items = snapshot.items
        self.lists += 1
        recommended_at = self.recommended_at
        for item in items:
            recommended_at[item.item_id] = now
            recommended_at.move_to_end(item.item_id)
        self._forget_before(now - self.params.window_s)
        diversity = intra_list_diversity([i.category or UNKNOWN_CATEGORY for i in items])
        if diversity is not None:
            self.diversity.append(diversity)
        if items:
            size, seen, counts = len(catalog), self.all_item_events, self.item_events
            self.novelty.append(
                sum(self_information(counts.get(i.item_id, 0), seen, size) for i in items)
                / len(items)
            )
        if len(profile.vector) == catalog.embedding.dim:
            vector = np.asarray(profile.vector, dtype=np.float64)
            norm = math.sqrt(float(vector @ vector))
            known = [i.item_id for i in items if catalog.get(i.item_id) is not None]
            if known and norm > 0:
                # item rows are unit vectors: the cosines are the products over |user|
                total = float(catalog.similarities(known, vector).sum())
                self.filter_bubble.append(total / (norm * len(known)))

    def _forget_before(self, cutoff: float) -> None:
        recommended_at = self.recommended_at
        while recommended_at:
            item, t = next(iter(recommended_at.items()))
            if t >= cutoff:
                break
            del recommended_at[item]

    def _observe_deescalation(
        self,
        event: Event,
        adjustments: Sequence[Adjustment],
        shown: ShownList | None,
        snapshot: Snapshot,
    ) -> bool:
        """Count adjustments, share before/after, re-engagement; whether it dissatisfied."""
        for a in adjustments:
            key = (a.rule, a.reason or "none")
            self.adjustments[key] = self.adjustments.get(key, 0) + 1
        rules = {a.rule for a in adjustments}
        explicit = isinstance(event, NotRelevant) and event.reason != "seen_it"
        dissatisfied = explicit or "skip_streak" in rules
        t = event.timestamp.timestamp()
        for seen, since in fold_dissatisfaction(
            self.open, event.user_id, t, liked=is_like(event), dissatisfied=dissatisfied,
            keep=max(MAX_OPEN_PER_USER, self.params.reengage_within + 1),
        ):  # fmt: skip
            self.resolved += 1
            self.reengaged += int(seen <= self.params.reengage_within)
            self.resolution_events += seen
            self.resolution_seconds += max(0.0, t - since)
        if not dissatisfied:
            return False
        self.dissatisfactions += 1
        if len(self.open) > self.params.max_users:  # the least recent user is forgotten
            self.open.popitem(last=False)
        rule = "not_relevant" if isinstance(event, NotRelevant) else "skip_streak"
        penalised = {
            base_key(a.key).split(":", 1)[1]
            for a in adjustments
            if a.rule == rule and base_key(a.key).startswith("category:")
        }
        if penalised and shown is not None and shown.items:
            share_before = sum(c in penalised for c in shown.categories) / len(shown.items)
            after = snapshot.items
            share_after = sum(i.category in penalised for i in after) / len(after) if after else 0
            self.share_measured[rule] += 1
            self.share_before[rule] += share_before
            self.share_after[rule] += share_after
            self.share_emptied[rule] += int(share_before > 0 and share_after == 0)
        return True

    # -- reading --------------------------------------------------------------------------

    def covered(self, now: float) -> int:
        """Distinct items in the lists of the last ``window_s`` seconds."""
        self._forget_before(now - self.params.window_s)
        return len(self.recommended_at)

    def figures(self, now: float, catalog_size: int) -> dict[str, Any]:
        """Every counter and derived figure, JSON-ready (``None`` where undefined).

        Args:
            now: wall-clock seconds, the end of the coverage window.
            catalog_size: items the worker's catalog holds.

        """
        rec_clicks, rec_impressions = self.recommended_clicks, self.recommended_impressions
        all_clicks, all_impressions = sum(rec_clicks.values()), sum(rec_impressions.values())
        covered = self.covered(now)
        latency = self.latency.quantiles()
        deescalation_latency = self.deescalation_latency.quantiles()
        return {
            "events_by_type": dict(sorted(self.events_by_type.items())),
            "impressions": dict(self.impressions),
            "recommended_impressions": dict(rec_impressions),
            "clicks": dict(self.clicks),
            "recommended_clicks": dict(rec_clicks),
            "conversions": dict(self.conversions),
            "ctr": {
                "all": _ratio(all_clicks, all_impressions),
                **{c: _ratio(rec_clicks[c], rec_impressions[c]) for c in COHORTS},
            },
            "conversion_rate": _ratio(sum(self.conversions.values()), all_impressions),
            "serendipity": _ratio(self.serendipitous_clicks, all_clicks),
            "lists": self.lists,
            "catalog_coverage": min(1.0, covered / catalog_size) if catalog_size else None,
            "recommended_items": covered,
            "catalog_items": catalog_size,
            "diversity": _mean(self.diversity),
            "novelty_bits": _mean(self.novelty),
            "filter_bubble": _mean(self.filter_bubble),
            "deescalation": {
                "adjustments": {
                    f"{rule}/{reason}": n for (rule, reason), n in sorted(self.adjustments.items())
                },
                "dissatisfactions": self.dissatisfactions,
                "share_before": {
                    r: _ratio(self.share_before[r], self.share_measured[r]) for r in MEASURED_RULES
                },
                "share_after": {
                    r: _ratio(self.share_after[r], self.share_measured[r]) for r in MEASURED_RULES
                },
                "lists_measured": dict(self.share_measured),
                "category_emptied": dict(self.share_emptied),
                "resolved": self.resolved,
                "reengaged": self.reengaged,
                "reengagement_rate": _ratio(self.reengaged, self.dissatisfactions),
                "mean_events_to_resolution": _ratio(self.resolution_events, self.resolved),
                "mean_seconds_to_resolution": _ratio(self.resolution_seconds, self.resolved),
                "latency_s": {str(q): v for q, v in deescalation_latency.items()},
            },
            "latency_s": {str(q): v for q, v in latency.items()},
            "latency_count": self.latency.count,
        }

    # -- snapshot and restore -------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as JSON bytes."""
        return json.dumps(
            {
                "v": 1,
                "events_by_type": self.events_by_type,
                "impressions": self.impressions,
                "recommended_impressions": self.recommended_impressions,
                "clicks": self.clicks,
                "recommended_clicks": self.recommended_clicks,
                "conversions": self.conversions,
                "serendipitous_clicks": self.serendipitous_clicks,
                "lists": self.lists,
                "diversity": list(self.diversity),
                "novelty": list(self.novelty),
                "filter_bubble": list(self.filter_bubble),
                "recommended_at": list(self.recommended_at.items()),
                "item_events": self.item_events,
                "all_item_events": self.all_item_events,
                "adjustments": [[r, s, n] for (r, s), n in self.adjustments.items()],
                "share_measured": self.share_measured,
                "share_before": self.share_before,
                "share_after": self.share_after,
                "share_emptied": self.share_emptied,
                "dissatisfactions": self.dissatisfactions,
                "reengaged": self.reengaged,
                "resolved": self.resolved,
                "resolution_events": self.resolution_events,
                "resolution_seconds": self.resolution_seconds,
                "open": [[u, [[n, t] for n, t in opened]] for u, opened in self.open.items()],
                "latency": self.latency.state(),
                "deescalation_latency": self.deescalation_latency.state(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def restore(cls, data: bytes, params: LiveMetricsParams | None = None) -> LiveMetrics:
        """The metrics :meth:`snapshot` wrote (windows as ``params`` say)."""
        raw = json.loads(data)
        metrics = cls(params)
        metrics.events_by_type = {str(k): int(v) for k, v in raw["events_by_type"].items()}
        for name in ("impressions", "recommended_impressions", "clicks", "recommended_clicks",
                     "conversions", "share_measured", "share_emptied"):  # fmt: skip
            getattr(metrics, name).update({k: int(v) for k, v in raw[name].items()})
        for name in ("share_before", "share_after"):
            getattr(metrics, name).update({k: float(v) for k, v in raw[name].items()})
        for name in ("serendipitous_clicks", "lists", "all_item_events", "dissatisfactions",
                     "reengaged", "resolved", "resolution_events"):  # fmt: skip
            setattr(metrics, name, int(raw[name]))
        metrics.resolution_seconds = float(raw["resolution_seconds"])
        for name in ("diversity", "novelty", "filter_bubble"):
            getattr(metrics, name).extend(float(v) for v in raw[name])
        metrics.recommended_at = OrderedDict((str(i), float(t)) for i, t in raw["recommended_at"])
        metrics.item_events = {str(k): int(v) for k, v in raw["item_events"].items()}
        metrics.adjustments = {(str(r), str(s)): int(n) for r, s, n in raw["adjustments"]}
        metrics.open = OrderedDict(_open_entry(entry) for entry in raw["open"])
        metrics.latency.load(raw["latency"])
        metrics.deescalation_latency.load(raw["deescalation_latency"])
        return metrics


def _open_entry(entry: list[Any]) -> tuple[str, list[tuple[int, float]]]:
    """One user's open dissatisfactions as :meth:`LiveMetrics.snapshot` wrote them.

    Snapshots before 2026-11-24 kept one per user: ``[user, events, time]``.
    """
    if len(entry) == 3:
        user, seen, since = entry
        return str(user), [(int(seen), float(since))]
    user, opened = entry
    return str(user), [(int(seen), float(since)) for seen, since in opened]
