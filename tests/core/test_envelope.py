"""Every rejection code of docs/controller.md, in the contract's order, against a real Ed25519 key.

Envelopes are signed here with `cryptography` over the canonical bytes written out by hand
(not through the agent's `canonical_bytes`), and verified with the agent's PyNaCl verifier,
so a disagreement on the canonical form between a signer and the agent shows up as a
failure.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.signature import Verifier, load_public_key
from agent.core.envelope import (
    REJECTION_ORDER,
    BadJson,
    CommandEnvelope,
    Rejection,
    canonical_bytes,
    sniff_id,
    strict_loads,
    validate_envelope,
)
from agent.core.timefmt import iso, parse_iso

UID = "edge-4c4c4544-0042-3510-8052-b4c04f4e4b32"
NOW = parse_iso("2026-11-26T17:00:00.000Z")
MAX_BYTES = 65536


class Signer:
    """A controller's key: signs the canonical bytes exactly as the contract spells them."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, envelope: dict[str, Any]) -> dict[str, Any]:
        unsigned = {k: v for k, v in envelope.items() if k != "sig"}
        message = json.dumps(
            unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        return {**unsigned, "sig": base64.b64encode(self.key.sign(message)).decode()}


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def verifier(signer: Signer) -> Verifier:
    return load_public_key(signer.public_pem())


def envelope(
    name: str = "ping",
    args: dict[str, Any] | None = None,
    *,
    cid: str = "01JDXCMD0000000000000000AA",
    uid: str = UID,
    issued: float = NOW - 10,
    ttl: float = 600,
) -> dict[str, Any]:
    return {
        "id": cid,
        "name": name,
        "args": {} if args is None else args,
        "uid": uid,
        "issued_at": iso(issued),
        "expires_at": iso(issued + ttl),
    }


def check(
    payload: bytes | dict[str, Any],
    verifier: Verifier | None,
    *,
    now: float = NOW,
    allow_unsigned: bool = False,
    max_bytes: int = MAX_BYTES,
) -> CommandEnvelope:
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return validate_envelope(
        data,
        uid=UID,
        now=now,
        max_bytes=max_bytes,
        max_skew_s=300.0,
        max_ttl_s=3600.0,
        verify=None if verifier is None else verifier.verify,
        allow_unsigned=allow_unsigned,
    )


def rejected(payload: bytes | dict[str, Any], verifier: Verifier | None, **kw: Any) -> Rejection:
    with pytest.raises(Rejection) as info:
        check(payload, verifier, **kw)
    return info.value


# -- accepted ------------------------------------------------------------------------------


def test_a_signed_envelope_is_accepted(signer: Signer, verifier: Verifier) -> None:
    signed = signer.sign(envelope("run-checks", {"only": ["swap", "ports"]}))
    env = check(signed, verifier)
    assert env.id == "01JDXCMD0000000000000000AA"
    assert env.name == "run-checks"
    assert env.args == {"only": ["swap", "ports"]}
    assert env.uid == UID
    assert env.issued_ts == pytest.approx(NOW - 10)
    assert env.expires_ts == pytest.approx(NOW + 590)
    assert env.sig == signed["sig"]
    assert env.raw == signed


def test_canonical_bytes_golden() -> None:
    obj = {"b": [1, {"z": None, "a": True}], "a": "é中😀", "id": "x"}
    expected = '{"a":"é中😀","b":[1,{"a":true,"z":null}],"id":"x"}'
    assert canonical_bytes(obj) == expected.encode("utf-8")


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_non_ascii_args_verify_over_utf8_canonical_bytes(
    signer: Signer, verifier: Verifier, ensure_ascii: bool
) -> None:
    signed = signer.sign(envelope(args={"label": "café", "zone": "中国", "emoji": "😀"}))
    # The wire form may escape or not, reorder keys, add whitespace: the signature covers
    # the canonical form of what was parsed, not the bytes that arrived.
    wire = json.dumps(dict(reversed(signed.items())), ensure_ascii=ensure_ascii, indent=2)
    env = check(wire.encode(), verifier)
    assert env.args["zone"] == "中国"


def test_signature_is_over_exactly_the_documented_bytes(verifier: Verifier, signer: Signer) -> None:
    # Built by hand, not by json.dumps: the bytes the contract describes, signed directly.
    issued, expires = iso(NOW - 10), iso(NOW + 590)
    message = (
        f'{{"args":{{"note":"é"}},"expires_at":"{expires}","id":"c1",'
        f'"issued_at":"{issued}","name":"ping","uid":"{UID}"}}'
    ).encode()
    sig = base64.b64encode(signer.key.sign(message)).decode()
    wire = (
        f'{{"sig":"{sig}","uid":"{UID}","name":"ping","id":"c1","args":{{"note":"\\u00e9"}},'
        f'"issued_at":"{issued}","expires_at":"{expires}"}}'
    )
    assert check(wire.encode(), verifier).args == {"note": "é"}


def test_max_safe_integers_and_valid_surrogate_pairs_pass(
    signer: Signer, verifier: Verifier
) -> None:
    signed = signer.sign(envelope(args={"hi": 2**53 - 1, "lo": -(2**53 - 1), "s": "😀"}))
    wire = json.dumps(signed, ensure_ascii=True).encode()  # "😀" travels as \ud83d\ude00
    assert b"\\ud83d\\ude00" in wire
    assert check(wire, verifier).args["hi"] == 2**53 - 1


# -- bad_json ------------------------------------------------------------------------------


def test_duplicate_name_key_is_bad_json_even_though_signed(
    signer: Signer, verifier: Verifier
) -> None:
    signed = signer.sign(envelope("ping"))
    # The signature covers "ping"; a parser keeping the last key would run "uninstall".
    wire = json.dumps(signed)[:-1] + ', "name": "uninstall"}'
    r = rejected(wire.encode(), verifier)
    assert (r.code, r.command_id) == ("bad_json", signed["id"])
    assert "duplicate key 'name'" in r.message


@pytest.mark.parametrize(
    "fragment",
    [
        '{"x": 1, "x": 1}',
        "NaN",
        "Infinity",
        "-Infinity",
        "1.5",
        "1.0",
        "1e2",
        "1E2",
        "-0.0",
        str(2**53),
        str(-(2**53)),
        "1" * 5000,
        '"\\ud800"',
        '"\\udc00x"',
        '"\\ude00\\ud83d"',
        '{"\\ud800": 1}',
        "\u0661",  # an Arabic-Indic digit one: only ASCII digits are JSON numbers
    ],
)
def test_non_strict_values_in_args_are_bad_json(
    signer: Signer, verifier: Verifier, fragment: str
) -> None:
    wire = json.dumps(signer.sign(envelope(args={"v": 0})))
    wire = wire.replace('"v": 0', f'"v": {fragment}')
    r = rejected(wire.encode(), verifier)
    assert (r.code, r.command_id) == ("bad_json", "01JDXCMD0000000000000000AA")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   ",
        b"{",
        b'{"id": "a"} x',
        b'{"id": "a"}{}',
        b"\xef\xbb\xbf{}",  # a BOM is not JSON
        b'"\xed\xa0\x80"',  # a raw (UTF-8 encoded) lone surrogate is invalid UTF-8
        b'{"a": "\xff"}',
        b'{"a": "\x01"}',  # a raw control character in a string
        b"[" * 100_000,
        b"[" * 65 + b"]" * 65,
        b"{'id': 'a'}",
        b"{id: 1}",
    ],
)
def test_malformed_json_is_bad_json(verifier: Verifier, payload: bytes) -> None:
    assert rejected(payload, verifier, max_bytes=1_000_000).code == "bad_json"


