"""
The three ways to run dnsgo, put together from the building blocks:

* **standalone** (``twistd dnsgo``): one serving process with the API, or,
  with ``server.num_workers`` above 1, a supervisor that runs a control
  plane on a loopback port, the API, and that many worker processes;
* **control** (``twistd dnsgo control``): the control channel and the API;
* **worker** (``twistd dnsgo worker``): registers with a control plane,
  receives its configuration, then serves DNS.
"""
import os

import attrs
from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import Logger

import dnsgo
from dnsgo.api import ManagementAPI, check_listen_allowed
from dnsgo.api.control_view import ControlClusterView
from dnsgo.api.local_view import LocalClusterView
from dnsgo.api.snapshot import worker_snapshot
from dnsgo.app.assemble import BackendService, PartsRoot, build_service, build_shared, identity_for, shared_signer
from dnsgo.app.ha import build_election, build_witness, control_addresses, ha_enabled
from dnsgo.app.identity import default_worker_id
from dnsgo.app.logs import install_observer
from dnsgo.app.workers import WorkerSupervisor
from dnsgo.cache.shared import SharedRRsetStore
from dnsgo.config import ConfigError, LoggingConfig, api_token, parse_config
from dnsgo.control.links import ControlLinks
from dnsgo.control.registry import WorkerRegistry
from dnsgo.control.server import ControlService
from dnsgo.invalidation.flush import apply_locally

log = Logger(namespace="dnsgo.app.roles")


class StartupError(Exception):
    """A role cannot start; the message says why (no traceback is shown)."""


def api_service(config, view, *, reactor, environ=None):
    """The management API on ``api.listen_address``, or None when disabled."""
    if not config.api.enabled:
        return None
    try:
        token = api_token(config.api, environ if environ is not None else os.environ)
    except ConfigError as e:
        raise StartupError(e.report()) from None
    listen = config.api.listen_address
    try:
        check_listen_allowed(listen.host, token)
    except ValueError as e:
        raise StartupError(f"api.listen_address: {e}") from None
    # APISite: token checked before a body is read, bodies capped, no query strings in the access log.
    site = ManagementAPI(view, token=token, reactor=reactor).site(max_load_body=int(config.api.max_load_mb * 2**20))
    api = internet.TCPServer(listen.port, site, interface=listen.host)
    api.setName("api")
    return api


def build_standalone(config, config_path, reactor=None):
    """``twistd dnsgo``: one process serving DNS and the API, or a supervisor of workers."""
    if reactor is None:
        from twisted.internet import reactor  # the root picks the reactor; nothing below does
    if config.server.num_workers > 1:
        return build_supervisor(config, config_path, reactor=reactor)
    root = build_service(config, reactor=reactor)
    api = api_service(config, LocalClusterView(root, reactor=reactor), reactor=reactor)
    if api is not None:
        api.setServiceParent(root)
    return root


def _config_text(config_path) -> str:
    if config_path is None:
        return ""
    with open(config_path, encoding="utf-8") as f:
        return f.read()


@attrs.frozen
class ControlParts:
    """The parts of a control plane, built together by :func:`build_control`."""

    config: object
    registry: WorkerRegistry
    control: ControlService
    backend: object = None
    shared_store: SharedRRsetStore | None = None


class ControlRoot(PartsRoot):
    """The control plane's services, over its :class:`ControlParts`."""


def build_control(config, config_path, *, host=None, port=None, heartbeat_interval=None, reactor=None,
                  with_api: bool = True, with_ha: bool = True) -> ControlRoot:
    """
    ``twistd dnsgo control``: the control channel, the API, (hybrid) a Redis
    view of the shared cache, and (``high_availability``, unless not
    ``with_ha``) the election among control planes (docs/ha.md).
    """
    if reactor is None:
        from twisted.internet import reactor  # the root picks the reactor; nothing below does
    text = _config_text(config_path)
    registry = WorkerRegistry(config.control.heartbeat_timeout, reactor=reactor)
    address = config.control.grpc_address
    control = ControlService(
        registry,
        lambda registration: text,
        host=host if host is not None else address.host,
        port=port if port is not None else address.port,
        heartbeat_interval=heartbeat_interval,
        reactor=reactor,
    )
    control.setName("control")
    backend = shared_store = None
    if config.cache.mode == "hybrid":
        backend, shared_store = build_shared(config, shared_signer(config), reactor=reactor)
    root = ControlRoot(ControlParts(config, registry, control, backend, shared_store))
    if backend is not None:
        BackendService(backend).setServiceParent(root)
    control.setServiceParent(root)
    if with_ha and ha_enabled(config):
        try:
            election = build_election(config, control, dict(os.environ), reactor=reactor)
        except ValueError as e:
            raise StartupError(str(e)) from None
        election.setServiceParent(root)
    if with_api:
        view = ControlClusterView(root, reactor=reactor)
        api = api_service(config, view, reactor=reactor)
        if api is not None:
            api.setServiceParent(root)
    return root


def build_supervisor(config, config_path, reactor=None):
    """
    ``num_workers`` > 1: a control plane on a loopback port, the API over it,
    and the worker processes (``twistd dnsgo worker``) under procmon.
    """
    if reactor is None:
        from twisted.internet import reactor  # the root picks the reactor; nothing below does
    # The supervisor's own control plane is alone by design: no HA election.
    control = build_control(config, config_path, host="127.0.0.1", port=0, heartbeat_interval=1.0,
                            reactor=reactor, with_ha=False)
    supervisor = WorkerSupervisor(config, config_path, control=control, reactor=reactor)
    return supervisor


