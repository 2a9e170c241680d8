#!/usr/bin/env python3
"""run_bench.py - time the detector, Suricata and tcpdump on the benchmark capture.

Called by benchmarks/run.sh (which installs the peers, builds the capture and the rules);
can be run alone once those exist:

    .venv/bin/python benchmarks/run_bench.py [--runs 5] [--detector-args "--jobs 2"]

Every round runs detector, suricata, tcpdump in turn (alternating, so that drift in machine
load hits all three alike), then the same three on a 10-packet capture (start-up cost).
Per run: wall time (perf_counter around fork/exec/wait), CPU time and peak RSS from
wait4() (the largest process of the tool's tree), plus a sampled sum of the RSS of the tool's
whole process tree (for tools that fork workers).  Detections are computed for every run
of the detector and Suricata against truth.json as (client, kind, name) contacts.
Writes benchmarks/_work/results.md and results.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # noqa: E402

# What the detector has to look at, as a BPF filter: every DNS packet (UDP and TCP port 53),
# IP fragments (a DNS answer may be fragmented), TCP handshake/teardown flags, and TCP
# segments whose payload starts a TLS handshake record (0x16) or an HTTP request head
# ("GET ", "POST", "HEAD", "CONN").  BPF's tcp[] only works for IPv4, so IPv6 (without
# extension headers) is spelled out with ip6[] offsets.  This is a floor, not an equivalent:
# it cannot follow a ClientHello split over several segments or later requests on a
# keep-alive connection; it is what reading the file and running one kernel-style filter
# per packet costs.
_PAY4 = "tcp[((tcp[12] & 0xf0) >> 2)"
_PAY6 = "ip6[40 + ((ip6[52] & 0xf0) >> 2)"
_METHODS = ("0x47455420", "0x504f5354", "0x48454144", "0x434f4e4e")  # "GET ", "POST", "HEAD", "CONN"
BPF = " or ".join([
    "port 53",
    "(ip[6:2] & 0x3fff != 0)",
    "(ip6 and ip6[6] = 44)",
    "(ip and tcp and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0 or " + f"{_PAY4}] = 0x16 or "
    + " or ".join(f"{_PAY4}:4] = {m}" for m in _METHODS) + "))",
    "(ip6 and ip6[6] = 6 and (ip6[53] & 0x07 != 0 or " + f"{_PAY6}] = 0x16 or "
    + " or ".join(f"{_PAY6}:4] = {m}" for m in _METHODS) + "))",
])


def tree_rss_kb(pid: int) -> int:
    """Sum of VmRSS over pid and its descendants (via /proc/<pid>/task/*/children)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    todo.extend(int(x) for x in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


def measure(cmd: list[str], stdout_path: str | None = None, sample: float = 0.2) -> dict:
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL  # noqa: SIM115
    err_path = os.path.join(bench_lib.WORK, "runs", "last-stderr.txt")
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak = [0]
        done = threading.Event()

        def sampler() -> None:
            while not done.wait(sample):
                peak[0] = max(peak[0], tree_rss_kb(p.pid))
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    if stdout_path:
        out.close()
    with open(err_path, "rb") as fh:
        stderr = fh.read().decode(errors="replace")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime, "sys": ru.ru_stime,
            "maxrss_mb": ru.ru_maxrss / 1024, "tree_peak_mb": peak[0] / 1024,
            "rss_mb": max(ru.ru_maxrss, peak[0]) / 1024, "rc": p.returncode, "stderr": stderr[-2000:]}


def tiny_pcap(src: str, dst: str, n: int = 10) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.write(fi.read(24))
        for _ in range(n):
            h = fi.read(16)
            if len(h) < 16:
                break
            incl = struct.unpack("<IIII", h)[2]
            fo.write(h + fi.read(incl))


def version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def jobs_comparison(args: argparse.Namespace, runs_dir: str) -> dict:
    """--jobs 1 vs --jobs 2 over the capture split into files (editcap -c), alternating."""
    stats = bench_lib.pcap_stats(args.pcap)
    per = stats["packets"] // args.jobs_files + 1
    parts_dir = os.path.join(bench_lib.WORK, f"split-{args.jobs_files}")
    if not os.path.isdir(parts_dir) or len(os.listdir(parts_dir)) != args.jobs_files:
        shutil.rmtree(parts_dir, ignore_errors=True)
        os.makedirs(parts_dir)
        subprocess.run(["editcap", "-F", "pcap", "-c", str(per), args.pcap, os.path.join(parts_dir, "part.pcap")], check=True)
    files = sorted(os.path.join(parts_dir, f) for f in os.listdir(parts_dir))
    walls: dict[int, list[float]] = {1: [], 2: []}
    outs: dict[int, bytes] = {}
    runs = max(1, min(args.runs, 3))
    for _ in range(runs):
        for j in (1, 2):
            out = os.path.join(runs_dir, f"jobs{j}.json")
            if os.path.exists(out):
                os.unlink(out)
            m = measure([args.detector, "replay", "-q", "--jobs", str(j), *files, "--output", out])
            if m["rc"] != 0:
                raise SystemExit(f"detector --jobs {j} failed: {m['stderr']}")
            walls[j].append(m["wall"])
            with open(out, "rb") as fh:
                outs[j] = fh.read()
            print(f"jobs {j}: {m['wall']:.2f} s", file=sys.stderr, flush=True)
    w1, w2 = statistics.median(walls[1]), statistics.median(walls[2])
    return {"files": len(files), "runs": runs, "wall1": w1, "wall2": w2, "speedup": w1 / w2, "same": outs[1] == outs[2]}


def main() -> int:
    ap = argparse.ArgumentParser(description="Time detector vs Suricata vs tcpdump on the benchmark capture.")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pcap", default=os.path.join(bench_lib.WORK, "bench.pcap"))
    ap.add_argument("--truth", default=os.path.join(bench_lib.WORK, "truth.json"))
    ap.add_argument("--rules", default=os.path.join(bench_lib.WORK, "kaspersky.rules"))
    ap.add_argument("--suricata-config", default=os.path.join(bench_lib.HERE, "suricata-bench.yaml"))
    ap.add_argument("--detector", default=os.path.join(bench_lib.REPO, ".venv", "bin", "detector"))
    ap.add_argument("--detector-args", default="", help="extra arguments for detector replay (quoted)")
    ap.add_argument("--results", default=os.path.join(bench_lib.WORK, "results.md"))
    ap.add_argument("--no-python", action="store_true", help="skip the pure-Python path (detector --exact) row")
    ap.add_argument("--jobs-files", type=int, default=4,
                    help="split the capture into this many files for the --jobs 1 vs --jobs 2 comparison (0: skip)")
    args = ap.parse_args()

    W = bench_lib.WORK
    runs_dir = os.path.join(W, "runs")
    shutil.rmtree(runs_dir, ignore_errors=True)
    os.makedirs(runs_dir)
    for f in (args.pcap, args.truth, args.rules):
        if not os.path.exists(f):
            print(f"missing {f} (run benchmarks/run.sh)", file=sys.stderr)
            return 2
    truth = bench_lib.load_truth(args.truth)
    stats = bench_lib.pcap_stats(args.pcap)
    tiny = os.path.join(runs_dir, "tiny.pcap")
    tiny_pcap(args.pcap, tiny)
    # the capture is read from the page cache by every tool alike
    with open(args.pcap, "rb") as fh:
        while fh.read(1 << 24):
            pass

    det_extra = shlex.split(args.detector_args)
    det_out = os.path.join(runs_dir, "detector.json")
    py_out = os.path.join(runs_dir, "detector-python.json")
    sur_dir = os.path.join(runs_dir, "suricata")

    def tagged(path: str, tag: str) -> str:
        return os.path.join(os.path.dirname(path), tag + os.path.basename(path))

    def cmd_for(tool: str, pcap: str, tag: str = "") -> list[str]:
        if tool == "detector":
            return [args.detector, "replay", "-q", pcap, "--output", tagged(det_out, tag), *det_extra]
        if tool == "detector-python":
            return [args.detector, "replay", "-q", "--exact", pcap, "--output", tagged(py_out, tag), *det_extra]
        if tool == "suricata":
            return ["suricata", "--runmode", "single", "-c", args.suricata_config, "-r", pcap, "-S", args.rules,
                    "-l", tagged(sur_dir, tag), "-k", "none"]
        return ["tcpdump", "-n", "-r", pcap, "-w", "/dev/null", BPF]

    def prepare(tool: str, tag: str = "") -> None:
        for out in (det_out, py_out):
            if tool.startswith("detector") and os.path.exists(tagged(out, tag)):
                os.unlink(tagged(out, tag))  # --output appends
        if tool == "suricata":
            shutil.rmtree(tagged(sur_dir, tag), ignore_errors=True)
            os.makedirs(tagged(sur_dir, tag))

    tools: tuple[str, ...] = ("detector", "suricata", "tcpdump") + (() if args.no_python else ("detector-python",))
    res: dict[str, list[dict]] = {t: [] for t in tools}
    startup: dict[str, list[float]] = {t: [] for t in tools}
    detections: dict[str, list[tuple[set, int]]] = {"detector": [], "suricata": [], "detector-python": []}
    last_contacts: dict[str, set] = {}
    same_alerts: list[bool] = []  # the core's alert file == the pure-Python path's, per round
    other_evidence: dict[str, int] = {}  # detector alerts not compared (certificate, ...), all runs
    load_before = os.getloadavg()
    for r in range(1, args.runs + 1):
        for tool in tools:
            prepare(tool)
            m = measure(cmd_for(tool, args.pcap))
            if m["rc"] != 0:
                print(f"{tool} failed (exit {m['rc']}):\n{m['stderr']}", file=sys.stderr)
                return 1
            if tool == "detector":
                c = bench_lib.detector_contacts(det_out, other_evidence)
                detections[tool].append((c, bench_lib.count_lines(det_out)))
                last_contacts[tool] = c
            elif tool == "detector-python":
                c = bench_lib.detector_contacts(py_out, {})
                detections[tool].append((c, bench_lib.count_lines(py_out)))
                last_contacts[tool] = c
                with open(det_out, "rb") as a, open(py_out, "rb") as b:
                    same_alerts.append(a.read() == b.read())
            elif tool == "suricata":
                c, _unnamed = bench_lib.suricata_contacts(os.path.join(sur_dir, "eve.json"))
                detections[tool].append((c, bench_lib.count_lines(os.path.join(sur_dir, "eve.json"))))
                last_contacts[tool] = c
                m["suricata_log"] = m["stderr"]
            res[tool].append(m)
            print(f"run {r}/{args.runs} {tool:9s} {m['wall']:7.2f} s  cpu {m['cpu']:6.2f} s  "
                  f"rss {m['rss_mb']:7.1f} MB", file=sys.stderr, flush=True)
        for tool in tools:
            prepare(tool, "tiny-")
            m = measure(cmd_for(tool, tiny, "tiny-"))
            startup[tool].append(m["wall"])

    jobs = jobs_comparison(args, runs_dir) if args.jobs_files > 1 else None
    load_after = os.getloadavg()
    # ---- table ----
    mbit = stats["wire_bytes"] * 8 / 1e6
    rows = []
    med: dict[str, float] = {}
    med_start: dict[str, float] = {}
    for tool in tools:
        walls = [m["wall"] for m in res[tool]]
        med[tool] = statistics.median(walls)
        med_start[tool] = statistics.median(startup[tool])
        row = {
            "tool": tool,
            "runs": len(walls),
            "median_wall_s": med[tool],
            "min_wall_s": min(walls),
            "max_wall_s": max(walls),
            "startup_s": med_start[tool],
            "packets_per_s": stats["packets"] / med[tool],
            "mbit_per_s": mbit / med[tool],
            "cpu_s": statistics.median(m["cpu"] for m in res[tool]),
            "peak_rss_mb": max(m["rss_mb"] for m in res[tool]),
        }
        if tool in detections:
            sets = [c for c, _ in detections[tool]]
            c = sets[-1]
            row.update(found=len(c & truth), expected=len(truth), false=len(c - truth),
                       alerts=detections[tool][-1][1], consistent=all(s == c for s in sets))
        rows.append(row)

    def fmt_row(r: dict) -> str:
        det = (f"{r['found']}/{r['expected']}/{r['false']}" + ("" if r["consistent"] else " (varies!)")
               if "found" in r else "n/a (floor)")
        return (f"| {r['tool']} | {r['median_wall_s']:.2f} ({r['min_wall_s']:.2f}-{r['max_wall_s']:.2f}) | "
                f"{r['startup_s']:.2f} | {r['packets_per_s']:,.0f} | {r['mbit_per_s']:,.0f} | {r['cpu_s']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {det} |")

    header = ("| tool | median wall s (min-max) | startup s | packets/s | Mbit/s | CPU s | peak RSS MB "
              "| found/expected/false |\n|---|---|---|---|---|---|---|---|")
    cpu = {r["tool"]: r["cpu_s"] for r in rows}
    ratios = {
        "detector/suricata": med["detector"] / med["suricata"],
        "detector/tcpdump": med["detector"] / med["tcpdump"],
        "detector/suricata (startup subtracted)": (med["detector"] - med_start["detector"])
        / max(1e-9, med["suricata"] - med_start["suricata"]),
        "detector/suricata, CPU time": cpu["detector"] / cpu["suricata"],
        "detector/tcpdump, CPU time": cpu["detector"] / cpu["tcpdump"],
    }
    if "detector-python" in med:
        ratios["detector (pure Python, --exact)/suricata"] = med["detector-python"] / med["suricata"]
        ratios["detector compiled core speed-up over pure Python"] = med["detector-python"] / med["detector"]
    table = header + "\n" + "\n".join(fmt_row(r) for r in rows)
    ratio_txt = "\n".join(f"- {k}: **{v:.2f}x**" for k, v in ratios.items())
    det_row = next(r for r in rows if r["tool"] == "detector")
    targets = [
        ("detector wall <= 0.5x Suricata --runmode single", ratios["detector/suricata"], ratios["detector/suricata"] <= 0.5),
        ("detector wall <= 2.5x the tcpdump floor", ratios["detector/tcpdump"], ratios["detector/tcpdump"] <= 2.5),
        ("detector peak RSS <= 150 MB", det_row["peak_rss_mb"], det_row["peak_rss_mb"] <= 150),
        ("every contact found, none false", f"{det_row['found']}/{det_row['expected']}/{det_row['false']}",
         det_row["found"] == det_row["expected"] and det_row["false"] == 0),
    ]
    if same_alerts:
        targets.append(("core and pure-Python path write identical alerts", f"{sum(same_alerts)}/{len(same_alerts)} rounds",
                        all(same_alerts)))
    if jobs:
        targets.append((f"--jobs 2 >= 1.8x --jobs 1 on {jobs['files']} files, same output", f"{jobs['speedup']:.2f}x",
                        jobs["speedup"] >= 1.8 and jobs["same"]))
    target_txt = "| target | measured | met |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {val if isinstance(val, str) else f'{val:.2f}'} | {'yes' if ok else '**no**'} |" for name, val, ok in targets)
    load_txt = (f"Load average (1 min) before/after the runs: {load_before[0]:.2f} / {load_after[0]:.2f}"
                f" on {os.cpu_count()} CPUs" + (" -- the machine was busy: wall times are noisy, compare CPU times"
                                                if max(load_before[0], load_after[0]) > 1.5 else "") + ".")

    # ---- context ----
    cinfo_path = os.path.join(W, "capture_info.json")
    cinfo = json.loads(bench_lib.read_text(cinfo_path)) if os.path.exists(cinfo_path) else {}
    git = subprocess.run(["git", "-C", bench_lib.REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", bench_lib.REPO, "status", "--porcelain", "--", "detector"],
                           capture_output=True, text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in bench_lib.read_text("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), "?")
    versions = {
        "detector": version([args.detector, "--version"]) + f" (git {git}{', detector/ modified' if dirty else ''})",
        "suricata": version(["suricata", "-V"]),
        "tcpdump": version(["tcpdump", "--version"]),
        "python": platform.python_version(),
    }
    misses = {}
    for tool in ("detector", "suricata"):
        c = last_contacts[tool]
        missed = sorted(truth - c)
        false = sorted(c - truth)
        by_kind = {k: sum(1 for x in missed if x[1] == k) for k in bench_lib.KINDS}
        misses[tool] = {"missed_by_kind": by_kind, "missed_examples": missed[:15], "false_examples": false[:15]}

    lines = [
        "# Benchmark results",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {os.cpu_count()} CPUs ({cpu}); "
        f"{args.runs} runs per tool, alternating detector, suricata, tcpdump.",
        "",
        f"Capture `{os.path.relpath(args.pcap, bench_lib.REPO)}`: {stats['packets']:,} packets, "
        f"{stats['wire_bytes'] / 1e6:,.0f} MB on the wire ({stats['file_bytes'] / 1e6:,.0f} MB file), "
        f"{stats['duration_s']:.0f} s of traffic; ground truth {len(truth):,} Kaspersky contacts "
        f"{ {k: sum(1 for t in truth if t[1] == k) for k in bench_lib.KINDS} } from "
        f"{len({t[0] for t in truth})} clients.",
        "",
        table,
        "",
        "Ratios of median wall times, and of median CPU times (below 1 = the detector is faster):",
        "",
        ratio_txt,
        "",
        target_txt,
        "",
        (f"--jobs on {jobs['files']} files of the same capture: --jobs 1 {jobs['wall1']:.2f} s, --jobs 2 "
         f"{jobs['wall2']:.2f} s (median of {jobs['runs']}), output identical: {jobs['same']}." if jobs else ""),
        "",
        load_txt,
        "",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()),
        "",
        "Commands:",
        "",
        "```",
        " ".join(shlex.quote(x) for x in cmd_for("detector", args.pcap)),
        " ".join(shlex.quote(x) for x in cmd_for("suricata", args.pcap)),
        " ".join(shlex.quote(x) for x in cmd_for("tcpdump", args.pcap)),
        "```",
        "",
        "Startup = median wall time of the same command on the first 10 packets of the capture.",
        "",
    ]
    for tool in ("detector", "suricata"):
        m = misses[tool]
        lines.append(f"{tool}: missed by kind {m['missed_by_kind']}")
        for x in m["missed_examples"]:
            lines.append(f"  - missed {x}")
        for x in m["false_examples"]:
            lines.append(f"  - false {x}")
    if other_evidence:
        per_run = {k: v // args.runs for k, v in sorted(other_evidence.items())}
        lines.append(f"detector alerts with other evidence (per run, not compared with the truth): {per_run}")
    lines.append("")
    text = "\n".join(lines)
    with open(args.results, "w") as fh:
        fh.write(text)
    with open(os.path.splitext(args.results)[0] + ".json", "w") as fh:
        json.dump({"rows": rows, "ratios": ratios, "versions": versions, "capture": stats,
                   "truth": len(truth), "misses": {k: {**v, "missed_examples": [list(x) for x in v["missed_examples"]],
                                                      "false_examples": [list(x) for x in v["false_examples"]]}
                                                  for k, v in misses.items()},
                   "runs": {t: [{k: v for k, v in m.items() if k not in ("stderr", "suricata_log")} for m in res[t]]
                            for t in tools},
                   "startup": startup, "bpf": BPF, "loadavg": [load_before, load_after], "capture_info": {k: v for k, v in cinfo.items() if k != "verify"}},
                  fh, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
