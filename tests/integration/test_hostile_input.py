"""The hostile corpus (tests/hostile_corpus.py) sent to one running worker, through the broker.

Each malformed or hostile message is followed by a valid event, so the worker must keep
going between every two bad ones. Each bad message lands on the dead-letter topic with
its reason, its original key and bytes and where it came from; the worker stays up;
every valid event produces its snapshot; and ``GET /metrics`` counts the dead letters
by reason.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from operators.synthetic import EPOCH, SyntheticWorld
from pipeline.settings import Settings
from pipeline.topics import partition_of
from schemas.events import Click, event_to_json
from tests.hostile_corpus import CASES, USER, Hostile
from tests.integration.harness import Harness, Record, free_port, scrape_metrics

pytestmark = pytest.mark.integration
VALID_USER = "u-valid"


def test_every_hostile_message_is_dead_lettered_and_the_worker_carries_on(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    worker_settings = kafka_settings.worker.model_copy(
        update={"web_enabled": True, "web_port": port}
    )
    settings = kafka_settings.model_copy(update={"worker": worker_settings})
    world = SyntheticWorld.generate(seed=41, n_items=24, n_users=1, n_categories=3)
    harness = Harness(settings, tmp_path)
    harness.send_items(world.items)
    messages: list[tuple[bytes | None, bytes | None]] = []
    for n, case in enumerate(CASES):
        valid = Click(
            type="click", event_id=f"valid-{n}", user_id=VALID_USER,
            item_id=world.items[n % len(world.items)].item_id,
            timestamp=EPOCH + timedelta(minutes=n),
        )  # fmt: skip
        messages += [(case.key, case.value), (VALID_USER.encode(), event_to_json(valid))]
    worker = harness.worker()
    worker.start()
    try:
        harness.wait_until_worker_sees_catalog()
        where = harness.send_raw_located(messages)
        with harness.tail("dead-letters") as letters:
            assert letters.read_until(lambda _: len(letters.records) >= len(CASES), 120), (
                f"{len(letters.records)} of {len(CASES)} dead letters\n{worker.log_tail()}"
            )
            latest = harness.snapshots(
                lambda s: VALID_USER in s and s[VALID_USER].version == len(CASES), 120
            )
            time.sleep(1)  # a valid event wrongly dead-lettered would arrive by now
            letters.poll(1)
            dead = list(letters.records)
        counted = scrape_metrics(port)
        assert worker.running, worker.log_tail()
    finally:
        worker.stop()

    # every valid event was applied, in order, once; nothing hostile was
    assert latest[VALID_USER].version == len(CASES), worker.log_tail()
    assert latest[VALID_USER].source_event_id == f"valid-{len(CASES) - 1}"
    assert USER not in latest and "u-victim" not in latest
    # each hostile message exactly once on the dead-letter topic, as it was sent
    sent_at = {where[2 * n]: case for n, case in enumerate(CASES)}
    found: dict[str, Record] = {}
    for letter in dead:
        origin = (
            int(letter.headers["recloop.dlq.partition"]),
            int(letter.headers["recloop.dlq.offset"]),
        )
        assert letter.headers["recloop.dlq.topic"].decode() == harness.topic("events")
        assert origin in sent_at, f"a valid event was dead-lettered: {letter}"
        case = sent_at[origin]
        assert case.name not in found, f"{case.name} dead-lettered twice"
        found[case.name] = letter
    missing = [case.name for case in CASES if case.name not in found]
    assert not missing, f"never dead-lettered: {missing}"
    wrong: list[str] = []
    for case in CASES:
        letter = found[case.name]
        if not _as_sent(case, letter):
            wrong.append(f"{case.name}: reason {letter.headers['recloop.dlq.reason']!r}")
    assert not wrong, "\n".join(wrong)
    # the dead letters show in the metrics, by reason
    by_reason = Counter(case.reason for case in CASES)
    for reason, n in by_reason.items():
        assert counted[("recloop_dead_letters_total", (("reason", reason),))] == n, reason
    assert counted[("recloop_events_total", (("outcome", "dead_lettered"),))] == len(CASES)
    print(json.dumps({"test": "hostile input", "kinds": len(CASES), "reasons": by_reason}))


def _as_sent(case: Hostile, letter: Record) -> bool:
    """The dead letter has the case's reason, a detail, and the original key and bytes.

    A record with neither key nor value comes back with an empty value, said to be null.
    """
    neither = case.key is None and case.value is None
    return (
        letter.headers["recloop.dlq.reason"].decode() == case.reason
        and bool(letter.headers["recloop.dlq.detail"])
        and letter.key == case.key
        and letter.value == (b"" if neither else case.value)
        and (letter.headers.get("recloop.dlq.value") == b"null") == neither
    )


def test_an_event_in_another_partition_than_its_keys_is_dead_lettered(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    # what a librdkafka producer without partitioner=murmur2_random does to half the keys
    world = SyntheticWorld.generate(seed=43, n_items=24, n_users=1, n_categories=3)
    harness = Harness(kafka_settings, tmp_path)
    harness.send_items(world.items)
    user = "u-misplaced"
    belongs = partition_of(user.encode(), kafka_settings.kafka.partitions)
    elsewhere = (belongs + 1) % kafka_settings.kafka.partitions
    stray, good = (
        Click(
            type="click",
            event_id=name,
            user_id=user,
            item_id=world.items[n].item_id,
            timestamp=EPOCH + timedelta(minutes=n),
        )
        for n, name in enumerate(("stray", "good"))
    )
    worker = harness.worker()
    worker.start()
    try:
        harness.wait_until_worker_sees_catalog()
        harness.producer.produce(harness.topic("events"), key=user.encode(),
                                 value=event_to_json(stray), partition=elsewhere)  # fmt: skip
        snapshot = harness.send_and_wait([good])
        with harness.tail("dead-letters") as letters:
            assert letters.read_until(lambda records: len(records) >= 1, 60), worker.log_tail()
            (letter,) = letters.records
        assert worker.running, worker.log_tail()
    finally:
        worker.stop()
    assert (snapshot.source_event_id, snapshot.version) == ("good", 1)
    assert letter.headers["recloop.dlq.reason"] == b"wrong_partition"
    assert int(letter.headers["recloop.dlq.partition"]) == elsewhere
    assert letter.value == event_to_json(stray)
