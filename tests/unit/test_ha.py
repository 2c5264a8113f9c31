"""
Control-plane high availability as logic on a task.Clock: the quorum rule,
the witness's state file, the witness's vote/lease/fencing rules, and
whole elections of real Election and Witness objects over a simulated
network (tests.support.ha_sim) -- split votes, a dead leader, partitions,
stale terms, restarts, and a checker over random fault rounds.
"""
import json
import os
import random

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.app.ha import build_witness, control_addresses, control_settings, state_path
from dnsgo.config import ConfigError, parse_config
from dnsgo.control.links import ControlLinks
from dnsgo.control.commands import StaleTerm
from dnsgo.control.election import STANDBY, NotLeader
from dnsgo.control.quorum import QuorumRule
from dnsgo.control.state_file import MemoryState, StateFile, WitnessState
from dnsgo.control.witness import Witness
from tests.support.ha_sim import LEASE, RENEW, RETRY, SimNet

SITE_A = ("a1", "a2", "a3")
SITE_B = ("b1", "b2", "b3")


def two_sites(seed: int = 1, priorities=(0, 0), **kw) -> SimNet:
    """Two control planes (cp-a in site-a, cp-b in site-b) and three workers per site."""
    net = SimNet(seed=seed, **kw)
    for worker_id in SITE_A:
        net.add_worker(worker_id, "site-a")
    for worker_id in SITE_B:
        net.add_worker(worker_id, "site-b")
    net.add_control("cp-a", "site-a", priorities[0])
    net.add_control("cp-b", "site-b", priorities[1])
    return net


class QuorumRuleTests(SynchronousTestCase):
    """At least ``minimum``, more than half of the electorate, from enough sites."""

    def test_required_is_minimum_or_majority(self):
        rule = QuorumRule(minimum=3, min_sites=2)
        self.assertEqual([rule.required(n) for n in (1, 4, 5, 6, 7, 10)], [3, 3, 3, 4, 4, 6])

    def test_sites_and_non_members(self):
        rule = QuorumRule(minimum=3, min_sites=2)
        electorate = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "b3": "B"}
        one_site = rule.tally(["a1", "a2", "a3", "b9"], electorate)
        self.assertEqual((one_site.granted, one_site.required, one_site.sites, one_site.met), (3, 4, ("A",), False))
        two = rule.tally(["a1", "a2", "b1", "b2"], electorate)
        self.assertTrue(two.met)
        self.assertEqual(two.sites, ("A", "B"))
        self.assertFalse(rule.tally(["a1", "b1", "b2"], electorate).met)


class StateFileTests(SynchronousTestCase):
    """The witness state survives a restart, is replaced atomically, and a bad file is one clear error."""

    def test_round_trip_and_replace(self):
        path = os.path.join(self.mktemp(), "witness-w1.json")
        store = StateFile(path)
        self.assertIsNone(store.load())
        first = WitnessState(term=3, voted_for="cp-a", lease_holder="cp-a", lease_expires=12.5,
                             leader_api="10.0.0.1:8080", voters=(("w1", "A"), ("w2", "B")))
        store.save(first)
        self.assertEqual(StateFile(path).load(), first)
        second = WitnessState(term=4, voted_for="cp-b")
        store.save(second)
        self.assertEqual(StateFile(path).load(), second)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["witness-w1.json"])  # no temporary left
        self.assertEqual(json.loads(open(path).read())["version"], 1)

    def test_bad_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('{"version": 1, "term": -2}')
        with self.assertRaises(ValueError) as caught:
            StateFile(path).load()
        self.assertIn(path, str(caught.exception))
        self.assertIn("term", str(caught.exception))


class FailingStore(MemoryState):
    """A store whose disk is full."""

    def save(self, state):
        raise OSError(28, "No space left on device")


