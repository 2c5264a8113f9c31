"""
The one table of names dnsgo reads and writes for record types (``AAAA``,
``TYPE65280``, ``28``) and for the caches a flush can name (``message``,
``rrset``), shared by the API, the invalidation messages and the control
channel.
"""
from __future__ import annotations

from typing import Iterable

from twisted.names import dns

#: RRSIG, which twisted.names has no constant for.
RRSIG = 46

#: The cache kinds a flush can name: the L1 message cache and the L2 RRset
#: cache (the local one, and the shared store in hybrid mode).
MESSAGE = "message"
RRSET = "rrset"
CACHE_KINDS = frozenset({MESSAGE, RRSET})

#: Type mnemonics beyond twisted.names' table, for flushes by type.
_EXTRA_TYPES = {
    "LOC": 29, "KX": 36, "CERT": 37, "APL": 42, "DS": 43, "IPSECKEY": 45, "RRSIG": 46, "NSEC": 47,
    "DNSKEY": 48, "DHCID": 49, "NSEC3": 50, "NSEC3PARAM": 51, "TLSA": 52, "SMIMEA": 53, "HIP": 55,
    "CDS": 59, "CDNSKEY": 60, "OPENPGPKEY": 61, "CSYNC": 62, "ZONEMD": 63, "SVCB": 64, "HTTPS": 65,
    "EUI48": 108, "EUI64": 109, "ANY": 255, "URI": 256, "CAA": 257,
}
_TYPE_OF_TEXT = {**dns.REV_TYPES, **_EXTRA_TYPES}
_TEXT_OF_TYPE = {code: text for text, code in _TYPE_OF_TEXT.items() if text != "ALL_RECORDS"}


def parse_qtype(value: str | int) -> int:
    """
    Return the type code of ``value``: a code (``28``, ``"28"``), a
    mnemonic in any case (``"AAAA"``, ``"https"``) or RFC 3597's
    ``"TYPE65280"``.  Raises ValueError for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a record type: {value!r}")
    if isinstance(value, int):
        code = value
    elif isinstance(value, str):
        text = value.strip().upper()
        if text in _TYPE_OF_TEXT:
            return _TYPE_OF_TEXT[text]
        digits = text[4:] if text.startswith("TYPE") else text
        if not digits.isdigit() or not digits.isascii():
            raise ValueError(f"unknown record type {value!r}")
        code = int(digits)
    else:
        raise ValueError(f"not a record type: {value!r}")
    if not 0 < code < 65536:
        raise ValueError(f"record type {value!r} is out of range (1..65535)")
    return code


def qtype_text(code: int) -> str | int:
    """The mnemonic of a type code, or the code itself when it has none (as the message format writes types)."""
    return _TEXT_OF_TYPE.get(code, code)


def parse_cache_kinds(value: str | Iterable[str]) -> frozenset[str]:
    """
    Return the cache kinds ``value`` names: the API's ``cacheType``
    (``"all"``, ``"message"``, ``"rrset"``) or an iterable of kinds.
    Raises ValueError for an unknown kind or none at all.
    """
    if isinstance(value, str):
        kinds = CACHE_KINDS if value == "all" else frozenset((value,))
    else:
        kinds = frozenset(value)
    if not kinds:
        raise ValueError("a flush needs at least one cache kind")
    for kind in kinds:
        if kind not in CACHE_KINDS:
            raise ValueError(f"unknown cache kind {kind!r} (known: all, message, rrset)")
    return kinds
