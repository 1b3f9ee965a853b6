#!/usr/bin/env python3
"""test_select.py: which finished tasks trigger an upscale ([select]) and upscale.duration =
source, against the real daemon, a real journald and the fake upstream: image and audio tasks,
image creations and untyped tasks by default; match rules (a member, a JSON string payload,
exists); the debug entry naming the rule; --check-config; bad rules refused with FILE:LINE and
exit 78; the source's duration in the body the fake received and in `jobs show`."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, new_creation_ids, poll  # noqa: E402

SKIPPED = "78af930dc5634721a5db8c06c6432ad4"
RELOADED = "86ab561882f04ec785c61221c6cbc1e1"


def task(task_id, creations, type="text2video", **extra):
    t = {"id": task_id, "state": "success",
         "creations": [c if isinstance(c, dict) else {"id": c, "uri": "https://m.invalid/%s.mp4" % c}
                       for c in creations]}
    if type is not None:
        t["type"] = type
    t.update(extra)
    return t


def new_task_ids(n):
    return ["7" + cid[1:] for cid in new_creation_ids(n)]


class Select(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=300)
        cls.fake.start()

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()

    def daemon(self, select=None, upscale=None):
        config = {"upstream": {"base_url": self.fake.url}, "log": {"level": "debug"}}
        if select:
            config["select"] = select
        if upscale:
            config["upscale"] = upscale
        return Daemon(config, fake=self.fake)

    def post(self, d, body):
        status, _, raw = d.post(body=body)
        return status, json.loads(raw)

    def skipped_entries(self, d, **match):
        return harness.journal_entries(MESSAGE_ID=SKIPPED, _PID=str(d.pid), **match)

    def wait_created(self, cids):
        poll(lambda: all(self.fake.stats()["created"].get(c) for c in cids), timeout=20,
             what="the submissions of %s" % cids)

    def jobs_show(self, d, cid):
        out = subprocess.run([d.binary, "-c", d.config_path, "jobs", "show", cid],
                             capture_output=True, text=True, env=d.environment())
        self.assertEqual(out.returncode, 0, out.stderr)
        return json.loads(out.stdout)

    def test_defaults_trigger_only_video(self):
        t_img, t_audio, t_video, t_plain = new_task_ids(4)
        c_img, c_audio, c_video, c_image, c_untyped, c_plain = new_creation_ids(6)
        batch = [
            task(t_img, [c_img], type="text2image"),
            task(t_audio, [c_audio], type="text2audio"),
            task(t_video, [{"id": c_video, "type": "video"}, {"id": c_image, "type": "image"},
                           {"id": c_untyped}], type="img2video"),
            # The official callback: task_id, no type.
            {"task_id": t_plain, "state": "success", "creations": [{"id": c_plain, "url": "https://m.invalid/x"}]},
        ]
        with self.daemon() as d:
            status, body = self.post(d, batch)
            self.assertEqual(status, 202)
            self.assertEqual(sorted(body["accepted"]), sorted([c_video, c_untyped, c_plain]))
            # The whole task's id when all of it is skipped, the creation's when only it is.
            self.assertEqual(sorted(body["ignored"]), sorted([t_img, t_audio, c_image]))
            self.wait_created([c_video, c_untyped, c_plain])
            rows = {r["creation_id"] for r in d.ledger_rows()}
            self.assertEqual(rows, {c_video, c_untyped, c_plain})
            created = self.fake.stats()["created"]
            for cid in (c_img, c_audio, c_image):
                self.assertNotIn(cid, created)
            self.assertEqual(d.metrics_value('vidu_upscaled_notifications_total{outcome="skipped"}'), 3)
            # Journaled at debug, naming what skipped each.
            e = harness.wait_journal(lambda: self.skipped_entries(d, SOURCE_TASK_ID=t_img))
            self.assertEqual(e[0]["SELECT_RULE"], "select.task_types")
            self.assertEqual(e[0]["PRIORITY"], "7")
            self.assertEqual(e[0]["JOB_STATE"], "skipped")
            self.assertIn("text2image", e[0]["MESSAGE"])
            e = harness.wait_journal(lambda: self.skipped_entries(d, CREATION_ID=c_image))
            self.assertEqual(e[0]["SELECT_RULE"], "select.creation_types")
            self.assertEqual(e[0]["SOURCE_TASK_ID"], t_video)
            # Nothing new: 200, and the answer still says what was skipped.
            status, body = self.post(d, batch[0])
            self.assertEqual(status, 200)
            self.assertEqual(body["ignored"], [t_img])
            # upscale.duration's default went out.
            self.assertEqual(self.fake.stats()["durations"][c_video], 4)
            self.assertEqual(self.jobs_show(d, c_video)["duration"], 4)

        # No job was recorded, so under other settings the same notification triggers.
        with self.daemon({"task_types": "*", "creation_types": "video image"}) as d:
            status, body = self.post(d, batch[:3])
            self.assertEqual(status, 202)
            self.assertEqual(sorted(body["accepted"]),
                             sorted([c_img, c_audio, c_video, c_image, c_untyped]))

    def test_match_rules(self):
        ids = new_task_ids(6)
        cids = new_creation_ids(6)
        rules = ["/settings/model in viduq1 vidu2.0",
                 "/payload/upscale = true",
                 "/creations/0/grade exists"]

        def t(i, model="viduq1", payload='{"upscale": true, "by": "ci"}', grade="A"):
            c = {"id": cids[i]}
            if grade is not None:
                c["grade"] = grade
            extra = {"settings": {"model": model, "duration": 4}}
            if payload is not None:
                extra["payload"] = payload
            return task(ids[i], [c], type="text2video", **extra)

        batch = [
            t(0),                                   # every rule holds
            t(1, model="vidu-1"),                   # not in the list
            t(2, payload='{"upscale": false}'),     # the payload says no
            t(3, grade=None),                       # no grade
            t(4, payload="not json", model={"name": "viduq1"}),  # unexpected types: no match
            t(5, payload='{"upscale": "true"}'),    # a string compares by its text
        ]
        with self.daemon({"match": rules}) as d:
            status, body = self.post(d, batch)
            self.assertEqual(status, 202)
            self.assertEqual(sorted(body["accepted"]), sorted([cids[0], cids[5]]))
            self.assertEqual(sorted(body["ignored"]), sorted(ids[1:5]))
            self.assertEqual(body["rejected"], [])
            self.wait_created([cids[0], cids[5]])
            self.assertEqual({r["creation_id"] for r in d.ledger_rows()}, {cids[0], cids[5]})
            want = {ids[1]: rules[0], ids[2]: rules[1], ids[3]: rules[2], ids[4]: rules[0]}
            for tid, rule in want.items():
                e = harness.wait_journal(lambda: self.skipped_entries(d, SOURCE_TASK_ID=tid))
                self.assertEqual(e[0]["SELECT_RULE"], rule)
                self.assertIn(rule, e[0]["MESSAGE"])
        # At info the same skip writes nothing: an entry written after it arrives, it does not.
        (t_ok,) = new_task_ids(1)
        (c_ok,) = new_creation_ids(1)
        with Daemon({"upstream": {"base_url": self.fake.url}, "select": {"match": rules}},
                    fake=self.fake) as d:
            ok = task(t_ok, [{"id": c_ok, "grade": "B"}], settings={"model": "vidu2.0"},
                      payload='{"upscale":true}')
            status, body = self.post(d, [t(1, model="vidu-1"), ok])
            self.assertEqual(status, 202)
            self.assertEqual(body["ignored"], [ids[1]])
            self.assertEqual(body["accepted"], [c_ok])
            harness.wait_journal(lambda: harness.accepted_entries(CREATION_ID=c_ok, _PID=str(d.pid)))
            self.assertEqual(self.skipped_entries(d, SOURCE_TASK_ID=ids[1]), [])

    def test_rules_follow_a_reload(self):
        (tid,) = new_task_ids(1)
        (cid,) = new_creation_ids(1)
        marked = task(tid, [cid], payload='{"upscale": "yes"}')
        with self.daemon({"match": "/payload/upscale = true"}) as d:
            status, body = self.post(d, marked)
            self.assertEqual((status, body["ignored"], body["accepted"]), (200, [tid], []))
            d.config["select"]["match"] = ["/payload/upscale in true yes"]
            d.write_config()
            d.kill(signal.SIGHUP)
            harness.wait_journal(lambda: harness.journal_entries(MESSAGE_ID=RELOADED, _PID=str(d.pid)))
            # Nothing was recorded the first time, so the same notification now triggers.
            status, body = self.post(d, marked)
            self.assertEqual((status, body["accepted"]), (202, [cid]))
            self.wait_created([cid])

    def test_duration_follows_the_source(self):
        t8, t_none, t_bad = new_task_ids(3)
        c8, c_none, c_bad = new_creation_ids(3)
        with self.daemon(upscale={"duration": "source"}) as d:
            status, body = self.post(d, [
                task(t8, [c8], settings={"duration": 8}),
                task(t_none, [c_none]),
                task(t_bad, [c_bad], settings={"duration": "8"}),
            ])
            self.assertEqual(status, 202)
            self.wait_created([c8, c_none, c_bad])
            durations = self.fake.stats()["durations"]
            self.assertEqual(durations[c8], 8)
            self.assertEqual(durations[c_none], 4)
            self.assertEqual(durations[c_bad], 4)
            self.assertEqual(self.jobs_show(d, c8)["duration"], 8)
            self.assertEqual(self.jobs_show(d, c_none)["duration"], 4)
            self.assertEqual(d.ledger_row(c8)["duration"], 8)

    def check_config(self, text, env=None):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "vidu-upscaled.conf")
            with open(path, "w") as f:
                f.write(text)
            e = {k: v for k, v in os.environ.items() if not k.startswith("VIDU_UPSCALED_")}
            e.update(env or {})
            out = subprocess.run([harness.DAEMON, "-c", path, "--check-config"],
                                 capture_output=True, text=True, env=e)
            return out, path

    BASE = "[upstream]\nbase_url = http://127.0.0.1:9\napi_key = k\n"

    def test_check_config_prints_the_rules(self):
        out, _ = self.check_config(self.BASE + "[select]\nmatch = /settings/model   in a b\n"
                                   "match = /payload/upscale = true\nmatch = /x !exists\n"
                                   "[upscale]\nduration = source\n")
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertIn("[select]", lines)
        self.assertIn("task_types = text2video img2video reference2video character2video "
                      "start-end2video *2video", lines)
        self.assertIn("creation_types = video", lines)
        i = lines.index("match = /settings/model in a b")
        self.assertEqual(lines[i + 1:i + 3], ["match = /payload/upscale = true", "match = /x !exists"])
        self.assertIn("duration = source", lines)
        out, _ = self.check_config(self.BASE)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("match =", out.stdout.splitlines())  # no rules
        self.assertIn("duration = 4", out.stdout.splitlines())
        # The environment sets one rule.
        out, _ = self.check_config(self.BASE, {"VIDU_UPSCALED_SELECT_MATCH": "/payload/upscale exists"})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("match = /payload/upscale exists", out.stdout.splitlines())

    def test_bad_rules_are_file_line_errors(self):
        out, path = self.check_config(self.BASE + "[select]\n"
                                      "match = /settings/model == viduq1\n"  # line 5
                                      "match = settings/model = viduq1\n"    # line 6
                                      "match = /a~2 exists\n"                # line 7
                                      "match = /settings/model in\n"         # line 8
                                      "match = /settings/model\n"            # line 9
                                      "task_types = vi*deo\n"                # line 10
                                      "creation_types =\n"                   # line 11
                                      "[upscale]\nduration = sauce\n")       # line 13
        self.assertEqual(out.returncode, 78)
        err = out.stderr
        for line, what in [(5, "unknown operator"), (6, "starts with '/'"), (7, "'~'"),
                           (8, "at least one value"), (9, "missing operator"),
                           (10, "'*'"), (11, "empty list"), (13, "source")]:
            self.assertIn("%s:%d:" % (path, line), err)
            self.assertIn(what, [l for l in err.splitlines() if "%s:%d:" % (path, line) in l][0])
        # And nothing started: the daemon refuses the same file with 78.
        d = Daemon({"upstream": {"base_url": self.fake.url}, "select": {"match": "/x == y"}}, fake=self.fake)
        try:
            d.write_config()
            out = subprocess.run([d.binary, "-c", d.config_path], capture_output=True, text=True,
                                 env=d.environment(), timeout=30)
            self.assertEqual(out.returncode, 78)
            self.assertIn("%s:" % d.config_path, out.stderr)
        finally:
            d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
