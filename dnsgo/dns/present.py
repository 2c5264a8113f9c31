"""
Records in presentation format (RFC 1035 §5.1), for people: what the cache
inspection API and ``dnsgoctl lookup`` show.  Works on uncompressed wire
rdata (:mod:`dnsgo.dns.records`), so every cache level is shown the same way.

The common types are written as zone files write them; any other type, or
rdata that does not parse as its type says, in RFC 3597's generic form
(``\\# 4 c0000201``).  Nothing here is ever parsed back: the cache dump
(:mod:`dnsgo.cache.dump`) carries rdata as bytes.
"""
from __future__ import annotations

import ipaddress
import struct

from dnsgo.dns.records import RDATA_NAMES
from dnsgo.dns.types import qtype_text

_CLASSES = {1: "IN", 3: "CH", 4: "HS", 255: "ANY"}
_U16 = struct.Struct("!H")
_SOA_NUMBERS = struct.Struct("!IIIII")
_SRV_NUMBERS = struct.Struct("!HHH")
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*/+=")


def present_name(wire: bytes) -> str:
    """An uncompressed wire-format name as text, with a trailing dot; unusual bytes escaped (``\\.``, ``\\032``)."""
    labels = []
    pos = 0
    while pos < len(wire) and wire[pos]:
        length = wire[pos]
        labels.append("".join(_escape(byte, name=True) for byte in wire[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return ".".join(labels) + "."


def present_class(cls: int) -> str:
    """A class's mnemonic, or RFC 3597's ``CLASS`` form."""
    return _CLASSES.get(cls, f"CLASS{cls}")


def present_type(rtype: int) -> str:
    """A type's mnemonic, or RFC 3597's ``TYPE`` form."""
    text = qtype_text(rtype)
    return text if isinstance(text, str) else f"TYPE{rtype}"


def present_record(owner: bytes, ttl: int, cls: int, rtype: int, rdata: bytes) -> str:
    """One record as a zone-file line: ``www.example. 300 IN A 192.0.2.1``."""
    return f"{present_name(owner)} {ttl} {present_class(cls)} {present_type(rtype)} {present_rdata(rtype, rdata)}"


def present_rdata(rtype: int, rdata: bytes) -> str:
    """The rdata of ``rtype`` as text; the generic form when the type is unusual or the rdata does not parse."""
    try:
        text = _known(rtype, rdata)
    except (ValueError, IndexError, struct.error):
        text = None
    if text is None:
        return f"\\# {len(rdata)} {rdata.hex()}" if rdata else "\\# 0"
    return text


def _known(rtype: int, rdata: bytes) -> str | None:
    if rtype == 1 and len(rdata) == 4:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == 28 and len(rdata) == 16:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in (16, 99):  # TXT, SPF
        return " ".join(_strings(rdata))
    steps = RDATA_NAMES.get(rtype)
    if steps is None:
        return None
    if rtype == 6:  # SOA
        mname_end = _name_end(rdata, 0)
        rname_end = _name_end(rdata, mname_end)
        numbers = _SOA_NUMBERS.unpack(rdata[rname_end:])
        return " ".join([present_name(rdata[:mname_end]), present_name(rdata[mname_end:rname_end]), *map(str, numbers)])
    if rtype == 33:  # SRV
        end = _name_end(rdata, 6)
        _exact(rdata, end)
        return " ".join([*map(str, _SRV_NUMBERS.unpack_from(rdata)), present_name(rdata[6:end])])
    if steps == (2, "n"):  # MX and its kind
        end = _name_end(rdata, 2)
        _exact(rdata, end)
        return f"{_U16.unpack_from(rdata)[0]} {present_name(rdata[2:end])}"
    if steps == ("n",):
        end = _name_end(rdata, 0)
        _exact(rdata, end)
        return present_name(rdata)
    return None


def _name_end(data: bytes, pos: int) -> int:
    """Where the uncompressed name at ``pos`` ends; ValueError if it runs out."""
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length > 63:
            raise ValueError("not an uncompressed name")
        pos += 1 + length
        if pos >= len(data):
            raise ValueError("name runs past the rdata")


def _exact(data: bytes, end: int) -> None:
    if end != len(data):
        raise ValueError("rdata longer than its fields")


def _strings(rdata: bytes) -> list[str]:
    """The character-strings of ``rdata``, each quoted and escaped."""
    out = []
    pos = 0
    while pos < len(rdata):
        length = rdata[pos]
        chunk = rdata[pos + 1 : pos + 1 + length]
        if len(chunk) != length:
            raise ValueError("character-string runs past the rdata")
        out.append('"' + "".join(_escape(byte, name=False) for byte in chunk) + '"')
        pos += 1 + length
    return out


def _escape(byte: int, *, name: bool) -> str:
    if byte in _PLAIN or (not name and 0x20 <= byte < 0x7F and byte not in (0x22, 0x5C)):
        return chr(byte)
    if byte in (0x2E, 0x22, 0x5C, 0x28, 0x29, 0x3B, 0x40, 0x24) and name:
        return "\\" + chr(byte)
    if byte in (0x22, 0x5C):
        return "\\" + chr(byte)
    return f"\\{byte:03d}"
