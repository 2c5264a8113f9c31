"""
One query in, one reply out: the part shared by the UDP and TCP listeners.

The hot path works on bytes (:mod:`dnsgo.wire`).  Only a cache miss builds
twisted.names objects, asks the resolver chain and encodes a reply.
"""
from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

from dnsgo import wire
from dnsgo.query import FlaggedQuery
from dnsgo.resolve import FinalAnswer
from dnsgo.response import encode_reply

#: Zone transfers are an authoritative server's business.
_REFUSED_TYPES = frozenset({dns.AXFR, dns.IXFR})

TCP_LIMIT = 65535


class QueryHandler:
    """
    Answers one DNS query given as bytes.

    ``handle`` returns the reply bytes at once (errors, cache hits), a
    Deferred firing with them (the miss path), or None to drop the packet.
    Truncation and the OPT record are applied per client on every path.
    """

    log = Logger()

    def __init__(
        self,
        resolver,
        client_filter,
        *,
        edns_udp_size: int = 1232,
        message_cache=None,
        metrics=None,
        query_log: bool = False,
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._resolver = resolver
        self._filter = client_filter
        self._edns_udp_size = edns_udp_size
        self._cache = message_cache
        self._metrics = metrics
        self._query_log = query_log

    def handle(self, data: bytes, client: str, tcp: bool = False):
        """Answer ``data`` from ``client`` (an IP string)."""
        try:
            q = wire.parse_query(data)
        except wire.FormatError as e:
            if e.query_id is None:
                return None
            return wire.error_reply(e, wire.FORMERR)
        if not self._filter.allowed(client):
            return wire.error_reply(q, wire.REFUSED)
        if q.opcode != dns.OP_QUERY:
            return wire.error_reply(q, wire.NOTIMP)
        if q.edns_version:
            return wire.error_reply(q, wire.BADVERS)
        if q.qtype in _REFUSED_TYPES:
            return wire.error_reply(q, wire.REFUSED)
        if self._query_log:
            self.log.info(
                "query {client} {name} {qtype} {proto}",
                client=client,
                name=wire.name_to_text(q.qname),
                qtype=dns.QUERY_TYPES.get(q.qtype, q.qtype),
                proto="tcp" if tcp else "udp",
            )
        cache = self._cache
        if cache is not None:
            hit = cache.lookup(q)
            if hit is not None:
                return self._finish(hit, q, tcp)
        d = self._resolve(q)
        d.addCallback(self._finish, q, tcp)
        return d

    def _resolve(self, q: wire.QueryInfo) -> defer.Deferred:
        query = FlaggedQuery(
            q.qname, q.qtype, q.qclass, dnssec_ok=q.do, checking_disabled=q.cd
        )
        d = defer.maybeDeferred(self._resolver.query, query)
        d.addCallbacks(
            lambda result: encode_reply(q, dns.OK, *result),
            self._failed,
            errbackArgs=(q,),
        )
        return d

    def _failed(self, failure, q: wire.QueryInfo) -> bytes:
        if failure.check(FinalAnswer):
            f = failure.value
            return encode_reply(q, f.rcode, f.answers, f.authority, f.additional)
        if not failure.check(defer.TimeoutError):
            self.log.failure(
                "resolving {name} {qtype} failed",
                failure,
                name=wire.name_to_text(q.qname),
                qtype=q.qtype,
            )
        return encode_reply(q, dns.ESERVER, (), (), ())

    def _finish(self, body: bytes, q: wire.QueryInfo, tcp: bool) -> bytes:
        """Truncate for this client if needed and add its OPT record."""
        if tcp:
            limit = TCP_LIMIT
        elif q.edns:
            limit = min(q.udp_size, self._edns_udp_size)
        else:
            limit = 512
        opt_size = 11 if q.edns else 0
        if len(body) + opt_size > limit:
            body = wire.truncate(body, 12 + len(q.question))
        if q.edns:
            body = wire.add_opt(body, self._edns_udp_size, q.do)
        return body

    def servfail(self, data: bytes) -> bytes | None:
        """A SERVFAIL for ``data`` after an unexpected error, or None to drop."""
        try:
            return wire.error_reply(wire.parse_query(data), wire.SERVFAIL)
        except Exception:
            return None
