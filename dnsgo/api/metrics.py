"""
The Prometheus series of dnsgo, all in one module.

Nothing is counted here: at scrape time the workers' stats snapshots (see
``dnsgo.api.snapshot``) are turned into metric families.  The snapshots are copied
in the reactor thread (:meth:`ClusterMetrics.render`); the text is rendered
from that copy in the reactor's thread pool, so a scrape never blocks DNS
service and never reads a dict another thread is changing.

Every series is prefixed ``dnsgo_``; counters end in ``_total``; per-worker
series carry a ``worker`` label.  The list, with types and labels, is in
``docs/api.md``.
"""
import copy

import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from twisted.internet import threads
from twisted.logger import Logger

from dnsgo.api.views import WorkerRecord

#: Redis circuit-breaker states as gauge values.
BREAKER_STATES = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}

#: Worker statuses always present in ``dnsgo_workers``.
WORKER_STATUSES = ("healthy", "unhealthy")

_CACHE_LAYERS = (("message", "messageCache"), ("rrset", "rrsetCache"))

_HITS_DOC = "Cache lookups that found an entry."
_MISSES_DOC = "Cache lookups that found nothing."


@attrs.frozen
class ClusterSample:
    """Everything one scrape reports, copied in the reactor thread."""

    workers: tuple[WorkerRecord, ...]
    shared: dict | None = None
    ha: dict | None = None  # the view's ha() (docs/ha.md)


def capture(workers, shared: dict | None = None, ha: dict | None = None) -> ClusterSample:
    """Copy WorkerView-like objects, a shared-cache dict and the HA state so later changes do not show."""
    return ClusterSample(
        ha=copy.deepcopy(ha),
        workers=tuple(
            WorkerRecord(
                worker_id=w.worker_id,
                cluster_name=w.cluster_name,
                address=w.address,
                status=w.status,
                last_heartbeat=w.last_heartbeat,
                snapshot=copy.deepcopy(w.snapshot),
            )
            for w in workers
        ),
        shared=copy.deepcopy(shared),
    )


def cumulative_buckets(histogram: dict) -> list[tuple[str, float]]:
    """
    Prometheus ``le`` buckets from a snapshot histogram whose ``counts`` are
    per bucket (non-cumulative, the last one the +Inf overflow).
    """
    buckets = [floatToGoString(b) for b in histogram["buckets"]] + ["+Inf"]
    out, running = [], 0
    for le, n in zip(buckets, histogram["counts"]):
        running += n
        out.append((le, running))
    return out


class _Families:
    """The metric families of one scrape, created on first use and kept in order."""

    def __init__(self) -> None:
        self._families: dict[str, object] = {}

    def add(self, kind, name: str, doc: str, labels: tuple[str, ...], values: tuple[str, ...], value) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(name, doc, labels=labels)
        family.add_metric(values, value)

    def histogram(self, name: str, doc: str, labels, values, histogram: dict) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = HistogramMetricFamily(name, doc, labels=labels)
        family.add_metric(values, cumulative_buckets(histogram), histogram.get("sum", 0.0))

    def all(self) -> list:
        return list(self._families.values())


def cluster_families(sample: ClusterSample) -> list:
    """All metric families of a ClusterSample."""
    f = _Families()
    by_status = dict.fromkeys(WORKER_STATUSES, 0)
    for w in sample.workers:
        by_status[w.status] = by_status.get(w.status, 0) + 1
    for status, n in by_status.items():
        f.add(GaugeMetricFamily, "dnsgo_workers", "Workers known, by health status.", ("status",), (status,), n)
    if sample.ha is not None and sample.ha.get("mode") == "active_passive":
        _ha_families(f, sample.ha)
    if sample.shared is not None:
        _shared_families(f, sample.shared)
    for w in sample.workers:
        _worker_families(f, w)
    return f.all()


def _ha_families(f: _Families, ha: dict) -> None:
    """This control plane's high availability (docs/ha.md)."""
    me = (str(ha.get("node_id", "")),)
    f.add(GaugeMetricFamily, "dnsgo_ha_term", "The newest HA term this control plane knows.", ("node",), me,
          ha.get("term", 0))
    f.add(GaugeMetricFamily, "dnsgo_ha_is_leader", "1 while this control plane is the active one (holds a lease).",
          ("node",), me, 1 if ha.get("role") == "active" else 0)
    f.add(CounterMetricFamily, "dnsgo_ha_elections", "Elections this control plane started (pre-votes that lost "
          "are not counted).", ("node",), me, ha.get("elections", 0))


