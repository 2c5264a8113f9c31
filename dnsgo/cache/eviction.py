"""
The segments the caches are split into: a map of keys to entries bounded
by bytes, and the policy that decides what goes when it is full.

Both caches (L1 :mod:`dnsgo.cache.message`, L2 :mod:`dnsgo.cache.rrset`)
hold ``num_shards`` segments of one policy, chosen by ``eviction``:

* :class:`S3FifoSegment` (``s3fifo``, the default): S3-FIFO (Yang et al.,
  "FIFO queues are all you need for cache eviction", SOSP 2023).  New
  entries go to a small FIFO queue (a tenth of the bytes); an entry hit
  while there moves to the main FIFO queue when it reaches the head, one
  never hit is evicted and its key remembered in a ghost queue; a key found
  in the ghost queue goes straight to main.  The ghost queue is a filter
  of key hashes (:class:`GhostFilter`, about a byte a key) rather than a
  queue of keys, which in Python would cost a hundred bytes a key.  The main queue gives each
  entry at its head another round per hit it had (up to 3).  One-hit
  wonders, most of a DNS trace's tail, leave from the small queue without
  pushing popular entries out, and a hit only bumps a counter instead of
  moving the entry.
* :class:`LruSegment` (``lru``): least recently used, as before.

``bench/eviction_sim.py`` measures both on a Zipf trace and on one with a
scan (docs/architecture.md has the figures that chose the default).

Every segment keeps its size: the sum of its entries' ``cost``, in units
of ``unit`` bytes (the caches count in :data:`dnsgo.cache.sizing.COST_UNIT`
so that costs are small shared ints); its budget is given in bytes.
Entries are objects with a ``cost`` attribute and a mutable ``freq`` one,
where S3-FIFO counts hits (LRU leaves it alone), so the policy keeps
nothing per entry besides its map slot, whose bytes each segment class
states (``SLOT_BYTES``) for the caches to charge.  S3-FIFO's queues are
:class:`FifoQueue` (a dict and a deque of keys), and it sets its ghost
filter's bitmaps (about 0.8 % of the budget) aside from the budget first,
so the bound covers everything the policy holds.  :meth:`put` evicts until the segment fits its budget.
"""
from __future__ import annotations

from collections import OrderedDict, deque

#: The entry size the ghost filter is sized for: it remembers about
#: ``budget / TYPICAL_ENTRY`` keys, two bytes each (an L1 or L2 entry of
#: one record takes 400 to 500 bytes, so this errs towards too many).
TYPICAL_ENTRY = 256

#: The share of a segment's bytes that the small queue of S3-FIFO may use.
SMALL_SHARE = 0.1

#: How many extra rounds in the main queue hits can earn an entry.
MAX_FREQ = 3


