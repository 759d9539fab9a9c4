"""CoVisits: the co-visit counts an item state keeps, against the dict they stand for."""

from __future__ import annotations

import heapq
import pickle
import random

import numpy as np
import pytest

from operators.covisits import CoVisits


def _dict_plus(counts: dict[str, float], ids: list[str], weight: float) -> dict[str, float]:
    """What the counts were before they were arrays: a copied dict, added in turn."""
    grown = dict(counts)
    for item_id in ids:
        grown[item_id] = grown.get(item_id, 0.0) + weight
    return grown


def test_it_reads_and_compares_as_the_dict_it_stands_for() -> None:
    expected = {"a": 2.0, "b": 1.0}
    visits = CoVisits.of(expected)
    assert visits == expected and expected == visits  # either way round
    assert list(visits) == ["a", "b"] and len(visits) == 2
    assert visits["a"] == 2.0 and visits.get("z", 0.0) == 0.0 and "b" in visits
    with pytest.raises(KeyError):
        visits["z"]
    assert visits.as_dict() == {"a": 2.0, "b": 1.0}
    assert CoVisits.of(visits) is visits
    with pytest.raises(ValueError):
        visits.counts[0] = 5.0  # read-only: states share nothing writable


def test_adding_counts_repeats_in_turn_and_appends_new_ids_in_order() -> None:
    visits = CoVisits.of({"a": 1.0}).plus(["b", "a", "c", "b"], 1.0)
    assert list(visits.items()) == [("a", 2.0), ("b", 2.0), ("c", 1.0)]


def test_an_older_state_never_sees_what_a_newer_one_added() -> None:
    old = CoVisits.of({"a": 1.0})
    new = old.plus(["b"], 1.0)
    assert new.shared is old.shared  # the ids were appended to, not copied
    assert dict(old) == {"a": 1.0} and "b" not in old and old.get("b") is None
    assert len(old) == 1 and list(old) == ["a"]
    # growing the older one again forks its part: both lines keep their own ids
    other = old.plus(["c"], 2.0)
    assert other.shared is not old.shared
    assert dict(other) == {"a": 1.0, "c": 2.0} and dict(new) == {"a": 1.0, "b": 1.0}
    assert dict(new.plus(["c"], 1.0)) == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_random_growth_and_pruning_match_the_dict_and_nlargest() -> None:
    rng = random.Random(7)
    as_dict: dict[str, float] = {}
    visits = CoVisits.of({})
    states = []
    for _ in range(2_000):
        ids = [f"i{rng.randrange(60)}" for _ in range(rng.choice([1, 1, 1, 3, 20]))]
        weight = rng.choice([1.0, 0.5])
        if states and rng.random() < 0.1:  # an older state grows again (a fork)
            before, expected = rng.choice(states)
            assert dict(before) == expected
            assert dict(before.plus(ids, weight)) == _dict_plus(expected, ids, weight)
        as_dict = _dict_plus(as_dict, ids, weight)
        visits = visits.plus(ids, weight)
        if len(as_dict) > 30:
            as_dict = dict(heapq.nlargest(25, as_dict.items(), key=lambda kv: kv[1]))
            visits = visits.strongest(25)
        assert list(visits.items()) == list(as_dict.items())  # the order too
        states.append((visits, dict(as_dict)))
    for visits, expected in states[::97]:
        assert list(visits.items()) == list(expected.items())
        assert visits.counts.tolist() == list(expected.values())


def test_it_pickles_as_its_counts() -> None:
    visits = CoVisits.of({"a": 1.0}).plus(["b"], 2.0)
    restored = pickle.loads(pickle.dumps(visits))
    assert isinstance(restored, CoVisits) and list(restored.items()) == [("a", 1.0), ("b", 2.0)]
    assert np.array_equal(restored.counts, visits.counts)
