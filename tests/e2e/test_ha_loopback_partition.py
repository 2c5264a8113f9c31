"""
Scenario 3 of ``docs/ha.md`` with every process on 127.0.0.1, for machines
where network namespaces cannot be made: each worker reaches the other
site's control plane through a tests.support.tcp_partition proxy, and
cutting those proxies partitions the sites at the process level (the TCP
streams stall, as behind a link that went down).  Short timings: lease 3 s,
renew deadline 2 s, retry 0.5 s.  DNS is asked of every worker throughout.
"""
from twisted.internet import defer, reactor, task

from tests.e2e.test_ha_e2e import NAME_FLUSH, HATestCase
from tests.support.ha_procs import LEASE, HACluster, Host
from tests.support.tcp_partition import PartitionProxy


class LoopbackPartitionTests(HATestCase):
    """Site-a (its control plane and three workers) cut off from site-b at the process level."""

    timeout = 240

    def cluster_with_proxies(self) -> tuple[HACluster, list[PartitionProxy]]:
        loopback = Host("127.0.0.1")
        cluster = HACluster(self, self.auth.address, {
            "site-a": (loopback, [loopback] * 3),
            "site-b": (loopback, [loopback] * 3),
        })
        proxies = []
        for worker in cluster.workers.values():
            for node in cluster.controls:
                if node.site != worker.site:
                    proxy = PartitionProxy(("127.0.0.1", node.control_port))
                    self.addCleanup(proxy.stop)
                    cluster.routes[(worker.worker_id, node.name)] = proxy.address
                    proxies.append(proxy)
        return cluster, proxies

    @defer.inlineCallbacks
    def test_site_partition_has_no_leader_then_heals(self):
        """
        With minimum 3 and two sites required, neither side of the cut has a
        quorum: no leader once the old lease has run out, the term does not
        climb, writes get 503 everywhere, DNS is answered throughout; healed,
        one leader in a higher term, and a name flush reaches all six workers.
        """
        cluster, proxies = self.cluster_with_proxies()
        yield cluster.start()
        probe = self.probe(cluster)
        yield cluster.wait_for_one_active(timeout=LEASE + 60)
        states = yield cluster.states()
        term_before = max(body["term"] for body in states.values() if body)

        for proxy in proxies:
            proxy.cut()
        yield task.deferLater(reactor, LEASE + 1.0, lambda: None)

        yield self.watch_no_leader(cluster, 2 * LEASE, term_before)
        for node in cluster.controls:
            refused = yield cluster.clear(node, NAME_FLUSH)
            self.assertEqual(refused.status, 503, refused)

        for proxy in proxies:
            proxy.heal()
        healed, after = yield cluster.wait_for_one_active(timeout=LEASE + 30)
        self.assertGreater(after["term"], term_before)
        yield cluster.wait_workers(healed)
        yield self.flushed_everywhere(cluster, healed)
        yield self.assert_dns_answered(probe)
