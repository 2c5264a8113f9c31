"""
``twistd dnsgo``: the command-line options and the composition root.

``makeService`` reads the configuration and wires the parts together;
nothing else happens here.
"""
import sys

from twisted.application import service
from twisted.python import usage

from dnsgo.config import ConfigError, load_config


class Options(usage.Options):
    """Options of ``twistd dnsgo``."""

    synopsis = "[--config FILE] [--check-config]"
    longdesc = (
        "Serve DNS as a caching forwarder.  Without --config, the embedded "
        "default listens on 127.0.0.1:5353 (UDP and TCP) in standalone mode and "
        "forwards to the nameservers of /etc/resolv.conf.  See docs/configuration.md."
    )
    optParameters = [
        ["config", "c", None, "YAML configuration file (default: the embedded default)."],
        ["worker-index", None, None,
         "Internal: set by the worker supervisor on the worker processes it starts.", int],
    ]
    optFlags = [
        ["check-config", None, "Validate the configuration, print every problem, and exit (0 valid, 1 invalid)."],
    ]

    def postOptions(self) -> None:
        try:
            self.config = load_config(self["config"])
        except ConfigError as e:
            sys.stderr.write(e.report() + "\n")
            sys.exit(1)
        if self["check-config"]:
            sys.stdout.write(f"{self['config'] or '<embedded default>'}: configuration OK\n")
            sys.exit(0)


class Caches:
    """The local caches of one server process: L1 messages and L2 RRsets."""

    def __init__(self, messages, rrsets, negative_ttl: int) -> None:
        self.messages = messages
        self.rrsets = rrsets
        self.negative_ttl = negative_ttl


def build_caches(cache_config, on_prefetch=None, reactor=None) -> Caches:
    """L1 and L2 per the ``cache`` section (negative caching off means a 0 s negative TTL)."""
    from dnsgo.cache.message import MessageCache
    from dnsgo.cache.rrset import RRsetCache

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
        reactor=reactor,
    )
    rrsets = RRsetCache(
        max_size_mb=rc.max_size_mb,
        num_shards=rc.num_shards,
        min_ttl=mc.min_ttl,
        max_ttl=mc.max_ttl,
        negative_ttl=neg,
        reactor=reactor,
    )
    return Caches(messages, rrsets, neg)


class ServerRoot(service.MultiService):
    """
    The root of a running dnsgo: its child services plus the parts the
    management API and tests look at (``infra``, ``pool``, ``handler``).

    Attached to a twistd application, it installs the ``logging`` section's
    observer there, which twistd then uses.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.infra = self.pool = self.handler = self.caches = None
        self.identity = None

    def setServiceParent(self, parent):
        from twisted.logger import ILogObserver

        from dnsgo.logs import make_observer

        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, make_observer(self.config.logging))
        return super().setServiceParent(parent)


def build_service(config, reactor=None, reuse_port: bool = False) -> ServerRoot:
    """
    The whole server for ``config``: DNS listeners over the resolver chain.
    ``reuse_port`` lets several worker processes share the listen address.
    """
    from dnsgo.acl import ClientFilter
    from dnsgo.cache.failures import FailureCache
    from dnsgo.cache.infra import InfraCache
    from dnsgo.cache.rrset_resolver import RRsetResolver, fill_from_reply
    from dnsgo.handler import QueryHandler
    from dnsgo.resolve import Chain, ForwardingResolver
    from dnsgo.server import DNSService
    from dnsgo.upstream import UpstreamPool

    root = ServerRoot(config)
    servers = [(a.host, a.port) for a in config.upstreams]
    infra = InfraCache(servers, reactor=reactor)
    up = config.upstream
    pool = UpstreamPool(
        infra,
        timeout=up.timeout,
        retries=up.retries,
        strategy=up.strategy,
        parallel_count=up.parallel_count,
        udp_size=config.server.edns_udp_size,
        reactor=reactor,
    )
    caches = build_caches(config.cache, on_prefetch=lambda q: root.handler.prefetch(q), reactor=reactor)
    forwarder = ForwardingResolver(
        pool, on_reply=fill_from_reply(caches.rrsets), failures=FailureCache(reactor=reactor)
    )
    chain = Chain([RRsetResolver(caches.rrsets), forwarder])
    handler = QueryHandler(
        chain,
        ClientFilter(config.server.allow),
        edns_udp_size=config.server.edns_udp_size,
        message_cache=caches.messages,
        refresher=forwarder,
        serve_stale=config.cache.serve_stale,
        negative_ttl=caches.negative_ttl,
        query_log=config.logging.query_log,
        reactor=reactor,
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
    dns_service.setServiceParent(root)
    root.infra = infra
    root.pool = pool
    root.handler = handler
    root.caches = caches
    root.identity = identity_for(config, dns_service)
    return root


def identity_for(config, dns_service, environ=None):
    """This process's worker id, cluster name and DNS address."""
    import os

    from dnsgo.stats import Identity, default_worker_id, now_wall

    environ = os.environ if environ is None else environ
    listen = config.server.listen_address
    return Identity(
        worker_id=config.server.worker_id or default_worker_id(),
        cluster_name=config.server.cluster_name or environ.get("SITE_ID", ""),
        address=str(listen),
        started_at=now_wall(),
    )


def makeService(options: Options) -> service.MultiService:
    """
    twistd's entry point: the server itself, or with ``server.num_workers``
    above 1 the supervisor of that many worker processes.
    """
    config = options.config
    worker = options["worker-index"] is not None
    if config.server.num_workers > 1 and not worker:
        from dnsgo.workers import WorkerSupervisor

        return WorkerSupervisor(config, options["config"])
    return build_service(config, reuse_port=worker)
