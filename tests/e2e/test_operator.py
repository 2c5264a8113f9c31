"""
The dnsgo operator end to end: the real operator (``kopf run --standalone
-m dnsgo.operator``, or ``python -m dnsgo.operator``) against the kmock
Kubernetes API emulator, both real processes on 127.0.0.1.

kmock 0.8 is not an API server (tests/support/kmock_server.py): it sets no
uid, generation or resourceVersion, so the emulator's wrapper gives every
write a new resourceVersion and the tests set uid and generation on the
objects they create and bump ``generation`` when they change a spec, as an
API server would; it runs no controllers, so the tests write the Deployments'
status themselves, as the Deployment controller would; and it does no
garbage collection, so deletion is checked up to what the operator does
(nothing: the ownerReferences are left to the collector).  Every object
the operator made is validated with kubernetes-validate --strict for
Kubernetes 1.30 to 1.33, the ServiceMonitor with prometheus-operator's
model, the DNSCluster (status included) with the CRD's schema, and the
ConfigMap with ``twistd dnsgo --check-config``.
"""
from __future__ import annotations

import base64
import json
import os
from http.client import HTTPException

from twisted.internet import defer
from twisted.trial import unittest

from tests.support import crd_schema
from tests.support.cluster_procs import TOKEN, Cluster, free_port, http, write_file
from tests.support.operator_procs import (
    ROOT,
    Emulator,
    check_config,
    kubernetes_validate,
    spawn_operator,
    unauthorized_requests,
    wait_for,
)

NS = "dns"
NAME = "ha-dns-redis"
UID = "6f1c2a3e-0000-4000-8000-00000000d15c"
REDIS_PASSWORD = "redis-pw-e2e-not-in-any-configmap"
OWNER = {"apiVersion": "dns.dns-go.io/v1alpha1", "kind": "DNSCluster", "name": NAME, "uid": UID,
         "controller": True, "blockOwnerDeletion": True}
KINDS = ("ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
         "ServiceMonitor")


def seed_cluster(name: str = NAME, uid: str = UID, **spec_changes) -> dict:
    """The seed's example, in namespace NS, with what an API server would add and kmock does not (uid, generation)."""
    body = crd_schema.load_example()
    body["metadata"].update(name=name, namespace=NS, uid=uid, generation=1)
    body["spec"].update(spec_changes)
    return body


def secret(name: str, key: str, value: str) -> dict:
    """A Secret as the test's user would make it."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "type": "Opaque", "data": {key: base64.b64encode(value.encode()).decode()}}


def env_of(deployment: dict) -> dict:
    """The first container's env list as {name: entry}."""
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


