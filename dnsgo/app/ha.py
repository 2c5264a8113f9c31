"""
The high-availability parts of the control-plane and worker roles
(``docs/ha.md``): a control plane's election, built from
``high_availability`` and its environment (``SITE_ID``, ``HA_PRIORITY``),
and a worker's witness with its state file.
"""
from __future__ import annotations

import ipaddress
import os
import re

from dnsgo.config import HAConfig, parse_address
from dnsgo.control.election import Election, HASettings
from dnsgo.control.quorum import QuorumRule
from dnsgo.control.state_file import MemoryState, StateFile
from dnsgo.control.voters import RegisteredVoters
from dnsgo.control.witness import Witness


def ha_enabled(config) -> bool:
    """Whether ``config`` asks for active/passive control planes with a worker-witness quorum."""
    ha = config.high_availability
    return ha.enabled and ha.mode == "active_passive" and ha.quorum.type == "worker_witness"


def _advertised(host: str, port: int, hostname: str) -> str:
    """host:port others can reach: the host name stands in for an unspecified address."""
    try:
        if ipaddress.ip_address(host).is_unspecified:
            host = hostname
    except ValueError:
        pass
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def control_settings(config, environ, *, control_host: str, control_port: int) -> HASettings:
    """
    A control plane's HA settings.  Its site is ``SITE_ID`` (else
    ``server.cluster_name``); its priority ``HA_PRIORITY`` when set, else
    ``high_availability.priority``; its name ``high_availability.node_id``,
    else ``site/host:port`` of its control address.  ValueError for a bad
    ``HA_PRIORITY``.
    """
    ha = config.high_availability
    hostname = os.uname().nodename
    site = environ.get("SITE_ID") or config.server.cluster_name
    priority = ha.priority
    if environ.get("HA_PRIORITY", "").strip():
        text = environ["HA_PRIORITY"].strip()
        if not text.isdigit() or int(text) > 1000:
            raise ValueError(f"HA_PRIORITY must be an integer from 0 to 1000; got {text!r}")
        priority = int(text)
    control = _advertised(control_host, control_port, hostname)
    api = config.api.listen_address
    return HASettings(
        node_id=ha.node_id or f"{site or hostname}/{control}",
        site=site,
        priority=priority,
        api_address=_advertised(api.host, api.port, hostname) if config.api.enabled else "",
        lease_duration=ha.lease_duration,
        renew_deadline=ha.renew_deadline,
        retry_period=ha.retry_period,
        quorum=QuorumRule(ha.quorum.minimum, ha.quorum.min_clusters_required),
        peers=tuple(str(peer) for peer in ha.peers),
    )


def build_election(config, control, environ, *, reactor) -> Election:
    """The election of ``control`` (a ControlService, which it is attached to); start it after the listener."""
    settings = control_settings(config, environ, control_host=control.host, control_port=control.port)
    election = Election(settings, RegisteredVoters(control, reactor=reactor), reactor=reactor)
    election.setName("ha")
    control.election = election
    return election


def state_path(state_dir: str, worker_id: str) -> str:
    """The witness state file of ``worker_id`` in ``state_dir``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", worker_id) or "_"
    return os.path.join(state_dir, f"witness-{safe}.json")


def build_witness(local_config, worker_id: str, *, reactor) -> Witness:
    """
    A worker's witness: its state in ``high_availability.state_dir`` of the
    worker's own configuration (in memory without one), silent for
    ``lease_duration`` when it starts without saved state.
    """
    ha = local_config.high_availability if local_config is not None else HAConfig()
    store = StateFile(state_path(ha.state_dir, worker_id)) if ha.state_dir else MemoryState()
    return Witness(store, lease_duration=ha.lease_duration, reactor=reactor)


def control_addresses(text: str) -> list:
    """The control planes of ``--control-plane`` / ``CONTROL_PLANE_ADDRESS``: host:port, comma-separated."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise ValueError("no address given")
    addresses = []
    for part in parts:
        if not part:
            raise ValueError(f"an empty address in {text!r}")
        address = parse_address(part, ip_only=False)
        if address not in addresses:
            addresses.append(address)
    return addresses
