"""Catalog records (schemas/catalog.py): what the items topic accepts and rejects."""

from __future__ import annotations

import json
import sys
import unicodedata
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.catalog import item_to_json, parse_item
from schemas.events import parse_event, visible

#: Letters and symbols that are not format characters yet render as blank space.
_BLANK_FILLERS = ["\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"]


def _errors(doc: dict[str, Any]) -> list[tuple[str, tuple[str | int, ...]]]:
    with pytest.raises(ValidationError) as caught:
        parse_item(json.dumps(doc))
    return [(err["type"], tuple(err["loc"])) for err in caught.value.errors()]


def _with(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    merged = {**doc, **changes}
    return {key: value for key, value in merged.items() if value is not ...}


def test_a_full_record_parses(item_doc: dict[str, Any]) -> None:
    item = parse_item(json.dumps(item_doc).encode())

    assert item.item_id == "item-9"
    assert item.category == "drama"
    assert item.tags == ["drama", "award-winner"]
    assert item.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert item.duration_ms == 1_800_000.0
    assert item.embedding == [0.1, -0.25, 3.0e-7]
    assert item.available is True


def test_a_minimal_record_is_available_with_no_tags(item_doc: dict[str, Any]) -> None:
    minimal = {key: item_doc[key] for key in ("item_id", "category", "created_at")}

    item = parse_item(json.dumps(minimal))

    assert item.available is True
    assert item.tags == []
    assert (item.creator, item.title, item.duration_ms, item.embedding) == (None,) * 4
    assert item.schema_version == 1


def test_a_withdrawn_item_says_so(item_doc: dict[str, Any]) -> None:
    assert parse_item(json.dumps(_with(item_doc, available=False))).available is False


@pytest.mark.parametrize(
    ("changes", "error_type", "location"),
    [
        pytest.param({"category": ...}, "missing", ("category",), id="missing-category"),
        pytest.param({"item_id": ...}, "missing", ("item_id",), id="missing-item_id"),
        pytest.param({"created_at": ...}, "missing", ("created_at",), id="missing-created_at"),
        pytest.param(
            {"created_at": "2026-01-01T00:00:00"},
            "timezone_aware",
            ("created_at",),
            id="naive-created_at",
        ),
        pytest.param({"duration_ms": 0}, "greater_than", ("duration_ms",), id="zero-duration"),
        pytest.param({"duration_ms": -5}, "greater_than", ("duration_ms",), id="negative-duration"),
        pytest.param(
            {"duration_ms": 86_400_001},
            "less_than_equal",
            ("duration_ms",),
            id="duration-over-a-day",
        ),
        pytest.param(
            {"duration_ms": "60000"}, "float_type", ("duration_ms",), id="duration-as-string"
        ),
        pytest.param({"available": "false"}, "bool_type", ("available",), id="available-as-string"),
        pytest.param({"available": 0}, "bool_type", ("available",), id="available-as-int"),
        pytest.param({"embedding": []}, "too_short", ("embedding",), id="empty-embedding"),
        pytest.param(
            {"embedding": [0.0] * 1025}, "too_long", ("embedding",), id="embedding-over-1024"
        ),
        pytest.param(
            {"embedding": [1.0, "2"]}, "float_type", ("embedding", 1), id="embedding-with-string"
        ),
        pytest.param(
            {"tags": [f"t{n}" for n in range(33)]}, "too_long", ("tags",), id="over-32-tags"
        ),
        pytest.param({"tags": ["ok", ""]}, "string_too_short", ("tags", 1), id="empty-tag"),
        pytest.param({"tags": ["t" * 65]}, "string_too_long", ("tags", 0), id="tag-over-64"),
        pytest.param({"tags": ["a\tb"]}, "string_pattern_mismatch", ("tags", 0), id="tag-with-tab"),
        pytest.param({"item_id": "i" * 129}, "string_too_long", ("item_id",), id="id-over-128"),
        pytest.param(
            {"item_id": "i\x00"}, "string_pattern_mismatch", ("item_id",), id="id-with-nul"
        ),
        pytest.param({"title": "t" * 257}, "string_too_long", ("title",), id="title-over-256"),
        pytest.param(
            {"title": "line\nbreak"}, "string_pattern_mismatch", ("title",), id="title-with-newline"
        ),
        pytest.param(
            {"schema_version": 2}, "literal_error", ("schema_version",), id="schema-version-2"
        ),
        pytest.param({"price": 3}, "extra_forbidden", ("price",), id="extra-field"),
        # the event contract's id rules: an item an event could never name is refused
        pytest.param({"item_id": "movie\u200b7"}, "value_error", ("item_id",), id="id-zero-width"),
        pytest.param(
            {"category": "thriller\u202e"}, "value_error", ("category",), id="category-bidi"
        ),
        pytest.param({"creator": "studio\ufeff0"}, "value_error", ("creator",), id="creator-bom"),
        pytest.param({"tags": ["ok", "noir\u2066"]}, "value_error", ("tags", 1), id="tag-bidi"),
        # ... and the invisible characters that are not zero-width or bidi controls
        pytest.param(
            {"item_id": "i\u180e"}, "value_error", ("item_id",), id="id-mongolian-vowel-separator"
        ),
        pytest.param({"category": "i\u00ad"}, "value_error", ("category",), id="category-shy"),
        pytest.param({"tags": ["i\U000e0041"]}, "value_error", ("tags", 0), id="tag-tag-char"),
        pytest.param(
            {"creator": "\u3164"}, "value_error", ("creator",), id="creator-hangul-filler"
        ),
        pytest.param({"item_id": "i\u2800"}, "value_error", ("item_id",), id="id-braille-blank"),
        # Unix times, which pydantic alone would guess at ("17672256000" is the year 2530)
        pytest.param(
            {"created_at": "17672256000"}, "value_error", ("created_at",), id="created_at-unix"
        ),
        pytest.param(
            {"created_at": "1.7e9"}, "value_error", ("created_at",), id="created_at-1.7e9"
        ),
        pytest.param(
            {"created_at": 1767225600}, "value_error", ("created_at",), id="created_at-number"
        ),
    ],
)
def test_the_contract_rejects_a_bad_record_and_says_where(
    item_doc: dict[str, Any],
    changes: dict[str, Any],
    error_type: str,
    location: tuple[str | int, ...],
) -> None:
    assert _errors(_with(item_doc, **changes))[0] == (error_type, location)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["duration_ms", "embedding"])