def _shared_families(f: _Families, shared: dict) -> None:
    labels = ("type", "address")
    values = (str(shared.get("type")), str(shared.get("address")))
    f.add(GaugeMetricFamily, "dnsgo_shared_cache_up", "1 when the shared cache is connected.",
          labels, values, 1 if shared.get("status") == "connected" else 0)
    stats = shared.get("stats") or {}
    if "size_bytes" in stats:
        f.add(GaugeMetricFamily, "dnsgo_shared_cache_size_bytes", "Memory used by the shared cache.",
              labels, values, stats["size_bytes"])


def _worker_families(f: _Families, w: WorkerRecord) -> None:
    me = (w.worker_id,)
    f.add(GaugeMetricFamily, "dnsgo_worker_healthy", "1 when the worker is healthy.",
          ("worker",), me, 1 if w.status == "healthy" else 0)
    if w.last_heartbeat is not None:
        f.add(GaugeMetricFamily, "dnsgo_worker_last_heartbeat_timestamp_seconds",
              "When the worker last reported (Unix time).", ("worker",), me, w.last_heartbeat)
    snap = w.snapshot
    if not snap:
        return
    f.add(GaugeMetricFamily, "dnsgo_worker_info", "Worker identity; the value is always 1.",
          ("worker", "cluster", "address", "version", "mode"),
          (w.worker_id, w.cluster_name, w.address, str(snap.get("version", "")), str(snap.get("mode", ""))), 1)
    if snap.get("startedAt") is not None:
        f.add(GaugeMetricFamily, "dnsgo_worker_start_time_seconds", "When the worker started (Unix time).",
              ("worker",), me, snap["startedAt"])
    for rcode, qtype, protocol, n in snap.get("queries", ()):
        f.add(CounterMetricFamily, "dnsgo_queries", "Queries answered, by rcode, qtype and protocol.",
              ("worker", "rcode", "qtype", "protocol"), (w.worker_id, str(rcode), str(qtype), str(protocol)), n)
    if snap.get("latency"):
        f.histogram("dnsgo_answer_latency_seconds", "Time from query to answer.", ("worker",), me, snap["latency"])
    for name, key, doc in (
        ("dnsgo_prefetches", "prefetches", "Prefetches started for hot names about to expire."),
        ("dnsgo_stale_answers", "staleAnswers", "Stale answers served (RFC 8767)."),
        ("dnsgo_servfails", "servfails", "SERVFAIL answers sent."),
    ):
        if key in snap:
            f.add(CounterMetricFamily, name, doc, ("worker",), me, snap[key])
    _cache_families(f, w.worker_id, snap)
    for up in snap.get("upstreams", ()):
        _upstream_families(f, w.worker_id, up)
    pool = snap.get("upstreamPool") or {}
    for name, key, doc in _POOL_COUNTERS:
        if key in pool:
            f.add(CounterMetricFamily, name, doc, ("worker",), me, pool[key])
    if snap.get("sharedCache"):
        _redis_families(f, w.worker_id, snap["sharedCache"])


#: The upstream pool's counters: (metric, snapshot key, help).
_POOL_COUNTERS = (
    ("dnsgo_upstream_retransmits", "retransmits", "Questions sent again to an upstream after its RTO passed."),
    ("dnsgo_upstream_late_replies", "late", "Upstream replies that came after their transmission timed out."),
    ("dnsgo_upstream_tcp_fallbacks", "tcp_fallback", "Questions sent over TCP after repeated UDP losses."),
    ("dnsgo_upstream_timeouts", "timeouts", "Upstream transmissions that got no reply in time."),
    ("dnsgo_upstream_no_socket", "no_socket", "Upstream sockets not opened for want of a descriptor."),
    ("dnsgo_upstream_spoofed", "spoofed", "Messages ignored: wrong source, ID, QR or question."),
    ("dnsgo_upstream_malformed", "malformed", "Upstream replies refused as malformed."),
)


def _cache_families(f: _Families, worker: str, snap: dict) -> None:
    labels = ("worker", "layer")
    for layer, key in _CACHE_LAYERS:
        stats = snap.get(key)
        if not stats:
            continue
        values = (worker, layer)
        f.add(CounterMetricFamily, "dnsgo_cache_hits", _HITS_DOC, labels, values, stats["hits"])
        f.add(CounterMetricFamily, "dnsgo_cache_misses", _MISSES_DOC, labels, values, stats["misses"])
        f.add(CounterMetricFamily, "dnsgo_cache_evictions", "Entries evicted to stay within the size limit.",
              labels, values, stats["evicts"])
        f.add(GaugeMetricFamily, "dnsgo_cache_size_bytes", "Estimated memory held by the cache.",
              labels, values, stats["size_bytes"])
        f.add(GaugeMetricFamily, "dnsgo_cache_max_size_bytes", "The cache's size limit.",
              labels, values, stats["max_size_bytes"])
        if "entries" in stats:
            f.add(GaugeMetricFamily, "dnsgo_cache_entries", "Entries in the cache.", labels, values, stats["entries"])
    shared = snap.get("sharedCache")
    if shared:
        values = (worker, "shared")
        f.add(CounterMetricFamily, "dnsgo_cache_hits", _HITS_DOC, labels, values, shared.get("hits", 0))
        f.add(CounterMetricFamily, "dnsgo_cache_misses", _MISSES_DOC, labels, values, shared.get("misses", 0))


