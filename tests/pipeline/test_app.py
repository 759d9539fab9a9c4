"""The agents, driven through Faust's test context (no broker)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faust.types import Message

from operators.catalog import Catalog, ItemFeedback, ItemState, expiry_of
from operators.feedback_loop import process_event
from operators.model import RankingModel
from operators.profile import UserProfile
from operators.synthetic import SyntheticWorld
from operators.validation import decode_event
from pipeline.app import DEAD_LETTER_BODY_MAX, Recloop, advertised_host, dead_letter_body
from pipeline.offsets import Fetched
from pipeline.settings import WorkerSettings
from schemas.catalog import ItemRecord
from schemas.snapshot import parse_snapshot, snapshot_to_json
from tests.pipeline.conftest import NOW
from tests.pipeline.doubles import (
    FixedCatalog,
    ProducerBuffer,
    RecordingEmitter,
    StoredRecords,
    close_pipeline_app,
    pipeline_app,
    until,
)


def _event(event_id: str, user: str, kind: str, item: str, **extra: object) -> bytes:
    body = {
        "event_id": event_id,
        "user_id": user,
        "type": kind,
        "item_id": item,
        "timestamp": "2026-11-01T10:00:00Z",
        **extra,
    }
    return json.dumps(body).encode()


async def test_event_updates_state_and_publishes_a_snapshot_that_reflects_it(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    liked = world.items[0]
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("e1", "u1", "click", liked.item_id), key=b"u1")
        await agent.put(
            _event("e2", "u1", "dwell", world.items[4].item_id, dwell_ms=90000.0), key=b"u1"
        )

    snapshots = [parse_snapshot(s.value or b"") for s in emitter.to("snapshots")]
    assert [s.version for s in snapshots] == [1, 2]
    assert snapshots[-1].source_event_id == "e2"
    assert all(s.key == b"u1" for s in emitter.to("snapshots"))
    last = snapshots[-1]
    shown = [item.item_id for item in last.items]
    assert liked.item_id not in shown and world.items[4].item_id not in shown
    # both items share a category (round-robin over 4), so it leads the list
    assert last.items[0].category == liked.category
    assert any("because you like" in reason for reason in last.items[0].reasons)
    profile = UserProfile.restore(recloop.users["u1"])
    assert profile.events_applied == 2 and profile.affinity[liked.category] > 0
    feedback = emitter.to("item-feedback")
    records = [ItemFeedback.from_json(f.value or b"") for f in feedback]
    # each like goes to its item; the second like also counts as a co-visit of the first
    assert [(r.item_id, r.kind, r.co_items) for r in records] == [
        (liked.item_id, "signal", ()),
        (world.items[4].item_id, "signal", (liked.item_id,)),
        (liked.item_id, "covisit", (world.items[4].item_id,)),
    ]


async def test_invalid_events_go_to_dead_letters_and_the_next_valid_one_is_processed(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    bad = [
        (b"{not json", "invalid_json"),
        (_event("e1", "u1", "teleport", "i1"), "unknown_type"),
        (
            json.dumps(
                {
                    "event_id": "e2",
                    "type": "click",
                    "item_id": "i",
                    "timestamp": "2026-11-01T10:00:00Z",
                }
            ).encode(),
            "missing_field",
        ),
        (_event("e3", "u1", "dwell", "i1", dwell_ms=-5.0), "schema_violation"),
        (_event("e4", "u1", "click", "i1", padding="x" * 70_000), "too_large"),
    ]
    async with recloop.events_agent.test_context() as agent:
        for raw, _ in bad:
            await agent.put(raw, key=b"u1")
        await agent.put(_event("ok", "u1", "click", world.items[1].item_id), key=b"u1")

    letters = emitter.to("dead-letters")
    assert [d.headers["recloop.dlq.reason"].decode() for d in letters] == [r for _, r in bad]
    assert [d.value for d in letters] == [raw for raw, _ in bad]  # original bytes, untouched
    assert all(d.headers["recloop.dlq.topic"] == b"p.events" for d in letters)
    assert all(d.headers["recloop.dlq.offset"].isdigit() for d in letters)
    assert [parse_snapshot(s.value or b"").source_event_id for s in emitter.to("snapshots")] == [
        "ok"
    ]
    assert recloop.stats.dead_lettered == len(bad) and recloop.stats.processed == 1


async def test_a_record_with_neither_key_nor_value_is_dead_lettered_and_the_worker_goes_on(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # Kafka's clients refuse to send such a record: dead-lettering it as it was failed,
    # and the unacknowledged record stopped the worker again after every restart
    async with recloop.events_agent.test_context() as agent:
        await agent.put(None, key=None)
        await agent.put(_event("ok", "u1", "click", world.items[1].item_id), key=b"u1")
    (letter,) = emitter.to("dead-letters")
    assert (letter.key, letter.value) == (None, b"")
    assert letter.headers["recloop.dlq.value"] == b"null"
    assert letter.headers["recloop.dlq.reason"] == b"invalid_json"
    assert recloop.stats.dead_lettered == 1 and recloop.stats.processed == 1


async def test_an_event_over_the_producer_limit_is_dead_lettered_cut_with_its_digest(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # a broker set to take records over 1 MB delivers one the producer could not copy
    # whole to the dead letters: sending it failed and stopped the worker, for good
    raw = _event("big", "u1", "click", "i1", padding="x" * 1_200_000)
    async with recloop.events_agent.test_context() as agent:
        await agent.put(raw, key=b"u1")
        await agent.put(_event("ok", "u1", "click", world.items[1].item_id), key=b"u1")
    (letter,) = emitter.to("dead-letters")
    assert letter.headers["recloop.dlq.reason"] == b"too_large"
    assert letter.key == b"u1" and letter.value == raw[: DEAD_LETTER_BODY_MAX - 2]
    assert letter.headers["recloop.dlq.value_size"] == str(len(raw)).encode()
    assert letter.headers["recloop.dlq.value_sha256"] == hashlib.sha256(raw).hexdigest().encode()
    assert letter.headers["recloop.dlq.offset"].isdigit()  # where the whole record is
    assert recloop.stats.processed == 1  # and the fixture checks no agent failed


def test_a_dead_letter_body_that_fits_is_sent_unchanged_and_a_huge_key_is_cut_too() -> None:
    assert dead_letter_body(b"k", b"v") == (b"k", b"v", [])
    assert dead_letter_body(None, b"v") == (None, b"v", [])
    assert dead_letter_body(b"k", None) == (b"k", None, [])
    edge = b"v" * (DEAD_LETTER_BODY_MAX - 1)
    assert dead_letter_body(b"k", edge) == (b"k", edge, [])
    key, value = b"k" * 2_000_000, b"v" * 10
    cut_key, cut_value, headers = dead_letter_body(key, value)
    assert (cut_key, cut_value) == (key[:1024], value)
    assert dict(headers) == {
        "recloop.dlq.key_size": b"2000000",
        "recloop.dlq.key_sha256": hashlib.sha256(key).hexdigest().encode(),
    }
    _, long_value, both = dead_letter_body(key, b"v" * DEAD_LETTER_BODY_MAX)
    assert len(long_value or b"") == DEAD_LETTER_BODY_MAX - 1024
    assert [name for name, _ in both] == [
        "recloop.dlq.key_size", "recloop.dlq.key_sha256",
        "recloop.dlq.value_size", "recloop.dlq.value_sha256",
    ]  # fmt: skip


@pytest.mark.parametrize("partitions", [2])
async def test_an_event_outside_its_users_partition_is_dead_lettered(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # a librdkafka producer partitions with CRC32 unless told murmur2_random: applied
    # where it arrived, the event started a second, partial profile of the user there
    item = world.items[1].item_id
    misplaced = _event("e1", "u5", "click", item)  # u5's partition of two is 1
    async with recloop.events_agent.test_context() as agent:
        await agent.put(misplaced, key=b"u5", partition=0)
        await agent.put(_event("e2", "u5", "click", item), key=b"u5", partition=1)
    (letter,) = emitter.to("dead-letters")
    assert letter.headers["recloop.dlq.reason"] == b"wrong_partition"
    assert b"belongs in partition 1 of 2" in letter.headers["recloop.dlq.detail"]
    assert (letter.key, letter.value) == (b"u5", misplaced)
    assert [parse_snapshot(s.value or b"").source_event_id for s in emitter.to("snapshots")] == [
        "e2"
    ]
    assert recloop.stats.dead_lettered == 1 and recloop.stats.processed == 1


async def test_a_long_dead_letter_detail_is_cut_between_characters(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    # cut at 2000 bytes, it could end inside a character: a consumer decoding it failed
    raw = _event("e1", "u1", "é" * 3000, "i1")
    async with recloop.events_agent.test_context() as agent:
        await agent.put(raw, key=b"u1")
    (letter,) = emitter.to("dead-letters")
    detail = letter.headers["recloop.dlq.detail"].decode()  # UTF-8, whole characters
    assert letter.headers["recloop.dlq.reason"] == b"unknown_type"
    assert 1990 < len(detail.encode()) <= 2000 and detail.endswith("é")


async def test_a_duplicate_event_is_applied_once(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("same", "u2", "click", "item-00001"), key=b"u2")
        await agent.put(_event("next", "u2", "click", "item-00002"), key=b"u2")
        await agent.put(_event("same", "u2", "click", "item-00001"), key=b"u2")
    assert len(emitter.to("snapshots")) == 2  # the older duplicate sends nothing
    assert UserProfile.restore(recloop.users["u2"]).events_applied == 2
    assert recloop.stats.duplicates == 1


async def test_a_duplicate_of_the_latest_event_sends_its_snapshot_again(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    # after a crash the latest event can come back with its state written but its
    # snapshot never sent: the stored snapshot goes out again, byte for byte
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("same", "u2", "click", "item-00001"), key=b"u2")
        await agent.put(_event("same", "u2", "click", "item-00001"), key=b"u2")
    first, again = emitter.to("snapshots")
    assert first == again
    assert UserProfile.restore(recloop.users["u2"]).events_applied == 1
    assert (recloop.stats.duplicates, recloop.stats.republished) == (1, 1)


def _like(item: str, event_id: str, **extra: str) -> bytes:
    """An item-feedback record of one like, as the events agent writes it."""
    return json.dumps({"item_id": item, "target": 1.0, "weight": 1.0,
                       "event_time": "2026-11-01T10:00:00+00:00", "event_id": event_id,
                       **extra}).encode()  # fmt: skip


async def test_item_agents_fold_catalog_and_feedback_into_published_item_state(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    item = world.items[2]
    feedback = json.dumps(
        {
            "item_id": item.item_id,
            "target": 1.0,
            "weight": 0.75,
            "event_time": "2026-11-01T10:00:00+00:00",
            "event_id": "e1",
        }
    )
    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(item.model_dump_json().encode(), key=item.item_id.encode())
        await agent.put(b'{"item_id": "x"}', key=b"x")  # no category: dead-lettered
    async with recloop.item_feedback_agent.test_context() as agent:
        await agent.put(feedback.encode(), key=item.item_id.encode())

    states = [ItemState.restore(s.value or b"") for s in emitter.to("item-state")]
    assert len(states) == 2
    assert states[0].record == item and states[0].popularity == 0.0
    assert states[1].record == item and states[1].popularity == 1.0 and states[1].positives == 1
    letters = emitter.to("dead-letters")
    assert [d.value for d in letters] == [b'{"item_id": "x"}']
    assert letters[0].headers["recloop.dlq.reason"] == b"missing_field"


async def test_invalid_catalog_records_are_dead_lettered_with_the_reasons_events_get(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # each was a schema_violation, so the reason did not say what to fix
    record = json.loads(world.items[0].model_dump_json())

    def item(item_id: str, **changes: object) -> bytes:
        fields = {**record, "item_id": item_id, **changes}
        return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()

    bad = [
        (b"i1", b"{not json", "invalid_json"),
        (b"i2", b"\xff\xfe", "invalid_utf8"),
        (b"i3", item("i3", colour="red"), "unexpected_field"),
        (b"i4", item("i4", category=None), "missing_field"),
        (b"i5", item("i5", schema_version=2), "unsupported_schema_version"),
        (b"i6", item("i6", duration_ms=-1), "schema_violation"),
    ]
    async with recloop.catalog_agent.test_context() as agent:
        for key, raw, _ in bad:
            await agent.put(raw, key=key)
    letters = emitter.to("dead-letters")
    assert [d.headers["recloop.dlq.reason"].decode() for d in letters] == [r for _, _, r in bad]
    assert [d.value for d in letters] == [raw for _, raw, _ in bad]  # original bytes
    assert all(d.headers["recloop.dlq.detail"].startswith(b"catalog record: ") for d in letters)
    assert not emitter.to("item-state")


async def test_a_catalog_tombstone_deletes_the_items_state_on_every_worker(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # it republished the state with no record: every worker kept it (and what was
    # learned about the item) for ever, and a tombstone for an id never seen created one
    from pipeline.catalog_follower import CatalogFollower

    item = world.items[2].item_id
    like = _like(item, "e1", user_id="u1")
    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(world.items[2].model_dump_json().encode(), key=item.encode())
    async with recloop.item_feedback_agent.test_context() as agent:
        await agent.put(like, key=item.encode())
    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(None, key=item.encode())
        await agent.put(None, key=b"never-catalogued")
    assert item not in recloop.items and "never-catalogued" not in recloop.items
    worker = CatalogFollower("127.0.0.1:9", "p.item-state", 1)  # another worker's, no broker
    for offset, sent in enumerate(emitter.to("item-state")):
        worker._queue.put((sent.key, sent.value, 0, offset))
    worker.drain()
    assert len(worker.catalog) == 0


async def test_an_item_without_a_catalog_record_expires_through_its_owner_after_the_ttl(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # feedback for an id never catalogued kept its state on every worker for good (an id
    # a producer made up per session grew every worker's catalog without bound)
    from pipeline.catalog_follower import CatalogFollower

    item = world.items[2].item_id
    recent = (NOW - timedelta(days=6)).isoformat()  # the TTL is 7 days; _like: 21 days ago
    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(world.items[2].model_dump_json().encode(), key=item.encode())
    async with recloop.item_feedback_agent.test_context() as agent:
        await agent.put(_like(item, "e1", user_id="u1"), key=item.encode())  # catalogued
        await agent.put(_like("ghost", "e2", user_id="u1"), key=b"ghost")
        await agent.put(_like("late-record", "e3", user_id="u1"), key=b"late-record")
        await agent.put(_like("recent", "e4", user_id="u1", event_time=recent), key=b"recent")

    assert sorted(recloop.expired_item_ids(NOW)) == ["ghost", "late-record"]
    await recloop._expiry_timer()
    expiries = emitter.to("item-feedback")
    assert sorted(e.key for e in expiries) == [b"ghost", b"late-record"]
    # the owner checks again: a catalog record that came meanwhile keeps the state
    late = world.items[3].model_copy(update={"item_id": "late-record"})
    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(late.model_dump_json().encode(), key=b"late-record")
    async with recloop.item_feedback_agent.test_context() as agent:
        for sent in expiries:
            await agent.put(sent.value, key=sent.key)
        await agent.put(expiries[0].value, key=expiries[0].key)  # twice: nothing more

    assert "ghost" not in recloop.items
    assert {item, "late-record", "recent"} <= set(recloop.items.keys())
    assert recloop.stats.items_expired == 1
    states = emitter.to("item-state")
    assert [s.value for s in states if s.key == b"ghost"][-1] is None
    assert len([s for s in states if s.key == b"late-record"]) == 2  # the like, the record
    worker = CatalogFollower("127.0.0.1:9", "p.item-state", 1)  # another worker's, no broker
    for offset, sent in enumerate(states):
        worker._queue.put((sent.key, sent.value, 0, offset))
    worker.drain()
    assert worker.catalog.get("ghost") is None and worker.catalog.get("recent") is not None


async def test_an_expired_item_stays_gone_when_users_who_liked_it_like_more(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # the id stays in u1's recent likes: each of their later likes sent it a co-visit,
    # which rebuilt the state (expired already) on every worker until the next sweep
    async def fold(records: list[Any]) -> None:
        async with recloop.item_feedback_agent.test_context() as agent:
            for sent in records:
                await agent.put(sent.value, key=sent.key)

    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("e1", "u1", "click", "ghost"), key=b"u1")  # 21 days ago
    await fold(emitter.to("item-feedback"))
    await recloop._expiry_timer()
    await fold(emitter.to("item-feedback")[-1:])
    assert "ghost" not in recloop.items
    for n, item in enumerate(world.items[:3]):
        before = len(emitter.to("item-feedback"))
        async with recloop.events_agent.test_context() as agent:
            await agent.put(_event(f"e{n + 2}", "u1", "click", item.item_id,
                                   timestamp="2026-11-22T11:00:00Z"), key=b"u1")  # fmt: skip
        sent = emitter.to("item-feedback")[before:]
        assert b"ghost" in [r.key for r in sent]  # the co-visit still goes out
        await fold(sent)

    assert "ghost" not in recloop.items
    assert [s.value for s in emitter.to("item-state") if s.key == b"ghost"][1:] == [None]
    assert recloop.stats.items_expired == 1


async def _sweep_a_ghost(recloop: Recloop) -> None:
    """A like for an id never catalogued, 21 days old, then the worker's sweep."""
    async with recloop.item_feedback_agent.test_context() as agent:
        await agent.put(_like("ghost", "e1", user_id="u1"), key=b"ghost")
    await recloop._expiry_timer()


