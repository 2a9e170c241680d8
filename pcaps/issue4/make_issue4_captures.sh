#!/usr/bin/env bash
# make_issue4_captures.sh - regenerate the issue-4 captures in pcaps/issue4/ (run as root):
#
#     sudo bash pcaps/issue4/make_issue4_captures.sh
#
# What it does
#   * builds a small lab of Linux network namespaces (nothing is connected to the
#     host's interfaces, no namespace has a default route; only 198.18.0.0/15 and
#     2001:db8::/32 are used):
#
#        kd4-client  (198.18.0.10, 2001:db8::10)  veth-c  --+
#        kd4-client2 (198.18.0.11)                veth-c2 --+
#        kd4-client3 (198.18.0.12)                veth-c3 --+-- br0 in kd4-lan
#        kd4-server  (198.18.0.1, .2, 2001:db8::1) veth-s --+
#
#   * runs real servers in kd4-server: dnsmasq (DNS), nginx (HTTP 80, HTTPS 443),
#     openssl s_server (TLS on 4433, 13000, 13001, 23150) and a stdlib Python TCP
#     server that speaks a small binary protocol (no TLS, no HTTP) on 9400, 14000, 23151;
#   * runs real clients: dig, curl, openssl s_client, headless Chromium and a stdlib
#     Python TCP/UDP peer;
#   * captures each file with tcpdump -n on the server's veth, checks every file with
#     tshark -n (the checks are listed in README.md), and writes expected.json from
#     what this script did (never from the detector's output).
#
# Files (details and expected alerts in README.md):
#   ksc-ports.pcap              Security Center ports: TLS 13000, plain TCP 14000,
#                               UDP 15000 server -> agent, TLS 23150, plain TCP 23151
#                               (must not alert), TLS 13001 (must not alert)
#   ip-literal-after-dns.pcap   dig activation-v2.kaspersky.com, then IP-literal HTTPS
#                               (no SNI), HTTP (Host: 198.18.0.1), TLS 1.3 resumption
#                               without SNI, the same over IPv6; a second client that
#                               never resolved the name uses the same address; a third
#                               client resolves the name, then speaks a binary protocol
#                               (no TLS, no HTTP) to the address
#   tls12-cert.pcap             TLS 1.2 server certificate CN/SAN s05.upd.kaspersky.com
#                               with SNI www.example.org; TLS 1.3 to the same server
#   dns-strength.pcap           NOERROR with an A record, NXDOMAIN, NOERROR without
#                               records (NODATA), and a query whose answer never
#                               reached the wire (a blackhole routing rule)
#   ech-grease.pcap             headless Chromium (GREASE ECH) to
#                               https://dc1.ksn.kaspersky-labs.com/
#   dns-snaplen.pcap            tcpdump -s 96: dig (EDNS, a cookie) asks for
#                               activation-v2.kaspersky.com (the query is cut inside its
#                               OPT record, the answer inside its A record) and for k.io,
#                               a CNAME to kaspersky.com (the CNAME record lies whole in
#                               the 96 bytes, the A record after it is cut)
#   ech-real.pcap               headless Chromium to https://s05.upd.kaspersky.com/, whose
#                               DNS HTTPS record carries an ECH configuration (public name
#                               ksn-url-geo.kaspersky-labs.com): real ECH, outer SNI = the
#                               public name; nginx has no ECH, so Chromium then retries
#                               without it (SNI s05.upd.kaspersky.com)
#
# Needs (Debian 12): iproute2 ethtool tcpdump tshark dnsmasq-base nginx-light
# bind9-dnsutils curl openssl chromium python3 (stdlib only).
#
# Environment: KEEP_WORK=1 keeps the temporary work directory; DEST=DIR writes the
# captures and expected.json to DIR instead of pcaps/issue4/ (tests/test_issue4.py does).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lab.sh
source "$HERE/../lab.sh"    # log, die, client, bg_ns, cap_start, teardown_lab, the EXIT trap, ...
DEST=${DEST:-$HERE}
PY=${PYTHON:-/usr/bin/python3}

NS_C=kd4-client
NS_C2=kd4-client2
NS_C3=kd4-client3
NS_S=kd4-server
NS_L=kd4-lan
ALL_NS="$NS_C $NS_C2 $NS_C3 $NS_S $NS_L"

SRV4=198.18.0.1
SRV4B=198.18.0.2
SRV6=2001:db8::1
C1=198.18.0.10
C1V6=2001:db8::10
C2=198.18.0.11
C3=198.18.0.12

CAP_OPTS=(--immediate-mode)     # tcpdump hands each packet over at once

lab_require ip ethtool tcpdump tshark dnsmasq nginx dig curl openssl chromium timeout setsid "$PY"
# cleanup: processes by PID, then our own namespaces (kd4-*) only; /etc/netns itself is
# left alone (other labs may use it concurrently)
lab_begin kd4-captures

chmod 755 "$WORK"
OUT=$WORK/out
mkdir -p "$OUT"
CLOG=$WORK/clients.log
TRUTH=$WORK/truth.tsv
: >"$CLOG"
: >"$TRUTH"

# truth <file> <client> <name> <kind> <strength> <port> [truncated]: one Kaspersky contact
# this script made (kind = the evidence the contact carries; strength = weak: one side only,
# completed: the other side answered, strong: a TLS handshake in both directions on a KSC
# port; port = the server's port, the alert's dest_port: evidence on different ports is not
# merged; truncated: the snaplen cut the message that carries the name)
truth() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${7:-}" >>"$TRUTH"; }

# ---------------------------------------------------------------------------
# helper program (stdlib only): a binary-protocol TCP peer, a UDP sender/receiver,
# the tshark checks and the expected.json writer
# ---------------------------------------------------------------------------
cat >"$WORK/kd4.py" <<'PY'
"""kd4.py - helpers for make_issue4_captures.sh (stdlib only)."""
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time

