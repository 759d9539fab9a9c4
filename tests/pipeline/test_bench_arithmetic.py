"""The benchmarks' arithmetic (scripts/), on made-up samples: no broker, no worker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from _bench import percentile
from bench_serving import Sample, summarize


@pytest.mark.parametrize(
    ("n", "q", "expected"),
    [(100, 0.99, 99), (100, 0.5, 50), (40, 0.95, 38), (1000, 0.95, 950), (3, 0.5, 2),
     (1, 0.99, 1), (10, 1.0, 10), (10, 0.0, 1)],
)  # fmt: skip
def test_percentiles_are_nearest_rank(n: int, q: float, expected: int) -> None:
    assert percentile([float(v) for v in range(n, 0, -1)], q) == expected


def test_serving_rates_count_a_block_of_n_requests_as_n_intervals() -> None:
    rate = 10.0
    # an instant server: every answer 1 ms after it was due
    block = [Sample(i / rate, i / rate + 0.001, 200, "w") for i in range(10)]
    figures = summarize([block, block])
    assert figures["offered_per_s"] == 10.0
    assert figures["achieved_ok_per_s"] == 10.0
    late = [Sample(i / rate, 2.0, 200, "w") for i in range(10)]  # all answered at 2 s
    assert summarize([late])["achieved_ok_per_s"] == 5.0


def test_the_offline_closed_loop_is_repeatable_and_learns() -> None:
    from bench_closed_loop import run

    first = run(rounds=6, users=8, items=120, seed=3, drift_at=None)
    again = run(rounds=6, users=8, items=120, seed=3, drift_at=None)

    rows = first["rounds"]
    assert first == again  # no Kafka, no wall clock: the same run twice
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(0 < r["expected_ctr"] <= r["best_possible_ctr"] for r in rows)
    assert rows[-1]["expected_ctr"] > rows[0]["expected_ctr"]  # the loop learns the users
    assert 0 < rows[-1]["top_category_share"] <= 1
