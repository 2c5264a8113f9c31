"""
The requests of the cache inspection, dump and load routes, checked:
``GET /api/cache/entries`` (a name, an optional type, an optional worker),
``POST /api/cache/dump`` (an optional worker) and ``POST /api/cache/load``
(a dump, whole, and an optional worker).  Each refusal is a
:class:`~dnsgo.api.clear.RequestError` (400) with the reason.
"""
from __future__ import annotations

import attrs

from dnsgo.api.clear import RequestError, shown
from dnsgo.cache.dump import DumpError, read_dump
from dnsgo.dns.names import parse_name
from dnsgo.dns.types import parse_qtype, qtype_text

#: Entry lines sent to a worker per LoadCache command (about 1 MiB at most).
LOAD_CHUNK_BYTES = 2**20


@attrs.frozen
class EntriesRequest:
    """A checked ``GET /api/cache/entries``: the name as text (no final dot), the type's mnemonic or None, the worker or None."""

    name: str
    type: str | None
    worker: str | None


@attrs.frozen
class LoadRequest:
    """A checked ``POST /api/cache/load``: the dump's entry lines in chunks, their count, who wrote it, and the worker or None."""

    chunks: tuple[str, ...]
    entries: int
    written_by: str
    worker: str | None


def one_arg(args: dict, name: str) -> str | None:
    """The one value of query argument ``name`` (UTF-8), or None; RequestError if it is given twice or is not UTF-8."""
    values = args.get(name.encode("ascii"), [])
    if len(values) > 1:
        raise RequestError(f"give {name!r} at most once")
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"{name!r} is not UTF-8") from None


def parse_entries_request(args: dict) -> EntriesRequest:
    """The query of ``GET /api/cache/entries`` (``request.args``), checked."""
    name = one_arg(args, "name")
    if name is None:
        raise RequestError("'name' is required, for example ?name=www.example.com&type=A")
    try:
        dotted = parse_name(name)
    except ValueError as e:
        raise RequestError(f"bad name {shown(name)}: {e}") from None
    type = one_arg(args, "type")
    if type is not None and type != "":
        try:
            code = parse_qtype(type)
        except ValueError as e:
            raise RequestError(f"bad type {shown(type)}: {e}") from None
        text = qtype_text(code)
        type = text if isinstance(text, str) else f"TYPE{code}"
    else:
        type = None
    return EntriesRequest(dotted.decode("ascii") or ".", type, _worker(args))


def parse_dump_request(args: dict) -> str | None:
    """The worker of ``POST /api/cache/dump``, or None."""
    return _worker(args)


def parse_load_request(args: dict, body: bytes) -> LoadRequest:
    """The query and body of ``POST /api/cache/load``: the body must be a whole dump of this version."""
    lines = body.split(b"\n")
    try:
        contents = read_dump(lines)
    except DumpError as e:
        raise RequestError(f"not a loadable cache dump: {e}") from None
    # The entry lines as sent: every line between the header and the end line.
    entry_lines = [line.decode("ascii", "replace") for line in lines[1:] if line.strip()][:-1]
    chunks, current, size = [], [], 0
    for line in entry_lines:
        current.append(line)
        size += len(line) + 1
        if size >= LOAD_CHUNK_BYTES:
            chunks.append("\n".join(current))
            current, size = [], 0
    if current:
        chunks.append("\n".join(current))
    return LoadRequest(tuple(chunks), len(contents.entries), contents.worker, _worker(args))


def _worker(args: dict) -> str | None:
    worker = one_arg(args, "worker")
    if worker is not None and not worker.strip():
        raise RequestError("'worker' must not be empty")
    return worker
