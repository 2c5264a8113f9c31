"""
The cache dump: a worker's L2 (RRsets and negative answers) as text, to
load into another worker or into the same one after a restart
(``POST /api/cache/dump``, ``POST /api/cache/load``, ``cache.persist_path``).
``docs/cache-dump.md`` is the format's reference; this module writes and
reads version :data:`VERSION`.

A dump is JSON lines (NDJSON): a header, one line per entry, and an end
line that counts the entries, so a cut-off file is told from a whole one::

    {"format": "dnsgo-cache-dump", "version": 1, "worker": "w1", "created": 1764571857.25}
    {"name": "www.example.com.", "type": "A", "class": 1, "kind": "rrset", "rank": "answer",
     "expires": 1764572154.0, "rdata": ["wAACAQ=="]}
    {"name": "gone.example.com.", "type": null, "class": 1, "kind": "nxdomain", "expires": 1764571957.0,
     "soa": {"owner": "example.com.", "rdata": "..."}}
    {"end": true, "entries": 2}

Times are absolute (Unix seconds on the dumping worker's clock), so a
loader keeps what remains of each TTL and skips what has expired.  Rdata
is the uncompressed wire form, base64-encoded: exact, whatever the type.

Reading is all or nothing: :func:`read_dump` refuses a stream with another
format or version, a damaged line, or no end line (:class:`DumpError`,
with the line number), before anything is loaded.  What a dump may hold is
bounded like the shared cache's values: 256 records and 64 KiB of rdata
an entry, a negative entry's SOA of the name or a zone above it.
"""
from __future__ import annotations

import base64
import binascii
import json
import math

import attrs
from twisted.names import dns

from dnsgo.cache.rrset import LOADED, CachedRRset, Rank, RRsetCache, at_or_below, normalize_name
from dnsgo.dns import records as wire_records
from dnsgo.dns.types import parse_qtype, qtype_text

FORMAT = "dnsgo-cache-dump"
VERSION = 1

#: Bounds on one entry, the same as the shared cache's values.
MAX_RECORDS = 256
MAX_RDATA_BYTES = 65536
#: The longest line a reader takes (an entry at the bounds above, in base64 and JSON).
MAX_LINE = 4 * MAX_RDATA_BYTES // 3 + 4 * MAX_RECORDS + 4096

_KINDS = ("rrset", "nxdomain", "nodata")
_RANKS = {rank.name.lower(): rank for rank in Rank}


class DumpError(ValueError):
    """A stream that is not a whole dump of this version; the text says where and why."""


@attrs.frozen
class DumpEntry:
    """
    One entry of a dump: the name in key form (lowercased dotted bytes, as
    the cache keys it), the owner as received, its type (None for an
    NXDOMAIN), class, kind, rank, absolute expiry, and the rdata (an RRset's
    records; a negative entry's SOA and its owner).
    """

    name: bytes
    owner: bytes
    type: int | None
    cls: int
    kind: str
    rank: Rank
    expires: float
    rdata: tuple[bytes, ...] = ()
    soa_owner: bytes = b""


@attrs.frozen
class Dump:
    """A dump as read: who wrote it and when, and its entries."""

    worker: str
    created: float
    entries: tuple[DumpEntry, ...]


@attrs.frozen
class LoadResult:
    """What loading entries did: how many went into the cache and how many had expired."""

    loaded: int
    expired: int


# -- writing -------------------------------------------------------------


def header_line(worker: str, created: float) -> str:
    """The first line of a dump written by ``worker`` at ``created``."""
    return _line({"format": FORMAT, "version": VERSION, "worker": worker, "created": round(created, 3)})


def end_line(entries: int) -> str:
    """The last line of a dump of ``entries`` entries."""
    return _line({"end": True, "entries": entries})


