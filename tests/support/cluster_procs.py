"""
Real dnsgo processes for end-to-end tests of the control plane: a control
plane (``twistd dnsgo control``), workers (``twistd dnsgo worker``) and the
standalone supervisor, each a twistd child of the test, plus a small HTTP
client for the management API.

Every process a test starts is killed (SIGKILL, or SIGTERM first for a
supervisor so that it stops its own workers) and waited for when the test
ends, with every process it started in turn: each carries a mark in its
environment (tests.support.harness.marked_environ) that its children inherit.
"""
import json
import os
import re
import signal
import socket
import sys
import http.client as http_client
import urllib.error
import urllib.request

from twisted.internet import defer, error, protocol, reactor, task, threads
from twisted.logger import Logger

from tests.support.harness import kill_marked, marked_environ

#: The bearer token of the control planes the tests start.
TOKEN = "e2e-token-6b1f"


#: The twistd of the venv the tests run in.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    """A port that is free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            p = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    continue
            return p
    raise RuntimeError("no free port")

_log = Logger(namespace="tests.support.cluster_procs")

#: How much of a process's output goes to the test log when it ends (its end).
LOGGED_TAIL = 16000

#: The name every test asks for (in tests.support.authority's zone).
WWW = ("www.example.test.", "A")


def clean_environ(**extra: str) -> dict:
    """This process's environment without dnsgo's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DNSGO_API_TOKEN", "WORKER_ID", "SITE_ID", "CONTROL_PLANE_ADDRESS")}
    env.update(extra)
    return env


class TwistdProcess(protocol.ProcessProtocol):
    """A twistd child: its output so far, and ``ended`` (fires with the exit reason's value)."""

    def __init__(self, name: str, mark: str | None = None) -> None:
        self.name = name
        #: The mark (tests.support.harness.MARK) in its environment and its children's.
        self.mark = mark
        self.out = b""
        self.ended = defer.Deferred()
        self.running = True
        self.logged = False

    def outReceived(self, data):
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.running = False
        self.ended.callback(reason.value)

    @property
    def text(self) -> str:
        """The output so far, decoded."""
        return self.out.decode("utf-8", "replace")

    @property
    def pid(self) -> int | None:
        """The child's pid (None once it ended)."""
        return self.transport.pid

    def signal(self, name: str) -> None:
        """Send signal ``name`` ("KILL", "TERM") unless the process already ended."""
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def wait_for_text(self, text: str, timeout: float = 15.0) -> defer.Deferred:
        """Fires once ``text`` appeared in the output; fails (with the output) on timeout or exit."""

        def seen():
            if text in self.text:
                return True
            if not self.running:
                raise AssertionError(f"{self.name} ended before printing {text!r}:\n{self.text}")
            return False

        return wait_until(seen, f"{self.name} to print {text!r}", timeout, lambda: self.text)


def spawn_twistd(testcase, name: str, args: list[str], env: dict | None = None, *, graceful: float = 0.0,
                 children=None):
    """
    Start ``twistd -n --pidfile= ARGS`` as ``name``, in the test's
    directory, with ``env`` (default :func:`clean_environ`) marked for it;
    returns its :class:`TwistdProcess`.  When the test ends it is sent
    SIGTERM and given ``graceful`` seconds (0: SIGKILL at once), then
    SIGKILL, and waited for; then every process it started and left running
    (found by the mark they inherited, whether or not it logged them) is
    SIGKILLed and waited for.  (``children``, a function naming the pids of
    such processes from the output, is no longer needed for that and is
    ignored.)
    """
    env, mark = marked_environ(testcase, env if env is not None else clean_environ())
    proc = TwistdProcess(name, mark)
    reactor.spawnProcess(proc, TWISTD, [TWISTD, "-n", "--pidfile=", *args], env=env, path=os.getcwd())

    @defer.inlineCallbacks
    def stop():
        yield stop_process(proc, graceful)
        # It cannot start any more now: kill those still running, orphans included.
        yield kill_marked(mark)

    testcase.addCleanup(stop)
    return proc


@defer.inlineCallbacks
def stop_process(proc: TwistdProcess, graceful: float = 0.0):
    """
    SIGTERM and up to ``graceful`` seconds, then SIGKILL; fires when the
    process is gone (its output then goes to the test log, _trial_temp/test.log).
    Processes it started are left alone (a test may check that it stopped
    them); the cleanup :func:`spawn_twistd` adds kills them.
    """
    if proc.running and graceful > 0:
        proc.signal("TERM")
        waited = 0.0
        while proc.running and waited < graceful:
            yield task.deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
    proc.signal("KILL")
    yield proc.ended
    if not proc.logged:
        proc.logged = True
        text = proc.text
        if len(text) > LOGGED_TAIL:  # trial -j2 carries a log event in one AMP value (64 KiB at most)
            text = f"[{len(text) - LOGGED_TAIL} characters left out]\n" + text[-LOGGED_TAIL:]
        _log.info("output of {name}:\n{text}", name=proc.name, text=text)


def kill_pid(pid: int) -> None:
    """SIGKILL ``pid`` if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@defer.inlineCallbacks
def wait_until(condition, what: str, timeout: float = 10.0, last=None, interval: float = 0.05):
    """
    Call ``condition()`` (a value or a Deferred of one) until it is truthy
    and fire with that value; after ``timeout`` seconds fail, showing
    ``last()`` (or the last value seen).
    """
    deadline = reactor.seconds() + timeout
    value = None
    while True:
        value = yield defer.maybeDeferred(condition)
        if value:
            return value
        if reactor.seconds() > deadline:
            shown = last() if last is not None else value
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last seen:\n{shown}")
        yield task.deferLater(reactor, interval, lambda: None)


def write_file(testcase, text: str) -> str:
    """Write ``text`` to a new file of the test; its absolute path."""
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# -- HTTP -----------------------------------------------------------------------


class Response:
    """An HTTP response: status, headers (lower-cased names) and body bytes."""

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        """The body decoded as JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:2000]!r}>"


