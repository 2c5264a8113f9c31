"""
Tests for L{dnsgo.cache.shared_format}: the keys and values of the shared
L2 cache in Redis (docs/redis-format.md).
"""
import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.cache import shared_format as fmt
from dnsgo.dns.records import RECORD_CLASSES
from dnsgo.cache.rrset import Rank
from dnsgo.cache.shared_format import Entry, Kind, KeyInfo
from tests.support.fake_redis import glob_to_regex

P = b"dns:"

labels = st.binary(min_size=1, max_size=20).filter(lambda b: b"." not in b)
names = st.lists(labels, min_size=0, max_size=4).map(b".".join)
hostnames = st.lists(st.from_regex(rb"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z"), min_size=1, max_size=4).map(b".".join)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(0, 2**31 - 1)
ttls = st.integers(1, 2**31 - 1)
#: Type codes twisted.names decodes as UnknownRecord.
unknown_types = st.integers(100, 65000).filter(lambda t: t not in RECORD_CLASSES)


def payloads(ttl):
    """A strategy of (type, payload) pairs over common record types and unknown ones."""
    return st.one_of(
        st.ip_addresses(v=4).map(lambda a: (dns.A, dns.Record_A(str(a), ttl=ttl))),
        st.ip_addresses(v=6).map(lambda a: (dns.AAAA, dns.Record_AAAA(str(a), ttl=ttl))),
        names.map(lambda n: (dns.CNAME, dns.Record_CNAME(n, ttl=ttl))),
        names.map(lambda n: (dns.NS, dns.Record_NS(n, ttl=ttl))),
        st.tuples(u16, names).map(lambda t: (dns.MX, dns.Record_MX(t[0], t[1], ttl=ttl))),
        st.lists(st.binary(max_size=255), max_size=3).map(lambda d: (dns.TXT, dns.Record_TXT(*d, ttl=ttl))),
        st.tuples(u16, u16, u16, names).map(lambda t: (dns.SRV, dns.Record_SRV(*t, ttl=ttl))),
        st.tuples(unknown_types, st.binary(max_size=100)).map(lambda t: (t[0], dns.UnknownRecord(t[1], ttl=ttl))),
    )


@st.composite
def rrsets(draw):
    """(ttl, records): one RRset of one type under one owner, members of the same class."""
    ttl = draw(ttls)
    owner = draw(names)
    cls = draw(st.sampled_from([dns.IN, dns.CH, dns.HS, 4242]))
    first_type, first = draw(payloads(ttl))
    members = [first]
    for _ in range(draw(st.integers(0, 4))):
        type_, payload = draw(payloads(ttl))
        if type_ == first_type:
            members.append(payload)
    return ttl, [dns.RRHeader(owner, first_type, cls, ttl, p) for p in members]


def soa_record(zone=b"example.com", ttl=900):
    """An SOA record."""
    return dns.RRHeader(zone, dns.SOA, dns.IN, ttl, dns.Record_SOA(b"ns1." + zone, b"hostmaster." + zone, serial=7, minimum=900, ttl=ttl))


def a_value(stored_at=1_700_000_000.25, ttl=300):
    """A valid value holding an A RRset of two records."""
    records = [
        dns.RRHeader(b"www.example.com", dns.A, dns.IN, ttl, dns.Record_A("192.0.2.1", ttl=ttl)),
        dns.RRHeader(b"www.example.com", dns.A, dns.IN, ttl, dns.Record_A("192.0.2.2", ttl=ttl)),
    ]
    return fmt.encode_value(Kind.RRSET, stored_at, ttl, Rank.ANSWER, records)


def recrc(data: bytes) -> bytes:
    """``data`` with its CRC trailer recomputed (a well-formed frame around whatever it holds)."""
    body = data[:-4]
    return body + struct.pack("!I", zlib.crc32(body))


def as_tuples(records):
    """Comparable form of records."""
    return [(rr.name.name, rr.type, rr.cls, rr.ttl, rr.payload) for rr in records]


