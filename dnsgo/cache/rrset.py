"""
The L2 RRset cache (local): resource record sets and negative answers, filled
from every upstream reply and read by :class:`dnsgo.resolve.l2.RRsetResolver`.

What it stores, and why:

* **RRsets** keyed by (owner lowercased, type, class).  An RRset is the unit
  (RFC 2181 §5): its TTL is the lowest member TTL, clamped to
  ``[min_ttl, max_ttl]``; a TTL with the top bit set counts as 0; an RRset
  whose upstream TTL is 0 is never cached, whatever ``min_ttl`` says
  (RFC 1035 §3.2.1: TTL 0 means "use for this transaction only").  TTLs
  count down while cached.
* **Only answers are learnt from upstream replies.**  The authority and
  additional sections' RRsets (the zone's NS, glue) are not stored: L2
  answers only from answer-rank data (RFC 2181 §5.4.1), and a forwarder
  never iterates, so they could never be served; Unbound keeps them for
  its iterator.  Their SOA still makes negative answers (below).
* **Rank** by section (RFC 2181 §5.4.1): answer > authority > additional,
  for RRsets inserted with a rank (:meth:`RRsetCache.insert_rrset`).  A
  lower rank never replaces a live higher-rank entry; equal or higher does.
  Only the question's own answer-section records are answer rank: its
  CNAME, or its RRset of the qtype, and their RRSIGs.  The rest of a CNAME
  chain (the targets' CNAMEs and RRsets, a DNAME's target data) completes
  that one reply, which L1 keeps whole, but is not learnt: a direct query
  for a target is asked upstream, which may refuse it or answer otherwise
  (an upstream answering ``cn CNAME www.victim.`` with ``www.victim. A
  6.6.6.3`` must not decide what ``www.victim.`` is).
* **Negative answers** (RFC 2308), only when the authority section holds an
  SOA of the name's zone and the question has no CNAME (a negative answer
  for a CNAME's target is that target's business, as above): NXDOMAIN is a
  name-level entry covering every type; NODATA is a (name, type) entry that
  shares the slot of the positive RRset it denies.  Negative TTL =
  ``min(SOA TTL, SOA MINIMUM, negative_ttl)``; ``min_ttl`` does not apply.
  The entry keeps the SOA, served with the negative TTL counting down.
* A live NXDOMAIN hides every RRset of the name: an answer-rank RRset or a
  NODATA stored later for the name removes the NXDOMAIN (the name exists
  after all), and a lower-rank RRset for the name is not stored while the
  NXDOMAIN lives.  So a live NXDOMAIN is always newer than the RRsets it hides.

* RFC 8020: a live NXDOMAIN also answers every name below it (the nearest
  one above the name, not the root), unless the name itself has a negative
  entry, or an RRset stored after that NXDOMAIN.

Not handled: DNSSEC (RRSIG sets are stored keyed by type RRSIG like any other,
so two replies for different types at one owner replace each other's
signatures; the resolver never serves DO queries from here), DNAME synthesis (the synthesized
CNAME is cached, the DNAME is dropped), duplicate suppression (the upstream,
a recursive resolver, already does it), replies to qtype ANY, AXFR, IXFR,
MAILA and MAILB (not cached at all).

Storage: ``num_shards`` segments (:mod:`dnsgo.cache.eviction`: S3-FIFO by
default, or LRU) picked by the hash of
the lowercased name (so every entry of a name lives in one shard), each
bounded by an equal share of ``max_size_mb * 2**20`` bytes of estimated
memory, less the fixed cost of the TTLs entries share (:mod:`dnsgo.cache.sizing`).
An RRset of one record keeps its rdata bytes without a tuple around them,
and an owner equal to the lowercased name is that same object.
Only the records' rdata is kept, in wire form; every read builds new
``dns.RRHeader`` and ``dns.Record_*`` objects.  Expired
entries are dropped when read, or by LRU eviction; :meth:`RRsetCache.stats`
counts them until then.

The rules that decide what a reply teaches live in :func:`learn_from_wire`
(the records of a reply as read from its bytes, :mod:`dnsgo.dns.records`:
the miss path) and :func:`learn_from_reply` (twisted.names sections), both
pure and sharing the same rules, so the shared L2 in Redis
(:mod:`dnsgo.cache.shared`) applies the very same ones.  The
cache keeps every RRset and SOA in wire form (uncompressed rdata bytes,
as :func:`learn_from_wire` learns them; objects from elsewhere are encoded
when stored) and decodes ``dns.Record_*`` objects for each read only: a
miss decodes nothing it does not serve, and an entry costs its bytes, not a
tree of objects.  :meth:`RRsetCache.insert_rrset` and
:meth:`RRsetCache.insert_negative` copy entries learnt elsewhere (Redis, a
dump) into this cache.

Hits and misses are counted by the reader through :meth:`RRsetCache.count_lookup`
(one per query answered or not, however many RRsets it looked at), so
:meth:`RRsetCache.get` itself counts nothing.
"""
from __future__ import annotations

