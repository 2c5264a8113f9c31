"""
A DNSCluster's spec read into frozen values, with the CRD's defaults, and
the checks the operator relies on.

On a real cluster the API server has already applied the CRD's schema,
defaults and CEL rules (deploy/crd/dnsclusters.yaml) before the operator
sees an object.  The operator checks again, because an API server that does
not validate (the kmock emulator, or a CRD installed without its schema)
would otherwise let a bad spec through: :func:`read_spec` collects every
problem, each with its path, and raises :class:`SpecError`.  The defaults
here are the CRD's (a unit test compares them).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

#: The longest DNSCluster name: ``<name>-control`` and the other Service names stay DNS labels.
MAX_NAME = 48
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CLUSTER_REF = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
HA_MODES = {"ActivePassive": "active_passive", "ActiveActive": "active_active"}
QUORUM_TYPES = {"WorkerWitness": "worker_witness", "None": "none"}
CACHE_MODES = ("standalone", "local-only", "hybrid")
SHARED_TYPES = ("redis", "redis-sentinel", "redis-cluster")
#: The connection block of each shared-cache type.
SHARED_BLOCK = {"redis": "redis", "redis-sentinel": "redisSentinel", "redis-cluster": "redisCluster"}

DEFAULT_CONTROL_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}}
DEFAULT_WORKER_RESOURCES = {"requests": {"cpu": "250m", "memory": "320Mi"}}


class SpecError(Exception):
    """The DNSCluster cannot be reconciled as it is; ``problems`` says why, one line each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = list(problems)

    def __str__(self) -> str:
        return "; ".join(self.problems)


@attrs.frozen
class SecretKey:
    """A key of a Secret in the DNSCluster's namespace."""

    name: str
    key: str


@attrs.frozen
class WorkerPlacement:
    """One cluster's part of the workers: its weight, and the fewest it may run."""

    cluster: str
    weight: int
    min_replicas: int


@attrs.frozen
class ControlPlacement:
    """A cluster that runs a control plane, its HA priority (lower campaigns first) and its address for the others."""

    cluster: str
    priority: int
    control_address: str = ""


@attrs.frozen
class Quorum:
    """highAvailability.quorum in dnsgo's spelling (type ``worker_witness`` or ``none``)."""

    type: str = "worker_witness"
    minimum: int = 3
    min_clusters: int = 2


@attrs.frozen
class HighAvailability:
    """highAvailability: where control planes run and how they agree which is active."""

    enabled: bool = False
    mode: str = "active_passive"
    placements: tuple[ControlPlacement, ...] = ()
    quorum: Quorum = Quorum()


@attrs.frozen
class ControlPlane:
    """spec.controlPlane."""

    replicas: int = 1
    service_type: str = "ClusterIP"
    resources: Mapping[str, Any] = MappingProxyType(DEFAULT_CONTROL_RESOURCES)


@attrs.frozen
class Workers:
    """spec.workers: the total over all clusters, and the autoscaling bounds (None: no HPA)."""

    replicas: int = 2
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_cpu: int = 70
    service_type: str = "ClusterIP"
    allow: tuple[str, ...] = ()
    resources: Mapping[str, Any] = MappingProxyType(DEFAULT_WORKER_RESOURCES)

    @property
    def autoscaled(self) -> bool:
        """Whether an HPA scales the workers."""
        return self.min_replicas is not None and self.max_replicas is not None


