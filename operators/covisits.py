"""An item's co-visit counts: an immutable mapping kept as arrays, grown without copying ids.

Every like sends a co-visit record to each of the user's recent likes, so an item's
neighbour map is rebuilt a few times per like and read by every ranking that has the
item among the user's recent likes (:func:`operators.ranking._covisit_scores` sums
hundreds of counts at once). A dict made each new state copy every entry and each
ranking read the counts out of it again. :class:`CoVisits` keeps the ids in one list
shared by an item's successive states (a new state only appends to it) and the counts in
a read-only NumPy array per state, so a state's counts are an array already and a
catalog can keep the rows of the ids it has looked up, extending them as the list grows.

Example:
    >>> visits = CoVisits.of({"a": 2.0}).plus(["b", "a"], 1.0)
    >>> dict(visits), visits.get("c")
    ({'a': 3.0, 'b': 1.0}, None)

"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt

Counts = npt.NDArray[np.float64]


class _Ids:
    """Neighbour ids in the order they came, shared by the successive states of one item.

    Append-only: a state reads the first ``size`` ids, its own. Only the state that reads
    them all (the newest) may append; another forks a copy of its part.
    """

    __slots__ = ("ids", "lock", "positions")

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.positions = {item_id: n for n, item_id in enumerate(ids)}
        self.lock = threading.Lock()


class CoVisits(Mapping[str, float]):
    """Neighbour id -> co-visit count, in the order the neighbours first came (read-only).

    Compares, iterates and converts like the dict it stands for; :meth:`plus` and
    :meth:`strongest` make new ones.
    """

    __slots__ = ("_ids", "_size", "counts")

    def __init__(self, ids: _Ids, size: int, counts: Counts) -> None:
        counts.setflags(write=False)
        self._ids = ids
        self._size = size
        #: the counts, in the order of the ids (read-only)
        self.counts = counts

    @classmethod
    def of(cls, mapping: Mapping[str, float]) -> CoVisits:
        """The counts of ``mapping``, in its order (itself when it is one already)."""
        if isinstance(mapping, CoVisits):
            return mapping
        ids = list(mapping)
        return cls(_Ids(ids), len(ids), np.fromiter(mapping.values(), np.float64, len(ids)))

    @property
    def shared(self) -> object:
        """What stays the same while an item's states only add neighbours (see :meth:`ids`)."""
        return self._ids

    def ids(self) -> list[str]:
        """The neighbour ids, in order: a prefix of a longer list when :attr:`shared` is."""
        return self._ids.ids[: self._size]

    def _position(self, item_id: object) -> int | None:
        """Where ``item_id`` is in this state's ids (``None``: no neighbour of this state)."""
        position = self._ids.positions.get(item_id) if isinstance(item_id, str) else None
        return position if position is not None and position < self._size else None

    def __getitem__(self, item_id: str) -> float:
        position = self._position(item_id)
        if position is None:
            raise KeyError(item_id)
        return float(self.counts[position])

    def get(self, item_id: str, default: Any = None) -> Any:
        """The count of ``item_id``, ``default`` when it is no neighbour."""
        position = self._position(item_id)
        return default if position is None else float(self.counts[position])

    def __contains__(self, item_id: object) -> bool:
        return self._position(item_id) is not None

    def __iter__(self) -> Iterator[str]:
        return islice(self._ids.ids, self._size)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"CoVisits({dict(self)!r})"

    def __reduce__(self) -> tuple[Any, tuple[dict[str, float]]]:
        # the shared ids carry a lock, which does not pickle: go through a plain dict
        return (CoVisits.of, (self.as_dict(),))

    def as_dict(self) -> dict[str, float]:
        """The counts as a plain dict (for JSON)."""
        return dict(zip(self.ids(), self.counts.tolist(), strict=True))

    def plus(self, item_ids: Sequence[str], weight: float) -> CoVisits:
        """These counts with ``weight`` added for each id (in turn; new ids at the end)."""
        shared = self._ids
        if len(item_ids) == 1:  # a co-visit record (most): to a neighbour it has, no ids added
            position = self._position(item_ids[0])
            if position is not None:
                counts = self.counts.copy()
                counts[position] += weight
                return CoVisits(shared, self._size, counts)
        with shared.lock:
            if len(shared.ids) != self._size:  # a newer state appended: fork this part
                shared = _Ids(shared.ids[: self._size])
            ids, positions = shared.ids, shared.positions
            at: list[int] = []
            for item_id in item_ids:
                position = positions.get(item_id)
                if position is None:
                    position = positions[item_id] = len(ids)
                    ids.append(item_id)
                at.append(position)
            size = len(ids)
        counts = (
            self.counts.copy()
            if size == self._size
            else np.concatenate((self.counts, np.zeros(size - self._size)))
        )
        if len(at) == 1:
            counts[at[0]] += weight
        else:
            np.add.at(counts, at, weight)  # in turn, as a loop would add them
        return CoVisits(shared, size, counts)

    def strongest(self, n: int) -> CoVisits:
        """The ``n`` highest counts, highest first; equal counts in the order they came.

        The order ``heapq.nlargest`` gives (the first ``n`` of a stable sort, descending).
        """
        order = np.argsort(-self.counts, kind="stable")[:n]
        ids = self._ids.ids
        return CoVisits(_Ids([ids[p] for p in order.tolist()]), len(order), self.counts[order])
