#!/usr/bin/env bash
# live_load.sh - load test of `detector live` (run as root):
#
#     sudo bash benchmarks/live_load.sh
#
# tcpreplay pushes a mixed capture through a veth pair at increasing packet rates; on the
# other end `detector live` captures it, with 1 and then 2 workers.  Per run the table
# gives the packets/s tcpreplay really offered, the kernel and interface drops the capture
# reported (libpcap statistics, summed over the capture handles), how many packets reached
# Python, and the share of the Kaspersky contacts that a replay of the same capture alerts
# (`detector replay`, the reference) that the live run alerted too.  When the capture has a
# `<capture>.contacts.json` beside it (benchmarks/adversarial.py writes one per flood), the
# hidden contacts the live run and the replay alerted are counted too.  After tcpreplay
# ends, the run waits until the workers are idle (they may lag behind the capture: "idle
# after"), then, just before the detector is stopped, reads from /proc the peak RSS (VmHWM)
# of the controller and of every worker (its children), with the capture rings each maps.
#
# Traffic stays inside two network namespaces made here (kdl-lt-tx, kdl-lt-rx, joined by
# one veth pair, MTU 1500, offloads off); nothing touches the host's interfaces.  The
# namespaces and every process started are removed on exit.
#
# Environment:
#   PCAP=FILE      capture to replay (default benchmarks/_work/bench.pcap if it exists, else
#                  the pcaps/*.pcap merged with mergecap and looped LOOP times)
#   PCAPS="A B"    several captures, one after the other (one table); e.g. the floods:
#                  PCAPS="$(ls benchmarks/_work/adversarial/*-250000.pcap)"
#   RATES="..."    packets/s for tcpreplay --pps, "max" for --topspeed (default below)
#   WORKERS="1 2"  worker counts to test
#   BUFFER=64MiB   --buffer-size per capture handle
#   LOOP=50        --loop for the small fallback capture
#   OUT=FILE       also write the table (markdown) to FILE
#   METRICS=1      also scrape the Prometheus metrics (bounded tables, per run) just before
#                  the stop, into metrics-<capture>-<run>.prom in the work directory (KEEP_WORK=1)
# Needs: iproute2, ethtool, tcpreplay, wireshark-common (mergecap, only for the fallback).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-$REPO/.venv/bin/python}
RATES=${RATES:-"10000 25000 50000 100000 max"}
WORKERS=${WORKERS:-"1 2"}
BUFFER=${BUFFER:-64MiB}
NS_TX=kdl-lt-tx
NS_RX=kdl-lt-rx
DET_PID=

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: sudo bash $0"
for t in ip ethtool tcpreplay "$PY"; do
    command -v "$t" >/dev/null 2>&1 || die "missing tool: $t (apt-get install tcpreplay iproute2 ethtool)"
done

WORK=$(mktemp -d /tmp/kdl-load.XXXXXX)
chmod 755 "$WORK"