@attrs.frozen
class ClusterSpec:
    """One DNSCluster: who it is and what its spec asks for, defaults applied."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    upstreams: tuple[str, ...]
    image: str = ""
    image_pull_policy: str = ""
    control_plane: ControlPlane = ControlPlane()
    workers: Workers = Workers()
    #: spec.cache as given (camelCase); dnsgo_config renders it and dnsgo.config validates it.
    cache: Mapping[str, Any] = MappingProxyType({})
    multi_cluster: bool = False
    placements: tuple[WorkerPlacement, ...] = ()
    ha: HighAvailability = HighAvailability()
    api_secret: SecretKey | None = None

    @property
    def cache_mode(self) -> str:
        """spec.cache.mode (default ``local-only``: the workers report to a control plane)."""
        return self.cache.get("mode", "local-only")

    @property
    def shared_block(self) -> Mapping[str, Any]:
        """The connection block of the shared cache's type (``redisCluster`` for ``redis-cluster``), or {}."""
        shared = self.cache.get("sharedCache") or {}
        if not shared.get("enabled", False):
            return {}
        return shared.get(SHARED_BLOCK.get(shared.get("type", "redis"), ""), None) or {}

    @property
    def redis_secret(self) -> SecretKey | None:
        """The Redis password's Secret (``authSecret`` of the shared cache's block), if any."""
        return _secret_or_none(self.shared_block.get("authSecret"))

    @property
    def signing_secret(self) -> SecretKey | None:
        """The shared cache's signing key's Secret (``sharedCache.signingKeySecret``), if any."""
        shared = self.cache.get("sharedCache") or {}
        return _secret_or_none(shared.get("signingKeySecret")) if shared.get("enabled", False) else None


def _secret_or_none(value) -> SecretKey | None:
    if isinstance(value, Mapping) and value.get("name") and value.get("key"):
        return SecretKey(str(value["name"]), str(value["key"]))
    return None


