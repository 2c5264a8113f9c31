"""
Byte-level DNS message helpers for the L1 cache hit path.

A cache hit must not decode the query or the stored reply into
``twisted.names`` objects (that alone costs about 20 µs; the whole hit path
has about 7 µs).  The functions here work on the bytes: they validate a query
and pull out its question, flags and cache key, find the TTL fields of a
stored reply once, and later copy the reply with the query's ID and question
and with the TTLs counted down.  They also build the small messages the
server needs without objects: error replies, truncated replies, OPT records
and upstream queries.

Offsets are plain ``int`` and names are wire-format ``bytes`` (labels with
length prefixes, ending in ``b"\\x00"``).
"""
from __future__ import annotations

import struct
from typing import NamedTuple


NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16

TYPE_OPT = 41
EDE_OPTION_CODE = 15
DEFAULT_UDP_SIZE = 1232

_HEADER = struct.Struct("!HHHHHH")
_ID_FLAGS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")
_U32 = struct.Struct("!I")
# type, class, TTL, rdlength: the fixed part of a resource record after its owner name.
_RR_FIXED = struct.Struct("!HHIH")
# The whole OPT record header: root owner, type, class (UDP size), TTL, rdlength.
_OPT_RR = struct.Struct("!BHHIH")
# A question's type and class followed by an OPT record header.
_QUESTION_TAIL_AND_OPT = struct.Struct("!HHBHHIH")

_QR = 0x8000
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_CD = 0x0010
_OPCODE = 0x7800
_RD_CD = _RD | _CD
_DO = 0x8000
_TTL_TOP_BIT = 0x80000000

# Bits of the last byte of an L1 key.
KEY_RD = 1
KEY_CD = 2
KEY_DO = 4
KEY_EDNS = 8
_KEY_FLAG_BYTES = tuple(bytes((i,)) for i in range(16))

# The highest offset a question name's root label may sit at: a name
# is at most 255 bytes including its root byte, and starts at offset 12.
_QNAME_ROOT_MAX = 12 + 255 - 1

# "\DDD" escapes for bytes master files cannot hold as is, as dnspython does.
_SPECIAL = b'"().;\\@$'
_TEXT_OF_BYTE = tuple(
    "\\" + chr(c) if c in _SPECIAL else chr(c) if 0x20 < c < 0x7F else "\\%03d" % c
    for c in range(256)
)


class FormatError(Exception):
    """
    A query is malformed; the server answers FORMERR, or drops it.

    ``query_id`` is None when no reply may be sent: the message is shorter
    than a header, or it is a response (QR=1; answering those invites
    reflection loops).  ``question`` holds the raw question section bytes
    when they parsed (else ``b""``), and ``opcode``, ``rd``, ``cd``,
    ``edns`` and ``do`` say what the reply should copy; ``edns`` and ``do``
    are a best effort when the message is broken before or inside its OPT.
    """

    def __init__(
        self,
        reason: str,
        query_id: int | None = None,
        *,
        question: bytes = b"",
        opcode: int = 0,
        rd: bool = False,
        cd: bool = False,
        edns: bool = False,
        do: bool = False,
    ) -> None:
        super().__init__(reason)
        self.query_id = query_id
        self.question = question
        self.opcode = opcode
        self.rd = rd
        self.cd = cd
        self.edns = edns
        self.do = do


class QueryInfo(NamedTuple):
    """
    What the server needs to know about a valid query, taken from its bytes.

    A ``NamedTuple`` rather than a frozen attrs class because one is built
    per datagram on the hot path: ``parse_query`` builds it with
    ``tuple.__new__`` (a fraction of a microsecond) and its fields read at C
    speed, while a frozen attrs class sets each of these 14 fields through
    ``object.__setattr__`` and costs several times as much (measured about
    6x).  It is immutable all the same.

    ``qname`` is the question name as sent (case preserved, uncompressed,
    ending in ``b"\\x00"``); ``question`` the raw question section (name,
    type and class) that replies copy byte for byte.  ``udp_size`` is the
    client's reply size limit: 512 without EDNS, else at least 512.  ``key``
    is the L1 cache key: the lowercased name, the type and class, and a byte
    of flags (``KEY_RD``, ``KEY_CD``, ``KEY_DO``, ``KEY_EDNS``); EDNS options
    (cookies, padding) stay out of it (RFC 7873).
    """

    id: int
    flags: int
    opcode: int
    rd: bool
    cd: bool
    qname: bytes
    qtype: int
    qclass: int
    question: bytes
    edns: bool
    udp_size: int
    edns_version: int
    do: bool
    key: bytes


