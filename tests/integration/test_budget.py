#!/usr/bin/env python3
"""test_budget.py: the spend guard ([budget]) and the stop switch end to end: the real daemon, the
fake upstream, a real journald. Rolling windows counted from the ledger (held across a restart,
freed when the ledger's clock moves, jobs leaving no earlier than the window frees room), credits
read from the upstream's answers, the operator's pause across a restart, and jobs released in bulk
with `jobs retry --state`."""
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids, poll, wait_journal  # noqa: E402

MSGID_BUDGET_REACHED = "ef028423073a48e584fd3846d1b65531"
MSGID_BUDGET_RESUMED = "2e685d26100844dcb5f8b6125e4f749c"
MSGID_OPERATOR_PAUSED = "d747f6be114d46b8b1cc0c5eb21600fe"
MSGID_OPERATOR_RESUMED = "a63f193cd63944cb84892399ca82cb30"
HOUR_USEC = 3600 * 1000000


def entries(msgid, pids):
    return [e for e in harness.journal_entries(MESSAGE_ID=msgid) if e.get("_PID") in pids]


def entries_since(msgid, since_usec):
    return [e for e in harness.journal_entries(MESSAGE_ID=msgid)
            if int(e["__REALTIME_TIMESTAMP"]) >= since_usec]


def states(d, cids):
    rows = {r["creation_id"]: r for r in d.ledger_rows()}
    return {c: rows[c]["state"] for c in cids if c in rows}


def submitted_count(fake, cids):
    created = fake.stats()["created"]
    return sum(created.get(c, 0) for c in cids)


