"""
The control plane, its workers and the management API as real processes:
``twistd dnsgo control`` and ``twistd dnsgo worker`` children (and the
standalone supervisor, ``twistd dnsgo`` with ``num_workers: 2``) forwarding
to tests.support.authority, asked over DNS with dnspython and over HTTP with urllib.

Liveness runs on a 2 s heartbeat timeout, so workers report every 2/3 s.
"""
import json
import os

import dns.exception
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial import unittest

from tests.support.authority import AuthorityServer
from tests.support.cluster_procs import (
    TOKEN,
    WWW,
    ApiClient,
    Cluster,
    by_worker,
    clean_environ,
    spawn_twistd,
    stop_process,
    supervisor_pids,
    wait_until,
    write_file,
)
from tests.support.harness import ask
from tests.support.cluster_procs import free_port

#: The seed's key order of GET /api/cache/distributed and its parts.
SEED_KEYS = ["mode", "workers", "sharedCache", "aggregated", "architecture"]
SEED_WORKER_KEYS = ["workerId", "clusterName", "address", "status", "messageCache", "rrsetCache", "lastUpdated"]
SEED_CACHE_KEYS = ["hits", "misses", "evicts", "hit_rate", "size_bytes", "max_size_bytes", "num_shards"]
SEED_AGGREGATED_KEYS = ["totalHits", "totalMisses", "averageHitRate", "totalSizeBytes", "workerCount"]
SEED_ARCHITECTURE_KEYS = ["description", "l1Type", "l2Type", "replication", "invalidation", "features"]


class ClusterTestCase(unittest.TestCase):
    """Starts the upstream authority for each test; helpers over a :class:`Cluster`."""

    timeout = 60

    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)

    def upstream_count(self, name: str = WWW[0], qtype: str = WWW[1]) -> int:
        """How many times the authority was asked (name, type)."""
        return self.auth.authority.queries[(name, qtype)]

    @defer.inlineCallbacks
    def ask_ok(self, port: int, name: str = WWW[0], qtype: str = WWW[1], times: int = 1):
        """Ask 127.0.0.1:port ``times`` times (one after the other); each answer must be NOERROR."""
        for _ in range(times):
            r = yield ask(port, name, qtype)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR, r)

    def message_lookups(self, cluster: Cluster, expected: dict) -> defer.Deferred:
        """
        Fires with the /api/cache/distributed body once every worker in
        ``expected`` ({workerId: lookups}) has sent a snapshot and reports
        that many message-cache lookups (hits + misses) -- that is, once
        their heartbeats caught up.
        """

        def check():
            def seen(body):
                if body is None:
                    return None
                workers = by_worker(body)
                for worker_id, lookups in expected.items():
                    if workers.get(worker_id, {}).get("lastUpdated") is None:
                        return None
                    cache = workers[worker_id]["messageCache"]
                    if cache.get("hits", 0) + cache.get("misses", 0) != lookups:
                        return None
                return body

            return cluster.get_or_none("/api/cache/distributed").addCallback(seen)

        return wait_until(check, f"message-cache lookups {expected}", 10.0)


