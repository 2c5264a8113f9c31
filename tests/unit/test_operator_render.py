"""
The dnsgo operator's handlers as plain functions: the spec read with the
CRD's defaults and rules, each cluster's share of the workers and of the
control planes, the objects rendered for it, the dnsgo YAML they carry,
the status, and the create-or-patch logic against an in-memory API.  The
CRD's schema and CEL rules are checked here too (jsonschema and
cel-python, tests/support/crd_schema.py), and every rendered object with
the real ``kubernetes-validate --strict`` for Kubernetes 1.30 to 1.33.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys

import attrs
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from dnsgo.config.schema import HAConfig
from dnsgo.config import parse_config
from dnsgo.operator import apply, names, status
from dnsgo.operator.desired import desired_state
from dnsgo.operator.handlers import worker_replicas_changed
from dnsgo.operator.kinds import DEPLOYMENT, HPA, SECRET, SERVICE, SERVICE_MONITOR
from dnsgo.operator.placement import place, weighted_shares
from dnsgo.operator.spec import SpecError, WorkerPlacement, read_spec
from tests.support import crd_schema

SEED = "/work/shared/seed/distributed-cache.md"
BIN = os.path.dirname(sys.executable)
TOKEN = "generated-token-0123456789abcdef"


def example(**spec_changes) -> dict:
    """The seed's DNSCluster with what an API server adds (namespace, uid, generation)."""
    body = crd_schema.load_example()
    body["metadata"].update(namespace="dns", uid="uid-1", generation=1)
    body["spec"].update(copy.deepcopy(spec_changes))
    return body


def minimal(**spec) -> dict:
    """The smallest DNSCluster: upstreams only, plus ``spec``."""
    return {"apiVersion": "dns.dns-go.io/v1alpha1", "kind": "DNSCluster",
            "metadata": {"name": "small", "namespace": "dns", "uid": "uid-2", "generation": 1},
            "spec": {"upstreams": ["9.9.9.9"], **copy.deepcopy(spec)}}


def state(body: dict, cluster: str = "site-a", *, set_worker_replicas: bool = True, service_monitors: bool = False,
          ha_keys=None):
    """desired_state of ``body`` in ``cluster``."""
    return desired_state(read_spec(body), cluster, set_worker_replicas=set_worker_replicas,
                         service_monitors=service_monitors, new_token=lambda: TOKEN, ha_keys=ha_keys)


def by_kind(st_) -> dict:
    """{(kind, name): Desired}."""
    return {(d.kind.kind, d.name): d for d in st_.objects}


def container(deployment: dict) -> dict:
    """The Deployment's one container."""
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env(deployment: dict) -> dict:
    """The container's env as {name: entry}."""
    return {e["name"]: e for e in container(deployment)["env"]}


def placements(*triples) -> list[dict]:
    """workerPlacements from (clusterRef, weight, minReplicas)."""
    return [{"clusterRef": c, "weight": w, "minReplicas": m} for c, w, m in triples]


