"""The closed-loop demo in its short mode, through the real broker and a real worker."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.demo import SHORT, DemoOptions, run_demo
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def test_the_short_demo_learns_recovers_from_drift_and_reports_it(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    out_dir = tmp_path / "demo"
    table = io.StringIO()
    code = run_demo(kafka_settings, replace(SHORT, out_dir=out_dir, progress=False), out=table)
    assert code == 0, table.getvalue()
    report = json.loads((out_dir / "report.json").read_text())
    page = (out_dir / "report.html").read_text()

    assert report["run"]["complete"] is True
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, SHORT.rounds + 1))
    assert all(r["users"] == SHORT.users and r["impressions"] > 0 for r in rounds)
    # the loop learns: before the drift, lists are clearly better than at the start and
    # than the best list any non-personalised recommender could show
    s = report["summary"]
    assert s["before_drift"] > 1.5 * s["first_round"], table.getvalue()
    assert s["before_drift"] > s["before_drift_popularity"] + 0.02, table.getvalue()
    assert s["before_drift"] > s["before_drift_observed"] * 0.6  # observed agrees roughly
    # the drift hurts the users whose taste changed, and the loop recovers
    d = s["drift"]
    assert d["round"] == SHORT.drift_round and d["drifting_users"] == SHORT.users // 2
    assert d["drifting_dip"] < 0.6 * d["drifting_before"], table.getvalue()
    assert d["drifting_end"] > 1.8 * d["drifting_dip"], table.getvalue()
    # de-escalation: "not relevant" is heard, explained, and the category recedes
    e = report["deescalation"]
    assert e["not_relevant"] > 0 and e["pairs"] > 0
    assert e["share_after"] < 0.5 * e["share_before"]
    assert e["notices_sent"].get("preferences_adjusted", 0) > 0 and e["prompts_sent"] > 0
    assert e["far_share_at_drift"] > e["far_share_end"]
    assert e["examples"] and e["examples"][0]["change"]
    # every event was answered by a snapshot, and its latency measured
    events, latency = report["events"], report["latency_ms"]
    assert events["unanswered"] == 0 and events["delivery_failures"] == 0
    assert latency["count"] == events["sent"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"] < 60_000
    assert {"click", "dwell", "impression", "not_relevant", "skip"} <= set(events["by_type"])
    assert sum(events["by_type"].values()) + SHORT.users == events["sent"]  # + first requests
    # the report: a table on the terminal, an HTML page with the plots
    assert "the loop learns" in table.getvalue() and "report.html" in table.getvalue()
    assert page.count("<svg") >= 4 and "Click-through rate per round" in page


def test_options_that_make_no_demo_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="--rounds"):
        DemoOptions(rounds=1).check()
    with pytest.raises(ValueError, match="round 2"):
        DemoOptions(rounds=4, drift_at=0.1).check()
    result = CliRunner().invoke(cli, ["demo", "--drift-at", "1.5"], env={})
    assert result.exit_code == 2 and "--drift-at" in result.output
