"""Host names learned from the capture (detector/hostnames.py, parsers/dhcp.py): DHCP host
names and DNS PTR answers, on the real capture pcaps/names/names.pcap (udhcpc and dig
against dnsmasq), through every JSON format into the inventory."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
from helpers import PCAPS, REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.capture.pcap import CaptureFile
from detector.errors import DecodeError
from detector.hostnames import HostNames, ptr_address
from detector.parsers import dhcp

NAMES = PCAPS / "names" / "names.pcap"
EXPECTED = json.loads((PCAPS / "names" / "expected.json").read_text())["names.pcap"]


def _dhcp_payloads() -> list[bytes]:
    out = []
    with CaptureFile(str(NAMES)) as cf:
        for _ts, _lt, data, _wl in cf:
            if data[12:14] == b"\x08\x00" and data[23] == 17 and data[36:38] in (b"\x00\x43", b"\x00\x44"):
                ihl = (data[14] & 15) * 4
                out.append(data[14 + ihl + 8:])
    return out


def test_dhcp_messages_of_a_real_client_and_server():
    msgs = [dhcp.parse(p) for p in _dhcp_payloads()]
    assert [m.message_type for m in msgs] == [dhcp.DISCOVER, dhcp.OFFER, dhcp.REQUEST, dhcp.ACK]
    assert {m.mac for m in msgs} == {"02:00:00:00:0e:10"}
    request = msgs[2]
    assert (request.op, request.address, request.hostname) == (1, "198.18.0.107", "analyst-pc-07")
    assert msgs[3].address == "198.18.0.107"


def test_every_prefix_is_a_value_or_one_decode_error():
    for payload in _dhcp_payloads():
        for n in range(len(payload)):
            with contextlib.suppress(DecodeError):
                dhcp.parse(payload[:n])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_never_leaks_another_exception(data):
    base = _PAYLOAD[:240]
    for payload in (data, base + data):
        with contextlib.suppress(DecodeError):
            dhcp.parse(payload)


_PAYLOAD = _dhcp_payloads()[2]


def test_client_fqdn_option_in_dns_wire_format():
    """Option 81 with the E flag (RFC 4702): udhcpc does not send it, so scapy builds it."""
    from scapy.layers.dhcp import BOOTP, DHCP

    fqdn = b"\x05\x00\x00" + b"\x06laptop\x04corp\x07example\x00"
    pkt = BOOTP(op=1, chaddr=bytes.fromhex("020000000e20") + bytes(10)) / DHCP(
        options=[("message-type", "request"), ("requested_addr", "10.0.0.9"), (81, fqdn), "end"]
    )
    m = dhcp.parse(bytes(pkt))
    assert (m.mac, m.address, m.hostname) == ("02:00:00:00:0e:20", "10.0.0.9", "laptop.corp.example")


@pytest.mark.parametrize(
    "owner, address",
    [
        ("11.0.18.198.in-addr.arpa", "198.18.0.11"),
        ("11.0.18.198.IN-ADDR.ARPA.", "198.18.0.11"),
        ("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "2001:db8::10"),
        ("18.198.in-addr.arpa", None),
        ("x.0.18.198.in-addr.arpa", None),
        ("300.0.18.198.in-addr.arpa", None),
        ("example.com", None),
    ],
)
def test_ptr_owner_to_address(owner, address):
    assert ptr_address(owner) == address


def test_names_table_is_bounded_and_dhcp_wins_over_ptr():
    t = HostNames(max_entries=3)
    for i in range(10):
        t.ptr(f"{i}.0.0.10.in-addr.arpa", f"h{i}.example.")
    assert len(t) == 3 and t.lookup("10.0.0.9") == ("h9.example", "dns-ptr") and t.lookup("10.0.0.0") is None
    t.dhcp(dhcp.Dhcp(1, dhcp.REQUEST, "02:00:00:00:00:01", "10.0.0.9", "pc-9"))
    t.ptr("9.0.0.10.in-addr.arpa", "other.example")
    assert t.lookup("10.0.0.9") == ("pc-9", "dhcp")
    t.dhcp(dhcp.Dhcp(2, dhcp.ACK, "02:00:00:00:00:01", "10.0.0.77", ""))  # the ACK names no host: the MAC does
    assert t.lookup("10.0.0.77") == ("pc-9", "dhcp")


@pytest.mark.parametrize("fmt, exact", [("eve", False), ("eve", True), ("ecs", False), ("ocsf", False)])
def test_names_and_macs_reach_the_inventory(tmp_path, fmt, exact):
    alerts, report = tmp_path / "alerts.json", tmp_path / "inv.json"
    subprocess.run([sys.executable, "-m", "detector", "replay", "-q", "-o", f"{fmt}:{alerts}", str(NAMES),
                    *(["--exact"] if exact else [])], check=True, cwd=REPO)  # fmt: skip
    subprocess.run([sys.executable, "-m", "detector", "report", "-q", "-o", str(report), str(alerts)], check=True, cwd=REPO)
    view = json.loads(report.read_text())
    hosts = {h["ip"]: h for h in view["hosts"] + view["website_hosts"]}
    assert set(hosts) == set(EXPECTED)
    for ip, exp in EXPECTED.items():
        h = hosts[ip]
        assert h["mac"] == exp["mac"]
        assert h["names"] == (f"{exp['name']} ({exp['source']})" if exp["name"] else "")
        assert set(h["endpoints"]) == set(exp["contacts"])
        assert h["website_only"] == bool(exp.get("website_only"))
