"""The published API documents are valid and whole: OpenAPI 3.1 by openapi-spec-validator,
AsyncAPI 3.0 by a structural schema, every schema by the 2020-12 metaschema, and every
``$ref`` in any of them leads somewhere (the validator alone does not follow file refs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.readers import read_from_filename

from tests.api.schemas import AGENT_TOPICS, API, SCHEMAS, validate

SCHEMA_NAMES = (
    "availability",
    "status",
    "health",
    "event",
    "reply",
    "command",
    "assignment",
    "register-request",
    "register-response",
)

# The parts of AsyncAPI 3.0 this project relies on, and how it uses them.
ASYNCAPI_SHAPE: dict[str, Any] = {
    "type": "object",
    "required": ["asyncapi", "info", "servers", "channels", "operations", "components"],
    "properties": {
        "asyncapi": {"const": "3.0.0"},
        "info": {"type": "object", "required": ["title", "version"]},
        "channels": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["address", "messages"],
                "properties": {
                    "address": {"type": "string", "pattern": r"^\{prefix\}/\{uid\}/[a-z]+$"},
                    "messages": {"type": "object", "minProperties": 1},
                },
            },
        },
        "operations": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["action", "channel", "messages", "bindings"],
                "properties": {
                    "action": {"enum": ["send", "receive"]},
                    "channel": {"type": "object", "required": ["$ref"]},
                    "bindings": {
                        "type": "object",
                        "required": ["mqtt"],
                        "properties": {
                            "mqtt": {
                                "type": "object",
                                "required": ["qos"],
                                "properties": {
                                    "qos": {"enum": [0, 1, 2]},
                                    "retain": {"type": "boolean"},
                                },
                            }
                        },
                    },
                },
            },
        },
        "components": {
            "type": "object",
            "required": ["messages"],
            "properties": {
                "messages": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["payload"],
                        "properties": {
                            "payload": {
                                "type": "object",
                                "required": ["schemaFormat", "schema"],
                                "properties": {
                                    "schemaFormat": {
                                        "const": "application/schema+json;version=draft-2020-12"
                                    }
                                },
                            }
                        },
                    },
                }
            },
        },
    },
}


def _load(path: Path) -> Any:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _pointer(doc: Any, fragment: str) -> Any:
    for raw in [p for p in fragment.lstrip("/").split("/") if p]:
        part = raw.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _dangling(path: Path) -> list[str]:
    """Every $ref of the document at `path` that does not resolve, followed across files."""
    bad: list[str] = []
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        doc = _load(current)
        for ref in _refs(doc):
            target, _, fragment = ref.partition("#")
            where = (current.parent / target).resolve() if target else current
            try:
                _pointer(_load(where) if target else doc, fragment)
            except (OSError, KeyError, IndexError, ValueError, TypeError):
                bad.append(f"{current.name}: {ref}")
                continue
            if target:
                todo.append(where)
    return bad


def test_openapi_document_is_valid_openapi_3_1() -> None:
    spec, base = read_from_filename(str(API / "openapi.yaml"))
    assert spec["openapi"].startswith("3.1")
    validate_openapi(spec, base_uri=base)


def test_asyncapi_document_has_the_asyncapi_3_shape() -> None:
    doc = _load(API / "asyncapi.yaml")
    errors = [e.message for e in Draft202012Validator(ASYNCAPI_SHAPE).iter_errors(doc)]
    assert errors == []


@pytest.mark.parametrize("name", ["openapi.yaml", "asyncapi.yaml"])
def test_every_ref_resolves(name: str) -> None:
    assert _dangling(API / name) == []


def test_a_dangling_ref_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "doc.yaml"
    doc.write_text(
        yaml.safe_dump({"a": {"$ref": "schemas/nope.schema.json"}, "b": {"$ref": "#/c"}})
    )
    assert _dangling(doc) == ["doc.yaml: schemas/nope.schema.json", "doc.yaml: #/c"]


def test_there_is_one_valid_schema_per_payload() -> None:
    names = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert set(SCHEMA_NAMES) <= names
    for path in SCHEMAS.glob("*.schema.json"):
        schema = _load(path)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", path.name
        Draft202012Validator.check_schema(schema)


def test_each_schema_is_referenced_by_the_document_of_its_transport() -> None:
    openapi = {Path(r).name for r in _refs(_load(API / "openapi.yaml"))}
    asyncapi = {Path(r).name for r in _refs(_load(API / "asyncapi.yaml"))}
    for name in ("assignment", "register-request", "register-response", "error"):
        assert f"{name}.schema.json" in openapi, name
    for name in ("availability", "status", "health", "event", "reply", "command"):
        assert f"{name}.schema.json" in asyncapi, name


def test_asyncapi_qos_and_retain_match_what_the_agent_does() -> None:
    doc = _load(API / "asyncapi.yaml")
    sent = {}
    for op in doc["operations"].values():
        if op["action"] == "send":
            suffix = _pointer(doc, op["channel"]["$ref"][1:])["address"].rsplit("/", 1)[1]
            sent[suffix] = op["bindings"]["mqtt"]
    assert set(sent) == set(AGENT_TOPICS)
    for suffix, (_, qos) in AGENT_TOPICS.items():
        assert sent[suffix]["qos"] == min(qos), suffix
    assert {s for s, b in sent.items() if b.get("retain")} == {"availability", "status"}


def test_the_documents_own_examples_conform() -> None:
    openapi = _load(API / "openapi.yaml")
    post = openapi["paths"]["/v1/hosts/register"]["post"]
    example = post["requestBody"]["content"]["application/json"]["example"]
    assert validate("register-request", example) == []