class OperatorTestCase(unittest.TestCase):
    """Starts the emulator and the operator; helpers to wait on the DNSCluster and collect what was made."""

    timeout = 180

    @defer.inlineCallbacks
    def start(self, cluster_name: str | None, *, servicemonitors: bool = False, via_module: bool = False,
              extra_env: dict | None = None):
        """Start the emulator and the operator for ``cluster_name``; fires once kopf has started."""
        self.kube = yield Emulator.start(self, NS, servicemonitors=servicemonitors)
        kubeconfig = self.kube.kubeconfig(self, NS)
        self.operator = spawn_operator(self, kubeconfig, NS, cluster_name=cluster_name, via_module=via_module,
                                       extra_env=extra_env)
        yield self.operator.wait_for_text("Activity 'startup' succeeded", 60.0)

    def cluster(self, name: str = NAME) -> defer.Deferred:
        """The stored DNSCluster ``name`` (None once gone)."""
        return self.kube.get("DNSCluster", NS, name)

    def wait_status(self, check, what: str, name: str = NAME, timeout: float = 30.0) -> defer.Deferred:
        """Fires with the DNSCluster once ``check(its status)`` is true."""

        def seen():
            return self.cluster(name).addCallback(
                lambda obj: obj if obj is not None and check(obj.get("status") or {}) else None)

        return wait_for(seen, what, self.operator, timeout)

    def wait_generation(self, generation: int, name: str = NAME) -> defer.Deferred:
        """Fires with the DNSCluster once the operator reports it reconciled ``generation``."""
        return self.wait_status(
            lambda s: s.get("observedGeneration") == generation and s.get("resources"),
            f"status.observedGeneration {generation}", name)

    @defer.inlineCallbacks
    def made(self, name: str = NAME) -> dict:
        """{(kind, name): object} of everything in the namespace that names the DNSCluster ``name`` as owner."""
        found = {}
        for kind in KINDS:
            for obj in (yield self.kube.items(kind, NS)):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("name") == name for r in refs):
                    found[(kind, obj["metadata"]["name"])] = obj
        return found

    @defer.inlineCallbacks
    def assert_valid_manifests(self, objects: list[dict]):
        """kubernetes-validate --strict for 1.30-1.33 on every built-in kind among ``objects``."""
        builtin = [o for o in objects if o["kind"] != "ServiceMonitor"]
        results = yield kubernetes_validate(self, builtin)
        for version, (status, output) in results.items():
            self.assertEqual(status, 0, f"Kubernetes {version}:\n{output}")
            self.assertEqual(output.count(" passed for resource "), len(builtin), output)

    def assert_valid_cluster(self, obj: dict):
        """The stored DNSCluster, status included, holds to the CRD's schema (an API server would prune the rest)."""
        self.assertEqual(crd_schema.validate(obj), [], json.dumps(obj.get("status"), indent=1))

    @defer.inlineCallbacks
    def assert_config_checks(self, config_map: dict, deployments: dict[str, dict]):
        """
        Each key of the ConfigMap passes ``twistd dnsgo --check-config`` with
        the environment its container would have: literal values as they
        are, Secret references read from the emulator, the pod name for the
        downward API.
        """
        for key, deployment in deployments.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("DNSGO_")}
            for name, entry in env_of(deployment).items():
                if "value" in entry:
                    env[name] = entry["value"]
                elif "secretKeyRef" in entry["valueFrom"]:
                    ref = entry["valueFrom"]["secretKeyRef"]
                    stored = yield self.kube.get("Secret", NS, ref["name"])
                    env[name] = base64.b64decode(stored["data"][ref["key"]]).decode()
                else:
                    env[name] = f"{deployment['metadata']['name']}-7d9f-x2x4q"
            path = write_file(self, config_map["data"][key])
            status, output = yield check_config(path, env)
            self.assertEqual(status, 0, f"{key}:\n{config_map['data'][key]}\n{output}")
            self.assertIn("configuration OK", output)


