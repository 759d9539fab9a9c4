"""The consumed-set filter (operators/bloom.py)."""

from __future__ import annotations

import pytest

from operators.bloom import Bloom


def test_it_never_forgets_and_rarely_invents() -> None:
    bloom = Bloom.empty(capacity=1000)
    for n in range(1000):
        bloom = bloom.add(f"item-{n}")

    assert all(f"item-{n}" in bloom for n in range(1000))
    false_positives = sum(f"other-{n}" in bloom for n in range(20_000)) / 20_000
    assert false_positives < 0.02
    assert bloom.count >= 990  # a few adds find their bits already set: not counted


@pytest.mark.parametrize(("load", "low", "high"), [(1.6, 0.06, 0.09), (2.6, 0.28, 0.36)])
def test_past_its_capacity_it_invents_as_often_as_documented(
    load: float, low: float, high: float
) -> None:
    # the module docstring and docs/architecture.md: about 7 % at 1.6x, 32 % at 2.6x
    bloom = Bloom.empty(capacity=2000)
    for n in range(int(2000 * load)):
        bloom = bloom.add(f"item-{n}")

    false_positives = sum(f"other-{n}" in bloom for n in range(20_000)) / 20_000

    assert low < false_positives < high


def test_it_is_immutable_and_round_trips() -> None:
    empty = Bloom.empty(capacity=10)
    one = empty.add("a")

    assert "a" not in empty and "a" in one
    assert one.add("a") is one
    assert Bloom.from_bytes(one.to_bytes()) == one
    assert len(one.to_bytes()) == 3 + one.m // 8


def test_bad_sizes_and_bytes_are_refused() -> None:
    with pytest.raises(ValueError):
        Bloom.empty(capacity=0)
    with pytest.raises(ValueError):
        Bloom.empty(capacity=10, error_rate=1.0)
    with pytest.raises(ValueError):
        Bloom.from_bytes(b"\x00\x00")
    assert 3 not in Bloom.empty(capacity=10).add("3")  # only strings are members
