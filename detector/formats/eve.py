"""Suricata EVE JSON (``event_type: alert``), one object per line.

The record has the layout of a Suricata 7 alert (checked key for key, type for type,
against real Suricata 7 with equivalent rules on the bundled captures:
``tests/test_eve_suricata.py``): ``pkt_src``, ``tx_id``, ``direction``, the ``flow``
object (its counters as of the packet that produced the match, ``decode/flowcount.py``),
and the app-layer object as Suricata writes it in an alert (``dns.query: [...]`` for a
query, ``dns.answer`` for a response, ``tls.sni``/``tls.version``, ``quic``, ``http``).
It validates against Suricata's published schemas for 7.0.10 and 8.0.6
(``tests/fixtures/ref/``).  Everything of ours that Suricata has no field for (count,
first/last seen, vendor, evidence, the DNS answer records...) lives in ``alert.metadata``
as lists of strings, Suricata's own convention for rule metadata.

Escaping: ``json.dumps`` with ``ensure_ascii=True``: every non-ASCII and control
character from the wire becomes a ``\\uXXXX`` escape, so a hostile name cannot break the
line, the record, or a terminal.
"""

from __future__ import annotations

import json
from typing import Any

from ..model import Alert, Evidence
from .clock import utc_text
from .common import _ABSOLUTE as ABSOLUTE_URL
from .common import _port as authority_port
from .common import storm_fields

PROTO_NAMES = {6: "TCP", 17: "UDP"}
ENSURE_ASCII = True
SEPARATORS = (",", ":")
GID = 1
REV = 1
PKT_SRC = "wire/pcap"  # what Suricata writes for a packet read from a capture or an interface
UNDETERMINED = "UNDETERMINED"  # Suricata's tls.version when the version is not known
# json.dumps(doc, ensure_ascii=..., separators=...) builds this same encoder on every call.
# A record is a tree built fresh by to_dict (no cycles): the encoder need not look for any.
_ENCODE = json.JSONEncoder(ensure_ascii=ENSURE_ASCII, separators=SEPARATORS, check_circular=False).encode


def timestamp(ts: float) -> str:
    """Suricata's format: 2024-06-24T12:00:00.123456+0000 (always UTC here)."""
    return utc_text(ts, "+0000")


def _dns_flags(d: dict[str, Any]) -> dict[str, Any]:
    """The header of a DNS response as Suricata 7 writes it in an alert's ``dns.answer``
    (Suricata also writes ``aa``/``tc``, which its published 7.0.10 schema does not admit
    there: those two bits are in ``flags`` only)."""
    flags = int(d.get("flags") or 0x8000)
    out: dict[str, Any] = {"flags": f"{flags:x}", "qr": True}
    for name, bit in (("rd", 0x0100), ("ra", 0x0080)):
        if flags & bit:
            out[name] = True
    return out


def _app_record(alert: Alert) -> tuple[str, dict[str, Any]]:
    """The app-layer object of a Suricata 7 alert: ``dns`` (a query as ``query: [...]``,
    a response as ``answer: {...}``), ``tls`` (sni, version), ``quic`` (version, sni),
    ``http`` (the request's fields)."""
    obs = alert.observation
    d = obs.detail
    ev = obs.evidence
    if ev in (Evidence.DNS_QUERY, Evidence.DNS_ANSWER):
        if d.get("type", "query") == "query":
            query = {"type": "query", "id": d.get("id", 0), "rrname": d.get("rrname", obs.hostname),
                     "rrtype": d.get("rrtype") or "", "tx_id": d.get("tx_id", 0), "opcode": d.get("opcode", 0)}
            return "dns", {"version": 2, "query": [query]}
        answer = {"version": 2, "type": "answer", "id": d.get("id", 0), **_dns_flags(d), "opcode": d.get("opcode", 0),
                  "rrname": d.get("rrname", obs.hostname), "rrtype": d.get("rrtype") or "", "rcode": d.get("rcode") or ""}
        return "dns", {"version": 2, "answer": answer}
    if ev in (Evidence.TLS_SNI, Evidence.TLS_CERT, Evidence.QUIC_SNI):
        if ev == Evidence.QUIC_SNI:
            return "quic", {"version": d.get("version") or "", "sni": d.get("sni", obs.hostname)}
        rec: dict[str, Any] = {"subject": d.get("subject", "")} if ev == Evidence.TLS_CERT else {"sni": d.get("sni", obs.hostname)}
        rec["version"] = d.get("version") or UNDETERMINED
        return "tls", rec
    if ev in (Evidence.DNS_LEARNED, Evidence.PORT):
        app = d.get("app_proto") or "failed"
        rec = {}
        if app == "tls":
            if d.get("sni"):
                rec["sni"] = d["sni"]
            rec["version"] = d.get("version") or UNDETERMINED
        elif app == "quic":
            rec = {"version": d.get("version") or "", **({"sni": d["sni"]} if d.get("sni") else {})}
        return app, rec
    rec = {"hostname": d.get("hostname") or obs.hostname}
    for key in ("url", "http_user_agent", "http_method", "protocol"):
        if d.get(key):
            rec[key] = d[key]
    port = _explicit_port(d)
    if port is not None:
        rec["http_port"] = port
    return "http", rec


