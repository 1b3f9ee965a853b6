"""harness.py: what the integration tests share: a real journald (started when nothing answers
on its socket), the fake upstream, the real daemon binary with a captured NOTIFY_SOCKET, HTTP
helpers, journal and ledger readers. Standard library only."""
import atexit
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("VIDU_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
DAEMON = os.environ.get("VIDU_DAEMON", os.path.join(SOURCE_DIR, "build", "vidu-upscaled"))
FAKE = os.environ.get("VIDU_FAKE_UPSTREAM", os.path.join(SOURCE_DIR, "build", "fake-upstream"))
_shared = os.path.join(os.path.dirname(SOURCE_DIR), "shared", "fixtures")
FIXTURES = os.environ.get("FIXTURES_DIR") or (_shared if os.path.isdir(_shared) else os.path.join(SOURCE_DIR, "tests", "fixtures"))
VALGRIND = os.environ.get("VIDU_VALGRIND") == "1"
TIMEOUT_SCALE = 20 if VALGRIND else 1
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# The ledger backend every Daemon gets unless a test chooses: sqlite (the default), or postgresql:
# one throwaway PostgreSQL server for this test process (pgserver.py), a fresh database for each
# Daemon. tests/CMakeLists.txt runs the backend-neutral test files once with each.
BACKEND = os.environ.get("VIDU_TEST_BACKEND", "sqlite")
if BACKEND not in ("sqlite", "postgresql"):
    raise RuntimeError("VIDU_TEST_BACKEND: sqlite or postgresql, not %r" % BACKEND)
ON_PG = BACKEND == "postgresql"

_children = []
_journald = None


def _cleanup():
    for p in _children:
        if p.poll() is None:
            p.kill()
            p.wait()
    if _journald is not None and _journald.poll() is None:
        _journald.terminate()
        _journald.wait()


atexit.register(_cleanup)


_pg_shared = None
_pg_databases = 0


def shared_pg():
    """The PostgreSQL server this process's Daemons share under VIDU_TEST_BACKEND=postgresql,
    started on first use and stopped at exit (pgserver registers it)."""
    global _pg_shared
    if _pg_shared is None:
        import pgserver
        _pg_shared = pgserver.PgServer().start()
    return _pg_shared


def fresh_pg_database():
    """A new, empty database on shared_pg(): each Daemon's ledger starts as a new file would."""
    global _pg_databases
    _pg_databases += 1
    name = "ledger_%d" % _pg_databases
    shared_pg().create_database(name)
    return name


def sqlite_only(reason):
    """Skips a test (or class) under VIDU_TEST_BACKEND=postgresql: reason says why it is about
    SQLite itself."""
    import unittest
    return unittest.skipIf(ON_PG, "SQLite only: " + reason)


def skip_on_pg(reason):
    """Skips a test that shows a PostgreSQL daemon bug or missing feature; reason names it."""
    import unittest
    return unittest.skipIf(ON_PG, "not yet on PostgreSQL: " + reason)


def poll(predicate, timeout=10.0, interval=0.02, what="a condition"):
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)


