#!/usr/bin/env bash
# make_hostile_capture.sh - regenerate pcaps/hostile/hostile.pcap and expected.json (run as root):
#
#     sudo bash pcaps/hostile/make_hostile_capture.sh
#
# What it does
#   * builds a two-namespace lab (no bridge, no default route, nothing connected to the
#     host's interfaces; only 198.18.0.0/15 is used, IPv6 is switched off):
#
#        kdh-client (198.18.0.10) veth-c ---- veth-s kdh-server (198.18.0.1)
#
#   * runs real servers in kdh-server: dnsmasq (answers A 198.18.0.1 for every name
#     under kaspersky.com) and openssl s_server on 443 (TLS 1.3, self-signed
#     certificate CN kdh-test-server.invalid, no Kaspersky name);
#   * runs real clients in kdh-client: dig sends one DNS query per hostile name (given
#     in presentation format, every byte that is not a letter, digit or '-' written
#     as \DDD), and openssl s_client sends one ClientHello per hostile SNI (the raw
#     bytes passed as its -servername argument); dig also sends two names whose labels
#     hold dots (NEGATIVE in kdh.py): their text reads like a Kaspersky name but their
#     wire labels are not under one, so they must raise no alert;
#   * captures on the server's veth with tcpdump -n, checks the capture with tshark -n
#     (every query's wire-format name and every ClientHello's server_name entry is
#     found byte for byte in a packet from the client; nothing else is in it), and
#     writes expected.json from the names this script sent (never from the detector).
#
# The names live in one table (names() in kdh.py below; README.md lists them). Each
# hostile label stands LEFT of a Kaspersky suffix (s05.upd.kaspersky.com,
# upd.kaspersky.com or kaspersky.com), so the detector alerts on it.
#
# SNI: openssl takes -servername from argv, a C string, so a NUL byte cannot be sent
# (no other real client can either: Python's ssl refuses it, curl and gnutls-cli take
# the name from argv or a URL); the names holding a NUL are sent by DNS only. Every
# other byte (CR, LF, TAB, ESC, invalid UTF-8, ...) openssl 3.0 sends as given.
#
# Needs (Debian 12): iproute2 ethtool tcpdump tshark dnsmasq-base bind9-dnsutils
# openssl python3 (stdlib only).
#
# Environment: KEEP_WORK=1 keeps the temporary work directory; DEST=DIR writes
# hostile.pcap and expected.json to DIR instead of pcaps/hostile/
# (tests/test_hostile_names.py does).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lab.sh
source "$HERE/../lab.sh"    # log, die, bg_ns, cap_start, teardown_lab, the EXIT trap, ...
DEST=${DEST:-$HERE}
PY=${PYTHON:-/usr/bin/python3}

NS_C=kdh-client
NS_S=kdh-server
ALL_NS="$NS_C $NS_S"
SRV4=198.18.0.1
C1=198.18.0.10

CAP_OPTS=(--immediate-mode)     # tcpdump hands each packet over at once

lab_require ip ethtool tcpdump tshark dnsmasq dig openssl timeout "$PY"
# cleanup: our processes by PID, then our own namespaces (kdh-*) only
lab_begin kdh-capture

chmod 755 "$WORK"
OUT=$WORK/out
mkdir -p "$OUT"
CLOG=$WORK/clients.log
: >"$CLOG"

# ---------------------------------------------------------------------------
# helper program (stdlib only): the name table, the clients, the tshark check and
# the expected.json writer
# ---------------------------------------------------------------------------
cat >"$WORK/kdh.py" <<'PY'
"""kdh.py - helpers for make_hostile_capture.sh (stdlib only)."""
import ipaddress
import json
import re
import subprocess
import sys

NS_C, SRV4, C1 = "kdh-client", "198.18.0.1", "198.18.0.10"
K = [b"kaspersky", b"com"]
UPD = [b"upd", *K]
S05 = [b"s05", *UPD]
# Every hostile byte of the issue in one loop: | = \ " ] CR LF NUL ESC, U+202E (RLO, as
# UTF-8), invalid UTF-8 (FF FE), TAB, space, [.  The SNIs use it without the NUL.
CYCLE = b'|=\\"]\r\n\x00\x1b\xe2\x80\xae\xff\xfe\t ['
CYCLE_SNI = CYCLE.replace(b"\x00", b"")


