"""The recommendation snapshot: what the (compacted) snapshots topic carries per user.

Each snapshot replaces the previous one for its user; ``version`` counts the user's
applied events (version *v* answers their *v*-th event, ``source_event_id``). A burst of
one user's events processed together is answered by one snapshot, the last event's, so
versions can skip: a snapshot reflects every event of its user up to its version.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from schemas.events import SCHEMA_VERSION, Contract, Id


class RankedItem(Contract):
    """One recommended item, with its score and the reasons it is there."""

    item_id: Id
    score: float
    category: str | None = None
    reasons: list[str] = Field(default_factory=list)


class Notice(Contract):
    """De-escalation: what recloop heard, what it changed and until when (for the UI)."""

    kind: Literal["preferences_adjusted", "preferences_relaxed"]
    heard: str = Field(description="What the user's event told recloop, in words.")
    change: str = Field(description="What changed in the recommendations, in words.")
    relaxes_at: AwareDatetime | None = Field(
        default=None, description="When the adjustment has faded (event time)."
    )
    tags: list[str] = Field(
        default_factory=list, description="The user's profile tags after the change."
    )


class PromptChoice(Contract):
    """One answer a prompt offers: send it back as a ``preference`` event."""

    label: str
    action: Literal["more_like", "something_different", "pause_category", "pause_creator"]
    item_id: Id | None = None
    category: Id | None = None
    creator: Id | None = None


class Prompt(Contract):
    """One short clarifying question, offered when recloop is unsure and the user receptive."""

    prompt_id: Id
    question: str
    choices: list[PromptChoice]


class Snapshot(Contract):
    """The ranked recommendations for one user at one moment."""

    schema_version: Literal[1] = SCHEMA_VERSION
    user_id: Id
    version: Annotated[int, Field(ge=1)]
    generated_at: AwareDatetime
    event_time: AwareDatetime | None = Field(
        default=None, description="Event time of the event that produced this snapshot."
    )
    source_event_id: Id
    model_version: str
    items: list[RankedItem]
    notice: Notice | None = Field(
        default=None, description="Present when this snapshot's event changed preferences."
    )
    prompt: Prompt | None = Field(
        default=None, description="A clarifying choice; answer with a preference event."
    )


def parse_snapshot(raw: bytes | str) -> Snapshot:
    """Validate one JSON-encoded snapshot; raises ``pydantic.ValidationError``."""
    return Snapshot.model_validate_json(raw)


def snapshot_to_json(snapshot: Snapshot) -> bytes:
    """Encode a snapshot as compact JSON bytes."""
    return snapshot.model_dump_json(exclude_none=True).encode()
