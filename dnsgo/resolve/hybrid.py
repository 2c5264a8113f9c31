"""
The L2 resolver of mode ``hybrid``: the worker's local RRset cache as a
near cache in front of the shared L2 in Redis.

:class:`HybridRRsetResolver` goes first in the :class:`dnsgo.resolve.chain.Chain`,
where :class:`~dnsgo.resolve.l2.RRsetResolver` goes in the other
modes.  For each name on the way to an answer (the question, then each
CNAME target) it asks the local cache first and Redis only when the local
cache knows nothing of that name for the question, in one round trip
(:meth:`~dnsgo.cache.shared.SharedRRsetStore.lookup`).  What Redis gives is
copied into the local cache with the time it was stored, so it counts down
the same way there and the next query for it does not leave the process.
Answers are assembled exactly as ``RRsetResolver`` does it
(:func:`~dnsgo.resolve.l2.assemble`).

Anything wrong on the Redis side (unavailable, slower than the backend's
``read_timeout``, a damaged value) is a miss: a ``DomainError`` that sends
the query on to the forwarder, never a SERVFAIL.  DO queries, and qtypes
ANY and RRSIG, are misses as in the local mode.

:func:`fill_hybrid` is the forwarder's reply hook: it fills the local
cache and queues the writes to Redis.
"""
from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import common, dns
from zope.interface import implementer

from dnsgo.cache.rrset import RRsetCache, learn_from_wire
from dnsgo.dns.records import ReadReply
from dnsgo.resolve.l2 import (
    Alias,
    Negative,
    Records,
    answerable,
    assemble,
    cacheable,
    local_step,
    result_to_deferred,
)
from dnsgo.cache.shared import SharedRRsetStore
from dnsgo.cache.shared_format import Kind


@implementer(IResolver)
class HybridRRsetResolver(common.ResolverBase):
    """
    An ``IResolver`` over a local :class:`RRsetCache` backed by a
    :class:`SharedRRsetStore`: a complete answer, or a ``DomainError`` miss.

    Every query counts once: ``local_hits`` (answered without Redis),
    ``shared_hits`` (Redis supplied part or all of it) or ``misses``; the
    local cache's own hit/miss counters count local hits and the rest.
    """

    log = Logger()

    def __init__(self, local: RRsetCache, shared: SharedRRsetStore, *, reactor) -> None:
        common.ResolverBase.__init__(self)
        self._local = local
        self._shared = shared
        self._reactor = reactor
        self._local_step = local_step(local)
        self._failure_logged = False
        self.local_hits = 0
        self.shared_hits = 0
        self.misses = 0
        self.errors = 0

    @property
    def hits(self) -> int:
        """Queries answered from L2, local or shared."""
        return self.local_hits + self.shared_hits

    def query(self, query, timeout=None):
        """Answer ``query`` from the local cache or Redis, or fail with ``DomainError`` to pass it on."""
        if not answerable(query):
            return self._counted(None, False)
        asked = _Asked()
        try:
            result = assemble(query.name.name, query.type, query.cls, lambda n, t, c: self._step(n, t, c, asked))
        except Exception:
            self._failed()
            result = None
        if isinstance(result, defer.Deferred):
            result.addErrback(self._failed)
            result.addCallback(lambda outcome: self._counted(outcome, asked.shared))
            return result
        return self._counted(result, asked.shared)

    def _step(self, name: bytes, qtype: int, cls: int, asked: "_Asked"):
        found = self._local_step(name, qtype, cls)
        if found is not None:
            return found
        asked.shared = True
        d = self._shared.lookup(name, qtype, cls)
        d.addCallback(self._from_shared, name, qtype, cls)
        return d

    def _from_shared(self, entry, name: bytes, qtype: int, cls: int):
        """Copy what Redis gave into the local cache and turn it into an assembly step."""
        if entry is None:
            return None
        try:
            self._copy(entry, name, qtype, cls)
        except Exception:
            self._failed()
        headers = self._shared.headers(entry)
        if entry.kind == Kind.NXDOMAIN:
            return Negative(dns.ENAME, headers[0])
        if entry.kind == Kind.NODATA:
            return Negative(dns.OK, headers[0])
        if headers[0].type == qtype:
            return Records(headers)
        return Alias(headers)

    def _copy(self, entry, name: bytes, qtype: int, cls: int) -> None:
        first = entry.records[0]
        if entry.kind == Kind.RRSET:
            payloads = [rr.payload for rr in entry.records]
            self._local.insert_rrset(
                first.name.name, first.type, first.cls, payloads, entry.ttl, rank=entry.rank,
                stored_at=entry.stored_at - self._shared.clock_offset,  # Redis's clock to this worker's
            )
        else:
            rcode = dns.ENAME if entry.kind == Kind.NXDOMAIN else dns.OK
            type = None if entry.kind == Kind.NXDOMAIN else qtype
            self._local.insert_negative(name, type, cls, rcode, first, entry.ttl,
                                        stored_at=entry.stored_at - self._shared.clock_offset)

    def _failed(self, failure=None) -> None:
        """Count and (once) log an unexpected error, inside an ``except`` block or as an errback; it is a miss."""
        self.errors += 1
        if not self._failure_logged:
            self._failure_logged = True
            self.log.failure("hybrid L2 lookup failed; treating it as a miss (logged once)", failure)
        return None

    def _counted(self, result, shared: bool) -> defer.Deferred:
        if result is None:
            self.misses += 1
        elif shared:
            self.shared_hits += 1
        else:
            self.local_hits += 1
        self._local.count_lookup(result is not None and not shared)
        return result_to_deferred(result)

    def _lookup(self, name, cls, type, timeout):
        return self.query(dns.Query(name, type, cls), timeout)


class _Asked:
    """Per query: whether Redis was asked."""

    __slots__ = ("shared",)

    def __init__(self) -> None:
        self.shared = False


def fill_hybrid(local: RRsetCache, shared: SharedRRsetStore) -> Callable[[dns.Query, ReadReply], None]:
    """
    A callable ``(query, reply)`` for ``ForwardingResolver(pool,
    on_reply=...)`` in mode ``hybrid``: stores an upstream reply in the
    local cache and queues its answer-rank entries for Redis.  Same rules
    as :func:`~dnsgo.resolve.l2.fill_from_reply` (no truncated
    replies, no replies to CD queries).  Never raises.
    """
    return _HybridFiller(local, shared)


class _HybridFiller:
    """The callable :func:`fill_hybrid` returns; logs its first failure only."""

    log = Logger()

    def __init__(self, local: RRsetCache, shared: SharedRRsetStore) -> None:
        self._local = local
        self._shared = shared
        self._failure_logged = False

    def __call__(self, query, reply: ReadReply) -> None:
        try:
            if not cacheable(query, reply):
                return
            learned = learn_from_wire(query, reply)
        except Exception:
            self._failed()
            return
        for store in (self._local, self._shared):
            try:
                store.store_learned(learned)
            except Exception:
                self._failed()

    def _failed(self) -> None:
        if not self._failure_logged:
            self._failure_logged = True
            self.log.failure("filling the hybrid L2 cache failed (logged once)")
