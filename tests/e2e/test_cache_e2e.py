"""
The caches end to end: real sockets on 127.0.0.1, the dnspython authority
of tests.support.authority upstream, dnspython as the client.  The authority counts
what reaches it, which tells a cache hit from a miss.
"""
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, task, reactor
from twisted.trial import unittest

from tests.support.authority import AuthorityServer
from tests.support.harness import ask, port, raw_udp, start_dnsgo


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class CacheTests(unittest.TestCase):
    """L1 and L2 in the default (standalone) configuration."""

    extra = ""

    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)
        self.root = start_dnsgo(self, [self.auth.address], self.extra)
        self.port = port(self.root)

    def upstream(self, name, qtype="A"):
        return self.auth.authority.queries[(name, qtype)]

    @defer.inlineCallbacks
    def test_second_query_is_a_hit(self):
        """The same question again is answered without asking upstream."""
        first = yield ask(self.port, "www.example.test", "A")
        second = yield ask(self.port, "www.example.test", "A")
        self.assertEqual(first.answer, second.answer)
        self.assertEqual(self.upstream("www.example.test."), 1)
        self.assertEqual(self.root.caches.messages.stats().hits, 1)

    @defer.inlineCallbacks
    def test_ttl_counts_down_then_refetch(self):
        """A 2 s TTL is served as 1 after a second, and refetched once it expires."""
        r = yield ask(self.port, "short.example.test", "A")
        self.assertEqual(r.answer[0].ttl, 2)
        yield sleep(1.1)
        r = yield ask(self.port, "short.example.test", "A")
        self.assertEqual(r.answer[0].ttl, 1)
        self.assertEqual(self.upstream("short.example.test."), 1)
        yield sleep(1.2)
        r = yield ask(self.port, "short.example.test", "A")
        self.assertEqual(r.answer[0].ttl, 2)
        self.assertEqual(self.upstream("short.example.test."), 2)

    @defer.inlineCallbacks
    def test_ttl_zero_not_cached(self):
        """A TTL of 0 is never cached."""
        yield ask(self.port, "zero.example.test", "A")
        yield ask(self.port, "zero.example.test", "A")
        self.assertEqual(self.upstream("zero.example.test."), 2)

    @defer.inlineCallbacks
    def test_case_preserved_on_hit(self):
        """A hit copies the asker's question bytes, 0x20 case included, and its ID."""
        yield ask(self.port, "www.example.test", "A")
        q = dns.message.make_query("wWw.EXAMPLE.test", "A")
        wire_q = q.to_wire()
        reply = yield raw_udp(self.port, wire_q)
        self.assertEqual(reply[:2], wire_q[:2])
        self.assertEqual(reply[12 : 12 + 22], wire_q[12 : 12 + 22])
        self.assertEqual(self.upstream("www.example.test."), 1)

    @defer.inlineCallbacks
    def test_nxdomain_cached_with_soa(self):
        """NXDOMAIN is cached; the SOA is in authority with TTL min(SOA TTL, MINIMUM) = 300, counting down."""
        r = yield ask(self.port, "nope.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.authority[0].ttl, 300)
        yield sleep(1.1)
        r = yield ask(self.port, "nope.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(r.authority[0].ttl, 299)
        self.assertEqual(self.upstream("nope.example.test."), 1)

    @defer.inlineCallbacks
    def test_nxdomain_covers_every_type(self):
        """A cached NXDOMAIN answers other types of the name from L2, without upstream."""
        yield ask(self.port, "gone.example.test", "A")
        r = yield ask(self.port, "gone.example.test", "TXT")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(self.upstream("gone.example.test.", "TXT"), 0)

    @defer.inlineCallbacks
    def test_nxdomain_covers_names_below(self):
        """RFC 8020: after NXDOMAIN for gone., names below it get NXDOMAIN from L2 without the upstream; a sibling does not."""
        yield ask(self.port, "gone.example.test", "A")
        r = yield ask(self.port, "deep.under.gone.example.test", "AAAA")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(self.upstream("deep.under.gone.example.test.", "AAAA"), 0)
        yield ask(self.port, "other.example.test", "A")
        self.assertEqual(self.upstream("other.example.test."), 1)

    @defer.inlineCallbacks
    def test_nodata_cached_per_type(self):
        """NODATA is cached for its type only."""
        yield ask(self.port, "www.example.test", "MX")
        r = yield ask(self.port, "www.example.test", "MX")
        self.assertEqual(r.answer, [])
        self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(self.upstream("www.example.test.", "MX"), 1)
        yield ask(self.port, "www.example.test", "TXT")
        self.assertEqual(self.upstream("www.example.test.", "TXT"), 1)

    @defer.inlineCallbacks
    def test_cname_chain_from_l2(self):
        """c10 CNAME and h10 A cached separately are assembled into c10 A without upstream."""
        yield ask(self.port, "c10.example.test", "CNAME")
        yield ask(self.port, "h10.example.test", "A")
        r = yield ask(self.port, "c10.example.test", "A")
        self.assertEqual([rr.rdtype for rr in r.answer], [dns.rdatatype.CNAME, dns.rdatatype.A])
        self.assertEqual(self.upstream("c10.example.test.", "A"), 0)

    @defer.inlineCallbacks
    def test_other_flags_answered_from_l2(self):
        """The same name asked without EDNS (another L1 key) is answered from L2."""
        yield ask(self.port, "mail.example.test", "A", use_edns=0)
        r = yield ask(self.port, "mail.example.test", "A", use_edns=False)
        self.assertEqual([rr.to_text() for rr in r.answer[0]], ["192.0.2.25"])
        self.assertEqual(r.edns, -1)
        self.assertEqual(self.upstream("mail.example.test."), 1)

    @defer.inlineCallbacks
    def test_tc_on_hits(self):
        """A cached 700-byte reply is whole for an EDNS client and TC=1 for a 512-byte one."""
        r = yield ask(self.port, "mid.example.test", "TXT", use_edns=0)
        self.assertEqual(len(r.answer[0]), 3)
        r = yield ask(self.port, "mid.example.test", "TXT", use_edns=0)
        self.assertFalse(r.flags & dns.flags.TC)
        self.assertEqual(r.payload, 1232)
        yield ask(self.port, "mid.example.test", "TXT", use_edns=False)
        r = yield ask(self.port, "mid.example.test", "TXT", use_edns=False)
        self.assertTrue(r.flags & dns.flags.TC)
        self.assertEqual(r.edns, -1)
        self.assertEqual(self.upstream("mid.example.test.", "TXT"), 1)

    @defer.inlineCallbacks
    def test_big_reply_cached_from_tcp_truncated_on_udp(self):
        """A 2 KB reply fetched over TCP is cached; a UDP hit gets TC=1 with the OPT, a TCP hit gets it whole."""
        yield ask(self.port, "big.example.test", "TXT", tcp=True, use_edns=0)
        r = yield ask(self.port, "big.example.test", "TXT", use_edns=0)
        self.assertTrue(r.flags & dns.flags.TC)
        self.assertEqual(r.edns, 0)
        r = yield ask(self.port, "big.example.test", "TXT", tcp=True, use_edns=0)
        self.assertEqual(len(r.answer[0]), 10)

    @defer.inlineCallbacks
    def test_do_bit_is_part_of_key(self):
        """A DO query is not answered from a non-DO entry, and its reply echoes DO."""
        yield ask(self.port, "www.example.test", "A", use_edns=0)
        r = yield ask(self.port, "www.example.test", "A", want_dnssec=True)
        self.assertTrue(r.ednsflags & dns.flags.DO)
        self.assertEqual(self.upstream("www.example.test."), 2)


class ServFailCacheTests(unittest.TestCase):
    """RFC 9520: failures are remembered for a few seconds."""

    @defer.inlineCallbacks
    def test_servfail_not_retried_at_once(self):
        """After all upstreams time out, the same question within seconds fails without asking again."""
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        auth.authority.silent = True
        p = port(start_dnsgo(self, [auth.address]))
        r = yield ask(p, "www.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
        asked = auth.authority.total
        r = yield ask(p, "www.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(auth.authority.total, asked)

    @defer.inlineCallbacks
    def test_failure_does_not_hide_cached_answer(self):
        """A question whose A failed still gets its cached NXDOMAIN/answers for what is in cache."""
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        p = port(start_dnsgo(self, [auth.address]))
        yield ask(p, "www.example.test", "A", use_edns=0)
        auth.authority.silent = True
        r = yield ask(p, "www.example.test", "A", use_edns=False)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)


class ServeStaleTests(unittest.TestCase):
    """RFC 8767 serve-stale, when enabled."""

    @defer.inlineCallbacks
    def test_stale_answer_when_upstream_dead(self):
        """An expired answer is served with TTL 30 and EDE 3 once the upstream stops answering."""
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        p = port(start_dnsgo(self, [auth.address], "cache:\n  serve_stale:\n    enabled: true\n    client_timeout: 5s\n"))
        r = yield ask(p, "short.example.test", "A", use_edns=0)
        self.assertEqual(r.answer[0].ttl, 2)
        auth.authority.silent = True
        yield sleep(2.2)
        r = yield ask(p, "short.example.test", "A", use_edns=0)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertEqual(r.answer[0].ttl, 30)
        ede = [o for o in r.options if o.otype == dns.edns.EDE]
        self.assertEqual([o.code for o in ede], [3])

    @defer.inlineCallbacks
    def test_stale_after_client_timeout(self):
        """With a slow upstream, stale data is served after client_timeout instead of waiting."""
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        p = port(
            start_dnsgo(
                self,
                [auth.address],
                "cache:\n  serve_stale:\n    enabled: true\n    client_timeout: 0.2s\n",
            )
        )
        yield ask(p, "short.example.test", "A", use_edns=0)
        auth.authority.silent = True
        yield sleep(2.2)
        r = yield ask(p, "short.example.test", "A", use_edns=0, timeout=0.5)
        self.assertEqual(r.answer[0].ttl, 30)
        # The refresh goes on in the background until the upstream attempts time out.
        yield sleep(0.8)

    @defer.inlineCallbacks
    def test_no_stale_when_disabled(self):
        """Serve-stale is off by default: an expired answer with a dead upstream is SERVFAIL."""
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        p = port(start_dnsgo(self, [auth.address]))
        yield ask(p, "short.example.test", "A", use_edns=0)
        auth.authority.silent = True
        yield sleep(2.2)
        r = yield ask(p, "short.example.test", "A", use_edns=0)
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)


class SnapshotTests(unittest.TestCase):
    """The worker stats snapshot reflects real traffic."""

    @defer.inlineCallbacks
    def test_snapshot_counts(self):
        """Two queries for one name: one L1 miss, one hit, two NOERROR A/udp, JSON-serialisable."""
        import json

        from dnsgo.api.snapshot import worker_snapshot

        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        root = start_dnsgo(self, [auth.address])
        p = port(root)
        yield ask(p, "www.example.test", "A")
        yield ask(p, "www.example.test", "A")
        yield ask(p, "nope.example.test", "A")
        snap = json.loads(json.dumps(worker_snapshot(root, reactor)))
        self.assertEqual(snap["messageCache"]["hits"], 1)
        self.assertEqual(snap["messageCache"]["misses"], 2)
        self.assertIn(["NOERROR", "A", "udp", 2], snap["queries"])
        self.assertIn(["NXDOMAIN", "A", "udp", 1], snap["queries"])
        self.assertEqual(snap["latency"]["count"], 3)
        self.assertEqual(sum(snap["latency"]["counts"]), 3)
        self.assertEqual(snap["upstreams"][0]["address"], f"127.0.0.1:{auth.port}")
        self.assertEqual(snap["mode"], "standalone")
