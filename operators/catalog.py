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

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from schemas.catalog import ItemRecord, parse_item


@dataclass(frozen=True)
class ItemState:
    """One item as every worker sees it."""

    item_id: str
    record: ItemRecord | None = None
    popularity: float = 0.0
    popularity_t: float = 0.0
    positives: int = 0
    feedback_events: int = 0

    @property
    def available(self) -> bool:
        """Recommendable: known to the catalog and not withdrawn."""
        return self.record is not None and self.record.available

    @property
    def category(self) -> str | None:
        """The catalog category, when known."""
        return self.record.category if self.record is not None else None

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
        return replace(
            self,
            popularity=decayed,
            popularity_t=new_t,
            positives=self.positives + int(positive),
            feedback_events=self.feedback_events + 1,
        )

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
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def restore(cls, data: bytes) -> ItemState:
        """The state :meth:`snapshot` wrote."""
        raw = json.loads(data)
        record = raw["record"]
        return cls(
            item_id=raw["item_id"],
            record=parse_item(json.dumps(record)) if record is not None else None,
            popularity=raw["popularity"],
            popularity_t=raw["popularity_t"],
            positives=raw["positives"],
            feedback_events=raw["feedback_events"],
        )


class Catalog:
    """Every item's state, in memory, as replicated to this worker."""

    def __init__(self) -> None:
        self._items: dict[str, ItemState] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ItemState]:
        return iter(self._items.values())

    def get(self, item_id: str) -> ItemState | None:
        """The item's state, or ``None`` when unknown."""
        return self._items.get(item_id)

    def put(self, state: ItemState) -> None:
        """Replace one item's state."""
        self._items[state.item_id] = state

    def remove(self, item_id: str) -> None:
        """Forget an item (a tombstone on the item-state topic)."""
        self._items.pop(item_id, None)

    def snapshot(self) -> bytes:
        """All items as JSON lines."""
        return b"\n".join(state.snapshot() for state in self._items.values())

    @classmethod
    def restore(cls, data: bytes) -> Catalog:
        """The catalog :meth:`snapshot` wrote."""
        catalog = cls()
        for line in data.splitlines():
            if line.strip():
                catalog.put(ItemState.restore(line))
        return catalog
