#!/usr/bin/env python3
"""suricata_rules.py - Suricata 7 rules equivalent to our signature packs (for the benchmark).

    .venv/bin/python benchmarks/suricata_rules.py [--out benchmarks/_work/kaspersky.rules]
                                                  [--signatures PACK.yaml ...] [--validate]

For every signature, every pattern and every protocol one rule (app-layer keywords
``dns.query``, ``tls.sni``, ``http.host``):

  exact name   dns.query; content:"s05.upd.kaspersky.com"; nocase; startswith; endswith;
               (``startswith; endswith;`` = anchored at both ends; endswith is the same as
               ``isdataat:!1,relative;``)
  suffix       dns.query; dotprefix; content:".upd.kaspersky.com"; nocase; endswith;
               dotprefix puts a '.' in front of the buffer, so this one rule matches the
               bare suffix (".upd.kaspersky.com") and every name below it on a label
               boundary, never "notupd.kaspersky.com"; a separate exact rule for the bare
               suffix would only duplicate the alert (checked by --validate).
  wildcard     dns.query; content:"-geo.kaspersky-labs.com"; nocase; endswith;
               pcre:"/^ksn-[^.]+-geo\\.kaspersky-labs\\.com$/i";
               (the longest literal piece is the fast pattern, the pcre confirms; '*' is
               one or more characters inside one label, '?' exactly one, as in the matcher)

Our matcher ignores one trailing dot ("Host: s03.upd.kaspersky.com." is a hit).  Suricata's
http.host buffer is lower-cased and loses the port, but keeps a trailing dot (checked on
the benchmark capture), and tls.sni is the raw SNI, so every TLS and HTTP rule has a twin
for the trailing-dot spelling (``content:"name."``, ``".suffix."``, pcre ``\\.$``).  DNS
names have no trailing dot.  (http.host also rejects ``nocase``: the buffer is lower case.)

sid = signature id * 1000 + protocol base (dns 0, tls 300, http 600, quic 900) + rule number within
that signature and protocol.  When a pack's ids are too large for that (Suricata sids are
32-bit), rules are numbered from --sid-base instead.  Either way the map file written next
to the rules (``<rules>.map.json``) gives, for every sid, the signature id, protocol, pattern
kind and pattern; every rule also carries it in ``metadata``.

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

PROTOS = {"dns": ("dns", "dns.query", 0), "tls": ("tls", "tls.sni", 300), "http": ("http", "http.host", 600),
          "quic": ("quic", "quic.sni", 900)}
BENCH_PROTOS = ("dns", "tls", "http")  # the benchmark's config has Suricata's QUIC parser off
TRAILING_DOT = {"dns": False, "tls": True, "http": True, "quic": True}
CONFIG = os.path.join(bench_lib.HERE, "suricata-bench.yaml")
SID_MAX = 0xFFFFFFFF


def literal_pieces(pattern: str) -> list[str]:
    return [p for p in re.split(r"[*?]", pattern) if p]


def rule_bodies(kind: str, pattern: str, proto: str) -> list[tuple[str, str]]:
    """[(variant, options)] for one pattern and protocol; variant 'plain' or 'dot'."""
    buf = PROTOS[proto][1]
    # http.host is normalised to lower case by Suricata, which rejects 'nocase' on it
    nocase = "" if proto == "http" else " nocase;"
    out: list[tuple[str, str]] = []
    variants = ["plain", "dot"] if TRAILING_DOT[proto] else ["plain"]
    for v in variants:
        dot = "." if v == "dot" else ""
        if kind == "names":
            body = f'{buf}; content:"{pattern}{dot}";{nocase} startswith; endswith;'
        elif kind == "suffixes":
            body = f'{buf}; dotprefix; content:".{pattern}{dot}";{nocase} endswith;'
        else:  # wildcards
            pieces = literal_pieces(pattern)
            fast = max(pieces, key=len)
            last = pattern.endswith(fast)
            content = f'content:"{fast}{dot if last else ""}";{nocase}' + (" endswith;" if last else "")
            rx = bench_lib.wildcard_regex(pattern)[:-1] + ("\\." if dot else "") + "$"
            body = f'{buf}; {content} pcre:"/{rx}/i";'
        out.append((v, body))
    return out


def build(sigset, sid_base: int | None = None, protos: tuple[str, ...] = BENCH_PROTOS) -> tuple[list[str], dict[int, dict]]:
    rules: list[str] = []
    smap: dict[int, dict] = {}
    per_sig = max(1000, 1)
    use_offsets = sid_base is None and all(s.id * per_sig + 999 <= SID_MAX for s in sigset)
    seq = sid_base or 1_000_000_000
    for sig in sigset:
        for proto in protos:
            hdr, _buf, base = PROTOS[proto]
            n = 0
            for kind in ("names", "suffixes", "wildcards"):
                for pattern in getattr(sig, kind):
                    for variant, body in rule_bodies(kind, pattern, proto):
                        if use_offsets:
                            if n >= (100 if proto == "quic" else 300):
                                raise SystemExit(f"signature {sig.id}: too many {proto} rules; use --sid-base")
                            sid = sig.id * per_sig + base + n
                        else:
                            sid = seq
                            seq += 1
                        n += 1
                        shown = pattern + ("." if variant == "dot" else "")
                        msg = f"KDT {sig.category} {shown} ({proto}) - {sig.name}".replace('"', "'").replace(";", ",")
                        meta = (f"kdt_signature_id {sig.id}, kdt_proto {proto}, kdt_kind {kind[:-1] if kind != 'suffixes' else 'suffix'}, "
                                f"kdt_category {sig.category}, kdt_variant {variant}")
                        rules.append(f'alert {hdr} any any -> any any (msg:"{msg}"; {body} '
                                     f"classtype:policy-violation; metadata:{meta}; sid:{sid}; rev:1;)")
                        smap[sid] = {"signature_id": sig.id, "proto": proto, "kind": kind, "pattern": pattern,
                                     "variant": variant}
    return rules, smap


def write(sigset, out: str, sid_base: int | None = None) -> tuple[str, int]:
    rules, smap = build(sigset, sid_base)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        fh.write("# Generated by benchmarks/suricata_rules.py from: {}\n".format(", ".join(sigset.files)))
        fh.write(f"# {len(rules)} rules for {len(sigset)} signatures (dns.query, tls.sni, http.host). Do not edit.\n")
        fh.write("\n".join(rules) + "\n")
    with open(out + ".map.json", "w") as fh:
        json.dump({str(k): v for k, v in sorted(smap.items())}, fh, indent=0)
        fh.write("\n")
    return out, len(rules)


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
    ap.add_argument("--sid-base", type=int, help="number rules sequentially from here instead of id*1000+offset")
    ap.add_argument("--validate", action="store_true", help="run suricata -T on the result (and a selftest)")
    ap.add_argument("--config", default=CONFIG)
    args = ap.parse_args()
    sigset = bench_lib.load_pack(args.signatures)
    out, n = write(sigset, args.out, args.sid_base)
    print(f"wrote {n} rules for {len(sigset)} signatures to {out} (sid map {out}.map.json)")
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
