"""
Control-plane high availability with real processes on 127.0.0.1
(``docs/ha.md``): two ``twistd dnsgo control`` (site-a and site-b) and six
``twistd dnsgo worker`` (three per site) that know both, on short timings
(lease 3 s, renew deadline 2 s, retry 0.5 s).  DNS is asked of every worker
throughout each scenario, and must always be answered.

The partition scenarios, with each host in a network namespace of its own,
are in tests/e2e/test_ha_netns.py.
"""
import os
import signal
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from dnsgo.control.registry import WorkerRegistry
from dnsgo.control.server import ControlService
from dnsgo.invalidation.flush import Flush
from prometheus_client.parser import text_string_to_metric_families
from tests.support.authority import AuthorityServer
from tests.support.cluster_procs import wait_until
from tests.support.ha_procs import LEASE, RETRY, DnsProbe, HACluster, Host, http_at

#: How much later than lease + retry the standby may take over (the API is polled every 0.1 s).
MARGIN = 2.0

LOOPBACK = Host("127.0.0.1")
NAME_FLUSH = {"target": "all", "name": "www.example.test.", "cacheType": "all"}
FLUSH = Flush.from_json({"name": "www.example.test.", "caches": ["message", "rrset"]})


def six_workers(testcase, upstream, **kw) -> HACluster:
    """Two sites on loopback: a control plane and three workers each."""
    return HACluster(testcase, upstream, {
        "site-a": (LOOPBACK, [LOOPBACK] * 3),
        "site-b": (LOOPBACK, [LOOPBACK] * 3),
    }, **kw)


class StaleElection:
    """Stands in for the election of a control plane that lost its leadership long ago."""

    def __init__(self, term: int | None) -> None:
        self.term = term

    def fence(self) -> int:
        return self.term

    def observe(self, worker_id, report) -> None:
        pass


class HATestCase(unittest.TestCase):
    """An upstream authority and a DNS probe per test."""

    timeout = 180

    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)

    def probe(self, cluster: HACluster) -> DnsProbe:
        """Ask every worker of ``cluster`` for a name every 0.2 s until the test ends."""
        probe = DnsProbe(cluster.workers.values()).start()
        self.addCleanup(probe.stop)
        return probe

    @defer.inlineCallbacks
    def assert_dns_answered(self, probe: DnsProbe):
        """Every question the probe asked so far was answered NOERROR."""
        yield probe.stop()
        self.assertGreater(probe.answered, 0, probe)
        self.assertEqual((probe.failed, probe.timeouts), (0, 0), probe)

    @defer.inlineCallbacks
    def watch(self, cluster: HACluster, seconds: float, check):
        """For ``seconds``, every 0.2 s: ``check(states)`` on every control plane's /api/ha."""
        deadline = reactor.seconds() + seconds
        while reactor.seconds() < deadline:
            states = yield cluster.states()
            check(states)
            yield task.deferLater(reactor, 0.2, lambda: None)

    @staticmethod
    def actives(states: dict) -> list[str]:
        """The names of the control planes whose /api/ha body (in ``states``) says active."""
        return sorted(name for name, body in states.items() if body and body["role"] == "active")

    def watch_no_leader(self, cluster: HACluster, seconds: float, term_before: int):
        """For ``seconds``: no control plane active, and none past ``term_before`` (pre-votes keep the term from climbing)."""

        def no_leader(states):
            self.assertEqual(self.actives(states), [], states)
            for name, body in states.items():
                self.assertEqual(body["term"], term_before, f"{name}: pre-votes keep the term from climbing")

        return self.watch(cluster, seconds, no_leader)

    @defer.inlineCallbacks
    def watch_one_leader(self, cluster: HACluster, seconds: float, expected: str):
        """For ``seconds``, poll every control plane: never more than one active, and always ``expected``."""
        deadline = reactor.seconds() + seconds
        while reactor.seconds() < deadline:
            actives = yield cluster.actives()
            self.assertEqual(list(actives), [expected])
            yield task.deferLater(reactor, 0.2, lambda: None)

    @defer.inlineCallbacks
    def flushed_everywhere(self, cluster: HACluster, node) -> None:
        """A name flush through ``node``'s API reaches all six workers."""
        response = yield cluster.clear(node, NAME_FLUSH)
        self.assertEqual(response.status, 200, response)
        body = response.json()
        self.assertEqual(sorted(r["workerId"] for r in body["results"]), sorted(cluster.workers))
        self.assertTrue(all(r["success"] for r in body["results"]), body)


