"""Suricata EVE JSON (``event_type: alert``), one object per line.

The record validates against Suricata's published schemas for 7.0.10 and 8.0.6
(``../shared/ref``): the top level admits no keys beyond the schema's, so everything of
ours that Suricata has no field for (count, first/last seen, vendor, evidence...) lives in
``alert.metadata`` as lists of strings, Suricata's own convention for rule metadata.

Escaping: ``json.dumps`` with ``ensure_ascii=True``: every non-ASCII and control
character from the wire becomes a ``\\uXXXX`` escape, so a hostile name cannot break the
line, the record, or a terminal.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ..model import Alert, Evidence

PROTO_NAMES = {6: "TCP", 17: "UDP"}
ENSURE_ASCII = True
SEPARATORS = (",", ":")
GID = 1
REV = 1


def timestamp(ts: float) -> str:
    """Suricata's format: 2024-06-24T12:00:00.123456+0000 (always UTC here)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def _app_record(alert: Alert) -> tuple[str, dict[str, Any]]:
    obs = alert.observation
    d = obs.detail
    ev = obs.evidence
    if ev in (Evidence.DNS_QUERY, Evidence.DNS_ANSWER):
        rec: dict[str, Any] = {"version": 2, "type": d.get("type", "query"), "id": d.get("id", 0)}
        rec["rrname"] = d.get("rrname", obs.hostname)
        if d.get("rrtype"):
            rec["rrtype"] = d["rrtype"]
        if d.get("rcode"):
            rec["rcode"] = d["rcode"]
        if d.get("answers"):
            rec["answers"] = d["answers"]
        return "dns", rec
    if ev in (Evidence.TLS_SNI, Evidence.TLS_CERT, Evidence.QUIC_SNI):
        if ev == Evidence.TLS_CERT:
            rec = {"subject": d.get("subject", "")}
        else:
            rec = {"sni": d.get("sni", obs.hostname)}
        if d.get("version"):
            rec["version"] = d["version"]
        return ("quic" if ev == Evidence.QUIC_SNI else "tls"), rec
    if ev in (Evidence.DNS_LEARNED, Evidence.PORT):
        app = d.get("app_proto") or "failed"
        rec = {}
        if app == "tls" and d.get("sni"):
            rec["sni"] = d["sni"]
        return app, rec
    rec = {"hostname": d.get("hostname") or obs.hostname}
    for key in ("url", "http_method", "protocol", "http_user_agent"):
        if d.get(key):
            rec[key] = d[key]
    rec["http_port"] = obs.server_port
    return "http", rec


def to_dict(alert: Alert, sensor: str | None = None) -> dict[str, Any]:
    obs = alert.observation
    sig = alert.signature
    app, record = _app_record(alert)
    meta: dict[str, list[str]] = {
        "vendor": [sig.vendor],
        "affected_product": list(sig.products),
        "kaspersky_category": [sig.category],
        "confidence": [sig.confidence],
        "signature_severity": [sig.severity],
        "product_only": ["true" if sig.product_only else "false"],
        "evidence": [obs.evidence.value],
        "evidence_strength": [alert.strength.label],
        "hostname": [obs.hostname],
        "matched_pattern": [alert.match.pattern],
        "source_ref": [sig.source_ref],
        "source_grade": [sig.source_grade],
        "count": [str(alert.count)],
        "first_seen": [timestamp(alert.first_seen)],
        "last_seen": [timestamp(alert.last_seen)],
    }
    if sig.source_urls:
        meta["source_url"] = list(sig.source_urls)
    if obs.detail.get("client_name"):  # the client's own name, from DHCP or a DNS PTR answer
        meta["client_hostname"] = [str(obs.detail["client_name"])]
        meta["client_hostname_source"] = [str(obs.detail.get("client_name_source") or "")]
    for key in ("ech", "resolved_by", "cert_names", "agent", "ksc_server", "port_confidence"):
        val = obs.detail.get(key)
        if val:
            meta[key] = [str(v) for v in val] if isinstance(val, (list, tuple)) else [str(val).lower() if isinstance(val, bool) else str(val)]
    if "port_confidence" in meta:
        meta["confidence"] = meta.pop("port_confidence")
    out: dict[str, Any] = {
        "timestamp": timestamp(alert.first_seen),
        "flow_id": obs.flow_id,
        "event_type": "alert",
        "src_ip": obs.client,
        "src_port": obs.client_port,
        "dest_ip": obs.server,
        "dest_port": obs.server_port,
        "proto": PROTO_NAMES.get(obs.proto, str(obs.proto)),
        "app_proto": app,
    }
    if obs.vlan:
        out["vlan"] = list(obs.vlan)
    if obs.detail.get("client_mac"):  # src_ip is the client, so src_mac is the client's
        out["ether"] = {"src_mac": str(obs.detail["client_mac"]), "dest_mac": str(obs.detail.get("server_mac") or "")}
    if alert.source_file:
        out["pcap_filename"] = alert.source_file
    if sensor:
        out["host"] = sensor
    out["alert"] = {
        "action": "allowed",
        "gid": GID,
        "signature_id": sig.id,
        "rev": REV,
        "signature": sig.name,
        "category": sig.category,
        "severity": alert.severity_number,
        "metadata": meta,
    }
    if record or app in ("dns", "tls", "http", "quic"):
        out[app] = record
    return out


def format_alert(alert: Alert) -> bytes:
    return json.dumps(to_dict(alert), ensure_ascii=ENSURE_ASCII, separators=SEPARATORS).encode("ascii") + b"\n"
