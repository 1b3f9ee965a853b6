#!/usr/bin/env bash
# run.sh: installs what is needed, builds, and runs the daemon in the foreground. Without a real
# upstream configured it starts the bundled fake upstream and sends one sample notification, so a
# new user sees the whole loop (accepted -> submitted -> succeeded) in the journal.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
bash scripts/ensure-journald.sh || echo "run: no journal available; entries go to stderr only" >&2

# Not VIDU_UPSCALED_*: the daemon treats every variable with that prefix as a setting.
conf=${VIDU_CONFIG:-/etc/vidu-upscaled/vidu-upscaled.conf}
# A file that is there but not complete (the package's, before base_url and the key are set)
# falls back to the fake upstream.
if [ -n "${VIDU_UPSCALED_UPSTREAM_BASE_URL:-}" ] ||
        { [ -f "$conf" ] && "$root/build/vidu-upscaled" -c "$conf" --check-config >/dev/null 2>&1; }; then
        echo "run: using $conf and the real upstream it names"
        exec "$root/build/vidu-upscaled" -c "$conf"
fi
if [ -f "$conf" ]; then
        echo "run: $conf is not complete (vidu-upscaled -c $conf --check-config says why);" \
                "using the bundled fake upstream"
fi

state=$root/.run
# A fresh ledger each time: the fake upstream forgets its tasks when it stops.
rm -rf "$state"
mkdir -p "$state"
chmod 700 "$state"
port=${PORT:-8080}
key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$key" >"$state/api-key"
chmod 600 "$state/api-key"

rm -f "$state/fake.port"
VIDU_FAKE_API_KEY=$key "$root/build/fake-upstream" --listen 127.0.0.1:0 --port-file "$state/fake.port" \
        --complete-after 2000 --quiet &
fake=$!
trap 'kill $fake $daemon 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do [ -s "$state/fake.port" ] && break; sleep 0.05; done
fake_port=$(cat "$state/fake.port")

cat >"$state/vidu-upscaled.conf" <<CONF
# Written by scripts/run.sh: the bundled fake upstream on loopback.
[server]
listen = 127.0.0.1:$port
[upstream]
base_url = http://127.0.0.1:$fake_port
api_key_file = $state/api-key
poll_interval = 1s
[store]
path = $state/ledger.db
[retry]
initial_delay = 1s
max_delay = 30s
CONF

echo "run: fake upstream on 127.0.0.1:$fake_port; daemon on 127.0.0.1:$port (Ctrl-C stops both)"
"$root/build/vidu-upscaled" -c "$state/vidu-upscaled.conf" &
daemon=$!
for _ in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.05
done
fixtures=$root/../shared/fixtures
[ -f "$fixtures/task-success-v1.json" ] || fixtures=$root/tests/fixtures
echo "run: sending a sample notification ($fixtures/task-success-v1.json):"
curl -sS -X POST -H 'Content-Type: application/json' --data-binary @"$fixtures/task-success-v1.json" \
        "http://127.0.0.1:$port/hooks/vidu"
echo
echo "run: follow it with: journalctl -f SYSLOG_IDENTIFIER=vidu-upscaled"
wait $daemon
