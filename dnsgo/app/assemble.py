"""
Building one serving process: the caches, the resolver chain, the listeners,
the invalidator and (in hybrid mode) the shared cache, built together into
the frozen :class:`ServerParts` of a :class:`ServerRoot`.  The roles
(:mod:`dnsgo.app.roles`) put these roots together with the control plane
and the management API, whose views (:mod:`dnsgo.api.local_view`,
:mod:`dnsgo.api.snapshot`) own the shapes of what it shows.
"""
import os

import attrs
from twisted.application import service
from twisted.internet import defer

from dnsgo.app.cache_tools import CacheTools
from dnsgo.app.identity import Identity, default_worker_id, now_wall
from dnsgo.app.logs import install_observer
from dnsgo.app.persist import PersistService, persist_file
from dnsgo.cache.message import MessageCache
from dnsgo.cache.rrset import RRsetCache
from dnsgo.cache.shared import SharedRRsetStore
from dnsgo.cache.signing import Signer
from dnsgo.config import secret_password, signing_key
from dnsgo.invalidation.strategies import build_invalidator, unique_origin_id
from dnsgo.redis.factory import build_backend
from dnsgo.resolve.chain import Chain
from dnsgo.resolve.forwarding import ForwardingResolver
from dnsgo.resolve.hybrid import HybridRRsetResolver, fill_hybrid
from dnsgo.resolve.l2 import RRsetResolver, fill_from_reply
from dnsgo.serve.acl import ClientFilter
from dnsgo.serve.handler import QueryHandler, shared_stale_reply
from dnsgo.serve.listeners import DNSService
from dnsgo.upstream.failures import FailureCache
from dnsgo.upstream.infra import InfraCache
from dnsgo.upstream.pool import UpstreamPool
from dnsgo.upstream.sockets import SocketPoolSettings


@attrs.frozen
class Caches:
    """The local caches of one server process: L1 messages, L2 RRsets, remembered failures."""

    messages: MessageCache | None
    rrsets: RRsetCache | None
    negative_ttl: int
    failures: FailureCache | None = None


def build_caches(cache_config, on_prefetch=None, *, opt_udp_size: int | None = None, reactor) -> Caches:
    """
    L1 and L2 per the ``cache`` section (negative caching off means a 0 s
    negative TTL); L1 keeps an OPT record of ``opt_udp_size`` in its EDNS
    replies (the server's ``edns_udp_size``), when given.
    """
    neg = cache_config.negative_cache.ttl if cache_config.negative_cache.enabled else 0
    mc, rc = cache_config.message_cache, cache_config.rrset_cache
    pf, stale = cache_config.prefetch, cache_config.serve_stale
    messages = MessageCache(
        max_size_mb=mc.max_size_mb,
        num_shards=mc.num_shards,
        min_ttl=mc.min_ttl,
        max_ttl=mc.max_ttl,
        negative_ttl=neg,
        max_stale=stale.max_stale if stale.enabled else 0.0,
        prefetch_hits=pf.threshold_hits if pf.enabled else None,
        prefetch_ttl_pct=pf.threshold_ttl_pct,
        on_prefetch=on_prefetch,
        eviction=mc.eviction,
        opt_udp_size=opt_udp_size,
        reactor=reactor,
    )
    rrsets = RRsetCache(
        max_size_mb=rc.max_size_mb,
        num_shards=rc.num_shards,
        min_ttl=mc.min_ttl,
        max_ttl=mc.max_ttl,
        negative_ttl=neg,
        eviction=rc.eviction,
        reactor=reactor,
    )
    return Caches(messages, rrsets, neg, FailureCache(reactor=reactor))


@attrs.frozen
class ServerParts:
    """
    The parts of one serving process, built together by :func:`build_service`
    (nothing is filled in later): what the management API, the control
    client and the tests look at.  ``backend`` and ``shared_store`` are None
    outside hybrid mode.
    """

    config: object
    identity: Identity
    infra: InfraCache
    pool: UpstreamPool
    caches: Caches
    handler: QueryHandler
    invalidator: object
    dns_service: DNSService
    backend: object = None
    shared_store: SharedRRsetStore | None = None
    cache_tools: CacheTools | None = None


