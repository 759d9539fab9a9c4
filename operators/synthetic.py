"""Synthetic catalogs and users with hidden tastes, generated from a seed.

Used by the demo and by the tests that must always run (no dataset needed): items belong
to categories and creators with a long-tailed appeal; each user prefers a few categories;
their events follow those tastes.

Example:
    >>> world = SyntheticWorld.generate(seed=1, n_items=30, n_users=3, n_categories=3)
    >>> len(world.items), len(world.users)
    (30, 3)

"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from schemas.catalog import ItemRecord
from schemas.events import Click, Dwell, Event, Impression, NotRelevant, Skip

CATEGORIES = (
    "drama",
    "comedy",
    "thriller",
    "documentary",
    "sci-fi",
    "romance",
    "animation",
    "horror",
    "music",
    "sports",
    "news",
    "cooking",
)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def striped_catalog(
    n_items: int,
    categories: tuple[str, ...] = ("thriller", "comedy", "drama", "documentary"),
    creators: int = 8,
    created_at: datetime = EPOCH - timedelta(days=400),
    width: int = 2,
) -> list[ItemRecord]:
    """A plain catalog in stripes: item ``n`` has category ``n mod len(categories)``.

    Its id is ``i`` + ``n`` zero-padded to ``width``, its creator ``studio-(n mod
    creators)``. The de-escalation tests and benchmark use it: a user who likes every fourth item
    likes one category, whose items are easy to count in a list.
    """
    return [
        ItemRecord(
            item_id=f"i{n:0{width}d}",
            category=categories[n % len(categories)],
            title=f"{categories[n % len(categories)]} {n}",
            creator=f"studio-{n % creators}",
            created_at=created_at,
        )
        for n in range(n_items)
    ]


@dataclass(frozen=True)
class SyntheticUser:
    """A user and the hidden taste (a probability per category) that drives their events."""

    user_id: str
    taste: dict[str, float]

    def favourite(self) -> str:
        """The category this user likes most."""
        return max(self.taste, key=lambda c: self.taste[c])


@dataclass(frozen=True)
class SyntheticWorld:
    """A catalog plus users, reproducible from its seed."""

    seed: int
    items: tuple[ItemRecord, ...]
    users: tuple[SyntheticUser, ...]

    @classmethod
    def generate(
        cls, seed: int, n_items: int = 120, n_users: int = 20, n_categories: int = 6
    ) -> SyntheticWorld:
        """Build a world: categories round-robin over items, 2 favourite categories per user."""
        rng = np.random.default_rng(seed)
        categories = CATEGORIES[:n_categories]
        items = tuple(
            ItemRecord(
                item_id=f"item-{i:05d}",
                category=categories[i % n_categories],
                creator=f"creator-{int(rng.integers(0, max(2, n_items // 8))):03d}",
                title=f"{categories[i % n_categories].title()} #{i}",
                created_at=EPOCH - timedelta(days=int(rng.integers(0, 365))),
                duration_ms=float(rng.choice([60_000.0, 300_000.0, 1_800_000.0])),
                tags=[categories[i % n_categories]],
            )
            for i in range(n_items)
        )
        users = []
        for u in range(n_users):
            liked = rng.choice(n_categories, size=min(2, n_categories), replace=False)
            taste = {c: 0.05 for c in categories}
            for index in liked:
                taste[categories[int(index)]] = 0.8
            users.append(SyntheticUser(user_id=f"user-{u:04d}", taste=taste))
        return cls(seed=seed, items=items, users=tuple(users))

    def events_for(self, user: SyntheticUser, count: int, start: datetime = EPOCH) -> list[Event]:
        """``count`` events of one user following their taste, one minute apart."""
        rng = np.random.default_rng([self.seed, int(user.user_id.split("-")[-1])])
        events: list[Event] = []
        for n in range(count):
            item = self.items[int(rng.integers(0, len(self.items)))]
            when = start + timedelta(minutes=n)
            event_id, uid, iid = f"{user.user_id}-e{n:05d}", user.user_id, item.item_id
            likes = rng.random() < user.taste[item.category]
            event: Event
            if likes and rng.random() < 0.5:
                dwell_ms = float(rng.uniform(40_000, 600_000))
                event = Dwell(
                    type="dwell",
                    event_id=event_id,
                    user_id=uid,
                    item_id=iid,
                    timestamp=when,
                    dwell_ms=dwell_ms,
                )
            elif likes:
                event = Click(
                    type="click", event_id=event_id, user_id=uid, item_id=iid, timestamp=when
                )
            elif rng.random() < 0.15:
                event = NotRelevant(
                    type="not_relevant",
                    event_id=event_id,
                    user_id=uid,
                    item_id=iid,
                    timestamp=when,
                    reason="not_interested",
                )
            else:
                event = Skip(
                    type="skip", event_id=event_id, user_id=uid, item_id=iid, timestamp=when
                )
            events.append(event)
        return events

    def impression(self, user: SyntheticUser, item_ids: list[str], n: int) -> Impression:
        """An impression event for a list the user was shown."""
        return Impression(
            type="impression",
            event_id=f"{user.user_id}-imp{n:05d}",
            user_id=user.user_id,
            item_ids=item_ids,
            timestamp=EPOCH + timedelta(minutes=n),
        )