#: Builds a NamedTuple (QueryInfo, ResponseLayout) from a tuple of its
#: fields without the Python-level ``__new__`` call.
_new_tuple = tuple.__new__


class ResponseLayout(NamedTuple):
    """
    Where the parts of a stored response are, found once by ``scan_response``.

    A ``NamedTuple``, like :class:`QueryInfo` and for the same reason: one
    is made per upstream reply on the miss path.

    ``ttl_offsets`` and ``orig_ttls`` list every resource record except the
    OPT, in message order (answer, then authority, then additional), so the
    first ``ancount`` entries are the answer section's.  A TTL with its top
    bit set is stored as 0 (RFC 2181).  ``min_ttl`` is None when there is no
    such record.  ``rcode`` is the full 12-bit rcode (the OPT's upper bits
    included); ``flags`` is the header's flags word.  ``opt_offset`` is None
    when there is no OPT record, and ``opt_length`` is then 0.
    """

    question_end: int
    ttl_offsets: tuple[int, ...]
    orig_ttls: tuple[int, ...]
    min_ttl: int | None
    rcode: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int
    opt_offset: int | None
    opt_length: int


def parse_query(data: bytes) -> QueryInfo:
    """
    Validate a query datagram and return its :class:`QueryInfo`.

    Raises :class:`FormatError` for anything a query must not be: shorter
    than a header or a response (``query_id`` None: drop it), a QDCOUNT
    other than 1, answer or authority records, more than one additional
    record or one that is not an OPT with the root as owner, a label longer
    than 63 bytes, a name longer than 255, a compression pointer in the
    question, a truncated record or bytes after the last one, malformed
    EDNS options.  A query whose opcode is not QUERY is returned (the caller
    answers NOTIMP) as long as its question parses; the rest of such a
    message is only searched for an OPT record.
    """
    try:
        qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    except struct.error:
        raise FormatError("message shorter than a DNS header") from None
    if flags & _QR:
        raise FormatError("message is a response")
    if qdcount != 1:
        raise _query_error("QDCOUNT is %d, not 1" % qdcount, qid, flags)
    # pos ends on the question name's root label.
    pos = 12
    try:
        length = data[12]
        while length:
            if length > 63:
                if length >= 0xC0:
                    raise _query_error("compression pointer in the question", qid, flags)
                raise _query_error("label longer than 63 bytes or of an unknown type", qid, flags)
            pos += length + 1
            if pos > _QNAME_ROOT_MAX:
                raise _query_error("name longer than 255 bytes", qid, flags)
            length = data[pos]
    except IndexError:
        raise _query_error("truncated question", qid, flags) from None
    end = pos + 5
    n = len(data)
    if end > n:
        raise _query_error("truncated question", qid, flags)
    if flags & _OPCODE or ancount or nscount or arcount > 1:
        return _parse_unusual_query(data, qid, flags, pos, ancount, nscount, arcount)
    qname = data[12 : pos + 1]
    question = data[12:end]
    if arcount:
        if end + 11 > n:
            raise _query_error("truncated additional record", qid, flags, question)
        qtype, qclass, owner, rtype, payload, ttl, rdlength = _QUESTION_TAIL_AND_OPT.unpack_from(
            data, pos + 1
        )
        if owner or rtype != TYPE_OPT:
            raise _query_error(
                "the additional record is not an OPT with the root as owner", qid, flags, question
            )
        do = ttl & _DO != 0
        options = end + 11
        if options + rdlength != n:
            raise _query_error("OPT rdata does not fit the message", qid, flags, question, True, do)
        while options < n:
            if options + 4 > n:
                raise _query_error("malformed EDNS option", qid, flags, question, True, do)
            options += 4 + _U16.unpack_from(data, options + 2)[0]
        if options != n:
            raise _query_error("malformed EDNS option", qid, flags, question, True, do)
        edns = True
        udp_size = payload if payload > 512 else 512
        version = (ttl >> 16) & 0xFF
        key_flags = (flags >> 8) & KEY_RD | (flags >> 3) & KEY_CD | KEY_EDNS | (KEY_DO if do else 0)
    else:
        if end != n:
            raise _query_error("bytes after the question", qid, flags, question)
        qtype, qclass = _U16X2.unpack_from(data, pos + 1)
        edns = do = False
        udp_size = 512
        version = 0
        key_flags = (flags >> 8) & KEY_RD | (flags >> 3) & KEY_CD
    return _new_tuple(
        QueryInfo,
        (
            qid,
            flags,
            0,
            flags & _RD != 0,
            flags & _CD != 0,
            qname,
            qtype,
            qclass,
            question,
            edns,
            udp_size,
            version,
            do,
            qname.lower() + data[pos + 1 : end] + _KEY_FLAG_BYTES[key_flags],
        ),
    )


