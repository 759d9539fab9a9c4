"""Simulated users for the closed-loop demo: hidden tastes that drift, position bias.

Each user has a hidden taste: a liking per category (two favourites, one category they
dislike, a little for the rest) and a few favourite creators; how much they like an item
is that taste scaled by the item's hidden quality (:class:`~operators.synthetic.LongTailCatalog`).
Shown a list, a user looks at each slot with a probability that falls with its position,
clicks what they looked at with the probability that they like it (then dwells in
proportion to how much, and now and then rates it), skips some of what they passed over,
and marks an item far from their taste "not relevant" (with a reason), again and again
while such items keep coming. At a scheduled round some users' favourites move to other
categories (the old ones now tire them): the drift the loop must recover from.

Everything here is Kafka-free and deterministic: randomness comes from generators seeded
per user, event time from an injected :class:`SessionClock`. Because the simulator knows
the hidden tastes it can also say what click-through rate any list *should* get, which
gives low-noise curves and honest baselines: a random list, the best list no
personalisation can beat (the items all users like most on average: popularity with
perfect knowledge) and the best list possible.

Example:
    >>> from datetime import UTC, datetime
    >>> sim = Simulation.generate(seed=1, n_users=2, n_items=40, n_categories=6,
    ...                           clock=SessionClock(datetime(2026, 1, 1, tzinfo=UTC)))
    >>> sim.hello("user-0000").type
    'preference'
    >>> 0.0 <= sim.expected_ctr("user-0000", ["item-00000", "item-00001"]) <= 1.0
    True

"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.synthetic import LongTailCatalog
from schemas.events import (
    Click,
    Context,
    Dwell,
    Event,
    Impression,
    NotRelevant,
    NotRelevantReason,
    Preference,
    Rating,
    Skip,
)
from schemas.snapshot import Snapshot

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SimParams:
    """How simulated users behave."""

    #: slot ``n`` (from 0) is looked at with probability ``(1 + n) ** -position_decay``
    position_decay: float = 0.7
    #: favourite categories per user (liking 1.0 for the first, 0.7 for the others)
    favourites: int = 2
    #: favourite creators per user (within their favourite categories)
    favourite_creators: int = 2
    #: liking added for an item by a favourite creator
    creator_bonus: float = 0.2
    #: liking of the categories that are neither favourite nor disliked: uniform in this range
    other_taste: tuple[float, float] = (0.05, 0.2)
    #: a category liked below this is "far from taste": its items get marked not relevant
    far_taste: float = 0.05
    #: chance of marking a far item that was looked at and not clicked "not relevant"
    not_relevant_p: float = 0.6
    #: at most this many "not relevant" per visit
    max_not_relevant: int = 1
    #: chance of skipping an item looked at and not clicked (not far from taste)
    skip_p: float = 0.25
    #: at most this many skips per visit (3 in a row would be a frustration streak)
    max_skips: int = 2
    #: chance of rating an item after clicking it
    rating_p: float = 0.15
    #: chance of answering a prompt that offers to pause a category far from taste
    answer_prompt_p: float = 0.7
    #: share of users whose taste drifts at the drift round
    drift_share: float = 0.5
    #: where the lists are shown (``context.surface``)
    surface: str = "home"

    def examination(self, n: int) -> Array:
        """The probability that each of ``n`` slots is looked at, top first."""
        return np.power(np.arange(1, n + 1, dtype=np.float64), -self.position_decay)


@dataclass(frozen=True)
class SessionClock:
    """Event time of the simulated sessions: one per round, ``gap`` apart, from ``start``.

    Example:
        >>> from datetime import UTC, datetime
        >>> clock = SessionClock(datetime(2026, 1, 1, tzinfo=UTC), timedelta(hours=1))
        >>> clock.at(2, step=5).isoformat()
        '2026-01-01T02:00:05+00:00'

    """

    start: datetime
    gap: timedelta = timedelta(hours=1)

    def at(self, round_no: int, step: int = 0) -> datetime:
        """When event ``step`` (seconds into the session) of round ``round_no`` happens."""
        return self.start + self.gap * round_no + timedelta(seconds=step)


@dataclass(frozen=True)
class Taste:
    """A hidden taste: liking per category (by index, 0 to 1) and favourite creators."""

    categories: tuple[float, ...]
    creators: frozenset[str]

    def favourites(self, threshold: float = 0.5) -> tuple[int, ...]:
        """The categories liked at least ``threshold``, most liked first."""
        order = sorted(range(len(self.categories)), key=lambda c: -self.categories[c])
        return tuple(c for c in order if self.categories[c] >= threshold)


@dataclass(frozen=True)
class Visit:
    """One user's turn: the list they were shown, what they did, and what it was worth."""

    user_id: str
    #: 1 for the first list a user acts on
    round: int
    #: the user's taste has drifted (at this round or before)
    drifted: bool
    #: the user is one whose taste drifts in this run (before, at or after this round)
    drifts: bool
    events: tuple[Event, ...]
    impressions: int
    clicks: int
    #: the click-through rate this list should get from this user (their hidden taste)
    expected_ctr: float
    #: the same for the lists a baseline would have shown this user at this moment
    popularity_ctr: float
    random_ctr: float
    oracle_ctr: float
    #: share of the list far from the user's taste (what they mark not relevant)
    far_share: float
    #: (category, its share in this list) for each item marked not relevant
    not_relevant: tuple[tuple[str, float], ...] = ()
    #: (category, its share in this list) for each category marked not relevant last visit
    after_not_relevant: tuple[tuple[str, float], ...] = ()
    notice: bool = False
    prompt: bool = False
    answered_prompt: bool = False