class WitnessTests(SynchronousTestCase):
    """One worker's votes, lease promises and fencing."""

    def witness(self, store=None, restored_state=None):
        clock = Clock()
        clock.advance(1000)
        store = store or MemoryState()
        if restored_state is not None:
            store.saved = restored_state
        return Witness(store, lease_duration=LEASE, reactor=clock), clock, store

    def test_restart_without_state_waits_one_lease(self):
        witness, clock, _ = self.witness()
        refused = witness.vote(1, "cp-a")
        self.assertFalse(refused.granted)
        self.assertIn("without saved state", refused.reason)
        self.assertFalse(witness.pre_vote(1, "cp-a").granted)
        clock.advance(LEASE - 0.01)
        self.assertFalse(witness.vote(1, "cp-a").granted)
        clock.advance(0.02)
        self.assertTrue(witness.vote(1, "cp-a").granted)

    def test_one_vote_per_term_saved_before_the_answer(self):
        witness, clock, store = self.witness(restored_state=WitnessState())
        self.assertTrue(witness.vote(5, "cp-a").granted)
        self.assertEqual((store.saved.term, store.saved.voted_for), (5, "cp-a"))
        self.assertTrue(witness.vote(5, "cp-a").granted)  # the same candidate asking again
        other = witness.vote(5, "cp-b")
        self.assertFalse(other.granted)
        self.assertEqual(other.term, 5)
        self.assertFalse(witness.vote(4, "cp-b").granted)
        self.assertTrue(witness.vote(6, "cp-b").granted)

    def test_lease_promise_blocks_other_candidates_until_it_runs_out(self):
        witness, clock, store = self.witness(restored_state=WitnessState())
        self.assertTrue(witness.renew(2, "cp-a", LEASE, [("w1", "A")], "10.0.0.1:8080").granted)
        self.assertEqual(store.saved.lease_holder, "cp-a")
        self.assertEqual(store.saved.lease_expires, clock.seconds() + LEASE)
        self.assertFalse(witness.pre_vote(3, "cp-b").granted)
        refused = witness.vote(3, "cp-b")
        self.assertFalse(refused.granted)
        self.assertEqual((refused.holder, refused.term), ("cp-a", 2))  # a refused vote changes nothing
        self.assertTrue(witness.pre_vote(3, "cp-a").granted)  # the holder itself may ask
        clock.advance(LEASE)
        self.assertTrue(witness.vote(3, "cp-b").granted)
        self.assertFalse(witness.renew(2, "cp-a", LEASE).granted)  # the old term is over

    def test_restart_with_state_keeps_the_promise_and_the_vote(self):
        witness, clock, store = self.witness(restored_state=WitnessState())
        witness.vote(7, "cp-a")
        witness.renew(7, "cp-a", LEASE)
        clock.advance(1)
        again = Witness(store, lease_duration=LEASE, reactor=clock)
        self.assertTrue(again.restored)
        self.assertFalse(again.vote(7, "cp-b").granted)
        self.assertFalse(again.vote(8, "cp-b").granted)  # still promised to cp-a
        clock.advance(LEASE - 1)
        self.assertTrue(again.vote(8, "cp-b").granted)

    def test_stale_and_missing_terms_are_refused(self):
        witness, clock, store = self.witness(restored_state=WitnessState())
        witness.admit(None, "ClearCache")  # no HA yet: a control plane without terms is obeyed
        witness.renew(4, "cp-a", LEASE)
        witness.admit(4, "ClearCache")
        with self.assertRaises(StaleTerm) as caught:
            witness.admit(3, "ClearCache")
        self.assertIn("term 3", str(caught.exception))
        with self.assertRaises(StaleTerm):
            witness.admit(None, "Shutdown")
        witness.admit(6, "ReloadConfig")  # a newer leader's command: its term is adopted and saved
        self.assertEqual(store.saved.term, 6)
        with self.assertRaises(StaleTerm):
            witness.admit(5, "ClearCache")

    def test_unsaved_state_is_not_granted(self):
        witness, clock, store = self.witness(store=FailingStore(), restored_state=None)
        clock.advance(LEASE)
        answer = witness.vote(1, "cp-a")
        self.assertFalse(answer.granted)
        self.assertIn("No space left", answer.reason)
        self.assertEqual(witness.state.term, 0)
        self.assertFalse(witness.renew(1, "cp-a", LEASE).granted)


