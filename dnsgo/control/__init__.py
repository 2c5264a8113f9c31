"""
The control channel between a control plane and its dnsgo workers.

Workers connect to the control plane over Twisted AMP (where the seed says
gRPC), register, receive the configuration they run with, and send a stats
snapshot with every heartbeat; the control plane sends them cache flushes,
new configurations and shutdowns.  See ``docs/control-protocol.md``.

- :mod:`dnsgo.control.commands`: the AMP commands, the wire contract;
- :mod:`dnsgo.control.registry`: the control plane's table of workers;
- :mod:`dnsgo.control.server`: the control plane's listening service;
- :mod:`dnsgo.control.client`: the worker's side, reconnecting by itself.
"""
