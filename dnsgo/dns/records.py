"""
The resource records of a reply, read from its bytes in one pass: each
record's owner and rdata uncompressed (compression pointers inside the rdata
of NS, CNAME, SOA, MX, SRV, ... expanded), so a record can be stored, shared
and later decoded on its own.  This is what the caches learn from on the
miss path instead of a decoded ``dns.Message``.

A name with a ``.`` inside a label is noted as it is read (``ReadReply.dotted``):
twisted.names would read such a label as two, so such replies fill no cache.
"""
from __future__ import annotations

import io
import struct
from types import MappingProxyType
from typing import NamedTuple

from twisted.names import dns

from dnsgo.dns.wire import TYPE_OPT, ResponseLayout, check_opt_place, label_has_dot, label_offsets, read_name

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_U16X2 = struct.Struct("!HH")
_TTL_TOP_BIT = 0x80000000

#: Where names sit inside the rdata of a type (the types twisted.names
#: decodes names in): a tuple of steps, each an int (that many bytes as
#: they are), "n" (a name) or "s" (a character-string).  Other types'
#: rdata holds no name and is kept as it is.
RDATA_NAMES = {
    2: ("n",), 3: ("n",), 4: ("n",), 5: ("n",), 7: ("n",), 8: ("n",), 9: ("n",),
    12: ("n",), 39: ("n",),  # NS MD MF CNAME MB MG MR PTR DNAME
    6: ("n", "n"), 14: ("n", "n"), 17: ("n", "n"),  # SOA MINFO RP
    15: (2, "n"), 18: (2, "n"), 21: (2, "n"), 36: (2, "n"),  # MX AFSDB RT KX
    33: (6, "n"),  # SRV
    35: (4, "s", "s", "s", "n"),  # NAPTR
}

ANSWER, AUTHORITY, ADDITIONAL = 0, 1, 2

#: The rdata length of the types whose rdata has one size (A, AAAA).
_FIXED_SIZES = {1: 4, 28: 16}

#: The twisted.names record class of each type it can decode; any other is ``UnknownRecord``.
RECORD_CLASSES = MappingProxyType(
    {cls.TYPE: cls for attr, cls in vars(dns).items() if attr.startswith("Record_") and isinstance(getattr(cls, "TYPE", None), int)}
)

_U32 = struct.Struct("!I")

#: Builds a NamedTuple from a tuple of its fields without the Python-level
#: ``__new__`` call (as :data:`dnsgo.dns.wire.QueryInfo` is built).
_new_tuple = tuple.__new__


class WireRecord(NamedTuple):
    """
    One resource record of a reply: ``owner`` in uncompressed wire format
    (case as received), type, class, TTL (one with the top bit set reads as
    0, RFC 2181 §8), ``rdata`` uncompressed, and the section it came from
    (:data:`ANSWER`, :data:`AUTHORITY` or :data:`ADDITIONAL`).
    """

    owner: bytes
    type: int
    cls: int
    ttl: int
    rdata: bytes
    section: int


class ReadReply(NamedTuple):
    """A reply's question (name uncompressed, as sent), its rcode (header bits), TC bit, records, and whether any name has a dotted label."""

    qname: bytes
    qtype: int
    qclass: int
    rcode: int
    truncated: bool
    records: list
    dotted: bool


def read_reply(msg: bytes) -> ReadReply:
    """
    The question (empty for a reply without one) and every record but the
    OPT of a reply with at most one question: :func:`read_response`'s
    second half.  Meant for replies :func:`dnsgo.dns.wire.scan_response`
    accepted; raises ValueError where the bytes do not hold together.
    """
    return read_response(msg)[1]


