"""Kubernetes naming conventions used to recover a workload name from a pod name."""

from __future__ import annotations

import re

# <deployment>-<replicaset pod-template hash>-<5 character pod suffix>
_DEPLOYMENT_POD = re.compile(r"^(.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$")


def workload_from_pod(pod: str | None) -> str | None:
    """Deployment name from a Deployment pod's name; other pod names are returned as they are.

    >>> workload_from_pod("reviews-v1-545db77b95-s6jb8"), workload_from_pod("loki-ingester-0")
    ('reviews-v1', 'loki-ingester-0')
    """
    if not pod:
        return None
    m = _DEPLOYMENT_POD.match(pod)
    return m.group(1) if m else pod


__all__ = ["workload_from_pod"]
