"""Adversarial benchmark: floods with real contacts hidden in them.

Generates one classic pcap per flood in ``benchmarks/_work/adversarial/`` (git-ignored),
plus a "normal" capture of the same size (TLS downloads, DNS, HTTP: the traffic a span port
usually carries), runs ``detector replay`` on each in this one invocation (the compiled core,
as the product runs; ``--exact`` for the pure-Python path), and prints, per capture: packets/s, the ratio to the normal capture's rate,
peak RSS of the detector process, alerts written, and whether every hidden contact was
reported.

    .venv/bin/python benchmarks/adversarial.py                 # all floods, default sizes
    .venv/bin/python benchmarks/adversarial.py --scale 0.2     # quicker, smaller floods
    .venv/bin/python benchmarks/adversarial.py --only dns,frag --keep

Floods (each with 10 hidden contacts from other clients, and the DNS flood one more from
the flooding client itself under another signature):

- ``dns``: a random-subdomain flood under ``upd.kaspersky.com`` from one client (query and
  NXDOMAIN answer), the issue's alert storm;
- ``syn``: TCP SYNs from random sources to random ports;
- ``frag``: first IPv4 fragments (more-fragments set) that never complete;
- ``hello16m``: TLS connections whose ClientHello announces 16 MB and never finishes
  (handshake length 0xFFFFFF, then full-size segments of the same hello);
- ``flows``: a million distinct TCP flows (SYN + one data segment each).

The packets are built byte by byte here (synthetic, like any flood; no capture of real
clients could produce a million spoofed sources).  The hidden contacts are ordinary DNS
queries, TLS ClientHellos with SNI and HTTP requests for names of the bundled pack.
Exit status 1 when a target is missed (peak RSS > 200 MB, a hidden contact not
reported, more than 1,000 alerts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.path.join(HERE, "_work", "adversarial")

RSS_TARGET_MB = 200
ALERT_TARGET = 1000
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MAC_C = b"\x02\x00\x00\x00\x00\x01"
MAC_S = b"\x02\x00\x00\x00\x00\x02"

Contact = tuple[str, str, str]  # kind, client ip, name


# -- packet bytes -----------------------------------------------------------------------------
def _csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 0, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, frag, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return MAC_S + MAC_C + b"\x08\x00" + hdr + payload


def _udp(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    return _ip4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def _tcp(src: bytes, sport: int, dst: bytes, dport: int, seq: int, flags: int, payload: bytes = b"", ack: int = 0) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    return _ip4(src, dst, 6, hdr + payload)


SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def dns_query(qid: int, name: str) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _qname(name) + b"\x00\x01\x00\x01"


def dns_nxdomain(qid: int, name: str) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + _qname(name) + b"\x00\x01\x00\x01"


def dns_answer(qid: int, name: str, addr: bytes) -> bytes:
    q = _qname(name) + b"\x00\x01\x00\x01"
    rr = b"\xc0\x0c\x00\x01\x00\x01" + struct.pack("!IH", 300, 4) + addr
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + rr


def client_hello(sni: str, announce: int | None = None, rng: random.Random | None = None) -> bytes:
    """A TLS 1.2/1.3 ClientHello record with SNI; ``announce`` overrides the handshake
    length (a hello that claims more than it carries)."""
    rnd = (rng or random).randbytes(32)
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    versions = struct.pack("!HHB", 43, 5, 4) + b"\x03\x04\x03\x03"
    exts = sni_ext + versions
    body = b"\x03\x03" + rnd + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\x13\x02" + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    hlen = len(body) if announce is None else announce
    hs = b"\x01" + hlen.to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs) if announce is None else 0x4000) + hs


def http_get(host: str) -> bytes:
    return f"GET /index.html HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n".encode()


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def _ipstr(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


# -- the capture writer -------------------------------------------------------------------------
class Writer:
    def __init__(self, path: str) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.n = 0
        self.ts = T0

    def add(self, frame: bytes, ts: float | None = None) -> None:
        if ts is not None:
            self.ts = ts
        sec = int(self.ts)
        self.fh.write(struct.pack("<IIII", sec, int((self.ts - sec) * 1e6), len(frame), len(frame)) + frame)
        self.n += 1

    def close(self) -> None:
        self.fh.close()


HIDDEN_NAMES = [
    ("dns", "dnl-03.geo.kaspersky.com"),
    ("tls", "ksn-a-stat-geo.kaspersky-labs.com"),
    ("http", "s05.upd.kaspersky.com"),
    ("dns", "activation-v2.kaspersky.com"),
    ("tls", "dc1.ksn.kaspersky-labs.com"),
    ("dns", "s07.upd.kaspersky.com"),
    ("tls", "click.kaspersky.com"),
    ("http", "downloads.upd.kaspersky.com"),
    ("dns", "ds.kaspersky.com"),
    ("tls", "p01.upd.kaspersky.com"),
]
RESOLVER = _ip("10.0.0.53")
SERVER = _ip("10.0.0.80")


def hidden(w: Writer, i: int, ts: float, rng: random.Random, client: bytes | None = None,
           kind_name: tuple[str, str] | None = None) -> Contact:
    """One real contact from client 10.9.0.<i+1> (or ``client``) at time ``ts``."""
    kind, name = kind_name or HIDDEN_NAMES[i % len(HIDDEN_NAMES)]
    c = client or _ip(f"10.9.0.{i + 1}")
    sport = 40000 + i
    if kind == "dns":
        qid = rng.randrange(65536)
        w.add(_udp(c, sport, RESOLVER, 53, dns_query(qid, name)), ts)
        w.add(_udp(RESOLVER, 53, c, sport, dns_answer(qid, name, SERVER)), ts + 0.002)
    else:
        isn, sisn = rng.randrange(1 << 32), rng.randrange(1 << 32)
        port = 443 if kind == "tls" else 80
        payload = client_hello(name, rng=rng) if kind == "tls" else http_get(name)
        w.add(_tcp(c, sport, SERVER, port, isn, SYN), ts)
        w.add(_tcp(SERVER, port, c, sport, sisn, SYN | ACK, ack=isn + 1), ts + 0.001)
        w.add(_tcp(c, sport, SERVER, port, isn + 1, ACK, ack=sisn + 1), ts + 0.002)
        w.add(_tcp(c, sport, SERVER, port, isn + 1, ACK | PSH, payload, ack=sisn + 1), ts + 0.003)
        w.add(_tcp(SERVER, port, c, sport, sisn + 1, ACK, ack=isn + 1 + len(payload)), ts + 0.004)
    return kind, _ipstr(c), name


def _rand_ip(rng: random.Random) -> bytes:
    return bytes((rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)))


def _label(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))


# -- the floods ---------------------------------------------------------------------------------
def gen_flood(kind: str, path: str, packets: int, rate: float, seed: int) -> list[Contact]:
    """Write one flood capture; return its hidden contacts."""
    rng = random.Random(seed)
    w = Writer(path)
    contacts: list[Contact] = []
    step = 1.0 / rate
    # The hidden contacts: spread evenly, the first after 5% of the flood (so the flood's
    # state is already there), one every ~10%.
    marks = [int(packets * (0.05 + 0.095 * i)) for i in range(10)]
    ts = T0
    n = 0
    flooder = _ip("10.66.0.1")
    qid = 0
    while n < packets:
        while marks and n >= marks[0]:
            i = 10 - len(marks)
            marks.pop(0)
            contacts.append(hidden(w, i, ts, rng))
            if kind == "dns" and i == 5:  # the flooding client's own real contact, another signature
                contacts.append(hidden(w, 10, ts + 0.01, rng, client=flooder, kind_name=("tls", "ksn-a-stat-geo.kaspersky-labs.com")))
        ts += step
        if kind == "dns":
            qid = (qid + 1) & 0xFFFF
            name = f"{_label(rng)}.upd.kaspersky.com"
            sport = 1024 + rng.randrange(64000)
            w.add(_udp(flooder, sport, RESOLVER, 53, dns_query(qid, name)), ts)
            w.add(_udp(RESOLVER, 53, flooder, sport, dns_nxdomain(qid, name)), ts + step / 2)
            n += 2
        elif kind == "syn":
            w.add(_tcp(_rand_ip(rng), 1024 + rng.randrange(64000), SERVER, rng.randrange(1, 65536), rng.randrange(1 << 32), SYN), ts)
            n += 1
        elif kind == "frag":
            src = _rand_ip(rng)
            payload = struct.pack("!HHHH", 1024 + rng.randrange(64000), 53, 1480, 0) + rng.randbytes(1472)
            w.add(_ip4(src, SERVER, 17, payload, ident=rng.randrange(65536), frag=0x2000), ts)
            n += 1
        elif kind == "hello16m":
            # A connection: SYN, then the hello's first record and full-size continuation
            # segments (never the 16 MB it announced), 12 data segments per connection.
            src, sport, isn = _rand_ip(rng), 1024 + rng.randrange(64000), rng.randrange(1 << 32)
            w.add(_tcp(src, sport, SERVER, 443, isn, SYN), ts)
            seq = isn + 1
            first = client_hello(f"{_label(rng, 8)}.example.net", announce=0xFFFFFF, rng=rng)
            first += rng.randbytes(1400 - len(first))
            w.add(_tcp(src, sport, SERVER, 443, seq, ACK | PSH, first), ts)
            seq += len(first)
            for _ in range(11):
                chunk = rng.randbytes(1400)
                w.add(_tcp(src, sport, SERVER, 443, seq, ACK, chunk), ts)
                seq += len(chunk)
            n += 13
        elif kind == "flows":
            src, sport = _rand_ip(rng), 1024 + rng.randrange(64000)
            w.add(_tcp(src, sport, SERVER, rng.randrange(1, 65536), rng.randrange(1 << 32), ACK | PSH, rng.randbytes(64)), ts)
            n += 1
        else:
            raise ValueError(kind)
    w.close()
    return contacts


def gen_normal(path: str, packets: int, rate: float, seed: int) -> list[Contact]:
    """Ordinary traffic: TLS and HTTP downloads (handshake then bulk segments), DNS
    lookups of ordinary names, and the same ten real contacts."""
    rng = random.Random(seed)
    w = Writer(path)
    contacts: list[Contact] = []
    marks = [int(packets * (0.05 + 0.095 * i)) for i in range(10)]
    step = 1.0 / rate
    ts, n = T0, 0
    clients = [_ip(f"10.2.{i // 250}.{i % 250 + 1}") for i in range(500)]
    names = [f"{_label(rng, 6)}.example.{tld}" for tld in ("com", "org", "net") for _ in range(300)]
    while n < packets:
        while marks and n >= marks[0]:
            contacts.append(hidden(w, 10 - len(marks), ts, rng))
            marks.pop(0)
        ts += step
        c = rng.choice(clients)
        r = rng.random()
        if r < 0.15:
            qid, name, sport = rng.randrange(65536), rng.choice(names), 1024 + rng.randrange(64000)
            w.add(_udp(c, sport, RESOLVER, 53, dns_query(qid, name)), ts)
            w.add(_udp(RESOLVER, 53, c, sport, dns_answer(qid, name, SERVER)), ts + step / 2)
            n += 2
            continue
        tls = r < 0.7
        port, sport = (443 if tls else 80), 1024 + rng.randrange(64000)
        isn, sisn = rng.randrange(1 << 32), rng.randrange(1 << 32)
        req = client_hello(rng.choice(names), rng=rng) if tls else http_get(rng.choice(names))
        w.add(_tcp(c, sport, SERVER, port, isn, SYN), ts)
        w.add(_tcp(SERVER, port, c, sport, sisn, SYN | ACK, ack=isn + 1), ts)
        w.add(_tcp(c, sport, SERVER, port, isn + 1, ACK | PSH, req, ack=sisn + 1), ts)
        seq = sisn + 1
        bulk = rng.randrange(20, 60)
        for _ in range(bulk):  # the download: full-size segments from the server
            w.add(_tcp(SERVER, port, c, sport, seq, ACK, rng.randbytes(1448) if _ % 8 == 0 else bytes(1448), ack=isn + 1 + len(req)), ts)
            seq += 1448
        w.add(_tcp(c, sport, SERVER, port, isn + 1 + len(req), FIN | ACK, ack=seq), ts)
        n += 4 + bulk
    w.close()
    return contacts


# -- running the detector -----------------------------------------------------------------------
_RATE = re.compile(r"([\d,]+) packets, [\d,]+ bytes in ([\d.]+) s")


def run_detector(pcap: str, out: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "detector", "replay", pcap, "-o", out, *extra]
    if os.path.exists(out):
        os.unlink(out)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    m = _RATE.search(err)
    packets = int(m.group(1).replace(",", "")) if m else 0
    seconds = float(m.group(2)) if m else wall
    # Only what the table needs, line by line: this process must stay small (a child's
    # peak RSS starts at its parent's size at fork, on Linux).
    seen: set[tuple[str, str]] = set()
    alerts = storms = 0
    if os.path.exists(out):
        with open(out, encoding="ascii") as fh:
            for line in fh:
                if not line.strip():
                    continue
                a = json.loads(line)
                meta = a["alert"]["metadata"]
                alerts += 1
                storms += "storm_distinct_names" in meta
                seen.add((a.get("src_ip", ""), (meta.get("hostname") or [""])[0]))
    return {
        "status": proc.returncode, "stderr": err, "packets": packets, "seconds": seconds,
        "pps": packets / seconds if seconds > 0 else 0.0, "rss_mb": usage.ru_maxrss / 1024, "alerts": alerts,
        "storms": storms, "seen": seen, "wall": wall,
    }


def reported(seen: set[tuple[str, str]], contacts: list[Contact]) -> list[tuple[Contact, bool]]:
    return [(c, (c[1], c[2]) in seen) for c in contacts]


FLOODS = {
    # name: (packets at scale 1, packets per second of capture time, what it is)
    "dns": (250_000, 5_000, "random-subdomain DNS flood under upd.kaspersky.com, one client"),
    "syn": (250_000, 20_000, "SYN flood from random sources"),
    "frag": (250_000, 20_000, "first IPv4 fragments that never complete"),
    "hello16m": (250_000, 20_000, "ClientHellos announcing 16 MB that never finish"),
    "flows": (1_000_000, 50_000, "a million distinct TCP flows"),
}


def generate(kind: str, pcap: str, npk: int) -> None:
    contacts = gen_normal(pcap, npk, 5_000, 1) if kind == "normal" else gen_flood(kind, pcap, npk, FLOODS[kind][1], 7)
    with open(pcap + ".contacts.json", "w") as fh:
        json.dump(contacts, fh)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--generate":
        generate(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every flood's packet count (default 1)")
    ap.add_argument("--only", default="", help="comma-separated floods (default all): " + ", ".join(FLOODS))
    ap.add_argument("--rebuild", action="store_true", help="regenerate the captures even if present")
    ap.add_argument("--keep", action="store_true", help="keep the alert files in _work/adversarial/")
    ap.add_argument("--detector-args", default="", help="extra arguments for detector replay")
    ap.add_argument("--exact", action="store_true", help="the pure-Python path (detector replay --exact)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--work", default=WORK, metavar="DIR", help=f"where the captures go (default {WORK})")
    args = ap.parse_args()
    work = args.work
    os.makedirs(work, exist_ok=True)
    only = [x for x in args.only.split(",") if x] or list(FLOODS)
    unknown = [x for x in only if x not in FLOODS]
    if unknown:
        ap.error(f"unknown flood(s) {', '.join(unknown)} (valid: {', '.join(FLOODS)})")
    extra = args.detector_args.split() + (["--exact"] if args.exact else [])
    rows = []
    normal_n = int(250_000 * args.scale)
    jobs: list[tuple[str, str, int, str]] = [("normal", "ordinary traffic: TLS/HTTP downloads, DNS", normal_n, "")]
    for name in only:
        npk, _rate, what = FLOODS[name]
        jobs.append((name, what, int(npk * args.scale), name))
    for name, what, npk, kind in jobs:
        pcap = os.path.join(work, f"{name}-{npk}.pcap")
        meta = pcap + ".contacts.json"
        if args.rebuild or not (os.path.exists(pcap) and os.path.exists(meta)):
            # In a child process: a process's peak RSS counts its parent's at fork time
            # (Linux carries it across exec), so this one stays small for the detector's.
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--generate", kind or "normal", pcap, str(npk)], check=True)
            print(f"generated {pcap} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        with open(meta) as fh:
            contacts = [tuple(c) for c in json.load(fh)]
        out = os.path.join(work, f"{name}.alerts.json")
        r = run_detector(pcap, out, extra)
        hits = reported(r["seen"], contacts)  # type: ignore[arg-type]
        missed = [c for c, ok in hits if not ok]
        rows.append({
            "capture": name, "what": what, "packets": r["packets"], "pps": r["pps"], "rss_mb": r["rss_mb"],
            "alerts": r["alerts"], "hidden": len(contacts), "found": len(contacts) - len(missed),
            "missed": missed, "status": r["status"], "seconds": r["seconds"],
            "storm": r["storms"],
        })
        if r["status"] not in (0,):
            print(f"{name}: detector exited {r['status']}:\n{r['stderr']}", file=sys.stderr)
        if not args.keep:
            os.unlink(out)
        print(f"{name}: {r['packets']:,} packets, {r['pps']:,.0f} packets/s, peak RSS {r['rss_mb']:.0f} MB, "
              f"{r['alerts']} alerts, hidden {len(contacts) - len(missed)}/{len(contacts)}", file=sys.stderr)
    base = rows[0]["pps"] or 1.0
    ok = True
    print("| capture | packets | packets/s | vs normal | peak RSS | alerts (storm aggregates) | hidden contacts reported |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        good = r["rss_mb"] <= RSS_TARGET_MB and not r["missed"] and r["alerts"] <= ALERT_TARGET and r["status"] == 0
        ok = ok and good
        found = f"{r['found']}/{r['hidden']}" + ("" if not r["missed"] else " MISSED " + ", ".join(f"{c[1]} {c[2]}" for c in r["missed"]))
        print(f"| {r['capture']}: {r['what']} | {r['packets']:,} | {r['pps']:,.0f} | {r['pps'] / base:.2f}x | "
              f"{r['rss_mb']:.0f} MB | {r['alerts']:,} ({r['storm']}) | {found} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
