"""decode_event (operators/validation.py): a valid event, or exactly why not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from operators.validation import REASONS, InvalidEvent, ValidationLimits, decode_event
from schemas.events import Click, Dwell

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LIMITS = ValidationLimits(max_event_bytes=64 * 1024, max_future_skew_s=300, min_event_year=1990)
CLICK: dict[str, Any] = {
    "event_id": "e-1",
    "user_id": "user-1",
    "type": "click",
    "item_id": "item-9",
    "timestamp": "2026-11-22T11:59:00Z",
}


def _raw(**changes: Any) -> bytes:
    """The click as message bytes with fields changed; ``...`` removes a field."""
    merged = {**CLICK, **changes}
    return json.dumps({k: v for k, v in merged.items() if v is not ...}).encode()


def _reason(
    raw: bytes | None, key: bytes | None = b"user-1", limits: ValidationLimits = LIMITS
) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw, key=key, now=NOW, limits=limits)
    assert caught.value.reason in REASONS
    assert caught.value.detail
    return caught.value


def test_a_valid_event_passes_unchanged() -> None:
    event = decode_event(_raw(), key=b"user-1", now=NOW, limits=LIMITS)

    assert isinstance(event, Click)
    assert (event.event_id, event.user_id, event.item_id) == ("e-1", "user-1", "item-9")
    assert event.timestamp == datetime(2026, 11, 22, 11, 59, tzinfo=UTC)


def test_a_valid_dwell_with_a_unicode_user_passes() -> None:
    raw = _raw(type="dwell", dwell_ms=1234.5, user_id="Zoë")

    event = decode_event(raw, key="Zoë".encode(), now=NOW, limits=LIMITS)

    assert isinstance(event, Dwell) and event.dwell_ms == 1234.5


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"{not json", "invalid_json", id="broken-json"),
        pytest.param(b"", "invalid_json", id="empty-message"),
        pytest.param(None, "invalid_json", id="null-value"),
        pytest.param(_raw()[:-1], "invalid_json", id="truncated"),
        pytest.param(_raw() + b" {}", "invalid_json", id="trailing-garbage"),
        pytest.param(_raw(type="purchase"), "unknown_type", id="unknown-type"),
        pytest.param(_raw(type=7), "unknown_type", id="numeric-type"),
        pytest.param(_raw(type=...), "missing_type", id="missing-type"),
        pytest.param(_raw(schema_version=2), "unsupported_schema_version", id="version-2"),
        pytest.param(
            _raw(schema_version=2, item_id=...),
            "unsupported_schema_version",
            id="version-2-wins-over-other-errors",
        ),
        pytest.param(_raw(item_id=...), "missing_field", id="missing-item_id"),
        pytest.param(_raw(user_id=...), "missing_field", id="missing-user_id"),
        pytest.param(_raw(colour="red"), "unexpected_field", id="extra-field"),
        pytest.param(_raw(timestamp="2026-11-22T11:59:00"), "schema_violation", id="naive-time"),
        pytest.param(_raw(type="dwell", dwell_ms=-5), "schema_violation", id="negative-dwell"),
        pytest.param(_raw(type="dwell", dwell_ms="5"), "schema_violation", id="dwell-as-string"),
        pytest.param(
            _raw(type="dwell")[:-1] + b', "dwell_ms": NaN}', "schema_violation", id="nan-dwell"
        ),
        pytest.param(_raw(user_id="u\x00"), "schema_violation", id="control-char-in-id"),
        pytest.param(b"[]", "schema_violation", id="array-not-object"),
        pytest.param(b"null", "schema_violation", id="json-null"),
        pytest.param(b'"click"', "schema_violation", id="json-string"),
    ],
)
def test_bad_input_gets_its_machine_readable_reason(raw: bytes | None, reason: str) -> None:
    assert _reason(raw).reason == reason


def test_the_detail_says_which_field_is_wrong() -> None:
    error = _reason(_raw(item_id=...))

    assert "item_id" in error.detail
    assert str(error) == f"missing_field: {error.detail}"


def test_a_newer_schema_version_names_the_version_this_worker_reads() -> None:
    assert "this worker reads 1" in _reason(_raw(schema_version=2)).detail


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"type": "share"}, id="a-new-type"),
        pytest.param({"type": ..., "kind": "click"}, id="the-type-moved"),
        pytest.param({"source": "tv"}, id="a-new-field"),
        pytest.param({"schema_version": None}, id="null"),
        pytest.param({"schema_version": True}, id="true"),
    ],
)
def test_another_version_is_named_before_what_its_contract_changed(
    changes: dict[str, object],
) -> None:
    # a newer producer's event must say "upgrade the workers", not "unknown type"
    version = {"schema_version": 2}
    assert _reason(_raw(**{**version, **changes})).reason == "unsupported_schema_version"


def test_a_field_named_schema_version_inside_the_context_is_only_an_unexpected_field() -> None:
    assert _reason(_raw(context={"schema_version": 1})).reason == "unexpected_field"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xfe", id="bare-invalid-bytes"),
        pytest.param(_raw(user_id="USER").replace(b"USER", b"u\xff"), id="inside-a-string"),
        pytest.param(b"\xff\xfe" + _raw().decode("utf-8").encode("utf-16-le"), id="utf-16"),
    ],
)
def test_bytes_that_are_not_utf8_are_invalid_utf8(raw: bytes) -> None:
    assert _reason(raw).reason == "invalid_utf8"


def test_an_oversized_message_is_too_large_even_when_valid() -> None:
    raw = _raw(event_id="e" * 100)
    limits = ValidationLimits(
        max_event_bytes=len(raw) - 1, max_future_skew_s=300, min_event_year=1990
    )

    error = _reason(raw, limits=limits)

    assert error.reason == "too_large"
    assert str(len(raw)) in error.detail


def test_a_message_exactly_at_the_size_limit_passes() -> None:
    raw = _raw()
    limits = ValidationLimits(max_event_bytes=len(raw), max_future_skew_s=300, min_event_year=1990)

    assert decode_event(raw, key=b"user-1", now=NOW, limits=limits).event_id == "e-1"


def test_size_is_checked_before_parsing() -> None:
    limits = ValidationLimits(max_event_bytes=256, max_future_skew_s=300, min_event_year=1990)

    assert _reason(b"[" * 300, limits=limits).reason == "too_large"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 10_000 + b"]" * 10_000, id="10k-nested-arrays"),
        pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="10k-nested-objects"),
        pytest.param(_raw(context="X").replace(b'"X"', b"[" * 5000 + b"]" * 5000), id="in-field"),
    ],
)
def test_deeply_nested_json_gets_a_reason_instead_of_crashing(raw: bytes) -> None:
    limits = ValidationLimits(max_event_bytes=1 << 20, max_future_skew_s=300, min_event_year=1990)

    assert _reason(raw, limits=limits).reason in {"invalid_json", "schema_violation"}


def test_an_event_too_far_ahead_of_the_injected_clock_is_in_the_future() -> None:
    ahead = (NOW + timedelta(seconds=301)).isoformat()

    error = _reason(_raw(timestamp=ahead))

    assert error.reason == "timestamp_in_future"
    assert NOW.isoformat() in error.detail


def test_clock_skew_within_the_limit_is_tolerated() -> None:
    ahead = (NOW + timedelta(seconds=299)).isoformat()

    assert decode_event(_raw(timestamp=ahead), key=b"user-1", now=NOW, limits=LIMITS)


def test_the_future_is_judged_by_the_injected_clock_not_the_real_one() -> None:
    stamp = "2030-01-01T00:00:00Z"
    later = datetime(2030, 1, 1, 0, 1, tzinfo=UTC)

    assert _reason(_raw(timestamp=stamp)).reason == "timestamp_in_future"
    assert decode_event(_raw(timestamp=stamp), key=b"user-1", now=later, limits=LIMITS)


def test_the_future_compares_instants_across_utc_offsets() -> None:
    # 13:04 at +01:00 is 12:04 UTC: 4 minutes ahead, inside the 5 minute skew
    assert decode_event(
        _raw(timestamp="2026-11-22T13:04:00+01:00"), key=b"user-1", now=NOW, limits=LIMITS
    )
    assert _reason(_raw(timestamp="2026-11-22T07:06:00-05:00")).reason == "timestamp_in_future"


@pytest.mark.parametrize(
    "stamp", ["1989-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00"]
)
def test_an_event_before_the_minimum_year_is_too_old(stamp: str) -> None:
    assert _reason(_raw(timestamp=stamp)).reason == "timestamp_too_old"


def test_the_far_future_edge_of_the_calendar_gets_a_reason() -> None:
    assert _reason(_raw(timestamp="9999-12-31T23:59:59-01:00")).reason == "timestamp_in_future"


def test_the_first_moment_of_the_minimum_year_passes() -> None:
    assert decode_event(
        _raw(timestamp="1990-01-01T00:00:00Z"), key=b"user-1", now=NOW, limits=LIMITS
    )


def test_the_minimum_year_is_judged_on_the_instant_not_the_local_calendar() -> None:
    same_instant_as_1990_0030z = "1989-12-31T23:30:00-01:00"

    assert decode_event(
        _raw(timestamp=same_instant_as_1990_0030z), key=b"user-1", now=NOW, limits=LIMITS
    )


def test_a_message_keyed_by_another_user_is_a_key_mismatch() -> None:
    error = _reason(_raw(), key=b"user-2")

    assert error.reason == "key_mismatch"
    assert "user-2" in error.detail and "user-1" in error.detail


def test_a_message_without_a_key_is_a_key_mismatch() -> None:
    error = _reason(_raw(), key=None)

    assert error.reason == "key_mismatch"
    assert "no key" in error.detail


def test_the_key_must_match_exactly() -> None:
    assert _reason(_raw(), key=b"USER-1").reason == "key_mismatch"
    assert _reason(_raw(), key=b"user-1 ").reason == "key_mismatch"


def test_schema_errors_are_reported_before_key_errors() -> None:
    assert _reason(_raw(item_id=...), key=None).reason == "missing_field"


def test_invalid_event_is_a_value_error_with_reason_and_detail() -> None:
    error = InvalidEvent("too_large", "70000 bytes")

    assert isinstance(error, ValueError)
    assert (error.reason, error.detail, str(error)) == (
        "too_large",
        "70000 bytes",
        "too_large: 70000 bytes",
    )