def _query_error(
    reason: str, qid: int, flags: int, question: bytes = b"", edns: bool = False, do: bool = False
) -> FormatError:
    """Return the FormatError for a query with this ID and header flags word."""
    return FormatError(
        reason,
        qid,
        question=question,
        opcode=(flags >> 11) & 0xF,
        rd=flags & _RD != 0,
        cd=flags & _CD != 0,
        edns=edns,
        do=do,
    )


def _parse_unusual_query(
    data: bytes, qid: int, flags: int, pos: int, ancount: int, nscount: int, arcount: int
) -> QueryInfo:
    """
    The slow half of :func:`parse_query`, for a query whose question name
    parsed (its root label is at ``pos``) but which has another opcode than
    QUERY or records besides one OPT.

    Another opcode gets its QueryInfo (the caller answers NOTIMP), with EDNS
    found on a best effort; anything else raises FormatError.
    """
    end = pos + 5
    question = data[12:end]
    edns, udp_size, version, do = _sniff_opt(data, end, ancount, nscount, arcount)
    opcode = (flags >> 11) & 0xF
    if not opcode:
        if ancount or nscount:
            reason = "a query with answer or authority records"
        else:
            reason = "more than one additional record"
        raise _query_error(reason, qid, flags, question, edns, do)
    qname = data[12 : pos + 1]
    qtype, qclass = _U16X2.unpack_from(data, pos + 1)
    key_flags = (
        (flags >> 8) & KEY_RD
        | (flags >> 3) & KEY_CD
        | (KEY_EDNS if edns else 0)
        | (KEY_DO if do else 0)
    )
    key = qname.lower() + data[pos + 1 : end] + _KEY_FLAG_BYTES[key_flags]
    return QueryInfo(
        qid,
        flags,
        opcode,
        flags & _RD != 0,
        flags & _CD != 0,
        qname,
        qtype,
        qclass,
        question,
        edns,
        udp_size,
        version,
        do,
        key,
    )


def _sniff_opt(
    data: bytes, pos: int, ancount: int, nscount: int, arcount: int
) -> tuple[bool, int, int, bool]:
    """
    Look for an OPT record among the records after ``pos``, best effort.

    Returns ``(edns, udp_size, version, do)``: the first OPT with a root
    owner in the additional section wins, and a message broken after it
    still counts as EDNS (so a FORMERR reply can carry an OPT).
    """
    n = len(data)
    found = (False, 512, 0, False)
    try:
        for index in range(ancount + nscount + arcount):
            start = pos
            pos = _name_end(data, pos)
            if pos + 10 > n:
                break
            rtype, payload, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
            if rtype == TYPE_OPT and index >= ancount + nscount and pos == start + 1:
                return (True, max(512, payload), (ttl >> 16) & 0xFF, ttl & _DO != 0)
            pos += 10 + rdlength
    except ValueError:
        pass
    return found


def _pointer_target(msg: bytes, pos: int, n: int, limit: int) -> int:
    """
    The offset the compression pointer at ``pos`` points to.  It must lie
    before ``limit`` (the last place the walk jumped to, or the name's start)
    and after the header; anything else is a loop, a forward pointer or
    garbage, and raises ValueError.
    """
    if pos + 1 >= n:
        raise ValueError("truncated compression pointer")
    target = ((msg[pos] & 0x3F) << 8) | msg[pos + 1]
    if target >= limit or target < 12:
        raise ValueError("compression pointer loops, points forward or into the header")
    return target


def _name_end(msg: bytes, pos: int) -> int:
    """
    Return the offset just past the (possibly compressed) name at ``pos``.

    Follows compression pointers only to validate them: each one must point
    to an earlier offset than the last place the walk jumped to (or the
    name's start), which rules out loops and forward pointers; the expanded
    name must fit in 255 bytes.  Raises ValueError otherwise.
    """
    n = len(msg)
    after = -1
    limit = pos
    total = 0
    while True:
        if pos >= n:
            raise ValueError("name runs past the end of the message")
        length = msg[pos]
        if length == 0:
            return after if after >= 0 else pos + 1
        if length < 64:
            total += length + 1
            if total > 254:
                raise ValueError("name longer than 255 bytes")
            pos += length + 1
        elif length >= 0xC0:
            if after < 0:
                after = pos + 2
            limit = pos = _pointer_target(msg, pos, n, limit)
        else:
            raise ValueError("unknown label type 0x%02x" % length)


