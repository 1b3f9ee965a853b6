# supervise.sh: sourced by run.sh and compare.sh. run_supervised CMD... runs CMD in the
# background and waits for it, so that if this shell is killed CMD is stopped (SIGTERM) first;
# then $SUPERVISED_CLEANUP, if set, runs. Returns CMD's exit status.
run_supervised() {
        "$@" &
        local pid=$!
        trap "kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; ${SUPERVISED_CLEANUP:-}" EXIT
        trap 'exit 130' INT TERM HUP
        local status=0
        wait "$pid" || status=$?
        trap - EXIT INT TERM HUP
        return $status
}