def _journal_answers():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(JOURNAL_SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


def ensure_journald():
    """Starts systemd-journald when nothing answers on its socket (a dead one may have left its
    sockets behind); stops it at exit if this process started it."""
    global _journald
    if _journal_answers():
        return
    for name in ("socket", "stdout", "dev-log"):
        try:
            os.unlink(os.path.join("/run/systemd/journal", name))
        except FileNotFoundError:
            pass
    os.makedirs("/run/systemd/journal", exist_ok=True)
    for path in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"):
        if os.path.exists(path):
            _journald = subprocess.Popen([path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
            break
    else:
        raise RuntimeError("systemd-journald not found: install systemd")
    poll(_journal_answers, timeout=10, what="systemd-journald")


def _normalise(entry):
    out = {}
    for k, v in entry.items():
        if isinstance(v, list):
            try:
                v = bytes(v).decode("utf-8", "replace")
            except (TypeError, ValueError):
                v = str(v)
        out[k] = v
    return out


def journald_pid():
    """The systemd-journald this process's entries go to: the one in our mount namespace (another
    may run in a namespace of its own, as bench/soak.sh's does, with its own socket)."""
    ours = os.readlink("/proc/self/ns/mnt")
    pids = [int(p) for p in subprocess.check_output(["pidof", "systemd-journald"]).split()]
    mine = []
    for pid in pids:
        try:
            if os.readlink("/proc/%d/ns/mnt" % pid) == ours:
                mine.append(pid)
        except OSError:
            pass
    if len(mine) != 1:
        raise AssertionError("expected one systemd-journald in this mount namespace, found %r" % mine)
    return mine[0]


# pid -> when (realtime usec) a daemon this process started under it was started. The kernel
# reuses pids, and the journal of a machine that has run many tests holds other processes' entries
# under the same _PID: a match on _PID leaves out what came before our process existed.
_started_at = {}


def journal_entries(**match):
    args = ["journalctl", "-o", "json", "--no-pager", "-q"] + ["%s=%s" % (k, v) for k, v in match.items()]
    pid = str(match.get("_PID", ""))
    since = _started_at.get(int(pid)) if pid.isdigit() else None
    out = subprocess.run(args, capture_output=True, text=True).stdout
    entries = []
    for line in out.splitlines():
        line = line.strip()
        if line:
            e = _normalise(json.loads(line))
            if since is not None and int(e.get("__REALTIME_TIMESTAMP", "0")) < since:
                continue
            entries.append(e)
    return entries


def is_accepted_entry(entry):
    """True for the entry that says a creation was accepted: its `accepted` entry, or the
    `submitted` entry that folded it (log.fold_accepted: answered within a second of acceptance,
    it carries ACCEPTED_AT instead)."""
    state = entry.get("JOB_STATE")
    return state == "accepted" or (state == "submitted" and "ACCEPTED_AT" in entry)


def accepted_entries(**match):
    """The journal entries matching that say a creation was accepted (is_accepted_entry)."""
    return [e for e in journal_entries(**match) if is_accepted_entry(e)]


def job_states(entries):
    """The JOB_STATE of each entry in order, a folded `submitted` entry read as the two it stands
    for (`accepted`, `submitted`): the same story whether or not the daemon folded."""
    states = []
    for e in entries:
        state = e.get("JOB_STATE")
        if not state:
            continue
        if state == "submitted" and "ACCEPTED_AT" in e:
            states.append("accepted")
        states.append(state)
    return states


def wait_journal(predicate, timeout=10):
    """predicate: a function returning the entries wanted (truthy when found), or a dict of
    fields to match."""
    if isinstance(predicate, dict):
        match = predicate
        predicate = lambda: journal_entries(**match)  # noqa: E731
    seen = []

    def attempt():
        r = predicate()
        seen[:] = [r]
        return r
    try:
        return poll(attempt, timeout=timeout, interval=0.05, what="journal entries")
    except AssertionError:
        raise AssertionError("no matching journal entry; last result: %r" % (seen[:1],))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def new_creation_ids(n):
    return ["8" + "".join(random.choice("0123456789") for _ in range(17)) for _ in range(n)]


def make_task(task_id, creation_ids, state="success", type="text2video"):
    return {"id": task_id, "type": type, "state": state,
            "creations": [{"id": c, "uri": "https://media.example.invalid/%s.mp4" % c} for c in creation_ids]}


def _request(host, port, method, path, body=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection(host, port, timeout=timeout * TIMEOUT_SCALE)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


class FakeUpstream:
    def __init__(self, complete_after_ms=1000, port=None, api_key=None, credits=None):
        self.complete_after_ms = complete_after_ms
        self.credits = credits  # "credits" in every state answer (the official API's cost)
        self.port = port
        self.api_key = api_key or "test-key-%016x" % random.getrandbits(64)
        self.proc = None
        self.tmp = tempfile.mkdtemp(prefix="vidu-fake-")

    def start(self):
        port_file = os.path.join(self.tmp, "port")
        args = [FAKE, "--listen", "127.0.0.1:%d" % (self.port or 0), "--port-file", port_file,
                "--complete-after", str(self.complete_after_ms), "--quiet"]
        if self.credits is not None:
            args += ["--credits", str(self.credits)]
        env = dict(os.environ, VIDU_FAKE_API_KEY=self.api_key)
        with open(os.path.join(self.tmp, "stderr"), "ab") as err:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _children.append(self.proc)
        poll(lambda: os.path.exists(port_file) or self.proc.poll() is not None, what="the fake upstream")
        if self.proc.poll() is not None:
            raise RuntimeError("fake upstream exited with %s" % self.proc.returncode)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _post(self, path, obj):
        status, _, data = _request("127.0.0.1", self.port, "POST", path, json.dumps(obj).encode(),
                                   {"Content-Type": "application/json"})
        if status != 200:
            raise AssertionError("fake upstream %s answered %d: %r" % (path, status, data))

    def faults(self, faults):
        self._post("/_fake/faults", faults)

    def outcome(self, creation_id, state="failed", err_code="failed"):
        self._post("/_fake/outcome", {"creation_id": creation_id, "state": state, "err_code": err_code})

    def set_credits(self, credits):
        """What the state answers report as an upscale's cost from now on (-1: nothing)."""
        self._post("/_fake/credits", {"credits": credits})

    def stats(self):
        return json.loads(_request("127.0.0.1", self.port, "GET", "/_fake/stats")[2])

    def callbacks(self, sign=None, processing=None, withhold=None, creation_id=None):
        """How the fake calls back a submission's callback_url: signed with the vidu scheme (the
        key is the API key), with a `processing` callback first, or withheld (for creation_id's
        tasks, or for every task)."""
        body = {k: v for k, v in (("sign", sign), ("processing", processing), ("withhold", withhold),
                                  ("creation_id", creation_id)) if v is not None}
        self._post("/_fake/callbacks", body)

    def tasks(self, creation_id):
        """The tasks made for creation_id: id, flavor, body (as submitted), polls, created_ns and
        first_poll_ns (CLOCK_REALTIME), and the callbacks sent with the status each was answered
        with."""
        path = "/_fake/tasks?creation_id=" + urllib.parse.quote(creation_id, safe="")
        return json.loads(_request("127.0.0.1", self.port, "GET", path)[2])

    def arrivals(self, creation_id):
        """When each submission for creation_id reached the fake: seconds of CLOCK_REALTIME,
        the clock the daemon schedules retries on."""
        path = "/_fake/arrivals?creation_id=" + urllib.parse.quote(creation_id, safe="")
        return [ns / 1e9 for ns in json.loads(_request("127.0.0.1", self.port, "GET", path)[2])]

    def reset(self):
        self._post("/_fake/reset", {})

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Daemon:
    """The real daemon binary with its own configuration, ledger and NOTIFY_SOCKET."""

    def __init__(self, config=None, fake=None, extra_env=None, args=None, wrapper=None, pg=None, pg_db=None):
        """pg: a pgserver.PgServer: the ledger on it (store.backend = postgresql, database pg_db or its
        default). Without pg, under
        VIDU_TEST_BACKEND=postgresql, the ledger is a fresh database on shared_pg() (unless config
        names a store.path of its own: a test about the SQLite file), and start() waits for
        /healthz, so that a test begins, as on SQLite, with the ledger open."""
        self.tmp = tempfile.mkdtemp(prefix="vidu-daemon-")
        self.binary = DAEMON
        self.port = free_port()
        self.api_key = fake.api_key if fake else "test-key-%016x" % random.getrandbits(64)
        self.config_path = os.path.join(self.tmp, "vidu-upscaled.conf")
        self.ledger_path = os.path.join(self.tmp, "ledger.db")
        self.extra_env = extra_env or {}
        self.args = args or []
        self.wrapper = wrapper or []  # e.g. ["unshare", "-n", "--"]
        self.config = {
            "server": {"listen": "127.0.0.1:%d" % self.port},
            "upstream": {"api_key_file": os.path.join(self.tmp, "api-key"), "poll_interval": "200ms",
                         "timeout": "5s", "connect_timeout": "2s"},
            "store": {"path": self.ledger_path},
            "retry": {"initial_delay": "100ms", "max_delay": "1s"},
        }
        if fake:
            self.config["upstream"]["base_url"] = fake.url
        self.auto_pg = False
        if pg is None and ON_PG and "path" not in (config or {}).get("store", {}):
            pg, pg_db = shared_pg(), fresh_pg_database()
            self.auto_pg = True
        self.pg = pg
        self.pg_db = pg_db
        if pg:
            self.config["store"] = {"backend": "postgresql",
                                    "url": pg.conninfo(db=pg_db) if pg_db else pg.conninfo()}
        for section, values in (config or {}).items():
            sec = self.config.setdefault(section, {})
            for k, v in values.items():
                if v is None:
                    sec.pop(k, None)
                else:
                    sec[k] = v
        listen = self.config["server"].get("listen", "")
        if listen.startswith("127.0.0.1:"):
            self.port = int(listen.rsplit(":", 1)[1])
        self.proc = None
        self.notify_messages = []
        self._notify_sock = None
        self._notify_thread = None
        self._stderr_path = os.path.join(self.tmp, "stderr")

    # configuration

    def write_config(self):
        key_file = os.path.join(self.tmp, "api-key")
        with open(key_file, "w") as f:
            f.write(self.api_key + "\n")
        os.chmod(key_file, 0o600)
        with open(self.config_path, "w") as f:
            for section, values in self.config.items():
                f.write("[%s]\n" % section)
                for k, v in values.items():
                    # A list is a key that may repeat: one line per value.
                    for one in (v if isinstance(v, list) else [v]):
                        f.write("%s = %s\n" % (k, one))
                f.write("\n")

    def environment(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDU_UPSCALED_")
               and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                             "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "JOURNAL_STREAM")}
        env.update(self.extra_env)
        return env

    # notify socket

    def _listen_notify(self):
        path = os.path.join(self.tmp, "notify.sock")
        if os.path.exists(path):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.settimeout(0.2)
        self._notify_sock = s
        self._notify_stop = False

        def reader():
            while not self._notify_stop:
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                msg = {}
                for line in data.decode("utf-8", "replace").split("\n"):
                    if "=" in line:
                        k, v = line.split("=", 1)
                        msg[k] = v
                msg["_raw"] = data
                self.notify_messages.append(msg)
        self._notify_thread = threading.Thread(target=reader, daemon=True)
        self._notify_thread.start()
        return path

    def wait_notify(self, predicate, timeout=10, since=0):
        def find():
            for m in self.notify_messages[since:]:
                if predicate(m):
                    return m
            return None
        return poll(find, timeout=timeout, what="a notify message")

    # life cycle

    def start(self):
        self.write_config()
        if self._notify_sock is None:
            notify = self._listen_notify()
        else:
            notify = os.path.join(self.tmp, "notify.sock")
        env = self.environment()
        env["NOTIFY_SOCKET"] = notify
        cmd = self.wrapper + [self.binary, "-c", self.config_path] + self.args
        if VALGRIND:
            cmd = ["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                   "--track-fds=no", "-q"] + cmd
        since = len(self.notify_messages)
        started = time.time_ns() // 1000
        with open(self._stderr_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err)
        _started_at[self.proc.pid] = started
        _children.append(self.proc)

        def ready():
            if self.proc.poll() is not None:
                return "exited"
            return any(m.get("READY") == "1" for m in self.notify_messages[since:])
        r = poll(ready, timeout=15, what="READY=1")
        if r == "exited":
            raise RuntimeError("daemon exited with %s:\n%s" % (self.proc.returncode, self.stderr_text()))
        if self.auto_pg:
            if "127." in self.config["server"].get("allow_from", "127."):
                self.wait_ledger()
            else:
                # The daemon refuses loopback (server.allow_from without it: the test is about
                # that), so its journal says when the ledger is there.
                wait_journal(lambda: [e for e in journal_entries(_PID=str(self.proc.pid))
                                      if e.get("MESSAGE", "").startswith("Ledger database reachable")],
                             timeout=30)
        return self

    def wait_ledger(self, timeout=30):
        """PostgreSQL: READY comes once the daemon listens, the database may follow; waits for
        /healthz to say it is there."""
        poll(lambda: self._healthz() == 200, timeout=timeout, what="/healthz 200 (the ledger)")
        return self

    def _healthz(self):
        """/healthz's status, over the unix socket when the daemon listens on one."""
        listen = self.config["server"].get("listen", "")
        if self.config["server"].get("tls_cert"):
            import ssl
            c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10 * TIMEOUT_SCALE,
                                            context=ssl._create_unverified_context())
            try:
                c.request("GET", "/healthz")
                return c.getresponse().status
            except OSError:
                return None
            finally:
                c.close()
        if not listen.startswith("unix:"):
            return self.get("/healthz")[0]
        path = listen[len("unix:"):]

        class Unix(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
        c = Unix("localhost", timeout=10 * TIMEOUT_SCALE)
        try:
            c.request("GET", "/healthz")
            return c.getresponse().status
        except OSError:
            return None
        finally:
            c.close()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def kill(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=20):
        return self.proc.wait(timeout=timeout * TIMEOUT_SCALE)

    def stop(self, timeout=20):
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=timeout * TIMEOUT_SCALE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("daemon did not stop on SIGTERM within %ss" % timeout)
        if VALGRIND and code == 99:
            raise AssertionError("valgrind reported errors or leaks:\n" + self.stderr_text())
        self.check_sanitizers()
        return code

    def check_sanitizers(self):
        """A daemon built with ASan/UBSan reports on stderr; any report fails the test."""
        text = self.stderr_text()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in text:
                raise AssertionError("sanitizer report from the daemon:\n" + text[-6000:])

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            self._notify_stop = True
            if self._notify_sock:
                self._notify_sock.close()
            if os.environ.get("VIDU_KEEP_TMP") != "1":
                shutil.rmtree(self.tmp, ignore_errors=True)

    # HTTP

    def post(self, path="/hooks/vidu", body=b"", headers=None, content_type="application/json", timeout=10):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        h = {"Content-Type": content_type} if content_type else {}
        h.update(headers or {})
        return _request("127.0.0.1", self.port, "POST", path, body, h, timeout=timeout)

    def get(self, path):
        return _request("127.0.0.1", self.port, "GET", path)

    def post_fixture(self, name, **kw):
        with open(os.path.join(FIXTURES, name), "rb") as f:
            return self.post(body=f.read(), **kw)

    def metrics_value(self, name):
        status, _, data = self.get("/metrics")
        for line in data.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if line.split(" ")[0] == name or name.endswith("}"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    # state

    def stderr_text(self):
        try:
            with open(self._stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def ledger_rows(self):
        """Every jobs row as a dict, from either backend: the columns both have, times as
        CLOCK_REALTIME microseconds as in SQLite; on PostgreSQL the claim columns too."""
        if self.pg:
            out = []
            query = ("SELECT row_to_json(j) FROM (SELECT *, %s FROM jobs) j" %
                     ", ".join("(extract(epoch FROM %s) * 1000000)::bigint AS %s" % (c, c + "_us")
                               for c in ("next_at", "created_at", "updated_at")))
            for (line,) in self.pg.sql(query, db=self.pg_db or "vidu"):
                r = json.loads(line)
                for c in ("next_at", "created_at", "updated_at"):
                    r[c] = r.pop(c + "_us")
                out.append(r)
            return out
        db = sqlite3.connect(self.config["store"]["path"], timeout=5)  # reads only; WAL lets it run beside the daemon
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM jobs")]
        finally:
            db.close()

    def ledger_events(self):
        """Every row of the events outbox as a dict, in the order written, from either backend
        (times as microseconds since the epoch); [] before the table exists."""
        if self.pg:
            query = ("SELECT row_to_json(e) FROM (SELECT seq, id, type, creation_id, state, attempts, %s, "
                     "http_status, error, body FROM events ORDER BY seq) e" %
                     ", ".join("(extract(epoch FROM %s) * 1000000)::bigint AS %s" % (c, c)
                               for c in ("next_at", "since", "created_at", "updated_at")))
            try:
                return [json.loads(line) for (line,) in self.pg.sql(query, db=self.pg_db or "vidu")]
            except RuntimeError as e:
                if "does not exist" in str(e):
                    return []
                raise
        db = sqlite3.connect(self.config["store"]["path"], timeout=5)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM events ORDER BY seq")]
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def jobs(self, *args):
        """Runs `vidu-upscaled -c CONFIG jobs ARGS...`; the CompletedProcess (text)."""
        return subprocess.run([self.binary, "-c", self.config_path, "jobs"] + list(args),
                              capture_output=True, text=True, env=self.environment(),
                              timeout=30 * TIMEOUT_SCALE)

    def ledger_execute(self, sql, params=()):
        """A write beside the running daemon (the tests move the budget's clock this way).
        SQLite's SQL: a test that uses it is SQLite-only or says what it writes on PostgreSQL."""
        if self.pg:
            raise AssertionError("ledger_execute: SQLite only (%s)" % sql)
        db = sqlite3.connect(self.config["store"]["path"], timeout=10)
        try:
            with db:
                db.execute(sql, params)
        finally:
            db.close()

    def ledger_row(self, creation_id):
        for r in self.ledger_rows():
            if r["creation_id"] == creation_id:
                return r
        return None
