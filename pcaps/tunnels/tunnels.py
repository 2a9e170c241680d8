#!/usr/bin/env python3
"""tunnels.py - helper for make_tunnel_captures.sh (Python 3 standard library only).

    tunnels.py encap INNER.pcap OUTDIR
        Wrap every frame of INNER.pcap (Ethernet frames captured by tcpdump on a plain
        veth) in the tunnel headers this kernel cannot produce, writing one capture per
        tunnel type into OUTDIR (the table ENCAPSULATIONS below says what each file is).

    tunnels.py verify DIR CONTACTS VXLAN_CONTACTS
        Check every capture in DIR with ``tshark -n`` (each DNS query and TLS ClientHello
        must be decoded inside the expected tunnel, and the Kaspersky contacts found must
        be exactly CONTACTS, or VXLAN_CONTACTS for vxlan.pcap, each a comma-separated list
        of client/name/kind) and write DIR/expected.json (file -> [{"client", "name",
        "kind"}], the format of pcaps/expected.json) from what tshark decoded.

How the frames are wrapped (the inner bytes are copied unchanged, timestamps kept):

* Outer addresses 198.18.200.1 (MAC 02:00:c6:12:c8:01) and 198.18.200.2
  (02:00:c6:12:c8:02), outer MTU 1600 so that 1514-byte inner frames fit without
  fragmenting.  Tunnels (GRE, GENEVE, MPLS, PPPoE) carry frames sent by the client
  (source MAC CLIENT_MAC) from .1 to .2 and the server's frames from .2 to .1, as the two
  tunnel endpoints would; ERSPAN is a one-way mirror session, always .1 -> .2.
* Outer IPv4 headers: DF set, TTL 64, an incrementing identification and a valid
  header checksum; UDP checksums (GENEVE) are computed, not left zero.
* Tunnels carrying IP rather than Ethernet (gre-ip, geneve-ip, mpls, pppoe) take the IP
  packets of the capture and leave ARP and the other non-IP frames out.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import zlib

OUTER_IP = {1: socket.inet_aton("198.18.200.1"), 2: socket.inet_aton("198.18.200.2")}
OUTER_MAC = {1: bytes.fromhex("0200c612c801"), 2: bytes.fromhex("0200c612c802")}
CLIENT_MAC = bytes.fromhex("0200c612ca0a")  # pl-c in make_tunnel_captures.sh

ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
ETH_TEB, ETH_ERSPAN_I_II, ETH_ERSPAN_III = 0x6558, 0x88BE, 0x22EB
ETH_MPLS, ETH_PPPOE_SESSION = 0x8847, 0x8864
GRE_C, GRE_K, GRE_S = 0x8000, 0x2000, 0x1000

# file -> (how it was made, the protocol tshark must show around each DNS query/ClientHello)
ENCAPSULATIONS = {
    "gre.pcap": (
        "GRE (RFC 2784/2890) with C, K and S set: valid checksum, key 42, per-direction "
        "sequence numbers; protocol 0x6558 (transparent Ethernet bridging, as Linux gretap "
        "with 'csum key 42 seq') carrying the whole Ethernet frame",
        "gre:eth",
    ),
    "gre-ip.pcap": (
        "GRE with only K set (key 43), protocol 0x0800/0x86DD carrying the IP packet "
        "(as a Linux 'ip tunnel mode gre key 43' / ip6gre tunnel would)",
        "gre:ip",
    ),
    "erspan1.pcap": (
        "ERSPAN type I: GRE without any flag, protocol 0x88BE, the mirrored Ethernet frame "
        "directly after the 4-byte GRE header",
        "gre:erspan:eth",
    ),
    "erspan2.pcap": (
        "ERSPAN type II: GRE with S set (sequence from 1), protocol 0x88BE, 8-byte ERSPAN "
        "header (version 1, session 123, VLAN 0, En 0, index 5), then the Ethernet frame "
        "(as Linux 'erspan seq key 123 erspan_ver 1 erspan 5')",
        "gre:erspan:eth",
    ),
    "erspan3.pcap": (
        "ERSPAN type III: GRE with S set, protocol 0x22EB, 12-byte header (version 2, "
        "session 124, BSO, P = 1, timestamp in 100 us units, hardware id 7, frame type 0 "
        "= Ethernet, direction bit D set on the server's frames, as Linux 'erspan_ver 2' "
        "builds it); every second frame (the 2nd, 4th, ...) also has the O bit and an "
        "8-byte platform-specific subheader (platform id 3: port index 5, upper 32 "
        "timestamp bits)",
        "gre:erspan:eth",
    ),
    "geneve.pcap": (
        "GENEVE (RFC 8926) on UDP 6081, VNI 4242, protocol 0x6558 (Ethernet), one 8-byte "
        "option (experimental class 0xFFFF, type 1, 4 data bytes), OptLen 2",
        "geneve:eth",
    ),
    "geneve-ip.pcap": (
        "GENEVE on UDP 6081, VNI 4243, no options, protocol 0x0800/0x86DD carrying the IP "
        "packet (no inner Ethernet)",
        "geneve:ip",
    ),
    "mpls.pcap": (
        "Ethernet type 0x8847 with a two-label stack (transport label 16005, then service "
        "label 100 with bottom of stack, TTL 64) and the IP packet directly after it",
        "mpls:ip",
    ),
    "mpls-pw.pcap": (
        "Ethernet pseudowire (RFC 4448): Ethernet type 0x8847, labels 16005 and 200 "
        "(bottom of stack), the RFC 4385 control word (first nibble 0, per-direction "
        "sequence number from 1), then the Ethernet frame with an 802.1Q customer tag, "
        "VLAN 300, inserted by this script (the kernel has no 8021q module)",
        "mpls:eth:ethertype:vlan",
    ),
    "pppoe.pcap": (
        "PPPoE session stage (RFC 2516): the inner frame's MAC addresses, type 0x8864, "
        "version/type 0x11, code 0, session 0x0001, PPP protocol 0x0021/0x0057, the IP "
        "packet",
        "pppoes:ppp:ip",
    ),
}

# tshark's MPLS heuristics take a pseudowire for one without control word; say which it is.
DECODE = ["-d", "mpls.label==200,pwethcw"]

# Every IPv4, UDP, TCP, GRE and ICMPv6 checksum, outer and inner, must be right.
CHECKSUMS = [
    "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
    "-Y", "ip.checksum.status == 0 || udp.checksum.status == 0 || tcp.checksum.status == 0"
    " || gre.checksum.status == 0 || icmpv6.checksum.status == 0",
    "-T", "fields", "-e", "frame.number",
]

# Names the tests expect in every capture (dig and curl in make_tunnel_captures.sh).
KASPERSKY = ("kaspersky.com", "kaspersky-labs.com")


# -- pcap files ---------------------------------------------------------------------------
def read_pcap(path: str) -> list[tuple[int, int, bytes]]:
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        e = "<"
    elif magic == b"\xa1\xb2\xc3\xd4":
        e = ">"
    else:
        raise SystemExit(f"{path}: not a microsecond pcap (tcpdump -w writes those)")
    linktype = struct.unpack_from(e + "I", data, 20)[0]
    if linktype != 1:
        raise SystemExit(f"{path}: link type {linktype}, expected Ethernet")
    out = []
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, caplen, wirelen = struct.unpack_from(e + "IIII", data, pos)
        if caplen != wirelen:
            raise SystemExit(f"{path}: a frame was cut by the snap length")
        out.append((sec, usec, data[pos + 16 : pos + 16 + caplen]))
        pos += 16 + caplen
    return out


def write_pcap(path: str, records: list[tuple[int, int, bytes]], linktype: int = 1) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for sec, usec, frame in records:
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)


# -- header builders ----------------------------------------------------------------------
def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Outer:
    """Outer Ethernet + IPv4 between the two tunnel endpoints."""

    def __init__(self) -> None:
        self.ident = 0x1000

    def eth(self, src: int, etype: int, payload: bytes) -> bytes:
        return OUTER_MAC[3 - src] + OUTER_MAC[src] + struct.pack("!H", etype) + payload

    def ipv4(self, src: int, proto: int, payload: bytes) -> bytes:
        self.ident = (self.ident + 1) & 0xFFFF
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), self.ident, 0x4000, 64, proto, 0,
            OUTER_IP[src], OUTER_IP[3 - src],
        )
        hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
        return self.eth(src, ETH_IPV4, hdr + payload)

    def udp(self, src: int, sport: int, dport: int, payload: bytes) -> bytes:
        length = 8 + len(payload)
        pseudo = OUTER_IP[src] + OUTER_IP[3 - src] + struct.pack("!BBH", 0, 17, length)
        hdr = struct.pack("!HHHH", sport, dport, length, 0)
        c = csum(pseudo + hdr + payload) or 0xFFFF
        return self.ipv4(src, 17, struct.pack("!HHHH", sport, dport, length, c) + payload)


def ip_packet(frame: bytes) -> tuple[int, bytes] | None:
    """(ethertype, IP packet without Ethernet padding) or None for non-IP frames."""
    etype = struct.unpack_from("!H", frame, 12)[0]
    if etype == ETH_IPV4:
        total = struct.unpack_from("!H", frame, 16)[0]
        return etype, frame[14 : 14 + total]
    if etype == ETH_IPV6:
        plen = struct.unpack_from("!H", frame, 18)[0]
        return etype, frame[14 : 14 + 40 + plen]
    return None


def flow_port(frame: bytes) -> int:
    """A UDP source port from the inner flow, as tunnel endpoints pick them (RFC 8926 3.3)."""
    pkt = ip_packet(frame)
    key = frame[:12] if pkt is None else pkt[1][8:40] if pkt[0] == ETH_IPV6 else pkt[1][12:20]
    return 49152 + zlib.crc32(bytes(sorted(key))) % 16384


def encap(inner_path: str, outdir: str) -> None:
    frames = read_pcap(inner_path)
    os.makedirs(outdir, exist_ok=True)
    outer = Outer()
    out: dict[str, list[tuple[int, int, bytes]]] = {name: [] for name in ENCAPSULATIONS}
    seq = {"gre": [0, 0, 0], "erspan2": 0, "erspan3": 0, "pw": [0, 0, 0]}
    for n, (sec, usec, frame) in enumerate(frames):
        src = 1 if frame[6:12] == CLIENT_MAC else 2
        pkt = ip_packet(frame)
        ts = sec + usec / 1e6

        def put(name: str, wire: bytes, sec: int = sec, usec: int = usec) -> None:
            out[name].append((sec, usec, wire))

        # GRE, C+K+S, transparent Ethernet bridging
        seq["gre"][src] += 1
        hdr = struct.pack("!HHHHII", GRE_C | GRE_K | GRE_S, ETH_TEB, 0, 0, 42, seq["gre"][src])
        c = csum(hdr + frame)
        put("gre.pcap", outer.ipv4(src, 47, hdr[:4] + struct.pack("!H", c) + hdr[6:] + frame))
        if pkt:
            put("gre-ip.pcap", outer.ipv4(src, 47, struct.pack("!HHI", GRE_K, pkt[0], 43) + pkt[1]))
        # ERSPAN I, II, III: a one-way mirror session .1 -> .2
        put("erspan1.pcap", outer.ipv4(1, 47, struct.pack("!HH", 0, ETH_ERSPAN_I_II) + frame))
        seq["erspan2"] += 1
        gre = struct.pack("!HHI", GRE_S, ETH_ERSPAN_I_II, seq["erspan2"])
        e2 = struct.pack("!HHI", 0x1000 | 0, (0 << 13) | (0 << 11) | (0 << 10) | 123, 5)
        put("erspan2.pcap", outer.ipv4(1, 47, gre + e2 + frame))
        seq["erspan3"] += 1
        gre = struct.pack("!HHI", GRE_S, ETH_ERSPAN_III, seq["erspan3"])
        opt = n % 2 == 1
        direction = 0 if src == 1 else 1
        bso = 1 if len(frame) < 60 else 2 if len(frame) > 1514 else 0  # as Linux sets it
        word = (1 << 15) | (0 << 10) | (7 << 4) | (direction << 3) | (0 << 1) | int(opt)
        stamp = int(ts * 10000)  # granularity 00: 100 microseconds
        e3 = struct.pack("!HHIHH", 0x2000 | 0, (bso << 11) | 124, stamp & 0xFFFFFFFF, 0, word)
        if opt:
            e3 += struct.pack("!HHI", 3 << 10, 5, stamp >> 32)
        put("erspan3.pcap", outer.ipv4(1, 47, gre + e3 + frame))
        # GENEVE
        option = struct.pack("!HBB", 0xFFFF, 0x01, 1) + b"kdt!"
        gen = struct.pack("!BBHI", len(option) // 4, 0, ETH_TEB, 4242 << 8) + option
        put("geneve.pcap", outer.udp(src, flow_port(frame), 6081, gen + frame))
        if pkt:
            gen = struct.pack("!BBHI", 0, 0, pkt[0], 4243 << 8)
            put("geneve-ip.pcap", outer.udp(src, flow_port(frame), 6081, gen + pkt[1]))
        # MPLS: IP directly after the stack, and an Ethernet pseudowire with control word
        if pkt:
            stack = struct.pack("!II", (16005 << 12) | 64, (100 << 12) | 0x100 | 64)
            put("mpls.pcap", outer.eth(src, ETH_MPLS, stack + pkt[1]))
        seq["pw"][src] = seq["pw"][src] % 0xFFFF + 1  # 0 means "not used" (RFC 4385)
        stack = struct.pack("!II", (16005 << 12) | 64, (200 << 12) | 0x100 | 64)
        cw = struct.pack("!HH", 0, seq["pw"][src])
        tagged = frame[:12] + struct.pack("!HH", ETH_VLAN, 300) + frame[12:]
        put("mpls-pw.pcap", outer.eth(src, ETH_MPLS, stack + cw + tagged))
        # PPPoE session
        if pkt:
            ppp = struct.pack("!H", 0x0021 if pkt[0] == ETH_IPV4 else 0x0057) + pkt[1]
            pppoe = struct.pack("!BBHH", 0x11, 0, 0x0001, len(ppp)) + ppp
            put("pppoe.pcap", frame[:12] + struct.pack("!H", ETH_PPPOE_SESSION) + pppoe)
    for name, records in out.items():
        write_pcap(os.path.join(outdir, name), records)
        print(f"{name}: {len(records)} frames", flush=True)


# -- verification -------------------------------------------------------------------------
def tshark(path: str, args: list[str]) -> list[list[str]]:
    p = subprocess.run(["tshark", "-n", "-r", path] + DECODE + args, capture_output=True, text=True)
    err = [ln for ln in p.stderr.splitlines() if ln and "Running as user" not in ln]
    if p.returncode != 0 or err:
        raise SystemExit(f"{path}: tshark rc={p.returncode}: {' / '.join(err)}")
    return [line.split("\t") for line in p.stdout.splitlines() if line]


def innermost(protocols: str, ip4: str, ip6: str) -> str:
    """The source address of the last IP layer in frame.protocols."""
    layers = protocols.split(":")
    last = max((i for i, p in enumerate(layers) if p in ("ip", "ipv6")), default=-1)
    if last < 0:
        return ""
    values = (ip4 if layers[last] == "ip" else ip6).split(",")
    return values[-1]


def is_kaspersky(name: str) -> bool:
    n = name.lower().rstrip(".")
    return any(n == d or n.endswith("." + d) for d in KASPERSKY)


def contacts(path: str, need: str) -> tuple[set[tuple[str, str, str]], list[str]]:
    """Kaspersky contacts tshark decodes in ``path``; problems where ``need`` is missing."""
    found: set[tuple[str, str, str]] = set()
    problems: list[str] = []
    fields = ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
              "-e", "frame.number", "-e", "frame.protocols", "-e", "ip.src", "-e", "ipv6.src"]
    for filt, field, kind in (
        ("dns.flags.response == 0", "dns.qry.name", "dns"),
        ("tls.handshake.type == 1", "tls.handshake.extensions_server_name", "tls"),
    ):
        for row in tshark(path, ["-Y", filt] + fields + ["-e", field]):
            row += [""] * (5 - len(row))
            num, protos, ip4, ip6, names = row[:5]
            if need not in protos:
                problems.append(f"{path} frame {num}: {protos} lacks {need}")
            client = innermost(protos, ip4, ip6)
            for name in names.split(","):
                if name and is_kaspersky(name):
                    found.add((client, name.lower().rstrip("."), kind))
    return found, problems


def verify(directory: str, expected_contacts: list[tuple[str, str, str]], vxlan_contacts: list[tuple[str, str, str]]) -> None:
    result: dict[str, list[dict[str, str]]] = {}
    problems: list[str] = []
    files = dict((name, need) for name, (_, need) in ENCAPSULATIONS.items())
    files["vxlan.pcap"] = "udp:vxlan:eth"
    files["inner.pcap"] = "eth:ethertype:ip"  # the unwrapped frames themselves
    for name, need in sorted(files.items()):
        path = os.path.join(directory, name)
        want = set(vxlan_contacts if name == "vxlan.pcap" else expected_contacts)
        got, bad = contacts(path, need)
        problems += bad
        for row in tshark(path, CHECKSUMS):
            problems.append(f"{name}: bad checksum in frame {row[0]}")
        if got != want:
            problems.append(f"{name}: tshark shows {sorted(got)}, expected {sorted(want)}")
        result[name] = [
            {"client": c, "kind": k, "name": n} for c, n, k in sorted(got, key=lambda t: (t[0], t[2], t[1]))
        ]
        print(f"{name}: {len(got)} contacts inside {need}", flush=True)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(1)
    with open(os.path.join(directory, "expected.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")


def parse_contacts(spec: str) -> list[tuple[str, str, str]]:
    """'client/name/kind,client/name/kind' -> tuples."""
    out = []
    for item in spec.split(","):
        client, name, kind = item.split("/")
        out.append((client, name, kind))
    return out


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "encap":
        encap(argv[1], argv[2])
    elif len(argv) == 4 and argv[0] == "verify":
        verify(argv[1], parse_contacts(argv[2]), parse_contacts(argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