class StatsTests(ClusterTestCase):
    """Per-worker statistics travel from the workers' heartbeats to the API and /metrics."""

    @defer.inlineCallbacks
    def test_three_workers_report_their_own_traffic(self):
        """
        With a control plane and 3 workers, 3 queries for one name at
        worker-1 (1 miss, 2 hits) and 1 at worker-2 show up exactly so, per
        worker, in /api/cache/distributed (seed keys, workerCount 3, all
        healthy), /api/workers and /metrics; each worker has its own cache,
        so the upstream is asked once per worker that was asked.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("worker-1", "worker-2", "worker-3")
        yield self.ask_ok(cluster.dns_ports["worker-1"], times=3)
        yield self.ask_ok(cluster.dns_ports["worker-2"])
        self.assertEqual(self.upstream_count(), 2)

        body = yield self.message_lookups(cluster, {"worker-1": 3, "worker-2": 1, "worker-3": 0})
        self.assertEqual(list(body), SEED_KEYS)
        self.assertEqual(body["mode"], "standalone")
        self.assertIsNone(body["sharedCache"])
        self.assertEqual(list(body["aggregated"]), SEED_AGGREGATED_KEYS)
        self.assertEqual(list(body["architecture"]), SEED_ARCHITECTURE_KEYS)
        self.assertEqual(body["aggregated"]["workerCount"], 3)
        workers = by_worker(body)
        self.assertEqual(sorted(workers), ["worker-1", "worker-2", "worker-3"])
        for worker_id, entry in workers.items():
            self.assertEqual(list(entry), SEED_WORKER_KEYS)
            self.assertEqual(list(entry["messageCache"]), SEED_CACHE_KEYS)
            self.assertEqual(list(entry["rrsetCache"]), SEED_CACHE_KEYS)
            self.assertEqual(entry["status"], "healthy")
            self.assertEqual(entry["address"], f"127.0.0.1:{cluster.dns_ports[worker_id]}")
        seen = {w: (e["messageCache"]["hits"], e["messageCache"]["misses"]) for w, e in workers.items()}
        self.assertEqual(seen, {"worker-1": (2, 1), "worker-2": (0, 1), "worker-3": (0, 0)})
        self.assertEqual(workers["worker-1"]["messageCache"]["hit_rate"], 66.67)
        total_hits = sum(e[c]["hits"] for e in workers.values() for c in ("messageCache", "rrsetCache"))
        self.assertEqual(body["aggregated"]["totalHits"], total_hits)

        listed = yield cluster.get("/api/workers")
        details = by_worker(listed)
        self.assertEqual(sorted(details), ["worker-1", "worker-2", "worker-3"])
        self.assertEqual({w: d["queries"] for w, d in details.items()}, {"worker-1": 3, "worker-2": 1, "worker-3": 0})
        for detail in details.values():
            self.assertEqual(detail["status"], "healthy")
            self.assertIs(detail["serving"], True)
            self.assertEqual(detail["mode"], "standalone")
        self.assertEqual(
            {w: d["pid"] for w, d in details.items()},
            {w: p.pid for w, p in cluster.workers.items()},
        )

        metrics = yield cluster.api("GET", "/metrics")
        self.assertEqual(metrics.status, 200)
        queries, hits = {}, {}
        for family in text_string_to_metric_families(metrics.body.decode()):
            for sample in family.samples:
                if sample.name == "dnsgo_queries_total":
                    key = (sample.labels["worker"], sample.labels["rcode"], sample.labels["qtype"],
                           sample.labels["protocol"])
                    queries[key] = sample.value
                elif sample.name == "dnsgo_cache_hits_total" and sample.labels["layer"] == "message":
                    hits[sample.labels["worker"]] = sample.value
        self.assertEqual(queries, {("worker-1", "NOERROR", "A", "udp"): 3.0, ("worker-2", "NOERROR", "A", "udp"): 1.0})
        self.assertEqual(hits, {"worker-1": 2.0, "worker-2": 0.0, "worker-3": 0.0})


class ClearTests(ClusterTestCase):
    """DELETE /api/cache/distributed reaches exactly the workers it names, through the control channel."""

    @defer.inlineCallbacks
    def test_targeted_clears_and_a_name_flush(self):
        """
        A message-cache clear of worker-1 makes its next query an L1 miss
        that L2 still answers (upstream not asked); a clear of all of
        worker-1's caches sends its next query upstream while worker-2 stays
        warm; a flush of www.example.test./A reaches all 3 workers (each asks
        upstream again) and leaves other names cached.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("worker-1", "worker-2", "worker-3")
        ports = cluster.dns_ports
        for worker_id in ("worker-1", "worker-2", "worker-3"):
            yield self.ask_ok(ports[worker_id])
        yield self.ask_ok(ports["worker-3"], "mail.example.test.")
        self.assertEqual(self.upstream_count(), 3)

        response = yield cluster.clear({"target": "worker", "workerIds": ["worker-1"], "cacheType": "message"})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(
            response.json(),
            {"success": True, "clearedCount": 1, "sharedCleared": False,
             "results": [{"workerId": "worker-1", "success": True, "cleared": ["message"]}]},
        )
        yield self.ask_ok(ports["worker-1"])
        yield self.ask_ok(ports["worker-2"])
        self.assertEqual(self.upstream_count(), 3)
        body = yield self.message_lookups(cluster, {"worker-1": 2, "worker-2": 2})
        workers = by_worker(body)
        self.assertEqual((workers["worker-1"]["messageCache"]["hits"], workers["worker-1"]["messageCache"]["misses"]),
                         (0, 2))
        self.assertEqual(workers["worker-1"]["rrsetCache"]["hits"], 1)
        self.assertEqual((workers["worker-2"]["messageCache"]["hits"], workers["worker-2"]["messageCache"]["misses"]),
                         (1, 1))

        response = yield cluster.clear({"target": "worker", "workerIds": ["worker-1"]})
        self.assertEqual(response.status, 200, response)
        self.assertEqual([r["workerId"] for r in response.json()["results"]], ["worker-1"])
        self.assertEqual(response.json()["results"][0]["cleared"], ["message", "rrset"])
        yield self.ask_ok(ports["worker-1"])
        self.assertEqual(self.upstream_count(), 4)
        yield self.ask_ok(ports["worker-2"])
        self.assertEqual(self.upstream_count(), 4)

        response = yield cluster.clear({"name": "www.example.test.", "type": "A"})
        self.assertEqual(response.status, 200, response)
        result = response.json()
        self.assertEqual(result["clearedCount"], 3)
        self.assertTrue(result["success"])
        self.assertEqual(sorted(r["workerId"] for r in result["results"]), ["worker-1", "worker-2", "worker-3"])
        for worker_id in ("worker-1", "worker-2", "worker-3"):
            before = self.upstream_count()
            yield self.ask_ok(ports[worker_id])
            self.assertEqual(self.upstream_count(), before + 1, f"{worker_id} answered www from its cache")
        yield self.ask_ok(ports["worker-3"], "mail.example.test.")
        self.assertEqual(self.upstream_count("mail.example.test."), 1)


