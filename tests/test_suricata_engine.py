"""The exported rules and the ingest path against the real Suricata 7 (Debian
bookworm-backports, installed by tests/run.sh):

- ``suricata -T`` loads the exported rules (per-name rules, and datasets);
- Suricata with those rules over every capture in pcaps/ alerts on the same (client, name)
  pairs as ``detector replay``, for each evidence kind Suricata 7 has a keyword for;
- Suricata's own EVE output of the same run, fed to ``detector ingest``, gives the alerts
  ``replay`` gives (same keys and counts);
- the suricata-update source installs with the real ``suricata-update``, offline.

Where Suricata cannot see what replay sees, the capture and the reason are listed in
``ENGINE_LIMITS`` (and in the README); everything else must match exactly.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from detector.capture.logs.eve import address, dns_name
from detector.export import EXPORTERS, ExportOptions, write_bundle
from detector.signatures import load_signatures
from tests.helpers import PCAPS, REPO

pytestmark = pytest.mark.skipif(shutil.which("suricata") is None, reason="suricata not installed (tests/run.sh installs it as root)")

CAPTURES = sorted(str(p.relative_to(PCAPS)) for p in PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng") and "damaged" not in p.parts)
# What Suricata 7.0.10 itself cannot see in a capture, checked by hand on its output.
ENGINE_LIMITS = {
    "linktypes/sll2.pcap": "Suricata 7 has no decoder for LINKTYPE_LINUX_SLL2 (276)",
    "linktypes/multi-if.pcapng": "Suricata 7 cannot read a pcapng with interfaces of two link types (it exits)",
    "tunnels/erspan3.pcap": "Suricata 7 does not decode ERSPAN type III",
    "quic/aioquic.pcap": "Suricata 7 logs no SNI for aioquic's Initial (its ClientHello spans CRYPTO frames)",
    "quic/aioquic-v2.pcap": "Suricata 7 does not parse QUIC version 2",
    "hostile/hostile.pcap": "Suricata writes a '.' inside a DNS label and invalid UTF-8 in an SNI ambiguously",
    "issue4/dns-snaplen.pcap": "Suricata 7 drops DNS messages the snaplen cut (replay reads the names that lie whole)",
}
# What EVE records do not carry, so ingest cannot give it: (capture, evidence kind) -> why
INGEST_LIMITS = {
    ("issue4/ech-real.pcap", "ip-from-dns"): "Suricata 7's tls record does not say the ClientHello carried ECH, "
    "so an ECH flow whose outer name matched is not also checked against learned addresses",
}
# evidence kinds Suricata 7 has a rule keyword for, as the contact kind compared
KIND = {"dns-query": "dns", "tls-sni": "tls", "quic-sni": "quic", "http-host": "http", "http-absolute-uri": "http",
        "http-connect": "http", "ksc-port": "port"}


def detector(*args: str, stdin: bytes | None = None) -> str:
    p = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "detector", *args], cwd=REPO, input=stdin,
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rules")
    write_bundle(EXPORTERS["suricata"](load_signatures(), ExportOptions()), str(d / "kaspersky.rules"))
    return d / "kaspersky.rules"


@pytest.fixture(scope="module")
def eve_logs(rules, tmp_path_factory) -> dict[str, Path]:
    """Suricata (its packaged configuration, unchanged) with the exported rules over every capture."""
    base = tmp_path_factory.mktemp("suricata")

    def run(cap: str) -> tuple[str, Path]:
        out = base / cap.replace("/", "_")
        out.mkdir()
        p = subprocess.run(["suricata", "-r", str(PCAPS / cap), "-S", str(rules), "-l", str(out), "-k", "none",
                            "--runmode", "single"], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return cap, out / "eve.json"

    with ThreadPoolExecutor(max_workers=2) as ex:
        return dict(ex.map(run, [c for c in CAPTURES if c not in ENGINE_LIMITS]))


@functools.cache
def _replay(cap: str) -> str:
    return detector("replay", "-q", str(PCAPS / cap))


def replay_alerts(cap: str) -> list[dict]:
    return [json.loads(x) for x in _replay(cap).splitlines()]


def meta(a: dict, key: str) -> str:
    return a["alert"]["metadata"][key][0]


def suricata_pairs(eve: Path) -> set[tuple[str, str, str]]:
    """(client, name, kind) of Suricata's alerts from our rules; the name from the alert's
    app-layer record (ports: the rule's tcp/PORT)."""
    out = set()
    for line in eve.read_text().splitlines():
        r = json.loads(line)
        if r.get("event_type") != "alert" or "kdt_evidence" not in r["alert"].get("metadata", {}):
            continue
        ev = r["alert"]["metadata"]["kdt_evidence"][0]
        client = address(r["src_ip"])
        if ev == "ksc-port":
            name = f"{r['proto'].lower()}/{r['dest_port']}"
        elif ev == "dns-query":
            q = r["dns"].get("query") or r["dns"].get("queries")
            name = dns_name(q[0]["rrname"])
        elif ev in ("tls-sni", "quic-sni"):
            name = r[ev[:-4]]["sni"]
        else:
            name = r["http"]["hostname"]
        out.add((client, name.lower().rstrip("."), KIND[ev]))
    return out


def test_suricata_T_accepts_the_exported_rules(rules, tmp_path):
    for extra in ([], ["--datasets"]):
        d = tmp_path / ("ds" if extra else "plain")
        detector("export", "suricata", *extra, "-o", str(d if extra else d / "kaspersky.rules")) if extra else None
        if not extra:
            d.mkdir()
            shutil.copy(rules, d / "kaspersky.rules")
        p = subprocess.run(["suricata", "-T", "-S", str(d / "kaspersky.rules"), "-l", str(tmp_path), "-v"],
                           capture_output=True, text=True, timeout=300)
        text = p.stdout + p.stderr
        assert p.returncode == 0, text[-3000:]
        assert " 0 rules failed" in text
        n = (d / "kaspersky.rules").read_text().count("\nalert ")
        assert f"{n} rules successfully loaded" in text


@pytest.mark.parametrize("cap", CAPTURES)
def test_suricata_alerts_match_replay(eve_logs, cap):
    if cap in ENGINE_LIMITS:
        pytest.skip(ENGINE_LIMITS[cap])
    want = {(a["src_ip"], meta(a, "hostname"), KIND[meta(a, "evidence")]) for a in replay_alerts(cap)
            if meta(a, "evidence") in KIND}
    # Suricata fires every rule a name matches (the exact one and each enclosing suffix);
    # replay reports the most specific signature: both are reduced to (client, name, kind).
    assert suricata_pairs(eve_logs[cap]) == want


@pytest.mark.parametrize("cap", CAPTURES)
def test_suricata_eve_ingested_matches_replay(eve_logs, cap):
    if cap in ENGINE_LIMITS:
        pytest.skip(ENGINE_LIMITS[cap])

    def keys(alerts: list[dict]) -> set[tuple]:
        out = set()
        for a in alerts:
            ev = meta(a, "evidence")
            # a flow record is one line per flow; replay counts each UDP packet to a port
            count = "-" if ev == "ksc-port" and a["proto"] == "UDP" else meta(a, "count")
            out.add((a["src_ip"], meta(a, "hostname"), ev, a["alert"]["signature_id"], count))
        return out

    got = [json.loads(x) for x in detector("ingest", "-q", str(eve_logs[cap])).splitlines()]
    want = [a for a in replay_alerts(cap) if (cap, meta(a, "evidence")) not in INGEST_LIMITS]
    assert keys(got) == keys(want)


def test_suricata_update_installs_the_source_offline(tmp_path):
    if shutil.which("suricata-update") is None:
        pytest.skip("suricata-update not installed")
    src = tmp_path / "kaspersky-rules.tar.gz"
    detector("export", "suricata-update", "-o", str(src))
    data, out = tmp_path / "data", tmp_path / "out"
    env = dict(os.environ, HOME=str(tmp_path))
    common = ["suricata-update", "--data-dir", str(data), "--output", str(out), "--no-test", "--no-reload",
              "--suricata-conf", "/etc/suricata/suricata.yaml", "--disable-conf", "/dev/null", "--enable-conf", "/dev/null",
              "--modify-conf", "/dev/null", "--drop-conf", "/dev/null"]
    p = subprocess.run([*common[:3], "add-source", "kaspersky-traffic-detector", f"file://{src}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(common, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    merged = (out / "suricata.rules").read_text()
    assert merged.count("kdt_signature_id") == EXPORTERS["suricata"](load_signatures(), ExportOptions())["kaspersky.rules"].decode().count("kdt_signature_id")
    p = subprocess.run(["suricata", "-T", "-S", str(out / "suricata.rules"), "-l", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.mark.parametrize("cap", ["dns-udp-tcp.pcap", "tls-sni.pcap", "http-host-proxy.pcap", "quic/chromium.pcap"])
def test_dataset_rules_alert_like_per_name_rules(eve_logs, cap, tmp_path):
    """Every exact name in a Suricata dataset (what a large set is exported as): the same
    contacts as the per-name rules of the main run."""
    d = tmp_path / "ds"
    detector("export", "suricata", "--datasets", "-o", str(d))
    assert list(d.glob("kdt-*.lst"))
    p = subprocess.run(["suricata", "-r", str(PCAPS / cap), "-S", str(d / "kaspersky.rules"), "-l", str(tmp_path), "-k",
                        "none", "--runmode", "single"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert suricata_pairs(tmp_path / "eve.json") == suricata_pairs(eve_logs[cap])


INVENTORY_CAPTURES = ["tls-sni.pcap", "dns-udp-tcp.pcap", "http-host-proxy.pcap", "issue4/ksc-ports.pcap",
                      "issue4/ip-literal-after-dns.pcap", "quic/chromium.pcap"]


@pytest.mark.parametrize("cap", INVENTORY_CAPTURES)
def test_inventory_of_replay_and_of_ingest_agree(eve_logs, cap, tmp_path):
    """The host inventory built from `detector replay`'s alerts and from `detector ingest`
    of Suricata's EVE log of the same traffic name the same hosts, with the same product
    family, categories, endpoints, alert count, strongest evidence and first/last seen.
    (Contact counts are not compared: EVE has one flow record where replay counts each
    UDP datagram to a Security Center port.)"""
    replayed = tmp_path / "replay.json"
    replayed.write_text(_replay(cap))
    ingested = tmp_path / "ingest.json"
    ingested.write_text(detector("ingest", "-q", str(eve_logs[cap])))

    def inventory(path: Path) -> dict[str, tuple]:
        doc = json.loads(detector("report", "-q", str(path), "--format", "json"))
        return {h["ip"]: (h["family"], h["website_only"], sorted(h["categories"]), sorted(h["endpoints"]), h["alerts"],
                          h["strength"], h["first_seen"], h["last_seen"]) for h in doc["hosts"]}

    want = inventory(replayed)
    assert want, f"{cap}: replay found no host"
    assert inventory(ingested) == want
