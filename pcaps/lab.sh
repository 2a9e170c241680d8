# lab.sh - helpers shared by the scripts that build a network-namespace lab and
# record test captures (sourced, never run):
#
#     pcaps/make_captures.sh                   namespaces kdt-*
#     pcaps/quic/make_quic_captures.sh         namespaces kdq-*
#     pcaps/tunnels/make_tunnel_captures.sh    namespaces kdtun-*
#     pcaps/issue4/make_issue4_captures.sh     namespaces kd4-*
#     pcaps/hostile/make_hostile_capture.sh    namespaces kdh-*
#
# A script sets `set -euo pipefail`, sources this file, names its namespaces and
# then starts the lab:
#
#     source "$HERE/../lab.sh"
#     ALL_NS="$NS_C $NS_S"              # every namespace the script creates
#     lab_require ip tcpdump ...        # must be root; each tool must be installed
#     lab_begin kdx-captures            # traps, leftovers removed, WORK=/tmp/kdx-captures.XXXXXX
#
# Cleanup guarantee: from lab_begin on, on every exit (success, error, `die`,
# SIGINT, SIGTERM, SIGHUP) each process started with bg_ns / run_chromium is
# killed by its PID, every process still inside one of our own namespaces is
# killed by PID, the namespaces in ALL_NS and LAB_EXTRA_NS are deleted with
# their /etc/netns/<ns> files, and WORK is removed (kept when KEEP_WORK=1 or the
# run failed).  Only our own namespaces and PIDs are touched, so the labs can
# run side by side.
#
# Settings (assign after sourcing this file; defaults in brackets):
#   ALL_NS               namespaces of the lab, torn down at start and on exit
#   LAB_EXTRA_NS         more namespaces to tear down, e.g. a scratch probe []
#   LAB_RMDIR_ETC_NETNS  1: teardown also removes /etc/netns itself if empty [0]
#   CAP_OPTS             array of tcpdump options for every cap_start,
#                        e.g. (--immediate-mode) [()]
#   CAP_DRAIN            seconds cap_stop waits for the last packets [0.8]
#   NOOFFLOAD_VLAN       1: nooffload also switches VLAN tag offloads off [0]
# Environment: KEEP_WORK=1 keeps $WORK after a successful run.

PIDS=()          # every background process we start (killed by PID on exit)
LASTPID=         # the last one bg_ns started
CAP_PID=         # the last tcpdump cap_start started
CH_RC=           # exit status of the last run_chromium
WORK=            # temporary work directory (lab_begin)

ALL_NS=
LAB_EXTRA_NS=
LAB_RMDIR_ETC_NETNS=0
CAP_OPTS=()
CAP_DRAIN=0.8
NOOFFLOAD_VLAN=0

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

lab_require() {  # lab_require <tool>...: run as root, every tool installed
    local t
    [ "$(id -u)" -eq 0 ] || die "run as root: sudo bash $0"
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || die "missing tool: $t (see header for packages)"
    done
}

# ---------------------------------------------------------------------------
# cleanup (teardown_lab also removes the leftovers of an interrupted earlier run)
# ---------------------------------------------------------------------------
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

teardown_lab() {
    local ns p
    for ns in $ALL_NS $LAB_EXTRA_NS; do
        ns_exists "$ns" || continue
        # processes still living in our own namespaces: end them by PID
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
    done
    sleep 0.3
    for ns in $ALL_NS $LAB_EXTRA_NS; do
        if ns_exists "$ns"; then
            for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        fi
        rm -rf "/etc/netns/$ns"
    done
    if [ "$LAB_RMDIR_ETC_NETNS" = 1 ]; then
        rmdir /etc/netns 2>/dev/null || true     # only if empty
    fi
}

lab_cleanup() {  # the EXIT trap
    local rc=$? p
    set +e
    trap - EXIT INT TERM HUP
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    teardown_lab
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    if [ "$rc" -ne 0 ]; then log "FAILED (exit $rc)"; fi
    exit "$rc"
}

lab_begin() {  # lab_begin <prefix>: install the traps, tear down leftovers, WORK=/tmp/<prefix>.XXXXXX
    trap lab_cleanup EXIT
    trap 'exit 130' INT TERM HUP
    teardown_lab
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    log "work directory: $WORK"
}

# ---------------------------------------------------------------------------
# namespaces
# ---------------------------------------------------------------------------
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

ns_add() {  # ns_add <ns>...: create; IPv6 without DAD, RAs or router solicitations; lo up
    local ns
    for ns in "$@"; do
        ip netns add "$ns"
        inns "$ns" sysctl -q -w net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
            net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
            net.ipv6.conf.all.router_solicitations=0 net.ipv6.conf.default.router_solicitations=0 >/dev/null
        ip -n "$ns" link set lo up
    done
}

