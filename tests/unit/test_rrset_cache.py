"""
Tests for L{dnsgo.cache.rrset} (the L2 RRset cache) and
L{dnsgo.resolve.l2} (its resolver and the glue that fills it).
"""
import gc
import io
import tracemalloc

from hypothesis import given, settings, strategies as st

from twisted.internet.task import Clock
from twisted.names import dns, error
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.cache.rrset import RRSIG, LearnedRRset, Rank, RRsetCache, learn_from_wire
from dnsgo.resolve.l2 import MAX_CNAME_HOPS, RRsetResolver, fill_from_reply
from dnsgo.cache.stats import CacheStats
from dnsgo.resolve.query import FlaggedQuery
from dnsgo.resolve.chain import Chain, FinalAnswer
from dnsgo.dns import wire
from dnsgo.dns.records import read_reply
from tests.support.records import ZONE, FakeResolver, a, aaaa, addresses, cname, ns, reply_message, soa, ttls


def make(**kwargs):
    """An RRsetCache driven by a fresh Clock."""
    clock = Clock()
    return RRsetCache(reactor=clock, **kwargs), clock


def store(cache, qname, qtype=dns.A, rcode=dns.OK, answers=(), authority=(), additional=()):
    """Store an upstream reply to C{qname}/C{qtype}."""
    cache.store_reply(dns.Query(qname, qtype), rcode, list(answers), list(authority), list(additional))


class PositiveTests(SynchronousTestCase):
    """RRsets: TTL of the set, countdown, expiry, clamps, copies."""

    def test_lowest_member_ttl(self):
        """An RRset's TTL is the lowest member TTL, given to every member."""
        cache, _ = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300), a(b"www.example.com", "192.0.2.2", 60)])
        records = cache.get(b"www.example.com", dns.A)
        self.assertEqual(addresses(records), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(ttls(records), [60, 60])

    def test_countdown(self):
        """TTLs count down by whole elapsed seconds."""
        cache, clock = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300)])
        clock.advance(100.7)
        self.assertEqual(ttls(cache.get(b"www.example.com", dns.A)), [200])

    def test_expiry(self):
        """An RRset is served until its TTL has fully elapsed, then is gone."""
        cache, clock = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 10)])
        clock.advance(9.5)
        self.assertEqual(ttls(cache.get(b"www.example.com", dns.A)), [1])
        clock.advance(0.5)
        self.assertIsNone(cache.get(b"www.example.com", dns.A))
        self.assertEqual(cache.stats().entries, 0)

    def test_new_headers(self):
        """Each read returns new RRHeader objects: changing one does not change the cache."""
        cache, _ = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300)])
        first = cache.get(b"www.example.com", dns.A)
        first[0].ttl = 5
        second = cache.get(b"www.example.com", dns.A)
        self.assertIsNot(first[0], second[0])
        self.assertEqual(ttls(second), [300])

    def test_case_insensitive(self):
        """Names match case-insensitively, and the owner keeps the case it arrived in."""
        cache, _ = make()
        store(cache, b"WWW.Example.COM", answers=[a(b"WWW.Example.COM", "192.0.2.1")])
        records = cache.get(b"www.example.com.", dns.A)
        self.assertEqual(records[0].name.name, b"WWW.Example.COM")

    def test_type_and_class(self):
        """RRsets are per type and class."""
        cache, _ = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertIsNone(cache.get(b"www.example.com", dns.AAAA))
        self.assertIsNone(cache.get(b"www.example.com", dns.A, dns.CH))

    def test_clamp(self):
        """TTLs are clamped to [min_ttl, max_ttl]."""
        cache, _ = make(min_ttl=60, max_ttl=600)
        store(cache, b"low.example.com", answers=[a(b"low.example.com", "192.0.2.1", 5)])
        store(cache, b"high.example.com", answers=[a(b"high.example.com", "192.0.2.2", 86400)])
        self.assertEqual(ttls(cache.get(b"low.example.com", dns.A)), [60])
        self.assertEqual(ttls(cache.get(b"high.example.com", dns.A)), [600])

    def test_zero_ttl_not_cached(self):
        """An RRset with a member of TTL 0 is not cached, even with a min_ttl."""
        cache, _ = make(min_ttl=60)
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300), a(b"www.example.com", "192.0.2.2", 0)])
        self.assertIsNone(cache.get(b"www.example.com", dns.A))

    def test_top_bit_ttl_is_zero(self):
        """A TTL with the top bit set counts as 0 (RFC 2181 section 8)."""
        cache, _ = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 2**31)])
        self.assertIsNone(cache.get(b"www.example.com", dns.A))

    def test_opt_and_other_rcodes(self):
        """OPT is never cached, and replies other than NOERROR/NXDOMAIN store nothing."""
        cache, _ = make()
        store(cache, b"www.example.com", additional=[dns.RRHeader(b"", dns.OPT, 1232, 0, dns.UnknownRecord(b""))])
        self.assertEqual(cache.stats().entries, 0)
        store(cache, b"www.example.com", rcode=dns.ESERVER, answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertEqual(cache.stats().entries, 0)

    def test_any_not_cached(self):
        """Replies to qtype ANY are not cached (they may hold partial RRsets, RFC 8482)."""
        cache, _ = make()
        store(cache, b"www.example.com", dns.ANY, answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertIsNone(cache.get(b"www.example.com", dns.A))


class RankTests(SynchronousTestCase):
    """Answer > authority > additional (RFC 2181 section 5.4.1)."""

    def test_authority_and_additional_not_learnt(self):
        """
        The authority and additional sections' RRsets (NS, glue) are not
        stored at all: a forwarder's L2 answers only from answer-rank data.
        """
        cache, _ = make()
        store(cache, ZONE, dns.NS, answers=[ns(ZONE, b"ns1.example.com")],
              authority=[ns(b"example.com", b"ns2.example.com")], additional=[a(b"ns1.example.com", "192.0.2.53")])
        self.assertIsNone(cache.get(b"ns1.example.com", dns.A, min_rank=Rank.ADDITIONAL))
        self.assertEqual(cache.stats().entries, 1)

    def test_inserted_lower_rank_does_not_answer(self):
        """An RRset inserted at additional rank is kept but not served as an answer."""
        cache, _ = make()
        cache.insert_rrset(b"ns1.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.53")], 300, rank=Rank.ADDITIONAL)
        self.assertIsNone(cache.get(b"ns1.example.com", dns.A))
        glue = cache.get(b"ns1.example.com", dns.A, min_rank=Rank.ADDITIONAL)
        self.assertEqual(addresses(glue), ["192.0.2.53"])

    def test_lower_rank_does_not_replace(self):
        """A later additional-section RRset does not replace a live answer-rank one."""
        cache, _ = make()
        store(cache, b"ns1.example.com", answers=[a(b"ns1.example.com", "192.0.2.1")])
        store(cache, ZONE, dns.NS, answers=[ns(ZONE, b"ns1.example.com")], additional=[a(b"ns1.example.com", "192.0.2.99")])
        self.assertEqual(addresses(cache.get(b"ns1.example.com", dns.A)), ["192.0.2.1"])

    def test_authority_does_not_replace_answer(self):
        """An authority-section NS set does not replace an answer-rank one."""
        cache, _ = make()
        store(cache, ZONE, dns.NS, answers=[ns(ZONE, b"ns1.example.com")])
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")], authority=[ns(ZONE, b"evil.example.net")])
        self.assertEqual(cache.get(ZONE, dns.NS)[0].payload.name.name, b"ns1.example.com")

    def test_higher_rank_replaces(self):
        """An answer-rank RRset replaces an additional-rank one."""
        cache, _ = make()
        store(cache, ZONE, dns.NS, answers=[ns(ZONE, b"ns1.example.com")], additional=[a(b"ns1.example.com", "192.0.2.53")])
        store(cache, b"ns1.example.com", answers=[a(b"ns1.example.com", "192.0.2.1")])
        self.assertEqual(addresses(cache.get(b"ns1.example.com", dns.A)), ["192.0.2.1"])

    def test_equal_rank_replaces(self):
        """A newer RRset of the same rank replaces the older one."""
        cache, _ = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.2")])
        self.assertEqual(addresses(cache.get(b"www.example.com", dns.A)), ["192.0.2.2"])

    def test_expired_higher_rank_is_replaced(self):
        """Once the answer-rank RRset has expired, lower-rank data may take its place."""
        cache, clock = make()
        store(cache, b"ns1.example.com", answers=[a(b"ns1.example.com", "192.0.2.1", 10)])
        clock.advance(10)
        cache.insert_rrset(b"ns1.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.99")], 300, rank=Rank.ADDITIONAL)
        glue = cache.get(b"ns1.example.com", dns.A, min_rank=Rank.ADDITIONAL)
        self.assertEqual(addresses(glue), ["192.0.2.99"])

    def test_off_chain_answers_dropped(self):
        """Answer-section records that are not on the question's CNAME chain are not cached."""
        cache, _ = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1"), a(b"bank.example.net", "192.0.2.66")])
        self.assertIsNone(cache.get(b"bank.example.net", dns.A, min_rank=Rank.ADDITIONAL))


