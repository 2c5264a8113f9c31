"""
What this cluster runs of a DNSCluster: its share of the workers, whether
it runs a control plane, and with which HA priority and peers.

Every cluster runs its own operator, named by ``DNSGO_CLUSTER_NAME``, and
each works out its own part from the same spec, so the parts must add up
without the operators talking to each other.

**Workers.**  Without ``multiCluster.enabled`` this cluster runs all of
``workers.replicas``.  With it, the weights split ``workers.replicas`` by
the largest-remainder method: each placement gets the whole part of
``replicas * weight / total weight``, and the replicas left over go one
each to the placements with the largest fractional parts, ties to the
placement listed first.  The shares then add up to ``replicas`` exactly.
Each share is then raised to its placement's ``minReplicas``, so the sum
can exceed ``replicas``.  A cluster not listed runs no workers.  The HPA
bounds are split the same way (``minReplicas`` and ``maxReplicas`` of the
spec are totals too), then kept around this cluster's share:
``1 <= min <= share <= max`` and ``min >= the placement's minReplicas``.

**Control plane.**  With ``highAvailability.enabled``, a control plane
runs only in the clusters ``controlPlanePlacements`` lists, with that
placement's priority; its peers are the other placements'
``controlAddress`` (a spec field the seed lacks; see docs/operator.md).
Without HA, every cluster that runs workers runs its own control plane.
"""
from __future__ import annotations

from collections.abc import Sequence

import attrs

from dnsgo.operator.spec import ClusterSpec, SpecError, WorkerPlacement


@attrs.frozen
class Placement:
    """This cluster's part of one DNSCluster."""

    cluster_name: str
    #: Whether this cluster has a worker Deployment at all.
    runs_workers: bool
    workers: int
    #: The HPA's bounds here; None when there is no HPA here.
    min_workers: int | None
    max_workers: int | None
    control_plane: bool
    #: HA_PRIORITY of this cluster's control plane (None without HA).
    priority: int | None
    #: The other sites' control addresses, highest priority first.
    peers: tuple[str, ...]

    @property
    def autoscaled(self) -> bool:
        """Whether an HPA scales this cluster's workers."""
        return self.min_workers is not None


def weighted_shares(total: int, placements: Sequence[WorkerPlacement]) -> dict[str, int]:
    """
    Split ``total`` by the placements' weights (largest remainder, ties to
    the earlier placement); the shares add up to ``total``.  minReplicas is
    not applied here.
    """
    weights = sum(p.weight for p in placements)
    if weights == 0:
        return {p.cluster: 0 for p in placements}
    whole = {p.cluster: total * p.weight // weights for p in placements}
    remainders = sorted(
        range(len(placements)),
        key=lambda i: (-(total * placements[i].weight % weights), i),
    )
    for i in remainders[: total - sum(whole.values())]:
        whole[placements[i].cluster] += 1
    return whole


def _worker_part(spec: ClusterSpec, cluster_name: str) -> tuple[bool, int, int | None, int | None]:
    workers = spec.workers
    if not spec.multi_cluster:
        return True, workers.replicas, workers.min_replicas, workers.max_replicas
    mine = next((p for p in spec.placements if p.cluster == cluster_name), None)
    if mine is None:
        return False, 0, None, None
    share = max(weighted_shares(workers.replicas, spec.placements)[cluster_name], mine.min_replicas)
    if not workers.autoscaled or share == 0:
        return True, share, None, None
    low = max(weighted_shares(workers.min_replicas, spec.placements)[cluster_name], mine.min_replicas)
    low = max(1, min(low, share))
    high = max(weighted_shares(workers.max_replicas, spec.placements)[cluster_name], share)
    return True, share, low, high


def place(spec: ClusterSpec, cluster_name: str) -> Placement:
    """This cluster's :class:`Placement`; SpecError when it cannot be worked out (e.g. no cluster name)."""
    if not cluster_name and (spec.multi_cluster or spec.ha.enabled):
        raise SpecError([
            "DNSGO_CLUSTER_NAME: not set, so this operator cannot tell its share of multiCluster or "
            "highAvailability placements (set it, or run python -m dnsgo.operator --cluster-name NAME)"
        ])
    runs_workers, workers, low, high = _worker_part(spec, cluster_name)
    ha = spec.ha
    if ha.enabled:
        mine = next((p for p in ha.placements if p.cluster == cluster_name), None)
        control, priority = mine is not None, (mine.priority if mine is not None else None)
        peers = tuple(p.control_address for p in ha.placements if p.cluster != cluster_name and p.control_address)
    else:
        control, priority, peers = runs_workers, None, ()
    if runs_workers and not control and not peers:
        raise SpecError([
            f"spec.highAvailability.controlPlanePlacements: cluster {cluster_name!r} runs workers but no control "
            "plane, and no placement gives a controlAddress its workers could reach"
        ])
    return Placement(cluster_name, runs_workers, workers, low, high, control, priority, peers)
