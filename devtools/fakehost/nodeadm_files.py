"""The files `nodeadm init` writes and `nodeadm uninstall` removes, under the fake root.

Paths and leftovers follow aws/eks-hybrid v1.0.20 (devtools/fakehost/README.md): init writes sysctl,
modules, containerd, kubelet, kubeconfig, CA, environment and credential-provider files plus the SSM
registration or the IAM Roles Anywhere profile; uninstall removes what it installed and leaves
`/var/lib/kubelet` data, `/etc/aws/hybrid/config`, the sysctl and modules files and user-installed
containerd. No logging and no timing here: the flows decide when, this module knows what and where.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import shutil
from pathlib import Path

from devtools.fakehost import layout
from devtools.fakehost.layout import under, write_file
from devtools.fakehost.nodeconfig import NodeConfig

FAKE_CA = "-----BEGIN CERTIFICATE-----\nRkFLRSBDTFVTVEVSIENB\n-----END CERTIFICATE-----\n"
SERVING_CERT = f"{layout.KUBELET_PKI}/kubelet-server-current.pem"
CLIENT_CERT = f"{layout.KUBELET_PKI}/kubelet-client-current.pem"
DEFAULT_SERVICE_CIDR = "172.20.0.0/16"


def ssm_agent_unit(os_id: str) -> str:
    """ssm-setup-cli installs the agent as a snap on Ubuntu, as an rpm elsewhere."""
    return "snap.amazon-ssm-agent.amazon-ssm-agent" if os_id == "ubuntu" else "amazon-ssm-agent"


def register_ssm(root: Path, region: str) -> tuple[str, bool]:
    """The managed instance id, registering (a fresh `mi-` + 17 hex) only when not yet done."""
    path = under(root, layout.SSM_REGISTRATION)
    if path.exists():
        return str(json.loads(path.read_text())["ManagedInstanceID"]), False
    node_name = "mi-" + secrets.token_hex(9)[:17]
    registration = {"ManagedInstanceID": node_name, "Region": region}
    write_file(path, json.dumps(registration), mode=0o600)
    return node_name, True


def write_ssm_credentials(root: Path) -> None:
    """What the SSM agent drops once registered, and nodeadm waits for."""
    text = "[default]\naws_access_key_id = ASIAFAKEFAKEFAKEFAKE\naws_secret_access_key = fake\n"
    write_file(under(root, "root/.aws/credentials"), text, mode=0o600)


def write_iam_ra_profile(root: Path, config: NodeConfig) -> str:
    """`/etc/aws/hybrid/config` (and the credentials file when asked); returns the node name."""
    ira = config.iam_ra
    process = (
        f"/usr/local/bin/aws_signing_helper credential-process --certificate {ira['certificatePath']} "
        f"--private-key {ira['privateKeyPath']} --profile-arn {ira['profileArn']} "
        f"--role-arn {ira['roleArn']} --trust-anchor-arn {ira['trustAnchorArn']} "
        f"--role-session-name {ira['nodeName']}"
    )
    region = config.cluster["region"]
    profile = f"[default]\nregion = {region}\ncredential_process = {process}\n"
    write_file(under(root, str(ira["awsConfigPath"])), profile)
    if config.section("hybrid").get("enableCredentialsFile"):
        write_file(
            under(root, "etc/systemd/system/aws_signing_helper_update.service"),
            f"[Service]\nExecStart={process.replace('credential-process', 'update')}\n",
        )
        write_file(under(root, "eks-hybrid/.aws/credentials"), "[default]\n", mode=0o600)
    return str(ira["nodeName"])


def write_sysctl_and_modules(root: Path) -> None:
    sysctl = (
        "vm.overcommit_memory=1\nkernel.panic=10\nkernel.panic_on_oops=1\nnet.ipv4.ip_forward=1\n"
    )
    write_file(under(root, "etc/sysctl.d/99-nodeadm.conf"), sysctl)
    write_file(under(root, "etc/modules-load.d/containerd.conf"), "overlay\nbr_netfilter\n")


def partition_swap_present(root: Path) -> bool:
    swaps = under(root, "proc/swaps")
    lines = swaps.read_text().splitlines()[1:] if swaps.exists() else []
    return any(len(line.split()) > 1 and line.split()[1] == "partition" for line in lines)


def turn_off_file_swap(root: Path) -> None:
    """`swapoff` every file swap and comment its fstab entry, as init's swap aspect does."""
    swaps = under(root, "proc/swaps")
    lines = swaps.read_text().splitlines() if swaps.exists() else []
    if len(lines) > 1:  # only when there is a swap to turn off: a real /proc/swaps is not written
        swaps.write_text("\n".join(lines[:1]) + "\n")
    fstab = under(root, "etc/fstab")
    if fstab.exists():
        lines = fstab.read_text().splitlines()
        fstab.write_text(
            "\n".join(
                f"# {line}" if " swap " in f" {line} " and not line.startswith("#") else line
                for line in lines
            )
            + "\n"
        )