def _explicit_port(d: dict[str, Any]) -> int | None:
    """The port the request names (CONNECT target, absolute-form URL, else Host header),
    as Suricata's ``http_port``; None when it names none."""
    target = str(d.get("url") or "")
    if d.get("http_method") == "CONNECT":
        authority = target
    else:
        m = ABSOLUTE_URL.match(target)
        authority = m.group(2) if m else str(d.get("host_header") or "")
    return authority_port(authority.rsplit("@", 1)[-1])


def _flow(alert: Alert) -> dict[str, Any] | None:
    f = alert.observation.flow
    if f is None:
        return None
    start, pts, bts, ptc, btc, src, sport, dst, dport = f
    return {"pkts_toserver": pts, "pkts_toclient": ptc, "bytes_toserver": bts, "bytes_toclient": btc,
            "start": timestamp(start), "src_ip": src, "dest_ip": dst, "src_port": sport, "dest_port": dport}


# Detail keys copied into alert.metadata, in this order.
_META_DETAIL = ("ech", "resolved_by", "cert_names", "agent", "ksc_server", "port_confidence", "truncated")
_META_DETAIL_SET = frozenset(_META_DETAIL)


def to_dict(alert: Alert, sensor: str | None = None) -> dict[str, Any]:
    obs = alert.observation
    sig = alert.signature
    app, record = _app_record(alert)
    detail = obs.detail
    first_seen = timestamp(alert.first_seen)
    last_seen = first_seen if alert.last_seen == alert.first_seen else timestamp(alert.last_seen)
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
        "first_seen": [first_seen],
        "last_seen": [last_seen],
    }
    if sig.source_urls:
        meta["source_url"] = list(sig.source_urls)
    answers = detail.get("answers")
    if answers:  # Suricata's alert carries no DNS answer records: ours, one string each
        meta["dns_answers"] = [" ".join(str(a.get(k, "")) for k in ("rrname", "rrtype", "ttl", "rdata")) for a in answers]
    if detail.get("client_name"):  # the client's own name, from DHCP or a DNS PTR answer
        meta["client_hostname"] = [str(detail["client_name"])]
        meta["client_hostname_source"] = [str(detail.get("client_name_source") or "")]
    for key in _META_DETAIL if not _META_DETAIL_SET.isdisjoint(detail) else ():
        val = detail.get(key)
        if val:
            meta[key] = [str(v) for v in val] if isinstance(val, (list, tuple)) else [str(val).lower() if isinstance(val, bool) else str(val)]
    if "port_confidence" in meta:
        meta["confidence"] = meta.pop("port_confidence")
    for key, val in storm_fields(alert):  # an alert-storm aggregate (storm.py)
        meta[key] = val if isinstance(val, list) else [val]
    out: dict[str, Any] = {
        "timestamp": first_seen,
        "flow_id": obs.flow_id,
        "event_type": "alert",
        "src_ip": obs.client,
        "src_port": obs.client_port,
        "dest_ip": obs.server,
        "dest_port": obs.server_port,
        "proto": PROTO_NAMES.get(obs.proto, str(obs.proto)),
        "pkt_src": PKT_SRC,
        "tx_id": int(detail.get("tx_id") or 0),
    }
    if obs.vlan:
        out["vlan"] = list(obs.vlan)
    if detail.get("client_mac"):  # src_ip is the client, so src_mac is the client's
        out["ether"] = {"src_mac": str(detail["client_mac"]), "dest_mac": str(detail.get("server_mac") or "")}
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
    out["app_proto"] = app
    out["direction"] = obs.direction or "to_server"
    flow = _flow(alert)
    if flow is not None:
        out["flow"] = flow
    return out


def format_alert(alert: Alert) -> bytes:
    return _ENCODE(to_dict(alert)).encode("ascii") + b"\n"
