"""ECS alert documents: every field name, value type, array-ness and allowed value checked
against the ECS 9.4.0 field reference (``tests/fixtures/ref/ecs-9.4.0-flat.yml``); golden files; hostile
strings read back exactly."""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import datetime
from functools import cache

import pytest
import yaml
from helpers import REF
from test_formats_common import (
    HOSTILE,
    HOSTILE_IDS,
    golden_check,
    hostile_alerts,
    no_surrogates,
    sample_alerts,
)

from detector.formats.common import http_url, iso_utc
from detector.formats.ecs import format_alert

ECS_FLAT = REF / "ecs-9.4.0-flat.yml"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_TEXT_TYPES = {"keyword", "wildcard", "match_only_text", "constant_keyword", "text"}
_INT_RANGE = {"long": 2**63, "integer": 2**31, "short": 2**15, "byte": 2**7}


@cache
def ecs_fields() -> dict[str, dict]:
    with open(ECS_FLAT, "rb") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@cache
def ecs_parents() -> frozenset[str]:
    """Every dotted prefix of a field name: the objects a document may nest fields in."""
    return frozenset(name.rsplit(".", i)[0] for name in ecs_fields() for i in range(1, name.count(".") + 1))


def _scalar_problem(name: str, typ: str, v: object) -> str | None:
    if typ in _TEXT_TYPES:
        return None if isinstance(v, str) else f"{name}: {typ} needs a string, not {v!r}"
    if typ in _INT_RANGE:
        lim = _INT_RANGE[typ]
        ok = isinstance(v, int) and not isinstance(v, bool) and -lim <= v < lim
        return None if ok else f"{name}: {typ} needs an integer in range, not {v!r}"
    if typ in ("float", "double", "scaled_float", "half_float"):
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        return None if ok else f"{name}: {typ} needs a number, not {v!r}"
    if typ == "boolean":
        return None if isinstance(v, bool) else f"{name}: boolean needs true/false, not {v!r}"
    if typ == "ip":
        try:
            ipaddress.ip_address(v)  # type: ignore[arg-type]
            return None
        except ValueError:
            return f"{name}: not an IP address: {v!r}"
    if typ == "date":
        if not isinstance(v, str) or not _DATE.match(v):
            return f"{name}: not an ISO 8601 date: {v!r}"
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return f"{name}: not a valid date: {v!r}"
        return None
    return f"{name}: the test does not know ECS type {typ!r}"


def ecs_problems(doc: dict) -> list[str]:
    """Every leaf of ``doc`` must be an ECS field of the right type; lists only where the
    field is normalised to an array; allowed and expected values respected."""
    fields = ecs_fields()
    problems: list[str] = []

    def walk(prefix: str, obj: dict) -> None:
        for key, value in obj.items():
            name = prefix + key
            f = fields.get(name)
            if f is None:
                if isinstance(value, dict) and name in ecs_parents():
                    walk(name + ".", value)
                else:
                    problems.append(f"{name}: not an ECS 9.4.0 field")
                continue
            check(name, f, value)

    def check(name: str, f: dict, value: object) -> None:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and "array" not in (f.get("normalize") or []):
            problems.append(f"{name}: a list, but ECS does not normalise this field to an array")
        for item in items:
            if f["type"] in ("object", "nested"):
                if not isinstance(item, dict):
                    problems.append(f"{name}: {f['type']} needs an object, not {item!r}")
                elif f.get("object_type"):  # labels: a flat map of keyword values
                    for k, v in item.items():
                        if "." in k or not isinstance(v, str):
                            problems.append(f"{name}.{k}: needs a dot-free key and a {f['object_type']} value")
                else:
                    walk(name + ".", item)
                continue
            p = _scalar_problem(name, f["type"], item)
            if p:
                problems.append(p)
            allowed = [a["name"] for a in f.get("allowed_values") or []]
            if allowed and item not in allowed:
                problems.append(f"{name}: {item!r} is not an allowed value ({', '.join(allowed)})")
            expected = f.get("expected_values")
            if expected and item not in expected:
                problems.append(f"{name}: {item!r} is not an expected value ({', '.join(expected)})")

    walk("", doc)
    for name, f in fields.items():
        if f.get("required") and name not in _flat_keys(doc):
            problems.append(f"{name}: required")
    # event.type values must be expected by every event.category given.
    cats = {a["name"]: a for a in fields["event.category"]["allowed_values"]}
    event = doc.get("event", {})
    as_list = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
    for cat in as_list(event.get("category", [])):
        for typ in as_list(event.get("type", [])):
            if cat in cats and typ not in cats[cat].get("expected_event_types", []):
                problems.append(f"event.type {typ!r} is not expected for event.category {cat!r}")
    return problems


