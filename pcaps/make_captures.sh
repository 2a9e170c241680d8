#!/usr/bin/env bash
# make_captures.sh - regenerate every test capture in pcaps/ (run as root):
#
#     sudo bash pcaps/make_captures.sh
#
# What it does
#   * builds a small lab out of Linux network namespaces (nothing is connected
#     to the host's interfaces, nothing has a default route):
#
#        kdt-client  (198.18.0.10, 2001:db8::10)  veth-c  --+
#        kdt-client2 (198.18.0.11, 2001:db8::11)  veth-c2 --+-- br0 in kdt-lan
#        kdt-server  (198.18.0.1, .2, 2001:db8::1) veth-s --+
#
#     plus, for the link-type captures, a second client<->server path through
#     kdt-lan with an 802.1Q / 802.1ad trunk in the middle (198.18.100.0/24)
#     and a layer-3 tun link (198.18.50.0/24).  Only the documentation ranges
#     198.18.0.0/15 and 2001:db8::/32 are used.
#   * runs real servers in kdt-server: dnsmasq (DNS), nginx (HTTP 80/8080,
#     HTTPS 443/8443), openssl s_server (4433), tinyproxy (HTTP proxy 8888);
#   * runs real clients in the client namespaces: dig, getent, curl,
#     openssl s_client and headless Chromium;
#   * captures with tcpdump / dumpcap (always with -n), checks every file with
#     tshark and writes pcaps/expected.json.
#
# Hand-built or converted files (no real client on Linux can produce them) are
# made by the stdlib-only Python helper written below and say so:
#   linktypes/null.pcap           BSD loopback link type, converted from
#                                 linktypes/ethernet.pcap
#   damaged/*                     cut, gzipped or hand-built damaged files
#   damaged/garbage-packets.pcap  random/hostile records (random seed 1)
# VLAN/QinQ tags: this kernel has no 8021q module and no bridge VLAN
# filtering, so the tags on the trunk are pushed/popped by a tiny userspace
# "switch" (AF_PACKET relay, see relay.py below).  The frames in
# linktypes/vlan.pcap and linktypes/qinq.pcap really crossed the trunk veth
# pair and were captured there by tcpdump.  Likewise linktypes/raw.pcap is
# captured by tcpdump on a real tun interface; a userspace relay carries the
# IP packets between the two tun devices (like a VPN daemon would).
#
# Needs (Debian 12): iproute2 ethtool tcpdump tshark wireshark-common
# (capinfos/dumpcap) dnsmasq-base nginx-light tinyproxy bind9-dnsutils curl
# openssl chromium python3 (stdlib only) gzip.
#
# Environment: KEEP_WORK=1 keeps the temporary work directory for debugging;
# DEST=DIR writes the captures and expected.json to DIR instead of pcaps/ (the
# test suite does this to replay captures that are not in the repository).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lab.sh
source "$HERE/lab.sh"       # log, die, bg_ns, cap_start, teardown_lab, the EXIT trap, ...
PY=${PYTHON:-/usr/bin/python3}

NS_C=kdt-client
NS_C2=kdt-client2
NS_S=kdt-server
NS_L=kdt-lan
ALL_NS="$NS_C $NS_C2 $NS_S $NS_L"
LAB_RMDIR_ETC_NETNS=1   # /etc/netns itself goes too when it is left empty
NOOFFLOAD_VLAN=1        # nooffload: VLAN tag offloads off too (802.1Q/802.1ad trunk)

lab_require ip ethtool tcpdump tshark dumpcap capinfos dnsmasq nginx tinyproxy dig getent curl openssl chromium gzip timeout setsid "$PY"
lab_begin kdt-captures

chmod 755 "$WORK"
OUT=$WORK/out
mkdir -p "$OUT/linktypes" "$OUT/damaged/gzip"
CLOG=$WORK/clients.log
: >"$CLOG"

# ---------------------------------------------------------------------------
# helper files (all generated here)
# ---------------------------------------------------------------------------
cat >"$WORK/relay.py" <<'PY'
# relay.py - userspace plumbing for the link-type captures (stdlib only).
#
#  l2 <vlan|qinq> <access-a> <trunk-a> <trunk-b> <access-b>
#     A two-switch "provider network": frames arriving untagged on access-a
#     are sent on trunk-a with an 802.1Q tag (vlan: C-tag 100) or with an
#     802.1ad S-tag 200 + 802.1Q C-tag 100 (qinq); frames arriving on trunk-b
#     are untagged and sent on access-b, and the same in reverse.  trunk-a and
#     trunk-b are the two ends of one veth pair, so the tagged frames really
#     cross a link where tcpdump captures them.  (Needed because this kernel
#     has neither the 8021q module nor bridge VLAN filtering.)
#
#  tun <tun-a> <netns-path-b> <tun-b>
#     Attaches to the persistent tun device tun-a in the current namespace and
#     to tun-b in namespace b and copies IP packets between them, like a VPN
#     daemon.  tcpdump on a tun device writes LINKTYPE_RAW.
import ctypes, fcntl, os, select, socket, struct, sys

ETH_P_ALL = 3


def l2(mode, acc_a, trk_a, trk_b, acc_b):
    if mode == "vlan":
        tag = b"\x81\x00" + struct.pack("!H", 100)
    else:
        tag = b"\x88\xa8" + struct.pack("!H", 200) + b"\x81\x00" + struct.pack("!H", 100)
    socks = {}
    for name in (acc_a, trk_a, trk_b, acc_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, ETH_P_ALL))
        socks[name] = s
    # input interface -> (output interface, push tags?)
    route = {acc_a: (trk_a, True), trk_a: (acc_a, False),
             trk_b: (acc_b, False), acc_b: (trk_b, True)}
    names = {s.fileno(): n for n, s in socks.items()}
    print("relay l2 %s ready" % mode, flush=True)
    while True:
        ready, _, _ = select.select(list(socks.values()), [], [])
        for s in ready:
            data, addr = s.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            out, push = route[names[s.fileno()]]
            # the kernel already moved the outer tag to metadata; drop any
            # tags still inline
            while len(data) >= 18 and data[12:14] in (b"\x81\x00", b"\x88\xa8"):
                data = data[:12] + data[16:]
            if push:
                data = data[:12] + tag + data[12:]
            try:
                socks[out].send(data)
            except OSError as e:
                print("send on %s failed: %s (len %d)" % (out, e, len(data)), flush=True)


