"""
A worker's links to every control plane it is given (one
:class:`~dnsgo.control.client.ControlClient` each), sharing one witness and
one configuration.

With high availability (``docs/ha.md``) the worker registers with, and
heartbeats to, every control plane, so that the standby knows it too and
can ask for its vote; the witness lets only the leader's commands through.
The configuration:

- the first configuration any control plane hands over is applied (the
  worker must serve something); ``ready`` fires once it is;
- after that, with several control planes, a control plane's different
  text (a ReloadConfig, or a later registration) is applied only when that
  control plane holds this worker's lease; otherwise it is left aside
  (logged) and ReloadConfig answers "not applied".  So every control plane
  should serve the same text (``${SITE_ID}``, ``${VAR:-default}`` for what
  differs); with one control plane, its text is always applied;
- configurations and flushes are carried out one at a time, whichever
  control plane they came from.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from dnsgo.control.client import ControlClient
from dnsgo.control.commands import NotRegistered
from dnsgo.invalidation.flush import Flush


class ControlLinks(service.MultiService):
    """
    Links to the control planes at ``addresses`` ((host, port) pairs).
    ``witness`` is shared by all of them; the hooks are those of
    :class:`ControlClient`, each called once per event whichever control
    plane it came from; ``client_options`` go to every ControlClient.
    """

    log = Logger(namespace="dnsgo.control")

    def __init__(
        self,
        addresses,
        *,
        witness,
        on_config: Callable[[str], Any],
        on_clear: Callable[[Flush, bool], Any],
        on_reload: Callable[[str], Any],
        reactor,
        **client_options,
    ) -> None:
        super().__init__()
        if not addresses:
            raise ValueError("at least one control plane address is needed")
        self.witness = witness
        self._on_config = on_config
        self._on_clear = on_clear
        self._on_reload = on_reload
        self._lock = defer.DeferredLock()
        #: Fires with the first configuration's text once it is applied (fails if it cannot be).
        self.ready: defer.Deferred = defer.Deferred()
        #: The configuration text the worker runs with (None until the first is applied).
        self.config_text: str | None = None
        self._first: defer.Deferred | None = None  # the first application, once started
        self._waiting: list[defer.Deferred] = []
        self.clients: list[ControlClient] = []
        for host, port in addresses:
            client = ControlClient(
                host, port,
                on_config=lambda text, me=len(self.clients): self._offer(me, text),
                on_clear=self._clear,
                on_reload=lambda text, me=len(self.clients): self._reload(me, text),
                witness=witness,
                reactor=reactor,
                **client_options,
            )
            client.ready.addErrback(lambda _f: None)  # reported through self.ready
            client.setServiceParent(self)
            self.clients.append(client)

    @property
    def registered(self) -> bool:
        """Whether the worker is registered with at least one control plane."""
        return any(client.registered for client in self.clients)

    def invalidate(self, flush: Flush) -> defer.Deferred:
        """
        Ask the leader (else any control plane the worker is registered
        with) to relay ``flush`` to every other worker; see
        :meth:`ControlClient.invalidate`.
        """
        registered = [client for client in self.clients if client.registered]
        if not registered:
            return defer.fail(NotRegistered("not registered with any control plane"))
        holder = self.witness.holder() if self.witness is not None else None
        leaders = [client for client in registered if holder is not None and client.node_id == holder]
        return (leaders or registered)[0].invalidate(flush)

    # -- the hooks of every client ---------------------------------------------

    def _offer(self, index: int, text: str):
        """A client's first configuration: the very first is applied, later ones are offers."""
        if self._first is None:
            waiting = defer.Deferred()
            self._waiting.append(waiting)
            self._first = self._lock.run(self._on_config, text)
            self._first.addCallbacks(self._first_applied, self._first_failed, callbackArgs=(text,))
            return waiting
        if self.config_text is None:
            waiting = defer.Deferred()
            self._waiting.append(waiting)
            return waiting.addCallback(lambda _: self._reload(index, text))
        return self._reload(index, text)

    def _first_applied(self, _, text: str) -> None:
        self.config_text = text
        self.ready.callback(text)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _first_failed(self, failure) -> None:
        self.ready.errback(failure)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def _reload(self, index: int, text: str):
        """Another configuration from client ``index``: applied if it is new and that client leads."""
        if text == self.config_text:
            return True
        client = self.clients[index]
        if not self._leads(client):
            self.log.info(
                "configuration from {address}, which does not hold this worker's lease, left aside",
                address=client.control_address,
            )
            return False

        def applied(result):
            if result is None or result:
                self.config_text = text
            return result

        return self._lock.run(self._on_reload, text).addCallback(applied)

    def _clear(self, flush: Flush, relayed: bool):
        return self._lock.run(self._on_clear, flush, relayed)

    def _leads(self, client: ControlClient) -> bool:
        """Whether ``client``'s control plane may reconfigure this worker."""
        if len(self.clients) == 1 or self.witness is None:
            return True
        return client.node_id is not None and client.node_id == self.witness.holder()