def _upstream_families(f: _Families, worker: str, up: dict) -> None:
    labels = ("worker", "upstream")
    values = (worker, str(up["address"]))
    f.add(GaugeMetricFamily, "dnsgo_upstream_rtt_seconds", "Smoothed round-trip time to the upstream.",
          labels, values, up["srtt_ms"] / 1000.0)
    f.add(GaugeMetricFamily, "dnsgo_upstream_in_flight", "Queries sent to the upstream and not yet answered.",
          labels, values, up.get("in_flight", 0))
    f.add(GaugeMetricFamily, "dnsgo_upstream_healthy", "1 when the upstream is considered healthy.",
          labels, values, 1 if up.get("health") == "healthy" else 0)
    f.add(CounterMetricFamily, "dnsgo_upstream_queries", "Queries sent to the upstream.",
          labels, values, up.get("queries", 0))
    f.add(CounterMetricFamily, "dnsgo_upstream_failures", "Queries to the upstream that failed or timed out.",
          labels, values, up.get("failures", 0))


def _redis_families(f: _Families, worker: str, shared: dict) -> None:
    me = (worker,)
    breaker = shared.get("breaker") or {}
    f.add(GaugeMetricFamily, "dnsgo_redis_connected", "1 when the worker's Redis connection is up.",
          ("worker",), me, 1 if shared.get("status") == "connected" else 0)
    if breaker.get("state") in BREAKER_STATES:
        f.add(GaugeMetricFamily, "dnsgo_redis_breaker_state",
              "Redis circuit breaker: 0 closed, 1 half-open, 2 open.", ("worker",), me, BREAKER_STATES[breaker["state"]])
    for name, key, doc in (
        ("dnsgo_redis_breaker_trips", None, "Times the Redis circuit breaker opened."),
        ("dnsgo_redis_errors", "errors", "Redis commands that failed or timed out."),
        ("dnsgo_redis_corrupt_entries", "corrupt", "Shared-cache values that could not be decoded."),
        ("dnsgo_redis_rejected_entries", "rejected",
         "Shared-cache values refused: another name's records, or a stored-at time in the future."),
        ("dnsgo_redis_bad_signatures", "bad_signatures",
         "Shared-cache values without a valid signature (a signing key is set)."),
        ("dnsgo_redis_writes", "writes", "Shared-cache writes sent."),
        ("dnsgo_redis_dropped_writes", "dropped_writes", "Shared-cache writes dropped (breaker open or backlog full)."),
    ):
        value = breaker.get("trips") if key is None else shared.get(key)
        if value is not None:
            f.add(CounterMetricFamily, name, doc, ("worker",), me, value)
    if shared.get("latency"):
        f.histogram("dnsgo_redis_latency_seconds", "Redis command round-trip time.", ("worker",), me, shared["latency"])


class SnapshotCollector:
    """
    A prometheus_client collector reporting the last pinned ClusterSample.
    The reactor thread pins a fresh copy; the rendering thread only reads it.
    """

    def __init__(self) -> None:
        self._sample = ClusterSample(workers=())

    def pin(self, sample: ClusterSample) -> None:
        """Report ``sample`` from now on."""
        self._sample = sample

    def describe(self) -> list:
        """No fixed names: series come and go with workers (nothing to check for clashes)."""
        return []

    def collect(self):
        """The metric families of the pinned sample."""
        return cluster_families(self._sample)


class ClusterMetrics:
    """
    The ``/metrics`` text of a ClusterView: a per-instance registry holding a
    SnapshotCollector; :meth:`render` copies the snapshots in the reactor
    thread, then renders in the reactor's thread pool.
    """

    log = Logger()

    def __init__(self, view, *, reactor) -> None:
        self._view = view
        self._reactor = reactor
        self.collector = SnapshotCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    async def render(self) -> bytes:
        """The Prometheus text exposition of the cluster now."""
        try:
            shared = await self._view.shared_cache()
        except Exception:
            self.log.failure("metrics: the shared cache statistics are unavailable")
            shared = None
        ha = self._view.ha() if hasattr(self._view, "ha") else None
        self.collector.pin(capture(self._view.workers(), shared, ha))
        return await threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), generate_latest, self.registry
        )
