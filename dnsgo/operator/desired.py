"""
Everything one cluster should hold for a DNSCluster, from its spec alone:
the objects to create (and what to patch when they exist), and the objects
of an earlier spec that this cluster must no longer have.
"""
from __future__ import annotations

from collections.abc import Callable

import attrs

from dnsgo.operator import dnsgo_config, monitoring, names, scaling, services, stored, workloads
from dnsgo.operator.kinds import CONFIG_MAP, DEPLOYMENT, HPA, PDB, SECRET, SERVICE, SERVICE_MONITOR, Kind
from dnsgo.operator.placement import Placement, place
from dnsgo.operator.spec import ClusterSpec


@attrs.frozen
class Desired:
    """One object: its full body for a create, and what to patch when it exists (None: leave it alone)."""

    kind: Kind
    body: dict
    patch: dict | None

    @property
    def name(self) -> str:
        """metadata.name."""
        return self.body["metadata"]["name"]


@attrs.frozen
class DesiredState:
    """The objects this cluster should have, and those (kind, name) it should not."""

    placement: Placement
    config: dnsgo_config.RenderedConfig
    objects: tuple[Desired, ...]
    absent: tuple[tuple[Kind, str], ...]


def _kept(kind: Kind, body: dict) -> Desired:
    return Desired(kind, body, body)


def desired_state(
    spec: ClusterSpec,
    cluster_name: str,
    *,
    set_worker_replicas: bool,
    service_monitors: bool,
    new_token: Callable[[], str],
    default_image: str = "",
    ha_keys: frozenset[str] | None = None,
) -> DesiredState:
    """
    The :class:`DesiredState` of ``spec`` in cluster ``cluster_name``.
    ``set_worker_replicas`` says whether an existing worker Deployment's
    replicas are set (on creation and when spec.workers.replicas or the
    placements changed) or left to the HPA; ``service_monitors`` whether the
    ServiceMonitor resource exists; ``new_token`` makes an API token for the
    Secret made when the spec names none (never rewritten once made).
    Raises SpecError when the spec cannot be placed or dnsgo refuses its
    configuration.
    """
    placement = place(spec, cluster_name)
    rendered = dnsgo_config.render(spec, placement, ha_keys)
    objects: list[Desired] = [_kept(CONFIG_MAP, stored.config_map(spec, rendered))]
    absent: list[tuple[Kind, str]] = []
    control, worker = names.control_name(spec.name), names.worker_name(spec.name)

    if spec.api_secret is None:
        objects.append(Desired(SECRET, stored.token_secret(spec, new_token()), None))

    if placement.control_plane:
        objects.append(_kept(DEPLOYMENT, workloads.control_deployment(spec, placement, rendered.checksum, default_image)))
        objects.append(_kept(SERVICE, services.control_service(spec)))
        if service_monitors:
            objects.append(_kept(SERVICE_MONITOR, monitoring.service_monitor(spec, workloads.api_secret(spec))))
    else:
        absent += [(DEPLOYMENT, control), (SERVICE, control)]
        if service_monitors:
            absent.append((SERVICE_MONITOR, control))

    if placement.runs_workers:
        body = workloads.worker_deployment(spec, placement, rendered.checksum, default_image)
        # Nothing but this operator sets the replicas without an HPA.
        if set_worker_replicas or not placement.autoscaled:
            patch = body
        else:
            patch = workloads.worker_deployment(spec, placement, rendered.checksum, default_image, set_replicas=False)
        objects.append(Desired(DEPLOYMENT, body, patch))
        objects.append(_kept(SERVICE, services.dns_service(spec)))
        objects.append(_kept(PDB, scaling.worker_pdb(spec)))
        if placement.autoscaled:
            objects.append(_kept(HPA, scaling.worker_hpa(spec, placement)))
        else:
            absent.append((HPA, worker))
    else:
        absent += [(DEPLOYMENT, worker), (SERVICE, names.dns_service_name(spec.name)), (PDB, worker), (HPA, worker)]

    return DesiredState(placement, rendered, tuple(objects), tuple(absent))
