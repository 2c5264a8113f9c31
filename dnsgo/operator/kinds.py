"""
The kinds of object the operator reads and writes, and their REST paths.
"""
from __future__ import annotations

import attrs

from dnsgo.operator import names


@attrs.frozen
class Kind:
    """One Kubernetes resource: apiVersion, kind and plural (all namespaced here)."""

    api_version: str
    kind: str
    plural: str

    @property
    def group_version_path(self) -> str:
        """``/api/v1`` for the core group, ``/apis/GROUP/VERSION`` for the others."""
        return "/api/v1" if "/" not in self.api_version else f"/apis/{self.api_version}"

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        """The REST path of the collection in ``namespace``, or of the object ``name`` (and its subresource)."""
        path = f"{self.group_version_path}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
SECRET = Kind("v1", "Secret", "secrets")
SERVICE = Kind("v1", "Service", "services")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
SERVICE_MONITOR = Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
DNSCLUSTER = Kind(names.API_VERSION, names.KIND, names.PLURAL)

BY_KIND = {k.kind: k for k in (CONFIG_MAP, SECRET, SERVICE, DEPLOYMENT, HPA, PDB, SERVICE_MONITOR, DNSCLUSTER)}
