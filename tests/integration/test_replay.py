"""``recloop replay`` against the real broker and a real worker: idempotence, resume, dry run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from operators.synthetic import SyntheticWorld
from pipeline.cli import cli
from pipeline.clients import end_offset
from pipeline.replay import CheckpointState
from pipeline.settings import Settings
from schemas.events import Event, event_to_json
from schemas.snapshot import parse_snapshot
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings) -> dict[str, str]:
    assert settings.kafka.bootstrap_servers is not None
    return {
        "RECLOOP__KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RECLOOP__KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RECLOOP__KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "RECLOOP__WORKER__APP_ID": settings.worker.app_id,
    }


def write_log(path: Path, world: SyntheticWorld, per_user: int) -> list[Event]:
    """The world's events interleaved by event time, one JSON line each."""
    events = [e for user in world.users for e in world.events_for(user, per_user)]
    events.sort(key=lambda e: (e.timestamp, e.user_id))
    path.write_bytes(b"".join(event_to_json(e) + b"\n" for e in events))
    return events


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's end offset: how many records were ever written to it."""
    assert settings.kafka.bootstrap_servers is not None
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": "replay-test-offsets"})  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        deadline = time.monotonic() + 30  # a new topic's leaders may still be elected
        ends = {p: end_offset(consumer, topic, p, deadline) for p in sorted(partitions)}
        assert None not in ends.values(), f"no end offsets for {topic}"
        return {p: end for p, end in ends.items() if end is not None}
    finally:
        consumer.close()


