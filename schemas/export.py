"""JSON Schema files generated from the Python records, for non-Python producers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.catalog import ItemRecord
from schemas.events import EVENT_ADAPTER
from schemas.snapshot import Snapshot

JSON_DIR = Path(__file__).parent / "json"


def json_schemas() -> dict[str, dict[str, Any]]:
    """The contract's JSON Schemas by file name."""
    base = "https://recloop.dev/schemas/v1/"
    schemas: dict[str, dict[str, Any]] = {
        "event.schema.json": EVENT_ADAPTER.json_schema(),
        "item.schema.json": ItemRecord.model_json_schema(),
        "snapshot.schema.json": Snapshot.model_json_schema(),
    }
    titles = {
        "event.schema.json": "recloop event",
        "item.schema.json": "recloop catalog item",
        "snapshot.schema.json": "recloop recommendation snapshot",
    }
    for name, schema in schemas.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = base + name
        schema["title"] = titles[name]
    return schemas


def render(schema: dict[str, Any]) -> str:
    """A schema as the file holds it."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_json_schemas(directory: Path = JSON_DIR) -> list[Path]:
    """Write every schema file into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written
