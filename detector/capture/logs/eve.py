"""Suricata EVE JSON -> ``LogEvent``s.

Record types used: ``dns`` (log version 2: one record per query and per answer, answers
``detailed`` or ``grouped``; version 3, Suricata 8: ``request``/``response`` with
``queries``/``answers``), ``tls``, ``quic``, ``http``, ``flow``, and ``alert`` (its app-layer
object is read like the record of that protocol, once per transaction: an alert and the
protocol record of the same transaction count once).  Other record types are counted and
ignored.

Direction: Suricata writes every app-layer record (DNS answers too) and every flow with the
flow's initiator, the client, as ``src_ip``.  IPv6 addresses (which Suricata 7 writes in
full, ``2001:0db8:0000:...``) are written the way ``replay`` writes them (RFC 5952).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ...parsers.dns import DnsAnswer, DnsMessage, answer_of, label_text, question_of
from . import LogEvent, LogStats, content

PROTO = {"TCP": 6, "UDP": 17, "6": 6, "17": 17}
_TARGET_TYPES = {"CNAME", "DNAME", "NS", "PTR"}
_LAST_WORD_TYPES = {"MX", "SRV"}
MAX_TXNS = 65536


def sniff(line: bytes) -> str | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    if "event_type" in rec:
        return "eve"
    if "uid" in rec or "id.orig_h" in rec or "_path" in rec:
        return "zeek-json"
    return None


def parse_ts(value: Any) -> float | None:
    """Suricata's ``2024-06-24T12:00:00.123456+0000`` (or any ISO 8601) -> epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    v = value.strip()
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    elif len(v) > 5 and v[-5] in "+-" and v[-4:].isdigit():
        v = v[:-2] + ":" + v[-2:]
    try:
        return datetime.fromisoformat(v).timestamp()
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def address(text: str) -> str:
    """The canonical text of an IP address (IPv6 compressed); anything else unchanged."""
    if ":" not in text:
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _int(v: Any) -> int:
    return v if isinstance(v, int) else 0


def _port(v: Any) -> int:
    return v if isinstance(v, int) and 0 <= v <= 65535 else 0


def _answers(items: Any, grouped: Any) -> list[DnsAnswer]:
    out: list[DnsAnswer] = []
    if isinstance(items, list):
        for a in items:
            if not isinstance(a, dict):
                continue
            rrtype, rdata = _s(a.get("rrtype")), a.get("rdata")
            rdata = rdata if isinstance(rdata, str) else json.dumps(rdata) if rdata is not None else ""
            if rrtype == "AAAA":
                rdata = address(rdata)
            out.append(answer_of(dns_name(_s(a.get("rrname"))), rrtype, _int(a.get("ttl")),
                                 rdata[:512], _target(rrtype, rdata)))
    elif isinstance(grouped, dict):  # "grouped": {"A": ["198.18.0.1"], "CNAME": ["x."]}: no owners or TTLs
        for rrtype, values in grouped.items():
            for rdata in values if isinstance(values, list) else []:
                if isinstance(rdata, str):
                    out.append(answer_of("", _s(rrtype), 0, rdata[:512], _target(_s(rrtype), rdata)))
    return out[:64]


def _target(rrtype: str, rdata: str) -> str | None:
    if rrtype in _TARGET_TYPES:
        return dns_name(rdata.rstrip(".")) or None
    if rrtype in _LAST_WORD_TYPES and rdata.split():
        return dns_name(rdata.split()[-1].rstrip(".")) or None
    return None


_HEX = re.compile(r"\\x([0-9a-fA-F]{2})")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]*")


def dns_name(text: str) -> str:
    """Suricata's rrname (printable text, other bytes as ``\\xNN``) -> the canonical form
    ``replay`` writes (the wire bytes as UTF-8, bytes that are not UTF-8 as ``\\xNN``), so a
    hostile name is the same string whichever way it came."""
    if _PLAIN_NAME.fullmatch(text):
        return text
    raw = bytearray()
    pos = 0
    for m in _HEX.finditer(text):
        raw += text[pos : m.start()].encode("utf-8", "surrogateescape")
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw += text[pos:].encode("utf-8", "surrogateescape")
    return ".".join(label_text(x) for x in bytes(raw).split(b"."))


def dns_message(d: dict) -> tuple[DnsMessage, bool] | None:
    """An EVE ``dns`` object (v2 or v3) -> (message, is_response); None when it holds none."""
    typ = d.get("type")
    ident = _int(d.get("id"))
    if typ in ("query", "request"):
        if isinstance(d.get("queries"), list):
            qs = [question_of(dns_name(_s(q.get("rrname"))), _s(q.get("rrtype"))) for q in d["queries"] if isinstance(q, dict)]
        else:
            qs = [question_of(dns_name(_s(d.get("rrname"))), _s(d.get("rrtype")))]
        qs = [q for q in qs if q.name]
        if not qs:
            return None
        return DnsMessage(ident, False, 0, "", 0, tuple(qs), ()), False
    if typ in ("answer", "response"):
        if isinstance(d.get("queries"), list):
            qs = [question_of(dns_name(_s(q.get("rrname"))), _s(q.get("rrtype"))) for q in d["queries"] if isinstance(q, dict)]
        else:
            qs = [question_of(dns_name(_s(d.get("rrname"))), _s(d.get("rrtype")))] if d.get("rrname") else []
        answers = _answers(d.get("answers"), d.get("grouped"))
        return DnsMessage(ident, True, 0, _s(d.get("rcode")) or "NOERROR", 0x8000, tuple(q for q in qs if q.name),
                          tuple(answers)), True
    return None


# Records always parsed: flows (ports, addresses learned from DNS) and the protocols whose
# records say whether a flow had a host name of its own and whether the server answered.
_ALWAYS = (b'"flow"', b'"tls"', b'"http"', b'"quic"')


