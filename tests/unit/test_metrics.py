"""
Tests of dnsgo.api.metrics: snapshots turned into Prometheus families at scrape
time, parsed back with prometheus_client's own parser.
"""
import threading

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.trial import unittest

from dnsgo.api.metrics import ClusterMetrics, SnapshotCollector, capture, cumulative_buckets
from tests.support.api_fakes import SEED_SHARED, SEED_TIME, FakeCluster, FakeWorker, snapshot


def samples(text: bytes) -> dict:
    """{(sample name, sorted label items): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: bytes) -> dict:
    """{family name: type}."""
    return {f.name: f.type for f in text_string_to_metric_families(text.decode("utf-8"))}


def scrape(workers, shared=None) -> bytes:
    """Render a cluster synchronously through a registry holding a pinned SnapshotCollector."""
    from prometheus_client import CollectorRegistry

    collector = SnapshotCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    collector.pin(capture(workers, shared))
    return generate_latest(registry)


def labels(**kw):
    return tuple(sorted(kw.items()))


class BucketTests(unittest.SynchronousTestCase):
    """Histogram conversion."""

    def test_cumulative(self):
        """Per-bucket counts become cumulative le buckets ending with +Inf = the total."""
        h = {"buckets": [0.001, 0.01, 0.1], "counts": [5, 0, 3, 2], "sum": 1.0, "count": 10}
        self.assertEqual(cumulative_buckets(h), [("0.001", 5), ("0.01", 5), ("0.1", 8), ("+Inf", 10)])


class FamilyTests(unittest.SynchronousTestCase):
    """The series of one scrape."""

    def setUp(self):
        self.workers = [
            FakeWorker("w1", snapshot=snapshot("w1")),
            FakeWorker("w2", status="unhealthy", last_heartbeat=SEED_TIME - 60),
        ]
        self.text = scrape(self.workers, SEED_SHARED)
        self.s = samples(self.text)

    def test_types(self):
        """Counters are counters (named *_total), gauges gauges, latencies histograms."""
        types = families(self.text)
        for name in ("dnsgo_queries", "dnsgo_cache_hits", "dnsgo_cache_misses", "dnsgo_cache_evictions",
                     "dnsgo_prefetches", "dnsgo_stale_answers", "dnsgo_servfails", "dnsgo_upstream_failures",
                     "dnsgo_upstream_queries", "dnsgo_redis_errors", "dnsgo_redis_breaker_trips"):
            self.assertEqual(types[name], "counter", name)
        for name in ("dnsgo_workers", "dnsgo_cache_size_bytes", "dnsgo_cache_entries", "dnsgo_upstream_rtt_seconds",
                     "dnsgo_redis_breaker_state", "dnsgo_shared_cache_size_bytes", "dnsgo_worker_healthy"):
            self.assertEqual(types[name], "gauge", name)
        for name in ("dnsgo_answer_latency_seconds", "dnsgo_redis_latency_seconds"):
            self.assertEqual(types[name], "histogram", name)
        self.assertTrue(all(name.startswith("dnsgo_") for name in types))

    def test_queries(self):
        """Queries are counted by worker, rcode, qtype and protocol."""
        self.assertEqual(self.s[("dnsgo_queries_total", labels(worker="w1", rcode="NOERROR", qtype="A", protocol="udp"))], 12)
        self.assertEqual(self.s[("dnsgo_queries_total", labels(worker="w1", rcode="NXDOMAIN", qtype="AAAA", protocol="tcp"))], 3)

    def test_caches(self):
        """Cache counters and gauges per layer, the shared layer from the worker's Redis counters."""
        self.assertEqual(self.s[("dnsgo_cache_hits_total", labels(worker="w1", layer="message"))], 150000)
        self.assertEqual(self.s[("dnsgo_cache_misses_total", labels(worker="w1", layer="rrset"))], 5000)
        self.assertEqual(self.s[("dnsgo_cache_hits_total", labels(worker="w1", layer="shared"))], 40)
        self.assertEqual(self.s[("dnsgo_cache_misses_total", labels(worker="w1", layer="shared"))], 60)
        self.assertEqual(self.s[("dnsgo_cache_evictions_total", labels(worker="w1", layer="message"))], 100)
        self.assertEqual(self.s[("dnsgo_cache_size_bytes", labels(worker="w1", layer="rrset"))], 104857600)
        self.assertEqual(self.s[("dnsgo_cache_max_size_bytes", labels(worker="w1", layer="message"))], 67108864)
        self.assertEqual(self.s[("dnsgo_cache_entries", labels(worker="w1", layer="rrset"))], 4000)
        self.assertEqual(self.s[("dnsgo_shared_cache_size_bytes", labels(type="redis-cluster", address="redis-cluster:6379"))],
                         268435456)

    def test_latency_histogram(self):
        """The answer latency is a cumulative histogram with its sum and count."""
        w1 = labels(worker="w1")
        self.assertEqual(self.s[("dnsgo_answer_latency_seconds_bucket", labels(worker="w1", le="0.001"))], 5)
        self.assertEqual(self.s[("dnsgo_answer_latency_seconds_bucket", labels(worker="w1", le="0.01"))], 8)
        self.assertEqual(self.s[("dnsgo_answer_latency_seconds_bucket", labels(worker="w1", le="0.1"))], 9)
        self.assertEqual(self.s[("dnsgo_answer_latency_seconds_bucket", labels(worker="w1", le="+Inf"))], 10)
        self.assertEqual(self.s[("dnsgo_answer_latency_seconds_count", w1)], 10)
        self.assertEqual(self.s[("dnsgo_answer_latency_seconds_sum", w1)], 1.5)

    def test_upstreams(self):
        """Upstream RTT is a gauge in seconds; failures a counter; both labelled by upstream."""
        up = labels(worker="w1", upstream="127.0.0.1:53")
        self.assertAlmostEqual(self.s[("dnsgo_upstream_rtt_seconds", up)], 0.0015)
        self.assertEqual(self.s[("dnsgo_upstream_failures_total", up)], 2)
        self.assertEqual(self.s[("dnsgo_upstream_queries_total", up)], 10)
        self.assertEqual(self.s[("dnsgo_upstream_healthy", up)], 1)

    def test_upstream_pool_counters(self):
        """The pool's retransmits, late replies, TCP fallbacks and the rest are per-worker counters."""
        me = labels(worker="w1")
        for name, value in (("dnsgo_upstream_retransmits_total", 4), ("dnsgo_upstream_late_replies_total", 1),
                            ("dnsgo_upstream_tcp_fallbacks_total", 2), ("dnsgo_upstream_timeouts_total", 5),
                            ("dnsgo_upstream_no_socket_total", 0), ("dnsgo_upstream_spoofed_total", 3),
                            ("dnsgo_upstream_malformed_total", 1)):
            self.assertEqual(self.s[(name, me)], value, name)

    def test_redis(self):
        """Breaker state open is 2; trips, errors and the Redis latency histogram are reported."""
        w1 = labels(worker="w1")
        self.assertEqual(self.s[("dnsgo_redis_breaker_state", w1)], 2)
        self.assertEqual(self.s[("dnsgo_redis_breaker_trips_total", w1)], 3)
        self.assertEqual(self.s[("dnsgo_redis_errors_total", w1)], 4)
        self.assertEqual(self.s[("dnsgo_redis_dropped_writes_total", w1)], 2)
        self.assertEqual(self.s[("dnsgo_redis_latency_seconds_bucket", labels(worker="w1", le="0.005"))], 9)
        self.assertEqual(self.s[("dnsgo_redis_latency_seconds_count", w1)], 10)

    def test_breaker_states(self):
        """Closed is 0 and half-open 1."""
        for state, value in (("closed", 0), ("half-open", 1)):
            snap = snapshot("w")
            snap["sharedCache"]["breaker"]["state"] = state
            s = samples(scrape([FakeWorker("w", snapshot=snap)]))
            self.assertEqual(s[("dnsgo_redis_breaker_state", labels(worker="w"))], value, state)

    def test_workers(self):
        """Workers are counted by status; each has a health gauge; one without a snapshot has no other series."""
        self.assertEqual(self.s[("dnsgo_workers", labels(status="healthy"))], 1)
        self.assertEqual(self.s[("dnsgo_workers", labels(status="unhealthy"))], 1)
        self.assertEqual(self.s[("dnsgo_worker_healthy", labels(worker="w1"))], 1)
        self.assertEqual(self.s[("dnsgo_worker_healthy", labels(worker="w2"))], 0)
        self.assertEqual(self.s[("dnsgo_worker_last_heartbeat_timestamp_seconds", labels(worker="w2"))], SEED_TIME - 60)
        w2_series = {name for name, lbl in self.s if ("worker", "w2") in lbl}
        self.assertEqual(w2_series, {"dnsgo_worker_healthy", "dnsgo_worker_last_heartbeat_timestamp_seconds"})
        info = labels(worker="w1", cluster="site-a", address="10.0.0.10:53", version="0.1.0", mode="hybrid")
        self.assertEqual(self.s[("dnsgo_worker_info", info)], 1)

    def test_no_workers(self):
        """An empty cluster still reports zero workers of each status."""
        s = samples(scrape([]))
        self.assertEqual(s, {("dnsgo_workers", labels(status="healthy")): 0, ("dnsgo_workers", labels(status="unhealthy")): 0})

    def test_local_worker(self):
        """A worker without a shared cache has no shared-layer or Redis series."""
        s = samples(scrape([FakeWorker("w", snapshot=snapshot("w", sharedCache=None))]))
        self.assertNotIn(("dnsgo_cache_hits_total", labels(worker="w", layer="shared")), s)
        self.assertFalse([name for name, _ in s if name.startswith("dnsgo_redis_")])

    def test_capture_copies(self):
        """A capture is not changed by later changes to the worker's snapshot."""
        worker = FakeWorker("w", snapshot=snapshot("w"))
        sample = capture([worker])
        worker.snapshot["messageCache"]["hits"] = 1
        worker.status = "unhealthy"
        self.assertEqual(sample.workers[0].snapshot["messageCache"]["hits"], 150000)
        self.assertEqual(sample.workers[0].status, "healthy")


