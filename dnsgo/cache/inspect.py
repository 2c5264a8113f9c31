"""
What each cache level holds for one name, as JSON-ready dicts: the body of
``GET /api/cache/entries`` (one worker's L1 and L2 here, the shared cache
in :func:`shared_entries`).  Records are shown in presentation format
(:mod:`dnsgo.dns.present`) with the TTL that remains.

Bounded: at most :data:`MAX_ENTRIES` entries a level and
:data:`MAX_RECORDS` records an entry, with ``truncated`` set when more were
left out.  Nothing here changes a cache's order or counters.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns

from dnsgo.cache.message import MessageCache
from dnsgo.cache.rrset import CachedRRset, RRsetCache
from dnsgo.cache.shared import SharedRRsetStore
from dnsgo.cache.shared_format import Kind
from dnsgo.dns import records as wire_records
from dnsgo.dns.names import dotted_to_wire
from dnsgo.dns.present import present_record, present_type
from dnsgo.dns.wire import KEY_CD, KEY_DO, KEY_EDNS, KEY_RD

MAX_ENTRIES = 64
MAX_RECORDS = 64

#: Types probed in the shared cache when no type is asked for (Redis keys
#: are per type and are never listed: a SCAN over a cluster is no lookup).
SHARED_PROBE_TYPES = (1, 28, 5, 15, 2, 16, 6, 33, 12, 257, 65, 64, 43, 48)

_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_FLAG_NAMES = ((KEY_RD, "rd"), (KEY_CD, "cd"), (KEY_DO, "do"), (KEY_EDNS, "edns"))


def l1_entries(cache: MessageCache | None, name: bytes, qtype: int | None) -> tuple[list[dict], bool]:
    """L1's replies for the dotted ``name`` (of ``qtype`` or any), and whether some were left out."""
    if cache is None:
        return [], False
    peeked = cache.peek(dotted_to_wire(name), qtype)
    out = []
    truncated = len(peeked) > MAX_ENTRIES
    for item in peeked[:MAX_ENTRIES]:
        remaining = max(0, item.remaining)
        try:
            read = wire_records.read_reply(item.reply)
            # The answer section; a negative reply's authority section (its SOA) when it has none.
            shown = [r for r in read.records if r.section == wire_records.ANSWER] or read.records
            records = [present_record(r.owner, r.ttl, r.cls, r.type, r.rdata) for r in shown]
            rcode = _RCODES.get(read.rcode, str(read.rcode))
        except ValueError:
            records, rcode = [], "unreadable"
        truncated = truncated or len(records) > MAX_RECORDS
        out.append({
            "type": present_type(item.qtype),
            "flags": ",".join(text for bit, text in _FLAG_NAMES if item.key_flags & bit),
            "rcode": rcode,
            "ttl": remaining,
            "stale": item.remaining <= 0,
            "records": records[:MAX_RECORDS],
        })
    return out, truncated


def l2_entries(cache: RRsetCache | None, name: bytes, qtype: int | None, *, now: float) -> tuple[list[dict], bool]:
    """L2's RRsets and negative answers for the dotted ``name``, and whether some were left out."""
    if cache is None:
        return [], False
    peeked = cache.peek(name, qtype)
    out = []
    truncated = len(peeked) > MAX_ENTRIES
    for type, entry in peeked[:MAX_ENTRIES]:
        remaining = max(0, entry.ttl - int(now - entry.stored_at))
        if isinstance(entry, CachedRRset):
            owner = dotted_to_wire(entry.owner)
            records = [present_record(owner, remaining, entry.cls, entry.type, wire_records.rdata_of(p)) for p in entry.payloads]
            kind, rank = "rrset", entry.rank.name.lower()
        else:
            records = [present_record(dotted_to_wire(entry.soa_owner), remaining, entry.cls, dns.SOA, wire_records.rdata_of(entry.soa))]
            kind, rank = ("nxdomain" if entry.rcode == dns.ENAME else "nodata"), "answer"
        truncated = truncated or len(records) > MAX_RECORDS
        out.append({
            "type": None if type is None else present_type(type),
            "kind": kind,
            "ttl": remaining,
            "rank": rank,
            "source": entry.source,
            "records": records[:MAX_RECORDS],
        })
    return out, truncated


def shared_entries(store: SharedRRsetStore | None, name: bytes, qtype: int | None) -> defer.Deferred:
    """
    Fires with the shared cache's entries for the dotted ``name``:
    ``{"reachable": bool, "entries": [...]}``, or None without a shared
    cache.  Without ``qtype`` the types of :data:`SHARED_PROBE_TYPES` are
    read.  Never fails.
    """
    if store is None:
        return defer.succeed(None)
    types = (qtype,) if qtype is not None else SHARED_PROBE_TYPES
    d = store.inspect(name, types)

    def shown(found):
        if found is None:
            return {"reachable": False, "entries": []}
        now = store.now()
        entries = []
        for kind, type, entry in found[:MAX_ENTRIES]:
            remaining = entry.remaining(now)
            records = [
                present_record(dotted_to_wire(rr.name.name), max(0, remaining), rr.cls, rr.type, wire_records.rdata_of(rr.payload))
                for rr in entry.records[:MAX_RECORDS]
            ]
            entries.append({
                "type": None if kind == Kind.NXDOMAIN else present_type(type),
                "kind": kind.name.lower(),
                "ttl": max(0, remaining),
                "stale": remaining <= 0,
                "rank": entry.rank.name.lower(),
                "records": records,
            })
        return {"reachable": True, "entries": entries}

    return d.addCallback(shown)