def tun_open(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    ifr = struct.pack("16sH", name.encode(), 0x0001 | 0x1000)  # IFF_TUN | IFF_NO_PI
    fcntl.ioctl(fd, 0x400454CA, ifr)  # TUNSETIFF
    return fd


def tun(name_a, ns_b, name_b):
    fa = tun_open(name_a)
    libc = ctypes.CDLL(None, use_errno=True)
    nsfd = os.open(ns_b, os.O_RDONLY)
    if libc.setns(nsfd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")
    fb = tun_open(name_b)
    other = {fa: fb, fb: fa}
    print("relay tun ready", flush=True)
    while True:
        ready, _, _ = select.select([fa, fb], [], [])
        for fd in ready:
            pkt = os.read(fd, 65535)
            try:
                os.write(other[fd], pkt)
            except OSError as e:
                print("tun write failed: %s" % e, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "l2":
        l2(*sys.argv[2:7])
    elif sys.argv[1] == "tun":
        tun(*sys.argv[2:5])
    else:
        sys.exit("usage: relay.py l2|tun ...")
PY

cat >"$WORK/kdt_tools.py" <<'PY'
# kdt_tools.py - stdlib-only helpers for make_captures.sh:
#   chain                  print the dnsmasq --cname options of the long CNAME
#                          chain big.example.net -> ... -> cm.k.kaspersky-labs.com
#   null SRC DST           CONVERT an Ethernet capture to the BSD loopback
#                          ("null", LINKTYPE 0) link type.  Real clients on
#                          Linux cannot produce this link type, so the
#                          14-byte Ethernet header of each IPv4/IPv6 frame is
#                          replaced by the 4-byte address family in host
#                          (little-endian) byte order: AF_INET = 2,
#                          AF_INET6 = 30 (the macOS/Darwin value); ARP frames
#                          are dropped.
#   truncate SRC DST       cut a real capture in the middle of a packet record
#   gzip SRC DST [FRAC]    gzip SRC (mtime 0); with FRAC keep only that
#                          fraction of the gzip stream (a damaged .gz)
#   garbage DST            HAND-BUILT records with random and hostile bytes
#                          (random.Random(1)); no real client sends these
#   verify OUT WORK        check every capture with tshark, write expected.json
import gzip, ipaddress, json, hashlib, os, random, re, struct, subprocess, sys, zlib

# --------------------------------------------------------------- pcap i/o
MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\x4d\x3c\xb2\xa1": ("<", True),
          b"\xa1\xb2\xc3\xd4": (">", False), b"\xa1\xb2\x3c\x4d": (">", True)}


def parse_pcap_bytes(raw):
    e, nsec = MAGICS[raw[:4]]
    snap, lt = struct.unpack(e + "II", raw[16:24])
    recs, off = [], 24
    while off + 16 <= len(raw):
        ts, frac, incl, orig = struct.unpack(e + "IIII", raw[off:off + 16])
        if off + 16 + incl > len(raw):
            break
        recs.append((ts, frac, raw[off + 16:off + 16 + incl], orig, off))
        off += 16 + incl
    return lt & 0x03FFFFFF, nsec, recs


def read_pcap(path):
    with open(path, "rb") as f:
        return parse_pcap_bytes(f.read())


def pcap_header(linktype, snap=262144, nsec=False):
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snap, linktype)


def write_pcap(path, linktype, recs):
    with open(path, "wb") as f:
        f.write(pcap_header(linktype))
        for ts, frac, data, orig in recs:
            f.write(struct.pack("<IIII", ts, frac, len(data), orig))
            f.write(data)


# --------------------------------------------------------------- chain
def chain_names():
    names = []
    for i in range(1, 8):
        h = [hashlib.sha256(("kdt-chain-%d-%d" % (i, j)).encode()).hexdigest() for j in range(4)]
        labels = ["chain%02d-%s" % (i, h[0][:54]), h[1][:62], h[2][:62], h[3][:40]]
        names.append(".".join(labels) + ".example.net")
    return names


def cmd_chain():
    prev = "big.example.net"
    for n in chain_names() + ["cm.k.kaspersky-labs.com"]:
        print("--cname=%s,%s,300" % (prev, n))
        prev = n


# --------------------------------------------------------------- null
def cmd_null(src, dst):
    lt, nsec, recs = read_pcap(src)
    assert lt == 1 and not nsec, "expects a microsecond Ethernet pcap"
    out = []
    for ts, frac, data, orig, _ in recs:
        et = data[12:14]
        if et == b"\x08\x00":
            af = 2            # AF_INET
        elif et == b"\x86\xdd":
            af = 30           # AF_INET6 on macOS/Darwin (24 NetBSD/OpenBSD, 28 FreeBSD)
        else:
            continue          # ARP etc. never appear on a BSD loopback
        out.append((ts, frac, struct.pack("<I", af) + data[14:], orig - 14 + 4))
    write_pcap(dst, 0, out)   # LINKTYPE_NULL


# --------------------------------------------------------------- damaged
def cmd_truncate(src, dst):
    with open(src, "rb") as f:
        raw = f.read()
    lt, nsec, recs = parse_pcap_bytes(raw)
    first = next(i for i, r in enumerate(recs) if b"\x09kaspersky" in r[2] or b"\x0ekaspersky-labs" in r[2])
    k = first + 3
    off, incl = recs[k][4], len(recs[k][2])
    cut = off + 16 + incl // 2
    with open(dst, "wb") as f:
        f.write(raw[:cut])
    print("truncate: first Kaspersky DNS record #%d, cut inside record #%d at byte %d of %d"
          % (first + 1, k + 1, cut, len(raw)))


def cmd_gzip(src, dst, frac=None):
    with open(src, "rb") as f:
        data = gzip.compress(f.read(), compresslevel=9, mtime=0)
    if frac is not None:
        data = data[: int(len(data) * float(frac))]
    with open(dst, "wb") as f:
        f.write(data)


def ip4(proto, payload, src="198.18.0.10", dst="198.18.0.1", tot=None, ihl=5, frag=0, ident=0x1234):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot if tot is not None else 20 + len(payload),
                      ident, frag, 64, proto, 0, ipaddress.ip_address(src).packed,
                      ipaddress.ip_address(dst).packed)
    return hdr + payload


def eth(et, payload):
    return bytes.fromhex("020000000001" "020000000010") + struct.pack("!H", et) + payload


def udp(sport, dport, payload, length=None):
    return struct.pack("!HHHH", sport, dport, length if length is not None else 8 + len(payload), 0) + payload


def tcp(sport, dport, payload, doff=5, flags=0x18, seq=1000, ack=1):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + payload