def read_name(msg: bytes, pos: int, memo: dict | None = None) -> tuple[bytes, int]:
    """
    Return the name at ``pos`` expanded to uncompressed wire format, and the
    offset just past it in the message; same checks as :func:`_name_end`.

    ``memo``, for a walk over one message that reads many names, maps
    offsets where a name was already read whole (and, for the first name,
    each of its label starts: :func:`label_offsets`) to the expanded name
    there, so a compression pointer to one of them ends the walk at once.
    Only earlier offsets are ever in it, and the expanded name must still
    fit in 255 bytes.  The name read is added to it.
    """
    n = len(msg)
    if memo is not None and pos + 1 < n and msg[pos] >= 0xC0:
        known = memo.get(((msg[pos] & 0x3F) << 8) | msg[pos + 1])
        if known is not None:
            return known, pos + 2
    start = pos
    after = -1
    limit = pos
    parts = []
    total = 0
    while True:
        if pos >= n:
            raise ValueError("name runs past the end of the message")
        length = msg[pos]
        if length == 0:
            parts.append(b"\x00")
            end = after if after >= 0 else pos + 1
            break
        if length < 64:
            total += length + 1
            if total > 254:
                raise ValueError("name longer than 255 bytes")
            if pos + 1 + length > n:
                raise ValueError("label runs past the end of the message")
            parts.append(msg[pos : pos + 1 + length])
            pos += length + 1
        elif length >= 0xC0:
            if after < 0:
                after = pos + 2
            limit = pos = _pointer_target(msg, pos, n, limit)
            if memo is not None:
                known = memo.get(pos)
                if known is not None:
                    if total + len(known) - 1 > 254:
                        raise ValueError("name longer than 255 bytes")
                    parts.append(known)
                    end = after
                    break
        else:
            raise ValueError("unknown label type 0x%02x" % length)
    name = b"".join(parts)
    if memo is not None:
        memo[start] = name
    return name, end


def label_offsets(name: bytes, at: int) -> list[tuple[int, bytes]]:
    """(offset, suffix) of each label start of the uncompressed ``name`` found at offset ``at``."""
    out = []
    pos = 0
    while name[pos]:
        out.append((at + pos, name[pos:]))
        pos += name[pos] + 1
    return out


def parse_question(msg: bytes) -> tuple[bytes, int, int, int]:
    """
    Return ``(qname, qtype, qclass, question_end)`` of a message with one
    question, for matching upstream replies to queries.

    ``qname`` is expanded (compression pointers followed, with loop
    detection) and lowercased.  Raises ValueError when the message is
    shorter than a header, has a QDCOUNT other than 1, or its question is
    malformed or truncated.
    """
    if len(msg) < 12:
        raise ValueError("message shorter than a DNS header")
    if _U16.unpack_from(msg, 4)[0] != 1:
        raise ValueError("QDCOUNT is not 1")
    qname, pos = read_name(msg, 12)
    if pos + 4 > len(msg):
        raise ValueError("truncated question")
    qtype, qclass = _U16X2.unpack_from(msg, pos)
    return qname.lower(), qtype, qclass, pos + 4


def check_opt_place(another: bool, before_additional: bool, owner_not_root: bool) -> None:
    """
    Raise ValueError for an OPT record that is not the only one, not in the
    additional section, or whose owner is not the root (RFC 6891 §6.1.1):
    the same rules for every reader of a whole response.
    """
    if another:
        raise ValueError("more than one OPT record")
    if before_additional:
        raise ValueError("OPT record outside the additional section")
    if owner_not_root:
        raise ValueError("OPT record whose owner is not the root")


