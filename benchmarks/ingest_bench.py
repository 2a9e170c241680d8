#!/usr/bin/env python3
"""ingest_bench.py - ``detector ingest`` over a large Suricata EVE file.

    .venv/bin/python benchmarks/ingest_bench.py [--size-gb 1.0] [--keep]

Writes benchmarks/_work/eve-bench.json (not committed; .gitignore has _work/): records in
the shape Suricata 7.0.10 writes them (dns query + answer, tls, http, quic, flow, and an
alert for one in 50 names), one in 20 names a Kaspersky one, the rest ordinary names;
clients spread over 198.18.0.0/16 and time running forward.  Then runs
``detector ingest FILE -o /dev/null`` under /usr/bin/time and reports lines per second
(from the summary), wall time and peak RSS.  Writes benchmarks/_work/ingest_results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # noqa: E402

KASPERSKY = ["s05.upd.kaspersky.com", "activation-v2.kaspersky.com", "dc1.ksn.kaspersky-labs.com",
             "ksn-url-geo.kaspersky-labs.com", "crl.kaspersky.com", "dnl-08.geo.kaspersky.com"]
ORDINARY = ["www.example.org", "cdn.example.net", "api.example.com", "mail.example.org", "static.example.net"]


def ts(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def records(rng: random.Random, i: int, t: float) -> list[dict]:
    name = rng.choice(KASPERSKY) if i % 20 == 0 else f"h{i % 5000}.{rng.choice(ORDINARY)}"
    client = f"198.18.{(i >> 8) & 255}.{i & 255}"
    server = f"198.19.{(i >> 4) & 255}.{i & 15}"
    fid = 1_000_000_000_000 + i
    base = {"timestamp": ts(t), "flow_id": fid, "src_ip": client, "src_port": 30000 + i % 30000, "dest_ip": "198.18.255.53",
            "dest_port": 53, "proto": "UDP", "pkt_src": "wire/pcap"}
    out = [
        dict(base, event_type="dns", dns={"version": 2, "type": "query", "id": i & 0xFFFF, "rrname": name, "rrtype": "A",
                                           "tx_id": 0, "opcode": 0}),
        dict(base, event_type="dns", dns={"version": 2, "type": "answer", "id": i & 0xFFFF, "flags": "8180", "qr": True,
                                           "rd": True, "ra": True, "opcode": 0, "rrname": name, "rrtype": "A", "rcode": "NOERROR",
                                           "answers": [{"rrname": name, "rrtype": "A", "ttl": 300, "rdata": server}],
                                           "grouped": {"A": [server]}}),
    ]
    tcp = dict(base, flow_id=fid + 1, src_port=40000 + i % 20000, dest_ip=server, dest_port=443, proto="TCP")
    kind = i % 3
    if kind == 0:
        out.append(dict(tcp, event_type="tls", tls={"subject": "CN=" + name, "issuerdn": "CN=Bench CA", "serial": "01",
                                                     "fingerprint": "aa:bb", "sni": name, "version": "TLS 1.3",
                                                     "notbefore": "2024-01-01T00:00:00", "notafter": "2025-01-01T00:00:00"}))
    elif kind == 1:
        out.append(dict(tcp, dest_port=80, event_type="http", tx_id=0, http={
            "hostname": name, "url": "/index.html", "http_user_agent": "curl/7.88.1", "http_content_type": "text/html",
            "http_method": "GET", "protocol": "HTTP/1.1", "status": 200, "length": 612}))
    else:
        out.append(dict(tcp, proto="UDP", event_type="quic", quic={"version": "1", "sni": name}))
    if i % 50 == 0:
        out.append(dict(base, event_type="alert", tx_id=0, alert={"action": "allowed", "gid": 1, "signature_id": 2100498,
                                                                  "rev": 7, "signature": "GPL ATTACK_RESPONSE", "category": "x",
                                                                  "severity": 2}, app_proto="dns",
                        dns={"query": [{"type": "query", "id": i & 0xFFFF, "rrname": name, "rrtype": "A", "tx_id": 0}]}))
    out.append(dict(tcp, event_type="flow", app_proto="tls" if kind == 0 else "http" if kind == 1 else "quic",
                    flow={"pkts_toserver": 8, "pkts_toclient": 7, "bytes_toserver": 937, "bytes_toclient": 4832,
                          "start": ts(t), "end": ts(t + 1), "age": 1, "state": "closed", "reason": "timeout", "alerted": False},
                    tcp={"tcp_flags": "1b", "syn": True, "fin": True, "psh": True, "ack": True, "state": "closed"}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    args = ap.parse_args()
    os.makedirs(bench_lib.WORK, exist_ok=True)
    path = os.path.join(bench_lib.WORK, "eve-bench.json")
    target = int(args.size_gb * 1e9)
    rng = random.Random(1)
    if not os.path.exists(path) or os.path.getsize(path) < target:
        with open(path, "w") as fh:
            i, t, size = 0, 1_719_230_400.0, 0
            while size < target:
                chunk = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records(rng, i, t))
                fh.write(chunk)
                size += len(chunk)
                i += 1
                t += 0.01
    size = os.path.getsize(path)
    p = subprocess.run(["/usr/bin/time", "-v", os.path.join(bench_lib.REPO, ".venv", "bin", "detector"), "ingest", path,
                        "-o", "/dev/null"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    summary = re.search(r"ingest: (\d+) lines in ([\d.]+) s \(([\d,]+) lines/s\)", p.stderr)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    alerts = re.search(r"alerts written: (\d+)", p.stderr)
    lines_n, secs, rate = int(summary.group(1)), float(summary.group(2)), summary.group(3)
    text = (f"`detector ingest` over a {size / 1e9:.2f} GB Suricata EVE file ({lines_n:,} lines): {secs:.0f} s, "
            f"**{rate} lines/s** ({size / 1e6 / secs:.1f} MB/s), peak RSS {rss:.0f} MB, "
            f"{alerts.group(1) if alerts else '?'} alerts (de-duplicated)\n\n```\n{p.stderr.split(chr(9) + 'Command being timed')[0].strip()}\n```\n")
    with open(os.path.join(bench_lib.WORK, "ingest_results.md"), "w") as fh:
        fh.write(text)
    print(text)
    if not args.keep:
        os.remove(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
