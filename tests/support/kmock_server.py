"""
A Kubernetes API emulator for the operator's end-to-end tests: kmock's
KubernetesEmulator on 127.0.0.1, run as its own process (it is asyncio;
the tests run on Twisted's reactor), until SIGTERM.

    python -m tests.support.kmock_server --namespace dns [--servicemonitors]

It prints ``KMOCK_PORT <port>`` once it listens, then a ``REQUEST`` line
for each request (so a test can check the operator's RBAC covers them).  What it is set up with,
because kmock 0.8 is not an API server:

* the built-in kinds (``resources.load_bundled()``);
* the DNSCluster resource with its status subresource, registered by hand
  (kmock ignores an applied CRD);
* the namespaces, stored straight into the emulator (``/api/v1/namespaces``
  cannot be written through the API);
* with ``--servicemonitors``, prometheus-operator's ServiceMonitor resource,
  as if its CRD were installed.

kmock 0.8 sets no uid, generation or resourceVersion.  This server gives
every create and patch a new resourceVersion, and answers a failed JSON
patch "test" with 422 as an API server does, not 500 (kopf depends on both:
see RecordingEmulator._handle); the tests set uid and generation themselves.
It does no validation, no defaulting, no garbage collection, and runs no
controllers: the tests do what the API server and the controllers would
where it matters, and say so.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys

import jsonpatch
import kmock

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class RecordingEmulator(kmock.KubernetesEmulator):
    """
    The emulator, printing ``REQUEST <method> <path?query> <user agent>``
    for every request it gets, and giving every written object a new
    ``metadata.resourceVersion``, as an API server does.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.versions = itertools.count(2)

    async def __call__(self, raw_request):
        agent = raw_request.headers.get("User-Agent", "")
        sys.stdout.write(f"REQUEST {raw_request.method} {raw_request.path_qs} {agent}\n")
        sys.stdout.flush()
        return await super().__call__(raw_request)

    async def _handle(self, request):
        # kmock keeps resourceVersion as written.  kopf, after each patch of its own, waits for the event
        # carrying the resourceVersion that patch returned; when every version is the same, any stale
        # event passes for that one and kopf handles an old state again (and again, as long as writes
        # of the status keep producing such events).  Hence a new version on every create and patch.
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            version = str(next(self.versions))
            if isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = version
            elif isinstance(request.data, list):  # a JSON patch: after its own "test" operations
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as e:
            # An API server answers a failed "test" (kopf tests resourceVersion) with 422, which kopf
            # takes as "newer changes pending, try again on the next event"; kmock answers 500,
            # which kopf retries with back-off for minutes.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=f"JSON patch test failed: {e}") from None


def emulator(namespaces: list[str], servicemonitors: bool) -> kmock.KubernetesEmulator:
    """The emulator with the resources and namespaces the operator's tests need."""
    emu = RecordingEmulator()
    emu.resources.load_bundled()
    emu.resources["dns.dns-go.io/v1alpha1/dnsclusters"] = kmock.ResourceInfo(
        kind="DNSCluster", singular="dnscluster", namespaced=True, verbs=VERBS, subresources={"status"})
    if servicemonitors:
        emu.resources["monitoring.coreos.com/v1/servicemonitors"] = kmock.ResourceInfo(
            kind="ServiceMonitor", singular="servicemonitor", namespaced=True, verbs=VERBS)
    for name in namespaces:
        emu.objects["v1/namespaces", None, name] = {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    return emu


async def serve(namespaces: list[str], servicemonitors: bool) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with emulator(namespaces, servicemonitors) as emu, kmock.Server(emu) as server:
        sys.stdout.write(f"KMOCK_PORT {server.port}\n")
        sys.stdout.flush()
        await stop.wait()


def main() -> None:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", action="append", default=[], help="a namespace to create (repeatable)")
    parser.add_argument("--servicemonitors", action="store_true", help="serve monitoring.coreos.com/v1 servicemonitors")
    args = parser.parse_args()
    asyncio.run(serve(args.namespace, args.servicemonitors))


if __name__ == "__main__":
    main()
