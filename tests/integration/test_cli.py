"""The recloop command against the real broker: produce, consume, topics, kafka status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from operators.synthetic import SyntheticWorld
from pipeline.cli import cli
from pipeline.settings import Settings
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def _env(settings: Settings) -> dict[str, str]:
    assert settings.kafka.bootstrap_servers is not None
    return {
        "RECLOOP__KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RECLOOP__KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RECLOOP__KAFKA__PARTITIONS": str(settings.kafka.partitions),
    }


def test_topics_create_makes_every_topic_once(kafka_settings: Settings) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["topics", "create"], env=_env(kafka_settings))
    again = runner.invoke(cli, ["topics", "create"], env=_env(kafka_settings))
    assert first.exit_code == 0, first.output
    assert first.output.startswith("created 8 topics")
    assert again.output.strip() == "created 0 topics"


def test_produce_validates_lines_and_counts_accepted_and_rejected(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(kafka_settings, tmp_path)
    good = {"event_id": "p1", "user_id": "dave", "type": "click", "item_id": "i1",
            "timestamp": "2026-11-01T10:00:00Z"}  # fmt: skip
    lines = [json.dumps(good), "{broken", json.dumps({**good, "type": "teleport"}),
             json.dumps({**good, "event_id": "p2"}), ""]  # fmt: skip
    result = CliRunner().invoke(cli, ["produce", "-"], input="\n".join(lines),
                                env=_env(kafka_settings))  # fmt: skip

    report = json.loads(result.output)
    assert result.exit_code == 1  # something was rejected
    assert report["accepted"] == 2 and report["rejected"] == 2
    assert report["errors"][0].startswith("line 2:") and "line 3:" in report["errors"][1]
    records = harness.read("events", lambda r: len(r) >= 2, timeout_s=20)
    assert sorted(json.loads(r.value or b"")["event_id"] for r in records) == ["p1", "p2"]
    assert all(r.key == b"dave" for r in records)


def test_consume_tails_snapshots_of_one_user(kafka_settings: Settings, tmp_path: Path) -> None:
    harness = Harness(kafka_settings, tmp_path)
    world = SyntheticWorld.generate(seed=9, n_items=12, n_users=2, n_categories=2)
    harness.send_items(world.items)
    worker = harness.worker()
    worker.start()
    try:
        harness.wait_until_worker_sees_catalog()
        for user in world.users:
            harness.send_events(world.events_for(user, 3))
        last = world.users[1].user_id
        harness.snapshots(lambda s: last in s and s[last].version == 3)
    finally:
        worker.stop()

    result = CliRunner().invoke(
        cli, ["consume", "--user", last, "--idle-timeout", "3"], env=_env(kafka_settings)
    )
    assert result.exit_code == 0, result.output
    snaps = [json.loads(line) for line in result.output.splitlines()]
    versions = [s["version"] for s in snaps]  # a burst may be answered by one snapshot
    assert versions == sorted(set(versions)) and versions[-1] == 3
    assert {s["user_id"] for s in snaps} == {last}


def test_kafka_status_reports_the_running_broker(kafka_bootstrap: str) -> None:
    result = CliRunner().invoke(cli, ["kafka", "status"], env={})
    # under an external broker (RECLOOP__KAFKA__BOOTSTRAP_SERVERS) the embedded one may be off
    if result.exit_code == 1:
        pytest.skip("tests use an external broker; the embedded one is not running")
    assert result.exit_code == 0
    assert f"running at {kafka_bootstrap}" in result.output
