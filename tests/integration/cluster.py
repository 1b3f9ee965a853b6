"""cluster.py: several daemons on one PostgreSQL ledger for the multi-instance tests (issue 27):
a Cluster of named instances started at once, killed, stopped and restarted one by one; a Load
that posts fresh notifications to the live instances and records which were acknowledged; the
ledger and the fake upstream's per-creation counters read back; and an honest probe of whether
the dispatcher runs on PostgreSQL yet. Standard library only, like harness.py."""
import json
import os
import signal
import threading
import time

import harness
from harness import Daemon, make_task, new_creation_ids, poll

# A job in these states is not submitted yet (nor held): what a test waits out.
OPEN_STATES = ("pending", "submitting", "waiting")
# Submitted: the upstream has its task (polled, or already finished).
SUBMITTED_STATES = ("submitted", "succeeded")


class Cluster:
    """n daemons on database db of pg, all with the same configuration (config: harness.Daemon's
    sections), each with store.instance `<name>-<incarnation>` so the ledger's claims say who
    holds what."""

    def __init__(self, pg, db, fake, n=3, config=None, url=None, per_instance=None):
        self.pg, self.db, self.fake = pg, db, fake
        self.config = config or {}
        # i -> sections merged over config for instance i (one instance's [events], say)
        self.per_instance = per_instance or (lambda i: {})
        self.url = url  # another store.url (a PgBouncer's), else pg's
        self.names = ["node%d" % i for i in range(n)]
        self.incarnation = [0] * n
        self.daemons = [None] * n
        self.retired = []  # killed daemons, cleaned up at the end

    def _make(self, i):
        self.incarnation[i] += 1
        cfg = {k: dict(v) for k, v in self.config.items()}
        for section, values in self.per_instance(i).items():
            cfg.setdefault(section, {}).update(values)
        cfg.setdefault("upstream", {})["base_url"] = self.fake.url
        cfg.setdefault("store", {})["instance"] = self.instance(i)
        d = Daemon(cfg, fake=self.fake, pg=self.pg, pg_db=self.db)
        if self.url:
            # Only a pooler in transaction mode stands between, in these tests.
            d.config["store"]["url"] = self.url
            d.config["store"]["pooler"] = "transaction"
        return d

    def instance(self, i):
        return "%s-%d" % (self.names[i], self.incarnation[i])

    def start(self, wait_ledger=True):
        """Starts every instance at the same moment (one thread each, released together)."""
        self.daemons = [self._make(i) for i in range(len(self.names))]
        go = threading.Barrier(len(self.daemons))
        errors = []

        def one(d):
            go.wait()
            try:
                d.start()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=one, args=(d,)) for d in self.daemons]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if wait_ledger:
            for d in self.daemons:
                d.wait_ledger()
        return self

    def live(self):
        return [d for d in self.daemons if d and d.proc and d.proc.poll() is None]

    def kill9(self, i):
        """SIGKILL instance i and reap it: nothing of its own runs afterwards."""
        d = self.daemons[i]
        d.kill(signal.SIGKILL)
        d.proc.wait(timeout=10)
        self.retired.append(d)
        self.daemons[i] = None
        return d

    def stop_one(self, i):
        """Stops instance i the ordinary way (SIGTERM: it drains and exits 0)."""
        d = self.daemons[i]
        self.daemons[i] = None  # out of live() first: a load sends it nothing more
        self.retired.append(d)
        code = d.stop()
        if code != 0:
            raise AssertionError("%s exited %r on SIGTERM" % (self.instance(i), code))
        return d

    def restart(self, i):
        """Starts instance i again, as a new incarnation (what a restarted process with the
        default store.instance, the machine id plus the pid, would be)."""
        d = self._make(i)
        self.retired.append(d)  # stopped at the end even if it never came up
        d.start()
        d.wait_ledger()
        self.retired.remove(d)
        self.daemons[i] = d  # only now in live(): a load sends it nothing it would refuse
        return d

    def stop(self):
        """Stops every live instance (SIGCONT first: one may be stopped) and cleans up."""
        first = None
        for d in self.daemons + self.retired:
            if d is None:
                continue
            try:
                if d.proc and d.proc.poll() is None:
                    d.kill(signal.SIGCONT)
                d.__exit__(None, None, None)
            except Exception as e:  # noqa: BLE001 - every instance is stopped, the first error raised
                first = first or e
        if first:
            raise first

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # the ledger

    def jobs(self, where=""):
        """creation_id -> {state, claimed_by, claim_seq, upscale_task_id} of every job."""
        rows = self.pg.sql("SELECT creation_id, state, coalesce(claimed_by, ''), claim_seq, "
                           "coalesce(upscale_task_id, '') FROM jobs " + where, db=self.db)
        return {r[0]: {"state": r[1], "claimed_by": r[2], "claim_seq": int(r[3]), "upscale_task_id": r[4]}
                for r in rows}

    def events(self, where=""):
        """Every row of the events outbox, in the order written: {seq, id, type, creation_id,
        state, attempts, body, claimed}; claimed: pending and not due (an instance's claim on it
        not lapsed, or a retry's wait)."""
        rows = self.pg.sql("SELECT row_to_json(e) FROM (SELECT seq, id, type, creation_id, state, attempts, "
                           "body, state = 'pending' AND next_at > now() AS claimed FROM events %s "
                           "ORDER BY seq) e" % where, db=self.db)
        return [json.loads(r[0]) for r in rows]

    def count(self, where=""):
        return int(self.pg.sql("SELECT count(*) FROM jobs " + where, db=self.db)[0][0])

    def wait_settled(self, creation_ids, timeout):
        """Polls until every one of creation_ids is submitted, finished or held (none in
        OPEN_STATES); returns the jobs."""
        want = set(creation_ids)
        last = {}

        def settled():
            jobs = self.jobs()
            last["open"] = {c: jobs[c] for c in want if c in jobs and jobs[c]["state"] in OPEN_STATES}
            return jobs if not last["open"] else None
        try:
            return poll(settled, timeout=timeout, interval=0.25, what="every job submitted or held")
        except AssertionError:
            left = last.get("open", {})
            raise AssertionError("%d jobs still %s after %ss, e.g. %r" % (
                len(left), "/".join(OPEN_STATES), timeout, sorted(left.items())[:3]))


