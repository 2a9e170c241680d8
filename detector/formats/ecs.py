"""Elastic Common Schema 9.x alert documents, one JSON object per line.

Every field name and value type comes from ECS 9.4.0 (``tests/fixtures/ref/ecs-9.4.0-flat.yml``,
checked field by field in ``tests/test_formats_ecs.py``):

- ``event.kind: alert``, ``event.category: [network, intrusion_detection]`` and
  ``event.type: [info]``: a passive sensor neither allowed nor denied anything, and
  ``info`` is the one type both categories expect. ``event.action`` is the evidence kind.
- ``event.severity`` and ``event.risk_score`` use Elastic Security's default risk scores
  (73 high, 47 medium, 21 low), so a bigger number is worse, as Kibana assumes. The level
  is the alert's (``severity_level``): the signature's, one step lower on weak evidence,
  as in the EVE record.
- ECS has no ``event.count``: the number of matches folded into the alert is
  ``threat.indicator.sightings`` (a long), with ``event.start``/``event.end`` and
  ``event.duration`` (nanoseconds) for the window.
- ``threat.indicator.*`` describes the signature's pattern: a ``domain-name`` indicator
  (``port`` for a Kaspersky Security Center port signature).
- ``destination.domain`` is the server's name when the evidence names the server (SNI,
  Host, CONNECT target, certificate, an address learned from a DNS answer).
- What ECS has no field for goes under ``labels.*`` (keyword values only).

Escaping: ``json.dumps`` with ``ensure_ascii=True``: control characters, bidi overrides
and every other non-ASCII character become ``\\uXXXX`` escapes, so the record stays one
printable-ASCII line whatever the wire carried. A lone surrogate (not a character; strict
JSON readers reject its escape) is written as the visible text ``\\udcff`` instead.

The helpers every format shares (times, levels, the HTTP URL) are in ``common.py``.
"""

from __future__ import annotations

from typing import Any

from ..model import Alert, Evidence, Observation
from .common import (
    DNS_KINDS,
    HTTP_KINDS,
    LIST_SEPARATOR,
    PRODUCT,
    VENDOR,
    app_protocol,
    confidence_level,
    evidence_strength,
    http_url,
    ip_version,
    iso_utc,
    json_line,
    names_server,
    pack_name,
    product_version,
    severity_level,
    storm_text,
)

ECS_VERSION = "9.4.0"

MODULE = "kaspersky_detector"
DATASET = "kaspersky_detector.alert"
OBSERVER_TYPE = "ids"
RULE_VERSION = "1"

EVENT_KIND = "alert"
EVENT_CATEGORY = ("network", "intrusion_detection")
EVENT_TYPE = ("info",)
INDICATOR_TYPE = "domain-name"
PORT_INDICATOR_TYPE = "port"
# Elastic Security's default risk scores for its severity levels.
RISK_SCORE = {"high": 73, "medium": 47, "low": 21}
# threat.indicator.confidence expected values.
CONFIDENCE = {"high": "High", "medium": "Medium", "low": "Low"}
TRANSPORT = {6: "tcp", 17: "udp"}

# Suricata's 1..3 scale (Alert.severity_number) as words.



# -- helpers shared by the formats ------------------------------------------------------
# -- the document -------------------------------------------------------------------------
def _dns(obs: Observation) -> tuple[dict[str, Any], list[str], list[str]]:
    d = obs.detail
    rec: dict[str, Any] = {"question": {"name": str(d.get("rrname") or obs.hostname)}}
    if d.get("rrtype"):
        rec["question"]["type"] = str(d["rrtype"])
    if "id" in d:
        rec["id"] = str(d["id"])
    rec["type"] = "answer" if d.get("type") == "answer" else "query"
    if d.get("rcode"):
        rec["response_code"] = str(d["rcode"])
    answers = []
    hosts: list[str] = []
    ips: list[str] = []
    for a in d.get("answers") or ():
        ans: dict[str, Any] = {"name": str(a.get("rrname", ""))}
        if a.get("rrtype"):
            ans["type"] = str(a["rrtype"])
        if isinstance(a.get("ttl"), int):
            ans["ttl"] = a["ttl"]
        if a.get("rdata") is not None:
            ans["data"] = str(a["rdata"])
        answers.append(ans)
        hosts.append(ans["name"])
        if ans.get("type") in ("A", "AAAA") and ip_version(ans.get("data", "")):
            ips.append(ans["data"])
    if answers:
        rec["answers"] = answers
    if ips:
        rec["resolved_ip"] = ips
    return rec, [rec["question"]["name"], *hosts], ips


