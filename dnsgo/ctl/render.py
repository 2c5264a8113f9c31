"""
The management API's bodies as text for people, one function per view.
Each takes the decoded JSON (docs/api.md) and returns the lines to print;
fields a body lacks show as ``-`` rather than failing, so an API a little
older or newer than dnsgoctl still prints.
"""
from __future__ import annotations

import datetime

from dnsgo.ctl.tables import count, duration, millis, pairs, percent, size, table

#: Caches of a worker in /api/cache/distributed, as the tables name them.
WORKER_CACHES = (("messageCache", "L1 message"), ("rrsetCache", "L2 rrset"))


def ha_text(ha: dict | None) -> str:
    """The HA line of ``status``: role, then term, leader and site when there are any."""
    if ha is None:
        return "unknown (this API has no /api/ha)"
    role = ha.get("role") or "-"
    if ha.get("mode") in (None, "off"):
        return f"{role} (HA off)"
    details = [f"term {ha.get('term', '-')}", f"leader {ha.get('leader') or 'none'}"]
    if ha.get("site"):
        details.append(f"site {ha['site']}")
    if ha.get("priority") is not None:
        details.append(f"priority {ha['priority']}")
    return f"{role} ({', '.join(details)})"


def shared_text(shared: dict | None) -> str:
    """The shared cache in one phrase."""
    if not shared:
        return "none"
    stats = shared.get("stats") or {}
    return (f"{shared.get('status', '-')}, {shared.get('type', '-')} at {shared.get('address', '-')}, "
            f"hit rate {percent(stats.get('hit_rate'))}")


def status(distributed: dict, ha: dict | None, workers: dict) -> str:
    """``dnsgoctl status``: the cluster at a glance, then one line per worker."""
    listed = distributed.get("workers") or []
    healthy = sum(1 for w in listed if w.get("status") == "healthy")
    aggregated = distributed.get("aggregated") or {}
    lookups = (aggregated.get("totalHits") or 0) + (aggregated.get("totalMisses") or 0)
    head = pairs([
        ("mode", distributed.get("mode")),
        ("HA", ha_text(ha)),
        ("workers", f"{len(listed)} ({healthy} healthy)"),
        ("hit rate", f"{percent(aggregated.get('averageHitRate'))} of {lookups} lookups, all caches"),
        ("shared cache", shared_text(distributed.get("sharedCache"))),
    ])
    details = {w.get("workerId"): w for w in workers.get("workers") or []}
    rows = []
    for w in listed:
        more = details.get(w.get("workerId"), {})
        rows.append([
            w.get("workerId"), w.get("clusterName") or None, w.get("status"), more.get("queries"),
            percent((w.get("messageCache") or {}).get("hit_rate")),
            percent((w.get("rrsetCache") or {}).get("hit_rate")),
            duration(more.get("uptimeSeconds")),
        ])
    if not rows:
        return head + "\n\nno workers"
    return head + "\n\n" + table(["WORKER", "CLUSTER", "STATUS", "QUERIES", "L1 HIT", "L2 HIT", "UPTIME"],
                                 rows, right=(3, 4, 5, 6))


def stats(distributed: dict) -> str:
    """``dnsgoctl stats``: every cache of every worker, the shared cache, and the totals."""
    rows = []
    for w in distributed.get("workers") or []:
        for key, label in WORKER_CACHES:
            c = w.get(key) or {}
            rows.append([w.get("workerId"), label, count(c.get("hits")), count(c.get("misses")),
                         count(c.get("evicts")), percent(c.get("hit_rate")), size(c.get("size_bytes")),
                         size(c.get("max_size_bytes"))])
    shared = distributed.get("sharedCache")
    if shared:
        s = shared.get("stats") or {}
        rows.append(["(shared)", shared.get("type") or "shared", count(s.get("hits")), count(s.get("misses")),
                     None, percent(s.get("hit_rate")), size(s.get("size_bytes")), None])
    a = distributed.get("aggregated") or {}
    n = a.get("workerCount")
    rows.append(["(total)", f"{count(n)} worker{'' if n == 1 else 's'}", count(a.get("totalHits")),
                 count(a.get("totalMisses")), None, percent(a.get("averageHitRate")),
                 size(a.get("totalSizeBytes")), None])
    return (f"mode {distributed.get('mode', '-')}\n\n"
            + table(["WORKER", "CACHE", "HITS", "MISSES", "EVICTS", "HIT RATE", "SIZE", "MAX SIZE"],
                    rows, right=(2, 3, 4, 5, 6, 7)))


def workers(body: dict, now: datetime.datetime) -> str:
    """``dnsgoctl workers``: identity, liveness and totals of each worker."""
    rows = []
    for w in body.get("workers") or []:
        shared = w.get("sharedCache")
        rows.append([
            w.get("workerId"), w.get("clusterName") or None, w.get("address"), w.get("status"), w.get("mode"),
            w.get("pid"), duration(w.get("uptimeSeconds")), w.get("queries"), w.get("servfails"),
            age(w.get("lastHeartbeat"), now), shared.get("status") if shared else None,
        ])
    if not rows:
        return "no workers"
    return table(["WORKER", "CLUSTER", "ADDRESS", "STATUS", "MODE", "PID", "UPTIME", "QUERIES", "SERVFAILS",
                  "HEARTBEAT", "SHARED"], rows, right=(5, 6, 7, 8, 9))


