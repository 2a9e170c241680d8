"""One alert as the inventory sees it: a ``Contact``, made from an in-process ``Alert`` or
from one line of an alert file we wrote (Suricata EVE, ECS or OCSF JSON; told apart per
line).  Pure: no I/O.  Every string here came from the wire or from a file and is
untrusted: the renderers escape it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..model import Alert

STRENGTHS = {"weak": 1, "completed": 2, "strong": 3}
STRENGTH_LABEL = {v: k for k, v in STRENGTHS.items()}
MAX_FIELD = 512  # longest string kept from a record (a DNS name is at most 253)
MAX_PRODUCTS = 16
MAX_TIME = 253402300800.0  # 10000-01-01: beyond it no date can be shown


@dataclass(frozen=True, slots=True)
class Contact:
    """What one alert says about one internal host."""

    client: str
    server: str
    server_port: int
    proto: str  # tcp / udp
    endpoint: str  # the Kaspersky name matched, or tcp/13000 for a port signature
    sid: int
    signature: str
    category: str
    products: tuple[str, ...]
    product_only: bool
    evidence: str  # dns-query, tls-sni, ksc-port ...
    strength: int  # 1 weak, 2 completed, 3 strong
    count: int
    first: float
    last: float
    client_mac: str = ""
    client_name: str = ""
    client_name_source: str = ""  # dhcp / dns-ptr
    agent: str = ""  # Security Center port signatures: which end is the Network Agent
    ksc_server: str = ""
    source_file: str = ""


class NotAnAlert(ValueError):
    """A line that is valid JSON but none of our alert formats (counted, skipped)."""


def from_alert(alert: Alert) -> Contact:
    obs = alert.observation
    sig = alert.signature
    d = obs.detail
    return Contact(
        client=obs.client,
        server=obs.server,
        server_port=obs.server_port,
        proto={6: "tcp", 17: "udp"}.get(obs.proto, str(obs.proto)),
        endpoint=obs.hostname,
        sid=int(sig.id),
        signature=sig.name,
        category=sig.category,
        products=tuple(sig.products),
        product_only=bool(sig.product_only),
        evidence=obs.evidence.value,
        strength=int(alert.strength),
        count=alert.count,
        first=alert.first_seen,
        last=alert.last_seen,
        client_mac=str(d.get("client_mac") or ""),
        client_name=str(d.get("client_name") or ""),
        client_name_source=str(d.get("client_name_source") or ""),
        agent=str(d.get("agent") or ""),
        ksc_server=str(d.get("ksc_server") or ""),
        source_file=alert.source_file or "",
    )


# -- records read back from files -------------------------------------------------------
def _s(v: Any) -> str:
    if isinstance(v, list):
        v = v[0] if v else ""
    if v is None or isinstance(v, (dict, list)):
        return ""
    return str(v)[:MAX_FIELD]


def _int(v: Any, default: int = 0) -> int:
    if isinstance(v, list):
        v = v[0] if v else default
    if isinstance(v, bool):
        return default
    if isinstance(v, int):
        return v
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return default


def _time(v: Any) -> float | None:
    """EVE ``2026-11-28T02:31:07.120391+0000``, RFC 3339 ``...Z``, or epoch milliseconds."""
    if isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        t = float(v) / 1000.0
    else:
        s = str(v)[:64]
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        try:
            t = datetime.fromisoformat(s).timestamp()
        except (ValueError, OverflowError, OSError):
            return None
    return t if math.isfinite(t) and 0 <= t < MAX_TIME else None


def _products(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = v.split("; ")
    if not isinstance(v, list):
        return ()
    return tuple(_s(p) for p in v[:MAX_PRODUCTS] if isinstance(p, str))


def _mac(v: Any) -> str:
    """aa:bb:cc:dd:ee:ff whatever the notation (ECS writes AA-BB-...)."""
    return _s(v).lower().replace("-", ":")


def _d(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


_SHARED = ("server", "proto", "endpoint", "signature", "category", "evidence", "agent", "ksc_server",
           "client_name_source", "source_file")  # fmt: skip
_PRODUCTS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _build(**kw: Any) -> Contact:
    """A contact from a record; its repeated strings are shared (``sys.intern``), so the
    evidence rows an inventory keeps cost what they would from in-process alerts."""
    for k in _SHARED:
        kw[k] = sys.intern(kw[k])
    products = kw["products"]
    kw["products"] = _PRODUCTS.setdefault(products, products) if len(_PRODUCTS) < 4096 else products
    first, last = kw.pop("first"), kw.pop("last")
    if first is None:
        raise NotAnAlert("no time")
    last = first if last is None or last < first else last
    if not kw["client"]:
        raise NotAnAlert("no client address")
    return Contact(first=first, last=last, **kw)


def from_eve(rec: dict[str, Any]) -> Contact:
    a = _d(rec.get("alert"))
    m = _d(a.get("metadata"))
    ether = _d(rec.get("ether"))
    first = _time(m.get("first_seen")) or _time(rec.get("timestamp"))
    return _build(
        client=_s(rec.get("src_ip")),
        server=_s(rec.get("dest_ip")),
        server_port=_int(rec.get("dest_port")),
        proto=_s(rec.get("proto")).lower(),
        endpoint=_s(m.get("hostname")),
        sid=_int(a.get("signature_id")),
        signature=_s(a.get("signature")),
        category=_s(m.get("kaspersky_category")) or _s(a.get("category")),
        products=_products(m.get("affected_product")),
        product_only=_s(m.get("product_only")) == "true",
        evidence=_s(m.get("evidence")),
        strength=STRENGTHS.get(_s(m.get("evidence_strength")), 1),
        count=max(1, _int(m.get("count"), 1)),
        first=first,
        last=_time(m.get("last_seen")),
        client_mac=_mac(ether.get("src_mac")),
        client_name=_s(m.get("client_hostname")),
        client_name_source=_s(m.get("client_hostname_source")),
        agent=_s(m.get("agent")),
        ksc_server=_s(m.get("ksc_server")),
        source_file=_s(rec.get("pcap_filename")),
    )


def from_ecs(rec: dict[str, Any]) -> Contact:
    ev = _d(rec.get("event"))
    rule = _d(rec.get("rule"))
    labels = _d(rec.get("labels"))
    src, dst = _d(rec.get("source")), _d(rec.get("destination"))
    ind = _d(_d(rec.get("threat")).get("indicator"))
    evidence = _s(labels.get("evidence")) or _s(ev.get("action"))
    # related.hosts starts with the matched name (ecs.to_dict), for every evidence but a port.
    related = _d(rec.get("related")).get("hosts")
    endpoint = _s(related) or _s(dst.get("domain")) or _s(ind.get("name"))
    if evidence == "ksc-port":
        endpoint = f"{_s(_d(rec.get('network')).get('transport'))}/{_int(dst.get('port'))}"
    return _build(
        client=_s(src.get("ip")),
        server=_s(dst.get("ip")),
        server_port=_int(dst.get("port")),
        proto=_s(_d(rec.get("network")).get("transport")),
        endpoint=endpoint,
        sid=_int(rule.get("id")),
        signature=_s(rule.get("name")),
        category=_s(rule.get("category")),
        products=_products(labels.get("affected_products")),
        product_only=_s(labels.get("product_only")) == "true",
        evidence=evidence,
        strength=STRENGTHS.get(_s(labels.get("evidence_strength")), 1),
        count=max(1, _int(ind.get("sightings"), 1)),
        first=_time(ev.get("start")) or _time(rec.get("@timestamp")),
        last=_time(ev.get("end")),
        client_mac=_mac(src.get("mac")),
        client_name=_s(src.get("domain")),
        client_name_source=_s(labels.get("client_hostname_source")),
        agent=_s(labels.get("ksc_agent")),
        ksc_server=_s(labels.get("ksc_server")),
        source_file=_s(labels.get("pcap_filename")),
    )


def from_ocsf(rec: dict[str, Any]) -> Contact:
    un = _d(rec.get("unmapped"))
    info = _d(rec.get("finding_info"))
    evs = rec.get("evidences")
    ev0 = _d(evs[0]) if isinstance(evs, list) and evs else {}
    src, dst = _d(ev0.get("src_endpoint")), _d(ev0.get("dst_endpoint"))
    data = _d(ev0.get("data"))
    device = _d(rec.get("device"))
    evidence = _s(un.get("evidence"))
    endpoint = _s(dst.get("hostname")) or _s(data.get("matched_hostname"))
    endpoint = endpoint or _s(_d(ev0.get("query")).get("hostname"))
    if evidence == "ksc-port":
        endpoint = f"{_s(_d(ev0.get('connection_info')).get('protocol_name'))}/{_int(dst.get('port'))}"
    return _build(
        client=_s(src.get("ip")) or _s(device.get("ip")),
        server=_s(dst.get("ip")),
        server_port=_int(dst.get("port")),
        proto=_s(_d(ev0.get("connection_info")).get("protocol_name")),
        endpoint=endpoint,
        sid=_int(_d(info.get("analytic")).get("uid")),
        signature=_s(info.get("title")),
        category=_s(_d(info.get("analytic")).get("category")),
        products=_products(un.get("affected_products")),
        product_only=un.get("product_only") is True,
        evidence=evidence,
        strength=STRENGTHS.get(_s(un.get("evidence_strength")), 1),
        count=max(1, _int(rec.get("count"), 1)),
        first=_time(rec.get("start_time")) or _time(rec.get("time")),
        last=_time(rec.get("end_time")),
        client_mac=_mac(device.get("mac")),
        client_name=_s(device.get("hostname")),
        client_name_source=_s(un.get("client_hostname_source")),
        agent=_s(data.get("ksc_agent")),
        ksc_server=_s(data.get("ksc_server")),
        source_file=_s(un.get("pcap_filename")),
    )


def from_record(rec: Any) -> tuple[str, Contact]:
    """Which format a decoded JSON line is, and its contact; ``NotAnAlert`` otherwise."""
    if not isinstance(rec, dict):
        raise NotAnAlert("not a JSON object")
    if rec.get("event_type") == "alert" and isinstance(rec.get("alert"), dict):
        return "eve", from_eve(rec)
    if isinstance(rec.get("ecs"), dict) and isinstance(rec.get("event"), dict):
        return "ecs", from_ecs(rec)
    if rec.get("class_uid") == 2004:
        return "ocsf", from_ocsf(rec)
    raise NotAnAlert("not an EVE, ECS or OCSF alert")