class _Reader:
    """Typed reads from a mapping, each failure a problem with its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        """Note a problem at ``path``."""
        self.problems.append(f"{path}: {message}")

    def section(self, parent: Mapping, key: str, path: str) -> Mapping:
        """An object-valued key ({} when absent)."""
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(f"{path}.{key}", f"must be an object; got {type(value).__name__}")
            return {}
        return value

    def integer(self, parent: Mapping, key: str, path: str, default, minimum: int | None = None,
                maximum: int | None = None):
        """An integer key within bounds (``default`` when absent or bad)."""
        value = parent.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{path}.{key}", f"must be an integer; got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(f"{path}.{key}", f"must be at least {minimum}; got {value}")
            return default
        if maximum is not None and value > maximum:
            self.problem(f"{path}.{key}", f"must be at most {maximum}; got {value}")
            return default
        return value

    def boolean(self, parent: Mapping, key: str, path: str, default: bool) -> bool:
        """A boolean key."""
        value = parent.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{path}.{key}", f"must be true or false; got {value!r}")
            return default
        return value

    def choice(self, parent: Mapping, key: str, path: str, default, choices):
        """A key whose value is one of ``choices``."""
        value = parent.get(key, default)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            self.problem(f"{path}.{key}", f"must be one of {allowed}; got {value!r}")
            return default
        return value

    def string(self, parent: Mapping, key: str, path: str, default: str = "") -> str:
        """A string key."""
        value = parent.get(key, default)
        if not isinstance(value, str):
            self.problem(f"{path}.{key}", f"must be a string; got {value!r}")
            return default
        return value

    def strings(self, parent: Mapping, key: str, path: str) -> tuple[str, ...]:
        """A list-of-strings key."""
        value = parent.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(f"{path}.{key}", "must be a list of strings")
            return ()
        return tuple(value)

    def objects(self, parent: Mapping, key: str, path: str) -> list[tuple[str, Mapping]]:
        """A list-of-objects key, each with its path."""
        value = parent.get(key, [])
        if not isinstance(value, list):
            self.problem(f"{path}.{key}", "must be a list")
            return []
        result = []
        for i, item in enumerate(value):
            if isinstance(item, Mapping):
                result.append((f"{path}.{key}[{i}]", item))
            else:
                self.problem(f"{path}.{key}[{i}]", "must be an object")
        return result

    def secret(self, parent: Mapping, key: str, path: str) -> SecretKey | None:
        """A {name, key} Secret reference, or None when absent."""
        value = self.section(parent, key, path)
        if not value:
            return None
        name, key_ = value.get("name"), value.get("key")
        if not (isinstance(name, str) and name and isinstance(key_, str) and key_):
            self.problem(f"{path}.{key}", "needs a non-empty name and key")
            return None
        return SecretKey(name, key_)


def _control_plane(r: _Reader, spec: Mapping) -> ControlPlane:
    s = r.section(spec, "controlPlane", "spec")
    return ControlPlane(
        replicas=r.integer(s, "replicas", "spec.controlPlane", 1, 1, 9),
        service_type=r.choice(s, "serviceType", "spec.controlPlane", "ClusterIP", SERVICE_TYPES),
        resources=MappingProxyType(dict(r.section(s, "resources", "spec.controlPlane") or DEFAULT_CONTROL_RESOURCES)),
    )


def _workers(r: _Reader, spec: Mapping) -> Workers:
    s = r.section(spec, "workers", "spec")
    path = "spec.workers"
    workers = Workers(
        replicas=r.integer(s, "replicas", path, 2, 0, 1000),
        min_replicas=r.integer(s, "minReplicas", path, None, 1, 1000),
        max_replicas=r.integer(s, "maxReplicas", path, None, 1, 1000),
        target_cpu=r.integer(s, "targetCPUUtilizationPercentage", path, 70, 1, 100),
        service_type=r.choice(s, "serviceType", path, "ClusterIP", SERVICE_TYPES),
        allow=r.strings(s, "allow", path),
        resources=MappingProxyType(dict(r.section(s, "resources", path) or DEFAULT_WORKER_RESOURCES)),
    )
    # The CRD's CEL rules, in the same words.
    low, high = workers.min_replicas, workers.max_replicas
    if (low is None) != (high is None):
        r.problem(path, "set minReplicas and maxReplicas together (they bound the HPA)")
    if low is not None and high is not None and low > high:
        r.problem(f"{path}.minReplicas", f"must not exceed maxReplicas ({high}); got {low}")
    elif low is not None and low > workers.replicas:
        r.problem(f"{path}.minReplicas", f"must not exceed replicas ({workers.replicas}); got {low}")
    elif high is not None and workers.replicas > high:
        r.problem(f"{path}.replicas", f"must not exceed maxReplicas ({high}); got {workers.replicas}")
    return workers


def _placements(r: _Reader, spec: Mapping) -> tuple[bool, tuple[WorkerPlacement, ...]]:
    s = r.section(spec, "multiCluster", "spec")
    path = "spec.multiCluster"
    enabled = r.boolean(s, "enabled", path, False)
    placements = []
    for item_path, item in r.objects(s, "workerPlacements", path):
        ref = r.string(item, "clusterRef", item_path)
        if not _CLUSTER_REF.match(ref):
            r.problem(f"{item_path}.clusterRef", f"must be a DNS label; got {ref!r}")
        placements.append(WorkerPlacement(
            ref, r.integer(item, "weight", item_path, 1, 0, 1000), r.integer(item, "minReplicas", item_path, 0, 0, 1000)))
    _unique(r, [p.cluster for p in placements], f"{path}.workerPlacements", "clusterRef")
    if enabled and not placements:
        r.problem(f"{path}.workerPlacements", "multiCluster.enabled needs at least one placement")
    elif enabled and not any(p.weight > 0 for p in placements):
        r.problem(f"{path}.workerPlacements", "at least one placement needs a weight above 0")
    return enabled, tuple(placements)


def _high_availability(r: _Reader, spec: Mapping) -> HighAvailability:
    s = r.section(spec, "highAvailability", "spec")
    path = "spec.highAvailability"
    placements = []
    for item_path, item in r.objects(s, "controlPlanePlacements", path):
        ref = r.string(item, "clusterRef", item_path)
        if not _CLUSTER_REF.match(ref):
            r.problem(f"{item_path}.clusterRef", f"must be a DNS label; got {ref!r}")
        if "priority" not in item:
            r.problem(f"{item_path}.priority", "is required")
        placements.append(ControlPlacement(
            ref, r.integer(item, "priority", item_path, 1, 1, 1000), r.string(item, "controlAddress", item_path)))
    _unique(r, [p.cluster for p in placements], f"{path}.controlPlanePlacements", "clusterRef")
    _unique(r, [p.priority for p in placements], f"{path}.controlPlanePlacements", "priority")
    q = r.section(s, "quorum", path)
    quorum = Quorum(
        type=QUORUM_TYPES[r.choice(q, "type", f"{path}.quorum", "WorkerWitness", tuple(QUORUM_TYPES))],
        minimum=r.integer(q, "minimumQuorum", f"{path}.quorum", 3, 1, 1000),
        min_clusters=r.integer(q, "minClustersRequired", f"{path}.quorum", 2, 1, 100),
    )
    enabled = r.boolean(s, "enabled", path, False)
    if enabled and not placements:
        r.problem(f"{path}.controlPlanePlacements", "highAvailability.enabled needs at least one placement")
    return HighAvailability(
        enabled=enabled,
        mode=HA_MODES[r.choice(s, "mode", path, "ActivePassive", tuple(HA_MODES))],
        placements=tuple(sorted(placements, key=lambda p: p.priority)),
        quorum=quorum,
    )


def _cache(r: _Reader, spec: Mapping) -> Mapping:
    cache = r.section(spec, "cache", "spec")
    mode = r.choice(cache, "mode", "spec.cache", "local-only", CACHE_MODES)
    shared = r.section(cache, "sharedCache", "spec.cache")
    enabled = r.boolean(shared, "enabled", "spec.cache.sharedCache", False)
    kind = r.choice(shared, "type", "spec.cache.sharedCache", "redis", SHARED_TYPES)
    if (mode == "hybrid") != enabled:
        r.problem("spec.cache.mode", "mode hybrid and sharedCache.enabled: true go together")
    if enabled:
        block = SHARED_BLOCK[kind]
        if not r.section(shared, block, "spec.cache.sharedCache"):
            r.problem(f"spec.cache.sharedCache.{block}", f"type {kind} needs this block")
        else:
            r.secret(shared[block], "authSecret", f"spec.cache.sharedCache.{block}")
        r.secret(shared, "signingKeySecret", "spec.cache.sharedCache")
    return MappingProxyType(dict(cache))


def _unique(r: _Reader, values: list, path: str, what: str) -> None:
    seen = set()
    for value in values:
        if value in seen:
            r.problem(path, f"{what} {value!r} appears more than once")
        seen.add(value)


def read_spec(body: Mapping) -> ClusterSpec:
    """The :class:`ClusterSpec` of DNSCluster ``body`` (the whole object); SpecError listing every problem."""
    r = _Reader()
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    if not _NAME.match(name) or len(name) > MAX_NAME:
        r.problem("metadata.name", f"must be a DNS label starting with a letter, at most {MAX_NAME} characters "
                                   f"(it names Services); got {name!r}")
    if not meta.get("uid"):
        r.problem("metadata.uid", "is missing (the API server sets it; ownerReferences need it)")
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError(r.problems + ["spec: must be an object"])
    upstreams = r.strings(spec, "upstreams", "spec")
    if not upstreams:
        r.problem("spec.upstreams", "needs at least one upstream")
    api = r.section(spec, "api", "spec")
    result = ClusterSpec(
        name=name,
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        generation=meta.get("generation"),
        upstreams=upstreams,
        image=r.string(spec, "image", "spec"),
        image_pull_policy=r.choice(spec, "imagePullPolicy", "spec", "", ("",) + PULL_POLICIES),
        control_plane=_control_plane(r, spec),
        workers=_workers(r, spec),
        cache=_cache(r, spec),
        ha=_high_availability(r, spec),
        api_secret=r.secret(api, "authSecret", "spec.api"),
    )
    multi, placements = _placements(r, spec)
    if r.problems:
        raise SpecError(r.problems)
    return attrs.evolve(result, multi_cluster=multi, placements=placements)