def read_response(msg: bytes) -> tuple[ResponseLayout, ReadReply]:
    """
    The layout :func:`dnsgo.dns.wire.scan_response` finds and every record
    but the OPT (:func:`read_reply`), read in one pass: ValueError wherever
    ``scan_response`` raises one (compression, truncation, the OPT record's
    place, bytes after the last record) and where the records do not hold
    together (rdata sizes and names).
    """
    n = len(msg)
    if n < 12:
        raise ValueError("message shorter than a DNS header")
    _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(msg)
    if qdcount > 1:
        raise ValueError("more than one question")
    memo: dict = {}  # offset -> the name there, for the pointers of later names
    if qdcount:
        qname, pos = read_name(msg, 12)
        if pos + 4 > n:
            raise ValueError("truncated question")
        if pos == 12 + len(qname):  # not compressed: each of its labels is a suffix pointers can name
            memo.update(label_offsets(qname, 12))
        qtype, qclass = _U16X2.unpack_from(msg, pos)
        pos += 4
    else:  # an error reply may leave the question out
        qname, qtype, qclass, pos = b"", 0, 0, 12
    question_end = pos
    dotted = label_has_dot(qname)
    records = []
    append = records.append
    offsets = []
    ttls = []
    opt_offset = None
    opt_length = 0
    ext_rcode = 0
    first_authority = ancount
    first_additional = ancount + nscount
    for index in range(first_additional + arcount):
        start_rr = pos
        owner = None
        if pos + 1 < n and msg[pos] >= 0xC0:
            # The usual owner: a pointer to a name already read (and already
            # checked for dotted labels).
            owner = memo.get(((msg[pos] & 0x3F) << 8) | msg[pos + 1])
            if owner is not None:
                pos += 2
        if owner is None:
            owner, pos = read_name(msg, pos, memo)
            dotted = dotted or label_has_dot(owner)
        if pos + 10 > n:
            raise ValueError("truncated resource record")
        rtype, cls, ttl, rdlength = _RR_FIXED.unpack_from(msg, pos)
        start = pos + 10
        end = start + rdlength
        if end > n:
            raise ValueError("resource record data runs past the end of the message")
        if rtype == TYPE_OPT:
            check_opt_place(opt_offset is not None, index < first_additional, pos != start_rr + 1)
            opt_offset = start_rr
            opt_length = end - start_rr
            ext_rcode = ttl >> 24
            pos = end
            continue
        offsets.append(pos + 4)
        ttl = 0 if ttl & _TTL_TOP_BIT else ttl
        ttls.append(ttl)
        pos = end
        steps = RDATA_NAMES.get(rtype)
        if steps is None:
            if _FIXED_SIZES.get(rtype, rdlength) != rdlength:
                raise ValueError(f"rdata of type {rtype} has {rdlength} bytes")
            rdata = msg[start:end]
        else:
            rdata, names_dotted = _expand_rdata(msg, start, end, steps, memo)
            dotted = dotted or names_dotted
        section = ANSWER if index < first_authority else AUTHORITY if index < first_additional else ADDITIONAL
        append(_new_tuple(WireRecord, (owner, rtype, cls, ttl, rdata, section)))
    if pos != n:
        raise ValueError("bytes after the last record")
    ttls = tuple(ttls)
    layout = _new_tuple(ResponseLayout, (
        question_end, tuple(offsets), ttls, min(ttls) if ttls else None, (ext_rcode << 4) | (flags & 0xF),
        flags, qdcount, ancount, nscount, arcount, opt_offset, opt_length,
    ))
    return layout, _new_tuple(ReadReply, (qname, qtype, qclass, flags & 0xF, bool(flags & 0x0200), records, dotted))


def _expand_rdata(msg: bytes, start: int, end: int, steps, memo: dict) -> tuple[bytes, bool]:
    """
    The rdata between ``start`` and ``end`` with its names uncompressed, and
    whether one has a dotted label (``memo``: see :func:`dnsgo.dns.wire.read_name`).
    """
    parts = []
    dotted = False
    at = start
    for step in steps:
        if step == "n":
            name, at = read_name(msg, at, memo)
            dotted = dotted or label_has_dot(name)
            parts.append(name)
        elif step == "s":
            if at >= end:
                raise ValueError("rdata shorter than its character-strings")
            length = 1 + msg[at]
            parts.append(msg[at : at + length])
            at += length
        else:
            parts.append(msg[at : at + step])
            at += step
        if at > end:
            raise ValueError("rdata shorter than its names")
    parts.append(msg[at:end])
    return b"".join(parts), dotted


def decode_rdata(rtype: int, ttl: int, rdata: bytes):
    """The twisted.names payload (``dns.Record_*``) of uncompressed ``rdata`` of ``rtype``; ValueError if it does not decode whole."""
    payload = RECORD_CLASSES.get(rtype, dns.UnknownRecord)(ttl=ttl)
    stream = io.BytesIO(rdata)
    try:
        payload.decode(stream, len(rdata))
    except Exception as e:
        raise ValueError(f"rdata of type {rtype} does not decode: {e}") from None
    if stream.tell() != len(rdata):
        raise ValueError(f"rdata of type {rtype} has {len(rdata) - stream.tell()} bytes too many")
    return payload


def rdata_of(payload) -> bytes:
    """The uncompressed wire rdata of a payload kept as bytes or as a ``dns.Record_*`` object."""
    if payload.__class__ is bytes:
        return payload
    out = io.BytesIO()
    payload.encode(out, None)
    return out.getvalue()


def rdata_name(rdata: bytes) -> bytes:
    """The name an uncompressed CNAME, DNAME, NS or PTR rdata holds (wire format)."""
    return rdata[: _name_length(rdata, 0)]


def soa_minimum(rdata: bytes) -> int:
    """The MINIMUM field of an uncompressed SOA rdata (its last four bytes)."""
    return _U32.unpack_from(rdata, len(rdata) - 4)[0]


def _name_length(data: bytes, pos: int) -> int:
    start = pos
    while data[pos]:
        pos += data[pos] + 1
    return pos + 1 - start
