#!/usr/bin/env bash
# ensure-journald.sh: starts systemd-journald when nothing answers on its socket (containers, CI).
set -euo pipefail
sock=/run/systemd/journal/socket
answers() {
        python3 - "$sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.connect(sys.argv[1]); sys.exit(0)
except OSError:
    sys.exit(1)
PY
}
if answers; then exit 0; fi
# A dead journald leaves its sockets behind; a new one recreates them.
rm -f /run/systemd/journal/socket /run/systemd/journal/stdout /run/systemd/journal/dev-log
mkdir -p /run/systemd/journal
for j in /lib/systemd/systemd-journald /usr/lib/systemd/systemd-journald; do
        if [ -x "$j" ]; then
                setsid "$j" </dev/null >/dev/null 2>&1 &
                break
        fi
done
for _ in $(seq 1 100); do
        answers && exit 0
        sleep 0.05
done
echo "ensure-journald: systemd-journald did not come up" >&2
exit 1
