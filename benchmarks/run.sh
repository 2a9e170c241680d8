#!/usr/bin/env bash
# run.sh - the one command for the performance benchmark (run as root, from anywhere):
#
#     bash benchmarks/run.sh [--runs N] [--rebuild] [--detector-args "ARGS"] [--no-install]
#
#   1. installs what is missing: Suricata 7 from bookworm-backports (packaging/install-suricata.sh,
#      shared with the test suite), tcpdump,
#      tshark and the lab's servers/clients (dnsmasq, nginx, dig, curl, openssl, ethtool);
#      creates .venv with the detector if it is missing;
#   2. builds benchmarks/_work/bench.pcap + truth.json with make_capture.py if they are
#      missing (or with --rebuild): ~1 minute of real traffic between two network
#      namespaces, then a tshark check of the ground truth;
#   3. writes the Suricata rules (`detector export suricata`, via suricata_rules.py) and
#      validates them with suricata -T;
#   4. runs detector, suricata and tcpdump N times each, alternating (run_bench.py), and
#      writes benchmarks/_work/results.md (+ results.json).
# The matcher micro-benchmark is separate: .venv/bin/python benchmarks/matcher_bench.py
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
WORK=$HERE/_work
RUNS=5
REBUILD=0
INSTALL=1
DET_ARGS=""

while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --runs=*) RUNS=${1#*=}; shift ;;
        --rebuild) REBUILD=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        --detector-args) DET_ARGS=$2; shift 2 ;;
        --detector-args=*) DET_ARGS=${1#*=}; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, packet capture, apt-get)"

# ---------------------------------------------------------------------------
# 1. peers
# ---------------------------------------------------------------------------
suricata_ok() { command -v suricata >/dev/null 2>&1 && suricata -V 2>/dev/null | grep -q 'version 7\.'; }

if [ "$INSTALL" = 1 ]; then
    need=()
    for pair in tcpdump:tcpdump tshark:tshark dnsmasq:dnsmasq-base nginx:nginx-light dig:bind9-dnsutils \
                curl:curl openssl:openssl ethtool:ethtool ip:iproute2 tc:iproute2; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        log "apt-get update"
        apt-get update -qq
        log "installing ${need[*]}"
        apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    suricata_ok || bash "$REPO/packaging/install-suricata.sh"   # Suricata 7 from bookworm-backports
fi
suricata_ok || die "Suricata 7 is not installed (drop --no-install)"
command -v tcpdump >/dev/null && command -v tshark >/dev/null || die "tcpdump/tshark missing"

if [ ! -x "$REPO/.venv/bin/detector" ]; then
    log "creating .venv with the detector"
    (cd "$REPO" && python3 -m venv .venv && .venv/bin/pip install -q -e .)
fi
PY=$REPO/.venv/bin/python
# Byte-compile the detector as an installed package is (pip writes the .pyc files of a wheel):
# an editable install under PYTHONDONTWRITEBYTECODE=1 would recompile every module on every
# timed run (about 0.1 s of a replay).
"$PY" -m compileall -q "$REPO/detector" >/dev/null

# ---------------------------------------------------------------------------
# 2. capture
# ---------------------------------------------------------------------------
mkdir -p "$WORK"
if [ "$REBUILD" = 1 ] || [ ! -s "$WORK/bench.pcap" ] || [ ! -s "$WORK/truth.json" ]; then
    log "building the benchmark capture (make_capture.py)"
    rc=0
    "$PY" "$HERE/make_capture.py" || rc=$?
    if [ "$rc" = 3 ]; then
        log "WARNING: the capture was built with problems (see $WORK/capture_info.json)"
    elif [ "$rc" != 0 ]; then
        die "make_capture.py failed ($rc)"
    fi
else
    log "using the existing capture $WORK/bench.pcap (--rebuild to make a new one)"
fi

# ---------------------------------------------------------------------------
# 3. rules
# ---------------------------------------------------------------------------
log "writing and validating the Suricata rules"
"$PY" "$HERE/suricata_rules.py" --out "$WORK/kaspersky.rules" --validate

# ---------------------------------------------------------------------------
# 4. timing
# ---------------------------------------------------------------------------
log "timing: $RUNS runs each of detector, suricata, tcpdump (alternating)"
"$PY" "$HERE/run_bench.py" --runs "$RUNS" "--detector-args=$DET_ARGS"
log "results in $WORK/results.md"
