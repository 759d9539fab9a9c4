"""The event contract (schemas/events.py): what parses, what is rejected and where."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Click,
    Dwell,
    Event,
    Forget,
    Impression,
    NotRelevant,
    Preference,
    Rating,
    Skip,
    event_to_json,
    parse_event,
)

MODELS: dict[str, type] = {
    "click": Click,
    "skip": Skip,
    "dwell": Dwell,
    "not_relevant": NotRelevant,
    "rating": Rating,
    "impression": Impression,
    "preference": Preference,
    "forget": Forget,
}


def _errors(raw: str | bytes) -> list[tuple[str, tuple[str | int, ...]]]:
    """The (type, location) of every error the contract reports for ``raw``."""
    with pytest.raises(ValidationError) as caught:
        parse_event(raw)
    return [(err["type"], tuple(err["loc"])) for err in caught.value.errors()]


def _with(doc: dict[str, Any], **changes: Any) -> str:
    """``doc`` as JSON with fields changed; a value of ``...`` removes the field."""
    merged = {**doc, **changes}
    return json.dumps({key: value for key, value in merged.items() if value is not ...})


def test_a_valid_event_of_every_type_parses_into_its_own_model(
    event_doc: dict[str, Any],
) -> None:
    event = parse_event(json.dumps(event_doc))

    assert isinstance(event, MODELS[event_doc["type"]])
    assert event.type == event_doc["type"]
    assert event.event_id == event_doc["event_id"]
    assert event.user_id == "user-1"
    assert event.timestamp == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert event.schema_version == SCHEMA_VERSION == 1


def test_every_documented_event_type_has_a_model() -> None:
    assert set(EVENT_TYPES) == set(MODELS)


def test_the_type_specific_fields_are_read(event_doc: dict[str, Any]) -> None:
    event = parse_event(json.dumps(event_doc).encode())

    match event:
        case Dwell():
            assert event.dwell_ms == 45_000.5
        case Rating():
            assert event.value == 4.0
        case NotRelevant():
            assert event.reason == "seen_it"
        case Impression():
            assert event.item_ids == ["item-1", "item-2", "item-3"]
        case Click() | Skip():
            assert event.item_id == "item-9"
            assert event.position == 2
            assert event.context is not None and event.context.surface == "home"


def test_only_the_required_fields_are_needed(click_doc: dict[str, Any]) -> None:
    event = parse_event(json.dumps(click_doc))

    assert isinstance(event, Click)
    assert (event.context, event.recommendation_id, event.position) == (None, None, None)


@pytest.mark.parametrize("stamp", ["2026-11-22T12:00:00+02:00", "2026-11-22T05:00:00-05:00"])
def test_a_timestamp_with_any_utc_offset_is_the_same_instant(
    click_doc: dict[str, Any], stamp: str
) -> None:
    event = parse_event(_with(click_doc, timestamp=stamp))

    assert event.timestamp == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "error_type", "location"),
    [
        pytest.param({"type": "purchase"}, "union_tag_invalid", (), id="unknown-type"),
        pytest.param({"type": ...}, "union_tag_not_found", (), id="missing-type"),
        pytest.param({"user_id": ...}, "missing", ("click", "user_id"), id="missing-user_id"),
        pytest.param({"event_id": ...}, "missing", ("click", "event_id"), id="missing-event_id"),
        pytest.param({"item_id": ...}, "missing", ("click", "item_id"), id="missing-item_id"),
        pytest.param({"timestamp": ...}, "missing", ("click", "timestamp"), id="no-timestamp"),
        pytest.param(
            {"timestamp": "2026-11-22T10:00:00"},
            "timezone_aware",
            ("click", "timestamp"),
            id="naive-timestamp",
        ),
        pytest.param(
            {"timestamp": "yesterday"},
            "datetime_from_date_parsing",
            ("click", "timestamp"),
            id="unparseable-timestamp",
        ),
        pytest.param(
            {"timestamp": 1_795_000_000},
            "value_error",
            ("click", "timestamp"),
            id="epoch-number-timestamp",
        ),
        pytest.param(
            {"schema_version": 2},
            "literal_error",
            ("click", "schema_version"),
            id="schema-version-2",
        ),
        pytest.param(
            {"schema_version": "1"},
            "literal_error",
            ("click", "schema_version"),
            id="schema-version-as-string",
        ),
        pytest.param({"surprise": 1}, "extra_forbidden", ("click", "surprise"), id="extra-field"),
        pytest.param(
            {"context": {"surface": "home", "mood": "happy"}},
            "extra_forbidden",
            ("click", "context", "mood"),
            id="extra-field-in-context",
        ),
        pytest.param({"user_id": 42}, "string_type", ("click", "user_id"), id="numeric-id"),
        pytest.param({"position": "3"}, "int_type", ("click", "position"), id="position-as-string"),
        pytest.param(
            {"position": 1.5}, "int_type", ("click", "position"), id="fractional-position"
        ),
        pytest.param(
            {"position": -1}, "greater_than_equal", ("click", "position"), id="negative-position"
        ),
        pytest.param({"user_id": ""}, "string_too_short", ("click", "user_id"), id="empty-id"),
        pytest.param(
            {"user_id": "u" * 129}, "string_too_long", ("click", "user_id"), id="id-over-128-chars"
        ),
        pytest.param(
            {"item_id": "item\x00"},
            "string_pattern_mismatch",
            ("click", "item_id"),
            id="id-with-nul",
        ),
        pytest.param(
            {"user_id": "user\n1"},
            "string_pattern_mismatch",
            ("click", "user_id"),
            id="id-with-newline",
        ),
        pytest.param(
            {"user_id": "user-1\n"},
            "string_pattern_mismatch",
            ("click", "user_id"),
            id="id-with-trailing-newline",
        ),
        pytest.param(
            {"event_id": "e\x1b[31m"},
            "string_pattern_mismatch",
            ("click", "event_id"),
            id="id-with-escape-sequence",
        ),
        pytest.param(
            {"event_id": "e\x7f"},
            "string_pattern_mismatch",
            ("click", "event_id"),
            id="id-with-del",
        ),
        pytest.param(
            {"context": {"device": "d" * 257}},
            "string_too_long",
            ("click", "context", "device"),
            id="context-text-over-256",
        ),
    ],
)
def test_the_contract_rejects_a_bad_click_and_says_where(
    click_doc: dict[str, Any],
    changes: dict[str, Any],
    error_type: str,
    location: tuple[str, ...],
) -> None:
    errors = _errors(_with(click_doc, **changes))

    assert errors[0] == (error_type, location)


def test_an_id_of_exactly_128_characters_is_accepted(click_doc: dict[str, Any]) -> None:
    event = parse_event(_with(click_doc, user_id="u" * 128))

    assert len(event.user_id) == 128


def test_ids_may_hold_any_printable_unicode(click_doc: dict[str, Any]) -> None:
    event = parse_event(_with(click_doc, user_id="Zoë 🎬 用户"))

    assert event.user_id == "Zoë 🎬 用户"


@pytest.mark.parametrize("control", ["\u0085", "\u009b"])
def test_ids_with_c1_control_characters_are_rejected(
    click_doc: dict[str, Any], control: str
) -> None:
    assert _errors(_with(click_doc, user_id=f"user{control}1"))[0][0] == ("string_pattern_mismatch")


@pytest.mark.parametrize(
    ("dwell_ms", "error_type"),
    [
        pytest.param(-1, "greater_than_equal", id="negative"),
        pytest.param(-0.001, "greater_than_equal", id="slightly-negative"),
        pytest.param(86_400_000.001, "less_than_equal", id="over-one-day"),
        pytest.param("100", "float_type", id="string-in-strict-mode"),
        pytest.param(True, "float_type", id="boolean"),
        pytest.param(None, "float_type", id="null"),
    ],
)
def test_dwell_must_be_a_number_of_ms_within_one_day(dwell_ms: object, error_type: str) -> None:
    doc = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "dwell",
        "item_id": "i",
        "dwell_ms": dwell_ms,
    }

    assert _errors(json.dumps(doc))[0] == (error_type, ("dwell", "dwell_ms"))


@pytest.mark.parametrize("dwell_ms", [0, 1, 86_400_000])
def test_dwell_bounds_are_inclusive(dwell_ms: int) -> None:
    doc = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "dwell",
        "item_id": "i",
        "dwell_ms": dwell_ms,
    }

    event = parse_event(json.dumps(doc))

    assert isinstance(event, Dwell) and event.dwell_ms == float(dwell_ms)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(("kind", "field"), [("dwell", "dwell_ms"), ("rating", "value")])
def test_nan_and_infinity_in_json_are_rejected(kind: str, field: str, literal: str) -> None:
    raw = (
        '{"event_id": "e", "user_id": "u", "timestamp": "2026-11-22T10:00:00Z", '
        f'"type": "{kind}", "item_id": "i", "{field}": {literal}}}'
    )

    errors = _errors(raw)

    assert errors[0][1] == (kind, field)
    assert errors[0][0] in {"finite_number", "greater_than_equal", "less_than_equal"}


@pytest.mark.parametrize(
    ("changes", "error_type", "location"),
    [
        pytest.param({"value": 5.5}, "less_than_equal", ("rating", "value"), id="over-5"),
        pytest.param({"value": -0.5}, "greater_than_equal", ("rating", "value"), id="under-0"),
        pytest.param({"value": "4"}, "float_type", ("rating", "value"), id="string"),
        pytest.param({"value": ...}, "missing", ("rating", "value"), id="missing"),
    ],
)
def test_a_rating_is_a_number_from_0_to_5(
    changes: dict[str, Any], error_type: str, location: tuple[str, ...]
) -> None:
    doc = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "rating",
        "item_id": "i",
        "value": 3,
    }

    assert _errors(_with(doc, **changes))[0] == (error_type, location)


def test_not_relevant_only_accepts_the_listed_reasons() -> None:
    doc = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "not_relevant",
        "item_id": "i",
    }

    assert isinstance(parse_event(_with(doc, reason="offensive")), NotRelevant)
    assert parse_event(_with(doc)).reason is None  # type: ignore[union-attr]
    assert _errors(_with(doc, reason="boring"))[0] == (
        "literal_error",
        ("not_relevant", "reason"),
    )


@pytest.mark.parametrize(
    ("item_ids", "error_type", "location"),
    [
        pytest.param([], "too_short", ("impression", "item_ids"), id="empty"),
        pytest.param(
            [f"i{n}" for n in range(201)], "too_long", ("impression", "item_ids"), id="over-200"
        ),
        pytest.param(
            ["ok", "bad\x01"],
            "string_pattern_mismatch",
            ("impression", "item_ids", 1),
            id="control-char-in-one-id",
        ),
        pytest.param("item-1", "list_type", ("impression", "item_ids"), id="not-a-list"),
    ],
)
def test_an_impression_lists_1_to_200_valid_ids(
    item_ids: object, error_type: str, location: tuple[str | int, ...]
) -> None:
    doc = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "impression",
        "item_ids": item_ids,
    }

    assert _errors(json.dumps(doc))[0] == (error_type, location)


def test_an_impression_of_exactly_200_items_is_accepted() -> None:
    ids = [f"i{n}" for n in range(200)]
    doc = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "impression",
        "item_ids": ids,
    }

    event = parse_event(json.dumps(doc))

    assert isinstance(event, Impression) and event.item_ids == ids


def test_an_impression_has_no_item_id() -> None:
    doc = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "impression",
        "item_ids": ["i1"],
        "item_id": "i1",
    }

    assert _errors(json.dumps(doc))[0] == ("extra_forbidden", ("impression", "item_id"))


def test_every_error_is_reported_not_only_the_first(click_doc: dict[str, Any]) -> None:
    errors = _errors(_with(click_doc, user_id=..., item_id="", surprise=True))

    assert {location for _, location in errors} == {
        ("click", "user_id"),
        ("click", "item_id"),
        ("click", "surprise"),
    }


def test_schema_version_true_is_rejected_as_a_wrong_type(click_doc: dict[str, Any]) -> None:
    assert _errors(_with(click_doc, schema_version=True))[0][1] == ("click", "schema_version")


def test_a_missing_schema_version_means_this_version(click_doc: dict[str, Any]) -> None:
    assert parse_event(_with(click_doc)).schema_version == 1
    assert parse_event(_with(click_doc, schema_version=1)).schema_version == 1


def test_events_are_immutable(click_doc: dict[str, Any]) -> None:
    event = parse_event(json.dumps(click_doc))

    with pytest.raises(ValidationError):
        event.user_id = "someone-else"  # type: ignore[misc]
    assert event.user_id == "user-1"


def test_event_to_json_round_trips_every_type(event_doc: dict[str, Any]) -> None:
    event = parse_event(json.dumps(event_doc))

    encoded = event_to_json(event)

    assert isinstance(encoded, bytes)
    assert parse_event(encoded) == event
    assert event_to_json(parse_event(encoded)) == encoded


def test_event_to_json_is_compact_and_leaves_out_unset_fields(
    click_doc: dict[str, Any],
) -> None:
    encoded = event_to_json(parse_event(json.dumps(click_doc)))

    assert b" " not in encoded
    assert b"null" not in encoded
    assert set(json.loads(encoded)) == set(click_doc) | {"schema_version"}


def test_event_to_json_keeps_the_instant_and_microseconds() -> None:
    when = datetime(2026, 3, 29, 1, 59, 59, 123456, tzinfo=timezone(timedelta(hours=2)))
    event: Event = Rating(
        type="rating", event_id="e", user_id="u", item_id="i", value=0.1, timestamp=when
    )

    back = parse_event(event_to_json(event))

    assert back.timestamp == when
    assert back.timestamp.utcoffset() == timedelta(hours=2)
    assert back == event


def test_models_built_in_python_follow_the_same_contract() -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test

    with pytest.raises(ValidationError, match="timezone"):
        Click(type="click", event_id="e", user_id="u", item_id="i", timestamp=naive)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"action": "more_like"}, "needs item_id"),
        ({"action": "pause_creator", "category": "horror"}, "takes no category"),
        ({"action": "pause_creator"}, "needs creator"),
        ({"action": "prompts_off", "item_id": "i1"}, "takes no item_id"),
        ({"action": "shout"}, "literal_error"),
    ],
)
def test_a_preference_names_exactly_what_its_action_needs(
    doc: dict[str, object], problem: str
) -> None:
    base = {"event_id": "e", "user_id": "u", "timestamp": "2026-11-22T10:00:00Z",
            "type": "preference"}  # fmt: skip
    with pytest.raises(ValidationError) as raised:
        parse_event(json.dumps({**base, **doc}))
    assert problem in str(raised.value) or problem in {e["type"] for e in raised.value.errors()}