import enum
import sys
from typing import NamedTuple

import attrs
from twisted.names import dns

from dnsgo.cache.sizing import COST_UNIT, cost_units, shard_layout
from dnsgo.cache.stats import CacheStats, hit_rate
from dnsgo.dns import records as wire_records
from dnsgo.dns.names import wire_to_dotted

#: Type codes twisted.names has no constant for.
RRSIG = 46

#: Hop-by-hop or per-transaction records: never cached (RFC 6891, RFC 8945).
_NOT_CACHED_TYPES = frozenset({dns.OPT, dns.TSIG, dns.TKEY})

#: Replies to these question types are not cached at all.
_NOT_CACHED_QTYPES = frozenset({dns.ANY, dns.AXFR, dns.IXFR, dns.MAILA, dns.MAILB})

#: How many CNAMEs of an upstream reply's chain are followed when filling.
MAX_FILL_CHAIN = 16

#: The type slot of a name-level NXDOMAIN entry's key (no real type is negative).
_NAME_LEVEL = -1

#: ``sys.getsizeof(b"")``: a bytes object's size less its length.
_BYTES_HEADER = sys.getsizeof(b"")

_new_tuple = tuple.__new__

#: Estimated bytes of one entry besides its names, rdata (and the tuple of
#: them, for more than one record), TTL int and the segment's slot (its
#: policy's SLOT_BYTES, dnsgo.cache.eviction): the key tuple, the entry
#: object (10 slots) and the stored-at float; the cost is a shared small
#: int (dnsgo.cache.sizing).  Measured with tracemalloc on CPython 3.11
#: (bench/entry_memory.py: within a few percent above what tracemalloc
#: sees, so the byte bound holds).
_ENTRY_OVERHEAD = 167




class Rank(enum.IntEnum):
    """How trustworthy cached data is, by the reply section it came from (RFC 2181 §5.4.1)."""

    ADDITIONAL = 1
    AUTHORITY = 2
    ANSWER = 3


#: ``Rank.ANSWER`` as a plain global for the miss path: reading an enum
#: member from its class costs about 130 ns on CPython 3.11, a global 20.
_ANSWER = Rank.ANSWER


#: Where a cached entry came from (:attr:`CachedRRset.source`): an upstream
#: reply, the shared cache in Redis, or a cache dump that was loaded.
UPSTREAM, SHARED, LOADED = "upstream", "shared", "load"


@attrs.define(eq=False)
class CachedRRset:
    """
    One cached RRset: its records' uncompressed rdata (``rdata``: the bytes
    of its one record, or a tuple of them; :attr:`payloads` is always a
    tuple), the owner as received, when it was stored and for how long, its
    rank, where it came from, and its estimated cost in
    :data:`~dnsgo.cache.sizing.COST_UNIT` units.  Only ``freq``, the
    eviction policy's hit count, ever changes, and ``stored_at``, ``ttl``
    and ``source`` when the same RRset comes again and lasts longer (as
    Unbound renews the TTL of equal data).
    """

    owner: bytes
    type: int
    cls: int
    rdata: bytes | tuple
    ttl: int
    stored_at: float
    rank: Rank
    cost: int
    source: str = UPSTREAM
    freq: int = 0

    @property
    def payloads(self) -> tuple:
        """The records' rdata, as a tuple."""
        rdata = self.rdata
        return (rdata,) if rdata.__class__ is bytes else rdata


@attrs.define(eq=False)
class CachedNegative:
    """
    A cached NXDOMAIN (name level) or NODATA (one type): the rcode, the
    zone's SOA, its lifetime and where it came from.  Only ``freq``, the
    eviction policy's hit count, ever changes.
    """

    rcode: int
    soa_owner: bytes
    soa: bytes  # the SOA rdata, wire form
    cls: int
    ttl: int
    stored_at: float
    cost: int
    source: str = UPSTREAM
    freq: int = 0

    @property
    def rank(self) -> Rank:
        """Negative answers come from the answer to the very question: answer rank."""
        return Rank.ANSWER


