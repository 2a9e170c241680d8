"""How the host inventory scales: N alerts over H internal hosts, built in bounded memory
and time.  Each measurement runs in a fresh process and reports wall time and peak RSS.

    .venv/bin/python benchmarks/report_bench.py            # the README's table
    .venv/bin/python benchmarks/report_bench.py --alerts 1000000 --hosts 100000 --mode file

Modes:
  hook   the replay path (``replay --report``): real ``Alert`` objects (the bundled
         signatures, a mix of DNS/TLS/HTTP/port evidence, one to three alerts per host
         per signature) handed to ``Inventory.add_alert`` one by one, then every format
         rendered;
  file   the ``detector report`` path: the same alerts written as EVE JSON lines (gzip)
         by formats/eve.py, then read back, parsed and inventoried by the command itself
         (its wall time and peak RSS; writing the file is not counted).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

T0 = 1_795_000_000.0


def alerts(n: int, hosts: int, seed: int = 7):
    """``n`` Alert objects over ``hosts`` internal clients (10.x.y.z), three days long."""
    from detector.model import Alert, Evidence, Match, Observation, Strength
    from detector.signatures import load_signatures

    sigs = list(load_signatures())
    rnd = random.Random(seed)
    kinds = [Evidence.DNS_QUERY, Evidence.TLS_SNI, Evidence.HTTP_HOST, Evidence.QUIC_SNI]
    for i in range(n):
        h = rnd.randrange(hosts)
        client = f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255}"
        sig = sigs[rnd.randrange(len(sigs))]
        if sig.ports:
            ev, name, port = Evidence.PORT, f"tcp/{sig.ports[0][1]}", sig.ports[0][1]
            detail = {"agent": client, "ksc_server": "10.255.0.1", "app_proto": "tls"}
            server = "10.255.0.1"
        else:
            ev = kinds[i % len(kinds)]
            name = (sig.names or (f"x.{sig.suffixes[0]}",) if sig.suffixes else ("kaspersky.com",))[0] if sig.names or sig.suffixes else "kaspersky.com"
            port, server, detail = 443, "203.0.113.5", {"sni": name, "version": "TLS 1.3"}
        ts = T0 + rnd.random() * 3 * 86400
        mac = bytes([2, 0, h >> 16 & 255, h >> 8 & 255, h & 255, 1]).hex(":")
        obs = Observation(ts=ts, evidence=ev, hostname=name, client=client, server=server, client_port=40000 + i % 20000,
                          server_port=port, proto=6, flow_id=i, detail=dict(detail, client_mac=mac))
        yield Alert(Match(obs, sig, name), count=rnd.randint(1, 20), first_seen=ts, last_seen=ts + rnd.random() * 600,
                    source_file="bench.pcap", strength=Strength(rnd.randint(1, 3)))


def run_hook(n: int, hosts: int, out: str) -> dict:
    from detector.report import Inventory
    from detector.report.command import write

    gen = alerts(n, hosts)
    t = time.perf_counter()
    inv = Inventory()
    add = inv.add_alert
    for a in gen:
        add(a)
    res = {"alerts": n, "hosts": len(inv)}
    res["inventory_s"] = round(time.perf_counter() - t, 2)  # includes building the Alert objects
    res["inventory_rss_MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("table", "csv", "json", "html"):  # as replay --report writes them: streamed
            path = os.path.join(d, f"inventory.{fmt}")
            t = time.perf_counter()
            write(inv, path, fmt, ["bench.pcap"])
            res[f"{fmt}_s"] = round(time.perf_counter() - t, 2)
            res[f"{fmt}_MB"] = round(os.path.getsize(path) / 1e6, 1)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["peak_rss_MB"] = round(ru.ru_maxrss / 1024)
    res["cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)  # the whole process, Alert objects included
    return res


def write_file(n: int, hosts: int, path: str) -> None:
    from detector.formats.eve import format_alert

    with gzip.open(path, "wb", compresslevel=1) as fh:
        for a in alerts(n, hosts):
            fh.write(format_alert(a))


def child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int)
    ap.add_argument("--hosts", type=int)
    ap.add_argument("--mode", choices=["hook", "file"])
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_hook(args.alerts, args.hosts, "")))
        return
    grid = [(args.alerts, args.hosts)] if args.alerts else [(100_000, 10_000), (1_000_000, 100_000), (2_000_000, 100_000)]
    modes = [args.mode] if args.mode else ["hook", "file"]
    for n, h in grid:
        for mode in modes:
            if mode == "hook":
                r = child(["--_child", "--alerts", str(n), "--hosts", str(h)])
                print(json.dumps(dict(mode="hook", **r)), flush=True)
                continue
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "alerts.json.gz")
                write_file(n, h, path)
                size = os.path.getsize(path)
                for fmt in ("csv", "html"):
                    out = os.path.join(d, f"inv.{fmt}")
                    t = time.perf_counter()
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cmd = [sys.executable, "-c", "import resource,sys; from detector.cli import main; rc = main(sys.argv[1:]); "
                           "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr); sys.exit(rc)",
                           "report", "-q", "-o", out, path]  # fmt: skip
                    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
                    wall = time.perf_counter() - t
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                    rss = int(p.stderr.split("RSS", 1)[1].split()[0])
                    print(json.dumps({"mode": "file", "alerts": n, "hosts": h, "format": fmt, "gz_MB": round(size / 1e6, 1),
                                      "wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "peak_rss_MB": rss,
                                      "out_MB": round(os.path.getsize(out) / 1e6, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
