"""Appliance Mode on Kairos's immutable layout: a provider image booted read-only under a real
systemd, with in-memory ``/etc``, ``/var`` and ``/srv`` and only the shipped user-data's paths
(plus Kairos's own) persistent.

Six boots, each in a module fixture and powered off before the next: a first boot that
joins; a reboot of the same image over the same persistent directories; an A/B upgrade (a
newer agent build booted over them, then an assignment for another Kubernetes version); on a
site of its own, a boot with one required path not bound; and on another, a site whose
user-data does not bind /etc/sysctl.d, joined and rebooted. The tests assert on what each boot showed:
the agent's own reports (``edge-agent status`` and ``check``, from the real mountinfo), its
journal, and the stand-in nodeadm's call log on the persistent ``/var/log``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.host.sysctl import parse_conf
from agent.state.store import SCHEMA_VERSION
from tests.appliance.conftest import NEWER
from tests.appliance.image import IMAGE_KUBERNETES
from tests.appliance.site import ASSIGNMENT_FILE, Seen, Site, assignment

# What nodeadm init writes outside the Kairos-persistent paths and the seven EKS binds.
NODEADM_FILES = (
    "/etc/sysctl.d/99-nodeadm.conf",
    "/etc/modules-load.d/containerd.conf",
    "/etc/containerd/config.toml",
    "/etc/kubernetes/kubelet/config.json",
    "/var/lib/kubelet/kubeconfig",
    "/etc/eks/kubelet/environment",
    "/var/lib/amazon/ssm/registration",
)
READ_ONLY_FS = "Read-only file system"


def _digests(seen: Seen) -> dict[str, str]:
    out = seen.machine.run(["sha256sum", *NODEADM_FILES], check=False).stdout
    return {path: digest for digest, path in (line.split() for line in out.splitlines())}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def first(site: Site, image: Path) -> Seen:
    with site.boot(image) as seen:
        seen.wait_phase("joined")
        seen.run_check()
        seen.files = _digests(seen)
        seen.read_journal()
        seen.calls = site.calls()
    return seen


@pytest.fixture(scope="module")
def rebooted(site: Site, image: Path, first: Seen) -> Seen:
    with site.boot(image) as seen:
        seen.wait_phase("joined")
        # The restore runs once per start of a joined node; its verdict is in the journal.
        verdicts = ('"sysctl.in_force"', '"sysctl.reapplied"', '"sysctl.not_in_force"')
        seen.machine.wait_for(
            "the agent's sysctl verdict",
            lambda: any(v in m for m in seen.read_journal() for v in verdicts),
            60,
        )
        seen.read_sysctl()
        seen.agent_status()
        seen.run_check()
        seen.files = _digests(seen)
        seen.read_journal()
        seen.calls = site.calls()
    return seen


@pytest.fixture(scope="module")
def upgraded(site: Site, newer_image: Path, rebooted: Seen) -> Seen:
    with site.boot(newer_image) as seen:
        seen.wait_phase("joined")
        seen.resumed = dict(seen.status)
        seen.resumed_calls = site.calls()
        newer = assignment(revision=2, kubernetes_version="1.32")
        seen.machine.run(["tee", ASSIGNMENT_FILE], input=json.dumps(newer))
        seen.machine.run(["systemctl", "reload", "edge-agent"])
        seen.wait(
            "requires_new_image",
            lambda s: (s.get("last_error") or {}).get("code") == "requires_new_image",
            60,
        )
        seen.read_journal()
        seen.calls = site.calls()
    return seen


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, image: Path) -> tuple[Site, Seen]:
    site = Site(tmp_path_factory.mktemp("unbound-site"))
    with site.boot(image, leave_out=("/etc/eks",)) as seen:
        seen.wait_phase("preflight_failed")
        seen.run_check()
        seen.read_journal()
    return site, seen


@pytest.fixture(scope="module")
def no_sysctl_bind(
    tmp_path_factory: pytest.TempPathFactory, image: Path
) -> tuple[Site, Seen, Seen]:
    """A site whose user-data does not bind /etc/sysctl.d: joined, then rebooted."""
    site = Site(tmp_path_factory.mktemp("no-sysctl-bind"))
    with site.boot(image, leave_out=("/etc/sysctl.d",)) as joined:
        joined.wait_phase("joined")
        joined.run_check()
    with site.boot(image, leave_out=("/etc/sysctl.d",)) as seen:
        seen.wait_phase("joined")
        seen.machine.wait_for(
            "the agent's sysctl verdict",
            lambda: any('"sysctl.' in m for m in seen.read_journal()),
            60,
        )
        seen.read_sysctl()
        seen.agent_status()
        seen.files = _digests(seen)
        seen.calls = site.calls()
    return site, joined, seen


# ---- first boot --------------------------------------------------------------------------------


def test_first_boot_joins_by_init_alone(first: Seen) -> None:
    assert first.status["phase"] == "joined"
    assert first.status["kubernetes_version"] == IMAGE_KUBERNETES  # read from the image's kubelet
    steps = [argv[0] for argv in first.calls]
    assert steps == ["init"], f"nodeadm runs on a read-only image: {first.calls}"


def test_mounts_bind_passes_from_the_real_mountinfo(first: Seen) -> None:
    bind = first.checks["mounts.bind"]
    assert bind["status"] == "pass", bind
    assert bind["details"]["missing"] == []
    assert bind["details"]["state_dir"] == {"path": "/var/lib/edge-agent", "persistent": True}
    assert bind["details"]["sysctl_d"] == {"path": "/etc/sysctl.d", "persistent": True}
    assert first.checks["mounts.writable"]["status"] == "pass", first.checks["mounts.writable"]


def test_the_agent_writes_nothing_on_the_read_only_root(first: Seen, rebooted: Seen) -> None:
    for seen in (first, rebooted):
        assert seen.journal, "no journal from the agent"
        assert not [m for m in seen.journal if READ_ONLY_FS in m]


# ---- reboot ----------------------------------------------------------------------------------


def test_reboot_keeps_the_join_without_running_nodeadm(first: Seen, rebooted: Seen) -> None:
    assert rebooted.status["phase"] == "joined"
    assert rebooted.status["node_name"] == first.status["node_name"]
    assert rebooted.calls == first.calls
    assert rebooted.files == first.files
    assert set(first.files) == set(NODEADM_FILES)


def test_nodeadm_sysctls_are_in_force_after_reboot_or_loudly_missing(
    site: Site, rebooted: Seen
) -> None:
    conf = (site.persist / "etc/sysctl.d/99-nodeadm.conf").read_text()
    wanted = parse_conf(conf)
    assert set(wanted) == set(rebooted.sysctl)
    off = {k for k, v in wanted.items() if rebooted.sysctl[k] != v}
    # The container has its own network namespace, so net.* can be set and must be in force;
    # vm.* and kernel.* are the host kernel's, read-only here, and must then be named.
    assert rebooted.sysctl["net.ipv4.ip_forward"] == "1"
    assert all(not k.startswith("net.") for k in off)
    if off:
        error = rebooted.status["last_error"]
        assert error["code"] == "sysctl_not_in_force"
        for key in off:
            assert f"{key}: is " in error["message"] and "read-only here" in error["message"]
        assert any("sysctl.not_in_force" in m for m in rebooted.journal)
    else:
        assert any("sysctl.reapplied" in m for m in rebooted.journal)


# ---- A/B upgrade -------------------------------------------------------------------------------


def test_a_newer_image_resumes_the_old_state(site: Site, rebooted: Seen, upgraded: Seen) -> None:
    resumed = upgraded.resumed
    assert resumed["agent_version"] == NEWER
    assert rebooted.status["agent_version"] != NEWER
    assert resumed["phase"] == "joined" and resumed["node_name"] == rebooted.status["node_name"]
    assert upgraded.resumed_calls == rebooted.calls
    state = (site.persist / "var/lib/edge-agent/state.json").read_text()
    assert f'"schema_version": {SCHEMA_VERSION}' in state
    assert not [m for m in upgraded.journal if "state_corrupt" in m or "state_lost" in m]


def test_another_kubernetes_version_requires_a_new_image(rebooted: Seen, upgraded: Seen) -> None:
    assert upgraded.status["phase"] == "joined"
    error = upgraded.status["last_error"]
    assert error["code"] == "requires_new_image"
    assert "1.32" in error["message"]
    assert upgraded.calls == rebooted.calls  # no upgrade, no install


# ---- a required path not bound -------------------------------------------------------------


def test_an_unbound_eks_path_fails_mounts_bind_and_runs_no_nodeadm(
    unbound: tuple[Site, Seen],
) -> None:
    site, seen = unbound
    bind = seen.checks["mounts.bind"]
    assert bind["status"] == "fail"
    assert bind["details"]["missing"] == ["/etc/eks"]
    assert "/etc/eks" in bind["message"]
    assert seen.status["last_error"]["code"] == "preflight_failed"
    assert "mounts.bind" in seen.status["last_error"]["message"]
    assert site.calls() == []


# ---- a user-data without the /etc/sysctl.d bind --------------------------------------------


def test_without_the_sysctl_bind_mounts_bind_warns(
    no_sysctl_bind: tuple[Site, Seen, Seen],
) -> None:
    _, joined, _ = no_sysctl_bind
    bind = joined.checks["mounts.bind"]
    assert bind["status"] == "warn", bind
    assert bind["message"].startswith("/etc/sysctl.d is on /etc, an overlay whose upper layer")
    assert "/etc/sysctl.d" in bind["remedy"]


def test_lost_sysctl_file_is_reapplied_from_the_agents_copy_or_named(
    no_sysctl_bind: tuple[Site, Seen, Seen],
) -> None:
    site, _, seen = no_sysctl_bind
    assert seen.status["phase"] == "joined"
    assert "/etc/sysctl.d/99-nodeadm.conf" not in seen.files  # gone with the in-memory /etc
    copy = site.persist / "var/lib/edge-agent/nodeadm-sysctl.conf"
    wanted = parse_conf(copy.read_text())
    assert wanted["net.ipv4.ip_forward"] == "1"
    # Nothing applied it at boot (no file): the agent did, from its copy.
    assert seen.sysctl["net.ipv4.ip_forward"] == "1"
    off = {k for k, v in wanted.items() if seen.sysctl[k] != v}
    if off:
        error = seen.status["last_error"]
        assert error["code"] == "sysctl_not_in_force"
        assert "(/var/lib/edge-agent/nodeadm-sysctl.conf)" in error["message"]
        for key in off:
            assert f"{key}: is " in error["message"]
    assert [argv[0] for argv in seen.calls] == ["init"]  # re-applied without re-running init