def test_strict_loads_accepts_plain_json_and_only_raises_bad_json() -> None:
    assert strict_loads(b' {"a": [1, -2, true, null, "x"]} ') == {"a": [1, -2, True, None, "x"]}
    assert strict_loads(b"[" * 64 + b"]" * 64) is not None
    # Closed: 3.11's parser hits its recursion limit, 3.13's parses it and the depth walk
    # refuses it; an unclosed one would be only "Expecting value" on 3.13.
    with pytest.raises(BadJson, match="nested deeper"):
        strict_loads(b"[" * 5000 + b"]" * 5000)


def test_bad_json_reply_reaches_a_readable_id(verifier: Verifier) -> None:
    truncated = b'{"id": "c-7", "name": "pi'
    assert rejected(truncated, verifier).command_id == "c-7"
    twice = b'{"id": "c-7", "id": "c-8", "x": NaN}'
    assert rejected(twice, verifier).command_id is None
    assert rejected(b'{"x": NaN}', verifier).command_id is None


# -- bad_envelope --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"[]", b'"ping"', b"1", b"null", b"true"])
def test_not_an_object_is_bad_envelope_without_id(verifier: Verifier, payload: bytes) -> None:
    r = rejected(payload, verifier)
    assert (r.code, r.command_id) == ("bad_envelope", None)