class SimulatedUser:
    """One user: hidden taste (and the taste it drifts to), own generator, what they consumed.

    Args:
        user_id: the user's id.
        taste: the taste before any drift.
        rng: this user's generator (seeded per user, so users never share a stream).
        drifts_to: the taste from the drift round on, ``None`` for a user who keeps theirs.

    """

    def __init__(
        self, user_id: str, taste: Taste, rng: np.random.Generator, drifts_to: Taste | None = None
    ) -> None:
        self.user_id = user_id
        self.taste = taste
        self.rng = rng
        self.drifts_to = drifts_to
        self.drifted = False
        self.rounds = 0
        self.consumed: set[int] = set()
        self.last_not_relevant: tuple[str, ...] = ()

    def drift(self) -> None:
        """Switch to the drifted taste (no-op for a user who does not drift)."""
        if self.drifts_to is not None and not self.drifted:
            self.taste = self.drifts_to
            self.drifted = True


class Simulation:
    """The simulated world: a catalog, users with hidden tastes, a clock and a drift plan.

    Args:
        catalog: the catalog (its hidden quality drives how much users like items).
        users: the users, each with its own generator.
        clock: event time of each round's session.
        params: how users behave.
        drift_round: the round from which drifting users have their new taste (``None``:
            no drift).

    """

    def __init__(
        self,
        catalog: LongTailCatalog,
        users: Sequence[SimulatedUser],
        clock: SessionClock,
        params: SimParams | None = None,
        drift_round: int | None = None,
    ) -> None:
        self.catalog = catalog
        self.users = {user.user_id: user for user in users}
        self.clock = clock
        self.params = params or SimParams()
        self.drift_round = drift_round
        self._index = {item.item_id: n for n, item in enumerate(catalog.items)}
        self._category = np.array([catalog.categories.index(i.category) for i in catalog.items])
        self._creator = [item.creator or "" for item in catalog.items]
        self._quality = np.asarray(catalog.quality, dtype=np.float64)
        #: clicks per item so far, over all users
        self.clicks = np.zeros(len(catalog.items), dtype=np.int64)
        self._appeal: Array | None = None  # mean liking over all users, until a drift

    @classmethod
    def generate(
        cls,
        seed: int,
        n_users: int,
        n_items: int,
        clock: SessionClock,
        n_categories: int = 8,
        drift_round: int | None = None,
        params: SimParams | None = None,
    ) -> Simulation:
        """A world from one seed: the same seed gives the same catalog, users and choices.

        Raises:
            ValueError: the sizes cannot make a world (too few categories for two
                favourites, a disliked one and somewhere to drift to).

        """
        params = params or SimParams()
        if n_users < 1:
            raise ValueError(f"n_users must be at least 1, not {n_users}")
        if n_categories < 2 * params.favourites + 1:
            raise ValueError(
                f"n_categories must be at least {2 * params.favourites + 1} "
                f"(favourites, somewhere to drift to, and a disliked one), not {n_categories}"
            )
        catalog = LongTailCatalog.generate(seed, n_items, n_categories, created_before=clock.start)
        plan = np.random.default_rng([seed, 0xD1F7])
        drifting = set(
            plan.permutation(n_users)[: round(n_users * params.drift_share)].tolist()
            if drift_round is not None
            else []
        )
        users = []
        for n in range(n_users):
            rng = np.random.default_rng([seed, 0x05E2, n])
            taste, drifted = _tastes(rng, catalog, params, drifts=n in drifting)
            users.append(SimulatedUser(f"user-{n:04d}", taste, rng, drifted))
        return cls(catalog, users, clock, params, drift_round)

    # -- what users like ------------------------------------------------------------

    def liking(self, user_id: str) -> Array:
        """How likely the user is to click each catalog item once they look at it."""
        user = self.users[user_id]
        taste = np.asarray(user.taste.categories, dtype=np.float64)[self._category]
        bonus = np.array(
            [self.params.creator_bonus if c in user.taste.creators else 0.0 for c in self._creator]
        )
        bonus[taste < self.params.far_taste] = 0.0
        liking: Array = np.clip(taste * (0.3 + 0.7 * self._quality) + bonus, 0.0, 0.95)
        return liking

    def expected_ctr(self, user_id: str, item_ids: Sequence[str]) -> float:
        """The click-through rate the user would give this list (clicks per item shown)."""
        if not item_ids:
            return 0.0
        liking = self.liking(user_id)
        values = np.array([liking[self._index[i]] if i in self._index else 0.0 for i in item_ids])
        return float(values @ self.params.examination(len(item_ids)) / len(item_ids))

    def appeal(self) -> Array:
        """Each item's liking averaged over all users: what perfect popularity ranks by."""
        if self._appeal is None:
            self._appeal = np.mean([self.liking(u) for u in self.users], axis=0)
        return self._appeal

    def baselines(self, user_id: str, k: int) -> tuple[float, float, float]:
        """Expected CTR of a popularity list, a random list and the best list, for this user.

        The popularity list holds the items all users like most on average (known
        exactly, so no popularity recommender could do better); all three leave out
        what the user consumed, as recloop does.
        """
        user = self.users[user_id]
        liking = self.liking(user_id)
        left = np.array([n for n in range(len(liking)) if n not in user.consumed], dtype=np.int64)
        k = min(k, len(left))
        if k == 0:
            return 0.0, 0.0, 0.0
        exam = self.params.examination(k)
        popular = left[np.lexsort((left, -self.appeal()[left]))[:k]]
        best = np.sort(liking[left])[::-1][:k]
        random_ctr = float(exam.mean() * liking[left].mean())
        return float(liking[popular] @ exam / k), random_ctr, float(best @ exam / k)

    # -- what users do --------------------------------------------------------------

    def hello(self, user_id: str) -> Event:
        """The event a user opens the app with: asks for their first list, teaches nothing."""
        return Preference(
            type="preference",
            event_id=f"{user_id}-r000-00",
            user_id=user_id,
            action="prompts_on",
            timestamp=self.clock.at(0),
            context=Context(surface=self.params.surface, session_id=f"{user_id}-s000"),
        )

    def visit(self, user_id: str, snapshot: Snapshot) -> Visit:
        """The user acts on ``snapshot`` (the newest they received); returns their events.

        In order: an impression of the whole list, then clicks (each followed by a dwell,
        sometimes a rating) and skips slot by slot, then at most ``max_not_relevant``
        "not relevant", then an answer to the snapshot's prompt when it offers to pause a
        category far from their taste. The last event's snapshot is the next list.
        """
        user = self.users[user_id]
        user.rounds += 1
        if self.drift_round is not None and user.rounds >= self.drift_round and not user.drifted:
            user.drift()
            self._appeal = None
        shown = [item.item_id for item in snapshot.items if item.item_id in self._index]
        k = len(shown)
        popularity_ctr, random_ctr, oracle_ctr = self.baselines(user_id, k)
        expected = self.expected_ctr(user_id, shown)
        share = Counter(self._category_of(i) for i in shown)
        far = [self._far(user, i) for i in shown]
        after = tuple((c, share[c] / k if k else 0.0) for c in user.last_not_relevant)
        session = _Session(user_id, user.rounds, f"{user_id}-v{snapshot.version}", self.clock,
                           Context(surface=self.params.surface,
                                   session_id=f"{user_id}-s{user.rounds:03d}"))  # fmt: skip
        if shown:
            session.impression(shown)
        clicks, dismissed = self._browse(user, session, shown, far)
        not_relevant: list[tuple[str, float]] = []
        for slot in dismissed[: self.params.max_not_relevant]:
            category = self._category_of(shown[slot])
            # several of a kind the user cannot stand: "too many of these"
            session.not_relevant(shown[slot], slot, too_many=share[category] >= 3)
            not_relevant.append((category, share[category] / k))
        user.last_not_relevant = tuple(c for c, _ in not_relevant)
        answered = self._answer(user, session, snapshot)
        if not session.events:  # an empty list: ask again, so a new list comes back
            session.hello()
        return Visit(
            user_id=user_id,
            round=user.rounds,
            drifted=user.drifted,
            drifts=user.drifts_to is not None,
            events=tuple(session.events),
            impressions=k,
            clicks=clicks,
            expected_ctr=expected,
            popularity_ctr=popularity_ctr,
            random_ctr=random_ctr,
            oracle_ctr=oracle_ctr,
            far_share=sum(far) / k if k else 0.0,
            not_relevant=tuple(not_relevant),
            after_not_relevant=after,
            notice=snapshot.notice is not None,
            prompt=snapshot.prompt is not None,
            answered_prompt=answered,
        )

    def _category_of(self, item_id: str) -> str:
        return self.catalog.categories[int(self._category[self._index[item_id]])]

    def _far(self, user: SimulatedUser, item_id: str) -> bool:
        taste = user.taste.categories[int(self._category[self._index[item_id]])]
        return taste < self.params.far_taste

    def _browse(
        self, user: SimulatedUser, session: _Session, shown: list[str], far: list[bool]
    ) -> tuple[int, list[int]]:
        """Slot by slot: look or not, then click (dwell, rate) or skip.

        Returns the clicks, and the far slots the user would mark not relevant.
        """
        params, rng = self.params, user.rng
        liking = self.liking(user.user_id)
        looked = rng.random(len(shown)) < params.examination(len(shown))
        draws = rng.random((len(shown), 4))
        clicks, skips = 0, 0
        dismissed: list[int] = []
        for slot, item_id in enumerate(shown):
            if not looked[slot]:
                continue
            n = self._index[item_id]
            if draws[slot, 0] < liking[n]:
                clicks += 1
                user.consumed.add(n)
                self.clicks[n] += 1
                # dwell in proportion to liking: a well-liked item is watched to the end
                duration = self.catalog.items[n].duration_ms or 600_000.0
                watched = min(1.0, max(0.02, 1.2 * liking[n] + 0.1 * (draws[slot, 1] - 0.5)))
                stars = round(min(5.0, 5.0 * liking[n] / 0.8) * 2) / 2
                rated = draws[slot, 2] < params.rating_p
                session.like(item_id, slot, round(duration * watched), stars if rated else None)
            elif far[slot]:
                if draws[slot, 3] < params.not_relevant_p:
                    dismissed.append(slot)
            elif skips < params.max_skips and draws[slot, 3] < params.skip_p:
                skips += 1
                session.skip(item_id, slot)
        return clicks, dismissed

    def _answer(self, user: SimulatedUser, session: _Session, snapshot: Snapshot) -> bool:
        """Answer the snapshot's prompt when it offers to pause a category far from taste."""
        prompt = snapshot.prompt
        if prompt is None or user.rng.random() >= self.params.answer_prompt_p:
            return False
        for choice in prompt.choices:
            category = choice.category
            if choice.action != "pause_category" or category not in self.catalog.categories:
                continue
            assert category is not None
            taste = user.taste.categories[self.catalog.categories.index(category)]
            if taste < self.params.far_taste:
                session.pause(category, prompt.prompt_id)
                return True
        return False


