"""Zeek logs -> ``LogEvent``s: ``dns.log``, ``ssl.log``, ``http.log``, ``conn.log``.

Both writers: the default ASCII (TSV) writer, whose header lines (``#separator``,
``#set_separator``, ``#empty_field``, ``#unset_field``, ``#path``, ``#fields``) say how to
read it (``\\xNN`` escapes undone; ``-`` is unset, ``(empty)`` an empty set), and the JSON
writer (``LogAscii::use_json``: one object a line, ``id.orig_h``-style keys; the log is
told by ``_path`` when present, else by its fields).  Other logs are counted and ignored.

A ``dns.log`` line is one transaction: the query, then (when it has an rcode or answers)
the response.  Zeek does not log each answer's type: an address is an A/AAAA record,
anything else a name the answer points at (a CNAME target).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from typing import Any

from ...parsers.dns import DnsMessage, answer_of, question_of
from . import LogEvent, LogStats, content
from .eve import address, parse_ts

PROTO = {"tcp": 6, "udp": 17}
_ESC = re.compile(rb"\\x([0-9a-fA-F]{2})")
LOGS = ("dns", "ssl", "http", "conn")


def _unescape(b: bytes) -> str:
    return _ESC.sub(lambda m: bytes([int(m.group(1), 16)]), b).decode("utf-8", "backslashreplace")


def _guess_path(rec: dict) -> str:
    p = rec.get("_path")
    if isinstance(p, str):
        return p
    if "qtype_name" in rec or "trans_id" in rec:
        return "dns"
    if "server_name" in rec or "cipher" in rec:
        return "ssl"
    if "method" in rec or "status_code" in rec:
        return "http"
    if "conn_state" in rec or "orig_bytes" in rec:
        return "conn"
    return "unknown"


def read_tsv(path: str, lines: Iterator[tuple[int, bytes | None]], stats: LogStats) -> Iterator[LogEvent]:
    sep, set_sep, empty, unset = b"\t", b",", b"(empty)", b"-"
    fields: list[str] = []
    log = "unknown"
    for n, line in content(path, lines, stats, blank=b""):
        if line.startswith(b"#"):
            key, _, value = line.partition(b" " if line.startswith(b"#separator") else sep)
            if key == b"#separator":
                sep = _ESC.sub(lambda m: bytes([int(m.group(1), 16)]), value.strip()) or b"\t"
            elif key == b"#set_separator":
                set_sep = value
            elif key == b"#empty_field":
                empty = value
            elif key == b"#unset_field":
                unset = value
            elif key == b"#path":
                log = value.decode("ascii", "replace")
            elif key == b"#fields":
                fields = [f.decode("ascii", "replace") for f in value.split(sep)]
            continue
        if not fields:
            stats.bad(path, n, "a record before the #fields header")
            continue
        values = line.split(sep)
        if len(values) != len(fields):
            stats.bad(path, n, f"{len(values)} fields, the header names {len(fields)}")
            continue
        rec: dict[str, Any] = {}
        for name, raw in zip(fields, values, strict=False):
            if raw == unset:
                continue
            if raw == empty:
                rec[name] = []
            elif name in ("answers", "TTLs"):
                rec[name] = [_unescape(x) for x in raw.split(set_sep)]
            else:
                rec[name] = _unescape(raw)
        yield from _record(path, n, log, rec, stats)


def read_json(path: str, lines: Iterator[tuple[int, bytes | None]], stats: LogStats) -> Iterator[LogEvent]:
    for n, line in content(path, lines, stats):
        try:
            rec = json.loads(line)
        except ValueError:
            stats.bad(path, n, "not JSON")
            continue
        if not isinstance(rec, dict):
            stats.bad(path, n, "not a JSON object")
            continue
        yield from _record(path, n, _guess_path(rec), rec, stats)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _record(path: str, n: int, log: str, rec: dict, stats: LogStats) -> Iterator[LogEvent]:
    stats.records[f"zeek-{log}"] += 1
    if log not in LOGS:
        stats.ignored[f"zeek-{log}"] += 1
        return
    ts = parse_ts(_num(rec.get("ts")) if not isinstance(rec.get("ts"), str) or _is_number(rec["ts"]) else rec["ts"])
    client, server = rec.get("id.orig_h"), rec.get("id.resp_h")
    try:
        cport, sport = int(_num(rec.get("id.orig_p"))), int(_num(rec.get("id.resp_p")))
    except (OverflowError, ValueError):
        cport = sport = -1
    proto = PROTO.get(str(rec.get("proto", "tcp" if log in ("ssl", "http") else "")).lower())
    if log == "dns" and proto is None:
        proto = 17
    if ts is None or not isinstance(client, str) or not isinstance(server, str) or proto is None or not (
        0 <= cport <= 65535 and 0 <= sport <= 65535
    ):
        stats.bad(path, n, f"{log} record without a valid ts, id.orig_h/id.resp_h, ports or proto")
        return
    uid = str(rec.get("uid", ""))
    client, server = address(client), address(server)
    if log == "dns":
        yield from _dns(ts, client, cport, server, sport, proto, uid, rec)
    elif log == "ssl":
        fields = {"sni": _str(rec.get("server_name")), "version": _str(rec.get("version")),
                  "subject": _str(rec.get("subject")), "established": _str(rec.get("established")) in ("T", "true", "True")
                  or rec.get("established") is True}
        yield LogEvent("tls", ts, client, cport, server, sport, proto, uid, None, fields)
    elif log == "http":
        fields = {"hostname": _str(rec.get("host")), "url": _str(rec.get("uri")), "http_method": _str(rec.get("method")),
                  "protocol": ("HTTP/" + _str(rec.get("version"))) if rec.get("version") else "",
                  "http_user_agent": _str(rec.get("user_agent")), "status": rec.get("status_code")}
        yield LogEvent("http", ts, client, cport, server, sport, proto, uid, None, fields)
    else:
        service = _str(rec.get("service")).split(",")[0]
        app = {"ssl": "tls", "dns": "dns", "http": "http", "quic": "quic"}.get(service, "failed" if service else "")
        fields = {"app_proto": app, "orig_bytes": _num(rec.get("orig_bytes")), "resp_bytes": _num(rec.get("resp_bytes")),
                  "conn_state": _str(rec.get("conn_state"))}
        yield LogEvent("flow", ts, client, cport, server, sport, proto, uid, None, fields)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _dns(ts: float, client: str, cport: int, server: str, sport: int, proto: int, uid: str, rec: dict) -> Iterator[LogEvent]:
    query, qtype = _str(rec.get("query")), _str(rec.get("qtype_name"))
    ident = int(_num(rec.get("trans_id"))) & 0xFFFF
    questions = (question_of(query, qtype),) if query else ()
    if questions:
        yield LogEvent("dns", ts, client, cport, server, sport, proto, uid,
                       DnsMessage(ident, False, 0, "", 0, questions, ()), {})
    rcode = _str(rec.get("rcode_name"))
    raw_answers: list = rec["answers"] if isinstance(rec.get("answers"), list) else []
    ttls: list = rec["TTLs"] if isinstance(rec.get("TTLs"), list) else []
    if not rcode and not raw_answers:
        return
    answers = []
    owner = query
    for i, a in enumerate(raw_answers[:64]):
        a = str(a)
        ttl = int(_num(ttls[i])) if i < len(ttls) else 0
        try:
            ip = ipaddress.ip_address(a)
            answers.append(answer_of(owner, "AAAA" if ip.version == 6 else "A", ttl, a, None))
        except ValueError:
            target = a.rstrip(".")
            answers.append(answer_of(owner, "CNAME", ttl, a, target or None))
            owner = target or owner
    yield LogEvent("dns", ts, client, cport, server, sport, proto, uid,
                   DnsMessage(ident, True, 0, rcode or "NOERROR", 0x8000, questions, tuple(answers)), {})
