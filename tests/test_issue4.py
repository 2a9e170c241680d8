"""Issue 4 on real traffic: Security Center ports, names learned from DNS answers
(ip-from-dns), TLS 1.2 certificate names, evidence strength and ECH marking.

The captures in pcaps/issue4/ come from real clients and servers (openssl s_client and
s_server, curl, dig, dnsmasq, nginx, headless Chromium, a stdlib Python TCP/UDP peer) in
network namespaces, made by pcaps/issue4/make_issue4_captures.sh, which also wrote the
ground truth pcaps/issue4/expected.json from what it did.  Each capture is replayed with
the command line, on the libpcap fast path and with --exact, and the set of
(client, evidence, hostname, evidence_strength, server port) must equal the ground truth
exactly.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EVE_SCHEMAS, PCAPS

ISSUE4 = PCAPS / "issue4"
SCRIPT = ISSUE4 / "make_issue4_captures.sh"
EXPECTED: dict[str, list[dict[str, str]]] = json.loads((ISSUE4 / "expected.json").read_text())
FILES = sorted(EXPECTED)
MODES = ["fast", "exact"]
SCHEMAS = [p.name for p in EVE_SCHEMAS]

C1, C1V6, C2, C3 = "198.18.0.10", "2001:db8::10", "198.18.0.11", "198.18.0.12"
SRV, SRV_B, SRV6 = "198.18.0.1", "198.18.0.2", "2001:db8::1"
ACTIVATION = "activation-v2.kaspersky.com"

# -- running the command line --------------------------------------------------------------
def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("detector")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "detector"]


def replay(path: Path, exact: bool = False) -> list[dict]:
    cmd = [*_cli(), "replay", str(path), *(["--exact"] if exact else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "undecodable packets: 0" in r.stderr, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@functools.cache
def _replayed(name: str, mode: str) -> tuple[dict, ...]:
    return tuple(replay(ISSUE4 / name, exact=mode == "exact"))


def alerts(name: str, mode: str = "fast") -> tuple[dict, ...]:
    return _replayed(name, mode)


def meta(rec: dict) -> dict[str, list[str]]:
    return rec["alert"]["metadata"]


Row = tuple[str, str, str, str, int]


def row(rec: dict) -> Row:
    m = meta(rec)
    return rec["src_ip"], m["evidence"][0], m["hostname"][0], m["evidence_strength"][0], rec["dest_port"]


def rows(recs) -> set[Row]:
    return {row(r) for r in recs}


def truth(expected: dict, name: str) -> set[Row]:
    return {(c["client"], c["kind"], c["name"], c["strength"], c["port"]) for c in expected[name]}


def one(recs, **want) -> dict:
    """The single record whose row fields (src_ip, dest_port, evidence, hostname) match ``want``."""
    found = [
        r
        for r in recs
        if all((r[k] if k in ("src_ip", "dest_port") else meta(r)[k][0]) == v for k, v in want.items())
    ]
    assert len(found) == 1, (want, [row(r) for r in recs])
    return found[0]


# -- the ground truth, exactly --------------------------------------------------------------
def test_ground_truth_lists_every_capture():
    assert sorted(EXPECTED) == [
        "dns-snaplen.pcap",
        "dns-strength.pcap",
        "ech-grease.pcap",
        "ech-real.pcap",
        "ip-literal-after-dns.pcap",
        "ksc-ports.pcap",
        "tls12-cert.pcap",
    ]
    for name in FILES:
        assert (ISSUE4 / name).stat().st_size > 0
        for c in EXPECTED[name]:
            assert set(c) - {"truncated"} == {"client", "name", "kind", "strength", "port"}
            assert c["strength"] in ("weak", "completed", "strong")


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        pytest.param(n, m, id=f"{n}-{m}")
        for n in FILES
        for m in MODES
    ],
)
def test_alerts_equal_ground_truth(name, mode):
    assert rows(alerts(name, mode)) == truth(EXPECTED, name)


def without_flow_counters(rec: dict) -> dict:
    # flow counters: pcapy path sheds packets (replaced by the core)
    flow = {k: v for k, v in rec.get("flow", {}).items() if not k.startswith(("pkts_", "bytes_"))}
    return {**rec, "flow": flow}


@pytest.mark.parametrize("name", FILES)
def test_fast_path_and_exact_write_the_same_records(name):
    def key(recs):
        return sorted(json.dumps(without_flow_counters(r), sort_keys=True) for r in recs)

    assert key(alerts(name, "fast")) == key(alerts(name, "exact"))


# -- Security Center ports -----------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("port", "sid"), [(13000, 1611001), (23150, 1611013)])
def test_ksc_tls_port_is_strong_high_confidence(mode, port, sid):
    rec = one(
        alerts("ksc-ports.pcap", mode), src_ip=C1, evidence="ksc-port", hostname=f"tcp/{port}"
    )
    m = meta(rec)
    assert (rec["dest_ip"], rec["dest_port"], rec["proto"], rec["app_proto"]) == (
        SRV,
        port,
        "TCP",
        "tls",
    )
    assert rec["alert"]["signature_id"] == sid
    assert m["evidence_strength"] == ["strong"]  # TLS in both directions
    assert m["confidence"] == ["high"]
    assert m["agent"] == [C1]
    assert m["ksc_server"] == [SRV]


@pytest.mark.parametrize("mode", MODES)
def test_ksc_udp_15000_names_agent_and_server(mode):
    """The Administration Server (198.18.0.1) sends connection requests to the agent's
    UDP 15000: the sender is src_ip, and the metadata says who is who."""
    recs = [r for r in alerts("ksc-ports.pcap", mode) if meta(r)["hostname"] == ["udp/15000"]]
    assert len(recs) == 1
    rec = recs[0]
    m = meta(rec)
    assert (rec["src_ip"], rec["dest_ip"], rec["dest_port"], rec["proto"]) == (
        SRV,
        C1,
        15000,
        "UDP",
    )
    assert rec["alert"]["signature_id"] == 1611004
    assert m["agent"] == [C1]
    assert m["ksc_server"] == [SRV]
    assert m["evidence"] == ["ksc-port"]
    assert m["evidence_strength"] == ["weak"]  # one direction only
    assert m["confidence"] == ["medium"]
    assert m["count"] == ["3"]  # the script sent three datagrams


@pytest.mark.parametrize("mode", MODES)
def test_ksc_plain_tcp_14000_is_completed_medium_confidence(mode):
    rec = one(alerts("ksc-ports.pcap", mode), src_ip=C1, evidence="ksc-port", hostname="tcp/14000")
    m = meta(rec)
    assert (rec["dest_ip"], rec["dest_port"], rec["proto"]) == (SRV, 14000, "TCP")
    assert rec["alert"]["signature_id"] == 1611003
    assert m["evidence_strength"] == ["completed"]  # the server answered
    assert m["confidence"] == ["medium"]  # no TLS
    assert m["agent"] == [C1]
    assert m["ksc_server"] == [SRV]


@pytest.mark.parametrize("mode", MODES)
def test_ksc_negative_controls(mode):
    """Plain TCP on 23151 (cloud range: TLS required) and TLS on 13001 raise nothing."""
    recs = alerts("ksc-ports.pcap", mode)
    assert not [row(r) for r in recs if r["dest_port"] in (13001, 23151)]
    assert {meta(r)["hostname"][0] for r in recs} <= {
        "tcp/13000",
        "tcp/14000",
        "udp/15000",
        "tcp/23150",
    }


# -- names learned from DNS answers ----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_ip_literal_flows_after_dns_are_named(mode):
    recs = alerts("ip-literal-after-dns.pcap", mode)
    rec = one(recs, src_ip=C1, dest_port=443, evidence="ip-from-dns", hostname=ACTIVATION)
    m = meta(rec)
    assert (rec["dest_ip"], rec["dest_port"], rec["app_proto"]) == (SRV, 443, "tls")
    assert m["resolved_by"] == [f"DNS answer to {C1} for {ACTIVATION}"]
    assert m["evidence_strength"] == ["completed"]
    # the three TLS connections the script made to 198.18.0.1:443 with no host name: curl
    # https://198.18.0.1/ (no SNI), a full s_client handshake and its TLS 1.3 resumption,
    # both -noservername
    assert m["count"] == ["3"]
    rec6 = one(recs, src_ip=C1V6, evidence="ip-from-dns", hostname=ACTIVATION)
    assert (rec6["dest_ip"], rec6["dest_port"]) == (SRV6, 443)
    assert meta(rec6)["resolved_by"] == [f"DNS answer to {C1V6} for {ACTIVATION}"]
    assert meta(rec6)["count"] == ["1"]


@pytest.mark.parametrize("mode", MODES)
def test_plain_http_and_tls_to_a_learned_address_are_two_alerts(mode):
    """curl http://198.18.0.1/ (port 80, Host: 198.18.0.1) is reported on its own, not
    folded into the alert of the same client's TLS flows to port 443 (issue 11, point 3)."""
    recs = [r for r in alerts("ip-literal-after-dns.pcap", mode) if r["src_ip"] == C1 and meta(r)["evidence"] == ["ip-from-dns"]]
    assert sorted((r["dest_ip"], r["dest_port"], r["app_proto"]) for r in recs) == [(SRV, 80, "http"), (SRV, 443, "tls")]
    http = one(recs, dest_port=80)
    assert meta(http)["count"] == ["1"]
    assert meta(http)["evidence_strength"] == ["completed"]  # nginx answered 200
    assert meta(http)["resolved_by"] == [f"DNS answer to {C1} for {ACTIVATION}"]


