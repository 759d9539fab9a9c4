"""Forgetting a user through the real broker: `recloop forget` and the `forget` event."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from operators.synthetic import SyntheticWorld
from pipeline.settings import Settings
from schemas.events import Click, Event
from schemas.snapshot import parse_snapshot
from tests.integration.harness import Harness, Record

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _click(n: int, user: str, item: str) -> Event:
    when = T0 + timedelta(minutes=n)
    return Click(type="click", event_id=f"{user}-e{n}", user_id=user, item_id=item, timestamp=when)


def _last_by_key(records: list[Record]) -> dict[bytes, Record]:
    last: dict[bytes, Record] = {}
    for record in records:
        if record.key is not None:
            last[record.key] = record
    return last


def test_forget_erases_profile_and_snapshot_and_survives_a_restart(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    world = SyntheticWorld.generate(seed=5, n_items=24, n_users=2, n_categories=3)
    harness = Harness(kafka_settings, tmp_path)
    harness.send_items(world.items)
    items = [item.item_id for item in world.items]
    worker = harness.worker()
    worker.start()
    try:
        assert harness.wait_for_count("item-state", len(items)), worker.log_tail()
        harness.send_and_wait([_click(n, "bob", items[n]) for n in range(3)])
        before = harness.send_and_wait([_click(n, "alice", items[n + 3]) for n in range(4)])
        assert before.version == 4

        config = tmp_path / "cli.yaml"
        config.write_text(json.dumps({"kafka": kafka_settings.kafka.model_dump(mode="json")}))
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "--config", str(config), "forget", "alice"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["users"] == ["alice"]

        # the snapshot becomes a tombstone on the compacted topic
        tombstoned = lambda rs: (  # noqa: E731
            b"alice" in (last := _last_by_key(rs)) and last[b"alice"].value is None
        )
        snapshots = harness.read("snapshots", tombstoned)
        assert tombstoned(snapshots), "no tombstone for alice on the snapshots topic"
        assert _last_by_key(snapshots)[b"bob"].value is not None  # bob is untouched
        # the profile leaves the users table: a tombstone on its changelog
        changelog = f"{kafka_settings.worker.app_id}-users-changelog"
        gone = lambda rs: (  # noqa: E731  (Faust writes str keys as JSON)
            b'"alice"' in (last := _last_by_key(rs)) and last[b'"alice"'].value is None
        )
        with harness.tail(changelog, full_name=True) as tail:
            assert tail.read_until(lambda _: gone(tail.records), timeout_s=30)
            assert _last_by_key(tail.records)[b'"bob"'].value is not None
        audit = harness.read(
            "audit", lambda rs: any(r.value and b'"forgotten"' in r.value for r in rs)
        )
        [erasure] = [json.loads(r.value) for r in audit if r.value and b'"forgotten"' in r.value]
        assert erasure["user_id"] == "alice" and erasure["rule"] == "forgotten"
    finally:
        assert worker.stop() == 0, worker.log_tail()

    # after a restart (state restored from the changelog) alice starts from nothing
    again = harness.worker("again")
    again.start()
    try:
        harness.send_events([_click(10, "alice", items[9])])
        answers = lambda rs: [  # noqa: E731  (the topic still holds alice's old versions)
            s
            for r in rs
            if r.value and (s := parse_snapshot(r.value)).source_event_id == "alice-e10"
        ]
        [after] = answers(harness.read("snapshots", lambda rs: bool(answers(rs))))
        assert after.version == 1, "the forgotten profile came back"
        bob = harness.send_and_wait([_click(11, "bob", items[10])])
        assert bob.version == 4
    finally:
        again.stop()
