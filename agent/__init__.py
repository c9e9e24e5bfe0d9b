"""edge-agent: the on-host agent that makes an edge host an Amazon EKS Hybrid Node."""

__version__ = "0.1.0"
