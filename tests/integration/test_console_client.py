"""A non-Python client: Kafka's own console producer and consumer (Java) talk to a worker.

Events go in as the documented JSON, one per line, keyed by ``user_id`` with
``parse.key=true``; the worker's snapshots come back through the console consumer with
``print.key=true``. kcat is not on this machine; the console tools come with the jars the
embedded broker already uses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from operators.synthetic import SyntheticWorld
from pipeline.embedded_kafka import EmbeddedKafka, default_cache_dir
from pipeline.settings import Settings
from schemas.catalog import item_to_json
from schemas.snapshot import parse_snapshot
from tests.integration.harness import Harness, Record

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="the console tools need Java"),
]

SEPARATOR = "|"


@pytest.fixture
def tools(base_settings: Settings) -> EmbeddedKafka:
    return EmbeddedKafka(base_settings.cache_dir or default_cache_dir())


@pytest.fixture
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(seed=3, n_items=12, n_users=2, n_categories=2)


@pytest.fixture
def harness(kafka_settings: Settings, tmp_path: Path) -> Harness:
    return Harness(kafka_settings, tmp_path)


def console(
    tools: EmbeddedKafka, harness: Harness, tool: str, topic: str, *args: str, stdin: str = ""
) -> str:
    """Run a console tool on one of the test's topics, keys and values split by ``|``."""
    done = subprocess.run(
        tools.console_command(
            tool, "--bootstrap-server", harness.bootstrap, "--topic", harness.topic(topic), *args
        ),
        input=stdin, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def console_produce(tools: EmbeddedKafka, harness: Harness, topic: str, lines: str) -> None:
    """Produce ``key|value`` lines with Kafka's console producer."""
    console(
        tools, harness, "console-producer", topic,
        "--reader-property", "parse.key=true",
        "--reader-property", f"key.separator={SEPARATOR}",
        "--command-property", "acks=all",
        stdin=lines,
    )  # fmt: skip


def event_lines(world: SyntheticWorld) -> tuple[list[dict[str, object]], str]:
    """Valid events of two users, and the console producer's input (``key|json`` lines)."""
    now = datetime.now(UTC).replace(microsecond=0)
    items = [item.item_id for item in world.items]

    def at(n: int) -> str:
        return (now - timedelta(seconds=60 - n)).isoformat()

    events: list[dict[str, object]] = [
        {"event_id": "c1", "user_id": "ana", "type": "click", "item_id": items[0],
         "timestamp": at(1), "context": {"surface": "home", "device": "tv"}},
        {"event_id": "c2", "user_id": "ana", "type": "dwell", "item_id": items[0],
         "dwell_ms": 120000, "timestamp": at(2)},
        {"event_id": "c3", "user_id": "ben", "type": "rating", "item_id": items[5],
         "value": 4, "timestamp": at(3)},
        {"event_id": "c4", "user_id": "ben", "schema_version": 1, "type": "impression",
         "item_ids": items[:3], "timestamp": at(4)},
    ]  # fmt: skip
    text = "".join(f"{e['user_id']}{SEPARATOR}{json.dumps(e)}\n" for e in events)
    return events, text


def _answered(records: list[Record], versions: dict[str, int]) -> bool:
    """Whether each user's snapshot of the given version is among ``records``."""
    seen = {(s.user_id, s.version) for r in records if r.value for s in [parse_snapshot(r.value)]}
    return all((user, v) in seen for user, v in versions.items())


def console_consume(tools: EmbeddedKafka, harness: Harness, topic: str, count: int) -> str:
    """The first ``count`` records of a topic as ``key|value`` lines, by the console consumer."""
    return console(
        tools, harness, "console-consumer", topic,
        "--from-beginning",
        "--max-messages", str(count),
        "--timeout-ms", "90000",
        "--formatter-property", "print.key=true",
        "--formatter-property", f"key.separator={SEPARATOR}",
    )  # fmt: skip


def test_console_producer_events_become_snapshots_read_by_the_console_consumer(
    tools: EmbeddedKafka, harness: Harness, world: SyntheticWorld
) -> None:
    catalog = "".join(f"{i.item_id}{SEPARATOR}{item_to_json(i).decode()}\n" for i in world.items)
    console_produce(tools, harness, "items", catalog)
    worker = harness.worker()
    worker.start()
    try:
        assert harness.wait_for_count("item-state", len(world.items)), worker.log_tail()
        events, text = event_lines(world)
        wrong_key = {**events[0], "event_id": "c5", "user_id": "ana"}
        text += f"mallory{SEPARATOR}{json.dumps(wrong_key)}\n"  # keyed by another user
        console_produce(tools, harness, "events", text)
        # a user's burst may be answered by one snapshot (the last event's): wait for
        # both users' last, then read every snapshot there is with the console consumer
        records = harness.read("snapshots", lambda r: _answered(r, {"ana": 2, "ben": 2}), 90)
        assert _answered(records, {"ana": 2, "ben": 2}), worker.log_tail()
        consumed = console_consume(tools, harness, "snapshots", len(records))
    finally:
        worker.stop()

    lines = consumed.splitlines()
    assert len(lines) == len(records), consumed + worker.log_tail()
    seen: dict[str, list[tuple[int, str]]] = {}
    for line in lines:
        key, value = line.split(SEPARATOR, 1)
        snapshot = parse_snapshot(value)
        assert snapshot.user_id == key
        seen.setdefault(key, []).append((snapshot.version, snapshot.source_event_id))
    # version v names the user's v-th event; each user's last snapshot is from c2 / c4
    expected = {"ana": {1: "c1", 2: "c2"}, "ben": {1: "c3", 2: "c4"}}
    assert set(seen) == {"ana", "ben"}
    for user, answers in seen.items():
        assert all(expected[user][v] == event_id for v, event_id in answers), answers
        assert max(answers) == (2, expected[user][2])

    # The contract holds for any client: the line keyed by the wrong user is dead-lettered.
    dead = harness.read("dead-letters", lambda records: len(records) >= 1, timeout_s=30)
    assert [r.headers.get("recloop.dlq.reason") for r in dead] == [b"key_mismatch"]
    assert dead[0].key == b"mallory"
