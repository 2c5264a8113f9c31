"""
Tests for dnsgo.dns.wire, the byte-level DNS helpers of the L1 hit path.

Malformed inputs are built byte by byte; well-formed ones come from
libraries nobody here wrote (twisted.names for responses, dnspython for
queries and for decoding what dnsgo.dns.wire builds), so the checks do not share
dnsgo's own idea of the format.
"""
import struct
from io import BytesIO

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.dns import records, wire

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WWW = b"\x03www\x07example\x03com\x00"


def header(qid=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    """Return a 12-byte DNS header."""
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def opt_rr(udp_size=1232, ttl=0, rdata=b"", owner=b"\x00", rdlength=None):
    """Return an OPT record's bytes; ``rdlength`` may lie about the rdata."""
    if rdlength is None:
        rdlength = len(rdata)
    return owner + struct.pack("!HHIH", 41, udp_size, ttl, rdlength) + rdata


def option(code, data):
    """Return one EDNS option (code, length, data)."""
    return struct.pack("!HH", code, len(data)) + data


def raw_query(name=WWW, qtype=1, qclass=1, opt=None, **header_fields):
    """Return a query for ``name``; ``opt`` is appended with ARCOUNT 1."""
    if opt is not None:
        header_fields.setdefault("ar", 1)
    body = name + struct.pack("!HH", qtype, qclass) + (opt or b"")
    return header(**header_fields) + body


def effective_ttl(ttl):
    """A TTL as RFC 2181 reads it: the top bit set means 0."""
    return 0 if ttl & 0x80000000 else ttl


class ParseQueryFormatErrorTests(SynchronousTestCase):
    """parse_query raises FormatError, with what the reply needs, for malformed queries."""

    def assertFormatError(self, data):
        """Return the FormatError parse_query raises for ``data``."""
        return self.assertRaises(wire.FormatError, wire.parse_query, data)

    def test_short_header(self):
        """A message shorter than 12 bytes cannot be answered: query_id is None."""
        for data in (b"", b"\x12", raw_query()[:11]):
            self.assertIsNone(self.assertFormatError(data).query_id)

    def test_response_is_dropped(self):
        """A message with QR=1 gets query_id None, so no reply feeds a loop."""
        error = self.assertFormatError(raw_query(flags=0x8100))
        self.assertIsNone(error.query_id)

    def test_qdcount_zero(self):
        """No question: FORMERR with the ID, opcode and RD, and no question bytes."""
        error = self.assertFormatError(header(qid=77, flags=0x0100 | (2 << 11), qd=0))
        self.assertEqual(
            (error.query_id, error.opcode, error.rd, error.question), (77, 2, True, b"")
        )

    def test_qdcount_two(self):
        """Two questions are refused."""
        data = header(qd=2) + (WWW + b"\x00\x01\x00\x01") * 2
        self.assertEqual(self.assertFormatError(data).query_id, 0x1234)

    def test_answer_records(self):
        """A query with an answer record is malformed; the question is still known."""
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
        error = self.assertFormatError(raw_query(an=1) + rr)
        self.assertEqual(error.question, WWW + b"\x00\x01\x00\x01")

    def test_authority_records(self):
        """A query with an authority record is malformed."""
        rr = b"\x00" + struct.pack("!HHIH", 2, 1, 60, 1) + b"\x00"
        self.assertFormatError(raw_query(ns=1) + rr)

    def test_label_too_long(self):
        """A label of 64 bytes is rejected."""
        self.assertFormatError(raw_query(name=b"\x40" + b"a" * 64 + b"\x00"))

    def test_unknown_label_type(self):
        """The obsolete extended label types (0x40, 0x80) are rejected."""
        self.assertFormatError(raw_query(name=b"\x41" + b"a" * 65 + b"\x00"))
        self.assertFormatError(raw_query(name=b"\x81" + b"a" * 129 + b"\x00"))

    def test_name_too_long(self):
        """A name of 256 bytes is rejected, one of 255 accepted."""
        longest = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"
        self.assertEqual(len(longest), 255)
        self.assertEqual(wire.parse_query(raw_query(name=longest)).qname, longest)
        too_long = (b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"b" * 62 + b"\x00"
        self.assertFormatError(raw_query(name=too_long))

    def test_compression_pointer(self):
        """A compression pointer in the question is not allowed in a query."""
        error = self.assertFormatError(raw_query(name=b"\x03www\xc0\x0c"))
        self.assertEqual(error.query_id, 0x1234)
        self.assertIn("compression", str(error))

    def test_trailing_garbage(self):
        """Bytes after the question, or after the OPT record, are rejected."""
        self.assertFormatError(raw_query() + b"\x00")
        self.assertFormatError(raw_query(opt=opt_rr()) + b"\x00")

    def test_truncated_question(self):
        """A question cut inside its name or inside its type and class is rejected."""
        full = raw_query()
        for cut in (13, 20, len(full) - 4, len(full) - 1):
            error = self.assertFormatError(full[:cut])
            self.assertEqual(error.query_id, 0x1234)

    def test_two_opt_records(self):
        """Two OPT records are FORMERR (RFC 6891), and the reply is to carry an OPT."""
        error = self.assertFormatError(raw_query(opt=opt_rr() + opt_rr(), ar=2))
        self.assertTrue(error.edns)

    def test_opt_with_non_root_owner(self):
        """An OPT record must be owned by the root."""
        error = self.assertFormatError(raw_query(opt=opt_rr(owner=b"\x01a\x00")))
        self.assertFalse(error.edns)

    def test_additional_record_not_opt(self):
        """The one additional record allowed is an OPT."""
        rr = b"\x00" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
        self.assertFormatError(raw_query(opt=rr))

    def test_bad_opt_rdlength(self):
        """An OPT whose rdlength overruns or underruns the message is rejected."""
        self.assertFormatError(raw_query(opt=opt_rr(rdata=b"\x00\x0a", rdlength=8)))
        self.assertFormatError(raw_query(opt=opt_rr(rdlength=1)))
        error = self.assertFormatError(raw_query(opt=opt_rr(udp_size=4096)[:-1]))
        self.assertEqual(error.query_id, 0x1234)

    def test_bad_option_length(self):
        """An EDNS option overrunning the OPT rdata is rejected, and the error says EDNS."""
        rdata = struct.pack("!HH", 10, 9) + b"\x01" * 8
        error = self.assertFormatError(raw_query(opt=opt_rr(rdata=rdata, ttl=0x8000)))
        self.assertTrue(error.edns)
        self.assertTrue(error.do)
        self.assertFormatError(raw_query(opt=opt_rr(rdata=b"\x00\x0a\x00")))


class ParseQueryTests(SynchronousTestCase):
    """parse_query reads the question, flags and EDNS of valid queries."""

    def test_plain_query(self):
        """A query without EDNS: 512-byte limit, question copied, key built."""
        info = wire.parse_query(raw_query(qid=7, flags=0x0110, qtype=28))
        self.assertEqual(
            (info.id, info.opcode, info.rd, info.cd, info.qname, info.qtype, info.qclass),
            (7, 0, True, True, WWW, 28, 1),
        )
        self.assertEqual(info.question, WWW + b"\x00\x1c\x00\x01")
        self.assertEqual((info.edns, info.udp_size, info.do, info.edns_version), (False, 512, False, 0))
        self.assertEqual(info.key, WWW + b"\x00\x1c\x00\x01" + bytes([wire.KEY_RD | wire.KEY_CD]))

    def test_udp_size_floor(self):
        """An OPT advertising less than 512 bytes counts as 512; more is kept."""
        self.assertEqual(wire.parse_query(raw_query(opt=opt_rr(udp_size=100))).udp_size, 512)
        self.assertEqual(wire.parse_query(raw_query(opt=opt_rr(udp_size=0))).udp_size, 512)
        self.assertEqual(wire.parse_query(raw_query(opt=opt_rr(udp_size=4096))).udp_size, 4096)

    def test_do_bit_and_version(self):
        """The DO bit and the EDNS version come from the OPT TTL field."""
        info = wire.parse_query(raw_query(opt=opt_rr(ttl=(1 << 16) | 0x8000)))
        self.assertEqual((info.edns, info.do, info.edns_version), (True, True, 1))
        info = wire.parse_query(raw_query(opt=opt_rr(ttl=0)))
        self.assertEqual((info.edns, info.do, info.edns_version), (True, False, 0))

    def test_options_not_in_key(self):
        """Cookies and padding do not change the key (RFC 7873)."""
        plain = wire.parse_query(raw_query(opt=opt_rr()))
        cookie = wire.parse_query(raw_query(opt=opt_rr(rdata=option(10, b"\x01" * 8))))
        padded = wire.parse_query(
            raw_query(opt=opt_rr(rdata=option(10, b"\x02" * 24) + option(12, b"\x00" * 40)))
        )
        self.assertEqual(plain.key, cookie.key)
        self.assertEqual(plain.key, padded.key)

    def test_flags_in_key(self):
        """RD, CD, DO and the presence of EDNS each change the key."""
        keys = set()
        for rd in (0, 0x0100):
            for cd in (0, 0x0010):
                keys.add(wire.parse_query(raw_query(flags=rd | cd)).key)
                for do in (0, 0x8000):
                    keys.add(wire.parse_query(raw_query(flags=rd | cd, opt=opt_rr(ttl=do))).key)
        self.assertEqual(len(keys), 12)

    def test_other_header_bits_not_in_key(self):
        """AD and the Z bit do not split the cache."""
        self.assertEqual(
            wire.parse_query(raw_query(flags=0x0100)).key,
            wire.parse_query(raw_query(flags=0x0160)).key,
        )

    def test_type_and_class_in_key(self):
        """Type and class are part of the key; HTTPS (65, 'A') is not lowercased into 97."""
        keys = {wire.parse_query(raw_query(qtype=t, qclass=c)).key for t, c in ((1, 1), (28, 1), (1, 3), (65, 1), (97, 1))}
        self.assertEqual(len(keys), 5)

    def test_case(self):
        """The key ignores case; the name and question keep it (for 0x20)."""
        mixed = b"\x03WwW\x07ExAmPlE\x03CoM\x00"
        lower = wire.parse_query(raw_query())
        upper = wire.parse_query(raw_query(name=mixed))
        self.assertEqual(upper.key, lower.key)
        self.assertEqual(upper.qname, mixed)
        self.assertEqual(upper.question[: len(mixed)], mixed)

    def test_root_name(self):
        """The root name (". NS") is a valid question."""
        info = wire.parse_query(raw_query(name=b"\x00", qtype=2))
        self.assertEqual((info.qname, info.qtype), (b"\x00", 2))

    def test_other_opcode(self):
        """Another opcode is not an error: the caller answers NOTIMP."""
        update = header(flags=5 << 11, qd=1, ns=1, ar=1) + WWW + b"\x00\x06\x00\x01"
        update += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
        update += opt_rr(ttl=0x8000, udp_size=4000)
        info = wire.parse_query(update)
        self.assertEqual((info.opcode, info.qname, info.qtype), (5, WWW, 6))
        self.assertEqual((info.edns, info.do, info.udp_size), (True, True, 4000))

    def test_other_opcode_bad_question(self):
        """Another opcode with an unreadable question is a FormatError with the opcode."""
        error = self.assertRaises(
            wire.FormatError, wire.parse_query, raw_query(flags=4 << 11, name=b"\xc0\x0c")
        )
        self.assertEqual(error.opcode, 4)

    @PROPERTY
    @given(
        labels=st.lists(st.binary(min_size=1, max_size=20), min_size=0, max_size=5),
        qtype=st.integers(1, 65535),
        qclass=st.sampled_from([1, 3, 255]),
        qid=st.integers(0, 65535),
        rd=st.booleans(),
        cd=st.booleans(),
        edns=st.booleans(),
        payload=st.integers(0, 65535),
        dnssec=st.booleans(),
        cookie=st.none() | st.binary(min_size=8, max_size=8),
    )
    def test_agrees_with_dnspython(self, labels, qtype, qclass, qid, rd, cd, edns, payload, dnssec, cookie):
        """For any query dnspython builds, parse_query reads what dnspython reads back."""
        name = dns.name.Name(labels + [b""])
        options = [dns.edns.CookieOption(cookie, b"")] if cookie else []
        message = dns.message.make_query(
            name,
            qtype,
            qclass,
            use_edns=0 if edns else None,
            payload=payload if edns else None,
            want_dnssec=dnssec and edns,
            options=options if edns else None,
            id=qid,
            flags=(dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0),
        )
        data = message.to_wire()
        theirs = dns.message.from_wire(data)
        info = wire.parse_query(data)
        self.assertEqual(info.id, theirs.id)
        self.assertEqual(info.flags, theirs.flags)
        self.assertEqual((info.rd, info.cd, info.opcode), (rd, cd, 0))
        self.assertEqual(info.qname, theirs.question[0].name.to_wire())
        self.assertEqual((info.qtype, info.qclass), (theirs.question[0].rdtype, theirs.question[0].rdclass))
        self.assertEqual(info.edns, theirs.edns >= 0)
        self.assertEqual(info.udp_size, max(512, theirs.payload) if edns else 512)
        self.assertEqual(info.do, bool(theirs.ednsflags & dns.flags.DO))
        self.assertEqual(info.edns_version, max(theirs.edns, 0))
        lowered = dns.message.make_query(
            dns.name.Name([label.lower() for label in labels] + [b""]),
            qtype,
            qclass,
            use_edns=0 if edns else None,
            want_dnssec=dnssec and edns,
            flags=(dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0),
        )
        self.assertEqual(wire.parse_query(lowered.to_wire()).key, info.key)

    @PROPERTY
    @given(st.binary(max_size=80))
    def test_random_bytes(self, data):
        """Arbitrary bytes give a QueryInfo or a FormatError, never another exception."""
        try:
            wire.parse_query(data)
        except wire.FormatError:
            pass


class ParseQuestionTests(SynchronousTestCase):
    """parse_question reads the question of upstream replies."""

    def test_reads_and_lowercases(self):
        """The name comes back lowercased, with type, class and the question's end."""
        data = raw_query(name=b"\x03WWW\x07example\x03com\x00", qtype=15, flags=0x8180) + b"rest"
        self.assertEqual(wire.parse_question(data), (WWW, 15, 1, 12 + len(WWW) + 4))

    def test_malformed(self):
        """Loops, pointers into the header or past the end, bad counts and truncation are ValueError."""
        bad = [
            b"\x00" * 11,
            header(qd=0),
            header(qd=2) + (WWW + b"\x00\x01\x00\x01") * 2,
            raw_query(name=b"\xc0\x0c"),
            raw_query(name=b"\x01a\xc0\x0c"),
            raw_query(name=b"\xc0\x02"),
            raw_query(name=b"\xc0\xff"),
            raw_query(name=b"\x40" + b"a" * 64 + b"\x00"),
            raw_query()[:-1],
            header() + b"\x05ab",
        ]
        for data in bad:
            self.assertRaises(ValueError, wire.parse_question, data)

    @PROPERTY
    @given(st.binary(max_size=60))
    def test_random_bytes(self, tail):
        """Arbitrary questions give a result or ValueError, never a hang or another exception."""
        try:
            wire.parse_question(header() + tail)
        except ValueError:
            pass


# --- responses built with twisted.names -------------------------------------

_LABELS = st.sampled_from([b"www", b"WWW", b"example", b"com", b"Net", b"mail", b"a-1", b"x_y"]) | st.binary(
    min_size=1, max_size=12
).filter(lambda label: b"." not in label)
_NAMES = st.lists(_LABELS, min_size=0, max_size=4).map(b".".join)
_TTLS = st.sampled_from([0, 1, 300, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1)
_IPV4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")))
_IPV6 = st.binary(min_size=16, max_size=16).map(
    lambda b: ":".join(b[i : i + 2].hex() for i in range(0, 16, 2))
)
_U32 = st.integers(0, 2**32 - 1)
_S32 = st.integers(0, 2**31 - 1)
_PAYLOADS = st.one_of(
    st.builds(lambda a: (tdns.A, tdns.Record_A(a)), _IPV4),
    st.builds(lambda a: (tdns.AAAA, tdns.Record_AAAA(a)), _IPV6),
    st.builds(lambda n: (tdns.CNAME, tdns.Record_CNAME(n)), _NAMES),
    st.builds(lambda n: (tdns.NS, tdns.Record_NS(n)), _NAMES),
    st.builds(lambda p, n: (tdns.MX, tdns.Record_MX(p, n)), st.integers(0, 65535), _NAMES),
    st.builds(
        lambda texts: (tdns.TXT, tdns.Record_TXT(*texts)),
        st.lists(st.binary(max_size=40), min_size=1, max_size=3),
    ),
    st.builds(
        lambda m, r, s, a, b, c, d: (tdns.SOA, tdns.Record_SOA(m, r, s, a, b, c, d)),
        _NAMES, _NAMES, _U32, _S32, _S32, _S32, _U32,
    ),
)
_RRS = st.builds(
    lambda name, payload, ttl: tdns.RRHeader(name, payload[0], tdns.IN, ttl, payload[1]),
    _NAMES,
    _PAYLOADS,
    _TTLS,
)


@st.composite
def responses(draw):
    """A twisted.names response Message: random question, sections, flags and TTLs."""
    message = tdns.Message(
        id=draw(st.integers(0, 65535)),
        answer=1,
        recDes=draw(st.integers(0, 1)),
        recAv=1,
        auth=draw(st.integers(0, 1)),
        rCode=draw(st.sampled_from([0, 2, 3, 5])),
        checkingDisabled=draw(st.integers(0, 1)),
        authenticData=draw(st.integers(0, 1)),
        maxSize=0,
    )
    message.queries = [tdns.Query(draw(_NAMES), draw(st.sampled_from([1, 28, 15, 16, 6, 2, 5, 65])), tdns.IN)]
    message.answers = draw(st.lists(_RRS, max_size=4))
    message.authority = draw(st.lists(_RRS, max_size=3))
    message.additional = draw(st.lists(_RRS, max_size=3))
    return message


def decode(data):
    """Decode bytes with twisted.names (maxSize 0: no silent truncation on re-encoding)."""
    message = tdns.Message(maxSize=0)
    message.fromStr(data)
    return message


def all_records(message):
    """The records of a twisted Message in wire order."""
    return message.answers + message.authority + message.additional


def twisted_query(name, qtype, qid, rd, cd):
    """Query bytes for ``name`` built by twisted.names."""
    message = tdns.Message(id=qid, recDes=rd, checkingDisabled=cd)
    message.queries = [tdns.Query(name, qtype, tdns.IN)]
    return message.toStr()


def encoded_question(message):
    """The question section of a twisted Message, encoded alone (uncompressed)."""
    strio = BytesIO()
    message.queries[0].encode(strio)
    return strio.getvalue()


def flip_case(name, mask):
    """Return ``name`` with the case of some ASCII letters swapped (0x20 style)."""
    return bytes(
        c ^ 0x20 if (chr(c).isascii() and chr(c).isalpha() and (mask >> (i % 64)) & 1) else c
        for i, c in enumerate(name)
    )


class ScanResponseTests(SynchronousTestCase):
    """scan_response finds TTL fields, counts, rcode and the OPT of a response."""

    def response(self):
        """A small twisted-built response with an A record in each section."""
        message = tdns.Message(id=1, answer=1, maxSize=0)
        message.queries = [tdns.Query(b"www.example.com", tdns.A)]
        message.answers = [tdns.RRHeader(b"www.example.com", tdns.A, ttl=300, payload=tdns.Record_A("192.0.2.1"))]
        message.authority = [tdns.RRHeader(b"example.com", tdns.NS, ttl=0x80000001, payload=tdns.Record_NS(b"ns.example.com"))]
        message.additional = [tdns.RRHeader(b"ns.example.com", tdns.A, ttl=60, payload=tdns.Record_A("192.0.2.53"))]
        return message.toStr()

    def test_layout(self):
        """Offsets, TTLs (top bit read as 0), the minimum and the counts are found."""
        data = self.response()
        layout = wire.scan_response(data)
        self.assertEqual(layout.orig_ttls, (300, 0, 60))
        self.assertEqual(
            [struct.unpack_from("!I", data, offset)[0] for offset in layout.ttl_offsets],
            [300, 0x80000001, 60],
        )
        self.assertEqual(layout.min_ttl, 0)
        self.assertEqual((layout.ancount, layout.nscount, layout.arcount, layout.qdcount), (1, 1, 1, 1))
        self.assertEqual(layout.question_end, 12 + len(WWW) + 4)
        self.assertIsNone(layout.opt_offset)

    def test_no_records(self):
        """Without records min_ttl is None."""
        layout = wire.scan_response(raw_query(flags=0x8183))
        self.assertEqual((layout.min_ttl, layout.ttl_offsets, layout.rcode), (None, (), 3))

    def test_opt_found_and_extended_rcode(self):
        """The OPT is located, left out of the TTLs, and its upper rcode bits read."""
        data = self.response()
        with_opt = wire.add_opt(data, 1232, True, ext_rcode=1)
        layout = wire.scan_response(with_opt)
        self.assertEqual((layout.opt_offset, layout.opt_length), (len(data), 11))
        self.assertEqual(layout.orig_ttls, (300, 0, 60))
        self.assertEqual(layout.rcode, wire.BADVERS)
        self.assertEqual(layout.arcount, 2)

    def test_malformed(self):
        """Loops, forward and out-of-range pointers, truncation, stray bytes and bad OPTs are ValueError."""
        question = raw_query(flags=0x8180, an=1)
        a_fixed = struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
        good = question + b"\xc0\x0c" + a_fixed
        wire.scan_response(good)
        end = len(question)
        bad = [
            b"\x00" * 11,
            question + b"\xc0" + bytes([end]) + a_fixed,  # points at itself
            question + b"\x01a\xc0" + bytes([end]) + a_fixed,  # loop through a label
            question + b"\xc0" + bytes([end + 2]) + a_fixed,  # forward
            question + b"\xc0\x05" + a_fixed,  # into the header
            question + b"\xc0\xff" + a_fixed,  # past the end
            question + b"\xc0",  # truncated pointer
            good[:-1],  # truncated rdata
            question + b"\xc0\x0c" + a_fixed[:5],  # truncated fixed part
            good + b"\x00",  # trailing garbage
            raw_query(flags=0x8180, an=2)[:-4],  # truncated question
            raw_query(flags=0x8180, opt=opt_rr(owner=b"\x01a\x00")),
            raw_query(flags=0x8180, opt=opt_rr() + opt_rr(), ar=2),
            raw_query(flags=0x8180, opt=opt_rr(), an=1, ar=0),  # OPT in the answer section
            raw_query(flags=0x8180, opt=opt_rr(rdlength=4)),
        ]
        for data in bad:
            self.assertRaises(ValueError, wire.scan_response, data)

    def test_pointer_chain_to_earlier_name(self):
        """A pointer to a name that itself ends in a pointer further back is fine."""
        question = raw_query(flags=0x8180, an=2)
        a_fixed = struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
        first = len(question)
        data = question + b"\x01x\xc0\x0c" + a_fixed + b"\xc0" + bytes([first]) + a_fixed
        self.assertEqual(wire.scan_response(data).orig_ttls, (60, 60))

    @PROPERTY
    @given(responses())
    def test_agrees_with_twisted(self, message):
        """TTLs, counts, rcode and the question end match what twisted.names decodes."""
        data = message.toStr()
        layout = wire.scan_response(data)
        decoded = decode(data)
        self.assertEqual(layout.orig_ttls, tuple(effective_ttl(rr.ttl) for rr in all_records(decoded)))
        self.assertEqual(
            (layout.ancount, layout.nscount, layout.arcount),
            (len(decoded.answers), len(decoded.authority), len(decoded.additional)),
        )
        self.assertEqual(layout.min_ttl, min(layout.orig_ttls, default=None))
        self.assertEqual(layout.rcode, message.rCode)
        self.assertEqual(layout.question_end, 12 + len(encoded_question(message)))

    @PROPERTY
    @given(responses(), st.data())
    def test_corrupted_responses(self, message, data):
        """A response with one byte changed scans or raises ValueError, nothing else."""
        raw = bytearray(message.toStr())
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
        try:
            wire.scan_response(bytes(raw))
        except ValueError:
            pass


class RenderAndPatchTests(SynchronousTestCase):
    """render_ttls and patch_header turn a stored reply into the reply to a new query."""

    def test_render_counts_down_and_clamps(self):
        """Each TTL loses the elapsed seconds and stops at 0; the input is unchanged."""
        data = raw_query(flags=0x8180, an=2)
        a_fixed = b"\x00\x01\x00\x01" + b"\x00\x00\x00\x00" + b"\x00\x04\x01\x02\x03\x04"
        data += b"\xc0\x0c" + a_fixed + b"\xc0\x0c" + a_fixed
        layout = wire.scan_response(data)
        out = wire.render_ttls(data, layout.ttl_offsets, (300, 10), 20)
        self.assertEqual([struct.unpack_from("!I", out, o)[0] for o in layout.ttl_offsets], [280, 0])
        self.assertEqual(wire.scan_response(data).orig_ttls, (0, 0))
        self.assertIsInstance(out, bytes)
        self.assertIsInstance(wire.render_ttls(bytearray(data), layout.ttl_offsets, (1, 1), 0), bytes)

    def test_patch_header(self):
        """ID, RD and CD come from the query, the question bytes too; the rest from the template."""
        template = raw_query(qid=1, flags=0x8000 | 0x0080 | 0x0020 | 3, an=0, name=WWW)
        template = template[:6] + b"\x00\x02" + template[8:] + b"rest of the message"
        query = wire.parse_query(raw_query(qid=0xBEEF, flags=0x0110, name=b"\x03wWw\x07EXAMPLE\x03com\x00"))
        out = wire.patch_header(template, query)
        qid, flags = struct.unpack_from("!HH", out)
        self.assertEqual(qid, 0xBEEF)
        self.assertEqual(flags, 0x8000 | 0x0080 | 0x0020 | 3 | 0x0110)
        self.assertEqual(out[4:12], template[4:12])
        self.assertEqual(out[12:-19], query.question)
        self.assertTrue(out.endswith(b"rest of the message"))
        cleared = wire.patch_header(out, wire.parse_query(raw_query(flags=0)))
        self.assertEqual(struct.unpack_from("!H", cleared, 2)[0], 0x8000 | 0x0080 | 0x0020 | 3)

    @PROPERTY
    @given(
        responses(),
        st.integers(0, 65535),
        st.integers(0, 1),
        st.integers(0, 1),
        st.sampled_from([0, 1, 59, 3600]) | st.integers(0, 2**32),
    )
    def test_same_bytes_as_twisted(self, message, qid, rd, cd, elapsed):
        """
        With the query's name in the stored case, hit-path output is byte for
        byte what twisted.names encodes after decoding the stored reply and
        editing the ID, RD, CD and TTLs in the objects.

        Bytes are a meaningful comparison here because both sides use the
        same encoder on the same names: twisted re-encoding its own output
        reproduces it exactly (asserted first), so any TTL written at a wrong
        offset, or any header bit lost, shows up as a differing byte.
        """
        stored = message.toStr()
        self.assertEqual(decode(stored).toStr(), stored)
        question = message.queries[0]
        query = wire.parse_query(twisted_query(question.name.name, question.type, qid, rd, cd))
        layout = wire.scan_response(stored)
        ours = wire.patch_header(wire.render_ttls(stored, layout.ttl_offsets, layout.orig_ttls, elapsed), query)

        expected = decode(stored)
        expected.id, expected.recDes, expected.checkingDisabled = qid, rd, cd
        for rr in all_records(expected):
            rr.ttl = max(0, effective_ttl(rr.ttl) - elapsed)
        self.assertEqual(ours, expected.toStr())

    @PROPERTY
    @given(responses(), st.integers(0, 65535), st.integers(0, 2**64 - 1), st.integers(0, 100000))
    def test_case_changed_query_decodes_like_twisted(self, message, qid, mask, elapsed):
        """
        A query asking in another case (0x20) gets its own question bytes
        back, and otherwise the reply twisted.names describes: same header,
        same records (names compared case-insensitively, since names
        compressed against the question now read in the query's case), TTLs
        counted down.

        Bytes cannot be compared here: twisted's compressor matches names
        case-sensitively, so re-encoding the edited objects compresses
        differently, while the hit path keeps the stored layout.
        """
        stored = message.toStr()
        question = message.queries[0]
        asked = flip_case(question.name.name, mask)
        query = wire.parse_query(twisted_query(asked, question.type, qid, 1, 0))
        layout = wire.scan_response(stored)
        ours = decode(
            wire.patch_header(wire.render_ttls(stored, layout.ttl_offsets, layout.orig_ttls, elapsed), query)
        )

        expected = decode(stored)
        expected.id, expected.recDes, expected.checkingDisabled = qid, 1, 0
        for rr in all_records(expected):
            rr.ttl = rr.payload.ttl = max(0, effective_ttl(rr.ttl) - elapsed)
        self.assertEqual(ours.queries[0].name.name, asked)
        for field in ("id", "answer", "opCode", "auth", "trunc", "recDes", "recAv", "authenticData", "checkingDisabled", "rCode"):
            self.assertEqual(getattr(ours, field), getattr(expected, field), field)
        self.assertEqual(ours.queries, expected.queries)
        for section in ("answers", "authority", "additional"):
            self.assertEqual(getattr(ours, section), getattr(expected, section), section)


class StripOptTests(SynchronousTestCase):
    """strip_opt removes the hop-by-hop OPT record from a reply."""

    def setUp(self):
        message = tdns.Message(id=1, answer=1, maxSize=0)
        message.queries = [tdns.Query(b"example.com", tdns.MX)]
        message.answers = [tdns.RRHeader(b"example.com", tdns.MX, ttl=30, payload=tdns.Record_MX(10, b"mx.example.com"))]
        message.additional = [tdns.RRHeader(b"mx.example.com", tdns.A, ttl=60, payload=tdns.Record_A("192.0.2.25"))]
        self.plain = message.toStr()

    def test_last_record(self):
        """An OPT at the end goes, and ARCOUNT drops by one."""
        with_opt = wire.add_opt(self.plain, 4096, True, ede=(3, "stale"))
        self.assertEqual(wire.strip_opt(with_opt, wire.scan_response(with_opt)), self.plain)

    def test_not_last(self):
        """An OPT before another additional record goes too; the result scans cleanly."""
        record = b"\x00" + struct.pack("!HHIH", 16, 1, 5, 2) + b"\x01x"
        with_opt = wire.add_opt(self.plain, 1232, False)
        arcount = struct.unpack_from("!H", with_opt, 10)[0] + 1
        with_opt = with_opt[:10] + struct.pack("!H", arcount) + with_opt[12:] + record
        stripped = wire.strip_opt(with_opt, wire.scan_response(with_opt))
        expected = self.plain[:10] + struct.pack("!H", 2) + self.plain[12:] + record
        self.assertEqual(stripped, expected)
        self.assertEqual(wire.scan_response(stripped).orig_ttls, (30, 60, 5))

    def test_no_opt(self):
        """Without an OPT the message is returned as it is."""
        self.assertEqual(wire.strip_opt(self.plain, wire.scan_response(self.plain)), self.plain)


class TruncateAndOptTests(SynchronousTestCase):
    """truncate and add_opt build what dnspython reads as intended."""

    def test_ede_text_utf8(self):
        """The EDE text is UTF-8 and the option length covers the info code."""
        out = wire.add_opt(header(qd=0), 1232, False, ede=(3, "é"))
        self.assertEqual(out[12:], opt_rr(rdata=option(15, b"\x00\x03" + "é".encode())))

    @PROPERTY
    @given(
        responses(),
        st.integers(512, 65535),
        st.booleans(),
        st.sampled_from([0, 1, 2, 3, 5, 16, 23]) | st.integers(0, 4095),
        st.none() | st.tuples(st.integers(0, 65535), st.text(max_size=30).filter(lambda t: not t.endswith("\x00"))),
    )
    def test_truncated_reply_decodes_with_dnspython(self, message, udp_size, do, rcode, ede):
        """A truncated reply with an OPT: TC set, header and question kept, no records, EDNS as asked."""
        stored = message.toStr()
        stored = stored[:3] + bytes([(stored[3] & 0xF0) | (rcode & 0xF)]) + stored[4:]
        out = wire.add_opt(wire.truncate(stored, wire.scan_response(stored).question_end), udp_size, do, rcode >> 4, ede)
        theirs = dns.message.from_wire(out)
        self.assertEqual(theirs.id, message.id)
        self.assertTrue(theirs.flags & dns.flags.TC)
        self.assertEqual(theirs.flags & ~dns.flags.TC & 0x87F0, struct.unpack_from("!H", stored, 2)[0] & 0x87F0)
        self.assertEqual(len(theirs.question), 1)
        self.assertEqual(theirs.question[0].name.to_wire(), encoded_question(message)[:-4])
        self.assertEqual((theirs.answer, theirs.authority, theirs.additional), ([], [], []))
        self.assertEqual((theirs.edns, theirs.payload), (0, udp_size))
        self.assertEqual(bool(theirs.ednsflags & dns.flags.DO), do)
        self.assertEqual(theirs.rcode(), rcode)
        if ede is None:
            self.assertEqual(theirs.options, ())
        else:
            (option_,) = theirs.options
            self.assertEqual(option_.otype, dns.edns.OptionType.EDE)
            self.assertEqual((option_.code, option_.text or ""), ede)

    @PROPERTY
    @given(responses(), st.integers(512, 4096), st.booleans())
    def test_add_opt_keeps_records(self, message, udp_size, do):
        """add_opt on a full reply keeps every record, and dnspython sees the OPT."""
        stored = message.toStr()
        theirs = dns.message.from_wire(wire.add_opt(stored, udp_size, do))
        plain = dns.message.from_wire(stored)
        self.assertEqual((theirs.answer, theirs.authority, theirs.additional), (plain.answer, plain.authority, plain.additional))
        self.assertEqual((theirs.payload, bool(theirs.ednsflags & dns.flags.DO)), (udp_size, do))


class ErrorReplyTests(SynchronousTestCase):
    """error_reply answers with only a header, the question and maybe an OPT."""

    def test_from_query_info(self):
        """QR, RA, ID, opcode, RD, CD and the question are set; no OPT without EDNS."""
        query = wire.parse_query(raw_query(qid=99, flags=0x0110))
        theirs = dns.message.from_wire(wire.error_reply(query, wire.SERVFAIL))
        self.assertEqual(theirs.id, 99)
        self.assertEqual(theirs.flags & 0xFFF0, dns.flags.QR | dns.flags.RA | dns.flags.RD | dns.flags.CD)
        self.assertEqual(theirs.rcode(), dns.rcode.SERVFAIL)
        self.assertEqual(theirs.question[0].name, dns.name.from_text("www.example.com."))
        self.assertEqual(theirs.edns, -1)

    def test_from_bytes_with_edns(self):
        """Raw query bytes are parsed; with EDNS the reply has an OPT with the query's DO."""
        data = raw_query(opt=opt_rr(ttl=0x8000))
        theirs = dns.message.from_wire(wire.error_reply(data, wire.REFUSED, ede=(18, "prohibited")))
        self.assertEqual((theirs.rcode(), theirs.edns, theirs.payload), (dns.rcode.REFUSED, 0, 1232))
        self.assertTrue(theirs.ednsflags & dns.flags.DO)
        self.assertEqual((theirs.options[0].code, theirs.options[0].text), (18, "prohibited"))

    def test_badvers(self):
        """BADVERS puts 0 in the header and 1 in the OPT's extended rcode."""
        query = wire.parse_query(raw_query(opt=opt_rr(ttl=1 << 16)))
        out = wire.error_reply(query, wire.BADVERS)
        self.assertEqual(out[3] & 0xF, 0)
        self.assertEqual(dns.message.from_wire(out).rcode(), dns.rcode.BADVERS)

    def test_large_rcode_without_edns(self):
        """Without EDNS only the low four bits of an rcode can be sent."""
        out = wire.error_reply(wire.parse_query(raw_query()), wire.BADVERS)
        self.assertEqual(len(out), 12 + len(WWW) + 4)
        self.assertEqual(out[3] & 0xF, 0)

    def test_from_format_error(self):
        """A FormatError's ID, opcode, RD and question are used; qdcount 0 when no question."""
        error = self.assertRaises(wire.FormatError, wire.parse_query, header(qid=5, flags=0x0100 | (1 << 11), qd=0))
        theirs = dns.message.from_wire(wire.error_reply(error, wire.FORMERR))
        self.assertEqual((theirs.id, theirs.opcode(), theirs.rcode(), theirs.question), (5, 1, dns.rcode.FORMERR, []))
        self.assertTrue(theirs.flags & dns.flags.RD)
        error = self.assertRaises(wire.FormatError, wire.parse_query, raw_query(opt=opt_rr() + opt_rr(), ar=2))
        theirs = dns.message.from_wire(wire.error_reply(error, wire.FORMERR))
        self.assertEqual((len(theirs.question), theirs.edns), (1, 0))

    def test_notimp_for_other_opcode(self):
        """An UPDATE gets NOTIMP with its opcode copied."""
        query = wire.parse_query(raw_query(flags=5 << 11, qtype=6))
        theirs = dns.message.from_wire(wire.error_reply(query, wire.NOTIMP))
        self.assertEqual((theirs.opcode(), theirs.rcode()), (5, dns.rcode.NOTIMP))

    def test_unanswerable(self):
        """A response or a runt gets no reply: ValueError."""
        self.assertRaises(ValueError, wire.error_reply, raw_query(flags=0x8000), wire.FORMERR)
        self.assertRaises(ValueError, wire.error_reply, b"\x00\x01", wire.FORMERR)


class BuildQueryTests(SynchronousTestCase):
    """build_query makes the upstream query, always with EDNS."""

    @PROPERTY
    @given(
        st.lists(st.binary(min_size=1, max_size=63), max_size=3),
        st.integers(0, 65535),
        st.integers(1, 65535),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.integers(512, 65535),
    )
    def test_decodes_with_dnspython(self, labels, qid, qtype, rd, cd, do, udp_size):
        """dnspython reads back the ID, flags, question, payload and DO."""
        name = dns.name.Name(labels + [b""])
        out = wire.build_query(qid, name.to_wire(), qtype, rd=rd, cd=cd, do=do, udp_size=udp_size)
        theirs = dns.message.from_wire(out)
        self.assertEqual(theirs.id, qid)
        self.assertEqual(theirs.flags, (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0))
        self.assertEqual(theirs.question[0].name, name)
        self.assertEqual((theirs.question[0].rdtype, theirs.question[0].rdclass), (qtype, 1))
        self.assertEqual((theirs.edns, theirs.payload, bool(theirs.ednsflags & dns.flags.DO)), (0, udp_size, do))
        self.assertEqual(wire.parse_query(out).qname, name.to_wire())

    def test_rejects_bad_names(self):
        """Compressed, unterminated or over-long names are refused."""
        for name in (b"", b"\x03www", b"\x03www\xc0\x0c", WWW + b"x", b"\x40" + b"a" * 64 + b"\x00"):
            self.assertRaises(ValueError, wire.build_query, 1, name, 1)


class NameTextTests(SynchronousTestCase):
    """name_to_text and text_to_name convert between wire and presentation forms."""

    def test_examples(self):
        """Plain names, the root, and escapes."""
        self.assertEqual(wire.name_to_text(WWW), "www.example.com.")
        self.assertEqual(wire.name_to_text(b"\x00"), ".")
        self.assertEqual(wire.name_to_text(b"\x03a.b\x02\x00\xff\x00"), "a\\.b.\\000\\255.")
        self.assertEqual(wire.text_to_name("www.example.com"), WWW)
        self.assertEqual(wire.text_to_name("www.example.com."), WWW)
        self.assertEqual(wire.text_to_name("."), b"\x00")
        self.assertEqual(wire.text_to_name("a\\.b.\\000\\255."), b"\x03a.b\x02\x00\xff\x00")

    def test_text_errors(self):
        """Empty labels, long labels or names, bad escapes and non-ASCII are ValueError."""
        for text in ("", "a..b", ".a", "a" * 64, ".".join(["a" * 63] * 4), "a\\", "a\\25", "a\\256", "bücher.de"):
            self.assertRaises(ValueError, wire.text_to_name, text)

    def test_wire_errors(self):
        """Malformed wire names are ValueError."""
        for name in (b"", b"\x03ww", b"\x03www", WWW + b"\x00", b"\xc0\x0c"):
            self.assertRaises(ValueError, wire.name_to_text, name)

    @PROPERTY
    @given(st.lists(st.binary(min_size=1, max_size=63), max_size=4))
    def test_agrees_with_dnspython(self, labels):
        """Both directions match dnspython's to_text and from_text, and round-trip."""
        name = dns.name.Name(labels + [b""])
        assume(len(name.to_wire()) <= 255)
        text = wire.name_to_text(name.to_wire())
        self.assertEqual(text, name.to_text())
        self.assertEqual(wire.text_to_name(text), name.to_wire())
        self.assertEqual(dns.name.from_text(text).to_wire(), name.to_wire())


def dotted(msg: bytes) -> bool:
    """Whether read_reply notes a name with a dotted label in ``msg``."""
    return records.read_reply(msg).dotted


class DottedLabelTests(SynchronousTestCase):
    """Finding names whose labels hold a ``.``, which twisted.names would split in two."""

    def reply(self, *records: str, qname: str = "q.example.") -> bytes:
        """A dnspython reply to ``qname`` A with ``records`` (zone-file lines) in the answer."""
        import dns.rrset

        query = dns.message.make_query(qname, "A")
        response = dns.message.make_response(query)
        for line in records:
            name, rtype, *rdata = line.split(" ", 2)
            response.answer.append(dns.rrset.from_text(name, 300, "IN", rtype, rdata[0]))
        return response.to_wire()

    def test_label_has_dot(self):
        """Only a dot inside a label counts, not the dots between labels or a dot byte in a length."""
        self.assertTrue(wire.label_has_dot(b"\x08www.bank\x07example\x00"))
        self.assertFalse(wire.label_has_dot(b"\x03www\x04bank\x07example\x00"))
        self.assertFalse(wire.label_has_dot(b"\x2e" + b"a" * 46 + b"\x00"))
        self.assertFalse(wire.label_has_dot(b"\x00"))

    def test_plain_reply(self):
        """A reply with ordinary names (and dot bytes in its rdata and TTLs) has none."""
        self.assertFalse(dotted(self.reply("q.example. A 46.46.46.46", "q.example. TXT a.b.c")))

    def test_each_place_a_name_can_be(self):
        """The question, an owner and the names inside CNAME, SOA, MX, SRV and NAPTR rdata are all looked at."""
        cases = {
            "question": self.reply(qname="a\\.b.example."),
            "owner": self.reply("a\\.b.example. A 192.0.2.1"),
            "CNAME": self.reply("q.example. CNAME a\\.b.example."),
            "SOA rname": self.reply("q.example. SOA ns.example. host\\.master.example. 1 2 3 4 5"),
            "MX": self.reply("q.example. MX 10 mail\\.x.example."),
            "SRV": self.reply("q.example. SRV 1 2 3 t\\.x.example."),
            "NAPTR": self.reply('q.example. NAPTR 1 2 "u" "E2U+sip" "" r\\.x.example.'),
        }
        for place, msg in cases.items():
            self.assertTrue(dotted(msg), place)

    def test_compressed_names_followed(self):
        """A dotted label reached through a compression pointer counts."""
        msg = self.reply("a\\.b.example. A 192.0.2.1", "q.example. CNAME a\\.b.example.")
        self.assertIn(b"\xc0", msg)
        self.assertTrue(dotted(msg))

    def test_malformed_raises(self):
        """A name cut short raises ValueError, as scan_response does."""
        msg = self.reply(qname="a\\.b.example.")
        with self.assertRaises(ValueError):
            dotted(msg[:20])

    def test_relay_body_ttls(self):
        """TTLs above max_ttl are lowered, top-bit TTLs become 0, and a reply needing neither keeps its bytes."""
        q = wire.parse_query(dns.message.make_query("q.example.", "A", id=77).to_wire())
        msg = self.reply("q.example. A 192.0.2.1")
        layout = wire.scan_response(msg)
        self.assertEqual(wire.relay_body(msg, q, 300, 3600)[12:], msg[12:])
        lowered = wire.relay_body(msg, q, 100, 3600)
        self.assertEqual(wire.scan_response(lowered).orig_ttls, (100,))
        top = bytearray(msg)
        struct.pack_into("!I", top, layout.ttl_offsets[0], 2**31 + 5)
        top = bytes(top)
        self.assertEqual(struct.unpack_from("!I", wire.relay_body(top, q, 100, 3600), layout.ttl_offsets[0]), (0,))


class RelayBodyTests(SynchronousTestCase):
    """relay_body: the client's reply built from an upstream's bytes, checked with dnspython."""

    def query(self, name="Www.Example.", rdtype="A", **kw):
        """A parsed query (0x20 case in the name) and its dnspython form."""
        message = dns.message.make_query(name, rdtype, id=4242, **kw)
        return wire.parse_query(message.to_wire()), message

    def upstream(self, message, *, rcode=dns.rcode.NOERROR, answer=(), authority=(), flags=0):
        """An upstream reply to ``message`` (lowercased question), with EDNS and ``flags`` set."""
        up = dns.message.make_query(message.question[0].name.to_text().lower(), message.question[0].rdtype, id=9, use_edns=0)
        reply = dns.message.make_response(up)
        reply.set_rcode(rcode)
        reply.flags |= flags
        for line in answer:
            reply.answer.append(dns.rrset.from_text(*line))
        for line in authority:
            reply.authority.append(dns.rrset.from_text(*line))
        return reply.to_wire()

    def test_header_and_question_are_the_clients(self):
        """ID, RD, CD and the question bytes are the query's; RA set; AA and AD cleared; OPT gone."""
        q, message = self.query()
        data = self.upstream(message, answer=[("www.example.", 300, "IN", "A", "192.0.2.1")],
                             flags=dns.flags.AA | dns.flags.AD)
        out = dns.message.from_wire(wire.relay_body(data, q, 86400, 3600))
        self.assertEqual(out.id, 4242)
        self.assertEqual(out.question[0].name.to_text(), "Www.Example.")
        self.assertTrue(out.flags & dns.flags.RA and out.flags & dns.flags.RD)
        self.assertFalse(out.flags & (dns.flags.AA | dns.flags.AD))
        self.assertEqual(out.edns, -1)
        self.assertEqual(out.answer[0][0].address, "192.0.2.1")

    def test_negative_ttls(self):
        """NXDOMAIN and NODATA: the SOA's TTL becomes min(TTL, MINIMUM, cap); a positive answer's SOA is left."""
        soa = ("example.", 3600, "IN", "SOA", "ns.example. h.example. 1 7200 3600 1209600 300")
        for rcode, answer in ((dns.rcode.NXDOMAIN, ()), (dns.rcode.NOERROR, ()),
                              (dns.rcode.NOERROR, [("www.example.", 60, "IN", "CNAME", "gone.example.")])):
            q, message = self.query()
            out = dns.message.from_wire(wire.relay_body(self.upstream(message, rcode=rcode, answer=answer, authority=[soa]), q, 86400, 100))
            self.assertEqual(out.authority[0].ttl, 100, (rcode, answer))
            out = dns.message.from_wire(wire.relay_body(self.upstream(message, rcode=rcode, answer=answer, authority=[soa]), q, 86400, 3600))
            self.assertEqual(out.authority[0].ttl, 300, (rcode, answer))
        q, message = self.query()
        positive = self.upstream(message, answer=[("www.example.", 60, "IN", "A", "192.0.2.1")], authority=[soa])
        self.assertEqual(dns.message.from_wire(wire.relay_body(positive, q, 86400, 100)).authority[0].ttl, 3600)

    def test_other_question_refused(self):
        """A reply whose question has another length is refused, not patched."""
        q, _ = self.query("www.example.")
        _, other = self.query("longer.www.example.")
        with self.assertRaises(ValueError):
            wire.relay_body(self.upstream(other), q, 86400, 3600)

    def test_reply_without_question(self):
        """A FORMERR without a question (a server that dislikes EDNS) reaches the client with the client's question."""
        q, message = self.query()
        bare = struct.pack("!HHHHHH", 9, 0x8000 | dns.rcode.FORMERR, 0, 0, 0, 0)
        out = dns.message.from_wire(wire.relay_body(bare, q, 86400, 3600))
        self.assertEqual((out.id, out.rcode(), out.question[0].name.to_text()), (4242, dns.rcode.FORMERR, "Www.Example."))


class OptAppenderTests(SynchronousTestCase):
    """wire.opt_appender: add_opt's result with the OPT records built once."""

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=12, max_size=200), st.booleans(), st.integers(512, 4096))
    def test_same_as_add_opt(self, msg, do, udp_size):
        """For any message with room in ARCOUNT, the same bytes as add_opt."""
        if (msg[10] << 8) | msg[11] == 0xFFFF:
            msg = msg[:10] + b"\x00\x00" + msg[12:]
        self.assertEqual(wire.opt_appender(udp_size)(msg, do), wire.add_opt(msg, udp_size, do))
