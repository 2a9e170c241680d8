"""OCSF Detection Findings, checked by a strict validator built from the OCSF 1.8.0 schema
sources (``tests/fixtures/ref/ocsf-schema-1.8.0-json.tar.gz``); golden files; hostile strings.

No ready validator fits: on PyPI, ``ocsf-validator`` checks schema repositories (not events),
``ocsf-lib`` compiles and compares schemas but does not validate events, ``ocsf-emitter`` and
``ocsfkit`` carry their own (1.5.0 / partial) models, and the official
``ocsf-schema-compiler`` needs Python 3.14. So the validator below reads the schema
sources itself, following the OCSF compiler's rules:

- a class or object is its ``extends`` chain merged parent first; ``$include`` files add
  their attributes (a profile's attributes stay tied to that profile unless the class sets
  ``"profile": null``); the class's own entries are merged last;
- each attribute's full definition is the dictionary's merged with the class/object entry
  (enums add up, the class's keys win);
- a type is followed through ``dictionary.json``'s types down to the primitive
  (``hostname_t`` -> ``string_t``, ``port_t`` -> ``integer_t`` with its range, ``ip_t`` with
  its regular expression and length limit ...);
- ``observable.type_id`` takes its values from the types, objects and dictionary
  attributes marked ``observable``;
- class_uid, category_uid and type_uid are computed (category * 1000 + class,
  class * 100 + activity), as are class_name, category_name and type_name.

It rejects unknown attributes (recursively into every object), missing required ones,
wrong types, values outside an enum, a sibling that is not its enum's caption, an attribute
of a profile the event does not list in ``metadata.profiles``, deprecated attributes,
broken ``at_least_one``/``just_one`` constraints, and observables whose ``name`` does not
lead to an attribute of that observable type holding ``value``.
"""

from __future__ import annotations

import copy
import json
import re
import tarfile
from functools import cache
from typing import Any

import pytest
from helpers import REF
from test_formats_common import (
    HOSTILE,
    HOSTILE_IDS,
    golden_check,
    hostile_alerts,
    no_surrogates,
    sample_alerts,
)

from detector.formats.ocsf import OCSF_VERSION, format_alert, to_dict

