"""
The L2 cache as the first resolver of the chain, and the glue that fills it
from upstream replies.

:class:`RRsetResolver` answers what the :class:`~dnsgo.cache.rrset.RRsetCache`
can answer completely and reports everything else as a miss
(``DomainError``), which :class:`dnsgo.resolve.Chain` passes on to the
forwarder.  It never ends the chain with an error of its own: any exception
inside the cache is a miss too (ARCHITECTURE.md: a non-``DomainError``
failure would end a ``ResolverChain`` in SERVFAIL).

Queries with the DO bit, and qtype ANY or RRSIG, are always misses: L2 does
not assemble DNSSEC answers (the L1 message cache still caches those
replies whole).
"""
from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import common, dns, error
from zope.interface import implementer

from dnsgo.cache.rrset import RRSIG, RRsetCache
from dnsgo.resolve import FinalAnswer

#: The longest CNAME chain assembled from cached pieces.
MAX_CNAME_HOPS = 8

#: Question types never answered from L2.
_MISS_QTYPES = frozenset({dns.ANY, RRSIG, dns.AXFR, dns.IXFR, dns.MAILA, dns.MAILB})


@implementer(IResolver)
class RRsetResolver(common.ResolverBase):
    """
    An ``IResolver`` over an :class:`RRsetCache`: a complete answer from
    cached RRsets and negative entries, or a ``DomainError`` miss.

    Every query counts once in the cache's hits or misses (a hit is an
    answer from the cache, positive or negative).
    """

    log = Logger()

    def __init__(self, cache: RRsetCache) -> None:
        common.ResolverBase.__init__(self)
        self._cache = cache
        self._failure_logged = False
        self.errors = 0

    @property
    def hits(self) -> int:
        """Queries answered from the cache."""
        return self._cache.stats().hits

    @property
    def misses(self) -> int:
        """Queries passed on to the next resolver."""
        return self._cache.stats().misses

    def query(self, query, timeout=None):
        """Answer ``query`` from the cache, or fail with ``DomainError`` to pass it on."""
        try:
            result = self._answer(query)
        except Exception:
            self.errors += 1
            if not self._failure_logged:
                self._failure_logged = True
                self.log.failure("L2 cache lookup failed; treating it as a miss (logged once)")
            result = None
        self._cache.count_lookup(result is not None)
        if result is None:
            return defer.fail(error.DomainError())
        if isinstance(result, FinalAnswer):
            return defer.fail(result)
        return defer.succeed(result)

    def _answer(self, query):
        """The cached answer as a result tuple or a ``FinalAnswer``, or None on a miss."""
        qtype, cls = query.type, query.cls
        if getattr(query, "dnssec_ok", False) or qtype in _MISS_QTYPES:
            return None
        cache = self._cache
        name = query.name.name
        chain: list[dns.RRHeader] = []
        seen = {name.lower().rstrip(b".")}
        for _ in range(MAX_CNAME_HOPS + 1):
            records = cache.get(name, qtype, cls)
            if records:
                return chain + records, [], []
            negative = cache.get_negative(name, qtype, cls)
            if negative is not None:
                rcode, soa = negative
                if rcode == dns.ENAME:
                    return FinalAnswer(dns.ENAME, chain, [soa])
                return chain, [soa], []
            if qtype == dns.CNAME:
                return None
            cname = cache.get(name, dns.CNAME, cls)
            if not cname:
                return None
            name = cname[0].payload.name.name
            key = name.lower().rstrip(b".")
            if key in seen:
                return None
            seen.add(key)
            chain.extend(cname)
        return None

    def _lookup(self, name, cls, type, timeout):
        return self.query(dns.Query(name, type, cls), timeout)


def fill_from_reply(cache: RRsetCache) -> Callable[[dns.Query, dns.Message], None]:
    """
    A callable ``(query, message)`` that stores an upstream reply in
    ``cache``, for ``ForwardingResolver(pool, on_reply=...)``.

    It never raises.  A truncated reply is not complete and is not stored;
    nor is the reply to a CD query, which the upstream did not validate and
    must not be served to clients that did not set CD.
    """
    return _ReplyFiller(cache)


class _ReplyFiller:
    """The callable :func:`fill_from_reply` returns; logs its first failure only."""

    log = Logger()

    def __init__(self, cache: RRsetCache) -> None:
        self._cache = cache
        self._failure_logged = False

    def __call__(self, query, message: dns.Message) -> None:
        try:
            if message.trunc or getattr(query, "checking_disabled", False):
                return
            additional = [rr for rr in message.additional if rr.type != dns.OPT]
            self._cache.store_reply(query, message.rCode, message.answers, message.authority, additional)
        except Exception:
            if not self._failure_logged:
                self._failure_logged = True
                self.log.failure("filling the L2 cache failed (logged once)")
