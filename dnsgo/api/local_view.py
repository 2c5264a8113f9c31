"""
What the management API sees: the workers, their snapshots, the shared
cache, and how to clear caches.  :class:`LocalClusterView` is a single
process that is its own (only) worker; the control plane provides a view
over its registered workers (:class:`ControlClusterView`).
"""
import attrs
from twisted.internet import defer

from dnsgo.api.shared_status import shared_cache_status
from dnsgo.api.snapshot import worker_snapshot
from dnsgo.api.views import WorkerRecord
from dnsgo.cache.inspect import shared_entries
from dnsgo.dns.types import RRSET, parse_qtype
from dnsgo.invalidation.flush import Flush, apply_locally, flush_shared
from dnsgo.invalidation.strategies import SharedFlushFailed

_L2_TYPE = {"redis": "redis", "redis-sentinel": "redis-sentinel", "redis-cluster": "redis-cluster"}
_REPLICATION = {"redis": "none", "redis-sentinel": "sentinel", "redis-cluster": "cluster"}

#: ``GET /api/ha`` of a process that runs no high availability.
NO_HA = {"mode": "off", "role": "single", "term": 0, "leader": None, "site": None, "priority": None}


def architecture(config) -> dict:
    """The seed's ``architecture`` object, from the configuration."""
    cache = config.cache
    hybrid = cache.mode == "hybrid"
    shared_type = cache.shared_cache.type
    features = ["two-level-cache"]
    if cache.negative_cache.enabled:
        features.append("negative-caching")
    if cache.prefetch.enabled:
        features.append("prefetch")
    if cache.serve_stale.enabled:
        features.append("serve-stale")
    if cache.invalidation.strategy in ("pubsub", "broadcast"):
        features.append("distributed-invalidation")
    if hybrid:
        description = f"Hybrid mode: Local L1 message cache + Shared L2 {shared_type}"
    elif cache.mode == "local-only":
        description = "Local-only mode: Local L1 message cache + Local L2 RRset cache per worker"
    else:
        description = "Standalone mode: Local L1 message cache + Local L2 RRset cache"
    return {
        "description": description,
        "l1Type": "local-message-cache",
        "l2Type": _L2_TYPE[shared_type] if hybrid else "local-rrset-cache",
        "replication": _REPLICATION[shared_type] if hybrid else "none",
        "invalidation": cache.invalidation.strategy,
        "features": features,
    }


class RootView:
    """
    What the views of a process root share: the mode and architecture its
    configuration gives, and the shared cache's status (root.config,
    root.backend, root.shared_store).
    """

    def __init__(self, root, *, reactor) -> None:
        self._root = root
        self._reactor = reactor

    def mode(self) -> str:
        return self._root.config.cache.mode

    def architecture(self) -> dict:
        return architecture(self._root.config)

    def shared_cache(self) -> defer.Deferred:
        root = self._root
        return shared_cache_status(root.config, root.backend, root.shared_store, reactor=self._reactor)

    def ha(self) -> dict:
        """The high-availability state of a process without HA: a single, unreplicated one."""
        return dict(NO_HA)

    def shared_entries(self, name: str, type: str | None) -> defer.Deferred:
        """What the shared cache holds for ``name`` (of ``type``, or the usual types): a dict, or None without one."""
        dotted = name.rstrip(".").encode("ascii")
        return shared_entries(self._root.shared_store, dotted, parse_qtype(type) if type else None)


class LocalClusterView(RootView):
    """The management API's view of a single serving process."""

    def ready(self) -> bool:
        return bool(self._root.running and self._root.dns_service is not None and self._root.dns_service.running)

    def workers(self) -> list:
        ident = self._root.identity
        return [
            WorkerRecord(
                worker_id=ident.worker_id,
                cluster_name=ident.cluster_name,
                address=ident.address,
                status="healthy" if self.ready() else "unhealthy",
                last_heartbeat=self._reactor.seconds(),
                snapshot=worker_snapshot(self._root, self._reactor),
            )
        ]

    def clear(self, target, worker_ids, flush: Flush) -> defer.Deferred:
        """
        ``all`` goes through the invalidator (so pub/sub peers and the
        shared store hear of it), ``worker`` clears this process only,
        ``shared`` the shared store only.  Fires with {results, sharedCleared}.
        """
        root = self._root
        own = root.identity.worker_id
        if worker_ids:
            unknown = sorted(set(worker_ids) - {own})
            if unknown:
                raise KeyError(unknown)
        mine = [{"workerId": own, "success": True, "cleared": sorted(flush.caches)}]
        if target == "shared":
            d = flush_shared(root.shared_store, flush)
            d.addCallback(lambda cleared: {"results": [], "sharedCleared": cleared})
            return d
        if target == "worker":
            apply_locally(flush, root.caches)
            return defer.succeed({"results": mine, "sharedCleared": False})
        shared_wanted = root.shared_store is not None and RRSET in flush.caches
        d = root.invalidator.invalidate(flush)

        def failed(failure):
            failure.trap(SharedFlushFailed)
            return {"results": mine, "sharedCleared": False}

        d.addCallbacks(lambda _: {"results": mine, "sharedCleared": shared_wanted}, failed)
        return d

    def upstreams(self) -> list:
        return [
            {"workerId": self._root.identity.worker_id,
             "upstreams": [attrs.asdict(u) for u in self._root.infra.snapshot()]}
        ]

    def entries(self, worker_ids, name: str, type: str | None) -> defer.Deferred:
        """This process's L1 and L2 for ``name``: one worker result (KeyError for another worker id)."""
        self._check_ids(worker_ids)
        mine = {"workerId": self._root.identity.worker_id, "success": True,
                **self._root.cache_tools.inspect(name, type)}
        return defer.succeed([mine])

    def dump_shard(self, worker_id: str, shard: int) -> defer.Deferred:
        """The dump lines of L2 segment ``shard`` and the number of segments (KeyError for another worker id)."""
        self._check_ids([worker_id])
        lines, shards = self._root.cache_tools.dump_shard(shard)
        return defer.succeed(("".join(lines), shards))

    def load(self, worker_ids, chunks) -> defer.Deferred:
        """Load dump entry lines (in chunks) into L2: one worker result (KeyError for another worker id)."""
        self._check_ids(worker_ids)
        loaded = expired = 0
        for chunk in chunks:
            result = self._root.cache_tools.load(chunk)
            loaded, expired = loaded + result.loaded, expired + result.expired
        return defer.succeed([{"workerId": self._root.identity.worker_id, "success": True,
                               "loaded": loaded, "expired": expired}])

    def _check_ids(self, worker_ids) -> None:
        unknown = sorted(set(worker_ids or ()) - {self._root.identity.worker_id})
        if unknown:
            raise KeyError(unknown)