cleanup() {
    local rc=$?
    set +e
    if [ -n "$DET_PID" ]; then kill -TERM "$DET_PID" 2>/dev/null; sleep 1; kill -KILL "$DET_PID" 2>/dev/null; wait "$DET_PID" 2>/dev/null; fi
    for ns in $NS_TX $NS_RX; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" -ne 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---------------------------------------------------------------------------- the captures
if [ -z "${PCAPS:-}" ] && [ -z "${PCAP:-}" ]; then
    if [ -f "$REPO/benchmarks/_work/bench.pcap" ]; then
        PCAP=$REPO/benchmarks/_work/bench.pcap
    else
        command -v mergecap >/dev/null || die "no benchmarks/_work/bench.pcap and no mergecap to merge pcaps/*.pcap"
        PCAP=$WORK/merged.pcap
        mergecap -a -F pcap -w "$PCAP" "$REPO"/pcaps/*.pcap
        LOOP=${LOOP:-50}
    fi
fi
LOOP=${LOOP:-1}
PCAPS=${PCAPS:-$PCAP}
for p in $PCAPS; do [ -r "$p" ] || die "cannot read capture $p"; done

# The code and the signatures, frozen: the reference and the live runs use the same (the
# checkout may change while the benchmark runs).  Run from $WORK so that the copy, not the
# checkout, is imported.
mkdir -p "$WORK/src"
cp -r "$REPO/detector" "$REPO/signatures" "$WORK/src/"
chmod -R a+rX "$WORK/src"
export PYTHONPATH=$WORK/src${PYTHONPATH:+:$PYTHONPATH}
SIGS=(--signatures "$WORK/src/signatures")
cd "$WORK"
log "code and signatures copied to $WORK/src (load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs)"

# ---------------------------------------------------------------------------- the lab
for ns in $NS_TX $NS_RX; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add tx0 netns $NS_TX mtu 1500 type veth peer name rx0 netns $NS_RX mtu 1500
for x in "$NS_TX tx0" "$NS_RX rx0"; do
    set -- $x
    ip netns exec "$1" ethtool -K "$2" tso off gso off gro off tx off rx off >/dev/null 2>&1 || true
    ip netns exec "$1" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 >/dev/null
    ip -n "$1" link set "$2" up
done

# Is the subcommand registered in cli.py yet?  Otherwise the module entry point.
DET=(-m detector live)
METRICS_ADDR=127.0.0.1:9108  # inside $NS_RX: its own loopback

compare() {  # compare <live.json> -> "share missed extra total alerts hidden-live hidden-replay hidden-total"
    "$PY" - "$REF" "$1" "$CONTACTS" <<'PY'
import json, os, sys
def read(path):
    keys, seen, n = set(), set(), 0
    with open(path) as fh:
        for line in fh:
            try:
                a = json.loads(line)
            except ValueError:
                continue
            n += 1
            m = a["alert"]["metadata"]
            keys.add((a["src_ip"], m["evidence"][0], m["hostname"][0], a["alert"]["signature_id"]))
            seen.add((a["src_ip"], m["hostname"][0]))  # as benchmarks/adversarial.py counts a hidden contact
    return keys, seen, n
(ref, ref_seen, _), (live, live_seen, n) = read(sys.argv[1]), read(sys.argv[2])
hidden = []
if os.path.exists(sys.argv[3]):
    with open(sys.argv[3]) as fh:
        hidden = [(c[1], c[2]) for c in json.load(fh)]
hit = len(ref & live)
print(f"{100.0 * hit / max(1, len(ref)):.1f} {len(ref) - hit} {len(live - ref)} {len(ref)} {n} "
      f"{sum(c in live_seen for c in hidden)} {sum(c in ref_seen for c in hidden)} {len(hidden)}")
PY
}

peak_rss() {  # peak_rss <controller pid> -> "controller worker[/worker...]", each "MB (rings MB)"
    # VmHWM, and in brackets the capture rings it maps now (PACKET_MMAP, --buffer-size per
    # handle: kernel memory, counted in the RSS of every process that maps it).
    local kids pid ws=()
    one() {
        local hwm rings
        hwm=$(awk '/^VmHWM:/ { printf "%d", ($2 + 512) / 1024 }' "/proc/$1/status" 2>/dev/null) || hwm="?"
        rings=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { s = ($6 ~ /^socket:/) } s && /^Rss:/ { t += $2 } END { printf "%d", (t + 512) / 1024 }' \
            "/proc/$1/smaps" 2>/dev/null) || rings="?"
        echo "${hwm}(${rings})"
    }
    kids=$(cat /proc/"$1"/task/*/children 2>/dev/null)
    for pid in $kids; do ws+=("$(one "$pid")"); done
    local IFS=/
    echo "$(one "$1") ${ws[*]:-none}"
}

