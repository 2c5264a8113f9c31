"""
The control channel: the registry's liveness rules on a fake clock, the
chunked text argument, and control planes and workers talking real AMP
over TCP on 127.0.0.1.
"""
import json
import socket

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial import unittest

from dnsgo.control.client import ControlClient
from dnsgo.control.commands import (
    CommandTimeout,
    Heartbeat,
    InvalidRequest,
    NotRegistered,
    Register,
    call,
    FlushArgument,
)
from dnsgo.control.registry import WorkerRegistry
from dnsgo.control.server import ControlService, Registration
from dnsgo.invalidation.flush import Flush

#: Long enough for anything that should happen on loopback.
PATIENCE = 15.0


# --------------------------------------------------------------------------
# Helpers


class FakeTransport:
    """Remembers that a connection was closed."""

    def __init__(self) -> None:
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True


class FakeConnection:
    """What the registry keeps of a worker's connection."""

    def __init__(self) -> None:
        self.transport = FakeTransport()


def register(registry, worker_id="w1", connection=None, **overrides):
    """Register ``worker_id`` on ``connection`` (a new fake one by default)."""
    fields = {
        "cluster_name": "site-a",
        "address": "127.0.0.1:5353",
        "version": "0.1.0",
        "capabilities": ["heartbeat"],
        "peer": "127.0.0.1:40000",
        "protocol": connection or FakeConnection(),
    }
    fields.update(overrides)
    return registry.register(worker_id, **fields)


async def wait_for(condition, what: str, timeout: float = PATIENCE):
    """Poll ``condition`` on the real reactor until it is true; fail after ``timeout``."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def within(d: defer.Deferred, timeout: float = PATIENCE) -> defer.Deferred:
    """``d``, failing with a timeout after ``timeout`` seconds (so a bug fails fast, not hangs)."""
    return d.addTimeout(timeout, reactor)


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after ``seconds`` on the real reactor."""
    return task.deferLater(reactor, seconds, lambda: None)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeWorker:
    """The hooks of a ControlClient, recording what the control plane asked."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.configs: list[str] = []
        self.reloads: list[str] = []
        self.clears: list[dict] = []
        self.shutdowns = 0
        self.stats = {"workerId": worker_id, "beat": 0}
        self.reload_answer = True
        self.clear_result = None  # a callable(request) overriding the default answer
        self.fixed_stats = None  # a snapshot to send instead of the counting one

    def snapshot(self) -> dict:
        if self.fixed_stats is not None:
            return self.fixed_stats
        self.stats = {**self.stats, "beat": self.stats["beat"] + 1}
        return self.stats

    def on_config(self, text: str) -> None:
        self.configs.append(text)

    def on_reload(self, text: str):
        self.reloads.append(text)
        return self.reload_answer

    def on_clear(self, flush, relayed: bool):
        self.clears.append((flush, relayed))
        if self.clear_result is not None:
            return self.clear_result(flush)
        return {"cleared": 7, "caches": sorted(flush.caches)}

    def on_shutdown(self) -> None:
        self.shutdowns += 1


class RawWorker(amp.AMP):
    """A hand-driven AMP peer, to say exactly what a worker says (or not)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.lost = defer.Deferred()

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


HELLO = {
    "cluster_name": "site-a",
    "dns_address": "127.0.0.1:5353",
    "version": "0.1.0",
    "capabilities": ["heartbeat"],
}