def dns_hdr(qd=1, an=0, ns=0, ar=0, ident=0xBEEF, flags=0x0100):
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def hostile_builders():
    def rnd_bytes(r):
        return r.randbytes(r.randint(0, 2000))

    def short_eth(r):
        return r.randbytes(r.randint(0, 13))

    def trunc_ip4(r):
        return eth(0x0800, b"\x45" + r.randbytes(r.randint(0, 18)))

    def ihl15(r):
        return eth(0x0800, ip4(17, b"", ihl=15)[:20] + r.randbytes(4))

    def ihl_small(r):
        return eth(0x0800, ip4(6, r.randbytes(30), ihl=2))

    def totlen_huge(r):
        return eth(0x0800, ip4(17, udp(5353, 53, r.randbytes(10)), tot=65535))

    def trunc_udp(r):
        return eth(0x0800, ip4(17, b"\x00\x35\x00", tot=23))

    def udp_len_bad(r):
        return eth(0x0800, ip4(17, udp(40000, 53, dns_hdr(), length=4000)))

    def dns_ptr_loop(r):      # name is a compression pointer to itself
        return eth(0x0800, ip4(17, udp(40000, 53, dns_hdr() + b"\xc0\x0c\x00\x01\x00\x01")))

    def dns_ptr_pingpong(r):  # two pointers pointing at each other
        msg = dns_hdr(qd=2) + b"\xc0\x12\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01"
        return eth(0x0800, ip4(17, udp(40000, 53, msg)))

    def dns_ptr_oob(r):
        return eth(0x0800, ip4(17, udp(53, 40000, dns_hdr(flags=0x8180, an=1) + b"\x00\x00\x01\x00\x01" + b"\xc3\xff\x00\x05\x00\x01\x00\x00\x00\x10\x00\x02\xc3\xfe")))

    def dns_label_overrun(r):
        return eth(0x0800, ip4(17, udp(40000, 53, dns_hdr() + b"\x3fabc")))

    def dns_bad_label_type(r):  # 0x40/0x80 label types are reserved
        return eth(0x0800, ip4(17, udp(40000, 53, dns_hdr() + b"\x41" + b"x" * 65 + b"\x00\x00\x01\x00\x01")))

    def dns_counts(r):
        return eth(0x0800, ip4(17, udp(53, 40000, dns_hdr(qd=65535, an=65535, ns=65535, ar=65535, flags=0x8180) + b"\x01")))

    def dns_long_name(r):     # 200 one-letter labels: longer than 255 bytes
        return eth(0x0800, ip4(17, udp(40000, 53, dns_hdr() + b"\x01a" * 200 + b"\x00\x00\x01\x00\x01")))

    def dns_rdlen(r):
        rr = b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x10\xff\xff" + b"\x03abc"
        return eth(0x0800, ip4(17, udp(53, 40000, dns_hdr(flags=0x8180, an=1) + b"\x03abc\x00\x00\x01\x00\x01" + rr)))

    def dns_tcp_len(r):       # DNS over TCP, length prefix larger than the data
        return eth(0x0800, ip4(6, tcp(40001, 53, b"\xff\xff" + dns_hdr() + b"\x03abc")))

    def tcp_doff_big(r):
        return eth(0x0800, ip4(6, tcp(40002, 443, b"", doff=15)))

    def tcp_doff_small(r):
        return eth(0x0800, ip4(6, tcp(40003, 443, r.randbytes(12), doff=2)))

    def tcp_trunc(r):
        return eth(0x0800, ip4(6, b"\x9c\x44\x01\xbb\x00", tot=25))

    def tls_huge_record(r):   # TLS handshake record header claiming 65535 bytes
        return eth(0x0800, ip4(6, tcp(40004, 443, b"\x16\x03\x01\xff\xff\x01\xff\xff\xff" + r.randbytes(r.randint(0, 200)))))

    def tls_sni_overrun(r):   # ClientHello whose server_name extension runs past its end
        body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        ext = b"\x00\x00\xff\xf0" + b"\xff\xe0\x00\xff\xd0" + b"overrun.example"
        body += struct.pack("!H", 0xFFFF) + ext
        hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
        rec = b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
        return eth(0x0800, ip4(6, tcp(40005, 443, rec)))

    def tls_zero_len_ext(r):
        body = b"\x03\x03" + b"\x00" * 32 + b"\x20" + b"\x00" * 5
        hs = b"\x01\x00\x00\x00" + body
        return eth(0x0800, ip4(6, tcp(40006, 443, b"\x16\x03\x01\x00\x00" + hs)))

    def http_no_crlf(r):
        req = b"GET / HTTP/1.1\r\nHost: " + bytes(r.choice(b"abcdefghij.-:") for _ in range(1800))
        return eth(0x0800, ip4(6, tcp(40007, 80, req)))

    def http_connect_junk(r):
        return eth(0x0800, ip4(6, tcp(40008, 8888, b"CONNECT \x00\xff:99999 HTTP/1.1\r\nHost: :::\r\n\r\n")))

    def ip4_frag_overlap(r):
        return eth(0x0800, ip4(17, udp(53, 40000, r.randbytes(64)), frag=0x2000 | r.randint(0, 8191), ident=0x4242))

    def ip6_bad_ext(r):       # IPv6 payload length too big, hop-by-hop header length past the end
        hdr = struct.pack("!IHBB16s16s", 0x60000000, 65535, 0, 64,
                          ipaddress.ip_address("2001:db8::10").packed,
                          ipaddress.ip_address("2001:db8::1").packed)
        return eth(0x86DD, hdr + b"\x11\xff" + r.randbytes(6))

    def ip6_frag_chain(r):    # fragment header followed by another fragment header...
        hdr = struct.pack("!IHBB16s16s", 0x60000000, 8 * 20, 44, 64,
                          ipaddress.ip_address("2001:db8::10").packed,
                          ipaddress.ip_address("2001:db8::1").packed)
        return eth(0x86DD, hdr + b"\x2c\x00\x00\x01\x00\x00\x00\x01" * 20)

    def vlan_nest(r):         # 100 nested VLAN tags, then nothing
        return bytes.fromhex("020000000001020000000010") + b"\x81\x00\x00\x64" * 100 + b"\x08\x00\x45"

    return [rnd_bytes, short_eth, trunc_ip4, ihl15, ihl_small, totlen_huge, trunc_udp, udp_len_bad,
            dns_ptr_loop, dns_ptr_pingpong, dns_ptr_oob, dns_label_overrun, dns_bad_label_type,
            dns_counts, dns_long_name, dns_rdlen, dns_tcp_len, tcp_doff_big, tcp_doff_small,
            tcp_trunc, tls_huge_record, tls_sni_overrun, tls_zero_len_ext, http_no_crlf,
            http_connect_junk, ip4_frag_overlap, ip6_bad_ext, ip6_frag_chain, vlan_nest]


