"""nodeadm's proxy-validation, judged on the made-up host (for the fake `init` and `debug`).

Written from aws/eks-hybrid v1.0.20 internal/network/proxy_validator.go: when HTTP(S)_PROXY
(either case) is set, upper and lower case must agree, then the package manager's proxy
file, the kubelet drop-in, the containerd drop-in and, for SSM, the SSM agent's drop-in are
checked in that order; the first problem is the error, with nodeadm's own remediation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from devtools.fakehost import layout

Problem = tuple[str, str]


def _value(env: Mapping[str, str], name: str) -> str:
    return env.get(name) or env.get(name.lower()) or ""


def _file(root: Path, path: str) -> str | None:
    p = layout.under(root, path)
    return p.read_text() if p.exists() else None


def _consistency(env: Mapping[str, str]) -> Problem | None:
    for upper in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        a, b = env.get(upper, ""), env.get(upper.lower(), "")
        if a and b and a != b:
            return (
                f"{upper} and {upper.lower()} environment variables have different values: "
                f"{upper}={a}, {upper.lower()}={b}",
                f"Ensure {upper} and {upper.lower()} have the same value in your environment",
            )
    return None


def _package_manager(root: Path, os_id: str, http: str, https: str) -> Problem | None:
    if os_id == "ubuntu":
        path = "/etc/apt/apt.conf.d/proxy.conf"
        text = _file(root, path)
        if text is None:
            return (
                f"apt proxy configuration file not found: {path}",
                f"Create the apt proxy configuration file at {path} with the following "
                f'content:\nAcquire::http::Proxy "{http}";\nAcquire::https::Proxy "{https}";',
            )
        for scheme, value in (("http", http), ("https", https)):
            if value and f'Acquire::{scheme}::Proxy "{value}"' not in text:
                return (
                    f"apt proxy configuration file does not contain correct {scheme.upper()} "
                    "proxy setting",
                    f"Update the apt proxy configuration file at {path} with the correct "
                    f'{scheme.upper()} proxy setting: Acquire::{scheme}::Proxy "{value}";',
                )
        return None
    tool, path = ("yum", "/etc/yum.conf") if os_id == "rhel" else ("dnf", "/etc/dnf/dnf.conf")
    text = _file(root, path)
    if text is None:
        return (
            f"{tool} configuration file not found: {path}",
            f"Create the {tool} configuration file at {path} with the following content:\n"
            f"[main]\nproxy={http}",
        )
    if http and f"proxy={http}" not in text:
        return (
            f"{tool} configuration file does not contain correct proxy setting",
            f"Update the {tool} configuration file at {path} with the correct proxy setting: "
            f"proxy={http}",
        )
    return None


def _drop_in(root: Path, service: str, path: str, env: Mapping[str, str]) -> Problem | None:
    http, https, no = (_value(env, k) for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"))
    text = _file(root, path)
    if text is None:
        return (
            f"{service} proxy configuration file not found: {path}",
            f"Create the {service} proxy configuration file at {path} with the following "
            f'content:\n[Service]\nEnvironment="HTTP_PROXY={http}"\n'
            f'Environment="HTTPS_PROXY={https}"\nEnvironment="NO_PROXY={no}"',
        )
    for name, value in (("HTTP_PROXY", http), ("HTTPS_PROXY", https)):
        if f"{name}={value}" not in text:
            return (
                f"{service} proxy configuration file does not contain correct {name} value",
                f"Update the {service} proxy configuration file at {path} with the correct "
                f"{name} value: {value}",
            )
    return None


def proxy_error(root: Path, env: Mapping[str, str], *, ssm: bool) -> Problem | None:
    """nodeadm's first proxy problem on this host, or None (also when no proxy is set)."""
    http, https = _value(env, "HTTP_PROXY"), _value(env, "HTTPS_PROXY")
    if not (http or https):
        return None
    problem = _consistency(env)
    if problem:
        return problem
    os_id = layout.read_os_release(root).get("ID", "")
    if not os_id:
        return None  # nodeadm skips the OS-specific part when it cannot name the OS
    problem = _package_manager(root, os_id, http, https)
    units = [
        ("kubelet", "/etc/systemd/system/kubelet.service.d/http-proxy.conf"),
        ("containerd", "/usr/lib/systemd/system/containerd.service.d/http-proxy.conf"),
    ]
    if ssm:
        unit = "snap.amazon-ssm-agent.amazon-ssm-agent" if os_id == "ubuntu" else "amazon-ssm-agent"
        units.append(("SSM", f"/etc/systemd/system/{unit}.service.d/http-proxy.conf"))
    for service, path in units:
        problem = problem or _drop_in(root, service, path, env)
    return problem
