"""Schema-tier fixtures: one valid example document per event type, item and snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.events import EVENT_TYPES

TIMESTAMP = "2026-11-22T10:00:00Z"

_ITEM_EVENT: dict[str, Any] = {
    "event_id": "e-1",
    "user_id": "user-1",
    "timestamp": TIMESTAMP,
    "item_id": "item-9",
    "recommendation_id": "rec-3",
    "position": 2,
    "context": {"surface": "home", "device": "tv", "session_id": "s-1"},
}

EVENT_DOCS: dict[str, dict[str, Any]] = {
    "click": {**_ITEM_EVENT, "type": "click"},
    "skip": {**_ITEM_EVENT, "type": "skip"},
    "dwell": {**_ITEM_EVENT, "type": "dwell", "dwell_ms": 45_000.5},
    "not_relevant": {**_ITEM_EVENT, "type": "not_relevant", "reason": "seen_it"},
    "rating": {**_ITEM_EVENT, "type": "rating", "value": 4},
    "impression": {
        "event_id": "e-2",
        "user_id": "user-1",
        "timestamp": TIMESTAMP,
        "type": "impression",
        "item_ids": ["item-1", "item-2", "item-3"],
        "recommendation_id": "rec-3",
    },
    "preference": {
        "event_id": "e-3",
        "user_id": "user-1",
        "timestamp": TIMESTAMP,
        "type": "preference",
        "action": "pause_category",
        "category": "horror",
        "prompt_id": "p-1",
        "context": {"session_id": "s-1"},
    },
    "forget": {"event_id": "e-4", "user_id": "user-1", "timestamp": TIMESTAMP, "type": "forget"},
}


@pytest.fixture(params=EVENT_TYPES)
def event_doc(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A valid event document (a fresh copy) of each type the contract knows."""
    kind: str = request.param
    return {**EVENT_DOCS[kind]}


@pytest.fixture
def click_doc() -> dict[str, Any]:
    """The smallest valid click: only the required fields."""
    return {
        "event_id": "e-1",
        "user_id": "user-1",
        "timestamp": TIMESTAMP,
        "type": "click",
        "item_id": "item-9",
    }


@pytest.fixture
def item_doc() -> dict[str, Any]:
    """A valid catalog record with every optional field set."""
    return {
        "item_id": "item-9",
        "category": "drama",
        "tags": ["drama", "award-winner"],
        "creator": "creator-1",
        "title": "A Long Night",
        "created_at": "2026-01-01T00:00:00+00:00",
        "duration_ms": 1_800_000.0,
        "embedding": [0.1, -0.25, 3.0e-7],
        "available": True,
    }


@pytest.fixture
def snapshot_doc() -> dict[str, Any]:
    """A valid snapshot with two ranked items."""
    return {
        "user_id": "user-1",
        "version": 3,
        "generated_at": "2026-11-22T10:00:01Z",
        "event_time": TIMESTAMP,
        "source_event_id": "e-1",
        "model_version": "popularity-affinity-1",
        "items": [
            {
                "item_id": "item-2",
                "score": 1.5,
                "category": "drama",
                "reasons": ["because you like drama"],
            },
            {"item_id": "item-7", "score": -0.25, "category": None, "reasons": []},
        ],
    }
