#!/usr/bin/env python3
"""suricata_rules.py - the Suricata rules for the benchmark: ``detector export suricata``.

    .venv/bin/python benchmarks/suricata_rules.py [--out benchmarks/_work/kaspersky.rules]
                                                  [--signatures PACK.yaml ...] [--validate]

The rules are the product's own export (``detector/export/suricata.py``, which documents
the rule forms, sids and the trailing-dot twins); this script only writes them where the
benchmark expects them and, with ``--validate``, checks them with ``suricata -T`` and a
selftest on a tiny synthetic capture (the rule forms on the edge cases: the bare suffix,
a look-alike, a wildcard, mixed case).

Differences from our matcher that rules cannot express (documented, not hidden): Suricata
fires every matching rule (the exact, the wildcard and each enclosing suffix rule), while the
matcher reports only the most specific signature; both are reduced to (client, kind, name)
contacts before they are compared.  The matcher rejects names with invalid labels (spaces,
'..', non-ASCII); the rules do not check label syntax.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # noqa: E402

CONFIG = os.path.join(bench_lib.HERE, "suricata-bench.yaml")


def write(sigset, out: str) -> tuple[str, int]:
    """The exporter's rules (and dataset files, if any) next to ``out``."""
    if bench_lib.REPO not in sys.path:
        sys.path.insert(0, bench_lib.REPO)
    from detector.export import EXPORTERS, ExportOptions, write_bundle

    bundle = EXPORTERS["suricata"](sigset, ExportOptions())
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    rules = bundle.pop("kaspersky.rules")
    with open(out, "wb") as fh:
        fh.write(rules)
    if bundle:
        write_bundle(bundle, directory)
    return out, rules.count(b"\nalert ")


def rule_bodies(kind: str, pattern: str, proto: str) -> list[tuple[str, str]]:
    """The exporter's matching options for one pattern on one protocol (for the selftest)."""
    if bench_lib.REPO not in sys.path:
        sys.path.insert(0, bench_lib.REPO)
    from detector.export.suricata import PROTOCOLS, match_body

    app, buffer, _base, _slots, nocase, twin = next(p for p in PROTOCOLS if p[0] == proto)
    return [("dot" if dot else "plain", match_body(kind, pattern, buffer, nocase, dot)) for dot in ((False, True) if twin else (False,))]


def validate(rules: str, config: str = CONFIG) -> tuple[bool, str]:
    """suricata -T: parse the config and every rule; returns (ok, summary)."""
    if not shutil.which("suricata"):
        return False, "suricata is not installed"
    with tempfile.TemporaryDirectory(prefix="kdt-suricata-T.") as d:
        p = subprocess.run(["suricata", "-T", "-c", config, "-S", rules, "-l", d, "-v"],
                           capture_output=True, text=True, timeout=300)
    text = p.stdout + p.stderr
    m = re.search(r"(\d+) rules successfully loaded, (\d+) rules failed", text)
    loaded, failed = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
    problems = [ln for ln in text.splitlines() if re.search(r"\b(Error|Warning|E:|W:)", ln)]
    ok = p.returncode == 0 and failed == 0
    summary = f"suricata -T exit {p.returncode}: {loaded} rules loaded, {failed} failed"
    if problems:
        summary += "\n" + "\n".join(problems[:20])
    return ok, summary


def selftest(config: str = CONFIG) -> tuple[bool, str]:
    """Check the rule forms on a tiny synthetic capture built with Python (no network):
    a DNS query for the bare suffix must fire only the suffix rule once, look-alikes nothing."""
    import struct

    def dns_query(name: str, qid: int) -> bytes:
        q = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
        return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)

    def csum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\x00"
        s = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    def frame(payload: bytes, sport: int) -> bytes:
        src, dst = bytes([198, 18, 9, 9]), bytes([198, 18, 0, 1])
        udp = struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + udp

    names = ["upd.kaspersky.com", "x.upd.kaspersky.com", "notupd.kaspersky.com.example",
             "ksn-abc-geo.kaspersky-labs.com", "ksn--geo.kaspersky-labs.com", "Activation-V2.Kaspersky.COM"]
    rules = ['alert dns any any -> any any (msg:"suffix"; dns.query; dotprefix; content:".upd.kaspersky.com"; nocase; endswith; sid:1; rev:1;)',
             'alert dns any any -> any any (msg:"bare"; dns.query; content:"upd.kaspersky.com"; nocase; startswith; endswith; sid:2; rev:1;)']
    rules += [f'alert dns any any -> any any (msg:"{v}"; {b} sid:{10 + i}; rev:1;)'
              for i, (v, b) in enumerate(rule_bodies("wildcards", "ksn-*-geo.kaspersky-labs.com", "dns")
                                         + rule_bodies("names", "activation-v2.kaspersky.com", "dns"))]
    with tempfile.TemporaryDirectory(prefix="kdt-suricata-selftest.") as d:
        pcap = os.path.join(d, "t.pcap")
        with open(pcap, "wb") as fh:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for i, n in enumerate(names):
                f = frame(dns_query(n, 100 + i), 40000 + i)
                fh.write(struct.pack("<IIII", 1700000000 + i, 0, len(f), len(f)) + f)
        rf = os.path.join(d, "t.rules")
        with open(rf, "w") as fh:
            fh.write("\n".join(rules) + "\n")
        p = subprocess.run(["suricata", "-c", config, "-r", pcap, "-S", rf, "-l", d, "-k", "none",
                            "--runmode", "single"], capture_output=True, text=True, timeout=300)
        hits: dict[str, list[int]] = {}
        eve = os.path.join(d, "eve.json")
        for line in bench_lib.read_text(eve).splitlines() if os.path.exists(eve) else []:
            rec = json.loads(line)
            if rec.get("event_type") == "alert":
                for _k, name in bench_lib.suricata_alert_names(rec):
                    hits.setdefault(name, []).append(rec["alert"]["signature_id"])
    want = {"upd.kaspersky.com": [1, 2], "x.upd.kaspersky.com": [1], "ksn-abc-geo.kaspersky-labs.com": [10],
            "activation-v2.kaspersky.com": [11]}
    got = {k: sorted(v) for k, v in hits.items()}
    ok = p.returncode == 0 and got == want
    return ok, f"selftest (dotprefix covers the bare suffix; wildcard; nocase): got {got}, want {want}"


def main() -> int:
    ap = argparse.ArgumentParser(description="Write Suricata rules equivalent to the signature packs.")
    ap.add_argument("--out", default=os.path.join(bench_lib.WORK, "kaspersky.rules"))
    ap.add_argument("--signatures", action="append", help="pack file(s) (default signatures/kaspersky.yaml)")
    ap.add_argument("--validate", action="store_true", help="run suricata -T on the result (and a selftest)")
    ap.add_argument("--config", default=CONFIG)
    args = ap.parse_args()
    sigset = bench_lib.load_pack(args.signatures)
    out, n = write(sigset, args.out)
    print(f"wrote {n} rules for {len(sigset)} signatures to {out} (detector export suricata)")
    if args.validate:
        ok, summary = validate(out, args.config)
        print(summary)
        ok2, summary2 = selftest(args.config)
        print(summary2)
        if not (ok and ok2):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
