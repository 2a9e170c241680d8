"""OCSF 1.8.0 Detection Finding (class_uid 2004), one JSON object per line.

Checked in ``tests/test_formats_ocsf.py`` by a strict validator that reads the OCSF 1.8.0
schema sources (``tests/fixtures/ref/ocsf-schema-1.8.0-json.tar.gz``): every attribute exists in
its class or object, required ones are present, types, ranges and enums hold, siblings
(``severity`` for ``severity_id`` ...) carry the enum's caption.

Mapping:

- ``activity_id`` 1 (Create), ``status_id`` 1 (New); ``severity_id`` from the alert's level
  (the signature's, one step lower on weak evidence; ``SEVERITY_ID``), ``confidence_id``
  from the signature's confidence (the detector's own for a port signature).
- ``time`` and ``start_time`` are the first match, ``end_time`` the last, in milliseconds;
  ``count`` is the number of matches folded into the alert.
- The ``security_control`` profile is applied (listed in ``metadata.profiles``): a passive
  sensor's ``action_id`` is 3 (Observed), ``disposition_id`` 15 (Detected), and
  ``is_alert`` is true.
- ``finding_info.analytic`` is the signature (a Rule); ``finding_info.uid`` a UUID derived
  from the signature, the client and the first-seen time, the same for the same alert.
- ``device`` is the client: the machine that runs the detected software.
- ``evidences[0]`` holds the protocol record: ``query`` (DNS question), ``tls`` (version,
  SNI), or ``http_request`` (method, URL, user agent), with ``src_endpoint`` (the client),
  ``dst_endpoint`` and ``connection_info`` (flow id, transport; direction Unknown: a span
  port does not know inside from outside). What the evidence object has no attribute for
  goes in ``evidences[0].data`` (free-form JSON): DNS answers, certificate subject and
  names (OCSF's certificate object needs an issuer and serial number we do not keep), the
  QUIC version, the DNS answer that named a learned address, the KSC agent and server.
- When the matched name is the server's (SNI, Host, CONNECT, certificate, learned
  address) it is ``dst_endpoint.hostname``.
- ``observables`` name the matched hostname (type_id 1), both IP addresses (type_id 2)
  and, for a port signature, the port (type_id 11), by the path of the attribute holding
  them.
- What OCSF has no attribute for (signature vendor, products, source reference, matched
  pattern, capture file...) goes in ``unmapped``.

Escaping: ``json.dumps`` with ``ensure_ascii=True`` (control, bidi and all non-ASCII
characters become ``\\uXXXX``), so the record is one printable-ASCII line.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..model import Alert, Evidence
from .common import (
    DNS_KINDS,
    HTTP_KINDS,
    PRODUCT,
    VENDOR,
    app_protocol,
    confidence_level,
    epoch_ms,
    evidence_strength,
    http_url,
    json_line,
    names_server,
    product_version,
    severity_level,
    storm_fields,
)

OCSF_VERSION = "1.8.0"
# A lone surrogate (U+D800-U+DFFF) is no character: json.dumps would write it as a \\uD8xx
# escape that strict JSON readers reject, so it is written as visible text instead.

CATEGORY_UID, CATEGORY_NAME = 2, "Findings"
CLASS_UID, CLASS_NAME = 2004, "Detection Finding"
ACTIVITY_ID, ACTIVITY_NAME = 1, "Create"
STATUS_ID, STATUS = 1, "New"
ACTION_ID, ACTION = 3, "Observed"
DISPOSITION_ID, DISPOSITION = 15, "Detected"
ANALYTIC_TYPE_ID, ANALYTIC_TYPE = 1, "Rule"
DEVICE_TYPE_ID, DEVICE_TYPE = 0, "Unknown"
PROFILES = ("security_control",)
SEVERITY_ID = {"high": (4, "High"), "medium": (3, "Medium"), "low": (2, "Low")}
CONFIDENCE_ID = {"high": (3, "High"), "medium": (2, "Medium"), "low": (1, "Low")}
OBSERVABLE_HOSTNAME = (1, "Hostname")
OBSERVABLE_IP = (2, "IP Address")
OBSERVABLE_PORT = (11, "Port")
DIRECTION_ID, DIRECTION = 0, "Unknown"  # a span port does not know inside from outside
PROTO_NAMES = {6: "tcp", 17: "udp"}
HTTP_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
UID_NAMESPACE = uuid.UUID("6f1b3a52-5c4e-4a7e-9d0c-0b6a1f0e2d11")  # this detector's findings


def finding_uid(alert: Alert) -> str:
    obs = alert.observation
    key = json.dumps([alert.signature.id, obs.client, obs.hostname, obs.evidence.value, epoch_ms(alert.first_seen)])
    return str(uuid.uuid5(UID_NAMESPACE, key))  # json.dumps: ASCII, even for a lone surrogate


def _endpoint(ip: str, port: int, mac: object = None) -> dict[str, Any]:
    return {"ip": ip, "port": port, "mac": str(mac)} if mac else {"ip": ip, "port": port}


def _device(alert: Alert) -> dict[str, Any]:
    """The client: the machine that runs the detected software."""
    d = alert.observation.detail
    dev: dict[str, Any] = {"ip": alert.observation.client, "type_id": DEVICE_TYPE_ID, "type": DEVICE_TYPE}
    if d.get("client_mac"):
        dev["mac"] = str(d["client_mac"])
    if d.get("client_name"):  # from DHCP or a DNS PTR answer
        dev["hostname"] = str(d["client_name"])
    return dev


def _tls(d: dict[str, Any], version_key: str = "version") -> dict[str, Any] | None:
    """OCSF's tls object needs a version; without one the record holds no tls object."""
    if not d.get(version_key):
        return None
    tls: dict[str, Any] = {"version": str(d[version_key])}
    if d.get("sni"):
        tls["sni"] = str(d["sni"])
    return tls


