"""
The format of the shared L2 cache in Redis: key names and value bytes,
version 2.  ``docs/redis-format.md`` is the reference; this module is its
only implementation, and nothing else builds or reads keys or values.

Keys (``P`` is the configured ``key_prefix``, ``dns:`` by default)::

    P rr:{owner}:type:class     an RRset                 dns:rr:{www.example.com}:1:1
    P nd:{owner}:type:class     NODATA for that type     dns:nd:{www.example.com}:28:1
    P nx:{owner}:class          NXDOMAIN, every type     dns:nx:{gone.example.com}:1

``owner`` is the name lowercased (ASCII), without the trailing dot, the
root written ``.``; every byte other than ``a-z 0-9 - _ .`` is written
``\\DDD`` (its decimal value, as in zone files), so an owner never holds
``:``, ``{``, ``}`` or a glob character and every key splits one way only.
A ``.`` inside a label cannot be told from one between labels here, so no
such name is ever cached (:func:`dnsgo.dns.records.read_reply`).  The
braces make the owner a Redis Cluster hash tag: all keys of one name live
in one slot, so the MGET of a lookup goes to one node.

A value::

    offset size
    0      2    magic b"DG"
    2      1    format version (2)
    3      1    kind: 1 RRset, 2 NXDOMAIN, 3 NODATA
    4      1    flags: bit 0 set = signed (a MAC precedes the CRC)
    5      8    stored at, milliseconds since the Unix epoch (u64)
    13     4    TTL in seconds when stored (u32, below 2**31)
    17     1    rank (RFC 2181): 3 answer, 2 authority, 1 additional
    18     2    record count n (1 to MAX_RECORDS)
    20     ...  n records in uncompressed wire format: owner, type, class,
                TTL, rdlength, rdata (for NXDOMAIN and NODATA: the one SOA)
    end-36 32   (signed values only) HMAC-SHA256 of the key and of every
                byte before the MAC (:class:`dnsgo.cache.signing.Signer`)
    end-4  4    CRC-32 of every byte before it (u32)

All integers are big-endian.  A whole value is at most MAX_VALUE_BYTES.
:func:`decode_value` returns None for anything it cannot vouch for
(another program's value, another version, a truncated or flipped value,
one over the bounds); it never raises.  Whether a value belongs under its
key (owner, type, class) and whether its time and TTL are believable is
the reader's check (:mod:`dnsgo.cache.shared`), as is the signature
(:func:`signed_by`).
"""
from __future__ import annotations

import enum
import io
import struct
import zlib

from typing import NamedTuple

import attrs
from twisted.names import dns

from dnsgo.cache.rrset import Rank, normalize_name
from dnsgo.cache.signing import MAC_SIZE, Signer
from dnsgo.dns.records import RECORD_CLASSES

MAGIC = b"DG"
VERSION = 2

#: The most records one value holds, and the most bytes a value has: larger
#: RRsets are not shared (decoding one would stall a worker; no real RRset
#: comes near).
MAX_RECORDS = 256
MAX_VALUE_BYTES = 65536

class TooLarge(ValueError):
    """An entry over MAX_RECORDS or MAX_VALUE_BYTES: it is not shared."""


#: Bit of the flags byte: the value carries a MAC.
SIGNED = 0x01

_HEADER = struct.Struct("!2sBBBQIBH")
_CRC = struct.Struct("!I")
_RR_FIXED = struct.Struct("!HHIH")
_RDLENGTH = struct.Struct("!H")


#: Bytes kept as they are in a key's owner; every other byte is escaped.
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_.")

#: Characters special in Redis glob patterns (SCAN MATCH).
_GLOB_SPECIAL = frozenset(b"*?[]\\")


class Kind(enum.IntEnum):
    """What a value holds."""

    RRSET = 1
    NXDOMAIN = 2
    NODATA = 3


@attrs.frozen
class Entry:
    """
    One decoded value: what it holds, when it was stored (seconds since the
    epoch), its TTL then, its rank, and the records (for a negative entry,
    the SOA), each with the stored TTL.
    """

    kind: Kind
    stored_at: float
    ttl: int
    rank: Rank
    records: tuple

    def remaining(self, now: float) -> int:
        """
        The TTL left at ``now``: the stored TTL less the whole seconds since
        it was stored (never more than the stored TTL, whatever the clocks
        say).  Zero or less means the DNS TTL has run out.
        """
        return self.ttl - int(max(0.0, now - self.stored_at))

    def live(self, now: float) -> bool:
        """Whether the DNS TTL still runs at ``now``."""
        return self.remaining(now) > 0

    def headers(self, now: float) -> list[dns.RRHeader]:
        """New ``RRHeader`` objects for the records, with the TTL that remains at ``now``."""
        remaining = max(0, self.remaining(now))
        return [dns.RRHeader(rr.name.name, rr.type, rr.cls, remaining, rr.payload) for rr in self.records]


