#!/usr/bin/env bash
# make_quic_captures.sh - regenerate the QUIC test captures in pcaps/quic/ (run as root):
#
#     sudo bash pcaps/quic/make_quic_captures.sh
#
# What it does
#   * builds a two-namespace lab (nothing is connected to the host's interfaces,
#     no default route; only 198.18.0.0/15 is used):
#
#        kdq-client (198.18.0.10) veth-qc <----> veth-qs (198.18.0.1) kdq-server
#
#     The veth pair is created directly inside the namespaces, so this script
#     never touches the host's interfaces and can run beside pcaps/make_captures.sh
#     (whose namespaces are named kdt-*).
#   * runs an aioquic HTTP/3 server (a small script written below, using
#     aioquic's public API) on UDP 443 and 4433 in kdq-server, with a
#     self-signed certificate whose CN names no Kaspersky host;
#   * captures, with tcpdump -n on veth-qs, one short connection each of:
#       aioquic.pcap     aioquic client, QUIC v1, https://activation-v2.kaspersky.com:4433/
#       aioquic-v2.pcap  aioquic client, QUIC v2 (RFC 9369) only, same URL
#       chromium.pcap    headless Chromium, QUIC forced for
#                        https://ksn-url-geo.kaspersky-labs.com/ (port 443).  Its
#                        ClientHello (with an X25519MLKEM768 key share) does not fit one
#                        Initial packet: it spans two, and Chromium shuffles its CRYPTO
#                        frames.
#   * checks every file with tshark, which decrypts QUIC Initial packets:
#     the expected SNI, the QUIC version, and for Chromium >= 2 client Initials
#     before the server's first reply.
#
# aioquic is installed from PyPI into a throw-away venv ($QUICVENV, default
# /tmp/quicvenv) if it is not there yet.
#
# Needs (Debian 12): iproute2 ethtool tcpdump tshark wireshark-common (capinfos) openssl chromium python3
# (with the venv module) and network access to PyPI for the first run.
#
# Environment: KEEP_WORK=1 keeps the temporary work directory; DEST=DIR writes
# the captures to DIR instead of pcaps/quic/.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lab.sh
source "$HERE/../lab.sh"    # log, die, bg_ns, cap_start, teardown_lab, the EXIT trap, ...
DEST=${DEST:-$HERE}
QUICVENV=${QUICVENV:-/tmp/quicvenv}
PY=${PYTHON:-python3}

NS_C=kdq-client
NS_S=kdq-server
ALL_NS="$NS_C $NS_S"
SRV=198.18.0.1
CLI=198.18.0.10
CAP_DRAIN=1.0           # cap_stop: let the last packets (CONNECTION_CLOSE, ACKs) through

lab_require ip ethtool tcpdump tshark capinfos openssl chromium timeout setsid "$PY"
lab_begin kdq-captures  # also removes the leftovers of an interrupted earlier run

chmod 755 "$WORK"
mkdir -p "$WORK/out"

# ---------------------------------------------------------------------------
# aioquic in a throw-away venv
# ---------------------------------------------------------------------------
if ! "$QUICVENV/bin/python" -c 'import aioquic' >/dev/null 2>&1; then
    log "installing aioquic into $QUICVENV"
    "$PY" -m venv "$QUICVENV"
    "$QUICVENV/bin/pip" install --quiet aioquic
fi
QPY=$QUICVENV/bin/python
log "aioquic $("$QPY" -c 'import aioquic; print(aioquic.__version__)')"

quic_cap_start() {  # quic_cap_start <outfile>: UDP only, on the server side of the link
    cap_start $NS_S veth-qs "$1" udp
}

# ---------------------------------------------------------------------------
# lab
# ---------------------------------------------------------------------------
log "building the lab"
ip netns add $NS_C
ip netns add $NS_S
ip link add veth-qc netns $NS_C type veth peer name veth-qs netns $NS_S
inns $NS_C ip addr add $CLI/24 dev veth-qc
inns $NS_S ip addr add $SRV/24 dev veth-qs
for pair in "$NS_C veth-qc" "$NS_S veth-qs"; do
    set -- $pair
    inns "$1" ip link set lo up
    inns "$1" ip link set "$2" up mtu 1500
    nooffload "$1" "$2"
