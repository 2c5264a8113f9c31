"""
The subcommands of ``dnsgoctl``, one function each: ``command(args,
context) -> exit code``.  Each asks the API (through ``context.client``),
then prints a table (:mod:`dnsgo.ctl.render`) or, with ``--json``, JSON
for machines.  Failures are raised as :class:`~dnsgo.ctl.errors.CtlError`
and reported by :mod:`dnsgo.ctl.main`.
"""
from __future__ import annotations

import datetime
import io
import json
import os
from collections.abc import Callable
from typing import BinaryIO, TextIO

from dnsgo.config import ConfigError, load_config
from dnsgo.ctl import render
from dnsgo.ctl.client import ApiClient
from dnsgo.ctl.errors import OK, BadRequest, Failed, HttpError, UsageError
from dnsgo.ctl.files import MAX_LINE, DumpCheck, checked, write_atomically
from dnsgo.ctl.settings import Settings

#: ``flush --cache`` choices and the API's ``cacheType`` for each.
CACHE_TYPES = {"all": "all", "l1": "message", "l2": "rrset", "shared": "rrset"}


class Context:
    """What a subcommand works with: the API client (made on first use), the streams, and the clock."""

    def __init__(self, settings: Callable[[], Settings], *, out: TextIO, err: TextIO,
                 binary_out: BinaryIO, binary_in: BinaryIO,
                 now: Callable[[], datetime.datetime] | None = None) -> None:
        self._settings = settings
        self._client: ApiClient | None = None
        self.out = out
        self.err = err
        self.binary_out = binary_out
        self.binary_in = binary_in
        self.now = now or (lambda: datetime.datetime.now(datetime.timezone.utc))

    @property
    def client(self) -> ApiClient:
        """The API client; the settings are resolved the first time (a local command never needs them)."""
        if self._client is None:
            self._client = ApiClient(self._settings())
        return self._client

    def show(self, text: str) -> None:
        """Print ``text`` and a newline."""
        self.out.write(text + "\n")

    def show_json(self, data) -> None:
        """Print ``data`` as indented JSON."""
        self.out.write(json.dumps(data, indent=2) + "\n")

    def emit(self, as_json: bool, data, text: Callable[[], str]) -> None:
        """Print ``data`` as JSON when ``as_json``, else the table ``text()`` makes of it."""
        if as_json:
            self.show_json(data)
        else:
            self.show(text())


def status(args, context: Context) -> int:
    """Mode, HA role, workers and hit rates."""
    client = context.client
    distributed = client.get_json("/api/cache/distributed")
    try:
        ha = client.get_json("/api/ha")
    except HttpError as error:
        if error.status != 404:
            raise
        ha = None
    workers = client.get_json("/api/workers")
    if args.json:
        context.show_json(status_summary(distributed, ha, workers))
    else:
        context.show(render.status(distributed, ha, workers))
    return OK


def status_summary(distributed: dict, ha: dict | None, workers: dict) -> dict:
    """The JSON of ``status --json``: the figures ``status`` shows, from the three bodies."""
    details = {w.get("workerId"): w for w in workers.get("workers") or []}
    listed = distributed.get("workers") or []
    aggregated = distributed.get("aggregated") or {}
    return {
        "mode": distributed.get("mode"),
        "ha": ha,
        "workerCount": len(listed),
        "healthyWorkers": sum(1 for w in listed if w.get("status") == "healthy"),
        "averageHitRate": aggregated.get("averageHitRate"),
        "sharedCache": distributed.get("sharedCache"),
        "workers": [
            {"workerId": w.get("workerId"), "clusterName": w.get("clusterName"), "status": w.get("status"),
             "queries": details.get(w.get("workerId"), {}).get("queries"),
             "messageHitRate": (w.get("messageCache") or {}).get("hit_rate"),
             "rrsetHitRate": (w.get("rrsetCache") or {}).get("hit_rate"),
             "uptimeSeconds": details.get(w.get("workerId"), {}).get("uptimeSeconds")}
            for w in listed
        ],
    }


def stats(args, context: Context) -> int:
    """Every cache's statistics (``GET /api/cache/distributed``)."""
    body = context.client.get_json("/api/cache/distributed")
    context.emit(args.json, body, lambda: render.stats(body))
    return OK


def workers(args, context: Context) -> int:
    """Every worker's identity, liveness and totals (``GET /api/workers``)."""
    body = context.client.get_json("/api/workers")
    context.emit(args.json, body, lambda: render.workers(body, context.now()))
    return OK


def upstreams(args, context: Context) -> int:
    """Every worker's upstreams: SRTT, health, failures (``GET /api/upstreams``)."""
    body = context.client.get_json("/api/upstreams")
    context.emit(args.json, body, lambda: render.upstreams(body))
    return OK


def flush(args, context: Context) -> int:
    """Remove a name (of a type, or and its subtree) from caches (``DELETE /api/cache/distributed``)."""
    request = flush_request(args, context.client)
    result = context.client.send_json("DELETE", "/api/cache/distributed", request)
    if args.json:
        context.show_json({"request": request, "result": result})
    else:
        context.show(render.flush(describe_flush(args, request), result))
    if not result.get("success"):
        raise Failed("the flush failed on part of the cluster")
    return OK


