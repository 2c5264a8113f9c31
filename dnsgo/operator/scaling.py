"""
How this cluster's workers scale and survive disruptions: the
``autoscaling/v2`` HorizontalPodAutoscaler (within this cluster's share of
``minReplicas``..``maxReplicas``, on CPU) and the PodDisruptionBudget.
"""
from __future__ import annotations

from dnsgo.operator import names
from dnsgo.operator.placement import Placement
from dnsgo.operator.spec import ClusterSpec


def _metadata(spec: ClusterSpec) -> dict:
    return {
        "name": names.worker_name(spec.name),
        "namespace": spec.namespace,
        "labels": names.labels(spec.name, names.WORKER),
        "ownerReferences": [names.owner_reference(spec.name, spec.uid)],
    }


def worker_hpa(spec: ClusterSpec, placement: Placement) -> dict:
    """The HPA of ``<name>-worker``, on average CPU utilisation (the pods request CPU for it)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names.worker_name(spec.name)},
            "minReplicas": placement.min_workers,
            "maxReplicas": placement.max_workers,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                      "averageUtilization": spec.workers.target_cpu}},
            }],
        },
    }


def worker_pdb(spec: ClusterSpec) -> dict:
    """At most one worker of this cluster down at a time for voluntary disruptions (drains, upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(spec.name, names.WORKER)},
        },
    }
