"""
The few Kubernetes API calls the operator makes for the objects it owns:
get, create, JSON merge patch, delete, and API discovery; over aiohttp
(which kopf runs on), with kopf's own login (the pod's service account,
else the kubeconfig).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

import dnsgo
from dnsgo.operator.kinds import Kind

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server refused a request: its HTTP status, and its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        super().__init__(status, reason, message, what)
        self.status = status
        self.reason = reason
        self.message = message
        self.what = what

    def __str__(self) -> str:
        return f"{self.what}: {self.status} {self.reason}: {self.message}"


def login(settings) -> kopf.ConnectionInfo:
    """Credentials as kopf finds them: the pod's service account, else $KUBECONFIG or ~/.kube/config."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig: cannot reach the Kubernetes API")
    return info


class KubeApi:
    """
    A client for the objects of one operator, on one aiohttp session.  On a
    401 it logs in again once (service-account tokens are rotated) and
    retries.
    """

    def __init__(self, relogin: Callable[[], kopf.ConnectionInfo], *, timeout: float = 30.0) -> None:
        self._relogin = relogin
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._info = self._relogin()
            ssl = self._info.as_ssl_context() if self._info.server.startswith("https:") else None
            self._session = aiohttp.ClientSession(
                headers={**self._info.as_http_headers(), "User-Agent": f"dnsgo-operator/{dnsgo.__version__}"},
                connector=aiohttp.TCPConnector(ssl=ssl) if ssl is not None else None,
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                       *, retried: bool = False) -> tuple[int, Any]:
        session = await self._open()
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        url = self._info.server.rstrip("/") + path
        async with session.request(method, url, data=data, headers=headers) as response:
            status = response.status
            text = await response.text()
        if status == 401 and not retried:
            await self.close()
            return await self._request(method, path, body, content_type, retried=True)
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            payload = {"message": text[:200]}
        return status, payload

    @staticmethod
    def _fail(status: int, payload: Any, what: str) -> ApiError:
        payload = payload if isinstance(payload, dict) else {}
        return ApiError(status, str(payload.get("reason", "")), str(payload.get("message", "")), what)

    async def get(self, kind: Kind, namespace: str, name: str) -> dict | None:
        """The object, or None when there is none."""
        status, payload = await self._request("GET", kind.path(namespace, name))
        if status == 404:
            return None
        if status != 200:
            raise self._fail(status, payload, f"get {kind.kind} {namespace}/{name}")
        return payload

    async def create(self, kind: Kind, namespace: str, body: dict) -> dict | None:
        """Create the object; None when one of that name exists already (409)."""
        name = body["metadata"]["name"]
        status, payload = await self._request("POST", kind.path(namespace), body)
        if status == 409:
            return None
        if status not in (200, 201, 202):
            raise self._fail(status, payload, f"create {kind.kind} {namespace}/{name}")
        return payload

    async def patch(self, kind: Kind, namespace: str, name: str, body: dict, subresource: str | None = None) -> dict:
        """Apply ``body`` as a JSON merge patch (RFC 7386) to the object (or its subresource)."""
        status, payload = await self._request("PATCH", kind.path(namespace, name, subresource), body, MERGE_PATCH)
        if status != 200:
            raise self._fail(status, payload, f"patch {kind.kind} {namespace}/{name}")
        return payload

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete the object (its dependents in the background); False when there was none."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        status, payload = await self._request("DELETE", kind.path(namespace, name), body)
        if status == 404:
            return False
        if status not in (200, 202):
            raise self._fail(status, payload, f"delete {kind.kind} {namespace}/{name}")
        return True

    async def serves(self, kind: Kind) -> bool:
        """Whether the API server serves ``kind`` (its CRD is installed), by API discovery."""
        status, payload = await self._request("GET", kind.group_version_path)
        if status == 404:
            return False
        if status != 200:
            raise self._fail(status, payload, f"discover {kind.api_version}")
        return any(r.get("name") == kind.plural for r in (payload or {}).get("resources", []))