def _tls(d: dict[str, Any], version_key: str = "version") -> dict[str, Any]:
    tls: dict[str, Any] = {}
    if d.get("sni"):
        tls["client"] = {"server_name": str(d["sni"])}
    version_name = str(d.get(version_key) or "")
    if version_name.startswith("TLS "):
        tls["version_protocol"] = "tls"
        tls["version"] = version_name[4:]
    elif version_name == "SSLv3":
        tls["version_protocol"] = "ssl"
        tls["version"] = "3.0"
    return tls


def _http(obs: Observation, out: dict[str, Any]) -> list[str]:
    d = obs.detail
    url = http_url(obs)
    u: dict[str, Any] = {"original": url.original, "domain": url.host}
    if url.port is not None:
        u["port"] = url.port
    if url.full:
        u["full"] = url.full
        u["scheme"] = url.scheme
    if url.path:
        u["path"] = url.path
    if url.query:
        u["query"] = url.query
    out["url"] = {k: v for k, v in u.items() if v != ""}
    http: dict[str, Any] = {}
    if d.get("http_method"):
        http["request"] = {"method": str(d["http_method"])}
    if str(d.get("protocol") or "").startswith("HTTP/"):
        http["version"] = str(d["protocol"])[5:]
    if http:
        out["http"] = http
    if d.get("http_user_agent"):
        out["user_agent"] = {"original": str(d["http_user_agent"])}
    return [url.host]


