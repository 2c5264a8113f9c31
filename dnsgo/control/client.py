"""
The worker's side of the control channel: connect to the control plane
(again and again, with back-off, for as long as the service runs),
register, take the configuration, send heartbeats with the stats snapshot,
and carry out the control plane's commands through the worker's hooks.

A worker keeps serving while the control plane is away; when it comes back
the worker registers again by itself.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.protocols import amp

from dnsgo.control.commands import (
    CAPABILITIES,
    ClearCache,
    CommandTimeout,
    HandlerFailed,
    Heartbeat,
    Invalidate,
    DumpCache,
    InspectCache,
    InvalidRequest,
    LoadCache,
    NotRegistered,
    PreVote,
    Register,
    ReloadConfig,
    Renew,
    RequestVote,
    Shutdown,
    call,
    describe,
)
from dnsgo.invalidation.flush import Flush

#: Reconnection delays: from 0.2 s, doubling, up to 5 s (plus up to 0.1 s of jitter).
RETRY_POLICY = backoffPolicy(initialDelay=0.1, maxDelay=5.0, factor=2.0, jitter=lambda: random.uniform(0, 0.1))
#: Seconds the control plane has to answer Register and Heartbeat.
COMMAND_TIMEOUT = 10.0
#: The longest wait before a refused registration is tried again (on a new connection).
MAX_REGISTER_DELAY = 5.0


class _WorkerProtocol(amp.AMP):
    """The worker's connection to the control plane; commands go to the client."""

    def __init__(self, client: ControlClient) -> None:
        super().__init__()
        self._client = client

    def connectionMade(self) -> None:
        super().connectionMade()
        self._client._connected(self)

    def connectionLost(self, reason) -> None:
        # The client first, so that the commands AMP now fails are known to
        # belong to a lost connection and are not reported one by one.
        self._client._lost(self)
        super().connectionLost(reason)

    @ClearCache.responder
    def clear_cache(self, flush, relayed=False, term=None):
        self._client._admit(term, "ClearCache")
        return self._client._clear(flush, bool(relayed))

    @ReloadConfig.responder
    def reload_config(self, config, term=None):
        self._client._admit(term, "ReloadConfig")
        return self._client._reload(config)

    @PreVote.responder
    def pre_vote(self, term, candidate):
        return self._client._witness_of("PreVote").pre_vote(term, candidate).to_amp()

    @RequestVote.responder
    def request_vote(self, term, candidate):
        return self._client._witness_of("RequestVote").vote(term, candidate).to_amp()

    @Renew.responder
    def renew(self, term, leader, lease, leader_api, voters):
        witness = self._client._witness_of("Renew")
        try:
            electorate = json.loads(voters)
            listed = [(str(w), str(s)) for w, s in electorate["voters"]]
            revision = int(electorate["rev"])
        except (ValueError, TypeError, KeyError) as e:
            raise InvalidRequest(f"voters must be a JSON object with rev and voters: {e}") from None
        return witness.renew(term, leader, lease, listed, leader_api, revision).to_amp()

    @InspectCache.responder
    def inspect_cache(self, name, type):
        return self._client._cache_tool("inspect", name, type or None)

    @DumpCache.responder
    def dump_cache(self, shard):
        return self._client._cache_tool("dump_shard", shard)

    @LoadCache.responder
    def load_cache(self, lines):
        return self._client._cache_tool("load", lines)

    @Shutdown.responder
    def shutdown(self, term=None):
        self._client._admit(term, "Shutdown")
        return self._client._shutdown()


class _WorkerFactory(protocol.Factory):
    """Builds the one :class:`_WorkerProtocol` of each connection attempt."""

    noisy = False

    def __init__(self, client: ControlClient) -> None:
        self._client = client

    def buildProtocol(self, addr):
        return _WorkerProtocol(self._client)


def _handler_error(failure, command: str):
    """A hook's failure as an error the control plane understands (logged
    here too, with its traceback, unless it is a bad request)."""
    if failure.check(ValueError, InvalidRequest):
        raise InvalidRequest(describe(failure))
    if failure.check(HandlerFailed):
        raise HandlerFailed(describe(failure))
    ControlClient.log.failure("carrying out {command} failed", failure, command=command)
    raise HandlerFailed(describe(failure))


