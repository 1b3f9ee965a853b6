#!/usr/bin/env python3
"""bench.py: measures vidu-upscaled against nginx and adnanh/webhook on loopback (run via run.sh).

Every process it starts is stopped when it ends, on an exception or on SIGTERM/SIGINT/SIGHUP;
every load is bounded in time (wrk -d, curl_ceiling --seconds, bounded waits); only 127.0.0.1.
Standard library only. Environment:
  BENCH_QUICK=1      short durations, one run, small ledgers (a smoke run)
  BENCH_DURATION=S   seconds per wrk load (default 10, quick 3)
  BENCH_RUNS=N       runs per measurement; the report gives medians (default 3, quick 1)
  BENCH_SIZES=a,b,c  ledger sizes to ingest against (default 0,1000000,10000000)
  BENCH_PUBLISH=0|1  copy the report to bench/RESULTS.md and bench/plots/ (default: full runs)
  BENCH_PERF=0       skip the perf profiles
  BENCH_ONLY=pure    only pure durable ingestion beside nginx and the job's-life journal load
  BENCH_ONLY=pg      only 1, 2, 3 instances on one throwaway PostgreSQL 15 beside 1 on SQLite:
                     ingestion, a backlog's submissions, CPU per notification, commits
  BENCH_PG_BACKLOG=N pending jobs each submission turn drains (default 20000, quick 10000)
  BENCH_DRAIN_MAX=S  how long the dispatcher gets to submit a load's backlog (default 30, quick 10)
  BENCH_DAEMON_CONF=TEXT  appended to every vidu-upscaled configuration the bench writes (\n for
                     new lines), to measure a setting: '[log]\nfold_accepted = no'
"""

import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BUILD = os.path.join(ROOT, "build-bench")
DAEMON = os.path.join(BUILD, "vidu-upscaled")
FAKE = os.path.join(BUILD, "fake-upstream")
CEILING = os.path.join(BUILD, "curl_ceiling")
IDLE_FLOOR = os.path.join(BUILD, "idle_floor")
LUA = os.path.join(BENCH, "notify.lua")
HOOK_PATH = "/hooks/vidu"

QUICK = os.environ.get("BENCH_QUICK") == "1"


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


P = {
    "quick": QUICK,
    "duration_s": env_int("BENCH_DURATION", 3 if QUICK else 10),
    "runs": env_int("BENCH_RUNS", 1 if QUICK else 3),
    "connections": [8, 64],
    "threads": 2,
    "sizes": [int(x) for x in os.environ.get("BENCH_SIZES", "").split(",") if x]
    or ([0, 100_000, 1_000_000] if QUICK else [0, 1_000_000, 10_000_000]),
    "pending_jobs": 5000 if QUICK else 30000,
    "submit_max_s": 30 if QUICK else 60,
    "ceiling_s": 3 if QUICK else 5,
    "upstream_concurrency": 8,
    # Submissions are also measured at these (the ceiling at the same parallelism): at the
    # default every slot waits for a commit each cycle, with more slots a commit serves more.
    "submit_concurrency_more": [64],
    "idle_samples": 50 if QUICK else 200,
    "drain_max_s": env_int("BENCH_DRAIN_MAX", 20 if QUICK else 60),
    "webhook_settle_max_s": 10 if QUICK else 20,
}
# BENCH_ONLY=pure: only the pure-ingestion loads beside nginx and the job's-life journal load,
# a short report of their figures (for iterating on the daemon's CPU per notification).
ONLY = os.environ.get("BENCH_ONLY", "")
PUBLISH = os.environ.get("BENCH_PUBLISH", "0" if QUICK else "1") == "1"
DO_PERF = os.environ.get("BENCH_PERF", "1") == "1" and shutil.which("perf") is not None
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------
# Processes: everything started goes through start() and is stopped by stop_all().

PROCS = []


def log(msg):
    print(f"bench: {msg}", flush=True)


def start(argv, *, env=None, stdout=None, stderr=None, cwd=None):
    p = subprocess.Popen(argv, env=env, stdout=stdout or subprocess.DEVNULL,
                         stderr=stderr or subprocess.DEVNULL, cwd=cwd, stdin=subprocess.DEVNULL)
    PROCS.append(p)
    return p