class ElectionTests(SynchronousTestCase):
    """Whole elections over the simulated network."""

    def test_exactly_one_becomes_active(self):
        net = two_sites()
        net.start()
        net.run(LEASE + 3 * RETRY)
        self.assertEqual(len(net.active()), 1)
        leader = net.controls[net.active()[0]]
        self.assertEqual(leader.term, 1)
        other = [e for n, e in net.controls.items() if n != leader.settings.node_id][0]
        self.assertEqual(other.role, STANDBY)
        net.run(10 * LEASE)
        self.assertEqual(net.active(), [leader.settings.node_id])  # a stable leader keeps its term
        self.assertEqual(leader.term, 1)
        self.assertEqual(other.leader(), (leader.settings.node_id, leader.settings.api_address))
        with self.assertRaises(NotLeader) as caught:
            other.fence()
        self.assertEqual(caught.exception.leader, leader.settings.api_address)
        self.assertEqual(net.overlaps(), [])

    def test_priority_campaigns_first(self):
        for priorities, expected in (((0, 3), "cp-a"), ((3, 0), "cp-b")):
            net = two_sites(priorities=priorities)
            net.start()
            net.run(LEASE + 5 * RETRY)
            self.assertEqual(net.active(), [expected])

    def test_leader_dies_standby_takes_over_with_a_higher_term(self):
        net = two_sites()
        net.start()
        net.run(LEASE + 3 * RETRY)
        [first] = net.active()
        old_term = net.controls[first].term
        net.kill_control(first)
        killed_at = net.clock.seconds()
        waited = 0.0
        while not net.active():
            net.run(0.05)
            waited += 0.05
            self.assertLess(waited, LEASE + RETRY + 1.0)
        [second] = net.active()
        self.assertNotEqual(second, first)
        self.assertGreater(net.controls[second].term, old_term)
        self.assertGreaterEqual(net.clock.seconds() - killed_at, LEASE - RETRY)  # not before the promises ran out
        self.assertEqual(net.overlaps(), [])

    def test_split_vote_then_one_leader(self):
        # cp-a reaches site-a first, cp-b site-b: in a simultaneous election each gets its own site's votes.
        def delay(node, worker):
            return 0.01 if node[-1] == worker[0] else 0.1

        net = two_sites(delay=delay)
        for election in net.controls.values():
            election._new_offset = lambda: 0.0  # both campaign at the same moment
        net.start()
        net.run(LEASE + 0.5)
        self.assertEqual(net.active(), [])
        self.assertEqual({e.term for e in net.controls.values()}, {1})
        self.assertEqual({e.elections for e in net.controls.values()}, {1})
        for worker_id in SITE_A:
            self.assertEqual(net.workers[worker_id].witness.state.voted_for, "cp-a")
        for worker_id in SITE_B:
            self.assertEqual(net.workers[worker_id].witness.state.voted_for, "cp-b")
        # Give them their random offsets back: the next rounds break the tie.
        for election in net.controls.values():
            del election._new_offset
        net.run(20 * RETRY)
        self.assertEqual(len(net.active()), 1)
        self.assertGreaterEqual(net.controls[net.active()[0]].term, 2)
        self.assertEqual(net.overlaps(), [])

    def test_site_partition_no_leader_then_heal(self):
        net = two_sites()
        net.start()
        net.run(LEASE + 3 * RETRY)
        [first] = net.active()
        term_before = net.max_term()
        net.partition("site-a", "site-b")
        net.run(RENEW + 0.1)
        self.assertEqual(net.active(), [])  # the leader stepped down: a one-site quorum is no quorum
        net.run(5 * LEASE)
        self.assertEqual(net.active(), [])
        self.assertEqual(net.max_term(), term_before)  # pre-votes kept the terms from climbing
        for node in net.controls:
            with self.assertRaises(NotLeader):
                net.controls[node].fence()
        net.heal()
        net.run(LEASE + 6 * RETRY)
        self.assertEqual(len(net.active()), 1)
        self.assertGreater(net.controls[net.active()[0]].term, term_before)
        self.assertEqual(net.overlaps(), [])

    def test_link_between_control_planes_does_not_matter(self):
        net = two_sites()
        net.start()
        net.run(LEASE + 3 * RETRY)
        [leader] = net.active()
        net.partition("cp-a", "cp-b")  # the control planes never talk to each other directly
        net.run(5 * LEASE)
        self.assertEqual(net.active(), [leader])

    def test_leader_cut_from_a_minority_keeps_leading(self):
        net = two_sites()
        net.start()
        net.run(LEASE + 3 * RETRY)
        [leader] = net.active()
        net.partition(leader, "a1")
        net.run(5 * LEASE)
        self.assertEqual(net.active(), [leader])
        self.assertEqual(net.overlaps(), [])

    def test_stale_leader_commands_are_refused(self):
        net = two_sites()
        net.start()
        net.run(LEASE + 3 * RETRY)
        [old] = net.active()
        old_term = net.controls[old].term
        self.assertTrue(all(ok for _, ok in net.command(old)))
        net.partition(old, "site-a")
        net.partition(old, "site-b")
        net.run(LEASE + 6 * RETRY)
        [new] = net.active()
        self.assertNotEqual(new, old)
        # The old leader's own fence already stops it; a command it sent anyway (its old term) is refused.
        with self.assertRaises(NotLeader):
            net.controls[old].fence()
        for worker in net.workers.values():
            with self.assertRaises(StaleTerm):
                worker.witness.admit(old_term, "ClearCache")
        net.heal()
        net.run(2 * LEASE)
        self.assertEqual(net.active(), [new])

    def test_restarted_worker_without_state_does_not_vote_at_once(self):
        net = two_sites()
        net.start()
        net.run(LEASE + 3 * RETRY)
        [leader] = net.active()
        [other] = [node for node in net.controls if node != leader]
        net.kill_control(leader)
        net.partition(other, "site-a")
        net.partition(other, "site-b")
        net.run(LEASE)  # every promise to the dead leader has run out
        for worker_id in SITE_A + ("b1",):
            net.restart_worker(worker_id, keep_state=False)
        net.heal()
        net.run(LEASE - 0.1)
        self.assertEqual(net.active(), [])  # four of six are silent for a lease: no quorum
        net.run(4 * RETRY)
        self.assertEqual(len(net.active()), 1)
        self.assertNotEqual(net.active(), [leader])

    def test_checker_over_random_fault_rounds(self):
        """20 random rounds of kills, restarts, partitions and heals: active intervals never overlap,
        and every accepted command carries a term at least the newest any worker had seen."""
        for seed in range(6):
            net = two_sites(seed=seed)
            rng = random.Random(seed)
            net.start()
            net.run(LEASE + 3 * RETRY)
            for _ in range(20):
                action = rng.choice(["kill", "restart", "partition-sites", "cut-worker", "isolate", "heal",
                                     "restart-worker"])
                if action == "kill":
                    net.kill_control(rng.choice(sorted(net.controls)))
                elif action == "restart":
                    for node in sorted(net.down):
                        net.restart_control(node)
                elif action == "partition-sites":
                    net.partition("site-a", "site-b")
                elif action == "cut-worker":
                    net.partition(rng.choice(sorted(net.controls)), rng.choice(sorted(net.workers)))
                elif action == "isolate":
                    node = rng.choice(sorted(net.controls))
                    net.partition(node, "site-a")
                    net.partition(node, "site-b")
                elif action == "restart-worker":
                    net.restart_worker(rng.choice(sorted(net.workers)), keep_state=rng.random() < 0.5)
                else:
                    net.heal()
                for _ in range(int(rng.uniform(1, 3 * LEASE) / 0.25)):
                    net.run(0.25)
                    for node in net.controls:
                        net.command(node)
            net.heal()
            for node in sorted(net.down):
                net.restart_control(node)
            net.run(3 * LEASE)
            self.assertEqual(net.overlaps(), [], f"seed {seed}")
            self.assertTrue(net.accepted, f"seed {seed}: no command was ever accepted")
            late = [a for a in net.accepted if a[1] < a[2]]
            self.assertEqual(late, [], f"seed {seed}")
            self.assertEqual(len(net.active()), 1, f"seed {seed}")