class SeedExampleTests(OperatorTestCase):
    """The seed's DNSCluster in cluster site-a: every object, an HPA-friendly update, a rollout, status, deletion."""

    @defer.inlineCallbacks
    def test_seed_example_in_site_a(self):
        yield self.start("site-a")
        yield self.kube.create("Secret", NS, secret("redis-password", "password", REDIS_PASSWORD))
        yield self.kube.create("DNSCluster", NS, seed_cluster())
        cluster = yield self.wait_generation(1)
        objects = yield self.made()
        control, worker = f"{NAME}-control", f"{NAME}-worker"

        # What was made: exactly these, each owned by the DNSCluster (no ServiceMonitor: its resource is not served).
        self.assertEqual(sorted(objects), sorted([
            ("ConfigMap", f"{NAME}-config"), ("Secret", f"{NAME}-api-token"),
            ("Deployment", control), ("Deployment", worker),
            ("Service", control), ("Service", f"{NAME}-dns"),
            ("HorizontalPodAutoscaler", worker), ("PodDisruptionBudget", worker),
        ]))
        for obj in objects.values():
            self.assertEqual(obj["metadata"]["ownerReferences"], [OWNER], obj["metadata"]["name"])
        self.assertEqual(sorted((r["kind"], r["name"]) for r in cluster["status"]["resources"]), sorted(objects))
        yield self.assert_valid_manifests(list(objects.values()))
        self.assert_valid_cluster(cluster)

        # Placement: half of 6 workers here, the HPA's 4..20 halved, the control plane with priority 1.
        workers = objects[("Deployment", worker)]
        self.assertEqual(workers["spec"]["replicas"], 3)
        self.assertEqual(objects[("Deployment", control)]["spec"]["replicas"], 2)
        hpa = objects[("HorizontalPodAutoscaler", worker)]["spec"]
        self.assertEqual((hpa["minReplicas"], hpa["maxReplicas"]), (2, 10))
        self.assertEqual(hpa["scaleTargetRef"]["name"], worker)
        control_env, worker_env = env_of(objects[("Deployment", control)]), env_of(workers)
        self.assertEqual(control_env["SITE_ID"]["value"], "site-a")
        self.assertEqual(control_env["HA_PRIORITY"]["value"], "1")
        self.assertEqual(worker_env["CONTROL_PLANE_ADDRESS"]["value"], f"{control}.{NS}.svc:9090")
        self.assertEqual(cluster["status"]["placement"],
                         {"workers": 3, "minWorkers": 2, "maxWorkers": 10, "controlPlane": True, "haPriority": 1})
        for component, deployment in ((control, objects[("Deployment", control)]), (worker, workers)):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            self.assertEqual(labels["app.kubernetes.io/component"],
                             "control-plane" if component == control else "worker")
        probes = objects[("Deployment", control)]["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(probes["livenessProbe"]["httpGet"]["path"], "/api/health")
        self.assertEqual(probes["readinessProbe"]["httpGet"]["path"], "/api/ready")
        dns = objects[("Service", f"{NAME}-dns")]["spec"]["ports"]
        self.assertEqual(sorted((p["port"], p["protocol"]) for p in dns), [(53, "TCP"), (53, "UDP")])

        # Secrets only by reference: the Redis password and the generated token are in no ConfigMap or Deployment.
        for env in (control_env, worker_env):
            self.assertEqual(env["DNSGO_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"],
                             {"name": "redis-password", "key": "password"})
        self.assertEqual(control_env["DNSGO_API_TOKEN"]["valueFrom"]["secretKeyRef"],
                         {"name": f"{NAME}-api-token", "key": "token"})
        token_secret = objects[("Secret", f"{NAME}-api-token")]
        token = base64.b64decode(token_secret["data"]["token"]).decode()
        self.assertGreaterEqual(len(token), 32)
        for key, obj in objects.items():
            if key[0] != "Secret":
                text = json.dumps(obj)
                self.assertNotIn(REDIS_PASSWORD, text)
                self.assertNotIn(token, text)
        self.assertNotIn(token, self.operator.text)
        config_map = objects[("ConfigMap", f"{NAME}-config")]
        yield self.assert_config_checks(config_map, {
            "config.yaml": objects[("Deployment", control)], "worker.yaml": workers})

        # Status before any pod runs: not ready, rolling out.
        conditions = {c["type"]: c for c in cluster["status"]["conditions"]}
        self.assertEqual(conditions["Ready"]["status"], "False")
        self.assertEqual(conditions["Degraded"]["status"], "False")
        self.assertEqual(conditions["Ready"]["observedGeneration"], 1)

        # The HPA scales the workers to 5; a change of upstreams rolls the pods but keeps the HPA's 5.
        yield self.kube.patch("Deployment", NS, worker, {"spec": {"replicas": 5}})
        yield self.kube.patch("DNSCluster", NS, NAME, {
            "metadata": {"generation": 2}, "spec": {"upstreams": ["9.9.9.9:53", "1.1.1.1:53"]}})
        cluster = yield self.wait_generation(2)
        objects2 = yield self.made()
        self.assertEqual(objects2[("Deployment", worker)]["spec"]["replicas"], 5)
        self.assertIn("9.9.9.9:53", objects2[("ConfigMap", f"{NAME}-config")]["data"]["config.yaml"])
        checksum = cluster["status"]["configChecksum"]
        self.assertNotEqual(checksum, config_map["metadata"]["annotations"]["dns.dns-go.io/config-checksum"])
        for name in (control, worker):
            annotations = objects2[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]
            self.assertEqual(annotations["dns.dns-go.io/config-checksum"], checksum)

        # A new spec.workers.replicas reaches the worker Deployment: half of 8.
        yield self.kube.patch("DNSCluster", NS, NAME, {"metadata": {"generation": 3}, "spec": {"workers": {"replicas": 8}}})
        yield self.wait_generation(3)
        objects3 = yield self.made()
        self.assertEqual(objects3[("Deployment", worker)]["spec"]["replicas"], 4)
        self.assertEqual(objects3[("HorizontalPodAutoscaler", worker)]["spec"]["minReplicas"], 2)
        yield self.assert_valid_manifests(list(objects3.values()))

        # The Deployment controller's part, played here: every replica available; the status follows.
        for name, deployment in ((control, objects3[("Deployment", control)]), (worker, objects3[("Deployment", worker)])):
            n = deployment["spec"]["replicas"]
            yield self.kube.patch("Deployment", NS, name, {"status": {
                "replicas": n, "readyReplicas": n, "availableReplicas": n, "updatedReplicas": n}}, "status")
        cluster = yield self.wait_status(
            lambda s: any(c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions", [])),
            "Ready True")
        self.assertEqual(cluster["status"]["replicas"]["workers"], {"desired": 4, "ready": 4, "available": 4, "updated": 4})
        self.assertEqual(cluster["status"]["replicas"]["controlPlane"]["available"], 2)
        self.assert_valid_cluster(cluster)

        # Deletion: kopf's finalizer (for its status timer) is removed and the DNSCluster goes; the operator
        # deletes none of its objects, whose ownerReferences leave them to the garbage collector.
        response = yield self.kube.delete("DNSCluster", NS, NAME)
        self.assertIn(response.status, (200, 202), response)
        yield wait_for(lambda: self.cluster().addCallback(lambda obj: obj is None), "the DNSCluster gone", self.operator)
        left = yield self.made()
        self.assertEqual(sorted(left), sorted(objects3))
        for obj in left.values():
            self.assertEqual(obj["metadata"]["ownerReferences"], [OWNER])

        # Every request the operator (kopf included) made is one deploy/operator/rbac.yaml allows.
        requests = [line for line in self.kube.proc.text.splitlines() if line.startswith("REQUEST ")]
        self.assertTrue(any("python-urllib" not in line.lower() for line in requests))
        self.assertEqual(unauthorized_requests(self.kube.proc.text, os.path.join(ROOT, "deploy", "operator", "rbac.yaml")), [])


class PlacementEdgeTests(OperatorTestCase):
    """A worker-only site, an invalid spec reported in the status, a ServiceMonitor, a reachable control plane."""

    @defer.inlineCallbacks
    def test_worker_only_site_and_invalid_spec(self):
        """site-c runs workers only; its workers are told the other sites' control addresses."""
        yield self.start("site-c", via_module=True)
        spec = seed_cluster(name="three-sites", uid="uid-three")
        spec["spec"]["multiCluster"]["workerPlacements"] = [
            {"clusterRef": "site-a", "weight": 2}, {"clusterRef": "site-b", "weight": 2},
            {"clusterRef": "site-c", "weight": 1, "minReplicas": 2}]
        spec["spec"]["workers"] = {"replicas": 5}
        spec["spec"]["highAvailability"]["controlPlanePlacements"] = [
            {"clusterRef": "site-a", "priority": 1, "controlAddress": "10.1.0.10:9090"},
            {"clusterRef": "site-b", "priority": 2, "controlAddress": "10.2.0.10:9090"}]
        spec["spec"]["cache"] = {"mode": "local-only"}
        self.assertEqual(crd_schema.validate(spec), [])
        yield self.kube.create("DNSCluster", NS, spec)
        cluster = yield self.wait_generation(1, "three-sites")
        objects = yield self.made("three-sites")
        self.assertEqual(sorted(k for k in objects if k[0] == "Deployment"), [("Deployment", "three-sites-worker")])
        worker = objects[("Deployment", "three-sites-worker")]
        self.assertEqual(worker["spec"]["replicas"], 2)  # 1 of 5 by weight, raised to minReplicas 2
        self.assertEqual(env_of(worker)["CONTROL_PLANE_ADDRESS"]["value"], "10.1.0.10:9090,10.2.0.10:9090")
        self.assertNotIn("DNSGO_REDIS_PASSWORD", env_of(worker))
        self.assertEqual(cluster["status"]["placement"]["controlPlane"], False)
        yield self.assert_valid_manifests(list(objects.values()))
        self.assert_valid_cluster(cluster)

        # kmock validates nothing, so the operator's own checks stand in: nothing made, the status says why.
        bad = seed_cluster(name="bad-one", uid="uid-bad")
        bad["spec"]["workers"]["minReplicas"] = 30
        yield self.kube.create("DNSCluster", NS, bad)
        cluster = yield self.wait_status(
            lambda s: any(c["type"] == "Degraded" and c["status"] == "True" for c in s.get("conditions", [])),
            "Degraded True", "bad-one")
        degraded = next(c for c in cluster["status"]["conditions"] if c["type"] == "Degraded")
        self.assertEqual(degraded["reason"], "InvalidSpec")
        self.assertIn("spec.workers.minReplicas", degraded["message"])
        self.assertEqual((yield self.made("bad-one")), {})
        # An API server would have refused it (the same field); the status the operator wrote is well-formed.
        errors = crd_schema.validate(cluster)
        self.assertTrue(errors and all(e.startswith("spec.workers.minReplicas: ") for e in errors), errors)
        self.assert_valid_cluster({**cluster, "spec": seed_cluster()["spec"]})

    @defer.inlineCallbacks
    def test_service_monitor_and_control_plane_api(self):
        """site-b with the ServiceMonitor resource served, and a real dnsgo control plane answering its API."""
        control = Cluster(self, free_port())
        proc = control.spawn_control()

        def api_up():
            # Not Cluster.start_control: while nothing listens on the (ephemeral) API port, a connection
            # to it can connect to itself and read back its own request, which urllib raises as
            # BadStatusLine, an HTTPException, where that helper expects only OSError.
            if not proc.running:
                raise AssertionError(f"the control plane ended:\n{proc.text}")
            return http(control.api_port, "GET", "/api/health", token=None).addCallbacks(
                lambda r: r.status == 200, lambda f: f.trap(OSError, HTTPException) and False)

        yield wait_for(api_up, "the control plane's API", proc)
        yield self.start("site-b", servicemonitors=True, extra_env={
            "DNSGO_OPERATOR_CONTROL_URL": f"http://127.0.0.1:{control.api_port}"})
        yield self.kube.create("Secret", NS, secret("api-token", "token", TOKEN))
        spec = seed_cluster()
        spec["spec"]["api"] = {"authSecret": {"name": "api-token", "key": "token"}}
        yield self.kube.create("DNSCluster", NS, spec)
        yield self.wait_generation(1)
        cluster = yield self.wait_status(lambda s: (s.get("controlPlaneAPI") or {}).get("reachable"),
                                         "the control plane's API reachable")
        objects = yield self.made()
        self.assertNotIn(("Secret", f"{NAME}-api-token"), objects)  # the spec names its own
        monitor = objects[("ServiceMonitor", f"{NAME}-control")]
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

        model = ServiceMonitor.model_validate(monitor)
        self.assertEqual(model.model_dump(by_alias=True, exclude_none=True, mode="json"), monitor,
                         "fields prometheus-operator's ServiceMonitor does not know")
        endpoint = monitor["spec"]["endpoints"][0]
        self.assertEqual((endpoint["port"], endpoint["path"]), ("api", "/metrics"))
        self.assertEqual(endpoint["bearerTokenSecret"], {"name": "api-token", "key": "token"})
        control_deployment = objects[("Deployment", f"{NAME}-control")]
        self.assertEqual(env_of(control_deployment)["HA_PRIORITY"]["value"], "2")
        self.assertEqual(objects[("Deployment", f"{NAME}-worker")]["spec"]["replicas"], 3)
        yield self.assert_valid_manifests(list(objects.values()))
        self.assert_valid_cluster(cluster)

        # What the status says is what the control plane's API says.
        api = cluster["status"]["controlPlaneAPI"]
        ha = yield http(control.api_port, "GET", "/api/ha")
        if ha.status == 200:
            self.assertEqual((api["role"], api["term"]), (ha.json()["role"], ha.json()["term"]))
        else:
            self.assertEqual(api["message"], "this dnsgo has no /api/ha")