def write_containerd_config(root: Path, config: NodeConfig, region: str) -> None:
    sandbox = f"602401143452.dkr.ecr.{region}.amazonaws.com/eks/pause:3.5"
    toml = (
        "version = 2\n"
        'root = "/var/lib/containerd"\n'
        'state = "/run/containerd"\n'
        'imports = ["/etc/containerd/config.d/*.toml"]\n\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n'
        f'sandbox_image = "{sandbox}"\n\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
        "SystemdCgroup = true\n"
    )
    write_file(under(root, "etc/containerd/config.toml"), toml)
    extra = config.section("containerd").get("config")
    if extra:
        write_file(under(root, "etc/containerd/config.d/00-nodeadm.toml"), str(extra))


def write_kubelet_files(root: Path, config: NodeConfig, node_name: str, os_id: str) -> None:
    """Kubelet config, kubeconfig, CA, environment and image credential provider config."""
    cluster = config.cluster
    name, region = cluster["name"], cluster["region"]
    provider = config.provider
    service_cidr = ipaddress.IPv4Network(cluster.get("cidr") or DEFAULT_SERVICE_CIDR, strict=False)
    kubelet_config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "0.0.0.0",
        "authentication": {"x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
        "cgroupDriver": "systemd",
        "clusterDNS": [str(service_cidr.network_address + 10)],
        "clusterDomain": "cluster.local",
        "protectKernelDefaults": True,
        "providerID": f"eks-hybrid:///{region}/{name}/{node_name}",
        "serverTLSBootstrap": True,
    }
    if os_id == "ubuntu":
        kubelet_config["resolvConf"] = "/run/systemd/resolve/resolv.conf"
    write_file(
        under(root, "etc/kubernetes/kubelet/config.json"), json.dumps(kubelet_config, indent=4)
    )
    user_config = config.section("kubelet").get("config")
    if user_config:
        write_file(
            under(root, "etc/kubernetes/kubelet/config.json.d/00-nodeadm.conf"),
            json.dumps(user_config, indent=4),
        )
    endpoint = cluster.get("apiServerEndpoint") or (
        f"https://{secrets.token_hex(16).upper()}.gr7.{region}.eks.amazonaws.com"
    )
    env_lines = ""
    if provider == "iam-ra":
        env_lines = (
            "      env:\n      - name: AWS_PROFILE\n        value: default\n"
            f"      - name: AWS_CONFIG_FILE\n        value: {config.iam_ra['awsConfigPath']}\n"
        )
    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n"
        f"    certificate-authority: /etc/kubernetes/pki/ca.crt\n    server: {endpoint}\n"
        "contexts:\n- name: kubelet\n  context:\n    cluster: kubernetes\n    user: kubelet\n"
        "current-context: kubelet\nusers:\n- name: kubelet\n  user:\n    exec:\n"
        "      apiVersion: client.authentication.k8s.io/v1beta1\n"
        "      command: aws-iam-authenticator\n"
        f'      args: ["token", "--cluster-id", "{name}", "--region", "{region}"]\n{env_lines}'
    )
    write_file(under(root, "var/lib/kubelet/kubeconfig"), kubeconfig)
    ca = cluster.get("certificateAuthority")
    write_file(under(root, "etc/kubernetes/pki/ca.crt"), base64.b64decode(ca) if ca else FAKE_CA)
    labels = (
        "eks.amazonaws.com/compute-type=hybrid,"
        f"eks.amazonaws.com/hybrid-credential-provider={provider}"
    )
    # nodeadm's flags first, the user's last so theirs win.
    args = [
        f"--node-labels={labels}",
        f"--hostname-override={node_name}",
        "--cloud-provider=",
        "--config=/etc/kubernetes/kubelet/config.json",
        "--kubeconfig=/var/lib/kubelet/kubeconfig",
        *config.kubelet_flags,
    ]
    write_file(
        under(root, "etc/eks/kubelet/environment"), f'NODEADM_KUBELET_ARGS="{" ".join(args)}"\n'
    )
    provider_config = {
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [
            {
                "name": "ecr-credential-provider",
                "matchImages": ["*.dkr.ecr.*.amazonaws.com"],
                "defaultCacheDuration": "12h",
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            }
        ],
    }
    write_file(
        under(root, "etc/eks/image-credential-provider/config.json"),
        json.dumps(provider_config, indent=4),
    )