def flush_request(args, client: ApiClient) -> dict:
    """
    The DELETE body for ``flush``: ``--cache`` picks ``cacheType`` (and
    ``target: shared``); ``--worker``/``--cluster`` pick ``workerIds``;
    ``l2`` without either names every worker, so that it never reaches the
    shared cache (``target: all`` with RRsets would).
    """
    request: dict = {"name": args.name}
    if args.type is not None:
        request["type"] = args.type
    if args.subtree:
        request["subtree"] = True
    request["cacheType"] = CACHE_TYPES[args.cache]
    if args.cache == "shared":
        if args.worker or args.cluster:
            raise UsageError("flush --cache shared clears the one shared cache: --worker and --cluster do not apply")
        request["target"] = "shared"
        return request
    selected = list(args.worker) if args.worker else None
    if args.cluster is not None:
        selected = workers_in_cluster(client, args.cluster)
    elif selected is None and args.cache == "l2":
        selected = [w.get("workerId") for w in client.get_json("/api/workers").get("workers") or []]
        if not selected:
            raise Failed("there are no workers whose L2 caches could be flushed")
    if selected is None:
        request["target"] = "all"
    else:
        request["target"] = "worker"
        request["workerIds"] = selected
    return request


def workers_in_cluster(client: ApiClient, cluster: str) -> list[str]:
    """The ids of the workers whose clusterName is ``cluster``; BadRequest naming the clusters if none."""
    listed = client.get_json("/api/workers").get("workers") or []
    ids = [w.get("workerId") for w in listed if w.get("clusterName") == cluster]
    if not ids:
        known = sorted({w.get("clusterName") for w in listed if w.get("clusterName")})
        raise BadRequest(f"no worker is in cluster {cluster!r}; clusters: {', '.join(known) or 'none named'}")
    return ids


def describe_flush(args, request: dict) -> str:
    """What a flush asked for, in words: ``www.example.com. AAAA and below from L1 on worker-1``."""
    words = [args.name]
    if args.type is not None:
        words.append(args.type)
    if args.subtree:
        words.append("and below")
    words.append({"all": "from every cache", "l1": "from L1", "l2": "from L2",
                  "shared": "from the shared cache"}[args.cache])
    if request.get("workerIds"):
        words.append(f"on {', '.join(request['workerIds'])}")
    return " ".join(words)


def lookup(args, context: Context) -> int:
    """What L1, L2 and the shared cache hold for a name (``GET /api/cache/entries``)."""
    body = context.client.get_json("/api/cache/entries",
                                    {"name": args.name, "type": args.type, "worker": args.worker})
    context.emit(args.json, body, lambda: render.lookup(body))
    failed = [w.get("workerId") for w in body.get("workers") or [] if not w.get("success", True)]
    if failed:
        raise Failed(f"no answer from {', '.join(str(f) for f in failed)}")
    return OK


def dump(args, context: Context) -> int:
    """
    Save a worker's L2 (``POST /api/cache/dump``) to FILE, atomically, or
    to stdout with ``-``.  The stream is checked as it arrives: a dump
    without its end line is reported and no file is left.
    """
    to_stdout = args.file == "-"
    if not to_stdout:
        directory = os.path.dirname(os.path.abspath(args.file))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise UsageError(f"cannot write {args.file}: {directory} is not a writable directory")
    check = DumpCheck()
    with context.client.open("POST", "/api/cache/dump", {"worker": args.worker}, data=b"") as response:
        lines = checked(context.client.lines(response, "the dump", MAX_LINE), check)
        if to_stdout:
            written = 0
            for line in lines:
                context.binary_out.write(line)
                written += len(line)
            context.binary_out.flush()
        else:
            try:
                written = write_atomically(args.file, lines)
            except OSError as error:
                raise Failed(f"cannot write {args.file}: {error.strerror}") from None
    summary = {"file": args.file, "worker": check.header.get("worker"), "entries": check.entries,
               "bytes": written, "version": check.header.get("version")}
    if args.json and not to_stdout:
        context.show_json(summary)
    elif not to_stdout:
        context.show(f"wrote {check.entries} entries of {summary['worker'] or 'the worker'} "
                     f"to {args.file} ({written} bytes)")
    return OK


def load(args, context: Context) -> int:
    """Load a dump into every worker, or one (``POST /api/cache/load``)."""
    if args.file == "-":
        data = context.binary_in.read()
        body = context.client.upload("/api/cache/load", io.BytesIO(data), len(data), {"worker": args.worker})
    else:
        try:
            source = open(args.file, "rb")
        except OSError as error:
            raise UsageError(f"cannot read {args.file}: {error.strerror}") from None
        with source:
            length = os.fstat(source.fileno()).st_size
            body = context.client.upload("/api/cache/load", source, length, {"worker": args.worker})
    context.emit(args.json, body, lambda: render.load(body))
    failed = [r.get("workerId") for r in body.get("results") or [] if not r.get("success")]
    if failed:
        raise Failed(f"the dump was not loaded by {', '.join(str(f) for f in failed)}")
    return OK


def check_config(args, context: Context) -> int:
    """
    Validate a dnsgo configuration file as ``twistd dnsgo --check-config``
    does (dnsgo.config.load_config), without the API: every problem with
    its path on stderr and exit 1, or "configuration OK".
    """
    try:
        load_config(args.file)
    except ConfigError as error:
        if args.json:
            context.show_json({"file": args.file, "valid": False,
                               "problems": [{"path": p.path, "message": p.message} for p in error.problems]})
        else:
            context.err.write(error.report() + "\n")
        return Failed.exit_code
    if args.json:
        context.show_json({"file": args.file, "valid": True, "problems": []})
    else:
        context.show(f"{args.file}: configuration OK")
    return OK


#: The subcommands by name.
COMMANDS = {
    "status": status,
    "stats": stats,
    "workers": workers,
    "upstreams": upstreams,
    "flush": flush,
    "lookup": lookup,
    "dump": dump,
    "load": load,
    "check-config": check_config,
}
