"""The caches' segments (dnsgo.cache.eviction): S3-FIFO and LRU, bounded in bytes."""
import sys
from collections import OrderedDict

import attrs
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.cache import eviction
from dnsgo.cache.eviction import GhostFilter, LruSegment, S3FifoSegment, segment_class


@attrs.define
class Item:
    """An entry with a cost and a hit count."""

    name: str
    cost: int = 100
    freq: int = attrs.field(default=0, eq=False)


class S3FifoTests(SynchronousTestCase):
    """The policy's moves, one by one."""

    def test_one_hit_wonders_leave_before_hit_entries(self):
        """A run of new keys evicts the ones never hit, not an older one that was hit in the small queue."""
        seg = S3FifoSegment(budget=10 * 100 + 130)
        seg.put("hot", Item("hot"))
        self.assertEqual(seg.get("hot"), Item("hot"))
        for n in range(30):
            seg.put(f"cold{n}", Item(f"cold{n}"))
            self.assertLessEqual(seg.size, seg.budget)
        self.assertEqual(seg.peek("hot"), Item("hot"))
        self.assertIsNone(seg.peek("cold0"))
        self.assertGreater(seg.evicts, 15)

    def test_lru_loses_the_hot_entry_on_the_same_run(self):
        """The same run under LRU pushes the hot entry out: what S3-FIFO is for."""
        seg = LruSegment(budget=10 * 100)
        seg.put("hot", Item("hot"))
        seg.get("hot")
        for n in range(30):
            seg.put(f"cold{n}", Item(f"cold{n}"))
        self.assertIsNone(seg.peek("hot"))

    def test_ghost_readmits_to_main(self):
        """A key evicted unhit is remembered; stored again, it goes to the main queue and outlives new keys."""
        seg = S3FifoSegment(budget=8 * 400 + 130)
        for n in range(4):
            seg.put(f"h{n}", Item(f"h{n}", 400))
            seg.get(f"h{n}")
        seg.put("a", Item("a", 400))
        n = 0
        while seg.peek("a") is not None:
            seg.put(f"x{n}", Item(f"x{n}", 400))
            n += 1
        self.assertIn("a", seg._ghost)
        self.assertEqual(len(seg._main), 4)
        seg.put("a", Item("a", 400))
        self.assertIn("a", seg._main)
        for m in range(10):
            seg.put(f"y{m}", Item(f"y{m}", 400))
        self.assertEqual(seg.peek("a"), Item("a", 400))

    def test_main_gives_hit_entries_more_rounds(self):
        """At the head of the main queue, an entry with hits goes round again (one round per hit, up to 3)."""
        seg = S3FifoSegment(budget=1000)
        for key in "abc":
            seg._main.append(key, Item(key))
            seg.size += 100
        seg.get("a")
        seg.size = seg.budget + 100  # over budget by one entry
        seg._evict()
        self.assertEqual(seg.keys(), ["c", "a"])
        self.assertIsNone(seg.peek("b"))
        for _ in range(5):
            seg.get("c")
        self.assertEqual(seg.peek("c").freq, eviction.MAX_FREQ)

    def test_put_in_place_keeps_hits_and_replace(self):
        seg = S3FifoSegment(budget=1000)
        seg.put("a", Item("a", 100))
        seg.get("a")
        seg.put("a", Item("a", 150))
        self.assertEqual((seg.size, seg.peek("a").freq, len(seg)), (150, 1, 1))
        seg.replace("a", Item("a", 120))
        self.assertEqual(seg.size, 120)
        self.assertEqual(seg.pop("a"), Item("a", 120))
        self.assertEqual((seg.size, len(seg)), (0, 0))
        self.assertEqual(seg.budget, 1000 - seg._ghost.cost)
        self.assertIsNone(seg.pop("a"))

    def test_ghost_filter(self):
        """The filter remembers the last capacity/2 keys surely, forgets old ones, has few false positives, and costs what it says."""
        ghost = GhostFilter(4000)
        for n in range(1999):
            ghost.add(f"k{n}")
        self.assertTrue(all(f"k{n}" in ghost for n in range(1999)))
        for n in range(1999, 6000):
            ghost.add(f"k{n}")
        forgotten = sum(f"k{n}" not in ghost for n in range(2000))
        self.assertGreater(forgotten, 1900)
        false = sum(f"other{n}" in ghost for n in range(10000))
        self.assertLess(false / 10000, 0.05)
        self.assertEqual(ghost.cost, sum(sys.getsizeof(b) for b in (ghost._new, ghost._old)))
        ghost.clear()
        self.assertNotIn("k5999", ghost)

    def test_policy_names(self):
        self.assertIs(segment_class("s3fifo"), S3FifoSegment)
        self.assertIs(segment_class("lru"), LruSegment)
        with self.assertRaises(ValueError):
            segment_class("arc")


