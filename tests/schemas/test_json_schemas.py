"""The committed JSON Schema files (schemas/json/) and schemas/export.py that renders them.

Non-Python producers validate against these files, so they must say what the Python
contract says. A real JSON Schema validator is used when one is installed; otherwise a
small checker of the keywords these files use stands in for it.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.catalog import parse_item
from schemas.events import EVENT_TYPES, parse_event
from schemas.export import JSON_DIR, json_schemas, render, write_json_schemas
from schemas.snapshot import parse_snapshot

REEXPORT = "the committed schema is stale: run `recloop schemas export` and commit the result"
SCHEMA_FILES = ("event.schema.json", "item.schema.json", "snapshot.schema.json")
HAVE_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None

Validate = Callable[[dict[str, Any], Any], list[str]]


def _committed(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((JSON_DIR / name).read_text())
    return loaded


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str) -> list[str]:
    """Errors of ``value`` against the JSON Schema keywords the committed files use."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _check(value, target, root, at)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            matches = [not _check(value, option, root, at) for option in schema[key]]
            ok = any(matches) if key == "anyOf" else matches.count(True) == 1
            return [] if ok else [f"{at}: no {key} branch matches"]
    errors: list[str] = []
    kinds: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "array": list,
        "object": dict,
        "null": type(None),
    }
    if "type" in schema:
        wanted = kinds[schema["type"]]
        is_bool = isinstance(value, bool)
        if not isinstance(value, wanted) or (is_bool and schema["type"] != "boolean"):
            return [f"{at}: not of type {schema['type']}"]
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        errors.append(f"{at}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e9):
            errors.append(f"{at}: wrong length")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{at}: does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{at}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{at}: above maximum")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{at}: not above exclusiveMinimum")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e9):
            errors.append(f"{at}: wrong number of items")
        for n, element in enumerate(value):
            errors += _check(element, schema.get("items", {}), root, f"{at}[{n}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [
            f"{at}.{key}: required" for key in schema.get("required", []) if key not in value
        ]
        for key, element in value.items():
            if key in properties:
                errors += _check(element, properties[key], root, f"{at}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{at}.{key}: not allowed")
    return errors


def _builtin_validate(document: dict[str, Any], instance: Any) -> list[str]:
    return _check(instance, document, document, "$")


def _jsonschema_validate(document: dict[str, Any], instance: Any) -> list[str]:
    jsonschema: Any = importlib.import_module("jsonschema")

    validator = jsonschema.Draft202012Validator(document)
    return [error.message for error in validator.iter_errors(instance)]


@pytest.fixture(params=["jsonschema" if HAVE_JSONSCHEMA else "builtin-checker"])
def validate(request: pytest.FixtureRequest) -> Validate:
    """Validate an instance against a schema document; returns the errors."""
    return _jsonschema_validate if request.param == "jsonschema" else _builtin_validate


@pytest.mark.parametrize(
    "name",
    [
        "event.schema.json",
        "item.schema.json",
        "snapshot.schema.json",
    ],
)
def test_the_committed_schema_is_what_the_contract_renders(name: str) -> None:
    rendered = json_schemas()[name]

    assert (JSON_DIR / name).read_text() == render(rendered), REEXPORT


def test_every_rendered_schema_is_committed_and_nothing_else() -> None:
    committed = {path.name for path in JSON_DIR.glob("*.json")}

    assert committed == set(json_schemas()) == set(SCHEMA_FILES), REEXPORT


def test_export_writes_exactly_the_committed_files(tmp_path: Path) -> None:
    written = write_json_schemas(tmp_path / "out")

    assert sorted(path.name for path in written) == sorted(SCHEMA_FILES)
    for path in written:
        assert path.read_text() == (JSON_DIR / path.name).read_text(), REEXPORT


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_each_file_names_its_draft_and_its_own_id(name: str) -> None:
    schema = _committed(name)

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://recloop.dev/schemas/v1/{name}"
    assert schema["title"].startswith("recloop ")


def test_the_event_discriminator_covers_every_event_type() -> None:
    schema = _committed("event.schema.json")
    mapping: dict[str, str] = schema["discriminator"]["mapping"]

    assert schema["discriminator"]["propertyName"] == "type"
    assert set(mapping) == set(EVENT_TYPES)
    assert sorted(branch["$ref"] for branch in schema["oneOf"]) == sorted(mapping.values())
    for kind, ref in mapping.items():
        definition = schema["$defs"][ref.rsplit("/", 1)[-1]]
        assert definition["properties"]["type"]["const"] == kind
        assert definition["additionalProperties"] is False


@pytest.mark.parametrize(
    ("kind", "specific"),
    [
        ("click", {"item_id"}),
        ("skip", {"item_id"}),
        ("dwell", {"item_id", "dwell_ms"}),
        ("not_relevant", {"item_id"}),
        ("rating", {"item_id", "value"}),
        ("impression", {"item_ids"}),
    ],
)
def test_each_event_type_lists_its_required_fields(kind: str, specific: set[str]) -> None:
    schema = _committed("event.schema.json")
    definition = schema["$defs"][schema["discriminator"]["mapping"][kind].rsplit("/", 1)[-1]]

    assert set(definition["required"]) == {"event_id", "user_id", "timestamp", "type"} | specific
    assert "schema_version" not in definition["required"]
    assert definition["properties"]["schema_version"]["const"] == 1


