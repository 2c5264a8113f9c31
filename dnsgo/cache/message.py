"""
The L1 message cache: whole replies in wire format, served from bytes.

A worker keeps the replies it built on the miss path (the output of
:func:`dnsgo.serve.reply.encode_reply`, without the OPT record) under the
query's L1 key (:attr:`dnsgo.dns.wire.QueryInfo.key`: lowercased name, type,
class and the RD/CD/DO/EDNS flag byte).  A hit never decodes anything: the
stored bytes get their TTLs counted down (:func:`dnsgo.dns.wire.render_ttls`) and
the query's ID and question copied in (:func:`dnsgo.dns.wire.patch_header`).
TTLs are rendered at most once per elapsed second per entry; the rendered
bytes replace the stored ones (``render_ttls`` rewrites every TTL from the
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

The cache is split into ``num_shards`` LRU segments (``OrderedDict``), each
bounded by ``max_size_mb * 2**20 / num_shards`` bytes of estimated memory
(see :func:`entry_cost`).  Time comes from ``reactor.seconds()``.
"""
from __future__ import annotations

import bisect
import struct
from collections import OrderedDict
from typing import Callable

from dnsgo.cache.stats import CacheStats, hit_rate
from dnsgo.dns import wire

_U16 = struct.Struct("!H")
_FLAG_TC = 0x0200
_FLAG_QR = 0x8000
_TYPE_SOA = 6

# Memory an entry holds besides the contents of its reply and key bytes,
# measured on CPython 3.11 (64-bit) with sys.getsizeof and tracemalloc
# (tests/test_message_cache.py checks the total against tracemalloc):
#   the _Entry object with 9 slots ......................................... 104
#   an OrderedDict slot (hash table entry and index, fast-node array and
#   linked-list node; 75 to 105 depending on how full the table is) ........ 95
#   headers of the offsets and TTLs tuples (2 x 40) ......................... 80
#   headers of the reply and key bytes objects (2 x 33, and pymalloc's
#   rounding to 8 bytes, about 4 each) ...................................... 74
#   the stored_at float ..................................................... 24
#   the cost int ............................................................ 32
# The lifetime int is one of the TTL ints; hits and elapsed are mostly small
# ints, which CPython shares.
_ENTRY_OVERHEAD = 104 + 95 + 80 + 74 + 24 + 32
# Per resource record: a slot in each tuple (2 x 8) and the TTL int object
# (28 bytes, 32 allocated; TTLs are usually above 256) ...
_RECORD_OVERHEAD = 2 * 8 + 32
# ... and an int object for its TTL offset when that is above 256 (smaller
# ones are CPython's shared small ints).
_OFFSET_INT = 32
_SMALL_INT_MAX = 256


def entry_cost(key_length: int, body_length: int, ttl_offsets: tuple[int, ...]) -> int:
    """
    Return the bytes of memory an entry holds: its reply, its key and the
    fixed and per-record overhead of the structures around them (the
    offsets are ascending, as :func:`dnsgo.dns.wire.scan_response` gives them).
    """
    records = len(ttl_offsets)
    large_offsets = records - bisect.bisect_right(ttl_offsets, _SMALL_INT_MAX)
    return (
        body_length
        + key_length
        + _ENTRY_OVERHEAD
        + records * _RECORD_OVERHEAD
        + large_offsets * _OFFSET_INT
    )