TARBALL = REF / "ocsf-schema-1.8.0-json.tar.gz"
_INT_LIMITS = {"integer_t": 2**31, "long_t": 2**63}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class OcsfSchema:
    def __init__(self, files: dict[str, Any]) -> None:
        self.files = files
        self.version = files["version.json"]["version"]
        self.dictionary = files["dictionary.json"]["attributes"]
        self.types = files["dictionary.json"]["types"]["attributes"]
        self.objects = {j["name"]: j for p, j in files.items() if p.startswith("objects/")}
        self.events = {j["name"]: j for p, j in files.items() if p.startswith("events/")}
        self.categories = files["categories.json"]["attributes"]
        self.profiles = {j["name"]: j for p, j in files.items() if p.startswith("profiles/")}
        self._attrs: dict[tuple[str, str], dict[str, dict]] = {}
        self.observable_enum = {"0": "Unknown", "99": "Other"}
        for table in (self.types, self.dictionary):
            for d in table.values():
                if "observable" in d:
                    self.observable_enum[str(d["observable"])] = d["caption"]
        for o in self.objects.values():
            if "observable" in o:
                self.observable_enum[str(o["observable"])] = o["caption"]

    @classmethod
    def from_tarball(cls, path) -> OcsfSchema:
        files: dict[str, Any] = {}
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.endswith(".json") and "/metaschema/" not in m.name:
                    fh = tar.extractfile(m)
                    assert fh is not None
                    files[m.name.split("/", 1)[1]] = json.load(fh)
        return cls(files)

    # -- resolution --------------------------------------------------------------------------
    def _raw(self, kind: str, name: str) -> dict:
        return (self.events if kind == "event" else self.objects)[name]

    def attrs(self, kind: str, name: str) -> dict[str, dict]:
        """name -> full attribute definition (dictionary merged with the class/object's)."""
        key = (kind, name)
        if key not in self._attrs:
            self._attrs[key] = {n: _merge(self.dictionary.get(n, {}), a) for n, a in self._own_attrs(kind, name).items()}
        return self._attrs[key]

    def _own_attrs(self, kind: str, name: str) -> dict[str, dict]:
        raw = self._raw(kind, name)
        attrs = copy.deepcopy(self._own_attrs(kind, raw["extends"])) if raw.get("extends") else {}
        own = raw.get("attributes", {})
        for inc in own.get("$include", []):
            included = self.files[inc]
            profile = included["name"] if included.get("meta") == "profile" else None
            for n, a in included.get("attributes", {}).items():
                a = {"profile": profile, **a} if profile else a
                attrs[n] = _merge(attrs.get(n, {}), a)
        for n, a in own.items():
            if n != "$include":
                attrs[n] = _merge(attrs.get(n, {}), a)
        return attrs

    def _inherited(self, kind: str, name: str, key: str) -> Any:
        raw = self._raw(kind, name)
        if key in raw:
            return raw[key]
        return self._inherited(kind, raw["extends"], key) if raw.get("extends") else None

    def _profiles_of(self, name: str) -> set[str]:
        raw = self.events[name]
        own = set(raw.get("profiles", []))
        return own | self._profiles_of(raw["extends"]) if raw.get("extends") else own

    def class_by_uid(self, class_uid: Any) -> tuple[str, dict] | None:
        for name, raw in self.events.items():
            cat = self._inherited("event", name, "category")
            cat_uid = self.categories[cat]["uid"] if cat in self.categories else 0
            if "uid" in raw and cat_uid * 1000 + raw["uid"] == class_uid:
                return name, {"category": cat, "category_uid": cat_uid}
        return None

    # -- validation ---------------------------------------------------------------------------
    def validate(self, event: dict) -> list[str]:
        problems: list[str] = []
        found = self.class_by_uid(event.get("class_uid"))
        if found is None:
            return [f"class_uid {event.get('class_uid')!r}: no such class"]
        name, cat = found
        raw = self.events[name]
        attrs = self.attrs("event", name)
        profiles = list(event.get("metadata", {}).get("profiles", []))
        allowed_profiles = self._profiles_of(name)
        for p in profiles:
            if p not in self.profiles or p not in allowed_profiles:
                problems.append(f"metadata.profiles: {p!r} is not a profile of {name}")
        activities = attrs["activity_id"].get("enum", {})
        expect = {
            "category_uid": cat["category_uid"],
            "category_name": self.categories.get(cat["category"], {}).get("caption"),
            "class_name": raw["caption"],
            "type_uid": event.get("class_uid", 0) * 100 + event.get("activity_id", 0),
            "type_name": f"{raw['caption']}: {activities.get(str(event.get('activity_id')), {}).get('caption')}",
        }
        for k, v in expect.items():
            if k in event and event[k] != v:
                problems.append(f"{k}: {event[k]!r}, expected {v!r}")
        # The compiler generates these enums: this class, its category, its activities.
        class_uid = cat["category_uid"] * 1000 + raw["uid"]
        attrs = dict(
            attrs,
            class_uid=dict(attrs["class_uid"], enum={str(class_uid): {"caption": raw["caption"]}}),
            category_uid=dict(attrs["category_uid"], enum={str(cat["category_uid"]): {"caption": expect["category_name"]}}),
            type_uid=dict(
                attrs["type_uid"],
                enum={str(class_uid * 100 + int(k)): {"caption": f"{raw['caption']}: {v['caption']}"} for k, v in activities.items()},
            ),
        )
        if event.get("metadata", {}).get("version") != self.version:
            problems.append(f"metadata.version: {event.get('metadata', {}).get('version')!r}, schema is {self.version}")
        self._check_attrs("", attrs, event, set(profiles), self._raw("event", name).get("constraints"), problems)
        self._check_observables(event, name, problems)
        return problems

    def _check_attrs(self, path, attrs, value, profiles, constraints, problems) -> None:
        if not isinstance(value, dict):
            problems.append(f"{path or '.'}: needs an object, not {value!r}")
            return
        for key, v in value.items():
            where = f"{path}{key}"
            a = attrs.get(key)
            if a is None:
                problems.append(f"{where}: no such attribute")
                continue
            if key not in self.dictionary:
                problems.append(f"{where}: not in the dictionary")
            if a.get("profile") and a["profile"] not in profiles:
                problems.append(f"{where}: belongs to profile {a['profile']!r}, not listed in metadata.profiles")
            if "@deprecated" in a:
                problems.append(f"{where}: deprecated")
            items = v if a.get("is_array") else [v]
            if a.get("is_array") and not isinstance(v, list):
                problems.append(f"{where}: needs an array")
                continue
            if not a.get("is_array") and isinstance(v, list):
                problems.append(f"{where}: not an array attribute")
                continue
            for item in items:
                self._check_value(where, key, a, item, value, profiles, problems)
        for key, a in attrs.items():
            active = not a.get("profile") or a["profile"] in profiles
            if a.get("requirement") == "required" and active and key not in value:
                problems.append(f"{path}{key}: required")
        for rule, names in (constraints or {}).items():
            present = [n for n in names if n in value]
            if rule == "at_least_one" and not present:
                problems.append(f"{path or '.'}: needs at least one of {names}")
            if rule == "just_one" and len(present) != 1:
                problems.append(f"{path or '.'}: needs exactly one of {names}")

    def _check_value(self, where, key, a, v, parent, profiles, problems) -> None:
        typ = a.get("type")
        if typ == "object":  # free-form (unmapped)
            if not isinstance(v, dict):
                problems.append(f"{where}: needs an object")
            return
        if typ in self.objects:
            sub = self.attrs("object", typ)
            if typ == "observable":
                sub = dict(sub, type_id=dict(sub["type_id"], enum={k: {"caption": c} for k, c in self.observable_enum.items()}))
            self._check_attrs(where + ".", sub, v, profiles, self._inherited("object", typ, "constraints"), problems)
            return
        p = self.type_problem(typ, v)
        if p:
            problems.append(f"{where}: {p}")
            return
        enum = a.get("enum")
        if enum is not None:
            if str(v) not in enum:
                problems.append(f"{where}: {v!r} not in enum {sorted(enum)}")
            elif a.get("sibling") and a["sibling"] in parent and str(v) != "99":
                caption = enum[str(v)]["caption"]
                if parent[a["sibling"]] != caption:
                    problems.append(f"{a['sibling']}: {parent[a['sibling']]!r}, the caption of {key} {v} is {caption!r}")

    def type_problem(self, typ: str | None, v: Any) -> str | None:
        chain = []
        while typ in self.types:
            chain.append(self.types[typ])
            nxt = self.types[typ].get("type")
            if not nxt:
                break
            typ = nxt
        if not chain:
            return f"unknown type {typ!r}"
        for t in chain:
            if "regex" in t and (not isinstance(v, str) or not re.fullmatch(t["regex"], v)):
                return f"{v!r} does not match the {t['caption']} pattern"
            if "max_len" in t and isinstance(v, str) and len(v) > t["max_len"]:
                return f"{t['caption']} longer than {t['max_len']}"
            if "range" in t and isinstance(v, int) and not t["range"][0] <= v <= t["range"][1]:
                return f"{v!r} outside {t['caption']} range {t['range']}"
            if "values" in t and v not in t["values"]:
                return f"{v!r} not one of {t['values']}"
        base = typ
        if base == "string_t":
            return None if isinstance(v, str) else f"{v!r} is not a string"
        if base in _INT_LIMITS:
            lim = _INT_LIMITS[base]
            ok = isinstance(v, int) and not isinstance(v, bool) and -lim <= v < lim
            return None if ok else f"{v!r} is not a {base}"
        if base == "float_t":
            return None if isinstance(v, int | float) and not isinstance(v, bool) else f"{v!r} is not a number"
        if base == "boolean_t":
            return None if isinstance(v, bool) else f"{v!r} is not a boolean"
        if base == "json_t":
            return None
        return f"the validator does not know primitive {base!r}"

    def _check_observables(self, event: dict, class_name: str, problems: list[str]) -> None:
        for i, ob in enumerate(event.get("observables", [])):
            name = ob.get("name", "")
            values, observable = self._resolve(event, "event", class_name, name.split("."))
            if values is None:
                problems.append(f"observables[{i}].name: {name!r} leads to no attribute")
                continue
            if ob.get("value") not in [v if isinstance(v, str) else json.dumps(v) for v in values]:
                problems.append(f"observables[{i}]: value {ob.get('value')!r} is not at {name!r} ({values!r})")
            if observable is not None and observable != ob.get("type_id"):
                problems.append(f"observables[{i}]: type_id {ob.get('type_id')}, but {name!r} is observable {observable}")

    def _resolve(self, value: Any, kind: str, name: str, parts: list[str]) -> tuple[list | None, int | None]:
        """The values found at a dotted attribute path (arrays spread), and the observable
        type id of the attribute it ends on (None inside free-form JSON)."""
        attrs = self.attrs(kind, name)
        head, rest = parts[0], parts[1:]
        a = attrs.get(head)
        if a is None:
            return None, None
        values = [x for v in _spread(value) if isinstance(v, dict) and head in v for x in _spread(v[head])]
        typ = a.get("type")
        if not rest:
            obs = self.types.get(typ, {}).get("observable") if typ in self.types else self.objects.get(typ, {}).get("observable")
            return values, a.get("observable", obs)
        if typ == "json_t":
            for part in rest:
                values = [x for v in values if isinstance(v, dict) and part in v for x in _spread(v[part])]
            return values, None
        if not isinstance(typ, str) or typ not in self.objects:
            return None, None
        return self._resolve(values, "object", typ, rest)


