"""Item state: the catalog record plus what feedback says about the item.

:class:`ItemState` is owned by the item agent (one writer per item, partitioned by item
id) and replicated to every worker through the compacted item-state topic, where a
:class:`Catalog` holds the whole set in memory for ranking.

Example:
    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> state = ItemState(item_id="i1").with_feedback(1.0, t, half_life_s=3600)
    >>> round(state.popularity_at(t.timestamp() + 3600, half_life_s=3600), 3)
    0.5

"""

from __future__ import annotations

import bisect
import heapq
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import repeat
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from operators.covisits import CoVisits
from operators.embedding import (
    EmbeddingParams,
    Vector,
    add_taste,
    item_embedding,
    item_prior,
    unit,
)
from operators.index import ItemIndex
from schemas.catalog import ItemRecord

#: Decimals of :meth:`ItemState.trending_key` (a natural log: a relative difference of
#: about 1e-9 in decayed popularity).
_KEY_DIGITS = 9


@dataclass(frozen=True)
class ItemState:
    """One item as every worker sees it."""

    item_id: str
    record: ItemRecord | None = None
    popularity: float = 0.0
    popularity_t: float = 0.0
    positives: int = 0
    feedback_events: int = 0
    #: co-visit counts: users who liked this item also liked these (a :class:`CoVisits`
    #: once counted; any mapping is taken)
    neighbours: Mapping[str, float] = field(default_factory=dict)
    #: the feedback part of the item's embedding (see operators.embedding); empty: none yet
    taste: tuple[float, ...] = ()
    #: recommendable: known to the catalog and not withdrawn (derived from ``record``)
    available: bool = field(init=False, repr=False, compare=False)
    #: the catalog category, when known (derived from ``record``)
    category: str | None = field(init=False, repr=False, compare=False)
    #: when the item was created (seconds), 0 when unknown (derived from ``record``)
    created_t: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # derived once: the ranker and the catalog's orders read them on every list
        record = self.record
        object.__setattr__(self, "available", record is not None and record.available)
        object.__setattr__(self, "category", record.category if record is not None else None)
        created_t = record.created_at.timestamp() if record is not None else 0.0
        object.__setattr__(self, "created_t", created_t)

    def _evolve(self, **changes: Any) -> ItemState:
        """A copy with ``changes`` to fields other than ``record`` (whose derived fields stay).

        What :func:`dataclasses.replace` does, without re-running ``__init__``: the item
        agent and the replay make one of these per feedback record.
        """
        evolved = object.__new__(ItemState)
        evolved.__dict__.update(self.__dict__, **changes)
        return evolved

    def popularity_at(self, t: float, half_life_s: float) -> float:
        """Positive feedback, exponentially decayed to event time ``t`` (seconds)."""
        if self.popularity == 0.0:
            return 0.0
        age = max(0.0, t - self.popularity_t)
        return self.popularity * math.pow(2.0, -age / half_life_s)

    def with_record(self, record: ItemRecord | None) -> ItemState:
        """The state with a new catalog record (``None``: the item was removed)."""
        return replace(self, record=record)

    def with_feedback(self, target: float, event_time: datetime, half_life_s: float) -> ItemState:
        """Fold one user's signal about this item into its popularity."""
        t = event_time.timestamp()
        positive = target > 0
        if t >= self.popularity_t:
            decayed = self.popularity_at(t, half_life_s) + (target if positive else 0.0)
            new_t = t
        else:  # a late event counts at its own (older) time
            decayed = self.popularity + (
                target * math.pow(2.0, -(self.popularity_t - t) / half_life_s) if positive else 0.0
            )
            new_t = self.popularity_t
        return self._evolve(
            popularity=decayed,
            popularity_t=new_t,
            positives=self.positives + int(positive),
            feedback_events=self.feedback_events + 1,
        )

    def trending_key(self, half_life_s: float) -> float:
        """A time-invariant key that orders items as their decayed popularity does.

        All items decay at the same rate, so ``log(popularity) + t·ln2/half_life`` ranks
        them the same at every moment; only new feedback changes the order. Rounded to
        :data:`_KEY_DIGITS` decimals (popularities a billionth apart tie): a skip decays
        the popularity to its time without changing the key, except for the last bit,
        which would otherwise count as a fall and rebuild every order holding the item.
        """
        if self.popularity <= 0.0:
            return -math.inf
        return round(
            math.log(self.popularity) + self.popularity_t * math.log(2.0) / half_life_s,
            _KEY_DIGITS,
        )

    def with_covisits(self, items: Sequence[str], weight: float, max_neighbours: int) -> ItemState:
        """Count that users who liked this item also liked ``items`` (bounded, strongest kept)."""
        item_id = self.item_id
        neighbours = CoVisits.of(self.neighbours).plus(
            items if item_id not in items else [i for i in items if i != item_id], weight
        )
        # prune in batches (to the bound, when 25% over it) so a busy item is not
        # re-sorted on every co-visit
        if len(neighbours) > max_neighbours + max_neighbours // 4:
            neighbours = neighbours.strongest(max_neighbours)
        return self._evolve(neighbours=neighbours)

    def with_taste(self, taste: tuple[float, ...]) -> ItemState:
        """The state with a new feedback part of its embedding."""
        return self._evolve(taste=taste)

    def snapshot(self) -> bytes:
        """Compact JSON bytes of this state, as the item-state topic carries it."""
        return json.dumps(
            {
                "item_id": self.item_id,
                "record": self.record.model_dump(mode="json") if self.record else None,
                "popularity": self.popularity,
                "popularity_t": self.popularity_t,
                "positives": self.positives,
                "feedback_events": self.feedback_events,
                "neighbours": CoVisits.of(self.neighbours).as_dict(),
                "taste": self.taste,
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def may_lack_record(data: bytes) -> bool:
        """Whether a :meth:`snapshot` may be of an item without a catalog record.

        A test on the bytes, never wrong when it says no (inside a JSON string the quotes
        would be escaped).
        """
        return b'"record":null' in data

    @staticmethod
    def popularity_t_of(data: bytes) -> float:
        """``popularity_t`` of a :meth:`snapshot`, read from its bytes without parsing it all.

        The snapshot's keys come in a fixed order and its separators are compact; the
        first ``"popularity_t":`` is the key (inside a string the quotes are escaped).
        """
        start = data.index(b'"popularity_t":') + len(b'"popularity_t":')
        return float(data[start : data.index(b",", start)])

    @classmethod
    def restore(cls, data: bytes) -> ItemState:
        """The state :meth:`snapshot` wrote."""
        raw = json.loads(data)
        record = raw["record"]
        return cls(
            item_id=raw["item_id"],
            # the dict came from JSON: validate it as such (lax), without re-encoding it
            record=ItemRecord.model_validate(record, strict=False) if record is not None else None,
            popularity=raw["popularity"],
            popularity_t=raw["popularity_t"],
            positives=raw["positives"],
            feedback_events=raw["feedback_events"],
            neighbours=CoVisits.of(raw.get("neighbours", {})),
            taste=tuple(float(x) for x in raw.get("taste", ())),
        )


@dataclass(frozen=True)
class ItemFeedback:
    """What one event says about one item, sent to the item's owner (keyed by item id).

    ``kind`` is ``signal`` for the user's own signal about the item (popularity),
    ``covisit`` when the item was liked by a user who just liked ``co_items`` too, or
    ``expire`` when a sweep found the item without a catalog record for longer than
    :attr:`ItemParams.uncatalogued_ttl_s` at ``event_time`` (the owner checks again, see
    :func:`fold_item_feedback`).
    """

    item_id: str
    target: float
    weight: float
    event_time: datetime
    event_id: str
    kind: Literal["signal", "covisit", "expire"] = "signal"
    co_items: tuple[str, ...] = ()
    #: who gave the signal: the item's embedding learns from the user's code
    user_id: str | None = None

    def to_json(self) -> bytes:
        """Compact JSON bytes for the item-feedback topic."""
        return json.dumps(
            {
                "item_id": self.item_id,
                "target": self.target,
                "weight": self.weight,
                "event_time": self.event_time.isoformat(),
                "event_id": self.event_id,
                "kind": self.kind,
                "co_items": self.co_items,
                "user_id": self.user_id,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ItemFeedback:
        """The record :meth:`to_json` wrote, checked: a damaged one never becomes state.

        Raises:
            ValueError: not JSON, not an object, a kind this version does not know, an id
                that is not a non-empty string, a number that is not finite, or a time
                without its UTC offset (``KeyError``: a field missing).

        """
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("an item feedback record is a JSON object")
        kind = raw.get("kind", "signal")
        if kind not in ("signal", "covisit", "expire"):
            raise ValueError(f"unknown item feedback kind {kind!r}")
        item_id, event_id, user_id = raw["item_id"], raw["event_id"], raw.get("user_id")
        co_items = raw.get("co_items", [])
        if not (_is_id(item_id) and _is_id(event_id) and (user_id is None or _is_id(user_id))):
            raise ValueError("item_id and event_id must be non-empty strings, user_id one or null")
        if not isinstance(co_items, list) or not all(_is_id(c) for c in co_items):
            raise ValueError("co_items must be a list of non-empty strings")
        event_time = datetime.fromisoformat(raw["event_time"])
        if event_time.tzinfo is None:
            raise ValueError(f"event_time {raw['event_time']!r} has no UTC offset")
        return cls(
            item_id=item_id,
            target=_finite(raw["target"], "target"),
            weight=_finite(raw["weight"], "weight"),
            event_time=event_time,
            event_id=event_id,
            kind=kind,
            co_items=tuple(co_items),
            user_id=user_id,
        )


def _is_id(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ItemParams:
    """How feedback moves item state."""

    popularity_half_life_s: float = 7 * 24 * 3600.0
    max_neighbours: int = 200
    embedding: EmbeddingParams = field(default_factory=EmbeddingParams)
    #: how long the state of an item without a catalog record (feedback for an id never
    #: catalogued, or after its tombstone) is kept after its newest signal; 0: for ever
    uncatalogued_ttl_s: float = 7 * 24 * 3600.0


def sweep_interval(params: ItemParams) -> float:
    """Seconds between two sweeps for expired items: a tenth of the TTL, 1 s to an hour."""
    return min(3600.0, max(1.0, params.uncatalogued_ttl_s / 10))


def uncatalogued_expired(state: ItemState, now_t: float, params: ItemParams) -> bool:
    """Whether ``state`` has had no catalog record, and no signal, for the TTL at ``now_t``.

    The newest signal's time is ``popularity_t``: every signal moves it (a skip too), a
    late one never back. Co-visits do not count: they are what other items' likes say.
    """
    return state.record is None and _outlived(state.popularity_t, now_t, params)


def snapshot_expired(data: bytes, now_t: float, params: ItemParams) -> bool:
    """:func:`uncatalogued_expired` for a state's :meth:`ItemState.snapshot`, from its bytes.

    A sweep reads every state a worker owns; parsing each whole (its taste vector, its
    co-visits) would hold the event loop for about 20 µs a state.
    """
    return ItemState.may_lack_record(data) and _outlived(
        ItemState.popularity_t_of(data), now_t, params
    )


def _outlived(popularity_t: float, now_t: float, params: ItemParams) -> bool:
    ttl = params.uncatalogued_ttl_s
    return ttl > 0 and now_t - popularity_t >= ttl


def expiry_of(item_id: str, now: datetime) -> ItemFeedback:
    """The record a sweep sends to the item's owner for a state :func:`uncatalogued_expired`."""
    return ItemFeedback(item_id, 0.0, 0.0, now, f"expire:{now.isoformat()}", kind="expire")


class Folded(NamedTuple):
    """An item's state after a batch of feedback, and how many expiries deleted one."""

    #: ``None``: the item has no state (none was stored, or it expired)
    state: ItemState | None
    expired: int


def fold_item_feedback(
    state: ItemState | None, records: Iterable[ItemFeedback], params: ItemParams
) -> Folded:
    """An item's state after ``records`` in order: the item agent's logic for one item.

    An ``expire`` record deletes the state only when it still has no catalog record and
    no signal newer than the TTL allows at the sweep's time: a record or a like that
    came meanwhile keeps it. A signal after an expiry starts a new state; a co-visit
    never starts one (the id is in the recent likes of users who liked it: their later
    likes would bring an expired item straight back, expired already).
    """
    expired = 0
    for record in records:
        if record.kind == "expire":
            if state is not None and uncatalogued_expired(
                state, record.event_time.timestamp(), params
            ):
                state, expired = None, expired + 1
        elif state is not None or record.kind == "signal":
            state = apply_feedback(state or ItemState(item_id=record.item_id), record, params)
    return Folded(state, expired)


def expire_uncatalogued(
    catalog: Catalog, ids: Iterable[str], now_t: float, params: ItemParams
) -> list[str]:
    """Remove from ``catalog`` the states among ``ids`` that :func:`uncatalogued_expired`.

    The offline replay's sweep (in event time): what the workers' sweeps and the item
    agents do live. Returns the ids removed.
    """
    removed = []
    for item_id in ids:
        state = catalog.get(item_id)
        if state is not None and uncatalogued_expired(state, now_t, params):
            catalog.remove(item_id)
            removed.append(item_id)
    return removed


def apply_feedback(state: ItemState, feedback: ItemFeedback, params: ItemParams) -> ItemState:
    """Fold one user's feedback record into an item's state (``signal`` or ``covisit``).

    The live item agent (through :func:`fold_item_feedback`) and the offline replay both
    call this, so they agree.
    """
    if feedback.kind == "expire":
        raise ValueError("an expire record deletes a state: fold it with fold_item_feedback")
    if feedback.kind == "covisit":
        return state.with_covisits(feedback.co_items, 1.0, params.max_neighbours)
    updated = state.with_feedback(
        feedback.target, feedback.event_time, params.popularity_half_life_s
    )
    if feedback.co_items:
        updated = updated.with_covisits(feedback.co_items, 1.0, params.max_neighbours)
    strength = feedback.target * feedback.weight
    if feedback.user_id is not None and strength != 0.0:
        taste = add_taste(updated.taste, feedback.user_id, strength, params.embedding)
        updated = updated.with_taste(taste)
    return updated


SortKey = tuple[float, float, str]
#: Content priors a catalog keeps (the items that got feedback most recently, roughly).
_PRIORS_KEPT = 1 << 16
IntArray = npt.NDArray[np.intp]
#: Rows are numbered afresh once the rows removed items left outnumber the items held
#: plus this many (see :meth:`Catalog._compact_rows`).
_ROW_SLACK = 1024


class ItemColumns(NamedTuple):
    """Per-row numbers of a :class:`Catalog`'s items, for ranking hundreds at once."""

    positives: npt.NDArray[np.int64]
    feedback_events: npt.NDArray[np.int64]
    popularity: Vector
    popularity_t: Vector
    #: whether the catalog holds the row's item and may recommend it (``ItemState.available``)
    available: npt.NDArray[np.bool_]
    #: the item's category, as its position in :meth:`Catalog.categories` (0: none)
    category: npt.NDArray[np.int64]


def _grown(array: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """``array`` with its first axis grown to ``size``, the new part zero."""
    grown = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


class _TopOrder:
    """The best ``n`` available items of one category (or all), kept current as items change.

    Best = highest decayed popularity, then newest, then lowest id. New likes only ever
    raise an item's key, so most updates are an O(log n) check; only when an item in the
    list falls (withdrawn, removed, or its record changed) is the list rebuilt, lazily.
    """

    def __init__(
        self, category: str | None, n: int, half_life_s: float, newest: bool = False
    ) -> None:
        self.category = category
        self.n = n
        self.half_life_s = half_life_s
        self.newest = newest
        self.rows: list[SortKey] = []
        self.members: dict[str, SortKey] = {}
        self.stale = True
        self._ids: tuple[str, ...] | None = None  # the ids of ``rows``, until they change

    def ids(self) -> tuple[str, ...]:
        """The ids of :attr:`rows`, best first (kept until the rows change)."""
        if self._ids is None:
            self._ids = tuple(row[2] for row in self.rows)
        return self._ids

    def key(self, state: ItemState) -> SortKey:
        if self.newest:
            return (-state.created_t, 0.0, state.item_id)
        return (-state.trending_key(self.half_life_s), -state.created_t, state.item_id)

    def eligible(self, state: ItemState | None) -> bool:
        return (
            state is not None
            and state.available
            and (self.category is None or state.category == self.category)
        )

    def rebuild(self, states: Iterator[ItemState]) -> None:
        self.rows = heapq.nsmallest(self.n, (self.key(s) for s in states if self.eligible(s)))
        self.members = {row[2]: row for row in self.rows}
        self.stale = False
        self._ids = None

    def update(self, item_id: str, state: ItemState | None, key: SortKey | None = None) -> None:
        """Take the item's new state (``None``: gone) into the list; ``key``: its key here."""
        if self.stale:
            return
        old = self.members.get(item_id)
        if old is not None and self.eligible(state):
            assert state is not None
            if key is None:
                key = self.key(state)
            if key == old:  # most puts only add feedback: nothing moves
                return
        old = self.members.pop(item_id, None)
        if old is not None:
            del self.rows[bisect.bisect_left(self.rows, old)]
            self._ids = None
        if not self.eligible(state):
            self.stale = old is not None  # a member left: the next best is unknown
            return
        assert state is not None
        new = key if key is not None else self.key(state)
        if old is not None and new > old:
            self.stale = True  # a member got worse: something outside may now beat it
            return
        if len(self.rows) < self.n or new < self.rows[-1]:
            bisect.insort(self.rows, new)
            self._ids = None
            self.members[item_id] = new
            if len(self.rows) > self.n:
                dropped = self.rows.pop()
                del self.members[dropped[2]]


def _only_neighbours_differ(old: ItemState, new: ItemState) -> bool:
    """Whether ``new`` is ``old`` with other co-visits at most (as a co-visit record makes it).

    Identity for the record and the taste: :meth:`ItemState.with_covisits` keeps the very
    objects, and anything else is compared in full by :meth:`Catalog.put`.
    """
    return (
        old.record is new.record
        and old.taste is new.taste
        and old.popularity == new.popularity
        and old.popularity_t == new.popularity_t
        and old.positives == new.positives
        and old.feedback_events == new.feedback_events
    )


class IndexWrites(NamedTuple):
    """Vectors a :class:`Catalog` has yet to write to its index (:meth:`take_index_writes`)."""

    #: the items to (re-)index, in id order
    ids: list[str]
    #: their unit embeddings, one row each
    vectors: npt.NDArray[np.float64]
    #: how many items were removed from the index already
    removed: int


class Catalog:
    """Every item's state, in memory, as replicated to this worker, and its item index.

    Each item's unit embedding (see :mod:`operators.embedding`) is kept next to its state;
    the hnswlib :class:`~operators.index.ItemIndex` of available items follows lazily:
    :meth:`put` only marks an item, and the next :meth:`similar` or :meth:`neighbours`
    re-indexes, in one batch, the marked items whose embedding turned by more than
    ``reindex_below`` (a cosine) since it was indexed. Scores use the exact embeddings;
    the index only finds candidates, so a slightly stale vector there can only change
    which candidates are found. What the graph holds depends on when it was synced and
    on its own history (hnswlib's random levels, a file loaded after a restart), so two
    workers, or a worker and the replay, can find slightly different candidates.

    Args:
        embedding: the embedding space (the default one when omitted).
        index: an index loaded from disk to start from (a fresh one when omitted); it is
            brought in line with the items as they are put, and :meth:`prune_index`
            drops what it holds that the catalog no longer has.
        reindex_below: re-index an item when the cosine between its indexed and its
            current embedding falls below this.

    """

    def __init__(
        self,
        embedding: EmbeddingParams | None = None,
        index: ItemIndex | None = None,
        reindex_below: float = 0.995,
    ) -> None:
        self._items: dict[str, ItemState] = {}
        self._orders: dict[tuple[str | None, int, float, bool], _TopOrder] = {}
        # orders by the category they rank (None: the whole catalog), so an update only
        # touches the orders it can change
        self._orders_of: dict[str | None, list[_TopOrder]] = {}
        self.embedding = embedding if embedding is not None else EmbeddingParams()
        if index is not None and index.dim != self.embedding.dim:
            raise ValueError(f"index has dim {index.dim}, embeddings {self.embedding.dim}")
        self.index = index if index is not None else ItemIndex(dim=self.embedding.dim)
        self._loaded = index is not None and len(index) > 0
        self.reindex_below = reindex_below
        # every item id the catalog has seen (as an item or a co-visit neighbour) has a
        # row, 1, 2, ...; row 0 is "unknown". Its unit embedding is that row of one matrix
        # (zero: none), so the similarity of hundreds of candidates is one matrix-vector
        # product, and its counts are that row of the columns (see :meth:`columns`)
        self._rows: dict[str, int] = {}
        self._row_ids: list[str] = [""]
        self._matrix = np.zeros((1024, self.embedding.dim))
        self._embedded_rows: set[int] = set()  # the rows of the matrix that are not zero
        self._freed_rows = 0  # rows of items removed since the rows were last numbered
        self._columns = ItemColumns(
            positives=np.zeros(1024, dtype=np.int64),
            feedback_events=np.zeros(1024, dtype=np.int64),
            popularity=np.zeros(1024),
            popularity_t=np.zeros(1024),
            available=np.zeros(1024, dtype=np.bool_),
            category=np.zeros(1024, dtype=np.int64),
        )
        # every category an item has had, numbered in order of appearance; code 0 stands
        # for no category (and for the empty one, which ranks as none)
        self._category_codes: dict[str, int] = {"": 0}
        self._categories: list[str] = [""]
        #: available items per category, and those categories sorted (None: to sort again)
        self._available_in: dict[str, int] = {}
        self._sorted_categories: tuple[str, ...] | None = None
        # each co-visit source's neighbours' rows (see neighbour_arrays): the state they
        # came from, its co-visits, their rows
        self._neighbour_rows: dict[str, tuple[ItemState, CoVisits, IntArray]] = {}
        # content priors, kept with the record they were computed from (at most
        # _PRIORS_KEPT: 32 MB of 64-d vectors)
        self._priors: dict[str, tuple[ItemRecord | None, Vector]] = {}
        # what the index holds, as far as this catalog put it there
        self._indexed: dict[str, Vector] = {}
        self._dirty: set[str] = set()
        #: how many changes the index has taken (a saved copy is stale when this moved)
        self.index_changes = 0
        #: counts every put and remove: a result computed at one version is stale at another
        self.version = 0
        self._memo: tuple[object, int, object] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ItemState]:
        return iter(self._items.values())

    def get(self, item_id: str) -> ItemState | None:
        """The item's state, or ``None`` when unknown."""
        return self._items.get(item_id)

    @property
    def states(self) -> Mapping[str, ItemState]:
        """Every item's state by id: a live, read-only view (for hot loops; use :meth:`put`)."""
        return self._items

    def title(self, item_id: str) -> str:
        """The item's title for people to read; its id when it has none."""
        state = self._items.get(item_id)
        record = state.record if state is not None else None
        return record.title if record is not None and record.title else item_id

    def _affected(self, *states: ItemState | None) -> list[_TopOrder]:
        orders = list(self._orders_of.get(None, ()))
        for category in {s.category for s in states if s is not None}:
            if category is not None:
                orders.extend(self._orders_of.get(category, ()))
        return orders

    def remember(self, key: object, value: object) -> None:
        """Keep one derived result, valid until the catalog changes (see :meth:`recall`)."""
        self._memo = (key, self.version, value)

    def recall(self, key: object) -> object | None:
        """The result :meth:`remember` kept under ``key``, if nothing changed since."""
        memo = self._memo
        if memo is not None and memo[1] == self.version and memo[0] == key:
            return memo[2]
        return None

    def put(self, state: ItemState) -> None:
        """Replace one item's state."""
        self.version += 1
        item_id = state.item_id
        old = self._items.get(item_id)
        self._items[item_id] = state
        if old is not None and _only_neighbours_differ(old, state):
            return  # a co-visit (most puts): no count, order or embedding changes
        if old is None or (old.available, old.category) != (state.available, state.category):
            self._count_available(old, -1)
            self._count_available(state, +1)
        row = self._row_of(item_id)
        columns = self._columns
        columns.positives[row] = state.positives
        columns.feedback_events[row] = state.feedback_events
        columns.popularity[row] = state.popularity
        columns.popularity_t[row] = state.popularity_t
        columns.available[row] = state.available
        columns.category[row] = self._category_code(state.category)
        if (
            old is None
            or old.record is not state.record
            or old.popularity != state.popularity
            or old.popularity_t != state.popularity_t
        ):  # what the orders rank by changed (a co-visit record changes none of it)
            # the orders differ in length and category, rarely in how they rank: each
            # kind of key is computed once
            keys: dict[tuple[float, bool], SortKey] = {}
            for order in self._affected(old, state):
                kind = (order.half_life_s, order.newest)
                key = keys.get(kind)
                if key is None:
                    key = keys[kind] = order.key(state)
                order.update(item_id, state, key)
        if (
            old is None
            or old.taste != state.taste
            or (old.record is not state.record and old.record != state.record)
        ):
            prior = self._priors.get(item_id)
            if prior is None or prior[0] is not state.record:
                if len(self._priors) >= _PRIORS_KEPT:  # bounded: drop the oldest kept
                    del self._priors[next(iter(self._priors))]
                prior = self._priors[item_id] = (
                    state.record, item_prior(state.record, self.embedding),
                )  # fmt: skip
            embedding = item_embedding(state.record, state.taste, self.embedding, prior[1])
            self._set_vector(item_id, unit(embedding))
            self._dirty.add(item_id)
        elif old.available != state.available:
            self._dirty.add(item_id)

    def remove(self, item_id: str) -> None:
        """Forget an item (a tombstone on the item-state topic)."""
        self.version += 1
        old = self._items.pop(item_id, None)
        self._count_available(old, -1)
        self._set_vector(item_id, None)
        self._neighbour_rows.pop(item_id, None)
        self._priors.pop(item_id, None)
        row = self._rows.get(item_id)
        if row is not None:
            for column in self._columns:
                column[row] = 0
            self._freed_rows += old is not None
        self._indexed.pop(item_id, None)
        self._dirty.discard(item_id)
        self.index_changes += int(self.index.remove(item_id))
        if old is not None:
            for order in self._affected(old):
                order.update(item_id, None)
        # counted by the rows removals freed, not by all rows: the ids only named as co-visit
        # neighbours get theirs back at the next ranking, and would set it off every time
        if self._freed_rows > _ROW_SLACK + len(self._items):
            self._compact_rows()

    def _compact_rows(self) -> None:
        """Number the rows of the items held afresh, forgetting every other id's.

        A row is given to every id the catalog sees and kept when its item goes, so under
        churn (a news catalog) the rows, the embedding matrix and the columns would grow
        with every item ever published. Ids only named as co-visit neighbours lose their
        rows too; they get new ones when next needed.
        """
        self.version += 1  # results computed over the old rows are stale
        held = [i for i in self._row_ids[1:] if i in self._items]
        old = np.fromiter(map(self._rows.__getitem__, held), np.intp, len(held))
        new = np.arange(1, len(held) + 1, dtype=np.intp)
        size = max(1024, 1 << len(held).bit_length())
        matrix = np.zeros((size, self.embedding.dim))
        matrix[new] = self._matrix[old]
        columns = ItemColumns(*(_grown(c[:1], size) for c in self._columns))  # row 0: zero
        for column, before in zip(columns, self._columns, strict=True):
            column[new] = before[old]
        embedded = self._embedded_rows
        self._embedded_rows = {n for n, o in zip(new.tolist(), old.tolist(), strict=True)
                               if o in embedded}  # fmt: skip
        self._matrix, self._columns = matrix, columns
        self._rows = dict(zip(held, new.tolist(), strict=True))
        self._row_ids = ["", *held]
        self._neighbour_rows.clear()
        self._freed_rows = 0

    # -- embeddings and the index ---------------------------------------------------------

    def _category_code(self, category: str | None) -> int:
        code = self._category_codes.get(category or "")
        if code is None:
            code = self._category_codes[category or ""] = len(self._categories)
            self._categories.append(category or "")
        return code

    def _count_available(self, state: ItemState | None, change: int) -> None:
        if state is None or not state.available or not state.category:
            return
        category = state.category
        count = self._available_in.get(category, 0) + change
        if count:
            self._available_in[category] = count
        else:
            del self._available_in[category]
        if count in (0, change):  # a category came or went
            self._sorted_categories = None

    def has_category(self, category: str) -> bool:
        """Whether ``category`` has an available item now."""
        return category in self._available_in

    def sorted_categories(self) -> tuple[str, ...]:
        """The categories with an available item now, sorted.

        What every worker and the replay agree on, whatever order the items came in and
        whatever categories items had before (unlike :meth:`categories`, which keeps every
        category ever seen, in the order seen).
        """
        if self._sorted_categories is None:
            self._sorted_categories = tuple(sorted(self._available_in))
        return self._sorted_categories

    def categories(self) -> list[str]:
        """Every category seen, in the order of its code in :meth:`columns` (first: none)."""
        return self._categories

    def _row_of(self, item_id: str) -> int:
        """The item's row, given out the first time the catalog sees its id."""
        row = self._rows.get(item_id)
        if row is None:
            row = self._rows[item_id] = len(self._row_ids)
            self._row_ids.append(item_id)
            if row >= len(self._matrix):
                size = 2 * len(self._matrix)
                self._matrix = _grown(self._matrix, size)
                self._columns = ItemColumns(*(_grown(c, size) for c in self._columns))
        return row

    def _set_vector(self, item_id: str, vector: Vector | None) -> None:
        if vector is None:
            row = self._rows.get(item_id)
            if row is not None:
                self._matrix[row] = 0.0
                self._embedded_rows.discard(row)
            return
        row = self._row_of(item_id)
        self._matrix[row] = vector
        self._embedded_rows.add(row)

    def rows(self, item_ids: Iterable[str]) -> IntArray:
        """Each item's row in :meth:`columns` and the embedding matrix (0: unknown)."""
        return np.fromiter(map(self._rows.get, item_ids, repeat(0)), dtype=np.intp)

    def row_id(self, row: int) -> str:
        """The item id of a row (``""`` for row 0)."""
        return self._row_ids[row]

    def row_ids(self, rows: IntArray) -> list[str]:
        """The item id of each row (:meth:`row_id`), in order."""
        ids = self._row_ids
        return [ids[row] for row in rows.tolist()]

    def columns(self) -> ItemColumns:
        """Every row's counts and popularity, as of the items' current states (read-only).

        Row ``r`` describes the item :meth:`row_id` names; a row whose item the catalog
        does not hold (removed, or only seen as a co-visit neighbour) is all zero. The
        arrays are live views: they change with the next :meth:`put`.
        """
        return self._columns

    def neighbour_arrays(self, state: ItemState) -> tuple[IntArray, Vector]:
        """The rows and the counts of the item's co-visit neighbours (as ``state.neighbours``).

        The rows are kept for the state the catalog holds; its next state usually only
        adds neighbours at the end (see :class:`~operators.covisits.CoVisits`), so only
        theirs are looked up then. Read-only.
        """
        cached = self._neighbour_rows.get(state.item_id)
        if cached is not None and cached[0] is state:
            return cached[2], cached[1].counts
        visits = CoVisits.of(state.neighbours)
        size = len(visits)
        rows = None
        if cached is not None:
            before, kept = cached[1], cached[2]
            if before.shared is visits.shared:  # both read the same ids, as far as each goes
                same = min(size, len(kept))
            else:  # a state restored from the topic: compare the ids
                same = len(kept) if visits.ids()[: len(kept)] == before.ids() else 0
            if same:
                rest = visits.ids()[same:] if same < size else []
                rows = np.concatenate([kept[:same], self._rows_of(rest)]) if rest else kept[:same]
        if rows is None:
            rows = self._rows_of(visits.ids())
        if self._items.get(state.item_id) is state:  # only what the catalog holds is kept
            self._neighbour_rows[state.item_id] = (state, visits, rows)
        return rows, visits.counts

    def _rows_of(self, item_ids: list[str]) -> IntArray:
        """Each id's row, given out to the ids the catalog has not seen yet."""
        try:
            return np.fromiter(map(self._rows.__getitem__, item_ids), np.intp, len(item_ids))
        except KeyError:
            return np.fromiter(map(self._row_of, item_ids), np.intp, len(item_ids))

    def unit(self, item_id: str) -> Vector | None:
        """The item's current unit embedding (``None`` when unknown)."""
        row = self._rows.get(item_id)
        if row is None or row not in self._embedded_rows:
            return None
        vector: Vector = self._matrix[row].copy()
        return vector

    def similarities(self, item_ids: Sequence[str], vector: Vector) -> Vector:
        """The cosine of each item's embedding with the unit ``vector`` (0 when unknown)."""
        return self.similarities_at(self.rows(item_ids), vector)

    def similarities_at(self, rows: IntArray, vector: Vector) -> Vector:
        """:meth:`similarities` for items given by their :meth:`rows`."""
        similarity: Vector = self._matrix[rows] @ vector
        return similarity

    def embeddings(self, item_ids: Sequence[str]) -> npt.NDArray[np.float64]:
        """The items' unit embeddings, one row each (zero when unknown): a copy."""
        embeddings: npt.NDArray[np.float64] = self._matrix[
            list(map(self._rows.get, item_ids, repeat(0)))
        ]
        return embeddings

    def sync_index(self) -> int:
        """Bring the index in line with every item changed since the last call.

        Returns:
            How many items were (re-)indexed or removed from the index.

        """
        writes = self.take_index_writes()
        if writes.ids:
            self.index.upsert_many(writes.ids, writes.vectors)
        return self.count_index_writes(writes)

    def take_index_writes(self) -> IndexWrites:
        """What :meth:`sync_index` would write, with the removals already made.

        For a caller that writes the vectors itself, away from the thread that changes
        the catalog (a worker's first full build: hnswlib inserts release the GIL), in
        batches through :meth:`ItemIndex.upsert_many`, then calls
        :meth:`count_index_writes`. The catalog counts the items as indexed from now on.
        """
        if not self._dirty:
            return IndexWrites([], np.zeros((0, self.embedding.dim)), 0)
        ids: list[str] = []
        rows: list[Vector] = []
        removed = 0
        for item_id in sorted(self._dirty):
            state = self._items.get(item_id)
            vector = self.unit(item_id)
            if state is None or vector is None or not state.available:
                self._indexed.pop(item_id, None)
                removed += int(self.index.remove(item_id))
                continue
            indexed: npt.NDArray[np.floating[Any]] | None = self._indexed.get(item_id)
            if indexed is None and self._loaded:  # maybe in the index loaded from disk
                indexed = self.index.vector(item_id)
            if indexed is None or float(indexed @ vector) < self.reindex_below:
                ids.append(item_id)
                rows.append(vector)
                self._indexed[item_id] = vector
            else:
                self._indexed[item_id] = indexed.astype(np.float64)
        self._dirty.clear()
        vectors = np.vstack(rows) if rows else np.zeros((0, self.embedding.dim))
        return IndexWrites(ids, vectors, removed)

    def count_index_writes(self, writes: IndexWrites) -> int:
        """Count ``writes`` (once written) in :attr:`index_changes`; returns how many."""
        self.index_changes += writes.removed + len(writes.ids)
        return writes.removed + len(writes.ids)

    def prune_index(self) -> int:
        """Drop from the index every item the catalog does not hold (after a restore)."""
        stale = [i for i in self.index.ids() if i not in self._items]
        for item_id in stale:
            self.index.remove(item_id)
        self.index_changes += len(stale)
        return len(stale)

    def exact_similar(self, vectors: Sequence[Vector], k: int) -> list[list[tuple[str, float]]]:
        """For each vector, the ``k`` available items nearest to it by brute force.

        For measuring the index; the pool of items is gathered once for all the vectors.
        """
        # an id only seen as a co-visit neighbour has a row too, but no embedding
        rows, embedded = self._rows, self._embedded_rows
        ids = [
            i for i, state in self._items.items()
            if state.available and rows.get(i, 0) in embedded
        ]  # fmt: skip
        if not ids or k <= 0:
            return [[] for _ in vectors]
        at = self.rows(ids)
        found = []
        for vector in vectors:
            scores = self.similarities_at(at, vector)
            best = np.argsort(-scores, kind="stable")[:k]
            found.append([(ids[n], float(scores[n])) for n in best])
        return found

    def index_recall(self, queries: Sequence[Vector], k: int) -> float | None:
        """Recall@k of the index against exact search, averaged over ``queries``.

        What the index finds is judged against the items' current embeddings, so an item
        whose indexed vector lags (``reindex_below``) counts against the index too.
        """
        found = hits = 0
        for query, nearest in zip(queries, self.exact_similar(queries, k), strict=True):
            exact = {i for i, _ in nearest}
            approximate = {i for i, _ in self.similar(query, k)}
            found += len(exact)
            hits += len(exact & approximate)
        return hits / found if found else None

    def similar(
        self, vector: Vector, k: int, exclude: frozenset[str] | set[str] = frozenset()
    ) -> list[tuple[str, float]]:
        """The ``k`` available items nearest to ``vector`` (approximate), best first."""
        self.sync_index()
        return self.index.query(vector, k, exclude)

    def neighbours(
        self, item_id: str, k: int, exclude: frozenset[str] | set[str] = frozenset()
    ) -> list[tuple[str, float]]:
        """The ``k`` available items nearest to item ``item_id`` (approximate), best first."""
        vector = self.unit(item_id)
        state = self._items.get(item_id)
        if vector is None or state is None or not state.available:
            return []
        self.sync_index()
        return self.index.query(vector, k, exclude, also=item_id)

    def top(self, n: int, half_life_s: float, category: str | None = None) -> list[str]:
        """The ``n`` best available items (of one category, or all): trending, then fresh.

        Items with positive feedback come first, by decayed popularity (all items decay at
        the same rate, so the order only changes with new feedback); the rest follow,
        newest first, so a catalog without feedback yet still fills a list.
        """
        return list(self._top(category, n, half_life_s, newest=False))

    def newest(self, n: int, since_t: float = -math.inf, until_t: float = math.inf) -> list[str]:
        """The ``n`` most recently created available items, created within the two times.

        An item dated after ``until_t`` (the moment asked about) is not out yet: it heads
        the order newest first, so when such items fill the first ``n``, an order four
        times as long is read (a few lengths, each kept; the dates never change order).
        The rows in the window are found by bisection (an order's rows are sorted).
        """
        size = n
        while True:
            rows = self._order(None, size, 0.0, newest=True).rows
            # rows are (-created_t, 0.0, item_id), ascending: newest first
            start = bisect.bisect_left(rows, (-until_t,))
            end = bisect.bisect_right(rows, (-since_t, math.inf))
            if end - start >= n or len(rows) < size or end < len(rows):
                return [row[2] for row in rows[start : min(end, start + n)]]
            size *= 4  # enough, or none left past the window's start: else read further

    def _top(
        self, category: str | None, n: int, half_life_s: float, newest: bool
    ) -> tuple[str, ...]:
        return self._order(category, n, half_life_s, newest).ids()

    def _order(self, category: str | None, n: int, half_life_s: float, newest: bool) -> _TopOrder:
        """The kept order of that kind, rebuilt first when stale."""
        key = (category, n, half_life_s, newest)
        order = self._orders.get(key)
        if order is None:
            order = self._orders[key] = _TopOrder(category, n, half_life_s, newest)
            self._orders_of.setdefault(category, []).append(order)
        if order.stale:
            order.rebuild(iter(self._items.values()))
        return order

    def snapshot(self) -> bytes:
        """All items as JSON lines."""
        return b"\n".join(state.snapshot() for state in self._items.values())

    @classmethod
    def restore(cls, data: bytes, embedding: EmbeddingParams | None = None) -> Catalog:
        """The catalog :meth:`snapshot` wrote."""
        catalog = cls(embedding)
        for line in data.splitlines():
            if line.strip():
                catalog.put(ItemState.restore(line))
        return catalog