def post(d, body, timeout=10):
    """One notification to d: (status, parsed body or None); (None, error) when the connection
    failed (a dead instance)."""
    try:
        status, headers, raw = d.post(body=json.dumps(body).encode(), timeout=timeout)
    except OSError as e:
        return None, e
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, parsed


class Load:
    """Threads posting one fresh creation per notification, round robin over the cluster's live
    instances, pausing `pause` seconds between posts. acked: the creations answered 202 with the
    creation accepted; refused: (creation, status) of every other answer; failed: creations whose
    request got no answer (the instance died meanwhile): these may or may not be in the ledger.
    A subclass may choose the instances (pick) and keep other records (record)."""

    task_prefix = "97"

    def __init__(self, cluster, threads=3, pause=0.05):
        self.cluster = cluster
        self.n_threads = threads
        self.pause = pause
        self.acked, self.refused, self.failed = [], [], []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []
        self.seq = 0

    def pick(self, k):
        """The k-th post's (index, instance), or None while there is none to post to."""
        live = self.cluster.live()
        return (k % len(live), live[k % len(live)]) if live else None

    def record(self, i, d, cid, note):
        status, body = post(d, note)
        with self.lock:
            if status == 202 and body and body.get("accepted") == [cid]:
                self.acked.append(cid)
            elif status is None:
                self.failed.append(cid)
            else:
                self.refused.append((cid, status, body))

    def _run(self, n):
        k = n
        while not self.stopping.is_set():
            target = self.pick(k)
            if target is None:
                time.sleep(0.05)
                continue
            k += 1
            (cid,) = new_creation_ids(1)
            with self.lock:
                self.seq += 1
                task = self.task_prefix + "%014d" % self.seq
            self.record(target[0], target[1], cid, make_task(task, [cid]))
            self.stopping.wait(self.pause)

    def start(self):
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.n_threads)]
        for t in self.threads:
            t.start()
        return self

    def n_acked(self):
        with self.lock:
            return len(self.acked)

    def wait_acked(self, more, timeout=30):
        """Polls until `more` further creations were acknowledged."""
        target = self.n_acked() + more
        poll(lambda: self.n_acked() >= target, timeout=timeout, what="%d more acknowledged notifications" % more)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60 * harness.TIMEOUT_SCALE)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def created(fake):
    """creation id -> how many tasks the fake upstream made for it (POSTs that reached it)."""
    return fake.stats()["created"]


