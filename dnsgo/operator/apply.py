"""
Making the cluster hold a :class:`~dnsgo.operator.desired.DesiredState`.

Every step is idempotent, since the same event can be handled twice (after
a restart, or by an API server that sets no resourceVersion): each object
is created, and when it exists (409) it is patched with a JSON merge patch,
but only when it is ours (its ownerReferences name this DNSCluster's uid)
and differs from what is wanted.  An object of that name owned by someone
else is never touched: that is an error for the DNSCluster's status.
Objects a placement no longer wants are deleted, again only when ours.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from dnsgo.operator.desired import DesiredState
from dnsgo.operator.kinds import Kind
from dnsgo.operator.kube import KubeApi


class NotOwned(Exception):
    """An object the DNSCluster needs exists and belongs to something else."""

    def __init__(self, kind: Kind, namespace: str, name: str) -> None:
        super().__init__(kind.kind, namespace, name)
        self.kind = kind
        self.namespace = namespace
        self.name = name

    def __str__(self) -> str:
        return (f"{self.kind.kind} {self.namespace}/{self.name} exists and is not owned by this DNSCluster; "
                "rename or delete it")


@attrs.frozen
class Applied:
    """What happened to one object: ``created``, ``patched``, ``unchanged``, ``kept`` or ``deleted``."""

    kind: Kind
    name: str
    action: str


def contains(live: Any, wanted: Any) -> bool:
    """Whether ``live`` already has every value of ``wanted`` (mappings compared key by key, lists whole)."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(
            contains(a, b) for a, b in zip(live, wanted))
    return live == wanted


def owned_by(obj: Mapping, uid: str) -> bool:
    """Whether ``obj`` names ``uid`` among its ownerReferences."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


async def apply_state(kube: KubeApi, namespace: str, uid: str, state: DesiredState) -> list[Applied]:
    """Create or patch every wanted object and delete the unwanted ones; what was done, in order."""
    done: list[Applied] = []
    for desired in state.objects:
        if await kube.create(desired.kind, namespace, desired.body) is not None:
            done.append(Applied(desired.kind, desired.name, "created"))
            continue
        live = await kube.get(desired.kind, namespace, desired.name)
        if live is None:  # deleted since the 409: next time
            done.append(Applied(desired.kind, desired.name, "kept"))
            continue
        if not owned_by(live, uid):
            raise NotOwned(desired.kind, namespace, desired.name)
        if desired.patch is None:
            done.append(Applied(desired.kind, desired.name, "kept"))
        elif contains(live, desired.patch):
            done.append(Applied(desired.kind, desired.name, "unchanged"))
        else:
            await kube.patch(desired.kind, namespace, desired.name, desired.patch)
            done.append(Applied(desired.kind, desired.name, "patched"))
    for kind, name in state.absent:
        live = await kube.get(kind, namespace, name)
        if live is not None and owned_by(live, uid) and await kube.delete(kind, namespace, name):
            done.append(Applied(kind, name, "deleted"))
    return done