def _flat_keys(doc: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in doc.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _flat_keys(v, prefix + k + ".")
    return out


# -- the validator itself -------------------------------------------------------------------
@pytest.mark.parametrize(
    "doc, problem",
    [
        ({"event": {"count": 3}}, "event.count: not an ECS 9.4.0 field"),
        ({"source": {"ip": "nope"}}, "source.ip: not an IP address"),
        ({"source": {"port": "53"}}, "source.port: long needs an integer"),
        ({"event": {"kind": "detection"}}, "event.kind: 'detection' is not an allowed value"),
        ({"event": {"category": "network"}}, None),
        ({"event": {"kind": ["alert"]}}, "event.kind: a list"),
        ({"event": {"category": ["network"], "type": ["indicator"]}}, "not expected for event.category 'network'"),
        ({"labels": {"a.b": "x"}}, "labels.a.b: needs a dot-free key"),
        ({"labels": {"n": 1}}, "labels.n: needs a dot-free key and a keyword value"),
        ({"dns": {"answers": [{"ttl": "30"}]}}, "dns.answers.ttl: long needs an integer"),
        ({"threat": {"indicator": {"confidence": "high"}}}, "is not an expected value"),
        ({"event": {"start": "yesterday"}}, "event.start: not an ISO 8601 date"),
        ({}, "@timestamp: required"),
        ({"ecs": {}}, "ecs.version: required"),
    ],
)
def test_validator_catches(doc, problem):
    if problem != "@timestamp: required":
        doc = {"@timestamp": "2024-01-01T00:00:00Z", "ecs": {"version": "9.4.0"}, **doc}
    found = ecs_problems(doc)
    if problem is None:
        assert not found
    else:
        assert any(problem in p for p in found), found


# -- the records ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_every_field_is_ecs(kind):
    doc = json.loads(format_alert(sample_alerts()[kind]))
    assert ecs_problems(doc) == []


@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_golden(kind):
    golden_check(f"ecs-{kind}.json", format_alert(sample_alerts()[kind]))


def test_record_fields():
    doc = json.loads(format_alert(sample_alerts()["dns-answer"]))
    assert doc["event"]["kind"] == "alert"
    assert doc["event"]["category"] == ["network", "intrusion_detection"]
    assert doc["source"] == {"ip": "198.18.0.10", "port": 40001}  # the client, not the resolver
    assert doc["dns"]["question"]["name"] == "updates.example.net"
    assert [a["data"] for a in doc["dns"]["answers"]][:2] == ["cdn.example.net.", "downloads.upd.kaspersky.com."]
    assert doc["dns"]["resolved_ip"] == ["198.18.0.53"]
    assert doc["rule"]["id"] == "1610004" and doc["rule"]["ruleset"] == "kaspersky"
    assert doc["threat"]["indicator"]["name"] == "downloads.upd.kaspersky.com"
    assert "downloads.upd.kaspersky.com" in doc["related"]["hosts"]
    http = json.loads(format_alert(sample_alerts()["http-host"]))
    assert http["threat"]["indicator"]["sightings"] == 12
    assert http["event"]["duration"] == 3_599_750_000_000
    assert http["url"]["full"] == "http://touch.kaspersky.com/api/v1/touch?id=42"
    tls = json.loads(format_alert(sample_alerts()["tls-sni"]))
    assert tls["network"]["type"] == "ipv6" and tls["tls"]["version"] == "1.3"


def test_other_evidence_kinds():
    a = sample_alerts()
    cert = json.loads(format_alert(a["tls-certificate"]))
    assert cert["event"]["severity"] == 47  # a high signature on weak evidence: one step lower
    assert cert["tls"]["server"]["x509"]["alternative_names"] == ["crl.kaspersky.com", "*.kaspersky.com"]
    assert cert["destination"]["domain"] == "crl.kaspersky.com"
    quic = json.loads(format_alert(a["quic-sni"]))
    assert (quic["network"]["protocol"], quic["tls"]["client"]["server_name"]) == ("quic", "dc1.ksn.kaspersky-labs.com")
    learned = json.loads(format_alert(a["ip-from-dns"]))
    assert learned["labels"]["resolved_by"].startswith("DNS answer to 198.18.0.10")
    assert learned["network"]["protocol"] == "tls" and learned["destination"]["domain"] == "activation-v2.kaspersky.com"
    port = json.loads(format_alert(a["ksc-port"]))
    assert port["threat"]["indicator"]["type"] == "port" and port["threat"]["indicator"]["port"] == 13000
    assert "domain" not in port["destination"] and port["related"]["hosts"] == []
    assert port["labels"]["evidence_strength"] == "strong"


def test_timestamps_are_utc_microseconds():
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500000Z"


def test_http_url_pieces():
    a = sample_alerts()
    assert http_url(a["http-absolute-uri"].observation).port == 80  # the URL's port, not the proxy's
    assert http_url(a["http-connect"].observation).port == 443
    assert http_url(a["http-connect"].observation).full == ""


@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_values_round_trip(h):
    alerts = hostile_alerts(h)
    raw, h = h, no_surrogates(h)
    assert h == raw or "lone" in raw
    http_line = format_alert(alerts["http"])
    assert all(32 <= c < 127 for c in http_line[:-1]), "only printable ASCII"
    http = json.loads(http_line)
    assert http["url"]["domain"] == h
    assert http["url"]["original"] == "/p?" + h
    assert http["user_agent"]["original"] == h
    assert http["rule"]["name"] == "sig " + h
    assert http["threat"]["indicator"]["name"] == h
    assert http["labels"]["pcap_filename"] == h
    dns = json.loads(format_alert(alerts["dns"]))
    assert dns["dns"]["question"]["name"] == h
    assert dns["dns"]["answers"] == [{"name": h, "type": "CNAME", "ttl": 5, "data": h}]
    tls = json.loads(format_alert(alerts["tls"]))
    assert tls["tls"]["client"]["server_name"] == h
    cert = json.loads(format_alert(alerts["cert"]))
    assert cert["tls"]["server"]["x509"] == {"subject": {"distinguished_name": "CN=" + h}, "alternative_names": [h, "x"]}
    learned = json.loads(format_alert(alerts["learned"]))
    assert learned["labels"]["resolved_by"] == "DNS answer for " + h
    for doc in (http, dns, tls, cert, learned):
        assert ecs_problems(doc) == []
