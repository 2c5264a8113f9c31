"""
Worker processes behind one address: the supervisor's bookkeeping with a fake
process reactor, and real ``twistd dnsgo`` supervisors with real workers.
"""
import io
import json
import os
import re
import signal
import socket
import sys

import dns.exception
import dns.message
import dns.query
import dns.rcode
from twisted.application import service
from twisted.internet import defer, error, protocol, reactor, task, threads
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

from dnsgo.config import parse_config
from dnsgo.app.assemble import ServerRoot, build_service
from dnsgo.tap import Options, makeService
from dnsgo.app.workers import (
    KILL_TIME,
    ListenError,
    WorkerProcess,
    WorkerSupervisor,
    _SupervisorObserver,
    check_can_listen,
    worker_args,
)
from tests.support.authority import AuthorityServer
from tests.support.harness import ask, kill_marked, marked_environ
from tests.support.cluster_procs import TWISTD, free_port


def make_config(port: int, workers: int, extra: str = ""):
    """A configuration listening on 127.0.0.1:``port`` with ``workers`` workers."""
    return parse_config(
        f'server:\n  listen_address: "127.0.0.1:{port}"\n  num_workers: {workers}\n'
        f'upstreams: ["127.0.0.1:53"]\napi:\n  listen_address: "127.0.0.1:0"\n{extra}',
        "<test>",
        {},
    )


# --------------------------------------------------------------------------
# A fake process reactor


class FakeProcess:
    """A child process that only ends when the test says so."""

    def __init__(self, proto, pid: int, args, env) -> None:
        self.proto = proto
        self.pid = pid
        self.args = args
        self.env = env
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def end(self, signal_number: int | None = None, code: int = 0) -> None:
        """The process ends, killed by ``signal_number`` or exiting with ``code``."""
        self.ended = True
        if signal_number is None and code == 0:
            reason = error.ProcessDone(0)
        else:
            reason = error.ProcessTerminated(exitCode=None if signal_number else code, signal=signal_number)
        self.proto.processEnded(Failure(reason))


class ProcessClock(Clock):
    """A Clock that also "spawns" FakeProcesses."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []
        self._next_pid = 1000

    def spawnProcess(self, proto, executable, args=(), env=None, path=None, uid=None, gid=None, usePTY=0, childFDs=None):
        self._next_pid += 1
        process = FakeProcess(proto, self._next_pid, list(args), env)
        self.spawned.append(process)
        proto.makeConnection(process)
        return process

    def running(self, args_contain: str) -> list[FakeProcess]:
        """The spawned processes not yet ended whose arguments include ``args_contain``."""
        return [p for p in self.spawned if not p.ended and args_contain in p.args]


def capture_logs(testcase) -> list:
    """Collect the events every Logger emits during the test."""
    from twisted.logger import globalLogPublisher

    events: list = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def texts(events) -> list[str]:
    """The formatted text of logged events."""
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


# --------------------------------------------------------------------------
# Unit tests


class WorkerArgsTests(unittest.SynchronousTestCase):
    """The command line of a worker process."""

    def test_runs_twistd_dnsgo_in_the_foreground_without_pidfile(self):
        """A worker is this Python running twistd -n, without a pid file, then ``dnsgo worker`` registering with the supervisor's control plane."""
        args = worker_args(2, "/etc/dnsgo.yaml", "127.0.0.1:4000", executable="/usr/bin/python3")
        self.assertEqual(args[0], "/usr/bin/python3")
        self.assertEqual(args[1], "-c")
        self.assertIn("from twisted.scripts.twistd import run; run()", args[2])
        self.assertEqual(
            args[3:],
            ["-n", "--pidfile=", "dnsgo", "worker", "--control-plane", "127.0.0.1:4000",
             "--worker-id", "worker-2", "--config", "/etc/dnsgo.yaml"],
        )

    def test_default_executable_is_this_python(self):
        """Without an executable, workers run under sys.executable."""
        self.assertEqual(worker_args(1, None, "127.0.0.1:1")[0], sys.executable)

    def test_relative_config_path_is_made_absolute(self):
        """A relative --config path is resolved against the supervisor's directory."""
        args = worker_args(1, "conf/dnsgo.yaml", "127.0.0.1:1")
        self.assertEqual(args[args.index("--config") + 1], os.path.join(os.getcwd(), "conf", "dnsgo.yaml"))

    def test_no_config_means_no_config_option(self):
        """With the embedded default the worker gets no --config either."""
        args = worker_args(3, None, "127.0.0.1:1")
        self.assertNotIn("--config", args)
        self.assertEqual(args[-2:], ["--worker-id", "worker-3"])

    def test_the_command_is_valid_python(self):
        """The -c program compiles (a typo there would kill every worker at start)."""
        compile(worker_args(1, None, "127.0.0.1:1")[2], "<worker>", "exec")


