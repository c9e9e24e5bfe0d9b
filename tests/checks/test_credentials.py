"""``credentials``: SSM activation rules and IAM Roles Anywhere certificates made here."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.checks import to_json
from agent.core.checks import CheckStatus
from agent.testing import ACTIVATION_CODE
from devtools.fakehost import make_host
from tests.checks.helpers import (
    ASSIGNMENT,
    CERT,
    NODE,
    assignment,
    config,
    context,
    ira_assignment,
    one,
)


def write_cert(
    root: Path,
    *,
    cn: str = NODE,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    other_key: bool = False,
    encrypted: bool = False,
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    written = ec.generate_private_key(ec.SECP256R1()) if other_key else key
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(b"secret")
        if encrypted
        else serialization.NoEncryption()
    )
    pki = root / "etc/iam/pki"
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / "server.key").write_bytes(
        written.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    make_host(root, os_id="ubuntu", version_id="22.04")
    return root


async def test_ssm_well_formed_passes(tmp_path: Path, root: Path) -> None:
    r = await one(context(config(tmp_path, root), assignment()), "credentials")
    assert r.status is CheckStatus.PASS, r
    assert ACTIVATION_CODE not in json.dumps(to_json([r]))


async def test_ssm_problems_never_show_the_code(tmp_path: Path, root: Path) -> None:
    secret = "SHORTsecret1"
    a = assignment(
        ssm={"activation_id": "0A1B2C3D-1111-2222-3333-444455556666", "activation_code": secret}
    )
    r = await one(context(config(tmp_path, root), a), "credentials")
    assert r.status is CheckStatus.FAIL
    assert "activation_code is 12 characters; must be 20-250" in r.message
    assert "is not a lowercase 8-4-4-4-12 hex UUID" in r.message
    assert secret not in json.dumps(to_json([r]))
    long_code = "x" * 251
    r = await one(
        context(
            config(tmp_path, root),
            assignment(ssm={**ASSIGNMENT["ssm"], "activation_code": long_code}),
        ),
        "credentials",
    )
    assert r.status is CheckStatus.FAIL
    assert long_code not in json.dumps(to_json([r]))


async def test_iam_ra_valid_certificate_passes(tmp_path: Path, root: Path) -> None:
    write_cert(root)
    r = await one(context(config(tmp_path, root), ira_assignment()), "credentials")
    assert r.status is CheckStatus.PASS, r
    assert r.details["subject_cn"] == NODE


@pytest.mark.parametrize(
    ("cert_kw", "expected"),
    [
        (
            {
                "not_before": dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30),
                "not_after": dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2),
            },
            "certificate expired on",
        ),
        (
            {"not_before": dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)},
            "is this host's clock behind?",
        ),
        ({"other_key": True}, "does not belong to certificate"),
        ({"encrypted": True}, "is encrypted"),
    ],
)
async def test_iam_ra_certificate_problems(
    tmp_path: Path, root: Path, cert_kw: dict[str, Any], expected: str
) -> None:
    write_cert(root, **cert_kw)
    r = await one(context(config(tmp_path, root), ira_assignment()), "credentials")
    assert r.status is CheckStatus.FAIL
    assert expected in r.message


async def test_iam_ra_certificate_cn_other_than_node_name_warns(tmp_path: Path, root: Path) -> None:
    # aws/eks-hybrid v1.0.20: internal/iamrolesanywhere/ never compares the CN with nodeName;
    # only the recommended trust policy ties the session name to the CN.
    write_cert(root, cn="someone-else")
    r = await one(context(config(tmp_path, root), ira_assignment()), "credentials")
    assert r.status is CheckStatus.WARN, r
    assert "certificate CN 'someone-else' differs from node_name" in r.message
    assert "trust policy" in r.remedy


async def test_iam_ra_expiring_soon_warns(tmp_path: Path, root: Path) -> None:
    write_cert(root, not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    r = await one(context(config(tmp_path, root), ira_assignment()), "credentials")
    assert r.status is CheckStatus.WARN
    assert "expires on" in r.message


async def test_iam_ra_validity_is_judged_against_ctx_now(tmp_path: Path, root: Path) -> None:
    write_cert(root)
    ctx = context(config(tmp_path, root), ira_assignment(), now=time.time() + 400 * 86400)
    r = await one(ctx, "credentials")
    assert r.status is CheckStatus.FAIL
    assert "expired" in r.message


async def test_iam_ra_static_problems(tmp_path: Path, root: Path) -> None:
    a = ira_assignment(
        node_name="n" * 65,
        trust_anchor_arn="arn:aws:rolesanywhere:eu-west-1:1111:trust-anchor/x",
        profile_arn="arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/x",
        role_arn="arn:aws:iam::111122223333:user/bob",
    )
    r = await one(context(config(tmp_path, root), a), "credentials")
    assert r.status is CheckStatus.FAIL
    problems = r.details["problems"]
    assert "node_name is 65 characters; must be 1-64" in problems
    assert any(p.startswith("trust_anchor_arn") for p in problems)
    assert any(p.startswith("profile_arn") for p in problems)
    assert any(p.startswith("role_arn") for p in problems)
    assert f"certificate_path {CERT} does not exist on the host" in problems


async def test_iam_ra_other_partitions_are_well_formed(tmp_path: Path, root: Path) -> None:
    write_cert(root)
    a = ira_assignment(
        trust_anchor_arn="arn:aws-us-gov:rolesanywhere:us-gov-west-1:111122223333:trust-anchor/abc",
        profile_arn="arn:aws-cn:rolesanywhere:cn-north-1:111122223333:profile/abc",
        role_arn="arn:aws-us-gov:iam::111122223333:role/path/to/Role",
    )
    r = await one(context(config(tmp_path, root), a), "credentials")
    assert r.status is CheckStatus.PASS, r


@pytest.mark.parametrize(
    ("os_id", "version_id", "name"),
    [("ubuntu", "20.04", "Ubuntu 20.04"), ("rhel", "8.10", "RHEL 8")],
)
async def test_iam_ra_refused_on_old_oses(
    tmp_path: Path, os_id: str, version_id: str, name: str
) -> None:
    root = tmp_path / "host"
    make_host(root, os_id=os_id, version_id=version_id)
    write_cert(root)
    r = await one(context(config(tmp_path, root), ira_assignment()), "credentials")
    assert r.status is CheckStatus.FAIL
    assert f"IAM Roles Anywhere is not supported on {name}" in r.message


def test_iam_ra_without_cryptography_is_an_error(tmp_path: Path, root: Path) -> None:
    """The optional extra is missing: run the check in a child where it cannot be imported."""
    write_cert(root)
    program = f"""
import asyncio, json, sys
sys.modules["cryptography"] = None  # what an install without edge-agent[iamra] looks like
from tests.checks.helpers import config, context, ira_assignment, one
from pathlib import Path
r = asyncio.run(one(context(config(Path({str(tmp_path)!r}), Path({str(root)!r})), ira_assignment()), "credentials"))
print(json.dumps(r.to_dict()))
"""
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "error"
    assert "cryptography is not installed" in result["message"]
    assert "edge-agent[iamra]" in result["remedy"]
