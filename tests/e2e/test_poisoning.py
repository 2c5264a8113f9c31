"""
Cache poisoning, end to end: a real dnsgo on 127.0.0.1 forwarding to the
hostile upstream of tests/support/hostile_upstream.py, asked over UDP and TCP with
dnspython and dig; two workers sharing a real redis-server, the second one
forwarding to an honest upstream; and values forged in Redis by hand.
"""
import time

import dns.message
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, reactor, task
from twisted.names import dns as dns_t
from twisted.trial import unittest

from dnsgo.cache import shared_format as fmt
from dnsgo.cache.rrset import Rank
from tests.support import redis_procs
from tests.support.authority import AuthorityServer
from tests.support.harness import DIG, ask, dig, port, start_dnsgo
from tests.support.hostile_upstream import (
    HostileAuthority,
    address_with_ttl,
    cname_to_foreign_nxdomain,
    cname_with_foreign_data,
    dname_with_foreign_data,
)
from tests.support.redis_procs import RedisServer, cli_set_bytes

#: The two names of the label-with-a-dot attack: one label "www.bank", and two labels.
DOTTED = "www\\.bank.example.test."
PLAIN = "www.bank.example.test."

SCRIPTS = {
    "cn.example.test.": cname_with_foreign_data("www.victim3.other.", "6.6.6.3"),
    "x.dn.example.test.": dname_with_foreign_data("dn.example.test.", "victim5.other.", "6.6.6.5"),
    "cn4.example.test.": cname_to_foreign_nxdomain("gone.victim4.other.", "victim4.other."),
    "top1.example.test.": address_with_ttl(2147483653),
    "top2.example.test.": address_with_ttl(4294967295),
    "long.example.test.": address_with_ttl(3000000),
}


def addresses(reply) -> list[str]:
    """The A addresses of a dnspython reply's answer section."""
    return [rr.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]


def ttls(reply) -> list[int]:
    """Every TTL of a dnspython reply's sections."""
    return [rrset.ttl for section in (reply.answer, reply.authority, reply.additional) for rrset in section]


@defer.inlineCallbacks
def connected(root, timeout: float = 10.0):
    """Fires with ``root`` once its Redis backend is connected."""
    deadline = time.monotonic() + timeout
    while root.backend.status().status != "connected":
        if time.monotonic() > deadline:
            raise AssertionError("the Redis backend did not connect")
        yield task.deferLater(reactor, 0.02, lambda: None)
    return root


class PoisoningCase(unittest.TestCase):
    """dnsgo forwarding to the hostile upstream."""

    timeout = 30

    def setUp(self):
        self.upstream = AuthorityServer(HostileAuthority(SCRIPTS)).start()
        self.addCleanup(self.upstream.stop)
        self.root = start_dnsgo(self, [self.upstream.address])
        self.port = port(self.root)

    def asked(self, name: str, qtype: str = "A") -> int:
        """How often the upstream was asked ``name``/``qtype``."""
        return self.upstream.authority.queries[(name.lower(), qtype)]


