#!/usr/bin/env bash
# soak.sh [DURATION]: the soak in one command: builds the Release daemon into build-soak/, then
# runs bench/soak.py (steady load, faults, samples, checks) for DURATION (default 30m; s, m, h).
# SOAK_QUICK=1: about two minutes, what CI runs. Exits non-zero, with the reasons, when a check
# fails. Results: bench/results/soak-<time>/ (soak.csv, soak-*.png, summary.json, acked.txt).
#
# As root, the soak runs in a mount namespace of its own with a private /run/systemd/journal and
# journal directories, and its own systemd-journald there, so that stopping and restarting
# journald (one of the faults) disturbs nothing else on the machine. Otherwise it uses the
# machine's journald (scripts/ensure-journald.sh) and skips that fault.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "${SOAK_IN_NAMESPACE:-0}" != 1 ]; then
        if ! command -v gnuplot >/dev/null; then
                echo "soak: gnuplot is missing (scripts/install-deps.sh installs gnuplot-nox): no plots" >&2
        fi
        cmake -S "$root" -B "$root/build-soak" -DCMAKE_BUILD_TYPE=Release >/dev/null
        cmake --build "$root/build-soak" -j"$(nproc)" --target vidu-upscaled fake-upstream >/dev/null
        # The probe mounts in a namespace of its own too, so it changes nothing here.
        if [ "$(id -u)" -eq 0 ] && [ "${SOAK_JOURNALD:-own}" = own ] &&
                mkdir -p /run/systemd/journal &&
                unshare --mount --propagation private \
                        mount -t tmpfs tmpfs /run/systemd/journal 2>/dev/null; then
                SOAK_IN_NAMESPACE=1 exec unshare --mount --propagation private bash "$0" "$@"
        fi
        export SOAK_JOURNALD=shared
else
        # A private journal: the socket directory and both journal directories are new tmpfs
        # mounts, seen by this process tree only. journald keeps its files to a tenth of their
        # filesystem, so 512 MiB bounds what hours of entries take in memory.
        mkdir -p /run/systemd/journal /run/log/journal
        mount -t tmpfs -o mode=0755,size=16m tmpfs /run/systemd/journal
        mount -t tmpfs -o mode=0755,size=512m tmpfs /run/log/journal
        if [ -d /var/log/journal ]; then
                mount -t tmpfs -o mode=0755,size=512m tmpfs /var/log/journal
        fi
        export SOAK_JOURNALD=own
fi
# journald's socket queue as systemd (PID 1) sets it on every host (see bench/run.sh).
qlen=/proc/sys/net/unix/max_dgram_qlen
if [ "$(id -u)" -eq 0 ] && [ "$(cat $qlen)" -lt 512 ]; then
        echo 512 >"$qlen"
fi

# soak.py stops everything it started when it ends or is interrupted; run_supervised stops
# soak.py itself if this script is killed.
. bench/supervise.sh
status=0
run_supervised python3 bench/soak.py "$@" || status=$?
exit $status
