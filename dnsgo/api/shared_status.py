"""
The management API's ``sharedCache`` object: the backend's status plus
figures read from Redis itself (INFO and DBSIZE), so they are the same
whichever process asks.
"""
from datetime import datetime, timezone

from twisted.internet import defer

from dnsgo.cache.stats import hit_rate


def shared_cache_status(config, backend, store=None, *, reactor) -> defer.Deferred:
    """
    Fires with {type, address, status, stats{hits, misses, hit_rate, size_bytes, keys}, lastSync}, or None.
    ``lastSync`` is the time of ``reactor``'s clock when Redis answered.
    """
    if backend is None:
        return defer.succeed(None)
    status = backend.status()
    base = {"type": status.type, "address": status.address, "status": status.status}

    def with_info(info):
        hits = int(info.get("keyspace_hits", 0))
        misses = int(info.get("keyspace_misses", 0))
        return {
            **base,
            "stats": {
                "hits": hits,
                "misses": misses,
                "hit_rate": hit_rate(hits, misses),
                "size_bytes": int(info.get("used_memory", 0)),
                "keys": int(info.get("keys", 0)),
            },
            "lastSync": datetime.fromtimestamp(reactor.seconds(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def without_info(_failure):
        return {**base, "status": "unavailable",
                "stats": {"hits": 0, "misses": 0, "hit_rate": 0.0, "size_bytes": 0, "keys": 0}, "lastSync": None}

    d = backend.info()
    d.addCallbacks(with_info, without_info)
    return d
