"""Candidates and ranking: co-visitation, embeddings, trending, fresh items and exploration.

Candidates come from several sources, so the work per request depends on the user's recent
history and fixed budgets, never on the catalog's size:

* **co-visitation**: items liked by the same users shortly after (or before) the items
  this user liked recently. Each recent like ``r`` contributes its neighbours' counts,
  weighted by recency (``covisit_decay`` per step back) and damped by ``r``'s popularity
  (``covisit_beta``); each candidate is then damped by its own popularity
  (``covisit_alpha``): with both at 0.5 this is a cosine-like similarity, which keeps
  blockbusters from crowding out everything else.
* **embeddings** (hnswlib): the items nearest to the user's embedding, and the nearest
  neighbours of the user's newest likes (see :mod:`operators.embedding`).
* **trending**: the items with the most positive feedback, decayed with a half-life in
  event time, overall and in the user's favourite categories; for a new user this is the
  whole list (cold start), diversified below.
* **fresh**: the newest items of the catalog, for exploration.

Score = normalised co-visitation + ``trending_weight`` x normalised trend +
``affinity_weight`` x squashed category affinity + ``similarity_weight`` x the cosine of
user and item embeddings; once it has warmed up, the online model re-ranks the best of
them. The list is then re-ranked for diversity (at most ``category_cap`` items of one
category; ``cold_start_category_cap`` for a user recloop barely knows) and its last slots
go to exploration: long-tail and fresh items, most promising first, with an optimism bonus
for items with little feedback. How many slots depends on how much recloop knows about
the user (``explore_max`` for a new user, down to ``explore_min``, which is also the
minimum exposure the long tail gets in every list); with ``explore_categories`` (off by
default) the first of them goes to a category drawn by Thompson sampling from the user's
likes and misses per category (:func:`drawn_categories`). Nothing the user consumed or marked
not relevant, and nothing withdrawn, is ever returned. Each item says why it is there.
The parameters were chosen on MovieLens 100K by prequential replay (docs/evaluation.md).

Example:
    >>> from operators.catalog import Catalog
    >>> from operators.profile import UserProfile
    >>> rank_items(UserProfile.new("u"), Catalog(), now_t=0.0, params=RankingParams())
    []

"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from itertools import chain, repeat
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from operators.catalog import Catalog, IntArray, ItemState
from operators.deescalation import (
    DeescalationParams,
    active_penalties,
    neighbour_weight,
    penalty_keys,
)
from operators.embedding import Vector, unit
from operators.model import RankingModel
from operators.profile import UserProfile
from schemas.snapshot import RankedItem

MODEL_VERSION = "covisit-embed-explore-6"

_T = TypeVar("_T")


@dataclass(frozen=True)
class RankingParams:
    """Weights, candidate budgets and the size of the list."""

    k: int = 10
    recent_used: int = 10
    covisit_decay: float = 0.9
    covisit_alpha: float = 0.5
    covisit_beta: float = 0.5
    covisit_candidates: int = 150
    trending_weight: float = 0.15
    trending_candidates: int = 100
    affinity_weight: float = 0.1
    affinity_categories: int = 3
    category_candidates: int = 20
    popularity_half_life_s: float = 7 * 24 * 3600.0
    category_cap: int | None = None
    model_weight: float = 0.5
    model_warmup: int = 200
    model_negatives: int = 4
    model_rerank: int = 30
    similarity_weight: float = 0.2
    embedding_candidates: int = 50
    neighbour_sources: int = 2
    neighbour_candidates: int = 10
    fresh_candidates: int = 20
    longtail_candidates: int = 20
    fresh_window_s: float = 30 * 24 * 3600.0
    explore_min: float = 0.1
    explore_max: float = 0.3
    explore_halfway: int = 20
    explore_bonus: float = 0.2
    explore_categories: int = 0
    cold_start_items: int = 3
    cold_start_category_cap: int = 2


def newest(items: tuple[_T, ...], n: int) -> tuple[_T, ...]:
    """The last ``n`` of ``items`` (the newest), none when ``n`` is 0.

    ``items[-n:]`` keeps every item when ``n`` is 0 (``-0`` is ``0``), and the settings
    allow 0 for "none" in several of these bounds.

    Example:
        >>> newest(("a", "b", "c"), 2), newest(("a", "b", "c"), 0)
        (('b', 'c'), ())

    """
    return items[len(items) - n :] if n < len(items) else items


def _squash(value: float) -> float:
    """Map any real onto (-1, 1) so no single term runs away."""
    return value / (1.0 + abs(value))


def _source_weights(
    profile: UserProfile, catalog: Catalog, params: RankingParams
) -> list[tuple[ItemState, float]]:
    """The user's recent likes that have neighbours, with their weights (newest first)."""
    sources = []
    recent = newest(profile.recent_positives, params.recent_used)
    for age, source_id in enumerate(reversed(recent)):
        source = catalog.get(source_id)
        if source is not None and source.neighbours:
            weight = params.covisit_decay**age / (source.positives + 1) ** params.covisit_beta
            sources.append((source, weight))
    return sources


#: The longest table of :func:`_powers` kept (items with more likes are damped one by one).
_MAX_POWERS = 1 << 16


@lru_cache(maxsize=16)
def _powers(exponent: float, size: int) -> Vector:
    """``p ** exponent`` for ``p`` in ``0 .. size - 1``, rounded as Python rounds it.

    NumPy's vectorised power may round the last bit differently from the C library
    Python uses; the co-visit damping must not depend on which code path computed it.
    """
    return np.array([p**exponent for p in range(size)], dtype=np.float64)


def _covisit_scores(
    sources: list[tuple[ItemState, float]], catalog: Catalog, excluded: frozenset[str],
    alpha: float,
) -> tuple[IntArray, Vector]:  # fmt: skip
    """Every co-visited item's score: its sources' weighted counts, damped by its popularity.

    Returns the catalog rows (ascending) of the co-visited items the catalog may recommend
    and ``excluded`` leaves in, and their scores (see the module docstring).
    """
    if not sources:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    arrays = [catalog.neighbour_arrays(source) for source, _ in sources]
    rows = np.concatenate([rows for rows, _ in arrays])
    counts = np.concatenate([counts for _, counts in arrays])
    lengths = [len(rows) for rows, _ in arrays]
    # weight x count, as a loop would multiply them
    contributions = np.repeat([weight for _, weight in sources], lengths) * counts
    columns = catalog.columns()
    unique, raw = _sum_by_row(rows, contributions, len(columns.available))
    # a withdrawn item can never be shown: it must neither take a place in the cut nor set
    # the scale every candidate's co-visitation is normalised to
    kept = columns.available[unique]
    excluded_rows = catalog.rows(excluded)
    at = np.minimum(np.searchsorted(unique, excluded_rows), len(unique) - 1)
    kept[at[unique[at] == excluded_rows]] = False
    unique, raw = unique[kept], raw[kept]
    if not len(unique):
        return unique, raw
    plus_one = columns.positives[unique] + 1
    size = 1 << int(plus_one.max()).bit_length()  # few distinct tables, each reused
    if size > _MAX_POWERS:  # a blockbuster: no table that long, only what is needed
        return unique, raw / np.array([p**alpha for p in plus_one.tolist()], dtype=np.float64)
    return unique, raw / _powers(alpha, size)[plus_one]


