#!/usr/bin/env python3
"""instructions.py: instructions per notification under callgrind, a count that does not drift.

Wall-clock figures on a shared VM move by 5-15 % between identical runs; the instructions a
daemon executes for the same work barely move. For each binary given, this starts it under
valgrind's callgrind twice on a fresh ledger against the fake upstream: once with nothing to do,
once under a bounded wrk load (4 connections), then waits for the backlog to drain so every
creation is accepted, submitted and logged. It prints (total - start-up) / jobs, the
instructions one notification costs end to end: its parse, its commit share, its submission and
the upstream's answer, its journal entries (one when log.fold_accepted folds `accepted` into
`submitted`, two otherwise).

Usage: instructions.py BINARY [BINARY ...]   (after bench/run.sh's set-up; LOAD_S, default 8)
KEEP=DIR keeps each callgrind profile in DIR (busy0.callgrind ...) for callgrind_annotate.
PURE=1: pure durable ingestion instead, as the bench measures it against nginx: the upstream never
answers (bench.Blackhole), so a notification's count is its HTTP, parse, commit share and one
journal entry, over every job recorded.
"""

import json
import os
import shutil
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


PURE = os.environ.get("PURE") == "1"


def measure(tmp, fake, schema, binary, load_s, tag):
    """Total instructions of one daemon's life and the jobs it handled."""
    wrap = os.path.join(tmp, f"{tag}.sh")
    out = os.path.join(tmp, f"{tag}.callgrind")
    with open(wrap, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out} "
                f"{binary} \"$@\"\n")
    os.chmod(wrap, 0o755)
    ledger = os.path.join(tmp, f"{tag}.db")
    shutil.copyfile(schema, ledger)
    fake.reset()
    B.DAEMON = wrap
    if PURE:
        hole = B.Blackhole()
        d = B.Daemon(tmp, fake, ledger, tag, base_url=hole.url,
                     upstream_conf=B.PURE_UPSTREAM).start()
    else:
        d = B.Daemon(tmp, fake, ledger, tag).start()
    try:
        if load_s:
            B.run_wrk(f"http://127.0.0.1:{d.port}{B.HOOK_PATH}", 4, load_s, tmp, tag)
            m, _ = d.wait_drained(0 if PURE else 120)
            if not PURE and (m.get("vidu_upscaled_backlog", 1)
                             or m.get("vidu_upscaled_upstream_in_flight", 1)):
                raise RuntimeError(f"{binary}: backlog not drained in 120 s")
    finally:
        d.stop()
        if PURE:
            hole.close()
    with sqlite3.connect(ledger) as db:
        jobs = db.execute("SELECT count(*) FROM jobs WHERE state = 'submitted'").fetchone()[0]
        total = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    if PURE:
        jobs = total
    if jobs != total:
        raise RuntimeError(f"{binary}: {total - jobs} of {total} jobs not submitted")
    ir = None
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                ir = int(line.split()[1])
    if ir is None:
        raise RuntimeError(f"{binary}: no totals in {out}")
    os.unlink(ledger)
    keep = os.environ.get("KEEP")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(out, os.path.join(keep, os.path.basename(out)))
    return ir, jobs


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binaries = [os.path.abspath(b) for b in sys.argv[1:]]
    for b in binaries:
        if not os.access(b, os.X_OK):
            sys.exit(f"instructions: {b} is not an executable")
    if not shutil.which("valgrind"):
        sys.exit("instructions: valgrind is not installed (apt-get install valgrind)")
    load_s = B.env_int("LOAD_S", 8)
    tmp = tempfile.mkdtemp(prefix="vidu-instructions-")
    rows = []
    try:
        fake = B.Fake(tmp)
        B.DAEMON = binaries[0]
        schema = B.make_schema(tmp, fake)
        for i, b in enumerate(binaries):
            idle, _ = measure(tmp, fake, schema, b, 0, f"idle{i}")
            busy, jobs = measure(tmp, fake, schema, b, load_s, f"busy{i}")
            if jobs == 0:
                raise RuntimeError(f"{b}: no job was accepted under callgrind")
            per = (busy - idle) / jobs
            rows.append({"binary": b, "jobs": jobs, "startup_ir": idle, "ir_per_job": round(per)})
            B.log(f"{b}: {per / 1000:.1f}k instructions a notification over {jobs} jobs")
    finally:
        B.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows, indent=1))
    if len(rows) > 1:
        for r in rows[1:]:
            print(f"{r['binary']}: {r['ir_per_job'] / rows[0]['ir_per_job']:.3f} of "
                  f"{rows[0]['binary']}")


if __name__ == "__main__":
    main()
