#!/usr/bin/env python3
"""test_callbacks.py: upstream callbacks end to end: the real daemon with auth.scheme = vidu, the
fake upstream calling back signed, a real journald. Submissions carry callback_url (and, on
ent-v2, the source payload or one naming the creation); a callback closes its job with no poll;
a failed callback fails it; a processing callback changes nothing; an unknown upscale id makes
no job; an unsigned callback is refused; a withheld callback is made up for by a poll after
upstream.callback_grace; the metric tells the two apart."""
import base64
import email.utils
import hashlib
import hmac
import json
import os
import sys
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, new_creation_ids, wait_journal  # noqa: E402

MARK = "vidu_upscaled=callback"


def vidu_headers(key, method, path, query):
    """The official callback signature, computed here from the documented algorithm."""
    date = email.utils.formatdate(usegmt=True)
    nonce = str(uuid.uuid4())
    text = "%s\n%s\n%s\nvidu\n%s\nDate:%s\nx-request-nonce:%s\n" % (method, path or "/", query or "", date,
                                                                    date, nonce)
    sig = base64.b64encode(hmac.new(key.encode(), text.encode(), hashlib.sha256).digest()).decode()
    return {"Date": date, "x-request-nonce": nonce, "X-HMAC-SIGNED-HEADERS": "Date;x-request-nonce",
            "X-HMAC-SIGNATURE": sig, "X-HMAC-ALGORITHM": "hmac-sha256", "X-HMAC-ACCESS-KEY": "vidu"}


def callback_daemon(fake, flavor, grace):
    d = Daemon({"upstream": {"base_url": fake.url, "flavor": flavor, "callback_grace": grace},
                "auth": {"scheme": "vidu", "secret": fake.api_key}}, fake=fake)
    d.config["upstream"]["callback_url"] = d.url + "/hooks/vidu"
    return d