class ControlTestCase(unittest.TestCase):
    """Starts control planes and workers on 127.0.0.1 and stops them after the test."""

    config_text = "server:\n  listen_address: 127.0.0.1:5353\n"

    def start_control(self, port: int = 0, timeout: float = 30.0, config_text_for=None, **kwargs) -> ControlService:
        registry = WorkerRegistry(timeout, reactor=reactor)
        self.registrations: list[Registration] = []

        def default_config(registration):
            self.registrations.append(registration)
            return self.config_text

        control = ControlService(
            registry, config_text_for or default_config, host="127.0.0.1", port=port, reactor=reactor, **kwargs
        )
        control.startService()
        self.addCleanup(lambda: control.stopService() if control.running else None)
        return control

    def start_worker(self, port: int, worker_id: str = "w1", start: bool = True, **kwargs):
        worker = FakeWorker(worker_id)
        client = ControlClient(
            "127.0.0.1",
            port,
            worker_id=worker_id,
            cluster_name="site-a",
            dns_address="127.0.0.1:5353",
            version="0.1.0",
            snapshot=worker.snapshot,
            on_config=worker.on_config,
            on_clear=worker.on_clear,
            on_reload=worker.on_reload,
            on_shutdown=worker.on_shutdown,
            reactor=reactor,
            **kwargs,
        )
        if start:
            client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return worker, client

    async def connect_raw(self, port: int) -> RawWorker:
        raw = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawWorker())
        def close():
            if raw.transport is not None:
                raw.transport.loseConnection()
            return raw.lost

        self.addCleanup(close)
        return raw

    async def workers_registered(self, control, *clients):
        """Wait until every client is registered and has sent a heartbeat."""
        await within(defer.gatherResults([client.ready for client in clients]))
        await wait_for(
            lambda: all(
                client.registered
                and control.registry.get(client.worker_id) is not None
                and control.registry.get(client.worker_id).snapshot is not None
                for client in clients
            ),
            "the workers to register and heartbeat",
        )


# --------------------------------------------------------------------------
# The registry on a fake clock