def scan_response(msg: bytes) -> ResponseLayout:
    """
    Walk a whole response once and return its :class:`ResponseLayout`.

    Compression pointers may appear in any name; they are validated, not
    expanded.  Raises ValueError for a message shorter than a header,
    compression loops and pointers forward or out of range, over-long
    names, truncated records, more than one OPT record or one outside the
    additional section or with a non-root owner, and bytes after the last
    record.
    """
    n = len(msg)
    if n < 12:
        raise ValueError("message shorter than a DNS header")
    _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(msg)
    pos = 12
    for _ in range(qdcount):
        pos = _name_end(msg, pos) + 4
        if pos > n:
            raise ValueError("truncated question")
    question_end = pos
    offsets = []
    ttls = []
    opt_offset = None
    opt_length = 0
    ext_rcode = 0
    first_additional = ancount + nscount
    for index in range(first_additional + arcount):
        start = pos
        pos = _name_end(msg, pos)
        if pos + 10 > n:
            raise ValueError("truncated resource record")
        rtype, _, ttl, rdlength = _RR_FIXED.unpack_from(msg, pos)
        end = pos + 10 + rdlength
        if end > n:
            raise ValueError("resource record data runs past the end of the message")
        if rtype == TYPE_OPT:
            check_opt_place(opt_offset is not None, index < first_additional, pos != start + 1)
            opt_offset = start
            opt_length = end - start
            ext_rcode = ttl >> 24
        else:
            offsets.append(pos + 4)
            ttls.append(0 if ttl & _TTL_TOP_BIT else ttl)
        pos = end
    if pos != n:
        raise ValueError("bytes after the last record")
    return ResponseLayout(
        question_end=question_end,
        ttl_offsets=tuple(offsets),
        orig_ttls=tuple(ttls),
        min_ttl=min(ttls) if ttls else None,
        rcode=(ext_rcode << 4) | (flags & 0xF),
        flags=flags,
        qdcount=qdcount,
        ancount=ancount,
        nscount=nscount,
        arcount=arcount,
        opt_offset=opt_offset,
        opt_length=opt_length,
    )


def strip_opt(msg: bytes, layout: ResponseLayout) -> bytes:
    """
    Return ``msg`` without its OPT record and with ARCOUNT one lower.

    OPT is hop-by-hop (RFC 6891), so stored replies go without it.  The
    message is returned unchanged when it has no OPT.  When the OPT was not
    the last record, the records after it move and ``layout`` no longer
    fits the result: scan the result again.
    """
    start = layout.opt_offset
    if start is None:
        return msg
    arcount = _U16.unpack_from(msg, 10)[0]
    return b"".join(
        (msg[:10], _U16.pack(arcount - 1), msg[12:start], msg[start + layout.opt_length :])
    )


#: One (offset, TTL) pair of a TTL map (:func:`ttl_map`).
_TTL_PAIR = struct.Struct("!HI")


def ttl_map(ttl_offsets, ttls) -> bytes:
    """
    The TTL offsets and TTLs of a reply packed as one bytes object, 6 bytes
    a record (the offset, then the TTL): the compact form an L1 entry keeps
    instead of two tuples of int objects.
    """
    if len(ttl_offsets) == 1:
        return _TTL_PAIR.pack(ttl_offsets[0], ttls[0])
    pack = _TTL_PAIR.pack
    return b"".join([pack(offset, ttl) for offset, ttl in zip(ttl_offsets, ttls)])


def render_ttl_map(msg: bytes | bytearray, packed: bytes, elapsed: int) -> bytes:
    """
    Return a copy of ``msg`` with each TTL that ``packed`` (:func:`ttl_map`)
    places set to what remains of it after ``elapsed`` seconds (never below 0).
    """
    buf = bytearray(msg)
    pack_into = _U32.pack_into
    for offset, ttl in _TTL_PAIR.iter_unpack(packed):
        ttl -= elapsed
        pack_into(buf, offset, ttl if ttl > 0 else 0)
    return bytes(buf)


def set_ttl_map(msg: bytes | bytearray, packed: bytes, ttl: int) -> bytes:
    """Return a copy of ``msg`` with every TTL that ``packed`` places set to ``ttl`` (serve-stale's answer TTL)."""
    buf = bytearray(msg)
    pack_into = _U32.pack_into
    for offset, _ in _TTL_PAIR.iter_unpack(packed):
        pack_into(buf, offset, ttl)
    return bytes(buf)


def render_ttls(msg: bytes | bytearray, ttl_offsets, orig_ttls, elapsed: int) -> bytes:
    """
    Return a copy of ``msg`` with each TTL at ``ttl_offsets`` set to what
    remains of the matching ``orig_ttls`` entry after ``elapsed`` seconds
    (never below 0).
    """
    buf = bytearray(msg)
    pack_into = _U32.pack_into
    for offset, ttl in zip(ttl_offsets, orig_ttls):
        ttl -= elapsed
        pack_into(buf, offset, ttl if ttl > 0 else 0)
    return bytes(buf)


