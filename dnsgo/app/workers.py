"""
Several dnsgo worker processes behind one address.

With ``server.num_workers`` above 1, ``twistd dnsgo`` runs a supervisor
instead of a server.  The supervisor starts that many ``twistd dnsgo``
children, each a complete dnsgo with its own caches, all binding the same
UDP and TCP ``listen_address`` with ``SO_REUSEPORT`` so the kernel spreads
queries over them.  Twisted's :class:`~twisted.runner.procmon.ProcessMonitor`
restarts a worker that dies (with its back-off) and stops them all when the
supervisor stops; each line a worker prints is logged by the supervisor,
prefixed with the worker's name.
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

from dnsgo.app.logs import make_observer
from dnsgo.serve.listeners import bind_socket

#: How long a stopping worker has between SIGTERM and SIGKILL, in seconds.
KILL_TIME = 5.0
#: The longest a worker that keeps dying at start waits to be restarted
#: (procmon's own default of an hour is too long to run short of a worker).
MAX_RESTART_DELAY = 30.0

# Each worker gets its own process group, so that a signal sent to the
# supervisor's group (Ctrl-C in a terminal) reaches the supervisor alone and
# it stops the workers itself: TERM once, KILL after ``KILL_TIME``.
_TWISTD = "import os; os.setpgrp(); from twisted.scripts.twistd import run; run()"


@attrs.frozen
class WorkerProcess:
    """One worker as the supervisor sees it: its name, its pid (None while it
    is down and waiting to be restarted) and how often it was restarted."""

    name: str
    pid: int | None
    restarts: int


class ListenError(Exception):
    """The supervisor cannot serve on the configured address."""


def worker_name(index: int) -> str:
    """The name of worker number ``index`` (counting from 1)."""
    return f"worker-{index}"


def worker_args(index: int, config_path: str | None, control: str, executable: str | None = None) -> list[str]:
    """
    The command line of worker ``index``: ``twistd -n dnsgo worker``
    registering with the supervisor's control plane at ``control``
    (host:port) under the name ``worker-N``, with the supervisor's
    configuration file (made absolute) for its ``server`` section.
    """
    if executable is None:
        executable = sys.executable
    args = [executable, "-c", _TWISTD, "-n", "--pidfile=", "dnsgo", "worker",
            "--control-plane", control, "--worker-id", worker_name(index)]
    if config_path is not None:
        args += ["--config", os.path.abspath(config_path)]
    return args


def check_can_listen(host: str, port: int, *, enable_tcp: bool) -> None:
    """
    Bind the address the workers will share (UDP, and TCP when enabled, with
    ``SO_REUSEPORT``) once and let it go, so that an address nobody can serve
    on fails before any worker starts.  Raises :class:`ListenError`.
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if port == 0:
        raise ListenError(
            f"server.listen_address {shown}: several workers need a fixed port "
            "(with port 0 each worker would get a different one)"
        )
    kinds = [("UDP", socket.SOCK_DGRAM)] + ([("TCP", socket.SOCK_STREAM)] if enable_tcp else [])
    for label, kind in kinds:
        try:
            bind_socket(host, port, kind, reuse_port=True).close()
        except OSError as e:
            raise ListenError(f"cannot listen on {shown} over {label}: {e.strerror or e}") from None


def _how_it_ended(reason) -> str:
    """Say how a process ended, from processEnded's failure."""
    value = reason.value
    if getattr(value, "signal", None):
        return f"was killed by signal {value.signal}"
    return f"exited with code {getattr(value, 'exitCode', None)}"


