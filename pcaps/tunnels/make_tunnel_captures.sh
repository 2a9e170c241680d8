#!/usr/bin/env bash
# make_tunnel_captures.sh - regenerate the tunnelled test captures in pcaps/tunnels/
# (run as root):
#
#     sudo bash pcaps/tunnels/make_tunnel_captures.sh
#
# Lab (two network namespaces, nothing connected to the host, no default route;
# only 198.18.0.0/15 and 2001:db8::/32):
#
#   kdtun-client                                     kdtun-server
#   ul-c 198.18.200.1  ==== underlay veth, MTU 1600 ==== ul-s 198.18.200.2
#   vx-c 198.18.201.10      VXLAN VNI 4242, UDP 4789    vx-s 198.18.201.1
#        2001:db8:201::10   (kernel vxlan devices over        2001:db8:201::1
#                            the underlay, MTU 1500)
#   pl-c 198.18.202.10 ---- plain veth, MTU 1500 ------ pl-s 198.18.202.1
#        2001:db8:202::10                                    2001:db8:202::1
#
# (The namespaces are named kdtun-* so that they never clash with the kdt-*
# namespaces of pcaps/make_captures.sh, which may run at the same time.)
#
# Servers in kdtun-server: dnsmasq (s05.upd.kaspersky.com -> the server),
# openssl s_server -www on :443 (self-signed, CN kdt-test-server.invalid).
# Clients in kdtun-client, over IPv4 and IPv6, on each path:
#   dig s05.upd.kaspersky.com (A over IPv4, AAAA over IPv6) against dnsmasq;
#   curl -k https://activation-v2.kaspersky.com/ (--resolve to the server).
#
# How each capture was made
#   The kernel of the machine these were made on has vxlan but no geneve,
#   gre/gretap, erspan, ipip, 8021q, MPLS or tc classifier support (each was
#   tried with "ip link add ... type X" in a scratch namespace; the script
#   repeats that probe and logs the result).  So:
#
#   vxlan.pcap      REAL kernel tunnel: tcpdump -n on ul-s (the underlay) while
#                   the clients talk over vx-c/vx-s; the VXLAN headers, outer
#                   UDP ports and checksums are the kernel's.
#   inner.pcap      tcpdump -n on pl-s while the same clients talk over the
#                   plain veth: the real frames that every file below wraps.
#   gre.pcap gre-ip.pcap erspan1.pcap erspan2.pcap erspan3.pcap geneve.pcap
#   geneve-ip.pcap mpls.pcap mpls-pw.pcap pppoe.pcap
#                   ENCAPSULATED BY SCRIPT: tunnels.py (stdlib only) wraps each
#                   frame of inner.pcap, unchanged and with its timestamp, in
#                   the headers described in tunnels.py's ENCAPSULATIONS table
#                   (outer 198.18.200.1 <-> 198.18.200.2 as on the underlay,
#                   valid checksums).  If a later kernel can make one of these
#                   itself, prefer the kernel's.
#
#   Finally tunnels.py verify checks every file with tshark -n: each DNS query
#   and ClientHello must be decoded inside the expected tunnel, the inner
#   client and name must be the expected ones, no checksum may be bad; then it
#   writes expected.json (file -> [{"client","name","kind"}], inner clients).
#
# Needs (Debian 12): iproute2 ethtool tcpdump tshark dnsmasq-base
# bind9-dnsutils curl openssl python3.
# Environment: KEEP_WORK=1 keeps the work directory; DEST=DIR writes the
# captures and expected.json to DIR instead of pcaps/tunnels/.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-/usr/bin/python3}
DEST=${DEST:-$HERE}

NS_C=kdtun-client
NS_S=kdtun-server
ALL_NS="$NS_C $NS_S"
PROBE_NS=kdtun-probe

PIDS=()          # every background process we start (killed by PID on exit)
LASTPID=
WORK=

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: sudo bash $0"
for t in ip ethtool tcpdump tshark dnsmasq dig curl openssl timeout ss "$PY"; do
    command -v "$t" >/dev/null 2>&1 || die "missing tool: $t (see header for packages)"
done

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

teardown_lab() {
    local ns p
    for ns in $ALL_NS $PROBE_NS; do
        ns_exists "$ns" || continue
        # processes still living in our own namespaces (an interrupted earlier
        # run): end them by PID
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
    done
    sleep 0.3
    for ns in $ALL_NS $PROBE_NS; do
        ns_exists "$ns" || continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}