class AuthTests(ClusterTestCase):
    """The control plane's API asks for the bearer token."""

    @defer.inlineCallbacks
    def test_token_from_the_environment(self):
        """
        With the token in $DNSGO_API_TOKEN: no token and a wrong token get
        401 with a JSON error body and WWW-Authenticate; /api/health and
        /api/ready need none (not ready: no worker yet); the right token is
        let in.
        """
        cluster = Cluster(self, self.auth.port, token_in_file=False)
        yield cluster.start_control(env=clean_environ(DNSGO_API_TOKEN=TOKEN))
        for token, reason in ((None, "missing Authorization header"), ("wrong-token", "invalid bearer token")):
            for method, path in (("GET", "/api/cache/distributed"), ("GET", "/api/workers"), ("GET", "/metrics"),
                                 ("DELETE", "/api/cache/distributed")):
                response = yield cluster.api(method, path, token=token, body=b"{}" if method == "DELETE" else None)
                self.assertEqual(response.status, 401, f"{method} {path} with {token!r}: {response!r}")
                self.assertEqual(response.json(), {"error": "unauthorized", "reason": reason})
                self.assertTrue(response.headers["content-type"].startswith("application/json"))
                self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="dnsgo"')
        health = yield cluster.api("GET", "/api/health", token=None)
        self.assertEqual((health.status, health.json()), (200, {"status": "ok"}))
        ready = yield cluster.api("GET", "/api/ready", token=None)
        self.assertEqual((ready.status, ready.json()), (503, {"status": "not_ready"}))
        allowed = yield cluster.api("GET", "/api/workers")
        self.assertEqual((allowed.status, allowed.json()), (200, {"workers": []}))
        self.assertNotIn(TOKEN, cluster.control.text)


