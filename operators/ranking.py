"""The foundation ranker: popularity blended with the user's own category affinities.

Deliberately simple (the learning core replaces it), but real: it never recommends what
the user already consumed or marked not relevant, nor withdrawn items, and every item
says why it is there.

Example:
    >>> from operators.catalog import Catalog
    >>> from operators.profile import UserProfile
    >>> rank_items(UserProfile.new("u"), Catalog(), now_t=0.0, params=RankingParams())
    []

"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from operators.catalog import Catalog
from operators.profile import UserProfile
from schemas.snapshot import RankedItem

MODEL_VERSION = "popularity-affinity-1"


@dataclass(frozen=True)
class RankingParams:
    """Weights of the blend and the size of the list."""

    k: int = 10
    popularity_weight: float = 1.0
    affinity_weight: float = 2.0
    popularity_half_life_s: float = 7 * 24 * 3600.0


def _squash(value: float) -> float:
    """Map any real onto (-1, 1) so no single term runs away."""
    return value / (1.0 + abs(value))


def rank_items(
    profile: UserProfile, catalog: Catalog, now_t: float, params: RankingParams
) -> list[RankedItem]:
    """The user's top ``k`` items with scores and reasons.

    Args:
        profile: the user's state.
        catalog: every item this worker knows.
        now_t: event time in seconds, the moment popularity is decayed to.
        params: weights and ``k``.

    """
    excluded = profile.excluded()
    candidates = [s for s in catalog if s.available and s.item_id not in excluded]
    if not candidates:
        return []
    pops = {s.item_id: s.popularity_at(now_t, params.popularity_half_life_s) for s in candidates}
    top_pop = max(pops.values()) or 1.0

    def score(state_id: str, category: str | None) -> tuple[float, float, float]:
        pop = math.log1p(pops[state_id]) / math.log1p(top_pop) if top_pop > 0 else 0.0
        aff = _squash(profile.affinity.get(category, 0.0)) if category else 0.0
        total = params.popularity_weight * pop + params.affinity_weight * aff
        return total, pop, aff

    scored = []
    for state in candidates:
        total, pop, aff = score(state.item_id, state.category)
        # ties break on item id (lowest first) so every worker and the replay agree
        scored.append((total, state.item_id, pop, aff, state.category))
    best = heapq.nsmallest(params.k, scored, key=lambda row: (-row[0], row[1]))
    ranked: list[RankedItem] = []
    for total, item_id, pop, aff, category in best:
        reasons: list[str] = []
        if aff > 0:
            reasons.append(f"because you like {category}")
        if pop > 0.5:
            reasons.append(f"popular in {category}" if category else "popular")
        if not reasons:
            reasons.append("something new to try")
        ranked.append(
            RankedItem(
                item_id=item_id, score=round(float(total), 6), category=category, reasons=reasons
            )
        )
    return ranked