class _Seen:
    """Bounded set of the transactions already read (an alert and its protocol record)."""

    def __init__(self, limit: int = MAX_TXNS) -> None:
        self.limit = limit
        self._d: OrderedDict[tuple, None] = OrderedDict()

    def first(self, key: tuple) -> bool:
        if key in self._d:
            return False
        self._d[key] = None
        if len(self._d) > self.limit:
            self._d.popitem(last=False)
        return True


def read(path: str, lines: Iterator[tuple[int, bytes | None]], stats: LogStats,
         anchors: tuple[bytes, ...] | None = None) -> Iterator[LogEvent]:
    """``anchors``: labels (lower case) of which every signature pattern holds one
    (``Matcher.dns_anchors`` without the length byte).  A DNS (or other) record holding
    none of them cannot name anything we match, so it is counted (``prefiltered``) and not
    parsed, at the cost of a byte search; flow, tls, http and quic records are always
    parsed (whether a flow had a host name of its own, whether the server answered).  (So such a record's fields are not
    validated either: only lines that are not one JSON object, or records that could
    match, are reported as malformed.)"""
    seen = _Seen()
    for n, line in content(path, lines, stats):
        # (only a line that looks like one JSON object: anything else is parsed, and counted
        # as malformed, whatever it holds)
        if anchors is not None and line[:1] == b"{" and line.rstrip()[-1:] == b"}" and not any(k in line for k in _ALWAYS):
            low = line.lower()
            if not any(a in low for a in anchors):
                stats.prefiltered += 1
                continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            stats.bad(path, n, f"not JSON ({exc.msg})" if hasattr(exc, "msg") else "not JSON")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("event_type"), str):
            stats.bad(path, n, "not an EVE record (no event_type)")
            continue
        etype = rec["event_type"]
        stats.records[etype] += 1
        try:
            ev = _event(rec, etype, seen)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            stats.bad(path, n, f"{etype} record: {type(exc).__name__}")
            continue
        if ev is None:
            continue
        if isinstance(ev, str):
            if ev == "ignored":
                stats.ignored[etype] += 1
            else:
                stats.bad(path, n, ev)
            continue
        yield ev


def _event(rec: dict, etype: str, seen: _Seen) -> LogEvent | str | None:
    if etype not in ("dns", "tls", "quic", "http", "flow", "alert"):
        return "ignored"
    ts = parse_ts(rec.get("timestamp"))
    src, dst = rec.get("src_ip"), rec.get("dest_ip")
    proto = PROTO.get(str(rec.get("proto", "")).upper())
    if proto is None and isinstance(rec.get("proto"), str):
        return "ignored"  # ICMP, SCTP, ... flows
    if ts is None or not isinstance(src, str) or not isinstance(dst, str) or proto is None:
        return f"{etype} record without a valid timestamp, addresses or proto"
    src, dst = address(src), address(dst)
    sp, dp = _port(rec.get("src_port")), _port(rec.get("dest_port"))
    flow = str(rec.get("flow_id", ""))
    vlan = tuple(v for v in rec.get("vlan", []) if isinstance(v, int)) if isinstance(rec.get("vlan"), list) else ()
    app = etype
    if etype == "alert":
        app = _s(rec.get("app_proto"))
        if app in ("http1", "http2"):
            app = "http"
        if app not in ("dns", "tls", "quic", "http") or not isinstance(rec.get(app), dict):
            return "ignored"
    body = rec.get(app)
    if etype == "flow":
        f: dict = rec["flow"] if isinstance(rec.get("flow"), dict) else {}
        start = parse_ts(f.get("start"))
        fields = {
            "app_proto": _s(rec.get("app_proto")) or "",
            "pkts_toserver": f.get("pkts_toserver", 0), "pkts_toclient": f.get("pkts_toclient", 0),
            "bytes_toserver": f.get("bytes_toserver", 0), "bytes_toclient": f.get("bytes_toclient", 0),
            "state": _s(f.get("state")),
        }
        return LogEvent("flow", start if start is not None else ts, src, sp, dst, dp, proto, flow, None, fields, vlan)
    if not isinstance(body, dict):
        return f"{etype} record without its {app} object"
    if app == "dns":
        if isinstance(body.get("query"), list):  # a v2 alert: {"query": [{...}]}
            items = [q for q in body["query"] if isinstance(q, dict)]
            body = items[0] if items else {}
            body = dict(body, type="query")
        elif etype == "alert" and "queries" in body and "type" not in body:
            body = dict(body, type="request")
        got = dns_message(body)
        if got is None:
            return "ignored"
        msg, response = got
        if not seen.first((flow, "dns", body.get("tx_id", rec.get("tx_id")), response, msg.id)):
            return None
        return LogEvent("dns", ts, src, sp, dst, dp, proto, flow, msg, {}, vlan)
    key = body.get("sni") if app in ("tls", "quic") else rec.get("tx_id")
    if not seen.first((flow, app, key if isinstance(key, (str, int)) else None)):
        return None
    if app in ("tls", "quic"):
        fields = {"sni": _s(body.get("sni")), "version": _s(body.get("version")), "subject": _s(body.get("subject"))}
        return LogEvent(app, ts, src, sp, dst, dp, proto, flow, None, fields, vlan)
    fields = {
        "hostname": _s(body.get("hostname")), "url": _s(body.get("url")), "http_method": _s(body.get("http_method")),
        "protocol": _s(body.get("protocol")), "http_user_agent": _s(body.get("http_user_agent")),
        "status": body.get("status"),
    }
    return LogEvent("http", ts, src, sp, dst, dp, proto, flow, None, fields, vlan)