def http(port: int, method: str, path: str, *, token: str | None = TOKEN, body: bytes | None = None,
         timeout: float = 5.0, host: str = "127.0.0.1") -> defer.Deferred:
    """``method path`` on host:port (in a thread); fires with a :class:`Response` whatever its status."""

    def exchange() -> Response:
        request = urllib.request.Request(f"http://{host}:{port}{path}", data=body, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())

    return threads.deferToThread(exchange)


def http_or_none(port: int, method: str, path: str, **kw) -> defer.Deferred:
    """
    Like :func:`http`, but fires with None while nothing answers on the port
    (refused, or, before the server listens, a connection to a free
    ephemeral port that met itself and got no HTTP back).
    """
    return http(port, method, path, **kw).addErrback(lambda f: f.trap(OSError, http_client.HTTPException) and None)


# -- the management API and a control plane with its workers ---------------------


class ApiClient:
    """The management API on 127.0.0.1:``api_port``, asked with the bearer token."""

    def __init__(self, api_port: int) -> None:
        self.api_port = api_port

    def wait_healthy(self, *worker_ids: str, timeout: float = 10.0) -> defer.Deferred:
        """Fires with the ``/api/workers`` body once it lists ``worker_ids`` (at least) as healthy."""

        def check():
            return self.get_or_none("/api/workers").addCallback(
                lambda body: body if body and {w: "healthy" for w in worker_ids}.items()
                <= {w["workerId"]: w["status"] for w in body["workers"]}.items() else None)

        return wait_until(check, f"{', '.join(worker_ids)} healthy in /api/workers", timeout)

    def api(self, method: str, path: str, **kw) -> defer.Deferred:
        """A request to the management API."""
        return http(self.api_port, method, path, **kw)

    def get(self, path: str) -> defer.Deferred:
        """GET ``path`` with the token; fires with the JSON body (fails unless 200)."""

        def ok(response):
            if response.status != 200:
                raise AssertionError(f"GET {path}: {response!r}")
            return response.json()

        return self.api("GET", path).addCallback(ok)

    def get_or_none(self, path: str) -> defer.Deferred:
        """GET ``path``; fires with the JSON body, or None while the API is down or not 200."""
        d = http_or_none(self.api_port, "GET", path)
        return d.addCallback(lambda r: r.json() if r is not None and r.status == 200 else None)

    def clear(self, request: dict) -> defer.Deferred:
        """``DELETE /api/cache/distributed`` with ``request`` as the body; fires with the Response."""
        return self.api("DELETE", "/api/cache/distributed", body=json.dumps(request).encode())