def upstreams(body: dict) -> str:
    """``dnsgoctl upstreams``: each worker's upstreams as its infrastructure cache sees them."""
    rows = []
    for w in body.get("workers") or []:
        for u in w.get("upstreams") or []:
            rate = u.get("success_rate")
            rows.append([
                w.get("workerId"), u.get("address"), u.get("health"), millis(u.get("srtt_ms")),
                millis(u.get("rto_ms")), u.get("in_flight"), u.get("queries"), u.get("failures"),
                u.get("consecutive_failures"), percent(None if rate is None else 100 * rate),
            ])
    if not rows:
        return "no upstreams reported"
    return table(["WORKER", "UPSTREAM", "HEALTH", "SRTT MS", "RTO MS", "IN FLIGHT", "QUERIES", "FAILURES",
                  "CONSEC FAIL", "SUCCESS"], rows, right=(3, 4, 5, 6, 7, 8, 9))


def flush(what: str, result: dict) -> str:
    """
    ``dnsgoctl flush``: what was asked, then each worker's result, and the
    shared cache's when it was cleared, or when it must be what failed
    (the flush failed while every worker cleared).
    """
    results = result.get("results") or []
    rows = [[r.get("workerId"), "ok" if r.get("success") else "FAILED", ", ".join(r.get("cleared") or []) or None]
            for r in results]
    if result.get("sharedCleared"):
        rows.append(["(shared)", "ok", "rrset"])
    elif not result.get("success") and all(r.get("success") for r in results):
        rows.append(["(shared)", "FAILED", None])
    verdict = "flushed" if result.get("success") else "flush FAILED in part:"
    head = f"{verdict} {what} ({count(result.get('clearedCount'))} of {len(results)} workers cleared)"
    if not rows:
        return head
    return head + "\n\n" + table(["WORKER", "RESULT", "CLEARED"], rows)


def lookup(body: dict) -> str:
    """``dnsgoctl lookup``: one line per record held, by level (L1, L2, shared) and worker."""
    rows = []
    notes = []
    for w in body.get("workers") or []:
        worker = w.get("workerId")
        if not w.get("success", True):
            rows.append(["-", worker, None, None, f"error: {w.get('error') or 'no answer'}", None])
            continue
        for entry in w.get("l1") or []:
            info = " ".join(x for x in (entry.get("rcode"), entry.get("flags") or None,
                                        "stale" if entry.get("stale") else None) if x)
            rows.extend(_entry_rows("L1", worker, entry, info))
        for entry in w.get("l2") or []:
            info = " ".join(str(x) for x in (entry.get("kind"), entry.get("rank"),
                                             f"from {entry['source']}" if entry.get("source") else None) if x)
            rows.extend(_entry_rows("L2", worker, entry, info))
        if w.get("truncated"):
            notes.append(f"{worker}: more entries than shown (the API bounds the answer)")
    shared = body.get("shared")
    if shared is not None:
        if not shared.get("reachable", True):
            rows.append(["shared", None, None, None, "error: not reachable", None])
        for entry in shared.get("entries") or []:
            rows.extend(_entry_rows("shared", None, entry, entry.get("kind") or ""))
    asked = body.get("name", "") + (f" {body['type']}" if body.get("type") else "")
    if not rows:
        return f"nothing cached for {asked}"
    text = table(["LEVEL", "WORKER", "TYPE", "TTL", "INFO", "RECORDS"], rows, right=(3,))
    return "\n".join([text, *notes])


def _entry_rows(level: str, worker: str | None, entry: dict, info: str) -> list[list]:
    """The rows of one cache entry: its fields and first record, then one row per further record."""
    records = entry.get("records") or [None]
    first = [level, worker, entry.get("type"), entry.get("ttl"), info or None, records[0]]
    return [first] + [["", "", "", "", "", r] for r in records[1:]]


def load(body: dict) -> str:
    """``dnsgoctl load``: what each worker loaded and skipped."""
    rows = [[r.get("workerId"), "ok" if r.get("success") else "FAILED", r.get("loaded"), r.get("expired"),
             r.get("error")] for r in body.get("results") or []]
    head = f"a dump of {body.get('writtenBy') or 'a worker'} with {count(body.get('entries'))} entries"
    if not rows:
        return f"{head}: no worker loaded it"
    return f"{head}:\n\n" + table(["WORKER", "RESULT", "LOADED", "EXPIRED", "ERROR"], rows, right=(2, 3))


def age(timestamp: str | None, now: datetime.datetime) -> str:
    """How long ago an API timestamp (``2024-01-15T10:30:00Z``) was: ``3s ago``; ``-`` when absent or unreadable."""
    if not timestamp:
        return "-"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return str(timestamp)
    if then.tzinfo is None:
        then = then.replace(tzinfo=datetime.timezone.utc)
    return f"{duration(max(0.0, (now - then).total_seconds()))} ago"