class ValueRoundTripTests(SynchronousTestCase):
    """encode_value then decode_value gives back what was stored."""

    @settings(max_examples=300, deadline=None)
    @given(rrsets(), st.sampled_from(list(Rank)), st.floats(0, 4e9, allow_nan=False))
    def test_rrsets(self, rrset, rank, stored_at):
        """Any RRset, rank and store time survive a round trip (time to the millisecond)."""
        ttl, records = rrset
        entry = fmt.decode_value(fmt.encode_value(Kind.RRSET, stored_at, ttl, rank, records))
        self.assertIsInstance(entry, Entry)
        self.assertEqual((entry.kind, entry.ttl, entry.rank), (Kind.RRSET, ttl, rank))
        self.assertLessEqual(abs(entry.stored_at - stored_at), 0.000501)
        self.assertEqual(as_tuples(entry.records), as_tuples(records))

    @given(st.sampled_from([Kind.NXDOMAIN, Kind.NODATA]), names, u32, i32)
    def test_negative(self, kind, zone, serial, minimum):
        """A negative entry keeps its SOA."""
        mname, rname = (b"ns." + zone, b"h." + zone) if zone else (b"ns", b"h")
        soa = dns.RRHeader(zone, dns.SOA, dns.IN, 60, dns.Record_SOA(mname, rname, serial=serial, minimum=minimum, ttl=60))
        entry = fmt.decode_value(fmt.encode_value(kind, 12.5, 60, Rank.ANSWER, [soa]))
        self.assertEqual(entry.kind, kind)
        self.assertEqual(as_tuples(entry.records), as_tuples([soa]))

    def test_layout(self):
        """The bytes sit where docs/redis-format.md says: magic, version, kind, flags, ms, TTL, rank, count, RRs, CRC."""
        value = a_value(stored_at=1_700_000_000.25, ttl=300)
        self.assertEqual(value[:2], b"DG")
        self.assertEqual(value[2], 2)
        self.assertEqual(value[3], Kind.RRSET)
        self.assertEqual(value[4], 0)
        self.assertEqual(struct.unpack("!Q", value[5:13])[0], 1_700_000_000_250)
        self.assertEqual(struct.unpack("!I", value[13:17])[0], 300)
        self.assertEqual(value[17], Rank.ANSWER)
        self.assertEqual(struct.unpack("!H", value[18:20])[0], 2)
        first_rr = b"\x03www\x07example\x03com\x00" + struct.pack("!HHIH", dns.A, dns.IN, 300, 4) + bytes([192, 0, 2, 1])
        self.assertEqual(value[20 : 20 + len(first_rr)], first_rr)
        self.assertEqual(struct.unpack("!I", value[-4:])[0], zlib.crc32(value[:-4]))

    def test_owner_case_kept(self):
        """The owner is stored as received (the key is lowercased, the record is not)."""
        records = [dns.RRHeader(b"WWW.Example.COM", dns.A, dns.IN, 60, dns.Record_A("192.0.2.1"))]
        entry = fmt.decode_value(fmt.encode_value(Kind.RRSET, 0, 60, Rank.ANSWER, records))
        self.assertEqual(entry.records[0].name.name, b"WWW.Example.COM")

    def test_unencodable(self):
        """TTLs outside 1..2**31-1 and empty RRsets cannot be encoded."""
        record = [dns.RRHeader(b"a.example", dns.A, dns.IN, 60, dns.Record_A("192.0.2.1"))]
        for ttl in (0, 2**31):
            self.assertRaises(ValueError, fmt.encode_value, Kind.RRSET, 0, ttl, Rank.ANSWER, record)
        self.assertRaises(ValueError, fmt.encode_value, Kind.RRSET, 0, 60, Rank.ANSWER, [])