class CheckCanListenTests(unittest.SynchronousTestCase):
    """The supervisor's bind check before it starts workers."""

    def test_free_address_passes(self):
        """A free port can be served over UDP and TCP, and is left free."""
        port = free_port()
        check_can_listen("127.0.0.1", port, enable_tcp=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))

    def test_udp_port_in_use(self):
        """A UDP port held without SO_REUSEPORT fails with the address and the transport."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
            held.bind(("127.0.0.1", 0))
            port = held.getsockname()[1]
            e = self.assertRaises(ListenError, check_can_listen, "127.0.0.1", port, enable_tcp=True)
        self.assertIn(f"cannot listen on 127.0.0.1:{port} over UDP", str(e))
        self.assertIn("in use", str(e))

    def test_tcp_port_in_use(self):
        """A TCP listener on the port fails the check when TCP is enabled, not when it is off."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
            held.bind(("127.0.0.1", free_port()))
            held.listen(1)
            port = held.getsockname()[1]
            e = self.assertRaises(ListenError, check_can_listen, "127.0.0.1", port, enable_tcp=True)
            self.assertIn("over TCP", str(e))
            check_can_listen("127.0.0.1", port, enable_tcp=False)

    def test_port_zero_is_refused(self):
        """Port 0 would give each worker its own port, so it is refused."""
        e = self.assertRaises(ListenError, check_can_listen, "127.0.0.1", 0, enable_tcp=True)
        self.assertIn("fixed port", str(e))

    def test_address_not_on_this_host(self):
        """An address this host does not have fails clearly."""
        e = self.assertRaises(ListenError, check_can_listen, "192.0.2.77", 5353, enable_tcp=True)
        self.assertIn("cannot listen on 192.0.2.77:5353 over UDP", str(e))