class CRDTests(unittest.TestCase):
    """deploy/crd/dnsclusters.yaml: the seed's example, the rules, the defaults."""

    def test_example_is_the_seeds_unchanged(self):
        """deploy/examples/ha-dns-redis.yaml is the YAML block of the seed, byte for byte."""
        if not os.path.exists(SEED):
            raise unittest.SkipTest(f"{SEED} is not on this machine")
        with open(SEED, encoding="utf-8") as f:
            seed = f.read()
        start = seed.index("```yaml\n", seed.index("**DNSCluster with Redis Cache (Operator):**")) + len("```yaml\n")
        with open(crd_schema.EXAMPLE_PATH, encoding="utf-8") as f:
            self.assertEqual(f.read(), seed[start:seed.index("```", start)])

    def test_crd_identity(self):
        crd = crd_schema.load_crd()
        self.assertEqual(crd["apiVersion"], "apiextensions.k8s.io/v1")
        self.assertEqual(crd["spec"]["group"], "dns.dns-go.io")
        self.assertEqual(crd["spec"]["scope"], "Namespaced")
        self.assertEqual(crd["spec"]["names"]["plural"], "dnsclusters")
        version = crd["spec"]["versions"][0]
        self.assertEqual((version["name"], version["subresources"]), ("v1alpha1", {"status": {}}))

    def test_example_validates(self):
        self.assertEqual(crd_schema.validate(crd_schema.load_example()), [])

    def rejects(self, change, field: str) -> list[str]:
        body = crd_schema.load_example()
        change(body)
        errors = crd_schema.validate(body)
        self.assertTrue(errors, "accepted")
        self.assertTrue(all(e.startswith(field) for e in errors), errors)
        return errors

    def test_negative_replicas(self):
        errors = self.rejects(lambda b: b["spec"]["workers"].update(replicas=-1), "spec.workers.replicas: ")
        self.assertIn("minimum of 0", errors[0])

    def test_unknown_cache_mode(self):
        errors = self.rejects(lambda b: b["spec"]["cache"].update(mode="standalon"), "spec.cache.mode: ")
        self.assertIn("Unsupported value", errors[0])

    def test_min_replicas_above_max(self):
        errors = self.rejects(lambda b: b["spec"]["workers"].update(minReplicas=21, maxReplicas=20, replicas=20),
                              "spec.workers.minReplicas: ")
        self.assertIn("workers.minReplicas must not exceed workers.maxReplicas", errors[0])

    def test_replicas_outside_the_hpa_bounds(self):
        self.rejects(lambda b: b["spec"]["workers"].update(replicas=21), "spec.workers.replicas: ")
        self.rejects(lambda b: b["spec"]["workers"].update(replicas=3), "spec.workers.minReplicas: ")

    def test_other_rules(self):
        self.rejects(lambda b: b["spec"]["workers"].pop("maxReplicas"), "spec.workers: ")
        self.rejects(lambda b: b["spec"]["cache"].update(mode="local-only"), "spec.cache.mode: ")
        self.rejects(lambda b: b["spec"]["cache"]["messageCache"].update(numShards=48),
                     "spec.cache.messageCache.numShards: ")
        self.rejects(lambda b: b["spec"]["cache"]["sharedCache"].update(type="redis-sentinel"),
                     "spec.cache.sharedCache.type: ")
        self.rejects(lambda b: b["spec"]["highAvailability"]["controlPlanePlacements"][1].update(priority=1),
                     "spec.highAvailability.controlPlanePlacements: ")
        self.rejects(lambda b: [p.update(weight=0) for p in b["spec"]["multiCluster"]["workerPlacements"]],
                     "spec.multiCluster.workerPlacements: ")
        self.rejects(lambda b: b["spec"]["multiCluster"]["workerPlacements"][0].update(wieght=5),
                     "spec.multiCluster.workerPlacements[0]: unknown field")
        self.rejects(lambda b: b["spec"].pop("upstreams"), "spec: Required value")
        self.rejects(lambda b: b["metadata"].update(name="a" * 49), "<object>: ")

    def test_the_operator_refuses_what_the_crd_refuses(self):
        """Without an API server that validates (kmock), the operator's own checks name the same field."""
        cases = [
            (lambda s: s["workers"].update(replicas=-1), "spec.workers.replicas"),
            (lambda s: s["cache"].update(mode="standalon"), "spec.cache.mode"),
            (lambda s: s["workers"].update(minReplicas=21, maxReplicas=20, replicas=20), "spec.workers.minReplicas"),
            (lambda s: s["workers"].update(replicas=21), "spec.workers.replicas"),
            (lambda s: s["workers"].pop("maxReplicas"), "spec.workers"),
            (lambda s: s["cache"].update(mode="local-only"), "spec.cache.mode"),
            (lambda s: s["cache"]["messageCache"].update(numShards=48), "cache.message_cache.num_shards"),
            (lambda s: s["highAvailability"]["controlPlanePlacements"][1].update(priority=1),
             "spec.highAvailability.controlPlanePlacements"),
            (lambda s: [p.update(weight=0) for p in s["multiCluster"]["workerPlacements"]],
             "spec.multiCluster.workerPlacements"),
            (lambda s: s.pop("upstreams"), "spec.upstreams"),
        ]
        for change, field in cases:
            body = example()
            change(body["spec"])
            self.assertTrue(crd_schema.validate(body), field)
            with self.assertRaises(SpecError, msg=field) as caught:
                state(body)
            self.assertIn(field, str(caught.exception))

    def test_crd_defaults_are_the_operators(self):
        """A spec with the CRD's defaults applied renders exactly what the same spec without them does."""
        schema = crd_schema.crd_schema()
        for body in (minimal(), example()):
            defaulted = crd_schema.apply_defaults(schema, body)
            self.assertNotEqual(defaulted["spec"], body["spec"])
            raw, full = state(body), state(defaulted)
            self.assertEqual(raw.placement, full.placement)
            self.assertEqual(raw.config, full.config)
            self.assertEqual([(d.kind, d.body) for d in raw.objects], [(d.kind, d.body) for d in full.objects])

    def test_every_manifest_passes_kubernetes_validate(self):
        """The CRD, the operator's RBAC and Deployment, and what the operator renders, for Kubernetes 1.30-1.33."""
        root = os.path.dirname(crd_schema.CRD_PATH)
        files = [crd_schema.CRD_PATH] + sorted(
            os.path.join(root, "..", "operator", f) for f in os.listdir(os.path.join(root, "..", "operator"))
            if f.endswith(".yaml"))
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        rendered = [
            state(example(), "site-a").objects,
            state(example(), "site-b", set_worker_replicas=False).objects,
            state(minimal()).objects,
            state(minimal(workers={"replicas": 3, "minReplicas": 2, "maxReplicas": 9, "serviceType": "LoadBalancer",
                                   "allow": ["0.0.0.0/0"]}, controlPlane={"serviceType": "LoadBalancer"})).objects,
        ]
        expected = sum(len(list(yaml.safe_load_all(open(f, encoding="utf-8")))) for f in files)
        for i, objects in enumerate(rendered):
            for d in objects:
                path = os.path.join(folder, f"{i}-{d.kind.kind}-{d.name}.yaml")
                with open(path, "w", encoding="utf-8") as f:
                    yaml.safe_dump(d.body, f)
                files.append(path)
                expected += 1
        for version in ("1.30.0", "1.31.0", "1.32.0", "1.33.0"):
            done = subprocess.run([os.path.join(BIN, "kubernetes-validate"), "--strict", "-k", version, *files],
                                  capture_output=True, text=True, timeout=300)
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            self.assertEqual(done.stdout.count(" passed for resource "), expected, done.stdout)