class CorruptValueTests(SynchronousTestCase):
    """decode_value returns None, never raises, for anything it cannot vouch for."""

    def test_every_truncation(self):
        """Every proper prefix of a value is rejected."""
        value = a_value()
        for n in range(len(value)):
            self.assertIsNone(fmt.decode_value(value[:n]), n)

    def test_every_bit_flip(self):
        """Flipping any single bit of a value is detected."""
        value = a_value()
        for i in range(len(value) * 8):
            damaged = bytearray(value)
            damaged[i // 8] ^= 1 << (i % 8)
            self.assertIsNone(fmt.decode_value(bytes(damaged)), i)

    def test_trailing_bytes(self):
        """Extra bytes after the records are rejected even inside a correct CRC."""
        value = a_value()
        self.assertIsNone(fmt.decode_value(recrc(value[:-4] + b"\x00" + value[-4:])))

    @settings(max_examples=500)
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data):
        """Random bytes are not a value."""
        self.assertIsNone(fmt.decode_value(data))

    @settings(max_examples=300)
    @given(st.binary(max_size=200))
    def test_random_bodies_in_a_good_frame(self, body):
        """Random bytes after a good header and with a correct CRC never crash the decoder."""
        header = struct.pack("!2sBBBQIBH", b"DG", 2, 1, 0, 0, 60, 3, 1)
        result = fmt.decode_value(recrc(header + body + b"\0\0\0\0"))
        self.assertTrue(result is None or isinstance(result, Entry))

    def test_other_versions(self):
        """A well-formed value of version 1 or 3 is not read by version-2 code (rolling upgrades)."""
        value = bytearray(a_value())
        for version in (1, 3):
            value[2] = version
            self.assertIsNone(fmt.decode_value(recrc(bytes(value))), version)
        value[2] = 2
        self.assertIsNotNone(fmt.decode_value(recrc(bytes(value))))

    def test_foreign_values(self):
        """Values another program wrote under the prefix are not read, whatever they hold."""
        for foreign in (b"", b"1", b"hello world", b'{"ttl": 300}', recrc(b"XX" + a_value()[2:])):
            self.assertIsNone(fmt.decode_value(foreign))

    def test_not_bytes(self):
        """Non-bytes (an int from a misconfigured client, None, str) are not values."""
        for thing in (None, 12, "DG\x01", bytearray(a_value())):
            self.assertIsNone(fmt.decode_value(thing))

    def test_bad_fields(self):
        """Unknown kinds and ranks, TTL 0, no records, or a negative entry without an SOA are rejected."""
        value = a_value()
        for offset, byte in ((3, 9), (4, 2), (17, 0), (17, 7)):
            damaged = bytearray(value)
            damaged[offset] = byte
            self.assertIsNone(fmt.decode_value(recrc(bytes(damaged))), (offset, byte))
        self.assertIsNone(fmt.decode_value(recrc(value[:13] + b"\0\0\0\0" + value[17:])))
        self.assertIsNone(fmt.decode_value(recrc(value[:18] + b"\0\0" + value[20:])))
        negative = bytearray(value)
        negative[3] = Kind.NXDOMAIN
        self.assertIsNone(fmt.decode_value(recrc(bytes(negative))))

    def test_mixed_types(self):
        """An RRset whose members disagree on type or class is rejected."""
        records = [
            dns.RRHeader(b"a.example", dns.A, dns.IN, 60, dns.Record_A("192.0.2.1")),
            dns.RRHeader(b"a.example", dns.AAAA, dns.IN, 60, dns.Record_AAAA("2001:db8::1")),
        ]
        self.assertIsNone(fmt.decode_value(fmt.encode_value(Kind.RRSET, 0, 60, Rank.ANSWER, records)))


class EntryTests(SynchronousTestCase):
    """Entry's countdown."""

    def test_countdown(self):
        """The TTL counts down by whole seconds from the time stored, and runs out at the TTL."""
        entry = fmt.decode_value(a_value(stored_at=1000.0, ttl=300))
        self.assertEqual(entry.remaining(1000.9), 300)
        self.assertEqual(entry.remaining(1100.2), 200)
        self.assertTrue(entry.live(1299.99))
        self.assertFalse(entry.live(1300.0))
        self.assertEqual([rr.ttl for rr in entry.headers(1100.2)], [200, 200])

    def test_reader_clock_behind(self):
        """A reader whose clock is behind the writer's never sees a TTL above the stored one."""
        entry = fmt.decode_value(a_value(stored_at=1000.0, ttl=300))
        self.assertEqual(entry.remaining(900.0), 300)

    def test_headers_are_new(self):
        """headers() builds new RRHeader objects each time."""
        entry = fmt.decode_value(a_value())
        first = entry.headers(0)
        first[0].ttl = 1
        self.assertEqual(entry.headers(0)[0].ttl, 300)


class KeyTests(SynchronousTestCase):
    """Key names: layout, case, escaping, parsing."""

    def test_layout(self):
        """Keys read as docs/redis-format.md shows them."""
        self.assertEqual(fmt.rrset_key(P, b"WWW.Example.com.", dns.A, dns.IN), b"dns:rr:{www.example.com}:1:1")
        self.assertEqual(fmt.nodata_key(P, b"www.example.com", dns.AAAA, dns.IN), b"dns:nd:{www.example.com}:28:1")
        self.assertEqual(fmt.nxdomain_key(P, b"gone.example.com", dns.IN), b"dns:nx:{gone.example.com}:1")
        self.assertEqual(fmt.rrset_key(P, b"", dns.NS, dns.IN), b"dns:rr:{.}:2:1")
        self.assertEqual(fmt.rrset_key(b"x:", b"_dmarc.example.com", dns.TXT, dns.IN), b"x:rr:{_dmarc.example.com}:16:1")

    def test_escaping(self):
        """Bytes that could confuse a key or a glob are written \\DDD."""
        self.assertEqual(fmt.key_owner(b"a:b.{c}*?[\\]"), b"a\\058b.\\123c\\125\\042\\063\\091\\092\\093")
        self.assertEqual(fmt.key_owner(b"\x00\xff"), b"\\000\\255")

    @settings(max_examples=300)
    @given(names, st.integers(0, 65535), st.integers(0, 65535))
    def test_parse_round_trip(self, name, type_, cls):
        """Every key parses back into the (lowercased) name, type and class it was made from."""
        lowered = name.lower()
        self.assertEqual(fmt.parse_key(P, fmt.rrset_key(P, name, type_, cls)), KeyInfo(Kind.RRSET, lowered, type_, cls))
        self.assertEqual(fmt.parse_key(P, fmt.nodata_key(P, name, type_, cls)), KeyInfo(Kind.NODATA, lowered, type_, cls))
        self.assertEqual(fmt.parse_key(P, fmt.nxdomain_key(P, name, cls)), KeyInfo(Kind.NXDOMAIN, lowered, None, cls))

    @given(names, names, st.integers(0, 300), st.integers(0, 300))
    def test_no_collisions(self, name1, name2, type1, type2):
        """Different questions never share a key."""
        if (name1.lower(), type1) != (name2.lower(), type2):
            self.assertNotEqual(fmt.rrset_key(P, name1, type1, 1), fmt.rrset_key(P, name2, type2, 1))

    def test_foreign_keys(self):
        """Keys that are not this format's are not parsed."""
        for key in (b"other:rr:{a}:1:1", b"dns:xx:{a}:1:1", b"dns:rr:{a}:1", b"dns:nx:{a}:1:1", b"dns:rr:{A}:1:1", b"dns:rr:{a\\9}:1:1"):
            self.assertIsNone(fmt.parse_key(P, key), key)