drain() {  # drain <controller pid> -> seconds until its workers are idle (< 0.1 s CPU in 1 s), at most 300
    local kids n=0 a b
    kids=$(cat /proc/"$1"/task/*/children 2>/dev/null)
    cpu() { local p s=0; for p in $kids; do s=$((s + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$s"; }
    a=$(cpu)
    while [ "$n" -lt 300 ]; do
        sleep 1; n=$((n + 1)); b=$(cpu)
        [ $((b - a)) -lt $(($(getconf CLK_TCK) / 10)) ] && break
        a=$b
    done
    echo "$n"
}

ROWS=()
for src in $PCAPS; do
    name=$(basename "$src" .pcap)
    # A private copy: the reference and every run read the very same packets, even if the
    # capture is regenerated meanwhile.
    cp "$src" "$WORK/capture.pcap"
    CONTACTS=$WORK/capture.contacts.json
    rm -f "$CONTACTS"
    [ -f "$src.contacts.json" ] && cp "$src.contacts.json" "$CONTACTS"
    PCAP=$WORK/capture.pcap
    log "capture: $src, copied to $PCAP (loop $LOOP)"

    # ------------------------------------------------------------------------ the reference
    log "reference: detector replay (fast path)"
    REF=$WORK/replay-$name.json
    "$PY" -m detector replay -q "${SIGS[@]}" "$PCAP" >"$REF"  # looping adds no contact: the same keys again

    for w in $WORKERS; do
        for rate in $RATES; do
            tag="$name-w$w-$rate"
            live=$WORK/live-$tag.json
            err=$WORK/live-$tag.err
            metrics=()
            [ "${METRICS:-0}" = 1 ] && metrics=(--metrics "$METRICS_ADDR")
            ip netns exec $NS_RX "$PY" "${DET[@]}" -i rx0 --workers "$w" --buffer-size "$BUFFER" --settle 0 \
                --stats-interval 0 "${metrics[@]}" "${SIGS[@]}" --output "$live" 2>"$err" &
            DET_PID=$!  # `ip netns exec` execs: this is the controller
            for _ in $(seq 100); do grep -q "capturing on" "$err" 2>/dev/null && break; sleep 0.1; done
            grep -q "capturing on" "$err" || { cat "$err" >&2; die "detector did not start"; }
            if [ "$rate" = max ]; then speed=(--topspeed); else speed=(--pps="$rate"); fi
            log "run: $name, $w worker(s), rate $rate (load average $(cut -d' ' -f1 /proc/loadavg))"
            ip netns exec $NS_TX tcpreplay -q -i tx0 "${speed[@]}" --loop="$LOOP" "$PCAP" >"$WORK/tcpreplay-$tag.log" 2>&1 \
                || { cat "$WORK/tcpreplay-$tag.log" >&2; die "tcpreplay failed"; }
            waited=$(drain "$DET_PID")  # let the workers empty their rings
            if [ "${METRICS:-0}" = 1 ]; then
                ip netns exec $NS_RX "$PY" -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$METRICS_ADDR/metrics', timeout=5).read().decode())" \
                    >"$WORK/metrics-$tag.prom" 2>&1 || log "  metrics scrape failed (see $WORK/metrics-$tag.prom)"
            fi
            read -r rss_ctl rss_workers < <(peak_rss "$DET_PID")
            kill -TERM "$DET_PID"
            wait "$DET_PID" || die "detector exited with $? (see $err)"
            DET_PID=
            sent=$(sed -n 's/.*Actual: \([0-9]*\) packets.*/\1/p' "$WORK/tcpreplay-$tag.log" | head -1)
            pps=$(sed -n 's/.*Rated: .* \([0-9.]*\) pps.*/\1/p' "$WORK/tcpreplay-$tag.log" | head -1)
            mbps=$(sed -n 's/.*Rated: .*, \([0-9.]*\) Mbps.*/\1/p' "$WORK/tcpreplay-$tag.log" | head -1)
            line=$(grep "stats:" "$err" | tail -1)
            num() { echo "$line" | sed -n "s/.*$1 \([0-9,]*\).*/\1/p" | tr -d ,; }
            recv=$(num "capture filter passed"); kdrop=$(num "kernel drops"); idrop=$(num "interface drops")
            python=$(num "to Python"); backlog=$(num "backlog drops")
            read -r share missed extra total alerts hid_live hid_ref hid_total < <(compare "$live")
            hidden="-"
            [ "$hid_total" -gt 0 ] && hidden="$hid_live/$hid_total (replay $hid_ref)"
            ROWS+=("| $name | $w | ${rate} | ${pps%.*} | ${mbps} | ${sent} | ${recv} | ${kdrop} | ${idrop} | ${backlog} | ${python} | ${share}% (${missed} of ${total} missed, ${extra} extra) | ${hidden} | ${alerts} | ${waited} | ${rss_workers} | ${rss_ctl} |")
            log "  offered ${pps%.*} pps; kernel drops $kdrop; contacts ${share}%; hidden $hidden; drained in $waited s; peak RSS (rings) workers $rss_workers MB, controller $rss_ctl MB"
        done
    done
    rm -f "$PCAP"
done

{
    echo "| capture | workers | --pps | offered pkt/s | offered Mbit/s | packets sent | passed BPF | kernel drops | interface drops | backlog drops | to Python | Kaspersky contacts alerted (vs replay) | hidden contacts alerted | alerts | idle after (s) | peak RSS per worker, MB (capture rings) | peak RSS controller, MB (capture rings) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "${OUT:-/dev/null}"