class _Entry:
    """
    One cached reply and what the hit path needs to serve it.

    A plain ``__slots__`` class rather than attrs: the hit path mutates it
    (hit count, the rendered reply and the elapsed second it was rendered
    for, the prefetch flag), millions of them may be held so every byte
    counts (no ``__dict__``), and plain attribute access is the fastest
    there is.

    ``rendered`` is the reply with every TTL counted down by ``elapsed``
    seconds from ``ttls`` (the clamped TTLs as stored); ``offsets`` says
    where those TTLs sit.  The entry is fresh while
    ``now - stored_at < lifetime``.
    """

    __slots__ = (
        "rendered",
        "offsets",
        "ttls",
        "stored_at",
        "lifetime",
        "elapsed",
        "hits",
        "prefetched",
        "cost",
    )

    def __init__(self, rendered, offsets, ttls, stored_at, lifetime, hits, cost) -> None:
        self.rendered = rendered
        self.offsets = offsets
        self.ttls = ttls
        self.stored_at = stored_at
        self.lifetime = lifetime
        self.elapsed = 0
        self.hits = hits
        self.prefetched = False
        self.cost = cost


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
        reactor,
    ) -> None:
        if num_shards < 1 or num_shards & (num_shards - 1):
            raise ValueError("num_shards must be a power of two, not %r" % (num_shards,))
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl, not %r, %r" % (min_ttl, max_ttl))
        self._seconds = reactor.seconds
        self._mask = num_shards - 1
        self._shards = [OrderedDict() for _ in range(num_shards)]
        self._sizes = [0] * num_shards
        self._shard_budget = int(max_size_mb * 2**20) // num_shards
        self._num_shards = num_shards
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_cap = min(negative_ttl, max_ttl)
        self._max_stale = max_stale
        self._prefetch_hits = prefetch_hits
        self._prefetch_pct = prefetch_ttl_pct
        self._on_prefetch = on_prefetch
        self._hits = 0
        self._misses = 0
        self._evicts = 0
        #: Replies served from expired entries by :meth:`lookup_stale`.
        self.stale_served = 0
        #: Times :meth:`lookup` called ``on_prefetch``.
        self.prefetches = 0

    def lookup(self, q: wire.QueryInfo, head: bytes | None = None) -> bytes | None:
        """
        Return the reply to ``q`` from a fresh entry, or None on a miss.

        The reply has ``q``'s ID (or ``head``, the two ID bytes of the
        query as received) and question bytes (so its case), RD and CD as
        stored (they are in the key), and TTLs counted down by the whole
        seconds since the entry was stored.  Never raises: a corrupt entry
        is dropped and counts as a miss.
        """
        try:
            key = q.key
            index = hash(key) & self._mask
            shard = self._shards[index]
            entry = shard.get(key)
            if entry is None:
                self._misses += 1
                return None
            now = self._seconds()
            age = now - entry.stored_at
            lifetime = entry.lifetime
            if age >= lifetime:
                self._misses += 1
                if age - lifetime >= self._max_stale:
                    del shard[key]
                    self._sizes[index] -= entry.cost
                return None
            elapsed = int(age)
            if elapsed != entry.elapsed:
                if elapsed < 0:  # the clock went back
                    elapsed = 0
                entry.rendered = wire.render_ttls(entry.rendered, entry.offsets, entry.ttls, elapsed)
                entry.elapsed = elapsed
            rendered = entry.rendered
            if head is not None and rendered.startswith(q.question, 12):
                # The usual case: the question as stored (same case), so
                # only the ID differs; flags are the key's.
                reply = head + rendered[2:]
            else:
                reply = wire.patch_header(rendered, q)
                if head is not None:
                    reply = head + reply[2:]
            shard.move_to_end(key)
            self._hits += 1
            hits = entry.hits = entry.hits + 1
            prefetch_hits = self._prefetch_hits
            if (
                prefetch_hits is not None
                and hits > prefetch_hits
                and not entry.prefetched
                and (lifetime - age) * 100 < self._prefetch_pct * lifetime
            ):
                entry.prefetched = True
                self._prefetch(q)
            return reply
        except Exception:
            self._misses += 1
            self._drop_broken(q)
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
            entry = self._shards[hash(key) & self._mask].get(key)
            if entry is None:
                return None
            age = self._seconds() - entry.stored_at
            over = age - entry.lifetime
            if over < 0:
                elapsed = max(0, int(age))
                return wire.patch_header(
                    wire.render_ttls(entry.rendered, entry.offsets, entry.ttls, elapsed), q
                )
            if over >= self._max_stale:
                return None
            offsets = entry.offsets
            reply = wire.patch_header(
                wire.render_ttls(entry.rendered, offsets, (answer_ttl,) * len(offsets), 0), q
            )
            self.stale_served += 1
            return reply
        except Exception:
            self._drop_broken(q)
            return None

    def store(self, q: wire.QueryInfo, body: bytes) -> bool:
        """
        Cache ``body``, the reply to ``q`` without OPT, if it is cacheable
        (see the module docstring); return whether it was stored.

        A stored reply replaces the entry of the same key (keeping its hit
        count, so a hot name stays hot across refreshes, with a new
        prefetch flag) and becomes the most recently used; then the shard
        evicts from its least recently used end until it fits its budget.
        """
        try:
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
            or body[12:end].lower() != question.lower()
        ):
            return False
        ttls = _cache_ttls(body, layout, self._min_ttl, self._max_ttl, self._negative_cap)
        if ttls is None:
            return False
        lifetime = min(ttls)
        if lifetime <= 0:
            return False
        key = q.key
        offsets = layout.ttl_offsets
        cost = entry_cost(len(key), len(body), offsets)
        if cost > self._shard_budget:
            return False
        index = hash(key) & self._mask
        shard = self._shards[index]
        old = shard.pop(key, None)
        hits = 0
        if old is not None:
            self._sizes[index] -= old.cost
            hits = old.hits
        if ttls == layout.orig_ttls and type(body) is bytes:
            rendered = body  # nothing clamped: the reply is already what hits serve
        else:
            rendered = wire.render_ttls(body, offsets, ttls, 0)
        shard[key] = _Entry(rendered, offsets, ttls, self._seconds(), lifetime, hits, cost)
        size = self._sizes[index] + cost
        budget = self._shard_budget
        while size > budget:
            _, evicted = shard.popitem(last=False)
            size -= evicted.cost
            self._evicts += 1
        self._sizes[index] = size
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
                    for index, shard in enumerate(self._shards):
                        removed += len(shard)
                        shard.clear()
                        self._sizes[index] = 0
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

        for index, shard in enumerate(self._shards):
            gone = [key for key in shard if doomed(key)]
            for key in gone:
                self._sizes[index] -= shard.pop(key).cost
            removed += len(gone)
        return removed

    def stats(self) -> CacheStats:
        """Return the counters, the memory estimate and the entry count now."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evicts=self._evicts,
            hit_rate=hit_rate(self._hits, self._misses),
            size_bytes=sum(self._sizes),
            max_size_bytes=self._shard_budget * self._num_shards,
            num_shards=self._num_shards,
            entries=sum(len(shard) for shard in self._shards),
        )

    def __len__(self) -> int:
        """The number of entries, fresh or not."""
        return sum(len(shard) for shard in self._shards)

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
            index = hash(key) & self._mask
            entry = self._shards[index].pop(key, None)
            if entry is not None:
                self._sizes[index] -= entry.cost
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
