"""The event contract: what producers send to the events topic.

Every event is one JSON object with ``schema_version``, ``event_id``, ``user_id``, ``type``,
a timezone-aware event-time ``timestamp`` and, for the item events, ``item_id``. The
``type`` field selects the shape. The JSON Schema files in ``schemas/json/`` are generated
from these models (``recloop schemas export``), so Python and non-Python producers validate
against the same contract.

Example:
    >>> event = parse_event(
    ...     b'{"event_id": "e1", "user_id": "u1", "type": "click", "item_id": "i9",'
    ...     b' "timestamp": "2026-11-22T10:00:00Z"}'
    ... )
    >>> event.type, event.item_id
    ('click', 'i9')

"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

#: The contract's version. A producer may omit it (it then means this version); an event
#: that names another version is rejected with ``unsupported_schema_version``.
SCHEMA_VERSION: Literal[1] = 1

#: The most bytes an id takes in UTF-8 (and so in a profile's state, which stores ids).
ID_MAX_BYTES = 128


#: Invisible characters the schema's pattern (C0/C1 controls only) lets through, yet no
#: printable id holds, since they make one id display as another: every Unicode format
#: character (category Cf, as of Unicode 15.1: zero-width characters, bidirectional
#: controls, the soft hyphen, the byte order mark, tag characters, ...), the line and
#: paragraph separators, and the letters and symbols that render as blank space (the
#: Hangul fillers, the braille blank). Written out as ranges rather than built from
#: ``unicodedata`` so importing costs nothing and one search checks a string; a test
#: checks every Cf character of the running Python is in here.
_INVISIBLE = re.compile(
    "["
    # format characters (Cf), with U+2065, unassigned and as blank, inside one range
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
    # line and paragraph separators; Hangul fillers and the braille pattern blank
    "\u2028\u2029\u115f\u1160\u3164\uffa0\u2800"
    "]"
)


def visible(value: str) -> str:
    """``value`` unchanged; raises ``ValueError`` when it holds an invisible character."""
    # no invisible character is ASCII, and most ids are: isascii() is a flag lookup, so
    # they skip the search (a range list, as the set reaches past the BMP)
    if not value.isascii() and (found := _INVISIBLE.search(value)):
        raise ValueError(
            f"holds the invisible character U+{ord(found.group()):04X}; ids and labels "
            "must be printable"
        )
    return value


def _id_fits(value: str) -> str:
    # max_length counts characters; a character takes up to 4 bytes in UTF-8, and the
    # size bound of a user's state (docs/architecture.md) counts bytes
    if len(value.encode()) > ID_MAX_BYTES:
        raise ValueError(f"an id takes at most {ID_MAX_BYTES} bytes in UTF-8")
    return visible(value)


#: Ids are printable: no C0 or C1 control characters and no invisible ones, at most 128
#: characters and 128 bytes in UTF-8 (the JSON Schema can only say the first and third).
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$"),
    AfterValidator(_id_fits),
]
ShortText = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
#: A short text that names something (a surface, a device, a tag): printable, as an id is.
Label = Annotated[ShortText, AfterValidator(visible)]


def iso_8601(value: object) -> object:
    """Let only an ISO 8601 string (or a datetime) through to pydantic's datetime parsing.

    pydantic also reads 1767225600 or "1767225600" as Unix time; the contract (and its
    JSON Schema's date-time format) asks for ISO 8601, so no seconds-or-milliseconds
    guess ever reaches the event clock or an item's creation time.
    """
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 string with a UTC offset")
    try:  # anything Python reads as a number ("1.7e9", "1_767_225_600", "inf")
        float(value)
    except ValueError:
        return value
    raise ValueError("must be ISO 8601 with a UTC offset, not a Unix time")


#: A timezone-aware time written in ISO 8601, never a Unix time.
IsoDateTime = Annotated[AwareDatetime, BeforeValidator(iso_8601)]

NotRelevantReason = Literal[
    "not_interested", "seen_it", "offensive", "too_many_of_these", "wrong_language", "other"
]


class Contract(BaseModel):
    """Shared model settings: strict types, no unknown fields, no NaN or infinities."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("schema_version", mode="before", check_fields=False)
    @classmethod
    def _version_is_not_a_boolean(cls, value: object) -> object:
        # Literal[1] would take JSON true (True == 1 in Python); the JSON Schema does not.
        if isinstance(value, bool):
            raise ValueError("schema_version must be the integer 1, not a boolean")
        return value


class Context(Contract):
    """Where the event happened; every field is optional."""

    surface: Label | None = None
    device: Label | None = None
    session_id: Id | None = None


class EventBase(Contract):
    """Fields every event carries."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id
    user_id: Id
    # lax only so a string reaches iso_8601; the check itself is stricter
    timestamp: IsoDateTime = Field(
        description="Event time, ISO 8601 with a UTC offset.", strict=False
    )
    context: Context | None = None

    @property
    def surface(self) -> str | None:
        """Where the event happened (``context.surface``), when the producer said."""
        return self.context.surface if self.context is not None else None

    @property
    def session_id(self) -> str | None:
        """The session it happened in (``context.session_id``), when the producer said."""
        return self.context.session_id if self.context is not None else None


class ItemEventBase(EventBase):
    """An event about one item, optionally attributed to the recommendation that showed it."""

    item_id: Id
    recommendation_id: Id | None = None
    position: Annotated[int, Field(ge=0, le=10_000)] | None = None


class Click(ItemEventBase):
    """The user opened the item."""

    type: Literal["click"]


class Skip(ItemEventBase):
    """The user passed over the item."""

    type: Literal["skip"]


class Dwell(ItemEventBase):
    """The user spent ``dwell_ms`` milliseconds on the item (at most one day)."""

    type: Literal["dwell"]
    dwell_ms: Annotated[float, Field(ge=0, le=86_400_000)]


class NotRelevant(ItemEventBase):
    """The user said the item is not relevant, with an optional reason."""

    type: Literal["not_relevant"]
    reason: NotRelevantReason | None = None


class Rating(ItemEventBase):
    """An explicit rating from 0 to 5."""

    type: Literal["rating"]
    value: Annotated[float, Field(ge=0, le=5)]


class Impression(EventBase):
    """A list of items the user was shown, in slot order."""

    type: Literal["impression"]
    item_ids: Annotated[list[Id], Field(min_length=1, max_length=200)]
    recommendation_id: Id | None = None


PreferenceAction = Literal[
    "more_like",
    "something_different",
    "pause_category",
    "resume_category",
    "pause_creator",
    "resume_creator",
    "prompts_off",
    "prompts_on",
    "explanations_off",
    "explanations_on",
]

#: The field each action needs (the others take none).
PREFERENCE_TARGET: dict[str, str] = {
    "more_like": "item_id",
    "pause_category": "category",
    "resume_category": "category",
    "pause_creator": "creator",
    "resume_creator": "creator",
}


class Preference(EventBase):
    """The user steered: answered a prompt, paused or resumed something, or opted out.

    ``more_like`` needs ``item_id``; ``pause_category`` / ``resume_category`` need
    ``category``; ``pause_creator`` / ``resume_creator`` need ``creator``; the other
    actions take none of them.
    """

    type: Literal["preference"]
    action: PreferenceAction
    item_id: Id | None = None
    category: Id | None = None
    creator: Id | None = None
    prompt_id: Id | None = Field(default=None, description="The prompt this answers, if any.")

    @model_validator(mode="after")
    def _target_matches_action(self) -> Preference:
        wanted = PREFERENCE_TARGET.get(self.action)
        for name in ("item_id", "category", "creator"):
            given = getattr(self, name) is not None
            if name == wanted and not given:
                raise ValueError(f"action {self.action} needs {name}")
            if name != wanted and given:
                raise ValueError(f"action {self.action} takes no {name}")
        return self


class Forget(EventBase):
    """Erase the user: their profile, embedding and snapshot (a right-to-erasure request).

    Events of the user that arrive later start a new, empty profile.
    """

    type: Literal["forget"]


Event = Annotated[
    Click | Skip | Dwell | NotRelevant | Rating | Impression | Preference | Forget,
    Field(discriminator="type"),
]
ItemEvent = Click | Skip | Dwell | NotRelevant | Rating
#: For ``isinstance``: the events about exactly one item.
ITEM_EVENTS: tuple[type[ItemEventBase], ...] = (Click, Skip, Dwell, NotRelevant, Rating)
EVENT_TYPES: tuple[str, ...] = (
    "click", "skip", "dwell", "not_relevant", "rating", "impression", "preference", "forget",
)  # fmt: skip

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: bytes | str) -> Event:
    """Validate one JSON-encoded event; raises ``pydantic.ValidationError`` when invalid."""
    return EVENT_ADAPTER.validate_json(raw)


def event_to_json(event: Event) -> bytes:
    """Encode an event as compact JSON bytes, the form the events topic carries."""
    return EVENT_ADAPTER.dump_json(event, exclude_none=True)