class ShareTests(unittest.TestCase):
    """This cluster's share of the workers and HPA bounds."""

    def test_seed_example_halves(self):
        for cluster in ("site-a", "site-b"):
            p = place(read_spec(example()), cluster)
            self.assertEqual((p.workers, p.min_workers, p.max_workers), (3, 2, 10))

    def test_one_placement_runs_everything(self):
        body = example(multiCluster={"enabled": True, "workerPlacements": placements(("site-a", 1, 0))})
        p = place(read_spec(body), "site-a")
        self.assertEqual((p.workers, p.min_workers, p.max_workers), (6, 4, 20))

    def test_uneven_weights_largest_remainder(self):
        three = [WorkerPlacement(c, 1, 0) for c in ("a", "b", "c")]
        self.assertEqual(weighted_shares(10, three), {"a": 4, "b": 3, "c": 3})  # the tie goes to the first
        self.assertEqual(weighted_shares(5, [WorkerPlacement("a", 2, 0), WorkerPlacement("b", 1, 0)]), {"a": 3, "b": 2})
        self.assertEqual(weighted_shares(7, [WorkerPlacement("a", 1, 0), WorkerPlacement("b", 0, 0)]), {"a": 7, "b": 0})

    @given(st.integers(0, 500), st.lists(st.integers(0, 100), min_size=1, max_size=8).filter(lambda w: sum(w) > 0))
    @settings(max_examples=300, deadline=None)
    def test_shares_add_up(self, total, weights):
        """The shares sum to the total, and each is its exact share rounded down or up."""
        ps = [WorkerPlacement(f"c{i}", w, 0) for i, w in enumerate(weights)]
        shares = weighted_shares(total, ps)
        self.assertEqual(sum(shares.values()), total)
        for p in ps:
            exact = total * p.weight / sum(weights)
            self.assertLessEqual(abs(shares[p.cluster] - exact), 1.0)

    def test_min_replicas_above_the_weighted_share(self):
        body = example(multiCluster={"enabled": True, "workerPlacements": placements(("site-a", 90, 0), ("site-b", 10, 3))})
        a, b = place(read_spec(body), "site-a"), place(read_spec(body), "site-b")
        self.assertEqual((a.workers, b.workers), (5, 3))  # 5.4 and 0.6 of 6; site-b raised to 3
        self.assertEqual((b.min_workers, b.max_workers), (3, 3))  # min raised to 3, max at least the share
        self.assertEqual((a.min_workers, a.max_workers), (4, 18))

    def test_cluster_not_listed_runs_no_workers(self):
        st_ = state(example(), "site-z")
        self.assertFalse(st_.placement.runs_workers or st_.placement.control_plane)
        self.assertEqual([d.kind.kind for d in st_.objects], ["ConfigMap", "Secret"])
        self.assertIn((DEPLOYMENT, "ha-dns-redis-worker"), st_.absent)

    def test_multi_cluster_needs_a_cluster_name(self):
        with self.assertRaises(SpecError) as caught:
            state(example(), "")
        self.assertIn("DNSGO_CLUSTER_NAME", str(caught.exception))

    def test_single_cluster_needs_no_name(self):
        p = place(read_spec(minimal(workers={"replicas": 4})), "")
        self.assertEqual((p.workers, p.control_plane, p.priority), (4, True, None))


