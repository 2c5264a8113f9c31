"""
High availability's fence on the control plane's writes to Redis
(``docs/ha.md#redis``): the compare-and-set of ``cp:term`` on a real
redis-server (single and Cluster), and the control plane's shared-cache
flush, which a stale term does not get to run.
"""
import attrs
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from dnsgo.api.control_view import ControlClusterView
from dnsgo.config import Config
from dnsgo.invalidation.flush import Flush
from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.cluster import ClusterRedis
from dnsgo.redis.guard import Guard
from dnsgo.redis.single import SingleRedis
from tests.e2e.test_redis_cluster import start_cluster
from tests.support.redis_procs import SKIP, RedisServer, cli

KEY = b"dns:cp:term"


class RecordingStore:
    """A shared store that remembers the flushes it was asked for."""

    def __init__(self) -> None:
        self.flushes = []

    def flush(self, name, qtype, subtree):
        self.flushes.append((name, qtype, subtree))
        return defer.succeed(1)


class FencedControl:
    """A control service whose clears reach no worker, at a given term."""

    def __init__(self, term: int) -> None:
        self.term = term

    def fenced(self) -> dict:
        return {"term": self.term}

    def clear_cache(self, worker_ids, flush):
        return defer.succeed([])


@attrs.define
class Root:
    """What ControlClusterView reads of a control-plane root."""

    config: object
    control: object
    backend: object
    shared_store: object
    registry: object = None


class SingleTests(TestCase):
    """One redis-server."""

    skip = SKIP

    def setUp(self):
        self.server = RedisServer().start()
        self.addCleanup(self.server.stop)
        guard = Guard(CircuitBreaker(reactor=reactor), reactor=reactor)
        self.backend = SingleRedis(("127.0.0.1", self.server.port), pool_size=2, guard=guard, reactor=reactor)
        self.addCleanup(self.backend.stop)
        return self.backend.start()

    @defer.inlineCallbacks
    def test_term_only_rises(self):
        self.assertEqual((yield self.backend.raise_term(KEY, 3)), 3)
        self.assertEqual((yield self.backend.raise_term(KEY, 3)), 3)
        self.assertEqual((yield self.backend.raise_term(KEY, 2)), 3)  # a stale term: refused
        self.assertEqual(cli(self.server.port, "GET", KEY.decode()), "3")
        self.assertEqual((yield self.backend.raise_term(KEY, 7)), 7)
        self.assertEqual(cli(self.server.port, "GET", KEY.decode()), "7")

    @defer.inlineCallbacks
    def test_stale_control_plane_does_not_flush_the_shared_cache(self):
        store = RecordingStore()
        flush = Flush.from_json({"name": "www.example.test.", "caches": ["rrset"]})
        new = ControlClusterView(Root(Config(), FencedControl(5), self.backend, store), reactor=reactor)
        old = ControlClusterView(Root(Config(), FencedControl(4), self.backend, store), reactor=reactor)
        body = yield new.clear("all", None, flush)
        self.assertTrue(body["sharedCleared"])
        self.assertEqual(len(store.flushes), 1)
        body = yield old.clear("all", None, flush)
        self.assertFalse(body["sharedCleared"])
        self.assertEqual(len(store.flushes), 1)  # the stale one flushed nothing
        self.assertEqual(cli(self.server.port, "GET", KEY.decode()), "5")


class ClusterTests(TestCase):
    """A Redis Cluster: the EVAL goes to the master of the key's slot."""

    skip = SKIP

    def setUp(self):
        self.cluster = start_cluster()
        self.addCleanup(self.cluster.stop)
        guard = Guard(CircuitBreaker(reactor=reactor), reactor=reactor)
        self.backend = ClusterRedis([("127.0.0.1", n.port) for n in self.cluster.nodes[:3]], pool_size=2,
                                    guard=guard, reactor=reactor)
        self.addCleanup(self.backend.stop)
        return self.backend.start()

    @defer.inlineCallbacks
    def test_term_only_rises(self):
        self.assertEqual((yield self.backend.raise_term(KEY, 2)), 2)
        self.assertEqual((yield self.backend.raise_term(KEY, 1)), 2)
        self.assertEqual((yield self.backend.raise_term(KEY, 9)), 9)