def patch_header(template: bytes, query: QueryInfo) -> bytes:
    """
    Turn a stored reply into the reply to ``query``.

    The result has the query's ID, the template's flags with RD and CD
    copied from the query, the template's counts, the query's question
    bytes (so its 0x20 case survives, also in answer names that point into
    the question) and the rest of the template.  The template's question
    must be as long as the query's (the same name up to case).
    """
    flags = (_U16.unpack_from(template, 2)[0] & ~_RD_CD) | (query.flags & _RD_CD)
    question = query.question
    return b"".join(
        (
            _ID_FLAGS.pack(query.id, flags),
            template[4:12],
            question,
            template[12 + len(question) :],
        )
    )


def truncate(msg: bytes, question_end: int) -> bytes:
    """
    Return the header and question of ``msg`` with TC set and the answer,
    authority and additional counts zeroed; add the OPT afterwards with
    :func:`add_opt` when the client uses EDNS.
    """
    flags = _U16.unpack_from(msg, 2)[0] | _TC
    return b"".join((msg[:2], _U16.pack(flags), msg[4:6], b"\x00\x00\x00\x00\x00\x00", msg[12:question_end]))


def add_opt(
    msg: bytes,
    udp_size: int,
    do: bool,
    ext_rcode: int = 0,
    ede: tuple[int, str] | None = None,
) -> bytes:
    """
    Return ``msg`` with an OPT record appended and ARCOUNT one higher.

    The OPT advertises ``udp_size``, EDNS version 0, the DO bit, and
    ``ext_rcode``, the upper 8 bits of a 12-bit rcode (BADVERS, 16, is
    ``ext_rcode=1`` with 0 in the header).  ``ede`` is an optional
    ``(info_code, text)`` Extended DNS Error (RFC 8914).
    """
    if ede is None:
        rdata = b""
    else:
        info_code, text = ede
        extra = text.encode("utf-8")
        rdata = _U16X2.pack(EDE_OPTION_CODE, 2 + len(extra)) + _U16.pack(info_code) + extra
    ttl = (ext_rcode & 0xFF) << 24 | (_DO if do else 0)
    arcount = _U16.unpack_from(msg, 10)[0] + 1
    return b"".join(
        (msg[:10], _U16.pack(arcount), msg[12:], _OPT_RR.pack(0, TYPE_OPT, udp_size, ttl, len(rdata)), rdata)
    )


def opt_appender(udp_size: int):
    """
    ``append(msg, do)``: :func:`add_opt` without an EDNS error or extended
    rcode, with the two possible OPT records (DO clear, DO set) built once:
    the hit path adds one to every EDNS reply.
    """
    tails = (_OPT_RR.pack(0, TYPE_OPT, udp_size, 0, 0), _OPT_RR.pack(0, TYPE_OPT, udp_size, _DO, 0))
    pack = _U16.pack

    def append(msg: bytes, do: bool) -> bytes:
        return b"".join((msg[:10], pack(((msg[10] << 8) | msg[11]) + 1), msg[12:], tails[1 if do else 0]))

    return append


#: The bytes of the OPT record an :func:`opt_appender` adds: a root owner,
#: type, class, TTL and an empty RDATA.
APPENDED_OPT_LENGTH = _OPT_RR.size


def drop_appended_opt(msg: bytes) -> bytes:
    """
    ``msg`` without the OPT record an :func:`opt_appender` put at its end
    (its last ``APPENDED_OPT_LENGTH`` bytes), and with ARCOUNT one less.
    """
    return b"".join((msg[:10], _U16.pack(((msg[10] << 8) | msg[11]) - 1), msg[12:-APPENDED_OPT_LENGTH]))


def error_reply(
    query: bytes | QueryInfo | FormatError,
    rcode: int,
    udp_size: int = DEFAULT_UDP_SIZE,
    ede: tuple[int, str] | None = None,
) -> bytes:
    """
    Build a reply with no records, only the header and (when known) the
    question, carrying ``rcode``.

    ``query`` is a parsed query, the :class:`FormatError` a query raised, or
    raw query bytes (parsed here).  The reply has QR and RA set, the
    query's ID, and its opcode, RD and CD copied.  When the query had EDNS
    an OPT is added with ``udp_size``, the query's DO bit, the upper bits of
    an rcode above 15 and the optional Extended DNS Error ``ede``; without
    EDNS only ``rcode & 0xF`` can be sent.  Raises ValueError when there is
    no one to reply to (the FormatError has no ``query_id``).
    """
    if isinstance(query, (bytes, bytearray)):
        try:
            query = parse_query(bytes(query))
        except FormatError as e:
            query = e
    if isinstance(query, FormatError):
        if query.query_id is None:
            raise ValueError("the message cannot be answered: %s" % (query,))
        qid = query.query_id
    else:
        qid = query.id
    question = query.question
    flags = (
        _QR
        | (query.opcode & 0xF) << 11
        | (_RD if query.rd else 0)
        | _RA
        | (_CD if query.cd else 0)
        | (rcode & 0xF)
    )
    msg = _HEADER.pack(qid, flags, 1 if question else 0, 0, 0, 0) + question
    if query.edns:
        msg = add_opt(msg, udp_size, query.do, rcode >> 4, ede)
    return msg