class LruSegment:
    """A byte-bounded map that evicts the least recently used entry."""

    #: Bytes the segment holds per entry besides the entry and its key: an
    #: OrderedDict slot (hash table entry and index, fast-node array and
    #: linked-list node; 75 to 105 depending on how full it is).
    SLOT_BYTES = 95

    __slots__ = ("_entries", "size", "budget", "unit", "evicts")

    def __init__(self, budget: int, unit: int = 1) -> None:
        self._entries: OrderedDict = OrderedDict()
        self.size = 0  # the entries' costs, in units
        self.unit = unit
        self.budget = budget // unit
        self.evicts = 0

    def get(self, key):
        """The entry at ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def peek(self, key):
        """The entry at ``key``, or None; the order is left as it is."""
        return self._entries.get(key)

    def holds_any(self, keys) -> bool:
        """Whether an entry is held at any of ``keys``; the order is left as it is."""
        entries = self._entries
        for key in keys:
            if key in entries:
                return True
        return False

    def put(self, key, entry) -> None:
        """Store ``entry`` at ``key`` (the most recently used), then evict until the segment fits."""
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.size -= old.cost
        entries[key] = entry
        self.size += entry.cost
        while self.size > self.budget and entries:
            _, evicted = entries.popitem(last=False)
            self.size -= evicted.cost
            self.evicts += 1

    def replace(self, key, entry) -> None:
        """Put ``entry`` in place of the entry at ``key`` (a new cost, the same place); no eviction."""
        old = self._entries[key]
        self._entries[key] = entry
        self.size += entry.cost - old.cost

    def pop(self, key):
        """Remove and return the entry at ``key``, or None."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry.cost
        return entry

    def clear(self) -> None:
        """Remove every entry."""
        self._entries.clear()
        self.size = 0

    def items(self):
        """(key, entry) pairs, in eviction order (a list: safe while the segment changes)."""
        return list(self._entries.items())

    def keys(self):
        """The keys (a list)."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class GhostFilter:
    """
    The ghost queue of S3-FIFO as a filter of key hashes, two bytes a key:
    two Bloom bitmaps (two bits a key, 16 bits per key of half the
    capacity), the newest and the one before; a key is remembered while
    both its bits are set in either.  When the newest has taken
    ``capacity/2`` keys it becomes the older one and a clear bitmap the
    newest, so a key is forgotten after between ``capacity/2`` and
    ``capacity`` newer ones, as in a FIFO queue of that length.  A false
    positive (about 3 % when both are full) only lets a new entry skip the
    small queue.
    """

    __slots__ = ("_bits", "_new", "_old", "_count", "_half")

    def __init__(self, capacity: int) -> None:
        self._half = max(1, capacity // 2)
        self._bits = max(64, 16 * self._half)
        self._new = bytearray(self._bits // 8)
        self._old = bytearray(self._bits // 8)
        self._count = 0

    @property
    def cost(self) -> int:
        """The bytes the two bitmaps hold (with their object headers)."""
        return 2 * (len(self._new) + 57)

    def add(self, key) -> None:
        """Remember ``key``."""
        h = hash(key)
        bits, new = self._bits, self._new
        one, two = h % bits, (h >> 32) % bits
        new[one >> 3] |= 1 << (one & 7)
        new[two >> 3] |= 1 << (two & 7)
        self._count += 1
        if self._count >= self._half:
            self._old, self._new = self._new, bytearray(len(self._new))
            self._count = 0

    def __contains__(self, key) -> bool:
        h = hash(key)
        bits = self._bits
        one, two = h % bits, (h >> 32) % bits
        m1, m2 = 1 << (one & 7), 1 << (two & 7)
        new, old = self._new, self._old
        return bool((new[one >> 3] & m1 and new[two >> 3] & m2) or (old[one >> 3] & m1 and old[two >> 3] & m2))

    def clear(self) -> None:
        """Forget every key."""
        self._new = bytearray(len(self._new))
        self._old = bytearray(len(self._old))
        self._count = 0


class FifoQueue:
    """
    A FIFO queue of keyed entries for S3-FIFO: a plain dict and a deque of
    its keys, oldest first.  An OrderedDict costs about 50 bytes more per
    entry than a dict; the deque costs 8.

    A removed key stays in the deque and is counted as stale; every stale
    occurrence of a key comes before its live one (a key enters only by
    :meth:`append`, at the end), so :meth:`pop_oldest` skips exactly the
    stale ones.  When stale keys pass an eighth of the queue, the deque is
    rebuilt without them, so they never hold much memory.
    """

    __slots__ = ("entries", "_order", "_stale", "_stale_count")

    def __init__(self) -> None:
        #: key -> entry; lookups and in-place updates use it directly.
        self.entries: dict = {}
        self._order: deque = deque()
        self._stale: dict = {}  # key -> how many of its occurrences in _order are stale
        self._stale_count = 0

    def append(self, key, entry) -> None:
        """Add ``entry`` at ``key`` (not in the queue) as the newest."""
        self.entries[key] = entry
        self._order.append(key)

    def remove(self, key):
        """Remove and return the entry at ``key``, or None."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._stale[key] = self._stale.get(key, 0) + 1
            self._stale_count += 1
            if self._stale_count > 32 + len(self.entries) // 8:
                self._order = deque(self.keys())
                self._stale.clear()
                self._stale_count = 0
        return entry

    def pop_oldest(self):
        """Remove and return the oldest ``(key, entry)``; the queue must not be empty."""
        order, stale = self._order, self._stale
        while True:
            key = order.popleft()
            left = stale.get(key)
            if not left:
                return key, self.entries.pop(key)
            if left == 1:
                del stale[key]
            else:
                stale[key] = left - 1
            self._stale_count -= 1

    def keys(self) -> list:
        """The keys, oldest first."""
        stale = dict(self._stale)
        keys = []
        for key in self._order:
            left = stale.get(key)
            if left:
                stale[key] = left - 1
            else:
                keys.append(key)
        return keys

    def clear(self) -> None:
        """Remove everything."""
        self.entries.clear()
        self._order.clear()
        self._stale.clear()
        self._stale_count = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key) -> bool:
        return key in self.entries