@lru_cache(maxsize=4)
def _log1p_table(size: int) -> Vector:
    """``math.log1p(p)`` for ``p`` in ``0 .. size - 1`` (the C library's, as elsewhere)."""
    return np.fromiter(map(math.log1p, range(size)), np.float64, size)


#: Sum by row over an array as long as the catalog when it is at most this many times
#: longer than the rows to sum (cheaper than sorting them), else sort.
_DENSE_SUM_RATIO = 16


def _sum_by_row(rows: IntArray, values: Vector, size: int) -> tuple[IntArray, Vector]:
    """The distinct ``rows`` (ascending, all below ``size``) and each one's sum of ``values``.

    Each sum adds its values in input order (``np.bincount`` does), as a loop would.
    """
    if size <= _DENSE_SUM_RATIO * len(rows):
        seen = np.zeros(size, dtype=np.bool_)
        seen[rows] = True
        unique: IntArray = np.flatnonzero(seen)
        sums = np.bincount(rows, weights=values, minlength=size)  # float64: weighted
        return unique, np.asarray(sums, dtype=np.float64)[unique]
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    first = np.empty(len(ordered), dtype=np.bool_)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(rows), dtype=np.intp)
    inverse[order] = np.cumsum(first) - 1
    unique = ordered[first]
    sums = np.bincount(inverse, weights=values, minlength=len(unique))
    return unique, np.asarray(sums, dtype=np.float64)


def _strongest(values: Vector, rows: IntArray, n: int, catalog: Catalog) -> list[str]:
    """The ids of the ``n`` highest values (of catalog ``rows``), strongest first.

    Ties go to the lowest id. Neighbour maps fill in arrival order, which differs between
    workers and the replay, so the cut never depends on the order the rows come in.
    """
    if n <= 0:
        return []
    if len(values) > n:
        nth = np.partition(values, len(values) - n)[len(values) - n]  # the n-th highest
        above = values > nth
        room = n - int(np.count_nonzero(above))
        tied = values == nth
        if np.count_nonzero(tied) > room:  # the cut falls among equals: the lowest ids stay
            names = sorted(catalog.row_ids(rows[tied]))[:room]
            tied = np.isin(rows, catalog.rows(names))
        kept = above | tied
        values, rows = values[kept], rows[kept]
    # sorted by (-value, id), as Python sorts the pairs: by value, then each run of equal
    # values by id
    order = np.argsort(-values, kind="stable")
    names = catalog.row_ids(rows[order])
    ordered = values[order]
    equal = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(equal):
        for start, end in _runs(equal.tolist()):
            names[start:end] = sorted(names[start:end])
    return names


def _runs(equal: list[int]) -> Iterator[tuple[int, int]]:
    """The ``[start, end)`` runs of equal values, given where ``value[i] == value[i + 1]``."""
    start = previous = equal[0]
    for i in equal[1:]:
        if i != previous + 1:
            yield start, previous + 2
            start = i
        previous = i
    yield start, previous + 2


def _best(values: Vector, ids: Sequence[str], among: IntArray, n: int) -> list[int]:
    """Of the positions ``among``, the ``n`` with the highest values, best first.

    Ties go to the lowest id (``ids[position]``): the first ``n`` of a full sort by
    ``(-value, id)``, without sorting what cannot make the cut.
    """
    if n <= 0 or not len(among):
        return []
    candidates = values[among]
    if len(among) > n:
        nth = np.partition(candidates, len(among) - n)[len(among) - n]  # the n-th highest
        above = np.flatnonzero(candidates > nth)
        tied = np.flatnonzero(candidates == nth).tolist()
        room = n - len(above)
        if len(tied) > room:  # the cut falls among equals: the lowest ids stay
            tied = sorted(tied, key=lambda j: ids[int(among[j])])[:room]
        kept = np.concatenate([above, np.array(tied, dtype=np.intp)])
        candidates, among = candidates[kept], among[kept]
    positions = among.tolist()
    names = [ids[p] for p in positions]
    ranked = sorted(zip((-candidates).tolist(), names, positions, strict=True))
    return [position for _, _, position in ranked]


def _because(item_id: str, sources: list[tuple[ItemState, float]]) -> str | None:
    """The recent like that contributed most to a candidate."""
    best, best_weight = None, 0.0
    for source, weight in sources:
        contribution = weight * source.neighbours.get(item_id, 0.0)
        if contribution > best_weight:
            best, best_weight = source.item_id, contribution
    return best


Row = tuple[float, str, ItemState]
Matrix = npt.NDArray[np.float64]


def _diversify(
    ranked: list[Row], k: int, cap: int | None, caps: dict[str, int] | None = None,
    shown: Counter[str | None] | None = None,
) -> list[Row]:  # fmt: skip
    """The best ``k`` rows with at most ``cap`` per category and ``caps[c]`` of category c.

    ``shown`` counts the categories of rows the list already holds. When the candidates
    lack variety the best of the rest fill the list, except from a category under a
    de-escalation cap: those never exceed it.
    """
    if cap is None and not caps:
        return ranked[:k]
    caps = caps or {}
    chosen: list[Row] = []
    spill: list[Row] = []
    per_category: Counter[str | None] = Counter(shown or ())
    whole = k + sum(per_category.values())  # the list's length: no category can pass it
    for row in ranked:
        category = row[2].category
        limit = min(cap if cap is not None else whole, caps.get(category or "", whole))
        if per_category[category] < limit:
            chosen.append(row)
            per_category[category] += 1
        elif (category or "") not in caps:
            spill.append(row)
        if len(chosen) == k:
            return chosen
    # not enough variety among the candidates: fill with the best of the rest
    return chosen + spill[: k - len(chosen)]


