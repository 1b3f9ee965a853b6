#!/usr/bin/env python3
"""test_pgcluster.py: several daemons on one PostgreSQL ledger (issue 27), against the real
server pgserver.py starts: three started at once on an empty database make one schema and all
serve; the same notifications raced to three instances make one job each (and, with the
dispatcher on PostgreSQL, one submission each); kill -9 of one of three under load, round after
round, loses nothing acknowledged, submits nothing twice under retry.uncertain = hold, and the
dead instance's jobs are taken over within 2 x store.lease; an immediate database restart under
load acknowledges nothing it did not commit; an instance stopped (SIGSTOP) past its lease cannot
apply its stale answers over a survivor's decision; two instances through PgBouncer in
transaction mode; outcome events ([events]) from three instances: each event sent by one of them
exactly once, a kill -9 mid-delivery resending only what the dead one had in flight (with the
same webhook-id, once its claim lapsed), and the events of every instance's transitions written
and sent when only one instance has [events].

The tests that need the dispatcher first check that a job on PostgreSQL reaches `submitted` (a
failure, not a skip, when it does not). Under VIDU_VALGRIND=1 the counts are smaller; the rounds
are not."""
import os
import json
import re
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import pgserver  # noqa: E402
from cluster import (OPEN_STATES, SUBMITTED_STATES, Cluster, Load, created, dispatcher_on_pg,  # noqa: E402
                     journal_by_pid, metric_sum, post, wait_for)
from harness import VALGRIND, FakeUpstream, make_task, new_creation_ids, poll  # noqa: E402
from test_events import SECRET, Receiver, events_config, merge, verify  # noqa: E402

RACE_N = 100 if VALGRIND else 1000
KILL_ROUNDS = 5
# seconds: store.lease of the fault tests (longer under valgrind, where a live instance's renewal
# could lag behind a short lease)
LEASE = 6 if VALGRIND else 2
CONCURRENCY = 4  # upstream.concurrency of the fault tests: the bound on what one kill leaves held
SUBMIT_DELAY_MS = 600  # the fake answers each submission this late: submissions are in flight
# Polling the ledger through psql adds its own latency to a measured takeover.
TAKEOVER_SLACK = 1.0
# Outcome events (7): notifications spread over three instances with [events]; the kill test's
# quick creations and its slow ones (the fake answers their submissions this late: one is in
# flight on the victim at the kill); events.concurrency's default, the bound on the deliveries
# one kill leaves in flight.
EVENTS_N = 60 if VALGRIND else 300
EVENTS_KILL_N = 24 if VALGRIND else 60
EVENTS_SLOW_MS = 8000
EVENTS_CONCURRENCY = 4
FINAL_STATES = ("succeeded", "failed", "dead", "uncertain")


def schema_version():
    with open(os.path.join(harness.SOURCE_DIR, "daemon", "pgschema.h")) as f:
        return re.search(r"#define PGSCHEMA_VERSION (\d+)", f.read()).group(1)


class PgCluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.pg = pgserver.PgServer().start()
        cls.fake = FakeUpstream(complete_after_ms=100).start()  # the probe's and test 1's
        cls.n_db = 0

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()
        cls.pg.stop()

    def database(self):
        PgCluster.n_db += 1
        name = "pgcluster_%d" % PgCluster.n_db
        self.pg.create_database(name)
        return name

    def own_fake(self):
        fake = FakeUpstream(complete_after_ms=100).start()
        self.addCleanup(fake.__exit__, None, None, None)
        return fake

    def require_dispatcher(self):
        self.assertTrue(dispatcher_on_pg(self.pg, self.fake),
                        "a job on PostgreSQL was never taken by the dispatcher")

    def fault_config(self):
        return {"store": {"lease": "%ds" % LEASE}, "retry": {"uncertain": "hold"},
                "upstream": {"concurrency": str(CONCURRENCY), "timeout": "30s"}}

    def delay_submissions(self, fake, ms=SUBMIT_DELAY_MS):
        fake.faults([{"on": "submit", "action": "delay", "delay_ms": ms, "times": -1}])

    # 1

    def test_1_three_started_at_once_on_an_empty_database(self):
        db = self.database()
        with Cluster(self.pg, db, self.fake) as cl:
            self.assertEqual(self.pg.sql("SELECT value FROM meta WHERE key = 'schema_version'", db=db),
                             [[schema_version()]])

            # Each says the ledger is there; exactly one of them made the schema, none failed to.
            def said():
                msgs = [[e.get("MESSAGE", "") for e in journal_by_pid(d.pid)] for d in cl.daemons]
                return msgs if all(any(m.startswith("Ledger database reachable") for m in ms) for ms in msgs) else None
            msgs = harness.wait_journal(said, timeout=15)
            made = [i for i, ms in enumerate(msgs) if any(m.startswith("Ledger schema migrated from version 0 ")
                                                          for m in ms)]
            self.assertEqual(len(made), 1, msgs)
            self.assertEqual([m for ms in msgs for m in ms if "Cannot migrate" in m], [])
            # All three serve.
            ids = new_creation_ids(3)
            for i, d in enumerate(cl.daemons):
                self.assertEqual(d.get("/healthz")[0], 200)
                status, body = post(d, make_task("97000000000001%02d" % i, [ids[i]]))
                self.assertEqual((status, body and body.get("accepted")), (202, [ids[i]]), body)
            self.assertEqual(sorted(cl.jobs()), sorted(ids))

    # 2

    def race(self, fake, db, n, config=None, instances=3, url=None, groups=8):
        """The same n notifications (one fresh creation each) posted to every instance at the same
        moment: `groups` groups of one thread per instance, the group's threads meeting at a
        barrier before each notification. Returns (cluster, ids, answers: creation -> the
        (status, body) of each instance)."""
        cl = Cluster(self.pg, db, fake, n=instances, config=config, url=url).start()
        self.addCleanup(cl.stop)
        ids = new_creation_ids(n)
        self.assertEqual(len(set(ids)), n)
        answers = {cid: [None] * instances for cid in ids}

        def worker(g, i, barrier):
            # A worker that fails breaks its barrier: the others stop too, none waits forever.
            try:
                for k in range(g, n, groups):
                    barrier.wait(timeout=60 * harness.TIMEOUT_SCALE)
                    answers[ids[k]][i] = post(cl.daemons[i], make_task("96%014d" % k, [ids[k]]), timeout=30)
            except Exception:
                barrier.abort()
                raise
        threads = []
        for g in range(groups):
            barrier = threading.Barrier(instances)
            threads += [threading.Thread(target=worker, args=(g, i, barrier)) for i in range(instances)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return cl, ids, answers

    def check_race_answers(self, cl, ids, answers, instances):
        wrong = {}
        for cid in ids:
            # (status, {}) for an answer without a JSON body, (None, {}) for none at all.
            a = [x if x and isinstance(x[1], dict) else (x and x[0], {}) for x in answers[cid]]
            accepted = [x for x in a if x[0] == 202 and x[1].get("accepted") == [cid] and not x[1].get("duplicate")]
            duplicate = [x for x in a if x[0] == 200 and x[1].get("duplicate") == [cid] and not x[1].get("accepted")]
            if len(accepted) != 1 or len(duplicate) != instances - 1:
                wrong[cid] = answers[cid]
        self.assertEqual(len(wrong), 0, "%d creations not accepted by exactly one instance; e.g. %r"
                         % (len(wrong), list(wrong.items())[:3]))
        self.assertEqual(cl.count(), len(ids))
        self.assertEqual(sorted(cl.jobs()), sorted(ids))

    def check_one_submission_each(self, cl, fake, ids):
        jobs = cl.wait_settled(ids, timeout=120)
        self.assertEqual({c: jobs[c]["state"] for c in ids if jobs[c]["state"] not in SUBMITTED_STATES}, {})
        counts = created(fake)
        self.assertEqual({c: counts.get(c, 0) for c in ids if counts.get(c, 0) != 1}, {},
                         "creations not POSTed exactly once")
        self.assertEqual(fake.stats()["submit_requests"], len(ids))

    def test_2a_race_one_job_per_creation(self):
        fake = self.own_fake()
        cl, ids, answers = self.race(fake, self.database(), RACE_N)
        self.check_race_answers(cl, ids, answers, 3)
        # Each acceptance journaled once, by the instance that answered 202 (a sample: journalctl
        # per creation is slow).
        for cid in ids[:: max(1, len(ids) // 10)]:
            who = [cl.daemons[i].pid for i, a in enumerate(answers[cid]) if a[0] == 202]
            entries = harness.wait_journal(lambda: harness.accepted_entries(CREATION_ID=cid), timeout=15)
            self.assertEqual([int(e["_PID"]) for e in entries], who)

    def test_2b_race_one_submission_per_creation(self):
        self.require_dispatcher()
        fake = self.own_fake()
        cl, ids, answers = self.race(fake, self.database(), RACE_N)
        self.check_race_answers(cl, ids, answers, 3)
        self.check_one_submission_each(cl, fake, ids)

    # 3, 4: faults under load

    def in_flight(self, cl, fake, instance):
        """The jobs `instance` holds `submitting` whose POST reached the fake (None if none)."""
        jobs = cl.jobs("WHERE state = 'submitting' AND claimed_by = '%s'" % instance)
        counts = created(fake)
        return [c for c in jobs if counts.get(c)] or None

    def check_after_faults(self, cl, fake, load, max_held, holders=None):
        """After the load: every acknowledged creation submitted once or held `uncertain`, none
        POSTed twice, nothing POSTed that the ledger does not know, at most max_held held;
        holders: the creations a dead instance held `submitting`, the only ones that may be held."""
        self.assertEqual(load.refused, [], "answers other than 202 while no database fault ran")
        jobs = cl.wait_settled(list(cl.jobs()), timeout=120)
        missing = [c for c in load.acked if c not in jobs]
        self.assertEqual(missing, [], "acknowledged but not in the ledger")
        counts = created(fake)
        twice = {c: n for c, n in counts.items() if n > 1}
        self.assertEqual(twice, {}, "POSTed more than once under retry.uncertain = hold")
        self.assertEqual([c for c in counts if c not in jobs], [], "POSTed but not in the ledger")
        states = {}
        for c, j in jobs.items():
            states.setdefault(j["state"], []).append(c)
        self.assertEqual(sorted(states), sorted(s for s in SUBMITTED_STATES + ("uncertain",) if s in states),
                         states.keys())
        self.assertEqual([c for s in SUBMITTED_STATES for c in states.get(s, []) if counts.get(c) != 1], [],
                         "submitted without exactly one POST")
        held = states.get("uncertain", [])
        self.assertLessEqual(len(held), max_held, held)
        if holders is not None:
            self.assertEqual([c for c in held if c not in holders], [], "held but no dead instance held it")
        return jobs

    def test_3_kill9_one_of_three_under_load(self):
        self.require_dispatcher()
        fake = self.own_fake()
        self.delay_submissions(fake)
        cl = Cluster(self.pg, self.database(), fake, config=self.fault_config()).start()
        self.addCleanup(cl.stop)
        load = Load(cl, threads=2, pause=0.3 if not VALGRIND else 1.0).start()
        self.addCleanup(load.stop)
        load.wait_acked(10)
        holders = set()
        for r in range(KILL_ROUNDS):
            victim = r % 3
            name = cl.instance(victim)
            poll(lambda: self.in_flight(cl, fake, name), timeout=30, what="%s with submissions in flight" % name)
            cl.kill9(victim)
            # Everything it held, read after it died: these must be taken over within 2 x lease.
            held = cl.jobs("WHERE claimed_by = '%s' AND state IN %s" % (name, OPEN_STATES + ("submitted",)))
            submitting = {c for c, j in held.items() if j["state"] == "submitting"}
            self.assertLessEqual(len(submitting), CONCURRENCY, "more submissions held than upstream.concurrency")
            holders |= submitting

            left = {}

            def taken_over():
                now = cl.jobs()
                left.clear()
                left.update({c: now[c] for c, j in held.items() if (now[c]["state"], now[c]["claimed_by"],
                                                                    now[c]["claim_seq"])
                             == (j["state"], j["claimed_by"], j["claim_seq"])})
                return not left
            try:
                _, took = wait_for(taken_over, timeout=2 * LEASE + TAKEOVER_SLACK, what="takeover")
            except AssertionError:
                raise AssertionError("round %d: %d of the %d jobs %s held not taken over within %ss: %r" % (
                    r, len(left), len(held), name, 2 * LEASE + TAKEOVER_SLACK, sorted(left.items())[:3]))
            print("round %d: %d jobs of %s taken over in %.2fs" % (r, len(held), name, took), file=sys.stderr)
            # Its submissions: held, as a restart would hold them under `hold`.
            now = cl.jobs()
            self.assertEqual({c: now[c]["state"] for c, j in held.items()
                              if j["state"] == "submitting" and now[c]["state"] != "uncertain"}, {})
            cl.restart(victim)
            load.wait_acked(5)
        load.stop()
        self.check_after_faults(cl, fake, load, CONCURRENCY * KILL_ROUNDS, holders)

    def database_restart(self, submissions):
        fake = self.own_fake()
        if submissions:
            self.delay_submissions(fake)
        cl = Cluster(self.pg, self.database(), fake, config=self.fault_config()).start()
        self.addCleanup(cl.stop)
        load = Load(cl, threads=3, pause=0.05 if not VALGRIND else 0.5).start()
        self.addCleanup(load.stop)
        load.wait_acked(20)
        if submissions:
            poll(lambda: any(self.in_flight(cl, fake, cl.instance(i)) for i in range(3)), timeout=30,
                 what="submissions in flight")
        self.pg.restart()
        # Every instance takes notifications again by itself.
        for i, d in enumerate(cl.daemons):
            def accepts():
                (cid,) = new_creation_ids(1)
                return post(d, make_task("95000000000000%02d" % i, [cid]))[0] == 202
            poll(accepts, timeout=30, interval=0.2, what="instance %d accepting again" % i)
        load.wait_acked(20)
        load.stop()
        # Nothing acknowledged that was not committed; anything refused was refused with 503.
        jobs = cl.jobs()
        self.assertEqual([c for c in load.acked if c not in jobs], [], "acknowledged but not in the ledger")
        self.assertEqual([x for x in load.refused if x[1] != 503], [], "refused otherwise than with 503")
        self.assertEqual([c for c in load.failed], [], "a live instance's answer lost")
        print("database restart: %d acknowledged, %d refused with 503" % (len(load.acked), len(load.refused)),
              file=sys.stderr)
        if submissions:
            load.refused = []
            # A live instance keeps its claims across a short outage: at most what each had in flight.
            self.check_after_faults(cl, fake, load, CONCURRENCY * 3)

    def test_4a_database_restart_under_load_intake(self):
        self.database_restart(submissions=False)

    def test_4b_database_restart_under_load_submissions(self):
        self.require_dispatcher()
        self.database_restart(submissions=True)

    # 5

    def test_5_sigstop_past_lease_stale_answers_not_applied(self):
        self.require_dispatcher()
        fake = self.own_fake()
        delay = 3000  # the victim's answers come while it is stopped
        self.delay_submissions(fake, delay)
        cl = Cluster(self.pg, self.database(), fake, config=self.fault_config()).start()
        self.addCleanup(cl.stop)
        victim, name = cl.daemons[0], cl.instance(0)
        ids = []
        inflight = None
        for k in range(10):
            batch = new_creation_ids(6)
            status, body = post(victim, make_task("94%014d" % k, batch))
            self.assertEqual(status, 202, body)
            ids += batch
            try:
                inflight = poll(lambda: self.in_flight(cl, fake, name), timeout=3, what="in flight")
                break
            except AssertionError:
                continue
        self.assertTrue(inflight, "the victim never held a submission in flight")
        victim.kill(signal.SIGSTOP)
        try:
            held = cl.jobs("WHERE state = 'submitting' AND claimed_by = '%s'" % name)
            counts = created(fake)
            arrived = sorted(c for c in held if counts.get(c))
            self.assertTrue(arrived, "stopped with no submission in flight (held: %r)" % held)
            stale = {c: fake.tasks(c)[0]["id"] for c in arrived}
            # The survivors hold them once the lease lapsed.
            poll(lambda: all(j["state"] == "uncertain" for c, j in cl.jobs().items() if c in held),
                 timeout=2 * LEASE + TAKEOVER_SLACK + delay / 1000, what="the stopped instance's jobs held")
            # An operator sends half of them again: the survivors submit them under a new claim.
            retried = arrived[: max(1, len(arrived) // 2)]
            for c in retried:
                r = cl.daemons[1].jobs("retry", c)
                self.assertEqual(r.returncode, 0, r.stderr)

            seen = {}

            def resubmitted():
                jobs = cl.jobs()
                for c in retried:
                    tasks = sorted(fake.tasks(c), key=lambda t: t["created_ns"])
                    seen.update(job=jobs[c], tasks=[t["id"] for t in tasks])
                    if len(tasks) != 2 or jobs[c]["upscale_task_id"] != tasks[1]["id"]:
                        return None
                return jobs
            try:
                poll(resubmitted, timeout=30, what="resubmitted")
            except AssertionError:
                raise AssertionError("the retried jobs not submitted again by a survivor within 30s: %r" % seen)
        finally:
            victim.kill(signal.SIGCONT)
        # The stopped instance reads its stale answers: each journaled with the task id it carried.
        harness.wait_journal(lambda: all(harness.journal_entries(_PID=str(victim.pid), UPSCALE_TASK_ID=stale[c])
                                         for c in arrived), timeout=30)
        # And applies none over a survivor's decision (given time to: its next turns, a renewal).
        poll(lambda: victim.get("/healthz")[0] == 200, timeout=15, what="the resumed instance serving")
        jobs = cl.wait_settled([c for c in ids], timeout=60)
        counts = created(fake)
        for c in retried:
            tasks = sorted(fake.tasks(c), key=lambda t: t["created_ns"])
            self.assertEqual(len(tasks), 2, c)
            self.assertIn(jobs[c]["state"], SUBMITTED_STATES, c)
            self.assertEqual(jobs[c]["upscale_task_id"], tasks[1]["id"],
                             "the stale answer (%s) applied over the survivor's submission" % stale[c])
        for c in ids:
            if c in retried:
                continue
            self.assertLessEqual(counts.get(c, 0), 1, "%s POSTed twice" % c)
            if c in held:
                # Still held, or settled by the very claim's answer (news, not a conflict): the
                # task its one POST made (which may have reached the fake after the stop).
                tasks = [t["id"] for t in fake.tasks(c)]
                self.assertTrue(jobs[c]["state"] == "uncertain" or
                                (jobs[c]["state"] in SUBMITTED_STATES and [jobs[c]["upscale_task_id"]] == tasks),
                                (c, jobs[c], tasks))
            else:
                self.assertEqual((jobs[c]["state"] in SUBMITTED_STATES, counts.get(c)), (True, 1), (c, jobs[c]))

    # 6

    def through_bouncer(self, submissions):
        fake = self.own_fake()
        db = self.database()
        bouncer = self.pg.bouncer(pool_size=2)
        n = 10 if VALGRIND else 40
        cl, ids, answers = self.race(fake, db, n, instances=2, url=bouncer.conninfo(db=db), groups=4)
        self.check_race_answers(cl, ids, answers, 2)
        # A second delivery to the other instance: still a duplicate.
        for i, cid in enumerate(ids[:4]):
            status, body = post(cl.daemons[i % 2], make_task("93000000000000%02d" % i, [cid]))
            self.assertEqual((status, body.get("duplicate")), (200, [cid]), body)
        if submissions:
            self.check_one_submission_each(cl, fake, ids)

    def test_6a_two_instances_through_pgbouncer_intake(self):
        self.through_bouncer(submissions=False)

    def test_6b_two_instances_through_pgbouncer_submissions(self):
        self.require_dispatcher()
        self.through_bouncer(submissions=True)


    # 7: outcome events from several instances

    def receiver(self, delay=0.0):
        rx = Receiver()
        rx.delay = delay
        self.addCleanup(rx.stop)
        return rx

    def post_spread(self, cl, ids, targets, per_post=1, prefix="92"):
        """ids posted per_post creations a notification, round robin over the instances `targets`
        (indexes), one thread each; every notification must be accepted. Returns the notifications
        each target accepted."""
        groups = [ids[k:k + per_post] for k in range(0, len(ids), per_post)]
        errors = []

        def worker(n):
            try:
                for k in range(n, len(groups), len(targets)):
                    status, body = post(cl.daemons[targets[n]], make_task("%s%014d" % (prefix, k), groups[k]),
                                        timeout=30)
                    if status != 202 or (body or {}).get("accepted") != groups[k]:
                        errors.append((groups[k], status, body))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(targets))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [], "notifications not accepted")

    def wait_delivered(self, cl, ids, timeout):
        """Polls until every one of ids is finished (or held) and every event in the outbox is
        delivered, one per finished job; returns (jobs, events)."""
        want = set(ids)
        last = {}

        def done():
            jobs, events = cl.jobs(), cl.events()
            last.update(jobs=jobs, events=events)
            if any(jobs.get(c, {}).get("state") not in FINAL_STATES for c in want):
                return None
            finished = sum(1 for j in jobs.values() if j["state"] in FINAL_STATES)
            if len(events) < finished or any(e["state"] != "delivered" for e in events):
                return None
            return jobs, events
        try:
            return poll(done, timeout=timeout, interval=0.5, what="every event delivered")
        except AssertionError:
            jobs, events = last.get("jobs", {}), last.get("events", [])
            states, ev_states = {}, {}
            for c in want:
                s = jobs.get(c, {}).get("state", "missing")
                states[s] = states.get(s, 0) + 1
            for e in events:
                ev_states[e["state"]] = ev_states.get(e["state"], 0) + 1
            raise AssertionError("after %ss: jobs %r, events %r, e.g. %r" % (
                timeout, states, ev_states, [e for e in events if e["state"] != "delivered"][:2]))

    def check_events(self, jobs, events, rx):
        """Every finished job has exactly one event of its state's type, nothing else has one, and
        the receiver got every event (by webhook-id: the ledger's id), each request signed with
        SECRET and carrying the ledger's body byte for byte. Returns webhook-id -> the requests."""
        by_cid = {}
        for e in events:
            by_cid.setdefault(e["creation_id"], []).append(e)
        finished = {c: j for c, j in jobs.items() if j["state"] in FINAL_STATES}
        self.assertEqual({c: len(by_cid.get(c, [])) for c in finished if len(by_cid.get(c, [])) != 1}, {},
                         "finished jobs without exactly one event")
        self.assertEqual([c for c in by_cid if c not in finished], [], "events of jobs not finished")
        self.assertEqual({c: by_cid[c][0]["type"] for c, j in finished.items()
                          if by_cid[c][0]["type"] != "upscale." + j["state"]}, {}, "events of the wrong type")
        self.assertEqual([e["id"] for e in events if e["state"] != "delivered"], [])
        stored = {e["id"]: e for e in events}
        got = {}
        for r in rx.events():
            got.setdefault(r["headers"]["webhook-id"], []).append(r)
        self.assertEqual(sorted(set(got) - set(stored)), [], "webhook-ids the ledger does not have")
        self.assertEqual(sorted(set(stored) - set(got)), [], "events delivered but never received")
        bad = [i for i, rs in got.items() for r in rs
               if not verify(SECRET, r["headers"], r["body"]) or r["body"] != stored[i]["body"].encode()
               or r["json"]["data"]["creation_id"] != stored[i]["creation_id"]]
        self.assertEqual(bad, [], "requests not signed, or not the ledger's body")
        return got

    def delivered_by(self, daemons):
        """What each of daemons says it delivered, and retried (its vidu_upscaled_events_total;
        the journal may lose entries when journald restarts)."""
        return ([metric_sum(d, "vidu_upscaled_events_total", outcome="delivered") for d in daemons],
                [metric_sum(d, "vidu_upscaled_events_total", outcome="retried") for d in daemons])

    def test_7a_events_from_three_instances_each_sent_once(self):
        self.require_dispatcher()
        fake = self.own_fake()
        rx = self.receiver()
        ids = new_creation_ids(EVENTS_N)
        failing = set(ids[::5])
        for c in failing:
            fake.outcome(c, "failed", "ModerationFailed")
        cl = Cluster(self.pg, self.database(), fake,
                     config=events_config("http://127.0.0.1:%d/hooks" % rx.port)).start()
        self.addCleanup(cl.stop)
        self.post_spread(cl, ids, [0, 1, 2])
        jobs, events = self.wait_delivered(cl, ids, timeout=120)
        self.assertEqual({c: jobs[c]["state"] for c in ids
                          if jobs[c]["state"] != ("failed" if c in failing else "succeeded")}, {})
        self.assertEqual(len(events), len(ids))
        got = self.check_events(jobs, events, rx)
        # A healthy receiver: no instance sent an event another had claimed, none sent one twice.
        self.assertEqual({i: len(rs) for i, rs in got.items() if len(rs) != 1}, {}, "webhook-ids received twice")
        types = {e["type"] for e in events}
        self.assertEqual(types, {"upscale.succeeded", "upscale.failed"})
        # Each delivery recorded by exactly one instance, each at the first attempt, all three
        # delivering.
        delivered, retried = self.delivered_by(cl.daemons)
        self.assertEqual((sum(delivered), retried), (len(events), [0, 0, 0]), delivered)
        self.assertTrue(all(delivered), delivered)
        print("events: %d delivered by the three instances %r" % (len(events), delivered), file=sys.stderr)

    def test_7b_events_kill9_while_delivering(self):
        self.require_dispatcher()
        fake = self.own_fake()
        rx = self.receiver(delay=1.0)  # each delivery in flight a second
        url = "http://127.0.0.1:%d/" % rx.port
        slow = new_creation_ids(8)
        fake.faults([{"on": "submit", "creation_id": c, "action": "delay", "delay_ms": EVENTS_SLOW_MS, "times": -1}
                     for c in slow])
        # Each instance POSTs to a path of its own: the receiver tells who sent what.
        cfg = merge(self.fault_config(), events_config(url, timeout="2s"))
        cl = Cluster(self.pg, self.database(), fake, config=cfg,
                     per_instance=lambda i: {"events": {"url": url + "node%d" % i}}).start()
        self.addCleanup(cl.stop)
        victim, name, vpath = 0, cl.instance(0), "/node0"
        quick = new_creation_ids(EVENTS_KILL_N)
        self.post_spread(cl, quick, [0, 1, 2], per_post=3)
        # One slow submission in flight on the victim.
        posted_slow, held = [], None
        for k in range(0, len(slow), 2):
            status, body = post(cl.daemons[victim], make_task("91%014d" % k, slow[k:k + 2]))
            self.assertEqual(status, 202, body)
            posted_slow += slow[k:k + 2]
            try:
                held = poll(lambda: [c for c in self.in_flight(cl, fake, name) or [] if c in slow] or None,
                            timeout=3, what="a slow submission in flight on the victim")
                break
            except AssertionError:
                continue
        self.assertTrue(held, "the victim never held a slow submission in flight")

        # And deliveries in flight: a request it sent under half a second ago (the receiver
        # answers each after a second), its event not recorded yet.
        def delivering():
            pending = {e["id"] for e in cl.events("WHERE state = 'pending'")}
            return [r for r in rx.events() if r["path"] == vpath and r["headers"]["webhook-id"] in pending
                    and r["at"] > time.time() - 0.5] or None
        poll(delivering, timeout=30, interval=0.05, what="the victim's deliveries in flight")
        cl.kill9(victim)
        killed_at = time.time()
        # Read after it died: what it held.
        submitting = set(self.in_flight(cl, fake, name) or [])
        snapshot = cl.events()
        claimed = {e["id"] for e in snapshot if e["claimed"]}
        pending = {e["id"] for e in snapshot if e["state"] == "pending"}
        self.assertTrue(submitting & set(slow), "no slow submission in flight on the victim at the kill")

        jobs, events = self.wait_delivered(cl, quick + posted_slow, timeout=90)
        got = self.check_events(jobs, events, rx)
        # What the victim sent and never recorded: in flight at the kill (a request it wrote just
        # before may have been read after the snapshot: the receipts are read now), under its claim.
        unrecorded = {i for i, rs in got.items() if any(r["path"] == vpath for r in rs)} & pending
        self.assertTrue(unrecorded, "no delivery of the victim's in flight at the kill")
        self.assertEqual(sorted(unrecorded - claimed), [], "the victim's deliveries not claimed at the kill")
        self.assertLessEqual(len(unrecorded), EVENTS_CONCURRENCY)
        stored = {e["id"]: e for e in events}
        # The victim's submission in flight: held by the survivors' takeover, and said so.
        for c in submitting:
            self.assertEqual(jobs[c]["state"], "uncertain", c)
            (ev,) = [e for e in events if e["creation_id"] == c]
            self.assertEqual(ev["type"], "upscale.uncertain")
            self.assertEqual([json.loads(r["body"])["data"]["state"] for r in got[ev["id"]]], ["uncertain"])
            self.assertNotEqual(got[ev["id"]][0]["path"], vpath)
        # Duplicates: only of what the victim had in flight, sent again by one survivor with the
        # same webhook-id once its claim lapsed (events.timeout + store.lease after the claim).
        twice = {i: rs for i, rs in got.items() if len(rs) > 1}

        def story(i):
            return (i, stored[i]["attempts"], i in pending, i in claimed,
                    [(r["path"], round(r["at"] - killed_at, 2)) for r in sorted(got[i], key=lambda r: r["at"])])
        self.assertEqual([story(i) for i in sorted(set(twice) - unrecorded)], [],
                         "duplicates of events not in flight at the kill (id, attempts, pending and claimed at "
                         "the kill, requests: path, seconds after the kill)")
        self.assertEqual(sorted(unrecorded - set(twice)), [], "the victim's deliveries in flight not sent again")
        self.assertLessEqual(len(twice), EVENTS_CONCURRENCY)
        lapse = 2 + LEASE
        for i, rs in twice.items():
            rs = sorted(rs, key=lambda r: r["at"])
            self.assertEqual([r["path"] == vpath for r in rs], [True, False], (i, [(r["path"], r["at"]) for r in rs]))
            self.assertGreater(rs[1]["at"], killed_at)
            self.assertGreater(rs[1]["at"] - rs[0]["at"], lapse - 1.0, "sent again before the claim lapsed")
        # The survivors sent nothing twice between them, and nothing the victim had recorded.
        self.assertEqual([i for i, rs in got.items() if sum(r["path"] != vpath for r in rs) > 1], [])
        print("events kill: %d events, %d in flight at the kill sent again, %d held uncertain" % (
            len(events), len(twice), len(submitting)), file=sys.stderr)

    def test_7c_events_of_every_instance_sent_by_the_one_with_events(self):
        self.require_dispatcher()
        fake = self.own_fake()
        rx = self.receiver()
        cl = Cluster(self.pg, self.database(), fake, per_instance=lambda i: events_config(
            "http://127.0.0.1:%d/hooks" % rx.port) if i == 0 else {}).start()
        self.addCleanup(cl.stop)
        # The states that write an event: all four (16 | 32 | 64 | 128), set by node0 alone (in its
        # first turn after the migration).
        mask = "SELECT value FROM meta WHERE key = 'event_states'"
        poll(lambda: self.pg.sql(mask, db=cl.db) == [["240"]], timeout=10, what="event_states set")
        n = 10 if VALGRIND else 40
        first = new_creation_ids(n)
        for c in first[::4]:
            fake.outcome(c, "failed", "ModerationFailed")
        self.post_spread(cl, first, [1, 2])
        self.wait_delivered(cl, first, timeout=60)
        # The jobs the others closed (the outcomes each learnt; mostly the others: each takes the
        # jobs it accepted).
        closed = [metric_sum(d, "vidu_upscaled_outcomes_total") for d in cl.daemons]
        self.assertGreater(closed[1] + closed[2], 0, closed)
        # An instance without [events] started again leaves the setting alone.
        cl.stop_one(1)
        cl.restart(1)
        self.assertEqual(self.pg.sql(mask, db=cl.db), [["240"]])
        second = new_creation_ids(n)
        self.post_spread(cl, second, [1, 2], prefix="90")
        jobs, events = self.wait_delivered(cl, first + second, timeout=60)
        self.assertEqual(len(events), 2 * n)
        got = self.check_events(jobs, events, rx)
        self.assertEqual({i: len(rs) for i, rs in got.items() if len(rs) != 1}, {}, "webhook-ids received twice")
        closed_after = [metric_sum(d, "vidu_upscaled_outcomes_total") for d in cl.daemons]
        self.assertGreater(closed_after[1] + closed_after[2] - closed[2], 0, (closed, closed_after))
        # Every delivery by node0, at the first attempt; none by the others.
        delivered, retried = self.delivered_by(cl.daemons)
        self.assertEqual((delivered, retried), ([len(events), 0, 0], [0, 0, 0]))
        self.assertEqual(self.pg.sql(mask, db=cl.db), [["240"]])
        print("events of one: %d delivered by node0, %d jobs closed by the others" % (
            len(events), closed[1] + closed[2] + closed_after[1] + closed_after[2] - closed[2]), file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