def to_dict(alert: Alert) -> dict[str, Any]:
    obs = alert.observation
    sig = alert.signature
    d = obs.detail
    ev = obs.evidence
    level = severity_level(alert)
    is_port = ev == Evidence.PORT
    related_hosts = [] if is_port else [obs.hostname]
    related_ips = [obs.client, obs.server]
    indicator: dict[str, Any] = {
        "type": PORT_INDICATOR_TYPE if is_port else INDICATOR_TYPE,
        "name": alert.match.pattern,
        "confidence": CONFIDENCE.get(confidence_level(alert), "Not Specified"),
        "provider": sig.source_ref,
        "sightings": alert.count,
        "first_seen": iso_utc(alert.first_seen),
        "last_seen": iso_utc(alert.last_seen),
    }
    if is_port:
        indicator["port"] = obs.server_port
    out: dict[str, Any] = {
        "@timestamp": iso_utc(alert.first_seen),
        "ecs": {"version": ECS_VERSION},
        "message": f"{sig.name}: {obs.hostname} ({ev.value}) from {obs.client}",
        "event": {
            "kind": EVENT_KIND,
            "category": list(EVENT_CATEGORY),
            "type": list(EVENT_TYPE),
            "action": ev.value,
            "module": MODULE,
            "dataset": DATASET,
            "severity": RISK_SCORE[level],
            "risk_score": float(RISK_SCORE[level]),
            "start": iso_utc(alert.first_seen),
            "end": iso_utc(alert.last_seen),
            "duration": int(round((alert.last_seen - alert.first_seen) * 1e9)),
        },
        "rule": {
            "id": str(sig.id),
            "name": sig.name,
            "category": sig.category,
            "ruleset": pack_name(sig),
            "version": RULE_VERSION,
        },
        "threat": {"indicator": indicator},
        "source": {"ip": obs.client, "port": obs.client_port},
        "destination": {"ip": obs.server, "port": obs.server_port},
        "network": {
            "transport": TRANSPORT.get(obs.proto, str(obs.proto)),
            "iana_number": str(obs.proto),
            "protocol": app_protocol(alert),
        },
        "observer": {"vendor": VENDOR, "product": PRODUCT, "type": OBSERVER_TYPE, "version": product_version()},
    }
    urls = [u for u in sig.source_urls if u.startswith(("https://", "http://"))]
    if urls:  # source.urls may also hold plain-text citations (a repository and commit)
        out["rule"]["reference"] = urls[0]
    if sig.note:
        out["rule"]["description"] = sig.note
    version = ip_version(obs.client)
    if version:
        out["network"]["type"] = f"ipv{version}"
    if obs.vlan:
        out["network"]["vlan"] = {"id": str(obs.vlan[0])}
        if len(obs.vlan) > 1:
            out["network"]["inner"] = {"vlan": {"id": str(obs.vlan[1])}}
    if names_server(alert):
        out["destination"]["domain"] = obs.hostname
    if d.get("client_name"):  # the client's name, from DHCP or a DNS PTR answer
        out["source"]["domain"] = str(d["client_name"])
    for side, key in (("source", "client_mac"), ("destination", "server_mac")):
        if d.get(key):  # RFC 7042 notation, as ECS asks: 00-00-5E-00-53-23
            out[side]["mac"] = str(d[key]).upper().replace(":", "-")
    if ev in DNS_KINDS:
        out["dns"], hosts, ips = _dns(obs)
        related_hosts += hosts
        related_ips += ips
    elif ev == Evidence.TLS_CERT:
        tls = _tls(d)
        x509: dict[str, Any] = {}
        if d.get("subject"):
            x509["subject"] = {"distinguished_name": str(d["subject"])}
        if d.get("cert_names"):
            x509["alternative_names"] = [str(n) for n in d["cert_names"]]
        if x509:
            tls["server"] = {"x509": x509}
        out["tls"] = tls
    elif ev == Evidence.QUIC_SNI:
        out["tls"] = _tls(d, "tls_version")
    elif ev in HTTP_KINDS or (app_protocol(alert) == "http" and d.get("url")):
        related_hosts += _http(obs, out)
    elif app_protocol(alert) in ("tls", "quic"):
        tls = _tls(d, "tls_version" if app_protocol(alert) == "quic" else "version")
        if tls:
            out["tls"] = tls
    out["related"] = {
        "hosts": list(dict.fromkeys(h for h in related_hosts if h)),
        "ip": list(dict.fromkeys(i for i in related_ips if ip_version(i))),
    }
    labels = {
        "evidence": ev.value,
        "evidence_strength": evidence_strength(alert),
        "signature_vendor": sig.vendor,
        "affected_products": LIST_SEPARATOR.join(sig.products),
        "signature_severity": sig.severity,
        "signature_confidence": sig.confidence,
        "product_only": "true" if sig.product_only else "false",
        "source_grade": sig.source_grade,
        "flow_id": str(obs.flow_id),
        "resolved_by": str(d.get("resolved_by") or ""),
        "ksc_agent": str(d.get("agent") or "") if is_port else "",
        "ksc_server": str(d.get("ksc_server") or "") if is_port else "",
        "quic_version": str(d.get("version") or "") if ev == Evidence.QUIC_SNI else "",
        "ech": "true" if d.get("ech") else "",
        "truncated": "true" if d.get("truncated") else "",  # the snaplen cut the message
        "client_hostname_source": str(d.get("client_name_source") or "") if d.get("client_name") else "",
    }
    if sig.source_urls != tuple(urls[:1]):
        labels["source_urls"] = LIST_SEPARATOR.join(sig.source_urls)
    if alert.source_file:
        labels["pcap_filename"] = alert.source_file
    labels.update(storm_text(alert))  # an alert-storm aggregate (storm.py)
    out["labels"] = {k: v for k, v in labels.items() if v}
    return out


def format_alert(alert: Alert) -> bytes:
    return json_line(to_dict(alert))