@pytest.mark.parametrize("mode", MODES)
def test_ip_literal_negative_controls(mode):
    """A client that never resolved the name (it resolved www.example.org, which points to
    the same address) and an address the name did not resolve to raise nothing."""
    recs = alerts("ip-literal-after-dns.pcap", mode)
    assert not [row(r) for r in recs if r["src_ip"] == C2]
    assert not [row(r) for r in recs if r["dest_ip"] == SRV_B]
    assert {meta(r)["hostname"][0] for r in recs} == {ACTIVATION}


@pytest.mark.parametrize("mode", MODES)
def test_binary_protocol_to_a_learned_address_is_named(mode):
    rec = one(
        alerts("ip-literal-after-dns.pcap", mode),
        src_ip=C3,
        evidence="ip-from-dns",
        hostname=ACTIVATION,
    )
    assert (rec["dest_ip"], rec["dest_port"]) == (SRV, 9400)
    assert meta(rec)["resolved_by"] == [f"DNS answer to {C3} for {ACTIVATION}"]
    assert meta(rec)["evidence_strength"] == ["completed"]


# -- TLS 1.2 certificate names ---------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_tls12_certificate_names_the_client(mode):
    """SNI www.example.org, a certificate for s05.upd.kaspersky.com: one weak alert for the
    TLS 1.2 connection; the TLS 1.3 one (certificate encrypted) raises nothing."""
    recs = alerts("tls12-cert.pcap", mode)
    assert len(recs) == 1
    rec = recs[0]
    m = meta(rec)
    assert row(rec) == (C1, "tls-certificate", "s05.upd.kaspersky.com", "weak", 4433)
    assert (rec["dest_ip"], rec["dest_port"], rec["app_proto"]) == (SRV, 4433, "tls")
    assert rec["tls"] == {"subject": "CN=s05.upd.kaspersky.com", "version": "TLS 1.2"}
    assert m["cert_names"] == ["s05.upd.kaspersky.com", "www.example.org"]
    assert m["count"] == ["1"]