@pytest.mark.parametrize("batch", [(2, 10_000.0)])
async def test_an_expiry_folded_with_a_later_signal_is_counted_and_starts_afresh(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    await _sweep_a_ghost(recloop)
    [expire] = emitter.to("item-feedback")
    now = NOW.isoformat()
    async with recloop.item_feedback_agent.test_context() as agent:  # one batch of two
        await agent.put(expire.value, key=b"ghost")
        await agent.put(_like("ghost", "e2", user_id="u2", event_time=now), key=b"ghost")

    state = ItemState.restore(recloop.items["ghost"])
    assert state.positives == 1 and state.popularity_t == NOW.timestamp()
    assert recloop.stats.items_expired == 1


async def test_a_worker_sweeps_at_its_first_wake_then_once_per_interval(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    # Faust's timer sleeps before its first run: with hourly sweeps, a worker restarted
    # more often than hourly never swept
    await _sweep_a_ghost(recloop)
    await recloop._expiry_timer()  # a minute later, say: the next sweep is an hour away
    assert [r.key for r in emitter.to("item-feedback")] == [b"ghost"]


async def test_a_catalog_tombstone_under_a_key_no_item_could_have_is_dead_lettered(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    item = world.items[3]
    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(None, key=b"\xff\xfe")  # not UTF-8: this crashed the worker
        await agent.put(None, key=b"a\x00b")  # UTF-8, but not an id
        await agent.put(item.model_dump_json().encode(), key=item.item_id.encode())
        await agent.put(None, key=item.item_id.encode())  # a real removal

    letters = emitter.to("dead-letters")
    assert [d.key for d in letters] == [b"\xff\xfe", b"a\x00b"]
    assert {d.headers["recloop.dlq.reason"] for d in letters} == {b"key_mismatch"}
    states = [s.value for s in emitter.to("item-state")]
    assert len(states) == 2 and states[1] is None


async def test_a_lost_latest_snapshot_is_ranked_anew_when_its_event_comes_back(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    # a full disk can stop the worker between writing the profile and its snapshot
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("e1", "u2", "click", "item-00001"), key=b"u2")
        await agent.put(_event("e2", "u2", "click", "item-00002"), key=b"u2")
        await until(lambda: recloop.stats.processed == 2)  # e2's snapshot is stored
        del recloop.snapshots.data["u2"]  # the table as the crash left it
        await agent.put(_event("e2", "u2", "click", "item-00002"), key=b"u2")
    _, second, again = (parse_snapshot(s.value or b"") for s in emitter.to("snapshots"))
    assert (
        (again.version, again.source_event_id)
        == (2, "e2")
        == (
            second.version,
            second.source_event_id,
        )
    )
    assert [i.item_id for i in again.items] == [i.item_id for i in second.items]
    assert recloop.snapshots["u2"] is not None and recloop.stats.republished == 1


async def test_a_lost_snapshot_of_a_late_event_on_a_surface_is_rebuilt_as_it_was_sent(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    items = [item.item_id for item in world.items]  # categories round-robin over 4
    kids = {"context": {"surface": "kids"}}
    async with recloop.events_agent.test_context() as agent:
        for n in range(6):  # six likes of one category, then a miss in it, on "kids"
            like = _event(f"e{n}", "u3", "click", items[4 * n],
                          timestamp=f"2026-11-01T10:0{n}:00Z", **kids)  # fmt: skip
            await agent.put(like, key=b"u3")
        miss = _event("nr", "u3", "not_relevant", items[24],
                      timestamp="2026-11-01T10:06:00Z", **kids)  # fmt: skip
        await agent.put(miss, key=b"u3")
        late = _event("late", "u3", "click", items[1], timestamp="2026-11-01T07:00:00Z", **kids)
        await agent.put(late, key=b"u3")
        await until(lambda: recloop.stats.processed == 8)  # its snapshot is stored
        del recloop.snapshots.data["u3"]  # the crash came between the two table writes
        await agent.put(late, key=b"u3")
    *_, sent, again = (parse_snapshot(s.value or b"") for s in emitter.to("snapshots"))
    # the rebuilt snapshot is the one consumers had: the late event's time, the list
    # ranked for the surface the penalty was strongest on
    assert (again.version, again.source_event_id) == (sent.version, sent.source_event_id)
    assert again.event_time == sent.event_time
    assert [i.item_id for i in again.items] == [i.item_id for i in sent.items]
    assert recloop.stats.republished == 1


BURST = (5, 10_000.0)  # a batch of exactly five events (the window never closes first)


@pytest.mark.parametrize("batch", [BURST])
async def test_a_burst_of_one_users_events_coalesces_into_the_snapshot_of_the_last(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    items = [item.item_id for item in world.items]
    burst = [
        ("e1", "u1", "click", items[0], {}),
        ("f1", "u2", "click", items[1], {}),
        ("e2", "u1", "dwell", items[4], {"dwell_ms": 90000.0}),
        ("e3", "u1", "click", items[8], {}),
        ("f2", "u2", "skip", items[5], {}),
    ]
    model = RankingModel.restore(recloop.model.snapshot())  # as it was before the burst
    async with recloop.events_agent.test_context() as agent:
        for event_id, user, kind, item, extra in burst:
            await agent.put(_event(event_id, user, kind, item, **extra), key=user.encode())

    # what one event at a time would have published last for each user, and sent on
    config, catalog = recloop.config, recloop.follower.catalog
    profiles: dict[str, UserProfile] = {}
    last: dict[str, bytes] = {}
    feedback: list[bytes] = []
    for event_id, user, kind, item, extra in burst:
        raw = _event(event_id, user, kind, item, **extra)
        event = decode_event(raw, key=user.encode(), now=NOW, limits=recloop.limits)
        step = process_event(event, profiles.get(user), catalog, config, NOW, model)
        assert step.snapshot is not None
        profiles[user], last[user] = step.profile, snapshot_to_json(step.snapshot)
        feedback += [record.to_json() for record in step.feedback]

    sent = emitter.to("snapshots")
    assert [(s.key, parse_snapshot(s.value or b"").version) for s in sent] == [
        (b"u1", 3),
        (b"u2", 2),
    ]
    assert {s.key: s.value for s in sent} == {b"u1": last["u1"], b"u2": last["u2"]}
    assert recloop.users["u1"] == profiles["u1"].snapshot()
    assert recloop.users["u2"] == profiles["u2"].snapshot()
    assert sorted(f.value or b"" for f in emitter.to("item-feedback")) == sorted(feedback)
    assert (recloop.stats.processed, recloop.stats.coalesced) == (5, 3)
    assert recloop.live_metrics.lists == 2  # one list per snapshot, every event counted
    assert sum(recloop.live_metrics.events_by_type.values()) == 5


@pytest.mark.parametrize("batch", [(3, 10_000.0)])
async def test_in_a_burst_an_event_de_escalation_reacts_to_is_answered_at_once(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    items = [item.item_id for item in world.items]
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("e1", "u1", "click", items[0]), key=b"u1")
        await agent.put(_event("e2", "u1", "not_relevant", items[1]), key=b"u1")
        await agent.put(_event("e3", "u1", "click", items[2]), key=b"u1")
    answered = [parse_snapshot(s.value or b"") for s in emitter.to("snapshots")]
    assert [(s.version, s.source_event_id) for s in answered] == [(2, "e2"), (3, "e3")]
    assert answered[0].notice is not None and answered[1].notice is None
    audited = [json.loads(a.value or b"")["event_id"] for a in emitter.to("audit")]
    assert audited and set(audited) == {"e2"}


@pytest.mark.parametrize(("batch", "partitions"), [((3, 10_000.0), 2)])
async def test_each_table_write_of_a_batch_goes_to_its_own_events_partition(
    recloop: Recloop, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[tuple[str, object, int | None]] = []
    for table in (recloop.users, recloop.snapshots):
        send = table.send_changelog

        def spy(partition: int | None, key: object, *args: Any, _send: Any = send,
                _name: str = table.name, **kwargs: Any) -> Any:  # fmt: skip
            written.append((_name, key, partition))
            return _send(partition, key, *args, **kwargs)

        monkeypatch.setattr(table, "send_changelog", spy)
    async with recloop.events_agent.test_context() as agent:
        # u5's partition of two is 1 and u2's 0 (murmur2)
        await agent.put(_event("e1", "u5", "click", "item-00001"), key=b"u5", partition=1)
        await agent.put(_event("e2", "u2", "click", "item-00002"), key=b"u2", partition=0)
        await agent.put(_event("e3", "u5", "click", "item-00003"), key=b"u5", partition=1)
        await until(lambda: len(written) == 4)  # the batch of three is done
    assert sorted(written) == [
        ("snapshots", "u2", 0),
        ("snapshots", "u5", 1),
        ("users", "u2", 0),
        ("users", "u5", 1),
    ]


@pytest.mark.parametrize("batch", [(3, 10_000.0)])
async def test_item_feedback_in_one_batch_republishes_each_item_once(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    a, b = world.items[2].item_id, world.items[3].item_id

    async with recloop.item_feedback_agent.test_context() as agent:
        await agent.put(_like(a, "e1"), key=a.encode())
        await agent.put(_like(b, "e2"), key=b.encode())
        await agent.put(_like(a, "e3"), key=a.encode())
    states = [ItemState.restore(s.value or b"") for s in emitter.to("item-state")]
    assert [(s.item_id, s.positives) for s in states] == [(a, 2), (b, 1)]
    assert ItemState.restore(recloop.items[a]).positives == 2


@pytest.mark.parametrize("batch", [(4, 10_000.0)])
async def test_an_unreadable_item_feedback_record_is_dead_lettered_and_the_rest_applied(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # it stopped the worker, unacknowledged: after a restart it came first, and stopped it
    # again; a kind this worker does not know comes from a newer one in a rolling upgrade
    item = world.items[2].item_id
    good = _like(item, "e1")
    bad = [
        json.dumps({"item_id": item}).encode(),
        b"not json",
        good.replace(b'"e1"', b'"e2", "kind": "impression"'),
    ]
    async with recloop.item_feedback_agent.test_context() as agent:
        first = [await agent.put(raw, key=item.encode()) for raw in bad]
        last = await agent.put(good, key=item.encode())
        await until(lambda: last.message.acked)
    assert all(event.message.acked for event in first)
    letters = emitter.to("dead-letters")
    assert [d.value for d in letters] == bad  # original bytes, untouched
    assert {d.headers["recloop.dlq.reason"] for d in letters} == {b"schema_violation"}
    assert all(d.headers["recloop.dlq.topic"] == b"p.item-feedback" for d in letters)
    (state,) = [ItemState.restore(s.value or b"") for s in emitter.to("item-state")]
    assert (state.item_id, state.positives) == (item, 1)


async def test_damaged_item_feedback_and_records_under_another_key_change_no_item(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld
) -> None:
    # a list for an id stopped the worker (unhashable, outside the guard); a record under
    # another item's key changed the item it names, and an expiry under another key
    # deleted the keyed item from every worker's catalog
    item, other = world.items[2].item_id, world.items[3].item_id
    damaged = [
        json.dumps({"item_id": [item], "target": 1.0, "weight": 1.0, "event_id": "d1",
                    "event_time": "2026-11-01T10:00:00+00:00"}).encode(),
        _like(item, "d2").replace(b'"target": 1.0', b'"target": NaN'),
        _like(item, "d3").replace(b'"target": 1.0', b'"target": true'),
        _like(item, "d4").replace(b"+00:00", b""),  # a time without its offset
        _like(item, "d5", user_id="").replace(b'"user_id": ""', b'"user_id": 7'),
        b"[1, 2]",
    ]  # fmt: skip
    elsewhere = [_like(other, "m1"), expiry_of(other, NOW).to_json()]
    async with recloop.item_feedback_agent.test_context() as agent:
        first = [await agent.put(raw, key=item.encode()) for raw in [*damaged, *elsewhere]]
        last = await agent.put(_like(item, "ok"), key=item.encode())
        await until(lambda: last.message.acked)
    assert all(event.message.acked for event in first)
    letters = emitter.to("dead-letters")
    assert [d.value for d in letters] == [*damaged, *elsewhere]
    reasons = [d.headers["recloop.dlq.reason"] for d in letters]
    assert reasons == [b"schema_violation"] * len(damaged) + [b"key_mismatch"] * 2
    published = [ItemState.restore(s.value or b"") for s in emitter.to("item-state")]
    assert [(state.item_id, state.positives) for state in published] == [(item, 1)]


@pytest.mark.parametrize("batch", [(2, 10_000.0)])
async def test_dead_lettering_item_feedback_never_undoes_a_catalog_change_made_meanwhile(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # the catalog agent runs while the item-feedback agent awaits a send: a state read
    # before the dead letter went out was written back over the catalog's change
    item = world.items[2]
    renamed = item.model_copy(update={"title": "renamed"})
    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(item.model_dump_json().encode(), key=item.item_id.encode())
    send = emitter.send

    async def catalog_changes_meanwhile(topic: str, *args: Any, **kw: Any) -> None:
        if topic.endswith("dead-letters"):  # as handle_catalog_record does, for the rename
            stored = ItemState.restore(recloop.items.data[item.item_id])
            recloop.items.data[item.item_id] = stored.with_record(renamed).snapshot()
        await send(topic, *args, **kw)

    monkeypatch.setattr(emitter, "send", catalog_changes_meanwhile)
    like = _like(item.item_id, "e1")
    async with recloop.item_feedback_agent.test_context() as agent:
        await agent.put(like, key=item.item_id.encode())
        last = await agent.put(b"not json", key=item.item_id.encode())
        await until(lambda: last.message.acked)
    state = ItemState.restore(emitter.to("item-state")[-1].value or b"")
    assert state.record == renamed and state.positives == 1
    assert ItemState.restore(recloop.items[item.item_id]).record == renamed


@pytest.mark.parametrize("batch", [(2, 10_000.0)])
async def test_item_feedback_never_undoes_a_catalog_change_made_while_another_item_is_sent(
    recloop: Recloop, emitter: RecordingEmitter, world: SyntheticWorld,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # the batch's states were all read first, then sent one by one: the catalog agent,
    # running while the first item's state was sent, renamed the second, and the second's
    # state read before that was written back over the rename
    a, b = world.items[2], world.items[3]
    renamed = b.model_copy(update={"title": "renamed"})
    async with recloop.catalog_agent.test_context() as agent:
        for item in (a, b):
            await agent.put(item.model_dump_json().encode(), key=item.item_id.encode())
    send = emitter.send

    async def catalog_changes_meanwhile(topic: str, key: bytes, value: bytes) -> None:
        if topic.endswith("item-state") and key == a.item_id.encode():
            stored = ItemState.restore(recloop.items.data[b.item_id])
            recloop.items.data[b.item_id] = stored.with_record(renamed).snapshot()
        await send(topic, key, value)

    monkeypatch.setattr(emitter, "send", catalog_changes_meanwhile)
    async with recloop.item_feedback_agent.test_context() as agent:
        await agent.put(_like(a.item_id, "e1"), key=a.item_id.encode())
        last = await agent.put(_like(b.item_id, "e2"), key=b.item_id.encode())
        await until(lambda: last.message.acked)
    stored = ItemState.restore(recloop.items[b.item_id])
    assert stored.record == renamed and stored.positives == 1
    assert ItemState.restore(emitter.to("item-state")[-1].value or b"").record == renamed


async def test_a_batch_is_acknowledged_only_once_its_changelog_records_left_the_buffer(
    recloop: Recloop, monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = recloop.app.producer.buffer
    assert isinstance(buffer, ProducerBuffer)
    ack = Message.ack

    def logged_ack(message: Message, *args: Any, **kw: Any) -> bool:
        buffer.log.append(f"ack {message.key!r}")
        return ack(message, *args, **kw)

    monkeypatch.setattr(Message, "ack", logged_ack)
    async with recloop.events_agent.test_context() as agent:
        event = await agent.put(_event("e1", "u1", "click", "item-00001"), key=b"u1")
    assert event.message.acked
    # the profile, the latest snapshot and the partition's progress: three changelog
    # records, all sent before the ack
    assert buffer.log == ["queued"] * 3 + ["sent"] * 3 + ["ack b'u1'"]


async def test_offsets_the_stream_skipped_are_read_back_and_applied_before_the_rest(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    """Faust skips (and acknowledges) events around a rebalance: the partition's progress
    shows the jump, and the missing records are read back from the topic and applied first,
    in offset order, without an ack of their own."""
    stored = recloop.progress.fetcher
    assert isinstance(stored, StoredRecords)
    topic = recloop.topic_names["events"]
    stored.records[(topic, 0)] = [
        Fetched(n, b"u1", _event(f"e{n + 1}", "u1", "click", f"item-0000{n + 1}"), 0)
        for n in (1, 2)
    ]
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("e1", "u1", "click", "item-00001"), key=b"u1", partition=0)
        agent.sent_offset = 3  # offsets 1 and 2 never reach the agent
        last = await agent.put(_event("e4", "u1", "click", "item-00004"), key=b"u1", partition=0)
        await until(lambda: last.message.acked)
    assert stored.asked == [(topic, 0, 1, 3)]
    profile = UserProfile.restore(recloop.users["u1"])
    assert profile.recent_event_ids == ("e1", "e2", "e3", "e4")
    assert recloop.progress.refilled == 2 and last.message.acked
    snapshots = [parse_snapshot(s.value or b"") for s in emitter.to("snapshots")]
    assert [(s.version, s.source_event_id) for s in snapshots] == [(1, "e1"), (4, "e4")]


async def test_a_jump_over_offsets_the_topic_does_not_hold_refills_nothing(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    """A transaction marker or a record past retention leaves an offset with no record."""
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("e1", "u1", "click", "item-00001"), key=b"u1", partition=0)
        agent.sent_offset = 5
        await agent.put(_event("e2", "u1", "click", "item-00002"), key=b"u1", partition=0)
        await agent.put(_event("e3", "u1", "click", "item-00003"), key=b"u1", partition=0)
    stored = recloop.progress.fetcher
    assert isinstance(stored, StoredRecords)
    assert stored.asked == [(recloop.topic_names["events"], 0, 1, 5)]  # once: then in step
    assert recloop.progress.refilled == 0
    assert UserProfile.restore(recloop.users["u1"]).events_applied == 3


async def test_a_batch_that_fails_is_never_acknowledged_and_stops_the_worker(
    recloop: Recloop, emitter: RecordingEmitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fatal: list[BaseException] = []
    recloop.on_fatal = fatal.append  # in production: exit the process at once
    send = emitter.send

    async def disk_full_for_u3(topic: str, key: bytes | None, *args: Any, **kw: Any) -> None:
        if key == b"u3":
            raise OSError(28, "No space left on device")
        await send(topic, key, *args, **kw)

    monkeypatch.setattr(emitter, "send", disk_full_for_u3)
    async with recloop.events_agent.test_context() as agent:
        fine = await agent.put(_event("e1", "u1", "click", "item-00001"), key=b"u1")
        failed = await agent.put(_event("e2", "u3", "click", "item-00002"), key=b"u3")
    assert [str(exc) for exc in fatal] == ["[Errno 28] No space left on device"]
    assert fine.message.acked and not failed.message.acked


async def test_a_worker_with_no_events_still_takes_in_new_items(world: SyntheticWorld) -> None:
    # the catalog follower's queue used to be applied only before a batch of events: on a
    # worker whose events partitions were quiet, a new item never reached its catalog
    # (its HTTP API and metrics) and the queue kept every update
    import asyncio

    from pipeline.catalog_follower import CatalogFollower

    app, fatal = pipeline_app(Catalog(), {}, RecordingEmitter(), NOW)
    follower = CatalogFollower("127.0.0.1:9", "p.item-state", 1, app.catalog)  # no broker
    follower.start = lambda timeout_s=30.0: None  # type: ignore[method-assign]
    app.follower = follower
    offsets = iter(range(10_000))

    def published(item: ItemRecord) -> None:  # by an item agent; the follower queued it
        state = ItemState(item_id=item.item_id, record=item)
        follower._queue.put((item.item_id.encode(), state.snapshot(), 0, next(offsets)))

    (timer,) = [t for t in app.app._app_tasks if t.__name__ == "_follow_timer"]
    ticking = asyncio.ensure_future(timer())  # as the worker runs it, every 50 ms
    try:
        for item in world.items[:10]:
            published(item)
        await asyncio.sleep(0.3)  # several ticks
        assert not ticking.done()
        assert len(follower.catalog) == 0  # the start applies it, then builds the index
        await app._ensure_catalog()  # the worker's first event: it is ready
        assert len(follower.catalog) == 10
        for n in range(1200):  # more than a slice, and no event comes
            published(world.items[10 + n % 30])
        await until(lambda: len(follower.catalog) == 40)
        await until(follower._queue.empty)
        new = world.items[-1].item_id
        assert new in [i for i, _ in follower.catalog.neighbours(world.items[10].item_id, 40)]
    finally:
        ticking.cancel()
        close_pipeline_app(app, fatal)


@pytest.mark.parametrize(("replicas", "config"), [(3, {"min.insync.replicas": "2"}), (1, {})])
async def test_table_changelogs_are_declared_with_the_topics_in_sync_replicas(
    replicas: int, config: dict[str, str]
) -> None:
    # Faust declares the changelogs, the state that must survive the loss of a machine;
    # they got no min.insync.replicas, so acks=all could count a single copy
    env = {"RECLOOP__KAFKA__REPLICATION_FACTOR": str(replicas),
           "RECLOOP__KAFKA__MIN_INSYNC_REPLICAS": "2"}  # fmt: skip
    app, fatal = pipeline_app(Catalog(), env, RecordingEmitter(), NOW)
    declared: dict[str, tuple[int, dict[str, str]]] = {}

    class Producer:  # what the broker is asked for
        async def create_topic(self, topic: str, replication: int, config: dict[str, str],
                               **kw: Any) -> None:  # fmt: skip
            declared[topic] = (replication, dict(config))

    async def producer() -> Producer:
        return Producer()

    try:
        for table in (app.users, app.items, app.snapshots, app.progress.table):
            table.changelog_topic._get_producer = producer
            await table.changelog_topic.declare()
    finally:
        close_pipeline_app(app, fatal)
    names = ("users", "items", "snapshots", "progress")
    assert declared == {f"recloop-{name}-changelog": (replicas, config) for name in names}


@pytest.mark.parametrize(
    ("host", "advertised", "expected"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("0.0.0.0", None, socket.gethostname()),
        ("0.0.0.0", "worker-2.internal", "worker-2.internal"),
    ],
)
def test_the_web_server_binds_to_the_host_named_and_advertises_a_reachable_one(
    host: str, advertised: str | None, expected: str
) -> None:
    # Faust binds web_bind, 0.0.0.0 by default, whatever web_host says; web_host makes
    # the canonical URL every member shares, the key of the table of owners: 0.0.0.0
    # there made all workers one, each answering for (or giving up on) the others' users
    env = {"RECLOOP__WORKER__WEB_HOST": host}
    if advertised is not None:
        env["RECLOOP__WORKER__WEB_ADVERTISED_HOST"] = advertised
    app, fatal = pipeline_app(Catalog(), env, RecordingEmitter(), NOW)
    try:
        assert app.app.conf.web_bind == host
        assert app.app.conf.canonical_url.host == expected
        assert app.app.conf.canonical_url.port == 6066
    finally:
        close_pipeline_app(app, fatal)


def test_an_ipv6_wildcard_is_not_advertised_either() -> None:
    assert advertised_host(WorkerSettings(web_host="::")) == socket.gethostname()
    assert advertised_host(WorkerSettings(web_host="::1")) == "::1"


async def test_event_figures_count_events_a_forget_included_and_no_catalog_record(
    recloop: Recloop, emitter: RecordingEmitter
) -> None:
    from pipeline.metrics import worker_figures

    async with recloop.catalog_agent.test_context() as agent:
        await agent.put(b'{"item_id": "x"}', key=b"x")  # an invalid catalog record
    assert worker_figures(recloop)["dead_letter_rate"] is None  # no event read yet
    forget = json.dumps({"event_id": "f1", "user_id": "u2", "type": "forget",
                         "timestamp": "2026-11-01T10:00:00Z"}).encode()  # fmt: skip
    async with recloop.events_agent.test_context() as agent:
        await agent.put(_event("e1", "u2", "click", "item-00001"), key=b"u2")
        await agent.put(forget, key=b"u2")
        await agent.put(b"{", key=b"u2")

    figures = worker_figures(recloop)
    assert (figures["processed"], figures["duplicates"], figures["dead_lettered"]) == (2, 0, 1)
    assert figures["dead_letter_rate"] == pytest.approx(1 / 3)
    # every record sent to the dead-letter topic, by reason
    assert figures["dead_letter_reasons"] == {"missing_field": 1, "invalid_json": 1}
    assert len(emitter.to("dead-letters")) == 2


def test_the_final_checkpoint_waits_for_a_save_still_running_in_a_thread(tmp_path: Path) -> None:
    # at stop the timer is cancelled but its thread runs on: two renames of one file
    app, fatal = pipeline_app(Catalog(), {"RECLOOP__WORKER__STATE_DIR": str(tmp_path)},
                              RecordingEmitter(), NOW)  # fmt: skip
    log: list[str] = []
    started = threading.Event()

    def slow_save(path: Path) -> None:
        name = threading.current_thread().name
        log.append(f"{name} starts")
        started.set()
        time.sleep(0.3 if name == "timer" else 0.0)
        log.append(f"{name} ends")

    try:
        app.catalog.index.save = slow_save  # type: ignore[method-assign]
        timer = threading.Thread(target=app._save_index, name="timer")
        timer.start()
        assert started.wait(5)
        app.checkpoint()
        timer.join()
        assert log == ["timer starts", "timer ends", "MainThread starts", "MainThread ends"]
        assert app.model_path.exists()
    finally:
        close_pipeline_app(app, fatal)


async def test_a_checkpoint_the_disk_refuses_costs_the_worker_nothing_and_is_tried_again(
    tmp_path: Path, world: SyntheticWorld, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # the OSError left the timer, which took Faust's orderly shutdown: it commits events
    # nobody processed; and the saves' bookkeeping said saved
    import errno

    import pipeline.app

    app, fatal = pipeline_app(Catalog(), {"RECLOOP__WORKER__STATE_DIR": str(tmp_path)},
                              RecordingEmitter(), NOW)  # fmt: skip
    app.follower = FixedCatalog(app.catalog)  # the catalog whose index the worker saves
    for item in world.items:
        app.catalog.put(ItemState(item_id=item.item_id, record=item))
    try:
        async with app.events_agent.test_context() as agent:
            await agent.put(_event("e1", "u1", "click", world.items[0].item_id), key=b"u1")
        assert app.ready and app.model.updates > 0

        def full(*args: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as disk:
            disk.setattr(pipeline.app, "write_atomic", full)
            disk.setattr(app.catalog.index, "save", full)
            await app._checkpoint_timer()  # raised out of the timer
        assert not app.model_path.exists() and not app.index_path.exists()
        assert caplog.text.count("No space left on device") == 2
        await app._checkpoint_timer()  # space was freed: the next tick saves both
        assert RankingModel.restore(app.model_path.read_bytes()).updates == app.model.updates
        assert app.index_path.exists()
    finally:
        close_pipeline_app(app, fatal)


async def test_the_first_index_build_runs_in_batches_off_the_event_loop() -> None:
    # a worker joining with a large catalog must keep its loop turning (Kafka heartbeats,
    # health checks) while hnswlib indexes every item; and no second caller may go on
    # before the catalog is ready
    import asyncio

    world = SyntheticWorld.generate(seed=5, n_items=2500, n_users=1, n_categories=5)
    catalog = Catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    app, fatal = pipeline_app(catalog, {}, RecordingEmitter(), NOW)
    index = catalog.index
    writes: list[tuple[str, int, int]] = []  # (thread, items, loop turns so far)
    turns = 0
    original = index.upsert_many

    def slow_upsert_many(ids: Any, vectors: Any) -> None:
        writes.append((threading.current_thread().name, len(ids), turns))
        time.sleep(0.05)  # a large batch: the loop must not wait for it
        original(ids, vectors)

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0.005)

    index.upsert_many = slow_upsert_many  # type: ignore[method-assign]
    drained_before_ready: list[bool] = []

    def drain(limit: int | None = None) -> int:
        drained_before_ready.append(not app.ready)
        return 0

    app.follower.drain = drain  # type: ignore[method-assign]
    try:
        ticking = asyncio.ensure_future(ticker())
        await asyncio.gather(app._ensure_catalog(), app._ensure_catalog())
        ticking.cancel()
    finally:
        close_pipeline_app(app, fatal)
    assert app.ready and len(index) == 2500 and catalog.index_changes == 2500
    assert [n for _, n, _ in writes] == [1024, 1024, 452]
    assert all(thread != threading.main_thread().name for thread, _, _ in writes)
    seen = [t for _, _, t in writes]
    assert seen == sorted(seen) and seen[-1] > seen[0]  # the loop turned between batches
    assert drained_before_ready == [False]  # the second caller waited for the start


async def test_catching_up_with_a_large_item_state_topic_lets_the_loop_turn() -> None:
    import asyncio

    from pipeline.catalog_follower import CatalogFollower

    follower = CatalogFollower("127.0.0.1:9", "p.item-state", 1)  # never started: no broker
    for n in range(5000):
        state = ItemState(item_id=f"i{n}")
        follower._queue.put((state.item_id.encode(), state.snapshot(), 0, n))
    follower._targets = {0: 5000}
    turns: list[int] = []  # how many records were applied at each turn of the loop

    async def ticker() -> None:
        while True:
            turns.append(len(follower.catalog))
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    assert await follower.wait_caught_up(timeout_s=30)
    ticking.cancel()
    assert len(follower.catalog) == 5000
    assert {500, 1000, 4500} <= set(turns)  # the loop turned between slices
