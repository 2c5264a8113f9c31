"""
The JSON bodies of the management API, built from worker snapshots by pure
functions (no I/O, no clock): the seed's ``/api/cache/distributed`` object,
the worker list, the upstream list and the error body.

Numbers come from the snapshots as they are.  The aggregates are derived the
way the seed's example is (its numbers reproduce exactly):

* ``totalHits``/``totalMisses``: the sum over all listed workers of their
  message-cache and RRset-cache hits/misses, plus the shared cache's;
* ``totalSizeBytes``: the same sum of ``size_bytes``;
* ``averageHitRate``: ``100 * totalHits / (totalHits + totalMisses)``
  rounded to 2 places (a lookup-weighted rate, not a mean of rates), 0.0
  before any lookup;
* ``workerCount``: the number of workers listed, healthy or not.

A worker that has not reported a snapshot yet shows zero counters and a
null ``lastUpdated``.
"""
import datetime

import attrs

from dnsgo.cache.stats import hit_rate

#: The cache statistics the seed shows per worker, in its order.
CACHE_FIELDS = ("hits", "misses", "evicts", "hit_rate", "size_bytes", "max_size_bytes", "num_shards")

#: The shared-cache statistics the seed shows.
SHARED_STATS_FIELDS = ("hits", "misses", "hit_rate", "size_bytes")



@attrs.frozen
class WorkerRecord:
    """
    One worker as the API reports it (a WorkerView value): identity,
    liveness and its last stats snapshot (None before the first report).
    """

    worker_id: str
    cluster_name: str
    address: str
    status: str
    last_heartbeat: float | None
    snapshot: dict | None

def iso8601(value) -> str | None:
    """An epoch time as ``2024-01-15T10:30:00Z`` (UTC, whole seconds); strings and None pass through."""
    if value is None or isinstance(value, str):
        return value
    moment = datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cache_body(stats: dict | None) -> dict:
    """One cache's seed fields from a snapshot's ``messageCache``/``rrsetCache`` (zeros if absent)."""
    stats = stats or {}
    body = {field: stats.get(field, 0) for field in CACHE_FIELDS}
    if "hit_rate" not in stats:
        body["hit_rate"] = hit_rate(body["hits"], body["misses"])
    return body


def worker_body(worker) -> dict:
    """A worker's entry of the seed's ``workers`` list."""
    snapshot = worker.snapshot
    return {
        "workerId": worker.worker_id,
        "clusterName": worker.cluster_name,
        "address": worker.address,
        "status": worker.status,
        "messageCache": cache_body(snapshot and snapshot.get("messageCache")),
        "rrsetCache": cache_body(snapshot and snapshot.get("rrsetCache")),
        "lastUpdated": iso8601(snapshot.get("now", worker.last_heartbeat)) if snapshot else None,
    }


def shared_body(shared: dict | None) -> dict | None:
    """The seed's ``sharedCache`` object from ClusterView.shared_cache() (None: no shared cache)."""
    if shared is None:
        return None
    given = shared.get("stats") or {}
    stats = {field: given.get(field, 0) for field in SHARED_STATS_FIELDS}
    if "hit_rate" not in given:
        stats["hit_rate"] = hit_rate(stats["hits"], stats["misses"])
    if "keys" in given:  # beyond the seed's fields: the keys the shared cache holds (DBSIZE)
        stats["keys"] = given["keys"]
    return {
        "type": shared.get("type"),
        "address": shared.get("address"),
        "status": shared.get("status"),
        "stats": stats,
        "lastSync": iso8601(shared.get("lastSync")),
    }


def aggregated_body(workers: list[dict], shared: dict | None) -> dict:
    """The seed's ``aggregated`` object from built worker entries and shared-cache body."""
    parts = [w[layer] for w in workers for layer in ("messageCache", "rrsetCache")]
    if shared is not None:
        parts.append(shared["stats"])
    hits = sum(p["hits"] for p in parts)
    misses = sum(p["misses"] for p in parts)
    return {
        "totalHits": hits,
        "totalMisses": misses,
        "averageHitRate": hit_rate(hits, misses),
        "totalSizeBytes": sum(p["size_bytes"] for p in parts),
        "workerCount": len(workers),
    }


def distributed_body(mode: str, workers, shared: dict | None, architecture: dict) -> dict:
    """The whole ``GET /api/cache/distributed`` body, keys in the seed's order."""
    entries = [worker_body(w) for w in workers]
    shared_entry = shared_body(shared)
    return {
        "mode": mode,
        "workers": entries,
        "sharedCache": shared_entry,
        "aggregated": aggregated_body(entries, shared_entry),
        "architecture": architecture,
    }


def worker_detail(worker) -> dict:
    """A worker's entry of ``GET /api/workers``: identity, liveness and totals."""
    snap = worker.snapshot or {}
    shared = snap.get("sharedCache")
    started, now = snap.get("startedAt"), snap.get("now")
    return {
        "workerId": worker.worker_id,
        "clusterName": worker.cluster_name,
        "address": worker.address,
        "status": worker.status,
        "lastHeartbeat": iso8601(worker.last_heartbeat),
        "lastUpdated": iso8601(now),
        "version": snap.get("version"),
        "pid": snap.get("pid"),
        "startedAt": iso8601(started),
        "uptimeSeconds": round(now - started, 3) if started is not None and now is not None else None,
        "serving": snap.get("serving"),
        "mode": snap.get("mode"),
        "queries": sum(row[3] for row in snap.get("queries", ())) if worker.snapshot else None,
        "servfails": snap.get("servfails"),
        "prefetches": snap.get("prefetches"),
        "staleAnswers": snap.get("staleAnswers"),
        "sharedCache": (
            {"status": shared.get("status"), "breaker": (shared.get("breaker") or {}).get("state")}
            if shared else None
        ),
    }


def workers_body(workers) -> dict:
    """The ``GET /api/workers`` body."""
    return {"workers": [worker_detail(w) for w in workers]}


def upstreams_body(entries: list[dict]) -> dict:
    """The ``GET /api/upstreams`` body: ClusterView.upstreams() as it is."""
    return {"workers": [{"workerId": e["workerId"], "upstreams": list(e.get("upstreams", ()))} for e in entries]}


def error_body(error: str, reason: str) -> dict:
    """The body of every error response."""
    return {"error": error, "reason": reason}


def entries_body(req, results: list[dict], workers: dict, shared: dict | None) -> dict:
    """
    The body of ``GET /api/cache/entries``: the name and type asked, each
    worker's L1 and L2 (with its cluster name, and ``error`` when it did not
    answer), and the shared cache's entries (None without one).
    """
    shown = []
    for result in results:
        worker = workers.get(result["workerId"])
        shown.append({
            "workerId": result["workerId"],
            "clusterName": worker.cluster_name if worker is not None else "",
            "success": result["success"],
            "error": result.get("error"),
            "l1": result.get("l1", []),
            "l2": result.get("l2", []),
            "truncated": bool(result.get("truncated", False)),
        })
    name = req.name if req.name.endswith(".") else req.name + "."
    return {"name": name, "type": req.type, "workers": shown, "shared": shared}


def load_body(req, results: list[dict]) -> dict:
    """The body of ``POST /api/cache/load``: the dump's entry count and writer, and each worker's counts."""
    return {
        "entries": req.entries,
        "writtenBy": req.written_by,
        "results": [
            {"workerId": r["workerId"], "success": r["success"], "loaded": r.get("loaded", 0),
             "expired": r.get("expired", 0), "error": r.get("error")}
            for r in results
        ],
    }
