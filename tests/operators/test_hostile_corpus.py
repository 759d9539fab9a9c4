"""The hostile corpus against decode_event: every case rejected, with exactly its reason."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from operators.validation import REASONS, InvalidEvent, decode_event
from tests.hostile_corpus import CASES, KEY, LIMITS, VALID, Hostile, event

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_the_corpus_is_broad() -> None:
    names = [case.name for case in CASES]

    assert len(set(names)) == len(names) >= 50
    assert len({case.value for case in CASES}) >= 50  # not one input under many names
    assert set(Counter(case.reason for case in CASES)) == set(REASONS)  # every reason


def test_the_valid_event_the_corpus_breaks_is_valid() -> None:
    decoded = decode_event(event(), key=KEY, now=NOW, limits=LIMITS)

    assert (decoded.event_id, decoded.user_id) == (VALID["event_id"], VALID["user_id"])


def _rejection(case: Hostile) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(case.value, key=case.key, now=NOW, limits=LIMITS)
    return caught.value


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_hostile_message_is_rejected_with_its_reason(case: Hostile) -> None:
    error = _rejection(case)

    assert error.reason == case.reason, error.detail
    assert error.detail
    # the detail goes into a Kafka header: bounded, and never the whole payload
    assert len(error.detail) < 2000


@pytest.mark.parametrize("user_id", ["Zoë", "用户-7", "u-🙂", "ユーザー", "user name", "عمر"])
def test_printable_ids_in_any_script_still_pass(user_id: str) -> None:
    raw = event(user_id=user_id, context={"surface": "home ✓"})

    assert decode_event(raw, key=user_id.encode(), now=NOW, limits=LIMITS).user_id == user_id