def build_query(
    query_id: int,
    qname: bytes,
    qtype: int,
    qclass: int = 1,
    *,
    rd: bool = True,
    cd: bool = False,
    do: bool = False,
    udp_size: int = DEFAULT_UDP_SIZE,
) -> bytes:
    """
    Build an upstream query for ``qname`` (uncompressed wire format) with an
    OPT record advertising ``udp_size`` and the DO bit.  Raises ValueError
    when ``qname`` is not a valid uncompressed name.
    """
    if _name_end(b"\x00" * 12 + qname, 12) != 12 + len(qname) or qname[-1:] != b"\x00":
        raise ValueError("not an uncompressed wire-format name: %r" % (qname,))
    flags = (_RD if rd else 0) | (_CD if cd else 0)
    return b"".join(
        (
            _HEADER.pack(query_id, flags, 1, 0, 0, 1),
            qname,
            _U16X2.pack(qtype, qclass),
            _OPT_RR.pack(0, TYPE_OPT, udp_size, _DO if do else 0, 0),
        )
    )


def name_to_text(qname: bytes) -> str:
    """
    Return the presentation form of a wire-format name
    (``b"\\x03www\\x07example\\x03com\\x00"`` -> ``"www.example.com."``),
    escaping bytes as master files and dnspython do (``\\.``, ``\\DDD``).
    The root is ``"."``.  Raises ValueError for a malformed name.
    """
    labels = []
    pos = 0
    n = len(qname)
    while True:
        if pos >= n:
            raise ValueError("name does not end with the root label")
        length = qname[pos]
        if length == 0:
            break
        if length > 63 or pos + 1 + length > n:
            raise ValueError("malformed wire-format name: %r" % (qname,))
        labels.append("".join([_TEXT_OF_BYTE[c] for c in qname[pos + 1 : pos + 1 + length]]))
        pos += length + 1
    if pos + 1 != n:
        raise ValueError("bytes after the root label")
    return ".".join(labels) + "."


def text_to_name(text: str) -> bytes:
    """
    Return the wire form of a presentation-form name (``"www.example.com."``
    or without the final dot; ``"."`` is the root), understanding ``\\X``
    and ``\\DDD`` escapes.  Raises ValueError for empty labels, labels over
    63 bytes, names over 255 bytes and non-ASCII text (use the IDNA
    ``xn--`` form).
    """
    if text == ".":
        return b"\x00"
    if not text:
        raise ValueError("empty name")
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("non-ASCII name %r: use its IDNA (xn--) form" % (text,)) from None
    labels = []
    label = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x5C:  # backslash
            if i + 1 >= n:
                raise ValueError("name ends with a lone backslash")
            if raw[i + 1 : i + 2].isdigit():
                digits = raw[i + 1 : i + 4]
                if len(digits) != 3 or not digits.isdigit() or int(digits) > 255:
                    raise ValueError("bad \\DDD escape in %r" % (text,))
                label.append(int(digits))
                i += 4
            else:
                label.append(raw[i + 1])
                i += 2
        elif c == 0x2E:  # dot
            if not label:
                raise ValueError("empty label in %r" % (text,))
            labels.append(bytes(label))
            label = bytearray()
            i += 1
        else:
            label.append(c)
            i += 1
    if label:
        labels.append(bytes(label))
    wire = bytearray()
    for one in labels:
        if len(one) > 63:
            raise ValueError("label longer than 63 bytes in %r" % (text,))
        wire.append(len(one))
        wire += one
    wire.append(0)
    if len(wire) > 255:
        raise ValueError("name longer than 255 bytes: %r" % (text,))
    return bytes(wire)


# -- names twisted.names cannot hold ---------------------------------------
#
# twisted.names keeps a name as its labels joined with b".", so the one label
# b"www.bank" and the two labels b"www" b"bank" decode to the same bytes.  A
# cache keyed on those bytes would let the first name's answer stand for the
# second.  This finds such names in the bytes, before anything is decoded, so
# the caches can leave them out (dnsgo.dns.records looks at whole replies).

_DOT = 0x2E


