"""
A fake ClusterView and stats snapshots for the management API and metrics
tests, plus a way to serve the API (through its own Site, as dnsgo.app.roles
does) on 127.0.0.1 and call it over HTTP.
"""
import copy
import json
import threading

import attrs
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


#: 2024-01-15T10:30:00Z, the seed's lastUpdated.
SEED_TIME = 1705314600.0


def snapshot(worker_id: str = "worker-1", **overrides) -> dict:
    """A worker stats snapshot shaped as dnsgo.api.snapshot.worker_snapshot() makes them."""
    snap = {
        "workerId": worker_id, "clusterName": "site-a", "address": "10.0.0.10:53", "version": "0.1.0",
        "pid": 1234, "startedAt": SEED_TIME - 100.0, "now": SEED_TIME, "serving": True, "mode": "hybrid",
        "messageCache": {"hits": 150000, "misses": 5000, "evicts": 100, "hit_rate": 96.77,
                         "size_bytes": 52428800, "max_size_bytes": 67108864, "num_shards": 32, "entries": 900},
        "rrsetCache": {"hits": 10000, "misses": 5000, "evicts": 50, "hit_rate": 66.67,
                       "size_bytes": 104857600, "max_size_bytes": 134217728, "num_shards": 64, "entries": 4000},
        "queries": [["NOERROR", "A", "udp", 12], ["NXDOMAIN", "AAAA", "tcp", 3]],
        "latency": {"buckets": [0.001, 0.01, 0.1], "counts": [5, 3, 1, 1], "sum": 1.5, "count": 10},
        "prefetches": 7, "staleAnswers": 2, "servfails": 1,
        "upstreams": [{"address": "127.0.0.1:53", "srtt_ms": 1.5, "in_flight": 0, "consecutive_failures": 0,
                       "success_rate": 1.0, "last_response": SEED_TIME - 1, "health": "healthy",
                       "next_probe": None, "queries": 10, "failures": 2, "rto_ms": 50.0}],
        "upstreamPool": {"queries": 12, "retransmits": 4, "late": 1, "tcp_fallback": 2, "timeouts": 5,
                         "no_socket": 0, "spoofed": 3, "malformed": 1},
        "sharedCache": {"type": "redis", "address": "127.0.0.1:6379", "status": "connected", "master": None,
                        "last_error": None,
                        "breaker": {"state": "open", "consecutive_failures": 5, "opened_at": SEED_TIME,
                                    "next_probe": None, "trips": 3},
                        "hits": 40, "misses": 60, "corrupt": 1, "errors": 4, "writes": 9, "dropped_writes": 2,
                        "latency": {"buckets": [0.001, 0.005], "counts": [8, 1, 1], "sum": 0.02, "count": 10}},
        "invalidation": {"strategy": "pubsub"},
    }
    snap.update(overrides)
    return snap


SEED_SHARED = {
    "type": "redis-cluster", "address": "redis-cluster:6379", "status": "connected",
    "stats": {"hits": 500000, "misses": 25000, "hit_rate": 95.24, "size_bytes": 268435456},
    "lastSync": SEED_TIME,
}

SEED_ARCHITECTURE = {
    "description": "Hybrid mode: Local L1 message cache + Shared L2 Redis cluster",
    "l1Type": "local-message-cache", "l2Type": "redis-cluster", "replication": "cluster",
    "invalidation": "pubsub",
    "features": ["two-level-cache", "negative-caching", "prefetch", "distributed-invalidation"],
}


@attrs.define
class FakeWorker:
    """A WorkerView."""

    worker_id: str
    cluster_name: str = "site-a"
    address: str = "10.0.0.10:53"
    status: str = "healthy"
    last_heartbeat: float | None = SEED_TIME
    snapshot: dict | None = None


