"""
Shared pieces for end-to-end tests: start dnsgo on 127.0.0.1 with a given
configuration, and ask it questions with dnspython (in a thread, so the
reactor keeps serving) or with dig.
"""
import shutil
import socket
import struct

import dns.message
import dns.query
from twisted.internet import defer, threads, utils

from dnsgo.config import parse_config
from dnsgo.app.assemble import build_service


def config_text(upstreams, extra: str = "", server_extra: str = "") -> str:
    """
    A YAML configuration forwarding to ``upstreams`` on an OS-chosen port;
    ``server_extra`` is added (indented) under ``server:``, ``extra`` at the end.
    """
    ups = "".join(f'  - "{host}:{port}"\n' for host, port in upstreams)
    return (
        "server:\n"
        '  listen_address: "127.0.0.1:0"\n' + server_extra + "upstreams:\n" + ups + "upstream:\n  timeout: 0.3s\n  retries: 1\n" + extra
    )


def start_dnsgo(testcase, upstreams, extra: str = "", environ=None, server_extra: str = ""):
    """
    Build and start dnsgo for ``upstreams`` (a list of (host, port)); stop it
    when the test ends.  Returns the root service; ``port(root)`` gives the
    bound port.
    """
    config = parse_config(config_text(upstreams, extra, server_extra), "<test>", environ or {})
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
    """Start a tests.authority server and stop it when the test ends."""
    from tests.authority import AuthorityServer

    server = AuthorityServer(authority).start()
    testcase.addCleanup(server.stop)
    yield None
    return server
