"""EVE JSON records: valid against Suricata's 7.0.10 and 8.0.6 schemas, one line each,
hostile strings escaped and read back exactly."""

from __future__ import annotations

import json

import pytest
from helpers import EVE_SCHEMAS, dns_cname_response, dns_query, run_frames, tcp_payload

from detector.formats.eve import format_alert, timestamp

jsonschema = pytest.importorskip("jsonschema")

SCHEMAS = [p.name for p in EVE_SCHEMAS]


def _validator(name: str):
    path = next(p for p in EVE_SCHEMAS if p.name == name)
    schema = json.loads(path.read_text())
    return jsonschema.Draft202012Validator(schema)


def _sample_alerts():
    # Hand-built frames (scapy): one of each evidence kind.
    frames = [
        dns_query("s05.upd.kaspersky.com"),
        dns_cname_response("updates.example.net", "downloads.upd.kaspersky.com"),
        tcp_payload(b"GET / HTTP/1.1\r\nHost: touch.kaspersky.com\r\nUser-Agent: t\r\n\r\n"),
        tcp_payload(b"GET http://p03.upd.kaspersky.com/index/u0607g.xml HTTP/1.1\r\nHost: p03.upd.kaspersky.com\r\n\r\n", sport=41001, dport=8888),
        tcp_payload(b"CONNECT cm.k.kaspersky-labs.com:443 HTTP/1.1\r\nHost: cm.k.kaspersky-labs.com:443\r\n\r\n", sport=41002, dport=8888),
        tcp_payload(b"GET / HTTP/1.1\r\nHost: crl.kaspersky.com\r\n\r\n", v6=True),
    ]
    return run_frames(frames)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_record_validates(schema):
    validator = _validator(schema)
    alerts = _sample_alerts()
    kinds = {a.observation.evidence.value for a in alerts}
    assert kinds == {"dns-query", "dns-answer", "http-host", "http-absolute-uri", "http-connect"}
    for a in alerts:
        rec = json.loads(format_alert(a))
        errors = sorted(validator.iter_errors(rec), key=str)
        assert not errors, f"{rec}\n{errors[0]}"


def test_record_fields():
    alerts = _sample_alerts()
    rec = json.loads(format_alert(alerts[1]))
    assert rec["event_type"] == "alert"
    assert rec["src_ip"] == "198.18.0.10"  # the client, although the packet came from the server
    assert rec["dest_ip"] == "198.18.0.1"
    assert rec["app_proto"] == "dns"
    assert rec["dns"]["answer"]["rrname"] == "updates.example.net"  # Suricata 7: a response's alert
    # the answer is the first packet of its flow here: it names the flow's to_server side
    assert (rec["direction"], rec["flow"]["src_ip"], rec["tx_id"]) == ("to_server", "198.18.0.1", 0)
    assert rec["alert"]["signature_id"] == 1610004
    assert rec["alert"]["category"] == "update"
    assert rec["alert"]["severity"] == 1
    md = rec["alert"]["metadata"]
    assert md["evidence"] == ["dns-answer"]
    assert md["hostname"] == ["downloads.upd.kaspersky.com"]
    assert md["vendor"] == ["Kaspersky"]
    assert md["confidence"] == ["high"]
    assert md["source_ref"] == ["kaspersky-endpoints.md §1a"]
    assert md["count"] == ["1"]


HOSTILE = [
    '"}],"x":"y',
    "a\r\nb",
    "\x00\x1b[31mred\x1b[0m",
    "\u202eevil\u202c",
    "back\\slash|pipe=eq",
    "\ufffd",
]


@pytest.mark.parametrize("ua", HOSTILE)
def test_hostile_strings_escaped(ua):
    # Hand-built: a request whose User-Agent and URL carry hostile bytes.
    raw = ua.encode()
    frame = tcp_payload(b"GET / HTTP/1.1\r\nHost: touch.kaspersky.com\r\nUser-Agent: " + raw.replace(b"\r\n", b" ") + b"\r\n\r\n")
    alerts = run_frames([frame])
    assert len(alerts) == 1
    line = format_alert(alerts[0])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert all(32 <= c < 127 for c in line[:-1]), "only printable ASCII on the wire"
    rec = json.loads(line)
    assert rec["http"]["http_user_agent"] == ua.replace("\r\n", " ")
    assert set(rec) <= {"timestamp", "flow_id", "event_type", "src_ip", "src_port", "dest_ip", "dest_port", "proto", "app_proto",
                        "alert", "http", "pcap_filename", "vlan", "pkt_src", "tx_id", "direction", "flow", "ether"}


def test_timestamp_format():
    assert timestamp(0.5) == "1970-01-01T00:00:00.500000+0000"


def test_invalid_utf8_is_shown_not_lost():
    # Hand-built: bytes that are not UTF-8 come out as visible \xNN escapes.
    frame = tcp_payload(b"GET / HTTP/1.1\r\nHost: touch.kaspersky.com\r\nUser-Agent: a\xff\xfeb\r\n\r\n")
    rec = json.loads(format_alert(run_frames([frame])[0]))
    assert rec["http"]["http_user_agent"] == "a\\xff\\xfeb"


def test_format_alert_is_json_dumps_of_to_dict():
    """format_alert keeps one encoder (no cycle check, built once) and fast timestamps: its
    bytes are those of plain ``json.dumps`` of ``to_dict``, on every bundled capture's
    alerts and on hostile names."""
    from helpers import PCAPS

    from detector import Detector
    from detector.formats.eve import to_dict
    from detector.replay import scan

    alerts = list(_sample_alerts())
    for path in sorted(PCAPS.rglob("*.pcap")):
        det = Detector(dedup=False)
        out: list = []
        scan(det, str(path), False, 16, out.extend, None)
        alerts += out + det.flush()
    hostile = tcp_payload(b"GET / HTTP/1.1\r\nHost: x\x00\x7f\xe2\x80\xae\"\\.kaspersky.com\r\n\r\n")
    alerts += run_frames([hostile])
    assert len(alerts) > 100
    for a in alerts:
        want = json.dumps(to_dict(a), ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
        assert format_alert(a) == want