def _spread(v: Any) -> list:
    return v if isinstance(v, list) else [v]


@cache
def schema() -> OcsfSchema:
    return OcsfSchema.from_tarball(TARBALL)


# -- the validator itself ------------------------------------------------------------------
def _sample() -> dict:
    return to_dict(sample_alerts()["http-host"])


def _set(doc: dict, path: str, value: Any) -> dict:
    *parents, last = path.split(".")
    cur: Any = doc
    for p in parents:
        cur = cur[int(p)] if p.isdigit() else cur[p]
    if value is _DELETE:
        del cur[last]
    else:
        cur[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    "path, value, problem",
    [
        ("finding_info.colour", "red", "finding_info.colour: no such attribute"),
        ("evidences.0.query", {"hostname": "x", "flavour": 1}, "evidences.query.flavour: no such attribute"),
        ("finding_info.uid", _DELETE, "finding_info.uid: required"),
        ("metadata.product", _DELETE, "metadata.product: required"),
        ("severity_id", 7, "severity_id: 7 not in enum"),
        ("severity", "Critical", "severity: 'Critical', the caption of severity_id 4 is 'High'"),
        ("time", "2024-01-01", "time: '2024-01-01' is not a long_t"),
        ("count", True, "count: True is not a integer_t"),
        ("evidences.0.src_endpoint.ip", "198.18.0.300", "does not match the IP Address pattern"),
        ("evidences.0.dst_endpoint.port", 70000, "outside Port range"),
        ("type_uid", 200402, "type_uid: 200402, expected 200401"),
        ("class_name", "Finding", "class_name: 'Finding', expected 'Detection Finding'"),
        ("metadata.version", "1.7.0", "metadata.version"),
        ("metadata.profiles", [], "action_id: belongs to profile 'security_control'"),
        ("metadata.profiles", ["security_control", "nonesuch"], "'nonesuch' is not a profile of detection_finding"),
        ("metadata.profiles", ["security_control", "cloud"], "cloud: required"),  # the profile's own requirement
        ("evidences.0.http_request.http_method", "BREW", "not in enum"),
        ("observables.0.type_id", 2, "but 'evidences.dst_endpoint.hostname' is observable 1"),
        ("observables.0.type", "Domain", "type: 'Domain', the caption of type_id 1 is 'Hostname'"),
        ("observables.1.name", "evidences.src_endpoint.mac", "value '198.18.0.10' is not at"),
        ("observables.1.name", "evidences.nowhere", "leads to no attribute"),
        ("evidences.0.tls", {"sni": "x"}, "evidences.tls.version: required"),
        ("evidences.0.http_request.url", {"hostname": "x"}, "needs at least one of ['url_string', 'path']"),
        ("tags", ["x"], "tags: no such attribute"),
        ("finding_info.types", "update", "finding_info.types: needs an array"),
    ],
)
def test_validator_catches(path, value, problem):
    found = schema().validate(_set(_sample(), path, value))
    assert any(problem in p for p in found), found


