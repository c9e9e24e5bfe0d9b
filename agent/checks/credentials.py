"""``credentials``: the assignment's SSM activation or IAM Roles Anywhere material is usable.

These are the rules nodeadm's own static validation applies (aws/eks-hybrid v1.0.20:
internal/node/hybrid/validator.go), checked before install so an operator sees them in preflight
rather than in a failed init. The SSM activation code is a secret: it is measured, never shown, in
messages and details.

The IAM Roles Anywhere certificate is inspected with ``cryptography``, an optional extra
(``edge-agent[iamra]``) imported here lazily: it costs about 7 MB of memory, which SSM
hosts never pay. Without it the check reports ``error`` and says what to install.
"""

from __future__ import annotations

import datetime as dt
import re
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.checks.base import (
    Check,
    CheckContext,
    CheckVerdict,
    errored,
    failed,
    human_duration,
    passed,
    require_assignment,
    warned,
)
from agent.checks.os_checks import os_version
from agent.core.assignment import IamRolesAnywhere, Ssm
from agent.host.hostroot import OsRelease

if TYPE_CHECKING:
    # Only for the type: cryptography is an optional extra, imported where it is used.
    from cryptography.x509 import Certificate

_ACTIVATION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PARTITION = r"arn:aws(?:-[a-z]+)*"
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d+"
_ARNS = MappingProxyType(
    {
        "trust_anchor_arn": re.compile(
            rf"^{_PARTITION}:rolesanywhere:{_REGION}:\d{{12}}:trust-anchor/[A-Za-z0-9-]+$"
        ),
        "profile_arn": re.compile(
            rf"^{_PARTITION}:rolesanywhere:{_REGION}:\d{{12}}:profile/[A-Za-z0-9-]+$"
        ),
        "role_arn": re.compile(rf"^{_PARTITION}:iam::\d{{12}}:role/[\w+=,.@/-]{{1,512}}$"),
    }
)
_ARN_SHAPE = MappingProxyType(
    {
        "trust_anchor_arn": "arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>",
        "profile_arn": "arn:aws:rolesanywhere:<region>:<account>:profile/<id>",
        "role_arn": "arn:aws:iam::<account>:role/<name>",
    }
)
EXPIRY_WARNING_S = 7 * 86400


def ssm_problems(ssm: Ssm) -> list[str]:
    problems = []
    if not _ACTIVATION_ID.match(ssm.activation_id):
        problems.append(
            f"activation_id {ssm.activation_id!r} is not a lowercase 8-4-4-4-12 hex UUID"
        )
    n = len(ssm.activation_code)
    if not 20 <= n <= 250:
        problems.append(f"activation_code is {n} characters; must be 20-250")
    return problems


# EKS Hybrid Nodes support only SSM on these releases (AWS's list of supported operating
# systems for hybrid nodes).
_IAM_RA_UNSUPPORTED = MappingProxyType(
    {("ubuntu", "20.04"): "Ubuntu 20.04", ("rhel", "8"): "RHEL 8"}
)


def _iam_ra_unsupported(osr: OsRelease | None) -> str | None:
    return None if osr is None else _IAM_RA_UNSUPPORTED.get((osr.id, os_version(osr)))


def ira_static_problems(ctx: CheckContext, ira: IamRolesAnywhere) -> list[str]:
    """Everything that can be judged without reading the certificate."""
    problems = []
    os_name = _iam_ra_unsupported(ctx.host.os_release())
    if os_name:
        problems.append(f"IAM Roles Anywhere is not supported on {os_name} (SSM only there)")
    if not 1 <= len(ira.node_name) <= 64:
        problems.append(f"node_name is {len(ira.node_name)} characters; must be 1-64")
    for key, pattern in _ARNS.items():
        value = getattr(ira, key)
        if not pattern.match(value):
            problems.append(f"{key} {value!r} is not of the form {_ARN_SHAPE[key]}")
    for key in ("certificate_path", "private_key_path"):
        host_path = getattr(ira, key)
        if not ctx.host.path(host_path).is_file():
            problems.append(f"{key} {host_path} does not exist on the host")
    return problems


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _validity(
    start: dt.datetime, end: dt.datetime, now: dt.datetime
) -> tuple[str | None, str | None]:
    """(problem, warning) about the certificate's validity window at ``now``."""
    if now > end:
        ago = human_duration((now - end).total_seconds())
        return f"certificate expired on {_when(end)} ({ago} ago)", None
    if now < start:
        wait = human_duration((start - now).total_seconds())
        return (
            f"certificate is not valid until {_when(start)} (in {wait}): is this host's "
            "clock behind?",
            None,
        )
    if (end - now).total_seconds() < EXPIRY_WARNING_S:
        left = human_duration((end - now).total_seconds())
        return None, f"certificate expires on {_when(end)}, in {left}"
    return None, None