def read_all(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` up to its current end, in partition and offset order."""
    assert settings.kafka.bootstrap_servers is not None
    ends = end_offsets(settings, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": "replay-test-reader",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
    got: dict[tuple[int, int], tuple[bytes | None, bytes | None]] = {}
    next_offset = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 60
    try:
        while any(next_offset[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                partition, offset = message.partition(), message.offset()
                if message.error() is not None or partition is None or offset is None:
                    continue
                if offset < ends[partition]:
                    got[(partition, offset)] = (message.key(), message.value())
                    next_offset[partition] = offset + 1
    finally:
        consumer.close()
    return [got[k] for k in sorted(got)]


def latest_per_key(records: list[tuple[bytes | None, bytes | None]]) -> dict[bytes, bytes]:
    return {k: v for k, v in records if k is not None and v is not None}


def replay(settings: Settings, *args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(cli, ["replay", "-q", *args], env=_env(settings))
    assert result.stdout.strip(), result.output
    return result.exit_code, json.loads(result.stdout.splitlines()[-1])


def written(settings: Settings, harness: Harness) -> dict[str, int]:
    """How many records the worker ever wrote to each of its outputs."""
    topics = {
        "snapshots": harness.topic("snapshots"),
        "users": f"{settings.worker.app_id}-users-changelog",
        "item-feedback": harness.topic("item-feedback"),
        "audit": harness.topic("audit"),
    }
    return {name: sum(end_offsets(settings, topic).values()) for name, topic in topics.items()}


@pytest.mark.parametrize(
    ("dedupe_window", "rewritten"),
    [(500, False), (5, True)],  # the default window; one smaller than 15 events per user
    ids=["within-window", "beyond-window"],
)
def test_replaying_a_log_twice_leaves_state_as_replaying_it_once_within_the_dedupe_window(
    kafka_settings: Settings, tmp_path: Path, dedupe_window: int, rewritten: bool
) -> None:
    limits = kafka_settings.limits.model_copy(update={"dedupe_window": dedupe_window})
    settings = kafka_settings.model_copy(update={"limits": limits})
    harness = Harness(settings, tmp_path)
    world = SyntheticWorld.generate(seed=11, n_items=30, n_users=3, n_categories=3)
    harness.send_items(world.items)
    log = tmp_path / "events.jsonl"
    events = write_log(log, world, per_user=15)
    worker = harness.worker()
    worker.start()
    changelog = f"{settings.worker.app_id}-users-changelog"
    try:
        assert harness.wait_for_count("item-state", len(world.items)), worker.log_tail()
        harness.wait_until_worker_sees_catalog()

        code, first = replay(settings, str(log), "--wait-for-lag", "--lag-timeout", "120")
        assert code == 0, (first, worker.log_tail())
        assert (first["produced"], first["lag"]) == (len(events), 0)
        snapshots_once = read_all(settings, harness.topic("snapshots"))
        written_once = written(settings, harness)
        users_once = latest_per_key(read_all(settings, changelog))

        code, second = replay(settings, str(log), "--wait-for-lag", "--lag-timeout", "120")
        assert code == 0, (second, worker.log_tail())
        assert (second["produced"], second["lag"]) == (len(events), 0)
        written_twice = written(settings, harness)
        users_twice = latest_per_key(read_all(settings, changelog))
    finally:
        worker.stop()

    # the events topic holds every event twice: the second replay did send them
    ids = Counter(
        json.loads(value)["event_id"]
        for _, value in read_all(settings, harness.topic("events"))
        if value is not None and not value.startswith(b'{"event_id":"warmup-')
    )
    assert ids == Counter({e.event_id: 2 for e in events})
    latest = {}
    for _, value in snapshots_once:
        assert value is not None
        snap = parse_snapshot(value)
        latest[snap.user_id] = snap
    assert {u.user_id: (latest[u.user_id].version, latest[u.user_id].source_event_id)
            for u in world.users} == {u.user_id: (15, f"{u.user_id}-e00014")
                                      for u in world.users}  # fmt: skip
    if not rewritten:
        # nothing applied again: no feedback or audit record, the profiles as they were;
        # only each user's latest event, coming back, re-sends its stored snapshot and
        # profile (what a worker does in case a crash lost them), byte for byte
        users = len(world.users)
        assert written_twice["item-feedback"] == written_once["item-feedback"]
        assert written_twice["audit"] == written_once["audit"]
        assert written_twice["snapshots"] - written_once["snapshots"] == users
        assert written_twice["users"] - written_once["users"] == users
        assert users_twice == users_once
        twice = Counter(v for _, v in read_all(settings, harness.topic("snapshots")))
        last_bytes = {
            parse_snapshot(v).user_id: v
            for _, v in snapshots_once
            if v is not None and parse_snapshot(v).version == 15
        }
        assert twice - Counter(v for _, v in snapshots_once) == Counter(last_bytes.values())
    else:
        # beyond the window each event id was forgotten before it came back: all applied
        # again, so every user's newest snapshot counts their 15 events twice (a burst may
        # be answered by one snapshot: the versions, not the records, count events)
        newest = newest_versions(read_all(settings, harness.topic("snapshots")))
        assert {u.user_id: newest[u.user_id] for u in world.users} == {
            u.user_id: 30 for u in world.users
        }
        assert written_twice["snapshots"] > written_once["snapshots"]
        assert users_twice != users_once


def newest_versions(records: list[tuple[bytes | None, bytes | None]]) -> dict[str, int]:
    """The highest snapshot version per user among snapshot records."""
    newest: dict[str, int] = {}
    for _, value in records:
        if value is not None:
            snap = parse_snapshot(value)
            newest[snap.user_id] = max(newest.get(snap.user_id, 0), snap.version)
    return newest


def test_an_interrupted_replay_resumes_and_sends_every_event_exactly_once(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(kafka_settings, tmp_path)
    world = SyntheticWorld.generate(seed=12, n_items=20, n_users=3, n_categories=3)
    log = tmp_path / "events.jsonl"
    events = write_log(log, world, per_user=100)
    checkpoint = tmp_path / "replay.checkpoint"
    config = tmp_path / "replay.yaml"
    config.write_text(yaml.safe_dump(kafka_settings.model_dump(mode="json")))

    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--config", str(config), "replay", str(log),
         "--checkpoint", str(checkpoint), "--checkpoint-every", "0.1", "--rate", "50", "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and CheckpointState.load(checkpoint).line >= 30:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 128 + signal.SIGINT, err.decode()
    stopped = json.loads(out.decode().splitlines()[-1])
    saved = CheckpointState.load(checkpoint)
    assert stopped["interrupted"] == "SIGINT" and stopped["complete"] is False
    assert 30 <= saved.line < len(events)
    assert stopped["produced"] == saved.line  # every line is an event: all confirmed ones

    code, resumed = replay(kafka_settings, str(log), "--checkpoint", str(checkpoint))
    assert code == 0, resumed
    assert resumed["resumed_from"] == {"line": saved.line, "offset": saved.offset}
    assert resumed["produced"] == len(events) - saved.line and resumed["complete"] is True

    topic = harness.topic("events")
    assert sum(end_offsets(kafka_settings, topic).values()) == len(events)
    ids = Counter(json.loads(v)["event_id"] for _, v in read_all(kafka_settings, topic) if v)
    assert ids == Counter({e.event_id: 1 for e in events})

    code, again = replay(kafka_settings, str(log), "--checkpoint", str(checkpoint))
    assert (code, again["produced"], again["complete"]) == (0, 0, True)
    assert sum(end_offsets(kafka_settings, topic).values()) == len(events)

    other = tmp_path / "other.jsonl"
    other.write_bytes(log.read_bytes()[: saved.offset])  # a different log: refused
    refused = CliRunner().invoke(
        cli, ["replay", "-q", str(other), "--checkpoint", str(checkpoint)], env=_env(kafka_settings)
    )
    assert refused.exit_code == 2 and "does not match this replay" in refused.output
    assert sum(end_offsets(kafka_settings, topic).values()) == len(events)


def test_a_dry_run_produces_nothing_and_the_real_run_the_valid_events(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(kafka_settings, tmp_path)
    log = tmp_path / "events.csv"
    log.write_text(
        "event_id,user_id,type,timestamp,item_id,dwell_ms,context.surface\n"
        "c1,ann,click,2026-03-01T10:00:00Z,i1,,home\n"
        "c2,ann,dwell,2026-03-01T10:01:00Z,i2,not-a-number,home\n"
        "c3,bob,dwell,2026-03-01T10:02:00+01:00,i3,42000,\n"
        "c4,bob,teleport,2026-03-01T10:03:00Z,i4,,\n"
    )
    rejects = tmp_path / "rejects.jsonl"
    topic = harness.topic("events")

    code, dry = replay(kafka_settings, str(log), "--dry-run", "--rejects", str(rejects))

    assert code == 1  # something would be rejected
    assert (dry["valid"], dry["rejected"], dry["produced"]) == (2, 2, 0)
    assert dry["rejected_by_reason"] == {"schema_violation": 1, "unknown_type": 1}
    rejections = dry["rejections"]
    assert isinstance(rejections, list)
    assert [(r["line"], r["reason"]) for r in rejections] == [
        (3, "schema_violation"), (5, "unknown_type"),
    ]  # fmt: skip
    assert [json.loads(line)["raw"].split(",")[0] for line in rejects.read_text().splitlines()] == [
        "c2", "c4",
    ]  # fmt: skip
    assert sum(end_offsets(kafka_settings, topic).values()) == 0

    code, real = replay(kafka_settings, str(log))
    assert code == 1 and real["produced"] == 2
    records = harness.read("events", lambda r: len(r) >= 2, timeout_s=20)
    sent = {r.key: json.loads(r.value or b"") for r in records}
    assert set(sent) == {b"ann", b"bob"}
    assert sent[b"bob"]["timestamp"] == "2026-03-01T10:02:00+01:00"  # event time untouched
    assert sent[b"ann"]["context"] == {"surface": "home"}