def _rerank(
    rows: list[Row], reranked: list[str], found: Candidates, model: RankingModel, weight: float
) -> None:
    """Blend the model's probability into the first rows (``reranked``), then re-sort.

    Two stages: the model re-ranks the heuristic's best (the kind of candidates it learned
    from), never the long tail it has not seen; re-ranked rows stay above the floor of the
    head, so the rest only fills in when the head is short.
    """
    floor = rows[len(reranked) - 1][0] if reranked else 0.0
    table = found.features
    probabilities = model.score_columns(
        FEATURES, table.columns[:, [table.position(i) for i in reranked]]
    )
    for n, p in enumerate(probabilities):
        s, i, state = rows[n]
        rows[n] = (floor + (1 - weight) * (s - floor) + weight * p, i, state)
    rows.sort(key=lambda r: (-r[0], r[1]))


def _is_cold(profile: UserProfile, params: RankingParams) -> bool:
    """Whether the user has consumed fewer than ``cold_start_items`` items (a new user)."""
    consumed = profile.consumed.count if profile.consumed is not None else 0
    return consumed < params.cold_start_items


def _category_cap(profile: UserProfile, params: RankingParams) -> int | None:
    """How many items of one category a list may hold: a new user gets the stricter cap."""
    cold = _is_cold(profile, params)
    caps = [c for c in (params.category_cap, params.cold_start_category_cap if cold else None) if c]
    return min(caps) if caps else None


def _over(rows: list[Row], cap: int) -> bool:
    """Whether some category fills more than ``cap`` of ``rows``."""
    counts = Counter(row[2].category for row in rows)
    return bool(counts) and max(counts.values()) > cap


def _near_dislikes(
    ids: list[str], profile: UserProfile, catalog: Catalog, now_t: float,
    params: DeescalationParams | None,
) -> dict[str, float]:  # fmt: skip
    """Penalties for items close, in embedding space, to what the user marked not relevant.

    ``neighbour_step`` x how close past ``neighbour_similarity`` (0 there, full at cosine
    1), decaying with the dislike's age like every penalty.
    """
    near: dict[str, float] = {}
    if params is None or not profile.disliked or not ids:
        return near
    floor = params.neighbour_similarity
    embeddings: Matrix | None = None  # the candidates' (what catalog.similarities reads)
    for item_id, disliked_t in profile.disliked:
        weight = neighbour_weight(disliked_t, now_t, params)
        vector = catalog.unit(item_id)
        if weight <= 0 or vector is None:
            continue
        if embeddings is None:
            embeddings = catalog.embeddings(ids)
        similarities: Vector = embeddings @ vector
        close = np.flatnonzero(similarities > floor)
        values = weight * (similarities[close] - floor) / (1.0 - floor)
        for n, value in zip(close.tolist(), values.tolist(), strict=True):
            near[ids[n]] = max(near.get(ids[n], 0.0), value)
    return near


def _apply_penalties(
    rows: list[Row], active: dict[str, float], k: int, near: dict[str, float]
) -> tuple[list[Row], dict[str, int]]:
    """Rows re-scored by the penalties, and the cap on each penalised category.

    A penalised category may fill at most ``floor(n x (1 - penalty))`` of the list, never
    none, ``n`` being how many of the first ``k`` rows it held; every item a penalty
    covers has its score lowered.
    """
    if not active and not near:
        return rows, {}
    caps: dict[str, int] = {}
    shown = rows[:k]
    for key, value in active.items():
        kind, name = key.split(":", 1)
        n = sum(1 for row in shown if row[2].category == name) if kind == "category" else 0
        if n:
            caps[name] = max(1, math.floor(n * (1.0 - value)))
    rescored = [
        (_penalised(score, max(_penalty_of(state, active), near.get(i, 0.0))), i, state)
        for score, i, state in rows
    ]
    return sorted(rescored, key=lambda r: (-r[0], r[1])), caps


def _rest_of(
    found: Candidates, scores: list[float], live: npt.NDArray[np.bool_], ranked: set[str],
    profile: UserProfile,
) -> list[Row]:  # fmt: skip
    """The live candidates not in ``ranked`` the user has not consumed, as rows."""
    ids = found.ids
    return [
        (scores[n], ids[n], found.states[ids[n]])
        for n in np.flatnonzero(live).tolist()
        if ids[n] not in ranked and not profile.has_consumed(ids[n])
    ]


def _keep_one_of_each(exploit: list[Row], rows: list[Row], caps: dict[str, int]) -> list[Row]:
    """Never a ban: a penalised category the list held keeps its best item in the list.

    Its lowered scores can leave a penalised category out altogether; its best candidate
    then takes the place of the list's lowest-scored item of another category.
    """
    kept = list(exploit)
    for category in sorted(caps):
        if any(row[2].category == category for row in kept):
            continue
        best = next((row for row in rows if row[2].category == category), None)
        others = [n for n, row in enumerate(kept) if (row[2].category or "") not in caps]
        if best is not None and others:
            kept[others[-1]] = best
    return sorted(kept, key=lambda r: (-r[0], r[1]))


def _penalised(score: float, penalty: float) -> float:
    """A score down-weighted by a de-escalation penalty in [0, 1)."""
    return score * (1.0 - penalty) if score > 0 else score * (1.0 + penalty)


#: The ranking features of a candidate, in the order a model sees them.
FEATURES = ("covisit", "trend", "affinity", "log_popularity", "similarity")


class FeatureTable(Mapping[str, dict[str, float]]):
    """Every candidate's features by id, stored as columns; read-only.

    A list needs the blend of hundreds of candidates (one array expression over the
    columns) but the feature dicts of only the few the model scores or learns from: an
    item's dict is built the first time it is asked for, then kept.

    Args:
        ids: the candidates, in order.
        columns: one row per name in :data:`FEATURES`, one column per candidate.

    """

    def __init__(self, ids: list[str], columns: Matrix) -> None:
        self.ids = ids
        self.columns = columns
        self._positions = dict(zip(ids, range(len(ids)), strict=True))
        self._dicts: dict[str, dict[str, float]] = {}

    def __getitem__(self, item_id: str) -> dict[str, float]:
        described = self._dicts.get(item_id)
        if described is None:
            position = self._positions[item_id]
            described = dict(zip(FEATURES, self.columns[:, position].tolist(), strict=True))
            self._dicts[item_id] = described
        return described

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, item_id: str) -> int:
        """Where the candidate is in :attr:`ids` and the columns."""
        return self._positions[item_id]

    def column(self, name: str) -> Vector:
        """One feature of every candidate, in order."""
        column: Vector = self.columns[FEATURES.index(name)]
        return column