def stop(p, timeout=15):
    if p is None or p.poll() is not None:
        return
    p.terminate()
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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http_get(port, path, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def http_post(port, path, body=b"", timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def proc_cpu(pid):
    """(self, children) CPU seconds of a process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return (0.0, 0.0)
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ((utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK)


def proc_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_shares_kb(pid):
    """(PSS, anonymous) kB of a process from /proc/PID/smaps_rollup, or (None, None). RSS counts
    every page of a shared library the process touched; PSS divides each shared page among the
    processes mapping it; anonymous is its own memory (heap, stacks, written data), backed by no
    file."""
    pss = anon = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "Pss":
                    pss = int(v.split()[0])
                elif k == "Anonymous":
                    anon = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return pss, anon


class MemSampler(threading.Thread):
    """The peak PSS and anonymous memory of a process while a load runs, sampled every 50 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_pss, self.peak_anon = pid, None, None
        self.done = threading.Event()

    def sample(self):
        pss, anon = proc_shares_kb(self.pid)
        if pss is not None:
            self.peak_pss = max(self.peak_pss or 0, pss)
        if anon is not None:
            self.peak_anon = max(self.peak_anon or 0, anon)

    def run(self):
        while not self.done.wait(0.05):
            self.sample()

    def finish(self):
        self.done.set()
        self.join()
        self.sample()


def pid_of(name):
    """The pid of a running process named NAME (only read, for its CPU counters), or None."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == name:
                        return int(d)
            except OSError:
                pass
    return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def median_of(runs, key):
    """The median of one figure over runs (dicts), skipping runs without it."""
    return median([r.get(key) for r in runs])


def sh(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def run_measured(argv, timeout, env=None):
    """Runs ARGV to its end; returns (stdout, stderr, returncode, rusage) where rusage is the
    child's own CPU seconds (ru_utime + ru_stime). Its ru_maxrss is not the child's: it counts
    this interpreter's pages from before exec."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        PROCS.append(p)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                p.returncode, ru)


# ---------------------------------------------------------------------------------------------
# wrk

RUN_COUNTER = [0]


def new_runid():
    """Digits only, unique per load within this bench and across benches (time-based prefix)."""
    RUN_COUNTER[0] += 1
    return f"{int(time.time()) % 100000:05d}{RUN_COUNTER[0]:03d}"


def run_wrk(url, conns, duration, outdir, tag, runid=None, threads=None):
    """One bounded wrk load with notify.lua; returns the parsed numbers. Loads running at the same
    time each need a RUNID of their own (new_runid(), taken before they start)."""
    runid = runid or new_runid()
    argv = ["wrk", f"-t{threads or P['threads']}", f"-c{conns}", f"-d{duration}s", "--latency",
            "--timeout", "10s", "-s", LUA, url, "--", runid]
    stdout, stderr, _, ru = run_measured(argv, duration + 60)
    with open(os.path.join(outdir, f"wrk-{tag}.txt"), "w") as f:
        f.write(stdout + stderr)
    r = {}
    for m in re.finditer(r"BENCH (.*)", stdout):
        for kv in m.group(1).split():
            k, v = kv.split("=")
            r[k] = float(v)
    if "requests" not in r:
        raise RuntimeError(f"wrk printed no results: {stdout} {stderr}")
    secs = r["duration_us"] / 1e6
    errors = int(r["connect"] + r["read"] + r["write"] + r["timeout"])
    res = {
        "connections": conns,
        "duration_s": round(secs, 3),
        "requests": int(r["requests"]),
        "non2xx": int(r["status"]),
        "socket_errors": errors,
        # Every completed response that was not non-2xx/3xx; socket errors never completed.
        "acked": int(r["requests"] - r["status"]),
        "rps": round((r["requests"] - r["status"]) / secs, 1),
        "latency_ms": {p: round(r[f"p{p}_us"] / 1000, 3) for p in ("50", "75", "90", "99", "99.9")},
        "mean_ms": round(r["mean_us"] / 1000, 3),
        "max_ms": round(r["max_us"] / 1000, 3),
        # The load generator's own CPU: on shared cores, what it takes is not the server's.
        "wrk_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
    }
    return res


def others_cpu_start(others):
    """CPU seconds so far of the OTHERS processes ({name: pid}, a pid may be None)."""
    return {k: proc_cpu(v)[0] for k, v in others.items() if v}


def others_cpu(start, others, wall):
    """{name}_cpu_s and {name}_cpu_pct of each of OTHERS since START, over WALL seconds."""
    r = {}
    for k, v in others.items():
        if v and k in start:
            used = proc_cpu(v)[0] - start[k]
            r[f"{k}_cpu_s"] = round(used, 2)
            r[f"{k}_cpu_pct"] = round(100 * used / wall, 1)
    return r


def measured_load(pid, url, conns, outdir, tag, extra=None):
    """wrk against a server, with the server's CPU and peak RSS (and EXTRA pids' CPU)."""
    extra = extra or {}
    c0 = proc_cpu(pid)
    e0 = others_cpu_start(extra)
    mem = MemSampler(pid)
    mem.start()
    t0 = time.monotonic()
    try:
        r = run_wrk(url, conns, P["duration_s"], outdir, tag)
    finally:
        mem.finish()
    wall = time.monotonic() - t0
    c1 = proc_cpu(pid)
    r["cpu_s"] = round(c1[0] - c0[0], 2)
    r["children_cpu_s"] = round(c1[1] - c0[1], 2)
    r["cpu_pct"] = round(100 * (r["cpu_s"] + r["children_cpu_s"]) / wall, 1)
    r.update(others_cpu(e0, extra, wall))
    r["wrk_cpu_pct"] = round(100 * r["wrk_cpu_s"] / wall, 1)
    r["peak_rss_kb"] = proc_hwm_kb(pid)
    r["peak_pss_kb"] = mem.peak_pss
    r["peak_anon_kb"] = mem.peak_anon
    return r


# ---------------------------------------------------------------------------------------------
# Servers


class NginxServer:
    """nginx, one worker, no master, answering 202 to anything: the ceiling for one core."""

    def __init__(self, tmp, name="nginx"):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        self.port = port = free_port()
        conf = os.path.join(d, "nginx.conf")
        temps = "\n".join(f"    {k}_temp_path {d}/{k};" for k in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(conf, "w") as f:
            f.write(f"""# One worker, no master, answers 202 to anything: the ceiling for one core.
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temps}
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 202; }}
    }}
}}
""")
        self.p = start(["nginx", "-p", d, "-c", conf, "-e", f"{d}/error.log"])
        wait_port(port, self.p)
        self.url = f"http://127.0.0.1:{port}{HOOK_PATH}"

    def stop(self):
        stop(self.p)


def bench_nginx(tmp, outdir):
    ng = NginxServer(tmp)
    runs = {}
    try:
        for conns in P["connections"]:
            runs[conns] = []
            for i in range(P["runs"]):
                r = measured_load(ng.p.pid, ng.url, conns, outdir, f"nginx-c{conns}-{i}")
                log(f"nginx c={conns} run {i}: {r['rps']} req/s p99 {r['latency_ms']['99']} ms")
                runs[conns].append(r)
    finally:
        ng.stop()
    return runs


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def bench_webhook(tmp, outdir):
    d = os.path.join(tmp, "webhook")
    os.makedirs(d)
    hooks = []
    for mode, hook_id in (("default", "vidu"), ("wait", "vidu-wait")):
        script = os.path.join(d, f"hook-{mode}.sh")
        with open(script, "w") as f:
            # The hook's command: /bin/true's work, plus one line so the runs can be counted.
            f.write(f"#!/bin/sh\necho 1 >> {d}/ran-{mode}\n")
        os.chmod(script, 0o755)
        h = {"id": hook_id, "execute-command": script, "command-working-directory": d,
             "http-methods": ["POST"], "success-http-response-code": 202}
        if mode == "wait":
            h["include-command-output-in-response"] = True
        hooks.append(h)
    with open(os.path.join(d, "hooks.json"), "w") as f:
        json.dump(hooks, f, indent=1)
    out = {}
    # Wait mode first: default mode leaves commands queued behind its answers, and a fresh
    # process per load keeps one load's queue from slowing the next.
    for mode, hook_id in (("wait", "vidu-wait"), ("default", "vidu")):
        out[mode] = {}
        ran_file = os.path.join(d, f"ran-{mode}")
        for conns in P["connections"]:
            out[mode][conns] = []
            for i in range(P["runs"]):
                port = free_port()
                p = start(["webhook", "-hooks", os.path.join(d, "hooks.json"), "-ip",
                           "127.0.0.1", "-port", str(port)])
                try:
                    wait_port(port, p)
                    before = count_lines(ran_file)
                    r = measured_load(p.pid, f"http://127.0.0.1:{port}/hooks/{hook_id}", conns,
                                      outdir, f"webhook-{mode}-c{conns}-{i}")
                    r["ran_at_end"] = count_lines(ran_file) - before
                    # Commands acknowledged in default mode go on running after the answer:
                    # wait (bounded) until all ran or the count stops moving.
                    t0 = time.monotonic()
                    last, still = -1, 0
                    while time.monotonic() - t0 < P["webhook_settle_max_s"]:
                        n = count_lines(ran_file) - before
                        if n >= r["acked"]:
                            break
                        still = still + 1 if n == last else 0
                        if still >= 6:
                            break
                        last = n
                        time.sleep(0.5)
                    r["ran"] = count_lines(ran_file) - before
                    r["settle_s"] = round(time.monotonic() - t0, 1)
                finally:
                    stop(p)
                time.sleep(1)  # let the last commands of a stopped webhook finish
                r["ran_after_stop"] = count_lines(ran_file) - before
                log(f"webhook {mode} c={conns} run {i}: {r['rps']} req/s, acked "
                    f"{r['acked']}, commands run: {r['ran_at_end']} when the load ended, "
                    f"{r['ran']} {r['settle_s']} s later (then stopped)")
                out[mode][conns].append(r)
    return out


class Fake:
    """The fake upstream, one for the whole bench; reset between measurements."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "fake")
        os.makedirs(self.dir)
        self.key = os.urandom(16).hex()
        self.key_file = os.path.join(self.dir, "api-key")
        with open(self.key_file, "w") as f:
            f.write(self.key + "\n")
        os.chmod(self.key_file, 0o600)
        pf = os.path.join(self.dir, "port")
        env = dict(os.environ, VIDU_FAKE_API_KEY=self.key)
        self.p = start([FAKE, "--listen", "127.0.0.1:0", "--port-file", pf, "--quiet"], env=env)
        for _ in range(500):
            if os.path.exists(pf):
                break
            time.sleep(0.01)
        with open(pf) as f:
            self.port = int(f.read())
        wait_port(self.port, self.p)

    def reset(self):
        st, _ = http_post(self.port, "/_fake/reset", b"{}")
        if st >= 300:
            raise RuntimeError(f"fake reset answered {st}")

    def stats(self):
        st, body = http_get(self.port, "/_fake/stats", timeout=60)
        return json.loads(body)


# No polls during the bench: only submissions talk to the upstream.
NO_POLLS = "poll_interval = 1h"


class Daemon:
    """One vidu-upscaled on its own ledger, logging like under systemd."""

    def __init__(self, tmp, fake, ledger, name, extra_conf="", concurrency=None,
                 synchronous="full", base_url=None, upstream_conf="", pg_url=None):
        """PG_URL: the ledger on PostgreSQL (store.backend = postgresql, store.instance = NAME);
        LEDGER is then unused."""
        self.dir = os.path.join(tmp, name)
        self.pg = pg_url is not None
        os.makedirs(self.dir, exist_ok=True)
        self.ledger = ledger
        self.port = free_port()
        self.conf = os.path.join(self.dir, "vidu-upscaled.conf")
        with open(self.conf, "w") as f:
            f.write(f"""# Written by bench/bench.py.
[server]
listen = 127.0.0.1:{self.port}
# wrk's 64 connections all come from 127.0.0.1; the default (64) leaves no room to spare.
max_per_ip = 256
drain_timeout = 2s
[upstream]
base_url = {base_url or f"http://127.0.0.1:{fake.port}"}
api_key_file = {fake.key_file}
concurrency = {concurrency or P['upstream_concurrency']}
{upstream_conf or NO_POLLS}
[store]
{f"backend = postgresql{chr(10)}url = {pg_url}{chr(10)}instance = {name}" if pg_url else
 f"path = {ledger}{chr(10)}synchronous = {synchronous}"}
{extra_conf}
{os.environ.get("BENCH_DAEMON_CONF", "").replace(chr(92) + "n", chr(10))}
""")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.p = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDU_UPSCALED_")}
        # Under systemd stderr is the journal stream and entries go to the journal only; the
        # same here when a journal answers (JOURNAL_STREAM names our stderr file).
        st = os.fstat(self.logf.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        t0 = time.monotonic()
        self.p = start([DAEMON, "-c", self.conf], env=env, stderr=self.logf, stdout=self.logf)
        end = t0 + 300
        while time.monotonic() < end:
            if self.p.poll() is not None:
                raise RuntimeError(f"vidu-upscaled exited with {self.p.returncode}; see "
                                   f"{self.log_path}")
            try:
                st, _ = http_get(self.port, "/healthz", timeout=1)
                if st == 200:
                    break
            except OSError:
                pass
            time.sleep(0.005)
        else:
            raise RuntimeError("vidu-upscaled did not become healthy")
        self.startup_s = round(time.monotonic() - t0, 3)
        return self

    def metrics(self):
        st, body = http_get(self.port, "/metrics")
        m = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    m[k] = float(v)
                except ValueError:
                    pass
        return m

    def wait_drained(self, max_s):
        """Waits (at most MAX_S) until nothing is left to submit and nothing is in flight; returns
        the last /metrics read and the seconds it took."""
        t0 = time.monotonic()
        while True:
            m = self.metrics()
            if (m.get("vidu_upscaled_backlog", 1) == 0
                    and m.get("vidu_upscaled_upstream_in_flight", 1) == 0) \
                    or time.monotonic() - t0 >= max_s:
                return m, time.monotonic() - t0
            time.sleep(0.25)

    def stop(self):
        stop(self.p, 30)
        rc = self.p.returncode
        self.logf.close()
        return rc


def sqlite(path, sql):
    return sh(["sqlite3", "-batch", path, sql]).strip()


def jobs_by_state(path):
    out = sqlite(path, "SELECT state, count(*) FROM jobs GROUP BY state")
    return {s: int(n) for s, n in (l.split("|") for l in out.splitlines() if l)}


def make_schema(tmp, fake):
    """An empty ledger in the daemon's own schema: start it once on a new file, stop it."""
    path = os.path.join(tmp, "schema.db")
    d = Daemon(tmp, fake, path, "schema").start()
    if d.stop() != 0:
        raise RuntimeError("vidu-upscaled did not stop cleanly after creating the schema")
    return path


def fsync_file(path):
    """Writes a file the bench made back to disk now, so that the daemon's first fsync does not
    also write back its gigabytes: a stall that belongs to the bench, not to the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_synced(src, dst):
    """Copies a ledger and makes the copy durable before a daemon opens it."""
    shutil.copyfile(src, dst)
    fsync_file(dst)


def prefill(path, start_n, end_n, state="succeeded"):
    """Adds jobs START_N..END_N-1 directly with sqlite3, in transactions of a million rows, and
    counts them in job_counts as the daemon does (a schema-1 ledger counts by trigger)."""
    now = int(time.time() * 1e6)
    chunk = 1_000_000
    for lo in range(start_n, end_n, chunk):
        hi = min(end_n, lo + chunk)
        if state == "succeeded":
            cols = ("printf('%d', 2300000000000000 + x * 7), printf('%d', 2200000000000000 + x),"
                    f" printf('%d', 2100000000000000 + x), 'succeeded', 1, {now}, 200, "
                    "printf('https://cdn.example.com/u/%d.mp4', 2100000000000000 + x), "
                    f"{now}, {now}")
        else:
            cols = (f"printf('pending%09d', x), printf('%d', 2200000000000000 + x), NULL, "
                    f"'pending', 0, 0, NULL, NULL, {now}, {now}")
        sql = f"""PRAGMA synchronous = OFF;
PRAGMA cache_size = -262144;
BEGIN;
WITH RECURSIVE c(x) AS (SELECT {lo} UNION ALL SELECT x + 1 FROM c WHERE x < {hi - 1})
INSERT INTO jobs(creation_id, source_task_id, upscale_task_id, state, attempt, next_at,
                 http_status, result_url, created_at, updated_at)
SELECT {cols} FROM c;
UPDATE job_counts SET n = n + {hi - lo} WHERE state = '{state}' AND NOT EXISTS
    (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'jobs_count_insert');
COMMIT;
"""
        subprocess.run(["sqlite3", "-batch", path], input=sql, text=True, check=True,
                       capture_output=True)
    fsync_file(path)  # synchronous = OFF above: write it back now, not during a measured load


def ingest_run(tmp, fake, template, size, conns, outdir, tag, journald, extra_conf=""):
    """A fresh daemon on a copy of TEMPLATE (SIZE finished jobs), one load, then the checks."""
    ledger = os.path.join(tmp, "run.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    copy_synced(template, ledger)
    fake.reset()
    d = Daemon(tmp, fake, ledger, "daemon", extra_conf).start()
    try:
        r = measured_load(d.p.pid, f"http://127.0.0.1:{d.port}{HOOK_PATH}", conns, outdir, tag,
                          extra={"upstream": fake.p.pid, "journald": journald})
        r["ledger_size"] = size
        r["startup_s"] = d.startup_s
        m = d.metrics()
        recorded_now = sum(v for k, v in m.items() if k.startswith("vidu_upscaled_jobs{")) - size
        r["recorded_at_end"] = int(recorded_now)
        # Drain: bounded wait for the dispatcher to submit everything recorded.
        sub0 = m.get("vidu_upscaled_jobs{state=\"submitted\"}", 0)
        m, drain_s = d.wait_drained(P["drain_max_s"])
        sub1 = m.get("vidu_upscaled_jobs{state=\"submitted\"}", 0)
        r["drain_s"] = round(drain_s, 1)
        r["drain_rate"] = round((sub1 - sub0) / drain_s, 1) if drain_s > 0.5 else None
        r["backlog_after_drain"] = int(m.get("vidu_upscaled_backlog", -1))
        r["peak_rss_kb_after_drain"] = proc_hwm_kb(d.p.pid)
    finally:
        rc = d.stop()
    st = fake.stats()
    states = jobs_by_state(ledger)
    total = sum(states.values())
    r["exit_status"] = rc
    r["recorded"] = total - size
    r["states"] = states
    r["upstream_tasks"] = st["tasks_created"]
    r["upstream_submit_requests"] = st["submit_requests"]
    r["upstream_duplicates"] = sum(1 for v in st["created"].values() if v > 1)
    left = sum(states.get(k, 0) for k in ("pending", "waiting", "submitting"))
    sub, inflight = states.get("submitted", 0), states.get("submitting", 0) + states.get(
        "uncertain", 0)
    r["checks"] = {
        # Every 2xx answer is in the ledger (wrk may stop with requests in flight that the
        # daemon recorded but wrk never saw answered, so >=).
        "recorded_every_ack": r["recorded"] >= r["acked"],
        # Everything recorded reached the upstream within the bounded drain (and the stop that
        # follows it, which lets requests in flight finish): nothing left to submit.
        "submitted_every_ack": r["upstream_tasks"] >= r["acked"] and left == 0,
        "no_duplicate_submission": r["upstream_duplicates"] == 0,
        # The fake created a task for every job the ledger calls submitted, and no more than
        # those plus the ones whose answer the stop cut short.
        "upstream_matches_ledger": sub <= r["upstream_tasks"] <= sub + inflight,
    }
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    return r


def bench_ingest(tmp, fake, schema, outdir, journald):
    """Ledger 0 at every connection count (and once with the job entries off), the larger ledgers
    at the largest count. The loads take turns run by run (0 at 8, 0 at 64, 0 quiet, 1M, 10M, then
    again), so the machine's drift over the minutes a run takes falls on every size alike and the
    ratios between them compare loads minutes apart, not a quarter of an hour."""
    res = {"by_size": {}, "quiet": []}
    top = max(P["connections"])
    # Each size's template is the previous one's, filled further (the empty schema's first).
    templates = {}
    have, prev = 0, schema
    for size in sorted(P["sizes"]):
        path = os.path.join(tmp, f"template-{size}.db")
        shutil.copyfile(prev, path)
        if size > have:
            t0 = time.monotonic()
            prefill(path, have, size)
            log(f"ledger pre-filled to {size} jobs in {time.monotonic() - t0:.1f} s "
                f"({os.path.getsize(path) >> 20} MiB)")
            have = size
        templates[size] = prev = path
        res["by_size"][size] = {c: [] for c in (P["connections"] if size == 0 else [top])}
    loads = []
    for size in sorted(P["sizes"]):
        for conns in res["by_size"][size]:
            loads.append((size, conns, False))
            if size == 0 and conns == top:
                # What the journal costs: the same load with job entries below log.level.
                loads.append((size, conns, True))
    for i in range(P["runs"]):
        for size, conns, quiet in loads:
            if quiet:
                r = ingest_run(tmp, fake, templates[size], size, conns, outdir,
                               f"us-quiet-c{conns}-{i}", journald, "[log]\nlevel = warning\n")
                log(f"vidu-upscaled without job entries c={conns} run {i}: {r['rps']} req/s")
                res["quiet"].append(r)
                continue
            r = ingest_run(tmp, fake, templates[size], size, conns, outdir,
                           f"us-s{size}-c{conns}-{i}", journald)
            log(f"vidu-upscaled ledger={size} c={conns} run {i}: {r['rps']} req/s p99 "
                f"{r['latency_ms']['99']} ms, acked {r['acked']}, recorded {r['recorded']}, "
                f"submitted {r['upstream_tasks']} (drain {r['drain_s']} s), "
                f"checks {r['checks']}")
            res["by_size"][size][conns].append(r)
    for path in templates.values():
        os.unlink(path)
    return res


class Blackhole:
    """An upstream that never answers: a listening socket nothing accepts from. The kernel
    completes each connection and takes the POST into its buffers, so the daemon's few slots
    stay in flight (upstream.timeout is an hour) and nothing else is submitted: what is left is
    pure durable ingestion."""

    def __init__(self):
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(1024)
        self.url = f"http://127.0.0.1:{self.s.getsockname()[1]}"

    def close(self):
        self.s.close()


PURE_UPSTREAM = "timeout = 1h\npoll_interval = 1h"


def journal_entries(pid):
    """The job entries (those with a CREATION_ID) the journal holds from process PID, by
    JOB_STATE ("submitted+accepted": a submitted entry that folded the job's accepted one,
    log.fold_accepted), or None when journalctl cannot tell."""
    try:
        out = subprocess.run(["journalctl", "--no-pager", "-q", f"_PID={pid}", "-o", "json",
                              "--output-fields=CREATION_ID,MESSAGE_ID,JOB_STATE,ACCEPTED_AT"],
                             capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    by = {}
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if "CREATION_ID" in e:
            k = e.get("JOB_STATE", "?")
            if k == "submitted" and "ACCEPTED_AT" in e:
                k = "submitted+accepted"
            by[k] = by.get(k, 0) + 1
    return by


def journald_settled(max_s=30):
    """Waits (at most MAX_S) until systemd-journald's CPU stops rising for half a second: it
    has taken in what was sent. Returns its pid."""
    pid = pid_of("systemd-journal")
    if not pid:
        return None
    last, t0 = proc_cpu(pid)[0], time.monotonic()
    while time.monotonic() - t0 < max_s:
        time.sleep(0.5)
        now = proc_cpu(pid)[0]
        if now - last < 0.02:
            break
        last = now
    return pid


def bench_pure(tmp, fake, schema, outdir):
    """CPU per acknowledged notification for pure durable ingestion (HTTP in, parse, fsync'd
    group commit, one journal entry; the upstream never answers, so nothing is submitted)
    against nginx's CPU per `return 202` request, at the top connection count. nginx and the
    daemon take turns run by run in one session, so their ratio compares loads seconds apart."""
    conns = max(P["connections"])
    hole = Blackhole()
    ng = NginxServer(tmp, "nginx-pure")
    ledger = os.path.join(tmp, "pure.db")
    out = {"nginx": [], "daemon": []}
    try:
        for i in range(P["runs"]):
            r = measured_load(ng.p.pid, ng.url, conns, outdir, f"pure-nginx-c{conns}-{i}")
            r["cpu_us"] = cpu_per_request_us(r)
            log(f"pure: nginx c={conns} run {i}: {r['rps']} req/s, {r['cpu_us']:.1f} µs CPU a "
                "request")
            out["nginx"].append(r)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(ledger + suffix):
                    os.unlink(ledger + suffix)
            copy_synced(schema, ledger)
            d = Daemon(tmp, fake, ledger, "pure", base_url=hole.url,
                       upstream_conf=PURE_UPSTREAM).start()
            journald = journald_settled(5)
            try:
                m0 = d.metrics()
                r = measured_load(d.p.pid, f"http://127.0.0.1:{d.port}{HOOK_PATH}", conns,
                                  outdir, f"pure-us-c{conns}-{i}", extra={"journald": journald})
                m1 = d.metrics()
            finally:
                rc = d.stop()
            states = jobs_by_state(ledger)
            r["exit_status"] = rc
            r["recorded"] = sum(states.values())
            r["submitted"] = states.get("submitted", 0) + states.get("submitting", 0) + \
                states.get("uncertain", 0)
            r["commits"] = int(metric_sum(m1, "vidu_upscaled_ledger_commit_seconds_count")
                               - metric_sum(m0, "vidu_upscaled_ledger_commit_seconds_count"))
            r["cpu_us"] = cpu_per_request_us(r)
            r["journald_cpu_us"] = per_request_us(r.get("journald_cpu_pct"), r["rps"])
            by = journal_entries(d.p.pid)
            r["entries"] = sum(by.values()) if by is not None else None
            r["checks"] = {
                "recorded_every_ack": r["recorded"] >= r["acked"],
                # Only the slots the never-answering upstream holds: nothing else submitted.
                "nothing_submitted": r["submitted"] <= P["upstream_concurrency"],
                "one_entry_per_ack": r["entries"] is None or r["entries"] >= r["acked"],
            }
            log(f"pure: vidu-upscaled c={conns} run {i}: {r['rps']} req/s, {r['cpu_us']:.1f} µs "
                f"CPU an ack (journald {fmt(r['journald_cpu_us'])} µs), {r['commits']} commits, "
                f"{r['entries']} entries, checks {r['checks']}")
            out["daemon"].append(r)
    finally:
        ng.stop()
        hole.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(ledger + suffix):
                os.unlink(ledger + suffix)
    return out


def bench_lifecycle(tmp, fake, schema, outdir):
    """systemd-journald's CPU per creation over a job's whole life (accepted, submitted, polled
    to its end by the fake, which completes a task after 1 s) and the job entries per creation.
    A bounded load at 8 connections, then the wait until every job succeeded; journald's CPU
    from the load's start until it has taken everything in, less what it used at rest just
    before (other processes on the machine log too)."""
    runs = []
    ledger = os.path.join(tmp, "life.db")
    secs = max(1, P["duration_s"] // 3)
    for i in range(P["runs"]):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(ledger + suffix):
                os.unlink(ledger + suffix)
        copy_synced(schema, ledger)
        fake.reset()
        d = Daemon(tmp, fake, ledger, "life", upstream_conf="poll_interval = 1s").start()
        try:
            journald = journald_settled(5)
            j0, t0 = proc_cpu(journald)[0], time.monotonic()
            time.sleep(2)
            rest = (proc_cpu(journald)[0] - j0) / (time.monotonic() - t0)
            c0, j0, t0 = proc_cpu(d.p.pid)[0], proc_cpu(journald)[0], time.monotonic()
            r = run_wrk(f"http://127.0.0.1:{d.port}{HOOK_PATH}", 8, secs, outdir,
                        f"life-{i}")
            end = time.monotonic() + 180
            done = 0
            while time.monotonic() < end:
                m = d.metrics()
                done = int(m.get("vidu_upscaled_jobs{state=\"succeeded\"}", 0))
                total = int(sum(v for k, v in m.items() if k.startswith("vidu_upscaled_jobs{")))
                if done >= total and m.get("vidu_upscaled_journal_queue_bytes", 0) == 0:
                    break
                time.sleep(0.25)
            cpu = proc_cpu(d.p.pid)[0] - c0
        finally:
            rc = d.stop()
        journald_settled(30)
        wall = time.monotonic() - t0
        used = proc_cpu(journald)[0] - j0 - rest * wall
        states = jobs_by_state(ledger)
        n = sum(states.values())
        by = journal_entries(d.p.pid) or {}
        x = {"acked": r["acked"], "creations": n, "succeeded": states.get("succeeded", 0),
             "exit_status": rc, "wall_s": round(wall, 2), "journald_rest_pct": round(100 * rest, 1),
             "journald_cpu_s": round(used, 3), "daemon_cpu_s": round(cpu, 3),
             "journald_us_per_creation": round(used / n * 1e6, 1) if n else None,
             "daemon_us_per_creation": round(cpu / n * 1e6, 1) if n else None,
             "entries": by, "entries_per_creation": round(sum(by.values()) / n, 3) if n else None}
        log(f"lifecycle run {i}: {n} creations ({x['succeeded']} succeeded) in {x['wall_s']} s; "
            f"journald {x['journald_us_per_creation']} µs a creation (at rest "
            f"{x['journald_rest_pct']} %), {x['entries_per_creation']} entries a creation {by}")
        runs.append(x)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    return runs


def bench_submit(tmp, fake, schema, outdir, journald, conc=None, sync="full"):
    """Daemon submission rate from N pending jobs versus the bare curl-multi ceiling, both with
    CONC requests in flight (default: upstream.concurrency's default). SYNC is the ledger's
    store.synchronous: "normal" (no fdatasync at a commit, not durable) measures what the
    commits' syncs cost the rate."""
    conc = conc or P["upstream_concurrency"]
    profile = DO_PERF and conc == P["upstream_concurrency"] and sync == "full"
    # More slots drain faster: a larger backlog keeps the timed window about as long.
    n = P["pending_jobs"] * max(1, conc // (2 * P["upstream_concurrency"]))
    others = {"journald": journald, "upstream": fake.p.pid}
    ledger = os.path.join(tmp, "submit.db")
    runs = []
    for i in range(P["runs"]):
        # The ceiling first, then the daemon, in the same run.
        env = dict(os.environ, VIDU_FAKE_API_KEY=fake.key)
        fake.reset()
        out, err, rc, ru = run_measured(
            [CEILING, "--url", f"http://127.0.0.1:{fake.port}/vidu/v1/tasks", "--parallel",
             str(conc), "--seconds", str(P["ceiling_s"]), "--prefix", f"ceiling{i}-"],
            P["ceiling_s"] + 60, env=env)
        if rc != 0:
            raise RuntimeError(f"curl_ceiling exited with {rc}: {err}")
        # Its peak_rss_kb (its own VmHWM): the floor any daemon built on Debian's libcurl has.
        ceiling = json.loads(out)
        # Its CPU a transfer (start-up included): what one POST costs a client that records
        # nothing, beside the daemon's CPU a submission.
        ceiling["cpu_us_per_request"] = per_request_us(
            100 * (ru.ru_utime + ru.ru_stime), ceiling.get("ok"))
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(ledger + suffix):
                os.unlink(ledger + suffix)
        shutil.copyfile(schema, ledger)
        prefill(ledger, 0, n, state="pending")
        fake.reset()
        d = Daemon(tmp, fake, ledger, "submit", concurrency=conc, synchronous=sync)
        t_spawn = time.monotonic()
        d.start()
        t_ready = time.monotonic()
        prof = perf_attach(d.p.pid, outdir, "submit", 3) if profile and i == 0 else None
        m0 = d.metrics()
        done0 = int(m0.get("vidu_upscaled_jobs{state=\"submitted\"}", 0))
        win = None
        c0 = proc_cpu(d.p.pid)
        others0 = others_cpu_start(others)
        done = 0
        while time.monotonic() - t_ready < P["submit_max_s"]:
            m = d.metrics()
            done = int(m.get("vidu_upscaled_jobs{state=\"submitted\"}", 0))
            if prof and win is None and time.monotonic() - prof["t0"] >= prof["secs"]:
                win = done - done0
            if done >= n:
                break
            time.sleep(0.02)
        t_end = time.monotonic()
        c1 = proc_cpu(d.p.pid)
        wall = t_end - t_ready
        cpu_others = others_cpu(others0, others, wall)
        m1 = d.metrics()
        syncs = perf_finish(prof) if prof else None
        if prof and win is None:
            win = done - done0
        d.stop()
        st = fake.stats()
        def delta(name):
            return metric_sum(m1, name) - metric_sum(m0, name)

        commits = delta("vidu_upscaled_ledger_commit_seconds_count")
        r = {
            "concurrency": conc,
            "synchronous": sync,
            "pending": n,
            "cpu_pct": round(100 * (c1[0] - c0[0]) / wall, 1),
            "commits_per_s": round(commits / wall, 1),
            "commit_mean_ms": hist_mean_ms(m0, m1, "vidu_upscaled_ledger_commit_seconds") or None,
            # The fdatasync inside each commit (none with synchronous = normal): the disk's part
            # of the commit, the rest being the statements.
            "sync_mean_ms": hist_mean_ms(m0, m1, "vidu_upscaled_ledger_sync_seconds") or None,
            "syncs_per_s": round(delta("vidu_upscaled_ledger_sync_seconds_count") / wall, 1),
            **cpu_others,
            "submitted": done,
            "seconds": round(wall, 3),
            "startup_s": round(t_ready - t_spawn, 3),
            "rate": round(done / wall, 1),
            "cpu_s": round(c1[0] - c0[0], 2),
            "cpu_us_per_submission": per_request_us(100 * (c1[0] - c0[0]), done),
            "upstream_tasks": st["tasks_created"],
            "upstream_duplicates": sum(1 for v in st["created"].values() if v > 1),
            "ceiling": ceiling,
            "ceiling_rate": ceiling["rps"],
            "syncs_per_submission": round(syncs / win, 3) if syncs is not None and win else None,
            "upstream_requests_per_s": round(delta("vidu_upscaled_upstream_requests_total") / wall,
                                             1),
        }
        r["ratio"] = round(r["rate"] / r["ceiling_rate"], 4) if r["ceiling_rate"] else None
        # Each slot's cycle holds at least one commit and one round trip (the ceiling's).
        if r["commit_mean_ms"] and r["ceiling_rate"]:
            r["bound_rate"] = round(conc / (r["commit_mean_ms"] / 1000 + conc / r["ceiling_rate"]),
                                    1)
        log(f"submission run {i} ({conc} in flight, synchronous = {sync}): daemon {r['rate']}/s "
            f"({done}/{n} in {r['seconds']} s), curl-multi ceiling {r['ceiling_rate']}/s, "
            f"ratio {r['ratio']}")
        runs.append(r)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(ledger + suffix):
            os.unlink(ledger + suffix)
    return runs

# ---------------------------------------------------------------------------------------------
# Several instances on one PostgreSQL (issue 27): ingestion and submissions with 1, 2 and 3
# instances on one throwaway PostgreSQL 15 server, beside one instance on SQLite, taking turns.

PG_INSTANCES = [1, 2, 3]


def pg_available():
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import pgserver
    return os.access(os.path.join(pgserver.PG_BIN, "initdb"), os.X_OK)


class PgBench:
    """A throwaway PostgreSQL 15 (tests/integration/pgserver.py: initdb as an unprivileged user,
    fsync and synchronous_commit on), reached over 127.0.0.1 as a shared database would be, and
    two template databases the turns copy: the daemon's schema empty, and the same holding a
    backlog of pending jobs."""

    def __init__(self, tmp, fake, backlog):
        sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
        import pgserver
        # pg_stat_statements (its default, top-level statements) says which statements the
        # server's time went to; its own cost falls on every PostgreSQL turn alike.
        self.srv = pgserver.PgServer(settings={
            "shared_buffers": "128MB", "max_connections": "60",
            "shared_preload_libraries": "'pg_stat_statements'",
            # pg_stat_wal's time in the WAL's fsyncs (two clock reads a sync).
            "track_wal_io_timing": "on"})
        self.srv.start()
        self.turn = 0
        # The schema as the daemon makes it: one instance started on the database, then stopped.
        self.srv.create_database("tmpl_empty")
        d = Daemon(tmp, fake, None, "pg-schema", pg_url=self.url("tmpl_empty")).start()
        if d.stop() != 0:
            raise RuntimeError("vidu-upscaled on PostgreSQL did not stop cleanly")
        self.sql("CREATE DATABASE tmpl_backlog TEMPLATE tmpl_empty", db="postgres")
        self.backlog = backlog
        self.sql(f"""INSERT INTO jobs (creation_id, source_task_id, state, attempt, next_at,
                     created_at, updated_at)
                     SELECT 'pending' || lpad(x::text, 9, '0'), (2200000000000000 + x)::text,
                            'pending', 0, now(), now(), now()
                     FROM generate_series(0, {backlog - 1}) x""", db="tmpl_backlog")
        self.sql("VACUUM ANALYZE jobs", db="tmpl_backlog")
        self.sql("CHECKPOINT", db="postgres")
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", db="postgres")

    def statements_reset(self):
        self.sql("SELECT pg_stat_statements_reset()")

    def statements(self, db, limit=5):
        """The statements DB's sessions spent the most execution time on since the reset:
        [{calls, total_ms, rows, query}], the query's text shortened."""
        rows = self.sql(f"""SELECT s.calls, round(s.total_exec_time::numeric, 1), s.rows,
                                   left(regexp_replace(s.query, '[[:space:]]+', ' ', 'g'), 100)
                            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                            WHERE d.datname = '{db}' ORDER BY s.total_exec_time DESC
                            LIMIT {limit}""")
        return [{"calls": int(c), "total_ms": float(t), "rows": int(r), "query": q}
                for c, t, r, q in rows]

    def url(self, db):
        return self.srv.conninfo(db=db, tcp=True)

    def sql(self, query, db="postgres"):
        return self.srv.sql(query, db=db)

    def fresh(self, template):
        """A new database copied from TEMPLATE, for one turn; returns its name."""
        self.turn += 1
        name = f"turn{self.turn}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE {template} OWNER vidu')
        return name

    def drop(self, name):
        self.sql(f'DROP DATABASE IF EXISTS "{name}"')

    def xact_commit(self, db):
        """Transactions committed in DB so far (pg_stat_database), once no session is left in it:
        a backend's counts reach the shared statistics when it ends."""
        end = time.monotonic() + 10
        while time.monotonic() < end:
            n = int(self.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'")[0][0])
            if n == 0:
                break
            time.sleep(0.05)
        return int(self.sql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'")
                   [0][0])

    def wal(self):
        """The cluster's WAL counters so far (pg_stat_wal): bytes, full-page images, syncs and
        the milliseconds spent in them. Read with no session in the load's database, as
        xact_commit is."""
        b, fpi, n, ms = self.sql("SELECT wal_bytes, wal_fpi, wal_sync, wal_sync_time "
                                 "FROM pg_stat_wal")[0]
        return {"bytes": float(b), "fpi": int(fpi), "syncs": int(n), "sync_ms": float(ms)}

    def wal_delta(self, w0, r, per):
        """Adds to R the WAL written since W0, per PER (acknowledgements or submissions) and per
        commit: what each commit makes the disk write and wait for."""
        w1 = self.wal()
        d = {k: w1[k] - w0[k] for k in w0}
        r["wal"] = d
        r["wal_bytes_per_item"] = round(d["bytes"] / per, 1) if per else None
        r["wal_fpi_per_commit"] = round(d["fpi"] / r["commits"], 2) if r["commits"] else None
        r["wal_sync_ms"] = round(d["sync_ms"] / d["syncs"], 3) if d["syncs"] else None

    def cpu(self):
        """CPU seconds of every server process so far: the live ones' own, plus what the
        postmaster reaped (backends that ended)."""
        root = self.srv.postmaster_pid()
        return sum(proc_cpu(p)[0] for p in self.srv.pids()) + proc_cpu(root)[1]

    def stop(self):
        self.srv.stop()


def split_connections(total, n):
    """TOTAL connections over N loads, as evenly as they go: 64 over 3 is 22, 21, 21."""
    return [total // n + (1 if k < total % n else 0) for k in range(n)]


def parallel_wrk(urls, conns, outdir, tag):
    """One wrk per URL at the same time, the connections split between them (wrk hits one URL;
    a balancer in front would be one more process on the two CPUs). Returns the combined load:
    summed requests and rates, the worst p99, the wrks' CPU."""
    runids = [new_runid() for _ in urls]
    split = split_connections(conns, len(urls))
    out = [None] * len(urls)
    errs = []

    def one(k):
        try:
            out[k] = run_wrk(urls[k], split[k], P["duration_s"], outdir, f"{tag}-w{k}",
                             runid=runids[k], threads=P["threads"] if len(urls) == 1 else 1)
        except Exception as e:  # re-raised below
            errs.append(e)
    ts = [threading.Thread(target=one, args=(k,)) for k in range(len(urls))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    r = {"connections": conns, "split": split, "per_instance_rps": [w["rps"] for w in out]}
    for k in ("requests", "non2xx", "socket_errors", "acked", "rps", "wrk_cpu_s"):
        r[k] = round(sum(w[k] for w in out), 2)
    r["duration_s"] = max(w["duration_s"] for w in out)
    r["latency_ms"] = {p: max(w["latency_ms"][p] for w in out) for p in out[0]["latency_ms"]}
    return r


def pg_ingest_turn(tmp, fake, pg, schema, hole, n, outdir, tag, journald):
    """Pure durable ingestion (the upstream never answers) at 64 connections, split over N
    instances on one PostgreSQL database (n = 0: one instance on SQLite); CPU per acknowledged
    notification of the daemons, the server's processes, journald and wrk; commits (the daemons'
    turns, each one round trip) and the database's committed transactions; then the checks."""
    conns = max(P["connections"])
    db = None
    daemons = []
    ledger = os.path.join(tmp, "pgsqlite.db")
    try:
        if n == 0:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(ledger + suffix):
                    os.unlink(ledger + suffix)
            copy_synced(schema, ledger)
            daemons = [Daemon(tmp, fake, ledger, "sqlite-1", base_url=hole.url,
                              upstream_conf=PURE_UPSTREAM).start()]
        else:
            db = pg.fresh("tmpl_empty")
            x0 = pg.xact_commit(db)
            w0 = pg.wal()
            pg.statements_reset()
            for k in range(n):
                daemons.append(Daemon(tmp, fake, None, f"pg-{k + 1}", base_url=hole.url,
                                      upstream_conf=PURE_UPSTREAM, pg_url=pg.url(db)))
            for d in daemons:
                d.start()
        journald_settled(5)
        m0 = [d.metrics() for d in daemons]
        c0 = [proc_cpu(d.p.pid)[0] for d in daemons]
        pg0 = pg.cpu() if pg else 0
        j0 = proc_cpu(journald)[0] if journald else 0
        t0 = time.monotonic()
        r = parallel_wrk([f"http://127.0.0.1:{d.port}{HOOK_PATH}" for d in daemons], conns,
                         outdir, tag)
        wall = time.monotonic() - t0
        daemon_cpu = sum(proc_cpu(d.p.pid)[0] - c for d, c in zip(daemons, c0))
        pg_cpu = (pg.cpu() - pg0) if (pg and n) else 0
        journald_cpu = (proc_cpu(journald)[0] - j0) if journald else None
        m1 = [d.metrics() for d in daemons]
        rcs = [d.stop() for d in daemons]
        daemons = []
        r["commits"] = int(sum(metric_sum(b, "vidu_upscaled_ledger_commit_seconds_count")
                               - metric_sum(a, "vidu_upscaled_ledger_commit_seconds_count")
                               for a, b in zip(m0, m1)))
        r["commit_mean_ms"] = median([hist_mean_ms(a, b, "vidu_upscaled_ledger_commit_seconds")
                                      for a, b in zip(m0, m1)])
        if n == 0:
            states = jobs_by_state(ledger)
            rows = distinct = sum(states.values())
        else:
            r["xact_commit"] = pg.xact_commit(db) - x0
            pg.wal_delta(w0, r, r["acked"])
            r["statements"] = pg.statements(db)
            rows, distinct = (int(v) for v in pg.sql(
                "SELECT count(*), count(DISTINCT creation_id) FROM jobs", db=db)[0])
            states = {s: int(c) for s, c in pg.sql(
                "SELECT state, count(*) FROM jobs GROUP BY state", db=db)}
    finally:
        for d in daemons:
            d.stop()
        if db:
            pg.drop(db)
    acked = r["acked"]
    r.update({
        "instances": n or 1, "backend": "postgresql" if n else "sqlite", "wall_s": round(wall, 2),
        "exit_status": rcs, "rows": rows, "states": states,
        "daemon_cpu_us": round(daemon_cpu / acked * 1e6, 1) if acked else None,
        "pg_cpu_us": round(pg_cpu / acked * 1e6, 1) if acked and n else None,
        "journald_cpu_us": round(journald_cpu / acked * 1e6, 1)
        if acked and journald_cpu is not None else None,
        "wrk_cpu_us": round(r["wrk_cpu_s"] / acked * 1e6, 1) if acked else None,
        "acks_per_commit": round(acked / r["commits"], 1) if r["commits"] else None,
    })
    r["total_cpu_us"] = round((r["daemon_cpu_us"] or 0) + (r["pg_cpu_us"] or 0), 1)
    if n:
        r["pg_cpu_us_per_commit"] = round(pg_cpu / r["commits"] * 1e6, 1) if r["commits"] else None
        r["xacts_per_ack"] = round(r["xact_commit"] / acked, 4) if acked else None
    # Every acknowledged creation a job, once: the jobs' creation ids are all distinct, and there
    # are no fewer than wrk's acknowledgements nor more than it sent (a request in flight when
    # wrk stopped may have been recorded without its answer being counted).
    r["checks"] = {
        "every_ack_a_job": rows >= acked,
        "each_job_once": distinct == rows and rows <= r["requests"] + conns,
        "no_5xx": r["non2xx"] == 0 and r["socket_errors"] == 0,
        "clean_exit": all(rc == 0 for rc in rcs),
        # Only the slots the never-answering upstream holds: nothing else submitted.
        "nothing_submitted": sum(v for k, v in states.items() if k != "pending")
        <= (n or 1) * P["upstream_concurrency"],
    }
    log(f"pg ingestion {r['backend']} x{r['instances']}: {r['rps']} req/s "
        f"({'/'.join(str(x) for x in r['per_instance_rps'])}), p99 {r['latency_ms']['99']} ms, "
        f"daemons {fmt(r['daemon_cpu_us'])} µs + postgres {fmt(r['pg_cpu_us'])} µs CPU an ack, "
        f"{r['commits']} commits ({fmt(r['acks_per_commit'])} acks each), "
        f"xact_commit {r.get('xact_commit', '–')}, checks {r['checks']}")
    return r


def pg_submit_turn(tmp, fake, pg, backlog_db, n, outdir):
    """A backlog of pending jobs submitted by N instances on one PostgreSQL database (n = 0: one
    instance on SQLite, BACKLOG_DB its ledger's template), each with upstream.concurrency slots;
    the rate from when every instance answers /healthz until the fake upstream holds every job;
    then the checks: each job submitted, each created once at the fake."""
    count = pg.backlog
    db = None
    daemons = []
    ledger = os.path.join(tmp, "pgsqlite-submit.db")
    try:
        fake.reset()
        if n == 0:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(ledger + suffix):
                    os.unlink(ledger + suffix)
            copy_synced(backlog_db, ledger)
            daemons = [Daemon(tmp, fake, ledger, "sqlite-1")]
        else:
            db = pg.fresh("tmpl_backlog")
            x0 = pg.xact_commit(db)
            w0 = pg.wal()
            pg.statements_reset()
            daemons = [Daemon(tmp, fake, None, f"pg-{k + 1}", pg_url=pg.url(db))
                       for k in range(n)]
        pg0 = pg.cpu() if n else 0
        c0 = []
        for d in daemons:
            d.start()
            c0.append(proc_cpu(d.p.pid)[0])
        t0 = time.monotonic()
        m0 = [d.metrics() for d in daemons]

        def sent(ms):
            return sum(m.get('vidu_upscaled_upstream_requests_total{class="2xx"}', 0) for m in ms)
        done0 = sent(m0)
        ms = m0
        while time.monotonic() - t0 < P["submit_max_s"]:
            ms = [d.metrics() for d in daemons]
            if sent(ms) >= count:
                break
            time.sleep(0.05)
        wall = time.monotonic() - t0
        done = sent(ms)
        daemon_cpu = sum(proc_cpu(d.p.pid)[0] - c for d, c in zip(daemons, c0))
        pg_cpu = (pg.cpu() - pg0) if n else 0
        m1 = [d.metrics() for d in daemons]
        rcs = [d.stop() for d in daemons]
        daemons = []
        st = fake.stats()
        r = {"instances": n or 1, "backend": "postgresql" if n else "sqlite", "backlog": count,
             "submitted": int(done), "seconds": round(wall, 3),
             "rate": round((done - done0) / wall, 1) if wall > 0 else None,
             "commits": int(sum(metric_sum(b, "vidu_upscaled_ledger_commit_seconds_count")
                                - metric_sum(a, "vidu_upscaled_ledger_commit_seconds_count")
                                for a, b in zip(m0, m1))),
             "commit_mean_ms": median([hist_mean_ms(a, b, "vidu_upscaled_ledger_commit_seconds")
                                       for a, b in zip(m0, m1)]),
             "exit_status": rcs, "upstream_tasks": st["tasks_created"],
             "upstream_duplicates": sum(1 for v in st["created"].values() if v > 1)}
        if n == 0:
            states = jobs_by_state(ledger)
        else:
            r["xact_commit"] = pg.xact_commit(db) - x0
            pg.wal_delta(w0, r, int(done))
            r["statements"] = pg.statements(db)
            states = {s: int(c) for s, c in pg.sql(
                "SELECT state, count(*) FROM jobs GROUP BY state", db=db)}
    finally:
        for d in daemons:
            d.stop()
        if db:
            pg.drop(db)
    r["states"] = states
    r["daemon_cpu_us"] = round(daemon_cpu / done * 1e6, 1) if done else None
    r["pg_cpu_us"] = round(pg_cpu / done * 1e6, 1) if done and n else None
    r["submissions_per_commit"] = round(done / r["commits"], 1) if r["commits"] else None
    r["checks"] = {
        "every_job_submitted": states.get("submitted", 0) == count,
        "each_created_once": r["upstream_tasks"] == count and r["upstream_duplicates"] == 0,
        "clean_exit": all(rc == 0 for rc in rcs),
    }
    log(f"pg submissions {r['backend']} x{r['instances']}: {r['rate']}/s ({r['submitted']}/"
        f"{count} in {r['seconds']} s), daemons {fmt(r['daemon_cpu_us'])} µs + postgres "
        f"{fmt(r['pg_cpu_us'])} µs CPU a submission, {r['commits']} commits, checks {r['checks']}")
    return r


def bench_pg(tmp, fake, schema, outdir, journald):
    """Ingestion and submissions, taking turns run by run: one instance on SQLite, then 1, 2 and
    3 on one PostgreSQL."""
    backlog = env_int("BENCH_PG_BACKLOG", 10000 if QUICK else 20000)
    pg = PgBench(tmp, fake, backlog)
    hole = Blackhole()
    sqlite_backlog = os.path.join(tmp, "pg-sqlite-backlog.db")
    shutil.copyfile(schema, sqlite_backlog)
    prefill(sqlite_backlog, 0, backlog, state="pending")
    res = {"server": {"version": pg.sql("SHOW server_version")[0][0],
                      "settings": {k: pg.sql(f"SHOW {k}")[0][0] for k in
                                   ("synchronous_commit", "fsync", "wal_sync_method",
                                    "shared_buffers", "max_connections")},
                      "connection": "TCP 127.0.0.1"},
           "ingest": {n: [] for n in [0] + PG_INSTANCES},
           "submit": {n: [] for n in [0] + PG_INSTANCES}}
    try:
        for i in range(P["runs"]):
            for n in [0] + PG_INSTANCES:
                res["ingest"][n].append(pg_ingest_turn(tmp, fake, pg, schema, hole, n, outdir,
                                                       f"pg-ingest-n{n}-{i}", journald))
            for n in [0] + PG_INSTANCES:
                res["submit"][n].append(pg_submit_turn(tmp, fake, pg, sqlite_backlog, n, outdir))
    finally:
        hole.close()
        pg.stop()
        os.unlink(sqlite_backlog)
    return res


def pg_summary(res):
    """Medians over runs of each configuration, and the target's ratio (run by run, then the
    median: each run's own SQLite turn is the reference)."""
    pgr = res.get("pg")
    if not pgr:
        return None
    keys_i = ("rps", "daemon_cpu_us", "pg_cpu_us", "journald_cpu_us", "wrk_cpu_us",
              "total_cpu_us", "commits", "acks_per_commit", "commit_mean_ms", "xact_commit",
              "xacts_per_ack", "pg_cpu_us_per_commit", "acked", "wal_bytes_per_item",
              "wal_fpi_per_commit", "wal_sync_ms")
    keys_s = ("rate", "daemon_cpu_us", "pg_cpu_us", "commits", "submissions_per_commit",
              "xact_commit", "seconds", "commit_mean_ms", "wal_bytes_per_item",
              "wal_fpi_per_commit", "wal_sync_ms")
    s = {"ingest": {}, "submit": {}}
    for n, runs in pgr["ingest"].items():
        s["ingest"][n] = {k: median_of(runs, k) for k in keys_i}
        s["ingest"][n]["p99_ms"] = median([r["latency_ms"]["99"] for r in runs])
        s["ingest"][n]["checks_ok"] = all(all(r["checks"].values()) for r in runs)
    for n, runs in pgr["submit"].items():
        s["submit"][n] = {k: median_of(runs, k) for k in keys_s}
        s["submit"][n]["checks_ok"] = all(all(r["checks"].values()) for r in runs)
    base = pgr["ingest"][0]
    s["ratio_runs"] = [ratio(p["rps"], q["rps"]) for p, q in zip(pgr["ingest"][1], base)]
    s["ratio"] = median(s["ratio_runs"])
    s["target_met"] = s["ratio"] is not None and s["ratio"] >= 0.5
    sb = pgr["submit"][0]
    s["submit_ratio"] = median([ratio(p["rate"], q["rate"]) for p, q in zip(pgr["submit"][1], sb)])
    return s


def pg_plot(res, outdir):
    """req/s (and submissions/s) and CPU per notification versus instances."""
    s = res["pg_summary"]
    with open(os.path.join(outdir, "pg.dat"), "w") as f:
        f.write('label rps sub daemon_us pg_us\n')
        for n in [0] + PG_INSTANCES:
            i, b = s["ingest"][n], s["submit"][n]
            label = "SQLite ×1" if n == 0 else f"PG ×{n}"
            f.write(f'"{label}" {i["rps"] or 0} {b["rate"] or 0} {i["daemon_cpu_us"] or 0} '
                    f'{i["pg_cpu_us"] or 0}\n')
    gnuplot(f"""set terminal pngcairo size 1000,480 font 'sans,10'
set output 'pg.png'
set multiplot layout 1,2 title 'Instances on one PostgreSQL vs one on SQLite (median of {P["runs"]}, same run)'
set style data histograms
set style fill solid 0.85 border -1
set grid ytics
set yrange [0:*]
set key top left
set datafile columnheaders
set xtics font 'sans,9'
set xlabel 'instances (PG: on one PostgreSQL)'
set title 'Throughput'
set ylabel 'per second'
set style histogram clustered gap 1
plot 'pg.dat' using 2:xtic(1) title 'notifications (64 conn.)', '' using 3 title 'submissions (backlog)'
set title 'CPU per acknowledged notification'
set ylabel 'µs'
set style histogram rowstacked
plot 'pg.dat' using 4:xtic(1) title 'vidu-upscaled (all instances)', '' using 5 title 'postgres processes'
unset multiplot
""", outdir)
    return ["pg.png"]


def pg_report(res, plot_dir):
    """The PostgreSQL section's lines."""
    s, pgr = res.get("pg_summary"), res.get("pg")
    if not s:
        return []
    top = max(P["connections"])
    srv = pgr["server"]
    L = ["## Instances on one PostgreSQL (issue 27)\n"]
    L.append(f"One throwaway PostgreSQL {srv['version']} started by the bench "
             f"(`tests/integration/pgserver.py`: {', '.join(f'{k} = {v}' for k, v in srv['settings'].items())}), "
             f"reached over {srv['connection']}, on the same 2 CPUs as everything else. Each turn "
             "gets a fresh database copied from a template. **Ingestion** is pure durable ingestion "
             "(the upstream a socket that never answers, so nothing is submitted beyond the slots "
             f"it holds) at {top} connections, {P['duration_s']} s a load: with N instances one "
             "wrk per instance, the connections split between them (64 = 32 + 32 = 22 + 21 + 21; "
             "no balancer, which would be one more process on the CPUs). **Submissions**: a "
             f"backlog of {pgr['submit'][0][0]['backlog']:,} pending jobs, each instance with "
             f"{P['upstream_concurrency']} slots, against the fake upstream. The configurations "
             "take turns run by run (SQLite, then 1, 2, 3 on PostgreSQL); figures are medians of "
             f"{P['runs']} run(s). CPU per notification is utime+stime from /proc over the load: "
             "the daemons summed, and the postgres processes summed (live ones plus what the "
             "postmaster reaped). Commits are the daemons' own count (one pipelined batch, one "
             "round trip, per loop turn); xact_commit is pg_stat_database's for the turn's "
             "database (it adds the housekeeping connection's short transactions: counts, "
             "leases).\n")
    L.append(f"**Target: one instance on PostgreSQL ≥ 0.5× one on SQLite in ingestion, same run: "
             f"{fmt(s['ratio'], 3)}× ({'met' if s['target_met'] else 'not met'}; run by run "
             f"{', '.join(fmt(x, 3) for x in s['ratio_runs'])}).**\n")
    if plot_dir is not None:
        L.append(f"![instances on PostgreSQL]({plot_dir}pg.png)\n")
    L.append("| ingestion | req/s | p99 ms | daemons µs/ack | postgres µs/ack | both | journald "
             "µs/ack | wrk µs/ack | commits (round trips) | acks per commit | commit ms | "
             "xact_commit | postgres µs/commit | WAL bytes/ack | full pages/commit | WAL sync ms | "
             "checks |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- | --- | --- |")
    for n in [0] + PG_INSTANCES:
        x = s["ingest"][n]
        L.append(f"| {'SQLite, 1 instance' if n == 0 else f'PostgreSQL, {n} instance(s)'} | "
                 f"{fmt(x['rps'])} | {fmt(x['p99_ms'], 2)} | {fmt(x['daemon_cpu_us'])} | "
                 f"{fmt(x['pg_cpu_us'])} | {fmt(x['total_cpu_us'])} | {fmt(x['journald_cpu_us'])} | "
                 f"{fmt(x['wrk_cpu_us'])} | {fmt(x['commits'])} | {fmt(x['acks_per_commit'])} | "
                 f"{fmt(x['commit_mean_ms'], 3)} | {fmt(x['xact_commit'])} | "
                 f"{fmt(x['pg_cpu_us_per_commit'])} | {fmt(x['wal_bytes_per_item'], 0)} | "
                 f"{fmt(x['wal_fpi_per_commit'], 2)} | {fmt(x['wal_sync_ms'], 3)} | "
                 f"{'ok' if x['checks_ok'] else 'FAILED'} |")
    L.append("")
    L.append("| submissions | per s | daemons µs/submission | postgres µs/submission | commits | "
             "submissions per commit | commit ms | xact_commit | WAL bytes/submission | "
             "full pages/commit | WAL sync ms | checks |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in [0] + PG_INSTANCES:
        x = s["submit"][n]
        L.append(f"| {'SQLite, 1 instance' if n == 0 else f'PostgreSQL, {n} instance(s)'} | "
                 f"{fmt(x['rate'])} | {fmt(x['daemon_cpu_us'])} | {fmt(x['pg_cpu_us'])} | "
                 f"{fmt(x['commits'])} | {fmt(x['submissions_per_commit'])} | "
                 f"{fmt(x['commit_mean_ms'], 3)} | {fmt(x['xact_commit'])} | "
                 f"{fmt(x['wal_bytes_per_item'], 0)} | {fmt(x['wal_fpi_per_commit'], 2)} | "
                 f"{fmt(x['wal_sync_ms'], 3)} | {'ok' if x['checks_ok'] else 'FAILED'} |")
    L.append("")
    L.append("Checks after every load: every acknowledged creation is a job (rows ≥ wrk's 2xx), "
             "each once (creation ids distinct, rows ≤ requests sent + connections), no 5xx or "
             "socket error, every daemon exited 0, nothing submitted beyond the slots the silent "
             "upstream holds; after every backlog: every job `submitted`, the fake created each "
             "exactly once.\n")
    L.append("### Where the server's time went (pg_stat_statements, last run)\n")
    L.append("The statements each load's sessions spent the most execution time on (top-level "
             "statements, text normalised and cut at 100 characters), per acknowledged "
             "notification or per submission.\n")
    L.append("| load | statement | calls | total ms | ms a call | µs per ack / submission |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for kind, unit in (("ingest", "acked"), ("submit", "submitted")):
        for n in PG_INSTANCES:
            last = pgr[kind][n][-1]
            for st in last.get("statements") or []:
                q = st["query"].replace("|", "\\|")
                L.append(f"| {'ingestion' if kind == 'ingest' else 'submissions'}, {n} "
                         f"instance(s) | `{q}` | {fmt(st['calls'])} | {fmt(st['total_ms'])} | "
                         f"{fmt(st['total_ms'] / st['calls'] if st['calls'] else None, 3)} | "
                         f"{fmt(st['total_ms'] * 1000 / last[unit] if last[unit] else None)} |")
    L.append("")
    # What a larger machine would give, from the per-notification costs at one instance.
    one = s["ingest"][1]
    d_us, p_us, pc_us = one["daemon_cpu_us"], one["pg_cpu_us"], one["pg_cpu_us_per_commit"]
    three = s["ingest"][PG_INSTANCES[-1]]
    if d_us and p_us:
        per_inst = 1e6 / d_us
        per_core_pg = 1e6 / p_us
        L.append("### What a larger machine would give\n")
        L.append(
            f"On these 2 shared CPUs more instances cannot scale: wrk, systemd-journald, the "
            f"daemons and PostgreSQL already share them, so 2 and 3 instances only split the "
            f"same CPU time ({fmt(s['ingest'][1]['rps'])}, {fmt(s['ingest'][2]['rps'])} and "
            f"{fmt(three['rps'])} req/s with 1, 2, 3). From the costs measured: one instance "
            f"spends {fmt(d_us)} µs of CPU a notification on its one loop thread, so an instance "
            f"with a core of its own tops out near {fmt(per_inst, 0)} req/s; PostgreSQL spent "
            f"{fmt(p_us)} µs a notification with one instance ({fmt(pc_us)} µs a commit, "
            f"{fmt(one['acks_per_commit'])} notifications a commit) and {fmt(three['pg_cpu_us'])} "
            f"µs with {PG_INSTANCES[-1]} ({fmt(three['acks_per_commit'])} a commit: more "
            f"instances make smaller batches, so more commits for the same notifications). So on "
            f"a machine where each instance and the load generator have their own cores, N "
            f"instances give about N × {fmt(per_inst, 0)} req/s until the server's CPU is the "
            f"limit, at about {fmt(per_core_pg, 0)} req/s per core given to PostgreSQL at one "
            f"instance's batch size (fewer with smaller batches), and until its WAL device's "
            f"flushes are: every commit waits for one fsync, which group commit shares among "
            f"the instances' concurrent commits. These are CPU bounds from a 2-CPU run, not "
            f"measurements of a larger machine; journald's cost ({fmt(one['journald_cpu_us'])} "
            f"µs a notification) is each host's own.\n")
        last = pgr["ingest"][1][-1]
        exec_ms = sum(st["total_ms"] for st in last.get("statements") or [])
        fs = (res.get("machine") or {}).get("fsync_ms") or {}
        if last.get("commits") and one.get("commit_mean_ms"):
            L.append(
                f"A turn's latency bounds an instance too: with two turns in flight (the next "
                f"pipelined behind the one the server runs; one through a pooler in transaction "
                f"mode), an instance takes at most its connections' worth of notifications per "
                f"turn time. Here a turn's commit took "
                f"{fmt(one['commit_mean_ms'], 2)} ms on the busy CPUs, of which the server "
                f"executed its statements for {fmt(exec_ms / last['commits'], 2)} ms "
                f"(pg_stat_statements, the top five) and the disk's fdatasync takes "
                f"{fmt(fs.get('p50'), 2)} ms (p50, measured at the start); on idle cores a turn "
                f"near their sum plus a loopback round trip would let 64 connections reach "
                f"{fmt(64 / ((exec_ms / last['commits']) + (fs.get('p50') or 0) + 0.1) * 1000, 0)} "
                f"req/s on one instance, before its CPU bound above.\n")
    sub1 = pgr["submit"][1][-1]
    if sub1.get("statements") and sub1.get("submitted"):
        st = sub1["statements"][0]
        L.append(
            f"Submissions: one instance on PostgreSQL drained the backlog at "
            f"{fmt(s['submit_ratio'], 3)}× the rate of one on SQLite, the server spending "
            f"{fmt(s['submit'][1]['pg_cpu_us'])} µs of CPU a submission; its largest statement "
            f"in the last run, `{st['query'][:60]}…`, took {fmt(st['total_ms'] * 1000 / sub1['submitted'])} "
            f"µs of execution a submission over {fmt(st['calls'])} calls ({fmt(sub1['commits'])} "
            "commits).\n")
    return L


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


SYNC_EVENTS = "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync"


def perf_attach(pid, outdir, name, secs):
    """perf record (call graphs) and perf stat (fsync calls) of PID for SECS seconds."""
    rec = start(["perf", "record", "-F", "499", "-g", "-o",
                 os.path.join(outdir, f"perf-{name}.data"), "-p", str(pid), "--", "sleep",
                 str(secs)])
    stat_file = os.path.join(outdir, f"perf-{name}-syncs.csv")
    st = start(["perf", "stat", "-x", ",", "-e", SYNC_EVENTS, "-o", stat_file, "-p", str(pid),
                "--", "sleep", str(secs)])
    return {"procs": (rec, st), "stat_file": stat_file, "secs": secs, "t0": time.monotonic()}


def perf_finish(h):
    """Waits for perf; the number of fsync/fdatasync calls it counted, or None."""
    for p in h["procs"]:
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            stop(p)
    total = 0
    try:
        with open(h["stat_file"]) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) > 2 and parts[0].strip().isdigit():
                    total += int(parts[0])
    except OSError:
        return None
    return total


def idle_client(port, fake):
    """One notification at a time (20 ms apart) to PORT: milliseconds to its 202 and to the fake
    upstream having the whole POST, one list each."""
    prompt = "a slow pan over a misty harbour at dawn, " * 20
    ack, sub = [], []
    # The notification leaves in one write, as from any real sender (http.client would write its
    # headers and its body apart, and spend the gap in Python); the answer is read raw.
    dc = socket.create_connection(("127.0.0.1", port), timeout=10)
    dc.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fc = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)

    def wait_submits(n):
        """The fake's count once it reached N (or after 5 s): it answers when the POST arrives,
        so this client takes no CPU from the server meanwhile."""
        fc.request("GET", f"/_fake/wait?submits={n}&timeout_ms=5000")
        return json.loads(fc.getresponse().read())

    def read_status():
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = dc.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the idle connection")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        left = int(m.group(1)) - len(rest) if m else 0
        while left > 0:
            chunk = dc.recv(left)
            if not chunk:
                raise RuntimeError("the server closed the idle connection")
            left -= len(chunk)
        return int(head.split(b" ", 2)[1])

    try:
        base = wait_submits(0)["submit_requests"]
        for i in range(P["idle_samples"]):
            cid = f"{int(time.time())}{i:06d}"
            body = json.dumps({"id": cid + "0", "type": "text2video", "state": "success",
                               "prompt": prompt, "creations": [
                                   {"id": cid, "uri": f"https://cdn.example.com/v/{cid}.mp4"}]})
            req = (f"POST {HOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   f"{body}").encode()
            t0 = time.perf_counter()
            t0_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, the fake's clock too
            dc.sendall(req)
            status = read_status()
            t1 = time.perf_counter()
            if status != 202:
                raise RuntimeError(f"idle notification answered {status}")
            st = wait_submits(base + 1)
            if st["submit_requests"] <= base:
                raise RuntimeError("idle notification not submitted within 5 s")
            base += 1
            ack.append((t1 - t0) * 1000)
            # When the fake had the whole POST, by its own clock.
            sub.append((st["last_submit_mono_ns"] - t0_ns) / 1e6)
            time.sleep(0.02)
    finally:
        dc.close()
        fc.close()
    return ack, sub


def idle_percentiles(ack, sub):
    """The p50, p90 and p99 of idle_client's two lists, in ms."""
    return {"samples": len(sub),
            "ack_ms": {q: round(percentile(ack, q), 3) for q in (50, 90, 99)},
            "to_submit_ms": {q: round(percentile(sub, q), 3) for q in (50, 90, 99)}}


def bench_idle_floor(tmp, fake):
    """The same client against bench/idle_floor.c: the machine's floor for the chain."""
    d = os.path.join(tmp, "floor")
    os.makedirs(d, exist_ok=True)
    pf = os.path.join(d, "port")
    if os.path.exists(pf):
        os.unlink(pf)
    fake.reset()
    p = start([IDLE_FLOOR, "--upstream-port", str(fake.port), "--sync-file",
               os.path.join(d, "record"), "--port-file", pf],
              env=dict(os.environ, VIDU_FAKE_API_KEY=fake.key))
    try:
        for _ in range(500):
            if os.path.exists(pf) or p.poll() is not None:
                break
            time.sleep(0.01)
        if p.poll() is not None:
            raise RuntimeError(f"idle_floor exited with {p.returncode}")
        with open(pf) as f:
            port = int(f.read())
        ack, sub = idle_client(port, fake)
    finally:
        stop(p)
    r = idle_percentiles(ack, sub)
    log(f"idle floor: 202 after {r['ack_ms'][50]} ms (p50), upstream POST after "
        f"{r['to_submit_ms'][50]} ms (p50)")
    return r


def bench_idle(tmp, fake, schema):
    """One notification at a time into an idle daemon: time to 202 and to the upstream POST."""
    ledger = os.path.join(tmp, "idle.db")
    shutil.copyfile(schema, ledger)
    fake.reset()
    d = Daemon(tmp, fake, ledger, "idle").start()
    try:
        m0 = d.metrics()
        ack, sub = idle_client(d.port, fake)
        m1 = d.metrics()
    finally:
        d.stop()
    # The daemon's own time from BEGIN to a durable COMMIT (two commits per notification: the
    # job with its submission mark, then the upstream's answer), to tell the disk from the rest.
    os.unlink(ledger)
    r = {
        **idle_percentiles(ack, sub),
        "commit_mean_ms": hist_mean_ms(m0, m1, "vidu_upscaled_ledger_commit_seconds"),
        # None from a build without the histogram (bench/compare.sh against an older one).
        "sync_mean_ms": hist_mean_ms(m0, m1, "vidu_upscaled_ledger_sync_seconds") or None,
        # The daemon's own clock: request line to its 202 queued, and the job's turn to its POST
        # started. The rest of each column is the client, the wake-ups and the kernel's sends.
        "daemon_ack_mean_ms": hist_mean_ms(m0, m1, "vidu_upscaled_webhook_request_seconds"),
        "daemon_wait_mean_ms": hist_mean_ms(m0, m1, "vidu_upscaled_submit_wait_seconds"),
    }
    log(f"idle: 202 after {r['ack_ms'][50]} ms (p50), upstream POST after "
        f"{r['to_submit_ms'][50]} ms (p50); "
        f"a ledger commit took {r['commit_mean_ms']} ms on average (its fdatasync "
        f"{r['sync_mean_ms']} ms), request line to 202 "
        f"{r['daemon_ack_mean_ms']} ms and job to POST {r['daemon_wait_mean_ms']} ms")
    return r


def hist_mean_ms(m0, m1, name):
    """The mean of a histogram's observations between two /metrics snapshots, in ms."""
    n = m1.get(name + "_count", 0) - m0.get(name + "_count", 0)
    return round((m1[name + "_sum"] - m0[name + "_sum"]) / n * 1000, 3) if n else 0


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def bench_perf(tmp, fake, schema, outdir, submit_runs):
    """What dominates the daemon's CPU and how often it syncs, under the largest load."""
    ledger = os.path.join(tmp, "perf.db")
    shutil.copyfile(schema, ledger)
    fake.reset()
    d = Daemon(tmp, fake, ledger, "perf").start()
    out = {}
    try:
        secs = max(2, P["duration_s"] - 1)
        prof = perf_attach(d.p.pid, outdir, "ingest", secs)
        m0 = d.metrics()
        r = run_wrk(f"http://127.0.0.1:{d.port}{HOOK_PATH}", max(P["connections"]),
                    P["duration_s"], outdir, "us-perf")
        m1 = d.metrics()
        syncs = perf_finish(prof)
        secs_wrk = r["duration_s"]
        out["ingest"] = {
            "rps": r["rps"],
            "syncs_per_s": round(syncs / secs, 1) if syncs is not None else None,
            "upstream_requests_per_s": round(
                (metric_sum(m1, "vidu_upscaled_upstream_requests_total")
                 - metric_sum(m0, "vidu_upscaled_upstream_requests_total")) / secs_wrk, 1),
        }
    finally:
        d.stop()
    os.unlink(ledger)
    if submit_runs and submit_runs[0].get("syncs_per_submission") is not None:
        out["submit"] = {"rate": submit_runs[0]["rate"],
                         "syncs_per_submission": submit_runs[0]["syncs_per_submission"],
                         "upstream_requests_per_s": submit_runs[0]["upstream_requests_per_s"]}
    out["top"] = {}
    for name in ("ingest", "submit"):
        path = os.path.join(outdir, f"perf-{name}.data")
        if not os.path.exists(path):
            continue
        rep = subprocess.run(["perf", "report", "-i", path, "--stdio", "--no-children",
                              "--sort", "dso,symbol", "--percent-limit", "1.5", "-g", "none"],
                             capture_output=True, text=True, timeout=300)
        with open(os.path.join(outdir, f"perf-{name}.txt"), "w") as f:
            f.write(rep.stdout)
        lines = []
        for line in rep.stdout.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            line = re.sub(r"\s+-\s+-\s*$", "", line).rstrip()
            lines.append(re.sub(r"\s{2,}", "  ", line.strip()))
        out["top"][name] = lines[:20]
        rep = subprocess.run(["perf", "report", "-i", path, "--stdio", "--no-children",
                              "--sort", "dso", "--percent-limit", "1", "-g", "none"],
                             capture_output=True, text=True, timeout=300)
        out["top"][name + " (by DSO)"] = [re.sub(r"\s{2,}", "  ", l.strip()) for l in
                                          rep.stdout.splitlines()
                                          if l.strip() and not l.startswith("#")][:10]
        os.unlink(path)
    return out


# ---------------------------------------------------------------------------------------------
# Report


def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"unknown ({e})"


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    return {"nproc": os.cpu_count(), "model": model, "memory": mem,
            "kernel": platform.release(), "loadavg_at_start": os.getloadavg()}


def fsync_latency_ms(directory, n=200, gap_s=0.0):
    """p50 and p99 of write(4 KiB) + fdatasync on the disk the ledgers live on, back to back or
    GAP_S apart (a disk that was idle may take longer: the idle latency test sees that)."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    ts = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            os.fdatasync(fd)
            ts.append((time.perf_counter() - t0) * 1000)
            if gap_s:
                time.sleep(gap_s)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"p50": round(percentile(ts, 50), 3), "p99": round(percentile(ts, 99), 3)}


def versions():
    return {
        "nginx": first_line(["nginx", "-v"]),
        "webhook": first_line(["webhook", "-version"]),
        "wrk": first_line(["wrk", "-v"]),
        "vidu-upscaled": first_line([DAEMON, "--version"]),
        "sqlite3": first_line(["sqlite3", "--version"]),
        "libcurl": first_line(["curl-config", "--version"]),
        "git": first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
    }


def summarize(runs):
    """Median of each figure over RUNS."""
    if not runs:
        return None
    s = {"runs": len(runs)}
    for k in ("rps", "cpu_pct", "peak_rss_kb", "acked", "non2xx", "socket_errors", "startup_s",
              "drain_rate", "journald_cpu_pct", "upstream_cpu_pct", "wrk_cpu_pct"):
        s[k] = median([r.get(k) for r in runs])
    s["latency_ms"] = {p: median([r["latency_ms"][p] for r in runs]) for p in runs[0]["latency_ms"]}
    s["peak_rss_kb"] = max(r["peak_rss_kb"] or 0 for r in runs)
    for k in ("peak_pss_kb", "peak_anon_kb"):
        s[k] = max((r.get(k) or 0 for r in runs), default=0) or None
    return s


def mib(kb):
    return kb / 1024 if kb else None


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


def gnuplot(script, cwd):
    subprocess.run(["gnuplot"], input=script, text=True, check=True, cwd=cwd,
                   capture_output=True, timeout=60)


def plots(res, outdir):
    conns = P["connections"]
    servers = [("nginx", lambda c: res["summary"]["nginx"][c]),
               ("webhook (default)", lambda c: res["summary"]["webhook_default"][c]),
               ("webhook (wait)", lambda c: res["summary"]["webhook_wait"][c]),
               ("vidu-upscaled", lambda c: res["summary"]["us"][c])]
    with open(os.path.join(outdir, "throughput.dat"), "w") as f:
        f.write("connections " + " ".join(f'"{n}"' for n, _ in servers) + "\n")
        for c in conns:
            f.write(f"{c} " + " ".join(str(g(c)["rps"]) for _, g in servers) + "\n")
    with open(os.path.join(outdir, "latency.dat"), "w") as f:
        f.write('label p50 p99 p99.9\n')
        for c in conns:
            for n, g in servers:
                lat = g(c)["latency_ms"]
                short = n.replace("webhook (default)", "webhook").replace(
                    "webhook (wait)", "webhook-wait").replace("vidu-upscaled", "vidu")
                f.write(f'"{short} {c}" {lat["50"]} {lat["99"]} {lat["99.9"]}\n')
    common = ("set terminal pngcairo size 900,480 font 'sans,10'\n"
              "set style data histograms\nset style histogram clustered gap 1\n"
              "set style fill solid 0.85 border -1\nset key outside right top\nset grid ytics\n"
              "set logscale y\n")
    gnuplot(common + f"""set output 'throughput.png'
set title 'Notifications acknowledged per second (wrk, {P["threads"]} threads, median of {P["runs"]})'
set ylabel 'requests/s (log scale)'
set xlabel 'connections'
plot for [i=2:5] 'throughput.dat' using i:xtic(1) title columnheader(i)
""", outdir)
    gnuplot(common + """set output 'latency.png'
set title 'Latency percentiles by server and connections (ms, log scale)'
set ylabel 'ms'
set xtics font 'sans,9'
plot for [i=2:4] 'latency.dat' using i:xtic(1) title columnheader(i)
""", outdir)
    top = max(conns)
    # histograms put the clusters at x = 0, 1, ...; the second axis would otherwise stretch x
    xmax = len(res["summary"]["by_size"]) - 0.5
    with open(os.path.join(outdir, "ledger.dat"), "w") as f:
        f.write("size rps rss_mib\n")
        for size, s in res["summary"]["by_size"].items():
            label = f"{size // 1_000_000}M" if size >= 1_000_000 and size % 1_000_000 == 0 \
                else f"{size // 1000}k" if size >= 1000 and size % 1000 == 0 else str(size)
            f.write(f"{label} {s['rps']} {s['peak_rss_kb'] / 1024:.1f}\n")
    gnuplot(f"""set terminal pngcairo size 900,480 font 'sans,10'
set output 'ledger.png'
set title 'vidu-upscaled ingestion at {top} connections versus jobs already in the ledger'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set ylabel 'requests/s'
set y2label 'peak RSS (MiB)'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set xlabel 'jobs in the ledger'
set datafile columnheaders
set xrange [-0.5:{xmax}]
set key outside top center horizontal
set grid ytics
plot 'ledger.dat' using 2:xtic(1) title 'requests/s' axes x1y1, \\
     '' using 3 title 'peak RSS (MiB)' axes x1y2
""", outdir)
    return ["throughput.png", "latency.png", "ledger.png"]


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def per_request_us(pct, rps):
    """A process's CPU share (% of one CPU) as microseconds per acknowledged request."""
    if pct is None or not rps:
        return None
    return pct / 100 / rps * 1e6


def cpu_per_request_us(x):
    """The server's CPU time per acknowledged request: what each request costs the server
    itself, where req/s on shared cores also measures what wrk and journald leave over."""
    return per_request_us(x.get("cpu_pct"), x.get("rps"))


def cpu_budget(res):
    """Where the machine's CPUs went per acknowledged request at the top connection count, and
    what that leaves a daemon that writes every transition to the journal: the req/s one costing
    nothing itself would reach beside wrk, journald and the fake at their measured costs, and the
    CPU a request it may take to meet the targets against nginx and webhook."""
    s = res["summary"]
    top = max(P["connections"])
    ncpu = res["machine"]["nproc"]
    rows = []
    quiet = summarize(res["ingest"].get("quiet") or [])
    for name, x in (("nginx `return 202`", s["nginx"][top]),
                    ("webhook (default)", s["webhook_default"][top]),
                    ("vidu-upscaled", s["us"][top]),
                    ("vidu-upscaled, job entries off", quiet)):
        if not x:
            continue
        parts = {k: per_request_us(x.get(f), x["rps"])
                 for k, f in (("server", "cpu_pct"), ("wrk", "wrk_cpu_pct"),
                              ("journald", "journald_cpu_pct"), ("upstream", "upstream_cpu_pct"))}
        total = sum(v for v in parts.values() if v is not None)
        rows.append({"name": name, "rps": x["rps"], **parts, "total": total,
                     "busy_pct": round(100 * total * x["rps"] / 1e6 / ncpu, 1)})
    us = next((r for r in rows if r["name"] == "vidu-upscaled"), None)
    out = {"ncpu": ncpu, "rows": rows}
    if us and all(us[k] is not None for k in ("wrk", "journald")):
        others = us["wrk"] + us["journald"] + (us["upstream"] or 0)
        out["others_us"] = others
        out["free_daemon_rps"] = ncpu * 1e6 / others
        for key, want in (("nginx", 0.5), ("webhook_default", 7)):
            goal = want * s[key][top]["rps"]
            out[f"budget_{key}_us"] = ncpu * 1e6 / goal - others
            out[f"goal_{key}_rps"] = goal
    return out


def pure_summary(res):
    """Medians of the pure-ingestion pairs and of the job's-life runs."""
    pure, life = res.get("pure"), res.get("lifecycle") or []
    if not pure:
        return None
    d, n = pure["daemon"], pure["nginx"]
    ratios = [a["cpu_us"] / b["cpu_us"] for a, b in zip(d, n) if a["cpu_us"] and b["cpu_us"]]
    return {
        "runs": len(d),
        "daemon_rps": median_of(d, "rps"),
        "nginx_rps": median_of(n, "rps"),
        "daemon_cpu_us": median_of(d, "cpu_us"),
        "nginx_cpu_us": median_of(n, "cpu_us"),
        # The median of each run's own ratio: loads seconds apart, the same drift.
        "cpu_ratio": round(median(ratios), 3) if ratios else None,
        "journald_us_per_ack": median_of(d, "journald_cpu_us"),
        "commits_per_ack": median([r["commits"] / r["acked"] for r in d if r["acked"]]),
        "entries_per_ack": median([r["entries"] / r["acked"] for r in d
                                   if r["acked"] and r["entries"] is not None]),
        "daemon_peak_rss_kb": max((r["peak_rss_kb"] or 0 for r in d), default=None),
        "daemon_peak_pss_kb": max((r["peak_pss_kb"] or 0 for r in d), default=None),
        "daemon_peak_anon_kb": max((r["peak_anon_kb"] or 0 for r in d), default=None),
        "nginx_peak_rss_kb": max((r["peak_rss_kb"] or 0 for r in n), default=None),
        "nginx_peak_pss_kb": max((r["peak_pss_kb"] or 0 for r in n), default=None),
        "nginx_peak_anon_kb": max((r["peak_anon_kb"] or 0 for r in n), default=None),
        "checks_ok": all(all(r["checks"].values()) for r in d),
        "journald_us_per_creation": median_of(life, "journald_us_per_creation"),
        "daemon_us_per_creation": median_of(life, "daemon_us_per_creation"),
        "entries_per_creation": median_of(life, "entries_per_creation"),
        "life_creations": median_of(life, "creations"),
    }


def pure_report(res):
    """The pure-ingestion section's lines."""
    ps, pure = res.get("pure_summary"), res.get("pure")
    if not ps:
        return []
    top = max(P["connections"])
    L = ["## Pure durable ingestion: CPU per acknowledged notification\n"]
    L.append(f"The daemon's upstream is a socket that never answers (its {P['upstream_concurrency']} "
             "slots stay in flight, `upstream.timeout = 1h`), so nothing is submitted: what each "
             "notification costs is HTTP in, the parse, its share of an fdatasync'd group commit "
             f"and one journal entry. wrk at {top} connections, the same ~1 KB notification, "
             f"{P['duration_s']} s per load; nginx (`return 202`) and the daemon take turns run by "
             "run, and the ratio is the median of each run's own. CPU is the process's "
             "utime+stime over the load per acknowledged request.\n")
    L.append("| run | nginx req/s | nginx CPU µs/req | daemon req/s | daemon CPU µs/ack | ratio | "
             "systemd-journald CPU µs/ack | commits | acks per commit | job entries per ack | "
             "checks |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (n, d) in enumerate(zip(pure["nginx"], pure["daemon"])):
        bad = ", ".join(k for k, v in d["checks"].items() if not v)
        L.append(f"| {i} | {fmt(n['rps'])} | {fmt(n['cpu_us'])} | {fmt(d['rps'])} | "
                 f"{fmt(d['cpu_us'])} | {fmt(ratio(d['cpu_us'], n['cpu_us']), 3)} | "
                 f"{fmt(d['journald_cpu_us'])} | {fmt(d['commits'])} | "
                 f"{fmt(ratio(d['acked'], d['commits']), 1)} | "
                 f"{fmt(ratio(d['entries'], d['acked']), 3)} | {'ok' if not bad else 'FAILED ' + bad} |")
    L.append(f"\nMedians: the daemon {fmt(ps['daemon_cpu_us'])} µs of CPU an acknowledged "
             f"notification, nginx {fmt(ps['nginx_cpu_us'])} µs a request: "
             f"**{fmt(ps['cpu_ratio'], 2)}x** (target <= 2x). systemd-journald took "
             f"{fmt(ps['journald_us_per_ack'])} µs more per notification for its one entry.\n")
    L.append("Memory under this load (the daemon: peak of its runs; VmHWM, and PSS and anonymous "
             "memory sampled every 50 ms from `/proc/PID/smaps_rollup`):\n")
    L.append("| | peak RSS MiB | peak PSS MiB | peak anonymous MiB |")
    L.append("| --- | --- | --- | --- |")
    for name, k in (("nginx", "nginx"), ("vidu-upscaled", "daemon")):
        L.append(f"| {name} | {fmt(mib(ps[k + '_peak_rss_kb']))} | "
                 f"{fmt(mib(ps[k + '_peak_pss_kb']))} | {fmt(mib(ps[k + '_peak_anon_kb']))} |")
    life = res.get("lifecycle") or []
    if life:
        L.append("\n### systemd-journald over a job's whole life\n")
        L.append("A bounded load at 8 connections against the fake upstream (which completes a "
                 "task 1 s after it was created; `upstream.poll_interval = 1s`), then the wait "
                 "until every job succeeded and journald has taken every entry in. journald's CPU "
                 "over that whole window, less its rate at rest measured just before (other "
                 "processes log too), per creation; entries counted back from the journal "
                 "(`journalctl _PID=`) by `JOB_STATE`.\n")
        L.append("| run | creations | succeeded | window s | journald at rest % | journald CPU "
                 "µs/creation | daemon CPU µs/creation | job entries per creation | by state |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for i, x in enumerate(life):
            by = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(x["entries"].items()))
            L.append(f"| {i} | {fmt(x['creations'])} | {fmt(x['succeeded'])} | {x['wall_s']} | "
                     f"{x['journald_rest_pct']} | {fmt(x['journald_us_per_creation'])} | "
                     f"{fmt(x['daemon_us_per_creation'])} | {fmt(x['entries_per_creation'], 3)} | "
                     f"{by} |")
    L.append("")
    return L


def evaluate(res):
    s = res["summary"]
    top = max(P["connections"])
    us, ng, wd = s["us"][top], s["nginx"][top], s["webhook_default"][top]
    sizes = sorted(s["by_size"])
    big, zero = s["by_size"][sizes[-1]], s["by_size"][sizes[0]]
    sub = res["submit"]
    idle = res["idle"]
    ps = res.get("pure_summary") or {}
    t = [
        (f"CPU per acknowledged notification, pure durable ingestion, vs nginx's per `return 202` "
         f"request ({top} connections)", ps.get("cpu_ratio"), "<= 2", lambda v: v <= 2),
        ("anonymous memory under load vs nginx peak RSS",
         ratio(max(s["us"][c].get("peak_anon_kb") or 0 for c in s["us"]) or None,
               max(s["nginx"][c]["peak_rss_kb"] for c in s["nginx"])), "<= 1",
         lambda v: v <= 1),
        (f"ingestion at {top} connections vs nginx (req/s; journald's CPU included)",
         ratio(us["rps"], ng["rps"]), "informational", None),
        (f"ingestion at {top} connections vs webhook default mode (req/s)",
         ratio(us["rps"], wd["rps"]), ">= 7", lambda v: v >= 7),
        (f"p99 at {top} connections vs nginx p99", ratio(us["latency_ms"]["99"],
                                                         ng["latency_ms"]["99"]), "<= 2",
         lambda v: v <= 2),
        ("peak RSS under load vs nginx", ratio(max(s["us"][c]["peak_rss_kb"] for c in s["us"]),
                                               max(s["nginx"][c]["peak_rss_kb"]
                                                   for c in s["nginx"])), "informational", None),
        (f"throughput with {sizes[-1]:,} jobs vs {sizes[0]:,}", ratio(big["rps"], zero["rps"]),
         ">= 0.8", lambda v: v >= 0.8),
        (f"submissions vs bare curl-multi ceiling ({P['upstream_concurrency']} in flight, the "
         "default; bounded by durable-before-POST)", median([r["ratio"] for r in sub]),
         "informational", None),
    ] + [
        (f"submissions vs bare curl-multi ceiling ({c} in flight, both)",
         median([r["ratio"] for r in runs]), ">= 0.5", lambda v: v >= 0.5)
        for c, runs in sorted(res.get("submit_more", {}).items())
    ] + [
        ("idle notification-to-submit p50 (ms)", idle["to_submit_ms"][50], "<= 1",
         lambda v: v <= 1),
    ]
    # Informational rows (ok None) are measured and shown, judged by no target.
    return [{"target": n, "measured": v, "wanted": w,
             "pass": None if ok is None else (ok(v) if v is not None else False)}
            for n, v, w, ok in t]


def report(res, plot_dir):
    s = res["summary"]
    m, v = res["machine"], res["versions"]
    top = max(P["connections"])
    L = []
    L.append("# vidu-upscaled benchmark\n")
    L.append(f"{res['started']} · {'quick (smoke) run' if QUICK else 'full run'} · "
             f"`bash bench/run.sh`" + (" with `BENCH_QUICK=1`" if QUICK else "") + "\n")
    L.append("## Machine\n")
    L.append(f"- {m['nproc']} CPUs: {m['model']}; {m['memory']} memory; kernel {m['kernel']}")
    L.append(f"- load average when the bench started: "
             f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])} (the machine may be shared)")
    if "fsync_ms" in m:
        L.append(f"- the ledgers' disk: write 4 KiB + fdatasync takes {m['fsync_ms']['p50']} ms "
                 f"(p50), {m['fsync_ms']['p99']} ms (p99) back to back"
                 + (f", {m['fsync_idle_ms']['p50']} ms (p50) 20 ms apart"
                    if "fsync_idle_ms" in m else "")
                 + "; every durable 2xx waits for one")
    if "unix_max_dgram_qlen" in m:
        L.append(f"- `net.unix.max_dgram_qlen` = {m['unix_max_dgram_qlen']} (journald's socket "
                 "queue; systemd raises it to 512 when it is PID 1)")
    L.append("- every server, wrk and the fake upstream share these CPUs; loopback only\n")
    L.append("## Versions\n")
    for k, x in v.items():
        L.append(f"- {k}: `{x}`")
    L.append("")
    L.append("## Method\n")
    L.append(f"- wrk {P['threads']} threads, {', '.join(map(str, P['connections']))} connections, "
             f"{P['duration_s']} s per load, median of {P['runs']} run(s); every request is the same "
             "kind of ~1 KB notification (`bench/notify.lua`) with a creation id never sent before.")
    L.append("- req/s counts acknowledged (2xx) answers only; CPU is the server process's "
             "utime+stime over the load (webhook: plus its commands), CPU µs/req that time per "
             "acknowledged request (from the medians), peak RSS its VmHWM.")
    L.append("- nginx: one worker, `master_process off`, `return 202`. webhook: a hook whose "
             "command appends one line to a file (counted), in default mode (answers, then runs) "
             "and with `include-command-output-in-response` (runs, then answers).")
    L.append("- vidu-upscaled: a fresh daemon per load, `synchronous = full`, against "
             "`tools/fake-upstream.c`; after each load the ledger (sqlite3) and the fake's "
             f"`/_fake/stats` are checked, after at most {P['drain_max_s']} s for the dispatcher "
             "to drain. Ledger sizes are pre-filled with finished (`succeeded`) jobs. Its loads "
             "take turns run by run (every size and connection count once, then the next run), "
             "so the machine's drift falls on all of them alike.")
    L.append("")
    L.append("## Targets\n")
    L.append("| target | measured | wanted | |")
    L.append("| --- | --- | --- | --- |")
    for t in res["targets"]:
        L.append(f"| {t['target']} | {fmt(t['measured'], 3)} | {t['wanted']} | "
                 f"{'–' if t['pass'] is None else 'pass' if t['pass'] else '**FAIL**'} |")
    ps = res.get("pure_summary")
    if ps:
        L.append(f"\nAlso measured (no target): systemd-journald's CPU per creation over a job's "
                 f"whole life {fmt(ps['journald_us_per_creation'])} µs, "
                 f"{fmt(ps['entries_per_creation'], 2)} job entries per creation; its CPU per "
                 f"pure-ingestion notification (one entry) {fmt(ps['journald_us_per_ack'])} µs. "
                 "Details in the pure-ingestion section below.")
    L.append("")
    L.extend(pure_report(res))
    L.append("## Ingestion\n")
    L.append(f"![throughput]({plot_dir}throughput.png)\n")
    L.append("| server | conn. | req/s | p50 ms | p75 | p90 | p99 | p99.9 | CPU % | CPU µs/req | "
             "peak RSS MiB | peak PSS | peak anon. | vs nginx | vs webhook |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- |")
    for key, name in (("nginx", "nginx `return 202`"), ("webhook_default", "webhook (default)"),
                      ("webhook_wait", "webhook (wait for command)"),
                      ("us", "**vidu-upscaled**")):
        for c in P["connections"]:
            x = s[key][c]
            lat = x["latency_ms"]
            L.append(f"| {name} | {c} | {fmt(x['rps'])} | {fmt(lat['50'], 2)} | "
                     f"{fmt(lat['75'], 2)} | {fmt(lat['90'], 2)} | {fmt(lat['99'], 2)} | "
                     f"{fmt(lat['99.9'], 2)} | {fmt(x['cpu_pct'])} | "
                     f"{fmt(cpu_per_request_us(x))} | {fmt(x['peak_rss_kb'] / 1024)} | "
                     f"{fmt(mib(x.get('peak_pss_kb')))} | {fmt(mib(x.get('peak_anon_kb')))} | "
                     f"{fmt(ratio(x['rps'], s['nginx'][c]['rps']), 3)} | "
                     f"{fmt(ratio(x['rps'], s['webhook_default'][c]['rps']), 3)} |")
    L.append("\nPeak RSS is the kernel's high-water mark (VmHWM), what the target compares; it "
             "counts every page of a shared library the process touched. Peak PSS (those pages "
             "shared out among the processes mapping them) and anonymous memory (the process's "
             "own: heap, stacks, written data) are sampled every 50 ms from "
             "`/proc/PID/smaps_rollup` during the load.")
    floor = [r["ceiling"].get("peak_rss_kb") for r in res.get("submit", [])
             if r.get("ceiling", {}).get("peak_rss_kb")]
    if floor:
        L.append(f"\nThe bare libcurl-multi client of the submission bench "
                 "(`bench/curl_ceiling.c`: plain C on libcurl alone, no HTTP server, no SQLite, "
                 f"no journal) peaked at {fmt(mib(max(floor)))} MiB RSS in this run: Debian's "
                 "libcurl maps its TLS, LDAP, SSH, RTMP and Kerberos libraries into every "
                 "process that links it, and their start-up touches their pages.")
    for c in P["connections"]:
        x = s["us"][c]
        L.append(f"\nAt {c} connections vidu-upscaled's entries also cost systemd-journald "
                 f"{fmt(x['journald_cpu_pct'])} % of a CPU (not in the table; "
                 "`–` when no journal answered and entries went to a file), and the fake upstream "
                 f"took {fmt(x['upstream_cpu_pct'])} % for the submissions made during the load.")
    L.append(f"\n![latency]({plot_dir}latency.png)\n")
    L.append("### Did the work happen?\n")
    L.append("| server | conn. | run | acked (2xx) | non-2xx | socket errors | work done |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for mode in ("default", "wait"):
        for c in P["connections"]:
            for i, r in enumerate(res["webhook"][mode][c]):
                L.append(f"| webhook ({mode}) | {c} | {i} | {fmt(r['acked'])} | {r['non2xx']} | "
                         f"{r['socket_errors']} | commands run: {fmt(r['ran_at_end'])} when the "
                         f"load ended, {fmt(r['ran'])} {r['settle_s']} s later, when it was stopped "
                         f"({fmt(r.get('ran_after_stop'))} a second after) |")
    for size, by_c in res["ingest"]["by_size"].items():
        for c, runs in by_c.items():
            for i, r in enumerate(runs):
                ok = all(r["checks"].values())
                bad = ", ".join(k for k, val in r["checks"].items() if not val)
                L.append(f"| vidu-upscaled, ledger {size:,} | {c} | {i} | {fmt(r['acked'])} | "
                         f"{r['non2xx']} | {r['socket_errors']} | recorded {fmt(r['recorded'])}, "
                         f"submitted {fmt(r['upstream_tasks'])} after {r['drain_s']} s "
                         f"(backlog {fmt(r['backlog_after_drain'])}), duplicates "
                         f"{r['upstream_duplicates']}: {'ok' if ok else 'FAILED ' + bad} |")
    L.append("")
    L.append("## Ledger size\n")
    L.append(f"![ledger]({plot_dir}ledger.png)\n")
    L.append(f"| jobs already in the ledger | req/s at {top} conn. | p99 ms | peak RSS MiB | "
             "start-up s | vs empty |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    sizes = sorted(s["by_size"])
    for size in sizes:
        x = s["by_size"][size]
        L.append(f"| {size:,} | {fmt(x['rps'])} | {fmt(x['latency_ms']['99'], 2)} | "
                 f"{fmt(x['peak_rss_kb'] / 1024)} | {fmt(x['startup_s'], 2)} | "
                 f"{fmt(ratio(x['rps'], s['by_size'][sizes[0]]['rps']), 3)} |")
    L.append("")
    L.append("## Upstream submissions\n")
    L.append(f"{P['pending_jobs']:,} jobs pre-filled `pending`; the daemon "
             f"(`upstream.concurrency = {P['upstream_concurrency']}`) is timed from healthy until "
             "the ledger shows them all `submitted` (at most "
             f"{P['submit_max_s']} s); the ceiling is `bench/curl_ceiling.c` posting the same body "
             f"with {P['upstream_concurrency']} parallel libcurl-multi transfers for "
             f"{P['ceiling_s']} s over kept-alive connections, in the same run. The ceiling "
             "records nothing; the daemon commits every job twice (`submitting` before the POST, "
             "`submitted` after) and writes a journal entry per submission.\n")
    L.append("| run | daemon submissions/s | submitted | curl-multi ceiling/s | ratio | "
             "duplicates |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(res["submit"]):
        L.append(f"| {i} | {fmt(r['rate'])} | {fmt(r['submitted'])} / {fmt(r['pending'])} in "
                 f"{r['seconds']} s | {fmt(r['ceiling_rate'])} | {fmt(r['ratio'], 4)} | "
                 f"{r['upstream_duplicates']} |")
    L.append("")
    by_conc = {P["upstream_concurrency"]: res["submit"], **res.get("submit_more", {})}
    L.append("What bounds it: a job's POST leaves only once its `submitting` is durable, and its "
             "slot takes the next job only once the answer is in the next commit, so each slot's "
             "cycle holds a commit and a round trip. The bound column is that, "
             "slots / (mean commit + slots / ceiling): the rate with nothing else on the loop. "
             "A commit's time runs from its BEGIN, so it holds the turn's statements; its "
             "fdatasync alone is the sync column (`vidu_upscaled_ledger_sync_seconds`), and "
             "loop % in sync is the share of the wall time the loop spent waiting for the disk. "
             "The same backlog with more slots (the ceiling with as many transfers), medians:\n")
    L.append("| in flight | daemon /s | ceiling /s | ratio | commits /s | jobs per commit | "
             "mean commit ms | its sync ms | loop % in sync | bound /s | daemon CPU % | "
             "systemd-journald CPU % | fake upstream CPU % |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in sorted(by_conc):
        runs = by_conc[c]
        med = {k: median_of(runs, k)
               for k in ("rate", "ceiling_rate", "ratio", "commits_per_s", "commit_mean_ms",
                         "sync_mean_ms", "syncs_per_s", "bound_rate", "cpu_pct",
                         "journald_cpu_pct", "upstream_cpu_pct")}
        per_commit = ratio(med["rate"], med["commits_per_s"])
        in_sync = (round(med["syncs_per_s"] * med["sync_mean_ms"] / 10, 1)
                   if med["syncs_per_s"] is not None and med["sync_mean_ms"] is not None else None)
        L.append(f"| {c} | {fmt(med['rate'])} | {fmt(med['ceiling_rate'])} | "
                 f"{fmt(med['ratio'], 3)} | {fmt(med['commits_per_s'])} | {fmt(per_commit)} | "
                 f"{fmt(med['commit_mean_ms'], 3)} | {fmt(med['sync_mean_ms'], 3)} | "
                 f"{fmt(in_sync)} | {fmt(med['bound_rate'])} | "
                 f"{fmt(med['cpu_pct'])} | {fmt(med['journald_cpu_pct'])} | "
                 f"{fmt(med['upstream_cpu_pct'])} |")
    L.append("")
    nosync = res.get("submit_nosync") or {}
    if nosync:
        L.append("What the commits' syncs cost: the same backlogs with "
                 "`store.synchronous = normal` (WAL without an fdatasync at each commit, so not "
                 "durable; every other figure here is `full`), against the ceiling measured beside "
                 "each, medians:\n")
        L.append("| in flight | durable /s | `normal` /s | `normal` / durable | ratio to the "
                 "ceiling, `normal` | daemon CPU µs a submission, durable | `normal` | "
                 "bare client CPU µs a POST |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in sorted(nosync):
            dur, fast = by_conc.get(c), nosync[c]
            if not dur or not fast:
                continue
            rate, fast_rate = median_of(dur, "rate"), median_of(fast, "rate")
            L.append(f"| {c} | {fmt(rate)} | {fmt(fast_rate)} | "
                     f"{fmt(ratio(fast_rate, rate), 2)} | {fmt(median_of(fast, 'ratio'), 3)} | "
                     f"{fmt(median_of(dur, 'cpu_us_per_submission'))} | "
                     f"{fmt(median_of(fast, 'cpu_us_per_submission'))} | "
                     f"{fmt(median([r['ceiling'].get('cpu_us_per_request') for r in dur]))} |")
        L.append("")
    idle = res["idle"]
    L.append("## Idle latency\n")
    L.append(f"{idle['samples']} notifications one at a time (20 ms apart) into an idle daemon, "
             "from a Python client that writes each request in one `send` and reads the answer "
             "raw (its own overhead is in both columns; the 202 column also holds its wake-up). "
             "The second column ends when the fake upstream had the whole POST, by its "
             "CLOCK_MONOTONIC, the client's clock too; the client waits for it on the fake's "
             "`/_fake/wait` instead of polling. Both the 202 and the POST leave right after the "
             "same fsync.\n")
    L.append("| | p50 ms | p90 ms | p99 ms |")
    L.append("| --- | --- | --- | --- |")
    L.append(f"| send → 202 (durable) | {idle['ack_ms'][50]} | {idle['ack_ms'][90]} | "
             f"{idle['ack_ms'][99]} |")
    L.append(f"| send → upstream POST received | {idle['to_submit_ms'][50]} | "
             f"{idle['to_submit_ms'][90]} | {idle['to_submit_ms'][99]} |")
    floors = idle.get("floor") or []
    for i, f in enumerate(floors):
        when = "before" if i == 0 else "after"
        L.append(f"| floor ({when}): send → 202 | {f['ack_ms'][50]} | {f['ack_ms'][90]} | "
                 f"{f['ack_ms'][99]} |")
        L.append(f"| floor ({when}): send → upstream POST received | {f['to_submit_ms'][50]} | "
                 f"{f['to_submit_ms'][90]} | {f['to_submit_ms'][99]} |")
    if floors:
        fl = round(median([f["to_submit_ms"][50] for f in floors]), 3)
        L.append(f"\nThe floor is `bench/idle_floor.c`, measured by the same client just before "
                 "and just after the daemon: a bare server that reads the request, writes 4 KiB "
                 "and fdatasyncs it, answers 202 and posts the submission to the same fake on a "
                 "kept connection, in plain system calls (no parsing, no ledger, no journal, no "
                 "event loop). It is what any server that acknowledges durably and then submits "
                 f"costs on this machine: {fl} ms (p50, the median of the two), so the target of "
                 f"1 ms leaves {round(1 - fl, 3)} ms for everything else a daemon does; "
                 f"vidu-upscaled took {round(idle['to_submit_ms'][50] - fl, 3)} ms more than "
                 f"the floor ({fmt(ratio(idle['to_submit_ms'][50], fl), 2)}x).")
    if idle.get("commit_mean_ms"):
        L.append(f"\nThe daemon's ledger commits (BEGIN to durable COMMIT, fdatasync included) "
                 f"took {idle['commit_mean_ms']} ms on average in this run, from its "
                 "`vidu_upscaled_ledger_commit_seconds` histogram"
                 + (f", their fdatasync alone {idle['sync_mean_ms']} ms "
                    "(`vidu_upscaled_ledger_sync_seconds`)" if idle.get("sync_mean_ms") else "")
                 + "; the notification waits for one of them before its 202 and its POST.")
    if idle.get("daemon_wait_mean_ms"):
        L.append(f"By the daemon's own clock, a request took {idle['daemon_ack_mean_ms']} ms on "
                 "average from its request line to its 202 being queued "
                 "(`vidu_upscaled_webhook_request_seconds`), and a job "
                 f"{idle['daemon_wait_mean_ms']} ms from the start of the turn that recorded it "
                 "to its POST starting (`vidu_upscaled_submit_wait_seconds`); the rest of each "
                 "column is the client, the wake-ups of the daemon and the fake, and the "
                 "kernel's loopback sends.")
    L.append("")
    quiet = summarize(res["ingest"].get("quiet") or [])
    with_journal = summarize(res["ingest"]["by_size"].get(0, {}).get(top) or [])
    if quiet and with_journal:
        L.append("## The journal's share\n")
        L.append(f"The same load at {top} connections with the job entries below `log.level` "
                 "(`warning`): the webhook, the ledger and the submissions unchanged, no entry "
                 "for systemd-journald to take in.\n")
        L.append("| | req/s | p99 ms | daemon CPU % | systemd-journald CPU % |")
        L.append("| --- | --- | --- | --- | --- |")
        for name, x in (("every transition in the journal", with_journal),
                        ("job entries off", quiet)):
            L.append(f"| {name} | {fmt(x['rps'])} | {fmt(x['latency_ms']['99'], 2)} | "
                     f"{fmt(x['cpu_pct'])} | {fmt(x['journald_cpu_pct'])} |")
        L.append("")
    b = res["cpu_budget"]
    if b["rows"]:
        L.append("## Where the CPUs go\n")
        L.append(f"At {top} connections, per acknowledged request, from each process's CPU time "
                 "over the load: the server (webhook: with its commands), wrk (from its own "
                 "rusage), systemd-journald and the fake upstream (for the submissions made "
                 f"during the load). Busy is the sum against the machine's {b['ncpu']} CPUs.\n")
        L.append("| load | req/s | server µs | wrk µs | systemd-journald µs | fake upstream µs | "
                 "total µs | CPUs busy % |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in b["rows"]:
            L.append(f"| {r['name']} | {fmt(r['rps'])} | {fmt(r['server'])} | {fmt(r['wrk'])} | "
                     f"{fmt(r['journald'])} | {fmt(r['upstream'])} | {fmt(r['total'])} | "
                     f"{fmt(r['busy_pct'])} |")
        if "free_daemon_rps" in b:
            L.append(f"\nBeside wrk, systemd-journald and the fake at their costs here "
                     f"({fmt(b['others_us'])} µs a request), a daemon that cost nothing itself "
                     f"would reach {fmt(round(b['free_daemon_rps']))} req/s. Reaching 0.5x "
                     f"nginx ({fmt(round(b['goal_nginx_rps']))} req/s) leaves it "
                     f"{fmt(b['budget_nginx_us'])} µs of CPU a request, and 7x webhook's default "
                     f"mode ({fmt(round(b['goal_webhook_default_rps']))} req/s) "
                     f"{fmt(b['budget_webhook_default_us'])} µs"
                     + (" (negative: out of reach even for a daemon that cost nothing, beside "
                        "what its journal entries cost journald on these CPUs)."
                        if b["budget_webhook_default_us"] < 0 else "."))
        L.append("")
    if res.get("perf"):
        pf = res["perf"]
        L.append("## What limits the daemon\n")
        L.append("fsync/fdatasync calls counted by `perf stat` on the daemon's syscalls; upstream "
                 "requests from its `/metrics`.\n")
        L.append("| load | acknowledged or submitted /s | upstream requests /s | fsync calls /s | "
                 "fsyncs per unit |")
        L.append("| --- | --- | --- | --- | --- |")
        if "ingest" in pf:
            x = pf["ingest"]
            L.append(f"| ingestion, {top} conn. | {fmt(x['rps'])} acked | "
                     f"{fmt(x['upstream_requests_per_s'])} | {fmt(x['syncs_per_s'])} | "
                     f"{fmt(ratio(x['syncs_per_s'], x['rps']), 3)} per ack |")
        if "submit" in pf:
            x = pf["submit"]
            L.append(f"| submitting a backlog | {fmt(x['rate'])} submitted | "
                     f"{fmt(x['upstream_requests_per_s'])} | "
                     f"{fmt(round(x['syncs_per_submission'] * x['rate'], 1))} | "
                     f"{fmt(x['syncs_per_submission'], 3)} per submission |")
        L.append("")
        for name, lines in pf.get("top", {}).items():
            L.append(f"perf, self time by DSO and symbol, {name}:\n")
            L.append("```")
            L.extend(lines)
            L.append("```\n")
    L.append("## Raw data\n")
    L.append("`results.json` beside the report has every run; `wrk-*.txt` each wrk output; "
             "`perf-*.txt` the full profiles.\n")
    return "\n".join(L) + "\n"


def main():
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for exe in (DAEMON, FAKE, CEILING, IDLE_FLOOR):
        if not os.access(exe, os.X_OK):
            sys.exit(f"bench: {exe} is missing; run bench/run.sh")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(BENCH, "results", stamp)
    os.makedirs(outdir)
    res = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "params": P,
           "machine": machine(), "versions": versions()}
    log(f"results in {outdir}; {'quick' if QUICK else 'full'} mode: {P}")
    tmp = tempfile.mkdtemp(prefix="vidu-bench-")
    res["machine"]["fsync_ms"] = fsync_latency_ms(tmp)
    res["machine"]["fsync_idle_ms"] = fsync_latency_ms(tmp, n=100, gap_s=0.02)
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            res["machine"]["unix_max_dgram_qlen"] = int(f.read())
    except OSError:
        pass
    journald = pid_of("systemd-journal")
    if ONLY == "pure":
        try:
            fake = Fake(tmp)
            schema = make_schema(tmp, fake)
            res["pure"] = bench_pure(tmp, fake, schema, outdir)
            res["lifecycle"] = bench_lifecycle(tmp, fake, schema, outdir)
        finally:
            stop_all()
            shutil.rmtree(tmp, ignore_errors=True)
        res["pure_summary"] = pure_summary(res)
        with open(os.path.join(outdir, "results.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
        with open(os.path.join(outdir, "report.md"), "w") as f:
            f.write("\n".join(pure_report(res)) + "\n")
        log(f"report: {outdir}/report.md")
        for line in pure_report(res):
            print(line)
        return
    if ONLY == "pg":
        try:
            fake = Fake(tmp)
            schema = make_schema(tmp, fake)
            res["pg"] = bench_pg(tmp, fake, schema, outdir, journald)
        finally:
            stop_all()
            shutil.rmtree(tmp, ignore_errors=True)
        res["pg_summary"] = pg_summary(res)
        pg_plot(res, outdir)
        with open(os.path.join(outdir, "results.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
        lines = pg_report(res, "")
        with open(os.path.join(outdir, "report.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        log(f"report: {outdir}/report.md")
        for line in lines:
            print(line)
        return
    try:
        res["nginx"] = bench_nginx(tmp, outdir)
        res["webhook"] = bench_webhook(tmp, outdir)
        fake = Fake(tmp)
        schema = make_schema(tmp, fake)
        res["pure"] = bench_pure(tmp, fake, schema, outdir)
        res["lifecycle"] = bench_lifecycle(tmp, fake, schema, outdir)
        res["ingest"] = bench_ingest(tmp, fake, schema, outdir, journald)
        res["submit"] = bench_submit(tmp, fake, schema, outdir, journald)
        res["submit_more"] = {c: bench_submit(tmp, fake, schema, outdir, journald, c)
                              for c in P["submit_concurrency_more"]}
        res["submit_nosync"] = {c: bench_submit(tmp, fake, schema, outdir, journald, c, "normal")
                                for c in [P["upstream_concurrency"]]
                                + P["submit_concurrency_more"]}
        if pg_available():
            res["pg"] = bench_pg(tmp, fake, schema, outdir, journald)
        else:
            log("no PostgreSQL 15 binaries: the instances-on-PostgreSQL loads are skipped")
        # The floor first, then the daemon, then the floor again: the disk drifts.
        floors = [bench_idle_floor(tmp, fake)]
        res["idle"] = bench_idle(tmp, fake, schema)
        floors.append(bench_idle_floor(tmp, fake))
        res["idle"]["floor"] = floors
        if DO_PERF:
            try:
                res["perf"] = bench_perf(tmp, fake, schema, outdir, res["submit"])
            except Exception as e:
                log(f"perf profile skipped: {e}")
        stop(fake.p)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    top = max(P["connections"])
    res["summary"] = {
        "nginx": {c: summarize(r) for c, r in res["nginx"].items()},
        "webhook_default": {c: summarize(r) for c, r in res["webhook"]["default"].items()},
        "webhook_wait": {c: summarize(r) for c, r in res["webhook"]["wait"].items()},
        "us": {c: summarize(r) for c, r in res["ingest"]["by_size"][min(P["sizes"])].items()},
        "by_size": {size: summarize(by_c[top]) for size, by_c in
                    res["ingest"]["by_size"].items()},
    }
    res["pure_summary"] = pure_summary(res)
    res["targets"] = evaluate(res)
    res["cpu_budget"] = cpu_budget(res)
    pngs = plots(res, outdir)
    res["pg_summary"] = pg_summary(res)
    if res["pg_summary"]:
        ps = res["pg_summary"]
        res["targets"].append({
            "target": "ingestion, 1 instance on PostgreSQL ≥ 0.5× 1 on SQLite (issue 27)",
            "measured": ps["ratio"], "wanted": ">= 0.5", "pass": ps["target_met"]})
        pngs += pg_plot(res, outdir)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(report(res, "") + "\n".join([""] + pg_report(res, "")) + "\n")
    log(f"report: {outdir}/report.md")
    if PUBLISH:
        pdir = os.path.join(BENCH, "plots")
        os.makedirs(pdir, exist_ok=True)
        for p in pngs:
            shutil.copyfile(os.path.join(outdir, p), os.path.join(pdir, p))
        # The soak's section (bench/soak.py) stays.
        soak = ""
        try:
            with open(os.path.join(BENCH, "RESULTS.md")) as f:
                m = re.search(r"<!-- soak: .*?<!-- /soak -->\n", f.read(), re.S)
                soak = "\n" + m.group(0) if m else ""
        except FileNotFoundError:
            pass
        with open(os.path.join(BENCH, "RESULTS.md"), "w") as f:
            f.write(report(res, "plots/") + "\n".join([""] + pg_report(res, "plots/")) + "\n"
                    + soak)
        log("published to bench/RESULTS.md and bench/plots/")
    for t in res["targets"]:
        log(f"{'info' if t['pass'] is None else 'pass' if t['pass'] else 'FAIL'}: "
            f"{t['target']}: {t['measured']} (wanted {t['wanted']})")


if __name__ == "__main__":
    main()
