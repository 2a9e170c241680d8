"""The command line end to end (a subprocess, as a user runs it): outputs, summary, exit
statuses, damaged and unreadable inputs, signature commands."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO, dns_query, tcp_payload
from scapy.all import wrpcap  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _pcap(path: Path, frames: list[bytes], t0: float = 1_700_000_000.0) -> Path:
    pkts = []
    for i, f in enumerate(frames):
        p = Ether(f)
        p.time = t0 + i
        pkts.append(p)
    wrpcap(str(path), pkts)
    return path


def _eve(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_default_run_writes_eve_to_stdout_and_summary_to_stderr(tmp_path):
    # Hand-built frames: the real-traffic captures are tested in test_end_to_end.py.
    cap = _pcap(tmp_path / "a.pcap", [dns_query("s05.upd.kaspersky.com"), dns_query("s05.upd.kaspersky.com", qid=9), dns_query("www.example.org")])
    r = run("replay", str(cap))
    assert r.returncode == 0, r.stderr
    recs = _eve(r.stdout)
    assert len(recs) == 1
    assert recs[0]["alert"]["metadata"]["count"] == ["2"]
    assert "3 packets" in r.stderr
    assert "alerts: 1 (update 1)" in r.stderr
    assert "Kaspersky hosts found: 1" in r.stderr
    assert "198.18.0.10" in r.stderr


def test_no_dedup_and_output_file(tmp_path):
    cap = _pcap(tmp_path / "a.pcap", [dns_query("s05.upd.kaspersky.com"), dns_query("s05.upd.kaspersky.com", qid=9)])
    out = tmp_path / "alerts.json"
    r = run("replay", "--no-dedup", "--output", str(out), "-q", str(cap))
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert len(_eve(out.read_text())) == 2


def test_dedup_window_is_capture_time(tmp_path):
    frames = [dns_query("s05.upd.kaspersky.com", qid=i) for i in range(3)]
    cap = _pcap(tmp_path / "a.pcap", frames)
    assert len(_eve(run("replay", "-q", str(cap)).stdout)) == 1
    assert len(_eve(run("replay", "-q", "--dedup-window", "1.5", str(cap)).stdout)) == 2


def test_directories_globs_and_gzip(tmp_path):
    d = tmp_path / "caps" / "sub"
    d.mkdir(parents=True)
    _pcap(d / "one.pcap", [dns_query("s01.upd.kaspersky.com")])
    two = _pcap(tmp_path / "two.pcap", [dns_query("crl.kaspersky.com", client="198.18.0.11")])
    (tmp_path / "two.pcap.gz").write_bytes(gzip.compress(two.read_bytes()))
    two.unlink()
    (d / "notes.txt").write_text("not a capture, and not taken from a directory")
    r = run("replay", "-q", str(tmp_path / "caps"), str(tmp_path / "*.gz"))
    assert r.returncode == 0, r.stderr
    assert sorted(x["alert"]["metadata"]["hostname"][0] for x in _eve(r.stdout)) == ["crl.kaspersky.com", "s01.upd.kaspersky.com"]


def test_unreadable_file_is_named_and_others_still_run(tmp_path):
    good = _pcap(tmp_path / "good.pcap", [dns_query("s05.upd.kaspersky.com")])
    bad = tmp_path / "bad.pcap"
    bad.write_text("hello, I am text\n")
    r = run("replay", str(bad), str(tmp_path / "missing.pcap"), str(good))
    assert r.returncode == 1
    assert len(_eve(r.stdout)) == 1
    assert f"{bad}: not a pcap or pcapng capture" in r.stderr
    assert "missing.pcap: no such file or directory" in r.stderr
    assert "Traceback" not in r.stderr


def test_truncated_capture_keeps_alerts_before_the_cut(tmp_path):
    cap = _pcap(tmp_path / "a.pcap", [dns_query("s05.upd.kaspersky.com"), dns_query("crl.kaspersky.com")])
    data = cap.read_bytes()
    cap.write_bytes(data[:-10])
    r = run("replay", str(cap))
    assert r.returncode == 0
    assert [x["alert"]["metadata"]["hostname"][0] for x in _eve(r.stdout)] == ["s05.upd.kaspersky.com"]
    assert f"warning: {cap}: " in r.stderr and "truncated" in r.stderr  # libpcap's words on the fast path
    r = run("replay", "--exact", str(cap))
    assert [x["alert"]["metadata"]["hostname"][0] for x in _eve(r.stdout)] == ["s05.upd.kaspersky.com"]
    assert re.search(r"cut inside a packet at offset [0-9,]+ after 1 records", r.stderr), r.stderr


def test_bad_signatures_reported_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pack: x\nsignatures:\n  - id: 1\n    name: n\n    colour: red\n")
    r = run("signatures", "check", str(bad))
    assert r.returncode == 2
    assert f"{bad}:5: signature: unknown key 'colour'" in r.stderr
    assert f"{bad}:3: signature: missing key 'vendor'" in r.stderr
    cap = _pcap(tmp_path / "a.pcap", [dns_query("s05.upd.kaspersky.com")])
    r = run("replay", "--signatures", str(bad), str(cap))
    assert r.returncode == 2 and r.stdout == ""


def test_signatures_check_and_list_bundled():
    r = run("signatures", "check")
    assert r.returncode == 0 and r.stdout.startswith("ok: ")
    r = run("signatures", "list")
    assert r.returncode == 0
    assert "1610001\tactivation" in r.stdout


def test_add_signatures_extends_bundled(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "pack: extra\nsignatures:\n  - id: 9000001\n    name: test vendor\n    vendor: Example\n"
        "    products: [Example AV]\n    category: update\n    confidence: high\n    severity: high\n"
        "    product_only: true\n    match:\n      suffixes: [upd.example.org]\n"
        "    source:\n      ref: test\n      grade: D\n"
    )
    cap = _pcap(tmp_path / "a.pcap", [dns_query("s05.upd.kaspersky.com"), dns_query("x.upd.example.org")])
    ids = sorted(x["alert"]["signature_id"] for x in _eve(run("replay", "-q", "--add-signatures", str(extra), str(cap)).stdout))
    assert ids == [1610002, 9000001]
    ids = [x["alert"]["signature_id"] for x in _eve(run("replay", "-q", "--signatures", str(extra), str(cap)).stdout)]
    assert ids == [9000001]


def test_unwritable_output_is_a_clear_error(tmp_path):
    cap = _pcap(tmp_path / "a.pcap", [dns_query("s05.upd.kaspersky.com")])
    r = run("replay", "--output", str(tmp_path / "no" / "such" / "dir" / "x.json"), str(cap))
    assert r.returncode == 2
    assert "cannot open for writing" in r.stderr and "Traceback" not in r.stderr


def test_http_keepalive_requests_all_seen(tmp_path):
    # Hand-built: a proxy connection carrying two absolute-form requests.
    body = (
        b"GET http://p03.upd.kaspersky.com/a HTTP/1.1\r\nHost: p03.upd.kaspersky.com\r\n\r\n"
        b"GET http://dnl-01.geo.kaspersky.com/b HTTP/1.1\r\nHost: dnl-01.geo.kaspersky.com\r\n\r\n"
    )
    cap = _pcap(tmp_path / "a.pcap", [tcp_payload(body, dport=3128)])
    names = sorted(x["http"]["hostname"] for x in _eve(run("replay", "-q", str(cap)).stdout))
    assert names == ["dnl-01.geo.kaspersky.com", "p03.upd.kaspersky.com"]


def test_output_to_a_device():
    r = run("replay", "-q", "--output", "/dev/null", "pcaps/tls-sni.pcap")
    assert r.returncode == 0, r.stderr
