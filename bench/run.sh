#!/usr/bin/env bash
# run.sh: the benchmark in one command: installs what it needs, builds the daemon (Release) into
# build-bench/, and measures it against nginx and adnanh/webhook on loopback (bench/bench.py).
# BENCH_QUICK=1: a short smoke run. BENCH_ONLY=pg: only instances on one PostgreSQL vs SQLite. Results land in bench/results/<timestamp>/report.md; a full
# run also refreshes bench/RESULTS.md and bench/plots/. BENCH_SETUP_ONLY=1: install and build, no
# measuring (bench/compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v nginx >/dev/null || have nginx-light || have nginx || need+=(nginx-light)
for p in webhook wrk gnuplot-nox sqlite3 python3 gcc libcurl4-openssl-dev; do
        have "$p" || need+=("$p")
done
# The instances-on-PostgreSQL loads (BENCH_ONLY=pg, and inside a full run) start a throwaway
# server from PostgreSQL 15's binaries (tests/integration/pgserver.py), never the packaged one.
if [ "${BENCH_ONLY:-}" != pure ]; then
        have postgresql-15 || need+=(postgresql-15)
fi
if [ ${#need[@]} -gt 0 ] || ! command -v perf >/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
                echo "bench: missing packages: ${need[*]} (run as root, or install them)" >&2
                exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Installing nginx must not start the packaged service on port 80: the bench runs its own.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
                printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
                chmod +x /usr/sbin/policy-rc.d
                trap 'rm -f /usr/sbin/policy-rc.d' EXIT
                added_policy=1
        fi
        if [ ${#need[@]} -gt 0 ] && ! apt-get install -y -qq --no-install-recommends "${need[@]}"; then
                # Some releases only ship the full nginx package.
                need=("${need[@]/nginx-light/nginx}")
                apt-get install -y -qq --no-install-recommends "${need[@]}"
        fi
        # Optional: perf shows what dominates the daemon's CPU under load.
        command -v perf >/dev/null || apt-get install -y -qq --no-install-recommends linux-perf ||
                echo "bench: linux-perf not available; skipping the profile" >&2
        if [ "${added_policy:-0}" = 1 ]; then
                rm -f /usr/sbin/policy-rc.d
                trap - EXIT
        fi
fi
bash scripts/install-deps.sh

# The daemon's entries go to a real journald, set up as systemd (PID 1) sets it up on every host:
# its socket queue holds 512 datagrams (the kernel's default is 10, which systemd raises at boot).
# Without systemd, a journald started by hand is restarted so its socket gets that queue.
qlen=/proc/sys/net/unix/max_dgram_qlen
if [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ] && [ "$(cat $qlen)" -lt 512 ] &&
        [ "$(id -u)" -eq 0 ]; then
        echo 512 >"$qlen"
        if pkill -x systemd-journal; then
                for _ in $(seq 1 100); do pgrep -x systemd-journal >/dev/null || break; sleep 0.05; done
        fi
fi
bash scripts/ensure-journald.sh

cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build-bench" -j"$(nproc)" --target vidu-upscaled fake-upstream >/dev/null
gcc -std=gnu11 -O2 -Wall -Wextra -Werror -o "$root/build-bench/curl_ceiling" bench/curl_ceiling.c \
        $(pkg-config --cflags --libs libcurl)
gcc -std=gnu11 -O2 -Wall -Wextra -Werror -o "$root/build-bench/idle_floor" bench/idle_floor.c

# compare.sh only needs what is above.
if [ "${BENCH_SETUP_ONLY:-0}" = 1 ]; then
        exit 0
fi

# bench.py stops everything it started when it ends or is interrupted; run_supervised stops
# bench.py itself if this script is killed.
. bench/supervise.sh
status=0
run_supervised python3 bench/bench.py "$@" || status=$?
exit $status
