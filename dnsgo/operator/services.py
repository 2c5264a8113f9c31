"""
The Services of a DNSCluster: DNS on port 53 (UDP and TCP) in front of the
workers, and the control channel with the management API in front of the
control plane.
"""
from __future__ import annotations

from dnsgo.operator import names
from dnsgo.operator.spec import ClusterSpec


def _service(spec: ClusterSpec, name: str, component: str, service_type: str, ports: list[dict], **extra) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": names.labels(spec.name, component),
            "ownerReferences": [names.owner_reference(spec.name, spec.uid)],
        },
        "spec": {
            "type": service_type,
            "selector": names.selector_labels(spec.name, component),
            "ports": ports,
            **extra,
        },
    }


def dns_service(spec: ClusterSpec) -> dict:
    """``<name>-dns``: port 53 UDP and TCP, to the workers' 5353."""
    return _service(spec, names.dns_service_name(spec.name), names.WORKER, spec.workers.service_type, [
        {"name": "dns-udp", "port": 53, "protocol": "UDP", "targetPort": "dns-udp"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
    ])


def control_service(spec: ClusterSpec) -> dict:
    """
    ``<name>-control``: the control channel (9090) and the API (8080).  It
    publishes control planes that are not ready, because a control plane is
    ready only once a worker has registered, and workers register through
    this Service.
    """
    return _service(spec, names.control_name(spec.name), names.CONTROL_PLANE, spec.control_plane.service_type, [
        {"name": "control", "port": names.CONTROL_PORT, "protocol": "TCP", "targetPort": "control"},
        {"name": "api", "port": names.API_PORT, "protocol": "TCP", "targetPort": "api"},
    ], publishNotReadyAddresses=True)
