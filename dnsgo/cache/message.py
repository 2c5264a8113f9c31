"""
The L1 message cache: whole replies in wire format, served from bytes.

A worker keeps the replies it built on the miss path (the output of
:func:`dnsgo.serve.reply.encode_reply`, without the OPT record, or with
this server's own when the cache is built with ``opt_udp_size``) under the
query's L1 key (:attr:`dnsgo.dns.wire.QueryInfo.key`: lowercased name, type,
class and the RD/CD/DO/EDNS flag byte).  A hit never decodes anything: the
stored bytes get their TTLs counted down (:func:`dnsgo.dns.wire.render_ttl_map`) and
the query's ID and question copied in (:func:`dnsgo.dns.wire.patch_header`).
TTLs are rendered at most once per elapsed second per entry; the rendered
bytes replace the stored ones (``render_ttl_map`` rewrites every TTL from the
original values, so the reply with the original TTLs is never needed again
and an entry holds a single copy of its reply).

What is cached (decided from the bytes, :func:`dnsgo.dns.wire.scan_response`):

* never a reply with TC=1, or with a question that is not the query's;
* NOERROR with answers: every TTL clamped to ``[min_ttl, max_ttl]`` (like
  Unbound's cache-min-ttl / cache-max-ttl); the entry lives as long as the
  smallest of them; a lifetime of 0 is not cached;
* NXDOMAIN, or NOERROR without answers (NODATA), only with an SOA record in
  the authority section (RFC 2308); TTLs are capped at
  ``min(negative_ttl, max_ttl)`` and the entry lives as long as the
  smallest; ``min_ttl`` does not raise negative lifetimes;
* nothing else (SERVFAIL, REFUSED, ...): RFC 9520 failure caching belongs to
  the resolver.

The cache is split into ``num_shards`` segments (:mod:`dnsgo.cache.eviction`:
S3-FIFO by default, or LRU), each bounded by an equal share of
``max_size_mb * 2**20`` bytes of estimated memory (see :func:`entry_cost`),
less the fixed cost of the TTLs its entries share
(:mod:`dnsgo.cache.sizing`).  Time comes from ``reactor.seconds()``.
"""
from __future__ import annotations

import struct
from typing import Callable

import attrs

from dnsgo.cache.sizing import cost_units, shard_layout
from dnsgo.cache.stats import CacheStats, hit_rate
from dnsgo.dns import wire

_U16 = struct.Struct("!H")
_FLAG_TC = 0x0200
_FLAG_QR = 0x8000
_TYPE_SOA = 6

# Memory an entry holds besides the contents of its reply and key bytes,
# measured on CPython 3.11 (64-bit) with sys.getsizeof and tracemalloc
# (tests/test_message_cache.py checks the total against tracemalloc;
# bench/entry_memory.py prints it per entry):
#   the _Entry object with 9 slots .......................................... 88
#   headers of the reply, key and TTL-map bytes objects (3 x 33, and
#   pymalloc's rounding to 8 bytes, about 4 each) .......................... 111
#   the stored_at float ..................................................... 24
# The segment's slot is its policy's SLOT_BYTES (dnsgo.cache.eviction).
# The lifetime and cost ints are charged apart (dnsgo.cache.sizing): a
# cost is a shared small int (8-byte units), a lifetime usually a shared
# TTL.  hits and elapsed are mostly small ints, which CPython shares.
_ENTRY_OVERHEAD = 88 + 111 + 24
# Per resource record: its 6 bytes in the TTL map (offset and TTL).
_RECORD_OVERHEAD = 6


def entry_cost(key_length: int, body_length: int, ttl_offsets: tuple[int, ...]) -> int:
    """
    Return the bytes of memory an entry holds: its reply, its key, its TTL
    map and the fixed overhead of the structures around them; not the
    segment's slot (its policy's ``SLOT_BYTES``) or its lifetime and cost
    ints (see :mod:`dnsgo.cache.sizing`).
    """
    return body_length + key_length + _ENTRY_OVERHEAD + len(ttl_offsets) * _RECORD_OVERHEAD