_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "get", "pop", "replace"]), st.integers(0, 40), st.integers(1, 300)),
    max_size=300,
)


class HoldsAnyTests(SynchronousTestCase):
    """holds_any(keys): whether any key is held, in either S3-FIFO queue or in LRU, without counting an access."""

    def test_both_policies(self):
        for seg in (S3FifoSegment(budget=8 * 400 + 130), LruSegment(budget=8 * 400)):
            self.assertFalse(seg.holds_any(("a", "b")))
            for n in range(4):  # hit entries, then new ones push them into S3-FIFO's main queue
                seg.put(f"h{n}", Item(f"h{n}", 400))
                seg.get(f"h{n}")
            for n in range(8):
                seg.put(f"x{n}", Item(f"x{n}", 400))
            held = [k for k in ["h0", "h1", "h2", "h3"] + [f"x{n}" for n in range(8)] if seg.peek(k) is not None]
            gone = [k for k in ["h0", "h1", "h2", "h3"] + [f"x{n}" for n in range(8)] if seg.peek(k) is None]
            self.assertTrue(held and gone)
            freqs = {k: seg.peek(k).freq for k in held}
            for k in held:
                self.assertTrue(seg.holds_any(("nope", k)))
            self.assertFalse(seg.holds_any(tuple(gone) + ("nope",)))
            self.assertFalse(seg.holds_any(()))
            self.assertEqual({k: seg.peek(k).freq for k in held}, freqs)
            if isinstance(seg, LruSegment):  # and the recency order is untouched
                order = list(seg.keys())
                seg.holds_any(tuple(held))
                self.assertEqual(list(seg.keys()), order)
            if isinstance(seg, S3FifoSegment):  # keys in both queues were found
                self.assertTrue(any(k in seg._main_entries for k in held))
                self.assertTrue(any(k in seg._small_entries for k in held))


class BoundTests(SynchronousTestCase):
    """Whatever happens, the size is exact and never over budget after a put."""

    @settings(max_examples=200, deadline=None)
    @given(_OPS, st.sampled_from(["s3fifo", "lru"]))
    def test_size_is_exact_and_bounded(self, ops, policy):
        seg = segment_class(policy)(budget=2000)
        for op, n, cost in ops:
            key = f"k{n}"
            if op == "put":
                seg.put(key, Item(key, cost))
                self.assertLessEqual(seg.size, seg.budget)
            elif op == "get":
                got = seg.get(key)
                self.assertTrue(got is None or got.name == key)
            elif op == "pop":
                seg.pop(key)
            elif seg.peek(key) is not None:
                seg.replace(key, Item(key, cost))
            self.assertEqual(seg.size, sum(e.cost for _, e in seg.items()))
            self.assertLessEqual(seg.budget + (seg._ghost.cost if policy == "s3fifo" else 0), 2000)
            self.assertEqual(len(seg), len(seg.items()))
            self.assertEqual(len(set(seg.keys())), len(seg))