def cmd_garbage(dst):
    # HAND-BUILT: no real client produces these records.
    r = random.Random(1)
    builders = hostile_builders()
    recs = []
    ts = 1767225600
    for i in range(500):
        b = builders[i] if i < len(builders) else (builders[0] if r.random() < 0.5 else r.choice(builders))
        data = b(r)
        orig = len(data) if r.random() < 0.8 else len(data) + r.randint(0, 60000)
        recs.append((ts + i // 10, (i % 10) * 100000, data, orig))
    write_pcap(dst, 1, recs)
    # the very last record header claims a ~4 GiB packet: readers must stop cleanly
    with open(dst, "ab") as f:
        f.write(struct.pack("<IIII", ts + 60, 0, 0xFFFFFF00, 0xFFFFFF00) + b"\xde\xad\xbe\xef" * 4)


# --------------------------------------------------------------- verify
KASP = re.compile(r"(?:^|\.)(?:kaspersky\.com|kaspersky-labs\.com)$", re.I)
DECODE = ["-d", "tcp.port==8443,tls", "-d", "tcp.port==4433,tls", "-d", "tcp.port==8888,http"]
FIELDS = ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "dns.flags.response", "dns.qry.name",
          "dns.resp.name", "dns.cname", "tls.handshake.extensions_server_name", "http.host",
          "http.request.method", "http.request.uri"]
C, C2, C6 = "198.18.0.10", "198.18.0.11", "2001:db8::10"
CV, CQ, CT = "198.18.100.10", "198.18.100.10", "198.18.50.10"


def lt_set(client):
    return [(client, "s07.upd.kaspersky.com", "dns"), (client, "activation-v2.kaspersky.com", "tls")]


EXPECTED = {
    "dns-udp-tcp.pcap": [
        (C, "s05.upd.kaspersky.com", "dns"), (C, "activation-v2.kaspersky.com", "dns"),
        (C, "ksn-file-geo.kaspersky-labs.com", "dns"), (C, "dc1.ksn.kaspersky-labs.com", "dns"),
        (C, "downloads.upd.kaspersky.com", "dns"),
        (C6, "dc1.ksn.kaspersky-labs.com", "dns"), (C6, "activation-v2.kaspersky.com", "dns"),
        (C2, "s05.upd.kaspersky.com", "dns"), (C2, "downloads.upd.kaspersky.com", "dns")],
    "dns-fragmented.pcap": [(C, "cm.k.kaspersky-labs.com", "dns"), (C6, "cm.k.kaspersky-labs.com", "dns")],
    "tls-sni.pcap": [
        (C, "activation-v2.kaspersky.com", "dns"), (C, "activation-v2.kaspersky.com", "tls"),
        (C, "s01.upd.kaspersky.com", "tls"), (C2, "crl.kaspersky.com", "tls"),
        (C6, "dc1-cert.ksn.kaspersky-labs.com", "tls")],
    "tls-split-chromium.pcap": [(C, "ksn-url-geo.kaspersky-labs.com", "dns"),
                                (C, "ksn-url-geo.kaspersky-labs.com", "tls")],
    "tls-split-small-mss.pcap": [(C, "downloads.upd.kaspersky.com", "tls"), (C, "dnl-01.geo.kaspersky.com", "tls")],
    "http-host-proxy.pcap": [
        (C, "touch.kaspersky.com", "dns"), (C, "touch.kaspersky.com", "http"),
        (C, "dnl-08.geo.kaspersky.com", "http"), (C2, "s02.upd.kaspersky.com", "http"),
        (C, "p03.upd.kaspersky.com", "http"), (C, "cm.k.kaspersky-labs.com", "http"),
        (C, "cm.k.kaspersky-labs.com", "tls"), (C6, "touch.kaspersky.com", "http")],
    "negative-controls.pcap": [],
    "linktypes/ethernet.pcap": lt_set(C),
    "linktypes/sll.pcap": lt_set(C),
    "linktypes/sll2.pcap": lt_set(C),
    "linktypes/nanosec.pcap": lt_set(C),
    "linktypes/multi-if.pcapng": lt_set(C),
    "linktypes/null.pcap": lt_set(C),
    "linktypes/vlan.pcap": lt_set(CV),
    "linktypes/qinq.pcap": lt_set(CQ),
    "linktypes/raw.pcap": lt_set(CT),
    "damaged/gzip/dns.pcap.gz": None,          # = dns-udp-tcp.pcap
    "damaged/truncated.pcap": None,            # computed: records before the cut
    "damaged/truncated.pcap.gz": None,         # computed: records before the cut
    "damaged/not-a-capture.pcap": [],
    "damaged/empty.pcap": [],
    "damaged/header-only.pcap": [],
    "damaged/garbage-packets.pcap": [],
}
ALLOWED_NETS = [ipaddress.ip_network(n) for n in
                ("198.18.0.0/15", "2001:db8::/32", "fe80::/10", "ff02::/16", "::/128")]


def tshark(path, args):
    p = subprocess.run(["tshark", "-n", "-r", path] + DECODE + args, capture_output=True, text=True)
    err = "\n".join(l for l in p.stderr.splitlines() if "Running as user" not in l)
    return p.returncode, p.stdout, err.strip()


def norm_host(h):
    h = h.strip().lower()
    if h.startswith("["):
        h = h[1:h.index("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":")[0]
    return h.rstrip(".")


def contacts(path):
    args = ["-Y", "dns or tls.handshake.type == 1 or http.request", "-T", "fields",
            "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=;"]
    for f in FIELDS:
        args += ["-e", f]
    rc, out, err = tshark(path, args)
    found, names = set(), set()
    for line in out.splitlines():
        v = line.split("\t")
        v += [""] * (len(FIELDS) - len(v))
        d = dict(zip(FIELDS, v))
        lst = lambda k: [x for x in d[k].split(";") if x]
        src = (lst("ip.src") or lst("ipv6.src") or ["?"])[0]
        dst = (lst("ip.dst") or lst("ipv6.dst") or ["?"])[0]

        def add(client, ns, kind):
            for n in ns:
                n = norm_host(n)
                if not n or n == "<root>":
                    continue
                names.add(n)
                if KASP.search(n):
                    found.add((client, n, kind))
        resp = lst("dns.flags.response")
        if resp:
            if any(x in ("1", "True") for x in resp):
                add(dst, lst("dns.qry.name") + lst("dns.resp.name") + lst("dns.cname"), "dns")
            else:
                add(src, lst("dns.qry.name"), "dns")
        if lst("tls.handshake.extensions_server_name"):
            add(src, lst("tls.handshake.extensions_server_name"), "tls")
        if lst("http.request.method"):
            ns = lst("http.host")
            for m, uri in zip(lst("http.request.method"), lst("http.request.uri")):
                if "://" in uri:
                    ns.append(uri.split("://", 1)[1].split("/", 1)[0])
                elif m == "CONNECT":
                    ns.append(uri)
            add(src, ns, "http")
    return rc, err, found, names


def addresses(path):
    rc, out, err = tshark(path, ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=;",
                                 "-e", "ip.src", "-e", "ip.dst", "-e", "ipv6.src", "-e", "ipv6.dst",
                                 "-e", "arp.src.proto_ipv4", "-e", "arp.dst.proto_ipv4"])
    seen = set(t for t in re.split(r"[\t;\n]", out) if t)
    bad = sorted(a for a in seen if not any(ipaddress.ip_address(a) in n for n in ALLOWED_NETS))
    return seen, bad


def l3_of(data, lt):
    if lt == 1:
        et, off = struct.unpack("!H", data[12:14])[0], 14
        while et in (0x8100, 0x88A8):
            et, off = struct.unpack("!H", data[off + 2:off + 4])[0], off + 4
        return et, data[off:]
    if lt == 101:
        return (0x0800 if data[0] >> 4 == 4 else 0x86DD), data
    raise ValueError(lt)


def tcp_streams(path):
    lt, nsec, recs = read_pcap(path)
    streams = {}
    for ts, frac, data, orig, _ in recs:
        et, l3 = l3_of(data, lt)
        if et != 0x0800 or l3[9] != 6:
            continue
        ihl, tot = (l3[0] & 15) * 4, struct.unpack("!H", l3[2:4])[0]
        t = l3[ihl:tot]
        sport, dport, seq = struct.unpack("!HHI", t[:8])
        doff, flags = (t[12] >> 4) * 4, t[13]
        key = (l3[12:16], sport, l3[16:20], dport)
        st = streams.setdefault(key, {"isn": None, "segs": {}})
        if flags & 0x02:
            st["isn"] = seq
        pl = t[doff:]
        if pl and seq not in st["segs"]:
            st["segs"][seq] = pl
    return streams


def sni_split(path, ports=(443, 4433)):
    """For each client->server TLS stream: (sni, segment count, boundaries inside the SNI)."""
    res = []
    for (src, sport, dst, dport), st in tcp_streams(path).items():
        if dport not in ports or st["isn"] is None:
            continue
        seqs, buf, bounds, nxt = sorted(st["segs"]), b"", [], (st["isn"] + 1) & 0xFFFFFFFF
        while nxt in st["segs"]:
            buf += st["segs"][nxt]
            bounds.append(len(buf))
            nxt = (nxt + len(st["segs"][nxt])) & 0xFFFFFFFF
            if len(buf) > 5 and len(buf) >= 5 + struct.unpack("!H", buf[3:5])[0]:
                break
        if len(buf) < 50 or buf[0] != 0x16 or buf[5] != 1:
            continue
        off = 9 + 2 + 32
        off += 1 + buf[off]
        off += 2 + struct.unpack("!H", buf[off:off + 2])[0]
        off += 1 + buf[off]
        end = off + 2 + struct.unpack("!H", buf[off:off + 2])[0]
        off += 2
        while off + 4 <= end:
            etype, elen = struct.unpack("!HH", buf[off:off + 4])
            if etype == 0:
                nlen = struct.unpack("!H", buf[off + 7:off + 9])[0]
                a, b = off + 9, off + 9 + nlen
                inside = [x for x in bounds if a < x < b]
                nsegs = next(i for i, x in enumerate(bounds) if x >= 5 + struct.unpack("!H", buf[3:5])[0]) + 1
                res.append((buf[a:b].decode(), nsegs, inside, (a, b)))
                break
            off += 4 + elen
    return res


def fragments(path):
    lt, nsec, recs = read_pcap(path)
    first, rest = [], []
    for ts, frac, data, orig, _ in recs:
        et, l3 = l3_of(data, lt)
        if et == 0x0800:
            fr = struct.unpack("!H", l3[6:8])[0]
            if fr & 0x2000 or fr & 0x1FFF:
                (first if (fr & 0x1FFF) == 0 else rest).append(("v4", l3))
        elif et == 0x86DD and l3[6] == 44:
            fo = struct.unpack("!H", l3[42:44])[0]
            (first if (fo >> 3) == 0 else rest).append(("v6", l3))
    return first, rest


def real_name_bytes(raw):
    """Occurrences of a real Kaspersky-owned host name in raw bytes (text or DNS wire form)."""
    hits = re.findall(rb"(?i)(?<![a-z0-9-])kaspersky(?:-labs)?\.com(?![a-z0-9-]|\.[a-z0-9])", raw)
    hits += re.findall(rb"(?i)(?:\x09kaspersky|\x0ekaspersky-labs)\x03com(?:\x00|[\xc0-\xff])", raw)
    return hits


def pcapng_idbs(path):
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:4] == b"\x0a\x0d\x0d\x0a" and raw[8:12] == b"\x4d\x3c\x2b\x1a", "not a little-endian pcapng"
    off, idbs = 0, []
    while off + 12 <= len(raw):
        btype, blen = struct.unpack("<II", raw[off:off + 8])
        if btype == 1:
            lt = struct.unpack("<H", raw[off + 8:off + 10])[0]
            name = ""
            o = off + 16
            while o + 4 <= off + blen - 4:
                code, olen = struct.unpack("<HH", raw[o:o + 4])
                if code == 0:
                    break
                if code == 2:
                    name = raw[o + 4:o + 4 + olen].decode(errors="replace")
                o += 4 + ((olen + 3) & ~3)
            idbs.append((lt, name))
        off += blen
    return idbs


def prefix_pcap(raw):
    """Only the complete records of a (possibly cut) pcap byte string."""
    lt, nsec, recs = parse_pcap_bytes(raw)
    end = recs[-1][4] + 16 + len(recs[-1][2]) if recs else 24
    return raw[:end]


def cmd_verify(out, work):
    problems, notes = [], []

    def check(cond, msg):
        if not cond:
            problems.append(msg)
        return cond

    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                   if f != "expected.json")
    check(sorted(EXPECTED) == files, "file list differs from EXPECTED: %s" % sorted(set(files) ^ set(EXPECTED)))
    exp = {}
    for rel in files:
        path = os.path.join(out, rel)
        rc, err, found, names = contacts(path)
        want = EXPECTED.get(rel)
        if rel == "damaged/gzip/dns.pcap.gz":
            want = EXPECTED["dns-udp-tcp.pcap"]
        if rel in ("damaged/truncated.pcap", "damaged/truncated.pcap.gz"):
            raw = open(path, "rb").read()
            if rel.endswith(".gz"):
                raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw)
            tmp = os.path.join(work, "prefix.pcap")
            with open(tmp, "wb") as f:
                f.write(prefix_pcap(raw))
            want = sorted(contacts(tmp)[2])
            check(want and set(want) <= set(EXPECTED["dns-udp-tcp.pcap"]),
                  "%s: prefix contacts not a non-empty subset of dns-udp-tcp: %s" % (rel, want))
            check(rc != 0 and err, "%s: tshark should report the damage (rc=%d)" % (rel, rc))
            notes.append("%s: tshark rc=%d: %s" % (rel, rc, err.splitlines()[-1] if err else ""))
        elif rel.startswith("damaged/") and rel != "damaged/gzip/dns.pcap.gz":
            notes.append("%s: tshark rc=%d: %s" % (rel, rc, err.splitlines()[-1] if err else "(no error)"))
        else:
            check(rc == 0 and not err, "%s: tshark rc=%d err=%s" % (rel, rc, err))
            seen, bad = addresses(path)
            check(not bad, "%s: addresses outside the documentation ranges: %s" % (rel, bad))
        check(set(want) == found, "%s: contacts differ\n  missing: %s\n  extra:   %s"
              % (rel, sorted(set(want) - found), sorted(found - set(want))))
        exp[rel] = [{"client": c, "name": n, "kind": k} for c, n, k in sorted(set(want))]
        if not want:
            raw = open(path, "rb").read()
            if rel.endswith(".gz"):
                raw = gzip.decompress(raw)
            check(not real_name_bytes(raw), "%s: contains a real Kaspersky name in its bytes: %s"
                  % (rel, real_name_bytes(raw)[:5]))
            check(not [n for n in names if KASP.search(n)], "%s: decoded Kaspersky names" % rel)
        if rel == "negative-controls.pcap":
            notes.append("negative-controls names: %s" % ", ".join(sorted(names)))
            for n in ("notkaspersky.com", "kaspersky.com.evil.example", "mykaspersky-labs.com",
                      "kaspersky.example.net", "upd-kaspersky.com.example.org", "www.example.org"):
                check(n in names, "negative-controls: %s not seen" % n)

    # --- file-specific checks
    p = os.path.join(out, "dns-udp-tcp.pcap")
    rc, o, e = tshark(p, ["-Y", "tcp.port == 53 && dns.flags.response == 0", "-T", "fields", "-e", "tcp.stream"])
    per = {}
    for s in o.split():
        per[s] = per.get(s, 0) + 1
    check(any(v >= 2 for v in per.values()), "dns-udp-tcp: no TCP connection carrying 2+ queries (%s)" % per)
    notes.append("dns-udp-tcp: DNS queries per TCP stream: %s" % per)

    p = os.path.join(out, "dns-fragmented.pcap")
    first, rest = fragments(p)
    fams = sorted(set(f for f, _ in first))
    check(fams == ["v4", "v6"], "dns-fragmented: first fragments for %s only" % fams)
    check(all(b"kaspersky" not in l3 for _, l3 in first), "dns-fragmented: Kaspersky name in a first fragment")
    check(any(b"kaspersky" in l3 for _, l3 in rest), "dns-fragmented: Kaspersky name not in a later fragment")
    rc, o, e = tshark(p, ["-Y", "dns.flags.response == 1", "-T", "fields", "-e", "frame.len", "-e", "udp.length",
                          "-e", "ip.fragments", "-e", "ipv6.fragments"])
    notes.append("dns-fragmented: %d first / %d later fragments; responses (frame.len, udp.length): %s"
                 % (len(first), len(rest), [tuple(l.split("\t")[:2]) for l in o.splitlines()]))

    p = os.path.join(out, "tls-split-chromium.pcap")
    rc, o, e = tshark(p, ["-Y", "tls.handshake.type == 1", "-T", "fields", "-E", "occurrence=a",
                          "-E", "aggregator=,", "-e", "tcp.segment.count", "-e", "tls.record.length",
                          "-e", "tls.handshake.extensions_key_share_group",
                          "-e", "tls.handshake.extensions_server_name"])
    rows = [l.split("\t") for l in o.splitlines()]
    check(any(r[0] and int(r[0]) >= 2 and "4588" in r[2].split(",") for r in rows),
          "chromium: no ClientHello with X25519MLKEM768 spread over 2+ segments: %s" % rows)
    notes.append("chromium ClientHellos (segments, record length, key share groups, sni): %s" % rows)
    rc, o, e = tshark(p, ["-Y", "tls.handshake.type == 1", "-V"])
    check("Reassembled TCP Segments" in o, "chromium: tshark shows no reassembled ClientHello")
    guard = os.path.join(work, "chromium-guard.pcap")
    seen, bad = addresses(guard)
    check(not bad, "chromium guard capture (any interface): foreign addresses %s" % bad)
    rc, o, e = tshark(guard, ["-Y", "dns.flags.response == 0", "-T", "fields", "-e", "dns.qry.name", "-e", "dns.qry.type"])
    qnames = sorted(set(l.split("\t")[0] for l in o.splitlines() if l))
    check(qnames == ["ksn-url-geo.kaspersky-labs.com"], "chromium looked up other names: %s" % qnames)
    notes.append("chromium guard: addresses %s; DNS queries %s" % (sorted(seen), sorted(set(o.split("\n")) - {""})))

    p = os.path.join(out, "tls-split-small-mss.pcap")
    res = sni_split(p)
    notes.append("small-mss ClientHellos (sni, segments, boundaries inside sni, sni byte range): %s" % res)
    for n in ("downloads.upd.kaspersky.com", "dnl-01.geo.kaspersky.com"):
        check(any(r[0] == n and r[2] for r in res), "small-mss: SNI %s not split across segments" % n)

    p = os.path.join(out, "http-host-proxy.pcap")
    rc, o, e = tshark(p, ["-Y", "http.request", "-T", "fields", "-e", "ip.src", "-e", "ipv6.src",
                          "-e", "http.request.method", "-e", "http.request.uri", "-e", "http.host"])
    notes.append("http requests: %s" % [tuple(x for x in l.split("\t") if x) for l in o.splitlines()])
    check("CONNECT" in o and "http://p03.upd.kaspersky.com/index/u0607g.xml" in o and
          "s02.upd.kaspersky.com." in o and "dnl-08.geo.kaspersky.com:8080" in o, "http: requests missing")

    # link types
    want_lt = {"linktypes/ethernet.pcap": 1, "linktypes/sll.pcap": 113, "linktypes/sll2.pcap": 276,
               "linktypes/nanosec.pcap": 1, "linktypes/vlan.pcap": 1, "linktypes/qinq.pcap": 1,
               "linktypes/raw.pcap": 101, "linktypes/null.pcap": 0}
    for rel, lt in want_lt.items():
        got = read_pcap(os.path.join(out, rel))
        check(got[0] == lt, "%s: link type %d, want %d" % (rel, got[0], lt))
        check(got[1] == (rel == "linktypes/nanosec.pcap"), "%s: nanosecond flag %s" % (rel, got[1]))
    ns_recs = read_pcap(os.path.join(out, "linktypes/nanosec.pcap"))[2]
    check(any(r[1] % 1000 for r in ns_recs), "nanosec: all timestamps are whole microseconds")
    idbs = pcapng_idbs(os.path.join(out, "linktypes/multi-if.pcapng"))
    check(len(idbs) == 2 and idbs[0][0] != idbs[1][0], "multi-if: IDBs %s" % idbs)
    notes.append("multi-if.pcapng interfaces (linktype, name): %s" % idbs)
    for rel, tags in (("linktypes/vlan.pcap", {(0x8100, 100)}), ("linktypes/qinq.pcap", {(0x88A8, 200), (0x8100, 100)})):
        lt, nsec, recs = read_pcap(os.path.join(out, rel))
        seen_tags = set()
        for r in recs:
            d, off = r[2], 12
            while d[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
                seen_tags.add((struct.unpack("!H", d[off:off + 2])[0], struct.unpack("!H", d[off + 2:off + 4])[0] & 0xFFF))
                off += 4
        tagged = sum(1 for r in recs if r[2][12:14] in (b"\x81\x00", b"\x88\xa8"))
        check(seen_tags == tags and tagged == len(recs), "%s: tags %s, %d/%d tagged" % (rel, seen_tags, tagged, len(recs)))
        if rel.endswith("qinq.pcap"):
            check(all(r[2][12:14] == b"\x88\xa8" and r[2][16:18] == b"\x81\x00" for r in recs),
                  "qinq: not every frame is S-tag then C-tag")
        notes.append("%s: %d frames, all tagged %s" % (rel, len(recs), sorted(seen_tags)))

    total = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    check(total < 3 * 1024 * 1024, "total size %d bytes" % total)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(exp, f, indent=2, sort_keys=True)
        f.write("\n")
    for n in notes:
        print("note: " + n)
    for rel in files:
        print("%-34s %8d bytes  %d expected contact(s)" % (rel, os.path.getsize(os.path.join(out, rel)), len(exp[rel])))
    print("total %d bytes" % total)
    for pr in problems:
        print("PROBLEM: " + pr)
    return 1 if problems else 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "chain":
        cmd_chain()
    elif cmd == "null":
        cmd_null(*args)
    elif cmd == "truncate":
        cmd_truncate(*args)
    elif cmd == "gzip":
        cmd_gzip(*args)
    elif cmd == "garbage":
        cmd_garbage(*args)
    elif cmd == "verify":
        sys.exit(cmd_verify(*args))
    else:
        sys.exit("unknown command " + cmd)
PY

# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------
SRV4=198.18.0.1
SRV6=2001:db8::1
# Kaspersky names served with A 198.18.0.1 and AAAA 2001:db8::1
K_NAMES="s05.upd.kaspersky.com activation-v2.kaspersky.com ksn-file-geo.kaspersky-labs.com
dc1.ksn.kaspersky-labs.com downloads.upd.kaspersky.com s07.upd.kaspersky.com s01.upd.kaspersky.com
crl.kaspersky.com dc1-cert.ksn.kaspersky-labs.com touch.kaspersky.com dnl-08.geo.kaspersky.com
s02.upd.kaspersky.com p03.upd.kaspersky.com dnl-01.geo.kaspersky.com"
# look-alikes (negative controls) and ordinary names
L_NAMES="notkaspersky.com kaspersky.com.evil.example mykaspersky-labs.com kaspersky.example.net
upd-kaspersky.com.example.org www.example.org"

DNS_ARGS=()
for n in $K_NAMES $L_NAMES; do DNS_ARGS+=("--host-record=$n,$SRV4,$SRV6,300"); done
DNS_ARGS+=("--host-record=ksn-url-geo.kaspersky-labs.com,$SRV4,300")          # IPv4 only (Chromium)
for i in $(seq 1 16); do DNS_ARGS+=("--host-record=cm.k.kaspersky-labs.com,198.18.1.$i,300"); done
DNS_ARGS+=("--cname=updates.example.net,downloads.upd.kaspersky.com,300")
DNS_ARGS+=("--txt-record=example.net,v=spf1 -all")
while read -r a; do DNS_ARGS+=("$a"); done < <("$PY" "$WORK/kdt_tools.py" chain)

# ---------------------------------------------------------------------------
# namespaces and links
# ---------------------------------------------------------------------------
log "creating namespaces $ALL_NS"
ns_etc "$SRV4" $NS_C $NS_C2 $NS_S
# the server namespace (tinyproxy's upstream look-ups) resolves every name to itself
for n in $K_NAMES $L_NAMES ksn-url-geo.kaspersky-labs.com cm.k.kaspersky-labs.com; do
    printf '%s\t%s\n' "$SRV4" "$n" >>"/etc/netns/$NS_S/hosts"
done

ns_add $ALL_NS
inns $NS_L sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null

mkveth() {  # mkveth <ns> <if> <mac> <lan-if> <lan-mac>
    ip link add "$2" netns "$1" address "$3" mtu 1500 type veth \
        peer name "$4" netns $NS_L address "$5" mtu 1500
    nooffload "$1" "$2"
    nooffload $NS_L "$4"
}
ip -n $NS_L link add br0 address 02:00:00:00:01:00 type bridge forward_delay 0 stp_state 0 mcast_snooping 0
nooffload $NS_L br0
mkveth $NS_C  veth-c  02:00:00:00:00:10 lan-c  02:00:00:00:01:10
mkveth $NS_C2 veth-c2 02:00:00:00:00:11 lan-c2 02:00:00:00:01:11
mkveth $NS_S  veth-s  02:00:00:00:00:01 lan-s  02:00:00:00:01:01
for p in lan-c lan-c2 lan-s; do ip -n $NS_L link set "$p" master br0 up; done
ip -n $NS_L link set br0 up

# 802.1Q / 802.1ad path: client veth-cv -- lan-cv [relay] trk-a == trk-b [relay] lan-sv -- veth-sv server
mkveth $NS_C veth-cv 02:00:00:00:64:10 lan-cv 02:00:00:00:65:10
mkveth $NS_S veth-sv 02:00:00:00:64:01 lan-sv 02:00:00:00:65:01
ip -n $NS_L link add trk-a address 02:00:00:00:66:0a mtu 1508 type veth peer name trk-b address 02:00:00:00:66:0b mtu 1508
nooffload $NS_L trk-a
nooffload $NS_L trk-b
for p in lan-cv lan-sv trk-a trk-b; do ip -n $NS_L link set "$p" promisc on up; done
inns $NS_C sysctl -q -w net.ipv6.conf.veth-cv.disable_ipv6=1 >/dev/null
inns $NS_S sysctl -q -w net.ipv6.conf.veth-sv.disable_ipv6=1 >/dev/null

# layer-3 tun path (LINKTYPE_RAW)
for ns in $NS_C $NS_S; do
    ip -n "$ns" tuntap add dev kdt-tun mode tun
    inns "$ns" sysctl -q -w net.ipv6.conf.kdt-tun.disable_ipv6=1 >/dev/null
done

ip -n $NS_C  addr add 198.18.0.10/24 dev veth-c
ip -n $NS_C  addr add 2001:db8::10/64 dev veth-c nodad
ip -n $NS_C  addr add 198.18.100.10/24 dev veth-cv
ip -n $NS_C  addr add 198.18.50.10 peer 198.18.50.1/32 dev kdt-tun
ip -n $NS_C2 addr add 198.18.0.11/24 dev veth-c2
ip -n $NS_C2 addr add 2001:db8::11/64 dev veth-c2 nodad
ip -n $NS_S  addr add 198.18.0.1/24 dev veth-s
ip -n $NS_S  addr add 198.18.0.2/24 dev veth-s
ip -n $NS_S  addr add 2001:db8::1/64 dev veth-s nodad
ip -n $NS_S  addr add 198.18.100.1/24 dev veth-sv
ip -n $NS_S  addr add 198.18.50.1 peer 198.18.50.10/32 dev kdt-tun
for x in "$NS_C veth-c" "$NS_C veth-cv" "$NS_C kdt-tun" "$NS_C2 veth-c2" "$NS_S veth-s" "$NS_S veth-sv" "$NS_S kdt-tun"; do
    set -- $x
    ip -n "$1" link set "$2" up
done
nooffload $NS_C kdt-tun
nooffload $NS_S kdt-tun

# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------
log "starting servers (dnsmasq, nginx, openssl s_server, tinyproxy)"
selfsigned "$WORK/key.pem" "$WORK/cert.pem" kdt-test-server.invalid >>"$CLOG" 2>&1

mkdir -p "$WORK/nginx/tmp" "$WORK/tinyproxy"
chmod 777 "$WORK/tinyproxy"
cat >"$WORK/nginx.conf" <<EOF
# nginx for the capture lab (generated by make_captures.sh)
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log info;
events { worker_connections 64; }
http {
    log_format kdt '\$remote_addr host="\$host" sni="\$ssl_server_name" "\$request" \$status';
    access_log $WORK/nginx/access.log kdt;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server_tokens off;
    default_type text/html;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 80 default_server;
        listen [::]:80 default_server;
        listen 8080 default_server;
        listen [::]:8080 default_server;
        listen 443 ssl http2 default_server;
        listen [::]:443 ssl http2 default_server;
        listen 8443 ssl default_server;
        listen [::]:8443 ssl default_server;
        server_name _;
        location / {
            return 200 "<!doctype html><html><head><title>kdt</title></head><body><p>kdt test server</p></body></html>\n";
        }
    }
}
EOF
cat >"$WORK/tinyproxy.conf" <<EOF
# tinyproxy for the capture lab (generated by make_captures.sh)
User tinyproxy
Group tinyproxy
Port 8888
Listen $SRV4
Timeout 30
LogFile "$WORK/tinyproxy/tinyproxy.log"
LogLevel Info
MaxClients 20
Allow 198.18.0.0/24
ViaProxyName "kdt-proxy"
ConnectPort 443
EOF

