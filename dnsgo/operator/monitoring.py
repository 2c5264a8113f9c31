"""
The ServiceMonitor (prometheus-operator's ``monitoring.coreos.com/v1``)
that has Prometheus scrape the control plane's ``/metrics``, which needs
the API's bearer token like the rest of the API.  It is made only where a
control plane runs and only when the ServiceMonitor resource exists.
"""
from __future__ import annotations

from dnsgo.operator import names
from dnsgo.operator.spec import ClusterSpec, SecretKey


def service_monitor(spec: ClusterSpec, token: SecretKey) -> dict:
    """The ServiceMonitor ``<name>-control`` for the control Service's ``api`` port."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": names.control_name(spec.name),
            "namespace": spec.namespace,
            "labels": names.labels(spec.name, names.CONTROL_PLANE),
            "ownerReferences": [names.owner_reference(spec.name, spec.uid)],
        },
        "spec": {
            "selector": {"matchLabels": names.selector_labels(spec.name, names.CONTROL_PLANE)},
            "endpoints": [{
                "port": "api",
                "path": "/metrics",
                "interval": "30s",
                "bearerTokenSecret": {"name": token.name, "key": token.key},
            }],
        },
    }