@dataclass
class Candidates:
    """Every candidate for one user at one moment, with its features and state."""

    features: FeatureTable
    states: dict[str, ItemState]
    sources: list[tuple[ItemState, float]]
    top_trend: float
    #: the head of the trending list (everything else counts as the long tail)
    popular: frozenset[str] = frozenset()
    #: candidates from the fresh-items source
    fresh: frozenset[str] = frozenset()
    #: what turns raw co-visitation into the feature (1 / the best candidate's)
    covisit_scale: float = 0.0
    #: the user's unit embedding, when there is one
    user_vector: Vector | None = None
    #: the categories category-level exploration tries now (:func:`drawn_categories`)
    drawn: tuple[str, ...] = ()
    #: each candidate's feedback events when gathered (the order of ``features``)
    feedback_events: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )

    @property
    def ids(self) -> list[str]:
        """The candidates, in the order of every per-candidate array."""
        return self.features.ids

    @cached_property
    def explorable(self) -> npt.NDArray[np.bool_]:
        """Which candidates exploration may pick: the long tail and fresh items."""
        popular, fresh = self.popular, self.fresh
        return np.fromiter(
            (i not in popular or i in fresh for i in self.ids), dtype=np.bool_, count=len(self.ids)
        )


def user_unit(profile: UserProfile, catalog: Catalog) -> Vector | None:
    """The user's unit embedding, or ``None`` before the first signal (or another dim)."""
    if len(profile.vector) != catalog.embedding.dim:
        return None
    return unit(np.asarray(profile.vector, dtype=np.float64))


def drawn_categories(
    profile: UserProfile, catalog: Catalog, params: RankingParams
) -> tuple[str, ...]:
    """The categories whose best candidates take the first exploration slots (Thompson).

    Each category with an available item gets a draw from Beta(1 + likes, 1 + misses), the
    user's evidence for it (:attr:`UserProfile.evidence`; a category the user has no
    evidence for draws from the uniform prior); the ``explore_categories`` highest draws
    win. A category the user barely knows is tried now and then, whatever its items'
    scores, so a list cannot settle on the first category that got a click; one the user
    keeps missing is drawn less and less. Never for a user recloop barely knows (the
    cold-start list is diverse already), never more than the list's exploration slots.
    The draws are seeded by the user and their snapshot version, over the categories
    sorted: every worker and the replay draw the same, each new list draws anew.
    The categories without evidence are drawn as one (the highest of ``m`` uniform draws
    is ``u ** (1 / m)``), so the cost grows with the user's categories, not the catalog's.
    """
    if params.explore_categories <= 0 or _is_cold(profile, params):
        return ()
    wanted = min(params.explore_categories, exploration_slots(profile, params))
    known = catalog.sorted_categories()  # sorted: catalogs fill in different orders
    if wanted <= 0 or not known:
        return ()
    # the snapshot version, not the event count: the learner ranks the profile an event
    # has just counted, and must draw as the list it answers did
    rng = random.Random(zlib.crc32(f"{profile.user_id}\0{profile.snapshot_version}".encode()))
    evidence = profile.evidence
    draws = [
        (rng.betavariate(1.0 + likes, 1.0 + misses), category)
        for category, (likes, misses) in sorted(evidence.items())
        if catalog.has_category(category)
    ]
    unseen, taken = len(known) - len(draws), set(evidence)
    best = 1.0
    for left in range(unseen, max(unseen - wanted, 0), -1):  # the highest unseen draws
        best *= rng.random() ** (1.0 / left)
        while (category := known[rng.randrange(len(known))]) in taken:
            pass  # which unseen category drew it: each alike
        taken.add(category)
        draws.append((best, category))
    draws.sort(key=lambda draw: (-draw[0], draw[1]))
    return tuple(category for _, category in draws[:wanted])


def candidate_features(
    profile: UserProfile,
    catalog: Catalog,
    now_t: float,
    params: RankingParams,
) -> Candidates:
    """Gather the user's candidates and describe each with the ranking features.

    Features: ``covisit`` (normalised to the best candidate), ``trend`` (decayed
    popularity, normalised to the most popular item), ``affinity`` (the user's squashed
    affinity for the item's category), ``log_popularity`` (log of its likes) and
    ``similarity`` (cosine of the user's and the item's embeddings). Consumed, blocked
    and withdrawn items are left out. The result is shared, never to be changed.

    The catalog remembers the last result: asked again for the same user state at the
    same moment with nothing changed in between (a replay asks for a list, then learns
    from the like that answers it), it is not computed twice.
    """
    # ``k`` only cuts the list later: a replay asks for a longer list than the learner
    drawn = drawn_categories(profile, catalog, params)
    key = _memo_key(profile, now_t, params, drawn)
    found = catalog.recall(key)
    if not isinstance(found, Candidates):
        found = _gather(profile, catalog, now_t, params, drawn)
        catalog.remember(key, found)
    return found


def head_candidates(
    profile: UserProfile, catalog: Catalog, now_t: float, params: RankingParams, item_id: str
) -> Candidates | None:
    """:func:`candidate_features`, or ``None`` when ``item_id`` cannot be in the head.

    The learner only learns from a like of an item among the heuristic's best
    ``model_rerank`` candidates (:func:`heuristic_head`). Before searching the index this
    checks the cheap sources (co-visitation and the trending head): when at least
    ``model_rerank`` of their candidates a list may show certainly score above the item
    (or it can be no candidate at all), no other source can lift it into the head, and
    the rest of the gathering is skipped. The answer is the same either way; only the
    work differs (on MovieLens 100K, two thirds of the likes no question precedes stop
    here). The index is brought up to date as the whole gathering would have.
    """
    drawn = drawn_categories(profile, catalog, params)
    key = _memo_key(profile, now_t, params, drawn)
    found = catalog.recall(key)
    if isinstance(found, Candidates):
        return found
    start = _start(profile, catalog, now_t, params)
    if _cannot_head(start, profile, catalog, now_t, params, item_id, params.model_rerank):
        if _would_search(profile, catalog, params, start.user_vector):
            catalog.sync_index()  # as the searches would: the index's writes stay in step
        return None
    found = _finish(profile, catalog, now_t, params, drawn, start)
    catalog.remember(key, found)
    return found


def _memo_key(
    profile: UserProfile, now_t: float, params: RankingParams, drawn: tuple[str, ...]
) -> object:
    """What a gathering depends on besides the catalog (see :meth:`Catalog.recall`)."""
    state = (profile.user_id, profile.history, profile.blocked, profile.recent_positives,
             profile.vector, tuple(profile.affinity.items()), drawn)  # fmt: skip
    return (state, now_t, _without_k(params))


