"""
One query in, one reply out: the part shared by the UDP and TCP listeners.

The hot path works on bytes (:mod:`dnsgo.dns.wire`) and the L1 message cache.
A miss asks the resolver chain: an answer L2 assembles from its RRsets is
encoded from twisted.names objects; an upstream's reply (from a relaying
forwarder) is passed on as bytes (:func:`dnsgo.dns.wire.relay_body`).
Either is written to L1.  Serve-stale (RFC 8767) and prefetch hang off the
miss path too.
"""
from collections import Counter
from time import perf_counter
from typing import NamedTuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from dnsgo.dns import wire
from dnsgo.dns.names import wire_to_dotted
from dnsgo.serve.reply import normalize_negative
from dnsgo.resolve.query import FlaggedQuery
from dnsgo.resolve.chain import FinalAnswer, VerbatimReply
from dnsgo.serve.reply import encode_reply
from dnsgo.serve.stats import QueryStats
from dnsgo.upstream.pool import UpstreamReply

#: Zone transfers are an authoritative server's business.
_REFUSED_TYPES = frozenset({dns.AXFR, dns.IXFR})

TCP_LIMIT = 65535

#: How many distinct queries the handler remembers; when full it starts
#: over.  Only queries that hit L1 are remembered, so a stream of misses
#: (new names) does not churn it.  A working set larger than the table is
#: parsed again after every clearing, which costs a hit more than the parse
#: itself: with 10,500 names, a table of 4,096 cost 55.6k instructions per
#: hit, one of 16,384 (never full) 36.0k (bench/hit_instructions.py --names
#: 10500).  An entry is the query's bytes after the ID, its L1 key and a
#: 4-tuple (:class:`_Remembered`): about 285 bytes with the dict's slot
#: (4.5 MiB when full), where a whole parsed query cost 572.
_PARSED_LIMIT = 16384

#: RFC 8914 Extended DNS Error 3, "Stale Answer".
EDE_STALE = (3, "")


class _Remembered(NamedTuple):
    """
    What the hit path needs of a query it has parsed before: its L1 key,
    its :meth:`QueryHandler._udp_room`, its type (for the statistics), and
    ``opt_do``: None when an L1 hit is sent as it is, else the DO bit of
    the OPT record to append (an EDNS query when L1 keeps no OPT record).
    """

    key: bytes
    udp_room: int
    qtype: int
    opt_do: bool | None