class OrderedDictS3Fifo:
    """
    The reference: S3-FIFO with both queues as OrderedDicts, as
    S3FifoSegment was before its main queue became a dict and a deque.
    """

    def __init__(self, budget: int) -> None:
        self.small, self.main = OrderedDict(), OrderedDict()
        self.ghost = GhostFilter(max(1, budget // eviction.TYPICAL_ENTRY))
        self.small_size = self.size = self.evicts = 0
        self.budget = max(0, budget - self.ghost.cost)

    def get(self, key):
        entry = self.small.get(key) or self.main.get(key)
        if entry is not None and entry.freq < eviction.MAX_FREQ:
            entry.freq += 1
        return entry

    def put(self, key, entry) -> None:
        if key in self.small:
            old = self.small[key]
            self.small_size += entry.cost - old.cost
            self.size += entry.cost - old.cost
            entry.freq = old.freq
            self.small[key] = entry
        elif key in self.main:
            old = self.main[key]
            self.size += entry.cost - old.cost
            entry.freq = old.freq
            self.main[key] = entry
        elif key in self.ghost:
            self.size += entry.cost
            self.main[key] = entry
        else:
            self.small[key] = entry
            self.small_size += entry.cost
            self.size += entry.cost
        while self.size > self.budget:
            if self.small and (self.small_size > self.budget * eviction.SMALL_SHARE or not self.main):
                key, entry = self.small.popitem(last=False)
                self.small_size -= entry.cost
                if entry.freq:
                    entry.freq = 0
                    self.main[key] = entry
                    continue
                self.size -= entry.cost
                self.evicts += 1
                self.ghost.add(key)
            elif self.main:
                key, entry = self.main.popitem(last=False)
                if entry.freq:
                    entry.freq -= 1
                    self.main[key] = entry
                    continue
                self.size -= entry.cost
                self.evicts += 1
            else:
                return

    def pop(self, key):
        entry = self.small.pop(key, None)
        if entry is not None:
            self.small_size -= entry.cost
        else:
            entry = self.main.pop(key, None)
        if entry is not None:
            self.size -= entry.cost
        return entry

    def items(self):
        return [*self.small.items(), *self.main.items()]


_CHURN = st.lists(
    st.tuples(st.sampled_from(["put", "put", "get", "get", "pop"]), st.integers(0, 24), st.integers(50, 300)),
    min_size=50, max_size=600,
)


class FifoQueueTests(SynchronousTestCase):
    """Queues as a dict and a deque of keys behave exactly as OrderedDicts did."""

    @settings(max_examples=300, deadline=None)
    @given(_CHURN)
    def test_same_as_ordered_dicts(self, ops):
        """After every operation: the same entries in the same order, the same size and evictions."""
        seg, ref = S3FifoSegment(budget=2000), OrderedDictS3Fifo(2000)
        for op, n, cost in ops:
            key = f"k{n}"
            if op == "put":
                seg.put(key, Item(key, cost))
                ref.put(key, Item(key, cost))
            elif op == "get":
                self.assertEqual(seg.get(key), ref.get(key))
            else:
                self.assertEqual(seg.pop(key), ref.pop(key))
            self.assertEqual(seg.items(), ref.items())
            self.assertEqual([e.freq for _, e in seg.items()], [e.freq for _, e in ref.items()])
            self.assertEqual((seg.size, seg.evicts), (ref.size, ref.evicts))

    def test_stale_keys_are_dropped(self):
        """Keys popped from the main queue do not pile up in its deque."""
        seg = S3FifoSegment(budget=10**6)
        for n in range(1000):
            seg._ghost.add(f"k{n}")  # straight to the main queue
            seg.put(f"k{n}", Item(f"k{n}", 10))
        for n in range(1000):
            seg.pop(f"k{n}")
            seg._ghost.add(f"k{n}")
            seg.put(f"k{n}", Item(f"k{n}", 10))
        self.assertEqual(len(seg._main), 1000)
        self.assertLessEqual(len(seg._main._order), 1000 + 32 + 1000 // 8 + 1)
        self.assertEqual(seg.keys(), [f"k{n}" for n in range(1000)])
