"""Command envelopes: strict JSON, canonical bytes, and the ordered checks of docs/controller.md.

Everything a command goes through before the registry looks at its name lives here, and
none of it touches the world: the payload, this host's UID, the current time and the
signature verifier are all parameters. `validate_envelope` runs the checks in exactly the
contract's order and raises a `Rejection` carrying the first failure's code and, whenever
an id could be read, the id to reply to; without one the caller emits an `error` event.
JSON is parsed strictly (no duplicate keys, no NaN, only integers within ±(2^53-1), no lone
surrogates) so that what the agent verifies is exactly what every signer, in any language,
signed: a parser that quietly kept the last of two `name` keys would let a signature over
one command authorise another.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from agent.core.errors import AgentError
from agent.core.timefmt import parse_iso

__all__ = [
    "ID_PATTERN",
    "MAX_DEPTH",
    "REJECTION_ORDER",
    "SNIFF_BYTES",
    "BadJson",
    "CommandEnvelope",
    "Rejection",
    "canonical_bytes",
    "sniff_id",
    "strict_loads",
    "validate_envelope",
]

# The contract's order; the first failure is the reply. `not_yet_valid` and `expired` share
# a step (they cannot both hold, since a valid TTL is positive). The last three are decided
# by the command registry, after this module has accepted the envelope.
REJECTION_ORDER: Final = (
    "too_large",
    "bad_json",
    "bad_envelope",
    "wrong_host",
    "not_yet_valid",
    "expired",
    "bad_signature",
    "unknown_command",
    "bad_args",
    "busy",
)

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
# How much of an oversized payload is searched for an id (docs/controller.md).
SNIFF_BYTES: Final = 256
# Deeper documents are bad_json. No command needs more than a few levels, and the bound
# keeps both the parser and `canonical_bytes` well clear of Python's recursion limit, so a
# document that parsed can always be re-encoded for verification.
MAX_DEPTH: Final = 64
_MAX_SAFE_INT: Final = 2**53 - 1
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_JSON_WS: Final = b" \t\n\r"
_SIG_BYTES: Final = 64
_REQUIRED_STRINGS: Final = ("id", "name", "uid", "issued_at", "expires_at")


class BadJson(ValueError):
    """The payload is not the strict JSON the contract requires; the message says why."""


class Rejection(AgentError):
    """A command refused with one of the contract's codes (see `REJECTION_ORDER`).

    `command_id` is the id to reply to, or None when no id could be read; the caller then
    emits an `error` event instead of a reply.
    """

    def __init__(self, code: str, message: str, command_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.command_id = command_id


@dataclass(frozen=True)
class CommandEnvelope:
    """An envelope that passed every check up to and including the signature.

    `sig` is None only when `allow_unsigned` let an envelope without one through; a present
    `sig` always verified. `raw` is the whole parsed object (unknown keys included: they
    were signed too). Treat `args` and `raw` as read-only.
    """

    id: str
    name: str
    args: dict[str, Any]
    uid: str
    issued_at: str
    expires_at: str
    issued_ts: float
    expires_ts: float
    sig: str | None
    raw: dict[str, Any]


def canonical_bytes(obj: object) -> bytes:
    """The signed form: keys sorted at every level, no whitespace, non-ASCII as UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _refuse_constant(name: str) -> NoReturn:
    raise BadJson(f"{name} is not allowed")


def _refuse_float(text: str) -> NoReturn:
    raise BadJson(f"non-integer number {text[:32]!r} is not allowed")


