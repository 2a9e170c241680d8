#!/usr/bin/env bash
# make_names_capture.sh - regenerate pcaps/names/names.pcap (run as root):
#
#     sudo bash pcaps/names/make_names_capture.sh
#
# Real traffic in which internal hosts are named, for the host inventory (issue 13):
#
#   kdn-client  (MAC 02:00:00:00:0e:10) gets 198.18.0.107 from dnsmasq's DHCP server with
#               udhcpc, sending its host name analyst-pc-07 (option 12), then resolves
#               activation-v2.kaspersky.com and s05.upd.kaspersky.com with dig;
#   kdn-client2 (198.18.0.11, MAC 02:00:00:00:0e:11) asks dnsmasq for the PTR record of its
#               own address (dig -x: ws-kd-02.corp.example), then resolves
#               dc1.ksn.kaspersky-labs.com;
#   kdn-client3 (198.18.0.12, MAC 02:00:00:00:0e:12) resolves only www.kaspersky.com
#               (a website-only host).
#
# The clients' veths meet on a bridge br0 in kdn-server (198.18.0.1: dnsmasq for DNS
# and DHCP, --no-resolv --no-hosts); tcpdump -n captures on br0.  No namespace has a
# default route; only 198.18.0.0/15 is used.  expected.json is written from what this
# script did, never from the detector's output.
#
# Needs (Debian 12): iproute2 ethtool tcpdump dnsmasq-base bind9-dnsutils udhcpc.
# Environment: KEEP_WORK=1 keeps the work directory; DEST=DIR writes there instead.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lab.sh
source "$HERE/../lab.sh"
DEST=${DEST:-$HERE}

NS_C=kdn-client
NS_C2=kdn-client2
NS_C3=kdn-client3
NS_S=kdn-server
ALL_NS="$NS_C $NS_C2 $NS_C3 $NS_S"
SRV4=198.18.0.1
CAP_OPTS=(--immediate-mode)

lab_require ip ethtool tcpdump dnsmasq dig udhcpc timeout
lab_begin kdn-capture
OUT=$WORK/out
mkdir -p "$OUT"
CLOG=$WORK/clients.log
: >"$CLOG"

ns_add $ALL_NS
ns_etc $SRV4 $NS_C $NS_C2 $NS_C3
ip -n $NS_S link add br0 type bridge
ip -n $NS_S link set br0 up
i=0
for ns in $NS_C $NS_C2 $NS_C3; do
    i=$((i + 1))
    ip link add veth-c netns "$ns" address "02:00:00:00:0e:1$((i - 1))" mtu 1500 type veth \
        peer name "veth-s$i" netns $NS_S address "02:00:00:00:0e:0$i"
    ip -n "$ns" link set veth-c up
    ip -n $NS_S link set "veth-s$i" master br0 up
    nooffload "$ns" veth-c
    nooffload $NS_S "veth-s$i"
done
ip -n $NS_S addr add $SRV4/24 dev br0
ip -n $NS_C2 addr add 198.18.0.11/24 dev veth-c
ip -n $NS_C3 addr add 198.18.0.12/24 dev veth-c

log "starting dnsmasq (DNS and DHCP)"
bg_ns $NS_S "$WORK/dnsmasq.out" dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll \
    --user=root --group=root --pid-file="$WORK/dnsmasq.pid" --log-queries --log-dhcp \
    --log-facility="$WORK/dnsmasq.log" --interface=br0 --bind-interfaces \
    --dhcp-range=198.18.0.100,198.18.0.150,255.255.255.0,1h --dhcp-host=02:00:00:00:0e:10,198.18.0.107 \
    --dhcp-authoritative --dhcp-leasefile="$WORK/leases" \
    --host-record=activation-v2.kaspersky.com,$SRV4 --host-record=s05.upd.kaspersky.com,$SRV4 \
    --host-record=dc1.ksn.kaspersky-labs.com,$SRV4 --host-record=www.kaspersky.com,$SRV4 \
    --ptr-record=11.0.18.198.in-addr.arpa,ws-kd-02.corp.example
wait_for 10 inns $NS_S dig +short +time=1 +tries=1 @$SRV4 www.kaspersky.com || die "dnsmasq did not start"

cap_start $NS_S br0 "$OUT/names.pcap"
# DHCP: udhcpc runs no configuration script (-s /bin/true); the lease is pinned to the MAC.
client $NS_C udhcpc -i veth-c -n -q -f -t 5 -T 2 -x hostname:analyst-pc-07 -s /bin/true
ip -n $NS_C addr add 198.18.0.107/24 dev veth-c
sleep 0.5
client $NS_C dig +time=2 +tries=2 @$SRV4 activation-v2.kaspersky.com
client $NS_C dig +time=2 +tries=2 @$SRV4 s05.upd.kaspersky.com
client $NS_C2 dig +time=2 +tries=2 @$SRV4 -x 198.18.0.11
client $NS_C2 dig +time=2 +tries=2 @$SRV4 dc1.ksn.kaspersky-labs.com
client $NS_C3 dig +time=2 +tries=2 @$SRV4 www.kaspersky.com
cap_stop

grep -q "DHCPACK(br0) 198.18.0.107 02:00:00:00:0e:10 analyst-pc-07" "$WORK/dnsmasq.log" \
    || die "dnsmasq did not ack analyst-pc-07's lease (see $WORK/dnsmasq.log)"
grep -q "ws-kd-02.corp.example" "$CLOG" || die "the PTR answer did not name ws-kd-02.corp.example"

cp "$OUT/names.pcap" "$DEST/names.pcap"
cat >"$DEST/expected.json" <<JSON
{
  "names.pcap": {
    "198.18.0.107": {"mac": "02:00:00:00:0e:10", "name": "analyst-pc-07", "source": "dhcp",
                     "contacts": ["activation-v2.kaspersky.com", "s05.upd.kaspersky.com"]},
    "198.18.0.11": {"mac": "02:00:00:00:0e:11", "name": "ws-kd-02.corp.example", "source": "dns-ptr",
                    "contacts": ["dc1.ksn.kaspersky-labs.com"]},
    "198.18.0.12": {"mac": "02:00:00:00:0e:12", "name": null, "source": null,
                    "contacts": ["www.kaspersky.com"], "website_only": true}
  }
}
JSON
log "wrote $DEST/names.pcap and $DEST/expected.json"