class QueryHandler:
    """
    Answers one DNS query given as bytes.

    ``handle`` returns the reply bytes at once (errors, L1 hits), a Deferred
    firing with them (the miss path), or None to drop the packet.  Truncation
    and the OPT record are applied per client on every path.

    ``refresher`` is the resolver a prefetch asks (the forwarder: the L2
    cache would hand back the same ageing data).  ``serve_stale`` is the
    config section of that name, or None; ``shared_stale(q)``, when given,
    is asked for a stale reply body when L1 has no stale copy (a Deferred
    firing with the body, or None): the shared cache's expired-but-kept
    data (:func:`shared_stale_reply`).  ``counters`` counts prefetches,
    stale answers and miss-path outcomes.  ``max_ttl`` bounds every TTL a
    miss-path reply carries (a TTL with the top bit set is 0, RFC 2181 §8),
    whichever resolver built it.
    """

    log = Logger()

    def __init__(
        self,
        resolver,
        client_filter,
        *,
        edns_udp_size: int = 1232,
        message_cache=None,
        refresher=None,
        serve_stale=None,
        shared_stale=None,
        negative_ttl: int = 3600,
        max_ttl: int = 86400,
        query_log: bool = False,
        reactor,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._filter = client_filter
        self._edns_udp_size = edns_udp_size
        self._cache = message_cache
        self._refresher = refresher
        self._stale = serve_stale if serve_stale is not None and serve_stale.enabled else None
        self._shared_stale = shared_stale
        self._negative_ttl = negative_ttl
        self._max_ttl = max_ttl
        self._query_log = query_log
        self.counters: Counter = Counter()
        self.stats = QueryStats()
        self._parsed: dict[bytes, _Remembered] = {}
        self._add_opt = wire.opt_appender(edns_udp_size)
        #: L1 keeps this server's OPT record in its EDNS replies (MessageCache's opt_udp_size).
        self._opt_in_l1 = message_cache is not None and message_cache.opt_included
        if self._opt_in_l1 and message_cache.opt_udp_size != edns_udp_size:
            raise ValueError("the message cache's OPT record must carry this handler's edns_udp_size")

    def handle(self, data: bytes, client: str, tcp: bool = False, respond=None, reply_to=None):
        """
        Answer ``data`` from ``client`` (an IP string).  With ``respond``, a
        miss calls ``respond(reply, reply_to)`` when it is answered (and
        ``handle`` returns None for it) instead of returning a Deferred: the
        UDP listener's miss path makes no Deferred at all, and its hits no
        callback object (``reply_to`` is the client's address).
        """
        started = perf_counter()
        # Clients repeat the same query bytes but for the ID, and validity
        # does not depend on the ID: an ordinary query that hit L1 is
        # remembered under the bytes after its ID (unless the query log is
        # on), and its next hits need no parse.  Anything unusual takes the
        # full path below.
        remembered = self._parsed.get(data[2:])
        if remembered is not None and self._filter.allowed(client):
            key, room, qtype, opt_do = remembered
            hit = self._cache.lookup_usual(key, data)
            if hit is not None:
                if not tcp and len(hit) <= room:
                    if opt_do is not None:
                        hit = self._add_opt(hit, opt_do)
                    return self._counted(hit, qtype, tcp, started)
                return self._counted(self._hit_reply(hit, wire.parse_query(data), tcp, room), qtype, tcp, started)
        try:
            q = wire.parse_query(data)
        except wire.FormatError as e:
            if e.query_id is None:
                return None
            return self._counted(wire.error_reply(e, wire.FORMERR), 0, tcp, started)
        if not self._filter.allowed(client):
            return self._counted(wire.error_reply(q, wire.REFUSED), q.qtype, tcp, started)
        if q.opcode != dns.OP_QUERY:
            return self._counted(wire.error_reply(q, wire.NOTIMP), q.qtype, tcp, started)
        if q.edns_version:
            return self._counted(wire.error_reply(q, wire.BADVERS), q.qtype, tcp, started)
        if q.qtype in _REFUSED_TYPES:
            return self._counted(wire.error_reply(q, wire.REFUSED), q.qtype, tcp, started)
        if self._query_log:
            self._log_query(q, client, tcp)
        cache = self._cache
        if cache is not None:
            # A remembered query is here when lookup_usual declined it.
            hit = cache.lookup(q, data[:2], remembered is not None)
            if hit is not None:
                room = self._udp_room(q)
                if remembered is None and not self._query_log:  # remembered hits are not logged
                    self._remember_query(data, q, room)
                return self._counted(self._hit_reply(hit, q, tcp, room), q.qtype, tcp, started)
        return self._miss(q, tcp, started, respond, reply_to)

    def _remember_query(self, data: bytes, q: wire.QueryInfo, room: int) -> None:
        """Remember ``q``, parsed from ``data``, for its next hits (see ``handle``)."""
        parsed = self._parsed
        if len(parsed) >= _PARSED_LIMIT:
            parsed.clear()
        opt_do = None if self._opt_in_l1 or not q.edns else q.do
        parsed[data[2:]] = _Remembered(q.key, room, q.qtype, opt_do)

    def _counted(self, reply: bytes, qtype: int, tcp: bool, started: float) -> bytes:
        self.stats.record(reply[3] & 0xF, qtype, tcp, perf_counter() - started)
        return reply

    def _miss(self, q: wire.QueryInfo, tcp: bool, started: float, respond=None, reply_to=None):
        if self._stale is not None:
            resolved = self._resolve(q, self._resolver)
            resolved.addCallback(self._remember, q)
            d = self._race_stale(resolved, q, tcp).addCallback(self._counted, q.qtype, tcp, started)
            if respond is None:
                return d
            d.addCallbacks(respond, lambda failure: self._respond_failed(failure, q, respond, reply_to),
                           callbackArgs=(reply_to,))
            return None
        # The resolver calls back once; the L1 write and the reply's last
        # touches happen in that one call, which hands the reply to
        # ``respond`` or fires the one Deferred of this miss.
        d = None
        if respond is None:
            d = reply_to = defer.Deferred()
            respond = _fire

        def done(result) -> None:
            try:
                outcome = self._outcome(result, q)
                self._remember(outcome, q)
                reply = self._counted(self._finish(outcome[0], q, tcp), q.qtype, tcp, started)
            except Exception:
                if d is not None:
                    d.errback()  # the listener answers SERVFAIL and logs it
                else:
                    self._respond_failed(Failure(), q, respond, reply_to)
                return
            respond(reply, reply_to)

        self._ask(q, self._resolver, done)
        return d

    def _respond_failed(self, failure, q: wire.QueryInfo, respond, reply_to) -> None:
        """An unexpected error on the miss path: log it and answer SERVFAIL."""
        self.log.failure("unexpected error answering {name}", failure, name=wire.name_to_text(q.qname))
        respond(wire.error_reply(q, wire.SERVFAIL), reply_to)

    def _race_stale(self, resolved: defer.Deferred, q, tcp: bool) -> defer.Deferred:
        """
        RFC 8767: answer from stale data when resolution fails, or when it
        takes longer than ``client_timeout`` (resolution then goes on and
        refreshes the cache).
        """
        out = defer.Deferred()

        def answer(body, stale: bool) -> None:
            if not out.called:
                if stale:
                    self.counters["stale"] += 1
                out.callback(self._finish(body, q, tcp, ede=EDE_STALE if stale else None))

        def serve_stale(fallback) -> None:
            """Answer from L1's stale copy, else the shared cache's; else with ``fallback`` (None: keep waiting)."""
            stale = self._cache.lookup_stale(q, self._stale.answer_ttl)
            if stale is not None:
                answer(stale, True)
            elif self._shared_stale is not None:
                d = self._shared_stale(q)
                d.addErrback(lambda failure: None)
                d.addCallback(lambda body: answer(body, True) if body is not None else
                              fallback is not None and answer(fallback, False))
            elif fallback is not None:
                answer(fallback, False)

        timer = self._reactor.callLater(self._stale.client_timeout, serve_stale, None)

        def settled(outcome):
            body, failed, _ = outcome
            if timer.active():
                timer.cancel()
            if out.called:
                return
            if failed:
                serve_stale(body)
            else:
                answer(body, False)

        resolved.addCallback(settled)
        resolved.addErrback(lambda f: out.called or out.errback(f))
        return out

    def _resolve(self, q: wire.QueryInfo, resolver) -> defer.Deferred:
        """Ask ``resolver``; fires with the outcome (reply body without OPT, failed?, its layout or None)."""
        d = defer.Deferred()
        self._ask(q, resolver, lambda result: d.callback(self._outcome(result, q)))
        return d

    def _ask(self, q: wire.QueryInfo, resolver, done) -> None:
        """
        Ask ``resolver`` about ``q``; ``done`` is called once with the
        result or the exception: through the resolver's ``ask`` when it has
        one (no Deferred), else through ``IResolver.query``.
        """
        query = FlaggedQuery(q.qname, q.qtype, q.qclass, dnssec_ok=q.do, checking_disabled=q.cd)
        ask = getattr(resolver, "ask", None)
        if ask is not None:
            try:
                ask(query, done)
            except Exception as e:
                done(e)
            return
        d = defer.maybeDeferred(resolver.query, query)
        d.addCallbacks(done, lambda failure: done(failure.value))

    def _outcome(self, result, q: wire.QueryInfo):
        """What a resolver's result (or exception) means for the client: (body, failed?, layout or None)."""
        if isinstance(result, BaseException):
            return self._failed(result, q)
        if result.__class__ is UpstreamReply:
            # A relaying forwarder's answer: the upstream's bytes, passed on.
            try:
                return self._relayed(result.wire, q, result.layout)
            except Exception as e:
                return self._failed(e, q)
        try:
            answers, authority, additional = result
            authority = normalize_negative(dns.OK, answers, authority, self._negative_ttl)
            return encode_reply(q, dns.OK, answers, authority, additional, self._max_ttl), False, None
        except Exception as e:
            return self._failed(e, q)

    def _relayed(self, reply: bytes, q: wire.QueryInfo, layout=None):
        """The outcome of passing an upstream's ``reply`` on to ``q``'s client; raises where its bytes do not hold."""
        body, layout = wire.relay_reply(reply, q, self._max_ttl, self._negative_ttl, layout)
        return body, body[3] & 0xF == wire.SERVFAIL, layout

    def _failed(self, error: BaseException, q: wire.QueryInfo):
        if isinstance(error, FinalAnswer):
            authority = normalize_negative(error.rcode, error.answers, error.authority, self._negative_ttl)
            body = encode_reply(q, error.rcode, error.answers, authority, error.additional, self._max_ttl)
            return body, error.rcode == dns.ESERVER, None
        if isinstance(error, VerbatimReply):
            try:
                return self._relayed(error.reply, q)
            except Exception as e:
                error = e
        if not isinstance(error, defer.TimeoutError):
            self.log.failure(
                "resolving {name} {qtype} failed",
                Failure(error, error.__class__, error.__traceback__),
                name=wire.name_to_text(q.qname),
                qtype=q.qtype,
            )
        self.counters["servfail"] += 1
        return encode_reply(q, dns.ESERVER, (), (), ()), True, None

    def _remember(self, outcome, q: wire.QueryInfo):
        """Write a miss-path reply to L1 (the cache decides what it keeps)."""
        body, failed, layout = outcome
        if self._cache is not None and not failed:
            try:
                self._cache.store(q, body, layout)
            except Exception:
                self.log.failure("L1 store failed; reply served uncached")
        return outcome

    def prefetch(self, q: wire.QueryInfo) -> defer.Deferred:
        """
        Refresh ``q``'s L1 entry (and, through the forwarder's reply hook,
        L2) in the background.  Never fails.
        """
        self.counters["prefetch"] += 1
        d = self._resolve(q, self._refresher or self._resolver)
        d.addCallback(self._remember, q)
        d.addErrback(lambda f: self.log.failure("prefetch failed", f))
        d.addCallback(lambda _: None)
        return d

    def _udp_limit(self, q: wire.QueryInfo) -> int:
        """The largest reply ``q``'s client takes over UDP: 512 without EDNS, else its size or this server's, the smaller."""
        if not q.edns:
            return 512
        return q.udp_size if q.udp_size < self._edns_udp_size else self._edns_udp_size

    def _udp_room(self, q: wire.QueryInfo) -> int:
        """
        The largest L1 hit for ``q`` that goes over UDP as it is but for the
        OPT record (see _finish): the client's limit, less the OPT when L1
        does not include it.
        """
        limit = self._udp_limit(q)
        return limit - wire.APPENDED_OPT_LENGTH if q.edns and not self._opt_in_l1 else limit

    def _hit_reply(self, hit: bytes, q: wire.QueryInfo, tcp: bool, room: int) -> bytes:
        """The reply to send for an L1 hit (``room``: :meth:`_udp_room`)."""
        if not tcp and len(hit) <= room:
            # The usual hit: it fits, and only lacks the OPT if L1 leaves it out.
            return hit if self._opt_in_l1 or not q.edns else self._add_opt(hit, q.do)
        if self._opt_in_l1 and q.edns:
            hit = wire.drop_appended_opt(hit)
        return self._finish(hit, q, tcp)

    def _finish(self, body: bytes, q: wire.QueryInfo, tcp: bool, ede=None) -> bytes:
        """Truncate for this client if needed and add its OPT record."""
        limit = TCP_LIMIT if tcp else self._udp_limit(q)
        opt_size = (11 + (4 + 2 + len(ede[1]) if ede else 0)) if q.edns else 0
        if len(body) + opt_size > limit:
            body = wire.truncate(body, 12 + len(q.question))
        if q.edns:
            if ede is None:
                return self._add_opt(body, q.do)
            body = wire.add_opt(body, self._edns_udp_size, q.do, ede=ede)
        return body

    def _log_query(self, q: wire.QueryInfo, client: str, tcp: bool) -> None:
        self.log.info(
            "query {client} {name} {qtype} {proto}",
            client=client,
            name=wire.name_to_text(q.qname),
            qtype=dns.QUERY_TYPES.get(q.qtype, q.qtype),
            proto="tcp" if tcp else "udp",
        )

    def servfail(self, data: bytes) -> bytes | None:
        """A SERVFAIL for ``data`` after an unexpected error, or None to drop."""
        try:
            return wire.error_reply(wire.parse_query(data), wire.SERVFAIL)
        except Exception:
            return None


def _fire(reply: bytes, d: defer.Deferred) -> None:
    """The ``respond`` of a miss asked without one: fire its Deferred with the reply."""
    d.callback(reply)


def shared_stale_reply(store, *, max_stale: float, answer_ttl: int, max_ttl: int):
    """
    The ``shared_stale`` hook of :class:`QueryHandler` over a
    :class:`~dnsgo.cache.shared.SharedRRsetStore`: ``q``'s RRset from Redis
    if its DNS TTL ran out less than ``max_stale`` seconds ago (RFC 8767:
    every TTL ``answer_ttl``), as a reply body, or None.  Redis keeps a
    value ``ttl × ttl_multiplier`` seconds, which bounds how stale it gets.
    """

    def reply(q: wire.QueryInfo) -> defer.Deferred:
        d = store.get_stale(wire_to_dotted(q.qname), q.qtype, q.qclass, max_stale=max_stale, answer_ttl=answer_ttl)
        d.addCallback(lambda records: encode_reply(q, dns.OK, records, (), (), max_ttl) if records else None)
        return d

    return reply
