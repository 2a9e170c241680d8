"""LEEF 2.0 lines read back by a small strict LEEF 2.0 reader (no library exists): the header
splits into exactly its fields, the declared delimiter splits the attributes, every attribute
is one well-formed ``key=value`` with a unique key, and every value is exactly what was sent
(with the characters LEEF cannot carry made visible). Hostile values included."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from test_formats_common import (
    HOSTILE,
    HOSTILE_IDS,
    golden_check,
    hostile_alerts,
    sample_alerts,
    visible,
)

from detector.formats import leef
from detector.model import Alert

_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_HEX_DELIMITER = re.compile(r"(?:0x|x)([0-9A-Fa-f]{2,4})")
COMMON_KEYS = {
    "devTime", "devTimeFormat", "cat", "sev", "src", "dst", "srcPort", "dstPort", "proto", "name",
    "hostname", "evidence", "evidenceStrength", "appProto", "count", "lastSeen", "matchedPattern", "confidence",
    "signatureSeverity", "signatureVendor", "affectedProducts", "productOnly", "sourceRef",
    "sourceGrade", "flowId",
}  # fmt: skip
DNS = {"dnsQuery", "dnsType", "dnsId", "dnsRcode", "dnsAnswers"}
HTTP = {"url", "httpMethod", "httpVersion", "userAgent"}
TLS = {"tlsSni", "tlsVersion"}


class LeefError(ValueError):
    pass


def parse_leef(record: bytes) -> tuple[list[str], str, dict[str, str]]:
    """Strict LEEF 2.0: ``LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|attributes``.
    Returns the four header fields, the delimiter and the attributes."""
    if not record.endswith(b"\n") or record.count(b"\n") != 1 or b"\r" in record:
        raise LeefError("not exactly one line")
    text = record[:-1].decode("utf-8")  # strict: invalid UTF-8 is an error
    parts = text.split("|", 6)
    if len(parts) != 7:
        raise LeefError(f"header has {len(parts) - 1} of 6 pipes")
    if parts[0] != "LEEF:2.0":
        raise LeefError(f"not LEEF 2.0: {parts[0]!r}")
    spec = parts[5]
    m = _HEX_DELIMITER.fullmatch(spec)
    if m:
        delimiter = chr(int(m.group(1), 16))
    elif len(spec) == 1:
        delimiter = spec
    else:
        raise LeefError(f"bad delimiter declaration {spec!r}")
    attrs: dict[str, str] = {}
    for item in parts[6].split(delimiter):
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise LeefError(f"bad attribute {item!r}")
        if key in attrs:
            raise LeefError(f"duplicate attribute {key!r}")
        attrs[key] = value
    return parts[1:5], delimiter, attrs


def check_round_trip(alert: Alert) -> dict[str, str]:
    head, delimiter, attrs = parse_leef(leef.format_alert(alert))
    assert delimiter == "\t"
    assert head == [visible(f).replace("|", "\\x7c") for f in leef.header(alert)[:4]]
    assert attrs == {k: visible(v) for k, v in leef.attributes(alert)}
    return attrs


# -- the reader itself ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, problem",
    [
        (b"LEEF:2.0|a|b|1|2|^|k=v\nx\n", "one line"),
        (b"LEEF:1.0|a|b|1|2|^|k=v\n", "not LEEF 2.0"),
        (b"LEEF:2.0|a|b|1|2\n", "pipes"),
        (b"LEEF:2.0|a|b|1|2|^^|k=v\n", "bad delimiter"),
        (b"LEEF:2.0|a|b|1|2|^|k=v^novalue\n", "bad attribute 'novalue'"),
        (b"LEEF:2.0|a|b|1|2|^|k=v^k=w\n", "duplicate attribute 'k'"),
        (b"LEEF:2.0|a|b|1|2|x09|k=v\t b=1\n", "bad attribute ' b=1'"),
        (b"LEEF:2.0|a|b|1|2|^|k=\xff\n", "invalid start byte"),
    ],
)
def test_reader_rejects(record, problem):
    with pytest.raises((LeefError, UnicodeDecodeError), match=problem):
        parse_leef(record)


def test_reader_delimiters():
    assert parse_leef(b"LEEF:2.0|a|b|1|2|0x5e|k=v^j=w|x\n")[1:] == ("^", {"k": "v", "j": "w|x"})
    assert parse_leef(b"LEEF:2.0|a|b|1|2|^|k=a=b\n")[2] == {"k": "a=b"}


# -- the records ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_golden(kind):
    golden_check(f"leef-{kind}.log", leef.format_alert(sample_alerts()[kind]))


def test_samples_round_trip():
    got = {k: check_round_trip(a) for k, a in sample_alerts().items()}
    assert set(got["dns-answer"]) == COMMON_KEYS | DNS
    assert set(got["tls-sni"]) == COMMON_KEYS | TLS | {"vlan", "pcapFile"}
    assert set(got["http-host"]) == COMMON_KEYS | HTTP
    assert set(got["http-absolute-uri"]) == COMMON_KEYS | HTTP - {"userAgent"}
    q = got["dns-answer"]
    assert (q["src"], q["srcPort"], q["dst"], q["dstPort"], q["proto"]) == ("198.18.0.10", "40001", "198.18.0.1", "53", "UDP")
    assert (q["hostname"], q["dnsQuery"], q["cat"], q["sev"]) == ("downloads.upd.kaspersky.com", "updates.example.net", "update", "8")
    t = got["tls-sni"]
    assert (t["src"], t["vlan"], t["tlsVersion"]) == ("2001:db8::10", "100,7", "TLS 1.3")
    h = got["http-host"]
    assert (h["url"], h["count"]) == ("http://touch.kaspersky.com/api/v1/touch?id=42", "12")
    c = got["tls-certificate"]
    assert set(c) == COMMON_KEYS | {"tlsVersion", "certSubject", "certNames"}
    assert (c["sev"], c["evidenceStrength"], c["certNames"]) == ("5", "weak", "crl.kaspersky.com; *.kaspersky.com")
    assert set(got["quic-sni"]) == COMMON_KEYS | TLS | {"quicVersion"}
    assert got["ip-from-dns"]["resolvedBy"] == "DNS answer to 198.18.0.10 for activation-v2.kaspersky.com"
    port = got["ksc-port"]
    assert set(port) == COMMON_KEYS - {"hostname"} | {"kscAgent", "kscServer"}
    assert (port["matchedPattern"], port["confidence"], port["appProto"]) == ("tcp/13000", "high", "tls")


def test_dev_time_matches_its_declared_format():
    for alert in sample_alerts().values():
        attrs = check_round_trip(alert)
        assert attrs["devTimeFormat"] == "MMM dd yyyy HH:mm:ss.SSS zzz"
        # The same pattern in strptime terms (C locale month names, as LEEF readers expect).
        t = datetime.strptime(attrs["devTime"], "%b %d %Y %H:%M:%S.%f %Z").replace(tzinfo=timezone.utc)
        assert abs(t.timestamp() - alert.first_seen) < 0.001
    assert leef.dev_time(1_700_000_000.25) == "Nov 14 2023 22:13:20.250 UTC"
    assert leef.dev_time(0) == "Jan 01 1970 00:00:00.000 UTC"


def test_delimiter_cannot_survive_in_a_value():
    assert ord(leef.DELIMITER) in leef.VISIBLE
    assert leef.clean_value("a\tb\r\nc") == "a\\x09b\\x0d\\x0ac"
    assert leef.clean_header("a|b") == "a\\x7cb"


@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_values_round_trip(h):
    alerts = hostile_alerts(h)
    v = visible(h)
    for kind, alert in alerts.items():
        attrs = check_round_trip(alert)
        assert attrs["hostname"] == v
        extra = {
            "http": HTTP | {"pcapFile"}, "dns": DNS, "tls": TLS,
            "cert": {"tlsVersion", "certSubject", "certNames"}, "learned": TLS | {"resolvedBy"},
        }[kind]  # fmt: skip
        assert set(attrs) == COMMON_KEYS | extra, (kind, h)
    http = check_round_trip(alerts["http"])
    assert (http["userAgent"], http["matchedPattern"], http["pcapFile"], http["name"]) == (v, v, v, visible("sig " + h))
    assert http["cat"] == visible("cat " + h) and http["sev"] == "8"
    dns = check_round_trip(alerts["dns"])
    assert dns["dnsQuery"] == v and dns["dnsAnswers"] == f"{v} CNAME {v}"
    cert = check_round_trip(alerts["cert"])
    assert (cert["certSubject"], cert["certNames"]) == ("CN=" + v, v + "; x")
    assert check_round_trip(alerts["learned"])["resolvedBy"] == "DNS answer for " + v