def _key_problem(ira: IamRolesAnywhere, key_pem: bytes, cert: Certificate) -> str | None:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        return f"private key {ira.private_key_path} is encrypted; nodeadm needs it unencrypted"
    except ValueError:
        return f"private key {ira.private_key_path} is not a PEM private key"
    # Compare public keys (SubjectPublicKeyInfo): works for RSA, EC and Ed25519 alike.
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        return (
            f"private key {ira.private_key_path} does not belong to certificate "
            f"{ira.certificate_path}"
        )
    return None


def _certificate_problems(
    ctx: CheckContext, ira: IamRolesAnywhere
) -> tuple[list[str], dict[str, object], str | None]:
    """(problems, details, a warning) from the certificate and key; needs cryptography."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert_pem = ctx.host.path(ira.certificate_path).read_bytes()
        key_pem = ctx.host.path(ira.private_key_path).read_bytes()
    except OSError as e:
        return [f"cannot read {e.filename}: {e.strerror}"], {}, None
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        return [f"certificate {ira.certificate_path} is not a PEM certificate"], {}, None
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    details: dict[str, object] = {
        "subject_cn": cn,
        "not_before": start.isoformat(),
        "not_after": end.isoformat(),
    }
    problem, warning = _validity(start, end, dt.datetime.fromtimestamp(ctx.now, tz=dt.timezone.utc))
    problems = [problem] if problem else []
    if cn != ira.node_name and warning is None:
        # nodeadm does not compare them; only AWS's recommended trust policy (session name
        # = the certificate's CN) needs them equal, so a custom policy may differ.
        warning = (
            f"certificate CN {cn!r} differs from node_name {ira.node_name!r}: fine with a "
            "custom trust policy, but the recommended one (aws:SourceIdentity = "
            "${aws:PrincipalTag/x509Subject/CN}) will refuse this node"
        )
    key_problem = _key_problem(ira, key_pem, cert)
    if key_problem:
        problems.append(key_problem)
    return problems, details, warning


def _check_iam_ra(ctx: CheckContext, ira: IamRolesAnywhere) -> CheckVerdict:
    details: dict[str, object] = {"provider": "iam-ra", "node_name": ira.node_name}
    problems = ira_static_problems(ctx, ira)
    if problems:
        return failed("; ".join(problems), details=details | {"problems": problems})
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return errored(
            "cannot inspect the IAM Roles Anywhere certificate: the Python package "
            "cryptography is not installed",
            "install the agent with its iamra extra: pip install 'edge-agent[iamra]'",
            details,
        )
    problems, cert_details, warning = _certificate_problems(ctx, ira)
    details |= cert_details
    if problems:
        return failed("; ".join(problems), details=details | {"problems": problems})
    if warning:
        remedy = (
            "issue a new certificate for this node before it expires"
            if "expires" in warning
            else "issue a certificate whose CN is the node_name, or keep a trust policy "
            "that does not tie the session name to the CN"
        )
        return warned(warning, remedy, details)
    return passed(
        f"IAM Roles Anywhere certificate for {ira.node_name} is valid and matches its key",
        details,
    )


async def check_credentials(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    if a.credential_provider == "iam-ra" and a.iam_roles_anywhere is not None:
        return _check_iam_ra(ctx, a.iam_roles_anywhere)
    if a.ssm is None:
        return failed(f"credential_provider {a.credential_provider} has no matching object")
    details = {"provider": "ssm", "activation_id": a.ssm.activation_id}
    problems = ssm_problems(a.ssm)
    if problems:
        return failed("; ".join(problems), details=details | {"problems": problems})
    return passed("SSM activation id and code are well-formed", details)


CHECK = Check(
    id="credentials",
    title="Node credentials are usable",
    remedy="fix the assignment's ssm or iam_roles_anywhere section (create a new SSM "
    "activation, or issue a certificate whose CN is the node_name)",
    timeout_s=10.0,
    needs_assignment=True,
    run=check_credentials,
)