cleanup() {
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
    [ "$rc" -eq 0 ] || log "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

teardown_lab
WORK=$(mktemp -d /tmp/kdt-tunnels.XXXXXX)
OUT=$WORK/out
mkdir -p "$OUT"
CLOG=$WORK/clients.log
: >"$CLOG"
log "work directory: $WORK"

inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

client() {  # client <command...>: run in the client namespace, log, fail on error
    printf '\n### %s\n' "$*" >>"$CLOG"
    ip netns exec $NS_C timeout -k 3 30 "$@" >>"$CLOG" 2>&1 || die "client command failed: $* (see $CLOG)"
}

bg_ns() {   # bg_ns <ns> <logfile> <command...>; PID in LASTPID
    local ns=$1 logf=$2; shift 2
    ip netns exec "$ns" "$@" >"$logf" 2>&1 &
    LASTPID=$!
    PIDS+=("$LASTPID")
}

stop_pid() {
    local p=$1 sig=${2:-TERM} i
    kill "-$sig" "$p" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

wait_for() {   # wait_for <seconds> <command...>
    local s=$1 i; shift
    for i in $(seq $((s * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

CAP_PID=
cap_start() {  # cap_start <ns> <iface> <outfile>
    local lf="$WORK/tcpdump.$(basename "$3").log"
    bg_ns "$1" "$lf" tcpdump -n -U -Z root -i "$2" -w "$3"
    CAP_PID=$LASTPID
    wait_for 10 grep -q 'listening on' "$lf" || die "tcpdump did not start ($lf)"
    sleep 0.2
}
cap_stop() {
    sleep 0.8            # let the last FIN/ACKs through
    stop_pid "$CAP_PID" INT
}

nooffload() {  # segments and checksums as on a real Ethernet
    inns "$1" ethtool -K "$2" tso off gso off gro off tx off rx off >/dev/null 2>&1 \
        || inns "$1" ethtool -K "$2" tso off gso off gro off >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------
# which tunnel devices does this kernel have?
# ---------------------------------------------------------------------------
ip netns add $PROBE_NS
declare -A KERNEL_HAS
ip -n $PROBE_NS link add pv0 type veth peer name pv1
for spec in \
    "vxlan|type vxlan id 1 local 198.18.200.1 remote 198.18.200.2 dstport 4789" \
    "geneve|type geneve id 1 remote 198.18.200.2" \
    "gretap|type gretap local 198.18.200.1 remote 198.18.200.2" \
    "erspan|type erspan local 198.18.200.1 remote 198.18.200.2 seq key 1 erspan_ver 1 erspan 1" \
    "ip6erspan|type ip6erspan local 2001:db8:200::1 remote 2001:db8:200::2 seq key 1 erspan_ver 2" \
    "vlan|link pv0 type vlan id 10"; do
    kind=${spec%%|*}
    # shellcheck disable=SC2086
    if ip -n $PROBE_NS link add "p-$kind" ${spec#*|} >/dev/null 2>&1; then
        KERNEL_HAS[$kind]=yes
    else
        KERNEL_HAS[$kind]=no
    fi
    log "kernel tunnel device '$kind': ${KERNEL_HAS[$kind]}"
done
ip netns del $PROBE_NS
[ "${KERNEL_HAS[vxlan]}" = yes ] || die "this kernel has no vxlan devices: vxlan.pcap cannot be made"

# ---------------------------------------------------------------------------
# lab
# ---------------------------------------------------------------------------
for ns in $ALL_NS; do
    ip netns add "$ns"
    inns "$ns" sysctl -q -w net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
        net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
        net.ipv6.conf.all.router_solicitations=0 net.ipv6.conf.default.router_solicitations=0 >/dev/null
    ip -n "$ns" link set lo up
done

# underlay: IPv4 only, MTU 1600 so that 1514-byte inner frames + 50 bytes of VXLAN fit
ip link add ul-c netns $NS_C address 02:00:c6:12:c8:01 mtu 1600 type veth \
    peer name ul-s netns $NS_S address 02:00:c6:12:c8:02 mtu 1600
# plain path: the frames the scripted encapsulations wrap
ip link add pl-c netns $NS_C address 02:00:c6:12:ca:0a mtu 1500 type veth \
    peer name pl-s netns $NS_S address 02:00:c6:12:ca:01 mtu 1500
inns $NS_C sysctl -q -w net.ipv6.conf.ul-c.disable_ipv6=1 >/dev/null
inns $NS_S sysctl -q -w net.ipv6.conf.ul-s.disable_ipv6=1 >/dev/null
ip -n $NS_C addr add 198.18.200.1/24 dev ul-c
ip -n $NS_S addr add 198.18.200.2/24 dev ul-s
for x in "$NS_C ul-c" "$NS_S ul-s" "$NS_C pl-c" "$NS_S pl-s"; do
    set -- $x
    nooffload "$1" "$2"
    ip -n "$1" link set "$2" up
done

# the kernel VXLAN tunnel over the underlay
ip -n $NS_C link add vx-c address 02:00:c6:12:c9:0a mtu 1500 type vxlan id 4242 \
    local 198.18.200.1 remote 198.18.200.2 dstport 4789 dev ul-c
ip -n $NS_S link add vx-s address 02:00:c6:12:c9:01 mtu 1500 type vxlan id 4242 \
    local 198.18.200.2 remote 198.18.200.1 dstport 4789 dev ul-s
for x in "$NS_C vx-c" "$NS_S vx-s"; do
    set -- $x
    nooffload "$1" "$2"
    ip -n "$1" link set "$2" up
done

ip -n $NS_C addr add 198.18.201.10/24 dev vx-c
ip -n $NS_C addr add 2001:db8:201::10/64 dev vx-c nodad
ip -n $NS_S addr add 198.18.201.1/24 dev vx-s
ip -n $NS_S addr add 2001:db8:201::1/64 dev vx-s nodad
ip -n $NS_C addr add 198.18.202.10/24 dev pl-c
ip -n $NS_C addr add 2001:db8:202::10/64 dev pl-c nodad
ip -n $NS_S addr add 198.18.202.1/24 dev pl-s
ip -n $NS_S addr add 2001:db8:202::1/64 dev pl-s nodad

# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------
log "starting dnsmasq and openssl s_server"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=kdt-test-server.invalid" -addext "subjectAltName=DNS:kdt-test-server.invalid" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >>"$CLOG" 2>&1
bg_ns $NS_S "$WORK/dnsmasq.out" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --no-poll --user=root --group=root --pid-file="$WORK/dnsmasq.pid" --log-queries \
    --log-facility="$WORK/dnsmasq.log" --bind-interfaces \
    --listen-address=198.18.201.1,198.18.202.1,2001:db8:201::1,2001:db8:202::1 \
    --host-record=s05.upd.kaspersky.com,198.18.202.1,2001:db8:202::1
bg_ns $NS_S "$WORK/s_server4.out" openssl s_server -4 -accept 443 -cert "$WORK/cert.pem" -key "$WORK/key.pem" -www
bg_ns $NS_S "$WORK/s_server6.out" openssl s_server -6 -accept 443 -cert "$WORK/cert.pem" -key "$WORK/key.pem" -www
servers_up() {
    local l
    l=$(inns $NS_S ss -Hlntu | awk '{print $5}')
    grep -q '198.18.202.1:53$' <<<"$l" && grep -q '\]:53$' <<<"$l" \
        && grep -q '0.0.0.0:443$' <<<"$l" && grep -q '\[::\]:443$' <<<"$l"
}
wait_for 10 servers_up || die "servers did not start: $(inns $NS_S ss -Hlntu | tr '\n' ' ')"

run_clients() {  # run_clients <server v4> <server v6>
    client dig +tries=1 +time=3 @"$1" s05.upd.kaspersky.com A
    client dig +tries=1 +time=3 @"$2" s05.upd.kaspersky.com AAAA
    client curl -sS -k --max-time 10 -o /dev/null \
        --resolve "activation-v2.kaspersky.com:443:$1" https://activation-v2.kaspersky.com/
    client curl -sS -k --max-time 10 -o /dev/null \
        --resolve "activation-v2.kaspersky.com:443:[$2]" https://activation-v2.kaspersky.com/
}

# ---------------------------------------------------------------------------
# captures
# ---------------------------------------------------------------------------
log "vxlan.pcap: kernel VXLAN, captured on the underlay"
cap_start $NS_S ul-s "$OUT/vxlan.pcap"
run_clients 198.18.201.1 2001:db8:201::1
cap_stop

log "inner.pcap: the same clients on the plain veth"
cap_start $NS_S pl-s "$OUT/inner.pcap"
run_clients 198.18.202.1 2001:db8:202::1
cap_stop

log "encapsulating inner.pcap (tunnels.py encap)"
"$PY" "$HERE/tunnels.py" encap "$OUT/inner.pcap" "$OUT"

# the kernel's VXLAN frames must have crossed the 1600-byte underlay unfragmented
frags=$(tshark -n -r "$OUT/vxlan.pcap" -Y 'ip.flags.mf == 1 || ip.frag_offset > 0' 2>/dev/null | wc -l)
[ "$frags" -eq 0 ] || die "vxlan.pcap: $frags fragmented outer packets"
log "vxlan.pcap: largest frame $(tshark -n -r "$OUT/vxlan.pcap" -T fields -e frame.len 2>/dev/null | sort -n | tail -1) bytes"

log "verifying with tshark, writing expected.json"
C="198.18.202.10/s05.upd.kaspersky.com/dns,2001:db8:202::10/s05.upd.kaspersky.com/dns"
C="$C,198.18.202.10/activation-v2.kaspersky.com/tls,2001:db8:202::10/activation-v2.kaspersky.com/tls"
V="198.18.201.10/s05.upd.kaspersky.com/dns,2001:db8:201::10/s05.upd.kaspersky.com/dns"
V="$V,198.18.201.10/activation-v2.kaspersky.com/tls,2001:db8:201::10/activation-v2.kaspersky.com/tls"
"$PY" "$HERE/tunnels.py" verify "$OUT" "$C" "$V"

mkdir -p "$DEST"
cp "$OUT"/*.pcap "$OUT/expected.json" "$DEST/"
log "written to $DEST: $(cd "$OUT" && ls *.pcap expected.json | tr '\n' ' ')"
