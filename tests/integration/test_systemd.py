#!/usr/bin/env python3
"""test_systemd.py: the service protocol against the real binary: sd_notify (READY, STATUS,
STOPPING, WATCHDOG), socket activation through systemd-socket-activate (TCP and unix), SIGHUP
reloads (accepted and rejected), a drain that completes requests in flight, /metrics and
/healthz."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids, wait_journal  # noqa: E402


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def post_json(conn, path, obj):
    body = json.dumps(obj).encode()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def parse_metrics(text):
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$', line)
        if not m:
            raise AssertionError("not Prometheus text: %r" % line)
        values[m.group(1)] = float(m.group(2))
    return values



poll = harness.poll


class Notify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=200)
        cls.fake.start()

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()

    def test_ready_status_stopping(self):
        d = Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake)
        d.start()
        msgs = d.notify_messages
        self.assertTrue(any(m.get("READY") == "1" for m in msgs))
        # READY comes only once the listener answers.
        self.assertEqual(d.get("/healthz")[0], 200)
        status = d.wait_notify(lambda m: "STATUS" in m and "pending" in m["STATUS"])
        self.assertIn("in flight", status["STATUS"])
        (cid,) = new_creation_ids(1)
        self.assertEqual(d.post(body=make_task("9200000000000001", [cid]))[0], 202)
        d.wait_notify(lambda m: "STATUS" in m and "1 succeeded" in m["STATUS"], timeout=15)
        self.assertEqual(d.stop(), 0)
        self.assertTrue(any(m.get("STOPPING") == "1" for m in d.notify_messages))

    def test_watchdog_pings_when_asked_and_only_then(self):
        d = Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake,
                   extra_env={"WATCHDOG_USEC": "300000"})
        with d:
            poll(lambda: len([m for m in d.notify_messages if m.get("WATCHDOG") == "1"]) >= 3,
                 what="three WATCHDOG=1 pings")
        quiet = Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake)
        with quiet:
            (cid,) = new_creation_ids(1)
            quiet.post(body=make_task("9200000000000002", [cid]))
            quiet.wait_notify(lambda m: "STATUS" in m and "1 succeeded" in m["STATUS"], timeout=15)
            self.assertFalse([m for m in quiet.notify_messages if "WATCHDOG" in m])


class SocketActivation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=200)
        cls.fake.start()

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()

    def run_activated(self, listen_arg, connect):
        tmp = tempfile.mkdtemp(prefix="vidu-sa-")
        unused_port = harness.free_port()
        d = Daemon({"upstream": {"base_url": self.fake.url},
                    "server": {"listen": "127.0.0.1:%d" % unused_port}}, fake=self.fake)
        d.write_config()
        with open(os.path.join(tmp, "stderr"), "wb") as err:
            proc = subprocess.Popen(["systemd-socket-activate", "-l", listen_arg, d.binary, "-c", d.config_path],
                                    stdout=subprocess.DEVNULL, stderr=err, env=d.environment())
        try:
            (cid,) = new_creation_ids(1)
            conn = poll(lambda: connect(), what="the activated socket")
            status, body = post_json(conn, "/hooks/vidu", make_task("9200000000000003", [cid]))
            self.assertEqual(status, 202, body)
            self.assertEqual(json.loads(body)["accepted"], [cid])
            # server.listen was not used: the passed socket took precedence.
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", unused_port), timeout=1).close()
            poll(lambda: self.fake.stats()["created"].get(cid) == 1, what="the submission")
        finally:
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=20), 0)

    def test_tcp(self):
        port = harness.free_port()

        def connect():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.connect()
                return c
            except OSError:
                return None
        self.run_activated("127.0.0.1:%d" % port, connect)

    def test_unix(self):
        path = os.path.join(tempfile.mkdtemp(prefix="vidu-sock-"), "hooks.sock")

        def connect():
            try:
                c = UnixHTTPConnection(path)
                c.connect()
                return c
            except OSError:
                return None
        self.run_activated(path, connect)


class Reload(unittest.TestCase):
    def setUp(self):
        harness.ensure_journald()
        self.fake1 = FakeUpstream(complete_after_ms=200)
        self.fake2 = FakeUpstream(complete_after_ms=200, api_key=self.fake1.api_key)
        self.fake1.start()
        self.fake2.start()

    def tearDown(self):
        self.fake1.stop()
        self.fake2.stop()

    def test_reload_changes_upstream_and_rejects_a_bad_file(self):
        d = Daemon({"upstream": {"base_url": self.fake1.url}}, fake=self.fake1)
        with d:
            a, b, c = new_creation_ids(3)
            self.assertEqual(d.post(body=make_task("9200000000000004", [a]))[0], 202)
            poll(lambda: self.fake1.stats()["created"].get(a) == 1, what="submission to the first upstream")

            d.config["upstream"]["base_url"] = self.fake2.url
            d.config["retry"]["initial_delay"] = "200ms"
            d.write_config()
            d.kill(signal.SIGHUP)
            wait_journal(lambda: [e for e in harness.journal_entries(_PID=str(d.pid))
                                  if "reloaded" in e.get("MESSAGE", "").lower()])
            self.assertTrue(d.wait_notify(lambda m: m.get("RELOADING") == "1"))
            self.assertEqual(d.post(body=make_task("9200000000000005", [b]))[0], 202)
            poll(lambda: self.fake2.stats()["created"].get(b) == 1, what="submission to the new upstream")
            self.assertNotIn(b, self.fake1.stats()["created"])
            # The new upstream numbers its tasks like the old one: b's task id is a's. It cannot be
            # followed, yet it exists upstream, so b is held, and nothing else is disturbed.
            poll(lambda: {r["creation_id"]: r for r in d.ledger_rows()}[b]["state"] == "uncertain",
                 what="b held as uncertain")
            row = {r["creation_id"]: r for r in d.ledger_rows()}[b]
            self.assertIn("already recorded for creation " + a, row["upstream_error"])

            # A broken file is rejected with its errors; the running configuration stays.
            with open(d.config_path, "a") as f:
                f.write("\n[upstream]\nconcurrency = many\n")
            d.kill(signal.SIGHUP)
            rejected = wait_journal(lambda: [e for e in harness.journal_entries(_PID=str(d.pid))
                                             if "rejected" in e.get("MESSAGE", "").lower()])
            self.assertTrue(any("concurrency" in e["MESSAGE"] for e in rejected))
            self.assertEqual(d.post(body=make_task("9200000000000006", [c]))[0], 202)
            poll(lambda: self.fake2.stats()["created"].get(c) == 1, what="submission after the rejected reload")
            self.assertEqual(d.get("/healthz")[0], 200)


    def test_reload_with_a_new_api_key(self):
        """The daemon keeps the Authorization header it sends while the configuration stays the
        same; after a reload with another key, submissions and polls carry the new one."""
        with FakeUpstream(complete_after_ms=200) as fake3:  # a key of its own
            d = Daemon({"upstream": {"base_url": self.fake1.url}}, fake=self.fake1)
            with d:
                a, b = new_creation_ids(2)
                # a is refused without a task (the two fakes number their tasks alike), but its
                # request carried the first key.
                self.fake1.faults([{"on": "submit", "creation_id": a, "status": 400,
                                    "reason": "CreationNotFound"}])
                self.assertEqual(d.post(body=make_task("9200000000000007", [a]))[0], 202)
                poll(lambda: {r["creation_id"]: r for r in d.ledger_rows()}[a]["state"] == "dead",
                     what="a refused by the first upstream")
                self.assertEqual(self.fake1.stats()["unauthorized"], 0)
                d.api_key = fake3.api_key
                d.config["upstream"]["base_url"] = fake3.url
                d.write_config()
                d.kill(signal.SIGHUP)
                wait_journal(lambda: [e for e in harness.journal_entries(_PID=str(d.pid))
                                      if "reloaded" in e.get("MESSAGE", "").lower()])
                self.assertEqual(d.post(body=make_task("9200000000000008", [b]))[0], 202)
                poll(lambda: {r["creation_id"]: r for r in d.ledger_rows()}[b]["state"] == "succeeded",
                     what="b submitted and followed to its end with the new key")
                self.assertEqual(fake3.stats()["unauthorized"], 0)
                self.assertEqual(fake3.stats()["created"].get(b), 1)


class Drain(unittest.TestCase):
    def setUp(self):
        harness.ensure_journald()
        self.fake = FakeUpstream(complete_after_ms=200)
        self.fake.start()

    def tearDown(self):
        self.fake.stop()

    def test_drain_completes_an_upstream_request_in_flight(self):
        (cid,) = new_creation_ids(1)
        self.fake.faults([{"on": "submit", "creation_id": cid, "delay_ms": 1500, "action": "delay"}])
        d = Daemon({"upstream": {"base_url": self.fake.url}, "server": {"drain_timeout": "10s"}}, fake=self.fake)
        d.start()
        self.assertEqual(d.post(body=make_task("9200000000000007", [cid]))[0], 202)
        poll(lambda: self.fake.stats()["submit_requests"] >= 1, what="the submission to be in flight")
        # A keep-alive connection opened before the stop sees /healthz turn 503 while draining.
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.status, 200)
        d.kill(signal.SIGTERM)
        d.wait_notify(lambda m: m.get("STOPPING") == "1")
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.status, 503)
        self.assertEqual(d.wait_exit(timeout=20), 0)
        row = d.ledger_row(cid)
        self.assertEqual(row["state"], "submitted")
        self.assertTrue(row["upscale_task_id"])

    def test_drain_answers_a_webhook_request_in_progress(self):
        d = Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake)
        d.start()
        (cid,) = new_creation_ids(1)
        body = json.dumps(make_task("9200000000000008", [cid])).encode()
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        head = ("POST /hooks/vidu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % len(body)).encode()
        s.sendall(head + body[:10])
        time.sleep(0.2)  # the request is in progress on the daemon's side (no observable event)
        d.kill(signal.SIGTERM)
        d.wait_notify(lambda m: m.get("STOPPING") == "1")
        s.sendall(body[10:])
        answer = s.recv(65536).decode()
        self.assertIn(" 202 ", answer.splitlines()[0])
        s.close()
        self.assertEqual(d.wait_exit(timeout=20), 0)
        self.assertEqual(d.ledger_row(cid)["creation_id"], cid)


class Metrics(unittest.TestCase):
    def test_counters_follow_what_happened(self):
        harness.ensure_journald()
        fake = FakeUpstream(complete_after_ms=100)
        fake.start()
        d = Daemon({"upstream": {"base_url": fake.url}, "retry": {"initial_delay": "100ms"}},
                   fake=fake)
        try:
            d.start()
            before = parse_metrics(d.get("/metrics")[2].decode())
            a, b = new_creation_ids(2)
            # b's first submission fails once: a retry, which is no job's first wait.
            fake.faults([{"on": "submit", "creation_id": b, "status": 503, "times": 1}])
            self.assertEqual(d.post(body=make_task("9200000000000009", [a, b]))[0], 202)
            self.assertEqual(d.post(body=make_task("9200000000000009", [a]))[0], 200)
            self.assertEqual(d.post(body=b"{bad")[0], 400)
            self.assertEqual(d.post(body=b"{}", content_type="text/plain")[0], 415)
            poll(lambda: parse_metrics(d.get("/metrics")[2].decode()).get('vidu_upscaled_jobs{state="succeeded"}') == 2,
                 timeout=15, what="two succeeded jobs in the metrics")
            status, headers, raw = d.get("/metrics")
            self.assertEqual(status, 200)
            self.assertTrue(headers["content-type"].startswith("text/plain"))
            text = raw.decode()
            self.assertNotIn(d.api_key, text)
            m = parse_metrics(text)

            def delta(k):
                return m.get(k, 0) - before.get(k, 0)
            self.assertEqual(delta('vidu_upscaled_notifications_total{outcome="accepted"}'), 2)
            self.assertEqual(delta('vidu_upscaled_notifications_total{outcome="duplicate"}'), 1)
            self.assertEqual(delta('vidu_upscaled_webhook_requests_total{status="202"}'), 1)
            self.assertEqual(delta('vidu_upscaled_webhook_requests_total{status="200"}'), 1)
            self.assertEqual(delta('vidu_upscaled_webhook_requests_total{status="400"}'), 1)
            self.assertEqual(delta('vidu_upscaled_webhook_requests_total{status="415"}'), 1)
            self.assertEqual(delta("vidu_upscaled_submissions_total"), 3)
            self.assertEqual(delta("vidu_upscaled_retries_total"), 1)
            # Every webhook answer is timed, and each job's wait for its first submission once.
            for name, n in (("vidu_upscaled_webhook_request_seconds", 4),
                            ("vidu_upscaled_submit_wait_seconds", 2)):
                self.assertEqual(delta(name + "_count"), n, name)
                self.assertEqual(delta(name + '_bucket{le="+Inf"}'), n, name)
                self.assertGreater(delta(name + "_sum"), 0, name)
            self.assertGreaterEqual(delta('vidu_upscaled_upstream_requests_total{class="2xx"}'), 4)
            self.assertEqual(m["vidu_upscaled_backlog"], 0)
            self.assertGreaterEqual(m["vidu_upscaled_ledger_commit_seconds_count"], 1)
            self.assertEqual(m['vidu_upscaled_ledger_commit_seconds_bucket{le="+Inf"}'],
                             m["vidu_upscaled_ledger_commit_seconds_count"])
            # The default store.synchronous (full) syncs the WAL at every commit that wrote
            # something (two jobs recorded, three submissions marked and answered): each sync
            # timed on its own.
            self.assertGreaterEqual(delta("vidu_upscaled_ledger_sync_seconds_count"), 2)
            self.assertEqual(m['vidu_upscaled_ledger_sync_seconds_bucket{le="+Inf"}'],
                             m["vidu_upscaled_ledger_sync_seconds_count"])
            self.assertGreater(delta("vidu_upscaled_ledger_sync_seconds_sum"), 0)
            self.assertIn('vidu_upscaled_ledger_sync_seconds_bucket{le="0.0001"}', m)
            self.assertIn('vidu_upscaled_build_info{version="', text)
        finally:
            d.stop()
            fake.stop()


class JournalStall(unittest.TestCase):
    """A journald that stops reading (busy, restarting) must not stall the daemon: entries wait in
    the daemon's bounded queue and all reach the journal once journald reads again."""

    def test_notifications_are_served_while_journald_is_stopped(self):
        harness.ensure_journald()
        jpid = harness.journald_pid()
        fake = FakeUpstream(complete_after_ms=60000)
        fake.start()
        d = Daemon({"upstream": {"base_url": fake.url}}, fake=fake)
        d.start()
        ids = new_creation_ids(601)
        try:
            os.kill(jpid, signal.SIGSTOP)
            try:
                # 600 submitted entries (and accepted ones unless folded into them, which leaves
                # the entries to come as the submissions are answered): far more than journald's
                # socket queue holds (10 datagrams by default, 512 under systemd). Each answer
                # would wait for journald if the daemon blocked on it.
                for i in range(0, 600, 50):
                    status, _, _ = d.post(body=make_task("95000000000%05d" % i, ids[i:i + 50]), timeout=5)
                    self.assertEqual(status, 202)
                harness.poll(lambda: d.metrics_value("vidu_upscaled_journal_queue_bytes") > 0,
                             timeout=30, what="entries waiting in the daemon's queue")
                # And still answering while they wait.
                status, _, _ = d.post(body=make_task("9500000000099999", ids[600:]), timeout=5)
                self.assertEqual(status, 202)
            finally:
                os.kill(jpid, signal.SIGCONT)
            # Nothing lost: every accepted entry reaches the journal.
            want = set(ids)

            def all_logged():
                seen = {e.get("CREATION_ID") for e in harness.accepted_entries(_PID=str(d.pid))}
                return want <= seen
            harness.poll(all_logged, timeout=60, what="every accepted entry in the journal")
            harness.poll(lambda: d.metrics_value("vidu_upscaled_journal_queue_bytes") == 0,
                         what="the journal queue to drain")
        finally:
            d.stop()
            fake.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
