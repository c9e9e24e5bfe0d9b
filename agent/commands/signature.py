"""The controller's Ed25519 public key and the verifier built on it (docs/controller.md).

The agent verifies with PyNaCl (libsodium, ~1 MB RSS) rather than `cryptography` (~7 MB),
so the PEM file is parsed here by hand. That is safe because only one shape is accepted:
a single `PUBLIC KEY` block whose DER is the fixed 12-byte Ed25519 SubjectPublicKeyInfo
prefix followed by the 32 key bytes. Anything else is refused with a message that says
what was found instead (an RSA or EC key, a private key, an OpenSSH key), since the usual
mistake is pointing `commands.public_key_file` at the wrong file. This is the only module
that imports `nacl`.

The key file is watched, not read once: `KeyFile` re-reads it when its inode, size or mtime
changes, so a key rotated in place (no reload, no restart) takes effect at the next command.
A stat per command costs a few microseconds; commands are rare. A replaced file that is not a
usable key fails closed: every signature is refused until the file is fixed, since keeping
the old key would go on trusting a key the operator meant to retire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from agent.core.errors import AgentError
from agent.state.filewatch import FileWatch

__all__ = ["BadPublicKey", "KeyFile", "Verifier", "load_public_key", "load_public_key_file"]

# SEQUENCE(42) { SEQUENCE(5) { OID 1.3.101.112 } BIT STRING(33, 0 unused bits) }, RFC 8410.
_ED25519_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
_KEY_BYTES: Final = 32
_SIGNATURE_BYTES: Final = 64
# A PEM public key is well under 1 KiB; a bigger file is the wrong file.
_MAX_FILE_BYTES: Final = 64 * 1024

_PEM_BLOCK: Final = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
# DER-encoded algorithm OIDs (tag 06, length, value), to name a wrong key in the error.
_ALGORITHM_OIDS: Final = (
    (bytes.fromhex("06092a864886f70d010101"), "RSA"),
    (bytes.fromhex("06072a8648ce3d0201"), "EC"),
    (bytes.fromhex("06072a8648ce380401"), "DSA"),
    (bytes.fromhex("06032b6571"), "Ed448"),
    (bytes.fromhex("06032b656e"), "X25519"),
    (bytes.fromhex("06032b656f"), "X448"),
)


class BadPublicKey(AgentError, ValueError):
    """The configured public key is not a usable Ed25519 public key; the message says why."""


class Verifier:
    """Checks Ed25519 signatures against one public key; never raises on bad input."""

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise BadPublicKey(f"an Ed25519 public key is 32 bytes, not {len(key)}")
        self._raw = bytes(key)
        self._key = VerifyKey(self._raw)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw key, hex: lets a start-up log say which key is in use."""
        return hashlib.sha256(self._raw).hexdigest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True only when `signature` is a valid Ed25519 signature of `message`."""
        if len(signature) != _SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(message, signature)
        except BadSignatureError:
            return False
        return True


def _describe_der(der: bytes) -> str:
    for oid, name in _ALGORITHM_OIDS:
        if oid in der:
            return f"not an Ed25519 public key (found {name})"
    return "not an Ed25519 SubjectPublicKeyInfo"


def load_public_key(pem: bytes) -> Verifier:
    """Parse a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) holding an Ed25519 key."""
    if pem[:1] == b"\x30":  # a DER SEQUENCE: the right key, perhaps, in the wrong encoding
        raise BadPublicKey("found DER, not PEM; convert it with `openssl pkey -pubin -inform DER`")
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise BadPublicKey("not a PEM file (binary or non-ASCII content)") from None
    blocks = _PEM_BLOCK.findall(text)
    if not blocks:
        if text.lstrip().startswith("ssh-"):
            raise BadPublicKey(
                "found an OpenSSH public key; convert it with `ssh-keygen -e -m PKCS8 -f …`"
            )
        raise BadPublicKey("no PEM block found (expected -----BEGIN PUBLIC KEY-----)")
    labels = [label for label, _ in blocks]
    if len(blocks) > 1:
        raise BadPublicKey(f"expected one PEM block, found {len(blocks)}: {', '.join(labels)}")
    label, body = blocks[0]
    if "PRIVATE" in label:
        raise BadPublicKey(f"found a {label}; the agent needs the controller's public key")
    if label == "RSA PUBLIC KEY":
        raise BadPublicKey("not an Ed25519 public key (found RSA)")
    if label != "PUBLIC KEY":
        raise BadPublicKey(f"expected a PUBLIC KEY block, found {label}")
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadPublicKey("the PUBLIC KEY block is not valid base64") from None
    if len(der) != len(_ED25519_SPKI_PREFIX) + _KEY_BYTES or not der.startswith(
        _ED25519_SPKI_PREFIX
    ):
        raise BadPublicKey(_describe_der(der))
    return Verifier(der[len(_ED25519_SPKI_PREFIX) :])


def load_public_key_file(path: Path | str) -> Verifier:
    """Read and parse `commands.public_key_file`; unreadable files are `BadPublicKey` too."""
    target = Path(path)
    try:
        with target.open("rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except OSError as e:
        raise BadPublicKey(f"cannot read {target}: {e.strerror or e}") from e
    if len(data) > _MAX_FILE_BYTES:
        raise BadPublicKey(f"{target} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        return load_public_key(data)
    except BadPublicKey as e:
        raise BadPublicKey(f"{target}: {e}") from None


class KeyFile:
    """`commands.public_key_file`, re-read whenever the file changes (see the module text).

    Built eagerly: a key that is unusable at start-up raises `BadPublicKey`, as before.
    ``on_change(fingerprint, error)`` hears of every re-read: a new key's fingerprint, or why
    the new file is refused.
    """

    def __init__(
        self, path: Path, on_change: Callable[[str | None, str | None], None] | None = None
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._watch = FileWatch(path)
        self._verifier: Verifier | None = load_public_key_file(path)
        self.error: str | None = None
        self._refresh(announce=False)

    @property
    def fingerprint(self) -> str | None:
        return self._verifier.fingerprint if self._verifier else None

    def _refresh(self, *, announce: bool = True) -> None:
        if not self._watch.changed():  # a file changed just now is read again (filewatch)
            return
        before = (self.fingerprint, self.error)
        try:
            self._verifier = load_public_key_file(self.path)
        except BadPublicKey as e:
            self._verifier = None
            self.error = str(e)
        else:
            self.error = None
        if announce and self._on_change is not None and before != (self.fingerprint, self.error):
            self._on_change(self.fingerprint, self.error)

    def verify(self, message: bytes, signature: bytes) -> bool:
        self._refresh()
        return self._verifier is not None and self._verifier.verify(message, signature)