class DottedLabelTests(PoisoningCase):
    """A ``.`` inside a label must not make one name stand for another."""

    @defer.inlineCallbacks
    def test_dotted_nxdomain_does_not_hide_the_name(self):
        """
        NXDOMAIN for the one-label ``www\\.bank`` leaves the two-label
        ``www.bank`` answered with its address, for A (UDP and TCP), for
        AAAA (NODATA, not NXDOMAIN) and for a new flag combination (no
        EDNS), which misses L1 and asks L2.
        """
        dotted = yield ask(self.port, DOTTED)
        self.assertEqual(dotted.rcode(), dns.rcode.NXDOMAIN)
        for tcp in (False, True):
            reply = yield ask(self.port, PLAIN, tcp=tcp)
            self.assertEqual((reply.rcode(), addresses(reply)), (dns.rcode.NOERROR, ["10.0.0.1"]), reply)
        aaaa = yield ask(self.port, PLAIN, "AAAA")
        self.assertEqual(aaaa.rcode(), dns.rcode.NOERROR, aaaa)
        plain = yield ask(self.port, dns.message.make_query(PLAIN, "A", use_edns=False))
        self.assertEqual(addresses(plain), ["10.0.0.1"])

    @defer.inlineCallbacks
    def test_cached_name_not_hidden_by_dotted_query(self):
        """
        A name already cached stays answered after the dotted query: its
        next lookup with other flags (L1 miss, L2 asked) gets the address.
        """
        first = yield ask(self.port, PLAIN)
        self.assertEqual(addresses(first), ["10.0.0.1"])
        yield ask(self.port, DOTTED)
        reply = yield ask(self.port, dns.message.make_query(PLAIN, "A", want_dnssec=False, use_edns=False))
        self.assertEqual((reply.rcode(), addresses(reply)), (dns.rcode.NOERROR, ["10.0.0.1"]), reply)

    @defer.inlineCallbacks
    def test_dotted_wildcard_does_not_redirect(self):
        """
        The wildcard answer for the one-label ``host\\.sub`` (192.0.2.7)
        does not become the answer of ``host.sub`` (10.9.9.9).
        """
        dotted = yield ask(self.port, "host\\.sub.wild.example.test.")
        self.assertEqual(addresses(dotted), ["192.0.2.7"])
        self.assertEqual(dotted.answer[0].name.labels[0], b"host.sub")
        for tcp in (False, True):
            reply = yield ask(self.port, "host.sub.wild.example.test.", tcp=tcp)
            self.assertEqual(addresses(reply), ["10.9.9.9"], reply)

    @defer.inlineCallbacks
    def test_dotted_name_answered_and_cached_apart(self):
        """
        The dotted name itself is answered as the upstream sent it (its
        owner keeps the one label) and a repeat is served from L1, which
        keys on wire-format names.
        """
        first = yield ask(self.port, "host\\.sub.wild.example.test.")
        second = yield ask(self.port, "host\\.sub.wild.example.test.")
        self.assertEqual(second.answer, first.answer)
        self.assertEqual(self.asked("host\\.sub.wild.example.test."), 1)


class ForeignDataTests(PoisoningCase):
    """Records for names other than the question complete that answer only."""

    @defer.inlineCallbacks
    def test_cname_target_data_not_served_directly(self):
        """
        ``cn CNAME www.victim3.other.`` came with ``www.victim3.other. A
        6.6.6.3``: the chain answers ``cn``, but a direct query for the
        target is asked upstream, which refuses it.
        """
        chain = yield ask(self.port, "cn.example.test.")
        self.assertEqual(addresses(chain), ["6.6.6.3"])
        direct = yield ask(self.port, "www.victim3.other.")
        self.assertEqual(direct.rcode(), dns.rcode.REFUSED, direct)
        self.assertGreaterEqual(self.asked("www.victim3.other."), 1)

    @defer.inlineCallbacks
    def test_dname_target_data_not_served_directly(self):
        """The A record of a DNAME's target that came with the DNAME is not served to a direct query."""
        chain = yield ask(self.port, "x.dn.example.test.")
        self.assertEqual(addresses(chain), ["6.6.6.5"])
        direct = yield ask(self.port, "x.victim5.other.")
        self.assertEqual(direct.rcode(), dns.rcode.REFUSED, direct)

    @defer.inlineCallbacks
    def test_foreign_nxdomain_not_cached_for_target(self):
        """An NXDOMAIN with a foreign SOA for a CNAME's target does not answer a direct query for the target."""
        chain = yield ask(self.port, "cn4.example.test.")
        self.assertEqual(chain.rcode(), dns.rcode.NXDOMAIN)
        direct = yield ask(self.port, "gone.victim4.other.")
        self.assertEqual(direct.rcode(), dns.rcode.REFUSED, direct)

    @defer.inlineCallbacks
    def test_question_still_answered_from_cache(self):
        """The question's own answer is cached: a repeat does not reach the upstream."""
        yield ask(self.port, "cn.example.test.")
        again = yield ask(self.port, "cn.example.test.")
        self.assertEqual(addresses(again), ["6.6.6.3"])
        self.assertEqual(self.asked("cn.example.test."), 1)