def test_schema_resolution():
    s = schema()
    a = s.attrs("event", "detection_finding")
    assert a["class_uid"]["requirement"] == "required"  # from base_event
    assert a["finding_info"]["type"] == "finding_info"  # from finding, typed by the dictionary
    assert a["confidence_id"].get("profile") is None  # detection_finding unties it from security_control
    assert a["action_id"]["profile"] == "security_control"
    assert {"1", "2", "3"} <= set(a["activity_id"]["enum"])  # finding's enum added to base_event's
    assert s.attrs("object", "network_endpoint")["ip"]["type"] == "ip_t"  # via endpoint
    assert s.observable_enum["1"] == "Hostname" and s.observable_enum["2"] == "IP Address"
    assert s.class_by_uid(2004)[0] == "detection_finding"


# -- the records ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_every_record_validates(kind):
    event = json.loads(format_alert(sample_alerts()[kind]))
    assert schema().validate(event) == []


@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_golden(kind):
    golden_check(f"ocsf-{kind}.json", format_alert(sample_alerts()[kind]))


def test_record_fields():
    ev = json.loads(format_alert(sample_alerts()["dns-answer"]))
    assert (ev["class_uid"], ev["category_uid"], ev["type_uid"], ev["activity_id"]) == (2004, 2, 200401, 1)
    assert ev["metadata"]["version"] == OCSF_VERSION == "1.8.0"
    assert ev["severity_id"] == 4 and ev["time"] == 1_700_000_000_250
    assert ev["finding_info"]["analytic"] == {
        "uid": "1610004", "name": "Kaspersky update server downloads.upd.kaspersky.com",
        "type_id": 1, "type": "Rule", "category": "update",
    }  # fmt: skip
    e = ev["evidences"][0]
    assert e["query"] == {"hostname": "updates.example.net", "type": "A", "packet_uid": 2}
    assert e["data"]["matched_hostname"] == "downloads.upd.kaspersky.com"
    assert e["src_endpoint"] == {"ip": "198.18.0.10", "port": 40001}
    assert ev["device"]["ip"] == "198.18.0.10"
    assert {o["value"] for o in ev["observables"]} == {"downloads.upd.kaspersky.com", "198.18.0.10", "198.18.0.1"}
    http = json.loads(format_alert(sample_alerts()["http-host"]))
    assert http["count"] == 12 and http["end_time"] - http["start_time"] == 3_599_750
    assert http["evidences"][0]["http_request"]["url"]["url_string"] == "http://touch.kaspersky.com/api/v1/touch?id=42"