class FakeCluster:
    """
    A ClusterView over a fixed list of workers.  ``clear`` records its calls,
    builds the Flush the real views build (so it raises as they do for what
    the flush refuses), and answers that every asked worker cleared
    (``failing`` lists those that did not); ``broken`` makes workers() raise;
    ``threads`` records the thread of every workers() call.
    """

    def __init__(self, workers=(), mode="hybrid", shared=None, ready=True, failing=(), shared_cleared=True):
        self.worker_list = list(workers)
        self.mode_name = mode
        self.shared = shared
        self.is_ready = ready
        self.failing = set(failing)
        self.shared_cleared = shared_cleared
        self.clears = []
        self.broken = None
        self.shared_error = None
        self.vanished = set()
        self.threads = []
        #: What ha() answers (GET /api/ha).
        self.ha_state = {"mode": "off", "role": "single", "term": 0, "leader": None, "site": None, "priority": None}

    def mode(self):
        return self.mode_name

    def architecture(self):
        return copy.deepcopy(SEED_ARCHITECTURE)

    def ready(self):
        return self.is_ready

    def workers(self):
        self.threads.append(threading.current_thread())
        if self.broken is not None:
            raise self.broken
        return list(self.worker_list)

    def shared_cache(self):
        if self.shared_error is not None:
            return defer.fail(self.shared_error)
        return defer.succeed(copy.deepcopy(self.shared))

    def clear(self, target, worker_ids, flush):
        self.clears.append((target, worker_ids, flush))
        cache_types = sorted(flush.caches)
        unknown = [w for w in worker_ids or () if w in self.vanished]
        if unknown:
            raise KeyError(unknown)
        if target == "shared":
            asked = []
        elif target == "worker":
            asked = worker_ids
        else:
            asked = [w.worker_id for w in self.worker_list]
        results = [
            {"workerId": w, "success": w not in self.failing, "cleared": [] if w in self.failing else list(cache_types)}
            for w in asked
        ]
        shared = target in ("all", "shared") and self.mode_name == "hybrid" and "rrset" in cache_types
        return defer.succeed({"results": results, "sharedCleared": shared and self.shared_cleared})

    def upstreams(self):
        return [{"workerId": w.worker_id, "upstreams": (w.snapshot or {}).get("upstreams", [])}
                for w in self.worker_list]

    def ha(self):
        return dict(self.ha_state)

    def entries(self, worker_ids, name, type):
        ids = worker_ids or [w.worker_id for w in self.worker_list]
        return defer.succeed([{"workerId": w, "success": True, "l1": [], "l2": [], "truncated": False} for w in ids])

    def shared_entries(self, name, type):
        return defer.succeed(None if self.mode_name != "hybrid" else {"reachable": True, "entries": []})

    #: The dump lines of each L2 segment of every fake worker (two segments, one entry).
    dump_segments = (
        '{"name":"www.example.com.","type":"A","class":1,"owner":"www.example.com.","kind":"rrset",'
        '"rank":"answer","expires":4000000000.0,"rdata":["wAACAQ=="]}\n',
        "",
    )

    def dump_shard(self, worker_id, shard):
        return defer.succeed((self.dump_segments[shard], len(self.dump_segments)))

    def load(self, worker_ids, chunks):
        ids = worker_ids or [w.worker_id for w in self.worker_list]
        count = sum(chunk.count("\n") + 1 for chunk in chunks if chunk)
        return defer.succeed([{"workerId": w, "success": True, "loaded": count, "expired": 0} for w in ids])


def serve(testcase, api, **site_options) -> int:
    """
    Serve the ManagementAPI ``api`` with its Site (``api.site(**site_options)``)
    on 127.0.0.1, an OS-chosen port, until the test ends; return the port.
    """
    return serve_site(testcase, api.site(**site_options))


def serve_site(testcase, site) -> int:
    """Listen with ``site`` on 127.0.0.1 (an OS-chosen port) until the test ends; return the port."""
    from twisted.internet import reactor

    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


@implementer(IBodyProducer)
class _Body:
    """A request body from bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


@attrs.frozen
class Reply:
    """An HTTP response: status, headers (twisted Headers) and body."""

    status: int
    headers: object
    body: bytes

    def json(self):
        """The body decoded as JSON."""
        return json.loads(self.body)

    def header(self, name: bytes) -> bytes | None:
        """The first value of a response header."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


@defer.inlineCallbacks
def call(port: int, method: bytes, path: bytes, token: str | None = None, body=None, headers=None):
    """Send one request (``body`` bytes, or a JSON-able value) and fire with a Reply."""
    from twisted.internet import reactor

    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    h = Headers(headers or {})
    if token is not None:
        h.addRawHeader(b"Authorization", b"Bearer " + token.encode())
    producer = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.addRawHeader(b"Content-Type", b"application/json")
        producer = _Body(data)
    response = yield agent.request(method, b"http://127.0.0.1:%d%s" % (port, path), h, producer)
    data = yield readBody(response)
    return Reply(response.code, response.headers, data)
