#!/usr/bin/env bash
# test-package.sh: builds the Debian package, checks it with lintian, installs it on this machine
# with apt-get, checks what it installed and that it started and enabled nothing, runs the
# installed binary, units and man pages through their checkers, checks the alert rules with
# promtool, then purges it and checks that nothing of it is left. As root (it installs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)

fail() {
        echo "test-package: FAIL: $*" >&2
        exit 1
}
step() { echo "-- [$(($(date +%s) - start)) s] $*"; }

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and purges the package"
if dpkg-query -W -f='${Status}' vidu-upscaled 2>/dev/null | grep -q 'installed\|config-files'; then
        fail "vidu-upscaled is already installed on this machine; purge it first (apt-get purge vidu-upscaled)"
fi
for p in /etc/vidu-upscaled /usr/bin/vidu-upscaled /var/lib/vidu-upscaled /var/lib/private/vidu-upscaled; do
        [ ! -e "$p" ] || fail "$p exists (a cmake --install or an earlier run?); remove it first"
done

tmp=$(mktemp -d /tmp/vidu-test-package.XXXXXX)
made_private=
daemon_pid=
fake_pid=
cleanup() {
        # Whatever failed, leave the machine as it was.
        for pid in $daemon_pid $fake_pid; do kill "$pid" 2>/dev/null || true; done
        wait 2>/dev/null || true
        if dpkg-query -W -f='${Status}' vidu-upscaled 2>/dev/null | grep -q 'installed\|config-files'; then
                DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq vidu-upscaled >/dev/null 2>&1 || true
        fi
        rm -rf /var/lib/private/vidu-upscaled /var/lib/vidu-upscaled
        [ -z "$made_private" ] || rmdir /var/lib/private 2>/dev/null || true
        rm -rf "$tmp"
}
trap cleanup EXIT

# Everything on the machine named like the package, before: the purge must come back to it.
# Not /var/cache/man: man-db caches there the pages this test displays (when its cat directories
# exist), which is man-db's, not the package's, and mandb drops them once the pages are gone.
snapshot() {
        find /etc /usr /var /lib /opt -xdev -iname '*vidu*' -not -path '/var/cache/man/*' \
                2>/dev/null | sort
}
snapshot >"$tmp/before"

step "build (scripts/package.sh; the unit tests ran in stage 1, so nocheck)"
DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" bash scripts/package.sh >"$tmp/package.log" 2>&1 ||
        { cat "$tmp/package.log" >&2; fail "scripts/package.sh"; }
version=$(sed -n 's/^project(vidu-upscaled VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=$root/dist/vidu-upscaled_${version}_${arch}.deb
[ -f "$deb" ] || fail "$deb was not made"

step "lintian (no errors, no warnings)"
lintian --fail-on error,warning "$deb" >"$tmp/lintian" 2>&1 ||
        { cat "$tmp/lintian" >&2; fail "lintian"; }
grep -E '^[EW]: ' "$tmp/lintian" && fail "lintian reported the above"

step "Depends: exactly the packages of the libraries the binary links"
dpkg-deb -x "$deb" "$tmp/x"
needed=$(objdump -p "$tmp/x/usr/bin/vidu-upscaled" | awk '$1 == "NEEDED" { print $2 }')
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
patterns=()
for so in $needed; do patterns+=("*/$multiarch/$so"); done
dpkg -S "${patterns[@]}" >"$tmp/owners" 2>/dev/null || true
want=$(sed -n 's/^\([^:,]*\)\(:[a-z0-9]*\)\?: .*/\1/p' "$tmp/owners" | sort -u)
[ "$(sed 's/.*\///' "$tmp/owners" | sort -u | wc -l)" -eq "$(echo $needed | wc -w)" ] ||
        fail "not every library the binary links belongs to a package: $needed"
have=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -v '^$' | sort -u)
[ -n "$want" ] && [ "$want" = "$have" ] ||
        fail "Depends is [$(echo $have)], the linked libraries come from [$(echo $want)]"

step "apt-get install"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" >"$tmp/install.log" 2>&1 ||
        { cat "$tmp/install.log" >&2; fail "apt-get install"; }

