"""Item and user embeddings, learned online from feedback by random indexing.

Every user and every content feature (a category, a tag, a creator) has a fixed random
*code*: a ``dim``-long vector of ``±1/sqrt(dim)`` drawn from a generator seeded by a hash
of its name, so every worker and every replay derives the same code without storing it.

* An **item's embedding** is its content prior (the sum of its features' codes and a
  smaller one of its own, scaled to ``prior_weight``, plus a random projection of the
  catalog's own ``embedding`` when the record carries one) plus its *taste*: the sum,
  over every signal users gave it, of ``target x weight x code(user)``. The taste is a
  random projection of the item's column of the user-item feedback matrix, so the cosine
  of two items' embeddings estimates the cosine of their feedback columns
  (Johnson-Lindenstrauss): items liked by the same users end up close, items one group
  likes and another skips end up apart. A new item has only its prior and starts out
  next to the other items of its category (not on them: its own code sets it a little
  apart, which the item index needs).
* A **user's embedding** is an exponential moving average of the (unit) embeddings of the
  items they gave signals to, weighted by each signal's target and weight: likes pull it
  towards an item, skips and "not relevant" push it away.

The item side is a sum, so it hardly depends on the order the item's owner receives
feedback in: every worker, and the offline replay, reach the same vectors up to the
rounding of each step to 6 decimals (which keeps the state compact).

Example:
    >>> params = EmbeddingParams(dim=8)
    >>> taste = add_taste((), "u1", 1.0, params)
    >>> len(taste), all(abs(abs(x) - 0.353553) < 1e-6 for x in taste)
    (8, True)
    >>> bool(np.array_equal(user_code("u1", params), user_code("u1", params)))
    True

"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.catalog import ItemRecord

__all__ = [
    "EmbeddingParams",
    "Vector",
    "add_taste",
    "item_embedding",
    "item_prior",
    "unit",
    "update_user_vector",
    "user_code",
]

Vector = npt.NDArray[np.float64]

#: Decimals every stored component is rounded to.
DECIMALS = 6


@dataclass(frozen=True)
class EmbeddingParams:
    """The shape of the embedding space and how fast embeddings move."""

    #: Components per vector. More gives finer similarities and bigger state.
    dim: int = 64
    #: Length of an item's content prior (one like adds about ``0.75`` of taste).
    prior_weight: float = 2.0
    #: Weight of the tags and the creator in the prior, relative to the category.
    feature_weight: float = 0.5
    #: Weight of the item's own code in the prior, relative to the category: items with
    #: the same features start close, not at one point (an HNSW graph of many equal
    #: vectors finds their neighbours badly; docs/retrieval.md). 0: no own code.
    identity_weight: float = 0.25
    #: How much of a user's embedding is kept at each new signal.
    user_decay: float = 0.9
    #: Salt of every code, so two deployments can keep unrelated spaces.
    seed: int = 0


def _draw_code(kind: str, name: str, dim: int, seed: int) -> Vector:
    digest = hashlib.blake2b(f"{seed}\x1f{kind}\x1f{name}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    code = (rng.integers(0, 2, dim) * 2 - 1) / math.sqrt(dim)
    code.setflags(write=False)
    return code


#: The codes of users and features, each used again and again (64-d codes: about 40 MB
#: when full). An item's own code is drawn once per prior, which the catalog keeps.
_code = functools.lru_cache(maxsize=65_536)(_draw_code)


def user_code(user_id: str, params: EmbeddingParams) -> Vector:
    """The user's fixed random code (read-only)."""
    return _code("user", user_id, params.dim, params.seed)


@functools.lru_cache(maxsize=64)
def _projection(source_dim: int, dim: int, seed: int) -> Vector:
    rng = np.random.default_rng([seed, source_dim, dim])
    matrix = rng.standard_normal((source_dim, dim)) / math.sqrt(dim)
    matrix.setflags(write=False)
    return matrix


#: Norms np.linalg.norm computes to full precision: it sums squares, which overflow to
#: inf from components of about 1e154 and turn subnormal (then 0) below about 1e-154.
_EXACT_NORMS = (1e-140, 1e140)