class ControlPlacementTests(unittest.TestCase):
    """Where control planes run, with which priority and peers."""

    def test_ha_placement_by_priority(self):
        a, b = state(example(), "site-a"), state(example(), "site-b")
        for st_, priority in ((a, "1"), (b, "2")):
            control = by_kind(st_)[("Deployment", "ha-dns-redis-control")].body
            self.assertEqual(env(control)["HA_PRIORITY"]["value"], priority)
            self.assertEqual(env(control)["SITE_ID"]["value"], st_.placement.cluster_name)
            self.assertEqual(control["spec"]["replicas"], 2)

    def test_ha_disabled_runs_a_control_plane_wherever_workers_run(self):
        body = example(highAvailability={"enabled": False})
        for cluster in ("site-a", "site-b"):
            st_ = state(body, cluster)
            control = by_kind(st_)[("Deployment", "ha-dns-redis-control")].body
            self.assertNotIn("HA_PRIORITY", env(control))
            self.assertNotIn("high_availability", yaml.safe_load(st_.config.data["config.yaml"]))

    def test_worker_only_site_uses_the_peers(self):
        body = example(
            multiCluster={"enabled": True, "workerPlacements": placements(("site-a", 1, 0), ("site-c", 1, 0))},
            highAvailability={"enabled": True, "controlPlanePlacements": [
                {"clusterRef": "site-b", "priority": 2, "controlAddress": "b.example:9090"},
                {"clusterRef": "site-a", "priority": 1, "controlAddress": "a.example:9090"}]})
        c = state(body, "site-c")
        self.assertFalse(c.placement.control_plane)
        worker = by_kind(c)[("Deployment", "ha-dns-redis-worker")].body
        self.assertEqual(env(worker)["CONTROL_PLANE_ADDRESS"]["value"], "a.example:9090,b.example:9090")
        self.assertIn((DEPLOYMENT, "ha-dns-redis-control"), c.absent)
        a = state(body, "site-a")
        control = by_kind(a)[("Deployment", "ha-dns-redis-control")].body
        self.assertEqual(env(control)["DNSGO_HA_PEERS"]["value"], "b.example:9090")
        worker = by_kind(a)[("Deployment", "ha-dns-redis-worker")].body
        self.assertEqual(env(worker)["CONTROL_PLANE_ADDRESS"]["value"],
                         "ha-dns-redis-control.dns.svc:9090,b.example:9090")

    def test_ha_keys_written_only_when_dnsgo_knows_them(self):
        if not {"peers", "priority"} <= {f.name for f in attrs.fields(HAConfig)}:
            raise unittest.SkipTest("this dnsgo's high_availability has no peers/priority keys yet")
        body = example(highAvailability={"enabled": True, "controlPlanePlacements": [
            {"clusterRef": "site-a", "priority": 1}, {"clusterRef": "site-b", "priority": 2, "controlAddress": "10.2.0.1:9090"}]})
        old = yaml.safe_load(state(body, ha_keys=frozenset({"enabled", "mode", "quorum"})).config.data["config.yaml"])
        self.assertEqual(set(old["high_availability"]), {"enabled", "mode", "quorum"})
        new = yaml.safe_load(state(body, ha_keys=frozenset({"enabled", "mode", "quorum", "peers", "priority"}))
                             .config.data["config.yaml"])
        self.assertEqual((new["high_availability"]["peers"], new["high_availability"]["priority"]), (["10.2.0.1:9090"], 1))

    def test_no_control_plane_reachable_is_refused(self):
        body = example(multiCluster={"enabled": True, "workerPlacements": placements(("site-c", 1, 0))})
        with self.assertRaises(SpecError) as caught:
            state(body, "site-c")
        self.assertIn("controlAddress", str(caught.exception))