def shard_lines(cache: RRsetCache, index: int) -> list[str]:
    """The lines of the live entries of ``cache``'s segment ``index``, each ending in a newline."""
    lines = []
    for name, type, entry in cache.shard_entries(index):
        expires = entry.stored_at + entry.ttl
        base = {"name": _name_text(name), "type": None if type is None else _type_text(type), "class": entry.cls}
        if isinstance(entry, CachedRRset):
            rdata = [_b64(wire_records.rdata_of(payload)) for payload in entry.payloads]
            lines.append(_line({
                **base, "owner": _name_text(entry.owner), "kind": "rrset", "rank": entry.rank.name.lower(),
                "expires": expires, "rdata": rdata,
            }))
        else:
            kind = "nxdomain" if entry.rcode == dns.ENAME else "nodata"
            lines.append(_line({
                **base, "kind": kind, "rank": "answer", "expires": expires,
                "soa": {"owner": _name_text(entry.soa_owner), "rdata": _b64(wire_records.rdata_of(entry.soa))},
            }))
    return lines


def dump_lines(cache: RRsetCache, *, worker: str, now: float):
    """Every line of a dump of ``cache`` (header, entries segment by segment, end), as an iterator."""
    yield header_line(worker, now)
    count = 0
    for index in range(cache.num_shards):
        lines = shard_lines(cache, index)
        count += len(lines)
        yield from lines
    yield end_line(count)


# -- reading -------------------------------------------------------------


def read_dump(lines) -> Dump:
    """
    The dump in ``lines`` (an iterable of str or bytes lines, such as an
    open file); :class:`DumpError` if it is not a whole dump of this version.
    """
    header = None
    entries = []
    ended = False
    number = 0
    for number, raw in enumerate(lines, 1):
        if ended:
            if raw.strip():
                raise DumpError(f"line {number}: data after the end line")
            continue
        item = _object(raw, number)
        if header is None:
            header = _header(item)
        elif item.get("end") is True:
            if item.get("entries") != len(entries):
                raise DumpError(f"line {number}: the end line counts {str(item.get('entries'))[:20]} entries, the dump has {len(entries)}")
            ended = True
        else:
            entries.append(_entry_of(item, number))
    if header is None:
        raise DumpError("empty: no header line")
    if not ended:
        raise DumpError(f"truncated: no end line after {number} lines")
    return Dump(header[0], header[1], tuple(entries))


def read_entry_lines(lines) -> tuple[DumpEntry, ...]:
    """
    The entries of entry lines alone (no header or end line: what the
    control plane sends a worker in LoadCache); :class:`DumpError` for a bad one.
    """
    entries = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        entries.append(_entry_line(raw, number))
    return tuple(entries)


def load(cache: RRsetCache, entries, *, now: float) -> LoadResult:
    """
    Put ``entries`` into ``cache`` with what remains of their TTLs at
    ``now``; the expired are skipped.  The cache's own rules apply (rank,
    ``max_ttl``, NXDOMAIN hiding); a loaded entry's source is ``load``.
    """
    loaded = expired = 0
    for entry in entries:
        ttl = math.floor(entry.expires - now)
        if ttl <= 0:
            expired += 1
            continue
        if entry.kind == "rrset":
            cache.insert_rrset(entry.owner, entry.type, entry.cls, entry.rdata, ttl, rank=entry.rank, stored_at=now, source=LOADED)
        else:
            soa = dns.RRHeader(entry.soa_owner, dns.SOA, entry.cls, ttl, wire_records.decode_rdata(dns.SOA, ttl, entry.rdata[0]))
            rcode = dns.ENAME if entry.kind == "nxdomain" else dns.OK
            cache.insert_negative(entry.name, entry.type, entry.cls, rcode, soa, ttl, stored_at=now, source=LOADED)
        loaded += 1
    return LoadResult(loaded, expired)


def _object(raw, number: int) -> dict:
    if len(raw) > MAX_LINE:
        raise DumpError(f"line {number}: longer than {MAX_LINE} bytes")
    try:
        item = json.loads(raw)
    except (ValueError, RecursionError):
        raise DumpError(f"line {number}: not JSON") from None
    if not isinstance(item, dict):
        raise DumpError(f"line {number}: not a JSON object")
    return item


def _entry_line(raw, number: int) -> DumpEntry:
    return _entry_of(_object(raw, number), number)


def _entry_of(item: dict, number: int) -> DumpEntry:
    try:
        return _entry(item)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise DumpError(f"line {number}: not a dump entry ({_reason(e)})") from None