class PartsRoot(service.MultiService):
    """
    A process root: its child services and its frozen parts (``root.parts``,
    whose attributes ``root.<name>`` reads too, read-only).

    Attached to a twistd application, it installs the observer of the parts'
    ``config.logging`` section there, which twistd then uses.
    """

    def __init__(self, parts) -> None:
        super().__init__()
        self.parts = parts

    def __getattr__(self, name: str):
        # Only called for names the service itself lacks: the parts, read-only.
        parts = self.__dict__.get("parts")
        if parts is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(parts, name)

    def setServiceParent(self, parent):
        install_observer(parent, self.parts.config.logging)
        return super().setServiceParent(parent)


class ServerRoot(PartsRoot):
    """One serving dnsgo process, over its :class:`ServerParts`."""


def identity_for(config, environ=None) -> Identity:
    """This process's worker id, cluster name and DNS address."""
    environ = os.environ if environ is None else environ
    return Identity(
        worker_id=config.server.worker_id or environ.get("WORKER_ID", "") or default_worker_id(),
        cluster_name=config.server.cluster_name or environ.get("SITE_ID", ""),
        address=str(config.server.listen_address),
        started_at=now_wall(),
    )


def _no_peers(flush) -> defer.Deferred:
    """Broadcast from a process with no control plane: there is nobody to tell."""
    return defer.succeed(None)


def build_service(config, reactor=None, reuse_port: bool = False, environ=None, broadcast=None) -> ServerRoot:
    """
    The whole server for ``config``: DNS listeners over the resolver chain
    with L1, L2 (local, or local + Redis in hybrid mode) and the forwarder.
    ``reuse_port`` lets several worker processes share the listen address;
    ``broadcast(flush)`` hands flushes to the control plane (strategy
    ``broadcast``; a process without one has no peers to tell).  A
    composition root: without ``reactor`` it takes the global one, and
    passes it to every part.
    """
    if reactor is None:
        from twisted.internet import reactor  # the root picks the reactor; nothing below does
    identity = identity_for(config, environ)
    infra = InfraCache([(a.host, a.port) for a in config.upstreams], reactor=reactor)
    up = config.upstream
    pool = UpstreamPool(
        infra,
        timeout=up.timeout,
        retries=up.retries,
        strategy=up.strategy,
        parallel_count=up.parallel_count,
        udp_size=config.server.edns_udp_size,
        socket_pool=SocketPoolSettings(up.socket_pool.sockets, up.socket_pool.max_uses, up.socket_pool.max_age)
        if up.socket_pool.sockets else None,
        tcp_fallback_after=up.tcp_fallback_after or None,
        reactor=reactor,
    )
    handler = None  # the prefetch hook of L1 calls the handler built below
    caches = build_caches(config.cache, on_prefetch=lambda q: handler.prefetch(q),
                          opt_udp_size=config.server.edns_udp_size, reactor=reactor)
    signer = backend = shared_store = None
    if config.cache.mode == "hybrid":
        signer = shared_signer(config)
        backend, shared_store = build_shared(config, signer, reactor=reactor)
        l2 = HybridRRsetResolver(caches.rrsets, shared_store, reactor=reactor)
        on_reply = fill_hybrid(caches.rrsets, shared_store)
    else:
        l2 = RRsetResolver(caches.rrsets)
        on_reply = fill_from_reply(caches.rrsets)
    forwarder = ForwardingResolver(pool, on_reply=on_reply, failures=caches.failures, relay=True)
    stale = config.cache.serve_stale
    handler = QueryHandler(
        Chain([l2, forwarder]),
        ClientFilter(config.server.allow),
        edns_udp_size=config.server.edns_udp_size,
        message_cache=caches.messages,
        refresher=forwarder,
        serve_stale=config.cache.serve_stale,
        shared_stale=shared_stale_reply(
            shared_store, max_stale=stale.max_stale, answer_ttl=stale.answer_ttl, max_ttl=config.cache.message_cache.max_ttl,
        ) if shared_store is not None and stale.enabled else None,
        negative_ttl=caches.negative_ttl,
        max_ttl=config.cache.message_cache.max_ttl,
        query_log=config.logging.query_log,
        reactor=reactor,
    )
    invalidator = build_invalidator(
        config.cache.invalidation,
        caches,
        origin_id=unique_origin_id(identity.worker_id),
        backend=backend,
        shared_store=shared_store,
        send=broadcast or _no_peers,
        reactor=reactor,
        signer=signer,
    )
    listen = config.server.listen_address
    dns_service = DNSService(
        handler,
        listen.host,
        listen.port,
        enable_tcp=config.server.enable_tcp,
        reuse_port=reuse_port,
        tcp_idle_timeout=config.server.tcp_idle_timeout,
        tcp_max_connections=config.server.tcp_max_connections,
        reactor=reactor,
    )
    dns_service.setName("dns")
    cache_tools = CacheTools(caches, identity.worker_id, reactor=reactor)
    root = ServerRoot(ServerParts(
        config=config, identity=identity, infra=infra, pool=pool, caches=caches, handler=handler,
        invalidator=invalidator, dns_service=dns_service, backend=backend, shared_store=shared_store,
        cache_tools=cache_tools,
    ))
    if backend is not None:
        BackendService(backend).setServiceParent(root)
        ClockSyncService(shared_store, reactor=reactor).setServiceParent(root)
    ClosingService(pool.close).setServiceParent(root)
    if isinstance(invalidator, service.Service):
        invalidator.setServiceParent(root)
    if config.cache.persist_path and caches.rrsets is not None:
        # Before the DNS service: loaded before the first query, written after the last.
        PersistService(cache_tools, persist_file(config.cache.persist_path, identity.worker_id)).setServiceParent(root)
    dns_service.setServiceParent(root)
    return root


