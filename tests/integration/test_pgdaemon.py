#!/usr/bin/env python3
"""test_pgdaemon.py: the daemon's webhook intake on a PostgreSQL ledger (store.backend =
postgresql) against the real server pgserver.py starts: a
notification answered 2xx is a job row; one notification to two daemons on one database makes one
job and a delivery replayed to the other instance is a replay; the database stopped gives 503 with
Retry-After at once and /healthz 503, and work resumes by itself when it is back, also for a
daemon that started while it was away; an immediate restart under load loses no acknowledged
creation. The dispatcher on PostgreSQL: a notification submitted once and followed to success with
SQLite's journal story, retries, dead and uncertain jobs; two instances sharing 200 notifications
submit each once; a kill -9 mid-submission is taken over within 2 x store.lease and nothing is
sent twice under hold; an instance stopped past its lease has its late answer fenced out."""
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import pgserver  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids, poll  # noqa: E402

# A job's states once recorded: the dispatcher takes it on at once.
RECORDED = ("pending", "submitting", "waiting", "submitted", "succeeded")
MSGID_BUDGET_REACHED = "ef028423073a48e584fd3846d1b65531"
MSGID_BUDGET_RESUMED = "2e685d26100844dcb5f8b6125e4f749c"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def sw_headers(msg_id, body):
    ts = str(int(time.time()))
    key = base64.b64decode(WHSEC[len("whsec_"):])
    sig = base64.b64encode(hmac.new(key, ("%s.%s." % (msg_id, ts)).encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1," + sig}


class PgDaemon(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.pg = pgserver.PgServer().start()
        cls.fake = FakeUpstream(complete_after_ms=100)
        cls.fake.start()
        cls.n_db = 0

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()
        cls.pg.stop()

    def database(self):
        PgDaemon.n_db += 1
        name = "pgdaemon_%d" % PgDaemon.n_db
        self.pg.create_database(name)
        return name

    def daemon(self, db, signed=False):
        d = Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake, pg=self.pg, pg_db=db)
        if signed:
            sec_file = os.path.join(d.tmp, "webhook-secret")
            with open(sec_file, "w") as f:
                f.write(WHSEC + "\n")
            d.config["auth"] = {"scheme": "standard-webhooks", "secret_file": sec_file}
        return d

    def jobs(self, db):
        return {r[0]: r[1] for r in self.pg.sql("SELECT creation_id, state FROM jobs", db=db)}

    def post(self, d, body, headers=None):
        status, h, raw = d.post(body=json.dumps(body).encode() if isinstance(body, dict) else body,
                                headers=headers)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, h, parsed

    def wait_available(self, d, db):
        """Polls until the daemon takes a notification again; returns the creation it recorded."""
        def attempt():
            (cid,) = new_creation_ids(1)
            status, _, _ = self.post(d, make_task("9800000000000009", [cid]))
            return cid if status == 202 else None
        return poll(attempt, timeout=30, interval=0.2, what="the daemon accepting notifications again")

    def test_accepted_notification_is_a_job_row(self):
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
            a, b = new_creation_ids(2)
            status, _, body = self.post(d, make_task("9800000000000001", [a, b]))
            self.assertEqual(status, 202, body)
            self.assertEqual(sorted(body["accepted"]), sorted([a, b]))
            # Committed before the answer: the rows are there the moment it came.
            jobs = self.jobs(db)
            self.assertIn(jobs.get(a), RECORDED)
            self.assertIn(jobs.get(b), RECORDED)
            # The same again: a duplicate, by the unique key.
            status, _, body = self.post(d, make_task("9800000000000001", [a, b]))
            self.assertEqual(status, 200)
            self.assertEqual(sorted(body["duplicate"]), sorted([a, b]))
            # (Its entry may be owed for up to a second: log.fold_accepted.)
            self.assertEqual(len(harness.wait_journal(lambda: harness.accepted_entries(CREATION_ID=a))), 1)
            # The counts reach STATUS= (housekeeping on its own connection) and /metrics.
            d.wait_notify(lambda m: ", 2 succeeded," in m.get("STATUS", ""), timeout=15)
            poll(lambda: d.metrics_value('vidu_upscaled_jobs{state="succeeded"}') == 2, timeout=15,
                 what="the counts in /metrics")
            self.assertEqual(d.get("/healthz")[0], 200)
            # Submitted once each by the dispatcher; no SQLite ledger made.
            self.assertEqual(self.fake.stats()["created"].get(a), 1)
            self.assertFalse(os.path.exists(d.ledger_path))
            # A reload keeps it serving on the same connection.
            since = len(d.notify_messages)
            d.kill(signal.SIGHUP)
            d.wait_notify(lambda m: m.get("READY") == "1", since=since)
            (c,) = new_creation_ids(1)
            self.assertEqual(self.post(d, make_task("9800000000000021", [c]))[0], 202)
            # A stop drains and exits 0.
            self.assertEqual(d.stop(), 0)
        self.assertEqual(sorted(self.jobs(db)), sorted([a, b, c]))

    def test_two_daemons_one_database_one_job(self):
        db = self.database()
        with self.daemon(db) as d1, self.daemon(db) as d2:
            d1.wait_ledger(), d2.wait_ledger()
            (cid,) = new_creation_ids(1)
            note = make_task("9800000000000002", [cid])
            status, _, body = self.post(d1, note)
            self.assertEqual(status, 202, body)
            status, _, body = self.post(d2, note)
            self.assertEqual(status, 200, body)
            self.assertEqual(body["duplicate"], [cid])
            # At the same moment to both: one accepts, the other finds it a duplicate.
            for _ in range(3):
                (cid,) = new_creation_ids(1)
                note = make_task("9800000000000003", [cid])
                answers = []
                go = threading.Barrier(2)

                def send(d):
                    go.wait()
                    answers.append(self.post(d, note))
                threads = [threading.Thread(target=send, args=(d,)) for d in (d1, d2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                self.assertEqual(sorted(a[0] for a in answers), [200, 202], answers)
                self.assertEqual(sum(len(a[2]["accepted"]) for a in answers), 1)
                self.assertEqual(sum(len(a[2]["duplicate"]) for a in answers), 1)
                self.assertIn(self.jobs(db).get(cid), RECORDED)
            self.assertEqual(len(self.jobs(db)), 4)

    def test_delivery_replayed_to_another_instance_is_a_replay(self):
        db = self.database()
        with self.daemon(db, signed=True) as d1, self.daemon(db, signed=True) as d2:
            d1.wait_ledger(), d2.wait_ledger()
            (cid,) = new_creation_ids(1)
            body = json.dumps(make_task("9800000000000004", [cid])).encode()
            msg = "msg_%s" % cid
            status, _, answer = self.post(d1, body, headers=sw_headers(msg, body))
            self.assertEqual(status, 202, answer)
            status, _, answer = self.post(d2, body, headers=sw_headers(msg, body))
            self.assertEqual(status, 200, answer)
            self.assertTrue(answer.get("replayed"), answer)
            self.assertEqual(self.pg.sql("SELECT count(*) FROM replay WHERE key LIKE %s" % ("'%" + msg + "%'"),
                                         db=db), [["1"]])
            self.assertEqual(list(self.jobs(db)), [cid])

    def test_through_pgbouncer_in_transaction_mode(self):
        # One server connection for both daemons' four: nothing may rely on session state.
        db = self.database()
        bouncer = self.pg.bouncer(pool_size=1)
        daemons = [self.daemon(db, signed=True) for _ in range(2)]
        for d in daemons:
            d.config["store"]["url"] = bouncer.conninfo(db=db)
            d.config["store"]["pooler"] = "transaction"
        with daemons[0] as d1, daemons[1] as d2:
            d1.wait_ledger(), d2.wait_ledger()
            for i in range(3):
                (cid,) = new_creation_ids(1)
                body = json.dumps(make_task("980000000000001%d" % i, [cid])).encode()
                msg = "msg_%s" % cid
                status, _, answer = self.post(d1 if i % 2 else d2, body, headers=sw_headers(msg, body))
                self.assertEqual(status, 202, answer)
                status, _, answer = self.post(d2 if i % 2 else d1, body, headers=sw_headers(msg, body))
                self.assertEqual((status, answer.get("replayed")), (200, True), answer)
                # Another delivery (another webhook-id) of the same creation: a duplicate.
                status, _, answer = self.post(d2, body, headers=sw_headers(msg + "-again", body))
                self.assertEqual((status, answer["duplicate"]), (200, [cid]), answer)
                self.assertIn(self.jobs(db).get(cid), RECORDED)
            d1.wait_notify(lambda m: ", 3 succeeded," in m.get("STATUS", ""), timeout=15)

    def test_database_away_503_at_once_and_back_by_itself(self):
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
            (cid,) = new_creation_ids(1)
            self.assertEqual(self.post(d, make_task("9800000000000005", [cid]))[0], 202)
            self.pg.halt()
            try:
                # Away: refused at once, with Retry-After, never held until it is back.
                def refused():
                    (c,) = new_creation_ids(1)
                    t0 = time.monotonic()
                    status, h, _ = self.post(d, make_task("9800000000000006", [c]))
                    return (status, h, time.monotonic() - t0) if status == 503 else None
                status, headers, elapsed = poll(refused, timeout=15, what="503 while the database is away")
                self.assertEqual(headers.get("retry-after"), "5")
                self.assertLess(elapsed, 2 * harness.TIMEOUT_SCALE)
                self.assertEqual(d.get("/healthz")[0], 503)
                self.assertEqual(d.metrics_value("vidu_upscaled_ledger_available"), 0)
                d.wait_notify(lambda m: "unreachable" in m.get("STATUS", ""), timeout=15)
                # A daemon started while the database is away starts anyway, listens and says so.
                late = self.daemon(db)
                late.start()
                try:
                    (c,) = new_creation_ids(1)
                    status, headers, _ = self.post(late, make_task("9800000000000007", [c]))
                    self.assertEqual(status, 503)
                    self.assertEqual(headers.get("retry-after"), "5")
                    self.assertEqual(late.get("/healthz")[0], 503)
                    late.wait_notify(lambda m: "ledger database" in m.get("STATUS", "").lower(), timeout=15)
                finally:
                    self.pg.resume()
                # Back: both take notifications again without a restart.
                for one in (d, late):
                    cid2 = self.wait_available(one, db)
                    self.assertIn(self.jobs(db).get(cid2), RECORDED)
                    poll(lambda: one.get("/healthz")[0] == 200, timeout=15, what="/healthz 200")
                late.stop()
            finally:
                if not self.pg_running():
                    self.pg.resume()
            self.assertIn(self.jobs(db).get(cid), RECORDED)
            self.assertEqual(d.proc.poll(), None)

    def lock_jobs(self, db):
        """Another session holding the job table (ACCESS EXCLUSIVE): a turn's intake waits on it
        until the returned release() is called."""
        psql = subprocess.Popen([os.path.join(pgserver.PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-h", self.pg.tmp,
                                 "-p", str(self.pg.port), "-U", pgserver.ADMIN, "-d", db],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        psql.stdin.write("BEGIN;\nLOCK TABLE jobs IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n")
        psql.stdin.flush()
        self.assertEqual(psql.stdout.readline().strip(), "locked")

        def release():
            if psql.poll() is None:
                psql.stdin.write("ROLLBACK;\n")
                psql.stdin.close()
                psql.wait(timeout=30)
                psql.stdout.close()
        return release

    def wait_lock_waiter(self, db):
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND wait_event_type = 'Lock'" % db
        poll(lambda: self.pg.sql(waiting, db=db) == [["1"]], timeout=10, what="the turn waiting on the lock")

    def arrivals_during_a_turn(self, pooler):
        """Eight notifications, the first's turn held up by a lock another session holds; with
        store.pooler = none the second leaves at once in a turn pipelined behind it, with
        transaction it waits. Returns the commits the eight took."""
        db = self.database()
        # An upstream that takes the submissions and never answers: no answer adds a turn of its
        # own to the count.
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        d = self.daemon(db)
        d.config["upstream"]["base_url"] = "http://127.0.0.1:%d" % hole.getsockname()[1]
        d.config["store"]["pooler"] = pooler
        depth = 2 if pooler == "none" else 1
        with d, hole:
            d.wait_ledger()
            release = self.lock_jobs(db)
            answers = []
            try:
                commits = d.metrics_value("vidu_upscaled_ledger_commit_seconds_count")
                ids = new_creation_ids(8)

                def send(cid):
                    answers.append(self.post(d, make_task("98000000000001%02d" % ids.index(cid), [cid])))
                threads = [threading.Thread(target=send, args=(ids[0],))]
                threads[0].start()
                self.wait_lock_waiter(db)
                threads.append(threading.Thread(target=send, args=(ids[1],)))
                threads[1].start()
                poll(lambda: d.metrics_value("vidu_upscaled_webhook_staged") == 2, timeout=10,
                     what="two notifications staged")
                if depth == 2:
                    poll(lambda: d.metrics_value("vidu_upscaled_ledger_turns_in_flight") == 2,
                         timeout=10, what="the second turn pipelined behind the first")
                threads += [threading.Thread(target=send, args=(cid,)) for cid in ids[2:]]
                for t in threads[2:]:
                    t.start()
                poll(lambda: d.metrics_value("vidu_upscaled_webhook_staged") == 8, timeout=10,
                     what="eight notifications staged")
                self.assertEqual(d.metrics_value("vidu_upscaled_ledger_turns_in_flight"), depth)
            finally:
                release()
            for t in threads:
                t.join()
            self.assertEqual(sorted(a[0] for a in answers), [202] * 8, answers)
            self.assertEqual(d.metrics_value("vidu_upscaled_webhook_staged"), 0)
            self.assertEqual(d.metrics_value("vidu_upscaled_ledger_turns_in_flight"), 0)
            jobs = self.jobs(db)
            self.assertEqual([jobs.get(cid) in RECORDED for cid in ids], [True] * 8)
            return d.metrics_value("vidu_upscaled_ledger_commit_seconds_count") - commits

    def test_what_arrives_during_a_turn_is_one_batch(self):
        # Group commit: while one turn's batch is in flight, every notification that arrives
        # waits, and all of them leave together in the next batch: one commit, one round trip.
        # Through a pooler in transaction mode, one turn in flight: the seven after the first
        # leave together.
        self.assertEqual(self.arrivals_during_a_turn("transaction"), 2)

    def test_a_second_turn_pipelined_behind_the_first(self):
        # On a direct connection two turns are in flight: the second notification leaves at
        # once, pipelined behind the held-up turn; the six after it wait for a lane and leave
        # together: three commits.
        self.assertEqual(self.arrivals_during_a_turn("none"), 3)

    def test_slow_database_delays_answers_never_the_loop(self):
        db = self.database()
        d = self.daemon(db)
        d.config["store"]["statement_timeout"] = "1s"
        with d:
            d.wait_ledger()
            release = self.lock_jobs(db)
            try:
                (cid,) = new_creation_ids(1)
                answers = []
                t = threading.Thread(target=lambda: answers.append(
                    self.post(d, make_task("9800000000000008", [cid]))))
                t.start()
                self.wait_lock_waiter(db)
                # Meanwhile the loop answers everything else at once.
                self.assertEqual(d.metrics_value("vidu_upscaled_ledger_available"), 1)
                t0 = time.monotonic()
                self.assertEqual(d.get("/healthz")[0], 200)
                self.assertLess(time.monotonic() - t0, 1 * harness.TIMEOUT_SCALE)
                # The statement timeout (store.statement_timeout, 1 s here against a default of
                # 5 s) ends the turn: rolled back whole, 503 with Retry-After, the lock still held.
                t.join(timeout=3.5 * harness.TIMEOUT_SCALE)
                self.assertFalse(t.is_alive(), "no answer within 3.5 s: store.statement_timeout not applied")
                status, headers, _ = answers[0]
                self.assertEqual(status, 503)
                self.assertEqual(headers.get("retry-after"), "5")
            finally:
                release()
            self.assertNotIn(cid, self.jobs(db))
            # The failed transaction was ended: the next turn commits.
            status, _, body = self.post(d, make_task("9800000000000008", [cid]))
            self.assertEqual(status, 202, body)
            self.assertIn(self.jobs(db).get(cid), RECORDED)

    def test_a_failed_turn_takes_the_pipelined_one_with_it(self):
        # The first turn waits on a lock past store.statement_timeout; the second, pipelined
        # behind it, finds the transaction aborted. Both answer 503 with Retry-After, one
        # ROLLBACK ends the transaction, and the next turn commits: nothing of either recorded,
        # the connection kept.
        db = self.database()
        d = self.daemon(db)
        d.config["store"]["statement_timeout"] = "1s"
        with d:
            d.wait_ledger()
            errors = d.metrics_value("vidu_upscaled_ledger_commit_errors_total")
            backends = "SELECT pid FROM pg_stat_activity WHERE datname = '%s' AND " \
                       "application_name = 'vidu-upscaled' ORDER BY pid" % db
            pids = self.pg.sql(backends, db=db)
            ids = new_creation_ids(3)
            answers = {}
            release = self.lock_jobs(db)
            try:
                def send(i):
                    answers[i] = self.post(d, make_task("98000000000003%02d" % i, [ids[i]]))
                first = threading.Thread(target=send, args=(0,))
                first.start()
                self.wait_lock_waiter(db)
                second = threading.Thread(target=send, args=(1,))
                second.start()
                poll(lambda: d.metrics_value("vidu_upscaled_ledger_turns_in_flight") == 2,
                     timeout=10, what="the second turn pipelined behind the first")
                first.join(timeout=10 * harness.TIMEOUT_SCALE)
                second.join(timeout=10 * harness.TIMEOUT_SCALE)
                self.assertFalse(first.is_alive() or second.is_alive(), "no answer")
            finally:
                release()
            for i in (0, 1):
                status, headers, _ = answers[i]
                self.assertEqual((status, headers.get("retry-after")), (503, "5"), answers[i])
            self.assertEqual(d.metrics_value("vidu_upscaled_ledger_commit_errors_total"), errors + 2)
            jobs = self.jobs(db)
            self.assertNotIn(ids[0], jobs)
            self.assertNotIn(ids[1], jobs)
            # The aborted transaction was ended behind them: the next turn commits, on the same
            # connections (the same server processes).
            status, _, body = self.post(d, make_task("9800000000000302", [ids[2]]))
            self.assertEqual(status, 202, body)
            self.assertIn(self.jobs(db).get(ids[2]), RECORDED)
            status, _, body = self.post(d, make_task("9800000000000300", [ids[0]]))
            self.assertEqual(status, 202, body)
            self.assertEqual(d.metrics_value("vidu_upscaled_ledger_available"), 1)
            self.assertEqual(len(pids), 2, pids)
            self.assertEqual(self.pg.sql(backends, db=db), pids)

    def test_expired_replay_keys_purged_in_batches(self):
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
        # 2500 expired keys (three purge batches of 1000) and one still remembered.
        self.pg.sql("INSERT INTO replay (key, until) SELECT 'old-' || i, now() - interval '1 hour' "
                    "FROM generate_series(1, 2500) AS i", db=db)
        self.pg.sql("INSERT INTO replay (key, until) VALUES ('live', now() + interval '1 hour')", db=db)
        with self.daemon(db) as d:
            d.wait_ledger()
            poll(lambda: self.pg.sql("SELECT count(*) FROM replay", db=db) == [["1"]], timeout=20,
                 what="the expired replay keys purged")
        self.assertEqual(self.pg.sql("SELECT key FROM replay", db=db), [["live"]])

    def test_old_submissions_purged_in_batches(self):
        """The spend guard's record keeps two days (its windows reach back one), as on SQLite:
        older submissions go in batches of 1000 on the housekeeping connection."""
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
        self.pg.sql("INSERT INTO submissions (creation_id, at) SELECT 'old-' || i, now() - interval '49 hours' "
                    "FROM generate_series(1, 2500) AS i", db=db)
        self.pg.sql("INSERT INTO submissions (creation_id, at) VALUES ('recent', now() - interval '47 hours')", db=db)
        with self.daemon(db) as d:
            d.wait_ledger()
            poll(lambda: self.pg.sql("SELECT count(*) FROM submissions", db=db) == [["1"]], timeout=20,
                 what="the old submissions purged")
        self.assertEqual(self.pg.sql("SELECT creation_id FROM submissions", db=db), [["recent"]])

    def test_newer_schema_stops_the_daemon(self):
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
        version = self.pg.sql("SELECT value FROM meta WHERE key = 'schema_version'", db=db)[0][0]
        self.pg.sql("UPDATE meta SET value = '%d' WHERE key = 'schema_version'" % (int(version) + 1), db=db)
        d = self.daemon(db)
        try:
            d.write_config()
            d.start()
        except RuntimeError as e:  # it may exit before READY=1
            self.assertIn("exited with 78", str(e))
        else:
            self.assertEqual(d.wait_exit(), 78)
        finally:
            d.__exit__(None, None, None)
        self.assertTrue(harness.wait_journal(lambda: [
            e for e in harness.journal_entries(_PID=str(d.pid))
            if "newer than this vidu-upscaled knows (%s)" % version in e.get("MESSAGE", "")]))

    def test_stop_while_the_schema_migrates(self):
        """A stop while the migration waits on the database (another instance holds the migration's
        lock): a clean exit 0, and nothing it held is left behind (the sanitizer and valgrind
        stages check the daemon's leaks at this stop)."""
        db = self.database()
        psql = subprocess.Popen([os.path.join(pgserver.PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-h", self.pg.tmp,
                                 "-p", str(self.pg.port), "-U", pgserver.ADMIN, "-d", db],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            psql.stdin.write("BEGIN;\nSELECT 1 FROM pg_advisory_xact_lock(508605486369);\nSELECT 'locked';\n")
            psql.stdin.flush()
            self.assertEqual([psql.stdout.readline().strip() for _ in range(2)], ["1", "locked"])
            d = self.daemon(db)
            with d:
                self.wait_lock_waiter(db)
                self.assertEqual(self.pg.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'jobs'", db=db),
                                 [["0"]])
                self.assertEqual(d.stop(), 0)
        finally:
            psql.stdin.write("ROLLBACK;\n")
            psql.stdin.close()
            psql.wait(timeout=30)
            psql.stdout.close()

    def test_unreachable_password_never_shown(self):
        marker = "Pw-Marker-%d" % os.getpid()
        d = self.daemon("x")
        d.config["store"]["url"] = "postgresql://vidu:%s@127.0.0.1:%d/x" % (marker, pgserver.free_port())
        # store.path is ignored on PostgreSQL: no SQLite file is made there.
        d.config["store"]["path"] = os.path.join(d.tmp, "ignored.db")
        with d:
            (cid,) = new_creation_ids(1)
            status, headers, _ = self.post(d, make_task("9800000000000020", [cid]))
            self.assertEqual((status, headers.get("retry-after")), (503, "5"))
            d.wait_notify(lambda m: "unreachable" in m.get("STATUS", ""), timeout=15)
            self.assertNotIn(marker, d.get("/metrics")[2].decode())
            entries = harness.wait_journal(lambda: [
                e for e in harness.journal_entries(_PID=str(d.pid))
                if "Cannot connect to the ledger's database" in e.get("MESSAGE", "")])
            self.assertNotIn(marker, json.dumps(harness.journal_entries(_PID=str(d.pid))))
            self.assertNotIn(marker, d.stderr_text())
            with open("/proc/%d/cmdline" % d.pid, "rb") as f:
                self.assertNotIn(marker.encode(), f.read())
        for m in d.notify_messages:
            self.assertNotIn(marker, m["_raw"].decode())
        self.assertTrue(entries)
        self.assertFalse(os.path.exists(os.path.join(d.tmp, "ignored.db")))

    def test_frozen_database_answers_503_and_recovers(self):
        # A server that stops answering (SIGSTOP: a partition, a hung host) keeps its connections
        # open: the loop's own bound on a batch gives the connection up, and the requests of the
        # turn get 503; /healthz answers at once all along.
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
            self.pg.freeze()
            try:
                (cid,) = new_creation_ids(1)
                answers = []
                t = threading.Thread(target=lambda: answers.append(
                    self.post(d, make_task("9800000000000030", [cid]), )))
                t.start()
                for _ in range(3):
                    t0 = time.monotonic()
                    d.get("/healthz")
                    self.assertLess(time.monotonic() - t0, 1 * harness.TIMEOUT_SCALE)
                t.join(timeout=30 * harness.TIMEOUT_SCALE)
                self.assertEqual(answers[0][0], 503)
                self.assertEqual(answers[0][1].get("retry-after"), "5")
                poll(lambda: d.get("/healthz")[0] == 503, timeout=10, what="/healthz 503 while frozen")
                (c2,) = new_creation_ids(1)
                t0 = time.monotonic()
                self.assertEqual(self.post(d, make_task("9800000000000031", [c2]))[0], 503)
                self.assertLess(time.monotonic() - t0, 2 * harness.TIMEOUT_SCALE)
            finally:
                self.pg.thaw()
            cid3 = self.wait_available(d, db)
            self.assertIn(self.jobs(db).get(cid3), RECORDED)
            # Given up mid-batch: whether that turn committed is unknown, and either is right.
            # If it did, its job was marked `submitting` by a commit nobody saw: never POSTed,
            # it is put back (due again, not uncertain) and submitted once.
            if self.jobs(db).get(cid) is not None:
                poll(lambda: self.jobs(db).get(cid) == "succeeded", timeout=20,
                     what="the job of the unknown commit submitted")
                self.assertEqual(self.fake.stats()["created"].get(cid), 1)
                harness.wait_journal(lambda: [e for e in harness.journal_entries(_PID=str(d.pid))
                                              if "were never sent: due again" in e.get("MESSAGE", "")])
            else:
                self.assertNotIn(cid, self.fake.stats()["created"])

    def pg_running(self):
        try:
            self.pg.sql("SELECT 1", db="postgres")
            return True
        except RuntimeError:
            return False

    def test_immediate_restart_under_load_loses_no_acknowledged_creation(self):
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
            acked, refused, stop = [], [], threading.Event()
            lock = threading.Lock()

            def load(n):
                i = 0
                while not stop.is_set():
                    i += 1
                    (cid,) = new_creation_ids(1)
                    try:
                        status, _, body = self.post(d, make_task("98%014d" % (n * 100000 + i), [cid]))
                    except OSError:
                        continue
                    with lock:
                        (acked if status == 202 else refused).append((cid, status))
                    time.sleep(0.01)  # a small load: valgrind runs this too
            threads = [threading.Thread(target=load, args=(n,)) for n in range(3)]
            for t in threads:
                t.start()
            try:
                poll(lambda: len(acked) >= 10, timeout=30, what="some notifications accepted")
                self.pg.restart()
                before = len(acked)
                # Work resumes by itself after the restart.
                poll(lambda: len(acked) >= before + 10, timeout=60, what="notifications accepted after the restart")
            finally:
                stop.set()
                for t in threads:
                    t.join()
            jobs = self.jobs(db)
            missing = [cid for cid, _ in acked if cid not in jobs]
            self.assertEqual(missing, [], "acknowledged but not in the database")
            self.assertTrue(all(s == 503 for _, s in refused), refused[:5])

    # --- the dispatcher on PostgreSQL ------------------------------------------------------

    def journal(self, d, cid, **match):
        return harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid), **match)

    def wait_state(self, d, cid, state, timeout=15):
        return harness.wait_journal(lambda: [e for e in self.journal(d, cid) if e.get("JOB_STATE") == state],
                                    timeout=timeout)

    def test_submitted_once_and_followed_to_success(self):
        db = self.database()
        with self.daemon(db) as d:
            d.wait_ledger()
            a, b = new_creation_ids(2)
            status, _, body = self.post(d, make_task("9800000000000040", [a, b]))
            self.assertEqual(status, 202, body)
            for cid in (a, b):
                done = self.wait_state(d, cid, "succeeded")
                self.assertTrue(done[0]["RESULT_URL"].startswith("http://"))
                entries = self.journal(d, cid)
                # The same story as on SQLite (the accepted entry folded or not).
                self.assertEqual(harness.job_states(entries), ["accepted", "submitted", "succeeded"])
                submitted = [e for e in entries if e.get("JOB_STATE") == "submitted"][0]
                self.assertEqual(submitted["ATTEMPT"], "1")
                self.assertEqual(submitted["SOURCE_TASK_ID"], "9800000000000040")
                if not harness.VALGRIND:
                    # Marked `submitting` in the commit that recorded it, answered within the
                    # second: the submitted entry folds the accepted one (log.fold_accepted).
                    self.assertIn("ACCEPTED_AT", submitted)
                self.assertEqual(self.fake.stats()["created"].get(cid), 1)
            rows = self.pg.sql("SELECT creation_id, state, attempt, upscale_task_id IS NOT NULL, claimed_by "
                               "FROM jobs ORDER BY creation_id", db=db)
            self.assertEqual(sorted(rows), sorted([[a, "succeeded", "1", "t", ""], [b, "succeeded", "1", "t", ""]]))
            self.assertEqual(d.metrics_value("vidu_upscaled_submissions_total"), 2)

    def dispatching(self, db, instance=None, lease=None, uncertain=None, concurrency=None, timeout=None):
        d = self.daemon(db)
        if instance:
            d.config["store"]["instance"] = instance
        if lease:
            d.config["store"]["lease"] = lease
        if uncertain:
            d.config.setdefault("retry", {})["uncertain"] = uncertain
        if concurrency:
            d.config["upstream"]["concurrency"] = str(concurrency)
        if timeout:
            d.config["upstream"]["timeout"] = timeout
        return d

    def db_job(self, db, cid):
        rows = self.pg.sql("SELECT state, attempt, coalesce(upscale_task_id, ''), coalesce(claimed_by, '') "
                           "FROM jobs WHERE creation_id = '%s'" % cid, db=db)
        return rows[0] if rows else None

    def test_retries_and_dead_as_on_sqlite(self):
        db = self.database()
        a, b, c = new_creation_ids(3)
        self.fake.faults([
            {"on": "submit", "creation_id": a, "status": 500, "times": 1},
            {"on": "submit", "creation_id": b, "status": 429, "reason": "TooManyRequests", "retry_after": "1"},
            {"on": "submit", "creation_id": c, "status": 404, "reason": "CreationNotFound", "times": -1},
        ])
        with self.dispatching(db) as d:
            d.wait_ledger()
            self.assertEqual(self.post(d, make_task("9800000000000041", [a, b, c]))[0], 202)
            for cid, status in ((a, "500"), (b, "429")):
                done = self.wait_state(d, cid, "succeeded")
                self.assertTrue(done)
                entries = self.journal(d, cid)
                self.assertEqual(harness.job_states(entries), ["accepted", "retrying", "submitted", "succeeded"])
                retrying = [e for e in entries if e.get("JOB_STATE") == "retrying"]
                self.assertEqual([e["HTTP_STATUS"] for e in retrying], [status])
                submitted = [e for e in entries if e.get("JOB_STATE") == "submitted"][0]
                self.assertEqual(submitted["ATTEMPT"], "2")
                self.assertEqual(self.fake.stats()["created"].get(cid), 1)
            # The retry waited what the upstream asked (Retry-After: 1), on the database's clock.
            first, second = self.fake.arrivals(b)
            self.assertGreaterEqual(second - first, 1.0)
            dead = self.wait_state(d, c, "dead")
            self.assertEqual((dead[0]["HTTP_STATUS"], dead[0]["UPSTREAM_ERROR"]), ("404", "CreationNotFound"))
            self.assertEqual(self.db_job(db, c), ["dead", "1", "", ""])
            self.assertEqual(d.metrics_value("vidu_upscaled_retries_total"), 2)
            self.assertEqual(d.metrics_value("vidu_upscaled_dead_total"), 1)
        self.fake.faults([])

    def test_lost_answer_is_held_uncertain(self):
        db = self.database()
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "action": "drop"}])
        with self.dispatching(db, uncertain="hold") as d:
            d.wait_ledger()
            self.assertEqual(self.post(d, make_task("9800000000000042", [cid]))[0], 202)
            held = self.wait_state(d, cid, "uncertain")
            self.assertEqual(len(held), 1)
            self.assertEqual(self.db_job(db, cid), ["uncertain", "1", "", ""])
            # Nothing more is sent: the upstream created it once and saw it once.
            self.assertEqual(self.fake.stats()["created"].get(cid), 1)
            self.assertEqual(len(self.fake.arrivals(cid)), 1)
            self.assertEqual(d.metrics_value("vidu_upscaled_uncertain_total"), 1)

    def test_two_instances_share_the_work_each_job_submitted_once(self):
        db = self.database()
        n = 200 if not harness.VALGRIND else 40
        ids = new_creation_ids(n)
        with self.dispatching(db, instance="one") as d1, self.dispatching(db, instance="two") as d2:
            d1.wait_ledger(), d2.wait_ledger()
            answers = []

            def send(part, d):
                for i, cid in enumerate(part):
                    answers.append(self.post(d, make_task("98%014d" % (500000 + ids.index(cid)), [cid]))[0])
            threads = [threading.Thread(target=send, args=(ids[k::4], (d1, d2)[k % 2])) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(answers, [202] * n)
            q = "SELECT count(*) FROM jobs WHERE state = 'succeeded'"
            poll(lambda: self.pg.sql(q, db=db) == [[str(n)]], timeout=60, what="every job succeeded")
            created = self.fake.stats()["created"]
            self.assertEqual([cid for cid in ids if created.get(cid) != 1], [])
            s1 = d1.metrics_value("vidu_upscaled_submissions_total")
            s2 = d2.metrics_value("vidu_upscaled_submissions_total")
            self.assertEqual(s1 + s2, n)
            self.assertGreater(s1, 0)
            self.assertGreater(s2, 0)
            self.assertEqual(d1.metrics_value("vidu_upscaled_stale_answers_total") +
                             d2.metrics_value("vidu_upscaled_stale_answers_total"), 0)

    def counts_by_group_by(self, db):
        return {st: int(n) for st, n in self.pg.sql("SELECT state, count(*) FROM jobs GROUP BY state", db=db)}

    def metrics_counts(self, d):
        states = ("pending", "submitting", "waiting", "submitted", "succeeded", "failed", "dead", "uncertain")
        got = {st: int(d.metrics_value('vidu_upscaled_jobs{state="%s"}' % st)) for st in states}
        return {st: n for st, n in got.items() if n}

    def test_counts_are_a_tally_that_matches_the_table(self):
        """The per-state counts (STATUS=, vidu_upscaled_jobs, `jobs counts`) come from the tally the
        schema's triggers keep, not a GROUP BY; after two instances' intake, claims, answers of
        every kind, an operator's change and rows deleted by hand, the tally is what a GROUP BY of
        the table says."""
        db = self.database()
        ids = new_creation_ids(60)
        failed, dead = ids[:5], ids[5:10]
        for cid in failed:
            self.fake.outcome(cid, "failed", "ModerationFailed")
        self.fake.faults([{"on": "submit", "creation_id": cid, "status": 404, "reason": "CreationNotFound",
                           "times": -1} for cid in dead])
        try:
            with self.dispatching(db, instance="one") as d1, self.dispatching(db, instance="two") as d2:
                d1.wait_ledger(), d2.wait_ledger()
                for i, cid in enumerate(ids):
                    self.assertEqual(self.post((d1, d2)[i % 2], make_task("98%014d" % (700000 + i), [cid]))[0], 202)
                q = "SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed', 'dead')"
                poll(lambda: self.pg.sql(q, db=db) == [["60"]], timeout=60, what="every job finished")
                want = {"succeeded": 50, "failed": 5, "dead": 5}
                self.assertEqual(self.counts_by_group_by(db), want)
                poll(lambda: self.metrics_counts(d1) == want and self.metrics_counts(d2) == want,
                     timeout=15, what="both instances' counts at %s" % want)
                # An operator's change, and rows deleted beside the daemons (a purge).
                sent = len(self.fake.arrivals(dead[0]))
                r = d1.jobs("retry", dead[0])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.pg.sql("DELETE FROM jobs WHERE creation_id IN (%s)" %
                            ", ".join("'%s'" % c for c in failed[:2]), db=db)
                poll(lambda: self.pg.sql("SELECT state FROM jobs WHERE creation_id = '%s'" % dead[0], db=db)
                     == [["dead"]] and len(self.fake.arrivals(dead[0])) > sent, timeout=30,
                     what="the retried job dead again")
                want = self.counts_by_group_by(db)
                self.assertEqual(want, {"succeeded": 50, "failed": 3, "dead": 5})
                poll(lambda: self.metrics_counts(d1) == want, timeout=15, what="the counts at %s" % want)
                out = d1.jobs("counts")
                self.assertEqual(out.returncode, 0, out.stderr)
                for st, n in want.items():
                    self.assertRegex(out.stdout, r"(?m)^%s\s+%d$" % (st, n))
                # Folded by the housekeeping (every 2 s): the totals of the states jobs end in
                # alone now say the same (the others are counted from their partial indexes).
                poll(lambda: self.pg.sql("SELECT count(*) FROM job_count_deltas", db=db) == [["0"]],
                     timeout=15, what="the deltas folded")
                totals = {st: int(n) for st, n in self.pg.sql("SELECT state, n FROM job_counts WHERE n <> 0", db=db)}
                self.assertEqual(totals, want)
                # The states jobs pass through: three held pending by the operator's pause.
                self.assertEqual(d1.jobs("pause").returncode, 0)
                held = new_creation_ids(3)
                for i, cid in enumerate(held):
                    self.assertEqual(self.post(d2, make_task("98%014d" % (700100 + i), [cid]))[0], 202)
                want = dict(self.counts_by_group_by(db))
                self.assertEqual(want.get("pending"), 3)
                poll(lambda: self.metrics_counts(d1) == want and self.metrics_counts(d2) == want,
                     timeout=15, what="both instances' counts at %s" % want)
                self.assertEqual(d1.jobs("resume").returncode, 0)
        finally:
            self.fake.faults([])

    def test_kill9_survivor_takes_over_within_two_leases(self):
        db = self.database()
        slow = new_creation_ids(3)
        rest = new_creation_ids(3)
        self.fake.faults([{"on": "submit", "creation_id": cid, "action": "delay", "delay_ms": 6000} for cid in slow])
        lease = 2.0
        with self.dispatching(db, instance="doomed", lease="2s", uncertain="hold", concurrency=3) as a, \
                self.dispatching(db, instance="survivor", lease="2s", uncertain="hold") as b:
            a.wait_ledger(), b.wait_ledger()
            # The three slow ones fill a's slots in the commit that records them; the rest wait
            # for a slot, and the idle survivor finds them.
            self.assertEqual(self.post(a, make_task("9800000000000043", slow))[0], 202)
            self.assertEqual(self.post(a, make_task("9800000000000044", rest))[0], 202)
            poll(lambda: all(self.fake.stats()["created"].get(cid) == 1 for cid in slow), timeout=15,
                 what="the slow submissions in flight")
            self.assertEqual({self.db_job(db, cid)[3] for cid in slow}, {"doomed"})
            a.kill(signal.SIGKILL)
            a.wait_exit()
            killed = time.monotonic()
            q = "SELECT count(*) FROM jobs WHERE state = 'uncertain'"
            poll(lambda: self.pg.sql(q, db=db) == [["3"]], timeout=2 * lease + 1, interval=0.05,
                 what="the dead instance's submissions taken over")
            self.assertLess(time.monotonic() - killed, 2 * lease * harness.TIMEOUT_SCALE + 0.5)
            for cid in slow:
                entry = self.wait_state(b, cid, "uncertain")
                self.assertIn("doomed", entry[0]["MESSAGE"])
            for cid in rest:
                self.wait_state(b, cid, "succeeded", timeout=20)
            # Held: `uncertain` is final under hold, nothing sends them again.
            created = self.fake.stats()["created"]
            self.assertEqual([created.get(cid) for cid in slow + rest], [1] * 6)
            self.assertEqual([self.db_job(db, cid)[0] for cid in slow], ["uncertain"] * 3)
        self.fake.faults([])

    def test_instance_stopped_past_its_lease_is_fenced(self):
        db = self.database()
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "action": "delay", "delay_ms": 3000}])
        with self.dispatching(db, instance="sleeper", lease="1s", uncertain="resubmit", timeout="60s") as a, \
                self.dispatching(db, instance="awake", lease="1s", uncertain="resubmit") as b:
            a.wait_ledger(), b.wait_ledger()
            self.assertEqual(self.post(a, make_task("9800000000000045", [cid]))[0], 202)
            poll(lambda: self.fake.stats()["created"].get(cid) == 1, timeout=15, what="the submission in flight")
            a.kill(signal.SIGSTOP)
            try:
                # The survivor takes the lapsed claim over (resubmit: due again), submits it
                # under a claim of its own and follows it to the end.
                self.wait_state(b, cid, "succeeded", timeout=30)
                ours = self.db_job(db, cid)
                first = min(self.fake.tasks(cid), key=lambda t: t["created_ns"])["id"]
                self.assertNotEqual(ours[2], first)
            finally:
                a.kill(signal.SIGCONT)
            # The sleeper's late answer (the first task) is fenced out: journaled as stale with
            # the task id it carried, never recorded over what the survivor decided.
            stale = self.wait_state(a, cid, "stale", timeout=30)
            self.assertEqual(stale[0]["UPSCALE_TASK_ID"], first)
            poll(lambda: a.metrics_value("vidu_upscaled_stale_answers_total") == 1, timeout=10,
                 what="the stale answer counted")
            self.assertEqual(self.db_job(db, cid), ["succeeded", ours[1], ours[2], ""])
            self.assertEqual(self.fake.stats()["created"].get(cid), 2)
        self.fake.faults([])

    def test_fenced_out_error_decides_and_counts_nothing(self):
        """A stale answer that is an error (500: "retry") is fenced out like an acceptance: the
        sleeper journals it as stale and its retry counter does not move, since nothing it
        decided was recorded."""
        db = self.database()
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "delay_ms": 3000, "status": 500, "times": 1}])
        with self.dispatching(db, instance="sleeper", lease="1s", uncertain="resubmit", timeout="60s") as a, \
                self.dispatching(db, instance="awake", lease="1s", uncertain="resubmit") as b:
            a.wait_ledger(), b.wait_ledger()
            self.assertEqual(self.post(a, make_task("9800000000000046", [cid]))[0], 202)
            poll(lambda: len(self.fake.arrivals(cid)) == 1, timeout=15, what="the submission in flight")
            a.kill(signal.SIGSTOP)
            try:
                self.wait_state(b, cid, "succeeded", timeout=30)
            finally:
                a.kill(signal.SIGCONT)
            stale = self.wait_state(a, cid, "stale", timeout=30)
            self.assertEqual(stale[0]["HTTP_STATUS"], "500")
            poll(lambda: a.metrics_value("vidu_upscaled_stale_answers_total") == 1, timeout=10,
                 what="the stale answer counted")
            self.assertEqual(a.metrics_value("vidu_upscaled_retries_total"), 0)
            self.assertEqual(self.db_job(db, cid)[0], "succeeded")
        self.fake.faults([])

    def test_callbacks_close_their_jobs(self):
        from test_callbacks import vidu_headers
        db = self.database()
        ok, bad = new_creation_ids(2)
        self.fake.outcome(bad, "failed", "UpscaleSourceTooLarge")
        self.fake.callbacks(sign=True, processing=True, withhold=False)
        d = self.daemon(db)
        # Callbacks on and the first poll 10 minutes away: an outcome within the test is a
        # callback's.
        d.config["upstream"].update({"flavor": "v1", "callback_grace": "10m"})
        d.config["auth"] = {"scheme": "vidu", "secret": self.fake.api_key}
        d.config["upstream"]["callback_url"] = d.url + "/hooks/vidu"
        try:
            with d:
                d.wait_ledger()
                body = json.dumps(make_task("9800000000000046", [ok, bad])).encode()
                status, _, answer = d.post(body=body, headers=vidu_headers(d.api_key, "POST", "/hooks/vidu", ""))
                self.assertEqual(status, 202, answer)
                done = self.wait_state(d, ok, "succeeded")[0]
                failed = self.wait_state(d, bad, "failed")[0]
                self.assertIn("(callback)", done["MESSAGE"])
                self.assertEqual(failed["UPSTREAM_ERROR"], "UpscaleSourceTooLarge")
                for cid, state in ((ok, "succeeded"), (bad, "failed")):
                    task = self.fake.tasks(cid)[0]
                    # Closed by the callback (after a `processing` one that changed nothing),
                    # never polled; the journal story as on SQLite.
                    self.assertEqual(task["polls"], 0)
                    # (The `processing` one only while the task still runs: a slow daemon, as
                    # under valgrind, may submit it too late for one.)
                    final = {"state": "success" if state == "succeeded" else state, "status": 200}
                    self.assertEqual(task["callbacks"][-1], final)
                    self.assertTrue(all(cb == {"state": "processing", "status": 200} for cb in task["callbacks"][:-1]),
                                    task["callbacks"])
                    self.assertEqual(self.db_job(db, cid), [state, "1", task["id"], ""])
                    self.assertEqual(harness.job_states(self.journal(d, cid)), ["accepted", "submitted", state])
                self.assertEqual(d.metrics_value('vidu_upscaled_outcomes_total{via="callback",state="succeeded"}'), 1)
                self.assertEqual(d.metrics_value('vidu_upscaled_outcomes_total{via="callback",state="failed"}'), 1)
                self.assertEqual(d.metrics_value('vidu_upscaled_outcomes_total{via="poll",state="succeeded"}'), 0)
                # A callback for an upscale of ours is never a new job.
                self.assertEqual(sorted(self.jobs(db)), sorted([ok, bad]))
                # A callback's cost (the official callback carries one; this flavor's fake does
                # not, so one is sent by hand) is the job's and its latest submission's.
                tid = self.fake.tasks(ok)[0]["id"]
                cb = json.dumps({"id": tid, "task_id": tid, "type": "upscale", "state": "success",
                                 "err_code": "", "credits": 7, "creations": []}).encode()
                status, _, answer = d.post(path="/hooks/vidu?vidu_upscaled=callback", body=cb,
                                           headers=vidu_headers(d.api_key, "POST", "/hooks/vidu",
                                                                "vidu_upscaled=callback"))
                self.assertLess(status, 300, answer)
                q = ("SELECT j.credits, s.credits FROM jobs j JOIN submissions s USING (creation_id) "
                     "WHERE creation_id = '%s'" % ok)
                poll(lambda: self.pg.sql(q, db=db) == [["7", "7"]], timeout=10, what="the callback's cost recorded")
        finally:
            self.fake.callbacks(sign=False, processing=False, withhold=False)

    def test_account_pause_is_shared_one_probe_at_a_time(self):
        db = self.database()
        first, *more = new_creation_ids(7)
        with FakeUpstream(complete_after_ms=100) as fake:
            # Every submission refused (401) three times, each answer 300 ms late: the first
            # finds the error, two probes meet it again, the third passes.
            fake.faults([{"on": "submit", "status": 401, "reason": "Unauthorized", "times": 3, "delay_ms": 300}])

            def instance(name):
                return Daemon({"upstream": {"base_url": fake.url, "concurrency": "1"},
                               "store": {"instance": name},
                               "retry": {"initial_delay": "200ms", "max_delay": "500ms", "max_attempts": "2"}},
                              fake=fake, pg=self.pg, pg_db=db)
            with instance("finder") as a, instance("follower") as b:
                a.wait_ledger(), b.wait_ledger()
                self.assertEqual(self.post(a, make_task("9800000000000047", [first]))[0], 202)
                # The other instance pauses too, from the database.
                poll(lambda: b.metrics_value('vidu_upscaled_dispatch_paused{reason="account"}') == 1,
                     timeout=15, what="the follower paused")
                for i, cid in enumerate(more):
                    self.assertEqual(self.post((a, b)[i % 2], make_task("98000000000001%02d" % (50 + i), [cid]))[0],
                                     202)
                q = "SELECT count(*) FROM jobs WHERE state = 'succeeded'"
                poll(lambda: self.pg.sql(q, db=db) == [["7"]], timeout=60, what="every job succeeded")
                arrivals = sorted(t for cid in [first] + more for t in fake.arrivals(cid))
                # The refused submission and every probe one after the other, never two at once
                # across the instances: each left after the previous one's 300 ms answer.
                gaps = [b2 - a2 for a2, b2 in zip(arrivals[:4], arrivals[1:4])]
                self.assertTrue(all(g >= 0.3 for g in gaps), arrivals)
                self.assertEqual(fake.stats()["submit_requests"], 10)  # 7 jobs, 3 refusals
                for cid in [first] + more:
                    self.assertEqual(fake.stats()["created"].get(cid), 1)
                    # No job lost an attempt to the account-wide error.
                    self.assertEqual(self.db_job(db, cid)[1], "1")
                for d, how in ((a, "HTTP 401"), (b, "found by another instance")):
                    paused = [e for e in harness.journal_entries(_PID=str(d.pid))
                              if e.get("MESSAGE", "").startswith("All submissions paused")]
                    self.assertEqual(len(paused), 1, paused)
                    self.assertIn(how, paused[0]["MESSAGE"])
                    resumed = harness.wait_journal(lambda: [
                        e for e in harness.journal_entries(_PID=str(d.pid))
                        if e.get("MESSAGE", "").startswith("Submissions resumed")])
                    self.assertEqual(len(resumed), 1)

    def test_stop_records_the_answer_in_flight(self):
        db = self.database()
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "action": "delay", "delay_ms": 1000}])
        with self.dispatching(db) as d:
            d.wait_ledger()
            self.assertEqual(self.post(d, make_task("9800000000000048", [cid]))[0], 202)
            poll(lambda: self.fake.stats()["created"].get(cid) == 1, timeout=15, what="the submission in flight")
            # A stop waits for the answer and records it before the daemon exits.
            self.assertEqual(d.stop(), 0)
        state, attempt, task, claimed = self.db_job(db, cid)
        self.assertIn(state, ("submitted", "succeeded"))
        self.assertEqual((attempt, task, claimed), ("1", self.fake.tasks(cid)[0]["id"], ""))

    def test_operator_pause_holds_submissions(self):
        db = self.database()
        (cid,) = new_creation_ids(1)
        with self.dispatching(db) as d:
            d.wait_ledger()
            r = d.jobs("pause")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(self.post(d, make_task("9800000000000049", [cid]))[0], 202)
            # The claim in the notification's own commit takes nothing, and says why.
            d.wait_notify(lambda m: "paused by an operator" in m.get("STATUS", ""), timeout=15)
            self.assertEqual(d.metrics_value('vidu_upscaled_dispatch_paused{reason="operator"}'), 1)
            self.assertEqual(self.db_job(db, cid)[:2], ["pending", "0"])
            self.assertNotIn(cid, self.fake.stats()["created"])
            r = d.jobs("resume")
            self.assertEqual(r.returncode, 0, r.stderr)
            # Seen on the lease timer: what was held leaves, once.
            self.wait_state(d, cid, "succeeded")
            self.assertEqual(self.fake.stats()["created"].get(cid), 1)

    def test_task_id_already_recorded_is_held_uncertain(self):
        db = self.database()
        a, b = new_creation_ids(2)
        with FakeUpstream(complete_after_ms=100) as fake:
            # A fresh fake numbers its first task 2371000000000001: another creation already
            # holds that id (an upstream that numbers its tasks alike after a change).
            with Daemon({"upstream": {"base_url": fake.url}}, fake=fake, pg=self.pg, pg_db=db) as d:
                d.wait_ledger()
                self.pg.sql("INSERT INTO jobs (creation_id, state, upscale_task_id, attempt, next_at, "
                            "created_at, updated_at) VALUES ('other', 'succeeded', '2371000000000001', 1, "
                            "now(), now(), now())", db=db)
                self.assertEqual(self.post(d, make_task("9800000000000050", [a]))[0], 202)
                held = self.wait_state(d, a, "uncertain")
                self.assertIn("already recorded for creation other", held[0]["UPSTREAM_ERROR"])
                self.assertEqual(self.db_job(db, a), ["uncertain", "1", "", ""])
                # The turn was not failed for it: the next notification goes through.
                self.assertEqual(self.post(d, make_task("9800000000000051", [b]))[0], 202)
                self.wait_state(d, b, "succeeded")
                self.assertEqual(fake.stats()["created"].get(a), 1)

    def test_task_id_already_recorded_is_tried_again_under_resubmit(self):
        """Under retry.uncertain = resubmit the same answer is tried again, as on SQLite: retrying
        with the error named, then submitted under a task id of its own and followed to the end."""
        db = self.database()
        (a,) = new_creation_ids(1)
        with FakeUpstream(complete_after_ms=100) as fake:
            with Daemon({"upstream": {"base_url": fake.url}, "retry": {"uncertain": "resubmit"}}, fake=fake,
                        pg=self.pg, pg_db=db) as d:
                d.wait_ledger()
                self.pg.sql("INSERT INTO jobs (creation_id, state, upscale_task_id, attempt, next_at, "
                            "created_at, updated_at) VALUES ('other', 'succeeded', '2371000000000001', 1, "
                            "now(), now(), now())", db=db)
                self.assertEqual(self.post(d, make_task("9800000000000052", [a]))[0], 202)
                self.wait_state(d, a, "succeeded")
                entries = self.journal(d, a)
                self.assertEqual(harness.job_states(entries), ["accepted", "retrying", "submitted", "succeeded"])
                retrying = [e for e in entries if e.get("JOB_STATE") == "retrying"][0]
                self.assertIn("already recorded for creation other", retrying["UPSTREAM_ERROR"])
                state, attempt, task = self.db_job(db, a)[:3]
                self.assertEqual((state, attempt), ("succeeded", "2"))
                self.assertNotEqual(task, "2371000000000001")
                self.assertEqual(fake.stats()["created"].get(a), 2)
                self.assertEqual(d.metrics_value("vidu_upscaled_retries_total"), 1)

    def test_ent_v2_passes_the_source_payload_on(self):
        db = self.database()
        a, b = new_creation_ids(2)
        payload = '{"pipeline": "edit-42", "note": "caf\u00e9"}'
        d = self.dispatching(db)
        d.config["upstream"]["flavor"] = "ent-v2"
        with d:
            d.wait_ledger()
            task = make_task("9800000000000052", [a])
            task["payload"] = payload
            self.assertEqual(self.post(d, task)[0], 202)
            self.assertEqual(self.post(d, make_task("9800000000000053", [b]))[0], 202)
            for cid in (a, b):
                harness.poll(lambda: self.fake.tasks(cid), what="the submission of " + cid)
            # Read back with the claim, untouched; without one, the payload naming the creation.
            self.assertEqual(json.loads(self.fake.tasks(a)[0]["body"])["payload"], payload)
            self.assertEqual(json.loads(json.loads(self.fake.tasks(b)[0]["body"])["payload"]), {"creation_id": b})


    def test_budget_cap_holds_across_two_instances(self):
        """[budget] on PostgreSQL: the cap is counted in the database and checked in the claim's
        transaction under the budget's row lock, so two instances together never exceed it; the
        held jobs lose no attempt, each instance says so once (journal, STATUS=, metrics), and
        they leave when the window frees room."""
        db = self.database()
        cap = 5
        ids = new_creation_ids(12)
        d1 = self.dispatching(db, instance="one")
        d2 = self.dispatching(db, instance="two")
        for d in (d1, d2):
            d.config["budget"] = {"max_submissions_per_hour": str(cap)}
        with d1, d2:
            d1.wait_ledger(), d2.wait_ledger()
            answers = []

            def send(part, d):
                for cid in part:
                    answers.append(self.post(d, make_task("98%014d" % (700000 + ids.index(cid)), [cid]))[0])
            threads = [threading.Thread(target=send, args=(ids[k::2], (d1, d2)[k])) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(answers, [202] * len(ids))
            pids = {str(d1.pid), str(d2.pid)}
            harness.wait_journal(lambda: [e for e in harness.journal_entries(MESSAGE_ID=MSGID_BUDGET_REACHED)
                                          if e.get("_PID") in pids])
            q_done = "SELECT count(*) FROM jobs WHERE state NOT IN ('pending', 'waiting')"
            poll(lambda: self.pg.sql(q_done, db=db) == [[str(cap)]], timeout=20, what="the cap's jobs claimed")
            # Both instances keep looking (at least once a second); nothing more leaves.
            d1.wait_notify(lambda m: "budget reached, next submission at" in m.get("STATUS", ""), timeout=15)
            d2.wait_notify(lambda m: "budget reached, next submission at" in m.get("STATUS", ""), timeout=15)
            self.assertEqual(sum(self.fake.stats()["created"].get(c, 0) for c in ids), cap)
            self.assertEqual(self.pg.sql("SELECT count(*) FROM submissions", db=db), [[str(cap)]])
            self.assertEqual(self.pg.sql("SELECT count(*) FROM jobs WHERE state = 'pending' AND attempt = 0",
                                         db=db), [[str(len(ids) - cap)]])
            poll(lambda: d1.metrics_value("vidu_upscaled_budget_blocked") == 1, timeout=10, what="blocked gauge")
            self.assertEqual(d1.metrics_value('vidu_upscaled_budget_remaining{window="hour"}'), 0)
            reached = [e for e in harness.journal_entries(MESSAGE_ID=MSGID_BUDGET_REACHED) if e.get("_PID") in pids]
            self.assertLessEqual(len(reached), 2)
            self.assertIn("max_submissions_per_hour", reached[0]["MESSAGE"])
            # The window frees: move the ledger's clock an hour back; five more leave, no more.
            self.pg.sql("UPDATE submissions SET at = at - interval '61 minutes'", db=db)
            poll(lambda: self.pg.sql(q_done, db=db) == [[str(2 * cap)]], timeout=20, what="five more claimed")
            harness.wait_journal(lambda: [e for e in harness.journal_entries(MESSAGE_ID=MSGID_BUDGET_RESUMED)
                                          if e.get("_PID") in pids])
            poll(lambda: sum(self.fake.stats()["created"].get(c, 0) for c in ids) == 2 * cap, timeout=20,
                 what="ten submitted")
            self.assertEqual(self.pg.sql("SELECT count(*) FROM submissions WHERE at > now() - interval '1 hour'",
                                         db=db), [[str(cap)]])
            self.assertEqual(self.pg.sql(q_done, db=db), [[str(2 * cap)]])

    def test_credits_from_answers_reach_the_daily_cap(self):
        """The costs the upstream's answers report are recorded (job and submission) and counted
        by the credits window across instances' claims, as on SQLite."""
        db = self.database()
        with FakeUpstream(complete_after_ms=100, credits=4) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}, "budget": {"max_credits_per_day": "10"}},
                       fake=fake, pg=self.pg, pg_db=db)
            with d:
                d.wait_ledger()
                cids = new_creation_ids(4)
                # One at a time, each followed to its end so its cost is known before the next.
                for i, c in enumerate(cids[:3]):
                    self.assertEqual(d.post(body=make_task("98200000000000%02d" % i, [c]))[0], 202)
                    q = "SELECT state, coalesce(credits, -1) FROM jobs WHERE creation_id = '%s'" % c
                    poll(lambda: self.pg.sql(q, db=db) == [["succeeded", "4"]], timeout=20,
                         what="the upscale of %s to succeed with its cost" % c)
                self.assertEqual(self.pg.sql("SELECT sum(credits) FROM submissions", db=db), [["12"]])
                # 12 credits spent in the day, over the 10 allowed: the fourth waits.
                self.assertEqual(d.post(body=make_task("9820000000000099", [cids[3]]))[0], 202)
                pids = {str(d.pid)}
                reached = harness.wait_journal(lambda: [e for e in harness.journal_entries(
                    MESSAGE_ID=MSGID_BUDGET_REACHED) if e.get("_PID") in pids])
                self.assertIn("12 credits", reached[0]["MESSAGE"])
                self.assertIn("max_credits_per_day", reached[0]["MESSAGE"])
                self.assertEqual(self.jobs(db)[cids[3]], "pending")
                self.assertEqual(fake.stats()["submit_requests"], 3)
                poll(lambda: d.metrics_value("vidu_upscaled_budget_blocked") == 1, timeout=10, what="blocked gauge")
                self.assertEqual(d.metrics_value('vidu_upscaled_budget_remaining{window="credits_day"}'), 0)

if __name__ == "__main__":
    unittest.main(verbosity=2)