def test_nan_and_infinity_are_rejected(item_doc: dict[str, Any], field: str, literal: str) -> None:
    value = f"[1.0, {literal}]" if field == "embedding" else literal
    raw = json.dumps(_with(item_doc, **{field: ...}))[:-1] + f', "{field}": {value}}}'

    with pytest.raises(ValidationError) as caught:
        parse_item(raw)

    assert caught.value.errors()[0]["loc"][0] == field


def test_item_to_json_round_trips(item_doc: dict[str, Any]) -> None:
    item = parse_item(json.dumps(item_doc))

    encoded = item_to_json(item)

    assert parse_item(encoded) == item
    assert item_to_json(parse_item(encoded)) == encoded


def test_item_to_json_leaves_out_unset_fields(item_doc: dict[str, Any]) -> None:
    minimal = {key: item_doc[key] for key in ("item_id", "category", "created_at")}

    encoded = item_to_json(parse_item(json.dumps(minimal)))

    assert b"null" not in encoded
    assert set(json.loads(encoded)) == {
        "schema_version",
        "item_id",
        "category",
        "created_at",
        "tags",
        "available",
    }


def test_records_are_immutable_and_do_not_share_default_tags(item_doc: dict[str, Any]) -> None:
    minimal = {key: item_doc[key] for key in ("item_id", "category", "created_at")}
    first, second = parse_item(json.dumps(minimal)), parse_item(json.dumps(minimal))

    first.tags.append("leak")

    assert second.tags == []
    assert parse_item(json.dumps(minimal)).tags == []
    with pytest.raises(ValidationError):
        first.available = False  # type: ignore[misc]


def test_every_format_character_and_blank_filler_is_refused() -> None:
    # every Cf character the running Python knows, so a newer Unicode's additions show up
    # here rather than slipping into ids
    invisible = [
        chr(code) for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"
    ] + _BLANK_FILLERS

    def accepted(char: str) -> bool:
        try:
            visible(f"item{char}9")
        except ValueError:
            return False
        return True

    assert [f"U+{ord(char):04X}" for char in invisible if accepted(char)] == []


@pytest.mark.parametrize("printable", ["café-7", "東京-タワー", "фильм", "item-😀", "a b"])
def test_printable_non_ascii_ids_are_kept(item_doc: dict[str, Any], printable: str) -> None:
    assert parse_item(json.dumps(_with(item_doc, item_id=printable))).item_id == printable


@pytest.mark.parametrize(
    "char",
    ["\u180e", "\u00ad", "\U000e0041", "\u3164"],
    ids=["mongolian-vowel-separator", "soft-hyphen", "tag-character", "hangul-filler"],
)
@pytest.mark.parametrize("field", ["user_id", "surface"])
def test_an_event_naming_an_invisible_character_is_refused(
    click_doc: dict[str, Any], field: str, char: str
) -> None:
    # events use the same Id and Label types; the reviewer's examples passed decode_event
    doc = (
        {**click_doc, "context": {"surface": f"home{char}"}}
        if field == "surface"
        else {**click_doc, "user_id": f"i{char}"}
    )

    with pytest.raises(ValidationError) as caught:
        parse_event(json.dumps(doc))

    error = caught.value.errors()[0]
    assert error["type"] == "value_error"
    assert f"U+{ord(char):04X}" in error["msg"]
