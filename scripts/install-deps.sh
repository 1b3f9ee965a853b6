#!/usr/bin/env bash
# install-deps.sh: installs, from Debian 12's packages, what vidu-upscaled needs to build, run and test.
# The packaging test needs dpkg-dev, debhelper, fakeroot, lintian, mandoc, man-db and promtool
# (Debian ships it in prometheus; where services start on install, that starts a Prometheus server
# too, which nothing here uses: stop it if it bothers you).
set -euo pipefail

packages=(build-essential cmake pkg-config clang clang-format
          libmicrohttpd-dev libcurl4-openssl-dev libjson-c-dev libsystemd-dev libsqlite3-dev libssl-dev
          libinih-dev libcmocka-dev
          libpq-dev postgresql pgbouncer
          systemd sqlite3 python3 curl valgrind openssl
          dpkg-dev debhelper fakeroot lintian mandoc man-db prometheus
          gnuplot-nox util-linux)

missing=()
for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
                echo "install-deps: missing packages: ${missing[*]} (run as root, or install them)" >&2
                exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
