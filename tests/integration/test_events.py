#!/usr/bin/env python3
"""test_events.py: outcome events ([events]) end to end: the real daemon, the fake upstream, a real
journald, and receivers this test runs (HTTP on 127.0.0.1 and on a unix socket). Every outcome
type delivered once with a signature checked here with Python's hmac (not the daemon's code);
a receiver down then up, answering 400, hanging; kill -9 during deliveries; the operator's
`events list|retry`; bad configuration refused with exit 78."""
import base64
import hashlib
import hmac
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids, poll, wait_journal  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"events-test-secret-0123456789abc").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"an older secret, kept for rotation").decode()
MSGID_DELIVERED = "aa7488e057974680992a8981d0b91885"
MSGID_DEAD = "7a3d7749a58b45ac9d15a2964c9bf240"


def verify(secret, headers, body):
    """Standard Webhooks, by the book: HMAC-SHA256 over id.timestamp.body with the decoded key."""
    key = base64.b64decode(secret[len("whsec_"):])
    signed = ("%s.%s." % (headers["webhook-id"], headers["webhook-timestamp"])).encode() + body
    want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(want, s) for s in headers["webhook-signature"].split(" "))


class Receiver:
    """Records every request (its headers, body, time and path); answers as `answer` (a function
    of the request count) says."""

    def __init__(self, port=None, unix_path=None):
        self.requests = []
        self.lock = threading.Lock()
        self.answer = lambda n: (204, {})
        self.delay = 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with outer.lock:
                    outer.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                           "body": body, "at": time.time(), "path": self.path})
                    count = len(outer.requests)
                if outer.delay:
                    time.sleep(outer.delay)  # a slow receiver, not synchronisation
                status, extra = outer.answer(count)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

            def address_string(self):
                return "receiver"

        if unix_path:
            class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True
            self.server = Server(unix_path, Handler)
        else:
            class Server(http.server.ThreadingHTTPServer):
                daemon_threads = True
                allow_reuse_address = True
            self.server = Server(("127.0.0.1", port or 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.server.server_address[1]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def events(self):
        with self.lock:
            return [dict(r, json=json.loads(r["body"])) for r in self.requests]

    def for_creation(self, cid):
        return [r for r in self.events() if r["json"]["data"]["creation_id"] == cid]


def ledger_events(d):
    return d.ledger_events()


def wait_event(d, cid, state, type_=None, timeout=30):
    """Waits for the ledger to hold cid's event (of type_) in state; the journal is checked after,
    as an outcome, not used to wait on (a loaded journald may take its time)."""
    def find():
        return [e for e in ledger_events(d) if e["creation_id"] == cid and e["state"] == state
                and (type_ is None or e["type"] == type_)]
    return poll(find, timeout=timeout, what="%s's event %s" % (cid, state))


def journal_of(msgid, cid, timeout=30):
    return wait_journal(lambda: harness.journal_entries(MESSAGE_ID=msgid, CREATION_ID=cid), timeout=timeout)


def events_config(url, **extra):
    cfg = {"url": url, "secret": SECRET, "timeout": "2s"}
    cfg.update(extra)
    return {"events": cfg}


def merge(*cfgs):
    out = {}
    for c in cfgs:
        for section, values in c.items():
            out.setdefault(section, {}).update(values)
    return out


class Outcomes(unittest.TestCase):
    """One event per outcome type, each delivered once, signed, with its body's fields."""

    def test_every_outcome_type_delivered_once_and_signed(self):
        harness.ensure_journald()
        rx = Receiver()
        fake = FakeUpstream(complete_after_ms=100).start()
        ok, failed, dead, held = new_creation_ids(4)
        fake.outcome(failed, "failed", "ModerationFailed")
        fake.faults([{"on": "submit", "creation_id": dead, "status": 400, "reason": "FieldInvalid", "times": -1},
                     {"on": "submit", "creation_id": held, "delay_ms": 5000, "status": 500}])
        # On PostgreSQL the restarted daemon is another instance: it takes the held job over once
        # the killed one's lease lapses, so the lease is kept short.
        d = Daemon(merge({"upstream": {"base_url": fake.url}, "retry": {"uncertain": "hold"}},
                         {"store": {"lease": "2s"}} if harness.ON_PG else {},
                         events_config("http://127.0.0.1:%d/hooks/events" % rx.port)), fake=fake)
        try:
            d.start()
            # The pipeline's own context rides on the source task and comes back with the outcome.
            payload = '{"batch": "b-7", "note": "caf\u00e9 \\"q\\""}'
            for cid in (ok, failed, dead):
                task = make_task("9500000000000001", [cid])
                if cid == ok:
                    task["payload"] = payload
                self.assertEqual(d.post(body=task)[0], 202)
            for cid in (ok, failed, dead):
                wait_event(d, cid, "delivered")
            # Uncertain: killed mid-submission, held at the next start (retry.uncertain=hold).
            self.assertEqual(d.post(body=make_task("9500000000000002", [held]))[0], 202)
            poll(lambda: fake.stats()["submit_requests"] >= 4, what="the held job's submission in flight")
            d.kill(signal.SIGKILL)
            d.wait_exit(timeout=10)
            d.start()
            wait_event(d, held, "delivered")

            expect = {ok: ("upscale.succeeded", "succeeded"), failed: ("upscale.failed", "failed"),
                      dead: ("upscale.dead", "dead"), held: ("upscale.uncertain", "uncertain")}
            now = time.time()
            for cid, (type_, state) in expect.items():
                got = rx.for_creation(cid)
                self.assertEqual(len(got), 1, "%s delivered %d times" % (cid, len(got)))
                r = got[0]
                h, body = r["headers"], r["json"]
                self.assertTrue(verify(SECRET, h, r["body"]), "bad signature for %s" % cid)
                self.assertFalse(verify(OLD_SECRET, h, r["body"]))
                self.assertTrue(h["webhook-id"].startswith("evt_"))
                self.assertLess(abs(int(h["webhook-timestamp"]) - now), 300)
                self.assertEqual(h["content-type"], "application/json")
                self.assertEqual(body["type"], type_)
                self.assertRegex(body["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
                data = body["data"]
                self.assertEqual(data["state"], state)
                self.assertEqual(data["source_task_id"], "9500000000000001" if cid != held else "9500000000000002")
                self.assertIsInstance(data["attempt"], int)
                self.assertNotIn(None, data.values())
                # The journal names the event and the creation.
                j = journal_of(MSGID_DELIVERED, cid)
                self.assertEqual(j[-1]["EVENT_ID"], h["webhook-id"])
                self.assertEqual(j[-1]["EVENT_TYPE"], type_)
            self.assertTrue(rx.for_creation(ok)[0]["json"]["data"]["result_url"].startswith("http"))
            self.assertNotIn("error", rx.for_creation(ok)[0]["json"]["data"])
            self.assertEqual(rx.for_creation(ok)[0]["json"]["data"]["payload"], payload)
            self.assertNotIn("payload", rx.for_creation(failed)[0]["json"]["data"])
            self.assertEqual(rx.for_creation(failed)[0]["json"]["data"]["error"], "ModerationFailed")
            dead_data = rx.for_creation(dead)[0]["json"]["data"]
            self.assertEqual(dead_data["http_status"], 400)
            self.assertEqual(dead_data["error"], "FieldInvalid")
            self.assertNotIn("result_url", dead_data)
            self.assertEqual(
                d.metrics_value('vidu_upscaled_events_total{type="upscale.uncertain",outcome="delivered"}'), 1)
            # The operator's view.
            out = subprocess.run([d.binary, "-c", d.config_path, "events", "list", "--json"],
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            listed = [json.loads(line) for line in out.stdout.splitlines()]
            self.assertEqual(sorted(e["creation_id"] for e in listed), sorted(expect))
            self.assertTrue(all(e["state"] == "delivered" and e["attempts"] == 1 for e in listed))
            self.assertNotIn(SECRET[6:], d.stderr_text())
            # An operator abandons the held job (another process, another path): its event too.
            out = subprocess.run([d.binary, "-c", d.config_path, "jobs", "abandon", held],
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            poll(lambda: any(r["json"]["type"] == "upscale.dead" for r in rx.for_creation(held)),
                 timeout=20, what="the abandoned job's event")
            got = rx.for_creation(held)
            self.assertEqual([r["json"]["type"] for r in got], ["upscale.uncertain", "upscale.dead"])
            self.assertEqual(got[1]["json"]["data"]["error"], "abandoned by an operator")
            self.assertNotEqual(got[0]["headers"]["webhook-id"], got[1]["headers"]["webhook-id"])
        finally:
            d.stop()
            fake.stop()
            rx.stop()

    def test_unix_socket_receiver_and_types_filter(self):
        harness.ensure_journald()
        tmp = tempfile.mkdtemp(prefix="vidu-events-")
        path = os.path.join(tmp, "rx.sock")
        rx = Receiver(unix_path=path)
        fake = FakeUpstream(complete_after_ms=100).start()
        ok, failed = new_creation_ids(2)
        fake.outcome(failed, "failed")
        d = Daemon(merge({"upstream": {"base_url": fake.url}},
                         events_config("unix:" + path, types="upscale.succeeded upscale.dead")), fake=fake)
        try:
            d.start()
            self.assertEqual(d.post(body=make_task("9500000000000003", [ok, failed]))[0], 202)
            wait_event(d, ok, "delivered")
            poll(lambda: (d.ledger_row(failed) or {}).get("state") == "failed", timeout=20, what="the failed job")
            got = rx.for_creation(ok)
            self.assertEqual(len(got), 1)
            self.assertTrue(verify(SECRET, got[0]["headers"], got[0]["body"]))
            # upscale.failed is not in events.types: never written.
            self.assertEqual([e for e in ledger_events(d) if e["creation_id"] == failed], [])
        finally:
            d.stop()
            fake.stop()
            rx.stop()


class Receivers(unittest.TestCase):
    def setUp(self):
        harness.ensure_journald()
        self.fake = FakeUpstream(complete_after_ms=50).start()

    def tearDown(self):
        self.fake.stop()

    def test_down_then_up_all_delivered_with_the_same_id(self):
        port = harness.free_port()  # nobody listens yet: connections refused
        ids = new_creation_ids(3)
        d = Daemon(merge({"upstream": {"base_url": self.fake.url}},
                         events_config("http://127.0.0.1:%d/" % port)), fake=self.fake)
        rx = None
        try:
            d.start()
            self.assertEqual(d.post(body=make_task("9500000000000004", ids))[0], 202)
            poll(lambda: len(ledger_events(d)) == 3 and all(e["attempts"] >= 2 for e in ledger_events(d)),
                 timeout=20, what="every event tried twice")
            self.assertGreaterEqual(
                d.metrics_value('vidu_upscaled_events_total{type="upscale.succeeded",outcome="retried"}'), 6)
            # A gauge of what the ledger holds (on PostgreSQL counted every 2 s): polled.
            poll(lambda: d.metrics_value("vidu_upscaled_events_backlog") == 3, what="a backlog of 3")
            # Up, but busy at first: 503 with Retry-After, then 200.
            rx = Receiver(port=port)
            rx.answer = lambda n: (503, {"Retry-After": "0"}) if n <= 3 else (200, {})
            poll(lambda: all(e["state"] == "delivered" for e in ledger_events(d)), timeout=20,
                 what="every event delivered")
            stored = {e["creation_id"]: e["id"] for e in ledger_events(d)}
            for cid in ids:
                got = rx.for_creation(cid)
                self.assertGreaterEqual(len(got), 1)
                self.assertEqual({r["headers"]["webhook-id"] for r in got}, {stored[cid]})
                self.assertTrue(all(verify(SECRET, r["headers"], r["body"]) for r in got))
                self.assertEqual(len(journal_of(MSGID_DELIVERED, cid)), 1)
            self.assertEqual(len(rx.events()), 6)  # three 503s, three 200s
            poll(lambda: d.metrics_value("vidu_upscaled_events_backlog") == 0, what="no backlog")
        finally:
            d.stop()
            if rx:
                rx.stop()

    def test_400_is_dead_after_one_try_and_retry_sends_it_again(self):
        rx = Receiver()
        rx.answer = lambda n: (400, {})
        (cid,) = new_creation_ids(1)
        d = Daemon(merge({"upstream": {"base_url": self.fake.url}},
                         events_config("http://127.0.0.1:%d/" % rx.port)), fake=self.fake)
        try:
            d.start()
            self.assertEqual(d.post(body=make_task("9500000000000005", [cid]))[0], 202)
            wait_event(d, cid, "dead")
            dead = journal_of(MSGID_DEAD, cid)
            self.assertEqual(dead[0]["PRIORITY"], "3")
            (ev,) = ledger_events(d)
            self.assertEqual((ev["state"], ev["attempts"], ev["http_status"]), ("dead", 1, 400))
            self.assertEqual(dead[0]["EVENT_ID"], ev["id"])
            self.assertEqual(len(rx.for_creation(cid)), 1)
            out = subprocess.run([d.binary, "-c", d.config_path, "events", "list", "--state", "dead"],
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn(ev["id"], out.stdout)
            self.assertIn(cid, out.stdout)
            # Fixed receiver; the operator sends it again: the same webhook-id.
            rx.answer = lambda n: (200, {})
            out = subprocess.run([d.binary, "-c", d.config_path, "events", "retry", "--dead"],
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            wait_event(d, cid, "delivered")
            journal_of(MSGID_DELIVERED, cid)
            got = rx.for_creation(cid)
            self.assertEqual(len(got), 2)
            self.assertEqual({r["headers"]["webhook-id"] for r in got}, {ev["id"]})
        finally:
            d.stop()
            rx.stop()

    def test_redirect_not_followed_garbage_and_trickle_retried(self):
        elsewhere = Receiver()
        rx = Receiver()
        rx.answer = lambda n: (302, {"Location": "http://127.0.0.1:%d/" % elsewhere.port}) if n == 1 else (200, {})
        # Answers bytes that are not HTTP, or trickles them, then hangs up.
        bad = socket.socket()
        bad.bind(("127.0.0.1", 0))
        bad.listen(16)
        stop = threading.Event()

        def serve():
            n = 0
            while not stop.is_set():
                try:
                    conn, _ = bad.accept()
                except OSError:
                    return
                n += 1
                try:
                    conn.recv(65536)
                    if n % 2:
                        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n\x00\xff")
                    else:
                        for ch in b"HTTP/1.1 200 OK\r\n":  # one byte every 0.2 s: past events.timeout
                            conn.sendall(bytes([ch]))
                            if stop.wait(0.2):
                                break
                except OSError:
                    pass
                conn.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        a, b = new_creation_ids(2)
        try:
            with Daemon(merge({"upstream": {"base_url": self.fake.url}},
                              events_config("http://127.0.0.1:%d/" % rx.port)), fake=self.fake) as d:
                self.assertEqual(d.post(body=make_task("9500000000000009", [a]))[0], 202)
                (ev,) = wait_event(d, a, "delivered")
                self.assertEqual(ev["attempts"], 2)
                self.assertEqual(elsewhere.events(), [])
                self.assertEqual({r["headers"]["webhook-id"] for r in rx.for_creation(a)}, {ev["id"]})
            with Daemon(merge({"upstream": {"base_url": self.fake.url}},
                              events_config("http://127.0.0.1:%d/" % bad.getsockname()[1], timeout="1s")),
                        fake=self.fake) as d:
                self.assertEqual(d.post(body=make_task("9500000000000010", [b]))[0], 202)
                poll(lambda: [e for e in ledger_events(d) if e["attempts"] >= 3], timeout=30,
                     what="three failed attempts")
                (ev,) = ledger_events(d)
                self.assertEqual(ev["state"], "pending")
                self.assertTrue(ev["error"])
                self.assertEqual(d.get("/healthz")[0], 200)
        finally:
            stop.set()
            bad.close()
            rx.stop()
            elsewhere.stop()

    def test_too_old_is_dead(self):
        port = harness.free_port()  # refused, for good
        (cid,) = new_creation_ids(1)
        d = Daemon(merge({"upstream": {"base_url": self.fake.url}, "retry": {"max_attempts": "1"}},
                         events_config("http://127.0.0.1:%d/" % port, max_age="2s")), fake=self.fake)
        try:
            d.start()
            self.assertEqual(d.post(body=make_task("9500000000000008", [cid]))[0], 202)
            wait_event(d, cid, "dead")
            dead = journal_of(MSGID_DEAD, cid)
            self.assertIn("events.max_age", dead[0]["MESSAGE"])
            (ev,) = ledger_events(d)
            self.assertEqual(ev["state"], "dead")
            self.assertGreater(ev["attempts"], 1)  # retried until then, not capped by retry.max_attempts
            self.assertGreaterEqual(ev["updated_at"] - ev["created_at"], 2_000_000)
            self.assertEqual(
                d.metrics_value('vidu_upscaled_events_total{type="upscale.succeeded",outcome="dead"}'), 1)
        finally:
            d.stop()

    def test_kill_during_deliveries_loses_nothing(self):
        rx = Receiver()
        rx.delay = 0.3
        ids = new_creation_ids(16)
        d = Daemon(merge({"upstream": {"base_url": self.fake.url, "concurrency": "8"}},
                         events_config("http://127.0.0.1:%d/" % rx.port)), fake=self.fake)
        try:
            d.start()
            for i in range(0, len(ids), 4):
                self.assertEqual(d.post(body=make_task("9500000000000006", ids[i:i + 4]))[0], 202)
            poll(lambda: len(rx.events()) >= 3, timeout=20, what="deliveries under way")
            d.kill(signal.SIGKILL)
            d.wait_exit(timeout=10)
            d.start()
            poll(lambda: len(ledger_events(d)) == len(ids) and
                 all(e["state"] == "delivered" for e in ledger_events(d)),
                 timeout=60, what="every event delivered after the restart")
            stored = {e["creation_id"]: e["id"] for e in ledger_events(d)}
            self.assertEqual(set(stored), set(ids))
            for cid in ids:
                got = rx.for_creation(cid)
                self.assertGreaterEqual(len(got), 1, cid)
                # Duplicates, if any, carry the same webhook-id.
                self.assertEqual({r["headers"]["webhook-id"] for r in got}, {stored[cid]})
        finally:
            d.stop()
            rx.stop()

    def test_hanging_receiver_does_not_slow_the_webhook(self):
        # Accepts connections (the kernel's backlog) and never answers.
        hang = socket.socket()
        hang.bind(("127.0.0.1", 0))
        hang.listen(64)
        d = Daemon(merge({"upstream": {"base_url": self.fake.url}},
                         events_config("http://127.0.0.1:%d/" % hang.getsockname()[1], timeout="3s")),
                   fake=self.fake)
        try:
            d.start()
            ids = new_creation_ids(20)
            latencies = []
            for cid in ids:
                t0 = time.monotonic()
                status = d.post(body=make_task("9500000000000007", [cid]))[0]
                latencies.append(time.monotonic() - t0)
                self.assertEqual(status, 202)
            # Submissions go on: every job ends while the events wait.
            poll(lambda: sum(1 for r in d.ledger_rows() if r["state"] == "succeeded") == len(ids),
                 timeout=30, what="every job succeeded")
            self.assertLess(max(latencies), 1.0 * harness.TIMEOUT_SCALE, latencies)
            poll(lambda: d.metrics_value(
                'vidu_upscaled_events_total{type="upscale.succeeded",outcome="retried"}') >= 1,
                timeout=20, what="a delivery timed out and retried")
            self.assertTrue(all(e["state"] == "pending" for e in ledger_events(d)))
        finally:
            d.stop()
            hang.close()


class BadConfig(unittest.TestCase):
    def check(self, events, needle):
        d = Daemon(merge({"upstream": {"base_url": "http://127.0.0.1:9"}}, {"events": events}))
        try:
            d.write_config()
            out = subprocess.run([d.binary, "-c", d.config_path, "--check-config"], capture_output=True,
                                 text=True, env=d.environment(), timeout=30)
            self.assertEqual(out.returncode, 78, out.stdout + out.stderr)
            self.assertIn(d.config_path + ":", out.stderr)
            self.assertIn(needle, out.stderr)
            return out
        finally:
            d.stop()
            import shutil
            shutil.rmtree(d.tmp, ignore_errors=True)

    def test_not_a_url(self):
        for url in ("ftp://example.com/x", "hooks.example.com", "unix:relative.sock", "http://"):
            self.check({"url": url, "secret": SECRET}, "events.url")

    def test_bad_secret(self):
        out = self.check({"url": "http://127.0.0.1:1/", "secret": "whsec_not*base64"}, "whsec_")
        self.assertNotIn("not*base64", out.stderr)
        self.check({"url": "http://127.0.0.1:1/", "secret": "plain-secret"}, "whsec_")

    def test_unknown_type(self):
        self.check({"url": "http://127.0.0.1:1/", "secret": SECRET, "types": "upscale.done"}, "events.types")

    def test_secret_masked_and_rotation(self):
        d = Daemon(merge({"upstream": {"base_url": "http://127.0.0.1:9"}},
                         {"events": {"url": "http://127.0.0.1:1/", "secret": SECRET}}))
        try:
            d.write_config()
            with open(d.config_path, "a") as f:
                f.write("secret = %s\n" % OLD_SECRET)  # [events] is the last section written
            out = subprocess.run([d.binary, "-c", d.config_path, "--check-config"], capture_output=True,
                                 text=True, env=d.environment(), timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertNotIn(SECRET[6:], out.stdout + out.stderr)
            self.assertNotIn(OLD_SECRET[6:], out.stdout + out.stderr)
            self.assertIn("[events]", out.stdout)
            self.assertIn("url = http://127.0.0.1:1/", out.stdout)
        finally:
            import shutil
            shutil.rmtree(d.tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