class WorkerSupervisorTests(unittest.SynchronousTestCase):
    """The supervisor's bookkeeping, driven by a fake process reactor."""

    def start(self, workers: int = 2, environ=None):
        self.clock = ProcessClock()
        self.port = free_port()
        sup = WorkerSupervisor(
            make_config(self.port, workers),
            "/etc/dnsgo.yaml",
            environ={"SITE": "a"} if environ is None else environ,
            executable="/py",
            reactor=self.clock,
        )
        sup.startService()
        return sup

    def test_starts_one_process_per_worker(self):
        """num_workers processes, named worker-1..N, each with its index, the config and the environment."""
        sup = self.start(3)
        self.assertEqual(sup.names, ["worker-1", "worker-2", "worker-3"])
        self.assertEqual(len(self.clock.spawned), 3)
        for index, process in enumerate(self.clock.spawned, 1):
            self.assertEqual(process.args, worker_args(index, "/etc/dnsgo.yaml", "127.0.0.1:0", "/py"))
            self.assertEqual(process.env, {"SITE": "a"})
        self.assertEqual(
            sup.workers(),
            [WorkerProcess(f"worker-{i}", 1000 + i, 0) for i in (1, 2, 3)],
        )

    def test_default_environment_is_this_process(self):
        """Without an explicit environ the workers get this process's environment."""
        self.clock = ProcessClock()
        sup = WorkerSupervisor(make_config(free_port(), 2), None, reactor=self.clock)
        sup.startService()
        self.assertEqual(self.clock.spawned[0].env, dict(os.environ))

    def test_dead_worker_is_restarted_with_new_pid(self):
        """A worker killed after running a while comes back at once with a new pid, counted as a restart."""
        events = capture_logs(self)
        sup = self.start(2)
        self.clock.advance(10)
        first = self.clock.spawned[0]
        first.end(signal.SIGKILL)
        self.assertEqual(sup.workers()[0], WorkerProcess("worker-1", None, 0))
        self.assertIn("worker-1 (pid 1001) was killed by signal 9; restarting in 0s", texts(events))
        self.clock.advance(0)
        again = self.clock.running("--worker-id")[-1]
        self.assertEqual(again.args, first.args)
        self.assertEqual(sup.workers(), [WorkerProcess("worker-1", 1003, 1), WorkerProcess("worker-2", 1002, 0)])
        self.assertIn("worker-1 restarted (pid 1003, restart 1)", texts(events))

    def test_worker_dying_at_start_backs_off(self):
        """A worker that dies at once is restarted after procmon's doubling delay, capped at 30 s."""
        sup = self.start(1)
        delays = []
        for _ in range(8):
            before = len(self.clock.spawned)
            self.clock.spawned[-1].end(code=1)
            waited = 0.0
            while len(self.clock.spawned) == before:
                self.clock.advance(0.5)
                waited += 0.5
            delays.append(waited)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual(sup.workers()[0].restarts, 8)

    def test_stop_terms_then_waits_for_every_worker(self):
        """Stopping TERMs every worker and fires only when all have ended."""
        sup = self.start(2)
        stopped = sup.stopService()
        self.assertEqual([p.signals for p in self.clock.spawned], [["TERM"], ["TERM"]])
        self.assertNoResult(stopped)
        self.clock.spawned[0].end(signal.SIGTERM)
        self.assertNoResult(stopped)
        self.clock.spawned[1].end(signal.SIGTERM)
        self.successResultOf(stopped)
        self.clock.advance(100)
        self.assertEqual(len(self.clock.spawned), 2, "a stopped worker was restarted")

    def test_stop_kills_a_worker_that_ignores_term(self):
        """A worker still alive KILL_TIME seconds after TERM gets KILL."""
        sup = self.start(2)
        stopped = sup.stopService()
        self.clock.spawned[0].end(signal.SIGTERM)
        self.clock.advance(KILL_TIME - 0.1)
        self.assertEqual(self.clock.spawned[1].signals, ["TERM"])
        self.clock.advance(0.2)
        self.assertEqual(self.clock.spawned[1].signals, ["TERM", "KILL"])
        self.assertNoResult(stopped)
        self.clock.spawned[1].end(signal.SIGKILL)
        self.successResultOf(stopped)

    def test_stop_during_restart_delay(self):
        """A worker waiting to be restarted is not started again once the supervisor stops."""
        sup = self.start(2)
        self.clock.spawned[0].end(code=1)
        stopped = sup.stopService()
        self.clock.spawned[1].end(signal.SIGTERM)
        self.successResultOf(stopped)
        self.clock.advance(100)
        self.assertEqual(len(self.clock.spawned), 2)

    def test_address_in_use_starts_no_worker(self):
        """When the address cannot be bound, startService raises and spawns nothing."""
        clock = ProcessClock()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
            held.bind(("127.0.0.1", 0))
            sup = WorkerSupervisor(make_config(held.getsockname()[1], 2), None, reactor=clock)
            self.assertRaises(ListenError, sup.startService)
        self.assertEqual(clock.spawned, [])
        self.assertFalse(sup.running)

    def test_installs_its_log_observer_on_the_application(self):
        """Attached to a twistd application, the supervisor provides its log observer."""
        from twisted.logger import ILogObserver

        app = service.Application("dnsgo")
        sup = WorkerSupervisor(make_config(free_port(), 2), None, reactor=ProcessClock())
        sup.setServiceParent(app)
        self.assertIsInstance(app.getComponent(ILogObserver), _SupervisorObserver)


class SupervisorObserverTests(unittest.SynchronousTestCase):
    """What the supervisor writes to its log."""

    def observe(self, level: str, fmt: str = "text"):
        config = make_config(5353, 2, f"logging:\n  level: {level}\n  format: {fmt}\n")
        self.sup = WorkerSupervisor(config, None, reactor=ProcessClock())
        self.out = io.StringIO()
        return _SupervisorObserver(config.logging, self.sup.monitor, self.out)

    def relay(self, observer, line: str) -> None:
        """Log ``line`` as procmon does for a worker's output."""
        proto = Logger(namespace="dnsgo.app.workers", source=self.sup.monitor, observer=observer)
        proto.info("[{tag}] {line}", tag="worker-1", line=line, stream="stdout")

    def test_worker_lines_pass_whatever_the_level(self):
        """Worker lines (already filtered by the worker) appear even at level error; own info does not."""
        observer = self.observe("error")
        self.relay(observer, "a worker line")
        Logger(namespace="dnsgo.app.workers", observer=observer).info("supervisor info")
        Logger(namespace="dnsgo.app.workers", observer=observer).error("supervisor error")
        out = self.out.getvalue()
        self.assertIn("[worker-1] a worker line", out)
        self.assertNotIn("supervisor info", out)
        self.assertIn("supervisor error", out)

    def test_empty_worker_lines_are_dropped(self):
        """The empty line procmon adds when a worker ends is not logged."""
        observer = self.observe("info")
        self.relay(observer, "")
        self.assertEqual(self.out.getvalue(), "")

    def test_json_format(self):
        """With format json each worker line is one JSON object naming the worker."""
        observer = self.observe("info", "json")
        self.relay(observer, "hello")
        record = json.loads(self.out.getvalue().strip("\x1e\n"))
        self.assertEqual((record["tag"], record["line"]), ("worker-1", "hello"))