# -- keys ----------------------------------------------------------------


#: The plain bytes as a deletion table: ``name.translate(None, _PLAIN_BYTES)``
#: is empty exactly when every byte is plain (one C call, not a loop).
_PLAIN_BYTES = bytes(sorted(_PLAIN))

def key_owner(name: bytes) -> bytes:
    """The owner part of a key for a dotted name (any case, trailing dot or not)."""
    name = normalize_name(name)
    if not name:
        return b"."
    if not name.translate(None, _PLAIN_BYTES):
        return name
    return b"".join(bytes((byte,)) if byte in _PLAIN else b"\\%03d" % byte for byte in name)


def rrset_key(prefix: bytes, name: bytes, type: int, cls: int) -> bytes:
    """The key of the RRset of ``name``/``type``/``cls``."""
    return b"%srr:{%s}:%d:%d" % (prefix, key_owner(name), type, cls)


def nodata_key(prefix: bytes, name: bytes, type: int, cls: int) -> bytes:
    """The key of a NODATA entry for ``name``/``type``/``cls``."""
    return b"%snd:{%s}:%d:%d" % (prefix, key_owner(name), type, cls)


def nxdomain_key(prefix: bytes, name: bytes, cls: int) -> bytes:
    """The key of an NXDOMAIN entry for ``name`` (every type) in ``cls``."""
    return b"%snx:{%s}:%d" % (prefix, key_owner(name), cls)


@attrs.frozen
class KeyInfo:
    """A key taken apart: ``kind``, the dotted name (root ``b''``), type (None for NXDOMAIN), class."""

    kind: Kind
    name: bytes
    type: int | None
    cls: int


def parse_key(prefix: bytes, key: bytes) -> KeyInfo | None:
    """The parts of a key this module built with ``prefix``, or None for any other key."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    tag, _, rest = rest.partition(b":{")
    kinds = {b"rr": Kind.RRSET, b"nd": Kind.NODATA, b"nx": Kind.NXDOMAIN}
    if tag not in kinds:
        return None
    owner, _, rest = rest.partition(b"}:")
    numbers = rest.split(b":")
    kind = kinds[tag]
    if len(numbers) != (1 if kind == Kind.NXDOMAIN else 2) or not all(n.isdigit() for n in numbers):
        return None
    name = _unescape_owner(owner)
    if name is None:
        return None
    if kind == Kind.NXDOMAIN:
        return KeyInfo(kind, name, None, int(numbers[0]))
    return KeyInfo(kind, name, int(numbers[0]), int(numbers[1]))


def _unescape_owner(owner: bytes) -> bytes | None:
    if owner == b".":
        return b""
    out = bytearray()
    i = 0
    while i < len(owner):
        byte = owner[i]
        if byte == 0x5C:  # backslash
            digits = owner[i + 1 : i + 4]
            if len(digits) != 3 or not digits.isdigit() or int(digits) > 255:
                return None
            out.append(int(digits))
            i += 4
        elif byte in _PLAIN:
            out.append(byte)
            i += 1
        else:
            return None
    return bytes(out) if out else None


def flush_patterns(prefix: bytes, name: bytes | None = None, type: int | None = None, subtree: bool = False) -> list[bytes]:
    """
    The Redis glob patterns (for SCAN MATCH) of the keys a flush removes:
    everything under ``prefix``; the keys of ``name`` (and, with
    ``subtree``, of every name below it); those of ``type``; or both.  As
    in the local cache, a flush by type also removes the NXDOMAIN entries of
    the names it covers, since they answer every type.
    """
    p = _glob_escape(prefix)
    if name is None or (subtree and not normalize_name(name)):
        owners = [b"*"]
    else:
        owner = _glob_escape(key_owner(name))
        owners = [owner, b"*." + owner] if subtree else [owner]
    t = b"*" if type is None else b"%d" % type
    patterns = []
    for owner in owners:
        patterns += [b"%srr:{%s}:%s:*" % (p, owner, t), b"%snd:{%s}:%s:*" % (p, owner, t), b"%snx:{%s}:*" % (p, owner)]
    return patterns


def _glob_escape(text: bytes) -> bytes:
    return b"".join(b"\\" + bytes((c,)) if c in _GLOB_SPECIAL else bytes((c,)) for c in text)


# -- values --------------------------------------------------------------


class ValueRecord(NamedTuple):
    """A record to write in a value as it came off the wire: owner (uncompressed wire format), type, class, rdata bytes."""

    owner: bytes
    type: int
    cls: int
    payload: bytes


def encode_value(kind: Kind, stored_at: float, ttl: int, rank: Rank, records, *, key: bytes = b"", signer: Signer | None = None) -> bytes:
    """
    The value bytes of an entry: ``records`` (``dns.RRHeader`` objects, or
    :class:`ValueRecord` tuples whose payload is uncompressed rdata bytes,
    each written with ``ttl``) stored at ``stored_at`` (seconds since the epoch),
    signed for ``key`` when a ``signer`` is given.  Raises ``ValueError``
    for what the format cannot hold, :class:`TooLarge` for what is over
    its bounds.
    """
    records = list(records)
    if not 0 < ttl < 2**31:
        raise ValueError(f"TTL out of range: {ttl}")
    if not records:
        raise ValueError("no records")
    if len(records) > MAX_RECORDS:
        raise TooLarge(f"{len(records)} records are over {MAX_RECORDS}")
    flags = SIGNED if signer is not None else 0
    body = io.BytesIO()
    body.write(_HEADER.pack(MAGIC, VERSION, kind, flags, max(0, round(stored_at * 1000)), ttl, rank, len(records)))
    for rr in records:
        if isinstance(rr, ValueRecord):
            body.write(rr.owner)
        else:
            rr.name.encode(body, None)
        body.write(_RR_FIXED.pack(rr.type, rr.cls, ttl, 0))
        start = body.tell()
        payload = rr.payload
        if payload.__class__ is bytes:
            body.write(payload)
        else:
            payload.encode(body, None)
        end = body.tell()
        if end - start >= 2**16:
            raise ValueError(f"rdata too long: {end - start} bytes")
        body.seek(start - 2)
        body.write(_RDLENGTH.pack(end - start))
        body.seek(end)
    data = body.getvalue()
    if signer is not None:
        data += signer.mac(key, data)
    if len(data) + _CRC.size > MAX_VALUE_BYTES:
        raise TooLarge(f"value of {len(data) + _CRC.size} bytes is over {MAX_VALUE_BYTES}")
    return data + _CRC.pack(zlib.crc32(data))


def signed_by(data: bytes, key: bytes, signer: Signer) -> bool:
    """Whether ``data``, read from ``key``, carries a valid MAC of ``signer``'s key.  Never raises."""
    if not isinstance(data, bytes) or not _HEADER.size + MAC_SIZE + _CRC.size <= len(data) <= MAX_VALUE_BYTES:
        return False
    if data[:3] != MAGIC + bytes((VERSION,)) or not data[4] & SIGNED:
        return False
    end = len(data) - _CRC.size - MAC_SIZE
    return signer.verify(data[end : end + MAC_SIZE], key, data[:end])


