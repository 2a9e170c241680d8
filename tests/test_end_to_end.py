"""Replay the real-traffic captures in pcaps/ and compare with the ground truth the capture
script recorded (pcaps/expected.json): every contact, for the right client, and nothing
else; plus the exact alert set for a few captures, the negative controls and the damaged
files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import PCAPS, REPO

from detector import Detector
from detector.capture.pcap import CaptureFile
from detector.errors import CaptureError

EXPECTED = json.loads((PCAPS / "expected.json").read_text()) if (PCAPS / "expected.json").exists() else {}
KIND = {"dns-query": "dns", "dns-answer": "dns", "tls-sni": "tls", "http-host": "http", "http-absolute-uri": "http", "http-connect": "http"}


def replay(path):
    det = Detector(strict=True)
    alerts = []
    try:
        with CaptureFile(str(path)) as cf:
            for ts, lt, data, _ in cf:
                alerts += det.feed(ts, lt, data)
    except CaptureError:
        pass
    return alerts + det.flush(), det


def contacts(alerts):
    return {(a.observation.client, KIND[a.observation.evidence.value], a.observation.hostname) for a in alerts}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_expected_contact_and_nothing_else(name):
    alerts, det = replay(PCAPS / name)
    want = {(c["client"], c["kind"], c["name"]) for c in EXPECTED[name]}
    assert contacts(alerts) == want
    if not name.startswith("damaged/"):
        assert sum(det.stats.undecodable.values()) == 0, det.stats.undecodable


def test_negative_controls_raise_nothing():
    alerts, det = replay(PCAPS / "negative-controls.pcap")
    assert alerts == []
    assert det.stats.inspected > 20  # the look-alike names were really parsed


def _rows(path):
    alerts, _ = replay(path)
    return sorted(
        (a.observation.client, a.observation.evidence.value, a.observation.hostname, a.signature.id, a.count)
        for a in alerts
    )


def test_http_and_proxy_exact_alerts():
    assert _rows(PCAPS / "http-host-proxy.pcap") == [
        ("198.18.0.10", "dns-query", "touch.kaspersky.com", 1610005, 1),
        ("198.18.0.10", "http-absolute-uri", "p03.upd.kaspersky.com", 1610009, 1),
        ("198.18.0.10", "http-connect", "cm.k.kaspersky-labs.com", 1610003, 1),
        ("198.18.0.10", "http-host", "dnl-08.geo.kaspersky.com", 1610010, 1),
        ("198.18.0.10", "http-host", "touch.kaspersky.com", 1610005, 1),
        ("198.18.0.10", "tls-sni", "cm.k.kaspersky-labs.com", 1610003, 1),  # inside the CONNECT tunnel
        ("198.18.0.11", "http-host", "s02.upd.kaspersky.com", 1610002, 1),  # Host written with a trailing dot
        ("2001:db8::10", "http-host", "touch.kaspersky.com", 1610005, 1),
    ]


def test_tls_exact_alerts():
    assert _rows(PCAPS / "tls-sni.pcap") == [
        ("198.18.0.10", "dns-query", "activation-v2.kaspersky.com", 1610001, 1),
        ("198.18.0.10", "tls-sni", "activation-v2.kaspersky.com", 1610001, 1),
        ("198.18.0.10", "tls-sni", "s01.upd.kaspersky.com", 1610002, 1),  # port 8443
        ("198.18.0.11", "tls-sni", "crl.kaspersky.com", 1610012, 1),
        ("2001:db8::10", "tls-sni", "dc1-cert.ksn.kaspersky-labs.com", 1610013, 1),
    ]


def test_split_client_hellos():
    rows = _rows(PCAPS / "tls-split-chromium.pcap")
    assert ("198.18.0.10", "tls-sni", "ksn-url-geo.kaspersky-labs.com") in {r[:3] for r in rows}
    rows = _rows(PCAPS / "tls-split-small-mss.pcap")
    assert {r[2] for r in rows if r[1] == "tls-sni"} >= {"downloads.upd.kaspersky.com"}


def test_cname_chain_names_the_kaspersky_target():
    alerts, _ = replay(PCAPS / "dns-udp-tcp.pcap")
    answer = [a for a in alerts if a.observation.evidence.value == "dns-answer"]
    assert answer and all(a.observation.hostname == "downloads.upd.kaspersky.com" for a in answer)
    assert all(a.observation.detail["rrname"] == "updates.example.net" for a in answer)


def test_fragmented_answer_needs_reassembly():
    alerts, det = replay(PCAPS / "dns-fragmented.pcap")
    assert det.ip.reassembled >= 1
    assert {a.observation.hostname for a in alerts} == {"cm.k.kaspersky-labs.com"}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "detector", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_damaged_files_through_the_cli():
    d = PCAPS / "damaged"
    r = _cli("replay", str(d / "truncated.pcap"), str(d / "truncated.pcap.gz"), str(d / "garbage-packets.pcap"), str(d / "header-only.pcap"))
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "truncated.pcap" in r.stderr
    assert "Traceback" not in r.stderr
    assert "undecodable packets:" in r.stderr
    for bad in ("empty.pcap", "not-a-capture.pcap"):
        r = _cli("replay", str(d / bad), str(d / "gzip" / "dns.pcap.gz"))
        assert r.returncode == 1
        assert str(d / bad) in r.stderr and "Traceback" not in r.stderr
        assert len(r.stdout.splitlines()) == 9  # the good file still ran


def test_demo_command_runs():
    r = _cli("replay", "pcaps/*.pcap")
    assert r.returncode == 0, r.stderr
    assert "Kaspersky hosts found: 3" in r.stderr


def _can_make_captures() -> str | None:
    import os
    import shutil

    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [t for t in ("ip", "tcpdump", "tshark", "dnsmasq", "nginx", "tinyproxy", "dig", "curl", "openssl", "chromium") if not shutil.which(t)]
    return f"missing tools: {' '.join(missing)} (tests/run.sh installs them as root)" if missing else None


@pytest.mark.netns
def test_fresh_captures_from_real_clients(tmp_path):
    """Run the capture script now (real dig, getent, curl, openssl, Chromium against
    dnsmasq, nginx, tinyproxy in network namespaces) into a temporary directory, so the
    captures are new ones that were never in the repository, and replay them."""
    why = _can_make_captures()
    if why:
        pytest.skip(why)
    r = subprocess.run(["bash", str(PCAPS / "make_captures.sh")], env={**__import__("os").environ, "DEST": str(tmp_path)},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("kdt-") == 0
    expected = json.loads((tmp_path / "expected.json").read_text())
    assert len(expected) >= 10
    for name, want in expected.items():
        alerts, det = replay(tmp_path / name)
        assert contacts(alerts) == {(c["client"], c["kind"], c["name"]) for c in want}, name
