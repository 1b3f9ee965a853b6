"""pgserver.py: a throwaway PostgreSQL 15 server (and a PgBouncer in front of it) for the tests:
initdb and pg_ctl run as an unprivileged user in a temporary directory, the server listens on a
unix socket in that directory and on 127.0.0.1, with fsync and synchronous_commit on. Standard
library only, like harness.py.

As root (CI on a fresh Debian 12) the server runs as the system user `vidu-pgtest`, created with
`useradd --system` when missing: postgres refuses to run as root, and a user of its own owns
nothing else on the machine. As any other user it runs as that user.

    with PgServer() as pg:
        pg.conninfo()                 # "host=/tmp/vidu-pg-.../ port=... dbname=vidu user=vidu"
        pg.conninfo(tcp=True)         # over 127.0.0.1
        pg.sql("SELECT count(*) FROM jobs")
        pg.restart()                  # pg_ctl restart -m immediate
        pg.freeze(); pg.thaw()        # SIGSTOP / SIGCONT every server process
        b = pg.bouncer()              # PgBouncer, transaction mode; b.conninfo()
        s = pg.standby()              # a synchronous streaming standby (pg_basebackup -R)
        pg.pause_walsenders()         # SIGSTOP to the WAL senders: the standby gets nothing more
        pg.crash()                    # SIGKILL to every server process: the primary is gone
        s.promote()                   # pg_ctl promote: the standby takes writes

Run alone (`python3 pgserver.py`) it starts a server, prints its connection strings, and keeps it
until interrupted.
"""
import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PG_BIN = os.environ.get("VIDU_PG_BIN", "/usr/lib/postgresql/15/bin")
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
TEST_USER = "vidu-pgtest"
ADMIN = "vidu_admin"  # the bootstrap superuser initdb makes
DB_USER = "vidu"      # what the daemon connects as: owns its database, no superuser
DB_NAME = "vidu"
REPLICATOR = "vidu_replicator"  # what a standby streams as: REPLICATION, no superuser

_live = []


def _cleanup():
    for s in list(_live):
        s.stop()


atexit.register(_cleanup)