# -- ECH ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_chromium_grease_ech_is_marked(mode):
    recs = alerts("ech-grease.pcap", mode)
    rec = one(recs, src_ip=C1, evidence="tls-sni", hostname="dc1.ksn.kaspersky-labs.com")
    assert meta(rec)["ech"] == ["true"]
    assert rec["tls"]["sni"] == "dc1.ksn.kaspersky-labs.com"
    dns = one(recs, src_ip=C1, evidence="dns-query", hostname="dc1.ksn.kaspersky-labs.com")
    assert "ech" not in meta(dns)
    others = [
        row(r) for n in FILES if not n.startswith("ech-") for r in alerts(n, mode) if "ech" in meta(r)
    ]
    assert others == []  # openssl and curl send no ECH extension
    # the SNI is the name the client resolved: no ip-from-dns alert repeats it
    assert [row(r) for r in recs if meta(r)["evidence"] == ["ip-from-dns"]] == []


@pytest.mark.parametrize("mode", MODES)
def test_real_ech_reports_the_outer_name_and_the_name_learned_from_dns(mode):
    """Real ECH (Chromium, its configuration from the HTTPS record of s05.upd.kaspersky.com,
    public name ksn-url-geo.kaspersky-labs.com): the flow is reported on the outer name,
    and, since the inner name is hidden, also on the name the client resolved the server's
    address from just before (issue 11, point 4)."""
    recs = alerts("ech-real.pcap", mode)
    outer = one(recs, src_ip=C1, evidence="tls-sni", hostname="ksn-url-geo.kaspersky-labs.com")
    assert meta(outer)["ech"] == ["true"]
    assert outer["tls"]["sni"] == "ksn-url-geo.kaspersky-labs.com"
    learned = one(recs, src_ip=C1, evidence="ip-from-dns", hostname="s05.upd.kaspersky.com")
    m = meta(learned)
    assert m["resolved_by"] == [f"DNS answer to {C1} for s05.upd.kaspersky.com"]
    assert m["ech"] == ["true"]
    assert (learned["dest_ip"], learned["dest_port"], learned["app_proto"]) == (SRV, 443, "tls")
    # the same flow (the first ECH ClientHello) and as many flows: the ECH attempts only,
    # not Chromium's retries without ECH, whose SNI names s05.upd.kaspersky.com itself
    assert learned["flow_id"] == outer["flow_id"]
    assert m["count"] == meta(outer)["count"]
    retry = one(recs, src_ip=C1, evidence="tls-sni", hostname="s05.upd.kaspersky.com")
    assert retry["flow_id"] != outer["flow_id"]