class CompositionTests(SynchronousTestCase):
    """How the roles read their HA settings, addresses and state file."""

    def config(self, text: str = ""):
        return parse_config(
            "high_availability: {enabled: true, lease_duration: 3s, renew_deadline: 2s, retry_period: 500ms,"
            " priority: 4, peers: ['10.0.0.2:9090']}\n" + text, "<test>", {})

    def test_settings_from_config_and_environment(self):
        config = self.config('api: {listen_address: "10.0.0.1:8080", auth_token: "t0123456789"}')
        settings = control_settings(config, {"SITE_ID": "site-a"}, control_host="0.0.0.0", control_port=9090)
        hostname = os.uname().nodename
        self.assertEqual(settings.node_id, f"site-a/{hostname}:9090")
        self.assertEqual((settings.site, settings.priority, settings.api_address), ("site-a", 4, "10.0.0.1:8080"))
        self.assertEqual((settings.lease_duration, settings.renew_deadline, settings.retry_period), (3.0, 2.0, 0.5))
        self.assertEqual(settings.peers, ("10.0.0.2:9090",))
        settings = control_settings(config, {"HA_PRIORITY": "1"}, control_host="10.0.0.1", control_port=9090)
        self.assertEqual(settings.priority, 1)
        with self.assertRaises(ValueError) as caught:
            control_settings(config, {"HA_PRIORITY": "first"}, control_host="10.0.0.1", control_port=9090)
        self.assertIn("HA_PRIORITY", str(caught.exception))

    def test_timings_must_nest(self):
        with self.assertRaises(ConfigError) as caught:
            parse_config("high_availability: {lease_duration: 10s, renew_deadline: 10s, retry_period: 12s}",
                         "<test>", {})
        report = caught.exception.report()
        self.assertIn("renew_deadline: must be shorter than lease_duration", report)
        self.assertIn("retry_period: must be shorter than renew_deadline", report)

    def test_control_plane_addresses(self):
        addresses = control_addresses("10.0.0.1:9090, cp-b.example:9091,10.0.0.1:9090")
        self.assertEqual([str(a) for a in addresses], ["10.0.0.1:9090", "cp-b.example:9091"])
        for bad in ("", "10.0.0.1:9090,,10.0.0.2:9090", "10.0.0.1"):
            with self.assertRaises(ValueError):
                control_addresses(bad)

    def test_state_file_name(self):
        self.assertEqual(state_path("/var/lib/dnsgo", "site-a/w 1"), "/var/lib/dnsgo/witness-site-a_w_1.json")
        directory = os.path.abspath(self.mktemp())
        witness = build_witness(_with_state_dir(self.config(), directory), "w1", reactor=Clock())
        self.assertEqual(witness._store.path, os.path.join(directory, "witness-w1.json"))