class _Entry:
    """
    One cached reply and what the hit path needs to serve it.

    A plain ``__slots__`` class rather than attrs: the hit path mutates it
    (hit count, the rendered reply and the elapsed second it was rendered
    for, the prefetch flag), millions of them may be held so every byte
    counts (no ``__dict__``), and plain attribute access is the fastest
    there is.

    ``rendered`` is the reply with every TTL counted down by ``elapsed``
    seconds from the TTLs as stored (clamped); ``ttl_map`` says where they
    sit and what they were, 6 bytes a record (:func:`dnsgo.dns.wire.ttl_map`):
    one bytes object, not two tuples of int objects.  The entry is fresh
    while ``now - stored_at < lifetime``.
    """

    __slots__ = (
        "rendered",
        "ttl_map",
        "stored_at",
        "lifetime",
        "elapsed",
        "hits",
        "prefetched",
        "cost",
        "freq",
    )

    def __init__(self, rendered, ttl_map, stored_at, lifetime, hits, cost) -> None:
        self.rendered = rendered
        self.ttl_map = ttl_map
        self.stored_at = stored_at
        self.lifetime = lifetime
        self.elapsed = 0
        self.hits = hits
        self.prefetched = False
        self.cost = cost
        self.freq = 0  # the eviction policy's hit count (dnsgo.cache.eviction)


def _rendered(entry: _Entry, age: float) -> bytes:
    """
    ``entry``'s reply with its TTLs counted down by the whole seconds of
    ``age``, rendered at most once per elapsed second (and kept).
    """
    elapsed = int(age)
    if elapsed != entry.elapsed:
        if elapsed < 0:  # the clock went back
            elapsed = 0
        entry.rendered = wire.render_ttl_map(entry.rendered, entry.ttl_map, elapsed)
        entry.elapsed = elapsed
    return entry.rendered


@attrs.frozen
class PeekedReply:
    """
    A cached reply as inspection shows it: its type and class, the L1 key's
    flag bits (``dnsgo.dns.wire.KEY_RD`` ...), the seconds it has left (negative
    once expired and kept for serve-stale), and the reply with its TTLs
    counted down (its ID is the stored one's).
    """

    qtype: int
    qclass: int
    key_flags: int
    remaining: int
    reply: bytes