def _http(alert: Alert) -> dict[str, Any]:
    obs = alert.observation
    d = obs.detail
    url = http_url(obs)
    u: dict[str, Any] = {"hostname": url.host, "url_string": url.full or url.original}
    if url.port is not None:
        u["port"] = url.port
    if url.scheme:
        u["scheme"] = url.scheme
    if url.path:
        u["path"] = url.path
    if url.query:
        u["query_string"] = url.query
    req: dict[str, Any] = {"url": u}
    method = str(d.get("http_method") or "")
    if method in HTTP_METHODS:
        req["http_method"] = method
    if d.get("http_user_agent"):
        req["user_agent"] = str(d["http_user_agent"])
    if d.get("protocol"):
        req["version"] = str(d["protocol"])
    return req


def _evidence(alert: Alert) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The evidence artifact, and the observables for what it names."""
    obs = alert.observation
    d = obs.detail
    ev = obs.evidence
    app = app_protocol(alert)
    out: dict[str, Any] = {}
    data: dict[str, Any] = {}
    host_path = "evidences.dst_endpoint.hostname"
    host = obs.hostname
    if ev in DNS_KINDS:
        query: dict[str, Any] = {"hostname": str(d.get("rrname") or obs.hostname)}
        if d.get("rrtype"):
            query["type"] = str(d["rrtype"])
        if isinstance(d.get("id"), int):
            query["packet_uid"] = d["id"]
        out["query"] = query
        host_path, host = "evidences.query.hostname", query["hostname"]
        if ev == Evidence.DNS_ANSWER:
            data["matched_hostname"] = obs.hostname
            data["rcode"] = str(d.get("rcode") or "")
            data["answers"] = [
                {"name": a.get("rrname"), "type": a.get("rrtype"), "ttl": a.get("ttl"), "rdata": a.get("rdata")}
                for a in d.get("answers") or ()
            ]
            host_path, host = "evidences.data.matched_hostname", obs.hostname
    elif ev in HTTP_KINDS or (app == "http" and d.get("url")):
        out["http_request"] = _http(alert)
    elif ev == Evidence.TLS_CERT:
        data["certificate_subject"] = str(d.get("subject") or "")
        data["certificate_names"] = [str(n) for n in d.get("cert_names") or ()]
    elif ev == Evidence.QUIC_SNI or app == "quic":
        data["quic_version"] = str(d.get("version") or "")
    if ev not in DNS_KINDS and ev != Evidence.PORT and not out.get("http_request"):
        tls = _tls(d, "tls_version" if app == "quic" else "version")
        if tls:
            out["tls"] = tls
    if d.get("resolved_by"):
        data["resolved_by"] = str(d["resolved_by"])
    if ev == Evidence.PORT:
        data.update(ksc_agent=str(d.get("agent") or ""), ksc_server=str(d.get("ksc_server") or ""), app_proto=app)
    out["src_endpoint"] = _endpoint(obs.client, obs.client_port, d.get("client_mac"))
    out["dst_endpoint"] = _endpoint(obs.server, obs.server_port, d.get("server_mac"))
    out["connection_info"] = {
        "uid": str(obs.flow_id),
        "protocol_num": obs.proto,
        "protocol_name": PROTO_NAMES.get(obs.proto, str(obs.proto)),
        "direction_id": DIRECTION_ID,
        "direction": DIRECTION,
    }
    observables = [
        {"name": "evidences.src_endpoint.ip", "type_id": OBSERVABLE_IP[0], "type": OBSERVABLE_IP[1], "value": obs.client},
        {"name": "evidences.dst_endpoint.ip", "type_id": OBSERVABLE_IP[0], "type": OBSERVABLE_IP[1], "value": obs.server},
    ]
    if ev == Evidence.PORT:
        port = {"name": "evidences.dst_endpoint.port", "type_id": OBSERVABLE_PORT[0], "type": OBSERVABLE_PORT[1]}
        observables.append(dict(port, value=str(obs.server_port)))  # observable values are strings
    else:
        if names_server(alert):  # TLS, QUIC, HTTP, certificate, learned address: the server's name
            out["dst_endpoint"]["hostname"] = obs.hostname
        name = {"name": host_path, "type_id": OBSERVABLE_HOSTNAME[0], "type": OBSERVABLE_HOSTNAME[1]}
        observables.insert(0, dict(name, value=host))
    data = {k: v for k, v in data.items() if v not in ("", [])}
    if data:
        out["data"] = data
    return out, observables


def to_dict(alert: Alert) -> dict[str, Any]:
    obs = alert.observation
    sig = alert.signature
    severity_id, severity = SEVERITY_ID[severity_level(alert)]
    confidence_id, confidence = CONFIDENCE_ID[confidence_level(alert)]
    evidence, observables = _evidence(alert)
    first, last = epoch_ms(alert.first_seen), epoch_ms(alert.last_seen)
    analytic: dict[str, Any] = {
        "uid": str(sig.id),
        "name": sig.name,
        "type_id": ANALYTIC_TYPE_ID,
        "type": ANALYTIC_TYPE,
        "category": sig.category,
    }
    info: dict[str, Any] = {
        "uid": finding_uid(alert),
        "title": sig.name,
        "types": [sig.category],
        "analytic": analytic,
        "first_seen_time": first,
        "last_seen_time": last,
    }
    if sig.note:
        info["desc"] = sig.note
    urls = [u for u in sig.source_urls if u.startswith(("https://", "http://"))]
    if urls:
        info["src_url"] = urls[0]
    unmapped: dict[str, Any] = {
        "evidence": obs.evidence.value,
        "evidence_strength": evidence_strength(alert),
        "matched_pattern": alert.match.pattern,
        "signature_vendor": sig.vendor,
        "affected_products": list(sig.products),
        "product_only": sig.product_only,
        "source_ref": sig.source_ref,
        "source_grade": sig.source_grade,
        "source_urls": list(sig.source_urls),
        "flow_id": obs.flow_id,
    }
    if obs.detail.get("truncated"):  # the snaplen cut the message: names read from what was captured
        unmapped["truncated"] = True
    if obs.vlan:
        unmapped["vlan"] = list(obs.vlan)
    if obs.detail.get("client_name"):
        unmapped["client_hostname_source"] = str(obs.detail.get("client_name_source") or "")
    if alert.source_file:
        unmapped["pcap_filename"] = alert.source_file
    for key, val in storm_fields(alert):  # an alert-storm aggregate (storm.py)
        unmapped[key] = val if isinstance(val, list) else int(val) if val.isdigit() else val
    return {
        "activity_id": ACTIVITY_ID,
        "activity_name": ACTIVITY_NAME,
        "category_uid": CATEGORY_UID,
        "category_name": CATEGORY_NAME,
        "class_uid": CLASS_UID,
        "class_name": CLASS_NAME,
        "type_uid": CLASS_UID * 100 + ACTIVITY_ID,
        "type_name": f"{CLASS_NAME}: {ACTIVITY_NAME}",
        "severity_id": severity_id,
        "severity": severity,
        "confidence_id": confidence_id,
        "confidence": confidence,
        "status_id": STATUS_ID,
        "status": STATUS,
        "action_id": ACTION_ID,
        "action": ACTION,
        "disposition_id": DISPOSITION_ID,
        "disposition": DISPOSITION,
        "is_alert": True,
        "time": first,
        "start_time": first,
        "end_time": last,
        "count": alert.count,
        "message": f"{sig.name}: {obs.hostname} ({obs.evidence.value}) from {obs.client}",
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": PRODUCT, "vendor_name": VENDOR, "version": product_version()},
            "profiles": list(PROFILES),
        },
        "finding_info": info,
        "device": _device(alert),
        "evidences": [evidence],
        "observables": observables,
        "unmapped": unmapped,
    }


def format_alert(alert: Alert) -> bytes:
    return json_line(to_dict(alert))
