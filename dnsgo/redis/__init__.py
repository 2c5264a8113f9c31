"""The shared-cache backends over Redis: single server, Sentinel, Cluster."""
