#!/bin/sh
# Installs the Debian packages of the real clients and servers the tests
# start (one package a line in tests/debian-packages.txt), if any is
# missing. Uses apt-get directly as root, else through sudo. Fails, saying
# which, if a package can't be installed: the tests need every one.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
missing=""
for pkg in $(grep -v '^#' "$here/debian-packages.txt"); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests need these Debian packages (or the same programs):$missing" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages:$missing" >&2
$sudo apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