# A small binary protocol: a 4-byte length, then ASCII.  First byte 0x00, so it is
# neither a TLS record (0x16) nor an HTTP method.
REQUEST = b"\x00\x00\x00\x17KD4-AGENT hello server\n"
ANSWER = b"\x00\x00\x00\x18KD4-SERVER hello agent!\n"
DATAGRAM = b"KD4 connection request %d to the agent\n"


def fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_server(addr, *ports):
    socks = []
    for p in ports:
        s = socket.socket(fam(addr), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, int(p)))
        s.listen(8)
        socks.append(s)

    def serve(s):
        port = s.getsockname()[1]
        while True:
            c, peer = s.accept()
            with c:
                c.settimeout(10)
                data = c.recv(4096)
                print("port %d from %s: got %r, answering" % (port, peer, data), flush=True)
                c.sendall(ANSWER)
                c.shutdown(socket.SHUT_WR)
                try:
                    while c.recv(4096):
                        pass
                except OSError:
                    pass

    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def tcp_client(addr, port):
    s = socket.create_connection((addr, int(port)), timeout=10)
    s.sendall(REQUEST)
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    print("got %r" % got)
    return 0 if got == ANSWER else 1


def udp_recv(addr, port, n, timeout):
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    s.settimeout(float(timeout))
    print("ready", flush=True)
    for _ in range(int(n)):
        data, peer = s.recvfrom(2048)
        print("from %s: %r" % (peer, data), flush=True)
    print("done", flush=True)
    return 0


def udp_send(src, dst, port, n):
    s = socket.socket(fam(dst), socket.SOCK_DGRAM)
    s.bind((src, 0))
    for i in range(int(n)):
        s.sendto(DATAGRAM % (i + 1), (dst, int(port)))
        time.sleep(0.2)
    print("sent %s datagrams from %s" % (n, s.getsockname()))
    return 0