def _top_unconsumed(
    catalog: Catalog, n: int, half_life_s: float, profile: UserProfile,
    excluded: frozenset[str], category: str,
) -> list[str]:  # fmt: skip
    """The ``n`` best available items of ``category`` the user has not consumed or blocked.

    ``excluded`` is the history and the blocked items; past the history, the consumed-set
    filter. The catalog keeps orders of fixed lengths; when what the user consumed fills
    one, the next, four times as long, is read (a category has a few orders, never one per
    user; the longest is bounded by the filter's capacity and the blocked items).
    """
    beyond = profile.consumed is not None and profile.consumed.count > len(profile.history)
    size = n
    while True:
        top = catalog.top(size, half_life_s, category)
        kept = [
            item_id for item_id in top
            if item_id not in excluded and not (beyond and profile.has_consumed(item_id))
        ]  # fmt: skip
        if len(kept) >= n or len(top) < size:
            return kept[:n]
        size *= 4


@lru_cache(maxsize=16)
def _without_k(params: RankingParams) -> RankingParams:
    """``params`` with ``k`` zeroed: the part of the parameters candidates depend on."""
    return replace(params, k=0)


def _describe(
    rows: IntArray, covisit: Vector, similarity: Vector, start: _Start, catalog: Catalog,
    now_t: float, params: RankingParams,
) -> Matrix:  # fmt: skip
    """The candidates' features (one row per name in :data:`FEATURES`).

    Given each candidate's catalog row, raw co-visitation and similarity, and the scales
    and affinities of the gathering's :class:`_Start`. Exponentials and
    logarithms go through Python's ``math`` (the C library), as the single-item path
    always has: NumPy's vectorised ones may round the last bit differently.
    """
    columns = catalog.columns()
    popularity, positives = columns.popularity[rows], columns.positives[rows]
    categories = catalog.categories()
    trend_scale = 1.0 / start.top_trend if start.top_trend else 0.0
    # ItemState.popularity_at, for every candidate
    exponents = -np.maximum(0.0, now_t - columns.popularity_t[rows]) / params.popularity_half_life_s
    decay = np.fromiter(map(math.pow, repeat(2.0), exponents.tolist()), np.float64, len(rows))
    described = np.empty((len(FEATURES), len(rows)))
    described[0] = covisit * start.covisit_scale
    described[1] = np.where(popularity != 0.0, popularity * decay, 0.0) * trend_scale
    # by category code: a candidate's category is its current state's (the catalog's)
    affinity = start.affinity
    described[2] = np.array([affinity.get(c, 0.0) for c in categories])[columns.category[rows]]
    largest = int(positives.max()) if len(rows) else 0
    described[3] = (
        _log1p_table(1 << max(largest, 1).bit_length())[positives]
        if largest < _MAX_POWERS  # few distinct tables, each reused
        else np.fromiter(map(math.log1p, positives.tolist()), np.float64, len(rows))
    )
    described[4] = similarity
    return described


def _gather(
    profile: UserProfile, catalog: Catalog, now_t: float, params: RankingParams,
    drawn: tuple[str, ...] = (),
) -> Candidates:  # fmt: skip
    """What :func:`candidate_features` computes when it has nothing to re-use."""
    return _finish(profile, catalog, now_t, params, drawn, _start(profile, catalog, now_t, params))


@dataclass
class _Start:
    """The cheap first part of a gathering: co-visitation, the trending head, the scales."""

    excluded: frozenset[str]
    sources: list[tuple[ItemState, float]]
    #: every co-visited row the catalog may recommend (ascending), and its raw score
    covisit_rows: IntArray
    covisit: Vector
    #: the strongest co-visited candidates (available), strongest first
    states: dict[str, ItemState]
    popular: list[str]
    longtail: list[str]
    top_trend: float
    covisit_scale: float
    user_vector: Vector | None
    #: the user's squashed affinity per category
    affinity: dict[str, float]


def _start(profile: UserProfile, catalog: Catalog, now_t: float, params: RankingParams) -> _Start:
    """The co-visitation and trending sources, and what every candidate's features need."""
    excluded = profile.excluded()
    half_life = params.popularity_half_life_s
    sources = _source_weights(profile, catalog, params)
    covisit_rows, covisit = _covisit_scores(sources, catalog, excluded, params.covisit_alpha)
    items = catalog.states
    strongest = _strongest(covisit, covisit_rows, params.covisit_candidates, catalog)
    states = {i: s for i in strongest if (s := items[i]).available}
    # a candidate from another source keeps its co-visitation even past the cut, so the
    # features never depend on which sources brought an item in
    top_covisit = float(covisit.max()) if len(covisit) else 0.0
    # the trending head, and for a new user (nothing personal brings candidates yet) just
    # past it the items not yet popular, which exploration may offer; a user recloop knows
    # explores the long tail of their own candidates, which these would crowd out. With
    # no head there is nothing to be past (what follows would be the most popular items)
    head_size = params.trending_candidates
    tail = params.longtail_candidates if head_size and _is_cold(profile, params) else 0
    ranked_top = catalog.top(head_size + tail, half_life)
    popular, longtail = ranked_top[:head_size], ranked_top[head_size:]
    # the most popular item anywhere heads the global list, so it sets the scale
    head = catalog.get(popular[0]) if popular else None
    return _Start(
        excluded, sources, covisit_rows, covisit, states, popular, longtail,
        top_trend=head.popularity_at(now_t, half_life) if head is not None else 0.0,
        covisit_scale=1.0 / top_covisit if top_covisit else 0.0,
        user_vector=user_unit(profile, catalog),
        affinity={c: _squash(a) for c, a in profile.affinity.items()},
    )  # fmt: skip


