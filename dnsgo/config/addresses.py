"""
Addresses and networks: :class:`Address` (a host and a port),
:func:`parse_address` for the ``host:port`` / ``[ipv6]:port`` forms the
configuration accepts, the ``IPNetwork`` type of allowed client networks,
and :func:`resolv_conf_nameservers`, the system's upstreams when the
configuration names none.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Union

import attrs

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@attrs.frozen
class Address:
    """A host and a port.  ``host`` is a normalised IP literal, or (only for
    Redis and Sentinel addresses) a lower-cased host name."""

    host: str = attrs.field(validator=attrs.validators.instance_of(str))
    port: int = attrs.field(validator=attrs.validators.instance_of(int))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def parse_address(
    text: str,
    *,
    default_port: int | None = None,
    ip_only: bool = False,
    listen: bool = False,
) -> Address:
    """
    Parse ``host:port``, ``[ipv6]:port``, or (when ``default_port`` is given)
    a bare host or IPv6 literal, into an :class:`Address`.

    ``listen`` marks an address to bind: the host must be an IP literal, it
    may be empty (``":53"`` means ``0.0.0.0:53``) or unspecified, and port 0
    (pick a free port) is allowed.  ``ip_only`` refuses host names.  Raises
    ValueError with a message for people.
    """
    text = text.strip()
    if not text:
        raise ValueError("is empty; expected host:port")
    host, port_text = _split_host_port(text, default_port is not None)
    if port_text is None:
        port = default_port
    else:
        port = _parse_port(port_text, text, listen)
    if host == "":
        if not listen:
            raise ValueError(f"{text!r} has no host")
        host = "0.0.0.0"
    ip = _ip_literal(host, text)
    if ip is None:
        if ip_only or listen:
            what = "a listen address" if listen else "this address"
            raise ValueError(
                f"{text!r}: {what} must use an IP address, not a name such as {host!r}"
            )
        return Address(_hostname(host, text), port)
    if ip.is_unspecified and not listen:
        raise ValueError(f"{text!r}: {ip} is not a destination")
    return Address(str(ip), port)


def _split_host_port(text: str, port_optional: bool) -> tuple[str, str | None]:
    """Split an address into host and port text (None when absent)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r} has '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if ":" not in host:
            raise ValueError(f"{text!r}: brackets are only for IPv6 addresses")
        if rest == "" and port_optional:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{text!r} has no port; expected [{host}]:PORT")
        return host, rest[1:]
    if text.count(":") > 1:
        if not port_optional:
            raise ValueError(
                f"{text!r}: write an IPv6 address with its port in brackets, "
                f"as in [2001:db8::1]:53"
            )
        return text, None
    host, colon, port_text = text.rpartition(":")
    if not colon:
        if not port_optional:
            raise ValueError(f"{text!r} has no port; expected host:port")
        return text, None
    return host, port_text


def _parse_port(port_text: str, text: str, listen: bool) -> int:
    """Parse a port number; 0 is allowed only for listen addresses."""
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    lowest = 0 if listen else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"{text!r}: port must be between {lowest} and 65535")
    return port


def _ip_literal(host: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return ``host`` as an IP address, or None when it is not an IP literal."""
    if "%" in host:
        raise ValueError(f"{text!r}: scope ids such as %eth0 are not supported")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        if ":" in host:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        return None


def _hostname(host: str, text: str) -> str:
    """Check a host name and return it lower-cased."""
    name = host.lower()
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if labels[-1].isdigit():
        raise ValueError(f"{text!r}: {host!r} is not a valid IPv4 address")
    if len(name) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r}: {host!r} is not a valid host name")
    return name


def resolv_conf_nameservers(path: str = DEFAULT_RESOLV_CONF) -> tuple[Address, ...]:
    """
    Return the ``nameserver`` entries of a resolv.conf file as port-53
    addresses, in order and without repeats.

    Comments (``#``, ``;``), other options and unparsable lines are ignored,
    and so are addresses with a scope id (``fe80::1%eth0``): a link-local
    address is useless without its interface.  A missing file or one without
    usable entries gives ``127.0.0.1:53``, as the C library assumes.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        text = ""
    found: list[Address] = []
    for line in text.splitlines():
        words = re.split(r"[#;]", line, maxsplit=1)[0].split()
        if len(words) < 2 or words[0] != "nameserver" or "%" in words[1]:
            continue
        try:
            ip = ipaddress.ip_address(words[1])
        except ValueError:
            continue
        if ip.is_unspecified:
            continue
        address = Address(str(ip), 53)
        if address not in found:
            found.append(address)
    return tuple(found) or (Address("127.0.0.1", 53),)
