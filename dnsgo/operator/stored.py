"""
The data objects of a DNSCluster: the ConfigMap with the dnsgo YAML, and the
Secret with a generated API token when the spec names none.
"""
from __future__ import annotations

import base64

from dnsgo.operator import names
from dnsgo.operator.dnsgo_config import RenderedConfig
from dnsgo.operator.spec import ClusterSpec


def config_map(spec: ClusterSpec, rendered: RenderedConfig) -> dict:
    """``<name>-config``: ``config.yaml`` (control plane) and ``worker.yaml`` (workers)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.config_map_name(spec.name),
            "namespace": spec.namespace,
            "labels": names.labels(spec.name),
            "annotations": {names.CONFIG_CHECKSUM: rendered.checksum},
            "ownerReferences": [names.owner_reference(spec.name, spec.uid)],
        },
        "data": dict(rendered.data),
    }


def token_secret(spec: ClusterSpec, token: str) -> dict:
    """``<name>-api-token``: the management API's bearer token (made once, never rewritten)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.token_secret_name(spec.name),
            "namespace": spec.namespace,
            "labels": names.labels(spec.name),
            "ownerReferences": [names.owner_reference(spec.name, spec.uid)],
        },
        "data": {names.TOKEN_KEY: base64.b64encode(token.encode()).decode("ascii")},
    }