def _bounded_int(text: str) -> int:
    # Check the length before int(): a 60 KB digit string would otherwise cost a slow
    # conversion (or trip the int_max_str_digits guard) just to be refused.
    if len(text.lstrip("-")) > 16:
        raise BadJson("integer beyond ±(2^53-1)")
    value = int(text)
    if abs(value) > _MAX_SAFE_INT:
        raise BadJson("integer beyond ±(2^53-1)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadJson(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return obj


def _walk(doc: object) -> None:
    """Refuse lone surrogates and nesting beyond MAX_DEPTH, without recursion."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _LONE_SURROGATE.search(node):
                raise BadJson("lone surrogate in a string")
        elif isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise BadJson(f"nested deeper than {MAX_DEPTH} levels")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if isinstance(key, str) and _LONE_SURROGATE.search(key):
                    raise BadJson("lone surrogate in a key")
                stack.append((value, depth + 1))


def strict_loads(data: bytes) -> object:
    """Parse strict JSON (docs/controller.md); `BadJson` is the only exception it raises."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Raw surrogates (ED A0 80 …) land here too: they are not valid UTF-8.
        raise BadJson(f"invalid UTF-8 at byte {e.start}") from None
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_refuse_float,
            parse_int=_bounded_int,
        )
    except BadJson:
        raise
    except RecursionError:
        raise BadJson(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        # JSONDecodeError (syntax, trailing data, control characters) is a ValueError.
        raise BadJson(str(e)[:200]) from None
    # The text was valid UTF-8, so a surrogate can only come from a \u escape; and deep
    # nesting needs many brackets. Ordinary commands skip the walk altogether.
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        _walk(doc)
    return doc


def _sniff_top_level_id(prefix: bytes) -> str | None:
    """Find the top-level `"id": "…"` in a JSON prefix, tracking strings and nesting."""
    depth = 0
    found: str | None = None
    i, n = 0, len(prefix)
    while i < n:
        c = prefix[i]
        if c == 0x22:  # '"': read the whole string, honouring backslash escapes
            j = i + 1
            while j < n and prefix[j] != 0x22:
                j += 2 if prefix[j] == 0x5C else 1
            if j >= n:
                return found
            token, i = prefix[i + 1 : j], j + 1
            k = i
            while k < n and prefix[k] in _JSON_WS:
                k += 1
            if depth == 1 and token == b"id" and k < n and prefix[k] == 0x3A:  # a key
                k += 1
                while k < n and prefix[k] in _JSON_WS:
                    k += 1
                end = prefix.find(b'"', k + 1)
                if k >= n or prefix[k] != 0x22 or end < 0:
                    return found
                value = prefix[k + 1 : end].decode("ascii", "replace")
                if found is not None or not ID_PATTERN.fullmatch(value):
                    return None  # two ids, or one that breaks the id rule: none to trust
                found, i = value, end + 1
            continue
        if c in b"{[":
            if depth == 0 and c != 0x7B:
                return None  # the top level is not an object
            depth += 1
        elif c in b"}]":
            depth -= 1
        i += 1
    return found


def sniff_id(prefix: bytes) -> str | None:
    """The id of a payload too large to parse: its top-level `"id":"…"` in the first 256
    bytes (whitespace allowed around the colon), only if it follows the id rule.

    Unlike a plain regex, the scan skips strings and nested objects, so `args` (which sorts
    before `id` in canonical order) cannot smuggle in another command's id.
    """
    return _sniff_top_level_id(prefix[:SNIFF_BYTES])


def _lenient_id(data: bytes) -> str | None:
    """The id of a payload that is not strict JSON, for the bad_json reply.

    A plain parse that tolerates what the strict one refuses; an id only counts when the top
    level is an object with exactly one `id` key holding a valid id. When even that parse
    fails (truncated or garbled JSON), fall back to sniffing, as for oversized payloads.
    """

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if sum(1 for k, _ in pairs if k == "id") > 1:
            obj["id"] = None  # ambiguous: which of the two would we answer?
        return obj

    try:
        doc = json.loads(data.decode("utf-8", "replace"), object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        return sniff_id(data)
    if isinstance(doc, dict):
        cid = doc.get("id")
        if isinstance(cid, str) and ID_PATTERN.fullmatch(cid):
            return cid
    return None


def _parse_time(text: str, field: str, cid: str) -> float:
    # timefmt's regex would take a trailing newline ($) and non-ASCII digits (\d): refuse
    # those here so "RFC 3339" means the ASCII grammar and nothing looser.
    if text.isascii() and not text.endswith("\n"):
        try:
            return parse_iso(text)
        except (ValueError, OverflowError):
            pass
    raise Rejection("bad_envelope", f"{field} is not an RFC 3339 date-time", cid)


def _check_fields(doc: dict[str, Any], cid: str | None) -> str:
    """Presence and types of the fields; returns the (valid) id."""
    for field in _REQUIRED_STRINGS:
        if field not in doc:
            raise Rejection("bad_envelope", f"missing field {field!r}", cid)
        if not isinstance(doc[field], str):
            raise Rejection("bad_envelope", f"field {field!r} must be a string", cid)
    if "args" not in doc:
        raise Rejection("bad_envelope", "missing field 'args'", cid)
    if not isinstance(doc["args"], dict):
        raise Rejection("bad_envelope", "field 'args' must be an object", cid)
    if "sig" in doc and not isinstance(doc["sig"], str):
        raise Rejection("bad_envelope", "field 'sig' must be a string", cid)
    if cid is None:
        raise Rejection("bad_envelope", "id must be 1-64 of [A-Za-z0-9._-]", None)
    return cid


def _decode_sig(sig: str) -> bytes | None:
    """Strict standard padded base64 of exactly 64 bytes, else None."""
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        return None
    # The round trip refuses what b64decode still forgives: non-zero padding bits.
    if len(raw) != _SIG_BYTES or base64.b64encode(raw).decode("ascii") != sig:
        return None
    return raw


def validate_envelope(
    payload: bytes,
    *,
    uid: str,
    now: float,
    max_bytes: int,
    max_skew_s: float,
    max_ttl_s: float,
    verify: Callable[[bytes, bytes], bool] | None,
    allow_unsigned: bool,
) -> CommandEnvelope:
    """Run the contract's checks in order, up to the signature; raise the first failure.

    `now` must come from a clock that never goes backwards (agent/state/clock.py).
    `verify(message, signature)` must return a bool and never raise; with `verify=None`
    every signed envelope is refused, since there is no key to check it against.
    `allow_unsigned` (development only) lets an envelope without `sig` through; a present
    but bad `sig` is refused all the same.
    """
    if len(payload) > max_bytes:
        raise Rejection(
            "too_large", f"{len(payload)} bytes, more than {max_bytes}", sniff_id(payload)
        )
    try:
        doc = strict_loads(payload)
    except BadJson as e:
        raise Rejection("bad_json", str(e), _lenient_id(payload)) from None
    if not isinstance(doc, dict):
        raise Rejection("bad_envelope", "the envelope must be a JSON object", None)
    raw_id = doc.get("id")
    cid = raw_id if isinstance(raw_id, str) and ID_PATTERN.fullmatch(raw_id) else None

    cid = _check_fields(doc, cid)
    issued_ts = _parse_time(doc["issued_at"], "issued_at", cid)
    expires_ts = _parse_time(doc["expires_at"], "expires_at", cid)
    ttl = expires_ts - issued_ts
    if not 0 < ttl <= max_ttl_s:
        raise Rejection("bad_envelope", f"TTL {ttl:g}s is not within (0, {max_ttl_s:g}]", cid)

    if doc["uid"] != uid:
        raise Rejection("wrong_host", f"addressed to {doc['uid'][:128]!r}", cid)

    if now < issued_ts - max_skew_s:
        raise Rejection("not_yet_valid", f"issued_at {doc['issued_at']} is in the future", cid)
    if now > expires_ts:
        raise Rejection("expired", f"expired at {doc['expires_at']}", cid)

    sig = doc.get("sig")
    if sig is None:
        if not allow_unsigned:
            raise Rejection("bad_signature", "missing sig", cid)
    else:
        sig_bytes = _decode_sig(sig)
        if sig_bytes is None:
            raise Rejection("bad_signature", "sig is not padded base64 of 64 bytes", cid)
        if verify is None:
            raise Rejection("bad_signature", "no public key configured to verify sig", cid)
        unsigned = {k: v for k, v in doc.items() if k != "sig"}
        if not verify(canonical_bytes(unsigned), sig_bytes):
            raise Rejection("bad_signature", "signature does not verify", cid)

    return CommandEnvelope(
        id=cid,
        name=doc["name"],
        args=doc["args"],
        uid=doc["uid"],
        issued_at=doc["issued_at"],
        expires_at=doc["expires_at"],
        issued_ts=issued_ts,
        expires_ts=expires_ts,
        sig=sig,
        raw=doc,
    )