def decode_value(data: bytes) -> Entry | None:
    """
    The entry a value holds, or None if it is not a version-2 value of this
    format, is over the bounds, or is damaged in any way.  Never raises.
    """
    try:
        return _decode(data)
    except Exception:
        return None


def _decode(data: bytes) -> Entry | None:
    if not isinstance(data, bytes) or not _HEADER.size + _CRC.size <= len(data) <= MAX_VALUE_BYTES:
        return None
    magic, version, kind, flags, stored_ms, ttl, rank, count = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or not 0 < count <= MAX_RECORDS:
        return None
    end = len(data) - _CRC.size
    if _CRC.unpack_from(data, end)[0] != zlib.crc32(memoryview(data)[:end]):
        return None
    if flags & SIGNED:
        end -= MAC_SIZE
    if kind not in _KINDS or rank not in _RANKS or not 0 < ttl < 2**31 or flags & ~SIGNED:
        return None
    kind = Kind(kind)
    if kind != Kind.RRSET and count != 1:
        return None
    stream = io.BytesIO(data[:end])
    stream.seek(_HEADER.size)
    records = []
    for _ in range(count):
        rr = dns.RRHeader()
        rr.decode(stream)
        start = stream.tell()
        rr.payload = RECORD_CLASSES.get(rr.type, dns.UnknownRecord)(ttl=rr.ttl)
        rr.payload.decode(stream, rr.rdlength)
        if stream.tell() != start + rr.rdlength:
            return None
        records.append(rr)
    if stream.tell() != end:
        return None
    first = records[0]
    if any(rr.type != first.type or rr.cls != first.cls for rr in records):
        return None
    if kind != Kind.RRSET and first.type != dns.SOA:
        return None
    return Entry(kind, stored_ms / 1000.0, ttl, Rank(rank), tuple(records))


_KINDS = frozenset(Kind)
_RANKS = frozenset(Rank)
