"""Turn the bytes of one Kafka message into a valid event, or say exactly why not.

Schema checks come from the contract (:mod:`schemas.events`); this module adds what the
schema cannot know: the size limit, the message key, and whether the event time is
plausible against the worker's (injected) clock.

Example:
    >>> from datetime import datetime, timezone
    >>> limits = ValidationLimits(max_event_bytes=1024, max_future_skew_s=60, min_event_year=1990)
    >>> now = datetime(2026, 11, 22, tzinfo=timezone.utc)
    >>> try:
    ...     decode_event(b"{not json", key=b"u1", now=now, limits=limits)
    ... except InvalidEvent as exc:
    ...     exc.reason
    'invalid_json'

"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from schemas.events import SCHEMA_VERSION, Event, event_to_json, parse_event

#: Machine-readable reasons, as they appear in the dead-letter topic's headers.
REASONS = (
    "too_large",
    "invalid_json",
    "invalid_utf8",
    "unknown_type",
    "missing_type",
    "unsupported_schema_version",
    "missing_field",
    "unexpected_field",
    "schema_violation",
    "timestamp_in_future",
    "timestamp_too_old",
    "key_mismatch",
)


class InvalidEvent(ValueError):
    """An event that cannot be processed; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[InvalidEvent], tuple[str, str]]:
        return (InvalidEvent, (self.reason, self.detail))


@dataclass(frozen=True)
class ValidationLimits:
    """The checks beyond the schema (see ``LimitSettings``)."""

    max_event_bytes: int
    max_future_skew_s: float
    min_event_year: int


def _other_version(raw: bytes) -> tuple[object, ...]:
    """``(version,)`` when ``raw`` is a JSON object naming another schema version, else ``()``."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return ()
    if not isinstance(doc, dict) or "schema_version" not in doc:
        return ()
    version = doc["schema_version"]
    return () if type(version) is int and version == SCHEMA_VERSION else (version,)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reason_for(exc: ValidationError, raw: bytes) -> tuple[str, str]:
    """The dead-letter reason (one of :data:`REASONS`) and detail of a refused record.

    For any record the contract's models refused (events, catalog records): ``raw`` is
    what they were given, so JSON that fails because its bytes are not UTF-8 is named so.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    kind = first["type"]
    where = ".".join(str(part) for part in first["loc"]) or "(root)"
    message = f"{where}: {first['msg']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    if kind == "json_invalid":
        return ("invalid_json" if _is_utf8(raw) else "invalid_utf8"), message
    # another version first: a newer producer's new type or field is not this worker's to
    # judge by its own contract (the workers are to be upgraded before the producers)
    for version in _other_version(raw):
        shown = json.dumps(version)[:32]
        return "unsupported_schema_version", (
            f"schema_version: {shown}, but this worker reads {SCHEMA_VERSION}"
        )
    if kind == "union_tag_invalid":
        return "unknown_type", message
    if kind == "union_tag_not_found":
        return "missing_type", message
    if kind == "missing":
        return "missing_field", message
    if kind == "extra_forbidden":
        return "unexpected_field", message
    return "schema_violation", message


def decode_event(
    raw: bytes | None, *, key: bytes | None, now: datetime, limits: ValidationLimits
) -> Event:
    """Validate one message from the events topic.

    Args:
        raw: the message value, exactly as it arrived.
        key: the message key; it must be the event's ``user_id`` (state is per partition).
        now: the worker's wall clock, timezone-aware.
        limits: size and time limits.

    Raises:
        InvalidEvent: with a machine-readable ``reason`` and a human ``detail``.

    """
    if raw is None:
        raise InvalidEvent("invalid_json", "the message has no value")
    if len(raw) > limits.max_event_bytes:
        raise InvalidEvent(
            "too_large", f"{len(raw)} bytes is over the limit of {limits.max_event_bytes}"
        )
    try:
        event = parse_event(raw)
    except ValidationError as exc:
        raise InvalidEvent(*reason_for(exc, raw)) from None
    if event.timestamp > now + timedelta(seconds=limits.max_future_skew_s):
        raise InvalidEvent(
            "timestamp_in_future",
            f"timestamp {event.timestamp.isoformat()} is more than "
            f"{limits.max_future_skew_s:g}s ahead of the worker clock {now.isoformat()}",
        )
    if event.timestamp < datetime(limits.min_event_year, 1, 1, tzinfo=UTC):
        raise InvalidEvent(
            "timestamp_too_old",
            f"timestamp {event.timestamp.isoformat()} is before {limits.min_event_year}",
        )
    if key is not None and key != event.user_id.encode():
        raise InvalidEvent(
            "key_mismatch",
            f"the message key {key[:64]!r} is not the event's user_id {event.user_id!r}; "
            "events must be keyed by user_id so each user's state lives in one partition",
        )
    if key is None:
        raise InvalidEvent("key_mismatch", "the message has no key; key events by user_id")
    return event


def user_key(document: object) -> bytes | None:
    """The key an event given as JSON fields is produced under: its own ``user_id``.

    ``None`` when it has no usable one; the contract check then names the problem.
    """
    user = document.get("user_id") if isinstance(document, dict) else None
    if not isinstance(user, str):
        return None
    try:
        return user.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return None


def decode_unkeyed(raw: bytes, *, now: datetime, limits: ValidationLimits) -> Event:
    """:func:`decode_event` for an event without a message key yet (a log line, a body).

    It is keyed by its own ``user_id``, as a producer keys it.
    """
    key = None
    if len(raw) <= limits.max_event_bytes:  # a larger one is refused unread
        with contextlib.suppress(ValueError, RecursionError):  # decode_event names it
            key = user_key(json.loads(raw))
    return decode_event(raw, key=key, now=now, limits=limits)


def encode_event(event: Event, limits: ValidationLimits) -> bytes:
    """The bytes a producer sends for a valid ``event``, refused when the worker would.

    A producer validates what it was given, but sends :func:`~schemas.events.event_to_json`
    of it, which may be longer (the schema version added, ``95000`` written ``95000.0``):
    the size limit must hold for what is sent.

    Raises:
        InvalidEvent: ``too_large``.

    """
    value = event_to_json(event)
    if len(value) > limits.max_event_bytes:
        raise InvalidEvent(
            "too_large",
            f"{len(value)} bytes as sent (re-encoded) is over the limit of "
            f"{limits.max_event_bytes}",
        )
    return value
