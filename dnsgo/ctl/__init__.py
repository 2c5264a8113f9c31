"""
``dnsgoctl``: the operator's command line for a running dnsgo, in the way
of ``unbound-control`` and ``kresctl``.  It talks to the management API
(docs/api.md) over HTTP with the bearer token, and checks configuration
files locally.

The modules, each importing only from those above it:

- :mod:`~dnsgo.ctl.errors`: the failures and their exit codes;
- :mod:`~dnsgo.ctl.settings`: where the API is and which token to send
  (flags, then the environment, then a dnsgo configuration file);
- :mod:`~dnsgo.ctl.client`: the HTTP client (urllib; http.client for uploads);
- :mod:`~dnsgo.ctl.tables`: aligned text tables and number formats;
- :mod:`~dnsgo.ctl.render`: API bodies turned into tables;
- :mod:`~dnsgo.ctl.files`: reading and atomically writing cache dumps;
- :mod:`~dnsgo.ctl.commands`: one function per subcommand;
- :mod:`~dnsgo.ctl.main`: the argparse command line and the console script.

This package is a root of its own: it imports :mod:`dnsgo.config` and
:mod:`dnsgo.dns`, never the server's packages, so it runs without them
being importable in a useful way (and never starts a reactor).
"""