step "installed files (dpkg -L)"
dpkg -L vidu-upscaled | while read -r f; do [ -d "$f" ] || echo "$f"; done | sort >"$tmp/files"
sort >"$tmp/want" <<EOF
/etc/vidu-upscaled/vidu-upscaled.conf
/lib/systemd/system/vidu-upscaled.service
/lib/systemd/system/vidu-upscaled.socket
/usr/bin/vidu-upscaled
/usr/lib/systemd/catalog/vidu-upscaled.catalog
/usr/share/doc/vidu-upscaled/README.md
/usr/share/doc/vidu-upscaled/changelog.gz
/usr/share/doc/vidu-upscaled/copyright
/usr/share/doc/vidu-upscaled/examples/vidu-upscaled.conf
/usr/share/doc/vidu-upscaled/examples/vidu-upscaled.rules.yml
/usr/share/man/man5/vidu-upscaled.conf.5.gz
/usr/share/man/man8/vidu-upscaled.8.gz
EOF
diff -u "$tmp/want" "$tmp/files" || fail "the package installs other files than the above"
for f in $(cat "$tmp/files"); do [ -e "$f" ] || fail "$f listed but not on disk"; done
dpkg-query -W -f='${Conffiles}\n' vidu-upscaled | grep -q '^ /etc/vidu-upscaled/vidu-upscaled.conf ' ||
        fail "/etc/vidu-upscaled/vidu-upscaled.conf is not a conffile"
/usr/bin/vidu-upscaled --version | grep -qx "vidu-upscaled $version" || fail "--version is not $version"

step "nothing enabled, nothing started"
for u in vidu-upscaled.service vidu-upscaled.socket; do
        # deb-systemd-helper records each unit and the links enabling it would make (whether or
        # not systemd is PID 1): none of them may exist.
        state=/var/lib/systemd/deb-systemd-helper-enabled/$u.dsh-also
        [ -s "$state" ] || fail "deb-systemd-helper has no state for $u"
        # The state of enabled links mirrors them under its own directory (what was-enabled reads).
        while read -r l; do
                [ ! -e "$l" ] && [ ! -L "$l" ] || fail "$l exists: $u was enabled"
                [ ! -e "/var/lib/systemd/deb-systemd-helper-enabled/${l#/etc/systemd/system/}" ] ||
                        fail "deb-systemd-helper records $u as enabled"
        done <"$state"
done
for l in /etc/systemd/system/multi-user.target.wants/vidu-upscaled.service \
        /etc/systemd/system/sockets.target.wants/vidu-upscaled.socket; do
        [ ! -e "$l" ] && [ ! -L "$l" ] || fail "$l exists: the unit was enabled"
done
! grep -q 'deb-systemd-invoke.*start' /var/lib/dpkg/info/vidu-upscaled.postinst ||
        fail "postinst starts a unit"
running=$(find /proc -mindepth 2 -maxdepth 2 -name exe -lname /usr/bin/vidu-upscaled 2>/dev/null || true)
[ -z "$running" ] || fail "the installed daemon runs: $running"

step "journal catalog (systemd's trigger ran journalctl --update-catalog)"
ids=$(grep -c '^-- [0-9a-f]\{32\}' /usr/lib/systemd/catalog/vidu-upscaled.catalog)
listed=$(journalctl --list-catalog --no-pager 2>/dev/null | grep -c ' vidu-upscaled: ' || true)
[ "$ids" -gt 0 ] && [ "$listed" -eq "$ids" ] || fail "catalog database lists $listed of $ids entries"