class ControlClient(service.Service):
    """
    A worker's link to the control plane at ``control_host``:``control_port``.

    The hooks, each called in the reactor thread:

    - ``snapshot()`` -> dict: the stats snapshot sent with every heartbeat
      (heartbeats start once the first configuration is applied);
    - ``on_config(text)``: apply the first configuration (YAML text).  Called
      once, after the first registration; ``ready`` fires with the text when
      it is done (it may return a Deferred), or fails with its failure (the
      worker should then stop; no heartbeats are sent);
    - ``on_reload(text)`` -> bool | None (or a Deferred of one): apply a new
      configuration, from ReloadConfig or from a later registration whose
      text differs from the last one handed to a hook.  False means "not
      applied"; None counts as applied.  Hooks that apply a configuration
      never run concurrently;
    - ``on_clear(flush, relayed)`` -> dict (or a Deferred of one) with
      ``cleared`` (a count) and ``caches`` (the names flushed): apply a
      :class:`~dnsgo.invalidation.flush.Flush` here; ``relayed`` says it is
      another worker's broadcast.  A ValueError reaches the control plane as
      InvalidRequest.
      It waits for a configuration being applied (so it never sees a
      worker without one);
    - ``on_shutdown()``: stop the worker; called just after the answer left;
    - ``cache_tools()`` -> an object with ``inspect(name, type)`` (the
      worker's part of ``GET /api/cache/entries``, a dict),
      ``dump_shard(index)`` (``(lines, shards)``) and ``load(text)`` (a
      :class:`dnsgo.cache.dump.LoadResult`), for InspectCache, DumpCache
      and LoadCache; None while there is none.  A ValueError reaches the
      control plane as InvalidRequest.

    With high availability (``docs/ha.md``), ``witness`` (a
    :class:`~dnsgo.control.witness.Witness`, possibly shared by the clients
    of several control planes) answers PreVote, RequestVote and Renew, its
    report goes with Register and every Heartbeat, and it lets through only
    the commands whose term is not stale.  ``node_id`` is then the control
    plane's HA name, from its Register answer.
    """

    log = Logger(namespace="dnsgo.control")

    def __init__(
        self,
        control_host: str,
        control_port: int,
        *,
        worker_id: str,
        cluster_name: str,
        dns_address: str,
        version: str,
        capabilities=CAPABILITIES,
        snapshot: Callable[[], dict[str, Any]],
        on_config: Callable[[str], Any],
        on_clear: Callable[[Flush, bool], Any],
        on_reload: Callable[[str], Any],
        on_shutdown: Callable[[], Any],
        cache_tools: Callable[[], Any] = lambda: None,
        heartbeat_interval_default: float = 5.0,
        command_timeout: float = COMMAND_TIMEOUT,
        witness=None,
        reactor,
    ) -> None:
        self.control_address = f"{control_host}:{control_port}"
        self.worker_id = worker_id
        self._hello = {
            "worker_id": worker_id,
            "cluster_name": cluster_name,
            "dns_address": dns_address,
            "version": version,
            "capabilities": list(capabilities),
        }
        self._snapshot = snapshot
        self._on_config = on_config
        self._on_clear = on_clear
        self._on_reload = on_reload
        self._on_shutdown = on_shutdown
        self._cache_tools = cache_tools
        self._witness = witness
        #: The control plane's HA name (from its Register answer; None without HA).
        self.node_id: str | None = None
        self._default_interval = heartbeat_interval_default
        self._command_timeout = command_timeout
        self._reactor = reactor
        #: Fires with the first configuration's text once ``on_config`` applied it.
        self.ready: defer.Deferred = defer.Deferred()
        #: The configuration text the worker runs with (None until the first is applied).
        self.config_text: str | None = None
        self._offered: str | None = None  # the last text handed to a hook
        self._configured = False
        self._applying = defer.DeferredLock()
        self._protocol: _WorkerProtocol | None = None  # the current connection
        self._registered_on: _WorkerProtocol | None = None
        self._register_failures = 0
        self._retry = None
        self._heartbeats: task.LoopingCall | None = None
        self._beating = False
        self._connector = ClientService(
            HostnameEndpoint(reactor, control_host, control_port),
            _WorkerFactory(self),
            retryPolicy=RETRY_POLICY,
            clock=reactor,
        )

    @property
    def registered(self) -> bool:
        """Whether the worker is registered with the control plane right now."""
        return self._registered_on is not None

    def startService(self) -> None:
        """Start connecting to the control plane."""
        super().startService()
        self.log.info("connecting to the control plane at {address}", address=self.control_address)
        self._connector.startService()

    def stopService(self) -> defer.Deferred:
        """Stop heartbeats and reconnecting, close the connection; fires when it is closed."""
        super().stopService()
        self._stop_heartbeats()
        self._cancel_retry()
        return self._connector.stopService()

    def invalidate(self, flush: Flush) -> defer.Deferred:
        """
        Ask the control plane to relay ``flush`` to every other worker.
        Fires with ``{"workers": sent to, "failed": did not confirm}``; fails
        with NotRegistered while the worker is not registered.
        """
        if self._registered_on is None:
            return defer.fail(NotRegistered("not registered with the control plane"))
        return call(
            self._registered_on, Invalidate,
            timeout=self._command_timeout * 2, reactor=self._reactor, flush=flush, **self._term(),
        )

    # -- the connection ----------------------------------------------------

    def _connected(self, proto: _WorkerProtocol) -> None:
        self._protocol = proto
        self._register(proto)

    def _lost(self, proto: _WorkerProtocol) -> None:
        if proto is not self._protocol:
            return
        was_registered = self._registered_on is proto
        self._protocol = self._registered_on = None
        self._stop_heartbeats()
        self._cancel_retry()
        if self.running and was_registered:
            self.log.warn("lost the control plane at {address}; reconnecting", address=self.control_address)

    def _register(self, proto: _WorkerProtocol) -> None:
        d = call(proto, Register, timeout=self._command_timeout, reactor=self._reactor, **self._hello,
                 **self._report())
        d.addCallbacks(self._registered, self._register_failed, callbackArgs=(proto,), errbackArgs=(proto,))

    def _register_failed(self, failure, proto: _WorkerProtocol) -> None:
        if proto is not self._protocol:
            return
        self._register_failures += 1
        delay = min(0.1 * 2 ** self._register_failures, MAX_REGISTER_DELAY)
        self.log.warn(
            "registration with the control plane at {address} failed: {why}; retrying in {delay:g}s",
            address=self.control_address, why=describe(failure), delay=delay,
        )
        self._retry = self._reactor.callLater(delay, proto.transport.loseConnection)

    def _registered(self, answer, proto: _WorkerProtocol) -> None:
        if proto is not self._protocol:
            return
        self._register_failures = 0
        self._registered_on = proto
        self.node_id = answer.get("node_id")
        self.log.info(
            "registered with the control plane at {address} as {worker_id}",
            address=self.control_address, worker_id=self.worker_id,
        )
        text = answer["config"]
        if self._offered is None:
            self._offered = text
            self._applying.run(self._on_config, text).addCallbacks(self._first_applied, self._first_failed)
        elif text != self._offered:
            self.log.info("the control plane has a new configuration; reloading")
            self._offered = text
            self._apply_reload(text).addErrback(
                lambda f: self.log.failure("applying the control plane's configuration failed", f)
            )
        interval = answer["heartbeat_interval"]
        self._start_heartbeats(proto, interval if interval > 0 else self._default_interval)

    def _cancel_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- configuration -----------------------------------------------------

    def _first_applied(self, _) -> None:
        self._configured = True
        self.config_text = self._offered
        self.ready.callback(self.config_text)
        if self._registered_on is not None:
            self._beat(self._registered_on)

    def _first_failed(self, failure) -> None:
        self.log.failure("applying the first configuration failed", failure)
        self.ready.errback(failure)

    def _apply_reload(self, text: str) -> defer.Deferred:
        """Run ``on_reload(text)`` after any application in progress; fires with whether it applied."""

        def done(result) -> bool:
            applied = result is None or bool(result)
            if applied:
                self.config_text = text
                self.log.info("new configuration applied")
            else:
                self.log.warn("new configuration not applied")
            return applied

        return self._applying.run(self._on_reload, text).addCallback(done)

    # -- commands from the control plane -----------------------------------

    def _clear(self, flush: Flush, relayed: bool):
        def answer(result):
            return {"cleared": int(result["cleared"]), "caches": list(result["caches"])}

        d = self._applying.run(self._on_clear, flush, relayed).addCallback(answer)
        return d.addErrback(_handler_error, "ClearCache")

    def _reload(self, text: str):
        self._offered = text
        return self._apply_reload(text).addCallbacks(
            lambda applied: {"applied": applied}, _handler_error, errbackArgs=("ReloadConfig",)
        )

    def _cache_tool(self, operation: str, *arguments):
        """Run InspectCache, DumpCache or LoadCache on the cache tools, once a configuration is applied."""

        def run():
            tools = self._cache_tools()
            if tools is None:
                raise HandlerFailed("this worker has no caches to inspect yet")
            result = getattr(tools, operation)(*arguments)
            if operation == "inspect":
                return {"entries": json.dumps(result, separators=(",", ":"))}
            if operation == "dump_shard":
                lines, shards = result
                return {"lines": "".join(lines), "shards": shards}
            return {"loaded": result.loaded, "expired": result.expired}

        return self._applying.run(run).addErrback(_handler_error, operation)

    def _shutdown(self):
        self.log.info("the control plane asked this worker to shut down")
        self._stop_heartbeats()
        self._reactor.callLater(0, self._on_shutdown)
        return {}

    # -- high availability (docs/ha.md) ------------------------------------

    def _admit(self, term: int | None, command: str) -> None:
        """Let a command through the witness's fence (StaleTerm if its term is stale); no witness, no fence."""
        if self._witness is not None:
            self._witness.admit(term, command)

    def _witness_of(self, command: str):
        """The witness that answers ``command``; InvalidRequest for a worker that is none."""
        if self._witness is None:
            raise InvalidRequest(f"{command}: this worker is no HA witness")
        return self._witness

    def _report(self) -> dict:
        """The ``ha`` argument of Register and Heartbeat (none without a witness)."""
        if self._witness is None:
            return {}
        return {"ha": json.dumps(self._witness.report(), separators=(",", ":"))}

    def _term(self) -> dict:
        """The ``term`` argument of Invalidate: the newest term seen (none before any)."""
        if self._witness is None or self._witness.state.term == 0:
            return {}
        return {"term": self._witness.state.term}

    # -- heartbeats --------------------------------------------------------

    def _start_heartbeats(self, proto: _WorkerProtocol, interval: float) -> None:
        self._stop_heartbeats()
        self._heartbeats = task.LoopingCall(self._beat, proto)
        self._heartbeats.clock = self._reactor
        self._heartbeats.start(interval, now=True).addErrback(
            lambda f: self.log.failure("heartbeats stopped", f)
        )

    def _stop_heartbeats(self) -> None:
        if self._heartbeats is not None and self._heartbeats.running:
            self._heartbeats.stop()
        self._heartbeats = None

    def _beat(self, proto: _WorkerProtocol) -> None:
        """Send one heartbeat, unless one is still on its way or there is nothing to report yet."""
        if not self._configured or proto is not self._registered_on or self._beating:
            return
        try:
            payload = json.dumps(self._snapshot(), separators=(",", ":"))
        except Exception:
            self.log.failure("the stats snapshot failed; heartbeat skipped")
            return
        self._beating = True
        d = call(proto, Heartbeat, timeout=self._command_timeout, reactor=self._reactor, snapshot=payload,
                 **self._report())
        d.addErrback(self._beat_failed, proto)
        d.addBoth(self._beat_done)

    def _beat_done(self, _) -> None:
        self._beating = False

    def _beat_failed(self, failure, proto: _WorkerProtocol) -> None:
        if proto is not self._registered_on:
            return
        if failure.check(NotRegistered):
            self.log.info("the control plane forgot this worker; registering again")
            self._registered_on = None
            self._stop_heartbeats()
            self._register(proto)
        elif failure.check(CommandTimeout):
            self.log.warn("no answer to a heartbeat from {address}; reconnecting", address=self.control_address)
            proto.transport.abortConnection()
        else:
            self.log.warn("heartbeat failed: {why}", why=describe(failure))