class FlushPatternTests(SynchronousTestCase):
    """flush_patterns selects exactly the keys a flush should remove (checked with Redis glob rules)."""

    NAMES = [b"example.com", b"www.example.com", b"a.b.example.com", b"notexample.com", b"example.net", b"", b"we:ird*.example.com"]

    def keys(self):
        """Every kind of key for every test name, as (key, name, type)."""
        out = []
        for name in self.NAMES:
            for type_ in (dns.A, dns.AAAA):
                out.append((fmt.rrset_key(P, name, type_, dns.IN), name, type_))
                out.append((fmt.nodata_key(P, name, type_, dns.IN), name, type_))
            out.append((fmt.nxdomain_key(P, name, dns.IN), name, None))
        out.append((b"dns:invalidation-epoch", None, None))
        return out

    def matched(self, **kwargs):
        """The (name, type) of the keys the patterns match."""
        regexes = [glob_to_regex(p) for p in fmt.flush_patterns(P, **kwargs)]
        return {(name, type_) for key, name, type_ in self.keys() if any(r.match(key) for r in regexes)}

    def test_everything(self):
        """A flush of everything matches every cache key and no other key under the prefix."""
        self.assertEqual(len(self.matched()), len(self.keys()) - 1 - len(self.NAMES) * 2)
        self.assertNotIn((None, None), self.matched())

    def test_name(self):
        """A name flush matches every key of that name only."""
        self.assertEqual(self.matched(name=b"WWW.example.com."), {(b"www.example.com", dns.A), (b"www.example.com", dns.AAAA), (b"www.example.com", None)})

    def test_name_and_type(self):
        """A name and type flush matches the RRset and NODATA of that type, and the NXDOMAIN."""
        self.assertEqual(self.matched(name=b"www.example.com", type=dns.AAAA), {(b"www.example.com", dns.AAAA), (b"www.example.com", None)})

    def test_type(self):
        """A type flush matches that type everywhere, and every NXDOMAIN."""
        matched = self.matched(type=dns.A)
        self.assertEqual({t for _, t in matched}, {dns.A, None})
        self.assertEqual(len(matched), 2 * len(self.NAMES))

    def test_subtree(self):
        """A subtree flush matches the name and the names below it, not look-alikes."""
        names = {n for n, _ in self.matched(name=b"example.com", subtree=True)}
        self.assertEqual(names, {b"example.com", b"www.example.com", b"a.b.example.com", b"we:ird*.example.com"})

    def test_escaped_name(self):
        """A name with escaped bytes is matched exactly."""
        self.assertEqual({n for n, _ in self.matched(name=b"we:ird*.example.com")}, {b"we:ird*.example.com"})

    def test_root_subtree(self):
        """A subtree flush of the root matches every cache key."""
        self.assertEqual(self.matched(name=b"", subtree=True), self.matched())

    def test_prefix_is_escaped(self):
        """Glob characters in the key prefix are taken literally."""
        pattern = fmt.flush_patterns(b"d*[1]:")[0]
        self.assertTrue(glob_to_regex(pattern).match(fmt.rrset_key(b"d*[1]:", b"a", 1, 1)))
        self.assertFalse(glob_to_regex(pattern).match(fmt.rrset_key(b"dx1:", b"a", 1, 1)))