def _finish(
    profile: UserProfile, catalog: Catalog, now_t: float, params: RankingParams,
    drawn: tuple[str, ...], start: _Start,
) -> Candidates:  # fmt: skip
    """The other sources (category heads, the index's searches, fresh items), described."""
    excluded = start.excluded
    half_life = params.popularity_half_life_s
    items = catalog.states
    liked = sorted(
        (c for c, a in profile.affinity.items() if a > 0), key=lambda c: -profile.affinity[c]
    )[: params.affinity_categories]
    # a liked category's head counts what the user has not consumed: a user who has seen
    # its most popular items gets the next ones, not none
    by_category = [
        _top_unconsumed(catalog, params.category_candidates, half_life, profile, excluded, c)
        for c in dict.fromkeys([*liked, *drawn])
    ]
    user_vector = start.user_vector
    embedded: list[str] = []
    if user_vector is not None and params.embedding_candidates > 0:
        nearest = catalog.similar(user_vector, params.embedding_candidates, excluded)
        embedded = [item_id for item_id, _ in nearest]
    neighbours: list[list[str]] = []
    if params.neighbour_candidates > 0 and params.neighbour_sources > 0:
        for recent in newest(profile.recent_positives, params.neighbour_sources):
            near = catalog.neighbours(recent, params.neighbour_candidates, excluded)
            neighbours.append([item_id for item_id, _ in near])
    fresh: list[str] = []
    if params.fresh_candidates > 0:
        # out within the window, and out already: a catalog may date an item ahead
        fresh = catalog.newest(params.fresh_candidates, now_t - params.fresh_window_s, now_t)
    states = start.states
    _take_in(states, chain(start.popular, *by_category, embedded, *neighbours, fresh,
                           start.longtail), items, excluded)  # fmt: skip
    ids = list(states)
    rows = catalog.rows(ids)
    return Candidates(
        FeatureTable(ids, _features_at(rows, start, catalog, now_t, params)), states,
        start.sources, start.top_trend, popular=frozenset(start.popular),
        fresh=frozenset(fresh), covisit_scale=start.covisit_scale, user_vector=user_vector,
        drawn=drawn, feedback_events=catalog.columns().feedback_events[rows],
    )  # fmt: skip


def _take_in(
    states: dict[str, ItemState], item_ids: Iterable[str], items: Mapping[str, ItemState],
    excluded: frozenset[str],
) -> None:  # fmt: skip
    """Add to ``states``, in order, each new id's state: neither excluded nor withdrawn."""
    for item_id in item_ids:
        if item_id not in states and item_id not in excluded:
            found_state = items.get(item_id)
            if found_state is not None and found_state.available:
                states[item_id] = found_state


def _features_at(
    rows: IntArray, start: _Start, catalog: Catalog, now_t: float, params: RankingParams
) -> Matrix:
    """The features of the items at catalog ``rows`` (:func:`_describe`)."""
    user_vector = start.user_vector
    similarity = (
        catalog.similarities_at(rows, user_vector)
        if user_vector is not None and len(rows)
        else np.zeros(len(rows))
    )
    covisit_rows, covisit = start.covisit_rows, start.covisit
    # each candidate's co-visitation, 0 when it has none (covisit_rows is sorted)
    at = np.minimum(np.searchsorted(covisit_rows, rows), max(len(covisit_rows) - 1, 0))
    co_visited = covisit_rows[at] == rows if len(covisit_rows) else np.zeros(len(rows), bool)
    raws = np.where(co_visited, covisit[at] if len(covisit) else 0.0, 0.0)
    return _describe(rows, raws, similarity, start, catalog, now_t, params)


#: How far above an item a candidate's blend must be to count as certainly ahead of it in
#: :func:`_cannot_head`: far beyond the last bits a different array length could change.
_CERTAINLY_AHEAD = 1e-9


def _cannot_head(
    start: _Start, profile: UserProfile, catalog: Catalog, now_t: float,
    params: RankingParams, item_id: str, n: int,
) -> bool:  # fmt: skip
    """Whether ``item_id`` is certainly not among the best ``n`` of :func:`heuristic_head`.

    True when it can be no candidate (consumed, blocked, withdrawn or unknown), or when at
    least ``n`` of the co-visited and trending candidates a list may show score above it
    by more than :data:`_CERTAINLY_AHEAD`. Every other source only adds candidates, each
    with the same features it would have here (the scales come from these two sources).
    """
    state = catalog.get(item_id)
    if item_id in start.excluded or state is None or not state.available:
        return True
    states = dict(start.states)
    _take_in(states, start.popular, catalog.states, start.excluded)
    states.pop(item_id, None)
    if len(states) < n:
        return False
    ids = [item_id, *states]
    table = FeatureTable(ids, _features_at(catalog.rows(ids), start, catalog, now_t, params))
    blended = _blend(table, params)
    ahead = np.flatnonzero(blended > blended[0] + _CERTAINLY_AHEAD)
    if len(ahead) < n:
        return False
    paused = set(profile.paused)
    beyond = profile.consumed is not None and profile.consumed.count > len(profile.history)
    count = 0
    for position in ahead.tolist():  # the item itself (position 0) is never ahead
        other = ids[position]
        if paused and _is_paused(states[other], paused):
            continue
        if beyond and profile.has_consumed(other):
            continue
        count += 1
        if count >= n:
            return True
    return False


def _would_search(
    profile: UserProfile, catalog: Catalog, params: RankingParams, user_vector: Vector | None
) -> bool:
    """Whether :func:`_finish` would search the index (each search syncs it first)."""
    if user_vector is not None and params.embedding_candidates > 0:
        return True
    if params.neighbour_candidates <= 0 or params.neighbour_sources <= 0:
        return False
    for recent in newest(profile.recent_positives, params.neighbour_sources):
        state = catalog.get(recent)
        if state is not None and state.available and catalog.unit(recent) is not None:
            return True
    return False


def _blend(table: FeatureTable, params: RankingParams) -> Vector:
    """:func:`heuristic_scores` as an array, in the table's order."""
    return (
        table.column("covisit")
        + params.trending_weight * table.column("trend")
        + params.affinity_weight * table.column("affinity")
        + params.similarity_weight * table.column("similarity")
    )


def heuristic_scores(found: Candidates, params: RankingParams) -> dict[str, float]:
    """Every candidate's hand-set blend: co-visitation + weighted trend, affinity, similarity."""
    return dict(zip(found.ids, _blend(found.features, params).tolist(), strict=True))


def heuristic_head(
    found: Candidates, params: RankingParams, n: int, profile: UserProfile, rest: bool = True
) -> tuple[list[str], list[str]]:
    """The ``n`` best candidates by the heuristic (best first), and the rest (by id).

    The split the online model works on: it re-ranks the head and learns from the likes
    that came from it, against negatives drawn from it. One definition keeps both in step.
    Only the candidates a list may show the user (:func:`servable`) are split, as
    :func:`rank_rows` splits them. Without ``rest``, the rest comes back empty (sorting
    hundreds of ids costs more than the split).
    """
    ids = found.ids
    blended = _blend(found.features, params)
    live = servable(found, blended, profile, 2 * n)
    head = [ids[p] for p in _best(blended, ids, np.flatnonzero(live), n)]
    if not rest:
        return head, []
    chosen = set(head)
    others = (ids[p] for p in np.flatnonzero(live).tolist())
    return head, sorted(i for i in others if i not in chosen)