class MakeServiceTests(unittest.SynchronousTestCase):
    """How ``twistd dnsgo`` chooses between a server and a supervisor."""

    def options(self, workers: int, *extra: str) -> Options:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'server:\n  listen_address: "127.0.0.1:5399"\n  num_workers: {workers}\nupstreams: ["127.0.0.1:53"]\n')
        options = Options()
        options.parseOptions(["--config", path, *extra])
        return options

    def test_one_worker_is_a_plain_server(self):
        """num_workers: 1 serves in this process."""
        self.assertIsInstance(makeService(self.options(1)), ServerRoot)

    def test_several_workers_make_a_supervisor(self):
        """num_workers: 3 gives a supervisor of worker-1..3 loading the same file."""
        options = self.options(3)
        root = makeService(options)
        self.assertIsInstance(root, WorkerSupervisor)
        self.assertEqual(root.names, ["worker-1", "worker-2", "worker-3"])

    def test_worker_subcommand_needs_a_control_plane(self):
        """``dnsgo worker`` without --control-plane or $CONTROL_PLANE_ADDRESS is a usage error."""
        from twisted.python import usage

        from dnsgo.tap import Options as TapOptions

        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CONTROL_PLANE_ADDRESS"})
        self.assertRaises(usage.UsageError, TapOptions().parseOptions, ["worker"])


class ReusePortTests(unittest.TestCase):
    """``build_service(reuse_port=...)`` with real sockets."""

    def build(self, port: int, reuse_port: bool):
        root = build_service(make_config(port, 1), reuse_port=reuse_port)
        root.startService()
        self.addCleanup(root.stopService)
        return root

    def test_workers_share_the_port(self):
        """Two servers built with reuse_port bind the same UDP and TCP port."""
        port = free_port()
        self.build(port, True)
        self.build(port, True)

    def test_plain_server_does_not_share(self):
        """Without reuse_port a second server on the same port fails to start."""
        port = free_port()
        self.build(port, False)
        second = build_service(make_config(port, 1))
        # (Its UDP socket may bind -- SO_REUSEADDR allows that for UDP on
        # Linux -- so stop whatever it opened.)
        self.addCleanup(second.stopService)
        self.assertRaises(OSError, second.startService)


# --------------------------------------------------------------------------
# Real twistd supervisors


class Output(protocol.ProcessProtocol):
    """Collects a process's output; ``ended`` fires with the exit reason's value."""

    def __init__(self) -> None:
        self.out = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def pids(self) -> dict[str, list[int]]:
        """Every pid each worker was started with, in order."""
        found: dict[str, list[int]] = {}
        for name, pid in re.findall(r"(worker-\d+) (?:started|restarted) \(pid (\d+)", self.text):
            found.setdefault(name, []).append(int(pid))
        return found


@defer.inlineCallbacks
def wait_for(condition, what: str, timeout: float = 20.0):
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ask_many(port: int, count: int) -> list[int]:
    """Send ``count`` queries over UDP, each from a new socket; the rcodes (-1 for no answer)."""
    rcodes = []
    for _ in range(count):
        q = dns.message.make_query("www.example.test", "A")
        try:
            rcodes.append(dns.query.udp(q, "127.0.0.1", port=port, timeout=2).rcode())
        except dns.exception.Timeout:
            rcodes.append(-1)
    return rcodes