def fill(n, cycle):
    return (cycle * (n // len(cycle) + 1))[:n]


def names(cycle):
    """(what, labels): the wire labels of each name; ``cycle`` fills the long hostile ones."""
    return [
        ("pipe and equals", [b"a|b=c", *S05]),
        ("backslash and double quote", [b'back\\slash"quote', *S05]),
        ("label ending in a backslash", [b"trailing\\", *S05]),
        ("RFC 5424 SD-ELEMENT breakout", [b'sd"] [evil@32473 x="y"', *S05]),
        ("CR and LF", [b"cr\rlf\nend\r\n", *S05]),
        ("NUL", [b"nul\x00byte", *S05]),
        ("ESC (ANSI colour sequence)", [b"esc\x1b[31mred\x1b[0m", *S05]),
        ("bidi controls U+202E U+202C U+2066 U+2069 U+200E",
         [b"bidi\xe2\x80\xaelive\xe2\x80\xac-\xe2\x81\xa6x\xe2\x81\xa9\xe2\x80\x8e", *S05]),
        ("invalid UTF-8 (FF FE, a lone continuation byte 80)", [b"bad\xff\xfe\x80utf8", *S05]),
        ("tab, space and dots: CEF/LEEF key injection",
         [b"tab\tsrc=6.6.6.6 cs1=injected\tdhost=evil.example", *S05]),
        ("LEEF header look-alike, upper case", [b"LEEF:2.0|X|Y|1|2|^|cat=Evil", *S05]),
        ("HTML script tag, space, U+202E", [b"<script>alert(1)</script> \xe2\x80\xaeevil", *S05]),
        ("63-byte label", [b"l" * 63, *UPD]),
        ("63-byte label of hostile bytes", [fill(63, cycle), *UPD]),
        ("63-byte label of FF bytes", [b"\xff" * 63, *UPD]),
        ("253-byte name", [b"l" * 63, b"m" * 63, b"n" * 63, b"x" * 47, *K]),
        ("253-byte name of hostile bytes",
         [fill(63, cycle), fill(63, cycle)[::-1], fill(63, cycle[3:]), fill(47, cycle), *K]),
    ]


# Names dig sends that must NOT alert: a dot byte inside a label is no label boundary, so
# these are not under a Kaspersky domain although their text reads so.
NEGATIVE = [
    ("one label holding dots, under .com", [b"s05.upd.kaspersky", b"com"]),
    ("one label kaspersky.com under .example", [b"x", b"kaspersky.com", b"example"]),
]


def wire(labels):
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


def dig_text(labels):
    """What dig is given: presentation format, every byte but [A-Za-z0-9-] as \\DDD."""
    return ".".join("".join(chr(c) if chr(c).isalnum() and c < 0x80 or c == 0x2D else "\\%03d" % c for c in x)
                    for x in labels)


def ascii_lower(s):
    return s.translate({c: c + 32 for c in range(0x41, 0x5B)})


def canonical(labels):
    """The name as the detector shows it for every evidence kind (DNS and SNI alike): the
    wire bytes as UTF-8, each byte that is not valid UTF-8 as \\xNN text, labels joined by
    dots; case kept."""
    return b".".join(labels).decode("utf-8", "backslashreplace")


def sni_bytes(labels):
    return b".".join(labels)


def sni_text(raw):
    """The SNI as the detector decodes it: UTF-8, each invalid byte as \\xNN text."""
    return raw.decode("utf-8", "backslashreplace")


def check_table():
    for cycle in (CYCLE, CYCLE_SNI):
        table = names(cycle)
        for what, labels in table:
            assert all(1 <= len(x) <= 63 for x in labels), what
            assert len(wire(labels)) <= 255, what
        for what, labels in table[-2:]:
            assert len(sni_bytes(labels)) == 253 and len(wire(labels)) == 255, what
        for what, labels in table[-5:-2]:
            assert len(labels[0]) == 63, what


def run(ns, argv, log, want):
    """Run a real client in the namespace; its exit status must be in ``want``."""
    with open(log, "ab") as f:
        f.write(b"\n### [" + ns.encode() + b"] " + b" ".join(a if isinstance(a, bytes) else a.encode() for a in argv) + b"\n")
        f.flush()
        r = subprocess.run(["ip", "netns", "exec", ns, "timeout", "-k", "3", "15", *argv],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        f.write(r.stdout)
    if r.returncode not in want:
        sys.exit("client exited %d (want %s): %r (see %s)" % (r.returncode, want, argv, log))
    return r.returncode, r.stdout


def clients(log, rows_path):
    check_table()
    rows = []
    for what, labels in names(CYCLE):
        text = dig_text(labels)
        rc, out = run(NS_C, ["dig", "+tries=1", "+time=2", "-b", C1, "@" + SRV4, text, "A"], log, (0, 9))
        m = re.search(rb"status: ([A-Z]+)", out)
        rows.append({"kind": "dns-query", "what": what, "name": ascii_lower(canonical(labels)),
                     "sent_text": canonical(labels), "sent": text,
                     "wire": wire(labels).hex(), "answer": m.group(1).decode() if m else "none"})
    for what, labels in NEGATIVE:
        text = dig_text(labels)
        rc, out = run(NS_C, ["dig", "+tries=1", "+time=2", "-b", C1, "@" + SRV4, text, "A"], log, (0, 9))
        m = re.search(rb"status: ([A-Z]+)", out)
        rows.append({"kind": "no-alert", "what": what, "name": ascii_lower(canonical(labels)),
                     "sent_text": canonical(labels), "sent": text,
                     "wire": wire(labels).hex(), "answer": m.group(1).decode() if m else "none"})
    for what, labels in names(CYCLE_SNI):
        raw = sni_bytes(labels)
        if b"\x00" in raw:
            continue  # argv cannot carry a NUL: no real client sends it (see the header)
        rc, out = run(NS_C, [b"openssl", b"s_client", b"-connect", SRV4.encode() + b":443",
                             b"-servername", raw, b"-brief"], log, (0, 1))
        rows.append({"kind": "tls-sni", "what": what, "name": ascii_lower(sni_text(raw)),
                     "sent_text": sni_text(raw), "sent": raw.hex(),
                     "handshake": rc == 0 and b"CONNECTION ESTABLISHED" in out})
    with open(rows_path, "w") as f:
        json.dump(rows, f)


def verify(pcap, rows_path):
    rows = json.load(open(rows_path))
    fields = ["ip.src", "ip.dst", "ipv6.src", "udp.dstport", "udp.payload", "tcp.dstport", "tcp.payload",
              "tls.handshake.type", "tls.handshake.extensions_server_name_len"]
    cmd = ["tshark", "-n", "-r", pcap, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    pkts = [dict(zip(fields, line.split("\t"))) for line in r.stdout.splitlines()]
    problems = []
    addrs = {a for p in pkts for a in (p["ip.src"], p["ip.dst"]) if a}
    bad = [a for a in addrs if ipaddress.ip_address(a) not in ipaddress.ip_network("198.18.0.0/15")]
    if bad or any(p["ipv6.src"] for p in pkts):
        problems.append("foreign addresses: %s" % bad)
    queries = [bytes.fromhex(p["udp.payload"]) for p in pkts
               if p["ip.src"] == C1 and p["udp.dstport"] == "53" and p["udp.payload"]]
    hellos = [p for p in pkts if p["ip.src"] == C1 and "1" in p["tls.handshake.type"].split("|")]
    dns_rows = [x for x in rows if x["kind"] in ("dns-query", "no-alert")]
    tls_rows = [x for x in rows if x["kind"] == "tls-sni"]
    if len(queries) != len(dns_rows):
        problems.append("%d DNS queries captured, %d sent" % (len(queries), len(dns_rows)))
    for x in dns_rows:  # the question: wire name, type A (1), class IN (1)
        if not any(q[12:] .startswith(bytes.fromhex(x["wire"]) + b"\x00\x01\x00\x01") for q in queries):
            problems.append("query not on the wire: %s" % x["sent"])
    if [p["tls.handshake.extensions_server_name_len"] for p in hellos] != [str(len(bytes.fromhex(x["sent"]))) for x in tls_rows]:
        problems.append("ClientHello server_name lengths differ from the names sent")
    for x, p in zip(tls_rows, hellos):  # server_name list entry: type 0 host_name, length, bytes
        raw = bytes.fromhex(x["sent"])
        if b"\x00" + len(raw).to_bytes(2, "big") + raw not in bytes.fromhex(p["tcp.payload"]):
            problems.append("SNI not on the wire: %r" % raw)
    for p in problems:
        print("PROBLEM:", p)
    print("verify: %d problem(s): %d DNS queries, %d ClientHellos, %d packets" % (len(problems), len(queries), len(hellos), len(pkts)))
    return 1 if problems else 0


def expected(rows_path, out):
    rows = json.load(open(rows_path))
    doc = {
        "hostile.pcap": {
            "client": C1,
            "server": SRV4,
            # one alert per name: the evidence kind and the hostname as the detector reports
            # it (ASCII lower-cased); sent_text is the name in the same canonical form, case
            # kept (what dns.rrname / tls.sni carry).  Rows of kind "no-alert" in "sent"
            # were sent by dig and must raise no alert.
            "alerts": [{"kind": x["kind"], "name": x["name"], "sent_text": x["sent_text"]}
                       for x in rows if x["kind"] != "no-alert"],
            "sent": rows,
            "not_sent_in_sni": {
                "NUL": "openssl s_client takes -servername from argv, a C string that cannot hold "
                       "a NUL; no other real client can send one either. DNS carries the NUL names.",
            },
        },
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=True)
        f.write("\n")
    return 0


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    sys.exit({"clients": clients, "verify": verify, "expected": expected}[cmd](*args) or 0)
PY

# ---------------------------------------------------------------------------
# the lab
# ---------------------------------------------------------------------------
log "building the lab ($ALL_NS)"
for ns in $ALL_NS; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    inns "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null
done
ip link add veth-c netns $NS_C address 02:00:00:00:0d:10 mtu 1500 type veth \
    peer name veth-s netns $NS_S address 02:00:00:00:0d:01 mtu 1500
nooffload $NS_C veth-c
nooffload $NS_S veth-s
ip -n $NS_C addr add $C1/24 dev veth-c
ip -n $NS_S addr add $SRV4/24 dev veth-s
ip -n $NS_C link set veth-c up
ip -n $NS_S link set veth-s up

log "starting servers (dnsmasq, openssl s_server)"
selfsigned "$WORK/key.pem" "$WORK/cert.pem" kdh-test-server.invalid >>"$CLOG" 2>&1
bg_ns $NS_S "$WORK/dnsmasq.out" dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll \
    --user=root --group=root --pid-file="$WORK/dnsmasq.pid" --log-queries --log-facility="$WORK/dnsmasq.log" \
    --listen-address=$SRV4 --bind-interfaces --local-ttl=300 --address=/kaspersky.com/$SRV4
bg_ns $NS_S "$WORK/s_server.out" openssl s_server -4 -accept 443 -cert "$WORK/cert.pem" -key "$WORK/key.pem" -www
servers_up() {
    local l
    l=$(inns $NS_S ss -Hlntu | awk '{print $5}')
    grep -q ":53\$" <<<"$l" && grep -q ":443\$" <<<"$l"
}
wait_for 15 servers_up || die "servers did not come up (logs in $WORK)"
# fill the neighbour caches before the capture
inns $NS_C dig +short +tries=1 +time=2 @$SRV4 kdh-test-server.invalid >>"$CLOG" 2>&1 || true

# ---------------------------------------------------------------------------
# the capture
# ---------------------------------------------------------------------------
log "capture: hostile.pcap (dig, openssl s_client)"
cap_start $NS_S veth-s "$OUT/hostile.pcap"
"$PY" "$WORK/kdh.py" clients "$CLOG" "$WORK/rows.json" || die "a client failed (see $CLOG)"
cap_stop

# ---------------------------------------------------------------------------
# verify, write expected.json, install
# ---------------------------------------------------------------------------
log "verifying the capture with tshark -n"
VRC=0
"$PY" "$WORK/kdh.py" verify "$OUT/hostile.pcap" "$WORK/rows.json" >"$WORK/verify.log" 2>&1 || VRC=$?
cat "$WORK/verify.log" >&2
[ "$VRC" -eq 0 ] || die "verification failed (see $WORK/verify.log)"
"$PY" "$WORK/kdh.py" expected "$WORK/rows.json" "$OUT/expected.json"
chmod -R u=rwX,go=rX "$OUT"

mkdir -p "$DEST"
log "installing into $DEST"
cp "$OUT/hostile.pcap" "$OUT/expected.json" "$DEST/"
log "done"