class RenderTests(unittest.TestCase):
    """ClusterMetrics.render with the real reactor's thread pool."""

    @defer.inlineCallbacks
    def test_render(self):
        """render() reads the view in the reactor thread and returns the text exposition."""
        cluster = FakeCluster(workers=[FakeWorker("w1", snapshot=snapshot("w1"))], shared=SEED_SHARED)
        metrics = ClusterMetrics(cluster, reactor=reactor)
        text = yield defer.ensureDeferred(metrics.render())
        self.assertEqual(samples(text)[("dnsgo_cache_hits_total", labels(worker="w1", layer="rrset"))], 10000)
        self.assertEqual(cluster.threads, [threading.main_thread()])

    @defer.inlineCallbacks
    def test_shared_failure(self):
        """When the shared-cache statistics fail the scrape still succeeds, without them, and it is logged."""
        cluster = FakeCluster(workers=[FakeWorker("w1", snapshot=snapshot("w1"))], shared=SEED_SHARED)
        cluster.shared_error = ConnectionError("redis down")
        text = yield defer.ensureDeferred(ClusterMetrics(cluster, reactor=reactor).render())
        self.assertNotIn(b"dnsgo_shared_cache_size_bytes", text)
        self.assertIn(b"dnsgo_cache_hits_total", text)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_registry_per_instance(self):
        """Each ClusterMetrics has its own registry; nothing goes to the global one."""
        from prometheus_client import REGISTRY

        a, b = ClusterMetrics(FakeCluster(), reactor=reactor), ClusterMetrics(FakeCluster(), reactor=reactor)
        self.assertIsNot(a.registry, b.registry)
        self.assertNotIn(b"dnsgo_", generate_latest(REGISTRY))