def expected(tsv, out):
    data = {}
    for name in ("ksc-ports.pcap", "ip-literal-after-dns.pcap", "tls12-cert.pcap", "dns-strength.pcap", "ech-grease.pcap",
                 "dns-snaplen.pcap", "ech-real.pcap"):
        data[name] = []
    with open(tsv) as f:
        for line in f:
            fname, client, hname, kind, strength, port, cut = line.rstrip("\n").split("\t")
            row = {"client": client, "name": hname, "kind": kind, "strength": strength, "port": int(port)}
            if cut:
                row["truncated"] = True
            if row not in data[fname]:
                data[fname].append(row)
    for rows in data.values():
        rows.sort(key=lambda r: (r["client"], r["kind"], r["name"], r["port"]))
    with open(out, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    return 0


# -- verification with tshark -n (one tshark run per file; the checks filter its rows) --
DECODE = []
for _p in (4433, 13000, 13001, 23150):
    DECODE += ["-d", "tcp.port==%d,tls" % _p]
FIELDS = [
    "frame.number", "frame.protocols", "frame.len", "frame.cap_len", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
    "tcp.stream", "tcp.srcport", "tcp.dstport", "tcp.flags.syn", "tcp.flags.ack", "tcp.len", "tcp.payload",
    "udp.srcport", "udp.dstport",
    "tls.handshake.type", "tls.handshake.version", "tls.handshake.extensions.supported_version",
    "tls.handshake.extension.type", "tls.handshake.extensions_server_name",
    "x509sat.uTF8String", "x509sat.printableString", "x509ce.dNSName",
    "dns.flags.response", "dns.id", "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.count.answers",
    "dns.a", "dns.aaaa", "dns.resp.ttl", "http.request", "http.host", "http.response.code",
    "dns.svcb.svcparam.echconfig",
]
FAILED = []
NOTES = []


class Pkt(dict):
    """One packet: field -> list of values ([] when absent)."""

    def one(self, field):
        v = self[field]
        return v[0] if v else ""

    def src(self):
        return self.one("ip.src") or self.one("ipv6.src")

    def dst(self):
        return self.one("ip.dst") or self.one("ipv6.dst")

    def has(self, field, value):
        return str(value) in self[field]

    def proto(self, name):
        return name in self.one("frame.protocols").split(":")


def packets(path):
    cmd = ["tshark", "-n", "-r", path, *DECODE, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"]
    for f in FIELDS:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        FAILED.append("tshark failed on %s: %s" % (path, r.stderr.strip()))
        return []
    out = []
    for line in r.stdout.splitlines():
        vals = line.split("\t")
        out.append(Pkt({f: [x for x in v.split("|") if x] for f, v in zip(FIELDS, vals)}))
    return out


def check(cond, msg):
    if not cond:
        FAILED.append(msg)


def foreign(pkts):
    seen, bad = set(), set()
    for p in pkts:
        for a in p["ip.src"] + p["ip.dst"] + p["ipv6.src"] + p["ipv6.dst"]:
            ip = ipaddress.ip_address(a)
            seen.add(a)
            ok = (ip.version == 4 and (ip in ipaddress.ip_network("198.18.0.0/15") or ip.is_loopback)) or (
                ip.version == 6 and (ip in ipaddress.ip_network("2001:db8::/32") or ip.is_link_local or ip.is_multicast or ip.is_loopback))
            if not ok:
                bad.add(a)
    return seen, bad


def plain_tcp(P, client, server, port, tag):
    """One connection to ``port``: a full handshake, the client speaks first, the server
    answers, and neither side's bytes are TLS or HTTP."""
    syns = [p for p in P if p.has("tcp.dstport", port) and p.has("tcp.flags.syn", 1) and p.has("tcp.flags.ack", 0)]
    check(len(syns) == 1 and syns[0].src() == client, "%s: want one SYN %s -> %d" % (tag, client, port))
    up = [p for p in P if p.src() == client and p.has("tcp.dstport", port) and p.one("tcp.len") not in ("", "0")]
    down = [p for p in P if p.src() == server and p.has("tcp.srcport", port) and p.one("tcp.len") not in ("", "0")]
    check(bool(up) and bool(down), "%s: plain TCP %d: want data both ways" % (tag, port))
    if up and down:
        check(int(up[0].one("frame.number")) < int(down[0].one("frame.number")), "%s: on %d the server spoke first" % (tag, port))
        NOTES.append("%s plain TCP %d: client sent %s, server sent %s" % (tag, port, up[0].one("tcp.payload"), down[0].one("tcp.payload")))
    check(not any(p.proto("tls") or p.proto("http") for p in P if p.has("tcp.srcport", port) or p.has("tcp.dstport", port)),
          "%s: tshark decodes TLS or HTTP on %d" % (tag, port))


def verify(out, work):
    c1, c1v6, c2, c3, s4, s6 = "198.18.0.10", "2001:db8::10", "198.18.0.11", "198.18.0.12", "198.18.0.1", "2001:db8::1"
    files = {}
    for name in ("ksc-ports.pcap", "ip-literal-after-dns.pcap", "tls12-cert.pcap", "dns-strength.pcap", "ech-grease.pcap",
                 "dns-snaplen.pcap", "ech-real.pcap"):
        files[name] = packets(os.path.join(out, name))
        seen, bad = foreign(files[name])
        check(not bad, "%s: foreign addresses %s" % (name, sorted(bad)))

    # ksc-ports.pcap
    P = files["ksc-ports.pcap"]
    def syns(port):
        return [p for p in P if p.has("tcp.dstport", port) and p.has("tcp.flags.syn", 1) and p.has("tcp.flags.ack", 0)]
    for port in (13000, 23150, 13001):
        check(len(syns(port)) == 1, "ksc: want one SYN to %d" % port)
        check(len([p for p in P if p.src() == c1 and p.has("tcp.dstport", port) and p.has("tls.handshake.type", 1)]) == 1,
              "ksc: want one ClientHello to %d" % port)
        check(len([p for p in P if p.src() == s4 and p.has("tcp.srcport", port) and p.has("tls.handshake.type", 2)]) == 1,
              "ksc: want one ServerHello from %d" % port)
    for port in (14000, 23151):
        plain_tcp(P, c1, s4, port, "ksc")
    udp = [p for p in P if p.has("udp.dstport", 15000)]
    check(len(udp) == 3 and all(p.src() == s4 and p.dst() == c1 for p in udp), "ksc: want 3 datagrams 198.18.0.1 -> 198.18.0.10:15000")
    check(not any(p.proto("icmp") for p in P), "ksc: ICMP (port unreachable?) in the capture")
    check(not any(p["tls.handshake.extensions_server_name"] or p.proto("dns") for p in P), "ksc: an SNI or DNS in ksc-ports.pcap")

    # ip-literal-after-dns.pcap
    P = files["ip-literal-after-dns.pcap"]
    a = [(p["dns.a"], p["dns.resp.ttl"]) for p in P if p.has("dns.flags.response", 1) and p.dst() == c1 and p.has("dns.qry.name", "activation-v2.kaspersky.com")]
    check(a == [([s4], ["300"])], "ip-literal: A answer to %s is %r, not 198.18.0.1 ttl 300" % (c1, a))
    a6 = [(p["dns.aaaa"], p["dns.resp.ttl"]) for p in P if p.has("dns.flags.response", 1) and p.dst() == c1v6 and p.has("dns.qry.name", "activation-v2.kaspersky.com")]
    check(a6 == [([s6], ["300"])], "ip-literal: AAAA answer to %s is %r" % (c1v6, a6))
    q2 = [p.one("dns.qry.name") for p in P if p.has("dns.flags.response", 0) and p.src() == c2]
    check(q2 == ["www.example.org"], "ip-literal: client2 must resolve www.example.org only: %s" % q2)
    check(not any(p["tls.handshake.extensions_server_name"] for p in P), "ip-literal: a ClientHello carries an SNI")
    hellos = [(p.src(), p.dst(), p["tls.handshake.extension.type"]) for p in P if p.has("tls.handshake.type", 1)]
    NOTES.append("ip-literal ClientHellos (src, dst, extension types): %s" % hellos)
    check(sorted(h[:2] for h in hellos) == sorted([(c1, s4)] * 3 + [(c1, "198.18.0.2"), (c1v6, s6), (c2, s4)]),
          "ip-literal: ClientHellos %s" % [h[:2] for h in hellos])
    psk = [h for h in hellos if "41" in h[2]]
    check(len(psk) == 1 and psk[0][0] == c1, "ip-literal: want one resumption ClientHello (pre_shared_key) from %s: %s" % (c1, psk))
    check(len([p for p in P if p.has("tls.handshake.type", 2) and p.has("tls.handshake.extension.type", 41)]) == 1,
          "ip-literal: the server did not accept the PSK")
    check(len([p for p in P if p.has("tls.handshake.type", 2)]) == 6, "ip-literal: want 6 ServerHellos")
    hosts = sorted((p.src(), p.one("http.host")) for p in P if p["http.request"])
    check(hosts == sorted([(c1, s4), (c2, s4)]), "ip-literal: HTTP requests %r" % hosts)
    check(len([p for p in P if p.has("http.response.code", 200)]) == 2, "ip-literal: want 2 HTTP responses")
    a3 = [(p["dns.a"], p["dns.resp.ttl"]) for p in P if p.has("dns.flags.response", 1) and p.dst() == c3]
    check(a3 == [([s4], ["300"])], "ip-literal: client3 A answer %r" % a3)
    plain_tcp(P, c3, s4, 9400, "ip-literal")
    other3 = [p.one("frame.number") for p in P if c3 in (p.src(), p.dst()) and not (p.proto("dns") or p.has("tcp.srcport", 9400)
              or p.has("tcp.dstport", 9400))]
    check(not other3, "ip-literal: client3 sent or got more than DNS and tcp/9400: frames %s" % other3)

    # tls12-cert.pcap
    P = files["tls12-cert.pcap"]
    sh = [(p.one("tcp.stream"), p.one("tls.handshake.version"), p.one("tls.handshake.extensions.supported_version"))
          for p in P if p.has("tls.handshake.type", 2)]
    NOTES.append("tls12-cert ServerHellos (stream, version, supported_version): %s" % sh)
    v12 = [s for s in sh if s[1] == "0x0303" and not s[2]]
    v13 = [s for s in sh if s[2] == "0x0304"]
    check(len(v12) == 1 and len(v13) == 1, "tls12-cert: want one TLS 1.2 and one TLS 1.3 handshake: %s" % sh)
    certs = [p for p in P if p.has("tls.handshake.type", 11)]
    NOTES.append("tls12-cert cleartext certificates (stream, CN strings, dNSName): %s"
                 % [(p.one("tcp.stream"), p["x509sat.uTF8String"] + p["x509sat.printableString"], p["x509ce.dNSName"]) for p in certs])
    check(len(certs) == 1 and bool(v12) and certs[0].one("tcp.stream") == v12[0][0], "tls12-cert: want one cleartext Certificate, in the TLS 1.2 stream")
    if certs:
        check("s05.upd.kaspersky.com" in certs[0]["x509sat.uTF8String"] + certs[0]["x509sat.printableString"], "tls12-cert: CN is not s05.upd.kaspersky.com")
        check(certs[0]["x509ce.dNSName"] == ["s05.upd.kaspersky.com", "www.example.org"], "tls12-cert: SAN %s" % certs[0]["x509ce.dNSName"])
    sni = [(p.src(), p["tls.handshake.extensions_server_name"]) for p in P if p.has("tls.handshake.type", 1)]
    check(sni == [(c1, ["www.example.org"])] * 2, "tls12-cert: ClientHellos %s" % sni)

    # dns-strength.pcap
    P = files["dns-strength.pcap"]
    q = [(p.src(), p.one("dns.id"), p.one("dns.qry.name"), p.one("dns.qry.type")) for p in P if p.has("dns.flags.response", 0)]
    r = {(p.one("dns.qry.name"), p.one("dns.qry.type")): (p.dst(), p.one("dns.flags.rcode"), p.one("dns.count.answers"), p["dns.a"])
         for p in P if p.has("dns.flags.response", 1)}
    NOTES.append("dns-strength queries: %s" % q)
    NOTES.append("dns-strength responses: %s" % r)
    check(len(q) == 5 and all(x[0] == c1 for x in q), "dns: want 5 queries from %s" % c1)
    check(r.get(("s05.upd.kaspersky.com", "1")) == (c1, "0", "1", [s4]), "dns: s05 A not NOERROR with one A")
    check(r.get(("nx.upd.kaspersky.com", "1")) == (c1, "3", "0", []), "dns: nx.upd not NXDOMAIN")
    check(r.get(("ksn-url-geo.kaspersky-labs.com", "28")) == (c1, "0", "0", []), "dns: ksn-url-geo AAAA not NODATA")
    check(r.get(("www.example.org", "1")) == (c1, "0", "1", [s4]), "dns: www.example.org not answered")
    check(any(x[2] == "dc1.ksn.kaspersky-labs.com" for x in q), "dns: dc1.ksn query missing")
    check(not any(k[0] == "dc1.ksn.kaspersky-labs.com" for k in r), "dns: dc1.ksn has a response in the capture")
    log = open(os.path.join(work, "dnsmasq-dns-strength.log")).read()
    check("config dc1.ksn.kaspersky-labs.com is 198.18.0.1" in log,
          "dns: dnsmasq did not answer dc1.ksn (its answer is dropped by routing, but it must exist)")

    # dns-snaplen.pcap: four DNS messages, nothing else
    P = files["dns-snaplen.pcap"]
    dns = [p for p in P if p.has("udp.dstport", 53) or p.has("udp.srcport", 53)]
    cut = [(p.src(), p.one("frame.len"), p.one("frame.cap_len")) for p in dns]
    NOTES.append("dns-snaplen (src, frame.len, frame.cap_len): %s" % cut)
    check(len(dns) == 4 == len(P), "dns-snaplen: want 4 DNS packets and nothing else, got %d of %d" % (len(dns), len(P)))
    # cut at 96 bytes: the first query and both answers; the k.io query (87 bytes) is whole
    check([int(x[2]) == 96 < int(x[1]) for x in cut] == [True, True, False, True] and cut[2][1] == cut[2][2],
          "dns-snaplen: want the first query and both answers cut at 96 bytes: %s" % cut)
    qn = [(p.src(), p.one("dns.flags.response")) for p in dns]
    check(qn == [(c1, "0"), (s4, "1"), (c1, "0"), (s4, "1")], "dns-snaplen: want query, answer twice: %s" % qn)

    # ech-grease.pcap
    P = files["ech-grease.pcap"]
    ch = [(p.src(), p["tls.handshake.extensions_server_name"], p["tls.handshake.extension.type"]) for p in P if p.has("tls.handshake.type", 1)]
    NOTES.append("ech-grease ClientHellos (src, sni, extension types): %s" % ch)
    check(bool(ch) and all(x[0] == c1 and x[1] == ["dc1.ksn.kaspersky-labs.com"] and "65037" in x[2] for x in ch),
          "ech-grease: want ClientHellos from %s with SNI dc1.ksn.kaspersky-labs.com and ECH (0xfe0d): %s" % (c1, ch))
    check(len([p for p in P if p.has("tls.handshake.type", 2)]) == len(ch), "ech-grease: not every ClientHello answered")
    dq = [(p.src(), p.one("dns.qry.name"), p.one("dns.qry.type")) for p in P if p.has("dns.flags.response", 0)]
    NOTES.append("ech-grease DNS queries: %s" % dq)
    check(bool(dq) and all(x[0] == c1 and x[1] == "dc1.ksn.kaspersky-labs.com" for x in dq), "ech-grease: other DNS queries %s" % dq)
    check(any(p.has("dns.flags.response", 1) and p.has("dns.a", s4) for p in P), "ech-grease: no A answer")
    seen, bad = foreign(packets(os.path.join(work, "chromium-guard.pcap")))
    check(not bad, "ech-grease guard capture (any interface): foreign addresses %s" % sorted(bad))
    NOTES.append("chromium guard capture addresses: %s" % sorted(seen))

    # ech-real.pcap: the URL's host is s05.upd.kaspersky.com; a ClientHello whose SNI is the
    # ECH public name from the HTTPS record can only come from real ECH with that config
    P = files["ech-real.pcap"]
    ch = [(p.src(), p.dst(), p.one("tls.handshake.extensions_server_name"), "65037" in p["tls.handshake.extension.type"])
          for p in P if p.has("tls.handshake.type", 1)]
    NOTES.append("ech-real ClientHellos (src, dst, sni, has ECH): %s" % ch)
    check(all(x[:2] == (c1, s4) for x in ch), "ech-real: ClientHellos not all %s -> %s: %s" % (c1, s4, ch))
    outer = [x for x in ch if x[2] == "ksn-url-geo.kaspersky-labs.com"]
    check(bool(outer) and all(x[3] for x in outer), "ech-real: want ECH ClientHellos with the public name as SNI: %s" % ch)
    check(all(x[2] in ("ksn-url-geo.kaspersky-labs.com", "s05.upd.kaspersky.com") for x in ch), "ech-real: other SNI %s" % ch)
    check(any(p.has("tls.handshake.type", 2) for p in P), "ech-real: no ServerHello")
    dq = sorted({(p.src(), p.one("dns.qry.name"), p.one("dns.qry.type")) for p in P if p.has("dns.flags.response", 0)})
    NOTES.append("ech-real DNS queries: %s" % dq)
    check(bool(dq) and all(x[0] == c1 and x[1] == "s05.upd.kaspersky.com" for x in dq), "ech-real: other DNS queries %s" % dq)
    check(any(p.has("dns.flags.response", 1) and p["dns.svcb.svcparam.echconfig"] for p in P), "ech-real: no HTTPS answer with ech")
    check(any(p.has("dns.flags.response", 1) and p.has("dns.a", s4) for p in P), "ech-real: no A answer")

    for n in NOTES:
        print("note:", n)
    for f in FAILED:
        print("FAILED:", f)
    print("verify: %d problem(s)" % len(FAILED))
    return 1 if FAILED else 0


def ech_https_rr(public_name, pubkey_der):
    """Print the hex RDATA of an HTTPS record (RFC 9460) whose ech parameter holds one
    ECHConfig (version 0xfe0d): config id 7, DHKEM(X25519), HKDF-SHA256, AES-128-GCM,
    the X25519 public key (the last 32 bytes of its DER SubjectPublicKeyInfo)."""
    import struct
    pub = open(pubkey_der, "rb").read()[-32:]
    name = public_name.encode()
    key_config = bytes([7]) + struct.pack("!HH", 0x0020, len(pub)) + pub + struct.pack("!HHH", 4, 1, 1)
    contents = key_config + bytes([0, len(name)]) + name + struct.pack("!H", 0)
    config = struct.pack("!HH", 0xFE0D, len(contents)) + contents
    ech = struct.pack("!H", len(config)) + config
    alpn = b"\x08http/1.1"
    rdata = struct.pack("!H", 1) + b"\x00" + struct.pack("!HH", 1, len(alpn)) + alpn + struct.pack("!HH", 5, len(ech)) + ech
    print(rdata.hex())
    return 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"tcp-server": tcp_server, "tcp-client": tcp_client, "udp-recv": udp_recv, "udp-send": udp_send,
          "expected": expected, "verify": verify, "ech-https-rr": ech_https_rr}[cmd]
    sys.exit(fn(*args))
PY

# ---------------------------------------------------------------------------
# namespaces and links
# ---------------------------------------------------------------------------
log "creating namespaces $ALL_NS"
ns_etc "$SRV4" $NS_C $NS_C2 $NS_C3 $NS_S
ns_add $ALL_NS
inns $NS_L sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null

mkveth() {  # mkveth <ns> <if> <mac> <lan-if> <lan-mac>: created inside the namespaces
    ip -n "$1" link add "$2" address "$3" mtu 1500 type veth peer name "$4" netns $NS_L address "$5" mtu 1500
    nooffload "$1" "$2"
    nooffload $NS_L "$4"
}
ip -n $NS_L link add br0 address 02:00:00:04:01:00 type bridge forward_delay 0 stp_state 0 mcast_snooping 0
nooffload $NS_L br0
mkveth $NS_C  veth-c  02:00:00:04:00:10 lan-c  02:00:00:04:01:10
mkveth $NS_C2 veth-c2 02:00:00:04:00:11 lan-c2 02:00:00:04:01:11
mkveth $NS_C3 veth-c3 02:00:00:04:00:12 lan-c3 02:00:00:04:01:12
mkveth $NS_S  veth-s  02:00:00:04:00:01 lan-s  02:00:00:04:01:01
for p in lan-c lan-c2 lan-c3 lan-s; do ip -n $NS_L link set "$p" master br0 up; done
ip -n $NS_L link set br0 up
inns $NS_C2 sysctl -q -w net.ipv6.conf.veth-c2.disable_ipv6=1 >/dev/null
inns $NS_C3 sysctl -q -w net.ipv6.conf.veth-c3.disable_ipv6=1 >/dev/null

ip -n $NS_C  addr add $C1/24 dev veth-c
ip -n $NS_C  addr add $C1V6/64 dev veth-c nodad
ip -n $NS_C2 addr add $C2/24 dev veth-c2
ip -n $NS_C3 addr add $C3/24 dev veth-c3
ip -n $NS_S  addr add $SRV4/24 dev veth-s
ip -n $NS_S  addr add $SRV4B/24 dev veth-s
ip -n $NS_S  addr add $SRV6/64 dev veth-s nodad
ip -n $NS_C  link set veth-c up
ip -n $NS_C2 link set veth-c2 up
ip -n $NS_C3 link set veth-c3 up
ip -n $NS_S  link set veth-s up

# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------
log "starting servers (dnsmasq, nginx, openssl s_server x4, python TCP server)"
# the lab's ordinary server certificate names no Kaspersky host
selfsigned "$WORK/key.pem" "$WORK/cert.pem" kd4-test-server.invalid >>"$CLOG" 2>&1
# tls12-cert.pcap: a certificate that names a Kaspersky update server (and www.example.org)
selfsigned "$WORK/kkey.pem" "$WORK/kcert.pem" s05.upd.kaspersky.com \
    DNS:s05.upd.kaspersky.com,DNS:www.example.org >>"$CLOG" 2>&1

mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx.conf" <<EOF
# nginx for the issue-4 capture lab (generated by make_issue4_captures.sh)
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log info;
events { worker_connections 64; }
http {
    log_format kd4 '\$remote_addr host="\$host" sni="\$ssl_server_name" reused=\$ssl_session_reused "\$request" \$status';
    access_log $WORK/nginx/access.log kd4;
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
    ssl_session_tickets on;
    server {
        listen 80 default_server;
        listen [::]:80 default_server;
        listen 443 ssl http2 default_server;
        listen [::]:443 ssl http2 default_server;
        server_name _;
        location / {
            return 200 "<!doctype html><html><head><title>kd4</title></head><body><p>kd4 test server</p></body></html>\n";
        }
    }
}
EOF

# ech-real.pcap: an HTTPS record for s05.upd.kaspersky.com with an ECH configuration whose
# public (outer) name is ksn-url-geo.kaspersky-labs.com, for a fresh X25519 key
openssl genpkey -algorithm X25519 -out "$WORK/ech.key" >>"$CLOG" 2>&1
openssl pkey -in "$WORK/ech.key" -pubout -outform DER -out "$WORK/ech.pub.der" >>"$CLOG" 2>&1
ECH_RR=$("$PY" "$WORK/kd4.py" ech-https-rr ksn-url-geo.kaspersky-labs.com "$WORK/ech.pub.der")
DNS_ARGS=(
    "--dns-rr=s05.upd.kaspersky.com,65,$ECH_RR"     # type 65: HTTPS
    "--host-record=activation-v2.kaspersky.com,$SRV4,$SRV6,300"
    "--host-record=s05.upd.kaspersky.com,$SRV4,300"
    "--host-record=dc1.ksn.kaspersky-labs.com,$SRV4,300"
    "--host-record=ksn-url-geo.kaspersky-labs.com,$SRV4,300"     # A only: AAAA is NODATA
    "--host-record=www.example.org,$SRV4,300"
    # dns-snaplen.pcap: a short name whose CNAME record fits in a 96-byte snaplen
    "--host-record=kaspersky.com,$SRV4,300" "--cname=k.io,kaspersky.com"
    # answered from local data only: any other name below these is NXDOMAIN
    "--local=/kaspersky.com/" "--local=/kaspersky-labs.com/" "--local=/example.org/"
)
bg_ns $NS_S "$WORK/dnsmasq.out" dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll \
    --user=root --group=root --pid-file="$WORK/dnsmasq.pid" --log-queries --log-facility="$WORK/dnsmasq.log" \
    --local-ttl=300 "${DNS_ARGS[@]}"
bg_ns $NS_S "$WORK/nginx.out" nginx -e "$WORK/nginx/error.log" -c "$WORK/nginx.conf" -p "$WORK/nginx/"
for port in 13000 13001 23150; do
    bg_ns $NS_S "$WORK/s_server.$port.out" openssl s_server -4 -accept $port -cert "$WORK/cert.pem" -key "$WORK/key.pem" -www
done
# tls12-cert.pcap: TLS 1.2 and 1.3 allowed; the client picks the version
bg_ns $NS_S "$WORK/s_server.4433.out" openssl s_server -4 -accept 4433 -cert "$WORK/kcert.pem" -key "$WORK/kkey.pem" -www
bg_ns $NS_S "$WORK/tcpserver.out" "$PY" -u "$WORK/kd4.py" tcp-server $SRV4 9400 14000 23151

servers_up() {
    local l p
    l=$(inns $NS_S ss -Hlntu | awk '{print $5}')
    for p in 53 80 443 4433 9400 13000 13001 14000 23150 23151; do grep -q ":$p\$" <<<"$l" || return 1; done
}
wait_for 15 servers_up || { inns $NS_S ss -lntup >&2; die "servers did not come up (logs in $WORK)"; }

DIG="dig +tries=1 +time=3"
CURL="curl -sS --max-time 15 -o /dev/null -w %{remote_ip}:%{remote_port}_%{http_version}_%{http_code}\n"

# sanity check; also fills the neighbour caches before the first capture
client $NS_C  $DIG +short @$SRV4 www.example.org
client $NS_C2 $DIG +short @$SRV4 www.example.org
client $NS_C3 $DIG +short @$SRV4 www.example.org
client $NS_C  $DIG +short -6 @$SRV6 www.example.org
client $NS_C  $CURL -4 -k https://$SRV4B/

# ---------------------------------------------------------------------------
# ksc-ports.pcap
# ---------------------------------------------------------------------------
log "capture: ksc-ports.pcap"
F=ksc-ports.pcap
bg_ns $NS_C "$WORK/udprecv.out" "$PY" -u "$WORK/kd4.py" udp-recv $C1 15000 3 20
P_UDP=$LASTPID
wait_for 10 grep -q ready "$WORK/udprecv.out" || die "UDP receiver did not start"
cap_start $NS_S veth-s "$OUT/$F"
# TLS 13000: Network Agent -> Administration Server, handshake in both directions
client $NS_C openssl s_client -connect $SRV4:13000 -brief </dev/null
truth $F $C1 tcp/13000 ksc-port strong 13000
# plain TCP 14000: the agent speaks first, the server answers
client $NS_C "$PY" "$WORK/kd4.py" tcp-client $SRV4 14000
truth $F $C1 tcp/14000 ksc-port completed 14000
# UDP 15000: the server (198.18.0.1) sends connection requests to the agent (198.18.0.10)
client $NS_S "$PY" "$WORK/kd4.py" udp-send $SRV4 $C1 15000 3
truth $F $SRV4 udp/15000 ksc-port weak 15000
# TLS 23150 (Cloud Console range, alerts only when TLS)
client $NS_C openssl s_client -connect $SRV4:23150 -brief </dev/null
truth $F $C1 tcp/23150 ksc-port strong 23150
# NOT Kaspersky: plain TCP on 23151 (in the cloud range but no TLS), TLS on 13001
client $NS_C "$PY" "$WORK/kd4.py" tcp-client $SRV4 23151
client $NS_C openssl s_client -connect $SRV4:13001 -brief </dev/null
cap_stop
wait "$P_UDP" || die "UDP receiver did not get 3 datagrams (see $WORK/udprecv.out)"
grep -q done "$WORK/udprecv.out" || die "UDP receiver incomplete"

# ---------------------------------------------------------------------------
# ip-literal-after-dns.pcap
# ---------------------------------------------------------------------------
log "capture: ip-literal-after-dns.pcap"
F=ip-literal-after-dns.pcap
cap_start $NS_S veth-s "$OUT/$F"
client $NS_C $DIG @$SRV4 activation-v2.kaspersky.com A
truth $F $C1 activation-v2.kaspersky.com dns-query completed 53
# IP literals: curl sends no SNI for https://198.18.0.1/, and Host: 198.18.0.1; the
# plain-HTTP flow (port 80) and the TLS flows (port 443) are two alerts, not one
client $NS_C $CURL -4 -k https://$SRV4/
truth $F $C1 activation-v2.kaspersky.com ip-from-dns completed 443
client $NS_C $CURL -4 http://$SRV4/
truth $F $C1 activation-v2.kaspersky.com ip-from-dns completed 80
# TLS 1.3 resumption without SNI: a ticket from a first full handshake, then a PSK hello
client $NS_C bash -c "sleep 1 | openssl s_client -connect $SRV4:443 -noservername -sess_out $WORK/sess.pem"
client $NS_C bash -c "openssl s_client -connect $SRV4:443 -noservername -sess_in $WORK/sess.pem </dev/null | grep -E '^Reused, TLSv1.3'"
truth $F $C1 activation-v2.kaspersky.com ip-from-dns completed 443
# an address the name did NOT resolve to: nothing
client $NS_C $CURL -4 -k https://$SRV4B/
# the same over IPv6
client $NS_C $DIG -6 @$SRV6 activation-v2.kaspersky.com AAAA
truth $F $C1V6 activation-v2.kaspersky.com dns-query completed 53
client $NS_C $CURL -6 -g -k "https://[$SRV6]/"
truth $F $C1V6 activation-v2.kaspersky.com ip-from-dns completed 443
# a second client that never resolved the Kaspersky name (it resolves www.example.org,
# which points to the same address) uses the same address: nothing
client $NS_C2 $DIG @$SRV4 www.example.org A
client $NS_C2 $CURL -4 -k https://$SRV4/
client $NS_C2 $CURL -4 http://$SRV4/
# a third client resolves the name, then speaks a binary protocol (no TLS, no HTTP, no
# KSC port) to the address it got; the server answers
client $NS_C3 $DIG @$SRV4 activation-v2.kaspersky.com A
truth $F $C3 activation-v2.kaspersky.com dns-query completed 53
client $NS_C3 "$PY" "$WORK/kd4.py" tcp-client $SRV4 9400
truth $F $C3 activation-v2.kaspersky.com ip-from-dns completed 9400
cap_stop

# ---------------------------------------------------------------------------
# tls12-cert.pcap
# ---------------------------------------------------------------------------
log "capture: tls12-cert.pcap"
F=tls12-cert.pcap
cap_start $NS_S veth-s "$OUT/$F"
client $NS_C openssl s_client -tls1_2 -connect $SRV4:4433 -servername www.example.org -brief </dev/null
truth $F $C1 s05.upd.kaspersky.com tls-certificate weak 4433
# TLS 1.3, same server and certificate: the certificate is encrypted, nothing to see
client $NS_C openssl s_client -tls1_3 -connect $SRV4:4433 -servername www.example.org -brief </dev/null
cap_stop

# ---------------------------------------------------------------------------
# dns-strength.pcap
# ---------------------------------------------------------------------------
log "capture: dns-strength.pcap"
F=dns-strength.pcap
# the server's answer to 198.18.0.10 port 41999 is dropped by a routing rule in the server
# namespace (before any packet tap), so the capture holds the query only
ip -n $NS_S rule add to $C1 ipproto udp sport 53 dport 41999 blackhole
cap_start $NS_S veth-s "$OUT/$F"
client $NS_C $DIG @$SRV4 -b $C1#41001 s05.upd.kaspersky.com A
truth $F $C1 s05.upd.kaspersky.com dns-query completed 53
client $NS_C $DIG @$SRV4 -b $C1#41002 nx.upd.kaspersky.com A
truth $F $C1 nx.upd.kaspersky.com dns-query weak 53
client $NS_C $DIG @$SRV4 -b $C1#41003 ksn-url-geo.kaspersky-labs.com AAAA
truth $F $C1 ksn-url-geo.kaspersky-labs.com dns-query weak 53
client_rc 9 $NS_C $DIG @$SRV4 -b $C1#41999 dc1.ksn.kaspersky-labs.com A
truth $F $C1 dc1.ksn.kaspersky-labs.com dns-query weak 53
client $NS_C $DIG @$SRV4 -b $C1#41004 www.example.org A
cap_stop
ip -n $NS_S rule del to $C1 ipproto udp sport 53 dport 41999 blackhole
cp "$WORK/dnsmasq.log" "$WORK/dnsmasq-dns-strength.log"

# ---------------------------------------------------------------------------
# dns-snaplen.pcap (tcpdump -s 96: Ethernet 14 + IPv4 20 + UDP 8 leave 54 DNS bytes)
# ---------------------------------------------------------------------------
log "capture: dns-snaplen.pcap (tcpdump -s 96)"
F=dns-snaplen.pcap
cap_start $NS_S veth-s "$OUT/$F" -s 96
# the query: header 12 + question 33 bytes whole, its EDNS OPT record (23 bytes with
# dig's cookie) cut; the answer: the question whole, its A record cut
client $NS_C $DIG @$SRV4 -b $C1#42001 activation-v2.kaspersky.com A
truth $F $C1 activation-v2.kaspersky.com dns-query completed 53 truncated
# k.io: question 10 bytes, the CNAME to kaspersky.com 27 bytes (whole, 49 of 54), the
# A record of kaspersky.com cut; no Kaspersky name in the query
client $NS_C $DIG @$SRV4 -b $C1#42002 k.io A
truth $F $C1 kaspersky.com dns-answer completed 53 truncated
cap_stop

# ---------------------------------------------------------------------------
# ech-grease.pcap (headless Chromium sends a GREASE encrypted_client_hello extension)
# ---------------------------------------------------------------------------
log "capture: ech-grease.pcap (headless Chromium)"
F=ech-grease.pcap
CH=$WORK/chromium
cap_start $NS_S veth-s "$OUT/$F"
CH_CAP=$CAP_PID
cap_start $NS_C any "$WORK/chromium-guard.pcap"        # everything Chromium sends, any interface
CH_GUARD=$CAP_PID
run_chromium $NS_C "$CH" https://dc1.ksn.kaspersky-labs.com/ --disable-quic \
    --disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater \
    --host-resolver-rules='MAP * ~NOTFOUND, EXCLUDE dc1.ksn.kaspersky-labs.com' --ignore-certificate-errors
cap_stop "$CH_GUARD"
cap_stop "$CH_CAP"
[ "$CH_RC" -eq 0 ] || die "chromium exited with $CH_RC (see $CH/chromium.log)"
grep -q 'kd4 test server' "$CH/dom.html" || die "chromium did not get the page (see $CH/chromium.log)"
truth $F $C1 dc1.ksn.kaspersky-labs.com dns-query completed 53
truth $F $C1 dc1.ksn.kaspersky-labs.com tls-sni completed 443

# ---------------------------------------------------------------------------
# ech-real.pcap (headless Chromium sends real ECH: the HTTPS record above gives it a config)
# ---------------------------------------------------------------------------
log "capture: ech-real.pcap (headless Chromium, ECH configuration from DNS)"
F=ech-real.pcap
CH=$WORK/chromium-ech
cap_start $NS_S veth-s "$OUT/$F"
run_chromium $NS_C "$CH" https://s05.upd.kaspersky.com/ --disable-quic \
    --disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater \
    --host-resolver-rules='MAP * ~NOTFOUND, EXCLUDE s05.upd.kaspersky.com' --ignore-certificate-errors
cap_stop
[ "$CH_RC" -eq 0 ] || die "chromium exited with $CH_RC (see $CH/chromium.log)"
grep -q 'kd4 test server' "$CH/dom.html" || die "chromium did not get the page (see $CH/chromium.log)"
truth $F $C1 s05.upd.kaspersky.com dns-query completed 53
# the ECH ClientHello: outer SNI = the public name (nginx answers it: it has no ECH) ...
truth $F $C1 ksn-url-geo.kaspersky-labs.com tls-sni completed 443
# ... and the name the client resolved the server's address from, for the same flow
truth $F $C1 s05.upd.kaspersky.com ip-from-dns completed 443
# nginx rejected ECH (no retry configuration), so Chromium retried without it: SNI = the
# real name (with a GREASE ECH extension)
truth $F $C1 s05.upd.kaspersky.com tls-sni completed 443

# ---------------------------------------------------------------------------
# verify, write expected.json, install
# ---------------------------------------------------------------------------
cp "$WORK/nginx/access.log" "$WORK/nginx-access.log" 2>/dev/null || true
log "verifying captures with tshark -n"
VRC=0
"$PY" "$WORK/kd4.py" verify "$OUT" "$WORK" >"$WORK/verify.log" 2>&1 || VRC=$?
cat "$WORK/verify.log" >&2
[ "$VRC" -eq 0 ] || die "verification failed (see $WORK/verify.log)"
"$PY" "$WORK/kd4.py" expected "$TRUTH" "$OUT/expected.json"
chmod -R u=rwX,go=rX "$OUT"

mkdir -p "$DEST"
log "installing into $DEST"
for f in ksc-ports.pcap ip-literal-after-dns.pcap tls12-cert.pcap dns-strength.pcap ech-grease.pcap dns-snaplen.pcap ech-real.pcap expected.json; do
    cp "$OUT/$f" "$DEST/$f"
done
log "done"
