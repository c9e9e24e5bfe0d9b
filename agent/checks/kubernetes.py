"""``kubernetes.version``: the assigned Kubernetes version is one nodeadm can install here.

The target must be a ``1.N`` or ``1.N.P`` string whose minor this agent's nodeadm supports
(``kubernetes.supported_versions``), and it must respect the kubelet skew policy against
the control plane when the assignment says what that runs: never newer, at most three
minors older (nodeadm's kubelet-version-skew-validation fails init otherwise).
"""

from __future__ import annotations

import re

from agent.checks.base import Check, CheckContext, CheckVerdict, failed, passed, require_assignment

_TARGET = re.compile(r"^1\.(\d+)(\.\d+)?$")
MAX_SKEW_MINORS = 3


def _minor(version: str) -> int | None:
    m = _TARGET.match(version)
    return int(m.group(1)) if m else None


async def check_version(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    target = a.kubernetes_version
    supported = ctx.config.kubernetes.supported_versions
    details: dict[str, object] = {
        "target": target,
        "control_plane": a.cluster.kubernetes_version,
        "supported": list(supported),
    }
    minor = _minor(target) if isinstance(target, str) else None
    if minor is None:
        return failed(
            f'kubernetes_version {target!r} is not a version like "1.31" or "1.31.2"',
            'set the assignment\'s kubernetes_version to a quoted string such as "1.31"',
            details,
        )
    if f"1.{minor}" not in supported:
        return failed(
            f"Kubernetes {target} is not in kubernetes.supported_versions ({', '.join(supported)})",
            "assign a supported version, or widen kubernetes.supported_versions if this "
            "host's nodeadm build supports it",
            details,
        )
    plane = a.cluster.kubernetes_version
    plane_minor = _minor(plane) if plane else None
    if plane and plane_minor is None:
        return failed(
            f'cluster.kubernetes_version {plane!r} is not a version like "1.31"',
            "fix cluster.kubernetes_version in the assignment",
            details,
        )
    if plane_minor is not None and minor > plane_minor:
        return failed(
            f"Kubernetes {target} is newer than the control plane ({plane}): a kubelet may "
            "not be newer than its API server",
            f"assign {plane} or older, or upgrade the control plane first",
            details,
        )
    if plane_minor is not None and plane_minor - minor > MAX_SKEW_MINORS:
        return failed(
            f"Kubernetes {target} is {plane_minor - minor} minor versions older than the "
            f"control plane ({plane}); at most {MAX_SKEW_MINORS} are allowed",
            f"assign 1.{plane_minor - MAX_SKEW_MINORS} or newer (up to {plane})",
            details,
        )
    against = f", control plane {plane}" if plane else ""
    return passed(f"Kubernetes {target} is supported{against}", details)


CHECK = Check(
    id="kubernetes.version",
    title="Kubernetes version is supported",
    remedy="assign a Kubernetes version in kubernetes.supported_versions, no newer than the "
    "control plane and at most 3 minors older",
    timeout_s=5.0,
    needs_assignment=True,
    run=check_version,
)