def _header(item: dict) -> tuple[str, float]:
    if item.get("format") != FORMAT:
        raise DumpError(f"line 1: not a dnsgo cache dump (format {str(item.get('format'))[:40]!r})")
    if item.get("version") != VERSION:
        raise DumpError(f"line 1: dump version {str(item.get('version'))[:20]!r}; this dnsgo reads version {VERSION}")
    worker, created = item.get("worker"), item.get("created")
    if not isinstance(worker, str) or not _is_number(created):
        raise DumpError("line 1: the header needs a worker (text) and created (a number)")
    return worker[:200], float(created)


def _entry(item: dict) -> DumpEntry:
    name = normalize_name(_name_bytes(item["name"]))
    kind = item["kind"]
    if kind not in _KINDS:
        raise ValueError(f"unknown kind {str(kind)[:20]!r}")
    cls = item["class"]
    if not isinstance(cls, int) or isinstance(cls, bool) or not 0 < cls < 65536:
        raise ValueError("bad class")
    expires = item["expires"]
    if not _is_number(expires):
        raise ValueError("expires is not a number")
    type = None if item["type"] is None and kind == "nxdomain" else parse_qtype(item["type"])
    if kind == "rrset":
        owner = _name_bytes(item["owner"])
        if normalize_name(owner) != name:
            raise ValueError("the owner is not the entry's name")
        rank = _RANKS[item["rank"]]
        rdata = tuple(base64.b64decode(text, validate=True) for text in _list(item["rdata"]))
        if not rdata or len(rdata) > MAX_RECORDS or sum(map(len, rdata)) > MAX_RDATA_BYTES:
            raise ValueError(f"an RRset needs 1 to {MAX_RECORDS} records and at most {MAX_RDATA_BYTES} bytes of rdata")
        return DumpEntry(name, owner, type, cls, kind, rank, float(expires), rdata)
    soa = item["soa"]
    soa_owner = _name_bytes(soa["owner"])
    if not at_or_below(name, normalize_name(soa_owner)):
        raise ValueError("the SOA is not of the name's zone")
    rdata = base64.b64decode(soa["rdata"], validate=True)
    if len(rdata) > MAX_RDATA_BYTES:
        raise ValueError("SOA rdata too long")
    wire_records.decode_rdata(dns.SOA, 0, rdata)
    return DumpEntry(name, name, type, cls, kind, Rank.ANSWER, float(expires), (rdata,), soa_owner)


def _list(value) -> list:
    if not isinstance(value, list):
        raise TypeError("rdata is not a list")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _reason(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"no {error.args[0]!r}"
    return str(error)[:120]


# -- names, types and rdata ----------------------------------------------


def _line(item: dict) -> str:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=True) + "\n"


def _type_text(type: int) -> str:
    text = qtype_text(type)
    return text if isinstance(text, str) else f"TYPE{type}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _name_text(name: bytes) -> str:
    """Dotted bytes as dump text: a trailing dot, bytes outside printable ASCII and ``\\`` as ``\\DDD``."""
    text = "".join(chr(b) if 0x21 <= b < 0x7F and b != 0x5C else f"\\{b:03d}" for b in name)
    return text + "."


def _name_bytes(text) -> bytes:
    """Dump text back to dotted bytes (no trailing dot); ValueError if it is not a name's text."""
    if not isinstance(text, str) or not text.endswith(".") or len(text) > 1100:
        raise ValueError("a name must be text ending in a dot")
    out = bytearray()
    i = 0
    body = text[:-1]
    while i < len(body):
        c = body[i]
        if c == "\\":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not digits.isdigit() or int(digits) > 255:
                raise ValueError("bad escape in a name")
            out.append(int(digits))
            i += 4
        elif 0x21 <= ord(c) < 0x7F:
            out.append(ord(c))
            i += 1
        else:
            raise ValueError("a name holds a character outside printable ASCII")
    labels = bytes(out).split(b".") if out else []
    if any(not 0 < len(label) < 64 for label in labels) or len(out) > 253:
        raise ValueError("bad label in a name")
    return bytes(out)
