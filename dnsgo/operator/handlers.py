"""
The kopf wiring: on creation, update and resume of a DNSCluster, render
what this cluster should hold and apply it; every ``status_interval``
seconds, refresh the status from the Deployments and the control plane's
API.  Everything else is plain functions in the sibling modules.

kopf puts its finalizer on each DNSCluster because of the status timer (to
stop it before the object goes); the operator deletes nothing on deletion:
the ownerReferences leave that to Kubernetes' garbage collector.
"""
from __future__ import annotations

import datetime
import logging
import os
import secrets

import aiohttp
import kopf

from dnsgo.operator import control_api, names, options as operator_options
from dnsgo.operator.apply import NotOwned, apply_state
from dnsgo.operator.desired import desired_state
from dnsgo.operator.kinds import DEPLOYMENT, DNSCLUSTER, SECRET, SERVICE_MONITOR
from dnsgo.operator.kube import ApiError, KubeApi, login
from dnsgo.operator.placement import Placement, place
from dnsgo.operator.spec import ClusterSpec, SpecError, read_spec
from dnsgo.operator.status import Failure, conditions, failure_of, replica_counts
from dnsgo.operator.workloads import api_secret

RESOURCE = (names.GROUP, names.VERSION, names.PLURAL)

try:
    _INTERVAL = operator_options.status_interval(os.environ)
except operator_options.OptionsError:
    _INTERVAL = operator_options.DEFAULT_INTERVAL  # startup() reports it and stops


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    """Read the options, keep kopf's bookkeeping in our annotations, and open the API clients."""
    try:
        memo.options = operator_options.from_environ(os.environ)
    except operator_options.OptionsError as e:
        raise kopf.PermanentError(str(e)) from None
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.ANNOTATION_PREFIX, key="last-handled-configuration")
    # No watching of CRDs or namespaces: API discovery is enough, and needs no RBAC.
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    memo.kube = KubeApi(lambda: login(settings))
    memo.http = aiohttp.ClientSession()
    if memo.options.cluster_name:
        logger.info(f"dnsgo operator for cluster {memo.options.cluster_name!r}")
    else:
        logger.warning("DNSGO_CLUSTER_NAME is not set: DNSClusters with multiCluster or highAvailability "
                       "placements will be reported Degraded")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_) -> None:
    """Close the API clients."""
    await memo.kube.close()
    await memo.http.close()


def _dig(value, path: tuple) -> object:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


#: The spec fields that decide this cluster's share of the workers.
_SHARE_PATHS = (("spec", "workers", "replicas"), ("spec", "multiCluster"))


def worker_replicas_changed(diff) -> bool:
    """Whether a kopf diff changes spec.workers.replicas or the placements (so this cluster's share)."""
    for _op, path, old, new in diff:
        path = tuple(path)
        for target in _SHARE_PATHS:
            if path[: len(target)] == target:
                return True
            rest = target[len(path):]
            if target[: len(path)] == path and _dig(old, rest) != _dig(new, rest):
                return True
    return False


async def _counts(kube: KubeApi, spec: ClusterSpec, placement: Placement) -> dict:
    counts = {}
    if placement.control_plane:
        counts["controlPlane"] = replica_counts(await kube.get(DEPLOYMENT, spec.namespace, names.control_name(spec.name)))
    if placement.runs_workers:
        counts["workers"] = replica_counts(await kube.get(DEPLOYMENT, spec.namespace, names.worker_name(spec.name)))
    return counts


def _placement_status(placement: Placement) -> dict:
    return {
        "workers": placement.workers if placement.runs_workers else 0,
        "minWorkers": placement.min_workers,
        "maxWorkers": placement.max_workers,
        "controlPlane": placement.control_plane,
        "haPriority": placement.priority,
    }


async def _patch_status(kube: KubeApi, body: kopf.Body, status: dict) -> None:
    await kube.patch(DNSCLUSTER, body.metadata.namespace, body.metadata.name, {"status": status}, "status")