class Budget(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()

    def test_hourly_cap_holds_across_restart_and_frees_with_the_window(self):
        with FakeUpstream(complete_after_ms=100) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}, "budget": {"max_submissions_per_hour": 3}},
                       fake=fake)
            with d:
                pids = {str(d.pid)}
                cids = new_creation_ids(5)
                self.assertEqual(d.post(body=make_task("9400000000000001", cids))[0], 202)
                wait_journal(lambda: entries(MSGID_BUDGET_REACHED, pids))
                # Exactly three left; the other two wait with no attempt used.
                self.assertEqual(fake.stats()["submit_requests"], 3)
                rows = {r["creation_id"]: r for r in d.ledger_rows()}
                held = [c for c in cids if rows[c]["state"] == "pending"]
                self.assertEqual(len(held), 2)
                self.assertTrue(all(rows[c]["attempt"] == 0 for c in held))
                # Oldest first: the held ones are the last two of the batch (same next_at) or any
                # two; what matters is that nothing else left.
                reached = entries(MSGID_BUDGET_REACHED, pids)
                self.assertEqual(len(reached), 1)
                self.assertEqual(reached[0]["PRIORITY"], "4")
                self.assertIn("max_submissions_per_hour", reached[0]["MESSAGE"])
                status = d.wait_notify(lambda m: "budget reached, next submission at" in m.get("STATUS", ""))
                self.assertRegex(status["STATUS"], r"next submission at (\d{4}-\d\d-\d\d )?\d\d:\d\d$")
                self.assertEqual(d.metrics_value("vidu_upscaled_budget_blocked"), 1)
                self.assertEqual(d.metrics_value('vidu_upscaled_budget_remaining{window="hour"}'), 0)
                # Notifications are still accepted while the budget holds.
                (late,) = new_creation_ids(1)
                self.assertEqual(d.post(body=make_task("9400000000000002", [late]))[0], 202)
                held.append(late)

                # A restart does not reset the window, and says nothing new about it.
                since = len(d.notify_messages)
                d.restart()
                pids.add(str(d.pid))
                d.wait_notify(lambda m: "budget reached" in m.get("STATUS", ""), since=since)
                self.assertEqual(fake.stats()["submit_requests"], 3)
                self.assertEqual(sorted(c for c, s in states(d, held).items() if s == "pending"), sorted(held))
                self.assertEqual(len(entries(MSGID_BUDGET_REACHED, pids)), 1)

                # Move the ledger's clock: the window frees room 3 s from now. The held jobs leave
                # then (the dispatcher's timer), not before, and the resume is journaled once.
                free_at = int(time.time() * 1e6) - HOUR_USEC + 3 * 1000000
                d.ledger_execute("UPDATE submissions SET at = ?", (free_at,))
                poll(lambda: fake.stats()["submit_requests"] == 6, timeout=20, what="the held jobs submitted")
                first = min(fake.arrivals(c)[0] for c in held)
                self.assertGreaterEqual(first, (free_at + HOUR_USEC) / 1e6 - 0.05)
                wait_journal(lambda: entries(MSGID_BUDGET_RESUMED, pids))
                self.assertEqual(len(entries(MSGID_BUDGET_RESUMED, pids)), 1)
                # Three more in the hour: the window is full again.
                poll(lambda: d.metrics_value('vidu_upscaled_budget_remaining{window="hour"}') == 0,
                     what="the window full again")
                for c in held:
                    harness.poll(lambda: states(d, [c]).get(c) == "succeeded", timeout=20,
                                 what="held job succeeded")
                self.assertEqual(sum(fake.stats()["created"].get(c, 0) for c in cids + [late]), 6)

    def test_credits_from_answers_reach_the_daily_cap(self):
        with FakeUpstream(complete_after_ms=100, credits=4) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}, "budget": {"max_credits_per_day": 10}},
                       fake=fake)
            with d:
                cids = new_creation_ids(4)
                # One at a time, each followed to its end so its cost is known before the next.
                for i, c in enumerate(cids[:3]):
                    self.assertEqual(d.post(body=make_task("94100000000000%02d" % i, [c]))[0], 202)
                    poll(lambda: (d.ledger_row(c) or {}).get("state") == "succeeded", timeout=20,
                         what="the upscale of %s to succeed" % c)
                    poll(lambda: (d.ledger_row(c) or {}).get("credits") == 4, what="its credits recorded")
                    self.assertIn('"credits":4', d.jobs("show", c).stdout.replace(" ", ""))
                # 12 credits spent in the day, over the 10 allowed: the fourth waits.
                self.assertEqual(d.metrics_value('vidu_upscaled_budget_remaining{window="credits_day"}'), 0)
                self.assertEqual(d.post(body=make_task("9410000000000099", [cids[3]]))[0], 202)
                reached = wait_journal(lambda: entries(MSGID_BUDGET_REACHED, {str(d.pid)}))
                self.assertIn("12 credits", reached[0]["MESSAGE"])
                self.assertIn("max_credits_per_day", reached[0]["MESSAGE"])
                self.assertEqual(d.ledger_row(cids[3])["state"], "pending")
                self.assertEqual(fake.stats()["submit_requests"], 3)
                self.assertEqual(d.metrics_value("vidu_upscaled_budget_blocked"), 1)

    def test_assumed_credits_count_submissions_of_unknown_cost(self):
        # Nothing reports a cost; each submission counts as 5 of the 10 allowed: two leave.
        with FakeUpstream(complete_after_ms=60000) as fake:
            d = Daemon({"upstream": {"base_url": fake.url},
                        "budget": {"max_credits_per_day": 10, "assumed_credits": 5}}, fake=fake)
            with d:
                cids = new_creation_ids(4)
                self.assertEqual(d.post(body=make_task("9420000000000001", cids))[0], 202)
                wait_journal(lambda: entries(MSGID_BUDGET_REACHED, {str(d.pid)}))
                self.assertEqual(fake.stats()["submit_requests"], 2)
                self.assertEqual(sorted(states(d, cids).values()).count("pending"), 2)