class _Monitor(ProcessMonitor):
    """
    procmon's ProcessMonitor that also remembers each worker's pid and
    restarts, logs starts and deaths, and whose ``stopService`` waits for
    the workers to be gone.
    """

    threshold = 1
    killTime = KILL_TIME
    maxRestartDelay = MAX_RESTART_DELAY
    # procmon logs each worker's lines through ``log``, as "[worker-N] line".
    log = Logger(namespace="dnsgo.app.workers")

    def __init__(self, reactor) -> None:
        super().__init__(reactor)
        self._time = reactor
        self.pids: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self._ended: dict[str, list[defer.Deferred]] = {}

    def startProcess(self, name: str) -> None:
        """Start ``name`` as procmon does, then note its pid."""
        already = self.protocols.get(name)
        super().startProcess(name)
        proto = self.protocols.get(name)
        if proto is None or proto is already:
            return
        pid = proto.transport.pid
        self.pids[name] = pid
        self.starts[name] = self.starts.get(name, 0) + 1
        restarts = self.starts[name] - 1
        if restarts:
            self.log.info("{name} restarted (pid {pid}, restart {restarts})", name=name, pid=pid, restarts=restarts)
        else:
            self.log.info("{name} started (pid {pid})", name=name, pid=pid)
        # procmon offers no public hook for a child's end; its protocol's
        # processEnded is the one place every Twisted version goes through.
        ended = proto.processEnded
        proto.processEnded = lambda reason: self._process_ended(name, pid, ended, reason)

    def _process_ended(self, name: str, pid: int, ended, reason) -> None:
        """Let procmon handle the end (and schedule the restart), then report it."""
        ended(reason)
        self.pids.pop(name, None)
        how = _how_it_ended(reason)
        restart = self.restart.get(name)
        if self.running and restart is not None and restart.active():
            delay = max(0.0, restart.getTime() - self._time.seconds())
            self.log.warn(
                "{name} (pid {pid}) {how}; restarting in {delay:g}s", name=name, pid=pid, how=how, delay=delay
            )
        else:
            self.log.info("{name} (pid {pid}) stopped: {how}", name=name, pid=pid, how=how)
        for waiting in self._ended.pop(name, []):
            waiting.callback(None)

    def stopService(self) -> defer.Deferred:
        """TERM every worker (KILL after ``killTime``); fires when all have ended."""
        waiting = []
        for name in self.protocols:
            d = defer.Deferred()
            self._ended.setdefault(name, []).append(d)
            waiting.append(d)
        super().stopService()
        return defer.gatherResults(waiting).addCallback(lambda _: None)


@implementer(ILogObserver)
class _SupervisorObserver:
    """
    The supervisor's log observer: its own events go through the ``logging``
    section's filters; the lines its workers print were already filtered by
    the workers, so they all pass.
    """

    def __init__(self, logging_config, monitor: ProcessMonitor, out=None) -> None:
        self._monitor = monitor
        self._own = make_observer(logging_config, out)
        self._relayed = make_observer(attrs.evolve(logging_config, level="debug"), out)

    def __call__(self, event) -> None:
        if event.get("log_source") is self._monitor and "line" in event:
            # procmon adds an empty line when a worker ends; drop it.
            if event["line"]:
                self._relayed(event)
        else:
            self._own(event)


class WorkerSupervisor(service.MultiService):
    """
    Runs ``config.server.num_workers`` dnsgo workers sharing
    ``config.server.listen_address``, restarts those that die, and stops
    them all when it stops.

    ``config_path`` is the file the workers load (None: the embedded
    default); ``environ`` (default: this process's) is their environment,
    so ``${VAR}`` references resolve as they did here.  Attached to a
    twistd application, it installs its log observer there.
    """

    log = Logger(namespace="dnsgo.app.workers")

    def __init__(
        self,
        config,
        config_path: str | None,
        *,
        environ: Mapping[str, str] | None = None,
        executable: str | None = None,
        control=None,
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # a root: it picks the reactor when none is given
        super().__init__()
        self.config = config
        self._config_path = config_path
        self._executable = executable
        self._env = dict(os.environ if environ is None else environ)
        #: The control plane (a dnsgo.app.roles.ControlRoot) the workers register
        #: with; started before them, stopped after them.
        self.control = control
        if control is not None:
            control.setServiceParent(self)
        self.monitor = _Monitor(reactor)
        self.monitor.setName("workers")
        self.monitor.setServiceParent(self)
        count = config.server.num_workers
        self.names = [worker_name(i) for i in range(1, count + 1)]

    def workers(self) -> list[WorkerProcess]:
        """Every worker, in order, with its current pid and restart count."""
        return [
            WorkerProcess(
                name,
                self.monitor.pids.get(name),
                max(0, self.monitor.starts.get(name, 0) - 1),
            )
            for name in self.names
        ]

    def startService(self) -> None:
        """Check the address can be served, then start the workers."""
        listen = self.config.server.listen_address
        check_can_listen(listen.host, listen.port, enable_tcp=self.config.server.enable_tcp)
        self.log.info(
            "starting {count} workers on {address} (udp{tcp})",
            count=len(self.names),
            address=str(listen),
            tcp="+tcp" if self.config.server.enable_tcp else "",
        )
        if self.control is not None:
            self.control.startService()
            address = f"127.0.0.1:{self.control.control.bound_port}"
        else:
            address = "127.0.0.1:0"
        for index, name in enumerate(self.names, 1):
            if name not in self.monitor.processes:
                self.monitor.addProcess(
                    name, worker_args(index, self._config_path, address, self._executable), env=self._env
                )
        service.Service.startService(self)
        self.monitor.startService()

    def setServiceParent(self, parent):
        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, _SupervisorObserver(self.config.logging, self.monitor))
        return super().setServiceParent(parent)
