"""``nodeadm.proxy``, ``nodeadm.ssm_agent`` and ``nodeadm.containerd_unit``: what init checks.

Three host states that pass every contract check yet stop ``nodeadm init``:

- a proxy in the environment nodeadm inherits from the agent (HTTP(S)_PROXY, either case)
  makes init's proxy-validation require drop-ins for kubelet, containerd and (for SSM) the
  SSM agent, and the package manager's proxy setting; nodeadm names only the first missing,
  this check names them all, with the file to write;
- on Ubuntu nodeadm drives the SSM agent as the snap unit
  ``snap.amazon-ssm-agent.amazon-ssm-agent``: an agent installed from a .deb has no such
  unit, and init fails enabling it;
- with ``containerd_source: none`` nodeadm installs no containerd, and init refuses to run
  ("containerd daemon not found") unless a containerd unit already exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent.checks.base import (
    Check,
    CheckContext,
    CheckVerdict,
    failed,
    passed,
    require_assignment,
    skipped,
    warned,
)

UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
SNAP_UNIT = "snap.amazon-ssm-agent.amazon-ssm-agent"
_DROP_IN = 'Environment="HTTP_PROXY={http}"\nEnvironment="HTTPS_PROXY={https}"\nEnvironment="NO_PROXY={no}"'


def proxy_env(env: Mapping[str, str]) -> dict[str, str]:
    """HTTP_PROXY, HTTPS_PROXY and NO_PROXY as nodeadm reads them: upper case wins."""
    return {
        k: env.get(k) or env.get(k.lower()) or "" for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    }


def _unit_exists(ctx: CheckContext, unit: str) -> bool:
    return any(ctx.host.exists(f"{d}/{unit}.service") for d in UNIT_DIRS)


def proxy_problems(
    ctx: CheckContext, env: Mapping[str, str], os_id: str, ssm: bool
) -> list[tuple[str, str]]:
    """(problem, remedy) for each proxy file nodeadm init would look for and not accept."""
    p = proxy_env(env)
    http, https = p["HTTP_PROXY"], p["HTTPS_PROXY"]
    out: list[tuple[str, str]] = []
    for upper in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        a, b = env.get(upper, ""), env.get(upper.lower(), "")
        if a and b and a != b:
            out.append(
                (
                    f"{upper} and {upper.lower()} differ",
                    f"give {upper} and {upper.lower()} the same value",
                )
            )
    if os_id == "ubuntu":
        path = "/etc/apt/apt.conf.d/proxy.conf"
        wanted = [f'Acquire::http::Proxy "{http}"'] if http else []
        wanted += [f'Acquire::https::Proxy "{https}"'] if https else []
        body = f'Acquire::http::Proxy "{http}";\nAcquire::https::Proxy "{https}";'
    else:
        path = "/etc/yum.conf" if os_id == "rhel" else "/etc/dnf/dnf.conf"
        wanted = [f"proxy={http}"] if http else []
        body = f"[main]\nproxy={http}"
    text = ctx.host.read_text(path) or ""
    if not ctx.host.exists(path) or any(w not in text for w in wanted):
        out.append((f"{path} lacks the proxy setting", f"write to {path}:\n{body}"))
    units = {"kubelet": "/etc/systemd/system/kubelet.service.d/http-proxy.conf",
             "containerd": "/usr/lib/systemd/system/containerd.service.d/http-proxy.conf"}  # fmt: skip
    if ssm:
        unit = SNAP_UNIT if os_id == "ubuntu" else "amazon-ssm-agent"
        units["SSM agent"] = f"/etc/systemd/system/{unit}.service.d/http-proxy.conf"
    drop_in = "[Service]\n" + _DROP_IN.format(http=http, https=https, no=p["NO_PROXY"])
    for name, path in units.items():
        conf = ctx.host.read_text(path)
        if conf is None or f"HTTP_PROXY={http}" not in conf or f"HTTPS_PROXY={https}" not in conf:
            out.append(
                (
                    f"the {name} drop-in {path} is missing or lacks the proxy",
                    f"write {path}:\n{drop_in}",
                )
            )
    return out


async def check_proxy(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    env = os.environ
    p = proxy_env(env)
    if not (p["HTTP_PROXY"] or p["HTTPS_PROXY"]):
        return skipped("no HTTP(S)_PROXY in the agent's environment (nodeadm inherits it)")
    release = ctx.host.os_release()
    os_id = release.id if release else ""
    problems = proxy_problems(ctx, env, os_id, a.credential_provider == "ssm")
    details = {"proxy": p, "problems": [x for x, _ in problems]}
    if problems:
        return failed(
            "nodeadm init's proxy-validation will fail: " + "; ".join(x for x, _ in problems),
            "\n".join(r for _, r in problems) + "\nthen run systemctl daemon-reload",
            details,
        )
    return passed("the package manager, kubelet, containerd and SSM agent carry the proxy", details)


async def check_ssm_agent(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    release = ctx.host.os_release()
    if a.credential_provider != "ssm" or release is None or release.id != "ubuntu":
        return skipped("only SSM on Ubuntu runs the agent as a snap")
    deb = ctx.host.exists("/var/lib/dpkg/info/amazon-ssm-agent.list") or ctx.host.exists(
        "/usr/bin/amazon-ssm-agent"
    )
    snap = _unit_exists(ctx, SNAP_UNIT) or ctx.host.exists("/snap/amazon-ssm-agent")
    details = {"deb": deb, "snap": snap}
    if deb and not snap:
        return failed(
            "the SSM agent is installed from a .deb: nodeadm drives the snap unit "
            f"{SNAP_UNIT}, which does not exist, and init fails starting it",
            "remove the .deb agent (apt-get remove amazon-ssm-agent) and let nodeadm install "
            "install the snap, or install it yourself: snap install amazon-ssm-agent --classic",
            details,
        )
    if deb:
        return warned(
            "both a .deb and a snap SSM agent are installed; nodeadm registers the snap's, and "
            "two agents fight over the registration",
            "apt-get remove amazon-ssm-agent",
            details,
        )
    return passed("no .deb SSM agent; nodeadm uses the snap " + SNAP_UNIT, details)


async def check_containerd_unit(ctx: CheckContext) -> CheckVerdict:
    a = require_assignment(ctx)
    if a.containerd_source != "none":
        return skipped(f"containerd_source is {a.containerd_source}: nodeadm install provides it")
    found = [
        f"{d}/containerd.service" for d in UNIT_DIRS if ctx.host.exists(f"{d}/containerd.service")
    ]
    if not found:
        return failed(
            "containerd_source is none but no containerd.service unit exists: nodeadm init stops "
            'with "containerd daemon not found"',
            "install containerd with its systemd unit (or set containerd_source: distro or docker)",
            {"searched": list(UNIT_DIRS)},
        )
    return passed(f"containerd unit found: {found[0]}", {"unit": found[0]})


PROXY = Check(
    id="nodeadm.proxy",
    title="Proxy drop-ins nodeadm init requires",
    remedy="write the proxy drop-ins for kubelet, containerd and the SSM agent, and the "
    "package manager's proxy setting",
    timeout_s=5.0,
    needs_assignment=True,
    run=check_proxy,
)
SSM_AGENT = Check(
    id="nodeadm.ssm_agent",
    title="The SSM agent is the snap nodeadm drives on Ubuntu",
    remedy="apt-get remove amazon-ssm-agent; nodeadm install installs the snap",
    timeout_s=5.0,
    needs_assignment=True,
    run=check_ssm_agent,
)
CONTAINERD_UNIT = Check(
    id="nodeadm.containerd_unit",
    title="A containerd unit exists when containerd_source is none",
    remedy="install containerd with its systemd unit, or change containerd_source",
    timeout_s=5.0,
    needs_assignment=True,
    run=check_containerd_unit,
)