class _Session:
    """The events of one visit, with their ids, event times and context."""

    def __init__(
        self, user_id: str, round_no: int, recommendation: str, clock: SessionClock,
        context: Context,
    ) -> None:  # fmt: skip
        self.user_id = user_id
        self.round_no = round_no
        self.recommendation = recommendation
        self.clock = clock
        self.context = context
        self.events: list[Event] = []

    def _next(self) -> dict[str, Any]:
        step = len(self.events)
        return {
            "event_id": f"{self.user_id}-r{self.round_no:03d}-{step:02d}",
            "user_id": self.user_id,
            "timestamp": self.clock.at(self.round_no, step),
            "context": self.context,
        }

    def _about(self, item_id: str, slot: int) -> dict[str, Any]:
        return {"item_id": item_id, "position": slot, "recommendation_id": self.recommendation}

    def impression(self, shown: list[str]) -> None:
        """The whole list was shown."""
        self.events.append(
            Impression(
                type="impression",
                item_ids=shown,
                recommendation_id=self.recommendation,
                **self._next(),
            )
        )

    def like(self, item_id: str, slot: int, dwell_ms: float, stars: float | None) -> None:
        """A click, the dwell that followed, and a rating when given."""
        about = self._about(item_id, slot)
        self.events.append(Click(type="click", **self._next(), **about))
        self.events.append(Dwell(type="dwell", dwell_ms=dwell_ms, **self._next(), **about))
        if stars is not None:
            self.events.append(Rating(type="rating", value=stars, **self._next(), **about))

    def skip(self, item_id: str, slot: int) -> None:
        """Passed over."""
        self.events.append(Skip(type="skip", **self._next(), **self._about(item_id, slot)))

    def not_relevant(self, item_id: str, slot: int, too_many: bool) -> None:
        """Marked not relevant, with the reason."""
        reason: NotRelevantReason = "too_many_of_these" if too_many else "not_interested"
        self.events.append(NotRelevant(type="not_relevant", reason=reason, **self._next(),
                                       **self._about(item_id, slot)))  # fmt: skip

    def pause(self, category: str, prompt_id: str) -> None:
        """The answer to a prompt: pause a category."""
        self.events.append(
            Preference(
                type="preference",
                action="pause_category",
                category=category,
                prompt_id=prompt_id,
                **self._next(),
            )
        )

    def hello(self) -> None:
        """Ask for a list without saying anything about items."""
        self.events.append(Preference(type="preference", action="prompts_on", **self._next()))


