"""Tests for L{dnsgo.serve.stats}: the per-query counters and the latency histogram."""
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.serve.stats import LATENCY_BUCKETS, Histogram, QueryStats


class RecordTests(SynchronousTestCase):
    """QueryStats.record's inlined histogram update agrees with Histogram.observe."""

    def test_same_buckets_as_observe(self):
        """Every latency, at, below and above each bound, lands where Histogram.observe puts it."""
        values = [0.0, 0.00001]
        for bound in LATENCY_BUCKETS:
            values += [bound * 0.99, bound, bound * 1.01]
        values.append(10.0)
        stats, histogram = QueryStats(), Histogram()
        for value in values:
            stats.record(0, 1, False, value)
            histogram.observe(value)
        self.assertEqual(stats.latency.counts, histogram.counts)
        self.assertEqual((stats.latency.count, stats.latency.sum), (histogram.count, histogram.sum))

    def test_first_bucket(self):
        """A hit's microseconds, and the first bound itself, count in the first bucket."""
        stats = QueryStats()
        for value in (0.000003, LATENCY_BUCKETS[0]):
            stats.record(0, 1, False, value)
        self.assertEqual(stats.latency.counts[0], 2)
        self.assertEqual(sum(stats.latency.counts), 2)
        self.assertEqual(stats.by_key, {0 << 17 | 1 << 1 | 0: 2})