class MessageCache:
    """
    The per-worker L1 cache of whole replies (see the module docstring).

    ``lookup`` answers fresh hits; ``lookup_stale`` answers from an expired
    entry within ``max_stale`` seconds of its expiry (RFC 8767), for the
    caller to use when a refresh failed.  With ``prefetch_hits`` set, a hit
    on an entry that has had more than ``prefetch_hits`` hits and has less
    than ``prefetch_ttl_pct`` % of its lifetime left calls
    ``on_prefetch(query)`` once, so the caller can refresh it before it
    expires; a refreshing ``store`` keeps the hit count.

    With ``opt_udp_size``, an EDNS entry (``KEY_EDNS`` in its key) keeps
    this server's OPT record (that UDP size, the key's DO bit, no options)
    after its reply, and :meth:`lookup` returns it so: the hit path then
    has nothing to add (:attr:`opt_included`).  :meth:`lookup_stale` and
    :meth:`peek` return replies without it either way.
    """

    def __init__(
        self,
        *,
        max_size_mb: float = 64,
        num_shards: int = 16,
        min_ttl: int = 0,
        max_ttl: int = 86400,
        negative_ttl: int = 3600,
        max_stale: float = 0.0,
        prefetch_hits: int | None = None,
        prefetch_ttl_pct: int = 10,
        on_prefetch: Callable[[wire.QueryInfo], object] | None = None,
        eviction: str = "s3fifo",
        opt_udp_size: int | None = None,
        reactor,
    ) -> None:
        if num_shards < 1 or num_shards & (num_shards - 1):
            raise ValueError("num_shards must be a power of two, not %r" % (num_shards,))
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl, not %r, %r" % (min_ttl, max_ttl))
        self._seconds = reactor.seconds
        self._mask = num_shards - 1
        self._max_size = int(max_size_mb * 2**20)
        self._layout = shard_layout(eviction, self._max_size, num_shards)
        self._shards = self._layout.segments
        self._ttls = self._layout.ttls
        self._num_shards = num_shards
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_cap = min(negative_ttl, max_ttl)
        self._max_stale = max_stale
        self._prefetch_hits = prefetch_hits
        self._prefetch_pct = prefetch_ttl_pct
        self._on_prefetch = on_prefetch
        self.opt_udp_size = opt_udp_size
        self._append_opt = None if opt_udp_size is None else wire.opt_appender(opt_udp_size)
        self._hits = 0
        self._misses = 0
        #: Replies served from expired entries by :meth:`lookup_stale`.
        self.stale_served = 0
        #: Times :meth:`lookup` called ``on_prefetch``.
        self.prefetches = 0

    @property
    def opt_included(self) -> bool:
        """Whether :meth:`lookup`'s replies to EDNS queries end in this server's OPT record (``opt_udp_size``)."""
        return self._append_opt is not None

    def _keeps_opt(self, key: bytes) -> bool:
        """Whether the entry at ``key`` ends in this server's OPT record (``opt_udp_size``, an EDNS key)."""
        return self._append_opt is not None and bool(key[-1] & wire.KEY_EDNS)

    def _without_opt(self, rendered: bytes, key: bytes) -> bytes:
        """``rendered`` without the OPT record ``store`` appended to it, if it did."""
        return wire.drop_appended_opt(rendered) if self._keeps_opt(key) else rendered

    def lookup(self, q: wire.QueryInfo, head: bytes | None = None, touched: bool = False) -> bytes | None:
        """
        Return the reply to ``q`` from a fresh entry, or None on a miss.

        The reply has ``q``'s ID (or ``head``, the two ID bytes of the
        query as received) and question bytes (so its case), RD and CD as
        stored (they are in the key), TTLs counted down by the whole
        seconds since the entry was stored, and with ``opt_udp_size`` this
        server's OPT record when ``q`` has EDNS.  Never raises: a corrupt
        entry is dropped and counts as a miss.  ``touched`` says that
        :meth:`lookup_usual` has just read the entry for this same query
        (and declined), so the eviction policy has counted the access
        already and is not told again.
        """
        try:
            key = q.key
            shard = self._shards[hash(key) & self._mask]
            entry = shard.peek(key) if touched else shard.get(key)
            if entry is None:
                self._misses += 1
                return None
            now = self._seconds()
            age = now - entry.stored_at
            lifetime = entry.lifetime
            if age >= lifetime:
                self._misses += 1
                if age - lifetime >= self._max_stale:
                    shard.pop(key)
                return None
            rendered = _rendered(entry, age)
            if head is not None and rendered.startswith(q.question, 12):
                # The usual case: the question as stored (same case), so
                # only the ID differs; flags are the key's.
                reply = head + rendered[2:]
            else:
                reply = wire.patch_header(rendered, q)
                if head is not None:
                    reply = head + reply[2:]
            self._hits += 1
            hits = entry.hits = entry.hits + 1
            if self._prefetch_hits is not None and self._prefetch_due(entry, hits, age):
                entry.prefetched = True
                self._prefetch(q)
            return reply
        except Exception:
            self._misses += 1
            self._drop_broken(q)
            return None

    def lookup_usual(self, key: bytes, query: bytes) -> bytes | None:
        """
        Return the reply for the usual hit on a query already known to be
        valid (the handler's memo of parsed queries), or None.

        ``query`` is the query's bytes and ``key`` its L1 key.  The reply
        comes only when the entry is fresh, its stored question is the
        query's byte for byte (so only the ID changes) and no prefetch is
        due; otherwise this returns None and counts no hit or miss, and the
        caller parses the query and asks :meth:`lookup` with ``touched``
        (the eviction policy has counted this access already), which
        handles the rest.  This path needs no parsed query, so the memo can
        keep the L1 key instead of a whole one.  Never raises.
        """
        try:
            entry = self._shards[hash(key) & self._mask].get(key)
            if entry is None:
                return None
            age = self._seconds() - entry.stored_at
            lifetime = entry.lifetime
            if age >= lifetime:
                return None
            # _rendered and _prefetch_due, inlined: the two calls cost about
            # 1,000 instructions, 3 % of a hit (bench/hit_instructions.py).
            elapsed = int(age)
            if elapsed != entry.elapsed:
                if elapsed < 0:
                    elapsed = 0
                entry.rendered = wire.render_ttl_map(entry.rendered, entry.ttl_map, elapsed)
                entry.elapsed = elapsed
            rendered = entry.rendered
            # The question is the key's length less its flag byte, at 12.
            if not rendered.startswith(query[12 : 11 + len(key)], 12):
                return None
            hits = entry.hits + 1
            prefetch_hits = self._prefetch_hits
            if (
                prefetch_hits is not None
                and hits > prefetch_hits
                and not entry.prefetched
                and (lifetime - age) * 100 < self._prefetch_pct * lifetime
            ):
                return None
            entry.hits = hits
            self._hits += 1
            return query[:2] + rendered[2:]
        except Exception:
            return None

    def lookup_stale(self, q: wire.QueryInfo, answer_ttl: int = 30) -> bytes | None:
        """
        Return the reply to ``q`` from an entry that expired less than
        ``max_stale`` seconds ago, with every TTL set to ``answer_ttl``
        (RFC 8767), and count it in :attr:`stale_served`.

        If the entry is fresh again (another query refreshed it meanwhile),
        the fresh reply is returned, as :meth:`lookup` would, so a usable
        answer is never hidden; it counts as neither a hit nor stale.
        None when there is no such entry.  Never raises.
        """
        try:
            key = q.key
            entry = self._shards[hash(key) & self._mask].peek(key)
            if entry is None:
                return None
            age = self._seconds() - entry.stored_at
            over = age - entry.lifetime
            rendered = self._without_opt(entry.rendered, key)
            if over < 0:
                elapsed = max(0, int(age))
                return wire.patch_header(wire.render_ttl_map(rendered, entry.ttl_map, elapsed), q)
            if over >= self._max_stale:
                return None
            reply = wire.patch_header(wire.set_ttl_map(rendered, entry.ttl_map, answer_ttl), q)
            self.stale_served += 1
            return reply
        except Exception:
            self._drop_broken(q)
            return None

    def store(self, q: wire.QueryInfo, body: bytes, layout: wire.ResponseLayout | None = None) -> bool:
        """
        Cache ``body``, the reply to ``q`` without OPT, if it is cacheable
        (see the module docstring); return whether it was stored.
        ``layout`` is ``body``'s :func:`~dnsgo.dns.wire.scan_response`
        when the caller has it (:func:`~dnsgo.dns.wire.relay_reply` does).

        A stored reply replaces the entry of the same key (keeping its hit
        count, so a hot name stays hot across refreshes, with a new
        prefetch flag) and becomes the most recently used; then the shard
        evicts from its least recently used end until it fits its budget.
        """
        try:
            if layout is None or layout.opt_offset is not None:
                layout = wire.scan_response(body)
            if layout.opt_offset is not None:
                body = wire.strip_opt(body, layout)
                layout = wire.scan_response(body)
        except (ValueError, struct.error):
            return False
        question = q.question
        end = 12 + len(question)
        flags = layout.flags
        if (
            not flags & _FLAG_QR
            or flags & _FLAG_TC
            or layout.qdcount != 1
            or layout.question_end != end
            or (body[12:end] != question and body[12:end].lower() != question.lower())
        ):
            return False
        ttls = _cache_ttls(body, layout, self._min_ttl, self._max_ttl, self._negative_cap)
        if ttls is None:
            return False
        lifetime = self._ttls.share(min(ttls))
        if lifetime <= 0:
            return False
        key = q.key
        offsets = layout.ttl_offsets
        if ttls == layout.orig_ttls and type(body) is bytes:
            rendered = body  # nothing clamped: the reply is already what hits serve
        else:
            rendered = wire.render_ttls(body, offsets, ttls, 0)
        if self._keeps_opt(key):
            rendered = self._append_opt(rendered, bool(key[-1] & wire.KEY_DO))
        layout = self._layout
        nbytes = entry_cost(len(key), len(rendered), offsets) + layout.slot_bytes + self._ttls.owned_bytes(lifetime)
        if nbytes > layout.segment_budget:
            return False
        cost = cost_units(nbytes)
        shard = self._shards[hash(key) & self._mask]
        old = shard.peek(key)
        hits = old.hits if old is not None else 0
        shard.put(key, _Entry(rendered, wire.ttl_map(offsets, ttls), self._seconds(), lifetime, hits, cost))
        return True

    def flush(self, name: bytes | None = None, qtype: int | None = None, subtree: bool = False) -> int:
        """
        Drop entries and return how many went: all of them (``name`` None),
        all of a name (any type, class and flags), a name's entries of
        ``qtype``, or with ``subtree`` the name's and those of every name
        below it (of ``qtype`` only, when given).

        ``name`` is a wire-format name; it is compared case-insensitively.
        """
        return self.flush_many([(name, qtype, subtree)])

    def flush_many(self, flushes) -> int:
        """
        Apply several ``(name, qtype, subtree)`` flushes (as :meth:`flush`
        takes them) in one pass over the entries, and return how many went:
        a batch of flushes costs one scan, not one scan each.
        """
        removed = 0
        if not flushes:
            return 0
        exact: dict[bytes, list] = {}
        below: list[tuple[bytes, bytes | None]] = []
        everything_of_type: set = set()
        for name, qtype, subtree in flushes:
            type_bytes = None if qtype is None else _U16.pack(qtype)
            if name is None:
                if type_bytes is None:
                    for shard in self._shards:
                        removed += len(shard)
                        shard.clear()
                    return removed
                everything_of_type.add(type_bytes)
                continue
            name = name.lower()
            exact.setdefault(name, []).append(type_bytes)
            if subtree:
                below.append((name, type_bytes))

        def doomed(key: bytes) -> bool:
            owner, type_bytes = key[:-5], key[-5:-3]
            if type_bytes in everything_of_type:
                return True
            types = exact.get(owner)
            if types is not None and (None in types or type_bytes in types):
                return True
            return any(
                (t is None or t == type_bytes) and _is_below(owner, parent) for parent, t in below
            )

        for shard in self._shards:
            gone = [key for key in shard.keys() if doomed(key)]
            for key in gone:
                shard.pop(key)
            removed += len(gone)
        return removed

    def peek(self, name: bytes, qtype: int | None = None) -> list[PeekedReply]:
        """
        The entries of the wire-format ``name`` (of ``qtype``, or of every
        type), fresh or kept for serve-stale, for inspection: LRU order,
        counters and the entries are left as they are.  With ``qtype`` this
        looks up the 16 keys of its flag bits in class IN; without, it
        reads every shard.
        """
        name = name.lower()
        now = self._seconds()
        if qtype is not None:
            stem = name + _U16.pack(qtype) + _U16.pack(1)
            keys = [stem + bytes((flags,)) for flags in range(16)]
            found = [(key, self._shards[hash(key) & self._mask].peek(key)) for key in keys]
        else:
            found = [(key, entry) for shard in self._shards for key, entry in shard.items() if key[:-5] == name]
        peeked = []
        for key, entry in found:
            if entry is None:
                continue
            age = now - entry.stored_at
            rendered = wire.render_ttl_map(self._without_opt(entry.rendered, key), entry.ttl_map,
                                           max(0, min(int(age), entry.lifetime)))
            qt, qc = struct.unpack_from("!HH", key, len(key) - 5)
            peeked.append(PeekedReply(qt, qc, key[-1], int(entry.lifetime - age), rendered))
        return peeked

    def stats(self) -> CacheStats:
        """Return the counters, the memory estimate and the entry count now."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evicts=sum(shard.evicts for shard in self._shards),
            hit_rate=hit_rate(self._hits, self._misses),
            size_bytes=self._layout.size_bytes(),
            max_size_bytes=self._max_size,
            num_shards=self._num_shards,
            entries=sum(len(shard) for shard in self._shards),
        )

    def __len__(self) -> int:
        """The number of entries, fresh or not."""
        return sum(len(shard) for shard in self._shards)

    def _prefetch_due(self, entry: _Entry, hits: int, age: float) -> bool:
        """
        Whether a hit that makes ``hits`` on ``entry``, ``age`` seconds
        after its store, should refresh it: past ``prefetch_hits`` hits,
        within the last ``prefetch_ttl_pct`` percent of its lifetime, and
        not refreshed yet.
        """
        lifetime = entry.lifetime
        return (
            hits > self._prefetch_hits
            and not entry.prefetched
            and (lifetime - age) * 100 < self._prefetch_pct * lifetime
        )

    def _prefetch(self, q: wire.QueryInfo) -> None:
        """Ask the owner to refresh ``q``'s entry; its errors stay its own."""
        callback = self._on_prefetch
        if callback is None:
            return
        self.prefetches += 1
        try:
            callback(q)
        except Exception:
            pass

    def _drop_broken(self, q) -> None:
        """Remove the entry of ``q`` after it made the hit path fail."""
        try:
            key = q.key
            self._shards[hash(key) & self._mask].pop(key)
        except Exception:
            pass


