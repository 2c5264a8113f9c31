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
        self.infra = self.pool = self.handler = None

    def setServiceParent(self, parent):
        from twisted.logger import ILogObserver

        from dnsgo.logs import make_observer

        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, make_observer(self.config.logging))
        return super().setServiceParent(parent)


def build_service(config, reactor=None) -> ServerRoot:
    """The whole server for ``config``: DNS listeners over the resolver chain."""
    from dnsgo.acl import ClientFilter
    from dnsgo.cache.infra import InfraCache
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
    chain = Chain([ForwardingResolver(pool)])
    handler = QueryHandler(
        chain,
        ClientFilter(config.server.allow),
        edns_udp_size=config.server.edns_udp_size,
        query_log=config.logging.query_log,
        reactor=reactor,
    )
    listen = config.server.listen_address
    dns_service = DNSService(
        handler,
        listen.host,
        listen.port,
        enable_tcp=config.server.enable_tcp,
        tcp_idle_timeout=config.server.tcp_idle_timeout,
        tcp_max_connections=config.server.tcp_max_connections,
        reactor=reactor,
    )
    dns_service.setName("dns")
    dns_service.setServiceParent(root)
    root.infra = infra
    root.pool = pool
    root.handler = handler
    return root


def makeService(options: Options) -> ServerRoot:
    """twistd's entry point."""
    return build_service(options.config)