def test_the_item_and_snapshot_schemas_list_their_required_fields() -> None:
    item = _committed("item.schema.json")
    snapshot = _committed("snapshot.schema.json")

    assert set(item["required"]) == {"item_id", "category", "created_at"}
    assert set(snapshot["required"]) == {
        "user_id",
        "version",
        "generated_at",
        "source_event_id",
        "model_version",
        "items",
    }
    assert item["additionalProperties"] is False
    assert snapshot["additionalProperties"] is False


def test_every_valid_event_also_passes_the_committed_schema(
    event_doc: dict[str, Any], validate: Validate
) -> None:
    parse_event(json.dumps(event_doc))  # valid for Python

    assert validate(_committed("event.schema.json"), event_doc) == []


def test_a_valid_item_and_snapshot_pass_the_committed_schemas(
    item_doc: dict[str, Any], snapshot_doc: dict[str, Any], validate: Validate
) -> None:
    parse_item(json.dumps(item_doc))
    parse_snapshot(json.dumps(snapshot_doc))

    assert validate(_committed("item.schema.json"), item_doc) == []
    assert validate(_committed("snapshot.schema.json"), snapshot_doc) == []


def _broken(doc: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copied = copy.deepcopy(doc)
    change(copied)
    return copied


INVALID_EVENTS: list[Any] = [
    pytest.param(lambda d: d.update(type="purchase"), id="unknown-type"),
    pytest.param(lambda d: d.pop("type"), id="missing-type"),
    pytest.param(lambda d: d.pop("user_id"), id="missing-user_id"),
    pytest.param(lambda d: d.update(schema_version=2), id="schema-version-2"),
    pytest.param(lambda d: d.update(surprise=1), id="extra-field"),
    pytest.param(lambda d: d.update(user_id="u" * 129), id="id-over-128"),
    pytest.param(lambda d: d.update(event_id="e\x00"), id="id-with-control-char"),
    pytest.param(lambda d: d.update(user_id=7), id="numeric-id"),
    pytest.param(lambda d: d.update(context={"mood": "x"}), id="extra-field-in-context"),
    pytest.param(lambda d: d.update(schema_version=True), id="schema-version-true"),
]


@pytest.mark.parametrize("change", INVALID_EVENTS)
def test_python_and_the_json_schema_reject_the_same_bad_events(
    event_doc: dict[str, Any], change: Callable[[dict[str, Any]], None], validate: Validate
) -> None:
    bad = _broken(event_doc, change)

    python_rejects = True
    try:
        parse_event(json.dumps(bad))
    except ValidationError:
        pass
    else:
        python_rejects = False

    assert validate(_committed("event.schema.json"), bad) != []
    assert python_rejects


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.update(dwell_ms=-1), id="negative-dwell"),
        pytest.param(lambda d: d.update(dwell_ms=86_400_001), id="dwell-over-a-day"),
        pytest.param(lambda d: d.update(dwell_ms="100"), id="dwell-as-string"),
        pytest.param(lambda d: d.pop("dwell_ms"), id="missing-dwell"),
    ],
)
def test_python_and_the_json_schema_reject_the_same_bad_dwell(
    change: Callable[[dict[str, Any]], None], validate: Validate
) -> None:
    dwell = {
        "event_id": "e",
        "user_id": "u",
        "timestamp": "2026-11-22T10:00:00Z",
        "type": "dwell",
        "item_id": "i",
        "dwell_ms": 1000,
    }
    bad = _broken(dwell, change)

    with pytest.raises(ValidationError):
        parse_event(json.dumps(bad))
    assert validate(_committed("event.schema.json"), bad) != []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.pop("category"), id="missing-category"),
        pytest.param(lambda d: d.update(duration_ms=0), id="zero-duration"),
        pytest.param(lambda d: d.update(tags=[""]), id="empty-tag"),
        pytest.param(lambda d: d.update(price=1), id="extra-field"),
    ],
)
def test_python_and_the_json_schema_reject_the_same_bad_items(
    item_doc: dict[str, Any], change: Callable[[dict[str, Any]], None], validate: Validate
) -> None:
    bad = _broken(item_doc, change)

    with pytest.raises(ValidationError):
        parse_item(json.dumps(bad))
    assert validate(_committed("item.schema.json"), bad) != []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.update(version=0), id="version-0"),
        pytest.param(lambda d: d["items"][0].pop("score"), id="item-without-score"),
        pytest.param(lambda d: d.pop("source_event_id"), id="missing-source_event_id"),
    ],
)
def test_python_and_the_json_schema_reject_the_same_bad_snapshots(
    snapshot_doc: dict[str, Any], change: Callable[[dict[str, Any]], None], validate: Validate
) -> None:
    bad = _broken(snapshot_doc, change)

    with pytest.raises(ValidationError):
        parse_snapshot(json.dumps(bad))
    assert validate(_committed("snapshot.schema.json"), bad) != []