class ChainFillTests(SynchronousTestCase):
    """What a reply with a CNAME chain leaves in the cache."""

    def test_chain_pieces(self):
        """
        Only the question's CNAME is learnt from a chain: the targets'
        CNAMEs and RRsets completed that reply but answer no direct query
        (RFC 2181 §5.4.1), not even at a lower rank.
        """
        cache, _ = make()
        store(
            cache,
            b"www.example.com",
            answers=[cname(b"www.example.com", b"web.example.net"), cname(b"web.example.net", b"h1.cdn.example"), a(b"h1.cdn.example", "192.0.2.7")],
        )
        self.assertEqual(cache.get(b"www.example.com", dns.CNAME)[0].payload.name.name, b"web.example.net")
        self.assertIsNone(cache.get(b"web.example.net", dns.CNAME, min_rank=Rank.ADDITIONAL))
        self.assertIsNone(cache.get(b"h1.cdn.example", dns.A, min_rank=Rank.ADDITIONAL))

    def test_loop_in_reply(self):
        """A reply whose CNAMEs loop is stored without hanging, and yields no negative entry."""
        cache, _ = make()
        store(
            cache,
            b"a.example.com",
            answers=[cname(b"a.example.com", b"b.example.com"), cname(b"b.example.com", b"a.example.com")],
            authority=[soa()],
        )
        self.assertIsNotNone(cache.get(b"a.example.com", dns.CNAME))
        self.assertIsNone(cache.get_negative(b"a.example.com", dns.A))
        self.assertIsNone(cache.get_negative(b"b.example.com", dns.A))