def shared_signer(config) -> Signer | None:
    """The :class:`~dnsgo.cache.signing.Signer` of ``cache.shared_cache.signing_key`` (or its file), or None."""
    key = signing_key(config.cache.shared_cache)
    return Signer(key) if key else None


def build_shared(config, signer=None, *, reactor):
    """The Redis backend and the shared RRset store of hybrid mode (values signed by ``signer``, if any)."""
    shared = config.cache.shared_cache
    mc = config.cache.message_cache
    backend = build_backend(shared, secret_password(shared), reactor=reactor)
    neg = config.cache.negative_cache.ttl if config.cache.negative_cache.enabled else 0
    store = SharedRRsetStore(
        backend,
        key_prefix=shared.key_prefix,
        ttl_multiplier=shared.ttl_multiplier,
        min_ttl=mc.min_ttl,
        max_ttl=mc.max_ttl,
        negative_ttl=neg,
        signer=signer,
        reactor=reactor,
    )
    return backend, store


class BackendService(service.Service):
    """Starts and stops a Redis backend with the process (start never fails)."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def startService(self) -> None:
        super().startService()
        self._backend.start()

    def stopService(self):
        super().stopService()
        return self._backend.stop()


class ClosingService(service.Service):
    """Calls ``close()`` when the process stops (the upstream pool's pooled sockets)."""

    def __init__(self, close) -> None:
        self._close = close

    def stopService(self):
        super().stopService()
        self._close()


class ClockSyncService(service.Service):
    """
    Keeps the shared store's offset to Redis's clock: a sample every
    ``interval`` seconds, and every ``retry`` seconds until the first one
    succeeds (Redis may not be reachable yet at start).
    """

    def __init__(self, store, *, reactor, interval: float = 60.0, retry: float = 1.0) -> None:
        self._store = store
        self._reactor = reactor
        self._interval = interval
        self._retry = retry
        self._call = None

    def startService(self) -> None:
        super().startService()
        self._sample()

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _sample(self) -> None:
        self._call = None
        self._store.sync_clock().addCallback(self._again)

    def _again(self, synced: bool) -> None:
        if self.running:
            self._call = self._reactor.callLater(self._interval if synced else self._retry, self._sample)