class RenderTests(unittest.TestCase):
    """The objects and the dnsgo YAML."""

    def test_owner_references_everywhere(self):
        for d in state(example(), service_monitors=True).objects:
            self.assertEqual(d.body["metadata"]["ownerReferences"], [names.owner_reference("ha-dns-redis", "uid-1")])
            self.assertEqual(d.body["metadata"]["namespace"], "dns")

    def test_secrets_never_in_the_config_map(self):
        body = example()
        body["spec"]["cache"]["sharedCache"]["signingKeySecret"] = {"name": "signing", "key": "k"}
        st_ = state(body)
        config = st_.config.data["config.yaml"]
        shared = yaml.safe_load(config)["cache"]["shared_cache"]
        self.assertEqual((shared["password"], shared["signing_key"]), ("${DNSGO_REDIS_PASSWORD}", "${DNSGO_SIGNING_KEY}"))
        objects = by_kind(st_)
        for name in ("ha-dns-redis-control", "ha-dns-redis-worker"):
            e = env(objects[("Deployment", name)].body)
            self.assertEqual(e["DNSGO_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"], {"name": "redis-password", "key": "password"})
            self.assertEqual(e["DNSGO_SIGNING_KEY"]["valueFrom"]["secretKeyRef"], {"name": "signing", "key": "k"})
        # The generated API token is only in its Secret.
        token_secret = objects[("Secret", "ha-dns-redis-api-token")].body
        self.assertEqual(base64.b64decode(token_secret["data"]["token"]).decode(), TOKEN)
        for (kind, _), d in objects.items():
            if kind != "Secret":
                self.assertNotIn(TOKEN, json.dumps(d.body))
        self.assertIsNone(objects[("Secret", "ha-dns-redis-api-token")].patch)  # made once, never rewritten

    def test_config_map_is_dnsgo_config(self):
        """Both keys load with dnsgo's loader in the environment the containers declare."""
        st_ = state(example())
        objects = by_kind(st_)
        for key, deployment in (("config.yaml", "ha-dns-redis-control"), ("worker.yaml", "ha-dns-redis-worker")):
            declared = {n: e.get("value", "from-a-secret-0123456789") for n, e in env(objects[("Deployment", deployment)].body).items()}
            config = parse_config(st_.config.data[key], key, declared)
            self.assertEqual(config.server.listen_address.port, names.DNS_PORT)
        control = parse_config(st_.config.data["config.yaml"], "c", {"DNSGO_REDIS_PASSWORD": "x"})
        self.assertEqual((control.cache.mode, control.cache.shared_cache.type), ("hybrid", "redis-cluster"))
        self.assertEqual(control.cache.invalidation.strategy, "pubsub")
        self.assertEqual(str(control.api.listen_address), "0.0.0.0:8080")

    def test_local_only_without_redis(self):
        st_ = state(minimal(cache={"mode": "local-only"}))
        config = yaml.safe_load(st_.config.data["config.yaml"])
        self.assertEqual(config["cache"]["shared_cache"], {"enabled": False})
        self.assertEqual(config["cache"]["invalidation"]["strategy"], "broadcast")
        for d in st_.objects:
            if d.kind == DEPLOYMENT:
                self.assertNotIn("DNSGO_REDIS_PASSWORD", env(d.body))
        self.assertEqual(st_.config.env_names, frozenset({"POD_NAME"}))

    def test_dnsgo_refusals_are_spec_errors(self):
        with self.assertRaises(SpecError) as caught:
            state(minimal(upstreams=["dns.google"]))
        self.assertIn("upstreams[0]", str(caught.exception))
        with self.assertRaises(SpecError) as caught:
            state(minimal(cache={"messageCache": {"maxSizeMb": 64}}))
        self.assertIn("spec.cache.messageCache.maxSizeMb: unknown key", str(caught.exception))

    def test_probes_ports_and_security(self):
        objects = by_kind(state(example()))
        control = container(objects[("Deployment", "ha-dns-redis-control")].body)
        self.assertEqual(control["livenessProbe"]["httpGet"], {"path": "/api/health", "port": "api"})
        self.assertEqual(control["readinessProbe"]["httpGet"], {"path": "/api/ready", "port": "api"})
        worker = objects[("Deployment", "ha-dns-redis-worker")].body
        self.assertEqual(container(worker)["readinessProbe"]["tcpSocket"], {"port": "dns-tcp"})
        self.assertEqual(worker["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"], "worker")
        self.assertTrue(worker["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"])
        self.assertEqual(container(worker)["securityContext"]["capabilities"], {"drop": ["ALL"]})
        service = objects[("Service", "ha-dns-redis-control")].body["spec"]
        self.assertTrue(service["publishNotReadyAddresses"])
        dns = objects[("Service", "ha-dns-redis-dns")].body["spec"]["ports"]
        self.assertEqual({(p["port"], p["protocol"], p["targetPort"]) for p in dns},
                         {(53, "UDP", "dns-udp"), (53, "TCP", "dns-tcp")})

    def test_worker_replicas_left_to_the_hpa(self):
        objects = by_kind(state(example(), set_worker_replicas=False))
        worker = objects[("Deployment", "ha-dns-redis-worker")]
        self.assertEqual(worker.body["spec"]["replicas"], 3)  # a create still sets them
        self.assertNotIn("replicas", worker.patch["spec"])
        # Without an HPA nothing else scales them, so they are always set.
        objects = by_kind(state(minimal(workers={"replicas": 4}), set_worker_replicas=False))
        self.assertEqual(objects[("Deployment", "small-worker")].patch["spec"]["replicas"], 4)
        self.assertNotIn(("HorizontalPodAutoscaler", "small-worker"), objects)

    def test_config_checksum_rolls_pods_only_on_config_changes(self):
        base = state(example())
        more_workers = state(example(workers={"replicas": 8, "minReplicas": 4, "maxReplicas": 20}))
        new_upstreams = state(example(upstreams=["9.9.9.9"]))
        self.assertEqual(base.config.checksum, more_workers.config.checksum)
        self.assertNotEqual(base.config.checksum, new_upstreams.config.checksum)
        template = by_kind(new_upstreams)[("Deployment", "ha-dns-redis-worker")].body["spec"]["template"]
        self.assertEqual(template["metadata"]["annotations"][names.CONFIG_CHECKSUM], new_upstreams.config.checksum)

    def test_service_monitor_only_when_served(self):
        self.assertNotIn(SERVICE_MONITOR, {d.kind for d in state(example()).objects})
        monitor = by_kind(state(example(), service_monitors=True))[("ServiceMonitor", "ha-dns-redis-control")].body
        self.assertEqual(monitor["spec"]["endpoints"][0]["bearerTokenSecret"], {"name": "ha-dns-redis-api-token", "key": "token"})
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

        model = ServiceMonitor.model_validate(monitor)
        self.assertEqual(model.model_dump(by_alias=True, exclude_none=True, mode="json"), monitor)

    def test_replicas_changed_from_kopf_diffs(self):
        self.assertTrue(worker_replicas_changed([("change", ("spec", "workers", "replicas"), 6, 8)]))
        self.assertTrue(worker_replicas_changed([("add", ("spec", "workers"), None, {"replicas": 3})]))
        self.assertTrue(worker_replicas_changed([("change", ("spec", "multiCluster", "workerPlacements"), [], [])]))
        self.assertFalse(worker_replicas_changed([("change", ("spec", "upstreams"), ["1.1.1.1"], ["9.9.9.9"])]))
        self.assertFalse(worker_replicas_changed([("change", ("spec", "workers"), {"replicas": 3, "maxReplicas": 9},
                                                   {"replicas": 3, "maxReplicas": 12})]))


