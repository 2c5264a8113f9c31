"""
``DELETE /api/cache/distributed``: the request body, checked field by field,
and the seed's response body.

Request (every field optional; an empty object ``{}`` clears everything)::

    {"target": "all" | "worker" | "shared",   default "all"
     "workerIds": ["worker-1", ...],          required with, and only with, "worker"
     "cacheType": "all" | "message" | "rrset",default "all"
     "name": "example.com.",                  only entries of this name ...
     "type": "A",                             ... of this type (needs name)
     "subtree": true}                         ... and of the names below it (needs name)

The shared cache holds RRsets only, so ``target: shared`` with
``cacheType: message`` is refused.  Unknown fields are refused too: a typo
must not silently widen a flush.
"""
import json
import re

import attrs
from twisted.names import dns

from dnsgo import wire

TARGETS = ("all", "worker", "shared")
CACHE_TYPES = ("all", "message", "rrset")
FIELDS = ("target", "workerIds", "cacheType", "name", "type", "subtree")

#: Type mnemonics beyond twisted.names' table (IANA DNS parameters).
_MORE_TYPES = {
    "LOC": 29, "CERT": 37, "KX": 36, "APL": 42, "DS": 43, "IPSECKEY": 45, "RRSIG": 46, "NSEC": 47,
    "DNSKEY": 48, "DHCID": 49, "NSEC3": 50, "NSEC3PARAM": 51, "TLSA": 52, "SMIMEA": 53, "HIP": 55,
    "CDS": 59, "CDNSKEY": 60, "OPENPGPKEY": 61, "CSYNC": 62, "ZONEMD": 63, "SVCB": 64, "HTTPS": 65,
    "EUI48": 108, "EUI64": 109, "URI": 256, "CAA": 257, "ANY": 255,
}
_GENERIC_TYPE = re.compile(r"TYPE(\d{1,5})\Z")


class RequestError(ValueError):
    """A request the API refuses (HTTP 400); the message is the reason shown to the client."""


@attrs.frozen
class ClearRequest:
    """A checked clear request; ``cache_types`` is ``("message", "rrset")`` for "all"."""

    target: str = "all"
    worker_ids: tuple[str, ...] | None = None
    cache_types: tuple[str, ...] = ("message", "rrset")
    name: str | None = None
    type: str | None = None
    subtree: bool = False


def type_code(mnemonic: str) -> int:
    """The RR type number of a mnemonic (``"AAAA"``, ``"https"``, ``"TYPE65"``); RequestError if unknown."""
    upper = mnemonic.upper()
    generic = _GENERIC_TYPE.match(upper)
    if generic and int(generic.group(1)) <= 0xFFFF:
        return int(generic.group(1))
    code = _MORE_TYPES.get(upper, dns.REV_TYPES.get(upper))
    if code is None:
        raise RequestError(f"unknown RR type {mnemonic!r}")
    return code


def canonical_name(text: str) -> str:
    """A domain name in presentation form with the final dot (``"Example.COM"`` -> ``"Example.COM."``)."""
    try:
        return wire.name_to_text(wire.text_to_name(text))
    except ValueError as error:
        raise RequestError(f"bad name {text!r}: {error}") from None


def _field(body: dict, key: str, kind: type, what: str):
    value = body.get(key)
    # bool is an int subclass; JSON true must not pass for a number and vice versa.
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise RequestError(f"{key} must be {what}")
    return value


def _choice(body: dict, key: str, options: tuple[str, ...]) -> str:
    value = _field(body, key, str, "a string")
    if value is None:
        return options[0]
    if value not in options:
        raise RequestError(f"unknown {key} {value!r}: expected one of {', '.join(options)}")
    return value


def parse_clear_request(raw: bytes) -> ClearRequest:
    """Decode and check a clear request body; RequestError says what is wrong."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}: expected {', '.join(FIELDS)}")
    target = _choice(body, "target", TARGETS)
    cache_type = _choice(body, "cacheType", CACHE_TYPES)
    worker_ids = _field(body, "workerIds", list, "a list of worker ids")
    if worker_ids is not None and not all(isinstance(w, str) and w for w in worker_ids):
        raise RequestError("workerIds must be a list of non-empty strings")
    if target == "worker" and not worker_ids:
        raise RequestError('target "worker" needs a non-empty workerIds list')
    if target != "worker" and worker_ids is not None:
        raise RequestError('workerIds is only allowed with target "worker"')
    if target == "shared" and cache_type == "message":
        raise RequestError('the shared cache holds RRsets only: cacheType "message" cannot target it')
    name = _field(body, "name", str, "a domain name string")
    rrtype = _field(body, "type", str, "an RR type mnemonic string")
    subtree = _field(body, "subtree", bool, "true or false")
    if name is None and (rrtype is not None or subtree is not None):
        raise RequestError("type and subtree need a name")
    if rrtype is not None:
        type_code(rrtype)
        rrtype = rrtype.upper()
    return ClearRequest(
        target=target,
        worker_ids=tuple(dict.fromkeys(worker_ids)) if worker_ids is not None else None,
        cache_types=("message", "rrset") if cache_type == "all" else (cache_type,),
        name=canonical_name(name) if name is not None else None,
        type=rrtype,
        subtree=bool(subtree),
    )


def clear_response_body(result: dict, shared_expected: bool) -> dict:
    """
    The seed's response from ClusterView.clear()'s result.  ``clearedCount``
    is the number of workers that cleared; ``success`` is true when every
    asked worker succeeded and, when the shared cache was to be cleared
    (``shared_expected``), it was.
    """
    results = [
        {"workerId": r["workerId"], "success": bool(r["success"]), "cleared": list(r.get("cleared", ()))}
        for r in result.get("results", ())
    ]
    shared_cleared = bool(result.get("sharedCleared", False))
    success = all(r["success"] for r in results) and (shared_cleared or not shared_expected)
    return {
        "success": success,
        "clearedCount": sum(1 for r in results if r["success"]),
        "results": results,
        "sharedCleared": shared_cleared,
    }
