#!/usr/bin/env python3
"""soak.py: hours of steady load with faults mixed in, checked for lost or doubled work and for
growth (run via soak.sh, which builds the Release daemon and isolates a journald).

The daemon (Release, store.synchronous = full, retry.uncertain = hold) takes a steady load at half
the rate a short calibration burst sustained, for the whole duration, while a schedule cycles
through upstream faults (500s, 429 with Retry-After, a stall past upstream.timeout, the upstream
down, an account-wide 401), journald stopped and restarted, SIGHUP reloads and kill -9 restarts.
Every interval a sample goes to soak.csv; at the end the faults stop, the backlog drains (bounded)
and the checks run; the exit status is non-zero, with the reasons, when one fails.

Standard library only; every process it starts is stopped when it ends; only 127.0.0.1; the load
is bounded in time and count. Environment:
  SOAK_QUICK=1       about two minutes (CI): one fault of each kind, two kills, samples every 3 s
  SOAK_DURATION=D    the load's duration (30m by default; s, m, h), also the first argument
  SOAK_INTERVAL=S    seconds between samples (10; quick 3)
  SOAK_OUT=DIR       where soak.csv, the plots and the logs go (bench/results/soak-<time>)
  SOAK_PUBLISH=1     also copy the plots to bench/plots/ and the summary into bench/RESULTS.md
                     (default: full runs); `soak.py --publish DIR` does it for a finished run
  SOAK_JOURNALD=own|shared   own: soak.sh made a private /run/systemd/journal (mount namespace)
                     and this script runs its own systemd-journald there, stopped and restarted as
                     a fault; shared: the machine's, left alone (that fault is skipped)
"""

import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BUILD = os.environ.get("SOAK_BUILD", os.path.join(ROOT, "build-soak"))
DAEMON = os.path.join(BUILD, "vidu-upscaled")
FAKE = os.path.join(BUILD, "fake-upstream")
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUICK = os.environ.get("SOAK_QUICK") == "1"
CONCURRENCY = 8  # upstream.concurrency
UPSTREAM_TIMEOUT_S = 3  # upstream.timeout: the stall fault outlasts it
JOURNAL_QUEUE_MAX_KB = 4096  # daemon/journal.c QUEUE_MAX_BYTES
JOURNALD = os.environ.get("SOAK_JOURNALD", "shared")


