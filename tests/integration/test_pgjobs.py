#!/usr/bin/env python3
"""test_pgjobs.py: `vidu-upscaled jobs ...` on a PostgreSQL ledger (store.backend = postgresql)
against the real server pgserver.py starts: the same ledger content in an SQLite file and in
PostgreSQL gives byte-identical output from every command, directly and through PgBouncer in
transaction mode; the schema is made by the first command; a newer schema, an unreachable server
and a bad password are refused with a clear message that never shows the password; the daemon
itself refuses the backend (exit 78) rather than half-working."""
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import pgserver  # noqa: E402

MINIMAL = "[upstream]\nbase_url = http://127.0.0.1:9\napi_key = k\n"
T0 = 1767225600 * 1000000  # 2026-01-01T00:00:00Z, in usec

# creation_id, source, upscale, state, attempt, next_at, http_status, error, url, created, updated,
# duration, credits
JOBS = [
    ("812000000000000001", "src-1", None, "pending", 0, T0 + 5, None, None, None, T0 + 1, T0 + 1, 4, None),
    ("812000000000000002", "src-1", "ups-2", "submitted", 1, T0 + 30000000, 200, None, None, T0 + 2, T0 + 3000000,
     8, None),
    ("812000000000000003", "src-2", "ups-3", "succeeded", 1, T0 + 3, 200, None, "https://cdn.example/3.mp4",
     T0 + 3, T0 + 61000000, None, 40),
    ("812000000000000004", "src-2", None, "dead", 10, T0 + 4, 500, "HTTP 500: \"quoted\" \\ and ünïcode", None,
     T0 + 4, T0 + 3600000000, 4, None),
    ("812000000000000005", None, None, "uncertain", 1, T0 + 5, None, "interrupted while submitting", None, T0 + 5,
     T0 + 5, 4, None),
    ("812000000000000006", "src-3", None, "waiting", 2, T0 + 86400000000, 429, "rate limited", None, T0 + 6,
     T0 + 7, 4, None),
    ("812000000000000007", "src-3", "ups-7", "failed", 1, T0 + 7, 200, "upstream said failed", None, T0 + 7,
     T0 + 8, 4, 0),
]


def clean_env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith("VIDU_UPSCALED_") and k not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")}


def at(usec):
    return "'epoch'::timestamptz + %d * interval '1 microsecond'" % usec


def lit(v):
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    return "'" + v.replace("'", "''") + "'"