class NegativeTests(SynchronousTestCase):
    """NXDOMAIN and NODATA (RFC 2308)."""

    def test_nxdomain_all_types(self):
        """NXDOMAIN is cached per name for every type, with the SOA counting down."""
        cache, clock = make()
        store(cache, b"nope.example.com", rcode=dns.ENAME, authority=[soa(ttl=3600, minimum=900)])
        clock.advance(100)
        for qtype in (dns.A, dns.AAAA, dns.MX):
            rcode, record = cache.get_negative(b"nope.example.com", qtype)
            self.assertEqual(rcode, dns.ENAME)
            self.assertEqual(record.type, dns.SOA)
            self.assertEqual(record.name.name, ZONE)
            self.assertEqual(record.ttl, 800)
        self.assertIsNone(cache.get_negative(b"other.example.com", dns.A))
        clock.advance(800)
        self.assertIsNone(cache.get_negative(b"nope.example.com", dns.A))

    def test_nxdomain_covers_names_below(self):
        """
        RFC 8020: an NXDOMAIN answers every name below it with the same SOA
        and remaining TTL; not a sibling, not the parent; an RRset stored
        below it before is hidden, one stored after is not.
        """
        cache, clock = make()
        store(cache, b"old.gone.example.com", answers=[a(b"old.gone.example.com", "192.0.2.1")])
        clock.advance(1)
        store(cache, b"gone.example.com", rcode=dns.ENAME, authority=[soa(ttl=3600, minimum=900)])
        clock.advance(100)
        rcode, record = cache.get_negative(b"a.b.Gone.example.com", dns.AAAA)
        self.assertEqual((rcode, record.name.name, record.ttl), (dns.ENAME, ZONE, 800))
        self.assertIsNone(cache.get_negative(b"sibling.example.com", dns.A))
        self.assertIsNone(cache.get_negative(b"example.com", dns.A))
        self.assertIsNone(cache.get(b"old.gone.example.com", dns.A))
        store(cache, b"new.gone.example.com", answers=[a(b"new.gone.example.com", "192.0.2.2")])
        self.assertEqual(addresses(cache.get(b"new.gone.example.com", dns.A)), ["192.0.2.2"])
        clock.advance(800)
        self.assertIsNone(cache.get_negative(b"a.b.gone.example.com", dns.A))

    def test_nxdomain_at_chain_end(self):
        """
        NXDOMAIN after a CNAME is cached neither for the target (whose SOA
        the question's upstream may not speak for) nor for the question,
        whose CNAME is kept.
        """
        cache, _ = make()
        store(cache, b"www.example.com", rcode=dns.ENAME, answers=[cname(b"www.example.com", b"gone.example.com")], authority=[soa()])
        self.assertIsNone(cache.get_negative(b"gone.example.com", dns.A))
        self.assertIsNone(cache.get_negative(b"www.example.com", dns.A))
        self.assertIsNotNone(cache.get(b"www.example.com", dns.CNAME))

    def test_nxdomain_hides_older_rrsets(self):
        """A live NXDOMAIN hides RRsets of the name cached before it."""
        cache, _ = make()
        store(cache, b"old.example.com", dns.AAAA, answers=[aaaa(b"old.example.com", "2001:db8::1")])
        store(cache, b"old.example.com", rcode=dns.ENAME, authority=[soa()])
        self.assertIsNone(cache.get(b"old.example.com", dns.AAAA))

    def test_answer_removes_nxdomain(self):
        """An answer-rank RRset for a name ends its NXDOMAIN; glue does not."""
        cache, _ = make()
        store(cache, b"new.example.com", rcode=dns.ENAME, authority=[soa()])
        store(cache, ZONE, dns.NS, answers=[ns(ZONE, b"new.example.com")], additional=[a(b"new.example.com", "192.0.2.1")])
        self.assertEqual(cache.get_negative(b"new.example.com", dns.A)[0], dns.ENAME)
        self.assertIsNone(cache.get(b"new.example.com", dns.A, min_rank=Rank.ADDITIONAL))
        store(cache, b"new.example.com", answers=[a(b"new.example.com", "192.0.2.2")])
        self.assertIsNone(cache.get_negative(b"new.example.com", dns.AAAA))
        self.assertEqual(addresses(cache.get(b"new.example.com", dns.A)), ["192.0.2.2"])

    def test_expired_nxdomain_blocks_nothing(self):
        """Glue for a name whose NXDOMAIN has expired is stored; at the last instant before, it is not."""
        cache, clock = make()
        cache.insert_negative(b"gone.example.com", None, dns.IN, dns.ENAME, soa(), 10)
        clock.advance(9.99)
        cache.insert_rrset(b"gone.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.1")], 300, rank=Rank.ADDITIONAL)
        self.assertIsNone(cache.get(b"gone.example.com", dns.A, min_rank=Rank.ADDITIONAL))
        clock.advance(0.01)
        cache.insert_rrset(b"gone.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.1")], 300, rank=Rank.ADDITIONAL)
        self.assertEqual(addresses(cache.get(b"gone.example.com", dns.A, min_rank=Rank.ADDITIONAL)), ["192.0.2.1"])
        self.assertIsNone(cache.get_negative(b"gone.example.com", dns.A))

    def test_same_rrset_renewed_only_when_it_lasts_longer(self):
        """The same RRset again renews the entry in place when it would outlive it, and not otherwise."""
        cache, clock = make()
        rr = [a(b"www.example.com", "192.0.2.1", 300)]
        store(cache, b"www.example.com", answers=rr)
        clock.advance(100)
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 200)])  # ends at the same time
        self.assertEqual(ttls(cache.get(b"www.example.com", dns.A)), [200])
        self.assertEqual(cache._shards[hash(b"www.example.com") & cache._mask].peek((b"www.example.com", dns.A, dns.IN)).stored_at, 0)
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 250)])  # lasts 50 s longer
        self.assertEqual(ttls(cache.get(b"www.example.com", dns.A)), [250])
        self.assertEqual(cache._shards[hash(b"www.example.com") & cache._mask].peek((b"www.example.com", dns.A, dns.IN)).stored_at, 100)

    def test_expired_entry_replaced_not_renewed(self):
        """An expired RRset of the key is dropped before the new one goes in, even at a lower rank."""
        cache, clock = make()
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 10)])
        clock.advance(10)
        cache.insert_rrset(b"www.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.9")], 300, rank=Rank.ADDITIONAL)
        self.assertIsNone(cache.get(b"www.example.com", dns.A))
        self.assertEqual(addresses(cache.get(b"www.example.com", dns.A, min_rank=Rank.ADDITIONAL)), ["192.0.2.9"])
        self.assertEqual(cache.stats().entries, 1)

    def test_cost_is_what_getsizeof_says(self):
        """An entry's cost is its overhead, its TTL int and sys.getsizeof of its name, owner, rdata and tuple."""
        import sys

        from dnsgo.cache.sizing import cost_units

        for owner, count in ((b"www.example.com", 1), (b"WWW.example.com", 1), (b"www.example.com", 3), (b"WWW.example.com", 3)):
            cache, _ = make()
            records = [a(owner, "192.0.2.%d" % (i + 1), 301) for i in range(count)]
            store(cache, owner, answers=records)
            entry = cache._shards[hash(b"www.example.com") & cache._mask].peek((b"www.example.com", dns.A, dns.IN))
            payloads = entry.payloads
            expected = cache._entry_overhead + sys.getsizeof(b"www.example.com") + cache._ttls.owned_bytes(entry.ttl)
            expected += sum(map(sys.getsizeof, payloads))
            if owner != b"www.example.com":
                expected += sys.getsizeof(owner)
            if count > 1:
                expected += sys.getsizeof(payloads)
            self.assertEqual(entry.cost, cost_units(expected), (owner, count))

    def test_nodata_per_type(self):
        """NODATA is cached for the name and type asked only."""
        cache, _ = make()
        store(cache, b"www.example.com", dns.AAAA, authority=[soa()])
        rcode, record = cache.get_negative(b"www.example.com", dns.AAAA)
        self.assertEqual(rcode, dns.OK)
        self.assertEqual(record.ttl, 900)
        self.assertIsNone(cache.get_negative(b"www.example.com", dns.A))
        self.assertIsNone(cache.get(b"www.example.com", dns.AAAA))

    def test_nodata_at_chain_end(self):
        """NODATA after a CNAME is not cached for the chain's last name, nor for the question."""
        cache, _ = make()
        store(cache, b"www.example.com", dns.AAAA, answers=[cname(b"www.example.com", b"v4only.example.com")], authority=[soa()])
        self.assertIsNone(cache.get_negative(b"v4only.example.com", dns.AAAA))
        self.assertIsNone(cache.get_negative(b"www.example.com", dns.AAAA))

    def test_answer_replaces_nodata(self):
        """A positive answer replaces a NODATA entry for the same name and type."""
        cache, _ = make()
        store(cache, b"www.example.com", dns.AAAA, authority=[soa()])
        store(cache, b"www.example.com", dns.AAAA, answers=[aaaa(b"www.example.com", "2001:db8::1")])
        self.assertIsNone(cache.get_negative(b"www.example.com", dns.AAAA))
        self.assertEqual(len(cache.get(b"www.example.com", dns.AAAA)), 1)

    def test_no_soa_not_cached(self):
        """Without an SOA in the authority section nothing negative is cached."""
        cache, _ = make()
        store(cache, b"nope.example.com", rcode=dns.ENAME)
        store(cache, b"www.example.com", dns.AAAA, authority=[ns(ZONE, b"ns1.example.com")])
        self.assertIsNone(cache.get_negative(b"nope.example.com", dns.A))
        self.assertIsNone(cache.get_negative(b"www.example.com", dns.AAAA))

    def test_unrelated_soa_not_cached(self):
        """An SOA of a zone that does not contain the name does not make a negative entry."""
        cache, _ = make()
        store(cache, b"nope.example.com", rcode=dns.ENAME, authority=[soa(b"example.net")])
        self.assertIsNone(cache.get_negative(b"nope.example.com", dns.A))

    def test_negative_ttl_is_minimum(self):
        """The negative TTL is the least of the SOA TTL, SOA MINIMUM and negative_ttl."""
        for soa_ttl, minimum, cap, expected in [(100, 900, 3600, 100), (3600, 200, 3600, 200), (3600, 900, 50, 50)]:
            cache, _ = make(negative_ttl=cap)
            store(cache, b"nope.example.com", rcode=dns.ENAME, authority=[soa(ttl=soa_ttl, minimum=minimum)])
            self.assertEqual(cache.get_negative(b"nope.example.com", dns.A)[1].ttl, expected)

    def test_negative_ttl_zero(self):
        """A negative TTL of 0 is not cached."""
        cache, _ = make()
        store(cache, b"nope.example.com", rcode=dns.ENAME, authority=[soa(minimum=0)])
        self.assertIsNone(cache.get_negative(b"nope.example.com", dns.A))