class StatusTests(unittest.TestCase):
    """Conditions from the Deployments and from failures."""

    def test_ready_once_every_replica_is_available(self):
        deployment = {"spec": {"replicas": 3}, "status": {"availableReplicas": 1, "updatedReplicas": 3}}
        counts = {"workers": status.replica_counts(deployment)}
        first = {c["type"]: c for c in status.conditions([], generation=2, failure=None, counts=counts, now="t1")}
        self.assertEqual((first["Ready"]["status"], first["Ready"]["reason"]), ("False", "ReplicasUnavailable"))
        self.assertEqual(first["Progressing"]["status"], "True")
        deployment["status"]["availableReplicas"] = 3
        counts = {"workers": status.replica_counts(deployment)}
        later = {c["type"]: c for c in status.conditions(list(first.values()), generation=2, failure=None,
                                                         counts=counts, now="t2")}
        self.assertEqual((later["Ready"]["status"], later["Ready"]["lastTransitionTime"]), ("True", "t2"))
        self.assertEqual(later["Degraded"]["lastTransitionTime"], "t1")  # unchanged status keeps its time
        self.assertEqual(later["Ready"]["observedGeneration"], 2)

    def test_missing_deployment_is_not_ready(self):
        result = {c["type"]: c for c in status.conditions([], generation=1, failure=None,
                                                          counts={"controlPlane": None}, now="t")}
        self.assertEqual(result["Ready"]["status"], "False")
        self.assertIn("no Deployment yet", result["Ready"]["message"])

    def test_failure_is_kept_by_refreshes(self):
        failed = status.conditions([], generation=1, failure=status.Failure("InvalidSpec", "spec.x: bad"), counts={}, now="t")
        self.assertEqual(status.failure_of(failed), status.Failure("InvalidSpec", "spec.x: bad"))
        self.assertIsNone(status.failure_of(status.conditions([], generation=1, failure=None, counts={}, now="t")))


