"""Property tests: whatever arrives on the commands topic, validation only ever rejects.

Four sources of input (raw bytes, JSON-ish documents with every value the strict parser
refuses, envelope-shaped objects with wrong field values, and byte-level mutations of a
correctly signed envelope), one set of invariants: the only exception is `Rejection`; its
code is one this module decides; an id it reports is a valid id that is in the payload;
no id is lost when the payload has one a plain JSON parser can read; and an accepted
mutation of a signed envelope says exactly what was signed.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.commands.signature import Verifier, load_public_key
from agent.core.envelope import (
    ID_PATTERN,
    REJECTION_ORDER,
    CommandEnvelope,
    Rejection,
    canonical_bytes,
    validate_envelope,
)
from agent.core.timefmt import iso, parse_iso

UID = "edge-fuzz"
NOW = parse_iso("2026-11-26T17:00:00.000Z")
MAX_BYTES = 2048
# 4 tests x 600 examples; database=None keeps .hypothesis/ out of the repo.
FUZZ = settings(max_examples=600, deadline=None, database=None)
ENVELOPE_CODES = set(REJECTION_ORDER[:7])

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return load_public_key(pem)


def sign(doc: dict[str, Any]) -> dict[str, Any]:
    unsigned = {k: v for k, v in doc.items() if k != "sig"}
    message = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {**unsigned, "sig": base64.b64encode(KEY.sign(message.encode())).decode()}


def validate(payload: bytes, verifier: Verifier) -> CommandEnvelope | Rejection:
    try:
        return validate_envelope(
            payload,
            uid=UID,
            now=NOW,
            max_bytes=MAX_BYTES,
            max_skew_s=300,
            max_ttl_s=3600,
            verify=verifier.verify,
            allow_unsigned=False,
        )
    except Rejection as r:
        return r


def plain_id(payload: bytes) -> str | None:
    """The id a forgiving JSON parser reads at the top level (None if two or invalid)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if [k for k, _ in pairs].count("id") > 1:
            obj["id"] = None
        return obj

    try:
        doc = json.loads(payload.decode("utf-8", "replace"), object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return None
    cid = doc.get("id") if isinstance(doc, dict) else None
    return cid if isinstance(cid, str) and ID_PATTERN.fullmatch(cid) else None


def _lone_surrogate_or_deep(node: Any, depth: int = 1) -> bool:
    def bad(text: str) -> bool:
        return any(0xD800 <= ord(c) <= 0xDFFF for c in text)

    if isinstance(node, str):
        return bad(node)
    if isinstance(node, dict | list):
        if depth > 64:
            return True
        items = node.items() if isinstance(node, dict) else ((None, v) for v in node)
        return any(
            (k is not None and bad(k)) or _lone_surrogate_or_deep(v, depth + 1) for k, v in items
        )
    return False


def strictly_bad(payload: bytes) -> bool:
    """An independent reading of docs/controller.md's strict JSON: True when it is bad_json."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    flags: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            flags.append("duplicate key")
        return dict(items)

    def flag(kind: str) -> Any:
        def hook(literal: str) -> int:
            flags.append(f"{kind} {literal}")
            return 0

        return hook

    def integer(literal: str) -> int:
        if abs(int(literal)) > 2**53 - 1:  # a huge literal raises ValueError: bad_json too
            flags.append(f"big {literal}")
        return 0

    try:
        doc = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_constant=flag("constant"),
            parse_float=flag("float"),
            parse_int=integer,
        )
    except (ValueError, RecursionError):
        return True
    return bool(flags) or _lone_surrogate_or_deep(doc)


def check_invariants(payload: bytes, outcome: CommandEnvelope | Rejection) -> None:
    # Shown by --hypothesis-show-statistics: which checks the inputs actually reached.
    event("accepted" if isinstance(outcome, CommandEnvelope) else outcome.code)
    if len(payload) <= MAX_BYTES:
        got_bad_json = isinstance(outcome, Rejection) and outcome.code == "bad_json"
        assert got_bad_json == strictly_bad(payload)
    if isinstance(outcome, CommandEnvelope):
        assert outcome.sig is not None
        assert canonical_bytes(outcome.raw)  # re-encodable: no surrogates, sane depth
        return
    assert outcome.code in ENVELOPE_CODES
    cid = outcome.command_id
    if cid is not None:
        assert ID_PATTERN.fullmatch(cid)
        assert b'"' + cid.encode() + b'"' in payload  # never made up
    elif len(payload) <= MAX_BYTES:
        assert plain_id(payload) is None, "an id was readable but the rejection lost it"


# -- strategies ----------------------------------------------------------------------------

# Everything the strict parser has an opinion on: NaN and infinities, floats, integers on
# both sides of 2^53, and text including lone surrogates.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.sampled_from([2**53 - 1, 2**53, -(2**53 - 1), -(2**53)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()), max_size=12)
    | st.sampled_from(["id", "c1", "x" * 65, "\ud800", "é中"])
)
jsonish = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "name", "args", "a", "\udc00"]) | st.text(max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def encode(doc: Any, ascii_only: bool) -> bytes:
    text = json.dumps(doc, ensure_ascii=ascii_only)  # NaN/Infinity come out as such
    return text.encode("utf-8", "surrogatepass")  # raw surrogate bytes when not escaped


def base_envelope(cid: str = "c-1", shift: float = 0) -> dict[str, Any]:
    return {
        "id": cid,
        "name": "ping",
        "args": {},
        "uid": UID,
        "issued_at": iso(NOW - 10 + shift),
        "expires_at": iso(NOW + 590 + shift),
    }


field_values = st.one_of(
    st.sampled_from(
        [
            UID,
            "edge-other",
            iso(NOW),
            iso(NOW - 7200),
            iso(NOW + 7200),
            "2026-11-26T17:00:00Z\n",
            "",
            "AAAA",
            "x" * 64,
        ]
    ),
    jsonish,
)


# -- properties ----------------------------------------------------------------------------


# Some payloads start like an envelope, so the sniffer and the bad_json id reader have
# something to find; some are near the size limit, on either side of it.
prefixes = st.sampled_from(
    [
        b"",
        b'{"id":"c1",',
        b'{ "id" : "c-2" ',
        b'{"args":{"id":"v"},"id":"c3",',
        b'{"id":"a","id":"b"',
    ]
)
bodies = st.binary(max_size=300) | st.binary(min_size=MAX_BYTES - 40, max_size=MAX_BYTES + 40)


@FUZZ
@given(payload=st.builds(bytes.__add__, prefixes, bodies))
def test_arbitrary_bytes(verifier: Verifier, payload: bytes) -> None:
    check_invariants(payload, validate(payload, verifier))


@FUZZ
@given(doc=jsonish, ascii_only=st.booleans(), wrap=st.booleans())
def test_arbitrary_json_documents(
    verifier: Verifier, doc: Any, ascii_only: bool, wrap: bool
) -> None:
    if wrap:  # give the document a chance to carry a readable id
        doc = {"id": "c-wrapped", "args": doc}
    payload = encode(doc, ascii_only)
    outcome = validate(payload, verifier)
    check_invariants(payload, outcome)
    assert isinstance(outcome, Rejection)


@FUZZ
@given(
    changes=st.dictionaries(
        st.sampled_from(["id", "name", "args", "uid", "issued_at", "expires_at", "sig", "x"]),
        field_values,
        max_size=2,
    ),
    drop=st.sets(
        st.sampled_from(["id", "name", "args", "uid", "issued_at", "expires_at"]), max_size=1
    ),
    shift=st.sampled_from([0, -590, -591, 309, 311, 5000]),  # around both window edges
    signed=st.booleans(),
    ascii_only=st.booleans(),
)
def test_envelopes_with_wrong_fields(
    verifier: Verifier,
    changes: dict[str, Any],
    drop: set[str],
    shift: float,
    signed: bool,
    ascii_only: bool,
) -> None:
    doc = {k: v for k, v in {**base_envelope(shift=shift), **changes}.items() if k not in drop}
    if signed and "sig" not in changes:
        # A lone surrogate cannot be signed (not UTF-8 encodable): send that one unsigned.
        with contextlib.suppress(UnicodeEncodeError):
            doc = sign(doc)
    payload = encode(doc, ascii_only)
    outcome = validate(payload, verifier)
    check_invariants(payload, outcome)
    cid = doc.get("id")
    readable = isinstance(cid, str) and ID_PATTERN.fullmatch(cid)
    if isinstance(outcome, Rejection) and readable and outcome.code != "too_large":
        assert outcome.command_id == cid


SIGNED = json.dumps(sign({**base_envelope("c-signed"), "args": {"n": 1, "s": "é"}})).encode()


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(SIGNED)),
            st.sampled_from(["replace", "insert", "delete"]),
            st.binary(min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutations_of_a_signed_envelope(verifier: Verifier, edits: list[Any]) -> None:
    payload = bytearray(SIGNED)
    for pos, how, data in edits:
        if how == "replace":
            payload[pos : pos + len(data)] = data
        elif how == "insert":
            payload[pos:pos] = data
        else:
            del payload[pos : pos + len(data)]
    outcome = validate(bytes(payload), verifier)
    check_invariants(bytes(payload), outcome)
    if isinstance(outcome, CommandEnvelope):
        # Accepted only if it still says exactly what was signed (whitespace, escapes).
        assert outcome.raw == json.loads(SIGNED)


def test_the_unmutated_envelope_is_accepted(verifier: Verifier) -> None:
    outcome = validate(SIGNED, verifier)
    assert isinstance(outcome, CommandEnvelope)