class OneActiveTests(HATestCase):
    """Scenario 1: two control planes, six workers, exactly one active."""

    @defer.inlineCallbacks
    def test_exactly_one_becomes_active(self):
        cluster = six_workers(self, self.auth.address)
        yield cluster.start()
        probe = self.probe(cluster)
        active, status = yield cluster.wait_for_one_active(timeout=LEASE + 20)
        [standby] = [node for node in cluster.controls if node is not active]
        term = status["term"]
        self.assertEqual(status["mode"], "active_passive")
        self.assertEqual(status["quorum"]["required"], 4)
        # A quorum, not every worker: on a loaded machine both control
        # planes can campaign at once and split the votes (in term 1 too,
        # 5 to 1, or into a later term), and a worker's answer to a lease
        # renewal can come too late for the round the status shows.
        self.assertGreaterEqual(term, 1)
        self.assertTrue(4 <= status["quorum"]["granted"] <= 6, status["quorum"])
        self.assertTrue(status["quorum"]["met"], status["quorum"])
        self.assertEqual(sorted(v["worker_id"] for v in status["voters"] if v["voter"]), sorted(cluster.workers))

        yield self.watch_one_leader(cluster, 3 * LEASE, active.name)

        other = yield cluster.get(standby, "/api/ha")
        self.assertEqual((other["role"], other["term"], other["leader"]), ("standby", term, active.api_address))
        self.assertEqual(other["site"], standby.site)

        # The standby answers reads, and refuses writes naming the leader.
        workers = yield cluster.get(standby, "/api/workers")
        self.assertEqual(len(workers["workers"]), 6)
        refused = yield cluster.clear(standby, NAME_FLUSH)
        self.assertEqual(refused.status, 503, refused)
        self.assertEqual(refused.json()["leader"], active.api_address)
        self.assertEqual(refused.json()["error"], "not_leader")
        yield self.flushed_everywhere(cluster, active)

        distributed = yield cluster.get(active, "/api/cache/distributed")
        self.assertEqual(distributed["architecture"]["highAvailability"]["role"], "active")
        for node, leading in ((active, 1), (standby, 0)):
            response = yield http_at(node.host.address, node.api_port, "GET", "/metrics")
            samples = {s.name: s.value for f in text_string_to_metric_families(response.body.decode())
                       for s in f.samples if s.name.startswith("dnsgo_ha_")}
            self.assertEqual(samples["dnsgo_ha_is_leader"], leading, node.name)
            self.assertEqual(samples["dnsgo_ha_term"], term)
            self.assertIn("dnsgo_ha_elections_total", samples)
        yield self.assert_dns_answered(probe)


class FailoverTests(HATestCase):
    """Scenario 2: kill -9 of the active control plane."""

    @defer.inlineCallbacks
    def test_standby_takes_over_after_kill(self):
        cluster = six_workers(self, self.auth.address)
        yield cluster.start()
        probe = self.probe(cluster)
        first, status = yield cluster.wait_for_one_active(timeout=LEASE + 20)
        yield self.watch_one_leader(cluster, LEASE, first.name)  # settled: the standby has heard of the leader

        started = time.monotonic()
        yield cluster.kill(first)
        second, new = yield cluster.wait_for_one_active(timeout=LEASE + RETRY + 20, exclude=(first.name,))
        failover = time.monotonic() - started
        self.assertNotEqual(second, first)
        self.assertGreater(new["term"], status["term"])
        self.assertLessEqual(failover, LEASE + RETRY + MARGIN, f"failover took {failover:.2f}s")
        yield self.flushed_everywhere(cluster, second)

        # The old leader comes back: it follows the new one.
        cluster.spawn_control(first)
        yield cluster.api_up(first)

        def follows():
            return cluster.get(first, "/api/ha").addCallback(
                lambda body: body if body and body["leader"] == second.api_address else None)

        back = yield wait_until(follows, "the restarted control plane to follow the new leader", LEASE + 10)
        self.assertEqual(back["role"], "standby")
        self.assertGreaterEqual(back["term"], new["term"])
        yield self.watch_one_leader(cluster, LEASE, second.name)
        yield self.assert_dns_answered(probe)


class FencingTests(HATestCase):
    """Scenario 5: an old leader's commands after it was replaced."""

    @defer.inlineCallbacks
    def test_stale_leader_is_fenced(self):
        # A control plane in this process that believes it still leads term 1 (it does not run an
        # election): the workers know it as a third control plane, as they would a stale leader.
        rogue = ControlService(WorkerRegistry(2.0, reactor=reactor), lambda registration: self.rogue_config,
                               host="127.0.0.1", port=0, heartbeat_interval=0.5, reactor=reactor)
        rogue.startService()
        self.addCleanup(rogue.stopService)
        cluster = six_workers(self, self.auth.address)
        self.rogue_config = open(cluster.controls[0].config_path).read()
        cluster.extra_addresses = [f"127.0.0.1:{rogue.bound_port}"]
        yield cluster.start()
        probe = self.probe(cluster)
        first, status = yield cluster.wait_for_one_active(timeout=LEASE + 20)
        yield wait_until(lambda: len(rogue.registry) == 6, "the workers registered with the stale one", 20)

        # The active control plane pauses (SIGSTOP) past its lease; the other takes over.
        os.kill(first.proc.pid, signal.SIGSTOP)
        second, new = yield cluster.wait_for_one_active(timeout=LEASE + 20, exclude=(first.name,))
        self.assertGreater(new["term"], status["term"])
        os.kill(first.proc.pid, signal.SIGCONT)
        # Its own fence stops it: its lease ran out by its own clock.
        refused = yield cluster.clear(first, NAME_FLUSH)
        self.assertEqual(refused.status, 503, refused)

        def stepped_down():
            return cluster.get(first, "/api/ha").addCallback(
                lambda body: body if body and body["role"] == "standby" and body["term"] >= new["term"] else None)

        yield wait_until(stepped_down, "the old leader to step down and learn the new term", 15)

        # A ClearCache of the old term sent anyway: every worker refuses it.
        rogue.election = StaleElection(status["term"])
        results = yield rogue.clear_cache(None, FLUSH)
        self.assertEqual(len(results), 6)
        for result in results:
            self.assertFalse(result["success"], result)
            self.assertIn(f"of term {status['term']} refused", result["error"])
        # And one with no term at all.
        rogue.election = None
        results = yield rogue.clear_cache(None, FLUSH)
        self.assertTrue(all("carries no term" in r["error"] for r in results), results)
        # The new leader's commands still go through.
        yield self.flushed_everywhere(cluster, second)
        yield self.assert_dns_answered(probe)
