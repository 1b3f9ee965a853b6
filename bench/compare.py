#!/usr/bin/env python3
"""compare.py: two builds of vidu-upscaled measured alternately in one session (run via compare.sh).

A change's effect is smaller than this machine's drift between runs minutes apart, so the two
daemons take turns, run by run and in mirrored order (A B, B A, A B, ...: a drift that grows
through the session, such as journald's filling file, falls on both alike), on the same fake
upstream and journald, and the report gives each side's median and the ratio. Measured:
ingestion at 8 and 64 connections (req/s, p99, daemon CPU per acknowledged request), submissions
from a backlog, idle latency and the mean commit time. bench.py's functions do the measuring
and its checks still run: every acknowledged creation recorded and submitted exactly once.

Usage: compare.py BASE_BINARY NEW_BINARY [RUNS]   (default 5 runs a side; BENCH_DURATION=S)
"""

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ingest(tmp, fake, template, outdir, journald, binary, conns, tag):
    r = B.ingest_run(tmp, fake, template, 0, conns, outdir, tag, journald)
    if not all(r["checks"].values()):
        raise RuntimeError(f"{binary}: checks failed after {tag}: {r['checks']}")
    return {"rps": r["rps"], "p99": r["latency_ms"]["99"],
            "cpu_us": B.cpu_per_request_us(r), "journald_cpu_pct": r.get("journald_cpu_pct")}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sides = {"base": os.path.abspath(sys.argv[1]), "new": os.path.abspath(sys.argv[2])}
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    for b in sides.values():
        if not os.access(b, os.X_OK):
            sys.exit(f"compare: {b} is not an executable")
    B.P["duration_s"] = B.env_int("BENCH_DURATION", 5)
    B.P["runs"] = 1
    B.P["idle_samples"] = 100
    B.P["drain_max_s"] = 30
    tmp = tempfile.mkdtemp(prefix="vidu-compare-")
    outdir = tempfile.mkdtemp(prefix="vidu-compare-out-")
    journald = B.pid_of("systemd-journal")
    res = {k: {"ingest64": [], "ingest8": [], "submit": [], "idle": []} for k in sides}
    try:
        fake = B.Fake(tmp)
        B.DAEMON = sides["base"]
        schema = B.make_schema(tmp, fake)
        template = os.path.join(tmp, "template.db")
        B.shutil.copyfile(schema, template)
        for i in range(runs):
            order = list(sides.items())
            if i % 2:
                order.reverse()
            for name, binary in order:
                B.DAEMON = binary  # what bench.py's Daemon starts
                for conns in (64, 8):
                    r = ingest(tmp, fake, template, outdir, journald, binary, conns,
                               f"{name}-c{conns}-{i}")
                    res[name][f"ingest{conns}"].append(r)
                    B.log(f"{name} c={conns} run {i}: {r['rps']} req/s, p99 {r['p99']} ms, "
                          f"{B.fmt(r['cpu_us'])} us CPU a request")
                s = B.bench_submit(tmp, fake, schema, outdir, journald)[0]
                res[name]["submit"].append(s)
                idle = B.bench_idle(tmp, fake, schema)
                res[name]["idle"].append(idle)
    finally:
        B.stop_all()
        B.shutil.rmtree(tmp, ignore_errors=True)

    rows = []

    def row(label, get, better):
        b = median(get("base"))
        n = median(get("new"))
        ratio = round(n / b, 3) if b and n is not None else None
        rows.append((label, b, n, ratio, better))

    for c in (64, 8):
        row(f"req/s, {c} connections", lambda k: [r["rps"] for r in res[k][f"ingest{c}"]],
            "higher")
        row(f"p99 ms, {c} connections", lambda k: [r["p99"] for r in res[k][f"ingest{c}"]],
            "lower")
        row(f"daemon CPU us a request, {c} connections",
            lambda k: [r["cpu_us"] for r in res[k][f"ingest{c}"]], "lower")
    row("submissions/s from a backlog", lambda k: [s["rate"] for s in res[k]["submit"]], "higher")
    row("submissions vs curl-multi ceiling", lambda k: [s["ratio"] for s in res[k]["submit"]],
        "higher")
    row("idle notification to POST p50 ms",
        lambda k: [x["to_submit_ms"][50] for x in res[k]["idle"]], "lower")
    row("mean commit ms (idle)", lambda k: [x["commit_mean_ms"] for x in res[k]["idle"]], "lower")
    row("its fdatasync ms (idle)", lambda k: [x.get("sync_mean_ms") for x in res[k]["idle"]],
        "lower")
    print(f"\nbase: {sides['base']}\nnew:  {sides['new']}\n{runs} alternating runs a side, "
          f"medians; raw wrk output in {outdir}\n")
    print("| measure | base | new | new/base | better |")
    print("| --- | --- | --- | --- | --- |")
    def num(x):
        return B.fmt(x, 1 if isinstance(x, float) and abs(x) >= 100 else 3)

    for label, b, n, ratio, better in rows:
        print(f"| {label} | {num(b)} | {num(n)} | {B.fmt(ratio, 3)} | {better} |")


if __name__ == "__main__":
    for sig in (B.signal.SIGTERM, B.signal.SIGINT, B.signal.SIGHUP):
        B.signal.signal(sig, B.on_signal)
    main()