ns_etc() {  # ns_etc <nameserver> <ns>...: /etc/netns/<ns>/{resolv.conf,hosts} (ip netns exec uses them)
    local srv=$1 ns; shift
    for ns in "$@"; do
        mkdir -p "/etc/netns/$ns"
        printf 'nameserver %s\noptions timeout:2 attempts:2\n' "$srv" >"/etc/netns/$ns/resolv.conf"
        printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"/etc/netns/$ns/hosts"
    done
}

nooffload() {  # nooffload <ns> <iface>: segments and checksums as on a real Ethernet
    inns "$1" ethtool -K "$2" tso off gso off gro off tx off rx off >/dev/null 2>&1 \
        || inns "$1" ethtool -K "$2" tso off gso off gro off >/dev/null 2>&1 || true
    if [ "$NOOFFLOAD_VLAN" = 1 ]; then
        inns "$1" ethtool -K "$2" txvlan off rxvlan off >/dev/null 2>&1 || true
    fi
}

# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------
# client <ns> <command...>: run in a namespace (30 s at most), log to $CLOG, fail on error
client() {
    local ns=$1; shift
    printf '\n### [%s] %s\n' "$ns" "$*" >>"$CLOG"
    ip netns exec "$ns" timeout -k 3 30 "$@" >>"$CLOG" 2>&1 \
        || die "client command failed in $ns: $* (see $CLOG)"
}

# client_rc <want-rc> <ns> <command...>: the same, but its exit status must be want-rc
client_rc() {
    local want=$1 ns=$2 rc=0; shift 2
    printf '\n### [%s] (expect exit %s) %s\n' "$ns" "$want" "$*" >>"$CLOG"
    ip netns exec "$ns" timeout -k 3 30 "$@" >>"$CLOG" 2>&1 || rc=$?
    [ "$rc" -eq "$want" ] || die "client command in $ns exited $rc, not $want: $* (see $CLOG)"
}

bg_ns() {  # bg_ns <ns> <logfile> <command...>: start in the background, PID in LASTPID
    local ns=$1 logf=$2; shift 2
    ip netns exec "$ns" "$@" >"$logf" 2>&1 &
    LASTPID=$!
    PIDS+=("$LASTPID")
}

stop_pid() {  # stop_pid <pid> [signal]: signal (TERM), wait up to 5 s, then KILL
    local p=$1 sig=${2:-TERM} i
    kill "-$sig" "$p" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

wait_for() {  # wait_for <seconds> <command...>: until the command succeeds
    local s=$1 i; shift
    for i in $(seq $((s * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

# run_chromium <ns> <dir> <url> [chromium flags...]: headless Chromium in <ns>, in a
# session of its own, HOME and profile under <dir>; --dump-dom <url> to <dir>/dom.html,
# its messages to <dir>/chromium.log.  Waits for it (60 s at most), then kills whatever
# is left in its process group; its exit status in CH_RC.
run_chromium() {
    local ns=$1 dir=$2 url=$3 pid; shift 3
    mkdir -p "$dir/home" "$dir/profile"
    ip netns exec "$ns" setsid env HOME="$dir/home" XDG_CONFIG_HOME="$dir/home/.config" XDG_CACHE_HOME="$dir/home/.cache" \
        timeout -k 5 60 chromium --headless --no-sandbox --disable-gpu --no-first-run --no-default-browser-check \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-default-apps --disable-extensions --disable-breakpad --disable-domain-reliability \
        --disable-client-side-phishing-detection --no-pings --password-store=basic \
        --user-data-dir="$dir/profile" "$@" \
        --dump-dom "$url" >"$dir/dom.html" 2>"$dir/chromium.log" &
    pid=$!
    PIDS+=("$pid")
    CH_RC=0
    wait "$pid" || CH_RC=$?
    kill -KILL -- "-$pid" 2>/dev/null || true      # any helper left in its process group
}

# ---------------------------------------------------------------------------
# captures and certificates
# ---------------------------------------------------------------------------
cap_start() {  # cap_start <ns> <iface> <outfile> [tcpdump args...]: PID in CAP_PID
    local ns=$1 ifc=$2 out=$3; shift 3
    local lf="$WORK/tcpdump.$(basename "$out").log"
    bg_ns "$ns" "$lf" tcpdump -n -U "${CAP_OPTS[@]}" -Z root -i "$ifc" "$@" -w "$out"
    CAP_PID=$LASTPID
    wait_for 10 grep -q 'listening on' "$lf" || die "tcpdump did not start ($lf)"
    sleep 0.2
}

cap_stop() {  # cap_stop [pid]: stop a capture (the last one started by default)
    local p=${1:-$CAP_PID}
    sleep "$CAP_DRAIN"       # let the last packets (FIN/ACKs, CONNECTION_CLOSE) through
    stop_pid "$p" INT
}

# selfsigned <keyfile> <certfile> <cn> [subjectAltName]: a P-256 certificate
# (SAN DNS:<cn> by default); openssl's messages go to stdout/stderr
selfsigned() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=$3" -addext "subjectAltName=${4:-DNS:$3}" -keyout "$1" -out "$2"
}
