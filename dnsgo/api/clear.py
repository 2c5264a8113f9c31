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
must not silently widen a flush, and so are repeated keys (``{"name": "x",
"name": null}`` would otherwise be read as its last value).  ``type`` is
parsed by :func:`dnsgo.dns.types.parse_qtype`, the parser the flush
itself uses, so a type this module accepts is one the caches accept.

Values echoed in a reason are cut to about :data:`ECHO_LIMIT` characters
(:func:`clip`, :func:`shown`): a 50 MB name must not come back as a 100 MB error.
"""
import json

import attrs

from dnsgo.dns import wire
from dnsgo.dns.types import parse_qtype
from dnsgo.invalidation.flush import Flush

TARGETS = ("all", "worker", "shared")
CACHE_TYPES = ("all", "message", "rrset")
FIELDS = ("target", "workerIds", "cacheType", "name", "type", "subtree")

#: About how many characters of a client's value a reason repeats.
ECHO_LIMIT = 100
#: How many unknown fields or worker ids a reason names at most, and in how many characters.
ECHO_COUNT = 10
ECHO_LIST_LIMIT = 3 * ECHO_LIMIT


class RequestError(ValueError):
    """A request the API refuses (HTTP 400); the message is the reason shown to the client."""


@attrs.frozen
class ClearRequest:
    """A checked clear request: where (``target``, ``worker_ids``) and what (the :class:`Flush`)."""

    target: str = "all"
    worker_ids: tuple[str, ...] | None = None
    flush: Flush = Flush.everything()


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when it was longer."""
    return text if len(text) <= limit else text[:limit] + "\u2026"


def shown(value, limit: int = ECHO_LIMIT) -> str:
    """How a reason quotes a client's value: its ``repr``, :func:`clip`-ped."""
    return clip(repr(value), limit)


def clip_list(values, limit: int = ECHO_COUNT) -> str:
    """
    The first values (at most ``limit``, in about :data:`ECHO_LIST_LIMIT`
    characters), each :func:`clip`-ped, comma-separated, and how many more there are.
    """
    values = [str(v) for v in values]
    shown_values = []
    for value in values[:limit]:
        if shown_values and sum(len(v) + 2 for v in shown_values) + len(clip(value)) > ECHO_LIST_LIMIT:
            break
        shown_values.append(clip(value))
    text = ", ".join(shown_values)
    more = len(values) - len(shown_values)
    return f"{text} and {more} more" if more else text


def type_code(mnemonic: str) -> int:
    """
    The RR type number of ``mnemonic`` (``"AAAA"``, ``"https"``, ``"TYPE65"``,
    ``"65"``) as :func:`dnsgo.dns.types.parse_qtype`, the one parser of
    record types, reads it; RequestError if it is unknown or out of 1..65535.
    """
    try:
        return parse_qtype(mnemonic)
    except ValueError:
        raise RequestError(f"unknown RR type {shown(mnemonic)}: expected a mnemonic (A, HTTPS) "
                           "or TYPEnnn with nnn in 1..65535") from None


def canonical_name(text: str) -> str:
    """A domain name in presentation form with the final dot (``"Example.COM"`` -> ``"Example.COM."``)."""
    try:
        return wire.name_to_text(wire.text_to_name(text))
    except ValueError as error:
        # wire's messages may quote the whole name again: cut them too.
        raise RequestError(f"bad name {shown(text)}: {clip(str(error), 2 * ECHO_LIMIT)}") from None


def _unique_keys(pairs: list) -> dict:
    """json's object_pairs_hook: an object, refusing a key that appears twice."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise RequestError(f"duplicate key {shown(key)}: each key may appear once")
        obj[key] = value
    return obj


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
        raise RequestError(f"unknown {key} {shown(value)}: expected one of {', '.join(options)}")
    return value


def parse_clear_request(raw: bytes) -> ClearRequest:
    """
    Decode and check a clear request body; RequestError says what is wrong
    (also for repeated keys and for nesting too deep for the JSON decoder).
    """
    try:
        body = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError("the body is not valid JSON: it is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(f"the body is not valid JSON: {clip(str(error), 2 * ECHO_LIMIT)}") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {clip_list(unknown)}: expected {', '.join(FIELDS)}")
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
    flush = Flush(
        canonical_name(name) if name is not None else None,
        type_code(rrtype) if rrtype is not None else None,
        bool(subtree),
        cache_type,
    )
    return ClearRequest(
        target=target,
        worker_ids=tuple(dict.fromkeys(worker_ids)) if worker_ids is not None else None,
        flush=flush,
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
