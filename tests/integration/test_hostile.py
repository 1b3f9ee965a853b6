#!/usr/bin/env python3
"""test_hostile.py: the webhook endpoint faces the internet. Sender authentication for every
scheme (with rotation, replays remembered across a restart), limits at their edges, TLS,
allow_from, slow senders, and hostile traffic after which a valid notification is still served
and nothing accepted is lost."""
import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from email.utils import formatdate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Daemon, FakeUpstream, make_task, new_creation_ids, wait_journal  # noqa: E402

WHSEC_OLD = "whsec_c2Vjb25kLXNlY3JldC1rZXk="
WHSEC_NEW = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH_FAILED = "fb7ba4281f2d4965af8a1b5f6d705fd8"


def sw_headers(secret, msg_id, body, ts=None):
    ts = str(int(time.time()) if ts is None else ts)
    key = base64.b64decode(secret[len("whsec_"):])
    sig = base64.b64encode(hmac.new(key, ("%s.%s." % (msg_id, ts)).encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": "v1," + sig}


def vidu_headers(key, path, query, nonce, date=None):
    date = date or formatdate(usegmt=True)
    s = "POST\n%s\n%s\nvidu\n%s\nDate:%s\nx-request-nonce:%s\n" % (path, query, date, date, nonce)
    sig = base64.b64encode(hmac.new(key.encode(), s.encode(), hashlib.sha256).digest()).decode()
    return {"Date": date, "x-request-nonce": nonce, "X-HMAC-SIGNED-HEADERS": "Date;x-request-nonce",
            "X-HMAC-SIGNATURE": sig, "X-HMAC-ALGORITHM": "hmac-sha256", "X-HMAC-ACCESS-KEY": "vidu"}


class Authentication(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=100)
        cls.fake.start()

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()

    def daemon(self, scheme, secrets, **auth):
        d = Daemon({"upstream": {"base_url": self.fake.url}}, fake=self.fake)
        sec_file = os.path.join(d.tmp, "webhook-secret")
        with open(sec_file, "w") as f:
            f.write("\n".join(secrets) + "\n")
        d.config["auth"] = dict({"scheme": scheme, "secret_file": sec_file}, **auth)
        return d

    def test_standard_webhooks_rotation_and_replay_across_restart(self):
        since = "--since=@%d" % (int(time.time()) - 1)
        d = self.daemon("standard-webhooks", [WHSEC_NEW, WHSEC_OLD])
        with d:
            (cid,) = new_creation_ids(1)
            body = json.dumps(make_task("9500000000000001", [cid])).encode()
            msg = "msg_%s" % cid
            # Signed with the older secret: rotation keeps it valid.
            status, _, raw = d.post(body=body, headers=sw_headers(WHSEC_OLD, msg, body))
            self.assertEqual(status, 202, raw)
            # The same delivery again is answered 2xx without doing the work twice...
            status, _, raw = d.post(body=body, headers=sw_headers(WHSEC_NEW, msg, body))
            self.assertEqual(status, 200)
            self.assertTrue(json.loads(raw).get("replayed"))
            d.restart()
            # ...also after a restart.
            status, _, raw = d.post(body=body, headers=sw_headers(WHSEC_NEW, msg, body))
            self.assertEqual(status, 200)
            self.assertTrue(json.loads(raw).get("replayed"))
            self.assertEqual(len(harness.accepted_entries(CREATION_ID=cid)), 1)
            # Wrong secret, tampered body, stale timestamp, missing headers.
            self.assertEqual(d.post(body=body, headers=sw_headers("whsec_" + base64.b64encode(b"x" * 24).decode(), "m2", body))[0], 401)
            self.assertEqual(d.post(body=body + b" ", headers=sw_headers(WHSEC_NEW, "m3", body))[0], 401)
            self.assertEqual(d.post(body=body, headers=sw_headers(WHSEC_NEW, "m4", body, ts=int(time.time()) - 301))[0], 401)
            self.assertEqual(d.post(body=body)[0], 401)
            # Failures are logged with the reason, rate-limited, and never with a secret.
            for i in range(20):
                d.post(body=body, headers={"webhook-id": "x%d" % i, "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"})
            failures = wait_journal(lambda: harness.journal_entries(MESSAGE_ID=AUTH_FAILED, _PID=str(d.pid)))
            self.assertLessEqual(len(failures), 2)
            self.assertIn("webhook", failures[0]["MESSAGE"])
            # Everything both daemons of this test wrote (a long-used journal holds much more).
            everything = subprocess.run(["journalctl", "-o", "json", "--no-pager", since, "SYSLOG_IDENTIFIER=vidu-upscaled"],
                                        capture_output=True, text=True).stdout
            for secret in (WHSEC_NEW, WHSEC_OLD, WHSEC_NEW[6:], d.api_key):
                self.assertNotIn(secret, everything)
                self.assertNotIn(secret, d.stderr_text())
                self.assertNotIn(secret, d.get("/metrics")[2].decode())
            self.assertGreaterEqual(d.metrics_value("vidu_upscaled_auth_failures_total"), 24)

    def test_hmac_sha256_and_token(self):
        secret = "It's a Secret to Everybody"
        d = self.daemon("hmac-sha256", [secret], header="X-Signature")
        with d:
            (cid,) = new_creation_ids(1)
            body = json.dumps(make_task("9500000000000002", [cid])).encode()
            sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            self.assertEqual(d.post(body=body, headers={"X-Signature": sig})[0], 202)
            self.assertEqual(d.post(body=body, headers={"X-Hub-Signature-256": sig})[0], 401)
            wrong = sig[:-1] + ("1" if sig[-1] == "0" else "0")  # always a different digit
            self.assertEqual(d.post(body=body, headers={"X-Signature": wrong})[0], 401)
        d = self.daemon("token", ["t0ken-a", "t0ken-b"])
        with d:
            (cid,) = new_creation_ids(1)
            body = make_task("9500000000000003", [cid])
            self.assertEqual(d.post(body=body, headers={"Authorization": "Bearer t0ken-b"})[0], 202)
            self.assertEqual(d.post(body=body, headers={"Authorization": "Bearer t0ken-c"})[0], 401)
            self.assertEqual(d.post(body=body)[0], 401)

    def test_vidu_signature_nonce_replay_and_prefix(self):
        key = "test-api-key"
        d = self.daemon("vidu", [key], public_url_prefix="/public")
        with d:
            (cid,) = new_creation_ids(1)
            body = json.dumps(make_task("9500000000000004", [cid])).encode()
            # The sender signed the public URL; a proxy stripped "/public" before the daemon.
            h = vidu_headers(key, "/public/hooks/vidu", "a=1&b=2", "nonce-" + cid)
            self.assertEqual(d.post(path="/hooks/vidu?a=1&b=2", body=body, headers=h)[0], 202)
            # The same nonce again: a replay.
            self.assertEqual(d.post(path="/hooks/vidu?a=1&b=2", body=body, headers=h)[0], 401)
            # A query changed in transit.
            h2 = vidu_headers(key, "/public/hooks/vidu", "a=1&b=2", "nonce2-" + cid)
            self.assertEqual(d.post(path="/hooks/vidu?a=1&b=3", body=body, headers=h2)[0], 401)
            # Too old a Date.
            old = formatdate(time.time() - 600, usegmt=True)
            h3 = vidu_headers(key, "/public/hooks/vidu", "", "nonce3-" + cid, date=old)
            self.assertEqual(d.post(path="/hooks/vidu", body=body, headers=h3)[0], 401)


class Limits(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.fake = FakeUpstream(complete_after_ms=100)
        cls.fake.start()
        cls.d = Daemon({"upstream": {"base_url": cls.fake.url},
                        "server": {"max_body": "4K", "request_timeout": "2s", "idle_timeout": "2s", "max_per_ip": "8",
                                   "max_header": "4K", "max_header_lines": "20"},
                        "limits": {"max_json_depth": "6", "max_tasks": "3", "max_creations": "5"}}, fake=cls.fake)
        cls.d.start()
        cls.accepted = []

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        cls.fake.stop()

    def ok(self, ids):
        status, _, raw = self.d.post(body=make_task("9500000000000010", ids))
        self.assertEqual(status, 202, raw)
        self.accepted.extend(ids)

    def test_body_size_at_the_edge(self):
        (cid,) = new_creation_ids(1)
        task = make_task("9500000000000011", [cid])
        base = json.dumps(task).encode()
        pad = 4096 - len(base) - len(',"pad":""')
        exact = json.dumps(dict(task, pad="x" * pad), separators=(",", ":")).encode()
        exact = exact[:-1] + b" " * (4096 - len(exact)) + b"}" if len(exact) < 4096 else exact
        self.assertEqual(len(exact), 4096)
        self.assertEqual(self.d.post(body=exact)[0], 202)
        self.accepted.append(cid)
        self.assertEqual(self.d.post(body=exact + b" ")[0], 413)
        # Declared too large: refused before the body is read.
        s = socket.create_connection(("127.0.0.1", self.d.port))
        s.sendall(b"POST /hooks/vidu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n")
        self.assertIn(b" 413 ", s.recv(1000).split(b"\r\n")[0])
        s.close()

    def test_json_limits_at_the_edge(self):
        def nested(n):
            return "[" * (n - 1) + json.dumps(make_task("t", ["1"])) + "]" * (n - 1)
        # The task object itself has depth 3 (object > creations array > creation object).
        self.assertNotEqual(self.d.post(body=nested(4))[0], 413)
        self.assertEqual(self.d.post(body=nested(5))[0], 413)
        ids = new_creation_ids(5)
        self.ok(ids)
        self.assertEqual(self.d.post(body=make_task("9500000000000012", new_creation_ids(6)))[0], 413)
        tasks = [make_task("t%d" % i, [], state="queueing") for i in range(4)]
        self.assertEqual(self.d.post(body=tasks[:3])[0], 200)
        self.assertEqual(self.d.post(body=tasks)[0], 413)

    def test_url_and_headers(self):
        self.assertEqual(self.d.post(path="/hooks/vidu?" + "a" * 5000, body={})[0], 414)

        def with_lines(n):
            body = json.dumps(make_task("t", [], state="queueing")).encode()
            lines = ["Host: x", "Content-Type: application/json", "Content-Length: %d" % len(body)]
            lines += ["X-H%d: v" % i for i in range(n - len(lines))]
            s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
            s.sendall(("POST /hooks/vidu HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode() + body)
            status = s.recv(1000).split(b"\r\n")[0]
            s.close()
            return int(status.split()[1])
        # server.max_header_lines = 20: at the edge, and one past it.
        self.assertEqual(with_lines(20), 200)
        self.assertEqual(with_lines(21), 431)

    def test_connections_per_address(self):
        # server.max_per_ip = 8: eight idle connections are held, the ninth is closed at once.
        held = [socket.create_connection(("127.0.0.1", self.d.port), timeout=10) for _ in range(8)]
        extra = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = extra.recv(1000)
        except ConnectionResetError:
            answer = b""
        self.assertEqual(answer, b"")
        extra.close()
        for s in held:
            s.close()
        def healthy():
            try:
                return self.d.get("/healthz")[0] == 200
            except OSError:  # refused until the daemon has noticed the others closing
                return False
        harness.poll(healthy, what="a connection once the others closed")

    def test_slow_sender_is_cut_and_blocks_nobody(self):
        s = socket.create_connection(("127.0.0.1", self.d.port))
        head = b"POST /hooks/vidu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        s.sendall(head)
        closed = threading.Event()

        def trickle():
            try:
                for _ in range(40):
                    s.sendall(b" ")
                    time.sleep(0.25)
            except OSError:
                closed.set()
        t = threading.Thread(target=trickle)
        t.start()
        # Meanwhile a valid notification is served at once.
        (cid,) = new_creation_ids(1)
        self.ok([cid])
        t.join()
        # The trickling sender was disconnected well before it finished (10 s of trickle).
        self.assertTrue(closed.is_set())
        s.close()

    def test_zz_after_all_that_nothing_is_lost(self):
        (cid,) = new_creation_ids(1)
        self.ok([cid])
        rows = {r["creation_id"]: r["state"] for r in self.d.ledger_rows()}
        for c in self.accepted:
            self.assertIn(c, rows)
        harness.poll(lambda: all(self.fake.stats()["created"].get(c) == 1 for c in self.accepted),
                     timeout=15, what="every accepted id submitted once")
        self.assertEqual(self.d.get("/healthz")[0], 200)


class Hostile(unittest.TestCase):
    def test_garbage_then_a_valid_notification(self):
        harness.ensure_journald()
        with FakeUpstream(complete_after_ms=100) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}, "server": {"request_timeout": "2s"}}, fake=fake)
            with d:
                junk = [b"\x00\xff" * 100, b"{" * 10000, b"[" * 100000,
                        b'{"id":"1","state":"success","creations":' + b"[" * 5000 + b"]" * 5000 + b"}",
                        b"null", b'"string"', b"1e999", b'{"id":"1",}', b"{'id':'1'}"]
                for j in junk:
                    try:
                        status = d.post(body=j)[0]
                    except OSError as e:
                        self.fail("%r after posting %r...: %s" % (e, j[:40], d.stderr_text()[-3000:]))
                    self.assertIn(status, (400, 413), j[:40])
                # Absurd ids are refused one by one; the notification itself is answered.
                for j in (b'{"id":"1","state":"success","creations":[{"id":"' + b"\x01" * 50 + b'"}]}',
                          json.dumps({"id": "1", "state": "success", "creations": [{"id": "x" * 100000}]}).encode()):
                    status, _, raw = d.post(body=j)
                    self.assertEqual(status, 200)
                    self.assertEqual(json.loads(raw)["accepted"], [])
                    self.assertEqual(len(json.loads(raw)["rejected"]), 1)
                for raw in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00garbage-tls", b"POST /hooks/vidu HTTP/9.9\r\n\r\n",
                            b"POST /hooks/vidu HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                            b"POST /hooks/vidu HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n"):
                    s = socket.create_connection(("127.0.0.1", d.port))
                    s.sendall(raw)
                    s.settimeout(5)
                    try:
                        s.recv(1000)
                    except OSError:
                        pass
                    s.close()
                # Many connections opened and dropped.
                socks = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(50)]
                for s in socks:
                    s.close()
                (cid,) = new_creation_ids(1)
                status, _, raw = d.post(body=make_task("9500000000000020", [cid]))
                self.assertEqual(status, 202, raw)
                harness.poll(lambda: fake.stats()["created"].get(cid) == 1, what="the valid notification submitted")
                self.assertEqual(d.proc.poll(), None)


class Transport(unittest.TestCase):
    def test_tls(self):
        harness.ensure_journald()
        tmp = tempfile.mkdtemp(prefix="vidu-tls-")
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        with FakeUpstream(complete_after_ms=100) as fake:
            d = Daemon({"upstream": {"base_url": fake.url}, "server": {"tls_cert": cert, "tls_key": key}}, fake=fake)
            with d:
                ctx = ssl.create_default_context(cafile=cert)
                conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=ctx, timeout=10)
                (cid,) = new_creation_ids(1)
                conn.request("POST", "/hooks/vidu", body=json.dumps(make_task("9500000000000030", [cid])),
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                self.assertEqual(r.status, 202)
                r.read()
                conn.close()
                # Plain HTTP to the TLS port gets no answer.
                with self.assertRaises(Exception):
                    d.get("/healthz")

    def test_allow_from(self):
        harness.ensure_journald()
        with FakeUpstream(complete_after_ms=100) as fake:
            with Daemon({"upstream": {"base_url": fake.url}, "server": {"allow_from": "10.0.0.0/8"}}, fake=fake) as d:
                with self.assertRaises((ConnectionError, http.client.RemoteDisconnected, OSError)):
                    d.get("/healthz")
            with Daemon({"upstream": {"base_url": fake.url}, "server": {"allow_from": "10.0.0.0/8, 127.0.0.0/8"}},
                        fake=fake) as d:
                self.assertEqual(d.get("/healthz")[0], 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