step "--check-config against the installed configuration"
# As shipped, upstream.base_url is unset and no key is given: refused with 78, naming both.
set +e
env -i PATH=/usr/bin:/bin /usr/bin/vidu-upscaled --check-config >"$tmp/out" 2>"$tmp/err"
rc=$?
set -e
[ $rc -eq 78 ] || fail "--check-config on the shipped file: exit $rc, not 78"
grep -q 'upstream.base_url is required' "$tmp/err" || fail "the error does not name upstream.base_url: $(cat "$tmp/err")"
grep -q 'no API key' "$tmp/err" || fail "the error does not name the missing key: $(cat "$tmp/err")"
[ ! -s "$tmp/out" ] || fail "--check-config printed settings for a refused configuration"
# With the base URL from the environment and the key as a credential (as the unit gives it): 0.
mkdir -m 700 "$tmp/creds"
secret=test-package-secret-$$-$RANDOM
printf '%s' "$secret" >"$tmp/creds/api-key"
set +e
env -i PATH=/usr/bin:/bin VIDU_UPSCALED_UPSTREAM_BASE_URL=https://upstream.example.invalid \
        CREDENTIALS_DIRECTORY="$tmp/creds" /usr/bin/vidu-upscaled --check-config >"$tmp/out" 2>"$tmp/err"
rc=$?
set -e
[ $rc -eq 0 ] || fail "--check-config with base_url and key: exit $rc: $(cat "$tmp/err")"
grep -q 'https://upstream.example.invalid' "$tmp/out" || fail "the effective settings lack base_url"
! grep -q "$secret" "$tmp/out" "$tmp/err" || fail "--check-config printed the API key"

step "the installed daemon, configured: one notification becomes a succeeded upscale"
# The installed binary (Debian's flags, hardening) against the fake upstream from stage 1's
# build, on the installed configuration with the base URL, listener and ledger from the
# environment and the key as a credential, as the unit would hand it over.
fake=$root/build/fake-upstream
[ -x "$fake" ] || fail "$fake is missing: build the tree first (stage 1 of scripts/test.sh)"
# Polls a condition (a command) every 0.1 s for up to $1 seconds.
poll() {
        local until=$(($(date +%s) + $1))
        shift
        until "$@"; do
                [ "$(date +%s)" -lt "$until" ] || return 1
                sleep 0.1
        done
}
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s' "$key" >"$tmp/creds/api-key"
VIDU_FAKE_API_KEY=$key "$fake" --listen 127.0.0.1:0 --port-file "$tmp/fake.port" --complete-after 200 --quiet &
fake_pid=$!
poll 30 test -s "$tmp/fake.port" || fail "the fake upstream did not start"
env -i PATH=/usr/bin:/bin CREDENTIALS_DIRECTORY="$tmp/creds" \
        VIDU_UPSCALED_UPSTREAM_BASE_URL="http://127.0.0.1:$(cat "$tmp/fake.port")" \
        VIDU_UPSCALED_UPSTREAM_POLL_INTERVAL=200ms VIDU_UPSCALED_SERVER_LISTEN="unix:$tmp/http.sock" \
        VIDU_UPSCALED_STORE_PATH="$tmp/ledger.db" /usr/bin/vidu-upscaled >"$tmp/daemon.log" 2>&1 &