def exploration_slots(profile: UserProfile, params: RankingParams) -> int:
    """How many of the ``k`` slots go to exploration: many for a new user, few later.

    The share falls from ``explore_max`` (nothing consumed yet) towards ``explore_min``
    (half-way there at ``explore_halfway`` items consumed).
    """
    known = profile.consumed.count if profile.consumed is not None else 0
    share = params.explore_min + (params.explore_max - params.explore_min) * (
        params.explore_halfway / (params.explore_halfway + known)
    )
    return min(params.k, round(params.k * share))


def _unpaused(found: Candidates, profile: UserProfile) -> npt.NDArray[np.bool_]:
    """Which candidates the user has not paused (what they paused is never shown)."""
    live = np.ones(len(found.ids), dtype=np.bool_)
    if profile.paused:
        paused = set(profile.paused)
        for position, item_id in enumerate(found.ids):
            if _is_paused(found.states[item_id], paused):
                live[position] = False
    return live


def _is_paused(state: ItemState, paused: set[str]) -> bool:
    """Whether one of the item's keys (its category, its creator) is paused."""
    return not paused.isdisjoint(_keys_of(state))


def servable(
    found: Candidates, scores: Vector, profile: UserProfile, n: int
) -> npt.NDArray[np.bool_]:
    """Which candidates a list may show: what :func:`rank_rows` ranks among.

    None the user paused, and among the best ``n`` by ``scores``, none they consumed
    long ago (:func:`_drop_consumed`).
    """
    live = _unpaused(found, profile)
    _drop_consumed(found, scores, live, profile, n)
    return live


def _drop_consumed(
    found: Candidates, scores: Vector, live: npt.NDArray[np.bool_], profile: UserProfile, n: int
) -> None:
    """Drop (from ``live``) what the user consumed long ago, until the best ``n`` are clear.

    The history only keeps the newest items; the consumed-set filter remembers the rest.
    Checking it is slower than a set lookup, so only the head of the list is checked:
    that is where a candidate can still make it into the list. When the head held
    consumed items, the candidates that move up into it are checked in turn.
    """
    if profile.consumed is None or profile.consumed.count <= len(profile.history):
        return
    ids = found.ids
    checked: set[int] = set()
    while True:
        fresh = [p for p in _best(scores, ids, np.flatnonzero(live), n) if p not in checked]
        if not fresh:
            return
        checked.update(fresh)
        dropped = [p for p in fresh if profile.has_consumed(ids[p])]
        if not dropped:  # the best n are the same ones, all clear
            return
        live[dropped] = False


def _explore(
    found: Candidates, scores: Vector, live: npt.NDArray[np.bool_], chosen: set[str],
    params: RankingParams, n: int, profile: UserProfile,
    penalised: Callable[[str, ItemState], bool] | None,
    cap: int | None = None, shown: Counter[str | None] | None = None,
    category: str | None = None,
) -> list[Row]:  # fmt: skip
    """The ``n`` most promising long-tail or fresh ``live`` candidates not already ``chosen``.

    Promise = the heuristic score plus an optimism bonus that shrinks with the feedback
    the item already has (``explore_bonus / sqrt(1 + feedback events)``). Never an item
    the user consumed (the consumed-set filter) or pushed back on (``penalised``), nor
    one of a category the list already holds ``cap`` of (``shown`` counts them). With
    ``category``, any ``live`` candidate of that category, popular ones too.
    """
    per_category: Counter[str | None] = Counter(shown or ())
    if n <= 0:
        return []
    ids, states = found.ids, found.states
    if category is None:
        open_ = live & found.explorable
    else:
        open_ = live & np.fromiter(
            (states[i].category == category for i in ids), np.bool_, len(ids)
        )
    for item_id in chosen:
        open_[found.features.position(item_id)] = False
    promise = scores + params.explore_bonus / np.sqrt(1.0 + found.feedback_events)
    promises = promise.tolist()
    among = np.flatnonzero(open_)
    picked: list[Row] = []
    checked, wanted = 0, 4 * n
    while True:  # best first; the filters are slower than a set: check the best ones only
        best = _best(promise, ids, among, wanted)
        for position in best[checked:]:
            item_id = ids[position]
            state = states[item_id]
            if (
                (cap is not None and per_category[state.category] >= cap)
                or (penalised is not None and penalised(item_id, state))
                or profile.has_consumed(item_id)
            ):
                continue
            per_category[state.category] += 1
            picked.append((promises[position], item_id, state))
            if len(picked) == n:
                return picked
        if wanted >= len(among):
            return picked
        checked, wanted = len(best), 4 * wanted


def _exploration(
    found: Candidates, scores: Vector, live: npt.NDArray[np.bool_], exploit: list[Row],
    params: RankingParams, n: int, profile: UserProfile,
    penalised: Callable[[str, ItemState], bool] | None, cap: int | None,
) -> list[Row]:  # fmt: skip
    """The ``n`` exploration rows after ``exploit``.

    The drawn categories' first (one slot each), then the long tail's, which also fills a
    slot a drawn category cannot.
    """
    explored: list[Row] = []
    for category in [*found.drawn[:n], None]:
        explored += _explore(
            found, scores, live, {r[1] for r in [*exploit, *explored]}, params,
            1 if category is not None else n - len(explored), profile, penalised, cap,
            Counter(row[2].category for row in [*exploit, *explored]), category=category,
        )  # fmt: skip
    return explored


def _reasons(
    item_id: str, state: ItemState, found: Candidates, profile: UserProfile, catalog: Catalog,
    explored: bool,
) -> list[str]:  # fmt: skip
    category = state.category
    reasons: list[str] = []
    because = _because(item_id, found.sources) or _most_similar_like(item_id, profile, catalog)
    if because is not None:
        reasons.append(f"because you liked {catalog.title(because)}")
    if profile.affinity.get(category or "", 0.0) > 0:
        reasons.append(f"because you like {category}")
    if found.features[item_id]["trend"] >= 0.5:
        reasons.append(f"popular in {category}" if category else "popular now")
    if explored:
        where = f" in {category}" if category else ""
        if item_id in found.fresh:
            reasons.append(f"something new{where}")
        elif item_id in found.popular:  # a drawn category's best, popular as it is
            reasons.append(f"something to try{where}")
        else:
            reasons.append(f"a lesser-known pick{where}")
    if not reasons:
        reasons.append(f"something to try in {category}" if category else "something new")
    return reasons


#: An embedding neighbour is explained by a recent like at least this similar.
_EXPLAIN_SIMILARITY = 0.3


