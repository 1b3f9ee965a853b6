#!/usr/bin/env bash
# package.sh: builds the Debian package from this tree, in a copy (the tree stays clean), and
# leaves dist/vidu-upscaled_<version>_<arch>.deb. As root it first installs the build
# dependencies (debian/control's Build-Depends); otherwise they must already be there.
# DEB_BUILD_OPTIONS is passed through (e.g. nocheck to skip the unit tests).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# One version: CMakeLists' project VERSION is the one debian/changelog must carry.
version=$(sed -n 's/^project(vidu-upscaled VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
changelog=$(dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null ||
        sed -n '1s/^vidu-upscaled (\([^)]*\)).*/\1/p' debian/changelog)
if [ -z "$version" ] || [ "$version" != "$changelog" ]; then
        echo "package: CMakeLists.txt says version '$version', debian/changelog '$changelog':" \
                "make them the same (dch -v $version)" >&2
        exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        # Build-Depends straight from debian/control (nothing to do when all are there).
        if ! dpkg-checkbuilddeps debian/control >/dev/null 2>&1; then
                apt-get update -qq
                apt-get build-dep -y -qq --no-install-recommends ./
        fi
fi
if ! dpkg-checkbuilddeps debian/control; then
        echo "package: build dependencies missing (run as root to install them)" >&2
        exit 1
fi

work=$(mktemp -d /tmp/vidu-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The tracked files as they are in the work tree (committed or not), nothing else: no build/,
# no ledgers, no dist/.
mkdir "$work/vidu-upscaled-$version"
git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
        xargs -0 cp --parents -t "$work/vidu-upscaled-$version"
(cd "$work/vidu-upscaled-$version" && dpkg-buildpackage -us -uc -b -j"$(nproc)" >"$work/build.log" 2>&1) || {
        tail -n 60 "$work/build.log" >&2
        echo "package: dpkg-buildpackage failed (the last 60 lines above)" >&2
        exit 1
}

arch=$(dpkg-architecture -qDEB_HOST_ARCH)
mkdir -p dist
rm -f dist/vidu-upscaled_*.deb
cp "$work/vidu-upscaled_${version}_${arch}.deb" dist/
echo "package: dist/vidu-upscaled_${version}_${arch}.deb"