class RegistryTests(unittest.SynchronousTestCase):
    """Liveness and replacement rules of WorkerRegistry."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = WorkerRegistry(30.0, reactor=self.clock)

    def test_registered_worker_is_listed_healthy(self):
        """A worker just registered is listed with what it said, healthy, without a snapshot yet."""
        register(self.registry, "w2", capabilities=["heartbeat", "clear-cache"])
        register(self.registry, "w1")
        views = self.registry.workers()
        self.assertEqual([v.worker_id for v in views], ["w1", "w2"])
        view = self.registry.get("w2")
        self.assertEqual(view.cluster_name, "site-a")
        self.assertEqual(view.address, "127.0.0.1:5353")
        self.assertEqual(view.capabilities, ("heartbeat", "clear-cache"))
        self.assertEqual(view.status, "healthy")
        self.assertTrue(view.connected)
        self.assertEqual(view.connected_at, 1000)
        self.assertIsNone(view.snapshot)
        self.assertIsNone(self.registry.get("nobody"))

    def test_heartbeat_records_snapshot_and_time(self):
        """A heartbeat stores its snapshot and moves last_heartbeat to now."""
        register(self.registry)
        self.clock.advance(10)
        self.registry.heartbeat("w1", {"beat": 1})
        view = self.registry.get("w1")
        self.assertEqual(view.snapshot, {"beat": 1})
        self.assertEqual(view.last_heartbeat, 1010)

    def test_unknown_worker_heartbeat(self):
        """A heartbeat from a worker that is not registered raises KeyError."""
        self.assertRaises(KeyError, self.registry.heartbeat, "w1", {})

    def test_unhealthy_after_timeout_and_healthy_again(self):
        """Past heartbeat_timeout without a heartbeat a worker is unhealthy; a heartbeat heals it."""
        register(self.registry)
        self.clock.advance(30)
        self.assertEqual(self.registry.get("w1").status, "healthy")
        self.clock.advance(0.5)
        self.assertEqual(self.registry.get("w1").status, "unhealthy")
        self.registry.heartbeat("w1", {})
        self.assertEqual(self.registry.get("w1").status, "healthy")

    def test_forgotten_after_three_timeouts(self):
        """After three timeouts without a heartbeat the worker is forgotten and its connection closed."""
        connection = FakeConnection()
        register(self.registry, connection=connection)
        self.clock.advance(89)
        self.assertIsNotNone(self.registry.get("w1"))
        self.assertFalse(connection.transport.closed)
        self.clock.advance(1.5)
        self.assertIsNone(self.registry.get("w1"))
        self.assertTrue(connection.transport.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeat_postpones_expiry(self):
        """Each heartbeat restarts the count towards being forgotten."""
        register(self.registry)
        for _ in range(5):
            self.clock.advance(80)
            self.registry.heartbeat("w1", {})
        self.clock.advance(80)
        self.assertEqual(self.registry.get("w1").status, "unhealthy")
        self.clock.advance(11)
        self.assertIsNone(self.registry.get("w1"))

    def test_disconnected_worker_stays_until_expiry(self):
        """A lost connection marks the worker disconnected; it is forgotten on the heartbeat clock."""
        connection = FakeConnection()
        register(self.registry, connection=connection)
        self.registry.disconnected("w1", connection)
        view = self.registry.get("w1")
        self.assertFalse(view.connected)
        self.assertEqual(view.status, "healthy")
        self.clock.advance(91)
        self.assertIsNone(self.registry.get("w1"))

    def test_same_id_replaces_old_session(self):
        """Registering an id again replaces the session and closes the old connection;
        the old connection's loss then leaves the new session alone."""
        old, new = FakeConnection(), FakeConnection()
        register(self.registry, connection=old, peer="10.0.0.1:1")
        self.clock.advance(20)
        register(self.registry, connection=new, peer="10.0.0.2:2")
        self.assertTrue(old.transport.closed)
        self.assertFalse(new.transport.closed)
        self.registry.disconnected("w1", old)
        view = self.registry.get("w1")
        self.assertEqual(view.peer, "10.0.0.2:2")
        self.assertTrue(view.connected)
        self.assertEqual(view.connected_at, 1020)
        self.assertEqual(len(self.registry), 1)
        # The old session's timers are gone: only the new one's expiry counts.
        self.clock.advance(75)
        self.assertIsNotNone(self.registry.get("w1"))

    def test_remove_and_close(self):
        """remove forgets one worker; close forgets all and leaves no timer behind."""
        register(self.registry, "w1")
        register(self.registry, "w2")
        self.assertTrue(self.registry.remove("w1"))
        self.assertFalse(self.registry.remove("w1"))
        self.assertEqual([v.worker_id for v in self.registry.workers()], ["w2"])
        self.registry.close()
        self.assertEqual(self.registry.workers(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_must_be_positive(self):
        """A heartbeat timeout of zero is refused."""
        self.assertRaises(ValueError, WorkerRegistry, 0, reactor=self.clock)


# --------------------------------------------------------------------------
# The wire format


class BigUnicodeTests(unittest.SynchronousTestCase):
    """Text of any length crosses AMP's 64 KiB value limit."""

    def roundtrip(self, text: str) -> str:
        box = Heartbeat.makeArguments({"snapshot": text}, None)
        # The box must be sendable: serializing enforces AMP's limits.
        wire = box.serialize()
        parsed = amp.parse(_BytesFile(wire))[0]
        return Heartbeat.parseArguments(parsed, None)["snapshot"]

    def test_short_and_empty(self):
        """Short and empty texts come back unchanged."""
        self.assertEqual(self.roundtrip(""), "")
        self.assertEqual(self.roundtrip("héllo"), "héllo")

    def test_long_text_is_chunked(self):
        """Texts at, just over and far over 65,535 bytes (with multi-byte characters
        split across chunks) come back unchanged."""
        for text in ("a" * 65535, "a" * 65536, "é" * 40000, ("x" * 65534 + "€") * 5):
            self.assertEqual(self.roundtrip(text), text)

    def test_chunk_keys(self):
        """A 150,000-byte text travels as a count and three chunks."""
        box = Heartbeat.makeArguments({"snapshot": "z" * 150000}, None)
        self.assertEqual(box[b"snapshot"], b"3")
        self.assertEqual([len(box[b"snapshot.%d" % i]) for i in range(3)], [65535, 65535, 18930])


class _BytesFile:
    """Just enough of a file for amp.parse."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self.data)
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


class CallTests(unittest.SynchronousTestCase):
    """Commands with a deadline."""

    def test_timeout_and_late_answer(self):
        """No answer within the timeout fails with CommandTimeout; the late answer is dropped."""
        clock = Clock()
        pending = defer.Deferred()

        class Silent:
            def callRemote(self, command, **kw):
                return pending

        d = call(Silent(), Heartbeat, timeout=5, reactor=clock, snapshot="{}")
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.assertIn("Heartbeat", str(self.failureResultOf(d, CommandTimeout).value))
        pending.callback({})  # must not raise AlreadyCalledError

    def test_answer_cancels_timer(self):
        """An answer in time is delivered and leaves no timer behind."""
        clock = Clock()

        class Quick:
            def callRemote(self, command, **kw):
                return defer.succeed({"ok": kw})

        d = call(Quick(), Heartbeat, timeout=5, reactor=clock, snapshot="{}")
        self.assertEqual(self.successResultOf(d), {"ok": {"snapshot": "{}"}})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_flush_argument(self):
        """A Flush crosses the channel as its JSON and comes back equal; anything else is refused."""
        argument = FlushArgument()
        for flush in (Flush.everything(), Flush("Example.COM", "AAAA", True, "message"), Flush("a\\.b.example.")):
            self.assertEqual(argument.fromString(argument.toString(flush)), flush)
        for bad in (b"{}", b"[]", b'{"name": null, "caches": ["shared"]}', b"not json", b"[" * 10000):
            self.assertRaises(InvalidRequest, argument.fromString, bad)


# --------------------------------------------------------------------------
# Real AMP over TCP


class RegistrationTests(ControlTestCase):
    """Workers register and report."""

    async def test_register_delivers_config(self):
        """A worker registers, gets the control plane's configuration once, and is listed."""
        control = self.start_control()
        worker, client = self.start_worker(control.bound_port, "w1")
        self.assertEqual(await within(client.ready), self.config_text)
        self.assertEqual(worker.configs, [self.config_text])
        self.assertEqual(client.config_text, self.config_text)
        await self.workers_registered(control, client)
        view = control.registry.get("w1")
        self.assertEqual((view.cluster_name, view.address, view.version), ("site-a", "127.0.0.1:5353", "0.1.0"))
        self.assertIn("clear-cache", view.capabilities)
        self.assertTrue(view.peer.startswith("127.0.0.1:"))
        self.assertEqual(self.registrations[0].worker_id, "w1")
        self.assertEqual(self.registrations[0].dns_address, "127.0.0.1:5353")

    async def test_first_config_fails(self):
        """If the first configuration cannot be applied, ready fails with the reason
        and the worker sends no heartbeats."""
        control = self.start_control(timeout=0.3)
        worker, client = self.start_worker(control.bound_port, start=False)

        def broken(text):
            raise ValueError("cannot listen")

        client._on_config = broken
        client.startService()
        with self.assertRaises(ValueError):
            await within(client.ready)
        await sleep(0.3)
        self.assertIsNone(control.registry.get("w1").snapshot)
        self.assertEqual(worker.stats["beat"], 0)
        self.flushLoggedErrors(ValueError)

    async def test_heartbeats_update_snapshot(self):
        """Heartbeats (every third of the timeout) keep replacing the worker's snapshot."""
        control = self.start_control(timeout=0.3)
        worker, client = self.start_worker(control.bound_port)
        await self.workers_registered(control, client)
        await wait_for(lambda: control.registry.get("w1").snapshot["beat"] >= 4, "several heartbeats")
        self.assertEqual(control.registry.get("w1").status, "healthy")
        self.assertEqual(worker.configs, [self.config_text])

    async def test_silent_worker_goes_unhealthy_then_is_forgotten(self):
        """A registered worker that never heartbeats turns unhealthy after the timeout,
        then is forgotten and its connection closed."""
        control = self.start_control(timeout=0.3)
        raw = await self.connect_raw(control.bound_port)
        answer = await raw.callRemote(Register, worker_id="quiet", **HELLO)
        self.assertAlmostEqual(answer["heartbeat_interval"], 0.1)
        self.assertEqual(control.registry.get("quiet").status, "healthy")
        await wait_for(lambda: control.registry.get("quiet").status == "unhealthy", "unhealthy")
        await within(raw.lost)
        self.assertIsNone(control.registry.get("quiet"))

    async def test_same_id_replaces_old_connection(self):
        """A second registration under the same id takes over and the first connection is closed."""
        control = self.start_control()
        raw = await self.connect_raw(control.bound_port)
        await raw.callRemote(Register, worker_id="w1", **HELLO)
        first_peer = control.registry.get("w1").peer
        worker, client = self.start_worker(control.bound_port, "w1")
        await within(raw.lost)
        await self.workers_registered(control, client)
        self.assertNotEqual(control.registry.get("w1").peer, first_peer)
        self.assertTrue(control.registry.get("w1").connected)
        self.assertEqual(len(control.registry), 1)

    async def test_heartbeat_before_register_and_bad_snapshot(self):
        """Heartbeats need a registration, and their snapshot must be a JSON object."""
        control = self.start_control()
        raw = await self.connect_raw(control.bound_port)
        with self.assertRaises(NotRegistered):
            await raw.callRemote(Heartbeat, snapshot="{}")
        await raw.callRemote(Register, worker_id="w1", **HELLO)
        with self.assertRaises(InvalidRequest):
            await raw.callRemote(Heartbeat, snapshot="not json")
        with self.assertRaises(InvalidRequest):
            await raw.callRemote(Heartbeat, snapshot="[1]")
        await raw.callRemote(Heartbeat, snapshot='{"ok": 1}')
        self.assertEqual(control.registry.get("w1").snapshot, {"ok": 1})

    async def test_refused_registrations(self):
        """An empty worker id, or a configuration the control plane cannot make, is refused
        and nothing is registered."""

        def config_for(registration):
            if registration.worker_id == "broken":
                raise RuntimeError("no template")
            return "x"

        control = self.start_control(config_text_for=config_for)
        raw = await self.connect_raw(control.bound_port)
        with self.assertRaises(InvalidRequest):
            await raw.callRemote(Register, worker_id=" ", **HELLO)
        with self.assertRaises(InvalidRequest) as caught:
            await raw.callRemote(Register, worker_id="broken", **HELLO)
        self.assertIn("no template", str(caught.exception))
        self.assertEqual(len(control.registry), 0)
        self.flushLoggedErrors(RuntimeError)

    async def test_forgotten_worker_registers_again(self):
        """A worker the control plane forgot while still connected is told so by its next
        heartbeat and registers again on the same connection, without a new configuration."""
        control = self.start_control(timeout=0.3)
        worker, client = self.start_worker(control.bound_port)
        await self.workers_registered(control, client)
        peer = control.registry.get("w1").peer
        control.registry.remove("w1")
        await wait_for(lambda: control.registry.get("w1") is not None, "registration again")
        self.assertEqual(control.registry.get("w1").peer, peer)
        self.assertEqual(worker.configs, [self.config_text])
        self.assertEqual(worker.reloads, [])

    async def test_big_snapshot_and_config(self):
        """A snapshot and a configuration far over 64 KiB get through intact."""
        self.config_text = "# " + "c" * 200000 + "\n"
        control = self.start_control()
        worker, client = self.start_worker(control.bound_port, start=False)
        big = {"workerId": "w1", "queries": [["NOERROR", f"TYPE{i}", "udp", i] for i in range(20000)]}
        worker.fixed_stats = big
        client.startService()
        self.assertGreater(len(json.dumps(big)), 65536 * 5)
        self.assertEqual(await within(client.ready), self.config_text)
        await wait_for(lambda: control.registry.get("w1") and control.registry.get("w1").snapshot, "a snapshot")
        self.assertEqual(control.registry.get("w1").snapshot, big)


class CommandTests(ControlTestCase):
    """The control plane's operations reach the workers they target."""

    async def three_workers(self, **kwargs):
        control = self.start_control(**kwargs)
        workers = {}
        clients = []
        for worker_id in ("w1", "w2", "w3"):
            worker, client = self.start_worker(control.bound_port, worker_id)
            workers[worker_id] = worker
            clients.append(client)
        await self.workers_registered(control, *clients)
        return control, workers, clients

    async def test_clear_cache_targets(self):
        """ClearCache reaches only the named workers, with its arguments, and returns their answers."""
        control, workers, _ = await self.three_workers()
        workers["w3"].clear_result = lambda request: {"cleared": 2, "caches": ["message"]}
        flush = Flush("example.com.", "A", True)
        results = await control.clear_cache(["w3", "w1"], flush)
        self.assertEqual(
            results,
            [
                {"workerId": "w3", "success": True, "cleared": ["message"], "count": 2},
                {"workerId": "w1", "success": True, "cleared": ["message", "rrset"], "count": 7},
            ],
        )
        self.assertEqual(workers["w1"].clears, [(flush, False)])
        self.assertEqual(workers["w2"].clears, [])

    async def test_clear_cache_all_workers_without_name(self):
        """Without worker ids every worker is flushed; a flush of everything arrives as one."""
        control, workers, _ = await self.three_workers()
        results = await control.clear_cache(None, Flush.everything(caches="rrset"))
        self.assertEqual([r["workerId"] for r in results], ["w1", "w2", "w3"])
        self.assertTrue(all(r["success"] for r in results))
        for worker in workers.values():
            self.assertEqual(worker.clears, [(Flush.everything(caches="rrset"), False)])

    async def test_unknown_worker_and_cache(self):
        """Unknown worker ids raise KeyError naming them, before anything is sent;
        an unknown cache cannot even make a Flush."""
        control, workers, _ = await self.three_workers()
        with self.assertRaises(KeyError) as caught:
            control.clear_cache(["w1", "nope", "gone"], Flush.everything(caches="message"))
        self.assertIn("nope, gone", str(caught.exception))
        self.assertRaises(KeyError, control.reload_config, ["nope"], "x")
        self.assertRaises(KeyError, control.shutdown, "nope")
        self.assertRaises(ValueError, Flush, caches=["shared"])
        await sleep(0.1)
        self.assertEqual(workers["w1"].clears, [])

    async def test_failing_and_silent_workers(self):
        """A worker whose flush fails, and one that does not answer in time, are reported
        as failures with a reason; the others still succeed."""
        control, workers, _ = await self.three_workers(command_timeout=0.5)

        def fails(flush):
            raise RuntimeError("disk on fire")

        workers["w1"].clear_result = fails
        workers["w2"].clear_result = lambda flush: defer.Deferred()
        results = await control.clear_cache(None, Flush.everything(caches="message"))
        self.assertEqual(results[0], {"workerId": "w1", "success": False, "cleared": [], "count": 0,
                                      "error": "disk on fire"})
        self.assertFalse(results[1]["success"])
        self.assertIn("no answer to ClearCache", results[1]["error"])
        self.assertEqual(results[2], {"workerId": "w3", "success": True, "cleared": ["message"], "count": 7})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_broadcast_flush_and_invalidate(self):
        """broadcast_flush reaches every worker but the excluded one, marked relayed; a
        worker's invalidate is relayed to all the others."""
        control, workers, clients = await self.three_workers()
        first = Flush("a.example.", caches="message")
        results = await control.broadcast_flush(first, exclude="w2")
        self.assertEqual([r["workerId"] for r in results], ["w1", "w3"])
        self.assertEqual(workers["w2"].clears, [])
        second = Flush("b.example.", "AAAA", caches="rrset")
        answer = await clients[0].invalidate(second)
        self.assertEqual(answer, {"workers": 2, "failed": 0})
        self.assertEqual(workers["w1"].clears, [(first, True)])
        for worker_id in ("w2", "w3"):
            self.assertEqual(workers[worker_id].clears[-1], (second, True))

    async def test_reload_config(self):
        """ReloadConfig hands the text to the worker's reload hook and reports whether it applied."""
        control, workers, clients = await self.three_workers()
        workers["w2"].reload_answer = False
        results = await control.reload_config(["w1", "w2"], "new: config\n")
        self.assertEqual(results, [
            {"workerId": "w1", "success": True, "applied": True},
            {"workerId": "w2", "success": False, "applied": False},
        ])
        self.assertEqual(workers["w1"].reloads, ["new: config\n"])
        self.assertEqual(clients[0].config_text, "new: config\n")
        self.assertEqual(clients[1].config_text, self.config_text)
        self.assertEqual(workers["w3"].reloads, [])

    async def test_reload_hook_fails(self):
        """A reload hook that raises is reported as a failure with its reason, and the
        worker keeps its configuration."""
        control, workers, clients = await self.three_workers()

        def broken(text):
            raise ValueError("server.listen_address: bad")

        clients[0]._on_reload = broken
        results = await control.reload_config(["w1"], "bad: config\n")
        self.assertEqual(results, [{"workerId": "w1", "success": False, "applied": False,
                                    "error": "server.listen_address: bad"}])
        self.assertEqual(clients[0].config_text, self.config_text)

    async def test_invalidate_needs_registration(self):
        """A worker that is not registered cannot ask for a broadcast flush."""
        worker, client = self.start_worker(free_tcp_port())
        with self.assertRaises(NotRegistered):
            await client.invalidate(Flush.everything(caches="message"))

    async def test_shutdown(self):
        """Shutdown reaches the worker's hook and the control plane forgets the worker."""
        control, workers, _ = await self.three_workers()
        result = await control.shutdown("w2")
        self.assertEqual(result, {"workerId": "w2", "success": True})
        await wait_for(lambda: workers["w2"].shutdowns == 1, "the shutdown hook")
        self.assertIsNone(control.registry.get("w2"))
        self.assertEqual([v.worker_id for v in control.registry.workers()], ["w1", "w3"])
        self.assertEqual(workers["w1"].shutdowns, 0)


class ReconnectionTests(ControlTestCase):
    """Workers outlive the control plane and find it again."""

    async def test_control_restart(self):
        """After the control plane stops and starts again on the same port, workers
        register again by themselves, keeping their configuration."""
        control = self.start_control(timeout=0.3)
        port = control.bound_port
        pairs = [self.start_worker(port, worker_id) for worker_id in ("w1", "w2")]
        await self.workers_registered(control, *(client for _, client in pairs))
        await control.stopService()
        self.assertEqual(len(control.registry), 0)
        await wait_for(lambda: not any(client.registered for _, client in pairs), "the workers to notice")
        await sleep(0.5)
        again = self.start_control(port=port, timeout=0.3)
        await wait_for(lambda: len(again.registry) == 2, "the workers to register again", timeout=10)
        await self.workers_registered(again, *(client for _, client in pairs))
        for worker, _ in pairs:
            self.assertEqual(worker.configs, [self.config_text])
            self.assertEqual(worker.reloads, [])

    async def test_control_restart_with_new_config(self):
        """A control plane that comes back with a different configuration makes the
        workers reload it (on_config is not called again)."""
        control = self.start_control()
        port = control.bound_port
        worker, client = self.start_worker(port)
        await self.workers_registered(control, client)
        await control.stopService()
        self.config_text = "server:\n  listen_address: 127.0.0.1:5454\n"
        again = self.start_control(port=port)
        await wait_for(lambda: worker.reloads == [self.config_text], "the reload", timeout=10)
        self.assertEqual(len(worker.configs), 1)
        self.assertEqual(client.config_text, self.config_text)
        await self.workers_registered(again, client)

    async def test_worker_started_before_control(self):
        """A worker started before its control plane waits (not ready), then registers
        and gets its configuration once the control plane is up."""
        port = free_tcp_port()
        worker, client = self.start_worker(port)
        await sleep(0.5)
        self.assertFalse(client.ready.called)
        self.assertEqual(worker.configs, [])
        control = self.start_control(port=port)
        self.assertEqual(await within(client.ready), self.config_text)
        await self.workers_registered(control, client)

    async def test_stopping_control_closes_connections(self):
        """Stopping the control plane closes every worker connection and empties the registry."""
        control = self.start_control()
        raw = await self.connect_raw(control.bound_port)
        await raw.callRemote(Register, worker_id="w1", **HELLO)
        await control.stopService()
        await within(raw.lost)
        self.assertEqual(control.registry.workers(), [])