@pytest.mark.parametrize("field", ["id", "name", "args", "uid", "issued_at", "expires_at"])
def test_missing_field_is_bad_envelope(signer: Signer, verifier: Verifier, field: str) -> None:
    doc = signer.sign(envelope())
    del doc[field]
    r = rejected(doc, verifier)
    assert r.code == "bad_envelope"
    assert field in r.message
    assert r.command_id == (None if field == "id" else doc["id"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 7),
        ("name", None),
        ("name", ["ping"]),
        ("args", []),
        ("args", "{}"),
        ("args", None),
        ("uid", 1),
        ("issued_at", 1764176400),
        ("expires_at", None),
        ("sig", None),
        ("sig", 5),
        ("sig", ["x"]),
    ],
)
def test_wrong_type_is_bad_envelope(verifier: Verifier, field: str, value: Any) -> None:
    doc = {**envelope(), field: value}
    r = rejected(doc, verifier)
    assert r.code == "bad_envelope"
    assert field in r.message


@pytest.mark.parametrize("cid", ["", "a b", "a/b", "é", "a\n", "x" * 65, "cmd:1", "a+b"])
def test_bad_id_is_bad_envelope_without_id(signer: Signer, verifier: Verifier, cid: str) -> None:
    r = rejected(signer.sign(envelope(cid=cid)), verifier)
    assert (r.code, r.command_id) == ("bad_envelope", None)


@pytest.mark.parametrize("cid", ["a", "x" * 64, "A.b_c-9", "01JDX"])
def test_id_rule_accepts(signer: Signer, verifier: Verifier, cid: str) -> None:
    assert check(signer.sign(envelope(cid=cid)), verifier).id == cid