def write_kubelet_certs(root: Path, cluster_name: str) -> None:
    """What kubelet creates once its CSRs are approved; the cluster name stands in for the CA."""
    for path in (CLIENT_CERT, SERVING_CERT):
        write_file(under(root, path), f"FAKE KUBELET CERT cluster={cluster_name}\n", mode=0o600)


def stale_serving_cert(root: Path, cluster_name: str) -> bool:
    """True when a serving cert from another cluster is left (it won't verify against our CA)."""
    path = under(root, SERVING_CERT)
    if not path.exists():
        return False
    return f"cluster={cluster_name}\n" not in path.read_text()


def mount_points(root: Path) -> set[str]:
    """Host paths that are mount points per `proc/1/mountinfo` (a mount point can't be rmdir'ed)."""
    path = under(root, "proc/1/mountinfo")
    if not path.exists():
        return set()
    points = set()
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.add(fields[4].encode().decode("unicode_escape"))
    return points


def remove(root: Path, host_path: str, keep: set[str]) -> None:
    """RemoveAll under the root; a mount point is emptied but stays, as on a real host."""
    target = under(root, host_path)
    if "/" + host_path.strip("/") in keep and target.is_dir():
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        return
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def uninstall_paths(tracker: dict[str, object], *, force: bool) -> list[str]:
    """Everything uninstall removes, in nodeadm's order, for what the tracker says it installed."""
    paths = [
        "/usr/bin/kubelet",
        "/etc/systemd/system/kubelet.service",
        "/var/lib/kubelet/kubeconfig",
        "/etc/kubernetes",
        f"/{SERVING_CERT}",
    ]
    if tracker.get("Ssm"):
        paths += [
            f"/{layout.SSM_REGISTRATION}",
            "/usr/bin/amazon-ssm-agent",
            "/usr/lib/systemd/system/amazon-ssm-agent.service",
            "/snap/amazon-ssm-agent",
            "/etc/systemd/system/snap.amazon-ssm-agent.amazon-ssm-agent.service",
            "/opt/ssm",
            "/etc/amazon",
            "/eks-hybrid/.aws",
            "/root/.aws",
        ]
    if tracker.get("IamRolesAnywhere"):
        paths += [
            "/etc/systemd/system/aws_signing_helper_update.service",
            "/eks-hybrid/.aws",
            "/usr/local/bin/aws_signing_helper",
        ]
    if tracker.get("Containerd") in ("distro", "docker"):
        paths += [
            "/usr/bin/containerd",
            "/usr/bin/runc",
            "/lib/systemd/system/containerd.service",
            "/usr/lib/systemd/system/containerd.service",
            "/etc/containerd",
        ]
    paths += [
        "/usr/local/bin/kubectl",
        "/opt/cni",
        "/usr/local/bin/aws-iam-authenticator",
        "/etc/eks/image-credential-provider",
    ]
    if tracker.get("Iptables"):
        paths.append("/usr/sbin/iptables")
    paths += [
        "/etc/apt/keyrings/docker.asc",
        "/etc/apt/sources.list.d/docker.list",
        "/etc/yum.repos.d/docker-ce.repo",
        "/etc/eks",
        "/opt/nodeadm",
    ]
    if force:
        # Since v1.0.9 --force no longer removes /var/lib/kubelet (issue #664).
        paths += ["/var/lib/cni", "/etc/cni/net.d"]
    return paths
