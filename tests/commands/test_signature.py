"""The hand-written PEM parser against keys `cryptography` produces, right and wrong ones.

The agent must not import `cryptography`; the tests do, to produce every key shape an
operator might point `commands.public_key_file` at, and to check that PyNaCl agrees with
`cryptography` on what a valid signature is.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519

from agent.commands.signature import BadPublicKey, Verifier, load_public_key, load_public_key_file

PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def spki_pem(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(PEM, SPKI))


@pytest.fixture(scope="module")
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return spki_pem(key.public_key())


def test_verifies_what_cryptography_signs(key: ed25519.Ed25519PrivateKey, pem: bytes) -> None:
    verifier = load_public_key(pem)
    for message in (b"", b"x", "é中".encode(), bytes(range(256)) * 40):
        sig = key.sign(message)
        assert verifier.verify(message, sig)
        assert not verifier.verify(message + b"!", sig)
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        assert not verifier.verify(message, flipped)


@pytest.mark.parametrize("length", [0, 1, 63, 65, 128])
def test_wrong_signature_length_is_false_not_an_error(pem: bytes, length: int) -> None:
    assert load_public_key(pem).verify(b"m", b"\0" * length) is False


def test_another_keys_signature_is_false(pem: bytes) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    assert not load_public_key(pem).verify(b"m", other.sign(b"m"))


def test_fingerprint_is_sha256_of_the_raw_key(key: ed25519.Ed25519PrivateKey, pem: bytes) -> None:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert load_public_key(pem).fingerprint == hashlib.sha256(raw).hexdigest()


def test_pem_with_surrounding_text_and_crlf(pem: bytes) -> None:
    noisy = b"# controller key, rotated 2026-11\r\n" + pem.replace(b"\n", b"\r\n") + b"\n\n"
    assert isinstance(load_public_key(noisy), Verifier)


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (lambda: rsa.generate_private_key(65537, 2048).public_key(), "found RSA"),
        (lambda: ec.generate_private_key(ec.SECP256R1()).public_key(), "found EC"),
        (lambda: ed448.Ed448PrivateKey.generate().public_key(), "found Ed448"),
        (lambda: x25519.X25519PrivateKey.generate().public_key(), "found X25519"),
    ],
)
def test_other_algorithms_are_named(make: Any, found: str) -> None:
    with pytest.raises(BadPublicKey, match=f"not an Ed25519 public key \\({found}\\)"):
        load_public_key(spki_pem(make()))


def test_pkcs1_rsa_public_key() -> None:
    pkcs1 = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(PEM, serialization.PublicFormat.PKCS1)
    )
    with pytest.raises(BadPublicKey, match="found RSA"):
        load_public_key(pkcs1)


def test_a_private_key_is_refused_by_name(key: ed25519.Ed25519PrivateKey) -> None:
    private = key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BadPublicKey, match="found a PRIVATE KEY; the agent needs the controller"):
        load_public_key(private)


def test_an_openssh_public_key_gets_a_conversion_hint(key: ed25519.Ed25519PrivateKey) -> None:
    ssh = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    with pytest.raises(BadPublicKey, match="ssh-keygen -e -m PKCS8"):
        load_public_key(ssh + b" ops@laptop\n")


def _pem_of(der: bytes, label: str = "PUBLIC KEY") -> bytes:
    body = base64.b64encode(der).decode()
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def _der(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.strip().split(b"\n")[1:-1]))


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda der: der[:-1], "not an Ed25519 SubjectPublicKeyInfo"),
        (lambda der: der + b"\0", "not an Ed25519 SubjectPublicKeyInfo"),
        (lambda der: b"\x30\x2b" + der[2:] + b"\0", "not an Ed25519 SubjectPublicKeyInfo"),
        (lambda der: der[:8] + b"\x71" + der[9:], "found Ed448"),  # the OID's last byte
        (lambda der: der[32:], "not an Ed25519 SubjectPublicKeyInfo"),  # raw key, no SPKI
        (lambda der: b"", "not an Ed25519 SubjectPublicKeyInfo"),
    ],
)
def test_malformed_der(pem: bytes, mangle: Any, match: str) -> None:
    with pytest.raises(BadPublicKey, match=match):
        load_public_key(_pem_of(mangle(_der(pem))))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"", "no PEM block"),
        (b"hello", "no PEM block"),
        (b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00" + b"\1" * 32, "found DER"),
        (b"\xff\xfe\x00k\x00e\x00y", "not a PEM file"),
        ("-----BEGIN PUBLIC KEY-----\nzé\n-----END PUBLIC KEY-----".encode(), "not a PEM"),
        (b"-----BEGIN PUBLIC KEY-----\nnot*base64\n-----END PUBLIC KEY-----\n", "base64"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n", "no PEM block"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "found CERTIFICATE"),
    ],
)
def test_not_a_public_key_pem(text: bytes, match: str) -> None:
    with pytest.raises(BadPublicKey, match=match):
        load_public_key(text)


def test_two_blocks_are_ambiguous(pem: bytes) -> None:
    other = spki_pem(ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(BadPublicKey, match="expected one PEM block, found 2"):
        load_public_key(pem + other)


def test_load_from_file(tmp_path: Path, key: ed25519.Ed25519PrivateKey, pem: bytes) -> None:
    path = tmp_path / "controller.pub"
    path.write_bytes(pem)
    assert load_public_key_file(path).verify(b"m", key.sign(b"m"))
    assert load_public_key_file(str(path)).verify(b"m", key.sign(b"m"))


def test_file_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(BadPublicKey, match=r"cannot read .*missing\.pub"):
        load_public_key_file(tmp_path / "missing.pub")
    with pytest.raises(BadPublicKey, match="cannot read"):
        load_public_key_file(tmp_path)
    big = tmp_path / "big.pem"
    big.write_bytes(b"#" * 70_000)
    with pytest.raises(BadPublicKey, match="larger than"):
        load_public_key_file(big)
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(spki_pem(rsa.generate_private_key(65537, 2048).public_key()))
    with pytest.raises(BadPublicKey, match=r"rsa\.pem: not an Ed25519 public key \(found RSA\)"):
        load_public_key_file(rsa_file)


def test_the_agent_package_does_not_import_cryptography() -> None:
    # Its ~7 MB RSS is why the verifier is PyNaCl.
    import agent.commands.signature as signature
    import agent.core.envelope as envelope

    for module in (signature, envelope):
        source = Path(str(module.__file__)).read_text()
        assert "cryptography" not in source.replace("`cryptography`", "")