async def _fail(kube: KubeApi, body: kopf.Body, reason: str, message: str) -> None:
    previous = body.status.get("conditions", [])
    generation = body.metadata.get("generation")
    status = {"conditions": conditions(previous, generation=generation, failure=Failure(reason, message),
                                       counts={}, now=_now())}
    if generation is not None:
        status["observedGeneration"] = generation
    await _patch_status(kube, body, status)


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, *, set_worker_replicas: bool) -> None:
    """Render and apply what this cluster should hold for ``body``, then write the status."""
    kube: KubeApi = memo.kube
    options: operator_options.OperatorOptions = memo.options
    try:
        spec = read_spec(body)
        state = desired_state(
            spec, options.cluster_name,
            set_worker_replicas=set_worker_replicas,
            service_monitors=await kube.serves(SERVICE_MONITOR),
            new_token=lambda: secrets.token_urlsafe(32),
            default_image=options.image,
        )
        done = await apply_state(kube, spec.namespace, spec.uid, state)
    except SpecError as e:
        await _fail(kube, body, "InvalidSpec", str(e))
        raise kopf.PermanentError(f"invalid DNSCluster: {e}") from None
    except NotOwned as e:
        await _fail(kube, body, "NameTaken", str(e))
        raise kopf.TemporaryError(str(e), delay=60) from None
    except ApiError as e:
        await _fail(kube, body, "ApiError", str(e))
        raise kopf.TemporaryError(str(e), delay=15) from None
    for applied in done:
        if applied.action not in ("unchanged", "kept"):
            logger.info(f"{applied.kind.kind} {applied.name} {applied.action}")
    counts = await _counts(kube, spec, state.placement)
    status = {
        "clusterName": options.cluster_name,
        "placement": _placement_status(state.placement),
        "configChecksum": state.config.checksum,
        "resources": [{"apiVersion": d.kind.api_version, "kind": d.kind.kind, "name": d.name} for d in state.objects],
        "replicas": {"controlPlane": counts.get("controlPlane"), "workers": counts.get("workers")},
        "conditions": conditions(body.status.get("conditions", []), generation=spec.generation, failure=None,
                                 counts=counts, now=_now()),
    }
    if spec.generation is not None:
        status["observedGeneration"] = spec.generation
    await _patch_status(kube, body, status)


@kopf.on.create(*RESOURCE)
async def created(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    """A new DNSCluster: make everything, the workers at this cluster's share."""
    await reconcile(body, memo, logger, set_worker_replicas=True)


@kopf.on.update(*RESOURCE)
async def updated(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    """A changed spec: roll it out; the workers' replicas only when their total or the placements changed."""
    await reconcile(body, memo, logger, set_worker_replicas=worker_replicas_changed(diff))


@kopf.on.resume(*RESOURCE)
async def resumed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    """The operator (re)started: make sure everything is there, leaving the workers' replicas to the HPA."""
    await reconcile(body, memo, logger, set_worker_replicas=False)


@kopf.timer(*RESOURCE, interval=_INTERVAL)
async def refresh_status(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    """Replica counts and conditions from the Deployments, and the control plane's HA role and term."""
    kube: KubeApi = memo.kube
    options: operator_options.OperatorOptions = memo.options
    try:
        spec = read_spec(body)
        placement = place(spec, options.cluster_name)
    except SpecError:
        return  # the change handlers reported it
    previous = body.status.get("conditions", [])
    counts = await _counts(kube, spec, placement)
    status: dict = {
        "replicas": {"controlPlane": counts.get("controlPlane"), "workers": counts.get("workers")},
        "conditions": conditions(previous, generation=body.status.get("observedGeneration"),
                                 failure=failure_of(previous), counts=counts, now=_now()),
    }
    if placement.control_plane:
        secret = api_secret(spec)
        token = control_api.secret_value(await kube.get(SECRET, spec.namespace, secret.name), secret.key)
        url = control_api.api_url(options.control_url, spec.name, spec.namespace)
        status["controlPlaneAPI"] = {**await control_api.probe(memo.http, url, token), "checkedAt": _now()}
    else:
        status["controlPlaneAPI"] = None
    await _patch_status(kube, body, status)
