"""De-escalation through the real broker: a user says "not relevant" to a favourite kind."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from operators.synthetic import striped_catalog
from pipeline.settings import Settings
from schemas.catalog import ItemRecord
from schemas.events import Click, Context, Event, NotRelevant, Preference, Skip
from schemas.snapshot import Snapshot
from tests.integration.harness import Harness, free_port, scrape_metrics

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
CATEGORIES = ("thriller", "comedy", "drama", "documentary")


def _items() -> list[ItemRecord]:
    return striped_catalog(80, created_at=T0 - timedelta(days=400))


def _thrillers(snapshot: Snapshot) -> int:
    return sum(1 for item in snapshot.items if item.category == "thriller")


def test_a_not_relevant_is_heard_adjusted_explained_and_audited(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()  # the live figures are read from the worker's /metrics
    worker_settings = kafka_settings.worker.model_copy(
        update={"web_enabled": True, "web_port": port}
    )
    harness = Harness(kafka_settings.model_copy(update={"worker": worker_settings}), tmp_path)
    harness.send_items(_items())
    likes: list[Event] = [
        Click(
            type="click",
            event_id=f"c{n}",
            user_id="dana",
            item_id=f"i{n:02d}",
            timestamp=T0 + timedelta(minutes=n),
        )
        for n in (0, 4, 8, 12, 16, 20)
    ]
    dislike = NotRelevant(
        type="not_relevant",
        event_id="nr",
        user_id="dana",
        item_id="i24",
        reason="not_interested",
        timestamp=T0 + timedelta(minutes=30),
    )
    worker = harness.worker()
    worker.start()
    try:
        harness.wait_until_worker_sees_catalog()
        shown_before = harness.send_and_wait(likes)
        shown_after = harness.send_and_wait([dislike])
        audit = harness.read("audit", lambda records: len(records) >= 2)
        figures = scrape_metrics(port)
    finally:
        worker.stop()

    assert _thrillers(shown_before) >= 6, worker.log_tail()
    assert 1 <= _thrillers(shown_after) <= 0.3 * _thrillers(shown_before)
    assert "i24" not in [item.item_id for item in shown_after.items]
    notice = shown_after.notice
    assert notice is not None and notice.kind == "preferences_adjusted"
    assert "thriller" in notice.change and notice.relaxes_at is not None
    assert "category_deprioritized:thriller" in notice.tags
    records = [json.loads(r.value or b"{}") for r in audit]
    assert all(r.key == b"dana" for r in audit)
    assert {r["key"] for r in records} == {"category:thriller", "creator:studio-0"}
    assert all(r["basis"] == ["nr"] and r["rule"] == "not_relevant" for r in records)
    assert all(r["expires_at"] and r["after"] == 0.75 for r in records)
    # the live pipeline reports the same moment: one dissatisfaction, the share of the
    # disliked category in the list before and after it, and the adjusted snapshot's latency
    rule = (("rule", "not_relevant"),)
    assert figures[("recloop_dissatisfactions_total", ())] == 1
    before = figures[("recloop_deescalation_share_before", rule)]
    after = figures[("recloop_deescalation_share_after", rule)]
    assert before == _thrillers(shown_before) / len(shown_before.items)
    assert after == _thrillers(shown_after) / len(shown_after.items)
    assert 0 < after <= 0.3 * before
    assert figures[("recloop_deescalation_snapshot_seconds_count", ())] == 1


def test_a_skip_streak_and_a_pause_take_effect_on_the_next_snapshot(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    harness = Harness(kafka_settings, tmp_path)
    harness.send_items(_items())
    minute = iter(range(1000))

    def at() -> datetime:
        return T0 + timedelta(minutes=next(minute))

    likes: list[Event] = [
        Click(type="click", event_id=f"c{n}", user_id="eli", item_id=f"i{n:02d}", timestamp=at())
        for n in (0, 4, 8, 12, 16, 20)
    ]
    session = Context(session_id="evening")
    skips: list[Event] = [
        Skip(
            type="skip",
            event_id=f"s{n}",
            user_id="eli",
            item_id=f"i{n:02d}",
            timestamp=at(),
            context=session,
        )
        for n in (24, 28, 32)
    ]
    pause = Preference(type="preference", event_id="p1", user_id="eli", action="pause_category",
                       category="thriller", timestamp=at())  # fmt: skip
    worker = harness.worker()
    worker.start()
    try:
        harness.wait_until_worker_sees_catalog()
        before = harness.send_and_wait(likes)
        gentler = harness.send_and_wait(skips)
        paused = harness.send_and_wait([pause])
        audit = harness.read("audit", lambda records: len(records) >= 2)
    finally:
        worker.stop()

    assert _thrillers(before) >= 6, worker.log_tail()
    assert 1 <= _thrillers(gentler) < _thrillers(before)
    assert gentler.notice is not None
    assert gentler.notice.heard == "You skipped several recommendations in a row"
    assert _thrillers(paused) == 0
    assert paused.notice is not None and "until you resume" in paused.notice.change
    records = [json.loads(r.value or b"{}") for r in audit]
    assert [(r["rule"], r["basis"]) for r in records] == [
        ("skip_streak", ["s24", "s28", "s32"]),
        ("paused", ["p1"]),
    ]