def metric_sum(d, name, **labels):
    """The sum of d's /metrics samples of name whose labels include labels (0 when none)."""
    status, _, data = d.get("/metrics")
    if status != 200:
        raise AssertionError("/metrics answered %d" % status)
    want = ['%s="%s"' % kv for kv in labels.items()]
    total = 0.0
    for line in data.decode().splitlines():
        sample, _, value = line.rpartition(" ")
        base, _, rest = sample.partition("{")
        if base == name and all(w in rest.rstrip("}").split(",") for w in want):
            total += float(value)
    return total


def journal_by_pid(pid):
    return harness.journal_entries(_PID=str(pid))


_probe = {}


def dispatcher_on_pg(pg, fake, timeout=10):
    """Whether the daemon submits on PostgreSQL: one daemon on a database of its own, one
    notification. True once its job reaches `submitted` (or beyond) and the fake has its task
    within timeout (at most 3x that under valgrind: a probe, not a measurement); False when
    nothing touched the job (still `pending`, never claimed, nothing POSTed): no dispatcher. A
    job claimed or POSTed that got no further is a broken dispatcher, not a missing one: that
    raises. Cached per server."""
    if pg in _probe:
        if isinstance(_probe[pg], Exception):
            raise _probe[pg]
        return _probe[pg]
    try:
        _probe[pg] = _probe_dispatcher(pg, fake, timeout)
    except Exception as e:  # noqa: BLE001 - every test that needs the dispatcher fails with it
        _probe[pg] = e
        raise
    return _probe[pg]


def _probe_dispatcher(pg, fake, timeout):
    db = "probe_dispatcher"
    pg.create_database(db)
    (cid,) = new_creation_ids(1)
    query = "SELECT state, claim_seq FROM jobs WHERE creation_id = '%s'" % cid
    with Daemon({"upstream": {"base_url": fake.url}}, fake=fake, pg=pg, pg_db=db) as d:
        d.wait_ledger()
        status, body = post(d, make_task("9700000000000001", [cid]))
        if status != 202:
            raise AssertionError("the probe's notification was answered %r %r" % (status, body))
        deadline = time.monotonic() + timeout * min(harness.TIMEOUT_SCALE, 3)
        while True:
            state, claim_seq = pg.sql(query, db=db)[0]
            posted = created(fake).get(cid, 0)
            if state in ("submitted", "succeeded") and posted:
                ok = True
                break
            if time.monotonic() > deadline:
                if (state, claim_seq, posted) != ("pending", "0", 0):
                    raise AssertionError("the dispatcher on PostgreSQL took a job and did not submit it within "
                                         "%ss: state %s, claim_seq %s, %d POSTs" % (timeout, state, claim_seq, posted))
                ok = False
                break
            time.sleep(0.2)
    return ok


def wait_for(predicate, timeout, what, interval=0.1):
    """poll() that also returns how long it took (seconds, unscaled wall time)."""
    t0 = time.monotonic()
    v = poll(predicate, timeout=timeout, interval=interval, what=what)
    return v, time.monotonic() - t0


def env_int(name, default):
    return int(os.environ.get(name, default))