class SupervisorRunTests(unittest.TestCase):
    """``twistd -n dnsgo`` with num_workers > 1, for real."""

    def run_dnsgo(self, workers: int, extra: str = "", port: int | None = None):
        """Start twistd dnsgo with ``workers`` workers; returns (output, transport, port)."""
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)
        port = free_port() if port is None else port
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                f'server:\n  listen_address: "127.0.0.1:{port}"\n  num_workers: {workers}\n'
                f'upstreams: ["127.0.0.1:{self.auth.port}"]\napi:\n  listen_address: "127.0.0.1:0"\n{extra}'
            )
        out = Output()
        env, mark = marked_environ(self)
        transport = reactor.spawnProcess(
            out, TWISTD, [TWISTD, "-n", "--pidfile=", "dnsgo", "--config", path], env=env, path=os.getcwd(),
        )
        self.addCleanup(self.cleanup, out, mark)
        return out, transport, port

    @defer.inlineCallbacks
    def cleanup(self, out, mark):
        """
        Kill whatever the test left running: the supervisor and every worker
        it started, found by the mark they inherited, including a worker the
        supervisor restarted while the others were being killed and one
        whose start it had not logged yet.
        """
        yield kill_marked(mark)
        yield out.ended

    def listening(self, out, count: int):
        """Wait until ``count`` workers have said they are listening."""
        return wait_for(lambda: out.text.count("DNS listening") >= count, f"{count} workers listening\n{out.text}")

    @defer.inlineCallbacks
    def test_both_workers_answer(self):
        """With 2 workers on one port, queries from many source ports are answered by both."""
        out, _, port = self.run_dnsgo(2, "logging:\n  query_log: true\n")
        yield self.listening(out, 2)
        rcodes = yield threads.deferToThread(ask_many, port, 200)
        self.assertEqual(rcodes, [dns.rcode.NOERROR] * 200)

        def logged(name):
            return len(re.findall(rf"\[{name}\] .*query 127\.0\.0\.1 www\.example\.test\. A udp", out.text))

        yield wait_for(lambda: logged("worker-1") + logged("worker-2") >= 200, "200 query log lines")
        self.assertEqual(logged("worker-1") + logged("worker-2"), 200)
        self.assertGreater(logged("worker-1"), 0, out.text)
        self.assertGreater(logged("worker-2"), 0, out.text)

    @defer.inlineCallbacks
    def test_killed_worker_is_restarted(self):
        """A worker killed with SIGKILL is restarted with a new pid, and the port keeps answering."""
        out, _, port = self.run_dnsgo(2)
        yield self.listening(out, 2)
        pids = out.pids()
        os.kill(pids["worker-1"][0], signal.SIGKILL)
        yield wait_for(lambda: len(out.pids()["worker-1"]) == 2, f"worker-1 restarted\n{out.text}")
        yield self.listening(out, 3)
        after = out.pids()
        self.assertNotEqual(after["worker-1"][1], pids["worker-1"][0])
        self.assertTrue(alive(after["worker-1"][1]))
        self.assertEqual(after["worker-2"], pids["worker-2"])
        self.assertIn("worker-1 (pid %d) was killed by signal 9; restarting" % pids["worker-1"][0], out.text)
        rcodes = yield threads.deferToThread(ask_many, port, 20)
        self.assertEqual(rcodes, [dns.rcode.NOERROR] * 20)
        r = yield ask(port, "www.example.test", "A", tcp=True)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)

    @defer.inlineCallbacks
    def test_sigterm_stops_every_worker(self):
        """SIGTERM to the supervisor stops every worker (none left alive) and the supervisor exits."""
        out, transport, port = self.run_dnsgo(3)
        yield self.listening(out, 3)
        pids = [p[0] for p in out.pids().values()]
        self.assertEqual(len(pids), 3)
        self.assertTrue(all(alive(pid) for pid in pids))
        # Each worker leads its own process group: a signal to the
        # supervisor's group (Ctrl-C) does not reach the workers directly.
        self.assertEqual([os.getpgid(pid) for pid in pids], pids)
        transport.signalProcess("TERM")
        reason = yield out.ended
        self.assertEqual(reason.signal, signal.SIGTERM, out.text)
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        for name in ("worker-1", "worker-2", "worker-3"):
            self.assertRegex(out.text, rf"\[{name}\] .*Server Shut Down")
        self.assertNotIn("Traceback", out.text)
        self.assertNotIn("restarted", out.text)

    @defer.inlineCallbacks
    def test_one_worker_runs_no_supervisor(self):
        """num_workers: 1 serves from the twistd process itself, with no workers."""
        out, transport, port = self.run_dnsgo(1)
        yield self.listening(out, 1)
        r = yield ask(port, "www.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertNotIn("worker-", out.text)
        self.assertEqual(out.text.count("DNS listening"), 1)
        transport.signalProcess("TERM")
        yield out.ended

    @defer.inlineCallbacks
    def test_address_in_use_fails_at_start(self):
        """An address held by another socket: the supervisor exits 1 with the reason and starts no worker."""
        held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        out, _, port = self.run_dnsgo(2, port=held.getsockname()[1])
        reason = yield out.ended
        self.assertEqual(reason.exitCode, 1, out.text)
        self.assertIn(f"ListenError: cannot listen on 127.0.0.1:{port} over UDP", out.text)
        self.assertNotIn("started (pid", out.text)
