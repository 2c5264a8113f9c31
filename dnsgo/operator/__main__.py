"""
``python -m dnsgo.operator [--cluster-name NAME] [kopf run options]``: kopf
has no option for an operator's own settings, so this sets
``DNSGO_CLUSTER_NAME`` from ``--cluster-name``, checks the operator's
environment (one line and exit status 2 when a variable is bad), and runs
``kopf run --standalone -m dnsgo.operator`` with the other options
(``-A``/``--all-namespaces`` or ``-n NAMESPACE``, ``--verbose``,
``--liveness URL``, ...).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from dnsgo.operator import options

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def main(argv: list[str] | None = None) -> int:
    """Parse ``--cluster-name``, check the environment, and hand over to kopf's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m dnsgo.operator",
        description="Run the dnsgo operator (kopf run --standalone -m dnsgo.operator).",
        epilog="Every other option is passed to kopf run, e.g. -A (all namespaces) or -n NAMESPACE.",
    )
    parser.add_argument("--cluster-name", metavar="NAME",
                        help="the cluster this operator runs in, as the placements' clusterRef name it "
                             "(default: $DNSGO_CLUSTER_NAME)")
    args, rest = parser.parse_known_args(argv)
    if args.cluster_name is not None:
        if not _LABEL.match(args.cluster_name):
            parser.error(f"--cluster-name: must be a DNS label (a-z, 0-9, '-'); got {args.cluster_name!r}")
        os.environ["DNSGO_CLUSTER_NAME"] = args.cluster_name
    try:
        options.from_environ(os.environ)
    except options.OptionsError as e:
        sys.stderr.write(f"dnsgo operator: {e}\n")
        return 2
    from kopf.cli import main as kopf_main

    kopf_main(args=["run", "--standalone", "-m", "dnsgo.operator", *rest], prog_name="kopf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
