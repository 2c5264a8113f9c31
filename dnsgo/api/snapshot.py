"""
The stats snapshot of a serving process: what a worker reports in its
heartbeats to the control plane and what the management API and the
metrics are built from (``docs/control-protocol.md``).
"""
import os

import attrs

import dnsgo


def cache_stats_dict(stats) -> dict:
    """A CacheStats value as the seed's JSON fields (plus entries)."""
    return attrs.asdict(stats)


def worker_snapshot(root, reactor) -> dict:
    """The stats snapshot of a running ServerRoot at ``reactor``'s time (see docs/control-protocol.md)."""
    handler = root.handler
    caches = root.caches
    ident = root.identity
    return {
        "workerId": ident.worker_id,
        "clusterName": ident.cluster_name,
        "address": ident.address,
        "version": dnsgo.__version__,
        "pid": os.getpid(),
        "startedAt": ident.started_at,
        "now": reactor.seconds(),
        "serving": bool(root.running),  # Service.running is 0/1
        "mode": root.config.cache.mode,
        "messageCache": cache_stats_dict(caches.messages.stats()),
        "rrsetCache": cache_stats_dict(caches.rrsets.stats()),
        "queries": handler.stats.rows(),
        "latency": handler.stats.latency.as_dict(),
        "prefetches": handler.counters["prefetch"],
        "staleAnswers": handler.counters["stale"],
        "servfails": handler.counters["servfail"],
        "upstreams": [attrs.asdict(u) for u in root.infra.snapshot()],
        "upstreamPool": attrs.asdict(root.pool.stats),
        "sharedCache": shared_snapshot(root.backend, root.shared_store),
        "invalidation": attrs.asdict(root.invalidator.stats()),
    }


def shared_snapshot(backend, store) -> dict | None:
    """The shared cache's part of the snapshot: the backend's status and the store's counters (None outside hybrid mode)."""
    if backend is None:
        return None
    stats = attrs.asdict(store.stats()) if store is not None else {}
    return {**attrs.asdict(backend.status()), **stats}