def _with_norm(vector: Vector) -> tuple[Vector, float]:
    """``vector``, or the same direction rescaled so its norm is exact, and that norm.

    Only a direction matters to the callers, so a vector whose norm would overflow or
    underflow is first divided by its largest component; any other vector (and a zero
    or non-finite one) is returned as it is, so its results do not change by a bit.
    """
    with np.errstate(over="ignore"):  # an overflow is what the rescaling below is for
        norm = float(np.linalg.norm(vector))
    if _EXACT_NORMS[0] <= norm <= _EXACT_NORMS[1]:
        return vector, norm
    largest = float(np.max(np.abs(vector), initial=0.0))
    if largest == 0.0 or not math.isfinite(largest):
        return vector, norm
    rescaled = vector / largest
    return rescaled, float(np.linalg.norm(rescaled))


def _scaled(vector: Vector, length: float) -> Vector:
    base, norm = _with_norm(vector)
    return base * (length / norm) if norm > 0 else vector


def item_prior(record: ItemRecord | None, params: EmbeddingParams) -> Vector:
    """Where an item starts before any feedback: next to its category, tags and creator.

    The item's own code, at ``identity_weight``, keeps two items with the same features
    apart (at the default 0.25, their cosine is about 0.94). A record that carries its
    own ``embedding`` (any length) adds a fixed random projection of it, so items that
    are close in that space start close here too.
    """
    prior = np.zeros(params.dim)
    if record is None:
        return prior
    prior += _code("category", record.category, params.dim, params.seed)
    for tag in record.tags:
        prior += params.feature_weight * _code("tag", tag, params.dim, params.seed)
    if record.creator is not None:
        prior += params.feature_weight * _code("creator", record.creator, params.dim, params.seed)
    if params.identity_weight:
        prior += params.identity_weight * _draw_code(
            "item", record.item_id, params.dim, params.seed
        )
    prior = _scaled(prior, 1.0)
    if record.embedding:
        # rescaled first, or components near the float limit overflow in the projection
        content, _ = _with_norm(np.asarray(record.embedding, dtype=np.float64))
        projected = content @ _projection(len(content), params.dim, params.seed)
        prior = _scaled(prior + _scaled(projected, 1.0), 1.0)
    return _scaled(prior, params.prior_weight)


def add_taste(
    taste: Sequence[float], user_id: str, strength: float, params: EmbeddingParams
) -> tuple[float, ...]:
    """An item's taste after one signal of ``strength`` (target x weight) from ``user_id``.

    A taste of another dimension (the setting changed) starts again from zero.
    """
    base = np.asarray(taste, dtype=np.float64) if len(taste) == params.dim else 0.0
    updated = np.round(base + strength * user_code(user_id, params), DECIMALS)
    return tuple(updated.tolist())


def item_embedding(
    record: ItemRecord | None,
    taste: Sequence[float],
    params: EmbeddingParams,
    prior: Vector | None = None,
) -> Vector:
    """The item's embedding: its content prior plus its taste.

    ``prior``: :func:`item_prior` of ``record``, when the caller keeps it.
    """
    if prior is None:
        prior = item_prior(record, params)
    if len(taste) == params.dim:
        return prior + np.asarray(taste, dtype=np.float64)
    return prior


def unit(vector: Vector) -> Vector | None:
    """The vector scaled to length 1, or ``None`` for a zero (or non-finite) vector.

    For the vectors recloop makes (priors, tastes, user vectors: all of moderate length);
    on the hot path, so without :func:`_with_norm`'s guard, which costs half as much again.
    """
    norm = float(np.linalg.norm(vector))
    if norm == 0.0 or not math.isfinite(norm):
        return None
    return vector / norm


def update_user_vector(
    vector: Sequence[float],
    item_unit: Vector,
    strength: float,
    params: EmbeddingParams,
    decay: bool = True,
) -> tuple[float, ...]:
    """The user's embedding after a signal of ``strength`` about an item (unit vector).

    ``decay``: whether the signal also fades what the embedding held (``user_decay``);
    an item only shown adds its weak push without it.
    """
    base = np.asarray(vector, dtype=np.float64) if len(vector) == params.dim else 0.0
    kept = params.user_decay * base if decay else base
    updated = np.round(kept + strength * item_unit, DECIMALS)
    return tuple(updated.tolist())