def _most_similar_like(item_id: str, profile: UserProfile, catalog: Catalog) -> str | None:
    """The recent like whose embedding is closest to the item's, when close enough."""
    target = catalog.unit(item_id)
    if target is None:
        return None
    best, best_similarity = None, _EXPLAIN_SIMILARITY
    for liked in reversed(profile.recent_positives[-10:]):
        vector = catalog.unit(liked)
        if vector is not None:
            similarity = float(vector @ target)
            if similarity > best_similarity:
                best, best_similarity = liked, similarity
    return best


def _keys_of(state: ItemState) -> tuple[str, ...]:
    record = state.record
    return penalty_keys(state.category, record.creator if record is not None else None)


def _penalty_of(state: ItemState, active: dict[str, float]) -> float:
    return max((active.get(key, 0.0) for key in _keys_of(state)), default=0.0)


class Ranking(NamedTuple):
    """The rows :func:`rank_rows` ranked, before they are explained."""

    #: the list, best first: the exploited rows, then the explored ones
    rows: list[Row]
    #: the ids of the explored rows
    explored: frozenset[str]
    #: the candidates they came from
    found: Candidates


def rank_items(
    profile: UserProfile,
    catalog: Catalog,
    now_t: float,
    params: RankingParams,
    model: RankingModel | None = None,
    deescalation: DeescalationParams | None = None,
    surface: str | None = None,
    part: str | None = None,
) -> list[RankedItem]:
    """The user's top ``k`` items with scores and reasons.

    :func:`rank_rows`, each row explained (see its arguments).
    """
    ranking = rank_rows(profile, catalog, now_t, params, model, deescalation, surface, part)
    found, explored = ranking.found, ranking.explored
    return [
        RankedItem(
            item_id=item_id,
            score=round(float(score), 6),
            category=state.category,
            reasons=_reasons(item_id, state, found, profile, catalog, item_id in explored),
        )
        for score, item_id, state in ranking.rows
    ]


def rank_rows(
    profile: UserProfile,
    catalog: Catalog,
    now_t: float,
    params: RankingParams,
    model: RankingModel | None = None,
    deescalation: DeescalationParams | None = None,
    surface: str | None = None,
    part: str | None = None,
) -> Ranking:
    """The user's top ``k`` rows (score, item id, state), unexplained.

    What a replay that only counts hits needs: explaining a row costs more than ranking it.

    Args:
        profile: the user's state.
        catalog: every item this worker knows.
        now_t: event time in seconds, the moment popularity is decayed to.
        params: weights, budgets and ``k``.
        model: the online ranking model; once it has learned from ``model_warmup`` likes
            it re-ranks the best ``model_rerank`` candidates, its probability blended in
            with weight ``model_weight``.
        deescalation: the rules the profile's penalties decay by (without them the
            penalties are ignored).
        surface: where the list will be shown (``context.surface``), for penalties
            scoped to a surface.
        part: the part of the day it will be shown in
            (:func:`operators.deescalation.daypart`), for penalties scoped to one.

    """
    found = candidate_features(profile, catalog, now_t, params)
    ids = found.ids
    blended = _blend(found.features, params)
    scores = blended.tolist()
    live = _unpaused(found, profile)  # the candidates still in the running
    cap = _category_cap(profile, params)
    active = (
        active_penalties(profile.penalties, now_t, surface, deescalation, part)
        if deescalation is not None and profile.penalties
        else {}
    )
    near = _near_dislikes([ids[n] for n in np.flatnonzero(live).tolist()], profile, catalog,
                          now_t, deescalation)  # fmt: skip
    # a cap or a penalty reorders the head: look past the first k for what moves up
    wanted = params.k * 4 if cap or active or near else params.k
    use_model = (
        model is not None and params.model_weight > 0 and model.updates >= params.model_warmup
    )
    _drop_consumed(found, blended, live, profile,
                   2 * max(wanted, params.model_rerank if use_model else 0))  # fmt: skip
    # best first; ties break on item id (lowest first) so every worker and the replay agree
    order = lambda r: (-r[0], r[1])  # noqa: E731
    size = max(params.model_rerank, wanted) if use_model else wanted
    positions = _best(blended, ids, np.flatnonzero(live), size)
    head = [ids[n] for n in positions]
    rows: list[Row] = [(scores[n], ids[n], found.states[ids[n]]) for n in positions]
    if use_model:
        assert model is not None
        _rerank(rows, head[: params.model_rerank], found, model, params.model_weight)
    rows, caps = _apply_penalties(rows, active, params.k, near)
    ranked = rows[:wanted]

    def widened() -> list[Row]:  # the head and every other live candidate, penalised alike
        more = _rest_of(found, scores, live, {r[1] for r in rows}, profile)
        return sorted([*rows, *_apply_penalties(more, active, params.k, near)[0]], key=order)

    n_explore = exploration_slots(profile, params)
    exploit_slots = params.k - n_explore
    exploit = _diversify(ranked, exploit_slots, cap, caps)
    wide = False
    if cap is not None and (len(exploit) < exploit_slots or _over(exploit, cap)):
        # the head lacks variety (a new user whose best forty are one category): the other
        # candidates are searched for more categories before the cap gives way
        ranked, wide = widened(), True
        exploit = _diversify(ranked, exploit_slots, cap, caps)
    chosen = {row[1] for row in exploit}
    # exploration brings back nothing a penalty covers (a capped category included)
    explored = _exploration(
        found, blended, live, exploit, params, n_explore, profile,
        (lambda i, state: near.get(i, 0.0) > 0 or _penalty_of(state, active) > 0)
        if near or active
        else None,
        cap,
    )  # fmt: skip
    # too few exploration candidates: the best of the rest fill the list
    explored_ids = {row[1] for row in explored}
    if len(exploit) + len(explored) < params.k:
        taken = chosen | explored_ids
        missing = params.k - len(exploit) - len(explored)
        shown = Counter(row[2].category for row in [*exploit, *explored])

        def fill(pool: list[Row]) -> list[Row]:
            rest = [r for r in pool if r[1] not in taken]
            return _diversify(rest, missing, cap, caps, shown)

        extra = fill(ranked)
        if not wide and (
            (caps and len(extra) < missing)
            or (cap is not None and _over([*exploit, *explored, *extra], cap))
        ):
            # the head ran dry under a cap (a user who liked little else, after a "not
            # relevant"; a new user whose best forty are one category): the rest of the
            # candidates fill the list, never a penalised category past its cap, so "not
            # relevant" never leaves the user a list of two items
            extra = fill(widened())
        exploit += extra
    if caps:
        exploit = _keep_one_of_each(exploit, rows, caps)
    return Ranking([*exploit, *explored], frozenset(explored_ids), found)
