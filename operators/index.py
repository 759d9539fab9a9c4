"""The per-worker approximate nearest-neighbour index of item embeddings.

:class:`ItemIndex` wraps an hnswlib graph in inner-product space over L2-normalised
vectors, so its scores are cosine similarities. Every worker owns one index, fed from the
replicated item state: items are upserted as their embeddings change and removed when
they leave the catalog. On restart the worker loads the file it saved last
(:meth:`ItemIndex.load`) and, when that is missing, stale or corrupt
(:class:`IndexLoadError`), rebuilds it from item state (:meth:`ItemIndex.build`).

Item ids are strings; hnswlib labels are integers. The index gives each item id a stable
label the first time it sees it and keeps that mapping in its snapshot, so an item that is
removed and comes back gets its old label again.

Example:
    >>> index = ItemIndex(dim=2, seed=7)
    >>> index.upsert("north", [0.0, 1.0])
    >>> index.upsert("east", [1.0, 0.0])
    >>> index.upsert("north-east", [1.0, 1.0])
    >>> [(item, round(score, 3)) for item, score in index.query([0.1, 1.0], k=2)]
    [('north', 0.995), ('north-east', 0.774)]
    >>> index.remove("north")
    True
    >>> [item for item, _ in index.neighbours("east", k=5)]
    ['north-east']
    >>> ItemIndex.restore(index.snapshot()).query([0.1, 1.0], k=2) == index.query([0.1, 1.0], k=2)
    True

"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

import hnswlib
import numpy as np
import numpy.typing as npt

from operators.files import write_atomic

__all__ = ["IndexLoadError", "IndexParams", "ItemIndex"]

#: The snapshot header: magic, format version, SHA-256 of everything after the header,
#: length of the JSON metadata that follows it. The hnswlib index file comes last.
_HEADER: Final = struct.Struct("<8sI32sQ")
_MAGIC: Final = b"RLHNSWIX"
_FORMAT_VERSION: Final = 1
#: Metadata is a few dozen bytes per item id; anything bigger than this is corruption.
_MAX_METADATA_BYTES: Final = 1 << 34
_CHUNK: Final = 1 << 20
#: Up to this many excluded items, ask hnswlib for ``k + excluded`` results and drop the
#: excluded ones; above it, hand hnswlib a filter. The filter calls back into Python for
#: every candidate hnswlib visits, so it only wins once over-fetching means a much wider
#: search. Measured on 100k random 64-d items (ef_search 128, k 10, random exclusions),
#: over-fetch vs filter per query: 0.8 vs 1.0 ms at 100, 1.0 vs 0.9 ms at 300, 4.1 vs
#: 0.8 ms at 1,000, 11.8 vs 1.7 ms at 3,000.
_OVERFETCH_LIMIT: Final = 200
#: Compact the graph once its tombstones (removed items, replaced vectors) outnumber this
#: share of the live items, or of ``_COMPACT_FLOOR`` for a small index.
_COMPACT_RATIO: Final = 0.5
_COMPACT_FLOOR: Final = 64
#: Live items a compaction copies into the replacement graph per write (upsert or remove),
#: so no single write pauses for a whole rebuild.
_COMPACT_STEP: Final = 256
_GROWTH: Final = 2

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class IndexParams:
    """How a worker builds and queries its index (see :class:`ItemIndex`)."""

    m: int = 16
    ef_construction: int = 200
    ef_search: int = 128
    seed: int = 0
    #: re-index an item once its embedding turned below this cosine since it was indexed
    reindex_below: float = 0.995

    def new_index(self, dim: int) -> ItemIndex:
        """An empty index built with these parameters."""
        return ItemIndex(dim, m=self.m, ef_construction=self.ef_construction,
                         ef_search=self.ef_search, seed=self.seed)  # fmt: skip

    def built(self, index: ItemIndex) -> bool:
        """Whether ``index`` was built with these parameters."""
        saved = index.params()
        return (saved["m"], saved["ef_construction"], saved["ef_search"], saved["seed"]) == (
            self.m, self.ef_construction, self.ef_search, self.seed,
        )  # fmt: skip


class IndexLoadError(Exception):
    """A saved index cannot be used: missing, unreadable, corrupt or stale.

    The caller should rebuild the index from item state (:meth:`ItemIndex.build`).
    """


@dataclass
class _Rebuild:
    """A compaction in progress: the replacement graph, filled a step per write.

    ``plan`` lists the live items, with their labels in the current graph, as they were
    when it started; an item written since (upserted again, removed) has another label
    by the time its turn comes and is skipped, because every write during a compaction
    goes to both graphs.
    """

    graph: Any
    plan: list[tuple[str, int]]
    vectors: FloatMatrix  # new label -> vector
    done: int = 0
    ids: list[str] = field(default_factory=list)  # new label -> item id
    labels: dict[str, int] = field(default_factory=dict)  # item id -> new label (live)
    removed: set[int] = field(default_factory=set)


class ItemIndex:
    """Approximate cosine nearest neighbours over item embeddings (hnswlib, HNSW graph).

    Thread safety: hnswlib allows concurrent queries, and concurrent inserts, but not a
    query concurrent with an insert, update, delete or resize (it can read a half-written
    neighbour list and crash). Every public method therefore holds one
    :class:`threading.Lock` for the whole call, which also keeps the id <-> label mapping
    and the graph in step. Queries serialise as a result; a readers-writer lock would let
    them overlap, but a worker queries from a single event-loop thread, a query takes
    about 0.1-0.3 ms, and the standard library has no readers-writer lock to get right.

    Determinism: the graph depends on the seed (hnswlib's ``random_seed``) and on the order
    of operations only, as long as ``num_threads`` is 1 (the default). More threads build
    faster, but then the graph, and so the approximate results, depend on scheduling.
    hnswlib's file does not keep its random generator's state, so inserts after a
    :meth:`restore` are repeatable from the snapshot but differ from those the original
    index would have made.

    Updates: a new vector for an item already indexed goes in as a new insert under a
    new label, and the old label is marked deleted (a tombstone), because hnswlib's
    in-place update repairs every neighbour's links and costs about ten inserts (2.3 ms
    against 0.2 ms on 10k 64-d items; docs/retrieval.md). A removed item leaves a
    tombstone too. Tombstones still route searches but are never returned; once they
    outnumber half the live items a replacement graph is built from the live vectors
    (:attr:`compactions`), in label order, ``_COMPACT_STEP`` items per write, every
    write meanwhile going to both graphs; when it holds every live item it takes over.
    So churn does not grow the index, a rebuild costs about two inserts per tombstone it
    clears, and no write pauses for more than a step (about 50 ms) however large the
    catalog.

    Memory: a copy of every label's vector is kept next to the graph (as many bytes again
    as hnswlib's vectors): reading vectors out of hnswlib costs milliseconds per thousand.

    Args:
        dim: The embedding dimension.
        max_elements: The initial capacity; the index grows it geometrically (at least
            doubling it) before an insert would overflow it.
        ef_construction: The candidate list size while inserting (build quality vs time).
        m: Graph out-degree (2 * m on the bottom layer); memory and recall grow with it.
        ef_search: The candidate list size while querying (at least ``k`` is used). The
            default, 128, reaches recall@10 >= 0.95 on up to about 10k random 64-d
            vectors (64 gives 0.90 on 5k); bigger indexes need more (docs/retrieval.md).
        seed: The seed of hnswlib's level generator.
        num_threads: Threads hnswlib may use for batch inserts (see Determinism).

    """

    def __init__(
        self,
        dim: int,
        *,
        max_elements: int = 1024,
        ef_construction: int = 200,
        m: int = 16,
        ef_search: int = 128,
        seed: int = 0,
        num_threads: int = 1,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if max_elements < 1 or ef_construction < 1 or m < 2 or ef_search < 1 or num_threads < 1:
            raise ValueError(
                "max_elements, ef_construction, ef_search and num_threads must be positive "
                "and m at least 2"
            )
        self.dim = dim
        self.max_elements = max_elements
        self.ef_construction = ef_construction
        self.m = m
        self.ef_search = ef_search
        self.seed = seed
        self.num_threads = num_threads
        self._lock = threading.Lock()
        self._index: Any = self._new_graph(max_elements)
        self._labels: dict[str, int] = {}  # live item id -> its label (never a removed one)
        self._ids: list[str] = []  # label -> item id; labels are 0, 1, 2, ...
        self._removed: set[int] = set()  # labels whose item is not live
        self._vectors: FloatMatrix = np.zeros((0, dim), dtype=np.float32)  # label -> vector
        #: graph rebuilds that cleared tombstones (see :meth:`_compact_step`)
        self.compactions = 0
        self._rebuild: _Rebuild | None = None
        # bumped by every change to ``_labels``; dates the exclusions' labels kept below
        self._epoch = 0
        # the last frozenset of excluded ids asked about, the epoch, and their live labels:
        # a gathering's searches all exclude the same (hundreds of) ids
        self._excluded: tuple[frozenset[str], int, AbstractSet[int]] | None = None

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of live (not removed) items."""
        with self._lock:
            return len(self._ids) - len(self._removed)

    def __contains__(self, item_id: object) -> bool:
        """Whether ``item_id`` is a live item."""
        with self._lock:
            label = self._labels.get(item_id) if isinstance(item_id, str) else None
            return label is not None and label not in self._removed

    def __reduce__(self) -> tuple[Callable[[bytes], ItemIndex], tuple[bytes]]:
        # Pickling goes through the snapshot: the lock and the hnswlib object do not pickle
        # by themselves, and one format is less to keep right than two.
        return (ItemIndex.restore, (self.snapshot(),))

    @property
    def tombstones(self) -> int:
        """Slots of removed items and replaced vectors the graph still holds."""
        with self._lock:
            return len(self._removed)

    @property
    def capacity(self) -> int:
        """The number of slots allocated in the graph (it grows as items are added)."""
        with self._lock:
            return int(self._index.get_max_elements())

    def ids(self) -> list[str]:
        """The live item ids, in the order they were last upserted."""
        with self._lock:
            return [item for label, item in enumerate(self._ids) if label not in self._removed]

    def params(self) -> dict[str, int]:
        """The constructor arguments, as :meth:`build` and the constructor take them."""
        return {
            "max_elements": self.max_elements,
            "ef_construction": self.ef_construction,
            "m": self.m,
            "ef_search": self.ef_search,
            "seed": self.seed,
            "num_threads": self.num_threads,
        }

    def vector(self, item_id: str) -> FloatMatrix | None:
        """The item's stored (L2-normalised, float32) vector, or ``None`` when not live."""
        with self._lock:
            label = self._live_label(item_id)
            if label is None:
                return None
            stored: FloatMatrix = self._vectors[label].copy()
            return stored

    def recall(
        self, queries: Iterable[Sequence[float] | npt.NDArray[np.floating[Any]]], k: int
    ) -> float | None:
        """Recall@k of :meth:`query` against exact search over the same stored vectors.

        The graph's own accuracy, whatever the vectors: ``None`` without queries or items.
        """
        found = hits = 0
        for vector in queries:
            query = _normalised(vector, self.dim)
            with self._lock:
                exact = {item for item, _ in self._exact_query(query, k, set())}
                hits += len(exact & {item for item, _ in self._query(query, k, ())})
            found += len(exact)
        return hits / found if found else None

    def query(
        self,
        vector: Sequence[float] | npt.NDArray[np.floating[Any]],
        k: int,
        exclude: Collection[str] = (),
        also: str | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` live items most similar to ``vector``, best first.

        Args:
            vector: The query embedding (any non-zero length; it is normalised).
            k: How many items to return. Fewer come back only when fewer live items are
                left after the exclusions.
            exclude: Item ids never to return (unknown or removed ids are ignored). The
                labels of a frozenset are kept until the next write, for the next search.
            also: One more id never to return (a search from an item's own vector),
                without copying ``exclude``.

        Returns:
            ``(item_id, cosine similarity)`` pairs, most similar first. Empty when the
            index is empty or ``k`` is not positive.

        Raises:
            ValueError: The vector has the wrong dimension, is zero or is not finite.

        """
        query = _normalised(vector, self.dim)
        with self._lock:
            return self._query(query, k, exclude, self._labels.get(also) if also else None)

    def neighbours(
        self, item_id: str, k: int, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """The ``k`` live items most similar to item ``item_id`` (never the item itself).

        Returns:
            ``(item_id, cosine similarity)`` pairs, most similar first; empty when
            ``item_id`` is not a live item.

        """
        with self._lock:
            label = self._live_label(item_id)
            if label is None:
                return []
            return self._query(self._vectors[label].copy(), k, exclude, label)

    # -- writing -------------------------------------------------------------------------

    def upsert(self, item_id: str, vector: Sequence[float] | npt.NDArray[np.floating[Any]]) -> None:
        """Add an item, replace its vector, or bring a removed item back.

        Raises:
            ValueError: The vector has the wrong dimension, is zero or is not finite.

        """
        self.upsert_many([item_id], np.asarray(vector, dtype=np.float64).reshape(1, -1))

    def upsert_many(
        self,
        item_ids: Sequence[str],
        vectors: Sequence[Sequence[float]] | npt.NDArray[np.floating[Any]],
    ) -> None:
        """:meth:`upsert` a batch: row ``i`` of ``vectors`` is item ``item_ids[i]``.

        A batch is much faster than one call per item. When an id repeats, its last row
        wins. Nothing changes when a vector is invalid.

        Raises:
            ValueError: Lengths differ, or a vector has the wrong dimension, is zero or is
                not finite.

        """
        if len(item_ids) == 0 and np.size(vectors) == 0:
            return
        matrix = _normalised_rows(vectors, self.dim)
        if matrix.shape[0] != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but {matrix.shape[0]} vectors")
        last_row = {item_id: row for row, item_id in enumerate(item_ids)}
        with self._lock:
            # Every vector goes to a new label in a new slot, and the item's old label (if
            # any) is tombstoned: hnswlib's in-place update repairs the links of every
            # neighbour and costs about ten inserts (docs/retrieval.md). Compaction
            # reclaims the tombstones.
            start = len(self._ids)
            inserts = [(start + n, row) for n, row in enumerate(last_row.values())]
            self._ids.extend(last_row)
            self._removed.update(label for label, _ in inserts)  # until the graph holds them
            try:
                _reserve(self._index, len(inserts))
                self._add(matrix, inserts)
            except BaseException:
                for label, _ in inserts:
                    # RuntimeError: it never reached the graph.
                    with contextlib.suppress(RuntimeError):
                        self._index.mark_deleted(label)
                raise
            for item_id, (label, _) in zip(last_row, inserts, strict=True):
                old = self._live_label(item_id)
                if old is not None:
                    self._index.mark_deleted(old)
                    self._removed.add(old)
                self._labels[item_id] = label
                self._removed.discard(label)
            self._epoch += 1
            if self._rebuild is not None:
                self._copy(self._rebuild, list(last_row), matrix[list(last_row.values())])
            self._compact_step()

    def remove(self, item_id: str) -> bool:
        """Remove an item: it is never returned again until it is upserted again.

        Returns:
            Whether the item was live.

        """
        with self._lock:
            label = self._live_label(item_id)
            if label is None:
                return False
            self._index.mark_deleted(label)
            self._removed.add(label)
            del self._labels[item_id]
            self._epoch += 1
            rebuild = self._rebuild
            copied = rebuild.labels.pop(item_id, None) if rebuild is not None else None
            if rebuild is not None and copied is not None:
                rebuild.graph.mark_deleted(copied)
                rebuild.removed.add(copied)
            self._compact_step()
            return True

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole index (graph, vectors, id mapping, parameters) as bytes.

        :meth:`restore` gives back an index with the same ids and the same query results.
        """
        out = io.BytesIO()
        self._write(out)
        return out.getvalue()

    @classmethod
    def restore(cls, data: bytes) -> ItemIndex:
        """The index :meth:`snapshot` wrote.

        Raises:
            IndexLoadError: The bytes are not a complete, intact snapshot.

        """
        return cls._read(io.BytesIO(data), len(data))

    def save(self, path: Path) -> None:
        """Write :meth:`snapshot` to ``path`` atomically.

        The bytes go to a temporary file in the same directory, are flushed and fsynced,
        then renamed over ``path`` and the directory is fsynced: a crash leaves either the
        previous file or the new one, never a mix.
        """
        write_atomic(path, self._write)

    @classmethod
    def load(cls, path: Path, *, dim: int | None = None) -> ItemIndex:
        """The index :meth:`save` wrote to ``path``.

        Args:
            path: The file.
            dim: The dimension the caller expects; a file of another dimension is stale.

        Raises:
            IndexLoadError: The file is missing, unreadable, corrupt, of an unknown format
                version or of another dimension. Rebuild with :meth:`build`.

        """
        try:
            with path.open("rb") as source:
                index = cls._read(source, os.fstat(source.fileno()).st_size)
        except OSError as error:
            raise IndexLoadError(f"cannot read the index file {path}: {error}") from error
        except IndexLoadError as error:
            raise IndexLoadError(f"{path}: {error}") from error
        if dim is not None and index.dim != dim:
            raise IndexLoadError(f"{path} holds {index.dim}-d vectors, expected {dim}-d")
        return index

    @classmethod
    def build(
        cls,
        dim: int,
        items: Iterable[tuple[str, Sequence[float] | npt.NDArray[np.floating[Any]]]],
        *,
        batch_size: int = 8192,
        **params: int,
    ) -> ItemIndex:
        """A new index holding ``items`` (upserted in order, in batches).

        Args:
            dim: The embedding dimension.
            items: ``(item_id, vector)`` pairs, e.g. from the replicated item state.
            batch_size: Items per :meth:`upsert_many` call.
            **params: The constructor's keyword arguments. When ``items`` has a length,
                ``max_elements`` is raised to it so the graph is allocated once.

        """
        if isinstance(items, Collection):
            params["max_elements"] = max(params.get("max_elements", 1024), len(items), 1)
        index = cls(dim, **params)
        ids: list[str] = []
        rows: list[Sequence[float] | npt.NDArray[np.floating[Any]]] = []
        for item_id, vector in items:
            ids.append(item_id)
            rows.append(vector)
            if len(ids) >= batch_size:
                index.upsert_many(ids, np.asarray(rows, dtype=np.float64))
                ids, rows = [], []
        if ids:
            index.upsert_many(ids, np.asarray(rows, dtype=np.float64))
        return index

    # -- internals (the caller holds the lock) -------------------------------------------

    def _live_label(self, item_id: str) -> int | None:
        return self._labels.get(item_id)

    def _add(self, matrix: FloatMatrix, rows: list[tuple[int, int]]) -> None:
        """Insert ``matrix`` rows under new labels (``(label, row)`` pairs) in new slots."""
        labels = np.fromiter((label for label, _ in rows), dtype=np.uint64, count=len(rows))
        picked = matrix[[row for _, row in rows]]
        self._index.add_items(picked, labels, num_threads=self.num_threads)
        self._vectors = _with_rows(self._vectors, len(self._ids), self.dim)
        self._vectors[labels.astype(np.intp)] = picked

    def _compact_step(self) -> None:
        """Start a compaction once tombstones outnumber half the live items, or go on.

        Each step copies the next ``_COMPACT_STEP`` items of the plan that are still live
        with the vector they had when it started; the replacement takes over once the
        plan is done. A rebuild costs about two inserts per tombstone it clears; however
        much items churn, the graph never holds many more tombstones than
        ``_COMPACT_RATIO`` times the live items (or ``_COMPACT_RATIO * _COMPACT_FLOOR``
        in a small index).
        """
        rebuild = self._rebuild
        if rebuild is None:
            live = len(self._ids) - len(self._removed)
            if len(self._removed) <= _COMPACT_RATIO * max(live, _COMPACT_FLOOR):
                return
            graph = self._new_graph(max(self.max_elements, 2 * live))
            plan = [(self._ids[n], n) for n in range(len(self._ids)) if n not in self._removed]
            vectors = np.zeros((0, self.dim), dtype=np.float32)
            rebuild = self._rebuild = _Rebuild(graph, plan, vectors)
        step = rebuild.plan[rebuild.done : rebuild.done + _COMPACT_STEP]
        rebuild.done += len(step)
        # an item written since the plan was made is in the new graph already
        still = [(item, label) for item, label in step if self._labels.get(item) == label]
        if still:
            rows = [label for _, label in still]
            self._copy(rebuild, [item for item, _ in still], self._vectors[rows])
        if rebuild.done < len(rebuild.plan):
            return
        self._index = rebuild.graph
        self._ids = rebuild.ids
        self._labels = rebuild.labels
        self._epoch += 1
        self._removed = rebuild.removed
        self._vectors = rebuild.vectors
        self._rebuild = None
        self.compactions += 1

    def _copy(self, rebuild: _Rebuild, item_ids: list[str], matrix: FloatMatrix) -> None:
        """Write items to the replacement graph (new labels; earlier copies tombstoned).

        A failure abandons the compaction (the current graph is intact) and is raised.
        """
        try:
            graph, start = rebuild.graph, len(rebuild.ids)
            _reserve(graph, len(item_ids))
            labels = np.arange(start, start + len(item_ids), dtype=np.uint64)
            graph.add_items(matrix, labels, num_threads=self.num_threads)
            rebuild.ids.extend(item_ids)
            rebuild.vectors = _with_rows(rebuild.vectors, len(rebuild.ids), self.dim)
            rebuild.vectors[start : len(rebuild.ids)] = matrix
            for item_id, label in zip(item_ids, labels.tolist(), strict=True):
                earlier = rebuild.labels.get(item_id)
                if earlier is not None:
                    graph.mark_deleted(earlier)
                    rebuild.removed.add(earlier)
                rebuild.labels[item_id] = label
        except BaseException:
            self._rebuild = None
            raise

    def _new_graph(self, max_elements: int) -> Any:
        """An empty hnswlib graph with this index's parameters."""
        graph: Any = hnswlib.Index(space="ip", dim=self.dim)
        graph.init_index(
            max_elements=max_elements,
            M=self.m,
            ef_construction=self.ef_construction,
            random_seed=self.seed,
        )
        graph.set_ef(self.ef_search)
        graph.set_num_threads(self.num_threads)
        return graph

    def _excluded_labels(self, exclude: Collection[str]) -> AbstractSet[int]:
        """The live labels of the ids in ``exclude``.

        In C loops (users exclude hundreds of items; ``_labels`` maps live labels only),
        and kept for a frozenset until the next write: a gathering's searches ask again.
        """
        kept = self._excluded
        if kept is not None and kept[0] is exclude and kept[1] == self._epoch:
            return kept[2]
        labels_of = set(map(self._labels.get, exclude))
        labels_of.discard(None)
        labels = cast(AbstractSet[int], labels_of)  # never changed once made
        if isinstance(exclude, frozenset):  # a set could change under the same identity
            self._excluded = (exclude, self._epoch, labels)
        return labels

    def _query(
        self, query: FloatMatrix, k: int, exclude: Collection[str], also: int | None = None
    ) -> list[tuple[str, float]]:
        """The search, leaving out the ids in ``exclude`` and the label ``also`` (live)."""
        excluded = self._excluded_labels(exclude)
        if also in excluded:
            also = None
        leaving_out = len(excluded) + (also is not None)
        live = len(self._ids) - len(self._removed)
        want = min(k, live - leaving_out)
        if want <= 0:
            return []
        try:
            if leaving_out <= _OVERFETCH_LIMIT:
                labels, distances = self._index.knn_query(
                    query, k=want + leaving_out, num_threads=1
                )
            else:
                labels, distances = self._index.knn_query(
                    query, k=want, num_threads=1,
                    filter=lambda label: label not in excluded and label != also,
                )  # fmt: skip
        except RuntimeError:
            # hnswlib found fewer than asked: part of the graph is unreachable from the
            # entry point (rare; mostly tiny or heavily churned graphs). Scan exactly.
            return self._exact_query(query, want, excluded if also is None else {*excluded, also})
        found: list[tuple[str, float]] = []
        ids, removed = self._ids, self._removed
        for label, distance in zip(labels[0].tolist(), distances[0].tolist(), strict=True):
            if label not in excluded and label not in removed and label != also:
                found.append((ids[label], 1.0 - distance))
                if len(found) == want:
                    break
        return found

    def _exact_query(
        self, query: FloatMatrix, k: int, excluded: Collection[int]
    ) -> list[tuple[str, float]]:
        labels = [
            label
            for label in range(len(self._ids))
            if label not in self._removed and label not in excluded
        ]
        scores = self._vectors[labels] @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self._ids[labels[i]], float(scores[i])) for i in order.tolist()]

    def _metadata(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "params": self.params(),
            "ids": self._ids,
            "removed": sorted(self._removed),
            "slots": int(self._index.element_count),
        }

    def _write(self, out: IO[bytes]) -> None:
        """Write the snapshot format to ``out``: header, JSON metadata, hnswlib file."""
        with tempfile.TemporaryDirectory(prefix="recloop-index-") as scratch:
            graph = Path(scratch) / "graph.hnsw"
            with self._lock:  # a consistent cut; hashing and copying need no lock
                self._index.save_index(str(graph))
                metadata = json.dumps(self._metadata(), separators=(",", ":")).encode()
            digest = hashlib.sha256(metadata)
            with graph.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                out.write(_HEADER.pack(_MAGIC, _FORMAT_VERSION, digest.digest(), len(metadata)))
                out.write(metadata)
                source.seek(0)
                shutil.copyfileobj(source, out, _CHUNK)

    @classmethod
    def _read(cls, source: IO[bytes], size: int) -> ItemIndex:
        """Read the snapshot format, checking it before hnswlib sees a byte of it."""
        header = source.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise IndexLoadError("not an item index snapshot (truncated header)")
        magic, version, expected_digest, metadata_size = _HEADER.unpack(header)
        if magic != _MAGIC:
            raise IndexLoadError("not an item index snapshot (bad magic bytes)")
        if version != _FORMAT_VERSION:
            raise IndexLoadError(
                f"snapshot format version {version}, this code reads {_FORMAT_VERSION}"
            )
        if metadata_size > min(_MAX_METADATA_BYTES, size - _HEADER.size):
            raise IndexLoadError("corrupt snapshot (metadata length past the end)")
        metadata_bytes = source.read(metadata_size)
        digest = hashlib.sha256(metadata_bytes)
        with tempfile.TemporaryDirectory(prefix="recloop-index-") as scratch:
            graph = Path(scratch) / "graph.hnsw"
            with graph.open("wb") as sink:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
            if digest.digest() != expected_digest:
                raise IndexLoadError("corrupt snapshot (checksum mismatch)")
            try:
                metadata = json.loads(metadata_bytes)
                index = cls(int(metadata["dim"]), **metadata["params"])
                ids = [str(item) for item in metadata["ids"]]
                removed = {int(label) for label in metadata["removed"]}
                slots = int(metadata["slots"])
            except (ValueError, KeyError, TypeError) as error:
                raise IndexLoadError(f"corrupt snapshot metadata: {error!r}") from error
            loaded: Any = hnswlib.Index(space="ip", dim=index.dim)
            try:
                # hnswlib's file does not record the dimension: it comes from the
                # checksummed metadata.
                loaded.load_index(str(graph))
            except RuntimeError as error:
                raise IndexLoadError(f"hnswlib cannot load the graph: {error}") from error
            index._index = loaded
        index._index.set_ef(index.ef_search)
        index._index.set_num_threads(index.num_threads)
        index._ids = ids
        index._removed = removed
        in_graph = set(index._index.get_ids_list())
        live = set(range(len(ids))) - removed
        # a tombstone keeps the id it had; only live labels map ids back
        index._labels = {ids[label]: label for label in sorted(live)}
        if (
            len(index._labels) != len(live)
            or int(index._index.element_count) != slots
            or not live <= in_graph
            or not in_graph <= set(range(len(ids)))
        ):
            raise IndexLoadError("inconsistent snapshot: the id mapping does not fit the graph")
        # a removed label's vector is never read: it is written again when it comes back
        index._vectors = np.zeros((len(ids), index.dim), dtype=np.float32)
        if live:
            held = sorted(live)
            index._vectors[held] = np.asarray(index._index.get_items(held), dtype=np.float32)
        return index


def _reserve(graph: Any, new_labels: int) -> None:
    """Grow ``graph`` (geometrically) so ``new_labels`` more labels fit."""
    needed = int(graph.element_count) + new_labels  # live and deleted slots
    capacity = int(graph.get_max_elements())
    if needed > capacity:
        graph.resize_index(max(needed, capacity * _GROWTH))


def _with_rows(vectors: FloatMatrix, rows: int, dim: int) -> FloatMatrix:
    """``vectors`` with room for ``rows`` rows (grown geometrically; the new rows zero)."""
    if len(vectors) >= rows:
        return vectors
    grown = np.zeros((max(rows, 2 * len(vectors)), dim), np.float32)
    grown[: len(vectors)] = vectors
    return grown


def _normalised(vector: Sequence[float] | npt.NDArray[np.floating[Any]], dim: int) -> FloatMatrix:
    """``vector`` as a unit-length float32 array of shape ``(dim,)``."""
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (dim,):
        raise ValueError(f"expected a vector of shape ({dim},), got {array.shape}")
    # the norm :func:`np.linalg.norm` computes for a row, to the last bit, at a quarter
    # of its cost (every query comes through here)
    norm = math.sqrt(np.add.reduce(array * array))
    unit: FloatMatrix
    if norm == 0.0 or not math.isfinite(norm):  # the rows' checks say what is wrong
        unit = _normalised_rows(array.reshape(1, dim), dim)[0]
    else:
        unit = (array / norm).astype(np.float32)
    return unit


def _normalised_rows(
    vectors: Sequence[Sequence[float]] | npt.NDArray[np.floating[Any]], dim: int
) -> FloatMatrix:
    """``vectors`` as unit-length float32 rows of shape ``(n, dim)``."""
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("vectors must be finite")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0.0).any():
        raise ValueError("vectors must be non-zero (a cosine index cannot place them)")
    unit: FloatMatrix = (matrix / norms).astype(np.float32)
    return unit