bg_ns $NS_S "$WORK/dnsmasq.out" dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll \
    --user=root --group=root --pid-file="$WORK/dnsmasq.pid" --log-queries --log-facility="$WORK/dnsmasq.log" \
    --edns-packet-max=4096 --local-ttl=300 "${DNS_ARGS[@]}"
bg_ns $NS_S "$WORK/nginx.out" nginx -e "$WORK/nginx/error.log" -c "$WORK/nginx.conf" -p "$WORK/nginx/"
bg_ns $NS_S "$WORK/s_server.out" openssl s_server -4 -accept 4433 -cert "$WORK/cert.pem" -key "$WORK/key.pem" -www
bg_ns $NS_S "$WORK/tinyproxy.out" tinyproxy -d -c "$WORK/tinyproxy.conf"

servers_up() {
    local l p
    l=$(inns $NS_S ss -Hlntu | awk '{print $5}')
    for p in 53 80 8080 443 8443 4433 8888; do grep -q ":$p\$" <<<"$l" || return 1; done
}
wait_for 15 servers_up || { inns $NS_S ss -lntup >&2; die "servers did not come up (logs in $WORK)"; }

# sanity check (also fills the neighbour caches before the first capture)
client $NS_C  dig +short @$SRV4 www.example.org
client $NS_C2 dig +short @$SRV4 www.example.org
client $NS_C  dig +short -6 @$SRV6 www.example.org AAAA

