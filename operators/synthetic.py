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


@dataclass(frozen=True)
class LongTailCatalog:
    """A catalog shaped like real ones, with a hidden quality per item.

    Categories differ in size (a few large, several small), each creator works mostly in
    one category and a few creators make most of the items, and the hidden ``quality``
    (in ``[0, 1]``, skewed right: most items are middling, a few excellent) is what a
    simulated user's liking is scaled by, so a long tail of popularity emerges from it.

    Example:
        >>> catalog = LongTailCatalog.generate(seed=1, n_items=40, n_categories=4)
        >>> len(catalog.items), len(catalog.quality), catalog.categories[0]
        (40, 40, 'drama')

    """

    seed: int
    items: tuple[ItemRecord, ...]
    quality: tuple[float, ...]
    categories: tuple[str, ...]
    creators: tuple[str, ...]

    @classmethod
    def generate(
        cls,
        seed: int,
        n_items: int = 400,
        n_categories: int = 8,
        n_creators: int | None = None,
        created_before: datetime = EPOCH,
    ) -> LongTailCatalog:
        """Build a catalog from a seed.

        Args:
            seed: the generator's seed; the same seed gives the same catalog.
            n_items: how many items (at least ``n_categories``).
            n_categories: how many of :data:`CATEGORIES` to use (1 to 12).
            n_creators: how many creators (default: one per 8 items, at least one per
                category).
            created_before: items were created in the two years before this (a few in
                its last three weeks: fresh items).

        Raises:
            ValueError: the sizes cannot make a catalog.

        """
        if not 1 <= n_categories <= len(CATEGORIES):
            raise ValueError(f"n_categories must be 1 to {len(CATEGORIES)}, not {n_categories}")
        if n_items < n_categories:
            raise ValueError(f"n_items ({n_items}) must be at least n_categories ({n_categories})")
        creators_count = n_creators if n_creators is not None else max(n_categories, n_items // 8)
        if creators_count < n_categories:
            raise ValueError(f"n_creators must be at least n_categories ({n_categories})")
        rng = np.random.default_rng([seed, 0x10C7])
        categories = CATEGORIES[:n_categories]
        # category sizes fall off with rank (Zipf-like, exponent 0.6), at least one item each
        shares = 1.0 / np.arange(1, n_categories + 1) ** 0.6
        counts = np.maximum(1, np.floor(shares / shares.sum() * n_items)).astype(int)
        for n in range(n_items - int(counts.sum())):
            counts[n % n_categories] += 1
        while counts.sum() > n_items:  # the minimum of one each overshot a tiny catalog
            counts[int(np.argmax(counts))] -= 1
        of_item = rng.permutation(np.repeat(np.arange(n_categories), counts))
        creators = tuple(f"creator-{c:03d}" for c in range(creators_count))
        # creator c works in category c mod n_categories; within a category a few are prolific
        by_category = [list(range(c, creators_count, n_categories)) for c in range(n_categories)]
        quality = np.round(rng.beta(2.0, 5.0, n_items), 4)
        durations = (300_000.0, 1_500_000.0, 2_700_000.0, 6_000_000.0)
        items = []
        for i in range(n_items):
            category = categories[int(of_item[i])]
            pool = by_category[int(of_item[i])]
            weights = 1.0 / np.arange(1, len(pool) + 1)
            creator = creators[pool[int(rng.choice(len(pool), p=weights / weights.sum()))]]
            fresh = rng.random() < 0.05
            age_days = rng.uniform(0, 20) if fresh else rng.uniform(20, 730)
            items.append(
                ItemRecord(
                    item_id=f"item-{i:05d}",
                    category=category,
                    creator=creator,
                    title=f"{category.title()} {i}",
                    created_at=created_before - timedelta(days=float(age_days)),
                    duration_ms=float(durations[int(rng.integers(0, len(durations)))]),
                    tags=[category],
                )
            )
        return cls(
            seed=seed,
            items=tuple(items),
            quality=tuple(float(q) for q in quality),
            categories=categories,
            creators=creators,
        )
