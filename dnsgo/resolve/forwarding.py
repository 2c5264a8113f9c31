"""
The last resolver of the chain: the question goes to the upstream pool, and
every reply fills the caches through ``on_reply`` unless twisted.names
cannot hold its names faithfully.
"""
from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.names import common, dns
from zope.interface import implementer

from dnsgo.resolve.chain import RecentFailure, VerbatimReply, message_to_result
from dnsgo.resolve.query import FlaggedQuery


@implementer(IResolver)
class ForwardingResolver(common.ResolverBase):
    """
    The last resolver of the chain: forwards the question to the upstream
    pool, which picks servers by the L3 infrastructure cache.

    ``on_reply(query, reply)`` is called with every upstream reply, read
    from its bytes (:func:`dnsgo.dns.records.read_reply`), unless a name in
    it has a dotted label: the L2 cache fills itself from it.
    With ``failures`` (a :class:`~dnsgo.upstream.failures.FailureCache`), a
    question that timed out or got SERVFAIL fails again at once for a few
    seconds instead of going upstream (RFC 9520).

    With ``relay``, the resolver answers with the upstream's reply itself
    (the pool's ``UpstreamReply``: its bytes), not with decoded sections:
    the query handler builds the client's reply from those bytes
    (:func:`dnsgo.dns.wire.relay_body`) and nothing is decoded for it.
    Without it, it is a plain ``IResolver``.
    """

    def __init__(self, pool, on_reply=None, failures=None, *, relay: bool = False) -> None:
        common.ResolverBase.__init__(self)
        self._pool = pool
        self._on_reply = on_reply
        self._failures = failures
        self._relay = relay

    def query(self, query, timeout=None):
        """Forward ``query`` (a ``FlaggedQuery`` or plain ``dns.Query``)."""
        if not isinstance(query, FlaggedQuery):
            query = FlaggedQuery.from_name(query.name.name, query.type, query.cls)
        key = self._failure_key(query)
        if key is not None and self._failures.recent(key):
            return defer.fail(RecentFailure())
        d = self._pool.query(
            query.qname_wire,
            query.type,
            query.cls,
            do=query.dnssec_ok,
            cd=query.checking_disabled,
        )
        d.addCallback(self._answered, query)
        if key is not None:
            d.addErrback(self._timed_out, key)
        return d

    def ask(self, query, done) -> None:
        """
        :meth:`query` with a plain callback, for the miss path: ``done`` is
        called once with what the Deferred would fire with (the result), or
        with the exception it would fail with.  Never raises.
        """
        key = self._failure_key(query)
        if key is not None and self._failures.recent(key):
            done(RecentFailure())
            return

        def answered(outcome) -> None:
            if isinstance(outcome, BaseException):
                if key is not None and isinstance(outcome, defer.TimeoutError):
                    self._failures.failed(key)
                done(outcome)
                return
            try:
                result = self._answered(outcome, query)
            except Exception as e:
                done(e)
                return
            done(result)

        self._pool.ask(query.qname_wire, query.type, query.cls, query.dnssec_ok, query.checking_disabled, answered)

    def _failure_key(self, query):
        if self._failures is None:
            return None
        return (query.qname_wire.lower(), query.type, query.cls, query.dnssec_ok, query.checking_disabled)

    def _answered(self, reply, query):
        data = reply.wire
        read = reply.read
        if self._on_reply is not None and not query.dotted and not read.dotted:
            self._on_reply(query, read)
        if data[3] & 0xF == dns.ESERVER and self._failures is not None:
            self._failures.failed(self._failure_key(query))
        if self._relay:
            return reply
        if query.dotted or read.dotted:
            raise VerbatimReply(data)
        return message_to_result(reply.message)

    def _timed_out(self, failure, key):
        failure.trap(defer.TimeoutError)
        self._failures.failed(key)
        return failure

    def _lookup(self, name, cls, type, timeout):
        return self.query(FlaggedQuery.from_name(name, type, cls), timeout)
