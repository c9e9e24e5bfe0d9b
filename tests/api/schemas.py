"""The published payload schemas (docs/api/schemas), loaded for tests that check real traffic.

`validate(name, doc)` returns what is wrong with `doc` against ``<name>.schema.json`` (empty
when it conforms); `mqtt_drift(records)` does the same for every message an agent published,
choosing the schema by topic, and checks the QoS each topic is documented with. Schemas
refer to each other by file name, as the OpenAPI and AsyncAPI documents do.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

API = Path(__file__).resolve().parents[2] / "docs" / "api"
SCHEMAS = API / "schemas"

# Topic suffix -> (schema, the QoS the agent may publish it at): health's is mqtt.health_qos.
AGENT_TOPICS: dict[str, tuple[str, frozenset[int]]] = {
    "availability": ("availability", frozenset({1})),
    "status": ("status", frozenset({1})),
    "health": ("health", frozenset({0, 1})),
    "events": ("event", frozenset({1})),
    "replies": ("reply", frozenset({1})),
}


@functools.cache
def _registry() -> Registry:
    resources = [
        (p.name, Resource.from_contents(json.loads(p.read_text())))
        for p in sorted(SCHEMAS.glob("*.schema.json"))
    ]
    return Registry().with_resources(resources)


@functools.cache
def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return Draft202012Validator(
        schema, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def validate(name: str, doc: Any) -> list[str]:
    """Every way `doc` breaks ``<name>.schema.json``, as ``path: message`` lines."""
    errors = sorted(validator(name).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def mqtt_drift(records: Iterable[Any], own_payloads: set[tuple[str, bytes]]) -> list[str]:
    """What the agent published that its documents do not describe.

    `records` are `devtools.commander.Received`; messages a test published itself
    (`own_payloads`, by topic suffix and bytes: commands, fake availability) are skipped.
    """
    problems: list[str] = []
    for r in records:
        if (r.suffix, r.payload) in own_payloads or r.suffix == "commands":
            continue
        if r.suffix not in AGENT_TOPICS:
            problems.append(f"{r.uid}/{r.suffix}: a topic the documents do not list")
            continue
        schema, qos = AGENT_TOPICS[r.suffix]
        if not r.retain and r.qos not in qos:
            problems.append(f"{r.uid}/{r.suffix}: QoS {r.qos}, documented {sorted(qos)}")
        try:
            doc = json.loads(r.payload)
        except ValueError:
            problems.append(f"{r.uid}/{r.suffix}: not JSON: {r.payload[:80]!r}")
            continue
        problems.extend(f"{r.uid}/{r.suffix} {err}" for err in validate(schema, doc))
    return problems
