"""
The names the operator gives things: the DNSCluster resource's group,
version and plural, the names of the objects made for one DNSCluster,
their labels, annotations and the ownerReference that ties them to it.
"""
from __future__ import annotations

GROUP = "dns.dns-go.io"
VERSION = "v1alpha1"
PLURAL = "dnsclusters"
KIND = "DNSCluster"
API_VERSION = f"{GROUP}/{VERSION}"

#: Prefix of the annotations the operator writes (kopf's progress and diff base too).
ANNOTATION_PREFIX = GROUP
#: On pod templates: the SHA-256 of the ConfigMap's data, so a new config restarts the pods.
CONFIG_CHECKSUM = f"{GROUP}/config-checksum"

CONTROL_PLANE = "control-plane"
WORKER = "worker"

#: Where the ConfigMap is mounted in every dnsgo pod, and its keys.
CONFIG_DIR = "/etc/dns-go"
CONTROL_CONFIG_KEY = "config.yaml"
WORKER_CONFIG_KEY = "worker.yaml"

#: Where a worker keeps its HA vote and lease promise: an emptyDir, so it outlives a
#: container restart (not the pod).
STATE_MOUNT = "/var/lib/dnsgo"
HA_STATE_DIR = STATE_MOUNT

#: Ports inside the pods (unprivileged, so the pods run without capabilities);
#: the DNS Service maps port 53 onto the DNS one.
DNS_PORT = 5353
CONTROL_PORT = 9090
API_PORT = 8080

#: The key of the API token in the Secret the operator generates.
TOKEN_KEY = "token"


def control_name(cluster: str) -> str:
    """The control-plane Deployment and Service (and ServiceMonitor)."""
    return f"{cluster}-control"


def worker_name(cluster: str) -> str:
    """The worker Deployment, its HPA and its PodDisruptionBudget."""
    return f"{cluster}-worker"


def dns_service_name(cluster: str) -> str:
    """The Service answering DNS on port 53."""
    return f"{cluster}-dns"


def config_map_name(cluster: str) -> str:
    """The ConfigMap with the dnsgo YAML."""
    return f"{cluster}-config"


def token_secret_name(cluster: str) -> str:
    """The Secret with the API token the operator generates when spec.api.authSecret is not given."""
    return f"{cluster}-api-token"


def selector_labels(cluster: str, component: str) -> dict[str, str]:
    """The labels a component's pods are selected by (never changed after creation)."""
    return {
        "app.kubernetes.io/name": "dnsgo",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": component,
    }


def labels(cluster: str, component: str | None = None) -> dict[str, str]:
    """The labels of every object made for DNSCluster ``cluster`` (and of one component's)."""
    result = {
        "app.kubernetes.io/name": "dnsgo",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/managed-by": "dnsgo-operator",
    }
    if component is not None:
        result["app.kubernetes.io/component"] = component
    return result


def owner_reference(name: str, uid: str) -> dict:
    """The ownerReference that lets Kubernetes' garbage collector delete an object with its DNSCluster."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
