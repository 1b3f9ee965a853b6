#!/usr/bin/env python3
"""test_pgledger.py: the PostgreSQL foundation of the shared ledger (issue 27) against a real
PostgreSQL 15 (pgserver.py): the C connection module (daemon/pgconn.c) and schema
(daemon/pgschema.c) driven by tests/integration/pg-driver.c, over a unix socket, TCP and PgBouncer
in transaction mode; concurrent migrators; a newer schema refused; claims with SKIP LOCKED; the
fence; a batch's round trips counted on the wire; the server restarted and stopped (SIGSTOP)
under a batch in flight. Not yet wired into the daemon."""
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgserver  # noqa: E402

SOURCE = os.environ.get("VIDU_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
# The schema version this build migrates to, as pgschema.h says.
with open(os.path.join(SOURCE, "daemon", "pgschema.h")) as _f:
    SCHEMA = int(next(line.split()[2] for line in _f if line.startswith("#define PGSCHEMA_VERSION ")))
from harness import SOURCE_DIR, TIMEOUT_SCALE, VALGRIND  # noqa: E402

DRIVER = os.environ.get("VIDU_PG_DRIVER", os.path.join(SOURCE_DIR, "build", "tests", "pg-driver"))
MIGRATION_LOCK = 508605486369  # pgschema.c
# Under VIDU_VALGRIND=1 the scenarios that measure no time run under valgrind too.
UNTIMED = ("basic", "migrate", "claim", "fence", "restart", "terminate", "same-id", "intake")


class Driver:
    """One run of pg-driver: its lines read as they come, lines sent to its stdin."""

    def __init__(self, *args):
        self.args = [DRIVER] + [str(a) for a in args]
        cmd = self.args
        if VALGRIND and args[0] in UNTIMED:
            cmd = ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                   "-q"] + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix, timeout=60):
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no line %r from %s; saw %r" % (prefix, self.args[1], self.seen))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait()
                raise AssertionError("%s exited (%s) before %r; saw %r; stderr:\n%s"
                                     % (self.args[1], self.proc.returncode, prefix, self.seen,
                                        self.proc.stderr.read()))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, want=0, timeout=120):
        try:
            code = self.proc.wait(timeout=timeout * TIMEOUT_SCALE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("%s did not end; saw %r" % (self.args[1], self.seen))
        while True:
            line = self.lines.get()
            if line is None:
                break
            self.seen.append(line)
        err = self.proc.stderr.read()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not f.closed:
                f.close()
        if code != want:
            raise AssertionError("%s exited %s (wanted %s); saw %r; stderr:\n%s"
                                 % (self.args[1], code, want, self.seen, err))
        return self.seen


def run_driver(*args, want=0):
    d = Driver(*args)
    d.proc.stdin.close()
    return d.finish(want)


class CountingProxy:
    """A TCP relay that records the direction of every chunk it passes: the client's turns to
    speak (a client chunk after a server chunk) are the round trips."""

    def __init__(self, port):
        self.target = port
        self.log = []
        self.conns = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [c, s]
            for a, b, tag in ((c, s, "c"), (s, c, "s")):
                threading.Thread(target=self._pump, args=(a, b, tag), daemon=True).start()

    def _pump(self, src, dst, tag):
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                with self.lock:
                    self.log.append(tag)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def mark(self):
        with self.lock:
            return len(self.log)

    def client_turns(self, since):
        with self.lock:
            log = self.log[since:]
        return sum(1 for i, t in enumerate(log) if t == "c" and (i == 0 or log[i - 1] == "s"))

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class PgLedgerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = pgserver.PgServer().start()
        cls.bouncer = cls.pg.bouncer()

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()

    def fresh(self, name):
        """A new empty database for one test, and its unix-socket connection string."""
        return self.pg.create_database(name)

    def test_basic_unix(self):
        lines = run_driver("basic", self.fresh("basic_unix"))
        self.assertIn("migrated from 0 to %d" % SCHEMA, lines)
        self.assertIn("batch of 64: syncs=1 results=65", lines)
        print([x for x in lines if x.startswith("large batch")][0])
        self.assertEqual(lines[-1], "ok")

    def test_basic_tcp(self):
        self.fresh("basic_tcp")
        lines = run_driver("basic", self.pg.conninfo(db="basic_tcp", tcp=True))
        self.assertEqual(lines[-1], "ok")

    def test_basic_pgbouncer(self):
        """Transaction mode: no named statements, no session state, a transaction over two
        batches keeps its server connection."""
        self.fresh("basic_bouncer")
        lines = run_driver("basic", self.bouncer.conninfo(db="basic_bouncer"))
        self.assertIn("two-batch transaction ok", lines)
        self.assertEqual(lines[-1], "ok")
        # Twice, so the second run finds the schema made through the pooler.
        lines = run_driver("basic", self.bouncer.conninfo(db="basic_bouncer"))
        self.assertIn("migrated from %d to %d" % (SCHEMA, SCHEMA), lines)

    def test_claims_never_shared(self):
        for name, ci in (("claim_unix", None), ("claim_bouncer", "bouncer")):
            with self.subTest(name):
                self.fresh(name)
                ci = self.bouncer.conninfo(db=name) if ci else self.pg.conninfo(db=name)
                lines = run_driver("claim", ci)
                self.assertIn("skip locked ok", lines)
                self.assertIn("claimed 200, none twice", lines)

    def test_statement_timeout_is_the_batch_own(self):
        """The server cancels a slow batch; the connection stays; through PgBouncer another
        client's transactions on the same server connections do not inherit the timeout."""
        for name, via in (("timeout_unix", False), ("timeout_bouncer", True)):
            with self.subTest(name):
                self.fresh(name)
                ci = self.bouncer.conninfo(db=name) if via else self.pg.conninfo(db=name)
                lines = run_driver("timeout", ci)
                self.assertEqual(lines[-1], "ok")

    def test_idle_connection_terminated(self):
        lines = run_driver("terminate", self.fresh("terminate"))
        self.assertEqual(lines[-1], "ok")
        self.assertEqual(len([x for x in lines if x.startswith("event a lost")]), 1, lines)

    def test_two_batches_pipelined(self):
        lines = run_driver("pipeline", self.fresh("pipeline"))
        self.assertEqual(lines[-1], "ok")
        self.assertIn("pipelined in order ok", lines)
        self.assertIn("named statements ok", lines)
        # The change of the table made the named statement's plan stale: one failure, no more.
        self.assertIn("stale plan error=-5 sqlstate=0A000", lines)
        self.assertIn("failure behind ok", lines)
        self.assertIn("lost under both ok", lines)

    def test_same_notification_at_two_instances(self):
        for name, via in (("same_unix", False), ("same_bouncer", True)):
            with self.subTest(name):
                self.fresh(name)
                ci = self.bouncer.conninfo(db=name) if via else self.pg.conninfo(db=name)
                self.assertEqual(run_driver("same-id", ci)[-1], "ok")

    def test_intake_one_statement_a_turn(self):
        """A turn's deliveries and creations in one statement: replays and duplicates within and
        across turns and instances, directly and through PgBouncer."""
        for name, ci in (("intake", None), ("intake_bouncer", "bouncer")):
            with self.subTest(name):
                self.fresh(name)
                ci = self.bouncer.conninfo(db=name) if ci else self.pg.conninfo(db=name)
                self.assertEqual(run_driver("intake", ci)[-1], "ok")

    def test_queues_read_their_partial_indexes(self):
        """50,000 finished jobs and 20 due: every claim, takeover, renewal and purge reads its
        own index (EXPLAIN), so its cost does not grow with the ledger's history."""
        self.assertEqual(run_driver("plans", self.fresh("plans"))[-1], "ok")

    def test_fence(self):
        lines = run_driver("fence", self.fresh("fence"))
        for step in ("fence ok", "uncertain ok", "release ok", "poll claim ok", "control ok", "ok"):
            self.assertIn(step, lines)

    def _hold_migration_lock(self, db):
        """A psql session holding the migrations' advisory lock until its COMMIT."""
        holder = subprocess.Popen([os.path.join(pgserver.PG_BIN, "psql"), "-X", "-q", "-h", self.pg.tmp,
                                   "-p", str(self.pg.port), "-U", pgserver.ADMIN, "-d", db],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        holder.stdin.write("BEGIN;\nSELECT pg_advisory_xact_lock(%d);\n" % MIGRATION_LOCK)
        holder.stdin.flush()
        self._poll(lambda: self.pg.sql(self.LOCKS % ("true", db), db="postgres") == [["1"]], "the held lock")
        return holder

    LOCKS = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted = %s "
             "AND database = (SELECT oid FROM pg_database WHERE datname = '%s')")

    def test_migration_lock_wait_times_out_cleanly(self):
        ci = self.fresh("locked")
        holder = self._hold_migration_lock("locked")
        try:
            d = Driver("migrate-timeout", ci)
            d.expect("ready")
            d.send("go")
            line = d.expect("timed out")
            lines = d.finish()
        finally:
            holder.kill()
            holder.wait()
            holder.stdin.close()
        self.assertIn("statement timeout", line)
        self.assertEqual(lines[-1], "ok")

    def test_concurrent_migrators_migrate_once(self):
        """Three instances on an empty database, all held at the migration lock at once."""
        ci = self.fresh("race")
        drivers = [Driver("migrate", ci) for _ in range(3)]
        for d in drivers:
            d.expect("ready")
        holder = self._hold_migration_lock("race")
        try:
            locks = self.LOCKS.replace("'%s'", "'race'")
            for d in drivers:
                d.send("go")
            self._poll(lambda: self.pg.sql(locks % "false", db="postgres") == [["3"]],
                       "three migrators waiting on the lock")
            holder.stdin.write("COMMIT;\n")
            holder.stdin.close()
            holder.wait(timeout=60)
        finally:
            if holder.poll() is None:
                holder.kill()
        froms = sorted(d.expect("migrated from") for d in drivers)
        for d in drivers:
            d.finish()
        self.assertEqual(froms, ["migrated from 0 to %d" % SCHEMA] + ["migrated from %d to %d" % (SCHEMA, SCHEMA)] * 2)
        self.assertEqual(self.pg.sql("SELECT value FROM meta", db="race"), [[str(SCHEMA)]])
        tables = self.pg.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", db="race")
        self.assertEqual(tables, [["control"], ["events"], ["job_count_deltas"], ["job_counts"], ["jobs"], ["meta"],
                                  ["replay"], ["submissions"]])

    def test_version_1_migrated_keeping_its_jobs(self):
        """A database left at version 1 (as the first release made it) gains the SQLite ledger's
        later columns and tables, the events' trigger (version 3) and the counts' tally (4), its jobs
        kept and counted."""
        ci = self.fresh("old")
        d = Driver("migrate", ci)
        d.expect("ready")
        d.send("go")
        d.finish()
        # Back to version 1: what migrations 2 and 3 add, taken away.
        self.pg.sql("DROP FUNCTION vidu_job_event() CASCADE; DROP FUNCTION vidu_jobs_inserted() CASCADE; "
                    "DROP FUNCTION vidu_jobs_moved() CASCADE; DROP FUNCTION vidu_jobs_deleted() CASCADE; "
                    "DROP TABLE job_counts, job_count_deltas; ALTER TABLE jobs DROP COLUMN duration, DROP COLUMN credits, DROP COLUMN payload; "
                    "DROP TABLE submissions, events; "
                    "UPDATE meta SET value = '1' WHERE key = 'schema_version'; "
                    "INSERT INTO jobs (creation_id, source_task_id, state, next_at, created_at, updated_at) "
                    "VALUES ('old-1', 'src', 'succeeded', now(), now(), now())", db="old")
        d = Driver("migrate", ci)
        d.expect("ready")
        d.send("go")
        self.assertEqual(d.expect("migrated from"), "migrated from 1 to %d" % SCHEMA)
        d.finish()
        self.assertEqual(self.pg.sql("SELECT state, duration IS NULL, credits IS NULL, payload IS NULL "
                                     "FROM jobs", db="old"), [["succeeded", "t", "t", "t"]])
        cols = self.pg.sql("SELECT table_name, count(*) FROM information_schema.columns "
                           "WHERE table_schema = 'public' AND table_name IN ('submissions', 'events') "
                           "GROUP BY 1 ORDER BY 1", db="old")
        self.assertEqual(cols, [["events", "13"], ["submissions", "3"]])
        self.assertEqual(self.pg.sql("SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobs'::regclass "
                                     "AND NOT tgisinternal ORDER BY 1", db="old"),
                         [["jobs_count_delete"], ["jobs_count_insert"], ["jobs_count_update"], ["jobs_event"]])
        # The states jobs end in are a tally, counted once by the migration.
        self.assertEqual(self.pg.sql("SELECT state, n FROM job_counts", db="old"), [["succeeded", "1"]])

    def test_newer_schema_refused(self):
        ci = self.fresh("newer")
        d = Driver("migrate", ci)
        d.expect("ready")
        d.send("go")
        d.finish()
        self.pg.sql("UPDATE meta SET value = '%d' WHERE key = 'schema_version'" % (SCHEMA + 1), db="newer")
        d = Driver("migrate", ci)
        d.expect("ready")
        d.send("go")
        refused = d.expect("refused")
        d.finish(want=3)
        self.assertIn("schema is at version %d, newer than this vidu-upscaled knows (%d)" % (SCHEMA + 1, SCHEMA),
                      refused)
        self.assertEqual(self.pg.sql("SELECT value FROM meta", db="newer"), [[str(SCHEMA + 1)]])

    def test_round_trips_on_the_wire(self):
        """64 inserts in one batch are one turn of the client on the wire; 64 batches of one are
        64."""
        self.fresh("wire")
        proxy = CountingProxy(self.pg.port)
        try:
            ci = "host=127.0.0.1 port=%d dbname=wire user=%s" % (proxy.port, pgserver.DB_USER)
            turns = {}
            for mode in ("batch", "single"):
                d = Driver("roundtrips", ci, 64, mode)
                d.expect("ready")
                mark = proxy.mark()
                d.send("go")
                d.expect("done")
                turns[mode] = proxy.client_turns(mark)
                d.send("quit")
                d.finish()
            print("client turns for 64 inserts: %r" % turns)
            self.assertEqual(turns["batch"], 1)
            self.assertEqual(turns["single"], 64)
        finally:
            proxy.close()

    def test_server_restart_under_a_batch(self):
        """Directly, and through PgBouncer (which stays up and tells its client the server
        connection broke)."""
        for name, via in (("restart_unix", False), ("restart_bouncer", True)):
            with self.subTest(name):
                self.fresh(name)
                ci = self.bouncer.conninfo(db=name) if via else self.pg.conninfo(db=name)
                d = Driver("restart", ci)
                d.expect("inflight")
                self.pg.restart()
                line = d.expect("batch error=")
                d.expect("reconnected")
                lines = d.finish()
                print(name, line)
                lost = [x for x in lines if x.startswith("event a lost")]
                self.assertEqual(len(lost), 1, lines)
                self.assertIn("error=%d unknown=1" % -104, line)  # -ECONNRESET
                self.assertEqual(lines[-1], "ok")

    def test_server_stopped_loop_keeps_running(self):
        d = Driver("freeze", self.fresh("freeze"))
        d.expect("ready")
        try:
            self.pg.freeze()
            d.send("frozen")
            timed_out = d.expect("timedout")
            d.expect("connect-failed")
        finally:
            self.pg.thaw()
        d.send("thawed")
        landed = d.expect("reconnected")
        lines = d.finish()
        print(timed_out)
        print(landed)
        self.assertIn("error=%d unknown=1" % -110, timed_out)  # -ETIMEDOUT
        self.assertEqual(lines[-1], "ok")

    def test_z_bench_round_trip(self):
        """Not a target: the numbers for the next session's design (printed)."""
        rounds = int(os.environ.get("PG_BENCH_ROUNDS", "100"))
        for name, ci in (("unix", "bench_unix"), ("tcp", "bench_tcp"), ("pgbouncer", "bench_bouncer")):
            self.fresh(ci)
            conninfo = {"unix": self.pg.conninfo(db=ci), "tcp": self.pg.conninfo(db=ci, tcp=True),
                        "pgbouncer": self.bouncer.conninfo(db=ci)}[name]
            line = [x for x in run_driver("bench", conninfo, rounds) if x.startswith("bench")][0]
            print("%-9s %s" % (name, line))

    def _poll(self, predicate, what, timeout=30):
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for " + what)
            time.sleep(0.02)


if __name__ == "__main__":
    unittest.main(verbosity=2)