def merge_worker_config(control_text: str, local_config, environ, *, worker_id=None, cluster_name=None):
    """
    The configuration a worker runs: the control plane's, with the worker's
    own ``server`` section when it has a local file, one process, and its
    identity.
    """
    config = parse_config(control_text, "<control plane>", environ)
    server = local_config.server if local_config is not None else config.server
    server = attrs.evolve(
        server,
        num_workers=1,
        worker_id=worker_id or server.worker_id or environ.get("WORKER_ID", ""),
        cluster_name=cluster_name or server.cluster_name or environ.get("SITE_ID", ""),
    )
    return attrs.evolve(config, server=server)


class WorkerRoot(service.MultiService):
    """A worker process: the control client, and the server once configured."""

    log = Logger(namespace="dnsgo.worker")

    def __init__(self, local_config, environ, *, worker_id, cluster_name, reactor) -> None:
        super().__init__()
        self.local_config = local_config
        self.environ = environ
        self.worker_id = worker_id
        self.cluster_name = cluster_name
        self.reactor = reactor
        self.server = None
        self.client = None

    def setServiceParent(self, parent):
        install_observer(parent, self.local_config.logging if self.local_config is not None else LoggingConfig())
        return super().setServiceParent(parent)

    def apply_config(self, text: str):
        """The first configuration from the control plane: build and start the server."""
        try:
            config = merge_worker_config(text, self.local_config, self.environ,
                                         worker_id=self.worker_id, cluster_name=self.cluster_name)
        except ConfigError as e:
            self.log.error("configuration from the control plane is invalid:\n{report}", report=e.report())
            raise ValueError(e.report()) from None
        self.server = build_service(config, reuse_port=True, reactor=self.reactor, environ=self.environ,
                                    broadcast=self.broadcast)
        self.server.setServiceParent(self)
        return None

    def broadcast(self, flush) -> defer.Deferred:
        """Strategy ``broadcast``: the control plane relays ``flush`` to the other workers."""
        return self.client.invalidate(flush)

    def reload_config(self, text: str):
        """A new configuration: start a new server beside the old (SO_REUSEPORT), then stop the old."""
        try:
            config = merge_worker_config(text, self.local_config, self.environ,
                                         worker_id=self.worker_id, cluster_name=self.cluster_name)
        except ConfigError as e:
            raise ValueError(e.report()) from None
        old = self.server
        self.server = build_service(config, reuse_port=True, reactor=self.reactor, environ=self.environ,
                                    broadcast=self.broadcast)
        self.server.setServiceParent(self)
        if old is not None:
            return defer.maybeDeferred(old.disownServiceParent).addCallback(lambda _: True)
        return True

    def clear(self, flush, relayed: bool) -> dict:
        """
        A ClearCache command: apply ``flush`` here.  A flush another worker
        broadcast goes through this worker's invalidator (its receiving side
        counts it); one from the API is applied to the caches directly.
        """
        caches = sorted(flush.caches)
        if self.server is None:
            return {"cleared": 0, "caches": caches}
        receive = getattr(self.server.invalidator, "receive", None)
        count = receive(flush) if relayed and receive is not None else apply_locally(flush, self.server.caches)
        return {"cleared": count, "caches": caches}

    def snapshot(self) -> dict:
        """The stats snapshot for heartbeats."""
        if self.server is None:
            return {"workerId": self.worker_id, "serving": False}
        return worker_snapshot(self.server, self.reactor)


def build_worker(control_address: str, local_config, *, worker_id=None, cluster_name=None, environ=None,
                 reactor=None) -> WorkerRoot:
    """``twistd dnsgo worker``: register with the control plane, then serve what it configures."""
    if reactor is None:
        from twisted.internet import reactor  # the root picks the reactor; nothing below does
    environ = dict(os.environ if environ is None else environ)
    try:
        controls = control_addresses(control_address)
    except ValueError as e:
        raise StartupError(f"control plane address {control_address!r}: {e}") from None
    if local_config is not None:
        ident = identity_for(local_config, environ)
        worker_id = worker_id or ident.worker_id
        cluster_name = cluster_name or ident.cluster_name
        dns_address = str(local_config.server.listen_address)
    else:
        worker_id = worker_id or environ.get("WORKER_ID") or default_worker_id()
        cluster_name = cluster_name or environ.get("SITE_ID", "")
        dns_address = ""
    root = WorkerRoot(local_config, environ, worker_id=worker_id, cluster_name=cluster_name, reactor=reactor)

    def stop():
        reactor.callLater(0, reactor.stop)

    # One link per control plane (several with HA), sharing one witness: docs/ha.md.
    root.client = ControlLinks(
        [(control.host, control.port) for control in controls],
        witness=build_witness(local_config, worker_id, reactor=reactor),
        worker_id=worker_id,
        cluster_name=cluster_name,
        dns_address=dns_address,
        version=dnsgo.__version__,
        snapshot=root.snapshot,
        on_config=root.apply_config,
        on_clear=root.clear,
        on_reload=root.reload_config,
        on_shutdown=stop,
        cache_tools=lambda: root.server.cache_tools if root.server is not None else None,
        reactor=reactor,
    )
    root.client.setServiceParent(root)

    def failed(failure):
        log.failure("no usable configuration from the control plane; stopping", failure)
        stop()

    root.client.ready.addErrback(failed)
    return root