def _with_state_dir(config, directory):
    """``config`` with ``high_availability.state_dir`` set."""
    return attrs.evolve(config, high_availability=attrs.evolve(config.high_availability, state_dir=directory))


class FakeWitness:
    """The witness as ControlLinks sees it: a term and a lease holder."""

    def __init__(self, term=0, holder=None):
        self.state = WitnessState(term=term, lease_holder=holder)
        self._holder = holder

    def holder(self):
        return self._holder


class LinksTests(SynchronousTestCase):
    """A worker with several control planes takes the first configuration, then only the leader's."""

    def links(self, addresses, witness):
        self.applied = []
        return ControlLinks(
            addresses, witness=witness,
            on_config=lambda text: self.applied.append(("config", text)),
            on_clear=lambda flush, relayed: {"cleared": 0, "caches": []},
            on_reload=lambda text: self.applied.append(("reload", text)) or True,
            reactor=Clock(), worker_id="w1", cluster_name="site-a", dns_address="127.0.0.1:53",
            version="0", snapshot=dict, on_shutdown=lambda: None,
        )

    def test_first_text_then_only_the_lease_holders(self):
        witness = FakeWitness(term=3, holder="cp-b")
        links = self.links([("10.0.0.1", 9090), ("10.0.0.2", 9090)], witness)
        links.clients[0].node_id, links.clients[1].node_id = "cp-a", "cp-b"
        first = links._offer(0, "A")
        self.assertEqual(self.successResultOf(links.ready), "A")
        self.successResultOf(first)
        self.assertEqual(self.successResultOf(defer_of(links._offer(1, "A"))), True)  # the same text: nothing to do
        self.assertFalse(self.successResultOf(defer_of(links._reload(0, "A2"))))  # cp-a holds no lease
        self.assertTrue(self.successResultOf(defer_of(links._reload(1, "B2"))))
        self.assertEqual(self.applied, [("config", "A"), ("reload", "B2")])
        self.assertEqual(links.config_text, "B2")

    def test_one_control_plane_is_always_followed(self):
        links = self.links([("10.0.0.1", 9090)], FakeWitness())
        links._offer(0, "A")
        self.assertTrue(self.successResultOf(defer_of(links._reload(0, "A2"))))
        self.assertEqual(self.applied, [("config", "A"), ("reload", "A2")])


def defer_of(value):
    """``value`` as a Deferred (hooks may answer plainly or with one)."""
    return defer.maybeDeferred(lambda: value)
