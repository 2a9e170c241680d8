#!/usr/bin/env bash
# install-suricata.sh - make sure Suricata 7 and suricata-update are installed (Debian 12:
# from bookworm-backports); the one place that knows how.
#
#     sudo bash packaging/install-suricata.sh
#
# Used by tests/run.sh (EVE layout, exporter and ingest tests against real Suricata 7)
# and benchmarks/run.sh.  Does nothing when `suricata -V` already says 7.x.
# Adds `deb <this machine's Debian mirror> bookworm-backports main` to
# /etc/apt/sources.list.d/backports.list when missing, then
# `apt-get install -t bookworm-backports suricata`.  Exit status 0 when Suricata 7 is
# there at the end.
set -euo pipefail

suricata_ok() { command -v suricata >/dev/null 2>&1 && suricata -V 2>/dev/null | grep -q 'version 7\.'; }
suricata_ok && command -v suricata-update >/dev/null 2>&1 && exit 0
[ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 || { echo "install-suricata: needs root and apt-get" >&2; exit 1; }

mirror_host() {  # the Debian mirror this machine already uses (deb822 or one-line format)
    local u
    u=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$u" ]; then
        u=$(awk '$1 == "deb" && $0 ~ /bookworm/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    echo "${u:-http://deb.debian.org/debian}"
}

export DEBIAN_FRONTEND=noninteractive
line="deb $(mirror_host) bookworm-backports main"
if ! grep -qsF "$line" /etc/apt/sources.list.d/backports.list; then
    echo "install-suricata: adding bookworm-backports in /etc/apt/sources.list.d/backports.list" >&2
    echo "$line" >/etc/apt/sources.list.d/backports.list
fi
apt-get update -qq
echo "install-suricata: installing suricata from bookworm-backports" >&2
apt-get install -y -qq --no-install-recommends -t bookworm-backports suricata suricata-update >/dev/null
suricata_ok