class BadRequestTests(ClusterTestCase):
    """Clear requests the API refuses clear nothing."""

    @defer.inlineCallbacks
    def test_refused_clears(self):
        """
        A body that is not JSON, an unknown target and unknown worker ids
        (alone or beside a known one) get 400 with a reason, and worker-1's
        cache stays warm.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("worker-1")
        port = cluster.dns_ports["worker-1"]
        yield self.ask_ok(port)
        cases = [
            (b"{not json", "the body is not valid JSON"),
            (json.dumps({"target": "everywhere"}).encode(), "unknown target 'everywhere'"),
            (json.dumps({"target": "worker", "workerIds": ["worker-9"]}).encode(), "unknown worker id(s): worker-9"),
            (json.dumps({"target": "worker", "workerIds": ["worker-1", "worker-7"]}).encode(),
             "unknown worker id(s): worker-7"),
        ]
        for body, reason in cases:
            response = yield cluster.api("DELETE", "/api/cache/distributed", body=body)
            self.assertEqual(response.status, 400, f"{body!r}: {response!r}")
            self.assertEqual(response.json()["error"], "bad_request")
            self.assertIn(reason, response.json()["reason"])
        yield self.ask_ok(port)
        self.assertEqual(self.upstream_count(), 1)
        body = yield self.message_lookups(cluster, {"worker-1": 2})
        self.assertEqual(by_worker(body)["worker-1"]["messageCache"]["hits"], 1)


class FailureTests(ClusterTestCase):
    """Workers and the control plane dying, and starting in either order."""

    @defer.inlineCallbacks
    def test_killed_worker_turns_unhealthy(self):
        """
        A worker killed with SIGKILL stays listed but turns unhealthy once
        the heartbeat timeout passes, while the other stays healthy and
        keeps answering; a clear of all workers then reports the dead one
        as failed (200, success false) and the live one as cleared.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("worker-1", "worker-2")
        cluster.workers["worker-1"].signal("KILL")
        yield cluster.workers["worker-1"].ended

        def unhealthy():
            return cluster.get_or_none("/api/workers").addCallback(
                lambda body: body if body and by_worker(body).get("worker-1", {}).get("status") == "unhealthy"
                else None)

        body = yield wait_until(unhealthy, "worker-1 unhealthy", 8.0)
        self.assertEqual({w: d["status"] for w, d in by_worker(body).items()},
                         {"worker-1": "unhealthy", "worker-2": "healthy"})
        yield self.ask_ok(cluster.dns_ports["worker-2"])
        response = yield cluster.clear({})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(
            response.json(),
            {"success": False, "clearedCount": 1, "sharedCleared": False,
             "results": [{"workerId": "worker-1", "success": False, "cleared": []},
                         {"workerId": "worker-2", "success": True, "cleared": ["message", "rrset"]}]},
        )
        metrics = yield cluster.api("GET", "/metrics")
        gauges = {s.labels["status"]: s.value
                  for f in text_string_to_metric_families(metrics.body.decode()) for s in f.samples
                  if s.name == "dnsgo_workers"}
        self.assertEqual(gauges, {"healthy": 1.0, "unhealthy": 1.0})

    @defer.inlineCallbacks
    def test_control_plane_restart(self):
        """
        When the control plane is killed, the workers keep answering DNS;
        a new control plane on the same ports sees them register again by
        themselves, healthy, with the counters they kept.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("worker-1", "worker-2")
        yield self.ask_ok(cluster.dns_ports["worker-1"])
        first = cluster.control
        first.signal("KILL")
        yield first.ended
        for worker_id in ("worker-1", "worker-2"):
            yield cluster.workers[worker_id].wait_for_text("lost the control plane")
            yield self.ask_ok(cluster.dns_ports[worker_id])
        self.assertEqual(self.upstream_count(), 2)

        yield cluster.start_control()
        yield cluster.wait_healthy("worker-1", "worker-2")
        for worker_id in ("worker-1", "worker-2"):
            worker = cluster.workers[worker_id]
            yield wait_until(lambda: worker.text.count("registered with the control plane") == 2,
                             f"{worker_id} to register a second time", 5.0, lambda: worker.text)
            self.assertTrue(worker.running)
            yield self.ask_ok(cluster.dns_ports[worker_id])
        self.assertEqual(self.upstream_count(), 2)
        body = yield self.message_lookups(cluster, {"worker-1": 3, "worker-2": 2})
        workers = by_worker(body)
        self.assertEqual(workers["worker-1"]["messageCache"]["hits"], 2)
        self.assertEqual(workers["worker-2"]["messageCache"]["hits"], 1)
        self.assertEqual(body["aggregated"]["workerCount"], 2)

    @defer.inlineCallbacks
    def test_worker_started_before_the_control_plane(self):
        """
        A worker started with no control plane keeps retrying and serves no
        DNS; once the control plane starts it registers, gets its
        configuration and answers.
        """
        cluster = Cluster(self, self.auth.port)
        worker = cluster.spawn_worker("worker-1")
        yield worker.wait_for_text("Scheduling retry 2")
        port = cluster.dns_ports["worker-1"]
        yield self.assertFailure(ask(port, *WWW, tcp=True, timeout=1.0), ConnectionRefusedError)
        yield self.assertFailure(ask(port, *WWW, timeout=0.3), dns.exception.Timeout)
        self.assertNotIn("DNS listening", worker.text)

        yield cluster.start_control()
        yield worker.wait_for_text("DNS listening")
        yield self.ask_ok(port)
        body = yield cluster.wait_healthy("worker-1")
        self.assertEqual([w["workerId"] for w in body["workers"]], ["worker-1"])


class SupervisorTests(ClusterTestCase):
    """``twistd dnsgo`` with ``server.num_workers: 2``: its own control plane and API."""

    @defer.inlineCallbacks
    def test_api_lists_and_counts_its_workers(self):
        """
        The standalone supervisor's API lists worker-1 and worker-2, healthy,
        and /api/cache/distributed counts the queries sent to the shared
        port: every query is one message-cache lookup on some worker, and
        each worker's misses went upstream.
        """
        port, api_port = free_port(), free_port()
        path = write_file(
            self,
            f'server:\n  listen_address: "127.0.0.1:{port}"\n  num_workers: 2\n'
            f'upstreams: ["127.0.0.1:{self.auth.port}"]\n'
            f'control:\n  heartbeat_timeout: 2s\n'
            f'api:\n  listen_address: "127.0.0.1:{api_port}"\n  auth_token: "{TOKEN}"\n',
        )
        supervisor = spawn_twistd(self, "supervisor", ["dnsgo", "--config", path], graceful=8.0,
                                  children=supervisor_pids)
        cluster = ApiClient(api_port)
        yield wait_until(lambda: supervisor.text.count("DNS listening") >= 2, "2 workers listening", 20.0,
                         lambda: supervisor.text)
        body = yield cluster.wait_healthy("worker-1", "worker-2")
        self.assertEqual([w["workerId"] for w in body["workers"]], ["worker-1", "worker-2"])
        self.assertEqual(sorted(d["pid"] for d in body["workers"]), sorted(supervisor_pids(supervisor.text)))

        queries = 12
        yield self.ask_ok(port, times=queries)
        body = yield wait_until(
            lambda: cluster.get_or_none("/api/cache/distributed").addCallback(
                lambda b: b if b and sum(w["messageCache"]["hits"] + w["messageCache"]["misses"]
                                         for w in b["workers"]) == queries else None),
            f"{queries} message-cache lookups", 10.0)
        workers = by_worker(body)
        self.assertEqual(sorted(workers), ["worker-1", "worker-2"])
        misses = sum(w["messageCache"]["misses"] for w in workers.values())
        self.assertEqual(misses, self.upstream_count())
        self.assertIn(misses, (1, 2))
        self.assertEqual(body["aggregated"]["workerCount"], 2)
        self.assertEqual({w["status"] for w in workers.values()}, {"healthy"})

        yield stop_process(supervisor, graceful=8.0)
        self.assertEqual([pid for pid in supervisor_pids(supervisor.text) if _alive(pid)], [])


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
