"""
The control plane's side of the control channel: an AMP listener that
registers workers into a :class:`~dnsgo.control.registry.WorkerRegistry`,
and the operations the management API sends to them (cache flushes,
configuration reloads, shutdowns), each worker in parallel with a deadline.
"""
from __future__ import annotations

import json
from collections.abc import Callable

import attrs
from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols import amp

from dnsgo.control.commands import (
    ClearCache,
    DumpCache,
    InspectCache,
    LoadCache,
    Heartbeat,
    Invalidate,
    InvalidRequest,
    NotRegistered,
    Register,
    ReloadConfig,
    Shutdown,
    StaleTerm,
    call,
    describe,
)
from dnsgo.control.election import NotLeader
from dnsgo.control.registry import WorkerRegistry, WorkerSession
from dnsgo.invalidation.flush import Flush

#: Seconds a worker has to answer a command from the control plane.
COMMAND_TIMEOUT = 5.0


@attrs.frozen
class Registration:
    """What a worker said about itself in Register, for ``config_text_for``."""

    worker_id: str
    cluster_name: str
    dns_address: str
    version: str
    capabilities: tuple[str, ...]
    peer: str


def _show(address) -> str:
    """host:port of a Twisted IP address."""
    host, port = getattr(address, "host", "?"), getattr(address, "port", "?")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ControlProtocol(amp.AMP):
    """One worker's connection to the control plane."""

    def __init__(self, control: ControlService) -> None:
        super().__init__()
        self._control = control
        self.worker_id: str | None = None
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._control._connections.add(self)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self._control._connections.discard(self)
        if self.worker_id is not None:
            self._control.registry.disconnected(self.worker_id, self)
        self.lost.callback(None)

    @Register.responder
    @defer.inlineCallbacks
    def register(self, worker_id, cluster_name, dns_address, version, capabilities, ha=None):
        """Answer the configuration and record the worker (in that order: a
        worker whose configuration cannot be made is not registered); with
        HA, learn from its witness's report (``ha``) and tell it our name."""
        if not worker_id.strip():
            raise InvalidRequest("worker_id must not be empty")
        who = Registration(
            worker_id, cluster_name, dns_address, version, tuple(capabilities), _show(self.transport.getPeer())
        )
        control = self._control
        try:
            text = yield defer.maybeDeferred(control.config_text_for, who)
        except Exception as e:
            control.log.failure("no configuration for worker {worker_id}", worker_id=worker_id)
            raise InvalidRequest(f"no configuration for {worker_id}: {e}") from None
        answer = {"config": text, "heartbeat_interval": control.heartbeat_interval}
        if control.election is not None:
            answer["node_id"] = control.election.settings.node_id
        if self not in control._connections:
            return answer
        if self.worker_id is not None and self.worker_id != worker_id:
            control.registry.disconnected(self.worker_id, self)
        self.worker_id = worker_id
        control.registry.register(
            worker_id,
            cluster_name=cluster_name,
            address=dns_address,
            version=version,
            capabilities=capabilities,
            peer=who.peer,
            protocol=self,
        )
        control.observe(worker_id, ha)
        return answer

    def _session(self) -> WorkerSession:
        """This connection's session; NotRegistered if it has none (any more)."""
        registry = self._control.registry
        if self.worker_id is None or self.worker_id not in registry:
            raise NotRegistered("register first")
        session = registry.session(self.worker_id)
        if session.protocol is not self:
            raise NotRegistered(f"{self.worker_id} is registered on another connection")
        return session

    @Heartbeat.responder
    def heartbeat(self, snapshot, ha=None):
        """Record the heartbeat and its snapshot (and, with HA, its witness's report)."""
        session = self._session()
        try:
            parsed = json.loads(snapshot)
        except ValueError as e:
            raise InvalidRequest(f"snapshot is not JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest("snapshot must be a JSON object")
        self._control.registry.heartbeat(session.worker_id, parsed)
        self._control.observe(session.worker_id, ha)
        return {}

    @Invalidate.responder
    def invalidate(self, flush, term=None):
        """Relay a flush to every other worker; count how many confirmed it.  With HA
        only the leader relays, and only if ``term`` (the worker's newest) is not newer."""
        session = self._session()
        control = self._control
        if control.election is not None:
            try:
                own = control.election.fence()
            except NotLeader as e:
                raise StaleTerm(str(e)) from None
            if term is not None and term > own:
                raise StaleTerm(f"the worker follows term {term}, newer than this control plane's {own}")
        d = control.broadcast_flush(flush, exclude=session.worker_id)

        def count(results):
            return {"workers": len(results), "failed": sum(1 for r in results if not r["success"])}

        return d.addCallback(count)


class _ControlFactory(protocol.ServerFactory):
    """Builds a :class:`_ControlProtocol` per worker connection."""

    noisy = False

    def __init__(self, control: ControlService) -> None:
        self._control = control

    def buildProtocol(self, addr):
        return _ControlProtocol(self._control)


class ControlService(service.Service):
    """
    The control plane's listener on ``host``:``port`` (0: any free port,
    then see ``bound_port``), and the operations on its workers.

    ``config_text_for(registration)`` gives the YAML text a registering
    worker runs with (a str, or a Deferred of one); it is asked again each
    time a worker registers, so it should return what the control plane
    wants now.  Workers heartbeat every ``heartbeat_interval`` seconds
    (default: a third of the registry's timeout).  Stopping the service
    closes every connection and empties ``registry``.

    With high availability the composition root sets ``election`` (a
    :class:`~dnsgo.control.election.Election`): the workers' witness
    reports go to it, and every command to the workers carries its term,
    or is not sent at all (:class:`~dnsgo.control.election.NotLeader`,
    raised at once) while this control plane is not the active one.
    """

    log = Logger(namespace="dnsgo.control")

    def __init__(
        self,
        registry: WorkerRegistry,
        config_text_for: Callable[[Registration], str | defer.Deferred],
        *,
        host: str,
        port: int,
        heartbeat_interval: float | None = None,
        command_timeout: float = COMMAND_TIMEOUT,
        reactor,
    ) -> None:
        self.registry = registry
        self.config_text_for = config_text_for
        self.host = host
        self.port = port
        self.heartbeat_interval = heartbeat_interval or registry.heartbeat_timeout / 3
        self.command_timeout = command_timeout
        self.bound_port: int | None = None
        self._reactor = reactor
        self._listener = None
        self._connections: set[_ControlProtocol] = set()
        #: The HA election (None without high availability).
        self.election = None

    def startService(self) -> None:
        """Listen for workers."""
        super().startService()
        self._listener = self._reactor.listenTCP(self.port, _ControlFactory(self), interface=self.host)
        self.bound_port = self._listener.getHost().port
        self.log.info("control plane listening on {host}:{port}", host=self.host, port=self.bound_port)

    def stopService(self) -> defer.Deferred:
        """Stop listening, close every worker connection; fires once all are gone."""
        super().stopService()
        waiting = [defer.maybeDeferred(self._listener.stopListening)] if self._listener else []
        self._listener = None
        for connection in list(self._connections):
            waiting.append(connection.lost)
            connection.transport.loseConnection()
        self.registry.close()
        return defer.gatherResults(waiting).addCallback(lambda _: None)

    # -- high availability -------------------------------------------------

    def observe(self, worker_id: str, report: str | None) -> None:
        """A worker's witness report (JSON text, or None) for the election, if there is one."""
        if self.election is None or not report:
            return
        try:
            parsed = json.loads(report)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            self.log.warn("worker {worker_id} sent a witness report that is not a JSON object", worker_id=worker_id)
            return
        self.election.observe(worker_id, parsed)

    def fenced(self) -> dict:
        """
        The extra arguments of a command to the workers: ``{"term": T}`` with
        HA, none without.  Raises NotLeader while this control plane may not
        command (with HA, only the active one may).
        """
        if self.election is None:
            return {}
        return {"term": self.election.fence()}

    # -- operations for the management API ---------------------------------

    def clear_cache(self, worker_ids: list[str] | None, flush: Flush) -> defer.Deferred:
        """
        Apply ``flush`` on the workers ``worker_ids`` (None: all of them),
        all at once.  Fires with one result per worker, in order:
        ``{workerId, success, cleared: [caches], count[, error]}``.
        Raises KeyError naming the unknown ids, NotLeader (HA) when this
        control plane is not the active one.
        """
        return self._send_flush(self._targets(worker_ids), flush, relayed=False)

    def broadcast_flush(self, flush: Flush, exclude: str | None = None) -> defer.Deferred:
        """
        Relay ``flush`` to every connected worker but ``exclude`` (the one
        that asked for it, in broadcast invalidation); each worker's
        invalidator receives it.
        """
        targets = [s for s in self.registry.sessions() if s.protocol is not None and s.worker_id != exclude]
        return self._send_flush(targets, flush, relayed=True)

    def reload_config(self, worker_ids: list[str] | None, config_text: str) -> defer.Deferred:
        """
        Send ``config_text`` to the workers ``worker_ids`` (None: all).  Fires
        with ``{workerId, success, applied[, error]}`` per worker.  Raises
        KeyError naming the unknown ids.
        """
        targets = self._targets(worker_ids)

        def applied(answer):
            return {"success": answer["applied"], "applied": answer["applied"]}

        arguments = {"config": config_text, **self.fenced()}
        return self._each(targets, ReloadConfig, arguments, applied, {"applied": False})

    def shutdown(self, worker_id: str) -> defer.Deferred:
        """
        Tell ``worker_id`` to stop and forget it.  Fires with
        ``{workerId, success[, error]}``.  Raises KeyError if it is unknown.
        """
        targets = self._targets([worker_id])

        def forget(results):
            self.registry.remove(worker_id)
            return results[0]

        arguments = self.fenced()
        return self._each(targets, Shutdown, arguments, lambda answer: {"success": True}, {}).addCallback(forget)

    def inspect_cache(self, worker_ids: list[str] | None, name: str, type: str | None) -> defer.Deferred:
        """
        Ask the workers ``worker_ids`` (None: all) what their L1 and L2 hold
        for ``name``.  Fires with ``{workerId, success, l1, l2, truncated[, error]}``
        per worker.  Raises KeyError naming the unknown ids.
        """

        def entries(answer):
            return {"success": True, **json.loads(answer["entries"])}

        arguments = {"name": name, "type": type or ""}
        return self._each(self._targets(worker_ids), InspectCache, arguments, entries,
                          {"l1": [], "l2": [], "truncated": False})

    def dump_shard(self, worker_id: str, shard: int) -> defer.Deferred:
        """
        Fires with ``(lines, shards)``: the dump lines of segment ``shard``
        of ``worker_id``'s L2 and how many segments it has; fails with the
        worker's error.  Raises KeyError if the worker is unknown.
        """
        session = self._targets([worker_id])[0]
        if session.protocol is None:
            return defer.fail(InvalidRequest(f"worker {worker_id} is not connected"))
        d = call(session.protocol, DumpCache, timeout=self.command_timeout, reactor=self._reactor, shard=shard)
        return d.addCallback(lambda answer: (answer["lines"], answer["shards"]))

    def load_cache(self, worker_ids: list[str] | None, lines: str) -> defer.Deferred:
        """
        Send dump entry lines to the workers ``worker_ids`` (None: all) to
        load.  Fires with ``{workerId, success, loaded, expired[, error]}``
        per worker.  Raises KeyError naming the unknown ids.
        """

        def counts(answer):
            return {"success": True, "loaded": answer["loaded"], "expired": answer["expired"]}

        return self._each(self._targets(worker_ids), LoadCache, {"lines": lines}, counts, {"loaded": 0, "expired": 0})

    # -- internals ---------------------------------------------------------

    def _targets(self, worker_ids: list[str] | None) -> list[WorkerSession]:
        """The sessions of ``worker_ids`` (None: all); KeyError naming the unknown ones."""
        if worker_ids is None:
            return self.registry.sessions()
        unknown = [worker_id for worker_id in worker_ids if worker_id not in self.registry]
        if unknown:
            raise KeyError(f"unknown worker ids: {', '.join(unknown)}")
        return [self.registry.session(worker_id) for worker_id in dict.fromkeys(worker_ids)]

    def _send_flush(self, targets, flush: Flush, *, relayed: bool) -> defer.Deferred:
        arguments = {"flush": flush, "relayed": relayed, **self.fenced()}

        def cleared(answer):
            return {"success": True, "cleared": list(answer["caches"]), "count": answer["cleared"]}

        return self._each(targets, ClearCache, arguments, cleared, {"cleared": [], "count": 0})

    def _each(self, targets, command, arguments, on_answer, on_failure) -> defer.Deferred:
        """
        Send ``command`` to every target at once; fires with one result dict
        per target, built by ``on_answer`` from its answer, or from
        ``on_failure`` plus ``success: False`` and ``error``.
        """

        def one(session: WorkerSession) -> defer.Deferred:
            worker_id = session.worker_id

            def answered(answer):
                return {"workerId": worker_id, **on_answer(answer)}

            def failed(failure):
                self.log.warn(
                    "worker {worker_id}: {command} failed: {why}",
                    worker_id=worker_id, command=command.__name__, why=describe(failure),
                )
                return {"workerId": worker_id, "success": False, **on_failure, "error": describe(failure)}

            if session.protocol is None:
                return defer.succeed({"workerId": worker_id, "success": False, **on_failure, "error": "not connected"})
            d = call(session.protocol, command, timeout=self.command_timeout, reactor=self._reactor, **arguments)
            return d.addCallbacks(answered, failed)

        return defer.gatherResults([one(session) for session in targets])
