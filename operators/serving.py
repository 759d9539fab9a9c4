"""Serving a user's latest list on a given surface, Kafka-free.

A snapshot is ranked for the surface of the event that produced it
(``context.surface``). De-escalation can scope a penalty to a surface (full there, a
share of it elsewhere, see :mod:`operators.deescalation`), so the same user's list may
differ between surfaces. When a request names another surface and the user holds such
a scoped penalty, the list is ranked anew for that surface from the user's current
profile, at the user's latest event time; otherwise the stored snapshot is right for
every surface and is served as it is.

Example:
    >>> from operators.profile import UserProfile
    >>> needs_rerank(UserProfile.new("u"), ranked_for="home", wanted="search")
    False

"""

from __future__ import annotations

from datetime import datetime

from operators.catalog import Catalog
from operators.deescalation import split_key
from operators.feedback_loop import LoopConfig, rank_now
from operators.model import RankingModel
from operators.profile import UserProfile
from schemas.snapshot import Snapshot


def needs_rerank(profile: UserProfile, ranked_for: str | None, wanted: str | None) -> bool:
    """Whether the list ranked for surface ``ranked_for`` may be wrong on ``wanted``.

    Only penalties scoped to a surface make lists differ by surface; an empty surface
    means none, as in the events.
    """
    if not wanted or wanted == (ranked_for or None):
        return False
    return any(split_key(key)[1] is not None for key in profile.penalties)


def rank_for_surface(
    snapshot: Snapshot,
    profile: UserProfile,
    catalog: Catalog,
    config: LoopConfig,
    surface: str,
    generated_at: datetime,
    model: RankingModel | None = None,
) -> Snapshot:
    """The snapshot with its list ranked anew for ``surface`` (same version and event).

    Args:
        snapshot: the user's latest snapshot (its notice and prompt are kept).
        profile: the user's current profile.
        catalog: every item this worker knows.
        config: the loop's rules and weights.
        surface: where the list will be shown.
        generated_at: wall-clock time of the new list (the injected clock).
        model: the worker's online ranking model, if it has one.

    """
    _, items = rank_now(profile, catalog, config, generated_at, model, surface)
    return snapshot.model_copy(update={"items": items, "generated_at": generated_at})