@pytest.mark.parametrize(
    "stamp",
    [
        "",
        "yesterday",
        "2026-11-26",
        "2026-11-26 17:00:00Z",
        "2026-11-26T17:00:00",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-26T24:00:00Z",
        "2026-11-26T17:00:00.000Z\n",
        "\uff12026-11-26T17:00:00Z",  # a fullwidth digit
        "2026-11-26T17:00:00+25:00",
        "0000-01-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize("field", ["issued_at", "expires_at"])
def test_bad_time_is_bad_envelope(
    signer: Signer, verifier: Verifier, field: str, stamp: str
) -> None:
    r = rejected(signer.sign({**envelope(), field: stamp}), verifier)
    assert (r.code, r.command_id) == ("bad_envelope", "01JDXCMD0000000000000000AA")
    assert field in r.message


def test_other_rfc3339_forms_are_accepted(signer: Signer, verifier: Verifier) -> None:
    doc = {**envelope(), "issued_at": "2026-11-26T18:59:50+02:00", "expires_at": iso(NOW + 60)}
    assert check(signer.sign(doc), verifier).issued_ts == NOW - 10


@pytest.mark.parametrize("ttl", [0, -1, -600, 3600.001, 86400])
def test_ttl_out_of_bounds_is_bad_envelope(signer: Signer, verifier: Verifier, ttl: float) -> None:
    r = rejected(signer.sign(envelope(ttl=ttl, issued=NOW - 1)), verifier)
    assert r.code == "bad_envelope"
    assert "TTL" in r.message


def test_ttl_of_exactly_max_is_accepted(signer: Signer, verifier: Verifier) -> None:
    assert check(signer.sign(envelope(ttl=3600, issued=NOW - 0.123)), verifier)


def test_unknown_extra_fields_are_kept_and_signed(signer: Signer, verifier: Verifier) -> None:
    doc = signer.sign({**envelope(), "trace": "t-1"})
    assert check(doc, verifier).raw["trace"] == "t-1"
    r = rejected({**doc, "trace": "t-2"}, verifier)
    assert r.code == "bad_signature"


# -- wrong_host, not_yet_valid, expired ----------------------------------------------------


@pytest.mark.parametrize("uid", ["edge-other", UID.upper(), UID + " ", ""])
def test_wrong_host(signer: Signer, verifier: Verifier, uid: str) -> None:
    r = rejected(signer.sign(envelope(uid=uid)), verifier)
    assert (r.code, r.command_id) == ("wrong_host", "01JDXCMD0000000000000000AA")


@pytest.mark.parametrize(
    ("issued_in", "accepted"), [(299.999, True), (300, True), (300.001, False), (3000, False)]
)
def test_issued_in_the_future_within_and_beyond_skew(
    signer: Signer, verifier: Verifier, issued_in: float, accepted: bool
) -> None:
    doc = signer.sign(envelope(issued=NOW + issued_in))
    if accepted:
        assert check(doc, verifier).id
    else:
        assert rejected(doc, verifier).code == "not_yet_valid"


@pytest.mark.parametrize(
    ("late", "accepted"), [(-1, True), (0, True), (0.001, False), (1e6, False)]
)
def test_expiry_has_no_skew(
    signer: Signer, verifier: Verifier, late: float, accepted: bool
) -> None:
    doc = signer.sign(envelope(issued=NOW - 600, ttl=600))
    if accepted:
        assert check(doc, verifier, now=NOW + late).id
    else:
        assert rejected(doc, verifier, now=NOW + late).code == "expired"


# -- bad_signature -------------------------------------------------------------------------


def test_missing_sig(verifier: Verifier) -> None:
    r = rejected(envelope(), verifier)
    assert (r.code, r.command_id) == ("bad_signature", "01JDXCMD0000000000000000AA")


def _signed_with(signer: Signer, chars: str) -> dict[str, Any]:
    """A signed envelope whose sig contains one of `chars` (varies the id until it does)."""
    for n in range(1000):
        doc = signer.sign(envelope(cid=f"c{n}"))
        if any(c in doc["sig"][:-2] for c in chars):
            return doc
    raise AssertionError("no such signature in 1000 tries")


def _mangle(sig: str, how: str) -> str:
    if how == "urlsafe":
        return sig.translate(str.maketrans("+/", "-_"))
    if how == "unpadded":
        return sig.rstrip("=")
    if how == "extra-padding":
        return sig + "=="
    if how == "bang":
        return "!" + sig[1:]
    if how == "space":
        return sig[:40] + " " + sig[40:]
    if how == "newline":
        return sig + "\n"
    if how == "mime-lines":
        return sig[:76] + "\r\n" + sig[76:]
    if how == "non-ascii":
        return "é" + sig[1:]
    if how == "padding-bits":
        # 64 bytes end with 4 unused bits: a different last character that decodes to the
        # same bytes, which plain b64decode would take.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        last = alphabet.index(sig[-3])
        return sig[:-3] + alphabet[last | 0b0001 if not last & 1 else last & ~1] + "=="
    if how == "short":
        return base64.b64encode(base64.b64decode(sig)[:63]).decode()
    if how == "long":
        return base64.b64encode(base64.b64decode(sig) + b"\0").decode()
    if how == "empty":
        return ""
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "urlsafe",
        "unpadded",
        "extra-padding",
        "bang",
        "space",
        "newline",
        "mime-lines",
        "non-ascii",
        "padding-bits",
        "short",
        "long",
        "empty",
    ],
)
def test_undecodable_sig_is_bad_signature(signer: Signer, verifier: Verifier, how: str) -> None:
    doc = _signed_with(signer, "+/")
    assert base64.b64decode(_mangle(doc["sig"], "padding-bits")) == base64.b64decode(doc["sig"])
    r = rejected({**doc, "sig": _mangle(doc["sig"], how)}, verifier)
    assert (r.code, r.command_id) == ("bad_signature", doc["id"])


def test_tampered_args_after_signing(signer: Signer, verifier: Verifier) -> None:
    doc = signer.sign(envelope("uninstall", {"force": False}))
    assert rejected({**doc, "args": {"force": True}}, verifier).code == "bad_signature"
    assert rejected({**doc, "name": "upgrade"}, verifier).code == "bad_signature"
    assert rejected({**doc, "args": {"force": False, "x": 1}}, verifier).code == "bad_signature"


def test_signature_by_another_key(verifier: Verifier) -> None:
    doc = Signer().sign(envelope())
    assert rejected(doc, verifier).code == "bad_signature"


def test_signature_of_another_envelope(signer: Signer, verifier: Verifier) -> None:
    other = signer.sign(envelope(cid="other"))
    assert rejected({**envelope(), "sig": other["sig"]}, verifier).code == "bad_signature"


def test_no_key_refuses_every_signed_envelope(signer: Signer) -> None:
    assert rejected(signer.sign(envelope()), None).code == "bad_signature"


