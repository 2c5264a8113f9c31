"""
What a cache entry's numbers cost, and how the caches keep that low.

An int above 256 is an object of its own in CPython: 28 bytes, 32 once
pymalloc rounds it.  An L1 entry is about 400 bytes, so two such ints (its
lifetime and its cost) were 15 % of it.  Two measures remove most of them:

* **Costs in units of 8 bytes** (:data:`COST_UNIT`, pymalloc's alignment,
  so nothing real is rounded away).  The segments of
  :mod:`dnsgo.cache.eviction` count sizes in these units, and an entry
  below 2 KiB has a cost of at most 256 units: one of the small ints
  CPython shares.  :func:`cost_units` charges a larger entry for its own
  int as well.
* **Shared TTL ints** (:class:`SharedInts`).  The entries of one zone
  mostly carry the same few TTLs (300, 3600, 86400), so a cache keeps the
  first ``capacity`` distinct values it is asked for, for good, and hands
  every entry with one of those values the same object.  An entry is
  charged for its TTL int only when it holds one of its own
  (:meth:`SharedInts.owned_bytes`); the kept ones cost a fixed
  :attr:`SharedInts.cost`, which the cache sets aside from its budget, as
  S3-FIFO does with its ghost filter.  So the byte bound stays exact, and
  with an upstream whose TTLs count down (a recursive resolver), values
  past the first ``capacity`` are simply charged in full, as before.

:func:`shard_layout` splits a cache's budget among its segments once the
shared ints' fixed cost is set aside, for both caches.  Nothing here is a
singleton: each cache owns its :class:`SharedInts`.
"""
from __future__ import annotations

import sys

import attrs

from dnsgo.cache.eviction import segment_class

#: The unit the segments count sizes in (bytes).
COST_UNIT = 8

#: The bytes of an int object above CPython's shared small ints (28, as pymalloc rounds it).
INT_BYTES = 32

#: The largest int CPython shares (every int from -5 to this is one object).
_SMALL_INT_MAX = 256


def cost_units(nbytes: int) -> int:
    """
    ``nbytes`` in :data:`COST_UNIT` units, rounded up; past 256 units the
    cost is an int object of its own, and its bytes are added.
    """
    units = -(-nbytes // COST_UNIT)
    if units > _SMALL_INT_MAX:
        units = -(-(nbytes + INT_BYTES) // COST_UNIT)
    return units


def shared_ints_capacity(budget_bytes: int) -> int:
    """How many TTL values a cache of ``budget_bytes`` keeps shared: one per 4 KiB, from 16 to 1024."""
    return max(16, min(1024, budget_bytes // 4096))


class SharedInts:
    """
    The first ``capacity`` distinct ints above 256 that :meth:`share` is
    given, kept for good and handed out for every equal value, so that many
    cache entries hold one object (see the module docstring).
    """

    __slots__ = ("_kept", "capacity", "cost")

    def __init__(self, capacity: int) -> None:
        self._kept: dict[int, int] = {}
        self.capacity = capacity
        #: The bytes the kept ints and their table take once full (set aside from the cache's budget).
        self.cost = capacity * INT_BYTES + sys.getsizeof(dict.fromkeys(range(1 << 20, (1 << 20) + capacity)))

    def share(self, value: int) -> int:
        """The kept object equal to ``value`` (keeping ``value`` if there is room), or ``value`` itself."""
        kept = self._kept.get(value)
        if kept is not None:
            return kept
        if value > _SMALL_INT_MAX and len(self._kept) < self.capacity:
            self._kept[value] = value
        return value

    def owned_bytes(self, value: int) -> int:
        """The bytes an entry holding ``value`` pays for it: 0 for a small or kept int, else :data:`INT_BYTES`."""
        if -5 <= value <= _SMALL_INT_MAX or self._kept.get(value) is value:
            return 0
        return INT_BYTES

    def __len__(self) -> int:
        return len(self._kept)


@attrs.frozen
class ShardLayout:
    """
    How a cache's budget is split: its segments, the TTL ints they share
    (whose fixed cost was set aside first), each segment's budget in bytes,
    and the bytes the policy's slot costs an entry (``SLOT_BYTES``).
    """

    segments: list
    ttls: SharedInts
    segment_budget: int
    slot_bytes: int

    def size_bytes(self) -> int:
        """The entries' accounted bytes, over all segments."""
        return sum(segment.size for segment in self.segments) * COST_UNIT


def shard_layout(policy: str, budget: int, num_shards: int) -> ShardLayout:
    """``num_shards`` segments of eviction ``policy`` sharing ``budget`` bytes, less the shared TTL ints' fixed cost."""
    ttls = SharedInts(shared_ints_capacity(budget))
    segment = segment_class(policy)
    each = max(0, budget - ttls.cost) // num_shards
    return ShardLayout([segment(each, COST_UNIT) for _ in range(num_shards)], ttls, each, segment.SLOT_BYTES)