def _tastes(
    rng: np.random.Generator, catalog: LongTailCatalog, params: SimParams, drifts: bool
) -> tuple[Taste, Taste | None]:
    """A user's taste, and the one it drifts to (``None`` when it does not drift)."""
    n = len(catalog.categories)
    order = [int(c) for c in rng.permutation(n)]
    favourites, disliked = order[: params.favourites], order[params.favourites]
    low, high = params.other_taste
    base = rng.uniform(low, high, n)
    base[disliked] = 0.0

    def taste_for(liked: Sequence[int], tired: Sequence[int] = ()) -> Taste:
        values = base.copy()
        for rank, c in enumerate(liked):
            values[c] = 1.0 if rank == 0 else 0.7
        for c in tired:  # the old favourites: had enough of them
            values[c] = float(rng.uniform(0.0, params.far_taste * 0.8))
        names = {catalog.categories[c] for c in liked}
        makers = sorted({i.creator or "" for i in catalog.items if i.category in names} - {""})
        count = min(params.favourite_creators, len(makers))
        chosen: list[int] = rng.choice(len(makers), size=count, replace=False).tolist()
        return Taste(tuple(float(v) for v in values), frozenset(makers[int(i)] for i in chosen))

    before = taste_for(favourites)
    if not drifts:
        return before, None
    # the new favourites come from the categories in between: neither loved nor disliked
    new = order[params.favourites + 1 : 2 * params.favourites + 1]
    return before, taste_for(new, tired=favourites)