class StopSwitch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()

    def test_pause_holds_across_restart_and_resume_releases(self):
        with FakeUpstream(complete_after_ms=100) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}}, fake=fake)
            with d:
                t0 = int(time.time() * 1e6)
                out = d.jobs("pause")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertIn("paused", out.stdout)
                self.assertIn("already paused", d.jobs("pause").stdout)
                paused = wait_journal(lambda: entries_since(MSGID_OPERATOR_PAUSED, t0))
                self.assertEqual(len(paused), 1)  # the second pause changed nothing
                cids = new_creation_ids(2)
                self.assertEqual(d.post(body=make_task("9430000000000001", cids))[0], 202)
                # STATUS is written after the commit that recorded them, and that commit's
                # dispatch decision found the switch: they would be `submitting` by now.
                d.wait_notify(lambda m: m.get("STATUS", "").startswith("2 pending") and
                              "paused by an operator" in m.get("STATUS", ""))
                self.assertEqual(fake.stats()["submit_requests"], 0)
                self.assertEqual(d.metrics_value('vidu_upscaled_dispatch_paused{reason="operator"}'), 1)
                self.assertEqual(d.metrics_value('vidu_upscaled_dispatch_paused{reason="account"}'), 0)
                counts = d.jobs("counts")
                self.assertEqual(counts.returncode, 0, counts.stderr)
                self.assertIn("submissions paused by an operator", counts.stdout)
                self.assertRegex(counts.stdout, r"pending\s+2")

                since = len(d.notify_messages)
                d.restart()
                d.wait_notify(lambda m: "paused by an operator" in m.get("STATUS", ""), since=since)
                (late,) = new_creation_ids(1)
                self.assertEqual(d.post(body=make_task("9430000000000002", [late]))[0], 202)
                cids.append(late)
                d.wait_notify(lambda m: m.get("STATUS", "").startswith("3 pending"), since=since)
                self.assertEqual(fake.stats()["submit_requests"], 0)

                out = d.jobs("resume")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(len(wait_journal(lambda: entries_since(MSGID_OPERATOR_RESUMED, t0))), 1)
                poll(lambda: submitted_count(fake, cids) == 3, timeout=15, what="the paused jobs submitted")
                poll(lambda: d.metrics_value('vidu_upscaled_dispatch_paused{reason="operator"}') == 0,
                     what="the gauge back to 0")
                self.assertNotIn("paused", d.jobs("counts").stdout)

    def test_retry_by_state_releases_in_bulk(self):
        with FakeUpstream(complete_after_ms=100) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}}, fake=fake)
            with d:
                dead = new_creation_ids(2)
                unsure = new_creation_ids(2)
                fake.faults([{"on": "submit", "creation_id": c, "status": 400, "reason": "FieldInvalid"}
                             for c in dead] +
                            [{"on": "submit", "creation_id": c, "action": "no_id"} for c in unsure])
                self.assertEqual(d.post(body=make_task("9440000000000001", dead + unsure))[0], 202)
                poll(lambda: states(d, dead + unsure) == dict([(c, "dead") for c in dead] +
                                                              [(c, "uncertain") for c in unsure]),
                     what="two dead and two uncertain jobs")
                # Bad input: a clear error, nothing changed.
                for args in (["--state", "pending"], ["--state", "dead", "--since", "soon"], ["--since", "1h"]):
                    out = d.jobs("retry", *args)
                    self.assertEqual(out.returncode, 78, args)
                    self.assertTrue(out.stderr.strip())
                self.assertEqual(states(d, dead), {c: "dead" for c in dead})

                out = d.jobs("retry", "--state", "dead")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertIn("released 2 dead jobs", out.stdout)
                poll(lambda: all(s == "succeeded" for s in states(d, dead).values()), timeout=20,
                     what="the released jobs to succeed")

                # --since: only the uncertain job changed within the last hour is released.
                old = unsure[0]
                d.ledger_execute("UPDATE jobs SET updated_at = updated_at - ? WHERE creation_id = ?",
                                 (2 * HOUR_USEC, old))
                out = d.jobs("retry", "--state", "uncertain", "--since", "1h")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertIn("released 1 uncertain job", out.stdout)
                poll(lambda: states(d, [unsure[1]])[unsure[1]] == "succeeded", timeout=20,
                     what="the recent uncertain job to succeed")
                self.assertEqual(states(d, [old])[old], "uncertain")
                self.assertIn("released 0 dead jobs", d.jobs("retry", "--state", "dead").stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