class RRsetCache:
    """
    The L2 RRset cache of one worker: positive RRsets and negative answers,
    ranked, counted down by ``reactor.seconds()``, LRU-evicted by byte size.
    """

    def __init__(
        self,
        *,
        max_size_mb: float = 128,
        num_shards: int = 32,
        min_ttl: int = 0,
        max_ttl: int = 86400,
        negative_ttl: int = 3600,
        eviction: str = "s3fifo",
        reactor,
    ) -> None:
        if num_shards < 1 or num_shards & (num_shards - 1):
            raise ValueError(f"num_shards must be a power of two, not {num_shards}")
        if max_size_mb <= 0:
            raise ValueError(f"max_size_mb must be positive, not {max_size_mb}")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"need 0 <= min_ttl <= max_ttl, not {min_ttl}, {max_ttl}")
        self._reactor = reactor
        self._mask = num_shards - 1
        self._max_size = int(max_size_mb * 2**20)
        self._layout = shard_layout(eviction, self._max_size, num_shards)
        self._shards = self._layout.segments
        self._ttls = self._layout.ttls
        self._entry_overhead = _ENTRY_OVERHEAD + self._layout.slot_bytes
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._hits = 0
        self._misses = 0

    # -- filling ---------------------------------------------------------

    def store_reply(self, query: dns.Query, rcode: int, answers, authority, additional) -> None:
        """
        Cache what an upstream reply to ``query`` teaches: its RRsets by rank,
        and a negative answer for NXDOMAIN or NODATA when it carries an SOA.
        """
        self.store_learned(learn_from_reply(query, rcode, answers, authority, additional))

    def store_learned(self, learned) -> None:
        """Cache what :func:`learn_from_reply` found in a reply, applying this cache's TTL bounds."""
        now = self._reactor.seconds()
        for item in learned:
            if isinstance(item, LearnedRRset):
                ttl = item.ttl
                if ttl <= 0:
                    continue
                if ttl > self._max_ttl:  # not min() and max(): see InfraCache._clamp
                    ttl = self._max_ttl
                if ttl < self._min_ttl:
                    ttl = self._min_ttl
                if ttl > 0:
                    self._put_rrset(item.name, item.type, item.cls, item.owner, item.payloads, ttl, item.rank, now, now)
            else:
                ttl = min(item.ttl, self._negative_ttl)
                if ttl > 0:
                    self._put_negative(item.name, item.type, item.cls, item.rcode, item.soa, ttl, now, now)

    def insert_rrset(
        self, owner: bytes, type: int, cls: int, payloads, ttl: int, *, rank: Rank = Rank.ANSWER,
        stored_at: float | None = None, source: str = SHARED,
    ) -> None:
        """
        Cache one RRset learnt elsewhere (the shared L2) as it is: ``ttl``
        counted from ``stored_at`` (default now, never later than now).  Only
        ``max_ttl`` applies, not ``min_ttl``: the TTL was bounded where the
        RRset was first learnt.  The rank and NXDOMAIN rules apply as for
        :meth:`store_reply`.  ``source`` says where it came from (:data:`SHARED`, :data:`LOADED`).
        """
        now = self._reactor.seconds()
        stored_at = now if stored_at is None else min(stored_at, now)
        ttl = min(ttl, self._max_ttl)
        if now - stored_at < ttl:
            self._put_rrset(normalize_name(owner), type, cls, owner, tuple(payloads), ttl, rank, stored_at, now, source)

    def insert_negative(
        self, name: bytes, type: int | None, cls: int, rcode: int, soa: dns.RRHeader, ttl: int, *,
        stored_at: float | None = None, source: str = SHARED,
    ) -> None:
        """
        Cache a negative answer learnt elsewhere: NXDOMAIN (``type`` None) or
        NODATA for ``type``, with ``soa``'s record, ``ttl`` counted from
        ``stored_at`` (default now); only ``negative_ttl`` bounds it.
        """
        now = self._reactor.seconds()
        stored_at = now if stored_at is None else min(stored_at, now)
        ttl = min(ttl, self._negative_ttl)
        if now - stored_at < ttl:
            self._put_negative(normalize_name(name), type, cls, rcode, soa, ttl, stored_at, now, source)

    def _put_rrset(
        self, name: bytes, type: int, cls: int, owner: bytes, payloads: tuple, ttl: int, rank: Rank,
        stored_at: float, now: float, source: str = UPSTREAM,
    ) -> None:
        index = hash(name) & self._mask
        name_key = (name, _NAME_LEVEL, cls)
        if self._live(index, name_key, now) is not None:
            if rank < _ANSWER:
                return
            self._remove(index, name_key)
        key = (name, type, cls)
        old = self._live(index, key, now)
        if old is not None and old.rank > rank:
            return
        # Kept in wire form, whatever form it came in: decoded on each read.
        for p in payloads:
            if p.__class__ is not bytes:
                payloads = tuple(p if p.__class__ is bytes else wire_records.rdata_of(p) for p in payloads)
                break
        ttl = self._ttls.share(ttl)
        ttl_bytes = self._ttls.owned_bytes(ttl)
        if (old.__class__ is CachedRRset and old.rank == rank and old.payloads == payloads and old.owner == owner
                and ttl_bytes <= self._ttls.owned_bytes(old.ttl)):
            # The same RRset again: renew it where it is, when that lasts longer.
            if stored_at + ttl > old.stored_at + old.ttl:
                old.stored_at, old.ttl, old.source = stored_at, ttl, source
            return
        if owner == name:
            owner = name  # one object for the key's name and the owner: the usual, lowercase, case
        # sys.getsizeof of a bytes object is _BYTES_HEADER plus its length.
        nbytes = self._entry_overhead + _BYTES_HEADER + len(name) + ttl_bytes
        if owner is not name:
            nbytes += _BYTES_HEADER + len(owner)
        if len(payloads) == 1:
            rdata = payloads[0]
            nbytes += _BYTES_HEADER + len(rdata)
        else:
            rdata = payloads
            nbytes += sys.getsizeof(payloads) + sum(map(sys.getsizeof, payloads))
        self._put(index, key, CachedRRset(owner, type, cls, rdata, ttl, stored_at, rank, cost_units(nbytes), source))

    def _put_negative(
        self, name: bytes, type: int | None, cls: int, rcode: int, soa_rr, ttl: int,
        stored_at: float, now: float, source: str = UPSTREAM,
    ) -> None:
        index = hash(name) & self._mask
        if type is None:
            key = (name, _NAME_LEVEL, cls)
        else:
            key = (name, type, cls)
            # NODATA: the name exists, so a name-level NXDOMAIN is out of date.
            self._remove(index, (name, _NAME_LEVEL, cls))
        owner = soa_rr.name.name
        soa = wire_records.rdata_of(soa_rr.payload)
        ttl = self._ttls.share(ttl)
        nbytes = (self._entry_overhead + sys.getsizeof(name) + sys.getsizeof(owner) + sys.getsizeof(soa)
                  + self._ttls.owned_bytes(ttl))
        self._put(index, key, CachedNegative(rcode, owner, soa, cls, ttl, stored_at, cost_units(nbytes), source))

    # -- reading ---------------------------------------------------------

    def get(self, name: bytes, type: int, cls: int = dns.IN, *, min_rank: Rank = Rank.ANSWER) -> list[dns.RRHeader] | None:
        """
        The live RRset of ``name``/``type``/``cls`` of at least ``min_rank``,
        as new ``RRHeader`` objects with the TTL that remains, or None.
        """
        name = normalize_name(name)
        index = hash(name) & self._mask
        entries = self._shards[index]
        now = self._reactor.seconds()
        if self._live(index, (name, _NAME_LEVEL, cls), now) is not None:
            return None
        key = (name, type, cls)
        entry = self._live(index, key, now)
        if not isinstance(entry, CachedRRset) or entry.rank < min_rank:
            return None
        denied = self._denied_above(name, cls, now)
        if denied is not None and denied[2].stored_at > entry.stored_at:
            return None  # RFC 8020: a newer NXDOMAIN above says the name is gone
        try:
            payloads = [wire_records.decode_rdata(type, entry.ttl, rdata) for rdata in entry.payloads]
        except ValueError:
            self._remove(index, key)
            return None
        entries.get(key)  # counts the hit for the eviction policy
        remaining = entry.ttl - int(now - entry.stored_at)
        owner = entry.owner
        return [dns.RRHeader(owner, type, cls, remaining, payload) for payload in payloads]

    def get_negative(self, name: bytes, type: int, cls: int = dns.IN) -> tuple[int, dns.RRHeader] | None:
        """
        A live cached negative answer for ``name``/``type``: ``(dns.ENAME, soa)``
        for NXDOMAIN, ``(dns.OK, soa)`` for NODATA, the SOA counted down; or None.
        """
        name = normalize_name(name)
        index = hash(name) & self._mask
        now = self._reactor.seconds()
        key = (name, _NAME_LEVEL, cls)
        entry = self._live(index, key, now)
        if entry is None:
            key = (name, type, cls)
            entry = self._live(index, key, now)
            if not isinstance(entry, CachedNegative):
                found = self._denied_above(name, cls, now)
                if found is None:
                    return None
                index, key, entry = found
        self._shards[index].get(key)  # counts the hit for the eviction policy
        remaining = entry.ttl - int(now - entry.stored_at)
        try:
            soa = wire_records.decode_rdata(dns.SOA, entry.ttl, entry.soa)
        except ValueError:
            self._remove(index, key)
            return None
        return entry.rcode, dns.RRHeader(entry.soa_owner, dns.SOA, entry.cls, remaining, soa)

    def _denied_above(self, name: bytes, cls: int, now: float):
        """
        The nearest live NXDOMAIN of a name above ``name`` (not the root), as
        ``(index, key, entry)``, or None: RFC 8020, an NXDOMAIN means that
        nothing exists below the name either.
        """
        for ancestor in ancestors(name):
            index = hash(ancestor) & self._mask
            key = (ancestor, _NAME_LEVEL, cls)
            entry = self._live(index, key, now)
            if entry is not None:
                return index, key, entry
        return None

    def holds_any(self, name: bytes, type: int, cls: int = dns.IN) -> bool:
        """
        Whether the cache may hold something that answers ``name`` (key
        form) ``type``: its RRset, a CNAME, a negative entry, or an NXDOMAIN
        above it.  No expiry is checked: False means a sure miss, found with
        a few dictionary lookups (most misses are for names never seen).
        """
        shards, mask = self._shards, self._mask
        if shards[hash(name) & mask].holds_any(((name, type, cls), (name, _NAME_LEVEL, cls), (name, dns.CNAME, cls))):
            return True
        for ancestor in ancestors(name):
            if shards[hash(ancestor) & mask].holds_any(((ancestor, _NAME_LEVEL, cls),)):
                return True
        return False

    def count_lookup(self, hit: bool) -> None:
        """Count one query the reader answered from this cache (``hit``) or not."""
        if hit:
            self._hits += 1
        else:
            self._misses += 1

    # -- management ------------------------------------------------------

    def flush(self, name: bytes | None = None, type: int | None = None, subtree: bool = False) -> int:
        """
        Remove entries and return how many: all of them; those of ``name``
        (and, with ``subtree``, of every name below it); those of ``type``; or
        both filters at once.  A name-level NXDOMAIN covers every type, so a
        flush by type also removes those of the names it matches.
        """
        if name is None and type is None:
            removed = sum(map(len, self._shards))
            for entries in self._shards:
                entries.clear()
            return removed
        if name is not None:
            name = normalize_name(name)
        if name is None or subtree:
            indexes = range(len(self._shards))
        else:
            indexes = (hash(name) & self._mask,)
        removed = 0
        for index in indexes:
            doomed = [
                key
                for key in self._shards[index].keys()
                if (name is None or _name_matches(key[0], name, subtree))
                and (type is None or key[1] == type or key[1] == _NAME_LEVEL)
            ]
            for key in doomed:
                self._remove(index, key)
            removed += len(doomed)
        return removed

    def peek(self, name: bytes, type: int | None = None, cls: int = dns.IN) -> list[tuple[int | None, CachedRRset | CachedNegative]]:
        """
        The live entries of ``name`` (of ``type`` and the name-level
        NXDOMAIN, or of every type when ``type`` is None), as ``(type,
        entry)`` with ``type`` None for an NXDOMAIN; for inspection: the LRU
        order and the counters are left as they are.  Without ``type`` this
        reads the whole shard of the name.
        """
        name = normalize_name(name)
        shard = self._shards[hash(name) & self._mask]
        now = self._reactor.seconds()
        if type is not None:
            keys = [(name, _NAME_LEVEL, cls), (name, type, cls)]
        else:
            keys = [key for key in shard.keys() if key[0] == name and key[2] == cls]
        found = []
        for key in keys:
            entry = shard.peek(key)
            if entry is not None and now - entry.stored_at < entry.ttl:
                found.append((None if key[1] == _NAME_LEVEL else key[1], entry))
        return found

    @property
    def num_shards(self) -> int:
        """How many segments the cache has (:meth:`shard_entries` reads one)."""
        return len(self._shards)

    def shard_entries(self, index: int) -> list[tuple[bytes, int | None, CachedRRset | CachedNegative]]:
        """
        The live entries of segment ``index`` as ``(name, type, entry)``
        (``type`` None for an NXDOMAIN), least recently used first; for the
        cache dump, which reads one segment at a time.  LRU order and
        counters are left as they are.
        """
        now = self._reactor.seconds()
        return [
            (key[0], None if key[1] == _NAME_LEVEL else key[1], entry)
            for key, entry in self._shards[index].items()
            if now - entry.stored_at < entry.ttl
        ]

    def stats(self) -> CacheStats:
        """The counters and size of this cache now (expired entries count until dropped)."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evicts=sum(shard.evicts for shard in self._shards),
            hit_rate=hit_rate(self._hits, self._misses),
            size_bytes=self._layout.size_bytes(),
            max_size_bytes=self._max_size,
            num_shards=len(self._shards),
            entries=sum(map(len, self._shards)),
        )

    # -- the segments ----------------------------------------------------

    def _live(self, index: int, key, now: float):
        """The entry at ``key`` in shard ``index`` if it has not expired; an expired one is dropped."""
        entry = self._shards[index].peek(key)
        if entry is None:
            return None
        if now - entry.stored_at >= entry.ttl:
            self._remove(index, key)
            return None
        return entry

    def _put(self, index: int, key, entry) -> None:
        if entry.cost * COST_UNIT > self._layout.segment_budget:
            self._remove(index, key)
            return
        self._shards[index].put(key, entry)

    def _remove(self, index: int, key) -> None:
        self._shards[index].pop(key)


class LearnedRRset(NamedTuple):
    """
    An RRset an upstream reply teaches: its key (``name`` lowercased without
    the trailing dot), the owner as received, the payloads, the lowest
    member TTL as RFC 2181 reads it (not yet bounded by any cache's
    ``min_ttl``/``max_ttl``), and the rank of the section it came from.
    A ``NamedTuple`` (immutable, and cheap to build: one per miss).
    """

    name: bytes
    type: int
    cls: int
    owner: bytes
    payloads: tuple
    ttl: int
    rank: Rank


@attrs.frozen
class LearnedNegative:
    """
    A negative answer an upstream reply teaches (RFC 2308): NXDOMAIN for
    every type of ``name`` (``type`` None) or NODATA for ``type``, with the
    zone's SOA record and ``min(SOA TTL, SOA MINIMUM)`` as ``ttl`` (not yet
    bounded by any cache's ``negative_ttl``).
    """

    name: bytes
    type: int | None
    cls: int
    rcode: int
    soa: dns.RRHeader
    ttl: int


def learn_from_reply(query: dns.Query, rcode: int, answers, authority, additional) -> list:
    """
    What an upstream reply to ``query`` teaches, in the order a cache should
    store it: :class:`LearnedRRset` items of the answer section (only the
    question's own answers, at answer rank), then at most one
    :class:`LearnedNegative` (for the question's name only, from an SOA
    of the authority section).
    The rules are the module's (grouping, ranking, RFC 2308); every L2
    store shares them.
    """
    if query.type in _NOT_CACHED_QTYPES or rcode not in (dns.OK, dns.ENAME):
        return []
    return _learn(
        query, rcode, _group(answers), _object_target,
        lambda name, type, cls, rcode: _learn_negative(name, type, cls, rcode, authority),
    )


def learn_from_wire(query, reply: wire_records.ReadReply) -> list:
    """
    What a reply teaches, as :func:`learn_from_reply` says, from its records
    as read from its bytes (:func:`dnsgo.dns.records.read_reply`): the
    :class:`LearnedRRset` payloads are the rdata bytes (uncompressed).
    ``query`` is the question asked (its name, type and class count, not
    the reply's copy of it).
    """
    rcode = reply.rcode
    qtype = query.type
    if qtype in _NOT_CACHED_QTYPES or rcode not in (dns.OK, dns.ENAME):
        return []
    simple = _simple_answer(query, rcode, reply.records)
    if simple is not None:
        return simple
    answers = []
    authority = []
    for record in reply.records:
        section = record.section
        if section == wire_records.ANSWER:
            if record.type not in _NOT_CACHED_TYPES:
                answers.append(record)
        elif section == wire_records.AUTHORITY and record.type == dns.SOA:
            authority.append(record)
    return _learn(
        query, rcode, _group_wire(answers), _wire_target,
        lambda name, type, cls, rcode: _learn_wire_negative(name, type, cls, rcode, authority),
    )


def _simple_answer(query, rcode: int, records) -> list | None:
    """
    The common reply's lesson without the general rules' grouping and chain
    walk: NOERROR whose answer section is one RRset of the question's own
    name, type and class (no CNAME, no RRSIG).  None when the reply is
    anything else; :func:`_learn` then applies the rules in full (they give
    the same result here: one answer-rank RRset, nothing negative).
    """
    qname_wire = getattr(query, "qname_wire", None)
    if rcode != dns.OK or qname_wire is None or not records or records[0].section != wire_records.ANSWER:
        return None
    qtype, qcls = query.type, query.cls
    if qtype == dns.CNAME or qtype == RRSIG:
        return None
    owner = records[0].owner
    lowered = qname_wire.lower()
    if owner.lower() != lowered:
        return None
    payloads = []
    ttl = None
    for record in records:
        if record.section != wire_records.ANSWER:
            break
        if record.type != qtype or record.cls != qcls or (record.owner != owner and record.owner.lower() != lowered):
            return None
        payloads.append(record.rdata)
        if ttl is None or record.ttl < ttl:
            ttl = record.ttl
    # A FlaggedQuery's dotted name is wire_to_dotted(qname_wire): no need to convert again.
    dotted = query.name.name if owner == qname_wire else wire_to_dotted(owner)
    return [_new_tuple(LearnedRRset, (normalize_name(dotted), qtype, qcls, dotted, tuple(payloads), ttl, _ANSWER))]


def _learn(query, rcode: int, answers: dict, target_of, negative_of) -> list:
    """
    The rules of :func:`learn_from_reply` over the answer section grouped
    into RRsets by (name, type, class); ``target_of`` reads a CNAME
    payload's target and ``negative_of(name, type, cls, rcode)`` finds the
    negative answer the authority section allows.
    """
    qtype, qcls = query.type, query.cls
    qname = normalize_name(query.name.name)
    learned: list = []

    chain, complete = _follow_chain(answers, qname, qtype, qcls, target_of)
    last = chain[-1]
    for (name, type, cls), group in answers.items():
        # Only the question's own records answer anything: the rest of the
        # chain completes this one reply, and must not answer a direct query
        # for those names, which the upstream may have refused or answered
        # otherwise (RFC 2181 §5.4.1).
        if cls != qcls or name != qname:
            continue
        if type == RRSIG or (name == last and type == qtype) or (type == dns.CNAME and name != last):
            learned.append(LearnedRRset(name, type, cls, group.owner, tuple(group.payloads), group.ttl, Rank.ANSWER))

    if complete and last == qname:
        negative = None
        if rcode == dns.ENAME:
            negative = negative_of(last, None, qcls, dns.ENAME)
        elif (last, qtype, qcls) not in answers:
            negative = negative_of(last, qtype, qcls, dns.OK)
        if negative is not None:
            learned.append(negative)
    return learned


def _group_wire(section) -> dict:
    """Group a section's WireRecords into RRsets keyed by (name lowercased, type, class); payloads are rdata bytes."""
    groups: dict = {}
    for record in section:
        owner = wire_to_dotted(record.owner)
        key = (normalize_name(owner), record.type, record.cls)
        group = groups.get(key)
        if group is None:
            groups[key] = _Group(owner, [record.rdata], record.ttl)
        else:
            group.payloads.append(record.rdata)
            if record.ttl < group.ttl:
                group.ttl = record.ttl
    return groups


def _wire_target(payload) -> bytes:
    """The dotted target of a CNAME payload kept as rdata bytes."""
    return wire_to_dotted(wire_records.rdata_name(payload))


def _learn_wire_negative(name: bytes, type: int | None, cls: int, rcode: int, authority) -> LearnedNegative | None:
    """The negative answer an SOA of ``name``'s zone in ``authority`` (WireRecords) allows, or None."""
    for record in authority:
        if record.type != dns.SOA or record.cls != cls:
            continue
        owner = wire_to_dotted(record.owner)
        if not at_or_below(name, normalize_name(owner)):
            continue
        try:
            payload = wire_records.decode_rdata(dns.SOA, record.ttl, record.rdata)
        except ValueError:
            return None
        soa_rr = dns.RRHeader(owner, dns.SOA, cls, record.ttl, payload)
        return LearnedNegative(name, type, cls, rcode, soa_rr, min(record.ttl, payload.minimum))
    return None


def _learn_negative(name: bytes, type: int | None, cls: int, rcode: int, authority) -> LearnedNegative | None:
    soa_rr = _zone_soa(authority, name, cls)
    if soa_rr is None:
        return None
    return LearnedNegative(name, type, cls, rcode, soa_rr, min(_wire_ttl(soa_rr.ttl), soa_rr.payload.minimum))


@attrs.define
class _Group:
    """The records of one RRset as they arrive: owner as received, payloads, lowest TTL."""

    owner: bytes
    payloads: list
    ttl: int


def _group(section) -> dict:
    """Group a reply section's records into RRsets keyed by (name lowercased, type, class)."""
    groups: dict = {}
    for rr in section:
        if rr.type in _NOT_CACHED_TYPES or rr.payload is None:
            continue
        owner = rr.name.name
        key = (normalize_name(owner), rr.type, rr.cls)
        ttl = _wire_ttl(rr.ttl)
        group = groups.get(key)
        if group is None:
            groups[key] = _Group(owner, [rr.payload], ttl)
        else:
            group.payloads.append(rr.payload)
            if ttl < group.ttl:
                group.ttl = ttl
    return groups


def _object_target(payload) -> bytes:
    """The dotted target of a CNAME payload object."""
    return payload.name.name


def _follow_chain(groups: dict, qname: bytes, qtype: int, qcls: int, target_of=_object_target) -> tuple[list[bytes], bool]:
    """
    The names of the CNAME chain in an answer section, starting at ``qname``,
    and whether it ended normally (not in a loop, not too long).
    ``target_of(payload)`` reads a CNAME's target.
    """
    chain = [qname]
    if qtype == dns.CNAME:
        return chain, True
    seen = {qname}
    for _ in range(MAX_FILL_CHAIN):
        group = groups.get((chain[-1], dns.CNAME, qcls))
        if group is None:
            return chain, True
        target = normalize_name(target_of(group.payloads[0]))
        if target in seen:
            return chain, False
        seen.add(target)
        chain.append(target)
    return chain, groups.get((chain[-1], dns.CNAME, qcls)) is None


def _zone_soa(authority, name: bytes, cls: int):
    """The first SOA in ``authority`` whose owner is ``name`` or one of its ancestors."""
    for rr in authority:
        if rr.type != dns.SOA or rr.cls != cls:
            continue
        if at_or_below(name, normalize_name(rr.name.name)):
            return rr
    return None


def _name_matches(key_name: bytes, name: bytes, subtree: bool) -> bool:
    """Whether ``key_name`` is ``name`` or, with ``subtree``, below it (everything below the root)."""
    return key_name == name or (subtree and at_or_below(key_name, name))


def at_or_below(name: bytes, ancestor: bytes) -> bool:
    """Whether the key-form ``name`` is ``ancestor`` or below it, at label boundaries (everything is below the root, ``b""``)."""
    return not ancestor or name == ancestor or name.endswith(b"." + ancestor)


def ancestors(name: bytes) -> list[bytes]:
    """The names above the key-form ``name``, nearest first, without the root (RFC 8020 lookups)."""
    out = []
    dot = name.find(b".")
    while dot >= 0:
        out.append(name[dot + 1:])
        dot = name.find(b".", dot + 1)
    return out


def normalize_name(name: bytes) -> bytes:
    """Cache key form of a dotted name: lowercase, no trailing dot."""
    return name.lower().rstrip(b".")


def _wire_ttl(ttl: int) -> int:
    """A TTL as RFC 2181 §8 reads it: one with the top bit set counts as 0."""
    return 0 if ttl >= 2**31 else ttl