class S3FifoSegment:
    """A byte-bounded map evicting by S3-FIFO (see the module docstring); its queues are :class:`FifoQueue`."""

    #: Bytes the segment holds per entry besides the entry and its key: a
    #: dict slot (hash table entry and index, 30 to 60 depending on how full
    #: it is) and a deque slot (8), with room for the stale keys a
    #: :class:`FifoQueue` may keep.
    SLOT_BYTES = 65

    __slots__ = ("_small", "_main", "_small_entries", "_main_entries", "_ghost", "_small_size", "size", "budget",
                 "unit", "evicts")

    def __init__(self, budget: int, unit: int = 1) -> None:
        self._small = FifoQueue()
        self._main = FifoQueue()
        self._small_entries = self._small.entries
        self._main_entries = self._main.entries
        self._ghost = GhostFilter(max(1, budget // TYPICAL_ENTRY))
        self._small_size = 0
        self.size = 0  # the entries' costs, in units
        self.unit = unit
        self.budget = max(0, budget - self._ghost.cost) // unit  # the ghost filter's bytes are set aside
        self.evicts = 0

    def get(self, key):
        """The entry at ``key``, or None; a hit is counted in the entry's ``freq`` (up to MAX_FREQ)."""
        entry = self._small_entries.get(key)
        if entry is None:
            entry = self._main_entries.get(key)
            if entry is None:
                return None
        if entry.freq < MAX_FREQ:
            entry.freq += 1
        return entry

    def peek(self, key):
        """The entry at ``key``, or None; nothing is counted."""
        entry = self._small_entries.get(key)
        return entry if entry is not None else self._main_entries.get(key)

    def holds_any(self, keys) -> bool:
        """Whether an entry is held at any of ``keys``; nothing is counted."""
        small, main = self._small_entries, self._main_entries
        for key in keys:
            if key in small or key in main:
                return True
        return False

    def put(self, key, entry) -> None:
        """
        Store ``entry`` at ``key``: in place (keeping its hit count) when the
        key is held, in the main queue when the ghost filter remembers it,
        else in the small queue; then evict until the segment fits.
        """
        cost = entry.cost
        small, main = self._small_entries, self._main_entries
        old = small.get(key)
        if old is not None:
            delta = cost - old.cost
            self._small_size += delta
            self.size += delta
            entry.freq = old.freq
            small[key] = entry
        elif key in main:
            old = main[key]
            self.size += cost - old.cost
            entry.freq = old.freq
            main[key] = entry
        elif key in self._ghost:
            self.size += cost
            self._main.append(key, entry)
        else:
            self._small.append(key, entry)
            self._small_size += cost
            self.size += cost
        if self.size > self.budget:
            self._evict()

    def replace(self, key, entry) -> None:
        """Put ``entry`` in place of the entry at ``key`` (a new cost, the same place and hit count); no eviction."""
        queue = self._small_entries if key in self._small_entries else self._main_entries
        old = queue[key]
        delta = entry.cost - old.cost
        entry.freq = old.freq
        queue[key] = entry
        if queue is self._small_entries:
            self._small_size += delta
        self.size += delta

    def pop(self, key):
        """Remove and return the entry at ``key``, or None (its key is not remembered as a ghost)."""
        entry = self._small.remove(key)
        if entry is not None:
            self._small_size -= entry.cost
        else:
            entry = self._main.remove(key)
            if entry is None:
                return None
        self.size -= entry.cost
        return entry

    def clear(self) -> None:
        """Remove every entry and forget the ghosts."""
        self._small.clear()
        self._main.clear()
        self._ghost.clear()
        self._small_size = 0
        self.size = 0

    def items(self):
        """(key, entry) pairs: the small queue, then the main one, each oldest first (a list)."""
        small, main = self._small_entries, self._main_entries
        return [*((k, small[k]) for k in self._small.keys()), *((k, main[k]) for k in self._main.keys())]

    def keys(self):
        """The keys (a list)."""
        return [*self._small.keys(), *self._main.keys()]

    def __len__(self) -> int:
        return len(self._small_entries) + len(self._main_entries)

    def _evict(self) -> None:
        small, main = self._small, self._main
        small_budget = self.budget * SMALL_SHARE
        while self.size > self.budget:
            if small.entries and (self._small_size > small_budget or not main.entries):
                key, entry = small.pop_oldest()
                self._small_size -= entry.cost
                if entry.freq:  # hit while in the small queue: promoted, its count spent
                    entry.freq = 0
                    main.append(key, entry)
                    continue
                self.size -= entry.cost
                self.evicts += 1
                self._ghost.add(key)
            elif main.entries:
                key, entry = main.pop_oldest()
                if entry.freq:
                    entry.freq -= 1
                    main.append(key, entry)
                    continue
                self.size -= entry.cost
                self.evicts += 1
            else:
                return


#: The policies by name, as ``cache.message_cache.eviction`` and ``cache.rrset_cache.eviction`` take them.
SEGMENTS = {"s3fifo": S3FifoSegment, "lru": LruSegment}
EVICTION_POLICIES = tuple(SEGMENTS)


def segment_class(policy: str):
    """The segment class of ``policy`` (``s3fifo`` or ``lru``); ValueError for another."""
    try:
        return SEGMENTS[policy]
    except KeyError:
        raise ValueError(f"unknown eviction policy {policy!r}: expected one of {', '.join(SEGMENTS)}") from None
