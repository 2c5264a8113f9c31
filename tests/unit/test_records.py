"""
Tests for L{dnsgo.dns.records}: a reply's records read from its bytes agree
with what twisted.names decodes from the same bytes (hypothesis, on replies
dnspython renders with compression), and malformed replies are refused
where twisted.names refuses them.
"""
import struct

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.dns import records, wire
from dnsgo.dns.names import wire_to_dotted


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
names = st.lists(labels, min_size=1, max_size=4).map(lambda ls: ".".join(ls) + ".example.")
rdatas = st.one_of(
    st.tuples(st.just("A"), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just("AAAA"), st.ip_addresses(v=6).map(str)),
    st.tuples(st.just("CNAME"), names),
    st.tuples(st.just("NS"), names),
    st.tuples(st.just("PTR"), names),
    st.tuples(st.just("MX"), st.tuples(st.integers(0, 65535), names).map(lambda t: f"{t[0]} {t[1]}")),
    st.tuples(st.just("SRV"), st.tuples(st.integers(0, 65535), names).map(lambda t: f"1 2 {t[0]} {t[1]}")),
    st.tuples(st.just("SOA"), st.tuples(names, names, st.integers(0, 2**31)).map(lambda t: f"{t[0]} {t[1]} {t[2]} 7200 3600 1209600 300")),
    st.tuples(st.just("TXT"), st.text(alphabet="abc xyz.", min_size=0, max_size=30).map(lambda t: '"' + t + '"')),
)
rrs = st.tuples(names, st.integers(0, 2**32 - 1), rdatas)


def render(qname, answer, authority, additional, edns: bool) -> bytes:
    """A reply rendered by dnspython (with name compression)."""
    query = dns.message.make_query(qname, "A", use_edns=0 if edns else None)
    reply = dns.message.make_response(query)
    for section, items in ((reply.answer, answer), (reply.authority, authority), (reply.additional, additional)):
        for owner, ttl, (rtype, text) in items:
            section.append(dns.rrset.from_text(owner, min(ttl, 2**31 - 1), "IN", rtype, text))
    return reply.to_wire()


def twisted_records(msg: bytes):
    """
    (owner dotted, type, class, TTL, payload) of every record but OPT, as
    twisted.names decodes them, but a TTL with the top bit set read as 0
    (RFC 2181 §8), as read_reply reads it on purpose.
    """
    m = tdns.Message()
    m.fromStr(msg)
    out = []
    for section in (m.answers, m.authority, m.additional):
        for rr in section:
            if rr.type != tdns.OPT:
                ttl = 0 if rr.ttl >= 2**31 else rr.ttl
                rr.payload.ttl = ttl
                out.append((rr.name.name, rr.type, rr.cls, ttl, rr.payload))
    return out


def decoded(record: records.WireRecord):
    """A WireRecord's rdata decoded on its own (no message around it) by twisted.names."""
    return (wire_to_dotted(record.owner), record.type, record.cls, record.ttl,
            records.decode_rdata(record.type, record.ttl, record.rdata))


class AgreementTests(SynchronousTestCase):
    """read_reply and twisted.names read the same records from the same bytes."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(names, st.lists(rrs, max_size=6), st.lists(rrs, max_size=3), st.lists(rrs, max_size=3), st.booleans())
    def test_same_records(self, qname, answer, authority, additional, edns):
        """Every record (OPT aside), its owner, TTL and rdata (names uncompressed) match twisted.names'."""
        msg = render(qname, answer, authority, additional, edns)
        layout = wire.scan_response(msg)
        reply = records.read_reply(msg)
        self.assertEqual(records.read_response(msg), (layout, reply))
        self.assertEqual(wire_to_dotted(reply.qname), qname.rstrip(".").encode())
        self.assertEqual([decoded(r) for r in reply.records], twisted_records(msg))
        self.assertFalse(reply.dotted)

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_cut_or_damaged_replies(self, data):
        """
        A reply cut short or with one byte changed is either refused by the
        byte path (scan_response or read_reply raise ValueError) or read into
        the same records as twisted.names reads: never a different answer.
        """
        msg = render("q.example.", [("q.example.", 300, ("CNAME", "t.example.")), ("t.example.", 60, ("A", "192.0.2.1"))],
                     [("example.", 3600, ("SOA", "ns.example. h.example. 1 7200 3600 1209600 300"))], [], True)
        cut = data.draw(st.integers(12, len(msg)))
        damaged = bytearray(msg[:cut])
        if data.draw(st.booleans()) and len(damaged) > 12:
            at = data.draw(st.integers(12, len(damaged) - 1))
            damaged[at] = data.draw(st.integers(0, 255))
        damaged = bytes(damaged)
        try:
            both = (wire.scan_response(damaged), records.read_reply(damaged))
        except ValueError:
            both = None
        try:
            one_pass = records.read_response(damaged)
        except ValueError:
            one_pass = None
        self.assertEqual(one_pass, both, "the one-pass reader and the two readers disagree")
        if both is None:
            return
        reply = both[1]
        try:
            theirs = twisted_records(damaged)
        except Exception:
            self.fail("the byte path accepted a reply twisted.names cannot decode")
        self.assertEqual([decoded(r) for r in reply.records], theirs)

    def test_opt_outside_additional_refused(self):
        """An OPT record in the answer section is refused by scan_response before anything is read."""
        msg = bytearray(render("q.example.", [("q.example.", 300, ("A", "192.0.2.1"))], [], [], True))
        # Move the OPT into the answer count: ANCOUNT 2, ARCOUNT 0.
        struct.pack_into("!HHH", msg, 6, 2, 0, 0)
        with self.assertRaises(ValueError):
            wire.scan_response(bytes(msg))
        with self.assertRaises(ValueError):
            records.read_response(bytes(msg))

    def test_sections_and_top_bit_ttl(self):
        """Records carry their section, and a TTL with the top bit set reads as 0."""
        msg = bytearray(render("q.example.", [("q.example.", 300, ("A", "192.0.2.1"))],
                               [("example.", 3600, ("NS", "ns.example."))], [("ns.example.", 60, ("A", "192.0.2.53"))], False))
        layout = wire.scan_response(bytes(msg))
        struct.pack_into("!I", msg, layout.ttl_offsets[0], 2**31 + 7)
        reply = records.read_reply(bytes(msg))
        self.assertEqual([r.section for r in reply.records], [records.ANSWER, records.AUTHORITY, records.ADDITIONAL])
        self.assertEqual([r.ttl for r in reply.records], [0, 3600, 60])

    def test_dotted_label_in_rdata(self):
        """A dotted label inside a CNAME target is noted."""
        msg = render("q.example.", [("q.example.", 300, ("CNAME", "a\\.b.example."))], [], [], False)
        self.assertTrue(records.read_reply(msg).dotted)

    def test_fixed_size_rdata_checked(self):
        """An A record whose rdata is not 4 bytes is refused (twisted.names would not decode it either)."""
        msg = bytearray(render("q.example.", [("q.example.", 300, ("A", "192.0.2.1"))], [], [], False))
        # Claim 3 bytes of rdata and drop the last byte.
        struct.pack_into("!H", msg, len(msg) - 6, 3)
        damaged = bytes(msg[:-1])
        wire.scan_response(damaged)
        with self.assertRaises(ValueError):
            records.read_reply(damaged)
