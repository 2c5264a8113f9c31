"""
The control plane's table of workers: who registered, from where, when
each was last heard of, and its last stats snapshot.

A worker is ``healthy`` while its last heartbeat (or its registration) is
at most ``heartbeat_timeout`` old and ``unhealthy`` after that; after three
timeouts without a heartbeat it is forgotten (and its connection, if still
open, closed).  A lost connection alone does not remove a worker: it turns
unhealthy, and is forgotten, on the same clock, unless it comes back.
"""
from __future__ import annotations

from typing import Any

import attrs
from twisted.logger import Logger

#: A worker silent for this many heartbeat timeouts is forgotten.
EXPIRY_TIMEOUTS = 3


@attrs.frozen
class WorkerView:
    """What the API shows of one worker at one moment."""

    worker_id: str
    cluster_name: str
    address: str  # where the worker serves DNS
    version: str
    capabilities: tuple[str, ...]
    peer: str  # where its control connection comes from
    connected: bool
    connected_at: float  # when it registered, in seconds since the epoch
    last_heartbeat: float  # its last heartbeat (or its registration)
    status: str  # "healthy" | "unhealthy"
    snapshot: dict[str, Any] | None  # its last stats snapshot (do not change it)


@attrs.define(eq=False)
class WorkerSession:
    """One registered worker as the registry tracks it (mutable; the
    registry's own).  ``protocol`` is its connection, None once lost."""

    worker_id: str
    cluster_name: str
    address: str
    version: str
    capabilities: tuple[str, ...]
    peer: str
    connected_at: float
    last_heartbeat: float
    protocol: Any = None
    snapshot: dict[str, Any] | None = None
    healthy: bool = True
    timers: list = attrs.field(factory=list)


class WorkerRegistry:
    """
    The registered workers by id, with their liveness kept on ``reactor``'s
    clock.  ``close`` cancels its timers and forgets everyone.
    """

    log = Logger(namespace="dnsgo.control")

    def __init__(self, heartbeat_timeout: float, *, reactor) -> None:
        if heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive; got {heartbeat_timeout!r}")
        self.heartbeat_timeout = heartbeat_timeout
        self._reactor = reactor
        self._sessions: dict[str, WorkerSession] = {}

    # -- changes -----------------------------------------------------------

    def register(
        self,
        worker_id: str,
        *,
        cluster_name: str,
        address: str,
        version: str,
        capabilities,
        peer: str,
        protocol,
    ) -> WorkerSession:
        """
        Record a worker's registration on connection ``protocol``.  A session
        with the same id on another connection is replaced, and that
        connection closed.
        """
        old = self._sessions.pop(worker_id, None)
        if old is not None:
            self._cancel(old)
            if old.protocol is not None and old.protocol is not protocol:
                self.log.warn(
                    "worker {worker_id} registered again from {peer}; closing its connection from {old}",
                    worker_id=worker_id, peer=peer, old=old.peer,
                )
                old.protocol.transport.loseConnection()
        now = self._reactor.seconds()
        session = WorkerSession(
            worker_id=worker_id,
            cluster_name=cluster_name,
            address=address,
            version=version,
            capabilities=tuple(capabilities),
            peer=peer,
            connected_at=now,
            last_heartbeat=now,
            protocol=protocol,
        )
        self._sessions[worker_id] = session
        self._schedule(session)
        self.log.info(
            "worker {worker_id} ({cluster}) registered from {peer}, serving DNS on {address}",
            worker_id=worker_id, cluster=cluster_name or "-", peer=peer, address=address,
        )
        return session

    def heartbeat(self, worker_id: str, snapshot: dict[str, Any] | None) -> None:
        """Record a heartbeat with its snapshot.  Raises KeyError for an unknown worker."""
        session = self._sessions[worker_id]
        session.last_heartbeat = self._reactor.seconds()
        session.snapshot = snapshot
        if not session.healthy:
            session.healthy = True
            self.log.info("worker {worker_id} is healthy again", worker_id=worker_id)
        self._cancel(session)
        self._schedule(session)

    def disconnected(self, worker_id: str, protocol) -> None:
        """Connection ``protocol`` of ``worker_id`` was lost (a replaced one is ignored)."""
        session = self._sessions.get(worker_id)
        if session is not None and session.protocol is protocol:
            session.protocol = None
            self.log.info("worker {worker_id} disconnected", worker_id=worker_id)

    def remove(self, worker_id: str) -> bool:
        """Forget ``worker_id`` now (its connection stays as it is); whether it was known."""
        session = self._sessions.pop(worker_id, None)
        if session is None:
            return False
        self._cancel(session)
        return True

    def close(self) -> None:
        """Cancel every timer and forget every worker."""
        for session in self._sessions.values():
            self._cancel(session)
        self._sessions.clear()

    # -- queries -----------------------------------------------------------

    def session(self, worker_id: str) -> WorkerSession:
        """The session of ``worker_id``; KeyError if it is not registered."""
        return self._sessions[worker_id]

    def sessions(self) -> list[WorkerSession]:
        """Every session, ordered by worker id."""
        return [self._sessions[key] for key in sorted(self._sessions)]

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def status(self, session: WorkerSession) -> str:
        """'healthy' if ``session`` was heard of within the timeout, else 'unhealthy'."""
        age = self._reactor.seconds() - session.last_heartbeat
        return "healthy" if age <= self.heartbeat_timeout else "unhealthy"

    def get(self, worker_id: str) -> WorkerView | None:
        """A view of ``worker_id``, or None if it is not registered."""
        session = self._sessions.get(worker_id)
        return None if session is None else self._view(session)

    def workers(self) -> list[WorkerView]:
        """A view of every worker, ordered by worker id."""
        return [self._view(session) for session in self.sessions()]

    # -- internals ---------------------------------------------------------

    def _view(self, session: WorkerSession) -> WorkerView:
        return WorkerView(
            worker_id=session.worker_id,
            cluster_name=session.cluster_name,
            address=session.address,
            version=session.version,
            capabilities=session.capabilities,
            peer=session.peer,
            connected=session.protocol is not None,
            connected_at=session.connected_at,
            last_heartbeat=session.last_heartbeat,
            status=self.status(session),
            snapshot=session.snapshot,
        )

    def _schedule(self, session: WorkerSession) -> None:
        """Arm the two liveness timers of a session just heard of."""
        call_later = self._reactor.callLater
        session.timers = [
            call_later(self.heartbeat_timeout, self._unhealthy, session),
            call_later(self.heartbeat_timeout * EXPIRY_TIMEOUTS, self._expire, session),
        ]

    def _cancel(self, session: WorkerSession) -> None:
        for timer in session.timers:
            if timer.active():
                timer.cancel()
        session.timers = []

    def _unhealthy(self, session: WorkerSession) -> None:
        session.healthy = False
        self.log.warn(
            "worker {worker_id}: no heartbeat for {timeout:g}s; unhealthy",
            worker_id=session.worker_id, timeout=self.heartbeat_timeout,
        )

    def _expire(self, session: WorkerSession) -> None:
        if self._sessions.get(session.worker_id) is not session:
            return
        del self._sessions[session.worker_id]
        self._cancel(session)
        self.log.warn(
            "worker {worker_id}: no heartbeat for {timeout:g}s; forgotten",
            worker_id=session.worker_id, timeout=self.heartbeat_timeout * EXPIRY_TIMEOUTS,
        )
        if session.protocol is not None:
            session.protocol.transport.loseConnection()