def _poll(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _run_user():
    """(uid, gid) to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", "--user-group", TEST_USER],
                           capture_output=True, text=True)
        try:
            pw = pwd.getpwnam(TEST_USER)  # another test may have made it meanwhile
        except KeyError:
            raise RuntimeError("cannot create the system user %s: %s" % (TEST_USER, r.stderr.strip()))
    return pw.pw_uid, pw.pw_gid


def _port_open(port):
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class PgServer:
    def __init__(self, settings=None):
        self.user = _run_user()
        self.tmp = tempfile.mkdtemp(prefix="vidu-pg-")
        self.data = os.path.join(self.tmp, "data")
        self.log = os.path.join(self.tmp, "server.log")
        self.port = free_port()
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "'%s'" % self.tmp,
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "60",
            "shared_buffers": "16MB",
            "wal_level": "replica",  # (the defaults, named: a standby needs them)
            "max_wal_senders": "10",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] '",
        }
        self.settings.update(settings or {})
        self._bouncers = []
        self._standbys = []
        self.started = False
        self.crashed = False
        self.primary = None  # the server a standby streams from
        if self.user:
            os.chown(self.tmp, *self.user)
        os.chmod(self.tmp, 0o755)  # the socket directory: clients of any user reach it

    # running things as the server's user

    def _popen_args(self):
        kw = {"env": dict(os.environ, HOME=self.tmp, LC_ALL="C.UTF-8", LANG="C.UTF-8"), "cwd": self.tmp}
        kw["env"].pop("PGDATA", None)
        if self.user:
            kw.update(user=self.user[0], group=self.user[1], extra_groups=[])
        return kw

    def _run(self, args, timeout=120, check=True):
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **self._popen_args())
        if check and r.returncode != 0:
            raise RuntimeError("%s failed (%d):\n%s%s\n%s" % (" ".join(args), r.returncode, r.stdout, r.stderr,
                                                            self.log_text()[-3000:]))
        return r

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # life cycle

    def start(self):
        _live.append(self)
        self._run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", ADMIN, "-A", "trust", "-E", "UTF8",
                   "--no-locale", "-N"])
        self._configure_and_start("vidu-upscaled tests")
        self.sql("CREATE ROLE %s LOGIN" % DB_USER, db="postgres", user=ADMIN)
        self.create_database(DB_NAME)
        return self

    def _configure_and_start(self, header):
        """Appends the settings to postgresql.conf under a comment, then starts the server."""
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# %s\n" % header)
            for k, v in self.settings.items():
                f.write("%s = %s\n" % (k, v))
        self._pg_ctl("start")
        self.started = True

    def _pg_ctl(self, action, *extra):
        self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-t", "120", action]
                  + list(extra))

    def restart(self):
        """An immediate restart: every connection is cut, no shutdown checkpoint, crash recovery."""
        self.thaw()
        self._pg_ctl("restart", "-m", "immediate")

    def halt(self):
        """Stops the server (fast: every connection is cut) and keeps its data, for resume()."""
        self.thaw()
        self._pg_ctl("stop", "-m", "fast")

    def resume(self):
        self._pg_ctl("start")

    def stop(self):
        for s in self._standbys:
            s.stop()
        for b in self._bouncers:
            b.stop()
        if self.crashed:
            self._remove_shm()
        if self.started:
            self.thaw()
            self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-w", "-t", "60", "stop", "-m",
                       "immediate"], check=False)
            self.started = False
        if self in _live:
            _live.remove(self)
        if os.environ.get("VIDU_KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # processes

    def postmaster_pid(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def pids(self):
        """The postmaster and every process it started (backends, checkpointer, ...)."""
        root = self.postmaster_pid()
        out = [root]
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                out.append(int(name))
        return out

    def freeze(self):
        """SIGSTOP to every server process: connections stay open, nothing answers."""
        self._frozen = self.pids()
        for p in self._frozen:
            os.kill(p, signal.SIGSTOP)

    def thaw(self):
        for p in getattr(self, "_frozen", []):
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._frozen = []

    def crash(self):
        """The primary lost at once, as its machine would be: SIGKILL to the postmaster and to
        every process it started (the postmaster stopped first, so that it forks nothing
        meanwhile), no shutdown of any kind; returns once none of them runs. The data stays until
        stop(), which does not start the server again. A process stopped (freeze(),
        pause_walsenders()) is killed stopped: it sends nothing more."""
        root = self.postmaster_pid()
        os.kill(root, signal.SIGSTOP)
        pids = self.pids()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.started = False
        self.crashed = True
        self._frozen = []

        def dead(pid):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie holds no socket
            except OSError:
                return True
        _poll(lambda: all(dead(p) for p in pids), 30, "the killed server's processes to end")
        return pids

    def _remove_shm(self):
        """The System V segment a killed postmaster leaves (postmaster.pid's 7th line: key, id)."""
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                lines = f.read().splitlines()
            shmid = lines[6].split()[1]
        except (OSError, IndexError):
            return
        subprocess.run(["ipcrm", "-m", shmid], capture_output=True)

    # replication

    def standby(self, name="vidu_standby", synchronous=True):
        """A streaming standby of this server: another PgServer in a temporary directory of its
        own (its own port and socket directory), made by pg_basebackup -R (standby.signal,
        primary_conninfo, a physical replication slot of its name) as the role vidu_replicator
        (REPLICATION, no superuser; initdb's pg_hba.conf admits replication connections from the
        unix socket and 127.0.0.1), started hot (read-only queries) and streaming. Its
        application_name is `name` (cluster_name); synchronous: this server's
        synchronous_standby_names names it, so that every commit here (synchronous_commit = on)
        waits until the standby has flushed it, and this returns once pg_stat_replication says
        `sync`. The standby's own synchronous_standby_names is empty: promoted, it commits alone."""
        if not self._standbys:
            self.sql("CREATE ROLE %s LOGIN REPLICATION" % REPLICATOR, db="postgres")
        s = PgServer()
        s.primary = self
        _live.append(s)
        self._standbys.append(s)
        s._run([os.path.join(PG_BIN, "pg_basebackup"), "-D", s.data, "-h", self.tmp, "-p", str(self.port),
                "-U", REPLICATOR, "-d", "application_name=%s" % name, "-R", "-X", "stream", "-C", "-S", name,
                "--checkpoint=fast"])
        s.settings["cluster_name"] = "'%s'" % name
        s.settings["synchronous_standby_names"] = "''"
        s.settings["hot_standby"] = "on"
        # The primary's block came with the copy: this one, later, overrides it.
        s._configure_and_start("vidu-upscaled tests: the standby")
        if synchronous:
            self.sql("ALTER SYSTEM SET synchronous_standby_names = '%s'" % name, db="postgres")
            self.sql("SELECT pg_reload_conf()", db="postgres")
        want = "sync" if synchronous else "async"
        _poll(lambda: [name, "streaming", want] in self.replication(), 60,
              "the standby %s streaming (%s)" % (name, want))
        return s

    def replication(self):
        """pg_stat_replication here: [application_name, state, sync_state] per standby."""
        return self.sql("SELECT application_name, state, sync_state FROM pg_stat_replication", db="postgres")

    def pause_walsenders(self):
        """SIGSTOP to this server's WAL senders: the standbys receive nothing more (what a stalled
        network or standby looks like to the primary); under synchronous replication every commit
        waits meanwhile. Undone by thaw(), or by crash(). Returns their pids."""
        pids = []
        for p in self.pids():
            try:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    if b"walsender" in f.read():
                        pids.append(p)
            except OSError:
                pass
        if not pids:
            raise AssertionError("no WAL sender running")
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        self._frozen = getattr(self, "_frozen", []) + pids
        return pids

    def in_recovery(self):
        return self.sql("SELECT pg_is_in_recovery()", db="postgres") == [["t"]]

    def promote(self):
        """pg_ctl promote: the standby ends recovery and takes writes; returns once it does."""
        self._pg_ctl("promote")
        _poll(lambda: not self.in_recovery(), 60, "the promoted server out of recovery")

    # clients

    def conninfo(self, db=DB_NAME, user=DB_USER, tcp=False):
        host = "127.0.0.1" if tcp else self.tmp
        return "host=%s port=%d dbname=%s user=%s connect_timeout=10" % (host, self.port, db, user)

    def sql(self, query, db=DB_NAME, user=ADMIN, check=True):
        """Runs query with psql over the unix socket; returns its rows as lists of strings."""
        r = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                            "-F", "\t", "-h", self.tmp, "-p", str(self.port), "-U", user, "-d", db, "-c", query],
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError("psql: %s: %s" % (query, r.stderr.strip()))
        return [line.split("\t") for line in r.stdout.splitlines() if line]

    def create_database(self, name):
        self.sql('CREATE DATABASE "%s" OWNER %s' % (name, DB_USER), db="postgres")
        return self.conninfo(db=name)

    def bouncer(self, pool_size=4):
        b = PgBouncer(self, pool_size)
        self._bouncers.append(b)
        return b.start()


class PgBouncer:
    """PgBouncer in transaction mode in front of a PgServer: a server connection is lent to a
    client for one transaction only, so no session state survives between transactions."""

    def __init__(self, server, pool_size):
        self.server = server
        self.port = free_port()
        self.dir = os.path.join(server.tmp, "bouncer-%d" % self.port)
        self.pool_size = pool_size
        self.proc = None

    def start(self):
        os.makedirs(self.dir)
        if self.server.user:
            os.chown(self.dir, *self.server.user)
        userlist = os.path.join(self.dir, "userlist.txt")
        with open(userlist, "w") as f:
            f.write('"%s" ""\n"%s" ""\n' % (DB_USER, ADMIN))
        ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write("[databases]\n* = host=%s port=%d\n\n" % (self.server.tmp, self.server.port))
            f.write("[pgbouncer]\n")
            for k, v in {"listen_addr": "127.0.0.1", "listen_port": self.port, "unix_socket_dir": "",
                         "auth_type": "trust", "auth_file": userlist, "pool_mode": "transaction",
                         "default_pool_size": self.pool_size, "max_client_conn": 200,
                         "logfile": os.path.join(self.dir, "pgbouncer.log"),
                         "pidfile": "", "admin_users": ADMIN, "server_login_retry": 1}.items():
                f.write("%s = %s\n" % (k, v))
        kw = self.server._popen_args()
        self.proc = subprocess.Popen([PGBOUNCER, "-q", ini], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, **kw)
        _poll(lambda: self.proc.poll() is not None or _port_open(self.port), 30, "pgbouncer to listen")
        if self.proc.poll() is not None:
            raise RuntimeError("pgbouncer exited with %s: %s" % (self.proc.returncode, self.log_text()[-2000:]))
        return self

    def log_text(self):
        try:
            with open(os.path.join(self.dir, "pgbouncer.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def conninfo(self, db=DB_NAME, user=DB_USER):
        return "host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=10" % (self.port, db, user)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    with PgServer() as pg:
        b = pg.bouncer()
        print("unix:      %s" % pg.conninfo())
        print("tcp:       %s" % pg.conninfo(tcp=True))
        print("pgbouncer: %s" % b.conninfo())
        print("admin:     %s" % pg.conninfo(user=ADMIN))
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
