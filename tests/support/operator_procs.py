"""
The dnsgo operator and a Kubernetes API emulator as real processes, for the
operator's end-to-end tests: tests.support.kmock_server (kmock 0.8 on
127.0.0.1), the operator (``kopf run --standalone -m dnsgo.operator`` or
``python -m dnsgo.operator``) against it through a kubeconfig, a small
client that talks to the emulator as kubectl would, and
kubernetes-validate run on what the operator made.

Every process carries the test's mark (tests.support.harness) and is
killed and waited for when the test ends.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import yaml
from twisted.internet import defer, reactor, threads

from twisted.logger import Logger

from tests.support.cluster_procs import Response, TwistdProcess, stop_process, wait_until, write_file
from tests.support.harness import kill_marked, marked_environ

_log = Logger(namespace="tests.support.operator_procs")
#: How much of a process's output goes to the test log when it stops (trial -j2 sends log
#: events to its manager over AMP, which refuses values over 64 KiB).
LOGGED_TAIL = 20000

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
KUBERNETES_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0")

#: REST collection paths in a namespace, by kind.
PATHS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "ServiceMonitor": "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors",
    "DNSCluster": "/apis/dns.dns-go.io/v1alpha1/namespaces/{ns}/dnsclusters",
}


def spawn(testcase, name: str, argv: list[str], env: dict) -> TwistdProcess:
    """Start ``argv`` in the repository with ``env`` marked for the test; stopped and waited for at its end."""
    env, mark = marked_environ(testcase, env)
    env["PYTHONPATH"] = ROOT
    proc = TwistdProcess(name, mark)
    log_path = os.path.abspath(testcase.mktemp()) + f"-{name}.log"
    reactor.spawnProcess(proc, argv[0], argv, env=env, path=ROOT)

    @defer.inlineCallbacks
    def stop():
        proc.logged = True  # stop_process would log the whole output
        yield stop_process(proc, 2.0)
        yield kill_marked(mark)
        with open(log_path, "w", encoding="utf-8") as f:
            f.write(proc.text)
        _log.info("last output of {name} (all of it in {path}):\n{text}", name=name, path=log_path,
                  text=proc.text[-LOGGED_TAIL:])

    testcase.addCleanup(stop)
    return proc


class Emulator:
    """The kmock emulator process and a client for its API (urllib, in a thread)."""

    def __init__(self, proc: TwistdProcess, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    @defer.inlineCallbacks
    def start(cls, testcase, namespace: str, *, servicemonitors: bool = False):
        """Start tests.support.kmock_server with ``namespace`` and wait until it listens."""
        argv = [sys.executable, "-m", "tests.support.kmock_server", "--namespace", namespace]
        if servicemonitors:
            argv.append("--servicemonitors")
        proc = spawn(testcase, "kmock", argv, dict(os.environ))
        yield proc.wait_for_text("KMOCK_PORT ", 30.0)
        line = next(line for line in proc.text.splitlines() if line.startswith("KMOCK_PORT "))
        return cls(proc, int(line.split()[1]))

    @property
    def url(self) -> str:
        """The emulator's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, testcase, namespace: str) -> str:
        """A kubeconfig file for the emulator (kopf and the operator log in with it)."""
        return write_file(testcase, yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "kmock-test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": namespace}}],
            "current-context": "kmock",
        }))

    def request(self, method: str, path: str, body=None, content_type: str = "application/json") -> defer.Deferred:
        """``method path`` with a JSON body; fires with a Response whatever its status."""

        def exchange() -> Response:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(self.url + path, data=data, method=method)
            if data is not None:
                request.add_header("Content-Type", content_type)
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return Response(answer.status, dict(answer.headers), answer.read())
            except urllib.error.HTTPError as e:
                return Response(e.code, dict(e.headers), e.read())

        return threads.deferToThread(exchange)

    @defer.inlineCallbacks
    def get(self, kind: str, namespace: str, name: str):
        """The object, or None (404)."""
        response = yield self.request("GET", f"{PATHS[kind].format(ns=namespace)}/{name}")
        if response.status == 404:
            return None
        assert response.status == 200, response
        return response.json()

    @defer.inlineCallbacks
    def items(self, kind: str, namespace: str):
        """Every object of ``kind`` in ``namespace`` ([] when the resource is not served)."""
        response = yield self.request("GET", PATHS[kind].format(ns=namespace))
        if response.status == 404:
            return []
        assert response.status == 200, response
        return response.json()["items"]

    @defer.inlineCallbacks
    def create(self, kind: str, namespace: str, body: dict):
        """POST the object; fires with what was stored."""
        response = yield self.request("POST", PATHS[kind].format(ns=namespace), body)
        assert response.status in (200, 201), response
        return response.json()

    @defer.inlineCallbacks
    def patch(self, kind: str, namespace: str, name: str, body: dict, subresource: str = ""):
        """A JSON merge patch of the object (or its subresource)."""
        path = f"{PATHS[kind].format(ns=namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        response = yield self.request("PATCH", path, body, "application/merge-patch+json")
        assert response.status == 200, response
        return response.json()

    def delete(self, kind: str, namespace: str, name: str) -> defer.Deferred:
        """DELETE the object; fires with the Response."""
        return self.request("DELETE", f"{PATHS[kind].format(ns=namespace)}/{name}")