def parse_duration(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)?", s.strip())
    if not m:
        sys.exit(f"soak: bad duration {s!r} (e.g. 90s, 30m, 2h)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def log(msg):
    print(f"soak {time.strftime('%H:%M:%S')}: {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Processes: everything started is in PROCS and stopped at the end.

PROCS = []


def start(argv, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    p = subprocess.Popen(argv, **kw)
    PROCS.append(p)
    return p


def stop(p, timeout=15, sig=signal.SIGTERM):
    if p is None or p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def stop_all():
    for p in reversed(PROCS):
        try:
            stop(p, 5)
        except Exception:
            pass


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def poll(pred, timeout, what, interval=0.05):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_req(port, method, path, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body,
                  headers={"Content-Type": "application/json"} if body is not None else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# The fake upstream, one for the whole soak. Its tasks live in its memory, so it is never
# restarted: "the upstream down" points the daemon at a closed port instead (see Faults).


class Fake:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "fake")
        os.makedirs(self.dir)
        self.key_file = os.path.join(self.dir, "api-key")
        self.key = os.urandom(16).hex()
        with open(self.key_file, "w") as f:
            f.write(self.key + "\n")
        os.chmod(self.key_file, 0o600)
        pf = os.path.join(self.dir, "port")
        env = dict(os.environ, VIDU_FAKE_API_KEY=self.key)
        # Tasks finish 1 s after they are created, so polls find them running, then done.
        self.p = start([FAKE, "--listen", "127.0.0.1:0", "--port-file", pf, "--quiet",
                        "--complete-after", "1000"], env=env)
        poll(lambda: os.path.exists(pf) or self.p.poll() is not None, 20, "the fake upstream")
        if self.p.poll() is not None:
            raise RuntimeError(f"fake-upstream exited with {self.p.returncode}")
        with open(pf) as f:
            self.port = int(f.read())

    def faults(self, faults):
        st, body = http_req(self.port, "POST", "/_fake/faults", json.dumps(faults).encode())
        if st != 200:
            raise RuntimeError(f"the fake refused faults {faults}: {st} {body!r}")

    def created(self):
        """Tasks created per creation id."""
        st, body = http_req(self.port, "GET", "/_fake/stats", timeout=120)
        return json.loads(body)["created"]


# ---------------------------------------------------------------------------------------------
# journald: our own (in soak.sh's mount namespace), so stopping it disturbs nobody else.


class Journald:
    SOCKET = "/run/systemd/journal/socket"

    def __init__(self):
        self.p = None
        self.stops = 0
        self.restarted_at = None
        self.binary = next((j for j in ("/lib/systemd/systemd-journald",
                                        "/usr/lib/systemd/systemd-journald") if os.access(j, os.X_OK)),
                           None)

    def answers(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.connect(self.SOCKET)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def start(self):
        if JOURNALD != "own":
            subprocess.run(["bash", os.path.join(ROOT, "scripts", "ensure-journald.sh")],
                           check=True)
            return
        for name in ("socket", "stdout", "dev-log"):
            try:
                os.unlink(os.path.join("/run/systemd/journal", name))
            except FileNotFoundError:
                pass
        self.p = start([self.binary], start_new_session=True)
        poll(self.answers, 20, "systemd-journald's socket")

    def pid(self):
        return self.p.pid if self.p else None

    def stop(self):
        stop(self.p, 20)
        self.stops += 1

    def restart(self):
        self.start()
        self.restarted_at = time.time()


def journal_entries_since(t):
    """The daemon's journal entries since T (seconds since the epoch), by journalctl."""
    r = subprocess.run(["journalctl", "-q", "-o", "json", "-n", "20", "--since", f"@{t:.0f}",
                        "SYSLOG_IDENTIFIER=vidu-upscaled"], capture_output=True, text=True,
                       timeout=300)
    return sum(1 for line in r.stdout.splitlines() if '"JOB_STATE"' in line)


# ---------------------------------------------------------------------------------------------
# The daemon.


class Daemon:
    def __init__(self, tmp, fake, interval):
        self.dir = os.path.join(tmp, "daemon")
        os.makedirs(self.dir)
        self.ledger = os.path.join(self.dir, "ledger.db")
        self.port = free_port()
        self.conf = os.path.join(self.dir, "vidu-upscaled.conf")
        self.fake = fake
        self.poll_interval = "2s" if QUICK else "5s"
        self.write_conf()
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.p = None
        self.kills = 0
        self.reloads = 0
        # (start, end) CLOCK_MONOTONIC of each restart: from the kill to the next healthy answer.
        self.restarts = []
        self.lock = threading.Lock()

    def write_conf(self, upstream_port=None):
        with open(self.conf + ".tmp", "w") as f:
            f.write(f"""# Written by bench/soak.py.
[server]
listen = 127.0.0.1:{self.port}
max_per_ip = 256
drain_timeout = 5s
[upstream]
base_url = http://127.0.0.1:{upstream_port or self.fake.port}
api_key_file = {self.fake.key_file}
concurrency = {CONCURRENCY}
timeout = {UPSTREAM_TIMEOUT_S}s
connect_timeout = 2s
poll_interval = {self.poll_interval}
[store]
path = {self.ledger}
synchronous = full
[retry]
uncertain = hold
initial_delay = 500ms
max_delay = 5s
# Faults come in bursts; a job that meets several must not run out of attempts: the soak looks
# for lost and doubled work, not for the attempts limit (which the integration tests cover).
max_attempts = 100
""")
        os.rename(self.conf + ".tmp", self.conf)

    def start(self):
        logf = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDU_UPSCALED_")}
        st = os.fstat(logf.fileno())
        # As under systemd: stderr is the journal's stream, entries go to the journal only.
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        p = start([DAEMON, "-c", self.conf], env=env, stdout=logf, stderr=logf)
        logf.close()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if p.poll() is not None:
                raise RuntimeError(f"vidu-upscaled exited with {p.returncode}; see {self.log_path}")
            if self.healthy(1):
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("vidu-upscaled did not become healthy within 120 s")
        with self.lock:
            self.p = p

    def healthy(self, timeout):
        try:
            return http_req(self.port, "GET", "/healthz", timeout=timeout)[0] == 200
        except OSError:
            return False

    def pid(self):
        with self.lock:
            return self.p.pid if self.p else None

    def kill9_restart(self):
        t0 = time.monotonic()
        with self.lock:
            self.restarts.append([t0, None])
            self.p.kill()
            self.p.wait()
            self.p = None
        self.kills += 1
        self.start()
        with self.lock:
            self.restarts[-1][1] = time.monotonic()
        return time.monotonic() - t0

    def in_restart(self, t0, t1):
        """True if [t0, t1] overlaps a restart (or one is under way)."""
        with self.lock:
            return any(a <= t1 and (b is None or b >= t0) for a, b in self.restarts)

    def sighup(self):
        with self.lock:
            self.p.send_signal(signal.SIGHUP)
        self.reloads += 1

    def metrics(self, timeout=10):
        st, body = http_req(self.port, "GET", "/metrics", timeout=timeout)
        m = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    m[k] = float(v)
                except ValueError:
                    pass
        return m

    def stop(self):
        with self.lock:
            p, self.p = self.p, None
        stop(p, 60)
        return p.returncode if p else None


# ---------------------------------------------------------------------------------------------
# The load: threads on kept-alive connections, each sending at its share of the rate. Every
# creation id answered 2xx is written to acked.txt.

PROMPT = "a slow pan over a misty harbour at dawn, " * 20


def notification(cid):
    return ('{"id":"%s0","type":"text2video","state":"success","model":"vidu2.0","prompt":"%s",'
            '"creations":[{"id":"%s","uri":"https://cdn.example.com/v/%s.mp4",'
            '"cover_url":"https://cdn.example.com/c/%s.jpg"}],'
            '"created_at":"2025-01-01T00:00:00Z"}' % (cid, PROMPT, cid, cid, cid)).encode()


class Load:
    def __init__(self, port, acked_path, runid, threads):
        self.port = port
        self.runid = runid
        self.threads = threads
        self.acked_path = acked_path
        self.acked_file = open(acked_path, "a")
        self.lock = threading.Lock()
        self.acked = 0
        self.refused = 0  # not answered 2xx (restarts, 503s): not acknowledged, nothing owed
        self.latencies = []  # seconds, of acknowledged requests since the last take
        self.stop_ev = threading.Event()
        self.workers = []

    def take_latencies(self):
        with self.lock:
            xs, self.latencies = self.latencies, []
            return xs

    def run(self, rate, seconds, max_count, flat_out=False):
        """Sends for SECONDS at RATE a second in all (or as fast as it can), at most MAX_COUNT."""
        self.stop_ev.clear()
        per_thread = max_count // self.threads + 1
        end = time.monotonic() + seconds
        self.workers = [threading.Thread(target=self.worker, daemon=True,
                                         args=(i, rate / self.threads, end, per_thread, flat_out))
                        for i in range(self.threads)]
        for w in self.workers:
            w.start()

    def wait(self):
        for w in self.workers:
            w.join()
        self.acked_file.flush()

    def stop(self):
        self.stop_ev.set()
        self.wait()

    def worker(self, tid, rate, end, count, flat_out):
        conn = None
        gap = 1.0 / rate if rate > 0 else 0
        nxt = time.monotonic()
        seq = 0
        while seq < count and not self.stop_ev.is_set():
            now = time.monotonic()
            if now >= end:
                break
            if not flat_out:
                if nxt > now:
                    time.sleep(nxt - now)
                # Behind by more than a second (a restart): start the schedule again from now
                # rather than sending the missed requests in a burst.
                nxt = max(nxt + gap, time.monotonic() - 1.0)
            seq += 1
            cid = f"{self.runid}{tid:02d}{seq:09d}"
            body = notification(cid)
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", "/hooks/vidu", body=body,
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = 200 <= r.status < 300
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                ok = False
                if conn:
                    conn.close()
                conn = None
                # The daemon restarting: wait a little before the next connection.
                self.stop_ev.wait(0.05)
            dt = time.monotonic() - t0
            with self.lock:
                if ok:
                    self.acked += 1
                    self.latencies.append(dt)
                    self.acked_file.write(cid + "\n")
                else:
                    self.refused += 1
        if conn:
            conn.close()


def p99_ms(xs):
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(0.99 * len(xs)))], 2)


# ---------------------------------------------------------------------------------------------
# Sampling.


def proc_status_kb(pid, keys=("VmRSS", "RssAnon")):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def wal_frames(ledger):
    """Frames in the ledger's WAL now (mxFrame in the WAL index, the -shm file's header, read
    without its lock: a sample may be a moment stale). It falls back to 0 each time a writer
    starts the WAL over after a complete checkpoint; the file's size only ever grows."""
    try:
        with open(ledger + "-shm", "rb") as f:
            b = f.read(20)
        return struct.unpack_from("=I", b, 16)[0] if len(b) == 20 else None
    except OSError:
        return None


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


COLUMNS = ["t_s", "pid", "segment", "since_start_s", "fault", "rss_kb", "anon_kb", "fds",
           "ledger_bytes", "wal_bytes", "wal_frames", "journal_queue_bytes", "backlog", "uncertain",
           "submitted_total", "acked_total", "acked_per_s", "webhook_p99_ms", "cpu_pct",
           "healthz"]


class Sampler(threading.Thread):
    def __init__(self, daemon, load, interval, csv_path, t_origin):
        super().__init__(daemon=True)
        self.d, self.load, self.interval = daemon, load, interval
        self.t_origin = t_origin
        self.rows = []
        self.fault = "none"
        self.csv = open(csv_path, "w")
        self.csv.write(",".join(COLUMNS) + "\n")
        self.done = threading.Event()
        self.last = None  # (pid, cpu_s, t, acked)
        self.segment_of = {}  # pid -> (segment number, monotonic start)
        self.health_failures = []  # (t_s, what) outside restarts

    def sample(self):
        t = time.monotonic()
        pid = self.d.pid()
        if pid is None:
            return
        if pid not in self.segment_of:
            self.segment_of[pid] = (len(self.segment_of), t)
        seg, seg_t0 = self.segment_of[pid]
        st = proc_status_kb(pid)
        cpu = proc_cpu_s(pid)
        acked = self.load.acked
        row = {"t_s": round(t - self.t_origin, 1), "pid": pid, "segment": seg,
               "since_start_s": round(t - seg_t0, 1), "fault": self.fault,
               "rss_kb": st.get("VmRSS"), "anon_kb": st.get("RssAnon"), "fds": fd_count(pid),
               "ledger_bytes": file_size(self.d.ledger),
               "wal_bytes": file_size(self.d.ledger + "-wal"),
               "wal_frames": wal_frames(self.d.ledger)}
        h0 = time.monotonic()
        ok = self.d.healthy(10)
        h1 = time.monotonic()
        row["healthz"] = 1 if ok else 0
        if not ok and not self.d.in_restart(h0 - 0.5, h1):
            self.health_failures.append((row["t_s"], "no 200 from /healthz within 10 s"))
        try:
            m = self.d.metrics()
            row["journal_queue_bytes"] = int(m.get("vidu_upscaled_journal_queue_bytes", 0))
            row["backlog"] = int(m.get("vidu_upscaled_backlog", 0))
            row["uncertain"] = int(m.get('vidu_upscaled_jobs{state="uncertain"}', 0))
            row["submitted_total"] = int(m.get("vidu_upscaled_submissions_total", 0))
        except (OSError, http.client.HTTPException):
            pass
        if self.last and self.last[0] == pid and cpu is not None:
            dt = t - self.last[2]
            row["cpu_pct"] = round(100 * (cpu - self.last[1]) / dt, 1)
            row["acked_per_s"] = round((acked - self.last[3]) / dt, 1)
        row["acked_total"] = acked
        row["webhook_p99_ms"] = p99_ms(self.load.take_latencies())
        self.last = (pid, cpu, t, acked)
        self.rows.append(row)
        self.csv.write(",".join("" if row.get(c) is None else str(row[c]) for c in COLUMNS) + "\n")
        self.csv.flush()

    def run(self):
        while not self.done.is_set():
            t0 = time.monotonic()
            try:
                self.sample()
            except Exception as e:  # a sample that failed is a gap, not the end of the soak
                log(f"sample failed: {e}")
            self.done.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def finish(self):
        self.done.set()
        self.join()
        self.csv.close()


# ---------------------------------------------------------------------------------------------
# Faults. Each takes a few seconds and leaves things as they were; they cycle.


def fault_plan(quick):
    every = ["500s", "429", "stall", "kill", "down", "401", "journald", "sighup"]
    if quick:
        # The faults that leave the largest backlogs (and so the largest WAL bursts when it
        # drains) first, so that the WAL file's plateau is reached in the first half.
        return ["down", "401", "500s", "kill", "429", "stall", "journald", "sighup", "kill"]
    return every


class Faults:
    def __init__(self, d, fake, journald, sampler, quick):
        self.d, self.fake, self.j, self.sampler = d, fake, journald, sampler
        self.down_s = 4 if quick else 20
        self.counts = {}
        self.restart_s = []
        self.downs = 0

    def run(self, name, stop_ev):
        self.sampler.fault = name
        self.counts[name] = self.counts.get(name, 0) + 1
        f = self.fake
        if name == "500s":
            f.faults({"on": "submit", "status": 500, "reason": "InternalServiceFailure",
                      "times": 40})
        elif name == "429":
            f.faults({"on": "submit", "status": 429, "reason": "TooManyRequests",
                      "retry_after": "2", "times": 20})
        elif name == "stall":
            # Answers only after upstream.timeout: the daemon gives up on them and retries. A
            # stalled request that had created a task would be submitted again (a timeout is
            # retryable, as the contract asks), so these create nothing.
            f.faults({"on": "any", "status": 503, "delay_ms": (UPSTREAM_TIMEOUT_S + 2) * 1000,
                      "times": 2 * CONCURRENCY, "create": False})
        elif name == "401":
            # The account is refused: dispatch pauses; the probes' backoff (0.5, 1, 2, 4 s)
            # uses these up in about 8 s and dispatch resumes.
            f.faults({"on": "submit", "status": 401, "reason": "Unauthorized", "times": 4})
        elif name == "down":
            # Nothing listens at the upstream's address: connections are refused, as when the
            # upstream's host is down. The fake cannot simply be stopped and started again: its
            # tasks live in its memory, and the daemon would poll the lost ones for ever. So the
            # daemon is pointed at a closed port (a reload), then back.
            self.d.write_conf(free_port())
            self.d.sighup()
            self.downs += 1
            stop_ev.wait(self.down_s)
            self.d.write_conf()
            self.d.sighup()
        elif name == "journald":
            if JOURNALD == "own":
                self.j.stop()
                stop_ev.wait(self.down_s)
                self.j.restart()
            else:
                self.counts[name] -= 1
        elif name == "sighup":
            self.d.sighup()
            stop_ev.wait(1)
            self.d.sighup()
        elif name == "kill":
            s = self.d.kill9_restart()
            self.restart_s.append(round(s, 2))
            log(f"kill -9 and restart: healthy again after {s:.2f} s")
        self.sampler.fault = "none"


# ---------------------------------------------------------------------------------------------
# The verdicts.


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def growth_check(rows, key, warmup_s, rel, abs_tol, label, extra=0):
    """The growth rule: samples taken within WARMUP_S of a daemon's start are left out (a
    restart empties the heap and the page cache, which then fill again); of the rest, the median
    of the first quarter of the run (by time) is compared with the median of the last quarter.
    Growth beyond max(REL x first, ABS_TOL) + EXTRA fails. Returns (ok, message)."""
    warm = [r for r in rows if r["since_start_s"] >= warmup_s and r.get(key) is not None]
    if len(warm) < 8:
        return True, f"{label}: too few warm samples ({len(warm)}) to judge"
    t0, t1 = rows[0]["t_s"], rows[-1]["t_s"]
    q = (t1 - t0) / 4
    first = [r[key] for r in warm if r["t_s"] <= t0 + q]
    last = [r[key] for r in warm if r["t_s"] >= t1 - q]
    if len(first) < 2 or len(last) < 2:
        return True, f"{label}: too few warm samples in the first or last quarter to judge"
    a, b = median(first), median(last)
    allowed = max(rel * a, abs_tol) + extra
    msg = (f"{label}: median {a} in the first quarter, {b} in the last "
           f"(growth {b - a}, allowed {round(allowed, 1)})")
    return b - a <= allowed, msg


def segment_check(rows, key, warmup_s, min_span_s, rel, abs_tol, label, extra=0):
    """Within each daemon's life (kill -9 restarts every few minutes reset the heap, which would
    hide a leak from a comparison across them): the median of its first three warm samples
    against the median of its last three, for lives whose warm samples span MIN_SPAN_S or more,
    with the same allowance as growth_check. Returns (ok, message) for the worst life."""
    worst = None
    for seg in sorted({r["segment"] for r in rows}):
        warm = [r for r in rows if r["segment"] == seg and r["since_start_s"] >= warmup_s
                and r.get(key) is not None]
        if len(warm) < 6 or warm[-1]["t_s"] - warm[0]["t_s"] < min_span_s:
            continue
        a = median([r[key] for r in warm[:3]])
        b = median([r[key] for r in warm[-3:]])
        allowed = max(rel * a, abs_tol) + extra
        if worst is None or b - a - allowed > worst[0]:
            worst = (b - a - allowed, seg, a, b, allowed, warm[-1]["t_s"] - warm[0]["t_s"])
    if worst is None:
        return True, f"{label} within a life: no life long enough to judge"
    _, seg, a, b, allowed, span = worst
    msg = (f"{label} within a life: at worst (life {seg}, {span:.0f} s) from {a} to {b} "
           f"(growth {b - a}, allowed {round(allowed, 1)})")
    return b - a <= allowed, msg


def growth_verdicts(res, rows, quick):
    """Memory, fds and the WAL, from the samples alone (soak.py --publish judges a finished run's
    CSV again with them)."""
    fails, notes = [], []
    # 3. Growth of RSS, anonymous memory and fds.
    # The journal queue is a bounded buffer (4 MiB, daemon/journal.c): after a burst that filled
    # it (a backlog drained at the submission rate, or journald restarting) the allocator keeps
    # that memory, so memory may also exceed the first quarter by the queue's bound.
    warmup = 10 if quick else 60
    for key, rel, tol, extra, label in (
            ("rss_kb", 0.10, 3072, JOURNAL_QUEUE_MAX_KB, "RSS (kB)"),
            ("anon_kb", 0.10, 3072, JOURNAL_QUEUE_MAX_KB, "anonymous memory (kB)"),
            ("fds", 0.0, CONCURRENCY + 4, 0, "open fds")):
        for ok, msg in (growth_check(rows, key, warmup, rel, tol, label, extra),
                        segment_check(rows, key, warmup, 20 if quick else 120, rel, tol, label,
                                      extra)):
            notes.append(msg)
            if not ok:
                fails.append(msg)
    # 4. The WAL stays bounded. Its content (frames since the last time a writer started it over
    # after a complete checkpoint) must keep coming back: the median of the last quarter's
    # samples at most twice the first quarter's, or two checkpoints' worth (2000 frames). Its
    # file grows past its preallocated size while a burst outruns the checkpointer (a backlog
    # drained at the submission rate after a fault) and is cut back to it (journal_size_limit)
    # once a checkpoint catches up, so a single sample may catch a burst: a bounded WAL file
    # keeps coming back too, so its last quarter's median may exceed its first quarter's by at
    # most a quarter (or 4 MiB). The largest size seen is reported.
    ok, msg = growth_check(rows, "wal_frames", 0, 1.0, 2000, "WAL content (frames)")
    notes.append(msg)
    if not ok:
        fails.append(msg)
    wal = [(r["t_s"], r["wal_bytes"]) for r in rows if r.get("wal_bytes") is not None]
    if len(wal) >= 4:
        quarter = max(1, len(wal) // 4)
        first = statistics.median(w for _, w in wal[:quarter])
        last = statistics.median(w for _, w in wal[-quarter:])
        top = max(w for _, w in wal)
        allowed = max(4 << 20, first / 4)
        res["wal_max_bytes"] = top
        msg = (f"WAL file: median {int(first) >> 10} KiB in the first quarter, {int(last) >> 10} "
               f"KiB in the last (growth allowed: {int(allowed) >> 10} KiB); at most "
               f"{top >> 10} KiB")
        notes.append(msg)
        if last - first > allowed:
            fails.append(msg)
    return fails, notes


def verdicts(res, rows, sampler, d, fake, acked, ledger_states, created, quick):
    fails, notes = [], []
    # 1. Every acknowledged creation was submitted (a task created upstream) or is held.
    lost = [c for c in acked if created.get(c, 0) == 0 and ledger_states.get(c) != "uncertain"]
    if lost:
        eg = ", ".join(f"{c} ({ledger_states.get(c, 'not in the ledger')})" for c in lost[:5])
        fails.append(f"{len(lost)} acknowledged creation(s) neither submitted nor held "
                     f"uncertain, e.g. {eg}")
    held = [c for c, s in ledger_states.items() if s == "uncertain"]
    bound = CONCURRENCY * d.kills
    res["uncertain"] = len(held)
    res["uncertain_bound"] = bound
    if len(held) > bound:
        fails.append(f"{len(held)} jobs held uncertain, more than upstream.concurrency x "
                     f"kills = {bound}")
    # The ledger and the upstream agree: a job the ledger calls submitted had a task created.
    orphans = [c for c, s in ledger_states.items()
               if s in ("submitted", "succeeded", "failed") and created.get(c, 0) == 0]
    if orphans:
        fails.append(f"{len(orphans)} job(s) the ledger calls submitted or ended, with no task "
                     f"created upstream, e.g. {orphans[:5]}")
    # 2. Nothing submitted twice.
    dups = {c: n for c, n in created.items() if n > 1}
    res["duplicates"] = len(dups)
    if dups:
        fails.append(f"{len(dups)} creation(s) submitted more than once, e.g. "
                     f"{list(dups.items())[:5]}")
    # 5. /healthz answered throughout, restarts aside.
    if sampler.health_failures:
        fails.append(f"/healthz did not answer outside a restart {len(sampler.health_failures)} "
                     f"time(s), first at t = {sampler.health_failures[0][0]} s")
    return fails, notes


# ---------------------------------------------------------------------------------------------
# Plots.


def gnuplot(script, cwd):
    r = subprocess.run(["gnuplot"], input=script, text=True, cwd=cwd, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"gnuplot failed: {r.stderr}")


def plots(outdir, rows, faults_at, title):
    if not shutil.which("gnuplot"):
        log("gnuplot is not installed: no plots")
        return []
    with open(os.path.join(outdir, "soak.dat"), "w") as f:
        f.write("t_min rss_mib anon_mib fds ledger_mib wal_mib jq_kib backlog p99_ms cpu_pct "
                "acked_per_s wal_content_mib\n")
        for r in rows:
            def v(k, scale=1.0):
                x = r.get(k)
                return "NaN" if x is None else f"{x / scale:.3f}"
            f.write(" ".join([f"{r['t_s'] / 60:.3f}", v("rss_kb", 1024), v("anon_kb", 1024),
                              v("fds"), v("ledger_bytes", 1 << 20), v("wal_bytes", 1 << 20),
                              v("journal_queue_bytes", 1024), v("backlog"), v("webhook_p99_ms"),
                              v("cpu_pct"), v("acked_per_s"),
                              "NaN" if r.get("wal_frames") is None
                              else f"{r['wal_frames'] * (4096 + 24) / (1 << 20):.3f}"]) + "\n")
    marks = "".join(f"set arrow from {t / 60:.3f}, graph 0 to {t / 60:.3f}, graph 1 nohead "
                    "lc rgb '#cc0000' dt 2\n" for t, name in faults_at if name == "kill")
    # The other faults: their names where they start, on the top panel only.
    labels = "".join(f"set label '{name}' at {t / 60:.3f}, graph 0.97 rotate by 90 right "
                     "font ',7' tc rgb '#666666'\n" for t, name in faults_at if name != "kill")
    common = ("set terminal pngcairo size 1000,900 font 'sans,9'\nset datafile missing 'NaN'\n"
              "set grid\nset key top left horizontal\nset xlabel 'minutes (dashed red: kill -9)'\n"
              "set multiplot layout 3,1 title '" + title + "'\n")
    gnuplot(common.replace("set multiplot", "set output 'soak-resources.png'\nset multiplot") +
            marks + labels + """set ylabel 'MiB'
set yrange [0:*]
plot 'soak.dat' using 1:2 skip 1 with lines lw 2 title 'RSS', '' using 1:3 skip 1 with lines lw 2 title 'anonymous'
unset label
set ylabel 'open fds'
plot 'soak.dat' using 1:4 skip 1 with lines lw 2 title 'open fds'
set ylabel 'MiB'
plot 'soak.dat' using 1:5 skip 1 with lines lw 2 title 'ledger file', '' using 1:6 skip 1 with lines lw 2 title 'WAL file', '' using 1:12 skip 1 with lines lw 1 title 'WAL content (frames in use)'
unset multiplot
""", outdir)
    gnuplot(common.replace("set multiplot", "set output 'soak-load.png'\nset multiplot") +
            marks + labels + """set yrange [0:*]
set ylabel 'jobs / KiB'
plot 'soak.dat' using 1:8 skip 1 with lines lw 2 title 'backlog (jobs)', '' using 1:7 skip 1 with lines lw 2 title 'journal queue (KiB)'
unset label
set ylabel 'ms'
set logscale y
set yrange [*:*]
plot 'soak.dat' using 1:9 skip 1 with linespoints pt 7 ps 0.4 title 'webhook p99 over each interval (ms, log)'
unset logscale y
set yrange [0:*]
set ylabel '% of a CPU / req/s'
plot 'soak.dat' using 1:10 skip 1 with lines lw 2 title 'daemon CPU %', '' using 1:11 skip 1 with lines lw 1 title 'acknowledged /s'
unset multiplot
""", outdir)
    return ["soak-resources.png", "soak-load.png"]


# ---------------------------------------------------------------------------------------------
# bench/RESULTS.md keeps the last full soak between these markers (bench.py keeps the block when
# it rewrites the file).

BEGIN, END = "<!-- soak: bench/soak.py writes this section -->", "<!-- /soak -->"


def results_section(res, rows):
    def q(key, first, scale=1):
        warm = [r[key] for r in rows if r.get(key) is not None
                and r["since_start_s"] >= (10 if res.get("quick") else 60)]
        n = max(1, len(warm) // 4)
        v = median(warm[:n] if first else warm[-n:])
        return "–" if v is None else round(v / scale, 1)

    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = "?"
    cal = res["calibration"]
    L = [BEGIN, "## Soak", ""]
    how = "SOAK_QUICK=1 bash bench/soak.sh" if res.get("quick") else \
        f"bash bench/soak.sh {res['duration_s'] / 60:.0f}m"
    L.append(f"{res['started']} · `{how}` · git "
             f"`{rev}` · {'pass' if not res['fails'] else 'FAIL'}")
    L.append("")
    L.append(f"Calibration: {cal['rate']:.0f} notifications/s flat out for {cal['seconds']} s; "
             f"the load ran at {cal['target_rate']:.0f}/s for {res['load_s'] / 60:.1f} min "
             f"({res['acked']} acknowledged in all, {res['refused']} not, during restarts). "
             f"Faults: {', '.join(f'{k} {v}x' for k, v in res['faults'].items())}. "
             f"Restarts healthy again after {min(res['restart_s'] or [0])} to "
             f"{max(res['restart_s'] or [0])} s.")
    L.append("")
    L.append("| measure | first quarter (median, warm) | last quarter | rule |")
    L.append("| --- | --- | --- | --- |")
    L.append(f"| RSS MiB | {q('rss_kb', True, 1024)} | {q('rss_kb', False, 1024)} | "
             "+10 % or 3 MiB, +4 MiB |")
    L.append(f"| anonymous MiB | {q('anon_kb', True, 1024)} | {q('anon_kb', False, 1024)} | "
             "+10 % or 3 MiB, +4 MiB |")
    L.append(f"| open fds | {q('fds', True)} | {q('fds', False)} | +{CONCURRENCY + 4} |")
    L.append(f"| webhook p99 ms (per interval) | {q('webhook_p99_ms', True)} | "
             f"{q('webhook_p99_ms', False)} | reported |")
    L.append(f"| daemon CPU % | {q('cpu_pct', True)} | {q('cpu_pct', False)} | reported |")
    L.append("")
    by = res["ledger_states"]
    L.append(f"At the end: ledger {', '.join(f'{k} {v}' for k, v in sorted(by.items()))}; "
             f"{res['tasks_created']} tasks created upstream, {res['duplicates']} creation(s) "
             f"submitted twice; {res['uncertain']} held `uncertain` (bound "
             f"{res['uncertain_bound']}; why: "
             f"{'; '.join(f'{n} {w}' for w, n in res.get('uncertain_why', {}).items()) or '-'}"
             f"); backlog drained in "
             f"{res['drain_s']} s; WAL at most {res.get('wal_max_bytes', 0) >> 20} MiB; "
             f"ledger {res.get('ledger_bytes', 0) >> 20} MiB.")
    L.append("")
    for n in res["notes"]:
        L.append(f"- {n}")
    for f in res["fails"]:
        L.append(f"- **FAIL**: {f}")
    L.append("")
    L.append("![soak: memory, fds, ledger](plots/soak-resources.png)")
    L.append("![soak: backlog, latency, CPU](plots/soak-load.png)")
    L.append(END)
    return "\n".join(L) + "\n"


def publish_section(text):
    path = os.path.join(BENCH, "RESULTS.md")
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if BEGIN in old and END in old:
        a, b = old.index(BEGIN), old.index(END) + len(END) + 1
        new = old[:a] + text + old[b:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(new)


def calibrate(d, runid_base, outdir, seconds, threads):
    """A short burst as fast as the load's threads go: acknowledged a second is the sustainable
    rate on this machine now (the client, the daemon, journald and the fake sharing its CPUs)."""
    load = Load(d.port, os.path.join(outdir, "acked.txt"), runid_base + "1", threads)
    t0 = time.monotonic()
    load.run(0, seconds, 10_000_000, flat_out=True)
    load.wait()
    wall = time.monotonic() - t0
    return load, load.acked / wall


def read_csv(path):
    rows = []
    with open(path) as f:
        head = f.readline().strip().split(",")
        for line in f:
            row = {}
            for k, v in zip(head, line.rstrip("\n").split(",")):
                if v == "":
                    row[k] = None
                else:
                    try:
                        row[k] = float(v) if "." in v else int(v)
                    except ValueError:
                        row[k] = v
            rows.append(row)
    return rows


def republish(outdir):
    """soak.py --publish DIR: a finished run's plots and section into bench/plots/ and
    bench/RESULTS.md (for a run made with SOAK_PUBLISH=0)."""
    with open(os.path.join(outdir, "summary.json")) as f:
        res = json.load(f)
    rows = read_csv(os.path.join(outdir, "soak.csv"))
    res.setdefault("ledger_bytes", rows[-1].get("ledger_bytes") or 0)
    # Judged again with this script's growth rules; the work's verdicts are the run's own.
    work = res.get("work_fails")
    if work is None:
        work = [f for f in res["fails"] if not f.startswith(("RSS", "anonymous", "open fds",
                                                               "WAL"))]
    g_fails, g_notes = growth_verdicts(res, rows, res["quick"])
    res["fails"], res["notes"] = work + g_fails, g_notes
    section = results_section(res, rows)
    for p in ("soak-resources.png", "soak-load.png"):
        shutil.copyfile(os.path.join(outdir, p), os.path.join(BENCH, "plots", p))
    publish_section(section)
    log("published to bench/RESULTS.md and bench/plots/")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--publish":
        republish(sys.argv[2])
        return
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    arg = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SOAK_DURATION")
    duration = parse_duration(arg) if arg else (90 if QUICK else 1800)
    interval = float(os.environ.get("SOAK_INTERVAL", 3 if QUICK else 10))
    publish = os.environ.get("SOAK_PUBLISH", "0" if QUICK else "1") == "1"
    for exe in (DAEMON, FAKE):
        if not os.access(exe, os.X_OK):
            sys.exit(f"soak: {exe} is missing; run bench/soak.sh")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.environ.get("SOAK_OUT") or os.path.join(BENCH, "results", f"soak-{stamp}")
    os.makedirs(outdir, exist_ok=True)
    res = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "quick": QUICK,
           "duration_s": duration, "interval_s": interval, "journald": JOURNALD}
    log(f"{'quick' if QUICK else 'full'} soak of {duration:.0f} s, samples every {interval} s, "
        f"results in {outdir}")
    tmp = tempfile.mkdtemp(prefix="vidu-soak-")
    runid = f"{int(time.time()) % 100000:05d}"
    threads = 8
    status = 0
    try:
        journald = Journald()
        journald.start()
        fake = Fake(tmp)
        d = Daemon(tmp, fake, interval)
        d.start()
        cal_s = 5 if QUICK else 15
        cal, rate = calibrate(d, runid, outdir, cal_s, threads)
        # Half of it, for the whole run: room for the faults' backlogs to drain while it goes on.
        target = max(20.0, rate / 2)
        res["calibration"] = {"seconds": cal_s, "acked": cal.acked, "rate": round(rate, 1),
                              "target_rate": round(target, 1)}
        log(f"calibration: {cal.acked} acknowledged in {cal_s} s, {rate:.0f}/s; the load runs at "
            f"{target:.0f}/s")
        # Let the calibration's backlog go before the clock starts.
        poll(lambda: d.metrics().get("vidu_upscaled_backlog", 1) == 0, 120,
             "the calibration's backlog to drain", 0.25)
        t_origin = time.monotonic()
        load = Load(d.port, os.path.join(outdir, "acked.txt"), runid + "2", threads)
        load.acked_file.close()
        load.acked_file = cal.acked_file
        sampler = Sampler(d, load, interval, os.path.join(outdir, "soak.csv"), t_origin)
        sampler.start()
        load.run(target, duration, int(target * duration * 1.2) + 100)
        faults = Faults(d, fake, journald, sampler, QUICK)
        plan = fault_plan(QUICK)
        # Faults from a tenth in to five sixths of the run: the first and last stretches show the
        # daemon unperturbed, and the last fault has settled before the load ends.
        f_start, f_end = duration * 0.1, duration * (5 / 6)
        if QUICK:
            step = (f_end - f_start) / len(plan)
        else:
            step = 30.0
        faults_at = []
        stop_ev = threading.Event()
        i = 0
        while True:
            at = f_start + i * step
            if at > f_end:
                break
            wait = t_origin + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            name = plan[i % len(plan)] if not QUICK or i < len(plan) else None
            if name is None:
                break
            faults_at.append((time.monotonic() - t_origin, name))
            log(f"fault: {name}")
            faults.run(name, stop_ev)
            i += 1
        load.wait()
        load_s = time.monotonic() - t_origin
        log(f"load done: {load.acked} acknowledged ({cal.acked} in the calibration), "
            f"{load.refused} not (restarts)")
        # Faults stopped: the backlog drains (bounded wait).
        t_drain = time.monotonic()
        try:
            poll(lambda: (lambda m: m.get("vidu_upscaled_backlog", 1) == 0
                          and m.get("vidu_upscaled_upstream_in_flight", 1) == 0)(d.metrics()),
                 120, "the backlog to drain", 0.5)
            res["drain_s"] = round(time.monotonic() - t_drain, 1)
        except RuntimeError as e:
            res["drain_s"] = None
            log(str(e))
        sampler.sample()
        sampler.finish()
        rows = sampler.rows
        rc = d.stop()
        res["daemon_exit"] = rc
        created = fake.created()
        stop(fake.p, 20)
        con = sqlite3.connect(f"file:{d.ledger}?mode=ro", uri=True)
        ledger_states = dict(con.execute("SELECT creation_id, state FROM jobs"))
        held_why = {}
        for (err,) in con.execute("SELECT upstream_error FROM jobs WHERE state = 'uncertain'"):
            held_why[err or ""] = held_why.get(err or "", 0) + 1
        con.close()
        with open(os.path.join(outdir, "acked.txt")) as f:
            acked = [l.strip() for l in f if l.strip()]
        by_state = {}
        for s in ledger_states.values():
            by_state[s] = by_state.get(s, 0) + 1
        res.update({"load_s": round(load_s, 1), "acked": len(acked), "refused": load.refused,
                    "kills": d.kills, "reloads": d.reloads, "upstream_downs": faults.downs,
                    "journald_stops": journald.stops, "faults": faults.counts,
                    "restart_s": faults.restart_s, "ledger_states": by_state,
                    "samples": len(rows), "tasks_created": sum(created.values()),
                    "uncertain_why": held_why,
                    "faults_at": [(round(t, 1), n) for t, n in faults_at]})
        fails, notes = verdicts(res, rows, sampler, d, fake, acked, ledger_states, created, QUICK)
        res["work_fails"] = list(fails)
        g_fails, g_notes = growth_verdicts(res, rows, QUICK)
        fails += g_fails
        notes += g_notes
        if rc != 0:
            fails.append(f"the daemon exited with {rc} at the end (SIGTERM)")
        if journald.restarted_at is not None:
            n = journal_entries_since(journald.restarted_at)
            res["journal_entries_after_restart"] = n
            if n == 0:
                fails.append("no entry from the daemon reached journald after its restart")
        if res["drain_s"] is None:
            fails.append("the backlog did not drain within 120 s after the load")
        lat = [r["webhook_p99_ms"] for r in rows if r.get("webhook_p99_ms") is not None]
        cpu = [r["cpu_pct"] for r in rows if r.get("cpu_pct") is not None]
        res["webhook_p99_ms_median"] = median(lat)
        res["cpu_pct_median"] = median(cpu)
        res["notes"], res["fails"] = notes, fails
        title = (f"vidu-upscaled soak: {load_s / 60:.1f} min at {target:.0f} notifications/s, "
                 f"{d.kills} kill -9, faults every {step:.0f} s")
        try:
            pngs = plots(outdir, rows, faults_at, title)
        except Exception as e:
            pngs = []
            log(f"plots failed: {e}")
        res["ledger_bytes"] = file_size(d.ledger)
        section = results_section(res, rows)
        with open(os.path.join(outdir, "summary.md"), "w") as f:
            f.write(section)
        if publish and pngs:
            pdir = os.path.join(BENCH, "plots")
            for p in pngs:
                shutil.copyfile(os.path.join(outdir, p), os.path.join(pdir, p))
            publish_section(section)
            log("published to bench/RESULTS.md and bench/plots/")
        with open(os.path.join(outdir, "summary.json"), "w") as f:
            json.dump(res, f, indent=1)
        log(f"{len(acked)} acknowledged; ledger {by_state}; {res['tasks_created']} tasks created "
            f"upstream, {res['duplicates']} duplicate(s); {res['uncertain']} held uncertain "
            f"(bound {res['uncertain_bound']}); {d.kills} kill -9 (back in {faults.restart_s} s), "
            f"{faults.downs} upstream down, {journald.stops} journald stop(s), "
            f"{d.reloads} SIGHUP; drain {res['drain_s']} s; webhook p99 median "
            f"{res['webhook_p99_ms_median']} ms; daemon CPU median {res['cpu_pct_median']} %")
        for n in notes:
            log(n)
        log(f"CSV: {outdir}/soak.csv; plots: {', '.join(pngs) or 'none'}; summary.json")
        for fl in fails:
            log(f"FAIL: {fl}")
        if fails:
            status = 1
        else:
            log("pass")
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