DIG="dig +tries=1 +time=3"
CURL="curl -sS --max-time 15 -o /dev/null -w %{remote_ip}:%{remote_port}_%{http_version}_%{http_code}\n"

# ---------------------------------------------------------------------------
# dns-udp-tcp.pcap
# ---------------------------------------------------------------------------
log "capture: dns-udp-tcp.pcap"
cap_start $NS_S veth-s "$OUT/dns-udp-tcp.pcap"
client $NS_C  $DIG @$SRV4 -b 198.18.0.10#41001 s05.upd.kaspersky.com A
client $NS_C  $DIG @$SRV4 +tcp +keepopen activation-v2.kaspersky.com A ksn-file-geo.kaspersky-labs.com A
client $NS_C  getent hosts dc1.ksn.kaspersky-labs.com
client $NS_C  getent ahostsv4 ksn-file-geo.kaspersky-labs.com
client $NS_C  $DIG @$SRV4 -b 198.18.0.10#41002 updates.example.net A
client $NS_C  $DIG @$SRV4 -b 198.18.0.10#41003 www.example.org A
client $NS_C  getent hosts www.example.org
client $NS_C  $DIG @$SRV4 -b 198.18.0.10#41004 example.net TXT
client $NS_C  $DIG -6 @$SRV6 -b 2001:db8::10#41005 dc1.ksn.kaspersky-labs.com AAAA
client $NS_C  $DIG -6 @$SRV6 +tcp activation-v2.kaspersky.com AAAA
client $NS_C2 $DIG @$SRV4 +tcp s05.upd.kaspersky.com AAAA
client $NS_C2 getent ahostsv4 updates.example.net
cap_stop

