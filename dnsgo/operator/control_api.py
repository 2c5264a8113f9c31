"""
Asking a DNSCluster's control plane, through its Service, whether it is up
(``/api/health``, no token) and which HA role and term it holds
(``/api/ha``, with the API token), for the DNSCluster's status.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping

import aiohttp

#: In-cluster address of a control plane's API; ``DNSGO_OPERATOR_CONTROL_URL`` overrides it
#: (an operator run outside the cluster, or a test).
DEFAULT_URL = "http://{name}-control.{namespace}.svc:8080"


def api_url(template: str, name: str, namespace: str) -> str:
    """The base URL of DNSCluster ``name``'s control-plane API."""
    return template.format(name=name, namespace=namespace).rstrip("/")


def secret_value(secret: Mapping | None, key: str) -> str | None:
    """The decoded value of ``key`` in a Secret object, or None when it is missing or not base64 text."""
    encoded = ((secret or {}).get("data") or {}).get(key)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8").strip() or None
    except (binascii.Error, UnicodeDecodeError):
        return None


async def probe(session: aiohttp.ClientSession, base_url: str, token: str | None, *, timeout: float = 3.0) -> dict:
    """
    ``{"reachable", "message", "role", "term", "leader"}``, the last three
    None unless the control plane reports its HA state.  Never raises
    for network errors: an unreachable control plane is a status, not a
    failure of the operator.
    """
    limit = aiohttp.ClientTimeout(total=timeout)

    def seen(reachable: bool, message: str, body=None) -> dict:
        body = body if isinstance(body, Mapping) else {}
        leader = body.get("leader")
        return {"reachable": reachable, "message": message, "role": body.get("role"), "term": body.get("term"),
                "leader": str(leader) if leader is not None else None}

    try:
        async with session.get(f"{base_url}/api/health", timeout=limit) as health:
            if health.status != 200:
                return seen(False, f"/api/health answered {health.status}")
        if token is None:
            return seen(True, "no API token to ask /api/ha with")
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{base_url}/api/ha", headers=headers, timeout=limit) as ha:
            if ha.status == 404:
                return seen(True, "this dnsgo has no /api/ha")
            if ha.status != 200:
                return seen(True, f"/api/ha answered {ha.status}")
            return seen(True, "ok", await ha.json())
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
        return seen(False, f"{type(e).__name__}: {e}"[:300])
