"""
The ``dnsgoctl`` command line (argparse) and its console script,
:func:`main`.  :func:`run` is the whole program with its streams and
environment passed in: it returns the exit code and never raises, and a
failure is one line on stderr (``dnsgoctl: ...``) without a traceback.

The connection options (``--api``, ``--token``, ``--token-file``,
``--config``, ``--timeout``) and ``--json`` are accepted before and after
the subcommand.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from dnsgo import __version__
from dnsgo.ctl import commands
from dnsgo.ctl.errors import USAGE, CtlError, UsageError
from dnsgo.ctl.settings import ENV_API, ENV_TOKEN, Flags, resolve

PROG = "dnsgoctl"

DESCRIPTION = (
    "Operate a running dnsgo through its management API: status, statistics, workers, upstreams, "
    "cache flushes, lookups, dumps and loads; and check configuration files."
)
EPILOG = (
    f"The API address and token come from the options, then ${ENV_API} and ${ENV_TOKEN}, then the api "
    "section of --config FILE.  Exit codes: 0 ok, 1 the API reported a failure or check-config found "
    "problems, 2 usage, 3 API unreachable, 4 unauthorized (401), 5 bad request (400), "
    "6 other HTTP error.  See docs/dnsgoctl.md."
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised as UsageError (one line) instead of printed with the usage."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """
    The options every subcommand takes.  On the subcommands they default
    to SUPPRESS, so that a value given before the subcommand is not
    overwritten by the subcommand's default.
    """
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument("--api", metavar="URL", default=default,
                       help=f"the API: HOST:PORT or http(s)://HOST:PORT (default ${ENV_API}, then --config, "
                            "then 127.0.0.1:8080)")
    group.add_argument("--token", metavar="TOKEN", default=default,
                       help=f"the bearer token (default ${ENV_TOKEN}, then --config); visible to other users "
                            "in the process list: prefer --token-file or the environment")
    group.add_argument("--token-file", metavar="FILE", default=default, help="read the bearer token from FILE")
    group.add_argument("--config", metavar="FILE", default=default,
                       help="a dnsgo configuration: its api section gives the address and token")
    group.add_argument("--timeout", metavar="SECONDS", type=float, default=default,
                       help="how long to wait for the API to connect or answer (default 10)")
    parser.add_argument("--json", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="machine output: JSON instead of tables")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common_options(p, top=False)
        return p

    command("status", "mode, workers, HA role and hit rates at a glance")
    command("stats", "statistics of every cache of every worker and of the shared cache")
    command("workers", "every worker: identity, status, uptime, queries, last heartbeat")
    command("upstreams", "every worker's upstreams: health, SRTT, RTO, failures")

    p = command("flush", "remove a name from the caches (of one type, or with everything below it)")
    p.add_argument("name", metavar="NAME", help="the domain name, e.g. www.example.com.")
    p.add_argument("--type", metavar="T", help="only records of this type (A, AAAA, TYPE65, 28, ...)")
    p.add_argument("--subtree", action="store_true", help="also every name below NAME")
    p.add_argument("--cache", choices=("l1", "l2", "shared", "all"), default="all",
                   help="which caches: l1 (messages), l2 (the workers' RRsets), shared (Redis), "
                        "all (the default: every cache, the shared one included)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--worker", metavar="ID", action="append",
                       help="only this worker (repeat for more)")
    where.add_argument("--cluster", metavar="NAME", help="only the workers whose clusterName is NAME")

    p = command("lookup", "what L1, L2 and the shared cache hold for a name, with remaining TTLs")
    p.add_argument("name", metavar="NAME", help="the domain name")
    p.add_argument("type", metavar="TYPE", nargs="?", help="only this type (default: every type held)")
    p.add_argument("--worker", metavar="ID", help="only this worker")

    p = command("dump", "save a worker's L2 cache to FILE (atomically), or to stdout with -")
    p.add_argument("file", metavar="FILE", help="where to write the dump; - for stdout")
    p.add_argument("--worker", metavar="ID", help="the worker to dump (needed when there are several)")

    p = command("load", "load a cache dump into every worker, or one")
    p.add_argument("file", metavar="FILE", help="a dump written by dnsgoctl dump; - for stdin")
    p.add_argument("--worker", metavar="ID", help="only this worker")

    p = command("check-config", "validate a dnsgo configuration file locally (as twistd dnsgo --check-config)")
    p.add_argument("file", metavar="FILE", help="the YAML configuration")
    return parser


def run(argv: Sequence[str], *, environ: Mapping[str, str] | None = None, stdout=None, stderr=None,
        stdin=None) -> int:
    """Run ``dnsgoctl argv``; the exit code.  Failures are one line on ``stderr``."""
    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    stdin = sys.stdin if stdin is None else stdin
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError(f"{PROG}: a command is needed: {', '.join(commands.COMMANDS)} (see {PROG} --help)")
        flags = Flags(api=args.api, token=args.token, token_file=args.token_file, config=args.config,
                      timeout=args.timeout)
        context = commands.Context(
            lambda: resolve(flags, environ), out=stdout, err=stderr,
            binary_out=getattr(stdout, "buffer", stdout), binary_in=getattr(stdin, "buffer", stdin))
        return commands.COMMANDS[args.command](args, context)
    except CtlError as error:
        _say(stderr, error.message if error.message.startswith(f"{PROG}") else f"{PROG}: {error.message}")
        return error.exit_code
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else USAGE
    except KeyboardInterrupt:
        _say(stderr, f"{PROG}: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (dnsgoctl dump - | head): nothing more to say to it.
        _quiet_stdout()
        return 1
    except Exception as error:  # a bug: still one line, not a traceback
        _say(stderr, f"{PROG}: unexpected error: {type(error).__name__}: {error}")
        return 1


def _say(stream, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main() -> None:
    """The ``dnsgoctl`` console script."""
    sys.exit(run(sys.argv[1:]))
