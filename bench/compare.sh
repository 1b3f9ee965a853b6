#!/usr/bin/env bash
# compare.sh: this tree's daemon against the one built from REV (default HEAD), measured
# alternately in one session by bench/compare.py; prints a table of medians and ratios.
# Usage: bash bench/compare.sh [REV] [RUNS]   (as root on Debian 12, like bench/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rev=${1:-HEAD}
runs=${2:-5}

BENCH_SETUP_ONLY=1 bash bench/run.sh

base=$(mktemp -d /tmp/vidu-compare-base-XXXXXX)
cleanup() {
        git -C "$root" worktree remove --force "$base/src" >/dev/null 2>&1 || true
        rm -rf "$base"
}
trap 'cleanup' EXIT
git -C "$root" worktree add --detach "$base/src" "$rev" >/dev/null
cmake -S "$base/src" -B "$base/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$base/build" -j"$(nproc)" --target vidu-upscaled >/dev/null

# compare.py stops everything it started; run_supervised stops compare.py itself (and removes the
# worktree) if this script is killed.
. bench/supervise.sh
status=0
SUPERVISED_CLEANUP=cleanup run_supervised python3 bench/compare.py \
        "$base/build/vidu-upscaled" "$root/build-bench/vidu-upscaled" "$runs" || status=$?
cleanup
exit $status
