"""docs/controller.md's worked example is right: its canonical bytes, public key and signature
are recomputed from its seed and envelope, and the agent's own parser and verifier accept the
signed envelope (as they would refuse a changed one)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.signature import load_public_key
from agent.core.envelope import canonical_bytes, strict_loads
from devtools.signer import CommandSigner
from tests.api.schemas import validate

DOC = Path(__file__).resolve().parents[2] / "docs" / "controller.md"


def _blocks() -> dict[str, str]:
    """The fenced blocks marked `<!-- worked-example: NAME -->`, by name."""
    found = re.findall(
        r"<!-- worked-example: ([a-z-]+) -->\n```[a-z]*\n(.*?)\n```", DOC.read_text(), re.S
    )
    return dict(found)


def test_the_worked_example_signature_is_what_the_seed_gives() -> None:
    ex = _blocks()
    assert set(ex) == {"seed", "public-key", "envelope", "canonical", "sig"}
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(ex["seed"]))
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_pem.decode().strip() == ex["public-key"]

    envelope = json.loads(ex["envelope"])
    canonical = canonical_bytes(envelope)
    assert canonical.decode() == ex["canonical"]
    assert f"({len(canonical)} bytes" in DOC.read_text()
    assert base64.b64encode(key.sign(canonical)).decode() == ex["sig"]
    # The project's signer (cryptography) and the text agree too.
    signer = CommandSigner(key)
    assert signer.signature(envelope) == ex["sig"]

    signed = {**envelope, "sig": ex["sig"]}
    assert validate("command", signed) == []
    verifier = load_public_key(ex["public-key"].encode())
    parsed = strict_loads(json.dumps(signed).encode())
    body = canonical_bytes({k: v for k, v in parsed.items() if k != "sig"})
    assert verifier.verify(body, base64.b64decode(ex["sig"]))
    tampered = canonical_bytes({**envelope, "name": "uninstall"})
    assert not verifier.verify(tampered, base64.b64decode(ex["sig"]))