def spawn_operator(testcase, kubeconfig: str, namespace: str, *, cluster_name: str | None, via_module: bool = False,
                   extra_env: dict | None = None) -> TwistdProcess:
    """
    The operator against the emulator, watching ``namespace``: ``kopf run
    --standalone -m dnsgo.operator`` with ``DNSGO_CLUSTER_NAME``, or
    (``via_module``) ``python -m dnsgo.operator --cluster-name``.  Status
    refreshes every second.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSGO_")}
    env.update({"KUBECONFIG": kubeconfig, "DNSGO_OPERATOR_STATUS_INTERVAL": "1", **(extra_env or {})})
    if via_module:
        argv = [sys.executable, "-m", "dnsgo.operator", "-n", namespace, "--verbose"]
        if cluster_name is not None:
            argv[3:3] = ["--cluster-name", cluster_name]
    else:
        argv = [os.path.join(BIN, "kopf"), "run", "--standalone", "-m", "dnsgo.operator", "-n", namespace, "--verbose"]
        if cluster_name is not None:
            env["DNSGO_CLUSTER_NAME"] = cluster_name
    return spawn(testcase, "operator", argv, env)


def wait_for(condition, what: str, proc: TwistdProcess, timeout: float = 30.0) -> defer.Deferred:
    """wait_until ``condition``, showing the operator's last output on failure."""
    return wait_until(condition, what, timeout, lambda: proc.text[-6000:], interval=0.2)


def kubernetes_validate(testcase, objects: list[dict]) -> defer.Deferred:
    """
    Run ``kubernetes-validate --strict`` for each of KUBERNETES_VERSIONS on
    ``objects`` (one file each); fires with {version: (exit status, output)}.
    """
    folder = os.path.abspath(testcase.mktemp())
    os.makedirs(folder)
    paths = []
    for i, obj in enumerate(objects):
        path = os.path.join(folder, f"{i:02d}-{obj['kind']}-{obj['metadata']['name']}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(obj, f)
        paths.append(path)

    def run() -> dict:
        results = {}
        for version in KUBERNETES_VERSIONS:
            done = subprocess.run([os.path.join(BIN, "kubernetes-validate"), "--strict", "-k", version, *paths],
                                  capture_output=True, text=True, timeout=120)
            results[version] = (done.returncode, done.stdout + done.stderr)
        return results

    return threads.deferToThread(run)


def check_config(config_path: str, env: dict) -> defer.Deferred:
    """``twistd dnsgo --check-config --config PATH`` with ``env``; fires with (exit status, output)."""

    def run():
        done = subprocess.run([os.path.join(BIN, "twistd"), "dnsgo", "--check-config", "--config", config_path],
                              capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        return done.returncode, done.stdout + done.stderr

    return threads.deferToThread(run)


def _request_rule(method: str, path_qs: str) -> tuple[str, str, str] | None:
    """(verb, API group, resource[/subresource]) of a REST request; None for discovery."""
    path, _, query = path_qs.partition("?")
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"]:
        group, rest = (parts[1] if len(parts) > 1 else ""), parts[3:]
    else:
        return None
    if not rest:
        return None  # /api, /apis, /apis/GROUP, /apis/GROUP/VERSION: discovery
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    resource, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
    if method == "GET":
        verb = "watch" if "watch=true" in query or "watch=1" in query else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
    return verb, group, f"{resource}/{sub}" if sub else resource


def unauthorized_requests(emulator_output: str, rbac_path: str) -> list[str]:
    """The requests that did not come from the test (urllib) and that the ClusterRole in ``rbac_path`` does not allow."""
    with open(rbac_path, encoding="utf-8") as f:
        role = next(d for d in yaml.safe_load_all(f) if d["kind"] == "ClusterRole")
    refused = []
    for line in emulator_output.splitlines():
        if not line.startswith("REQUEST "):
            continue
        _, method, path_qs, agent = (line.split(" ", 3) + [""])[:4]
        if agent.startswith("Python-urllib"):
            continue
        wanted = _request_rule(method, path_qs)
        if wanted is None:
            continue
        verb, group, resource = wanted
        if not any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in role["rules"]):
            refused.append(f"{verb} {group or 'core'}/{resource} ({method} {path_qs})")
    return sorted(set(refused))
