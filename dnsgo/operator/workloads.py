"""
The two Deployments of a DNSCluster: the control plane and the workers.

Both run the dnsgo image's entrypoint with a role (``control`` or
``worker``), read their file from the ConfigMap mounted at /etc/dns-go, run
as a non-root user with no capabilities and a read-only root file system
(DNS is served on port 5353 inside the pod; the Service maps 53 to it), and
carry the config checksum on their pod template, so that a new config rolls
them.  Secrets reach them only as ``secretKeyRef`` environment variables.

The control plane's probes are the management API's ``/api/health``
(liveness) and ``/api/ready`` (readiness: it has a healthy worker).  A
worker has no HTTP endpoint of its own, so its probes are TCP connections
to its DNS port, which it opens only once it has its configuration from a
control plane.
"""
from __future__ import annotations

from typing import Any

import dnsgo
from dnsgo.operator import dnsgo_config as cfg
from dnsgo.operator import names
from dnsgo.operator.placement import Placement
from dnsgo.operator.spec import ClusterSpec, SecretKey

#: The image when neither spec.image nor $DNSGO_IMAGE names one.
DEFAULT_IMAGE = f"dnsgo:{dnsgo.__version__}"
#: The uid the containers run as (the image's user must not need to be root).
RUN_AS = 10001


def _secret_env(name: str, secret: SecretKey) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}


def _common_env(spec: ClusterSpec, placement: Placement, config_key: str) -> list[dict]:
    env: list[dict] = [
        {"name": "DNSGO_CONFIG", "value": f"{names.CONFIG_DIR}/{config_key}"},
        {"name": "SITE_ID", "value": placement.cluster_name},
        {"name": cfg.POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if spec.redis_secret is not None:
        env.append(_secret_env(cfg.REDIS_PASSWORD_ENV, spec.redis_secret))
    if spec.signing_secret is not None:
        env.append(_secret_env(cfg.SIGNING_KEY_ENV, spec.signing_secret))
    return env


def api_secret(spec: ClusterSpec) -> SecretKey:
    """The Secret holding the management API's token: spec.api.authSecret, or the one the operator makes."""
    return spec.api_secret or SecretKey(names.token_secret_name(spec.name), names.TOKEN_KEY)


def control_addresses(spec: ClusterSpec, placement: Placement) -> list[str]:
    """Where this cluster's workers find control planes: the local one first, then the peers by priority."""
    local = [f"{names.control_name(spec.name)}.{spec.namespace}.svc:{names.CONTROL_PORT}"] if placement.control_plane else []
    return local + list(placement.peers)


def _pod_security() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _volumes(spec: ClusterSpec) -> list[dict]:
    return [
        {"name": "config", "configMap": {"name": names.config_map_name(spec.name)}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "state", "emptyDir": {}},
    ]


def _mounts() -> list[dict]:
    return [
        {"name": "config", "mountPath": names.CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "state", "mountPath": names.STATE_MOUNT},
    ]


def _image(spec: ClusterSpec, default_image: str) -> dict:
    image = {"image": spec.image or default_image or DEFAULT_IMAGE}
    if spec.image_pull_policy:
        image["imagePullPolicy"] = spec.image_pull_policy
    return image


def _deployment(spec: ClusterSpec, component: str, name: str, container: dict, checksum: str,
                replicas: int | None, extra_pod: dict[str, Any] | None = None) -> dict:
    selector = names.selector_labels(spec.name, component)
    pod_spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": _volumes(spec),
        **(extra_pod or {}),
    }
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": names.labels(spec.name, component),
            "ownerReferences": [names.owner_reference(spec.name, spec.uid)],
        },
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**names.labels(spec.name, component), **selector},
                    "annotations": {names.CONFIG_CHECKSUM: checksum},
                },
                "spec": pod_spec,
            },
        },
    }
    if replicas is not None:
        body["spec"] = {"replicas": replicas, **body["spec"]}
    return body


def control_deployment(spec: ClusterSpec, placement: Placement, checksum: str, default_image: str = "") -> dict:
    """The control-plane Deployment (``<name>-control``): control channel on 9090, API on 8080."""
    env = _common_env(spec, placement, names.CONTROL_CONFIG_KEY)
    if placement.priority is not None:
        env.append({"name": "HA_PRIORITY", "value": str(placement.priority)})
    if placement.peers:
        env.append({"name": "DNSGO_HA_PEERS", "value": ",".join(placement.peers)})
    env.append(_secret_env(cfg.API_TOKEN_ENV, api_secret(spec)))
    container = {
        "name": "control",
        **_image(spec, default_image),
        "args": ["control"],
        "env": env,
        "ports": [
            {"name": "control", "containerPort": names.CONTROL_PORT, "protocol": "TCP"},
            {"name": "api", "containerPort": names.API_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/api/health", "port": "api"},
            "initialDelaySeconds": 5, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/api/ready", "port": "api"},
            "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3,
        },
        "resources": dict(spec.control_plane.resources),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(),
    }
    return _deployment(spec, names.CONTROL_PLANE, names.control_name(spec.name), container, checksum,
                       spec.control_plane.replicas)


def worker_deployment(spec: ClusterSpec, placement: Placement, checksum: str, default_image: str = "",
                      *, set_replicas: bool = True) -> dict:
    """
    The worker Deployment (``<name>-worker``), DNS on 5353 UDP and TCP.
    ``set_replicas`` False leaves ``spec.replicas`` out, for a patch that
    must not undo what the HPA chose.
    """
    env = _common_env(spec, placement, names.WORKER_CONFIG_KEY)
    env.append({"name": "CONTROL_PLANE_ADDRESS", "value": ",".join(control_addresses(spec, placement))})
    probe = {"tcpSocket": {"port": "dns-tcp"}}
    container = {
        "name": "worker",
        **_image(spec, default_image),
        "args": ["worker"],
        "env": env,
        "ports": [
            {"name": "dns-udp", "containerPort": names.DNS_PORT, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": names.DNS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "resources": dict(spec.workers.resources),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(),
    }
    spread = {
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": names.selector_labels(spec.name, names.WORKER)},
        }],
    }
    return _deployment(spec, names.WORKER, names.worker_name(spec.name), container, checksum,
                       placement.workers if set_replicas else None, spread)
