"""A corpus of malformed and hostile events-topic messages, each with its dead-letter reason.

Shared by the fast unit test of ``decode_event`` (tests/operators/test_hostile_corpus.py)
and the broker test that sends all of it to one running worker
(tests/integration/test_hostile_input.py). Every case must be rejected with exactly the
reason given; the limits are the defaults (``LimitSettings``), which both tests use.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

from operators.validation import ValidationLimits
from pipeline.settings import LimitSettings

#: the user every hostile message claims to be (and is keyed by, unless the case says)
USER = "u-hostile"
KEY = USER.encode()
_DEFAULTS = LimitSettings()
LIMITS = ValidationLimits(
    max_event_bytes=_DEFAULTS.max_event_bytes,
    max_future_skew_s=_DEFAULTS.max_future_skew_s,
    min_event_year=_DEFAULTS.min_event_year,
)
#: a valid click; every case below breaks it one way
VALID: dict[str, Any] = {
    "event_id": "h-1",
    "user_id": USER,
    "type": "click",
    "item_id": "item-00001",
    "timestamp": "2026-01-01T00:00:00Z",
}


@dataclass(frozen=True)
class Hostile:
    """One message and the reason it must be dead-lettered with."""

    name: str
    value: bytes | None
    reason: str
    key: bytes | None = KEY


def event(**changes: Any) -> bytes:
    """The valid click with fields changed (``...`` removes one), as compact JSON bytes."""
    merged = {**VALID, **changes}
    return json.dumps({k: v for k, v in merged.items() if v is not ...}).encode()


def _with(raw_field: str, raw_value: bytes, **changes: Any) -> bytes:
    """The valid click with one member written as raw JSON text (NaN, nesting, ...)."""
    body = event(**changes)
    return body[:-1] + b', "' + raw_field.encode() + b'": ' + raw_value + b"}"


_VALID_BYTES = event()
_DWELL = {"type": "dwell", "dwell_ms": 1000.0}
#: a padding that makes the valid event exactly one byte longer than the limit
_ONE_OVER = "x" * (LIMITS.max_event_bytes + 1 - len(event(note="")))

CASES: tuple[Hostile, ...] = (
    # -- not JSON at all -------------------------------------------------------------
    Hostile("broken JSON", b'{"event_id": "h-1", "user_id": ', "invalid_json"),
    Hostile("truncated", _VALID_BYTES[:-1], "invalid_json"),
    Hostile("trailing garbage", _VALID_BYTES + b" {}", "invalid_json"),
    Hostile("two objects", _VALID_BYTES + _VALID_BYTES, "invalid_json"),
    Hostile("empty value", b"", "invalid_json"),
    Hostile("whitespace only", b" \n\t ", "invalid_json"),
    Hostile("tombstone (null value)", None, "invalid_json"),
    Hostile("single quotes", _VALID_BYTES.replace(b'"', b"'"), "invalid_json"),
    Hostile("comment", b"// a click\n" + _VALID_BYTES, "invalid_json"),
    Hostile("trailing comma", _VALID_BYTES[:-1] + b",}", "invalid_json"),
    Hostile("UTF-8 byte order mark", b"\xef\xbb\xbf" + _VALID_BYTES, "invalid_json"),
    Hostile("null byte after the object", _VALID_BYTES + b"\x00", "invalid_json"),
    Hostile(
        "raw control character in a string",
        event(user_id="X").replace(b"X", b"\x07"),
        "invalid_json",
    ),
    Hostile("lone surrogate escape", event(user_id="X").replace(b"X", b"\\ud800"), "invalid_json"),
    Hostile("schema-registry framing", b"\x00\x00\x00\x00\x07" + _VALID_BYTES, "invalid_json"),
    # -- not UTF-8 ---------------------------------------------------------------------
    Hostile("invalid UTF-8 bytes", b"\xff\xfe\xfd", "invalid_utf8"),
    Hostile(
        "invalid UTF-8 inside a string", event(user_id="X").replace(b"X", b"u\xff"), "invalid_utf8"
    ),
    Hostile(
        "overlong UTF-8 encoding", event(user_id="X").replace(b"X", b"\xc0\xaf"), "invalid_utf8"
    ),
    Hostile(
        "encoded surrogate (CESU-8)",
        event(user_id="X").replace(b"X", b"\xed\xa0\x80"),
        "invalid_utf8",
    ),
    Hostile("UTF-16", b"\xff\xfe" + _VALID_BYTES.decode().encode("utf-16-le"), "invalid_utf8"),
    Hostile("gzip-compressed JSON", gzip.compress(_VALID_BYTES, mtime=0), "invalid_utf8"),
    # -- JSON, but not an event object -------------------------------------------------
    Hostile("array", b"[" + _VALID_BYTES + b"]", "schema_violation"),
    Hostile("JSON null", b"null", "schema_violation"),
    Hostile("JSON string", b'"click"', "schema_violation"),
    Hostile("JSON number", b"42", "schema_violation"),
    Hostile("JSON true", b"true", "schema_violation"),
    # -- type and version --------------------------------------------------------------
    Hostile("unknown event type", event(type="purchase"), "unknown_type"),
    Hostile("type in capitals", event(type="CLICK"), "unknown_type"),
    Hostile("numeric type", event(type=7), "unknown_type"),
    Hostile("null type", event(type=None), "unknown_type"),
    Hostile("missing type", event(type=...), "missing_type"),
    Hostile("schema version 2", event(schema_version=2), "unsupported_schema_version"),
    Hostile("schema version 0", event(schema_version=0), "unsupported_schema_version"),
    Hostile("schema version as string", event(schema_version="1"), "unsupported_schema_version"),
    Hostile("schema version true", event(schema_version=True), "unsupported_schema_version"),
    # -- missing and extra fields ------------------------------------------------------
    Hostile("missing event_id", event(event_id=...), "missing_field"),
    Hostile("missing user_id", event(user_id=...), "missing_field"),
    Hostile("missing timestamp", event(timestamp=...), "missing_field"),
    Hostile("missing item_id", event(item_id=...), "missing_field"),
    Hostile("dwell without dwell_ms", event(type="dwell"), "missing_field"),
    Hostile("extra field", event(colour="red"), "unexpected_field"),
    Hostile(
        "extra field in context",
        event(context={"surface": "home", "gps": "51.5,0.1"}),
        "unexpected_field",
    ),
    Hostile("__proto__ field", event(__proto__={"admin": True}), "unexpected_field"),
    # -- wrong types -------------------------------------------------------------------
    Hostile("event_id as number", event(event_id=12345), "schema_violation"),
    Hostile("user_id as list", event(user_id=[USER]), "schema_violation"),
    Hostile("item_id as object", event(item_id={"id": "item-00001"}), "schema_violation"),
    Hostile("context as string", event(context="home"), "schema_violation"),
    Hostile("dwell_ms as string", event(**_DWELL | {"dwell_ms": "1000"}), "schema_violation"),
    Hostile("dwell_ms as boolean", event(**_DWELL | {"dwell_ms": True}), "schema_violation"),
    Hostile("position as float", event(position=1.5), "schema_violation"),
    Hostile(
        "impression ids not a list",
        event(type="impression", item_id=..., item_ids="a,b"),
        "schema_violation",
    ),
    Hostile(
        "impression id as number",
        event(type="impression", item_id=..., item_ids=["a", 7]),
        "schema_violation",
    ),
    # -- numbers out of range ----------------------------------------------------------
    Hostile("NaN dwell", _with("dwell_ms", b"NaN", type="dwell"), "schema_violation"),
    Hostile("Infinity dwell", _with("dwell_ms", b"Infinity", type="dwell"), "schema_violation"),
    Hostile("-Infinity rating", _with("value", b"-Infinity", type="rating"), "schema_violation"),
    Hostile(
        "dwell overflowing to infinity",
        _with("dwell_ms", b"1e999", type="dwell"),
        "schema_violation",
    ),
    Hostile("negative dwell", event(**_DWELL | {"dwell_ms": -1.0}), "schema_violation"),
    Hostile("absurd dwell (a year)", event(**_DWELL | {"dwell_ms": 3.15e10}), "schema_violation"),
    Hostile("rating above 5", event(type="rating", value=6), "schema_violation"),
    Hostile("negative rating", event(type="rating", value=-1), "schema_violation"),
    Hostile("negative position", event(position=-1), "schema_violation"),
    Hostile("huge integer position", _with("position", b"1" + b"0" * 400), "schema_violation"),
    # -- time --------------------------------------------------------------------------
    Hostile(
        "timestamp far in the future",
        event(timestamp="2999-01-01T00:00:00Z"),
        "timestamp_in_future",
    ),
    Hostile(
        "timestamp at the end of the calendar",
        event(timestamp="9999-12-31T23:59:59-01:00"),
        "timestamp_in_future",
    ),
    Hostile("timestamp at the epoch", event(timestamp="1970-01-01T00:00:00Z"), "timestamp_too_old"),
    Hostile(
        "timestamp in year 1", event(timestamp="0001-01-01T00:00:00+01:00"), "timestamp_too_old"
    ),
    Hostile("timestamp without offset", event(timestamp="2026-01-01T00:00:00"), "schema_violation"),
    Hostile("timestamp as a number", event(timestamp=1767225600), "schema_violation"),
    Hostile("timestamp in words", event(timestamp="yesterday"), "schema_violation"),
    Hostile("date without time", event(timestamp="2026-01-01"), "schema_violation"),
    Hostile("leap second", event(timestamp="2026-12-31T23:59:60Z"), "schema_violation"),
    Hostile("offset of 25 hours", event(timestamp="2026-01-01T00:00:00+25:00"), "schema_violation"),
    # -- ids and strings ---------------------------------------------------------------
    Hostile("empty event_id", event(event_id=""), "schema_violation"),
    Hostile("event_id of 129 characters", event(event_id="e" * 129), "schema_violation"),
    Hostile("null byte in user_id", event(user_id="u\x00"), "schema_violation"),
    Hostile("bell in event_id", event(event_id="h-\x07"), "schema_violation"),
    Hostile("newline in item_id", event(item_id="item\n-1"), "schema_violation"),
    Hostile("escape sequence in item_id", event(item_id="\x1b[31mred"), "schema_violation"),
    Hostile("C1 control in session_id", event(context={"session_id": "s\x85"}), "schema_violation"),
    Hostile(
        "right-to-left override in user_id",
        event(user_id="u-\u202eetsoh"),
        "schema_violation",
        key="u-\u202eetsoh".encode(),
    ),
    Hostile("zero-width space in item_id", event(item_id="item-\u200b1"), "schema_violation"),
    Hostile("line separator in event_id", event(event_id="h-\u20281"), "schema_violation"),
    Hostile(
        "byte order mark in an impression id",
        event(type="impression", item_id=..., item_ids=["a", "\ufeffb"]),
        "schema_violation",
    ),
    Hostile(
        "bidi isolate in surface", event(context={"surface": "\u2067home"}), "schema_violation"
    ),
    Hostile("huge item_id (60 KB)", event(item_id="i" * 60_000), "schema_violation"),
    Hostile("huge surface (60 KB)", event(context={"surface": "s" * 60_000}), "schema_violation"),
    Hostile(
        "201 impression ids",
        event(type="impression", item_id=..., item_ids=[f"i{n}" for n in range(201)]),
        "schema_violation",
    ),
    Hostile(
        "empty impression", event(type="impression", item_id=..., item_ids=[]), "schema_violation"
    ),
    Hostile(
        "unknown not_relevant reason", event(type="not_relevant", reason="spam"), "schema_violation"
    ),
    Hostile(
        "unknown preference action",
        event(type="preference", item_id=..., action="hack"),
        "schema_violation",
    ),
    Hostile(
        "pause without a category",
        event(type="preference", item_id=..., action="pause_category"),
        "schema_violation",
    ),
    # -- nesting and size --------------------------------------------------------------
    Hostile("30,000 nested arrays", b"[" * 30_000 + b"]" * 30_000, "invalid_json"),
    Hostile(
        "nested objects in context",
        _with("context", b'{"a":' * 5_000 + b"1" + b"}" * 5_000),
        "invalid_json",
    ),
    Hostile("one byte over the size limit", event(note=_ONE_OVER), "too_large"),
    Hostile("200 KB payload", event(note="x" * 200_000), "too_large"),
    Hostile("over the limit and not JSON", b"\xff" * (LIMITS.max_event_bytes + 1), "too_large"),
    # -- the key -----------------------------------------------------------------------
    Hostile("keyed by another user", event(), "key_mismatch", key=b"u-victim"),
    Hostile("no key", event(), "key_mismatch", key=None),
    # Kafka's clients refuse to send such a record: the dead letter's value is empty
    Hostile("neither key nor value", None, "invalid_json", key=None),
    Hostile("key differs in case", event(), "key_mismatch", key=USER.upper().encode()),
    Hostile("key with a trailing space", event(), "key_mismatch", key=KEY + b" "),
    Hostile(
        "duplicate user_id, the last another user",
        event()[:-1] + b', "user_id": "u-victim"}',
        "key_mismatch",
    ),
    # -- Unix time where the contract asks for ISO 8601 (pydantic alone would read it) ----
    Hostile("Unix seconds as a string", event(timestamp="1767225600"), "schema_violation"),
    Hostile("Unix milliseconds as a string", event(timestamp="1767225600000"), "schema_violation"),
    Hostile("Unix seconds with a fraction", event(timestamp="1767225600.5"), "schema_violation"),
    Hostile("Unix seconds in exponent form", event(timestamp="1.7e9"), "schema_violation"),
    Hostile("Unix milliseconds in exponent form", event(timestamp="1.7E12"), "schema_violation"),
    Hostile("Unix seconds with underscores", event(timestamp="1_767_225_600"), "schema_violation"),
    # -- an id within 128 characters but over 128 bytes in UTF-8 --------------------------
    Hostile("an id of 33 emoji (132 bytes)", event(item_id="\U0001f600" * 33), "schema_violation"),
)
