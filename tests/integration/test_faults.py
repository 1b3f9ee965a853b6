#!/usr/bin/env python3
"""test_faults.py: the upstream fault matrix, the disk filling up, and jobs interrupted
mid-submission, against the real daemon and the fake upstream: every job ends right, nothing is
lost, nothing is paid twice."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids, wait_journal  # noqa: E402


def entries_for(d, cid):
    return harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))


def wait_state(d, cid, state, timeout=20):
    return wait_journal(lambda: [e for e in entries_for(d, cid) if e.get("JOB_STATE") == state], timeout=timeout)


poll = harness.poll


def upstream_comes_back(test, d, port, ids):
    """An upstream answers on PORT again: every job goes through, each created upstream once."""
    fake = FakeUpstream(complete_after_ms=100, port=port, api_key=d.api_key)
    fake.start()
    try:
        for cid in ids:
            wait_state(d, cid, "succeeded", timeout=30)
            test.assertEqual(fake.stats()["created"].get(cid), 1)
    finally:
        fake.stop()


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=100)
        cls.fake.start()
        cls.d = Daemon({"upstream": {"base_url": cls.fake.url, "timeout": "1s"},
                        "retry": {"initial_delay": "100ms", "max_delay": "1s"}}, fake=cls.fake)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        cls.fake.stop()

    def submit(self, cid, task="9300000000000001"):
        status, _, raw = self.d.post(body=make_task(task, [cid]))
        self.assertEqual(status, 202, raw)

    def test_server_errors_are_retried(self):
        cases = [(500, None, None), (502, "<html><body>Bad gateway</body></html>", None), (503, None, None),
                 (504, None, None)]
        ids = new_creation_ids(len(cases))
        for cid, (status, body, _) in zip(ids, cases):
            fault = {"on": "submit", "creation_id": cid, "status": status, "times": 1}
            if body:
                fault["body"] = body
            self.fake.faults([fault])
            self.submit(cid)
        for cid, (status, _, _) in zip(ids, cases):
            wait_state(self.d, cid, "succeeded")
            retrying = [e for e in entries_for(self.d, cid) if e.get("JOB_STATE") == "retrying"]
            self.assertEqual([e["HTTP_STATUS"] for e in retrying], [str(status)])
            self.assertEqual(self.fake.stats()["created"].get(cid), 1)

    def test_429_retry_after_seconds_date_and_none(self):
        a, b, c = new_creation_ids(3)
        http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
        self.fake.faults([
            {"on": "submit", "creation_id": a, "status": 429, "reason": "TooManyRequests", "retry_after": "2"},
            {"on": "submit", "creation_id": b, "status": 429, "reason": "SystemThrottling", "retry_after": http_date},
            {"on": "submit", "creation_id": c, "status": 429},
        ])
        for cid in (a, b, c):
            self.submit(cid)
        for cid, at_least in ((a, 2.0), (b, 1.5), (c, 0.05)):
            done = wait_state(self.d, cid, "submitted")
            retry = [e for e in entries_for(self.d, cid) if e.get("JOB_STATE") == "retrying"][0]
            self.assertEqual(retry["HTTP_STATUS"], "429")
            self.assertEqual(done[0]["ATTEMPT"], "2")
            # The next attempt waited at least as long as the upstream asked, measured where the
            # attempts arrive: the first answer left after the first arrival, and the wait starts
            # only once the daemon has read it. (Journal timestamps say when an entry reached
            # journald, which a busy loop can delay more for one entry than for the next.)
            first, second = self.fake.arrivals(cid)
            self.assertGreaterEqual(second - first, at_least)

    def test_timeouts_retry_and_the_loop_never_blocks(self):
        slow, trickle, other = new_creation_ids(3)
        self.fake.faults([
            {"on": "submit", "creation_id": slow, "delay_ms": 2500, "status": 500},
            {"on": "submit", "creation_id": trickle, "action": "trickle", "trickle_ms": 300},
        ])
        self.submit(slow)
        self.submit(trickle)
        # While both hang, the daemon still answers and submits other work.
        self.submit(other)
        wait_state(self.d, other, "submitted", timeout=5)
        for cid in (slow, trickle):
            retry = wait_state(self.d, cid, "retrying")
            self.assertIn("timeout", retry[0]["UPSTREAM_ERROR"].lower())
            wait_state(self.d, cid, "succeeded")

    def test_final_errors_make_the_job_dead_once(self):
        cases = [(404, "CreationNotFound"), (400, "FieldInvalid"), (400, "BadRequest")]
        ids = new_creation_ids(len(cases))
        for cid, (status, reason) in zip(ids, cases):
            self.fake.faults([{"on": "submit", "creation_id": cid, "status": status, "reason": reason, "times": -1}])
            self.submit(cid)
        for cid, (status, reason) in zip(ids, cases):
            dead = wait_state(self.d, cid, "dead")
            self.assertEqual(len(dead), 1)
            self.assertEqual(dead[0]["HTTP_STATUS"], str(status))
            self.assertEqual(dead[0]["UPSTREAM_ERROR"], reason)
            self.assertEqual(self.d.ledger_row(cid)["attempt"], 1)


class Uncertain(unittest.TestCase):
    """200 with garbage, JSON without an id, a connection cut after sending: the task may exist."""

    def setUp(self):
        harness.ensure_journald()
        self.fake = FakeUpstream(complete_after_ms=100)
        self.fake.start()

    def tearDown(self):
        self.fake.stop()

    def run_policy(self, policy):
        ids = new_creation_ids(3)
        for cid, action in zip(ids, ("garbage", "no_id", "drop")):
            self.fake.faults([{"on": "submit", "creation_id": cid, "action": action}])
        with Daemon({"upstream": {"base_url": self.fake.url}, "retry": {"uncertain": policy}}, fake=self.fake) as d:
            for cid in ids:
                self.assertEqual(d.post(body=make_task("9300000000000002", [cid]))[0], 202)
            for cid in ids:
                if policy == "hold":
                    held = wait_state(d, cid, "uncertain")
                    self.assertEqual(len(held), 1)
                else:
                    wait_state(d, cid, "succeeded")
                protocol = wait_journal(lambda: [e for e in harness.journal_entries(_PID=str(d.pid))
                                                 if cid in e.get("MESSAGE", "") and "protocol" in e.get("MESSAGE", "").lower()])
                self.assertEqual(protocol[0]["PRIORITY"], "4")
            return d, ids

    def test_hold_sends_nothing_more(self):
        d, ids = self.run_policy("hold")
        stats = self.fake.stats()
        for cid in ids:
            # The upstream created it once; the daemon did not send it again.
            self.assertEqual(stats["created"].get(cid), 1)
        self.assertEqual(stats["submit_requests"], 3)

    def test_cut_on_a_kept_alive_connection_is_not_sent_again(self):
        # libcurl re-sends a request by itself when a reused keep-alive connection dies before
        # any answer. Submissions reuse connections, but such a resend must never happen.
        warm, cut = new_creation_ids(2)
        self.fake.faults([{"on": "submit", "creation_id": cut, "action": "drop"}])
        with Daemon({"upstream": {"base_url": self.fake.url, "concurrency": "1"}}, fake=self.fake) as d:
            self.assertEqual(d.post(body=make_task("9300000000000012", [warm]))[0], 202)
            wait_state(d, warm, "submitted")
            self.assertEqual(d.post(body=make_task("9300000000000013", [cut]))[0], 202)
            wait_state(d, cut, "uncertain")
            stats = self.fake.stats()
            # The cut request went out on the warm request's connection ...
            self.assertEqual(stats["reused_submit_requests"], 1)
            # ... and was sent once: the upstream created it once and saw two submissions in all.
            self.assertEqual(stats["created"].get(cut), 1)
            self.assertEqual(stats["submit_requests"], 2)

    def test_resubmit_tries_again(self):
        d, ids = self.run_policy("resubmit")
        for cid in ids:
            self.assertEqual(self.fake.stats()["created"].get(cid), 2)


class AccountWide(unittest.TestCase):
    def setUp(self):
        harness.ensure_journald()
        self.fake = FakeUpstream(complete_after_ms=100)
        self.fake.start()

    def tearDown(self):
        self.fake.stop()

    def check_pause(self, fault):
        ids = new_creation_ids(4)
        self.fake.faults([dict(fault, on="submit", times=3)])
        with Daemon({"upstream": {"base_url": self.fake.url, "concurrency": "1"},
                     "retry": {"initial_delay": "100ms", "max_delay": "500ms", "max_attempts": "2"}},
                    fake=self.fake) as d:
            self.assertEqual(d.post(body=make_task("9300000000000003", ids))[0], 202)
            for cid in ids:
                done = wait_state(d, cid, "succeeded", timeout=30)
                sub = [e for e in entries_for(d, cid) if e.get("JOB_STATE") == "submitted"][0]
                # No job lost an attempt to the account-wide error.
                self.assertEqual(sub["ATTEMPT"], "1")
                self.assertTrue(done)
            paused = [e for e in harness.journal_entries(_PID=str(d.pid)) if "paused" in e.get("MESSAGE", "").lower()]
            # One pause for the account-wide error, however many jobs met it. A machine loaded
            # enough (valgrind) may also see a submission time out first: an outage, a pause of
            # its own, which is not this error's.
            ours = [e for e in paused if fault["reason"] in e["MESSAGE"]]
            self.assertEqual(len(ours), 1, [e["MESSAGE"] for e in paused])
            others = [e for e in paused if fault["reason"] not in e["MESSAGE"]]
            self.assertTrue(all("cannot be reached" in e["MESSAGE"] for e in others),
                            [e["MESSAGE"] for e in paused])
            resumed = [e for e in harness.journal_entries(_PID=str(d.pid)) if "resumed" in e.get("MESSAGE", "").lower()]
            self.assertEqual(len(resumed), len(paused))
            self.assertEqual(len([r for r in d.ledger_rows() if r["state"] == "dead"]), 0)

    def test_unauthorized(self):
        self.check_pause({"status": 401, "reason": "Unauthorized"})

    def test_forbidden(self):
        self.check_pause({"status": 403, "reason": "Forbidden"})

    def test_credit_insufficient(self):
        self.check_pause({"status": 400, "reason": "CreditInsufficient"})

    def test_quota_exceeded(self):
        self.check_pause({"status": 429, "reason": "QuotaExceeded"})


class Outage(unittest.TestCase):
    def test_upstream_down_longer_than_all_retries(self):
        harness.ensure_journald()
        port = harness.free_port()
        ids = new_creation_ids(2)
        d = Daemon({"upstream": {"base_url": "http://127.0.0.1:%d" % port},
                    "retry": {"initial_delay": "100ms", "max_delay": "300ms", "max_attempts": "2"}})
        with d:
            self.assertEqual(d.post(body=make_task("9300000000000004", ids))[0], 202)
            wait_journal(lambda: [e for e in harness.journal_entries(_PID=str(d.pid))
                                  if "paused" in e.get("MESSAGE", "").lower()])
            # Well past what max_attempts would allow: still waiting, never dropped.
            poll(lambda: d.metrics_value("vidu_upscaled_dispatch_pauses_total") >= 1, what="the pause")
            poll(lambda: len(harness.journal_entries(_PID=str(d.pid), MESSAGE_ID="66b190521a06429ba25b772304ed80b0")) == 1,
                 what="one pause entry")
            rows = d.ledger_rows()
            self.assertEqual({r["state"] for r in rows} - {"waiting", "pending", "submitting"}, set())
            upstream_comes_back(self, d, port, ids)


class ConnectTimeout(unittest.TestCase):
    def test_connect_timeout_is_an_outage_not_a_lost_attempt(self):
        import socket
        harness.ensure_journald()
        # A listener that never accepts, its queue filled: further SYNs are dropped, so a
        # connect neither succeeds nor fails until connect_timeout.
        blackhole = socket.socket()
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        port = blackhole.getsockname()[1]
        fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        (cid,) = new_creation_ids(1)
        d = Daemon({"upstream": {"base_url": "http://127.0.0.1:%d" % port, "connect_timeout": "500ms"},
                    "retry": {"initial_delay": "100ms", "max_delay": "300ms", "max_attempts": "2"}})
        with d:
            self.assertEqual(d.post(body=make_task("9300000000000010", [cid]))[0], 202)
            paused = wait_journal(lambda: harness.journal_entries(
                _PID=str(d.pid), MESSAGE_ID="66b190521a06429ba25b772304ed80b0"), timeout=15)
            self.assertIn("cannot be reached", paused[0]["MESSAGE"])
            # Several probes later the job is still waiting with no attempt spent.
            poll(lambda: d.metrics_value("vidu_upscaled_submissions_total") >= 3, timeout=20, what="probes")
            row = d.ledger_row(cid)
            self.assertIn(row["state"], ("waiting", "submitting"))
            self.assertLessEqual(row["attempt"], 1)
            if row["state"] == "waiting":
                self.assertIn("timeout", row["upstream_error"].lower())
            # The upstream comes back on that port: the job goes through.
            for c in fillers:
                c.close()
            blackhole.close()
            upstream_comes_back(self, d, port, [cid])


class DnsFailure(unittest.TestCase):
    def test_name_that_does_not_resolve_is_an_outage(self):
        import http.client
        import socket as sock
        harness.ensure_journald()
        # The daemon runs in a network namespace of its own with no interfaces up, so resolving
        # the upstream's name fails at once and no query leaves the machine. It listens on a unix
        # socket, which the test reaches from outside the namespace.
        d = Daemon({"upstream": {"base_url": "http://upstream.vidu-upscaled.invalid"},
                    "retry": {"initial_delay": "100ms", "max_delay": "300ms", "max_attempts": "2"}},
                   wrapper=["unshare", "-n", "--"])
        path = os.path.join(d.tmp, "hooks.sock")
        d.config["server"]["listen"] = "unix:" + path

        class Unix(http.client.HTTPConnection):
            def connect(self):
                self.sock = sock.socket(sock.AF_UNIX, sock.SOCK_STREAM)
                self.sock.connect(path)

        with d:
            (cid,) = new_creation_ids(1)
            c = Unix("localhost", timeout=10)
            c.request("POST", "/hooks/vidu", body=json.dumps(make_task("9300000000000011", [cid])),
                      headers={"Content-Type": "application/json"})
            self.assertEqual(c.getresponse().status, 202)
            c.close()
            paused = wait_journal(lambda: harness.journal_entries(
                _PID=str(d.pid), MESSAGE_ID="66b190521a06429ba25b772304ed80b0"), timeout=15)
            self.assertIn("cannot be reached", paused[0]["MESSAGE"])

            def row():
                r = d.ledger_row(cid)
                return r if r and r["state"] == "waiting" and r["upstream_error"] else None
            r = poll(row, what="the job back in waiting")
            self.assertIn("resolve", r["upstream_error"].lower())
            self.assertEqual(r["attempt"], 0)


class Crash(unittest.TestCase):
    def test_interrupted_submission_is_held(self):
        harness.ensure_journald()
        fake = FakeUpstream(complete_after_ms=100)
        fake.start()
        (cid,) = new_creation_ids(1)
        fake.faults([{"on": "submit", "creation_id": cid, "delay_ms": 5000, "status": 500}])
        config = {"upstream": {"base_url": fake.url}}
        if harness.ON_PG:
            # On PostgreSQL the restarted daemon is another instance (the default store.instance
            # holds the pid): it treats the dead one's `submitting` job as a restart would once
            # that claim's lease lapses (within 2 x store.lease), so the lease is kept short.
            config["store"] = {"lease": "2s"}
        d = Daemon(config, fake=fake)
        try:
            d.start()
            self.assertEqual(d.post(body=make_task("9300000000000005", [cid]))[0], 202)
            poll(lambda: fake.stats()["submit_requests"] >= 1, what="the submission in flight")
            d.kill(signal.SIGKILL)
            d.wait_exit(timeout=10)
            d.start()
            held = wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                         if e.get("JOB_STATE") == "uncertain"])
            self.assertEqual(held[0]["PRIORITY"], "4")
            self.assertEqual(d.ledger_row(cid)["state"], "uncertain")
            # The operator releases it; it is submitted once more and succeeds.
            out = subprocess.run([d.binary, "-c", d.config_path, "jobs", "list", "uncertain"],
                                 capture_output=True, text=True, env=d.environment())
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn(cid, out.stdout)
            out = subprocess.run([d.binary, "-c", d.config_path, "jobs", "retry", cid],
                                 capture_output=True, text=True, env=d.environment())
            self.assertEqual(out.returncode, 0, out.stderr)
            wait_state(d, cid, "succeeded", timeout=20)
            out = subprocess.run([d.binary, "-c", d.config_path, "jobs", "abandon", cid],
                                 capture_output=True, text=True, env=d.environment())
            self.assertNotEqual(out.returncode, 0)  # a succeeded job cannot be abandoned
        finally:
            d.stop()
            fake.stop()

    @harness.sqlite_only("a damaged ledger file; a PostgreSQL ledger has no file of ours to damage")
    def test_damaged_ledger_is_a_clear_error(self):
        harness.ensure_journald()
        d = Daemon({"upstream": {"base_url": "http://127.0.0.1:9"}})
        d.write_config()
        with open(d.ledger_path, "wb") as f:
            f.write(b"SQLite format 3\x00" + os.urandom(8192))
        proc = subprocess.run([d.binary, "-c", d.config_path], capture_output=True, text=True,
                              env=d.environment(), timeout=30)
        self.assertEqual(proc.returncode, 1)
        self.assertIn(d.ledger_path, proc.stderr)
        self.assertIn("damaged", proc.stderr)
        self.assertTrue(os.path.getsize(d.ledger_path) > 8192)  # untouched, never reset


class IntegrityCheckAtStart(unittest.TestCase):
    """The integrity check reads the whole ledger (seconds on millions of jobs): it runs at a start
    after anything but a clean stop, and a clean stop spares the next start it."""

    @harness.sqlite_only("the SQLite file's integrity check; PostgreSQL checks its own pages")
    def test_check_after_kill_not_after_clean_stop(self):
        import sqlite3
        harness.ensure_journald()
        checking = "Checking the ledger's integrity after an unclean stop"

        def said_checking(d):
            return [e for e in harness.journal_entries(_PID=str(d.pid)) if checking in e.get("MESSAGE", "")]

        def marked(d):
            db = sqlite3.connect(d.ledger_path, timeout=5)
            try:
                return db.execute("SELECT value FROM meta WHERE key = 'closed_clean'").fetchall()
            finally:
                db.close()

        with FakeUpstream(complete_after_ms=50) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}}, fake=fake)
            try:
                d.start()  # a new ledger: checked (nothing vouches for it)
                harness.wait_journal(lambda: said_checking(d))
                (cid,) = new_creation_ids(1)
                self.assertEqual(d.post(body=make_task("9300000000000030", [cid]))[0], 202)
                self.assertEqual(d.stop(), 0)
                self.assertEqual(marked(d), [("1",)])
                d.start()  # after a clean stop: no check, and the mark is gone while it runs
                d.wait_ledger()
                self.assertEqual(marked(d), [])
                harness.wait_journal(lambda: [e for e in harness.journal_entries(_PID=str(d.pid))
                                              if "listening on" in e.get("MESSAGE", "")])
                self.assertEqual(said_checking(d), [])
                d.kill(signal.SIGKILL)
                d.wait_exit(timeout=10)
                self.assertEqual(marked(d), [])
                d.start()  # after kill -9: checked again
                harness.wait_journal(lambda: said_checking(d))
                self.assertEqual(d.stop(), 0)
            finally:
                d.stop()


@harness.sqlite_only("SQLite's file write lock (BEGIN EXCLUSIVE from another process); the database "
                     "frozen, restarted or unreachable is test_pgdaemon's")
class LedgerLocked(unittest.TestCase):
    def test_locked_ledger_answers_503_and_recovers(self):
        import sqlite3
        harness.ensure_journald()
        with FakeUpstream(complete_after_ms=100) as fake:
            with Daemon({"upstream": {"base_url": fake.url}}, fake=fake) as d:
                (first, second) = new_creation_ids(2)
                self.assertEqual(d.post(body=make_task("9300000000000008", [first]))[0], 202)
                # Another process holds the write lock (an operator's long transaction, say).
                db = sqlite3.connect(d.config["store"]["path"], timeout=1, isolation_level=None)
                db.execute("BEGIN EXCLUSIVE")
                status, headers, _ = d.post(body=make_task("9300000000000009", [second]))
                self.assertEqual(status, 503)
                self.assertTrue(headers.get("retry-after"))
                db.execute("ROLLBACK")
                db.close()
                poll(lambda: d.get("/healthz")[0] == 200, what="recovery")
                self.assertNotIn(second, {r["creation_id"] for r in d.ledger_rows()})
                self.assertEqual(d.post(body=make_task("9300000000000009", [second]))[0], 202)
                wait_state(d, second, "succeeded")


@harness.sqlite_only("the SQLite file and its WAL on a full tmpfs")
class DiskFull(unittest.TestCase):
    def test_disk_full_answers_503_and_recovers(self):
        harness.ensure_journald()
        mnt = tempfile.mkdtemp(prefix="vidu-tmpfs-")
        # Room for the ledger's working set once the filler is gone: the WAL alone grows to about
        # 4 MiB (1000 pages) before a checkpoint. On 4 MiB the 2000 jobs below filled the disk
        # again with their own WAL, before any checkpoint, in 4 of 10 runs, and the test then
        # waited for a job that could not move.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], check=True)
        fake = FakeUpstream(complete_after_ms=100)
        fake.start()
        d = Daemon({"upstream": {"base_url": fake.url}, "store": {"path": os.path.join(mnt, "ledger.db")}}, fake=fake)
        filler = os.path.join(mnt, "filler")
        try:
            d.start()
            (first,) = new_creation_ids(1)
            self.assertEqual(d.post(body=make_task("9300000000000006", [first]))[0], 202)
            # Unbuffered: a buffered file keeps what the full disk refused and raises again when
            # closed, depending on how the free space divides into the writes.
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            big = new_creation_ids(2000)
            status, headers, _ = d.post(body=make_task("9300000000000007", big))
            self.assertEqual(status, 503)
            self.assertTrue(headers.get("retry-after"))
            self.assertEqual(d.get("/healthz")[0], 503)
            os.unlink(filler)
            poll(lambda: d.get("/healthz")[0] == 200, timeout=15, what="recovery")
            # Nothing of the refused batch was half-recorded; the retried delivery is whole.
            known = {r["creation_id"] for r in d.ledger_rows()}
            self.assertFalse(known & set(big))
            status, _, raw = d.post(body=make_task("9300000000000007", big))
            self.assertEqual(status, 202)
            self.assertEqual(len(json.loads(raw)["accepted"]), 2000)
            wait_state(d, first, "succeeded")
        finally:
            d.stop()
            fake.stop()
            subprocess.run(["umount", "-l", mnt])


if __name__ == "__main__":
    unittest.main(verbosity=2)
