"""Recommendation snapshots (schemas/snapshot.py): what the snapshots topic carries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.snapshot import RankedItem, Snapshot, parse_snapshot, snapshot_to_json


def _errors(raw: str) -> list[tuple[str, tuple[str | int, ...]]]:
    with pytest.raises(ValidationError) as caught:
        parse_snapshot(raw)
    return [(err["type"], tuple(err["loc"])) for err in caught.value.errors()]


def _with(doc: dict[str, Any], **changes: Any) -> str:
    merged = {**doc, **changes}
    return json.dumps({key: value for key, value in merged.items() if value is not ...})


def test_a_snapshot_parses_with_items_in_rank_order(snapshot_doc: dict[str, Any]) -> None:
    snapshot = parse_snapshot(json.dumps(snapshot_doc))

    assert snapshot.user_id == "user-1"
    assert snapshot.version == 3
    assert snapshot.generated_at == datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)
    assert snapshot.event_time == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert [item.item_id for item in snapshot.items] == ["item-2", "item-7"]
    assert snapshot.items[0].reasons == ["because you like drama"]
    assert snapshot.items[1].category is None


def test_event_time_is_optional_and_the_list_may_be_empty(snapshot_doc: dict[str, Any]) -> None:
    snapshot = parse_snapshot(_with(snapshot_doc, event_time=..., items=[]))

    assert snapshot.event_time is None
    assert snapshot.items == []


@pytest.mark.parametrize(
    ("changes", "error_type", "location"),
    [
        pytest.param({"version": 0}, "greater_than_equal", ("version",), id="version-0"),
        pytest.param({"version": "3"}, "int_type", ("version",), id="version-as-string"),
        pytest.param({"user_id": ...}, "missing", ("user_id",), id="missing-user_id"),
        pytest.param(
            {"source_event_id": ...}, "missing", ("source_event_id",), id="missing-source_event_id"
        ),
        pytest.param({"items": ...}, "missing", ("items",), id="missing-items"),
        pytest.param(
            {"generated_at": "2026-11-22T10:00:01"},
            "timezone_aware",
            ("generated_at",),
            id="naive-generated_at",
        ),
        pytest.param(
            {"event_time": "2026-11-22T10:00:00"},
            "timezone_aware",
            ("event_time",),
            id="naive-event_time",
        ),
        pytest.param(
            {"user_id": "u\n"}, "string_pattern_mismatch", ("user_id",), id="id-with-control-char"
        ),
        pytest.param(
            {"schema_version": 2}, "literal_error", ("schema_version",), id="schema-version-2"
        ),
        pytest.param({"extra": 1}, "extra_forbidden", ("extra",), id="extra-field"),
        pytest.param(
            {"items": [{"item_id": "i", "score": "1"}]},
            "float_type",
            ("items", 0, "score"),
            id="score-as-string",
        ),
        pytest.param(
            {"items": [{"item_id": "i"}]}, "missing", ("items", 0, "score"), id="item-without-score"
        ),
        pytest.param(
            {"items": [{"item_id": "i", "score": 1, "why": "x"}]},
            "extra_forbidden",
            ("items", 0, "why"),
            id="extra-field-in-item",
        ),
    ],
)
def test_the_contract_rejects_a_bad_snapshot_and_says_where(
    snapshot_doc: dict[str, Any],
    changes: dict[str, Any],
    error_type: str,
    location: tuple[str | int, ...],
) -> None:
    assert _errors(_with(snapshot_doc, **changes))[0] == (error_type, location)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_score_must_be_finite(literal: str) -> None:
    raw = (
        '{"user_id": "u", "version": 1, "generated_at": "2026-11-22T10:00:00Z",'
        ' "source_event_id": "e", "model_version": "m",'
        f' "items": [{{"item_id": "i", "score": {literal}}}]}}'
    )

    assert _errors(raw)[0] == ("finite_number", ("items", 0, "score"))


def test_snapshot_to_json_round_trips(snapshot_doc: dict[str, Any]) -> None:
    snapshot = parse_snapshot(json.dumps(snapshot_doc))

    encoded = snapshot_to_json(snapshot)

    assert parse_snapshot(encoded) == snapshot
    assert snapshot_to_json(parse_snapshot(encoded)) == encoded
    assert b"null" not in encoded


def test_a_snapshot_built_in_python_round_trips_through_json() -> None:
    snapshot = Snapshot(
        user_id="u",
        version=1,
        generated_at=datetime(2026, 11, 22, tzinfo=UTC),
        source_event_id="e",
        model_version="m",
        items=[RankedItem(item_id="i", score=0.123456, reasons=["something new to try"])],
    )

    assert parse_snapshot(snapshot_to_json(snapshot)) == snapshot