def test_allow_unsigned_lets_only_a_missing_sig_through(signer: Signer, verifier: Verifier) -> None:
    assert check(envelope(), verifier, allow_unsigned=True).sig is None
    assert check(envelope(), None, allow_unsigned=True).sig is None
    tampered = {**signer.sign(envelope()), "name": "uninstall"}
    assert rejected(tampered, verifier, allow_unsigned=True).code == "bad_signature"
    assert rejected({**envelope(), "sig": "!"}, verifier, allow_unsigned=True).code == (
        "bad_signature"
    )
    assert check(signer.sign(envelope()), verifier, allow_unsigned=True).sig


# -- too_large and the id sniffer ----------------------------------------------------------


def test_too_large_with_a_sniffable_id(signer: Signer, verifier: Verifier) -> None:
    doc = signer.sign(envelope(args={"blob": "x" * 70_000}))
    wire = json.dumps({"id": doc["id"], **doc}).encode()
    r = rejected(wire, verifier)
    assert (r.code, r.command_id) == ("too_large", doc["id"])


def test_too_large_without_a_readable_id(verifier: Verifier) -> None:
    late_id = json.dumps({"args": {"blob": "x" * 300}, "id": "c1"}).encode()
    assert rejected(late_id, verifier, max_bytes=200).command_id is None
    nested = json.dumps({"args": {"id": "victim"}, "pad": "x" * 300}).encode()
    assert rejected(nested, verifier, max_bytes=200).command_id is None
    assert rejected(b"x" * 300, verifier, max_bytes=200).command_id is None


def test_exactly_max_bytes_is_parsed(signer: Signer, verifier: Verifier) -> None:
    wire = json.dumps(signer.sign(envelope())).encode()
    assert check(wire, verifier, max_bytes=len(wire)).id
    assert rejected(wire, verifier, max_bytes=len(wire) - 1).code == "too_large"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b'{"id":"c1","name":"ping"', "c1"),
        (b'{ "id" \t:\n "c1" ,', "c1"),
        (b'{"args":{"id":"victim"},"id":"real"', "real"),
        (b'{"note":"\\"id\\":\\"victim\\"","id":"real"', "real"),
        (b'{"id":"a","id":"b"', None),
        (b'{"id":"bad id"', None),
        (b'{"id":"' + b"x" * 65 + b'"', None),
        (b'{"id":"\\u0063"', None),
        (b'{"id":"trunc', None),
        (b'["id","c1"]', None),
        (b'{"name":"id","x":"c1"}', None),
        (b" " * 250 + b'{"id":"c1"}', None),
    ],
)
def test_sniff_id(prefix: bytes, expected: str | None) -> None:
    assert sniff_id(prefix) == expected


# -- the order -----------------------------------------------------------------------------


def test_rejection_order_is_the_contracts() -> None:
    assert REJECTION_ORDER == (
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


@pytest.mark.parametrize(
    ("build", "code"),
    [
        # too_large beats bad_json
        (lambda s: b'{"id":"c1",' + b"x" * 70_000, "too_large"),
        # bad_json beats bad_envelope (not an object AND a NaN)
        (lambda s: b"[NaN]", "bad_json"),
        # bad_envelope (TTL) beats wrong_host and expired
        (lambda s: s.sign(envelope(uid="edge-x", ttl=-5, issued=NOW - 9000)), "bad_envelope"),
        # wrong_host beats expired and a bad signature
        (lambda s: {**envelope(uid="edge-x", issued=NOW - 900), "sig": "!"}, "wrong_host"),
        # wrong_host beats not_yet_valid
        (lambda s: s.sign(envelope(uid="edge-x", issued=NOW + 900)), "wrong_host"),
        # expired beats a bad signature
        (lambda s: {**envelope(issued=NOW - 900), "sig": "!"}, "expired"),
        (lambda s: Signer().sign(envelope(issued=NOW - 900)), "expired"),
        # not_yet_valid beats a missing signature
        (lambda s: envelope(issued=NOW + 900), "not_yet_valid"),
    ],
)
def test_first_failure_in_contract_order_wins(
    signer: Signer, verifier: Verifier, build: Any, code: str
) -> None:
    assert rejected(build(signer), verifier).code == code


def test_rejection_carries_code_message_and_id() -> None:
    r = Rejection("expired", "expired at …", "c1")
    assert (r.code, r.message, r.command_id) == ("expired", "expired at …", "c1")
    assert str(r) == "expired: expired at …"