class FakeKube:
    """An in-memory API for apply_state: objects by (kind, name), and the calls made."""

    def __init__(self, objects=None) -> None:
        self.objects = dict(objects or {})
        self.calls: list[tuple[str, str, str]] = []

    async def create(self, kind, namespace, body):
        self.calls.append(("create", kind.kind, body["metadata"]["name"]))
        key = (kind.kind, body["metadata"]["name"])
        if key in self.objects:
            return None
        self.objects[key] = copy.deepcopy(body)
        return body

    async def get(self, kind, namespace, name):
        return copy.deepcopy(self.objects.get((kind.kind, name)))

    async def patch(self, kind, namespace, name, body, subresource=None):
        self.calls.append(("patch", kind.kind, name))
        self.objects[(kind.kind, name)] = _merge(self.objects[(kind.kind, name)], body)
        return self.objects[(kind.kind, name)]

    async def delete(self, kind, namespace, name):
        self.calls.append(("delete", kind.kind, name))
        return self.objects.pop((kind.kind, name), None) is not None


def _merge(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        out[k] = _merge(out.get(k), v)
    return out


class ApplyTests(unittest.TestCase):
    """Idempotent create-or-patch, HPA-respecting patches, refusal of foreign objects, deletions."""

    def run_apply(self, kube, st_, uid="uid-1"):
        return asyncio.run(apply.apply_state(kube, "dns", uid, st_))

    def test_twice_is_the_same_as_once(self):
        kube = FakeKube()
        first = self.run_apply(kube, state(example()))
        self.assertEqual({a.action for a in first}, {"created"})
        second = self.run_apply(kube, state(example()))
        self.assertEqual({a.action for a in second}, {"unchanged", "kept"})
        self.assertFalse([c for c in kube.calls if c[0] == "patch"])

    def test_hpa_replicas_survive_other_changes(self):
        kube = FakeKube()
        self.run_apply(kube, state(example()))
        kube.objects[("Deployment", "ha-dns-redis-worker")]["spec"]["replicas"] = 5  # the HPA
        self.run_apply(kube, state(example(upstreams=["9.9.9.9"]), set_worker_replicas=False))
        self.assertEqual(kube.objects[("Deployment", "ha-dns-redis-worker")]["spec"]["replicas"], 5)
        self.run_apply(kube, state(example(workers={"replicas": 8, "minReplicas": 4, "maxReplicas": 20})))
        self.assertEqual(kube.objects[("Deployment", "ha-dns-redis-worker")]["spec"]["replicas"], 4)

    def test_foreign_object_is_not_touched(self):
        kube = FakeKube({("ConfigMap", "ha-dns-redis-config"): {"metadata": {"name": "ha-dns-redis-config"}, "data": {}}})
        with self.assertRaises(apply.NotOwned) as caught:
            self.run_apply(kube, state(example()))
        self.assertIn("ConfigMap dns/ha-dns-redis-config", str(caught.exception))
        self.assertEqual(kube.objects[("ConfigMap", "ha-dns-redis-config")]["data"], {})

    def test_unwanted_objects_are_deleted(self):
        kube = FakeKube()
        self.run_apply(kube, state(example()))
        done = self.run_apply(kube, state(example(), "site-z"))
        deleted = {(a.kind.kind, a.name) for a in done if a.action == "deleted"}
        self.assertEqual(deleted, {("Deployment", "ha-dns-redis-control"), ("Service", "ha-dns-redis-control"),
                                   ("Deployment", "ha-dns-redis-worker"), ("Service", "ha-dns-redis-dns"),
                                   ("PodDisruptionBudget", "ha-dns-redis-worker"),
                                   ("HorizontalPodAutoscaler", "ha-dns-redis-worker")})
        self.assertIn(("ConfigMap", "ha-dns-redis-config"), kube.objects)

    def test_contains(self):
        self.assertTrue(apply.contains({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}]}}, {"b": {"c": [1, {"d": 2}]}}))
        self.assertFalse(apply.contains({"a": [1, 2]}, {"a": [1]}))
        self.assertFalse(apply.contains({"a": 1}, {"b": None}))
        self.assertEqual(SECRET.path("ns", "x"), "/api/v1/namespaces/ns/secrets/x")
        self.assertEqual(HPA.path("ns"), "/apis/autoscaling/v2/namespaces/ns/horizontalpodautoscalers")
        self.assertEqual(SERVICE.group_version_path, "/api/v1")
