"""
The L2 cache as the first resolver of the chain, and the glue that fills it
from upstream replies.

:class:`RRsetResolver` answers what the :class:`~dnsgo.cache.rrset.RRsetCache`
can answer completely and reports everything else as a miss
(``DomainError``), which :class:`dnsgo.resolve.chain.Chain` passes on to the
forwarder.  It never ends the chain with an error of its own: any exception
inside the cache is a miss too (ARCHITECTURE.md: a non-``DomainError``
failure would end a ``ResolverChain`` in SERVFAIL).

Queries with the DO bit, and qtype ANY or RRSIG, are always misses: L2 does
not assemble DNSSEC answers (the L1 message cache still caches those
replies whole).

The assembly (:func:`assemble`) works over a *step* function that says
what is known about one name, synchronously or through a Deferred, so the
hybrid resolver (:mod:`dnsgo.resolve.hybrid`) assembles answers
from the local cache and Redis with the same code.
"""
from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import common, dns, error
from zope.interface import implementer

from dnsgo.cache.rrset import RRSIG, RRsetCache, learn_from_wire, normalize_name
from dnsgo.dns.records import ReadReply
from dnsgo.resolve.chain import FinalAnswer

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
        self._step = local_step(cache)
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
        return result_to_deferred(self.answer_now(query))

    def answer_now(self, query):
        """
        The cached answer at once: a result tuple or a ``FinalAnswer``, or
        None on a miss (an error inside the cache is a miss, logged once).
        Counted once in the cache's hits or misses.
        """
        try:
            result = self._answer(query)
        except Exception:
            self.errors += 1
            if not self._failure_logged:
                self._failure_logged = True
                self.log.failure("L2 cache lookup failed; treating it as a miss (logged once)")
            result = None
        self._cache.count_lookup(result is not None)
        return result

    def _answer(self, query):
        """The cached answer as a result tuple or a ``FinalAnswer``, or None on a miss."""
        if not answerable(query):
            return None
        if not self._cache.holds_any(normalize_name(query.name.name), query.type, query.cls):
            return None  # the common miss: nothing at all for the name, decided in a few lookups
        return assemble(query.name.name, query.type, query.cls, self._step)

    def _lookup(self, name, cls, type, timeout):
        return self.query(dns.Query(name, type, cls), timeout)


def answerable(query) -> bool:
    """
    Whether L2 may answer ``query`` at all: not with DO set, not for ANY,
    RRSIG or transfers, and not for a name with a ``.`` inside a label (its
    dotted form would be another name's key).
    """
    return (
        not getattr(query, "dnssec_ok", False)
        and query.type not in _MISS_QTYPES
        and not getattr(query, "dotted", False)
    )


def result_to_deferred(result) -> defer.Deferred:
    """An :func:`assemble` result as ``IResolver.query`` reports it (None is a ``DomainError`` miss)."""
    if result is None:
        return defer.fail(error.DomainError())
    if isinstance(result, FinalAnswer):
        return defer.fail(result)
    return defer.succeed(result)


@attrs.frozen
class Records:
    """A step found the RRset asked for."""

    records: list


@attrs.frozen
class Negative:
    """A step found a negative answer: ``rcode`` ``dns.ENAME`` (NXDOMAIN) or ``dns.OK`` (NODATA), and the SOA."""

    rcode: int
    soa: dns.RRHeader


@attrs.frozen
class Alias:
    """A step found no answer for the type but a CNAME RRset for the name."""

    records: list


def local_step(cache: RRsetCache):
    """
    The step function of :func:`assemble` over one :class:`RRsetCache`:
    ``(name, type, cls)`` to :class:`Records`, :class:`Negative`,
    :class:`Alias` or None, synchronously.
    """

    def step(name: bytes, qtype: int, cls: int):
        records = cache.get(name, qtype, cls)
        if records:
            return Records(records)
        negative = cache.get_negative(name, qtype, cls)
        if negative is not None:
            return Negative(*negative)
        if qtype == dns.CNAME:
            return None
        cname = cache.get(name, dns.CNAME, cls)
        return Alias(cname) if cname else None

    return step


def assemble(name: bytes, qtype: int, cls: int, step):
    """
    Assemble the answer to ``name``/``qtype``/``cls`` from what ``step``
    knows of each name, following CNAMEs (at most ``MAX_CNAME_HOPS``, no
    loops): a result tuple, a ``FinalAnswer`` (NXDOMAIN at the end of the
    chain), or None when anything is missing.

    ``step(name, qtype, cls)`` returns :class:`Records`, :class:`Negative`,
    :class:`Alias` or None, or a Deferred firing with one of those (then so
    does this).  Synchronous steps stay synchronous: no Deferred is made.
    """
    return _Assembly(name, qtype, cls, step).run()


_GO_ON = object()


class _Assembly:
    """The state of one :func:`assemble`: the chain so far and the names seen."""

    def __init__(self, name: bytes, qtype: int, cls: int, step) -> None:
        self.name = name
        self.qtype = qtype
        self.cls = cls
        self.step = step
        self.chain: list[dns.RRHeader] = []
        self.seen = {name.lower().rstrip(b".")}
        self.steps_left = MAX_CNAME_HOPS + 1

    def run(self):
        while True:
            self.steps_left -= 1
            found = self.step(self.name, self.qtype, self.cls)
            if isinstance(found, defer.Deferred):
                return found.addCallback(self._resume)
            outcome = self._advance(found)
            if outcome is not _GO_ON:
                return outcome

    def _resume(self, found):
        outcome = self._advance(found)
        return self.run() if outcome is _GO_ON else outcome

    def _advance(self, found):
        """The outcome of one step, or ``_GO_ON`` to look up the CNAME's target."""
        if found is None:
            return None
        if isinstance(found, Records):
            return self.chain + found.records, [], []
        if isinstance(found, Negative):
            if found.rcode == dns.ENAME:
                return FinalAnswer(dns.ENAME, self.chain, [found.soa])
            return self.chain, [found.soa], []
        if self.qtype == dns.CNAME or not found.records or self.steps_left <= 0:
            return None
        target = found.records[0].payload.name.name
        key = target.lower().rstrip(b".")
        if key in self.seen:
            return None
        self.seen.add(key)
        self.chain.extend(found.records)
        self.name = target
        return _GO_ON


def fill_from_reply(cache: RRsetCache) -> Callable[[dns.Query, ReadReply], None]:
    """
    A callable ``(query, reply)`` that stores an upstream reply (its records
    as read from its bytes, :func:`dnsgo.dns.records.read_reply`) in
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

    def __call__(self, query, reply: ReadReply) -> None:
        try:
            if cacheable(query, reply):
                self._cache.store_learned(learn_from_wire(query, reply))
        except Exception:
            if not self._failure_logged:
                self._failure_logged = True
                self.log.failure("filling the L2 cache failed (logged once)")


def cacheable(query, reply: ReadReply) -> bool:
    """
    Whether an upstream reply may fill L2 at all: not when truncated (it is
    not complete), nor the reply to a CD query (the upstream did not
    validate it, so it must not be served to clients that did not set CD),
    nor the reply to a name with a ``.`` inside a label.  (A reply holding
    such a name anywhere never reaches the fillers: see
    :class:`dnsgo.resolve.forwarding.ForwardingResolver`.)
    """
    return (
        not reply.truncated
        and not reply.dotted
        and not getattr(query, "checking_disabled", False)
        and not getattr(query, "dotted", False)
    )