class Callbacks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=300)
        cls.fake.start()
        # Callbacks on, the first poll 10 minutes away: any outcome within a test is a callback's.
        cls.v2 = callback_daemon(cls.fake, "ent-v2", "10m").start()
        # The gateway flavour, and a short grace for the poll that makes up for a lost callback.
        cls.grace = 2 * harness.TIMEOUT_SCALE
        cls.v1 = callback_daemon(cls.fake, "v1", "%ds" % cls.grace).start()

    @classmethod
    def tearDownClass(cls):
        cls.v2.stop()
        cls.v1.stop()
        cls.fake.stop()

    def setUp(self):
        self.fake.callbacks(sign=True, processing=False, withhold=False)

    # --- helpers ----------------------------------------------------------------------------------

    def signed_post(self, daemon, body, url=None):
        parts = urllib.parse.urlsplit(url or daemon.url + "/hooks/vidu")
        target = parts.path + ("?" + parts.query if parts.query else "")
        status, _, raw = daemon.post(path=target, body=body,
                                     headers=vidu_headers(daemon.api_key, "POST", parts.path, parts.query))
        return status, json.loads(raw) if raw else None

    def notify(self, daemon, cid, payload=None):
        """The generation's own notification, as the official API sends it (signed too: the scheme
        covers the whole webhook)."""
        task = {"task_id": "77" + cid[2:], "state": "success", "err_code": "", "credits": 8,
                "creations": [{"id": cid, "url": "https://media.example.invalid/%s.mp4" % cid}]}
        if payload is not None:
            task["payload"] = payload
        status, body = self.signed_post(daemon, task)
        self.assertEqual(status, 202, body)
        self.assertEqual(body["accepted"], [cid])

    def entries(self, daemon, cid, state):
        return [e for e in harness.journal_entries(CREATION_ID=cid, _PID=str(daemon.pid))
                if e.get("JOB_STATE") == state]

    def wait_state(self, daemon, cid, state, timeout=15):
        return wait_journal(lambda: self.entries(daemon, cid, state), timeout=timeout)

    def task_of(self, cid):
        tasks = harness.poll(lambda: self.fake.tasks(cid), what="the fake's task for " + cid)
        self.assertEqual(len(tasks), 1)
        return tasks[0]

    def outcome_count(self, daemon, via, state):
        return daemon.metrics_value('vidu_upscaled_outcomes_total{via="%s",state="%s"}' % (via, state))

    # --- ent-v2 -------------------------------------------------------------------------------------

    def test_ent_v2_callback_closes_the_job_without_a_poll(self):
        (cid,) = new_creation_ids(1)
        payload = '{"pipeline": "edit-42", "note": "caf\u00e9 \\"quoted\\"\\n"}'
        before = self.outcome_count(self.v2, "callback", "succeeded")
        self.notify(self.v2, cid, payload)
        done = self.wait_state(self.v2, cid, "succeeded")[0]
        task = self.task_of(cid)
        body = json.loads(task["body"])
        self.assertEqual(task["flavor"], "ent-v2")
        self.assertEqual(body["video_creation_id"], cid)
        self.assertEqual(body["callback_url"], self.v2.url + "/hooks/vidu?" + MARK)
        # The source's payload, untouched.
        self.assertEqual(body["payload"], payload)
        # Closed by the signed callback (answered 200), never polled.
        self.assertEqual(task["callbacks"], [{"state": "success", "status": 200}])
        self.assertEqual(task["polls"], 0)
        self.assertEqual(done["RESULT_URL"], "http://127.0.0.1:%d/media/%s.mp4" % (self.fake.port, task["id"]))
        self.assertEqual(done["UPSCALE_TASK_ID"], task["id"])
        self.assertIn("(callback)", done["MESSAGE"])
        row = self.v2.ledger_row(cid)
        self.assertEqual(row["state"], "succeeded")
        self.assertEqual(row["result_url"], done["RESULT_URL"])
        self.assertEqual(row["payload"], payload)
        self.assertEqual(self.outcome_count(self.v2, "callback", "succeeded"), before + 1)
        self.assertEqual(self.outcome_count(self.v2, "poll", "succeeded"), 0)

    def test_ent_v2_generated_payload_names_the_creation(self):
        (cid,) = new_creation_ids(1)
        self.notify(self.v2, cid)
        self.wait_state(self.v2, cid, "succeeded")
        body = json.loads(self.task_of(cid)["body"])
        self.assertIsInstance(body["payload"], str)
        self.assertEqual(json.loads(body["payload"]), {"creation_id": cid})
        self.assertIsNone(self.v2.ledger_row(cid)["payload"])

    def test_failed_callback_fails_the_job(self):
        (cid,) = new_creation_ids(1)
        self.fake.outcome(cid, "failed", "UpscaleSourceTooLarge")
        before = self.outcome_count(self.v2, "callback", "failed")
        self.notify(self.v2, cid)
        failed = self.wait_state(self.v2, cid, "failed")[0]
        self.assertEqual(failed["UPSTREAM_ERROR"], "UpscaleSourceTooLarge")
        task = self.task_of(cid)
        self.assertEqual(task["callbacks"], [{"state": "failed", "status": 200}])
        self.assertEqual(task["polls"], 0)
        self.assertEqual(self.v2.ledger_row(cid)["state"], "failed")
        self.assertEqual(self.outcome_count(self.v2, "callback", "failed"), before + 1)

    def test_processing_callback_changes_nothing(self):
        (cid,) = new_creation_ids(1)
        self.fake.callbacks(withhold=True, creation_id=cid)
        self.notify(self.v2, cid)
        self.wait_state(self.v2, cid, "submitted")
        task = self.task_of(cid)
        callback_url = json.loads(task["body"])["callback_url"]
        row = self.v2.ledger_row(cid)
        processing = {"task_id": task["id"], "state": "processing", "err_code": "", "credits": 0,
                      "payload": "x", "creations": []}
        status, body = self.signed_post(self.v2, processing, callback_url)
        self.assertEqual(status, 200)
        self.assertEqual(body["accepted"], [])
        after = self.v2.ledger_row(cid)
        self.assertEqual(after["state"], "submitted")
        self.assertEqual(after["updated_at"], row["updated_at"])
        # A success with creations, sent as a callback, is this job's outcome, not a new job.
        upscaled = "9" + task["id"]
        success = dict(processing, state="success",
                       creations=[{"id": upscaled, "url": "https://media.example.invalid/up.mp4"}])
        status, body = self.signed_post(self.v2, success, callback_url)
        self.assertEqual(status, 200)
        self.assertEqual(body["accepted"], [])
        done = self.wait_state(self.v2, cid, "succeeded")[0]
        self.assertEqual(done["RESULT_URL"], "https://media.example.invalid/up.mp4")
        self.assertIsNone(self.v2.ledger_row(upscaled))
        # Told again (the upstream retries a callback it thinks was lost): nothing changes.
        status, _ = self.signed_post(self.v2, dict(success, state="failed", creations=[]), callback_url)
        self.assertEqual(status, 200)
        self.assertEqual(self.v2.ledger_row(cid)["state"], "succeeded")

    def test_unknown_upscale_id_is_answered_and_makes_no_job(self):
        (stray,) = new_creation_ids(1)
        unknown = "66" + stray[2:]
        before = {r["creation_id"] for r in self.v2.ledger_rows()}
        callback = {"task_id": unknown, "state": "success", "err_code": "", "credits": 4,
                    "creations": [{"id": stray, "url": "https://media.example.invalid/x.mp4"}]}
        status, body = self.signed_post(self.v2, callback, self.v2.url + "/hooks/vidu?" + MARK)
        self.assertEqual(status, 200)
        self.assertEqual(body["accepted"], [])
        self.assertEqual(body["ignored"], [unknown])
        logged = wait_journal(lambda: [e for e in harness.journal_entries(SOURCE_TASK_ID=unknown,
                                                                          _PID=str(self.v2.pid))])
        self.assertIn("does not know", logged[0]["MESSAGE"])
        self.assertIsNone(self.v2.ledger_row(stray))
        self.assertEqual({r["creation_id"] for r in self.v2.ledger_rows()} - before, set())

    def test_unsigned_callback_is_refused(self):
        (cid,) = new_creation_ids(1)
        self.fake.callbacks(sign=False)
        self.notify(self.v2, cid)
        task = harness.poll(lambda: [t for t in self.fake.tasks(cid) if t["callbacks"]],
                            what="the unsigned callback")[0]
        self.assertEqual(task["callbacks"], [{"state": "success", "status": 401}])
        self.assertEqual(self.v2.ledger_row(cid)["state"], "submitted")

    # --- v1, and the poll after the grace -------------------------------------------------------

    def test_v1_callback_closes_the_job_without_a_poll(self):
        (cid,) = new_creation_ids(1)
        self.notify(self.v1, cid, "ignored on v1")
        done = self.wait_state(self.v1, cid, "succeeded")[0]
        task = self.task_of(cid)
        body = json.loads(task["body"])
        self.assertEqual(task["flavor"], "v1")
        self.assertEqual(body["input"], {"creation_id": cid})
        self.assertEqual(body["callback_url"], self.v1.url + "/hooks/vidu?" + MARK)
        self.assertNotIn("payload", body)
        self.assertEqual(task["callbacks"], [{"state": "success", "status": 200}])
        self.assertEqual(task["polls"], 0)
        self.assertIn("(callback)", done["MESSAGE"])

    def test_withheld_callback_is_made_up_for_by_a_poll_after_the_grace(self):
        (cid,) = new_creation_ids(1)
        self.fake.callbacks(withhold=True, creation_id=cid)
        before = self.outcome_count(self.v1, "poll", "succeeded")
        self.notify(self.v1, cid)
        done = self.wait_state(self.v1, cid, "succeeded", timeout=15 + self.grace)[0]
        self.assertNotIn("(callback)", done["MESSAGE"])
        self.assertTrue(done["RESULT_URL"].startswith("http://"))
        task = self.task_of(cid)
        self.assertEqual(task["callbacks"], [])
        self.assertGreaterEqual(task["polls"], 1)
        # The first poll waited for the grace, not for poll_interval (200 ms here).
        waited = (task["first_poll_ns"] - task["created_ns"]) / 1e9
        self.assertGreaterEqual(waited, self.grace - 0.05)
        self.assertEqual(self.outcome_count(self.v1, "poll", "succeeded"), before + 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