class Cluster(ApiClient):
    """
    A control plane and workers as real processes, for one test.

    The control plane's file sets the upstream (``upstream_port`` on
    127.0.0.1), ``control.heartbeat_timeout``, the control and API ports
    (fixed, so that a restarted control plane gets the same ones) and the
    API token; each worker's local file gives only its DNS port.
    """

    def __init__(self, testcase, upstream_port: int, *, heartbeat_timeout: str = "2s",
                 token_in_file: bool = True) -> None:
        super().__init__(free_port())
        self.testcase = testcase
        self.control_port = free_port()
        self.dns_ports: dict[str, int] = {}
        self.workers: dict[str, TwistdProcess] = {}
        self.controls: list[TwistdProcess] = []
        token = f'  auth_token: "{TOKEN}"\n' if token_in_file else ""
        self.config_path = write_file(
            testcase,
            'server:\n  listen_address: "127.0.0.1:0"\n'
            f'upstreams: ["127.0.0.1:{upstream_port}"]\n'
            "upstream:\n  timeout: 1s\n  retries: 1\n"
            f'control:\n  grpc_address: "127.0.0.1:{self.control_port}"\n  heartbeat_timeout: {heartbeat_timeout}\n'
            f'api:\n  listen_address: "127.0.0.1:{self.api_port}"\n{token}',
        )

    @property
    def control(self) -> TwistdProcess:
        """The control plane started last."""
        return self.controls[-1]

    def spawn_control(self, env: dict | None = None) -> TwistdProcess:
        """Start ``twistd dnsgo control`` (without waiting for it)."""
        proc = spawn_twistd(self.testcase, f"control-{len(self.controls) + 1}",
                            ["dnsgo", "control", "--config", self.config_path], env)
        self.controls.append(proc)
        return proc

    @defer.inlineCallbacks
    def start_control(self, env: dict | None = None):
        """Start the control plane and wait until its API answers."""
        proc = self.spawn_control(env)
        yield wait_until(lambda: self._api_up(proc), "the control plane's API", 15.0, lambda: proc.text)
        return proc

    def _api_up(self, proc: TwistdProcess):
        if not proc.running:
            raise AssertionError(f"{proc.name} ended:\n{proc.text}")
        return http_or_none(self.api_port, "GET", "/api/health", token=None).addCallback(
            lambda r: r is not None and r.status == 200)

    def spawn_worker(self, worker_id: str) -> TwistdProcess:
        """Start ``twistd dnsgo worker`` as ``worker_id`` on a DNS port of its own (without waiting)."""
        port = self.dns_ports.setdefault(worker_id, free_port())
        local = write_file(self.testcase, f'server:\n  listen_address: "127.0.0.1:{port}"\n')
        proc = spawn_twistd(
            self.testcase, worker_id,
            ["dnsgo", "worker", "--control-plane", f"127.0.0.1:{self.control_port}",
             "--worker-id", worker_id, "--config", local],
        )
        self.workers[worker_id] = proc
        return proc

    @defer.inlineCallbacks
    def start_workers(self, *worker_ids: str):
        """Start workers, wait until each serves DNS and the API lists them all healthy."""
        procs = [self.spawn_worker(w) for w in worker_ids]
        yield defer.gatherResults([p.wait_for_text("DNS listening") for p in procs])
        yield self.wait_healthy(*worker_ids)


def by_worker(body: dict) -> dict:
    """The ``workers`` list of an API body keyed by workerId."""
    return {w["workerId"]: w for w in body["workers"]}


def supervisor_pids(text: str) -> list[int]:
    """The pids of every worker the standalone supervisor says it started."""
    return [int(pid) for pid in re.findall(r"worker-\d+ (?:started|restarted) \(pid (\d+)", text)]
