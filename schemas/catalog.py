"""Item catalog records: what the (compacted) items topic carries, keyed by item id.

A record with ``available: false``, or a tombstone (a null value), removes the item
from recommendations.

Example:
    >>> item = parse_item(b'{"item_id": "i1", "category": "drama",'
    ...                   b' "created_at": "2026-01-01T00:00:00+00:00"}')
    >>> item.available
    True

"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, TypeAdapter

from schemas.events import SCHEMA_VERSION, Contract, Id, IsoDateTime, ShortText, visible

Tag = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$"),
    AfterValidator(visible),
]


class ItemRecord(Contract):
    """One item of the catalog."""

    schema_version: Literal[1] = SCHEMA_VERSION
    item_id: Id
    category: Id
    tags: Annotated[list[Tag], Field(max_length=32)] = Field(default_factory=list)
    creator: Id | None = None
    title: ShortText | None = None
    # lax only so a string reaches iso_8601, which refuses a Unix time
    created_at: IsoDateTime = Field(strict=False)
    duration_ms: Annotated[float, Field(gt=0, le=86_400_000)] | None = Field(
        default=None, description="Expected consumption time; dwell is judged against it."
    )
    embedding: Annotated[list[float], Field(min_length=1, max_length=1024)] | None = None
    available: bool = True


ITEM_ADAPTER: TypeAdapter[ItemRecord] = TypeAdapter(ItemRecord)


def parse_item(raw: bytes | str) -> ItemRecord:
    """Validate one JSON-encoded catalog record; raises ``pydantic.ValidationError``."""
    return ItemRecord.model_validate_json(raw)


def item_to_json(item: ItemRecord) -> bytes:
    """Encode a catalog record as compact JSON bytes."""
    return item.model_dump_json(exclude_none=True).encode()
