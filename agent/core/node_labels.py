"""Which node labels kubelet refuses to set on itself.

kubelet exits at start ("unknown 'kubernetes.io' or 'k8s.io' labels specified with
--node-labels") when a ``--node-labels`` key lies in the ``kubernetes.io`` or ``k8s.io``
namespaces (or a subdomain of them) and is not one kubelet owns: a short list of
well-known keys, and anything under ``kubelet.kubernetes.io`` or ``node.kubernetes.io``.
The NodeRestriction admission plugin enforces the same rule, which is why labels such as
``node-role.kubernetes.io/worker`` must be set by the controller, not the node. nodeadm
passes labels through untouched, so a bad one surfaces only as a kubelet that never starts.
"""

from __future__ import annotations

from collections.abc import Iterable

KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
    }
)
KUBELET_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
RESTRICTED = ("kubernetes.io", "k8s.io")


def _within(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def refused(key: str) -> bool:
    """Whether kubelet refuses ``key`` in ``--node-labels``."""
    namespace = key.split("/", 1)[0].lower() if "/" in key else ""
    if not any(_within(namespace, d) for d in RESTRICTED):
        return False
    if key.lower() in KUBELET_LABELS:
        return False
    return not any(_within(namespace, d) for d in KUBELET_NAMESPACES)


def refused_labels(keys: Iterable[str]) -> list[str]:
    return sorted(k for k in keys if refused(k))


def refusal(keys: Iterable[str]) -> str | None:
    """The error for the refused keys among ``keys``; None when kubelet takes them all."""
    bad = refused_labels(keys)
    if not bad:
        return None
    return (
        f"{', '.join(bad)}: kubelet refuses to set labels under kubernetes.io or k8s.io "
        "itself (it would not start); only kubelet's own (kubernetes.io/hostname, "
        "topology.kubernetes.io/zone, node.kubernetes.io/*, ...) are allowed. Set such "
        "labels from the cluster instead (kubectl label node)"
    )
