"""
The DNSCluster's status, computed from what the operator did and what the
Deployments report: replica counts per component and the ``Ready``,
``Progressing`` and ``Degraded`` conditions (metav1.Condition: type,
status, reason, message, observedGeneration, lastTransitionTime, which
changes only when the status does).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs


@attrs.frozen
class Failure:
    """Why the last reconcile failed: a CamelCase reason and a message for people."""

    reason: str
    message: str


def replica_counts(deployment: Mapping | None) -> dict[str, int] | None:
    """desired/ready/available/updated replicas of a Deployment, from its spec and status; None when it is missing."""
    if deployment is None:
        return None
    status = deployment.get("status") or {}
    return {
        "desired": int((deployment.get("spec") or {}).get("replicas", 1)),
        "ready": int(status.get("readyReplicas", 0)),
        "available": int(status.get("availableReplicas", 0)),
        "updated": int(status.get("updatedReplicas", 0)),
    }


def _condition(previous: Sequence[Mapping], type_: str, status: bool, reason: str, message: str,
               generation: int | None, now: str) -> dict:
    text = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    since = before.get("lastTransitionTime") if before is not None and before.get("status") == text else None
    condition = {
        "type": type_,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def conditions(previous: Sequence[Mapping], *, generation: int | None, failure: Failure | None,
               counts: Mapping[str, Mapping[str, int] | None], now: str) -> list[dict]:
    """
    The three conditions.  ``counts`` maps each component this cluster runs
    (``controlPlane``, ``workers``) to :func:`replica_counts` (None: its
    Deployment is missing).
    """
    if failure is not None:
        return [
            _condition(previous, "Ready", False, failure.reason, failure.message, generation, now),
            _condition(previous, "Progressing", False, failure.reason, "reconcile failed; see Degraded", generation, now),
            _condition(previous, "Degraded", True, failure.reason, failure.message, generation, now),
        ]
    missing = [f"{name}: no Deployment yet" for name, c in counts.items() if c is None]
    present = {name: c for name, c in counts.items() if c is not None}
    short = missing + [f"{name}: {c['available']}/{c['desired']} available" for name, c in present.items()
                       if c["available"] < c["desired"]]
    rolling = [f"{name}: {c['updated']}/{c['desired']} updated" for name, c in present.items()
               if c["updated"] < c["desired"]]
    if not counts:
        ready = ("NothingPlacedHere", "no workers and no control plane are placed in this cluster")
    elif short:
        ready = ("ReplicasUnavailable", "; ".join(short))
    else:
        ready = ("AllReplicasAvailable", "; ".join(f"{n}: {c['available']} available" for n, c in present.items()))
    progressing = rolling or short
    return [
        _condition(previous, "Ready", not short, ready[0], ready[1], generation, now),
        _condition(previous, "Progressing", bool(progressing), "RollingOut" if progressing else "RolledOut",
                   "; ".join(progressing) if progressing else "every Deployment is up to date", generation, now),
        _condition(previous, "Degraded", False, "Reconciled", "the last reconcile succeeded", generation, now),
    ]


def failure_of(previous: Sequence[Mapping]) -> Failure | None:
    """The failure a previous status recorded (Degraded True), so a status refresh keeps it."""
    degraded = next((c for c in previous if c.get("type") == "Degraded"), None)
    if degraded is not None and degraded.get("status") == "True":
        return Failure(str(degraded.get("reason", "")), str(degraded.get("message", "")))
    return None
