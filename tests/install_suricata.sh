#!/usr/bin/env bash
# Installs Suricata 7 (and suricata-update) from Debian bookworm-backports when it is not
# already there: the one place that knows how, used by tests/run.sh and benchmarks/run.sh.
# The backports line uses the mirror this machine already uses (deb822 or one-line format).
# Run as root.  Exit status 0 when Suricata 7 is installed afterwards.
set -euo pipefail

suricata_ok() { command -v suricata >/dev/null 2>&1 && suricata -V 2>/dev/null | grep -q 'version 7\.'; }

mirror_host() {
    local u
    u=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$u" ]; then
        u=$(awk '$1 == "deb" && $0 ~ /bookworm/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    echo "${u:-http://deb.debian.org/debian}"
}

if suricata_ok && command -v suricata-update >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
line="deb $(mirror_host) bookworm-backports main"
if ! grep -qsF "bookworm-backports" /etc/apt/sources.list.d/backports.list; then
    echo "install_suricata.sh: adding bookworm-backports in /etc/apt/sources.list.d/backports.list" >&2
    echo "$line" >/etc/apt/sources.list.d/backports.list
fi
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends -t bookworm-backports suricata suricata-update >/dev/null
suricata_ok
