"""``nodeadm.binary``: the configured nodeadm runs and is new enough for the assignment.

nodeadm up to v1.0.18 embeds an SSM GPG key that expired on 2026-07-15, so ``nodeadm
install -p ssm`` fails there with "Signature Verification Error: No matching signature"
(aws/eks-hybrid#864, fixed in v1.0.19). Without an assignment the check only requires
that ``nodeadm version`` runs and prints a version.
"""

from __future__ import annotations

import re

from agent.checks.base import Check, CheckContext, CheckVerdict, failed, one_line, passed
from agent.host.proc import ProcessError, run

_VERSION = re.compile(r"Version:\s*v?(\d+)\.(\d+)\.(\d+)")
MIN_SSM = (1, 0, 19)


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.search(text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def install_remedy(ctx: CheckContext) -> str:
    if ctx.config.host.mode == "appliance":
        return "build a new appliance image with nodeadm v1.0.19 or newer"
    goarch = {"x86_64": "amd64", "aarch64": "arm64"}.get(ctx.arch, ctx.arch)
    return (
        "install nodeadm: curl -fLo /usr/local/bin/nodeadm "
        f"https://hybrid-assets.eks.amazonaws.com/releases/latest/bin/linux/{goarch}/nodeadm "
        "&& chmod +x /usr/local/bin/nodeadm (or set programs.nodeadm to where it is)"
    )


async def check_binary(ctx: CheckContext) -> CheckVerdict:
    program = ctx.config.programs.nodeadm
    argv = [program, "version"]
    try:
        result = await run(argv, timeout=20.0)
    except ProcessError as e:
        return failed(f"cannot run nodeadm ({program}): {e.reason}", install_remedy(ctx))
    if not result.ok:
        return failed(
            f"`{program} version` exited {result.returncode}: {one_line(result.tail(200))}",
            install_remedy(ctx),
        )
    version = parse_version(result.stdout) or parse_version(result.stderr)
    if version is None:
        return failed(
            f"`{program} version` printed no 'Version: vX.Y.Z': {result.tail(200)!r}",
            install_remedy(ctx),
        )
    text = ".".join(map(str, version))
    details = {"version": text, "program": program}
    a = ctx.assignment
    if a is not None and a.credential_provider == "ssm" and version < MIN_SSM:
        return failed(
            f"nodeadm v{text} is too old for SSM: its embedded SSM key expired on 2026-07-15, "
            "so installing the SSM agent fails ('No matching signature'); v1.0.19 or newer "
            "is needed",
            install_remedy(ctx),
            details,
        )
    return passed(f"nodeadm v{text}", details)


CHECK = Check(
    id="nodeadm.binary",
    title="nodeadm is installed",
    remedy="install nodeadm v1.0.19 or newer from "
    "https://hybrid-assets.eks.amazonaws.com/releases/latest/bin/linux/<amd64|arm64>/nodeadm",
    timeout_s=30.0,
    needs_assignment=False,
    run=check_binary,
)
