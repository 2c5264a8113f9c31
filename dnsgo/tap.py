"""
``twistd dnsgo``: the command line, and the choice of role.

* ``twistd dnsgo [--config FILE]``: standalone (one process, or a supervisor
  of ``server.num_workers`` workers);
* ``twistd dnsgo control --config FILE``: the control plane and the API;
* ``twistd dnsgo worker [--control-plane HOST:PORT] [--config FILE]``: a
  worker that takes its configuration from a control plane.

The parts are built in :mod:`dnsgo.app.roles` and :mod:`dnsgo.app.assemble`.
"""
import gc
import os
import sys

from twisted.python import usage

from dnsgo.config import ConfigError, load_config
from dnsgo.serve import fdlimit


def _load(path, check: bool):
    """Load ``path`` (None: the embedded default); on problems report them all and exit 1."""
    try:
        config = load_config(path)
    except ConfigError as e:
        sys.stderr.write(e.report() + "\n")
        sys.exit(1)
    if check:
        sys.stdout.write(f"{path or '<embedded default>'}: configuration OK\n")
        sys.exit(0)
    return config


class ControlOptions(usage.Options):
    """Options of ``twistd dnsgo control``."""

    synopsis = "--config FILE"
    longdesc = (
        "Run the control plane: the control channel on control.grpc_address (Twisted AMP), "
        "which hands workers their configuration and collects their stats, and the management "
        "API on api.listen_address."
    )
    optParameters = [["config", "c", None, "YAML configuration file, handed to the workers too."]]
    optFlags = [["check-config", None, "Validate the configuration and exit."]]

    def postOptions(self) -> None:
        self.config = _load(self["config"], self["check-config"])


class WorkerOptions(usage.Options):
    """Options of ``twistd dnsgo worker``."""

    synopsis = "[--control-plane HOST:PORT] [--config FILE] [--worker-id ID] [--cluster-name NAME]"
    longdesc = (
        "Run a worker: register with the control plane (--control-plane, else $CONTROL_PLANE_ADDRESS), "
        "receive the configuration, then serve DNS.  A local --config supplies this worker's server "
        "section (listen address, worker_id, cluster_name); the cluster name defaults to $SITE_ID."
    )
    optParameters = [
        ["control-plane", None, None,
         "host:port of the control plane, or of every control plane, comma-separated, with HA "
         "(default: $CONTROL_PLANE_ADDRESS)."],
        ["config", "c", None, "Local YAML file for this worker's server section."],
        ["worker-id", None, None, "This worker's id (default: server.worker_id, $WORKER_ID, host-pid)."],
        ["cluster-name", None, None, "This worker's cluster/site name (default: server.cluster_name, $SITE_ID)."],
    ]

    def postOptions(self) -> None:
        self.local_config = _load(self["config"], False) if self["config"] else None
        self.control_address = self["control-plane"] or os.environ.get("CONTROL_PLANE_ADDRESS")
        if not self.control_address:
            raise usage.UsageError("no control plane: give --control-plane HOST:PORT or set CONTROL_PLANE_ADDRESS")


class Options(usage.Options):
    """Options of ``twistd dnsgo``."""

    synopsis = "[--config FILE] [--check-config] [control|worker ...]"
    longdesc = (
        "Serve DNS as a caching forwarder.  Without --config, the embedded "
        "default listens on 127.0.0.1:5353 (UDP and TCP) in standalone mode and "
        "forwards to the nameservers of /etc/resolv.conf.  See docs/configuration.md."
    )
    optParameters = [
        ["config", "c", None, "YAML configuration file (default: the embedded default)."],
    ]
    optFlags = [
        ["check-config", None, "Validate the configuration, print every problem, and exit (0 valid, 1 invalid)."],
    ]
    subCommands = [
        ["control", None, ControlOptions, "Run the control plane and the management API."],
        ["worker", None, WorkerOptions, "Run a worker configured by a control plane."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            self.config = _load(self["config"], self["check-config"])


#: Young-generation threshold of the cyclic garbage collector.  The caches
#: hold hundreds of thousands of long-lived objects and the miss path
#: allocates many short-lived ones; with CPython's default (700) the
#: collector ran so often that misses were about a third slower once the
#: caches filled (measured with bench/run.py's miss scenario).
GC_THRESHOLDS = (100_000, 50, 1000)


def makeService(options: Options):
    """
    twistd's entry point: the role the command line asks for, in a process
    whose soft open-file limit is raised to the hard one (see dnsgo.serve.fdlimit).
    """
    # Imported here, not at the top: klein installs the default reactor when
    # imported, and twistd imports this module before it installs the one
    # asked for with --reactor.
    from dnsgo.app import roles

    gc.set_threshold(*GC_THRESHOLDS)
    fdlimit.raise_open_file_limit()
    try:
        if options.subCommand == "control":
            sub = options.subOptions
            return roles.build_control(sub.config, sub["config"])
        if options.subCommand == "worker":
            sub = options.subOptions
            return roles.build_worker(sub.control_address, sub.local_config,
                                      worker_id=sub["worker-id"], cluster_name=sub["cluster-name"])
        return roles.build_standalone(options.config, options["config"])
    except roles.StartupError as e:
        sys.stderr.write(f"dnsgo: {e}\n")
        sys.exit(1)