class HugeTTLTests(PoisoningCase):
    """RFC 2181 §8 and max_ttl, on every path."""

    @defer.inlineCallbacks
    def test_top_bit_ttls_are_zero(self):
        """
        TTLs of 2147483653 and 4294967295 reach the client as 0, as dig
        prints them (dnspython would show 0 either way: it reads such TTLs
        as RFC 2181 says).
        """
        if DIG is None:
            raise unittest.SkipTest("dig (bind9-dnsutils) is not installed")
        for name in ("top1.example.test.", "top2.example.test."):
            for _ in range(2):
                out = yield dig(self.port, "+noall", "+answer", name, "A")
                self.assertEqual(out.split()[1::5], ["0"], out)

    @defer.inlineCallbacks
    def test_long_ttl_capped_on_every_path(self):
        """
        A TTL of 3,000,000 s is served as at most max_ttl (86400) on the
        miss, on the L1 hit, and from L2 (other flags).
        """
        miss = yield ask(self.port, "long.example.test.")
        hit = yield ask(self.port, "long.example.test.")
        l2 = yield ask(self.port, dns.message.make_query("long.example.test.", "A", use_edns=False))
        for reply in (miss, hit, l2):
            self.assertEqual(addresses(reply), ["192.0.2.99"])
            self.assertLessEqual(max(ttls(reply)), 86400, reply)
            self.assertGreater(max(ttls(reply)), 86000, reply)
        self.assertEqual(self.asked("long.example.test."), 1)


class SharedRedisPoisoningTests(unittest.TestCase):
    """
    Worker A forwards to the hostile upstream, worker B to an honest one;
    both share a real redis-server.  Nothing A learnt from an attack may
    change what B answers.
    """

    skip = redis_procs.SKIP
    timeout = 60

    def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.stop)
        self.hostile = AuthorityServer(HostileAuthority(SCRIPTS)).start()
        self.addCleanup(self.hostile.stop)
        self.honest = AuthorityServer(HostileAuthority()).start()
        self.addCleanup(self.honest.stop)
        self.config = (
            "cache:\n  mode: hybrid\n  shared_cache:\n    enabled: true\n"
            f'    type: redis\n    address: "127.0.0.1:{self.redis.port}"\n'
        )

    def worker(self, upstream):
        """A dnsgo in hybrid mode forwarding to ``upstream``, once its Redis connection is up."""
        root = start_dnsgo(self, [upstream.address], self.config)
        self.addCleanup(lambda: root.shared_store.idle())
        return connected(root)

    @defer.inlineCallbacks
    def test_fresh_worker_not_poisoned(self):
        """
        After A answered the dotted name (NXDOMAIN) and the CNAME with
        foreign data, B answers ``www.bank`` with its address and refuses
        ``www.victim3.other.`` as its own upstream does.
        """
        a = yield self.worker(self.hostile)
        yield ask(port(a), DOTTED)
        yield ask(port(a), "cn.example.test.")
        yield ask(port(a), "cn4.example.test.")
        yield a.shared_store.idle()
        b = yield self.worker(self.honest)
        plain = yield ask(port(b), PLAIN)
        self.assertEqual((plain.rcode(), addresses(plain)), (dns.rcode.NOERROR, ["10.0.0.1"]), plain)
        for victim in ("www.victim3.other.", "gone.victim4.other."):
            direct = yield ask(port(b), victim)
            self.assertEqual(direct.rcode(), dns.rcode.REFUSED, direct)