# -- figures --------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class Scoreboard:
    """Collects every :class:`Visit` and turns them into the demo's figures."""

    drift_round: int | None = None
    visits: list[Visit] = field(default_factory=list)

    def add(self, visit: Visit) -> None:
        """Count one visit."""
        self.visits.append(visit)

    @property
    def clicks(self) -> int:
        """Clicks so far."""
        return sum(v.clicks for v in self.visits)

    @property
    def impressions(self) -> int:
        """Items shown so far."""
        return sum(v.impressions for v in self.visits)

    def by_round(self) -> list[dict[str, Any]]:
        """Per round: observed CTR, its expected value, the baselines', and more."""
        rounds: dict[int, list[Visit]] = defaultdict(list)
        for visit in self.visits:
            rounds[visit.round].append(visit)
        rows = []
        for number in sorted(rounds):
            visits = rounds[number]
            shown = sum(v.impressions for v in visits) or 1

            def weighted(name: str, group: Sequence[Visit]) -> float | None:
                total = sum(v.impressions for v in group)
                if not total:
                    return None
                return sum(float(getattr(v, name)) * v.impressions for v in group) / total

            drifting = [v for v in visits if v.drifts]
            staying = [v for v in visits if not v.drifts]
            rows.append({
                "round": number,
                "users": len(visits),
                "impressions": sum(v.impressions for v in visits),
                "clicks": sum(v.clicks for v in visits),
                "ctr": sum(v.clicks for v in visits) / shown,
                "expected_ctr": weighted("expected_ctr", visits),
                "popularity_ctr": weighted("popularity_ctr", visits),
                "random_ctr": weighted("random_ctr", visits),
                "oracle_ctr": weighted("oracle_ctr", visits),
                "drifting_expected_ctr": weighted("expected_ctr", drifting),
                "drifting_popularity_ctr": weighted("popularity_ctr", drifting),
                "staying_expected_ctr": weighted("expected_ctr", staying),
                "far_share": weighted("far_share", visits),
                "not_relevant": sum(len(v.not_relevant) for v in visits),
                "notices": sum(v.notice for v in visits),
                "prompts": sum(v.prompt for v in visits),
                "events": sum(len(v.events) for v in visits),
            })  # fmt: skip
        return rows

    def deescalation(self) -> dict[str, Any]:
        """Not-relevant marks and what they changed: the category's share before and after.

        ``share_before``: the marked category's share of the list the user marked it in;
        ``share_after``: its share of the user's next list (pairs with a next list only).
        """
        before_shares: list[float] = []
        after_shares: list[float] = []
        by_user: dict[str, list[Visit]] = defaultdict(list)
        for visit in self.visits:
            by_user[visit.user_id].append(visit)
        for visits in by_user.values():
            visits.sort(key=lambda v: v.round)
            for visit, following in itertools.pairwise(visits):
                for (_, share), (_, later) in zip(
                    visit.not_relevant, following.after_not_relevant, strict=False
                ):
                    before_shares.append(share)
                    after_shares.append(later)
        reasons: Counter[str] = Counter()
        for visit in self.visits:
            for event in visit.events:
                if isinstance(event, NotRelevant):
                    reasons[event.reason or "none"] += 1
        rows = self.by_round()
        drift = self.drift_round
        before = [r for r in rows if drift is None or r["round"] < drift]
        after = [r for r in rows if drift is not None and r["round"] >= drift]
        return {
            "not_relevant": sum(len(v.not_relevant) for v in self.visits),
            "reasons": dict(sorted(reasons.items())),
            "pairs": len(before_shares),
            "share_before": _mean(before_shares),
            "share_after": _mean(after_shares),
            "notices_seen": sum(v.notice for v in self.visits),
            "prompts_seen": sum(v.prompt for v in self.visits),
            "prompts_answered": sum(v.answered_prompt for v in self.visits),
            # share of the lists far from the users' tastes: it falls as the loop hears
            # "not relevant", jumps at the drift (old favourites became far), falls again
            "far_share_first_round": rows[0]["far_share"] if rows else None,
            "far_share_before_drift": before[-1]["far_share"] if before else None,
            "far_share_at_drift": after[0]["far_share"] if after else None,
            "far_share_end": rows[-1]["far_share"] if rows else None,
        }

    def summary(self, window: int = 3) -> dict[str, Any]:
        """CTR at the moments that tell the story: first round, before drift, dip, end.

        "Before the drift" and "end" average the per-round expected CTR over the last
        ``window`` rounds before the drift and of the run (the observed CTR is in
        :meth:`by_round`); the dip is the drift round itself. The drifting users' own
        curve says whether the loop recovered after their tastes changed.
        """
        rows = self.by_round()
        if not rows:
            return {}

        def avg(name: str, selected: Sequence[dict[str, Any]]) -> float | None:
            return _mean([r[name] for r in selected if r[name] is not None])

        drift = self.drift_round
        before = [r for r in rows if drift is None or r["round"] < drift][-window:]
        end = rows[-window:]
        figures: dict[str, Any] = {
            "first_round": rows[0]["expected_ctr"],
            "first_round_observed": rows[0]["ctr"],
            "before_drift": avg("expected_ctr", before),
            "before_drift_observed": avg("ctr", before),
            "before_drift_popularity": avg("popularity_ctr", before),
            "before_drift_random": avg("random_ctr", before),
            "before_drift_oracle": avg("oracle_ctr", before),
            "end": avg("expected_ctr", end),
            "end_observed": avg("ctr", end),
            "end_popularity": avg("popularity_ctr", end),
            "end_random": avg("random_ctr", end),
            "overall_observed": self.clicks / self.impressions if self.impressions else None,
        }
        if drift is not None:
            after = [r for r in rows if r["round"] >= drift]
            dip = after[:1]  # the lists shown as tastes change, made for the old ones
            figures["drift"] = {
                "round": drift,
                "rounds_after": len(after),
                "drifting_users": len({v.user_id for v in self.visits if v.drifts}),
                "drifting_before": avg("drifting_expected_ctr", before),
                "drifting_dip": avg("drifting_expected_ctr", dip),
                "drifting_end": avg("drifting_expected_ctr", end),
                "drifting_end_popularity": avg("drifting_popularity_ctr", end),
                "staying_before": avg("staying_expected_ctr", before),
                "staying_end": avg("staying_expected_ctr", end),
            }
        return figures

    def event_counts(self) -> dict[str, int]:
        """Events sent, per type."""
        counts = Counter(event.type for visit in self.visits for event in visit.events)
        return dict(sorted(counts.items()))


def percentiles(
    values: Sequence[float], points: Sequence[float] = (50, 95, 99)
) -> dict[str, float | int]:
    """``{"p50": ..., ...}`` of ``values`` (empty: ``{}``), plus ``count`` and ``max``.

    Example:
        >>> percentiles([1.0, 2.0, 3.0, 4.0])["p50"]
        2.5

    """
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("percentiles of non-finite values")
    figures: dict[str, float | int] = {f"p{p:g}": float(np.percentile(array, p)) for p in points}
    figures["max"] = float(array.max())
    figures["mean"] = float(array.mean())
    figures["count"] = len(values)
    return figures