def test_ech_summary_counts_only_flows_named_by_a_learned_address():
    """The GREASE-ECH flows' SNI is the name the client resolved: the learned address names
    nothing new, and the summary does not count it as used; the real-ECH flows are."""

    def learned_line(name: str) -> str:
        r = subprocess.run([*_cli(), "replay", str(ISSUE4 / name)], capture_output=True, text=True, timeout=120)
        return next(line for line in r.stderr.splitlines() if line.startswith("addresses learned"))

    assert learned_line("ech-grease.pcap") == "addresses learned from Kaspersky DNS answers: learned 1"
    assert learned_line("ech-real.pcap") == "addresses learned from Kaspersky DNS answers: used 2, learned 1"


# -- DNS cut by the snaplen -----------------------------------------------------------------
SNAPLEN = "dns-snaplen.pcap"


@pytest.mark.parametrize("mode", MODES)
def test_dns_cut_by_the_snaplen_gives_its_whole_names_marked_truncated(mode):
    """tcpdump -s 96 cut dig's query inside its EDNS OPT record and both answers inside a
    record: the question and the whole CNAME record still name Kaspersky, and the alerts
    say the evidence was cut."""
    recs = alerts(SNAPLEN, mode)
    assert rows(recs) == truth(EXPECTED, SNAPLEN)
    assert all(c.get("truncated") for c in EXPECTED[SNAPLEN])
    for rec in recs:
        assert meta(rec)["truncated"] == ["true"]
    q = one(recs, src_ip=C1, evidence="dns-query", hostname=ACTIVATION)
    assert q["dns"]["query"][0]["rrname"] == ACTIVATION
    others = [row(r) for n in FILES if n != SNAPLEN for r in alerts(n, mode) if "truncated" in meta(r)]
    assert others == []  # whole messages are never marked


def test_dns_cut_by_the_snaplen_is_marked_in_every_format(tmp_path):
    outs = {fmt: tmp_path / f"{fmt}.log" for fmt in ("ecs", "cef", "leef", "ocsf")}
    args = [a for fmt, path in outs.items() for a in ("--output", f"{fmt}:{path}")]
    r = subprocess.run([*_cli(), "replay", str(ISSUE4 / SNAPLEN), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "DNS messages cut by the snaplen, names read from what was captured: 3" in r.stderr
    lines = {fmt: path.read_text().splitlines() for fmt, path in outs.items()}
    assert all(len(v) == 2 for v in lines.values()), lines
    assert all(json.loads(x)["labels"]["truncated"] == "true" for x in lines["ecs"])
    assert all(json.loads(x)["unmapped"]["truncated"] is True for x in lines["ocsf"])
    assert all("cfp1Label=Evidence Truncated cfp1=1" in x for x in lines["cef"])
    assert all("\ttruncated=true" in x for x in lines["leef"])


# -- EVE schema -----------------------------------------------------------------------------
@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_record_validates_against_suricata_schema(schema):
    jsonschema = pytest.importorskip("jsonschema")
    path = next(p for p in EVE_SCHEMAS if p.name == schema)
    validator = jsonschema.Draft202012Validator(json.loads(path.read_text()))
    n = 0
    for name in FILES:
        for mode in MODES:
            for rec in alerts(name, mode):
                errors = sorted(validator.iter_errors(rec), key=str)
                assert not errors, f"{name} {mode}: {rec}\n{errors[0]}"
                n += 1
    assert n >= 2 * 12


# -- fresh captures ------------------------------------------------------------------------
def _can_make_captures() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    tools = (
        "ip",
        "ethtool",
        "tcpdump",
        "tshark",
        "dnsmasq",
        "nginx",
        "dig",
        "curl",
        "openssl",
        "chromium",
    )
    missing = [t for t in tools if not shutil.which(t)]
    return f"missing tools: {' '.join(missing)}" if missing else None


@pytest.mark.netns
def test_fresh_captures_from_real_clients(tmp_path):
    """Run make_issue4_captures.sh now into a temporary directory (DEST), so the captures
    are new ones, never in the repository; replay them against the ground truth it wrote."""
    why = _can_make_captures()
    if why:
        pytest.skip(why)
    r = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "DEST": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "verify: 0 problem(s)" in r.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "kd4-" not in netns
    fresh = json.loads((tmp_path / "expected.json").read_text())
    assert {n: truth(fresh, n) for n in fresh} == {n: truth(EXPECTED, n) for n in EXPECTED}
    for name in FILES:
        for exact in (False, True):
            got, want = rows(replay(tmp_path / name, exact)), truth(fresh, name)
            assert got == want, (name, exact)
