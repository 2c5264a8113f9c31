"""dnsgo: a caching DNS forwarder built on Twisted."""

__version__ = "0.1.0"
