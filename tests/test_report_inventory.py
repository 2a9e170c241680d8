"""The host inventory (detector/report): logic on alert fixtures, the three input formats,
the renderers' escaping, and the CLI (``detector report``, ``replay --report``)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys

import pytest
from helpers import PCAPS, REPO

from detector.report import HomeNet, Inventory
from detector.report import inventory as inv_mod
from detector.report.contact import from_record
from detector.report.load import LoadStats, read_contacts
from detector.report.render import render_csv, render_json, render_table
from detector.report.view import build

T0 = 1_795_000_000.0  # 2026-11-18


def eve(client: str, endpoint: str, *, t: float = T0, last: float | None = None, sid: int = 1610001,
        category: str = "activation", products: tuple[str, ...] = ("Kaspersky Endpoint Security for Windows 11.6",),
        product_only: bool = True, evidence: str = "tls-sni", strength: str = "completed", count: int = 1,
        server: str = "203.0.113.80", port: int = 443, mac: str | None = None, extra: dict | None = None) -> dict:
    """An alert record as formats/eve.py writes it (only the fields the inventory reads)."""
    from detector.formats.eve import timestamp

    meta = {
        "vendor": ["Kaspersky"], "affected_product": list(products), "kaspersky_category": [category],
        "product_only": ["true" if product_only else "false"], "evidence": [evidence],
        "evidence_strength": [strength], "hostname": [endpoint], "count": [str(count)],
        "first_seen": [timestamp(t)], "last_seen": [timestamp(last if last is not None else t)],
        **(extra or {}),
    }  # fmt: skip
    rec = {
        "timestamp": timestamp(t), "event_type": "alert", "src_ip": client, "src_port": 40000,
        "dest_ip": server, "dest_port": port, "proto": "TCP",
        "alert": {"signature_id": sid, "signature": f"sig {sid}", "category": category, "metadata": meta},
    }  # fmt: skip
    if mac:
        rec["ether"] = {"src_mac": mac, "dest_mac": "02:00:00:00:00:01"}
    return rec


def inventory(records: list[dict], home: list[str] | None = None, **kw) -> Inventory:
    inv = Inventory(HomeNet(home), **kw)
    for r in records:
        inv.add(from_record(r)[1])
    return inv


def by_ip(inv: Inventory) -> dict:
    return {h.ip: h for h in inv.hosts()}


def test_first_and_last_seen_span_every_alert_of_a_host():
    inv = inventory([
        eve("10.0.0.5", "activation-v2.kaspersky.com", t=T0 + 100, last=T0 + 200),
        eve("10.0.0.5", "s05.upd.kaspersky.com", t=T0 + 50, last=T0 + 60, category="update"),
        eve("10.0.0.5", "dc1.ksn.kaspersky-labs.com", t=T0 + 300, last=T0 + 900, category="telemetry", count=7),
    ])  # fmt: skip
    h = by_ip(inv)["10.0.0.5"]
    assert (h.first, h.last) == (T0 + 50, T0 + 900)
    assert (h.alerts, h.contacts) == (3, 9)
    assert h.categories == {"telemetry": 7, "activation": 1, "update": 1}
    assert (inv.first, inv.last) == (T0 + 50, T0 + 900)
    v = build(inv)["hosts"][0]
    assert v["first_seen"] == "2026-11-18 11:07:30" and v["last_seen"] == "2026-11-18 11:21:40"


@pytest.mark.parametrize(
    "record, family, reason",
    [
        (eve("10.0.0.5", "tcp/13000", evidence="ksc-port", category="management", server="10.0.0.2", port=13000,
             products=("Kaspersky Security Center", "Kaspersky Network Agent"),
             extra={"agent": ["10.0.0.5"], "ksc_server": ["10.0.0.2"]}),
         inv_mod.AGENT, "Security Center agent: management port tcp/13000 to 10.0.0.2"),
        (eve("10.0.0.5", "downloads1.kaspersky-labs.com", category="update", products=("Kaspersky SMTP-Gateway 5.5 for Linux/Unix",)),
         inv_mod.MAIL, "mail/gateway engine: update traffic to downloads1.kaspersky-labs.com (Kaspersky SMTP-Gateway 5.5 for Linux/Unix)"),
        (eve("10.0.0.5", "touch.kaspersky.com", category="product-web",
             products=("Kaspersky Safe Kids for Windows 23.0", "Kaspersky Internet Security (browser extension, research)")),
         inv_mod.CONSUMER, "consumer product: product-web traffic to touch.kaspersky.com"),
        (eve("10.0.0.5", "activation-v2.kaspersky.com"),
         inv_mod.BUSINESS, "business endpoint: activation traffic to activation-v2.kaspersky.com"),
        (eve("10.0.0.5", "s05.upd.kaspersky.com", category="update",
             products=("Kaspersky Endpoint Security for Windows 11.6", "Kaspersky Safe Kids for Windows 23.0")),
         inv_mod.PRODUCT, "update traffic to s05.upd.kaspersky.com (signature names"),
        (eve("10.0.0.5", "x.ksc.kaspersky.com", category="management", products=("Kaspersky Security Center Cloud Console",)),
         inv_mod.AGENT, "Security Center agent: management traffic to x.ksc.kaspersky.com"),
        (eve("10.0.0.5", "www.kaspersky.com", category="vendor-domain", product_only=False, products=("Kaspersky products (unspecified)",)),
         inv_mod.WEBSITE, "website only: www.kaspersky.com (vendor-domain)"),
    ],
)  # fmt: skip
def test_product_family_inferred_with_its_reason(record, family, reason):
    h = by_ip(inventory([record]))["10.0.0.5"]
    assert h.family == family
    assert h.reason.startswith(reason)


def test_the_security_center_server_end_is_inventoried_too():
    rec = eve("10.0.0.5", "tcp/13000", evidence="ksc-port", category="management", server="10.0.0.2", port=13000,
              strength="strong", extra={"agent": ["10.0.0.5"], "ksc_server": ["10.0.0.2"]})  # fmt: skip
    hosts = by_ip(inventory([rec]))
    assert hosts["10.0.0.2"].family == inv_mod.SERVER
    assert "Network Agent 10.0.0.5" in hosts["10.0.0.2"].reason
    assert hosts["10.0.0.5"].strength_label == "strong"
    # a KSC server outside the home net is not inventoried
    assert set(by_ip(inventory([rec], home=["10.0.0.5/32"]))) == {"10.0.0.5"}


def test_the_strongest_signal_decides_and_the_others_are_kept():
    inv = inventory([
        eve("10.0.0.5", "www.kaspersky.com", category="vendor-domain", product_only=False),
        eve("10.0.0.5", "s05.upd.kaspersky.com", category="update", products=("Kaspersky products (unspecified)",)),
        eve("10.0.0.5", "tcp/13000", evidence="ksc-port", category="management", server="10.0.0.2", port=13000,
            extra={"agent": ["10.0.0.5"], "ksc_server": ["10.0.0.2"]}),
    ])  # fmt: skip
    h = by_ip(inv)["10.0.0.5"]
    assert h.family == inv_mod.AGENT and not h.website_only
    assert set(h.families) == {inv_mod.WEBSITE, inv_mod.PRODUCT, inv_mod.AGENT}


def test_website_only_hosts_are_listed_apart():
    inv = inventory([
        eve("10.0.0.7", "www.kaspersky.com", category="vendor-domain", product_only=False, strength="weak"),
        eve("10.0.0.7", "securelist.com", category="vendor-domain", product_only=False),
        eve("10.0.0.5", "activation-v2.kaspersky.com"),
    ])  # fmt: skip
    view = build(inv)
    assert [h["ip"] for h in view["hosts"]] == ["10.0.0.5"]
    assert [h["ip"] for h in view["website_hosts"]] == ["10.0.0.7"]
    assert view["website_hosts"][0]["endpoints"] == {"securelist.com": 1, "www.kaspersky.com": 1}
    assert view["summary"]["product_hosts"] == 1 and view["summary"]["website_hosts"] == 1
    table = render_table(view)
    product_part, website_part = table.split("Hosts that only visited Kaspersky websites")
    assert "10.0.0.5" in product_part and "10.0.0.7" not in product_part
    assert "10.0.0.7" in website_part


def test_home_net_decides_which_side_is_internal():
    recs = [
        eve("10.1.2.3", "activation-v2.kaspersky.com"),
        eve("192.168.1.9", "activation-v2.kaspersky.com"),
        eve("8.8.8.8", "activation-v2.kaspersky.com"),  # a public client: not ours
        eve("fd00::5", "activation-v2.kaspersky.com"),
        eve("2a00:1450::1", "activation-v2.kaspersky.com"),
        eve("::ffff:10.9.9.9", "activation-v2.kaspersky.com"),
    ]
    inv = inventory(recs)
    assert set(by_ip(inv)) == {"10.1.2.3", "192.168.1.9", "fd00::5", "::ffff:10.9.9.9"}
    assert inv.counters.outside == 2
    assert "2 alert(s) from clients outside the home net" in build(inv)["summary"]["line"]
    inv = inventory(recs, home=["8.8.8.0/24", "2a00:1450::/32"])
    assert set(by_ip(inv)) == {"8.8.8.8", "2a00:1450::1"}
    assert inv.counters.outside == 4


def test_mac_and_name_from_the_records():
    inv = inventory([
        eve("10.0.0.5", "activation-v2.kaspersky.com", mac="02:00:00:00:00:05",
            extra={"client_hostname": ["pc-05.corp.example"], "client_hostname_source": ["dhcp"]}),
    ])  # fmt: skip
    v = build(inv)["hosts"][0]
    assert v["mac"] == "02:00:00:00:00:05"
    assert v["names"] == "pc-05.corp.example (dhcp)"


def test_a_mac_shared_by_many_hosts_is_flagged_as_a_router():
    inv = inventory([eve(f"10.0.0.{i}", "activation-v2.kaspersky.com", mac="02:aa:00:00:00:01") for i in range(1, 12)])
    assert "shared by 11 hosts: a router?" in build(inv)["hosts"][0]["mac"]


def test_bounded_per_host_and_in_hosts():
    recs = [eve("10.0.0.5", f"h{i}.upd.kaspersky.com", t=T0 + i * 3600, category="update") for i in range(500)]
    recs += [eve("10.0.0.5", "tcp/13000", evidence="ksc-port", category="management", strength="strong", t=T0 + 7,
                 server="10.0.0.2", port=13000, extra={"agent": ["10.0.0.5"], "ksc_server": ["10.0.0.2"]})]
    h = by_ip(inventory(recs))["10.0.0.5"]
    assert len(h.rows) == inv_mod.MAX_ROWS and h.rows_more == 501 - inv_mod.MAX_ROWS
    assert any(r.evidence == "ksc-port" for r in h.rows), "the strongest evidence is kept among the rows"
    assert len(h.endpoints) == inv_mod.MAX_ENDPOINTS and h.endpoints_more == 501 - inv_mod.MAX_ENDPOINTS
    assert len(h.buckets) == inv_mod.MAX_BUCKETS
    tl = h.timeline()
    assert sum(n for _, _, n in tl) == 501
    assert tl[0][0] <= T0 + 7 < tl[0][1] and tl[-1][0] <= T0 + 499 * 3600 < tl[-1][1]
    assert all(a[1] <= b[0] for a, b in zip(tl, tl[1:], strict=False))


def test_timeline_takes_contacts_in_any_order():
    import random

    times = [T0 + i * 977.0 for i in range(400)]
    random.Random(3).shuffle(times)
    h = by_ip(inventory([eve("10.0.0.5", "a.upd.kaspersky.com", t=t, category="update", count=2) for t in times]))["10.0.0.5"]
    tl = h.timeline()
    assert sum(n for _, _, n in tl) == 800
    for t in times:
        assert any(lo <= t < hi for lo, hi, _ in tl), t
    inv = inventory([eve(f"10.0.{i // 250}.{i % 250}", "activation-v2.kaspersky.com") for i in range(1000)], max_hosts=100)
    assert len(inv) == 100 and inv.counters.hosts_dropped == 900
    assert "900 host(s) beyond the inventory's cap NOT LISTED" in build(inv)["summary"]["line"]


HOSTILE = "<script>alert(1)</script>\"'\u202egnp.exe\x1b[31m=cmd|'/C calc'!A0"


def test_renderers_escape_wire_strings():
    inv = inventory([eve("10.0.0.5", "x.upd.kaspersky.com", category="update",
                         extra={"client_hostname": ["=" + HOSTILE], "client_hostname_source": ["dns-ptr"]})])  # fmt: skip
    view = build(inv)
    table = render_table(view, colour=False)
    assert "\x1b" not in table and "\u202e" not in table and "\\x1b" in table and "\\u202e" in table
    rows = list(csv.reader(io.StringIO(render_csv(view))))
    assert rows[0][0] == "ip" and rows[1][0] == "10.0.0.5"
    assert rows[1][2].startswith("'="), "a formula is neutralised for spreadsheets"
    assert "\x1b" not in rows[1][2]
    out = render_json(view)
    assert out.isascii()
    assert json.loads(out)["hosts"][0]["names"] == "=" + HOSTILE + " (dns-ptr)"


def test_colour_only_when_asked():
    view = build(inventory([eve("10.0.0.5", "activation-v2.kaspersky.com")]))
    assert "\x1b[" not in render_table(view, colour=False)
    assert "\x1b[1;31m" in render_table(view, colour=True)


def test_files_in_three_formats_mixed_per_line_and_junk_counted(tmp_path):
    """Alerts of a real replay written as EVE, ECS and OCSF give the same inventory; a
    file mixing them line by line works; junk lines are counted, not fatal."""
    views = {}
    for fmt in ("eve", "ecs", "ocsf"):
        out = tmp_path / f"a.{fmt}"
        subprocess.run([sys.executable, "-m", "detector", "replay", "-q", "-o", f"{fmt}:{out}",
                        str(PCAPS / "tls-sni.pcap"), str(PCAPS / "issue4")], check=True, cwd=REPO)  # fmt: skip
        stats = LoadStats()
        inv = Inventory()
        for c in read_contacts([str(out)], stats):
            inv.add(c)
        assert stats.formats == {fmt: stats.lines} and not stats.skipped
        views[fmt] = [(h["ip"], h["mac"], h["family"], h["reason"], h["strength"], h["first_seen"], h["last_seen"],
                       h["alerts"], h["contacts"], h["categories"], h["endpoints"]) for h in build(inv)["hosts"]]  # fmt: skip
    assert views["eve"] and views["eve"] == views["ecs"] == views["ocsf"]
    mixed = tmp_path / "mixed.json.gz"
    lines = [(tmp_path / f"a.{f}").read_bytes().splitlines() for f in ("eve", "ecs", "ocsf")]
    junk = [b"not json", b'{"event_type": "flow"}', b"[1,2]", b'{"event_type":"alert","alert":{}}', b"\xff\xfe"]
    with gzip.open(mixed, "wb") as fh:
        fh.write(b"\n".join([*lines[0][:5], *junk, *lines[1][5:10], *lines[2][10:]]) + b"\n")
    stats = LoadStats()
    contacts = list(read_contacts([str(mixed), str(tmp_path / "missing.json")], stats))
    assert len(contacts) == len(lines[0])
    assert stats.skipped == {"not-json": 2, "not-an-alert": 3}
    assert stats.problems and "missing.json: cannot open" in stats.problems[0]


def test_replay_report_agrees_with_report_of_its_alert_file(tmp_path):
    """The in-process consumer (replay --report) and `detector report` of the EVE output
    give the same inventory."""
    eve_out, direct, later = tmp_path / "a.json", tmp_path / "direct.json", tmp_path / "later.json"
    caps = [str(PCAPS / "tls-sni.pcap"), str(PCAPS / "issue4"), str(PCAPS / "dns-udp-tcp.pcap")]
    subprocess.run([sys.executable, "-m", "detector", "replay", "-q", "-o", str(eve_out), "--report", str(direct), *caps],
                   check=True, cwd=REPO)  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "detector", "report", str(eve_out), "-o", str(later)],
                       check=True, cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert "report: 1 file(s)" in r.stderr
    a, b = json.loads(direct.read_text()), json.loads(later.read_text())
    for v in (a, b):
        v["summary"].pop("generated"), v["summary"].pop("sources")
        for h in v["hosts"] + v["website_hosts"]:
            for row in h["rows"]:
                row.pop("source_file")
    assert a == b
    assert {h["ip"] for h in a["hosts"]} >= {"198.18.0.10", "198.18.0.1"}
    assert a["hosts"][0]["mac"], "the capture's Ethernet header names the client's MAC"


def test_report_cli_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "detector", *args], cwd=REPO, capture_output=True, text=True)

    r = run("report", str(tmp_path / "nope.json"))
    assert r.returncode == 1 and "nope.json: cannot open" in r.stderr
    r = run("report", "--home-net", "10.0.0.0/33", str(tmp_path))
    assert r.returncode == 2 and "--home-net 10.0.0.0/33: not an address range" in r.stderr
    r = run("replay", "--report", str(tmp_path / "no" / "dir.html"), str(PCAPS / "tls-sni.pcap"))
    assert r.returncode == 2 and "does not exist or is not writable" in r.stderr and r.stdout == ""
    r = run("report", "-f", "table", str(tmp_path / "nope.json"))
    assert "\x1b[" not in r.stdout, "no colour when standard output is not a terminal"


def test_html_page_caps_its_tables_and_says_so(monkeypatch):
    from detector.report import html

    monkeypatch.setattr(html, "MAX_TABLE_HOSTS", 3)
    monkeypatch.setattr(html, "MAX_EVIDENCE_HOSTS", 2)
    inv = inventory([eve(f"10.0.0.{i}", "activation-v2.kaspersky.com", count=i) for i in range(1, 8)])
    page = html.render(build(inv))
    assert page.count('<td class="wire host-ip mono">') == 3
    assert page.count("<details") == 2
    assert "4 more host(s) not shown on this page" in page
    assert "Evidence of 1 more host(s)" in page
    assert ">10.0.0.7</a>" in page and ">10.0.0.4</a>" not in page, "the busiest hosts are shown"
