"""LEEF 2.0 lines read back by a small strict LEEF 2.0 reader (no library exists): the header
splits into exactly its fields, the declared delimiter splits the attributes, every attribute
is one well-formed ``key=value`` with a unique key, and every value is exactly what was sent
(LEEF has no escape: a value is the sent text itself; only the header, configuration,
has control characters made visible). The delimiter is the first candidate that occurs in
no value. Hostile values included."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from test_formats_common import (
    HOSTILE,
    HOSTILE_IDS,
    golden_check,
    hostile_alerts,
    no_surrogates,
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
    """Strict LEEF 2.0: ``LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|attributes``,
    one record ending in its newline (LEEF has no escape: a value may hold a CR or LF, which
    only line framing restricts). Returns the four header fields, the delimiter and the
    attributes."""
    if not record.endswith(b"\n"):
        raise LeefError("not one record ending in a newline")
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


CANDIDATES = ("\t", "^", "~", "`")  # the delimiters the module promises, in its order


def expected_delimiter(values: list[str]) -> str | None:
    """The first candidate in none of the values; None when each occurs somewhere."""
    return next((d for d in CANDIDATES if not any(d in v for v in values)), None)


def check_round_trip(alert: Alert) -> dict[str, str]:
    """A value comes back as it was (lone surrogates aside), the header with controls
    made visible, the delimiter the first candidate in no value."""
    head, delimiter, attrs = parse_leef(leef.format_alert(alert))
    want = {k: no_surrogates(v) for k, v in leef.attributes(alert)}
    assert delimiter == expected_delimiter(list(want.values()))
    assert head == [visible(f).replace("|", "\\x7c") for f in leef.header(alert)[:4]]
    assert attrs == want
    return attrs


# -- the reader itself ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, problem",
    [
        (b"LEEF:2.0|a|b|1|2|^|k=v", "one record"),
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
    assert parse_leef(b"LEEF:2.0|a|b|1|2|x7e|k=a\r\nb~j=\t\n")[1:] == ("~", {"k": "a\r\nb", "j": "\t"})


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


def test_values_are_written_as_they_are():
    raw = "a\tb\r\nc\x00\x1b[31m\x7f\x85\u2028\u202eevil|x=y"
    assert leef.clean_value(raw) == raw
    assert leef.clean_value("lone\udcff") == "lone\\udcff"  # a surrogate is never written
    assert leef.clean_header("a|b\tc") == "a\\x7cb\\x09c"  # a header: configuration


@pytest.mark.parametrize(
    "values, delimiter, fallback",
    [
        (["plain", "values"], "\t", False),
        (["a\tb"], "^", False),
        (["a\tb", "c^d"], "~", False),
        (["\t^~"], "`", False),
        (["\t", "^", "~", "`"], "\t", True),
    ],
)
def test_choose_delimiter(values, delimiter, fallback):
    assert leef.DELIMITERS == CANDIDATES
    assert leef.choose_delimiter(values) == (delimiter, fallback)


def test_delimiter_declared_per_event():
    alert = sample_alerts()["http-host"]
    for value, delimiter, declared in [("a\tb", "^", "x5e"), ("\t^", "~", "x7e"), ("\t^~", "`", "x60")]:
        a = hostile_alerts(value)["http"]
        record = leef.format_alert(a)
        assert record.split(b"|")[5] == declared.encode()
        head, got, attrs = parse_leef(record)
        assert got == delimiter and attrs["hostname"] == value and attrs["userAgent"] == value
    assert leef.format_alert(alert).split(b"|")[5] == b"x09"


def test_every_candidate_in_a_value_falls_back_to_a_visible_tab():
    """Hostile input holding every candidate: the tab is declared and each tab inside a value
    is written as the text ``\\x09`` (the one case where LEEF cannot give a value back)."""
    h = "t\tc^t~b`.example"
    a = hostile_alerts(h)["http"]
    record = leef.format_alert(a)
    head, delimiter, attrs = parse_leef(record)
    assert delimiter == "\t" and record.split(b"|")[5] == b"x09"
    shown = h.replace("\t", "\\x09")
    assert attrs["hostname"] == attrs["userAgent"] == shown
    assert attrs == {k: no_surrogates(v).replace("\t", "\\x09") for k, v in leef.attributes(a)}


@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_values_round_trip(h):
    alerts = hostile_alerts(h)
    v = no_surrogates(h)
    for kind, alert in alerts.items():
        attrs = check_round_trip(alert)
        assert attrs["hostname"] == v
        extra = {
            "http": HTTP | {"pcapFile"}, "dns": DNS, "tls": TLS,
            "cert": {"tlsVersion", "certSubject", "certNames"}, "learned": TLS | {"resolvedBy"},
        }[kind]  # fmt: skip
        assert set(attrs) == COMMON_KEYS | extra, (kind, h)
    http = check_round_trip(alerts["http"])
    assert (http["userAgent"], http["matchedPattern"], http["pcapFile"], http["name"]) == (v, v, v, "sig " + v)
    assert http["cat"] == "cat " + v and http["sev"] == "8"
    dns = check_round_trip(alerts["dns"])
    assert dns["dnsQuery"] == v and dns["dnsAnswers"] == f"{v} CNAME {v}"
    cert = check_round_trip(alerts["cert"])
    assert (cert["certSubject"], cert["certNames"]) == ("CN=" + v, v + "; x")
    assert check_round_trip(alerts["learned"])["resolvedBy"] == "DNS answer for " + v