def _cache_ttls(body: bytes, layout: wire.ResponseLayout, min_ttl: int, max_ttl: int, negative_cap: int):
    """
    Return the TTLs to store for a reply, one per record in message order,
    or None when the reply is not cacheable (see the module docstring).
    """
    ttls = layout.orig_ttls
    if not ttls:
        return None
    rcode = layout.rcode
    if rcode == wire.NOERROR and layout.ancount:
        if min_ttl <= layout.min_ttl and max(ttls) <= max_ttl:
            return ttls  # within the bounds already (the usual case)
        return tuple(min_ttl if t < min_ttl else max_ttl if t > max_ttl else t for t in ttls)
    if rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return None
    first = layout.ancount
    authority = layout.ttl_offsets[first : first + layout.nscount]
    # A record's type sits 4 bytes before its TTL (type, class, TTL).
    if not any(_U16.unpack_from(body, offset - 4)[0] == _TYPE_SOA for offset in authority):
        return None
    return tuple(negative_cap if t > negative_cap else t for t in ttls)


def _is_below(owner: bytes, parent: bytes) -> bool:
    """
    Return whether wire-format ``owner`` is ``parent`` or a name below it,
    comparing at label boundaries (both lowercase, uncompressed).
    """
    tail = len(parent)
    pos = 0
    n = len(owner)
    while n - pos >= tail:
        if owner[pos:] == parent:
            return True
        length = owner[pos]
        if not length:
            return False
        pos += length + 1
    return False