done
link_up() { ip -n "$1" link show "$2" | grep -q 'state UP'; }
wait_for 10 link_up $NS_C veth-qc || die "veth-qc did not come up"
wait_for 10 link_up $NS_S veth-qs || die "veth-qs did not come up"

selfsigned "$WORK/key.pem" "$WORK/cert.pem" kdq-test-server.invalid >"$WORK/openssl.log" 2>&1
# Chromium's QUIC stack does not honour --ignore-certificate-errors alone: it also
# needs the certificate's SPKI hash in --ignore-certificate-errors-spki-list.
SPKI=$(openssl x509 -in "$WORK/cert.pem" -pubkey -noout | openssl pkey -pubin -outform der \
       | openssl dgst -sha256 -binary | base64)

# ---------------------------------------------------------------------------
# HTTP/3 server and client (aioquic public API)
# ---------------------------------------------------------------------------
cat >"$WORK/h3server.py" <<'PY'
"""Minimal HTTP/3 server: answers every request with a small HTML page."""
import asyncio
import sys

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated
from aioquic.quic.packet import QuicProtocolVersion

BODY = b"<html><body>kdq test server</body></html>\n"


class H3Server(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h3 = None

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._h3 = H3Connection(self._quic)
        if self._h3 is None:
            return
        for ev in self._h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self._h3.send_headers(ev.stream_id, [
                    (b":status", b"200"),
                    (b"content-type", b"text/html"),
                    (b"content-length", str(len(BODY)).encode()),
                ])
                self._h3.send_data(ev.stream_id, BODY, end_stream=True)
        self.transmit()


async def main(host, cert, key, ports):
    cfg = QuicConfiguration(
        is_client=False,
        alpn_protocols=H3_ALPN,
        supported_versions=[QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2],
    )
    cfg.load_cert_chain(cert, key)
    for port in ports:
        await serve(host, port, configuration=cfg, create_protocol=H3Server)
    print("listening", flush=True)
    await asyncio.Future()


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], [int(p) for p in sys.argv[4:]]))
PY

cat >"$WORK/h3client.py" <<'PY'
"""Minimal HTTP/3 client: GET one URL, print the status and body."""
import asyncio
import ssl
import sys
from urllib.parse import urlsplit

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicProtocolVersion


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self.done = asyncio.get_event_loop().create_future()
        self.out = []

    def quic_event_received(self, event):
        for ev in self._h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.out.append(repr(ev.headers))
            elif isinstance(ev, DataReceived):
                self.out.append(ev.data.decode())
                if ev.stream_ended and not self.done.done():
                    self.done.set_result(None)

    async def get(self, authority, path):
        sid = self._quic.get_next_available_stream_id()
        self._h3.send_headers(sid, [
            (b":method", b"GET"), (b":scheme", b"https"),
            (b":authority", authority.encode()), (b":path", path.encode()),
            (b"user-agent", b"aioquic"),
        ], end_stream=True)
        self.transmit()
        await asyncio.wait_for(self.done, 10)


async def main(url, address, version):
    u = urlsplit(url)
    versions = {"1": QuicProtocolVersion.VERSION_1, "2": QuicProtocolVersion.VERSION_2}
    cfg = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=u.hostname,
        verify_mode=ssl.CERT_NONE,
        supported_versions=[versions[version]],
    )
    async with connect(address, u.port or 443, configuration=cfg, create_protocol=H3Client,
                       wait_connected=True) as client:
        await client.get(u.netloc, u.path or "/")
        print(client._quic._version, *client.out, sep="\n")


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
PY

log "starting the aioquic HTTP/3 server on udp/443 and udp/4433"
bg_ns $NS_S "$WORK/h3server.log" "$QPY" "$WORK/h3server.py" $SRV "$WORK/cert.pem" "$WORK/key.pem" 443 4433
wait_for 15 grep -q listening "$WORK/h3server.log" || die "h3 server did not start ($WORK/h3server.log)"

