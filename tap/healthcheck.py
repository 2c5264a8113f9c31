"""
Container health check (the Dockerfile's HEALTHCHECK): exit 0 when this
container's dnsgo answers, 1 otherwise, with one line saying what failed.

By role (first argument, else DNSGO_ROLE, else what tap/entrypoint.sh
wrote to $TMPDIR/dnsgo-role, else standalone):
- control: GET /api/health on DNSGO_API_PORT (default 8080) answers 200;
- standalone, worker: a DNS query over UDP to 127.0.0.1 on DNSGO_DNS_PORT
  (default 53) gets any reply with the query's ID (REFUSED or SERVFAIL
  included: the server is up, whatever it thinks of the question).

Only the standard library: it runs with the image's Python, outside twistd.
"""
import os
import random
import socket
import struct
import sys
import urllib.request


def dns_answers(port: int, timeout: float = 2.0) -> bool:
    """Whether a DNS server on 127.0.0.1:port replies to a query for ". NS"."""
    qid = random.getrandbits(16)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
    return len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid and bool(data[2] & 0x80)


def api_healthy(port: int, timeout: float = 2.0) -> bool:
    """Whether GET /api/health on 127.0.0.1:port answers 200."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=timeout) as answer:
        return answer.status == 200


def _written_role() -> str | None:
    """The role tap/entrypoint.sh started with, if it could write it down."""
    try:
        with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "dnsgo-role"), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def main(argv) -> int:
    role = argv[1] if len(argv) > 1 else os.environ.get("DNSGO_ROLE") or _written_role() or "standalone"
    try:
        if role == "control":
            ok = api_healthy(int(os.environ.get("DNSGO_API_PORT", "8080")))
        elif role in ("standalone", "worker"):
            ok = dns_answers(int(os.environ.get("DNSGO_DNS_PORT", "53")))
        else:
            print(f"dnsgo healthcheck: unknown role {role!r}", file=sys.stderr)
            return 1
    except (OSError, ValueError) as e:
        print(f"dnsgo healthcheck ({role}): {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"dnsgo healthcheck ({role}): unexpected answer", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
