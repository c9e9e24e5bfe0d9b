"""Command envelopes signed the way the controller signs them (docs/controller.md).

Tests, the demo and benchmarks need commands an agent will accept, and commands it must
refuse (expired, tampered, unsigned). `CommandSigner` holds one Ed25519 key and builds
envelopes whose `sig` covers the canonical bytes of everything else: keys sorted at every
level, separators `,` and `:`, non-ASCII kept as UTF-8. It signs with `cryptography`, not
the agent's PyNaCl, so a test that round-trips through both is a real check that the two
agree on the canonical form. Nothing here validates the envelope: building bad ones on
purpose is part of the job.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["CommandSigner", "canonical_bytes", "iso", "new_command_id"]

# Crockford base32, as ULIDs use it: no I, L, O, U, so ids survive being read aloud.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def iso(epoch: float) -> str:
    """Format a POSIX time as RFC 3339 UTC with milliseconds and a `Z`, as the contract does."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    # Truncate rather than round: rounding 59.9996 would need a carry into the seconds.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_command_id(now: float | None = None) -> str:
    """Return a ULID-like id: 48 bits of milliseconds then 80 random bits, 26 characters.

    Ids made later sort later, which keeps logs and ledgers readable.
    """
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def canonical_bytes(envelope: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the envelope without `sig`, canonical JSON, UTF-8."""
    unsigned = {key: value for key, value in envelope.items() if key != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class CommandSigner:
    """One Ed25519 private key and the envelopes it signs."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def generate(cls) -> CommandSigner:
        """A signer with a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, private_pem: bytes | str) -> CommandSigner:
        """A signer from an unencrypted PKCS#8 PEM private key."""
        data = private_pem.encode() if isinstance(private_pem, str) else private_pem
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
        return cls(key)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (for a demo controller that restarts)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM: the agent's `commands.public_key_file`."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write_public_key(self, path: str | os.PathLike[str]) -> Path:
        """Write `public_pem()` to `path` and return it as a `Path`."""
        target = Path(path)
        target.write_bytes(self.public_pem())
        return target

    def signature(self, envelope: dict[str, Any]) -> str:
        """The standard padded base64 signature over `canonical_bytes(envelope)`."""
        return base64.b64encode(self._key.sign(canonical_bytes(envelope))).decode("ascii")

    def sign(self, envelope: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of `envelope` with `sig` (re)computed; any old `sig` is ignored."""
        signed = {key: value for key, value in envelope.items() if key != "sig"}
        signed["sig"] = self.signature(signed)
        return signed

    def envelope(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        uid: str,
        id: str | None = None,
        issued_at: float | None = None,
        ttl_s: float = 600.0,
        sign: bool = True,
    ) -> dict[str, Any]:
        """Build a command envelope for `uid`, signed unless `sign=False` (then no `sig` key).

        `issued_at` is a POSIX time (default now); `expires_at` is `issued_at + ttl_s`, so a
        negative or huge `ttl_s` builds the out-of-bounds envelopes tests need.
        """
        start = time.time() if issued_at is None else issued_at
        envelope: dict[str, Any] = {
            "id": new_command_id(start) if id is None else id,
            "name": name,
            "args": {} if args is None else args,
            "uid": uid,
            "issued_at": iso(start),
            "expires_at": iso(start + ttl_s),
        }
        return self.sign(envelope) if sign else envelope

    @staticmethod
    def random_id() -> str:
        """A plain uuid4 hex id, for callers that don't want time-ordered ids."""
        return uuid.uuid4().hex