class ForgedRedisValueTests(unittest.TestCase):
    """
    Values written into a real redis-server by hand (redis-cli), as anyone
    with access to Redis could, against a dnsgo with and without
    ``signing_key``.
    """

    skip = redis_procs.SKIP
    timeout = 60
    SIGNING_KEY = "a-test-signing-key-0123456789"

    def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.stop)
        self.upstream = AuthorityServer(HostileAuthority()).start()
        self.addCleanup(self.upstream.stop)

    def worker(self, signing_key: str = ""):
        """A dnsgo in hybrid mode on the test Redis, signing with ``signing_key`` if given."""
        config = (
            "cache:\n  mode: hybrid\n  shared_cache:\n    enabled: true\n"
            f'    type: redis\n    address: "127.0.0.1:{self.redis.port}"\n'
            + (f'    signing_key: "{signing_key}"\n' if signing_key else "")
        )
        root = start_dnsgo(self, [self.upstream.address], config)
        self.addCleanup(lambda: root.shared_store.idle())
        return connected(root)

    def plant(self, name: bytes, records, stored_at: float | None = None):
        """SET the A key of ``name`` to an unsigned value holding ``records``."""
        key = fmt.rrset_key(b"dns:", name, dns_t.A, dns_t.IN)
        value = fmt.encode_value(fmt.Kind.RRSET, time.time() if stored_at is None else stored_at, 3600, Rank.ANSWER, records)
        self.assertEqual(cli_set_bytes(self.redis.port, key, value), "OK")

    @staticmethod
    def a_record(owner: bytes, address: str):
        """A twisted.names A record."""
        return dns_t.RRHeader(owner, dns_t.A, dns_t.IN, 3600, dns_t.Record_A(address))

    @defer.inlineCallbacks
    def test_mismatched_owner_without_key(self):
        """
        Without a key, a value under www's key holding another name's
        record is rejected: www is answered from upstream, and the other
        name is not poisoned either.
        """
        self.plant(b"www.example.test", [self.a_record(b"evil.example.test", "6.6.6.6")])
        root = yield self.worker()
        www = yield ask(port(root), "www.example.test.")
        self.assertEqual(addresses(www), ["192.0.2.1"])
        evil = yield ask(port(root), "evil.example.test.")
        self.assertEqual(evil.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(root.shared_store.stats().rejected, 1)

    @defer.inlineCallbacks
    def test_future_value_without_key(self):
        """Without a key, a value claiming to be stored 10 years ahead is rejected."""
        self.plant(b"www.example.test", [self.a_record(b"www.example.test", "6.6.6.6")], time.time() + 10 * 365 * 86400)
        root = yield self.worker()
        www = yield ask(port(root), "www.example.test.")
        self.assertEqual((addresses(www), max(ttls(www))), (["192.0.2.1"], 300))
        self.assertEqual(root.shared_store.stats().rejected, 1)

    @defer.inlineCallbacks
    def test_unsigned_forgery_with_key(self):
        """
        With a key, a well-formed unsigned value for the right name is a
        counted miss (the upstream answers), while what a worker with the
        key wrote serves a second worker without asking upstream again.
        """
        self.plant(b"www.example.test", [self.a_record(b"www.example.test", "6.6.6.6")])
        a = yield self.worker(self.SIGNING_KEY)
        www = yield ask(port(a), "www.example.test.")
        self.assertEqual(addresses(www), ["192.0.2.1"])
        self.assertEqual(a.shared_store.stats().bad_signatures, 1)
        yield a.shared_store.idle()
        b = yield self.worker(self.SIGNING_KEY)
        again = yield ask(port(b), "www.example.test.")
        self.assertEqual(addresses(again), ["192.0.2.1"])
        self.assertEqual(self.upstream.authority.queries[("www.example.test.", "A")], 1)
        self.assertEqual(b.shared_store.stats().hits, 1)
