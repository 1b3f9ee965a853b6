#!/usr/bin/env python3
"""test_crash.py: the crash harness. Rounds of concurrent webhook load; the daemon is killed with
SIGKILL at a random moment, restarted, and the invariants are checked after every round:

  * every creation id answered 2xx is in the ledger, and ends submitted (or uncertain under
    retry.uncertain=hold);
  * under hold, no creation is created upstream twice;
  * under resubmit, at most upstream.concurrency creations are created twice per kill.

CI runs a few rounds (CRASH_ROUNDS, default 4 per policy); for a longer run:
    python3 tests/integration/test_crash.py --rounds 200
"""
import argparse
import os
import random
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids  # noqa: E402

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "4"))
CONCURRENCY = 4
SENDERS = 6


def load(d, stop, acked, lock):
    """Posts notifications until told to stop or the daemon dies; records what was answered 2xx."""
    while not stop.is_set():
        ids = new_creation_ids(random.randint(1, 4))
        try:
            status, _, _ = d.post(body=make_task("9400000000000000", ids), timeout=5)
        except Exception:
            continue  # killed mid-request: not acknowledged, may or may not be recorded
        if 200 <= status < 300:
            with lock:
                acked.update(ids)


def settle(d, timeout=60):
    """Waits until no job still needs dispatching."""
    deadline = time.monotonic() + timeout * harness.TIMEOUT_SCALE
    while time.monotonic() < deadline:
        busy = [r for r in d.ledger_rows() if r["state"] in ("pending", "waiting", "submitting")]
        if not busy:
            return
        time.sleep(0.05)
    raise AssertionError("jobs still pending after %ss" % timeout)


def run_rounds(policy, rounds, verbose=False):
    harness.ensure_journald()
    fake = FakeUpstream(complete_after_ms=50)
    fake.start()
    d = Daemon({"upstream": {"base_url": fake.url, "concurrency": str(CONCURRENCY), "poll_interval": "100ms"},
                "retry": {"uncertain": policy, "initial_delay": "50ms", "max_delay": "200ms"}}, fake=fake)
    acked = set()
    lock = threading.Lock()
    findings = []
    try:
        d.start()
        for rnd in range(rounds):
            stop = threading.Event()
            threads = [threading.Thread(target=load, args=(d, stop, acked, lock)) for _ in range(SENDERS)]
            for t in threads:
                t.start()
            # A random moment: during intake, submissions and polls alike.
            time.sleep(random.uniform(0.05, 0.6))
            d.kill(signal.SIGKILL)
            d.wait_exit(timeout=10)
            stop.set()
            for t in threads:
                t.join()
            d.start()
            settle(d)
            rows = {r["creation_id"]: r for r in d.ledger_rows()}
            created = fake.stats()["created"]
            with lock:
                lost = [c for c in acked if c not in rows]
                unsubmitted = [c for c in acked if rows.get(c, {}).get("state") not in
                               ("submitted", "succeeded", "uncertain" if policy == "hold" else "-")]
            twice = [c for c, n in created.items() if n > 1]
            if lost:
                findings.append("round %d: %d acknowledged ids missing from the ledger: %s" % (rnd, len(lost), lost[:5]))
            if unsubmitted:
                findings.append("round %d: %d acknowledged ids not submitted: %s" % (rnd, len(unsubmitted), unsubmitted[:5]))
            if policy == "hold" and twice:
                findings.append("round %d: created twice under hold: %s" % (rnd, twice[:5]))
            if policy == "resubmit" and len(twice) > CONCURRENCY * (rnd + 1):
                findings.append("round %d: %d duplicates after %d kills" % (rnd, len(twice), rnd + 1))
            if verbose:
                states = {}
                for r in rows.values():
                    states[r["state"]] = states.get(r["state"], 0) + 1
                print("round %d (%s): %d acknowledged, ledger %s, created twice %d" %
                      (rnd, policy, len(acked), states, len(twice)), flush=True)
        return findings, len(acked)
    finally:
        d.stop()
        fake.stop()


class CrashHarness(unittest.TestCase):
    def test_hold(self):
        findings, n = run_rounds("hold", ROUNDS)
        self.assertGreater(n, 0)
        self.assertEqual(findings, [])

    def test_resubmit(self):
        findings, n = run_rounds("resubmit", ROUNDS)
        self.assertGreater(n, 0)
        self.assertEqual(findings, [])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--policy", choices=("hold", "resubmit"), default=None)
    args, rest = ap.parse_known_args()
    if args.rounds is not None:
        total = 0
        for policy in ([args.policy] if args.policy else ["hold", "resubmit"]):
            findings, n = run_rounds(policy, args.rounds, verbose=True)
            total += n
            print("%s: %d rounds, %d acknowledged ids, %d findings" % (policy, args.rounds, n, len(findings)))
            for f in findings:
                print("  " + f)
            if findings:
                sys.exit(1)
        sys.exit(0)
    sys.argv = [sys.argv[0]] + rest
    unittest.main(verbosity=2)