# ---------------------------------------------------------------------------
# dns-fragmented.pcap
# ---------------------------------------------------------------------------
log "capture: dns-fragmented.pcap"
cap_start $NS_S veth-s "$OUT/dns-fragmented.pcap"
client $NS_C $DIG @$SRV4 -b 198.18.0.10#41011 +bufsize=4096 +notcp +ignore big.example.net A
client $NS_C $DIG -6 @$SRV6 -b 2001:db8::10#41012 +bufsize=4096 +notcp +ignore big.example.net A
cap_stop

# ---------------------------------------------------------------------------
# tls-sni.pcap
# ---------------------------------------------------------------------------
log "capture: tls-sni.pcap"
cap_start $NS_S veth-s "$OUT/tls-sni.pcap"
client $NS_C  $CURL -4 -k --local-port 42001 https://activation-v2.kaspersky.com/
client $NS_C  openssl s_client -connect $SRV4:8443 -servername s01.upd.kaspersky.com -brief </dev/null
client $NS_C2 $CURL -k --tls-max 1.2 --local-port 42002 --resolve crl.kaspersky.com:443:$SRV4 https://crl.kaspersky.com/
client $NS_C  $CURL -6 -k --local-port 42003 --resolve "dc1-cert.ksn.kaspersky-labs.com:443:[$SRV6]" https://dc1-cert.ksn.kaspersky-labs.com/
cap_stop

# ---------------------------------------------------------------------------
# tls-split-chromium.pcap
# ---------------------------------------------------------------------------
log "capture: tls-split-chromium.pcap (headless Chromium)"
CH=$WORK/chromium
cap_start $NS_C veth-c "$OUT/tls-split-chromium.pcap"
CH_CAP=$CAP_PID
cap_start $NS_C any "$WORK/chromium-guard.pcap"        # everything Chromium sends, any interface
CH_GUARD=$CAP_PID
run_chromium $NS_C "$CH" https://ksn-url-geo.kaspersky-labs.com/ --disable-quic \
    --disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater \
    --host-resolver-rules='MAP * ~NOTFOUND, EXCLUDE ksn-url-geo.kaspersky-labs.com' --ignore-certificate-errors
cap_stop "$CH_GUARD"
cap_stop "$CH_CAP"
[ "$CH_RC" -eq 0 ] || die "chromium exited with $CH_RC (see $CH/chromium.log)"
grep -q 'kdt test server' "$CH/dom.html" || die "chromium did not get the page (see $CH/chromium.log)"

# ---------------------------------------------------------------------------
# tls-split-small-mss.pcap: route MTU 92 / advmss 52 towards 198.18.0.2, i.e.
# 40 payload bytes per segment (MSS 52 - 12 bytes of TCP timestamps), so the
# SNI (bytes 153..180 of curl's / openssl's ClientHello) crosses byte 160
# ---------------------------------------------------------------------------
log "capture: tls-split-small-mss.pcap"
ip -n $NS_C route add 198.18.0.2/32 dev veth-c mtu lock 92 advmss 52
cap_start $NS_S veth-s "$OUT/tls-split-small-mss.pcap"
client $NS_C $CURL -k --local-port 43001 --resolve downloads.upd.kaspersky.com:443:198.18.0.2 https://downloads.upd.kaspersky.com/
client $NS_C openssl s_client -connect 198.18.0.2:4433 -servername dnl-01.geo.kaspersky.com -brief </dev/null
cap_stop
ip -n $NS_C route del 198.18.0.2/32