def label_has_dot(name: bytes) -> bool:
    """Whether the uncompressed wire-format ``name`` has a ``.`` inside one of its labels."""
    if _DOT not in name:
        return False
    pos = 0
    n = len(name)
    while pos < n:
        length = name[pos]
        if not length:
            return False
        if _DOT in name[pos + 1 : pos + 1 + length]:
            return True
        pos += length + 1
    return False


_TYPE_SOA = 6
_TYPE_CNAME = 5
_AA_AD = 0x0400 | 0x0020


def relay_body(reply: bytes, query: QueryInfo, max_ttl: int, negative_cap: int,
               layout: ResponseLayout | None = None) -> bytes:
    """
    The body (no OPT) of the reply to ``query`` built from an upstream's
    ``reply`` bytes, nothing decoded: ``query``'s ID, RD, CD and question
    bytes, RA set, AA and AD clear (dnsgo is no authority and does not validate),
    the sections as the upstream sent them, every TTL at most ``max_ttl``
    (one with the top bit set as 0, RFC 2181 §8) and, for NXDOMAIN and
    NODATA, the SOA's TTL at most min(SOA MINIMUM, ``negative_cap``)
    (RFC 2308), so the client and the caches agree.  ``reply`` must answer
    ``query``'s question (the upstream pool checked it); raises ValueError
    where its bytes do not hold together.  ``layout`` is ``reply``'s
    :func:`scan_response`, when the caller has it already.
    """
    return relay_reply(reply, query, max_ttl, negative_cap, layout)[0]


def relay_reply(reply: bytes, query: QueryInfo, max_ttl: int, negative_cap: int,
                layout: ResponseLayout | None = None) -> tuple[bytes, ResponseLayout]:
    """
    :func:`relay_body`, and the body's own :class:`ResponseLayout` (its
    TTLs as relayed), so that the L1 cache stores it without scanning it
    again.
    """
    if layout is None:
        layout = scan_response(reply)
    if layout.qdcount == 0:
        # An error reply without a question (FORMERR from a server that
        # dislikes EDNS): the client's question goes in.
        reply = b"".join((reply[:4], b"\x00\x01", reply[6:12], query.question, reply[12:]))
        layout = scan_response(reply)
    if layout.opt_offset is not None:
        last = layout.opt_offset + layout.opt_length == len(reply)
        reply = strip_opt(reply, layout)
        if not last:
            layout = scan_response(reply)
    flags = (_U16.unpack_from(reply, 2)[0] & ~(_RD_CD | _AA_AD)) | (query.flags & _RD_CD) | _RA
    question = query.question
    if 12 + len(question) != layout.question_end:
        raise ValueError("the reply's question is not the query's")
    body = b"".join((_ID_FLAGS.pack(query.id, flags), reply[4:12], question, reply[layout.question_end :]))
    offsets = layout.ttl_offsets
    out = layout.orig_ttls
    ttls = list(out)
    rcode = flags & 0xF
    first_authority = layout.ancount
    if layout.nscount and (rcode == NXDOMAIN or (rcode == NOERROR and all(
        _U16.unpack_from(body, offset - 4)[0] == _TYPE_CNAME for offset in offsets[:first_authority]
    ))):
        for index in range(first_authority, first_authority + layout.nscount):
            offset = offsets[index]
            if _U16.unpack_from(body, offset - 4)[0] != _TYPE_SOA:
                continue
            rdlength = _U16.unpack_from(body, offset + 4)[0]
            if rdlength < 22:
                raise ValueError("SOA rdata too short")
            minimum = _U32.unpack_from(body, offset + 6 + rdlength - 4)[0]
            ttls[index] = min(ttls[index], minimum, negative_cap)
    if ttls and max(ttls) > max_ttl:
        ttls = [ttl if ttl <= max_ttl else max_ttl for ttl in ttls]
    ttls = tuple(ttls)
    # A wire TTL differs from its orig_ttls entry only when its top bit was set (read as 0).
    if ttls != out or (0 in out and any(
        _U32.unpack_from(body, offset)[0] != ttl for offset, ttl in zip(offsets, ttls)
    )):
        body = render_ttls(body, offsets, ttls, 0)
    if ttls != out or layout.flags != flags or layout.opt_offset is not None:
        layout = _new_tuple(ResponseLayout, (
            layout.question_end, offsets, ttls, min(ttls) if ttls else None, flags & 0xF, flags,
            layout.qdcount, layout.ancount, layout.nscount, layout.arcount - (layout.opt_offset is not None),
            None, 0,
        ))
    return body, layout