def test_other_evidence_kinds():
    a = sample_alerts()
    cert = to_dict(a["tls-certificate"])
    assert cert["severity_id"] == 3  # a high signature on weak evidence: one step lower
    e = cert["evidences"][0]
    assert e["tls"] == {"version": "TLS 1.2"} and e["dst_endpoint"]["hostname"] == "crl.kaspersky.com"
    assert e["data"]["certificate_names"] == ["crl.kaspersky.com", "*.kaspersky.com"]
    quic = to_dict(a["quic-sni"])["evidences"][0]
    assert quic["tls"] == {"version": "TLS 1.3", "sni": "dc1.ksn.kaspersky-labs.com"}
    assert quic["connection_info"]["protocol_name"] == "udp"
    port = to_dict(a["ksc-port"])
    assert "hostname" not in port["evidences"][0]["dst_endpoint"]
    assert {"name": "evidences.dst_endpoint.port", "type_id": 11, "type": "Port", "value": "13000"} in port["observables"]
    assert all(o["type_id"] != 1 for o in port["observables"])
    assert port["confidence_id"] == 3  # the detector's own confidence for a port seen with TLS


def test_finding_uid_is_stable_and_distinct():
    a = sample_alerts()
    uids = {k: to_dict(v)["finding_info"]["uid"] for k, v in a.items()}
    assert len(set(uids.values())) == len(uids)
    assert to_dict(sample_alerts()["tls-sni"])["finding_info"]["uid"] == uids["tls-sni"]


@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_values_round_trip(h):
    alerts = hostile_alerts(h)
    raw, h = h, no_surrogates(h)
    assert h == raw or "lone" in raw
    for alert in alerts.values():
        line = format_alert(alert)
        assert all(32 <= c < 127 for c in line[:-1]), "only printable ASCII"
        assert schema().validate(json.loads(line)) == []
    http = json.loads(format_alert(alerts["http"]))
    req = http["evidences"][0]["http_request"]
    assert req["url"]["hostname"] == h and req["user_agent"] == h and req["url"]["url_string"].endswith("/p?" + h)
    assert http["finding_info"]["title"] == "sig " + h
    assert http["unmapped"]["pcap_filename"] == h
    dns = json.loads(format_alert(alerts["dns"]))
    assert dns["evidences"][0]["query"]["hostname"] == h
    assert dns["evidences"][0]["data"]["answers"] == [{"name": h, "type": "CNAME", "ttl": 5, "rdata": h}]
    assert json.loads(format_alert(alerts["tls"]))["evidences"][0]["tls"]["sni"] == h
    cert = json.loads(format_alert(alerts["cert"]))["evidences"][0]
    assert cert["data"]["certificate_subject"] == "CN=" + h and cert["dst_endpoint"]["hostname"] == h
    learned = json.loads(format_alert(alerts["learned"]))["evidences"][0]
    assert learned["data"]["resolved_by"] == "DNS answer for " + h