# ---------------------------------------------------------------------------
# captures
# ---------------------------------------------------------------------------
URL_AIOQUIC=https://activation-v2.kaspersky.com:4433/
for v in 1 2; do
    f=aioquic.pcap
    [ "$v" = 2 ] && f=aioquic-v2.pcap
    log "capture: $f (aioquic client, QUIC v$v)"
    quic_cap_start "$WORK/out/$f"
    inns $NS_C timeout -k 3 30 "$QPY" "$WORK/h3client.py" $URL_AIOQUIC $SRV $v >"$WORK/client-v$v.log" 2>&1 \
        || die "aioquic client failed (see $WORK/client-v$v.log)"
    cap_stop
    grep -q 'kdq test server' "$WORK/client-v$v.log" || die "aioquic client got no page ($WORK/client-v$v.log)"
done

log "capture: chromium.pcap (headless Chromium, QUIC forced)"
CH=$WORK/chromium
quic_cap_start "$WORK/out/chromium.pcap"
run_chromium $NS_C "$CH" https://ksn-url-geo.kaspersky-labs.com/ \
    --enable-quic --origin-to-force-quic-on=ksn-url-geo.kaspersky-labs.com:443 \
    --ignore-certificate-errors --ignore-certificate-errors-spki-list="$SPKI" \
    --host-resolver-rules="MAP * $SRV"
cap_stop
[ "$CH_RC" -eq 0 ] || die "chromium exited with $CH_RC (see $CH/chromium.log)"
grep -q 'kdq test server' "$CH/dom.html" || die "chromium did not get the page (see $CH/chromium.log)"

# ---------------------------------------------------------------------------
# checks with tshark (it derives the Initial keys and decrypts the ClientHello)
# ---------------------------------------------------------------------------
TS=(tshark -n -d udp.port==4433,quic)

check_sni() {  # check_sni <file> <sni> <version hex>
    local f=$WORK/out/$1 sni=$2 ver=$3 got vers
    got=$("${TS[@]}" -r "$f" -Y 'quic && tls.handshake.type == 1' -T fields \
          -e tls.handshake.extensions_server_name 2>/dev/null | sort -u | paste -sd' ')
    [ "$got" = "$sni" ] || die "$1: tshark shows SNI '$got', expected '$sni'"
    vers=$("${TS[@]}" -r "$f" -Y 'tls.handshake.type == 1' -T fields -e quic.version 2>/dev/null \
           | tr ',' '\n' | sort -u | paste -sd' ')
    [ "$vers" = "$ver" ] || die "$1: QUIC versions '$vers', expected '$ver'"
    log "$1: $(capinfos -c -M "$f" 2>/dev/null | awk '/Number of packets/ {print $NF}') packets, SNI $got, version $vers"
}
check_sni aioquic.pcap activation-v2.kaspersky.com 0x00000001
check_sni aioquic-v2.pcap activation-v2.kaspersky.com 0x6b3343cf
check_sni chromium.pcap ksn-url-geo.kaspersky-labs.com 0x00000001

# Chromium: the ClientHello is spread over two or more client Initial packets.
n=$("${TS[@]}" -r "$WORK/out/chromium.pcap" -Y "ip.src == $CLI && quic.long.packet_type == 0 && quic.frame_type == 6" \
    -T fields -e frame.number 2>/dev/null | wc -l)
[ "$n" -ge 2 ] || die "chromium.pcap: ClientHello in $n client Initial packet(s), expected >= 2"
log "chromium.pcap: CRYPTO data in $n client Initial packets"
order=$("${TS[@]}" -r "$WORK/out/chromium.pcap" -Y "ip.src == $CLI && quic.long.packet_type == 0" \
        -T fields -e quic.crypto.offset 2>/dev/null | head -n 2 | paste -sd'|')
log "chromium.pcap: CRYPTO frame offsets in its first two Initials: $order"

# only lab addresses
bad=$("${TS[@]}" -r "$WORK/out/chromium.pcap" -T fields -e ip.src -e ip.dst 2>/dev/null \
      | tr '\t' '\n' | sort -u | grep -v -e "^$SRV\$" -e "^$CLI\$" || true)
[ -z "$bad" ] || die "foreign addresses in chromium.pcap: $bad"

mkdir -p "$DEST"
cp "$WORK/out/aioquic.pcap" "$WORK/out/aioquic-v2.pcap" "$WORK/out/chromium.pcap" "$DEST/"
log "wrote $DEST/aioquic.pcap $DEST/aioquic-v2.pcap $DEST/chromium.pcap"
