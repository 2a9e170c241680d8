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
# shellcheck source=../lab.sh
source "$HERE/../lab.sh"    # log, die, bg_ns, cap_start, teardown_lab, the EXIT trap, ...
PY=${PYTHON:-/usr/bin/python3}
DEST=${DEST:-$HERE}

NS_C=kdtun-client
NS_S=kdtun-server
ALL_NS="$NS_C $NS_S"
PROBE_NS=kdtun-probe
LAB_EXTRA_NS=$PROBE_NS  # torn down as well

lab_require ip ethtool tcpdump tshark dnsmasq dig curl openssl timeout ss "$PY"
lab_begin kdt-tunnels   # also removes the leftovers of an interrupted earlier run

OUT=$WORK/out
mkdir -p "$OUT"
CLOG=$WORK/clients.log
: >"$CLOG"

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
ns_add $ALL_NS

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
selfsigned "$WORK/key.pem" "$WORK/cert.pem" kdt-test-server.invalid >>"$CLOG" 2>&1
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
    client $NS_C dig +tries=1 +time=3 @"$1" s05.upd.kaspersky.com A
    client $NS_C dig +tries=1 +time=3 @"$2" s05.upd.kaspersky.com AAAA
    client $NS_C curl -sS -k --max-time 10 -o /dev/null \
        --resolve "activation-v2.kaspersky.com:443:$1" https://activation-v2.kaspersky.com/
    client $NS_C curl -sS -k --max-time 10 -o /dev/null \
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
