#!/usr/bin/env python3
"""test_pipeline.py: the core pipeline end to end: the real daemon, the fake upstream, a real
journald read back with journalctl. Every fixture shape, duplicates, restart, retries, dead jobs,
outcomes followed (and a late poll's answer ignored), the daemon's own upscales never upscaled
again, the API key never printed."""
import json
import os
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids, wait_journal  # noqa: E402


states_of = harness.job_states  # a folded `submitted` entry counts as `accepted`, `submitted`


class Pipeline(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=300)
        cls.fake.start()
        cls.daemon = Daemon({"upstream": {"base_url": cls.fake.url}}, fake=cls.fake)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        cls.fake.stop()

    def journal(self, cid, **match):
        return harness.journal_entries(CREATION_ID=cid, _PID=str(self.daemon.pid), **match)

    def wait_state(self, cid, state, timeout=15):
        return wait_journal(lambda: [e for e in self.journal(cid) if e.get("JOB_STATE") == state], timeout=timeout)

    def post(self, body, **kw):
        status, headers, raw = self.daemon.post(body=body, **kw)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, headers, parsed

    # --- shapes -------------------------------------------------------------------------

    def test_bare_task_two_creations_followed_to_success(self):
        a, b = new_creation_ids(2)
        status, _, body = self.post(make_task("9100000000000001", [a, b]))
        self.assertEqual(status, 202)
        self.assertEqual(sorted(body["accepted"]), sorted([a, b]))
        for cid in (a, b):
            done = self.wait_state(cid, "succeeded")
            self.assertTrue(done[0]["RESULT_URL"].startswith("http://"))
            self.assertTrue(done[0]["UPSCALE_TASK_ID"])
            entries = self.journal(cid)
            self.assertEqual(states_of(entries)[:3], ["accepted", "submitted", "succeeded"])
            submitted = [e for e in entries if e.get("JOB_STATE") == "submitted"][0]
            self.assertEqual(submitted["SOURCE_TASK_ID"], "9100000000000001")
            self.assertEqual(submitted["ATTEMPT"], "1")
            # Entries carry a MESSAGE_ID per kind and the caller's source location.
            self.assertEqual(len(submitted["MESSAGE_ID"]), 32)
            self.assertTrue(submitted["CODE_FILE"].endswith(".c"))
            self.assertTrue(int(submitted["CODE_LINE"]) > 0)
            self.assertEqual(submitted["SYSLOG_IDENTIFIER"], "vidu-upscaled")
        stats = self.fake.stats()
        self.assertEqual(stats["created"].get(a), 1)
        self.assertEqual(stats["created"].get(b), 1)
        rows = {r["creation_id"]: r for r in self.daemon.ledger_rows()}
        self.assertEqual(rows[a]["state"], "succeeded")
        self.assertTrue(rows[a]["result_url"])

    def test_every_fixture_shape(self):
        expected = {
            "task-success-v1.json": (202, ["2370483030340581", "2370483030340582"]),
            "callback-success-ent-v2.json": (202, ["811935520102486016"]),
            "envelope-data.json": (202, ["2370483030340600"]),
            "batch-array.json": (202, ["2370483030340700", "2370483030340701", "2370483030340702"]),
            "task-processing-v1.json": (200, []),
            "task-failed-v1.json": (200, []),
        }
        # A daemon of its own, so the fixtures' fixed ids are new to its ledger.
        with Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake) as d:
            for name, (want_status, want_ids) in expected.items():
                status, _, raw = d.post_fixture(name)
                body = json.loads(raw)
                self.assertEqual(status, want_status, name)
                self.assertEqual(sorted(body["accepted"]), sorted(want_ids), name)
            # The batch's queued task is skipped, not accepted.
            self.assertEqual(self.fake.stats()["created"].get("2370483030340700", 0) >= 0, True)
            for ids in [v[1] for v in expected.values()]:
                for cid in ids:
                    wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                          if e.get("JOB_STATE") == "submitted"], timeout=15)
            # Nothing was submitted for the unfinished or failed tasks.
            rows = {r["creation_id"] for r in d.ledger_rows()}
            self.assertEqual(rows, {cid for v in expected.values() for cid in v[1]})
            # The upscale's own outcome (fixture) is not a trigger either.
            status, _, raw = d.post_fixture("upscale-success-v1.json")
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(raw)["accepted"], [])
            self.assertNotIn("2371000000000099", {r["creation_id"] for r in d.ledger_rows()})

    # --- exactly once ------------------------------------------------------------------------

    def test_duplicate_is_not_submitted_again(self):
        (cid,) = new_creation_ids(1)
        status, _, body = self.post(make_task("9100000000000002", [cid]))
        self.assertEqual(status, 202)
        status, _, body = self.post(make_task("9100000000000002", [cid]))
        self.assertEqual(status, 200)
        self.assertEqual(body["duplicate"], [cid])
        self.assertEqual(body["accepted"], [])
        self.wait_state(cid, "succeeded")
        self.assertEqual(self.fake.stats()["created"].get(cid), 1)
        self.assertEqual(len([e for e in self.journal(cid) if e.get("JOB_STATE") == "duplicate"]), 1)

    def test_own_upscale_outcome_is_recorded_never_upscaled(self):
        (cid,) = new_creation_ids(1)
        # Slow the fake down so the notification, not the poll, closes the job.
        with Daemon({"upstream": {"base_url": self.fake.url, "poll_interval": "1h"}}, fake=self.fake) as d:
            self.assertEqual(d.post(body=make_task("9100000000000003", [cid]))[0], 202)
            sub = wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                        if e.get("JOB_STATE") == "submitted"])
            upscale_id = sub[0]["UPSCALE_TASK_ID"]
            # The official callback shape: task_id, no type, a creation of its own.
            outcome = {"task_id": upscale_id, "state": "success",
                       "creations": [{"id": "9" + cid[1:], "url": "https://media.example.invalid/hd.mp4"}]}
            status, _, raw = d.post(body=outcome)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(raw)["accepted"], [])
            done = wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                         if e.get("JOB_STATE") == "succeeded"])
            self.assertEqual(done[0]["RESULT_URL"], "https://media.example.invalid/hd.mp4")
            self.assertEqual(done[0]["UPSCALE_TASK_ID"], upscale_id)
            self.assertNotIn("9" + cid[1:], {r["creation_id"] for r in d.ledger_rows()})
            self.assertEqual(self.fake.stats()["created"].get(cid), 1)

    def test_poll_answered_after_the_outcome_changes_nothing(self):
        """A poll in flight when the notification of the outcome closes the job: its late answer
        is saved from the copy the poll was taken with, which must not overwrite the ledger."""
        (cid,) = new_creation_ids(1)
        with FakeUpstream(complete_after_ms=100) as fake:
            fake.faults([{"on": "poll", "creation_id": cid, "action": "delay", "delay_ms": 1500}])
            with Daemon({"upstream": {"base_url": fake.url, "poll_interval": "100ms"}}, fake=fake) as d:
                task = make_task("9100000000000009", [cid])
                self.assertEqual(d.post(body=task)[0], 202)
                sub = wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                            if e.get("JOB_STATE") == "submitted"])
                upscale_id = sub[0]["UPSCALE_TASK_ID"]
                harness.poll(lambda: fake.stats()["polls"] >= 1, what="the delayed poll")
                outcome = {"task_id": upscale_id, "state": "success",
                           "creations": [{"id": "9" + cid[1:], "url": "https://media.example.invalid/a.mp4"}]}
                self.assertEqual(d.post(body=outcome)[0], 200)
                self.assertEqual(d.ledger_row(cid)["state"], "succeeded")
                # The poll's answer (success, with the fake's own URL) comes back and is applied.
                harness.poll(lambda: d.metrics_value("vidu_upscaled_upstream_in_flight") == 0,
                             what="the poll's answer")
                # A request after it is answered after the turn that applied it, and its entry
                # reaches the journal after any entry of that turn.
                self.assertEqual(d.post(body=task)[0], 200)  # nothing new in it
                wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                      if e.get("JOB_STATE") == "duplicate"])
                row = d.ledger_row(cid)
                self.assertEqual(row["state"], "succeeded")
                self.assertEqual(row["result_url"], "https://media.example.invalid/a.mp4")
                done = [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                        if e.get("JOB_STATE") == "succeeded"]
                self.assertEqual(len(done), 1)
                self.assertEqual(fake.stats()["polls"], 1)

    def test_restart_keeps_the_ledger(self):
        (cid,) = new_creation_ids(1)
        with Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake) as d:
            self.assertEqual(d.post(body=make_task("9100000000000004", [cid]))[0], 202)
            wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                  if e.get("JOB_STATE") == "succeeded"])
            self.assertEqual(d.stop(), 0)
            d.start()
            status, _, raw = d.post(body=make_task("9100000000000004", [cid]))
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(raw)["duplicate"], [cid])
        self.assertEqual(self.fake.stats()["created"].get(cid), 1)

    # --- retries, dead jobs ------------------------------------------------------------------

    def test_retries_then_success(self):
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "times": 2, "status": 503,
                           "reason": "InternalServiceFailure"}])
        self.assertEqual(self.post(make_task("9100000000000005", [cid]))[0], 202)
        done = self.wait_state(cid, "succeeded", timeout=20)
        entries = self.journal(cid)
        retrying = [e for e in entries if e.get("JOB_STATE") == "retrying"]
        self.assertEqual(len(retrying), 2)
        self.assertEqual({e["HTTP_STATUS"] for e in retrying}, {"503"})
        self.assertEqual([e["ATTEMPT"] for e in retrying], ["1", "2"])
        self.assertIn("InternalServiceFailure", retrying[0]["UPSTREAM_ERROR"])
        submitted = [e for e in entries if e.get("JOB_STATE") == "submitted"]
        self.assertEqual(submitted[0]["ATTEMPT"], "3")
        self.assertTrue(done[0]["RESULT_URL"])

    def test_final_error_makes_the_job_dead_once(self):
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "times": -1, "status": 404,
                           "reason": "CreationNotFound"}])
        self.assertEqual(self.post(make_task("9100000000000006", [cid]))[0], 202)
        dead = self.wait_state(cid, "dead")
        self.assertEqual(dead[0]["HTTP_STATUS"], "404")
        self.assertIn("CreationNotFound", dead[0]["UPSTREAM_ERROR"])
        time.sleep(0)  # nothing to wait for: the attempt count below is already final
        self.assertEqual(self.daemon.ledger_row(cid)["attempt"], 1)
        self.assertEqual(self.fake.stats()["created"].get(cid, 0), 0)

    def test_attempts_exhausted_makes_the_job_dead(self):
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "times": -1, "status": 500}])
        with Daemon({"upstream": {"base_url": self.fake.url}, "retry": {"max_attempts": "3"}}, fake=self.fake) as d:
            self.assertEqual(d.post(body=make_task("9100000000000007", [cid]))[0], 202)
            dead = wait_journal(lambda: [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(d.pid))
                                         if e.get("JOB_STATE") == "dead"], timeout=20)
            self.assertEqual(dead[0]["ATTEMPT"], "3")
            self.assertEqual(d.ledger_row(cid)["state"], "dead")

    # --- HTTP answers ---------------------------------------------------------------------------

    def test_http_answers(self):
        self.assertEqual(self.daemon.post(body=b"{not json")[0], 400)
        self.assertEqual(self.daemon.post(body={"hello": "world"})[0], 400)
        self.assertEqual(self.daemon.post(body=[])[0], 400)
        self.assertEqual(self.daemon.post(path="/elsewhere", body={})[0], 404)
        self.assertEqual(self.daemon.get("/hooks/vidu")[0], 405)
        self.assertEqual(self.daemon.post(body=b"{}", content_type="text/plain")[0], 415)
        # Declared too large: answered before the body is sent at all.
        s = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10)
        s.sendall(b"POST /hooks/vidu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2097152\r\n\r\n")
        self.assertIn(b" 413 ", s.recv(1000).split(b"\r\n")[0])
        s.close()
        self.assertEqual(self.daemon.get("/healthz")[0], 200)
        # The daemon still works after all that.
        (cid,) = new_creation_ids(1)
        self.assertEqual(self.post(make_task("9100000000000008", [cid]))[0], 202)

    def test_unusable_ids_do_not_fail_the_rest(self):
        (cid,) = new_creation_ids(1)
        task = make_task("9100000000000009", [cid])
        task["creations"] += [{"id": ""}, {"id": "x" * 129}, {"id": "bad\u0001id"}]
        status, _, body = self.post(task)
        self.assertEqual(status, 202)
        self.assertEqual(body["accepted"], [cid])
        self.assertEqual(len(body["rejected"]), 3)

    # --- secrets ----------------------------------------------------------------------------------

    def test_api_key_never_printed(self):
        (cid,) = new_creation_ids(1)
        self.post(make_task("9100000000000010", [cid]))
        self.wait_state(cid, "succeeded")
        out = subprocess.run(["journalctl", "-o", "json", "--no-pager", "_PID=%d" % self.daemon.pid],
                             capture_output=True, text=True, check=True).stdout
        self.assertTrue(out)
        self.assertNotIn(self.daemon.api_key, out)
        self.assertNotIn(self.daemon.api_key, self.daemon.stderr_text())
        # The fake upstream did receive it.
        self.assertTrue(self.fake.stats()["last_authorization_ok"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
