"""
Shared pieces for end-to-end tests: start dnsgo on 127.0.0.1 with a given
configuration, and ask it questions with dnspython (in a thread, so the
reactor keeps serving) or with dig; and mark the processes a test starts so
that none outlives it.
"""
import itertools
import os
import shutil
import signal
import socket
import struct
import uuid

import dns.message
import dns.query
from twisted.internet import defer, reactor, task, threads, utils

from dnsgo.config import parse_config
from dnsgo.app.assemble import build_service


def config_text(upstreams, extra: str = "", server_extra: str = "", upstream_timeout: str = "0.3s") -> str:
    """
    A YAML configuration forwarding to ``upstreams`` on an OS-chosen port
    (``upstream.timeout`` ``upstream_timeout``, one retry); ``server_extra``
    is added (indented) under ``server:``, ``extra`` at the end.
    """
    ups = "".join(f'  - "{host}:{port}"\n' for host, port in upstreams)
    return (
        "server:\n"
        '  listen_address: "127.0.0.1:0"\n' + server_extra + "upstreams:\n" + ups
        + f"upstream:\n  timeout: {upstream_timeout}\n  retries: 1\n" + extra
    )


def start_dnsgo(testcase, upstreams, extra: str = "", environ=None, server_extra: str = "", upstream_timeout: str = "0.3s"):
    """
    Build and start dnsgo for ``upstreams`` (a list of (host, port)); stop it
    when the test ends.  Returns the root service; ``port(root)`` gives the
    bound port.
    """
    config = parse_config(config_text(upstreams, extra, server_extra, upstream_timeout), "<test>", environ or {})
    root = build_service(config)
    root.startService()
    testcase.addCleanup(root.stopService)
    return root


def port(root) -> int:
    """The UDP/TCP port the DNS service of ``root`` bound."""
    return root.getServiceNamed("dns").udp_port


def ask(port_, qname, qtype="A", *, tcp=False, timeout=3.0, **make_query_kw):
    """
    Ask 127.0.0.1:port with dnspython; fires with the dns.message.Message
    (or fails with dns.exception.Timeout).
    """
    q = qname if isinstance(qname, dns.message.Message) else dns.message.make_query(qname, qtype, **make_query_kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return threads.deferToThread(send, q, "127.0.0.1", timeout=timeout, port=port_, ignore_trailing=False)


def raw_udp(port_, payload: bytes, timeout: float = 1.0):
    """Send raw bytes over UDP; fires with the reply bytes or None on timeout."""

    def exchange():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(payload, ("127.0.0.1", port_))
            try:
                return s.recv(65535)
            except socket.timeout:
                return None

    return threads.deferToThread(exchange)


def raw_tcp(port_, payloads: list[bytes], timeout: float = 3.0):
    """
    Send several framed queries in one write on one TCP connection and read
    as many framed replies; fires with the list of reply bytes.
    """

    def exchange():
        with socket.create_connection(("127.0.0.1", port_), timeout=timeout) as s:
            s.sendall(b"".join(struct.pack("!H", len(p)) + p for p in payloads))
            replies = []
            buf = b""
            while len(replies) < len(payloads):
                chunk = s.recv(65535)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    n = struct.unpack("!H", buf[:2])[0]
                    replies.append(buf[2 : 2 + n])
                    buf = buf[2 + n :]
            return replies

    return threads.deferToThread(exchange)


DIG = shutil.which("dig")


def dig(port_, *args: str):
    """Run Debian's dig against 127.0.0.1:port; fires with its stdout text."""
    d = utils.getProcessOutput(DIG, ["@127.0.0.1", "-p", str(port_), "+tries=1", "+time=3", *args], errortoo=True)
    d.addCallback(lambda out: out.decode("utf-8", "replace"))
    return d


@defer.inlineCallbacks
def start_authority(testcase, authority=None):
    """Start a tests.support.authority server and stop it when the test ends."""
    from tests.support.authority import AuthorityServer

    server = AuthorityServer(authority).start()
    testcase.addCleanup(server.stop)
    yield None
    return server


# -- processes a test starts ------------------------------------------------------

#: The environment variable that marks a process a test started; its value
#: is ``<test mark>/<n>``.  Children inherit it (a supervisor's workers too,
#: and they keep it when the supervisor dies and they are reparented), so
#: every process of a test can be found in /proc, orphans included.
MARK = "DNSGO_TEST_PROCESS"

_marks = itertools.count(1)


def marked_environ(testcase, env=None) -> tuple[dict, str]:
    """
    A copy of ``env`` (default: this process's environment) marked for one
    process ``testcase`` starts; returns (environment, mark).

    The first call in a test adds a cleanup (run after the cleanups added
    later, so after those stopping the processes) that kills every process
    still carrying one of the test's marks and fails the test naming them.
    """
    test_mark = getattr(testcase, "_dnsgo_process_mark", None)
    if test_mark is None:
        test_mark = testcase._dnsgo_process_mark = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        testcase.addCleanup(_no_process_left, test_mark)
    mark = f"{test_mark}/{next(_marks)}"
    environ = dict(os.environ if env is None else env)
    environ[MARK] = mark
    return environ, mark


def marked_processes(mark: str) -> dict[int, str]:
    """The live processes marked ``mark`` or ``mark/...``: pid -> command line."""
    want = f"{MARK}={mark}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                variables = f.read().split(b"\0")
            if not any(v == want or v.startswith(want + b"/") for v in variables):
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                found[int(name)] = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:  # gone, or not ours to read
            continue
    return found


@defer.inlineCallbacks
def kill_marked(mark: str, timeout: float = 10.0):
    """
    SIGKILL every process marked ``mark`` (or ``mark/...``) until none is
    left (a supervisor killed in the same round can have started one more);
    fires with the processes it found (pid -> command line).  Ended
    processes that are only zombies, waiting to be reaped, count as gone.
    """
    found: dict[int, str] = {}
    deadline = reactor.seconds() + timeout
    while True:
        live = marked_processes(mark)
        if not live:
            return found
        if reactor.seconds() > deadline:
            raise AssertionError(f"processes marked {mark} survive SIGKILL: {live}")
        for pid, command in live.items():
            found.setdefault(pid, command)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        yield task.deferLater(reactor, 0.02, lambda: None)


@defer.inlineCallbacks
def _no_process_left(test_mark: str):
    left = yield kill_marked(test_mark)
    if left:
        shown = "\n".join(f"  pid {pid}: {command}" for pid, command in sorted(left.items()))
        raise AssertionError(f"the test left {len(left)} process(es) running (now killed):\n{shown}")