daemon_pid=$!
healthy() { [ "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$tmp/http.sock" http://x/healthz)" = 200 ]; }
poll 60 healthy || { cat "$tmp/daemon.log" >&2; fail "the installed daemon did not become healthy"; }
code=$(curl -s -o "$tmp/answer" -w '%{http_code}' --unix-socket "$tmp/http.sock" -H 'Content-Type: application/json' \
        --data-binary @tests/fixtures/task-success-v1.json http://x/hooks/vidu)
[ "$code" = 202 ] || fail "the notification was answered $code: $(cat "$tmp/answer")"
succeeded() { /usr/bin/vidu-upscaled jobs --store "$tmp/ledger.db" counts | grep -qx 'succeeded  *2'; }
poll 60 succeeded || { cat "$tmp/daemon.log" >&2; fail "the two creations did not end succeeded"; }
kill -TERM "$daemon_pid"
wait "$daemon_pid" || fail "the daemon exited $? after SIGTERM"
kill "$fake_pid"
wait "$fake_pid" 2>/dev/null || true
! grep -q "$key" "$tmp/daemon.log" || fail "the daemon printed the API key"

step "installed units: systemd-analyze verify and security"
systemd-analyze verify /lib/systemd/system/vidu-upscaled.service /lib/systemd/system/vidu-upscaled.socket \
        >"$tmp/verify" 2>&1 || { cat "$tmp/verify" >&2; fail "systemd-analyze verify"; }
[ ! -s "$tmp/verify" ] || { cat "$tmp/verify" >&2; fail "systemd-analyze verify printed the above"; }
score=$(systemd-analyze security --offline=true --no-pager /lib/systemd/system/vidu-upscaled.service 2>&1 |
        sed -n 's/.*Overall exposure level for vidu-upscaled\.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "systemd-analyze security printed no exposure level"
awk -v s="$score" 'BEGIN { exit !(s <= 1.5) }' || fail "exposure $score is above 1.5"
echo "   exposure $score"

step "man pages: found by name, rendered without warnings, mandoc -Tlint clean"
for page in "8 vidu-upscaled" "5 vidu-upscaled.conf"; do
        # shellcheck disable=SC2086
        MANWIDTH=80 man --warnings -P cat $page >"$tmp/man" 2>"$tmp/man.err" || fail "man $page"
        [ ! -s "$tmp/man.err" ] || { cat "$tmp/man.err" >&2; fail "man $page warned"; }
        grep -q '^FILES' "$tmp/man" || fail "man $page has no FILES section"
done
for f in /usr/share/man/man8/vidu-upscaled.8.gz /usr/share/man/man5/vidu-upscaled.conf.5.gz; do
        zcat "$f" | mandoc -Tlint || fail "mandoc -Tlint $f"
done

# The installed page documents exactly the keys the installed binary accepts.
/usr/bin/vidu-upscaled --list-keys | LC_ALL=C sort >"$tmp/keys"
zcat /usr/share/man/man5/vidu-upscaled.conf.5.gz | python3 -c '
import sys
sys.path.insert(0, "tests/integration")
from test_docs import man_keys
print("\n".join(sorted(man_keys(sys.stdin.read()))))' >"$tmp/man-keys"
diff -u "$tmp/keys" "$tmp/man-keys" || fail "the installed man page and --list-keys differ (above)"

step "alert rules: promtool check rules (installed copy) and promtool test rules"
cmp /usr/share/doc/vidu-upscaled/examples/vidu-upscaled.rules.yml contrib/prometheus/vidu-upscaled.rules.yml ||
        fail "the installed rules differ from contrib/"
promtool check rules /usr/share/doc/vidu-upscaled/examples/vidu-upscaled.rules.yml >/dev/null || fail "promtool check rules"
(cd contrib/prometheus && promtool test rules vidu-upscaled.rules.test.yml) >"$tmp/promtool" 2>&1 ||
        { cat "$tmp/promtool" >&2; fail "promtool test rules"; }

step "purge: nothing of it left"
# What a started service would have left: StateDirectory= under DynamicUser= (the ledger).
if [ ! -d /var/lib/private ]; then
        mkdir -m 700 /var/lib/private
        made_private=1
fi
mkdir -m 700 /var/lib/private/vidu-upscaled
: >/var/lib/private/vidu-upscaled/ledger.db
ln -s private/vidu-upscaled /var/lib/vidu-upscaled
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q vidu-upscaled >"$tmp/purge.log" 2>&1 ||
        { cat "$tmp/purge.log" >&2; fail "apt-get purge"; }
! dpkg-query -W vidu-upscaled >/dev/null 2>&1 || fail "dpkg still knows vidu-upscaled after the purge"
snapshot >"$tmp/after"
diff -u "$tmp/before" "$tmp/after" || fail "the purge left the files above"
[ ! -e /var/lib/vidu-upscaled ] && [ ! -L /var/lib/vidu-upscaled ] || fail "/var/lib/vidu-upscaled is left"
listed=$(journalctl --list-catalog --no-pager 2>/dev/null | grep -c ' vidu-upscaled: ' || true)
[ "$listed" -eq 0 ] || fail "the catalog database still lists $listed vidu-upscaled entries"
ls /var/lib/dpkg/info/vidu-upscaled.* >/dev/null 2>&1 && fail "dpkg's info files are left"

echo "test-package: OK in $(($(date +%s) - start)) s"