class PgJobs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.ensure_journald()
        cls.pg = pgserver.PgServer().start()
        cls.bouncer = cls.pg.bouncer()

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vidu-pgjobs-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def config(self, name, store):
        path = os.path.join(self.tmp, name + ".conf")
        with open(path, "w") as f:
            f.write(MINIMAL + "[store]\n" + store)
        return path

    def jobs(self, conf, *args):
        return subprocess.run([harness.DAEMON, "-c", conf, "jobs"] + list(args), capture_output=True, text=True,
                              env=clean_env(), timeout=120)

    def pg_config(self, db, conninfo=None):
        return self.config("pg-" + db, "backend = postgresql\nurl = %s\npath = %s/unused.db\n"
                           % (conninfo or self.pg.conninfo(db=db), self.tmp))

    def sqlite_ledger(self, jobs, meta=(), name="ledger"):
        path = os.path.join(self.tmp, name + ".db")
        conf = self.config("sqlite-" + name, "path = %s\n" % path)
        # A write command makes the file and its schema; the job it names does not exist.
        r = self.jobs(conf, "retry", "000")
        self.assertEqual(r.returncode, 1, r.stderr)
        db = sqlite3.connect(path)
        with db:
            for j in jobs:
                db.execute("INSERT INTO jobs (creation_id, source_task_id, upscale_task_id, state, attempt, next_at, "
                           "http_status, upstream_error, result_url, created_at, updated_at, duration, credits) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", j)
                db.execute("UPDATE job_counts SET n = n + 1 WHERE state = ?", (j[3],))
            for k, v in meta:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, v))
        db.close()
        return conf

    def pg_ledger(self, db, jobs, meta=(), conninfo=None):
        self.pg.create_database(db)
        conf = self.pg_config(db, conninfo)
        # The first command makes the schema.
        r = self.jobs(conf, "counts")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = []
        for j in jobs:
            v = list(j)
            rows.append("(%s, %s, %s, %s, %d, %s, %s, %s, %s, %s, %s, %s, %s)" % (
                lit(v[0]), lit(v[1]), lit(v[2]), lit(v[3]), v[4], at(v[5]), lit(v[6]), lit(v[7]), lit(v[8]),
                at(v[9]), at(v[10]), lit(v[11]), lit(v[12])))
        if rows:
            self.pg.sql("INSERT INTO jobs (creation_id, source_task_id, upscale_task_id, state, attempt, next_at, "
                        "http_status, upstream_error, result_url, created_at, updated_at, duration, credits) VALUES "
                        + ", ".join(rows), db=db)
        for k, v in meta:
            self.pg.sql("INSERT INTO meta (key, value) VALUES (%s, %s)" % (lit(k), lit(v)), db=db)
        return conf

    def same(self, a, b, *args, normalise=None):
        ra, rb = self.jobs(a, *args), self.jobs(b, *args)
        outs = []
        for r in (ra, rb):
            out, err = r.stdout, r.stderr
            if normalise:
                out, err = normalise(out), normalise(err)
            outs.append((r.returncode, out, err))
        self.assertEqual(outs[0], outs[1], "jobs %s differs between SQLite and PostgreSQL" % " ".join(args))
        return ra

    READS = [("list",), ("list", "--json"), ("list", "dead"), ("list", "submitted", "--json"),
             ("list", "bogus"), ("counts",),
             ("show", "812000000000000003", "812000000000000004"), ("show", "812000000000000005", "nosuch")]

    def test_reads_identical(self):
        meta = [("budget_blocked", "day %d" % (T0 + 86400000000)), ("operator_pause", str(T0))]
        a = self.sqlite_ledger(JOBS, meta)
        for name, ci in (("reads", None), ("reads_bouncer", "bouncer")):
            with self.subTest(name):
                conninfo = self.bouncer.conninfo(db=name) if ci else None
                b = self.pg_ledger(name, JOBS, meta, conninfo)
                for args in self.READS:
                    r = self.same(a, b, *args)
                    if args[0] != "list" or args[-1] != "bogus":
                        self.assertIn(r.returncode, (0, 1), r.stderr)
                listing = self.jobs(b, "list").stdout
                self.assertIn("(7 jobs)", listing)
                self.assertRegex(listing, r"\n812000000000000004 +dead +10 ")
                counts = self.jobs(b, "counts").stdout
                self.assertIn("submissions paused by an operator since 2026-01-01T00:00:00Z", counts)
                self.assertIn("budget reached", counts)
                shown = json.loads(self.jobs(b, "show", "812000000000000003").stdout)
                self.assertEqual(shown["result_url"], "https://cdn.example/3.mp4")
                self.assertEqual(shown["created_at"], "2026-01-01T00:00:00Z")

    def test_writes_identical(self):
        for name, ci in (("writes", None), ("writes_bouncer", "bouncer")):
            with self.subTest(name):
                self.writes(name, self.bouncer.conninfo(db=name) if ci else None)

    def writes(self, name, conninfo):
        a = self.sqlite_ledger(JOBS, name=name)
        b = self.pg_ledger(name, JOBS, conninfo=conninfo)
        # 812000000000000005 held `uncertain` under an instance's claim (as a takeover under
        # retry.uncertain = hold leaves it): the operator's release must fence that claim out.
        self.pg.sql("UPDATE jobs SET claimed_by = 'inst-a', claim_seq = 5, lease_until = now() + interval '1 h' "
                    "WHERE creation_id = '812000000000000005'", db=name)
        stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
        pid = re.compile(r"vidu-upscaled\[\d+\]")

        def norm(s):  # the times the commands themselves wrote; the pid of a journal line on stderr
            return pid.sub("vidu-upscaled[PID]", stamp.sub("TIME", s))
        steps = [("retry", "812000000000000004", "812000000000000005", "812000000000000002", "nosuch"),
                 ("abandon", "812000000000000001", "812000000000000003"),
                 ("retry",), ("pause",), ("pause",), ("counts",), ("resume",), ("resume",),
                 ("retry", "--state", "failed"), ("list",), ("list", "--json"), ("counts",)]
        for args in steps:
            self.same(a, b, *args, normalise=norm)
        # What the writes did, read back from PostgreSQL itself: operator saves end any claim and
        # move the claim counter on, fencing out an instance still holding an old answer.
        rows = self.pg.sql("SELECT creation_id, state, attempt, claimed_by IS NULL, lease_until IS NULL, claim_seq "
                           "FROM jobs WHERE creation_id IN ('812000000000000004', '812000000000000001', "
                           "'812000000000000002', '812000000000000005') ORDER BY 1", db=name)
        self.assertEqual(rows, [["812000000000000001", "dead", "0", "t", "t", "1"],
                                ["812000000000000002", "submitted", "1", "t", "t", "0"],
                                ["812000000000000004", "waiting", "0", "t", "t", "1"],
                                ["812000000000000005", "waiting", "0", "t", "t", "6"]])
        self.assertEqual(self.pg.sql("SELECT count(*) FROM meta WHERE key = 'operator_pause'", db=name), [["0"]])

    def test_events_identical(self):
        """`events list|retry` print the same from both; an operator's save on PostgreSQL writes the
        outcome event the daemon asked for (meta event_states), with the job's payload, as SQLite's
        does."""
        events = [  # id, type, creation_id, state, attempts, next_at, since, created, updated, status, error
            ("evt_000000000000000000000001", "upscale.succeeded", "812000000000000003", "delivered", 1, T0 + 9,
             T0 + 9, T0 + 9, T0 + 10, 204, None),
            ("evt_000000000000000000000002", "upscale.dead", "812000000000000004", "dead", 7, T0 + 11, T0 + 11,
             T0 + 11, T0 + 12, 410, "HTTP 410: gone"),
            ("evt_000000000000000000000003", "upscale.failed", "812000000000000007", "pending", 2,
             T0 + 86400000000, T0 + 13, T0 + 13, T0 + 14, None, "timed out"),
        ]
        meta = [("event_states", str(0xF0))]  # succeeded, failed, dead, uncertain
        payload = '{"order": 42, "note": "caf\u00e9 \\ \"q\""}'
        a = self.sqlite_ledger(JOBS, meta)
        db = sqlite3.connect(os.path.join(self.tmp, "ledger.db"))
        with db:
            for e in events:
                db.execute("INSERT INTO events (id, type, creation_id, state, attempts, next_at, since, created_at, "
                           "updated_at, http_status, error, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}')", e)
            db.execute("UPDATE jobs SET payload = ? WHERE creation_id = '812000000000000001'", (payload,))
        db.close()
        b = self.pg_ledger("events", JOBS, meta)
        for e in events:
            self.pg.sql("INSERT INTO events (id, type, creation_id, state, attempts, next_at, since, created_at, "
                        "updated_at, http_status, error, body) VALUES (%s, %s, %s, %s, %d, %s, %s, %s, %s, %s, %s, "
                        "'{}')" % (lit(e[0]), lit(e[1]), lit(e[2]), lit(e[3]), e[4], at(e[5]), at(e[6]), at(e[7]),
                                   at(e[8]), lit(e[9]), lit(e[10])), db="events")
        self.pg.sql("UPDATE jobs SET payload = %s WHERE creation_id = '812000000000000001'" % lit(payload),
                    db="events")
        stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
        new_id = re.compile(r"evt_[0-9a-f]{24}")
        pid = re.compile(r"vidu-upscaled\[\d+\]")

        def norm(s):
            return pid.sub("PID", new_id.sub("EVT", stamp.sub("TIME", s)))

        def events_cmd(conf, *args):
            return subprocess.run([harness.DAEMON, "-c", conf, "events"] + list(args), capture_output=True,
                                  text=True, env=clean_env(), timeout=120)
        retried = False
        for args in [("list",), ("list", "--json"), ("list", "--state", "dead"), ("list", "--state", "bogus"),
                     ("retry", "evt_000000000000000000000002", "evt_000000000000000000000003", "evt_nosuch"),
                     ("retry", "--dead"), ("retry", "evt_000000000000000000000001"), ("list", "--json")]:
            ra, rb = events_cmd(a, *args), events_cmd(b, *args)
            # Byte for byte until a retry; after one, its "now" differs between the two runs.
            retried = retried or args[0] == "retry"
            f = norm if retried else (lambda x: x)
            self.assertEqual((ra.returncode, f(ra.stdout), f(ra.stderr)), (rb.returncode, f(rb.stdout), f(rb.stderr)),
                             "events %s differs" % " ".join(args))
        self.assertEqual(self.pg.sql("SELECT id, state FROM events ORDER BY seq", db="events"),
                         [[events[0][0], "pending"], [events[1][0], "pending"], [events[2][0], "pending"]])
        # Saves by an operator: abandon (pending -> dead) writes upscale.dead with the payload;
        # retry (dead -> waiting) writes nothing.
        for args in (("abandon", "812000000000000001"), ("retry", "812000000000000004")):
            self.same(a, b, *args, normalise=norm)
        db = sqlite3.connect(os.path.join(self.tmp, "ledger.db"))
        want = [(norm(r[0]), r[1], r[2], norm(r[3])) for r in
                db.execute("SELECT id, type, creation_id, body FROM events ORDER BY seq")]
        db.close()
        got = [(norm(r[0]), r[1], r[2], norm(r[3])) for r in
               self.pg.sql("SELECT id, type, creation_id, body FROM events ORDER BY seq", db="events")]
        self.assertEqual(got, want)
        self.assertEqual(len(got), 4)
        self.assertEqual(got[3][1:3], ("upscale.dead", "812000000000000001"))
        body = json.loads(self.pg.sql("SELECT body FROM events ORDER BY seq DESC LIMIT 1", db="events")[0][0])
        self.assertEqual(body["data"]["payload"], payload)
        self.assertEqual(body["data"]["error"], "abandoned by an operator")

    def test_a_row_held_by_an_instance_times_out(self):
        """A job row locked by another transaction (an instance's claim in progress): the change
        waits at most the lock timeout (5 s, as SQLite's busy timeout), then fails cleanly and
        changes nothing; reads do not wait at all."""
        b = self.pg_ledger("locked", JOBS)
        holder = subprocess.Popen([os.path.join(pgserver.PG_BIN, "psql"), "-X", "-q", "-h", self.pg.tmp,
                                   "-p", str(self.pg.port), "-U", pgserver.ADMIN, "-d", "locked"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        try:
            holder.stdin.write("BEGIN;\nSELECT 1 FROM jobs WHERE creation_id = '812000000000000001' FOR UPDATE;\n")
            holder.stdin.flush()
            # Its SELECT ... FOR UPDATE done, the session waits in its transaction, the row locked.
            harness.poll(lambda: self.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'locked' "
                                             "AND state = 'idle in transaction' AND query LIKE '%FOR UPDATE%'",
                                             db="postgres") == [["1"]], timeout=30, what="the held row")
            r = self.jobs(b, "show", "812000000000000001")
            self.assertEqual(r.returncode, 0, r.stderr)
            started = time.monotonic()
            r = self.jobs(b, "abandon", "812000000000000001")
            took = time.monotonic() - started
            self.assertEqual(r.returncode, 1)
            self.assertIn("lock timeout", r.stderr)
            self.assertGreaterEqual(took, 4.5)
            self.assertLess(took, 60)
        finally:
            holder.stdin.write("ROLLBACK;\n")
            holder.stdin.close()
            holder.wait(timeout=60)
        self.assertEqual(self.pg.sql("SELECT state FROM jobs WHERE creation_id = '812000000000000001'", db="locked"),
                         [["pending"]])
        r = self.jobs(b, "abandon", "812000000000000001")
        self.assertEqual((r.returncode, r.stdout), (0, "812000000000000001: pending -> dead\n"))

    def test_empty_database_gets_the_schema_and_a_newer_one_is_refused(self):
        self.pg.create_database("fresh")
        conf = self.pg_config("fresh")
        r = self.jobs(conf, "list")
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        self.assertEqual(r.stdout.splitlines()[-1], "(0 jobs)")
        version = self.pg.sql("SELECT value FROM meta WHERE key = 'schema_version'", db="fresh")[0][0]
        self.pg.sql("UPDATE meta SET value = '%d' WHERE key = 'schema_version'" % (int(version) + 1), db="fresh")
        r = self.jobs(conf, "list")
        self.assertEqual(r.returncode, 1)
        self.assertIn("newer than this vidu-upscaled knows (%s)" % version, r.stderr)
        self.assertEqual(r.stdout, "")

    def test_unreachable_and_bad_password_never_show_it(self):
        conf = self.config("down", "backend = postgresql\nurl = postgresql://vidu:Pw-Marker-1@127.0.0.1:%d/x\n"
                           % pgserver.free_port())
        r = self.jobs(conf, "list")
        self.assertEqual(r.returncode, 1)
        self.assertIn("jobs: cannot connect to the ledger's database", r.stderr)
        self.assertNotIn("Marker", r.stdout + r.stderr)
        # A role that needs a password (scram over TCP), given through password_file.
        self.pg.sql("CREATE ROLE pwuser LOGIN PASSWORD 'Right-Marker-2'", db="postgres")
        self.pg.create_database("pw")
        self.pg.sql("GRANT ALL ON SCHEMA public TO pwuser", db="pw")
        hba = os.path.join(self.pg.data, "pg_hba.conf")
        with open(hba) as f:
            text = f.read()
        with open(hba, "w") as f:
            f.write("host all pwuser 127.0.0.1/32 scram-sha-256\n" + text)
        self.pg.sql("SELECT pg_reload_conf()", db="postgres")
        pwfile = os.path.join(self.tmp, "pw")
        conf = self.config("pw", "backend = postgresql\npassword_file = %s\n"
                           "url = host=127.0.0.1 port=%d dbname=pw user=pwuser\n" % (pwfile, self.pg.port))
        with open(pwfile, "w") as f:
            f.write("Wrong-Marker-3\n")
        harness.poll(lambda: self.jobs(conf, "counts").returncode == 1, timeout=30,
                     what="the server asking pwuser for its password")
        for given, ok in (("Wrong-Marker-3", False), ("Right-Marker-2", True)):
            with open(pwfile, "w") as f:
                f.write(given + "\n")
            r = self.jobs(conf, "counts")
            self.assertEqual(r.returncode, 0 if ok else 1, r.stderr)
            self.assertNotIn("Marker", r.stdout + r.stderr)
            if not ok:
                self.assertIn("password authentication failed", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