def bulk_reply(i):
    """The wire bytes of a reply with two A records for host<i>, like an upstream's."""
    name = b"host%d.example.com" % i
    message = dns.Message(id=1, answer=1)
    message.queries = [dns.Query(name, dns.A)]
    message.answers = [a(name, "10.0.%d.%d" % (i // 250 % 250, i % 250)), a(name, "10.1.%d.%d" % (i // 250 % 250, i % 250))]
    return message.toStr()


def mixed_reply(i):
    """The wire bytes of a reply with assorted record types, decoded as the forwarder does."""
    name = b"host%d.example.com" % i
    message = dns.Message(id=1, answer=1)
    message.queries = [dns.Query(name, dns.MX)]
    message.answers = [
        dns.RRHeader(name, dns.MX, dns.IN, 300, dns.Record_MX(10, b"mx%d.example.net" % i)),
        dns.RRHeader(name, dns.MX, dns.IN, 300, dns.Record_MX(20, b"mx%d.backup.example.net" % i)),
    ]
    message.authority = [
        dns.RRHeader(ZONE, dns.NS, dns.IN, 3600, dns.Record_NS(b"ns%d.example.com" % i)),
        dns.RRHeader(b"t%d.example.com" % i, dns.TXT, dns.IN, 300, dns.Record_TXT(b"v=spf1 include:_spf.example.com ~all")),
    ]
    message.additional = [
        a(b"mx%d.example.net" % i, "192.0.2.%d" % (i % 250)),
        aaaa(b"mx%d.example.net" % i, "2001:db8::%x" % i),
        soa(b"z%d.example.org" % i),
    ]
    return message.toStr()


def store_wire(cache, data):
    """Decode a reply and store it, as the forwarder's fill hook does."""
    message = dns.Message()
    message.fromStr(data)
    cache.store_reply(message.queries[0], message.rCode, message.answers, message.authority, message.additional)


class SizeTests(SynchronousTestCase):
    """The byte bound, LRU eviction and the cost estimate."""

    def test_byte_bound_and_evicts(self):
        """Each shard stays under its byte share; the overflow is evicted and counted."""
        cache, _ = make(max_size_mb=0.25, num_shards=4)
        for i in range(2000):
            store_wire(cache, bulk_reply(i))
        stats = cache.stats()
        self.assertEqual(stats.max_size_bytes, 2**18)
        self.assertLessEqual(stats.size_bytes, 2**18)
        self.assertGreater(stats.size_bytes, 2**18 * 0.8)
        self.assertGreater(stats.evicts, 0)
        self.assertEqual(stats.entries + stats.evicts, 2000)
        self.assertIsNone(cache.get(b"host0.example.com", dns.A))
        self.assertIsNotNone(cache.get(b"host1999.example.com", dns.A))

    def test_lru(self):
        """Reading an entry makes it recent: the unread ones are evicted first."""
        cache, _ = make(max_size_mb=0.01, num_shards=1)
        store_wire(cache, bulk_reply(0))
        i = 1
        while cache.stats().evicts == 0:
            self.assertIsNotNone(cache.get(b"host0.example.com", dns.A))
            store_wire(cache, bulk_reply(i))
            i += 1
        self.assertIsNotNone(cache.get(b"host0.example.com", dns.A))
        self.assertIsNone(cache.get(b"host1.example.com", dns.A))

    def test_cost_estimate(self):
        """The estimated size is within 30% of the memory the cache really keeps (tracemalloc), with either policy."""
        for build, policy in ((bulk_reply, "s3fifo"), (mixed_reply, "s3fifo"), (bulk_reply, "lru"), (mixed_reply, "lru")):
            replies = [build(i) for i in range(1000)]
            cache, _ = make(max_size_mb=1024, eviction=policy)
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for data in replies:
                    store_wire(cache, data)
                gc.collect()
                real = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            estimate = cache.stats().size_bytes
            self.assertGreater(cache.stats().entries, 999)
            self.assertTrue(0.7 * real <= estimate <= 1.3 * real, (build.__name__, policy, estimate, real))

    def test_oversized_entry(self):
        """An RRset bigger than a whole shard is not stored."""
        cache, _ = make(max_size_mb=0.001, num_shards=1)
        records = [a(b"big.example.com", "10.0.%d.%d" % (i // 250, i % 250)) for i in range(100)]
        store(cache, b"big.example.com", answers=records)
        self.assertIsNone(cache.get(b"big.example.com", dns.A))
        self.assertEqual(cache.stats().size_bytes, 0)

    def test_shards_power_of_two(self):
        """The shard count must be a power of two."""
        self.assertRaises(ValueError, RRsetCache, num_shards=24, reactor=Clock())
        self.assertEqual(RRsetCache(num_shards=64, reactor=Clock()).stats().num_shards, 64)


class FlushTests(SynchronousTestCase):
    """flush by name, type, subtree, or everything."""

    def setUp(self):
        self.cache, _ = make()
        for name in (b"example.com", b"www.example.com", b"a.b.example.com", b"example.net", b"notexample.com"):
            store(self.cache, name, answers=[a(name, "192.0.2.1")])
            store(self.cache, name, dns.AAAA, answers=[aaaa(name, "2001:db8::1")])
        store(self.cache, b"gone.example.com", rcode=dns.ENAME, authority=[soa()])

    def left(self):
        """The (name, type) pairs still answerable."""
        return {
            (name, qtype)
            for name in (b"example.com", b"www.example.com", b"a.b.example.com", b"example.net", b"notexample.com")
            for qtype in (dns.A, dns.AAAA)
            if self.cache.get(name, qtype) is not None
        }

    def test_all(self):
        """flush() removes everything and says how much."""
        entries = self.cache.stats().entries
        self.assertEqual(self.cache.flush(), entries)
        self.assertEqual(self.cache.stats().entries, 0)
        self.assertEqual(self.cache.stats().size_bytes, 0)

    def test_name(self):
        """flush(name) removes every type of that name only, whatever its case."""
        self.assertEqual(self.cache.flush(b"WWW.example.com"), 2)
        self.assertNotIn((b"www.example.com", dns.A), self.left())
        self.assertEqual(len(self.left()), 8)

    def test_name_and_type(self):
        """flush(name, type) removes one RRset."""
        self.assertEqual(self.cache.flush(b"www.example.com", dns.A), 1)
        self.assertIn((b"www.example.com", dns.AAAA), self.left())
        self.assertNotIn((b"www.example.com", dns.A), self.left())

    def test_type(self):
        """flush(type=...) removes that type everywhere, and NXDOMAIN entries (they cover every type)."""
        removed = self.cache.flush(type=dns.AAAA)
        self.assertEqual(removed, 6)
        self.assertEqual({qtype for _, qtype in self.left()}, {dns.A})
        self.assertIsNone(self.cache.get_negative(b"gone.example.com", dns.A))

    def test_subtree(self):
        """flush(name, subtree=True) removes the name and every name below it, not look-alikes."""
        removed = self.cache.flush(b"example.com", subtree=True)
        # A and AAAA of three names and the NXDOMAIN (the SOA of its
        # authority section lives in the negative entry, not as an RRset).
        self.assertEqual(removed, 7)
        self.assertEqual({name for name, _ in self.left()}, {b"example.net", b"notexample.com"})

    def test_root_subtree(self):
        """A subtree flush of the root removes everything."""
        self.cache.flush(b"", subtree=True)
        self.assertEqual(self.cache.stats().entries, 0)


class StatsTests(SynchronousTestCase):
    """The counters."""

    def test_stats(self):
        """stats() reports lookups counted by the reader, entries, bytes and the hit rate in percent."""
        cache, _ = make(max_size_mb=2, num_shards=8)
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        for hit in (True, True, False):
            cache.count_lookup(hit)
        stats = cache.stats()
        self.assertIsInstance(stats, CacheStats)
        self.assertEqual((stats.hits, stats.misses, stats.evicts), (2, 1, 0))
        self.assertEqual(stats.hit_rate, 66.67)
        self.assertEqual(stats.entries, 1)
        self.assertGreater(stats.size_bytes, 0)
        self.assertEqual((stats.max_size_bytes, stats.num_shards), (2 * 2**20, 8))


class BrokenCache(RRsetCache):
    """A cache whose every read raises."""

    def get(self, *args, **kwargs):
        """Fail."""
        raise ZeroDivisionError("boom")

    def holds_any(self, *args, **kwargs):
        """Fail."""
        raise ZeroDivisionError("boom")

    def store_learned(self, *args, **kwargs):
        """Fail."""
        raise ZeroDivisionError("boom")

    def store_reply(self, *args, **kwargs):
        """Fail."""
        raise ZeroDivisionError("boom")


class ResolverTests(SynchronousTestCase):
    """RRsetResolver answers complete answers from the cache and misses the rest."""

    def setUp(self):
        self.cache, self.clock = make()
        self.resolver = RRsetResolver(self.cache)

    def ask(self, name, qtype=dns.A, **flags):
        """Query the resolver; the result, or the failure."""
        d = self.resolver.query(FlaggedQuery.from_name(name, qtype, **flags))
        results = []
        d.addBoth(results.append)
        self.assertEqual(len(results), 1)
        return results[0]

    def assertMiss(self, result):
        """The result is a DomainError miss."""
        self.assertIsInstance(result.value, error.DomainError)

    def test_hit(self):
        """A cached answer-rank RRset is the answer, TTL counted down."""
        store(self.cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300)])
        self.clock.advance(30)
        answers, authority, additional = self.ask(b"www.example.com")
        self.assertEqual(addresses(answers), ["192.0.2.1"])
        self.assertEqual(ttls(answers), [270])
        self.assertEqual((authority, additional), ([], []))

    def test_miss(self):
        """Nothing cached is a DomainError, so the chain moves on."""
        self.assertMiss(self.ask(b"www.example.com"))

    def test_glue_is_a_miss(self):
        """Additional-section data is never served as an answer."""
        store(self.cache, ZONE, dns.NS, answers=[ns(ZONE, b"ns1.example.com")], additional=[a(b"ns1.example.com", "192.0.2.53")])
        self.assertMiss(self.ask(b"ns1.example.com"))

    def test_chain_from_pieces(self):
        """A CNAME and its target's RRset cached from separate replies make one answer."""
        store(self.cache, b"c10.example.com", dns.CNAME, answers=[cname(b"c10.example.com", b"h10.example.com", 600)])
        store(self.cache, b"h10.example.com", answers=[a(b"h10.example.com", "192.0.2.10", 60)])
        answers, _, _ = self.ask(b"c10.example.com")
        self.assertEqual([rr.type for rr in answers], [dns.CNAME, dns.A])
        self.assertEqual(ttls(answers), [600, 60])
        self.assertEqual(answers[1].name.name, b"h10.example.com")

    def test_cname_query(self):
        """A CNAME question is answered by the CNAME itself, not followed."""
        store(self.cache, b"c10.example.com", dns.CNAME, answers=[cname(b"c10.example.com", b"h10.example.com")])
        answers, _, _ = self.ask(b"c10.example.com", dns.CNAME)
        self.assertEqual([rr.type for rr in answers], [dns.CNAME])

    def test_incomplete_chain_is_a_miss(self):
        """A CNAME whose target is not cached is a miss."""
        store(self.cache, b"c10.example.com", dns.CNAME, answers=[cname(b"c10.example.com", b"h10.example.com")])
        self.assertMiss(self.ask(b"c10.example.com"))

    def test_cname_loop(self):
        """A loop of cached CNAMEs is a miss, not a hang."""
        store(self.cache, b"a.example.com", dns.CNAME, answers=[cname(b"a.example.com", b"B.example.com")])
        store(self.cache, b"b.example.com", dns.CNAME, answers=[cname(b"b.example.com", b"a.example.com")])
        self.assertMiss(self.ask(b"a.example.com"))

    def chain_of(self, hops):
        """Cache a chain c0 -> c1 -> ... -> c<hops> with an A record at the end."""
        for i in range(hops):
            store(self.cache, b"c%d.example.com" % i, dns.CNAME, answers=[cname(b"c%d.example.com" % i, b"c%d.example.com" % (i + 1))])
        store(self.cache, b"c%d.example.com" % hops, answers=[a(b"c%d.example.com" % hops, "192.0.2.1")])

    def test_hop_limit(self):
        """Chains of up to MAX_CNAME_HOPS CNAMEs are assembled; longer ones are misses."""
        self.assertEqual(MAX_CNAME_HOPS, 8)
        self.chain_of(8)
        self.assertEqual(len(self.ask(b"c0.example.com")[0]), 9)
        self.cache.flush()
        self.chain_of(9)
        self.assertMiss(self.ask(b"c0.example.com"))

    def test_nxdomain(self):
        """A cached NXDOMAIN is a FinalAnswer with the SOA, for any type."""
        store(self.cache, b"nope.example.com", rcode=dns.ENAME, authority=[soa()])
        for qtype in (dns.A, dns.TXT):
            failure = self.ask(b"nope.example.com", qtype)
            self.assertIsInstance(failure.value, FinalAnswer)
            self.assertEqual(failure.value.rcode, dns.ENAME)
            self.assertEqual(failure.value.answers, [])
            self.assertEqual([rr.type for rr in failure.value.authority], [dns.SOA])

    def test_nxdomain_after_chain(self):
        """A chain ending in a cached NXDOMAIN fails with the chain as answers."""
        store(self.cache, b"c10.example.com", dns.CNAME, answers=[cname(b"c10.example.com", b"gone.example.com")])
        store(self.cache, b"gone.example.com", rcode=dns.ENAME, authority=[soa()])
        failure = self.ask(b"c10.example.com")
        self.assertEqual(failure.value.rcode, dns.ENAME)
        self.assertEqual([rr.type for rr in failure.value.answers], [dns.CNAME])
        self.assertEqual([rr.type for rr in failure.value.authority], [dns.SOA])

    def test_nodata(self):
        """A cached NODATA is an empty NOERROR answer with the SOA, for that type only."""
        store(self.cache, b"www.example.com", dns.AAAA, authority=[soa()])
        self.assertEqual(self.ask(b"www.example.com", dns.AAAA)[0:2], ([], [self.cache.get_negative(b"www.example.com", dns.AAAA)[1]]))
        self.assertMiss(self.ask(b"www.example.com", dns.A))

    def test_nodata_after_chain(self):
        """A chain ending in NODATA (learnt from the target's own query) answers with the chain and the SOA."""
        store(self.cache, b"www.example.com", dns.AAAA, answers=[cname(b"www.example.com", b"v4.example.com")], authority=[soa()])
        self.assertMiss(self.ask(b"www.example.com", dns.AAAA))
        store(self.cache, b"v4.example.com", dns.AAAA, authority=[soa()])
        answers, authority, _ = self.ask(b"www.example.com", dns.AAAA)
        self.assertEqual([rr.type for rr in answers], [dns.CNAME])
        self.assertEqual([rr.type for rr in authority], [dns.SOA])

    def test_dnssec_misses(self):
        """DO queries and qtypes ANY and RRSIG are always misses."""
        store(self.cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        store(self.cache, b"www.example.com", RRSIG, answers=[dns.RRHeader(b"www.example.com", RRSIG, dns.IN, 300, dns.UnknownRecord(b"sig"))])
        self.assertIsNotNone(self.cache.get(b"www.example.com", RRSIG))
        self.assertMiss(self.ask(b"www.example.com", dnssec_ok=True))
        self.assertMiss(self.ask(b"www.example.com", dns.ANY))
        self.assertMiss(self.ask(b"www.example.com", RRSIG))

    def test_exception_is_a_miss(self):
        """An exception inside the cache is a DomainError miss, logged once."""
        resolver = RRsetResolver(BrokenCache(reactor=Clock()))
        for _ in range(3):
            failures = []
            resolver.query(dns.Query(b"www.example.com")).addErrback(failures.append)
            self.assertIsInstance(failures[0].value, error.DomainError)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(resolver.errors, 3)
        self.assertEqual(resolver.misses, 3)

    def test_counters(self):
        """Each query is one hit or one miss; negative answers are hits."""
        store(self.cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        store(self.cache, b"nope.example.com", rcode=dns.ENAME, authority=[soa()])
        self.ask(b"www.example.com")
        self.ask(b"nope.example.com")
        self.ask(b"other.example.com")
        self.ask(b"www.example.com", dnssec_ok=True)
        self.assertEqual((self.resolver.hits, self.resolver.misses), (2, 2))
        self.assertEqual(self.cache.stats().hit_rate, 50.0)

    def test_lookup_methods(self):
        """The IResolver lookup* methods go through the cache too."""
        store(self.cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        results = []
        self.resolver.lookupAddress(b"www.example.com").addCallback(results.append)
        self.assertEqual(addresses(results[0][0]), ["192.0.2.1"])


class ChainTests(SynchronousTestCase):
    """RRsetResolver first in a dnsgo.resolve.Chain, before the forwarder."""

    def setUp(self):
        self.cache, _ = make()
        self.fake = FakeResolver()
        self.chain = Chain([RRsetResolver(self.cache), self.fake])

    def ask(self, name):
        """Query the chain; the result or failure."""
        results = []
        self.chain.query(FlaggedQuery.from_name(name)).addBoth(results.append)
        return results[0]

    def test_hit_stays_in_cache(self):
        """A hit is answered without asking the next resolver."""
        store(self.cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertEqual(addresses(self.ask(b"www.example.com")[0]), ["192.0.2.1"])
        self.assertEqual(self.fake.queries, [])

    def test_negative_hit_stays_in_cache(self):
        """A cached NXDOMAIN ends the chain as a FinalAnswer without asking the next resolver."""
        store(self.cache, b"nope.example.com", rcode=dns.ENAME, authority=[soa()])
        self.assertEqual(self.ask(b"nope.example.com").value.rcode, dns.ENAME)
        self.assertEqual(self.fake.queries, [])

    def test_miss_goes_on(self):
        """A miss reaches the next resolver with the caller's query object."""
        query = FlaggedQuery.from_name(b"www.example.com", dnssec_ok=True)
        store(self.cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        results = []
        self.chain.query(query).addBoth(results.append)
        self.assertEqual(addresses(results[0][0]), ["198.51.100.1"])
        self.assertEqual(self.fake.queries, [query])

    def test_broken_cache_goes_on(self):
        """A cache that raises does not end the chain in an error."""
        fake = FakeResolver()
        chain = Chain([RRsetResolver(BrokenCache(reactor=Clock())), fake])
        results = []
        chain.query(FlaggedQuery.from_name(b"www.example.com")).addBoth(results.append)
        self.assertEqual(addresses(results[0][0]), ["198.51.100.1"])
        self.flushLoggedErrors(ZeroDivisionError)


class FillTests(SynchronousTestCase):
    """fill_from_reply, the forwarder's hook into the cache."""

    def test_fills(self):
        """A reply read from the wire is stored, its OPT record dropped."""
        cache, _ = make()
        message = dns.Message(id=1, answer=1)
        message.queries = [dns.Query(b"www.example.com")]
        message.answers = [a(b"www.example.com", "192.0.2.1")]
        message.additional = [dns._OPTHeader(udpPayloadSize=1232)]
        data = message.toStr()
        self.assertEqual(wire.scan_response(data).opt_offset is not None, True)
        fill_from_reply(cache)(FlaggedQuery.from_name(b"www.example.com"), read_reply(data))
        self.assertEqual(addresses(cache.get(b"www.example.com", dns.A)), ["192.0.2.1"])
        self.assertEqual(cache.stats().entries, 1)

    def test_nxdomain(self):
        """An NXDOMAIN reply with an SOA fills a negative entry."""
        cache, _ = make()
        fill_from_reply(cache)(FlaggedQuery.from_name(b"nope.example.com"), reply_message(authority=[soa()], rcode=dns.ENAME))
        self.assertEqual(cache.get_negative(b"nope.example.com", dns.A)[0], dns.ENAME)

    def test_truncated_not_stored(self):
        """A truncated reply is not complete and is not stored."""
        cache, _ = make()
        fill_from_reply(cache)(FlaggedQuery.from_name(b"www.example.com"), reply_message([a(b"www.example.com", "192.0.2.1")], trunc=True))
        self.assertEqual(cache.stats().entries, 0)

    def test_cd_not_stored(self):
        """The reply to a CD query (not validated upstream) is not stored."""
        cache, _ = make()
        query = FlaggedQuery.from_name(b"www.example.com", checking_disabled=True)
        fill_from_reply(cache)(query, reply_message([a(b"www.example.com", "192.0.2.1")]))
        self.assertEqual(cache.stats().entries, 0)

    def test_never_raises(self):
        """A failing cache does not make the hook raise; the first failure is logged."""
        fill = fill_from_reply(BrokenCache(reactor=Clock()))
        for _ in range(2):
            fill(dns.Query(b"www.example.com"), reply_message([a(b"www.example.com", "192.0.2.1")]))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class HoldsAnyTests(SynchronousTestCase):
    """RRsetCache.holds_any: a sure miss in a few lookups, never a false 'nothing here'."""

    def test_what_it_sees(self):
        """The RRset, a CNAME, a negative entry of the name, or an NXDOMAIN above it: True; otherwise False."""
        cache, _ = make()
        self.assertFalse(cache.holds_any(b"www.example.com", dns.A))
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertTrue(cache.holds_any(b"www.example.com", dns.A))
        self.assertFalse(cache.holds_any(b"www.example.com", dns.AAAA))
        store(cache, b"alias.example.com", answers=[dns.RRHeader(b"alias.example.com", dns.CNAME, ttl=300, payload=dns.Record_CNAME(b"www.example.com"))])
        self.assertTrue(cache.holds_any(b"alias.example.com", dns.AAAA))
        store(cache, b"gone.example.com", rcode=dns.ENAME, authority=[soa(ZONE)])
        self.assertTrue(cache.holds_any(b"gone.example.com", dns.MX))
        self.assertTrue(cache.holds_any(b"deep.below.gone.example.com", dns.A))
        self.assertFalse(cache.holds_any(b"other.example.com", dns.A))

    def test_nxdomain_above_among_many(self):
        """Among thousands of other NXDOMAINs, live and expired, the one above a name still answers for it."""
        cache, clock = make()
        store(cache, b"kept.example.com", rcode=dns.ENAME, authority=[soa(ZONE)])
        for i in range(5000):
            cache.insert_negative(b"n%d.example.com" % i, None, dns.IN, dns.ENAME, soa(ZONE), 1)
        clock.advance(2)
        for i in range(5000, 9000):
            cache.insert_negative(b"n%d.example.com" % i, None, dns.IN, dns.ENAME, soa(ZONE), 1)
        self.assertTrue(cache.holds_any(b"x.kept.example.com", dns.A))
        self.assertEqual(cache.get_negative(b"x.kept.example.com", dns.A)[0], dns.ENAME)


class WireLearningTests(SynchronousTestCase):
    """learn_from_wire (the miss path's, from a reply's bytes) and learn_from_reply (from objects) agree."""

    REPLIES = [
        dict(answers=[cname(b"www.example.com", b"web.example.net"), a(b"web.example.net", "192.0.2.7")],
             authority=[ns(ZONE, b"ns1.example.com")], additional=[a(b"ns1.example.com", "192.0.2.53")]),
        dict(answers=[a(b"www.example.com", "192.0.2.1", 30), a(b"www.example.com", "192.0.2.2", 60)]),
        dict(rcode=dns.ENAME, authority=[soa(ttl=3600, minimum=900)]),
        dict(authority=[soa(ttl=100, minimum=900)]),
        dict(answers=[cname(b"www.example.com", b"gone.example.com")], rcode=dns.ENAME, authority=[soa()]),
    ]

    def test_same_as_objects(self):
        """For each reply the two learn the same entries, and the caches they fill answer the same."""
        query = dns.Query(b"www.example.com", dns.A)
        for reply in self.REPLIES:
            by_objects, _ = make()
            by_wire, _ = make()
            store(by_objects, b"www.example.com", **reply)
            by_wire.store_learned(learn_from_wire(query, reply_message(**reply)))
            self.assertEqual(by_wire.stats().entries, by_objects.stats().entries, reply)
            for name, qtype in ((b"www.example.com", dns.A), (b"www.example.com", dns.CNAME), (ZONE, dns.NS),
                                (b"ns1.example.com", dns.A), (b"web.example.net", dns.A)):
                for rank in (Rank.ANSWER, Rank.ADDITIONAL):
                    self.assertEqual(canonical(by_wire.get(name, qtype, min_rank=rank)),
                                     canonical(by_objects.get(name, qtype, min_rank=rank)), (reply, name, qtype, rank))
            wire_negative = by_wire.get_negative(b"www.example.com", dns.A)
            objects_negative = by_objects.get_negative(b"www.example.com", dns.A)
            self.assertEqual(wire_negative and (wire_negative[0], canonical([wire_negative[1]])),
                             objects_negative and (objects_negative[0], canonical([objects_negative[1]])))

    def test_kept_in_wire_form(self):
        """Rdata stays bytes whatever form it came in: each read decodes new objects, and the cost never changes."""
        cache, _ = make()
        cache.store_learned(learn_from_wire(dns.Query(b"www.example.com"), reply_message([a(b"www.example.com", "192.0.2.1")])))
        cache.insert_rrset(b"obj.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.9")], 60)
        before = cache.stats().size_bytes
        first = cache.get(b"www.example.com", dns.A)
        second = cache.get(b"www.example.com", dns.A)
        self.assertEqual(addresses(first), ["192.0.2.1"])
        self.assertIsNot(first[0].payload, second[0].payload)
        self.assertEqual(addresses(cache.get(b"obj.example.com", dns.A)), ["192.0.2.9"])
        self.assertEqual(cache.stats().size_bytes, before)
        for _, entry in cache.peek(b"obj.example.com") + cache.peek(b"www.example.com"):
            self.assertEqual({p.__class__ for p in entry.payloads}, {bytes})

    def test_undecodable_rdata_is_dropped(self):
        """An RRset whose rdata does not decode is a miss and leaves the cache."""
        cache, _ = make()
        cache.store_learned([LearnedRRset(b"www.example.com", dns.A, dns.IN, b"www.example.com", (b"\x01\x02",), 300, Rank.ANSWER)])
        self.assertIsNone(cache.get(b"www.example.com", dns.A))
        self.assertEqual(cache.stats().entries, 0)


def canonical(records):
    """RRHeaders as (owner, type, class, TTL, rdata bytes): payload objects compare with their own ttl attribute."""
    if records is None:
        return None
    out = []
    for rr in records:
        rdata = io.BytesIO()
        rr.payload.encode(rdata, None)
        out.append((rr.name.name, rr.type, rr.cls, rr.ttl, rdata.getvalue()))
    return out


class ChainAnswerNowTests(SynchronousTestCase):
    """Chain asks a resolver's answer_now first: a local L2 miss goes on without a Deferred or a Failure."""

    def test_miss_goes_on_and_hit_stops(self):
        """A miss in answer_now reaches the next resolver; a hit answers; an NXDOMAIN fails with FinalAnswer."""
        cache, _ = make()
        nxt = FakeResolver()
        chain = Chain([RRsetResolver(cache), nxt])
        answers, _, _ = self.successResultOf(chain.query(FlaggedQuery.from_name(b"www.example.com")))
        self.assertEqual(addresses(answers), ["198.51.100.1"])
        self.assertEqual(len(nxt.queries), 1)
        store(cache, b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        answers, _, _ = self.successResultOf(chain.query(FlaggedQuery.from_name(b"www.example.com")))
        self.assertEqual(addresses(answers), ["192.0.2.1"])
        store(cache, b"gone.example.com", rcode=dns.ENAME, authority=[soa()])
        self.failureResultOf(chain.query(FlaggedQuery.from_name(b"gone.example.com")), FinalAnswer)
        self.assertEqual(len(nxt.queries), 1)
        self.assertEqual((cache.stats().hits, cache.stats().misses), (2, 1))

    def test_only_misses(self):
        """When every resolver misses at once, the chain fails with DomainError."""
        cache, _ = make()
        self.failureResultOf(Chain([RRsetResolver(cache)]).query(FlaggedQuery.from_name(b"x.example.com")), error.DomainError)


class SimpleAnswerTests(SynchronousTestCase):
    """learn_from_wire's shortcut for a plain answer learns what the full rules learn."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([b"www.example.com", b"WWW.Example.com", b"other.example.com"]),
                              st.sampled_from(["A", "AAAA", "CNAME"]), st.integers(0, 100000)), max_size=4),
           st.sampled_from([dns.A, dns.AAAA, dns.CNAME]), st.sampled_from([dns.OK, dns.ENAME]))
    def test_same_as_full_rules(self, records, qtype, rcode):
        """With a FlaggedQuery (shortcut allowed) and a plain Query (full rules only), the same lessons."""
        answers = []
        for owner, kind, ttl in records:
            if kind == "A":
                answers.append(a(owner, "192.0.2.1", ttl))
            elif kind == "AAAA":
                answers.append(aaaa(owner, "2001:db8::1", ttl))
            else:
                answers.append(cname(owner, b"target.example.com", ttl))
        reply = reply_message(answers, rcode=rcode, authority=[soa()])
        flagged = FlaggedQuery.from_name(b"www.example.com", qtype)
        plain = dns.Query(b"www.example.com", qtype)
        self.assertEqual(learn_from_wire(flagged, reply), learn_from_wire(plain, reply))