# ---------------------------------------------------------------------------
# http-host-proxy.pcap
# ---------------------------------------------------------------------------
log "capture: http-host-proxy.pcap"
cap_start $NS_S veth-s "$OUT/http-host-proxy.pcap"
client $NS_C  $CURL -4 --local-port 44001 http://touch.kaspersky.com/
client $NS_C  $CURL --local-port 44002 --resolve dnl-08.geo.kaspersky.com:8080:$SRV4 http://dnl-08.geo.kaspersky.com:8080/bases/av/kdb/i386/dailyc.kdc
client $NS_C2 $CURL --local-port 44003 -H 'Host: s02.upd.kaspersky.com.' http://$SRV4/
client $NS_C  $CURL --local-port 44004 -x http://$SRV4:8888 http://p03.upd.kaspersky.com/index/u0607g.xml
client $NS_C  $CURL --local-port 44005 -k -x http://$SRV4:8888 https://cm.k.kaspersky-labs.com/
client $NS_C  $CURL -6 --local-port 44006 --resolve "touch.kaspersky.com:80:[$SRV6]" http://touch.kaspersky.com/
cap_stop

# ---------------------------------------------------------------------------
# negative-controls.pcap: look-alike and unrelated names only
# ---------------------------------------------------------------------------
log "capture: negative-controls.pcap"
cap_start $NS_S veth-s "$OUT/negative-controls.pcap"
port=45000
for n in $L_NAMES; do
    port=$((port + 1))
    client $NS_C $DIG @$SRV4 -b 198.18.0.10#$port "$n" A
done
client $NS_C  $DIG @$SRV4 +tcp mykaspersky-labs.com AAAA
client $NS_C2 getent hosts kaspersky.example.net
client $NS_C  $CURL -4 -k --local-port 45101 https://notkaspersky.com/
client $NS_C  $CURL -k --local-port 45102 --resolve mykaspersky-labs.com:443:$SRV4 https://mykaspersky-labs.com/
client $NS_C2 $CURL -k --local-port 45103 --resolve kaspersky.com.evil.example:443:$SRV4 https://kaspersky.com.evil.example/
client $NS_C  openssl s_client -connect $SRV4:8443 -servername upd-kaspersky.com.example.org -brief </dev/null
client $NS_C  $CURL -6 -k --local-port 45104 --resolve "www.example.org:443:[$SRV6]" https://www.example.org/
client $NS_C  $CURL --local-port 45105 --resolve kaspersky.example.net:80:$SRV4 http://kaspersky.example.net/
client $NS_C  $CURL --local-port 45106 --resolve kaspersky.com.evil.example:8080:$SRV4 http://kaspersky.com.evil.example:8080/bases/
client $NS_C2 $CURL --local-port 45107 -H 'Host: upd-kaspersky.com.example.org.' http://$SRV4/
client $NS_C  $CURL --local-port 45108 -x http://$SRV4:8888 http://mykaspersky-labs.com/index/u0607g.xml
client $NS_C  $CURL --local-port 45109 -k -x http://$SRV4:8888 https://notkaspersky.com/
cap_stop

# ---------------------------------------------------------------------------
# linktypes/: one DNS query for s07.upd.kaspersky.com + one HTTPS request to
# activation-v2.kaspersky.com, seen through different link layers
# ---------------------------------------------------------------------------
lt_traffic() {  # lt_traffic <server address> <first local port> <client address>
    client $NS_C $DIG @"$1" -b "$3#$2" s07.upd.kaspersky.com A
    client $NS_C $CURL -k --local-port $(($2 + 1)) --resolve "activation-v2.kaspersky.com:443:$1" https://activation-v2.kaspersky.com/
}

log "capture: linktypes/ethernet, sll, sll2, nanosec, multi-if (one run, five captures)"
LT=$OUT/linktypes
cap_start $NS_C veth-c "$LT/ethernet.pcap";                                 P_ETH=$CAP_PID
cap_start $NS_C any    "$LT/sll.pcap" -y LINUX_SLL;                          P_SLL=$CAP_PID
cap_start $NS_C any    "$LT/sll2.pcap" -y LINUX_SLL2;                        P_SLL2=$CAP_PID
cap_start $NS_C veth-c "$LT/nanosec.pcap" --time-stamp-precision=nano;      P_NS=$CAP_PID
bg_ns $NS_C "$WORK/dumpcap.log" dumpcap -n -i veth-c -i any -w "$LT/multi-if.pcapng"
P_DC=$LASTPID
wait_for 10 grep -q "Capturing on" "$WORK/dumpcap.log" || die "dumpcap did not start"
sleep 0.5
lt_traffic $SRV4 46001 198.18.0.10
for p in $P_DC $P_NS $P_SLL2 $P_SLL $P_ETH; do cap_stop "$p"; done

for mode in vlan qinq; do
    log "capture: linktypes/$mode.pcap"
    ip -n $NS_C neigh flush dev veth-cv
    ip -n $NS_S neigh flush dev veth-sv
    bg_ns $NS_L "$WORK/relay-$mode.log" "$PY" -u "$WORK/relay.py" l2 $mode lan-cv trk-a trk-b lan-sv
    P_RELAY=$LASTPID
    wait_for 10 grep -q ready "$WORK/relay-$mode.log" || die "relay ($mode) did not start"
    cap_start $NS_L trk-a "$LT/$mode.pcap"
    if [ $mode = vlan ]; then lt_traffic 198.18.100.1 46011 198.18.100.10; else lt_traffic 198.18.100.1 46021 198.18.100.10; fi
    cap_stop
    stop_pid "$P_RELAY"
done

log "capture: linktypes/raw.pcap (tun)"
bg_ns $NS_C "$WORK/relay-tun.log" "$PY" -u "$WORK/relay.py" tun kdt-tun /var/run/netns/$NS_S kdt-tun
P_RELAY=$LASTPID
wait_for 10 grep -q ready "$WORK/relay-tun.log" || die "tun relay did not start"
sleep 0.5
cap_start $NS_C kdt-tun "$LT/raw.pcap"
lt_traffic 198.18.50.1 46031 198.18.50.10
cap_stop
stop_pid "$P_RELAY"

log "linktypes/null.pcap (converted from linktypes/ethernet.pcap)"
"$PY" "$WORK/kdt_tools.py" null "$LT/ethernet.pcap" "$LT/null.pcap"

# ---------------------------------------------------------------------------
# damaged/
# ---------------------------------------------------------------------------
log "damaged/ files"
D=$OUT/damaged
"$PY" "$WORK/kdt_tools.py" truncate "$OUT/dns-udp-tcp.pcap" "$D/truncated.pcap" >>"$CLOG"
cat >"$D/not-a-capture.pcap" <<'EOF'
This is a plain text file with a .pcap name, not a packet capture.
It exists to check that a reader rejects it cleanly.
EOF
: >"$D/empty.pcap"
head -c 24 "$OUT/dns-udp-tcp.pcap" >"$D/header-only.pcap"
"$PY" "$WORK/kdt_tools.py" gzip "$OUT/dns-udp-tcp.pcap" "$D/gzip/dns.pcap.gz"
"$PY" "$WORK/kdt_tools.py" gzip "$OUT/dns-udp-tcp.pcap" "$D/truncated.pcap.gz" 0.6
"$PY" "$WORK/kdt_tools.py" garbage "$D/garbage-packets.pcap"

# ---------------------------------------------------------------------------
# verify and install
# ---------------------------------------------------------------------------
chmod -R u=rwX,go=rX "$OUT"
log "verifying captures with tshark"
cp "$WORK/nginx/access.log" "$WORK/dnsmasq.log" "$WORK/tinyproxy/tinyproxy.log" "$WORK/" 2>/dev/null || true
VRC=0
"$PY" "$WORK/kdt_tools.py" verify "$OUT" "$WORK" >"$WORK/verify.log" 2>&1 || VRC=$?
cat "$WORK/verify.log"
[ "$VRC" -eq 0 ] || die "verification failed (see $WORK/verify.log)"

DEST=${DEST:-$HERE}
mkdir -p "$DEST"
log "installing into $DEST"
rm -rf "$DEST/linktypes" "$DEST/damaged" "$DEST/expected.json"
rm -f "$DEST"/*.pcap "$DEST"/*.pcapng
cp -a "$OUT/." "$DEST/"
log "done"
