"""
The resolution chain: Twisted Names ``IResolver`` implementations that the
miss path asks in turn (the L2 cache, then the forwarder).

Two departures from stock Twisted Names, both deliberate:

* :class:`Chain` hands every resolver the caller's own query object (a
  :class:`~dnsgo.resolve.query.FlaggedQuery` carrying DO and CD), where
  ``ResolverChain`` rebuilds a bare ``dns.Query``.
* A final answer that is not NOERROR (NXDOMAIN, REFUSED, SERVFAIL from
  upstream, ...) is reported as :class:`FinalAnswer`, an
  ``AuthoritativeDomainError`` that stops the chain and keeps the rcode and
  all three sections, so NXDOMAIN is answered with the upstream's SOA and
  REFUSED stays REFUSED.

A reply that holds a name with a ``.`` inside a label (``www\\.bank``) is
never decoded into the caches: twisted.names would read that label as two
(``www.bank``), so the reply could stand for another name.  It fills no
cache and reaches the client as the upstream sent it
(:class:`VerbatimReply`).
"""
from twisted.internet import defer
from twisted.names import dns, error, resolve



class FinalAnswer(error.AuthoritativeDomainError):
    """
    A complete answer whose rcode is not NOERROR.

    It stops a :class:`Chain` (``AuthoritativeDomainError`` is not a
    ``DomainError``) and carries what the reply needs.
    """

    def __init__(self, rcode: int, answers=(), authority=(), additional=()):
        super().__init__(rcode)
        self.rcode = rcode
        self.answers = list(answers)
        self.authority = list(authority)
        self.additional = list(additional)

    def __repr__(self) -> str:
        return f"<FinalAnswer rcode={self.rcode} an={len(self.answers)} ns={len(self.authority)}>"


class VerbatimReply(error.AuthoritativeDomainError):
    """
    An upstream reply that twisted.names cannot decode faithfully (a name
    with a ``.`` inside a label), carried as its bytes: it stops the chain,
    fills no cache, and the client gets those bytes.
    """

    def __init__(self, reply: bytes):
        super().__init__(reply[3] & 0xF if len(reply) > 3 else dns.ESERVER)
        self.reply = reply


class RecentFailure(defer.TimeoutError):
    """The question failed upstream moments ago and is not asked again yet."""


class Chain(resolve.ResolverChain):
    """
    A ``ResolverChain`` that passes the caller's query object, flags and all,
    to each resolver.  A resolver hands over to the next one by failing with
    ``DomainError``, ``TimeoutError`` or ``NotImplementedError``, exactly as
    in Twisted Names.

    A resolver that can answer at once may also offer ``answer_now(query)``:
    a result, a :class:`FinalAnswer`, or None for a miss, with no Deferred
    and no Failure made (the local L2 does; a miss there is the common case
    on the miss path).
    """

    def query(self, query, timeout=None):
        """Ask each resolver in turn until one answers or fails finally."""
        found, start = self._at_once(query)
        if found is not None:
            return defer.fail(found) if isinstance(found, BaseException) else defer.succeed(found)
        return self._from(start, query, timeout)

    def ask(self, query, done) -> None:
        """
        :meth:`query` with a plain callback: ``done`` is called once with the
        result, or with the exception the Deferred would fail with.  The
        resolvers that answer at once are asked first (``answer_now``); the
        next one is asked through its own ``ask`` when it has one (the
        forwarder does), so a miss makes no Deferred, else through ``query``.
        """
        found, start = self._at_once(query)
        if found is not None:
            done(found)
            return
        ask = getattr(self.resolvers[start], "ask", None)
        if ask is not None and start == len(self.resolvers) - 1:
            ask(query, done)
            return
        d = self._from(start, query)
        d.addCallbacks(done, lambda failure: done(failure.value))

    def _at_once(self, query):
        """
        Ask the leading resolvers that offer ``answer_now``: ``(found, None)``
        with the first answer (a result or a ``FinalAnswer``); ``(None,
        start)`` with the first resolver still to ask through ``query``; or
        ``(DomainError(), None)`` when every resolver missed.
        """
        for start, r in enumerate(self.resolvers):
            answer_now = getattr(r, "answer_now", None)
            if answer_now is None:
                return None, start
            found = answer_now(query)
            if found is not None:
                return found, None
        return error.DomainError(), None

    def _from(self, start: int, query, timeout=None) -> defer.Deferred:
        """Ask the resolvers from number ``start`` on, each through ``query``."""
        resolvers = self.resolvers
        d = defer.maybeDeferred(resolvers[start].query, query, timeout)
        for r in resolvers[start + 1 :]:
            d.addErrback(resolve.FailureHandler(r.query, query, timeout))
        return d


def message_to_result(message: dns.Message):
    """
    Turn an upstream reply into an ``IResolver`` result: the three sections
    for NOERROR, or a :class:`FinalAnswer` failure otherwise.  The OPT
    pseudo-record is hop-by-hop and is dropped.
    """
    additional = [rr for rr in message.additional if rr.type != dns.OPT]
    if message.rCode == dns.OK:
        return (list(message.answers), list(message.authority), additional)
    raise FinalAnswer(message.rCode, message.answers, message.authority, additional)
