"""
A minimal stdlib DNS client used to wait until a server answers.
"""
import random
import socket
import struct
import time


def build_query(name: str, qtype: int = 1, ident: int = 0) -> bytes:
    """Return the wire bytes of a recursive query for ``name``/``qtype`` IN."""
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(label)]) + label.encode("ascii")
                      for label in name.rstrip(".").split(".") if label)
    return header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def answers(port: int, name: str, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether the server at host:port answers ``name`` A with NOERROR."""
    ident = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(build_query(name, ident=ident), (host, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                reply = sock.recv(4096)
                if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == ident:
                    flags = struct.unpack("!H", reply[2:4])[0]
                    return bool(flags & 0x8000) and flags & 0x000F == 0
        except OSError:
            return False
    return False


def wait_until_answering(port: int, name: str, limit: float, alive=lambda: True) -> bool:
    """Poll until the server answers ``name``, ``alive()`` turns false, or
    ``limit`` seconds pass; return whether it answered."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and alive():
        if answers(port, name):
            return True
        time.sleep(0.2)
    return False
