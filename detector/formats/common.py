"""Helpers every alert format shares, so each derives a field the same way: times,
severity and confidence levels, the HTTP URL, the signature pack name, and the escaping
tables: lone surrogates (never written by any format) and the visible notation for text a
person reads."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ..model import Alert, Evidence, Observation
from .clock import utc_text

ENSURE_ASCII = True
SEPARATORS = (",", ":")
# A lone surrogate is not a character (strict JSON readers reject its escape): written as text.
SURROGATES = {c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)}
# Control characters, C1, bidi controls and surrogates: made visible as \xNN / \uNNNN text
# where a person reads (terminal summary, detector report) and in the CEF and LEEF headers
# (configuration, no escape for CR/LF there). Values from the wire are never passed
# through it: every format writes them with one layer of its own escaping.
_UNSAFE = [
    *range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
    *range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0xD800, 0xE000),
]  # fmt: skip
VISIBLE = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE}

VENDOR = "kaspersky-traffic-detector"
PRODUCT = "kaspersky-traffic-detector"
LIST_SEPARATOR = "; "
DNS_KINDS = frozenset({Evidence.DNS_QUERY, Evidence.DNS_ANSWER})
HTTP_KINDS = frozenset({Evidence.HTTP_HOST, Evidence.HTTP_URI, Evidence.HTTP_CONNECT})
SEVERITY_LEVEL = {1: "high", 2: "medium", 3: "low"}
_ABSOLUTE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)$", re.DOTALL)
DEFAULT_PORTS = {"http": 80, "https": 443}


def storm_fields(alert: Alert) -> list[tuple[str, str | list[str]]]:
    """An alert-storm aggregate's extra fields (``storm.StormInfo``), the same keys in every
    format; empty for an ordinary alert.  ``storm_sample_names`` is a list (joined with
    ``LIST_SEPARATOR`` by the text formats)."""
    s = alert.storm
    if s is None:
        return []
    return [
        ("storm_distinct_names", str(s.distinct_names)),
        ("storm_distinct_exact", "true" if s.exact else "false"),
        ("storm_sample_names", [str(n) for n in s.sample]),
        ("storm_threshold", str(s.threshold)),
        ("storm_window_seconds", f"{s.window:g}"),
    ]


def storm_text(alert: Alert) -> list[tuple[str, str]]:
    """``storm_fields`` with the sample joined, for the key=value formats."""
    return [(k, v if isinstance(v, str) else LIST_SEPARATOR.join(v)) for k, v in storm_fields(alert)]


def no_surrogates(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.translate(SURROGATES)
    if isinstance(obj, dict):
        return {k: no_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [no_surrogates(v) for v in obj]
    return obj


def json_line(doc: dict[str, Any]) -> bytes:
    """One printable-ASCII JSON line: every non-ASCII or control character escaped."""
    return json.dumps(no_surrogates(doc), ensure_ascii=ENSURE_ASCII, separators=SEPARATORS).encode("ascii") + b"\n"


def iso_utc(ts: float) -> str:
    """RFC 3339 in UTC with microseconds: ``2023-11-14T22:13:20.000000Z``."""
    return utc_text(ts, "Z")


def epoch_ms(ts: float) -> int:
    """Milliseconds since the epoch, rounded (``int()`` would turn .123 into .122)."""
    return int(round(ts * 1000))


def severity_level(alert: Alert) -> str:
    """``high``/``medium``/``low``: the signature's, one step lower on weak evidence
    (``Alert.severity_number``, the scale of the EVE record)."""
    return SEVERITY_LEVEL.get(alert.severity_number, "low")


def confidence_level(alert: Alert) -> str:
    """The signature's confidence; for a port signature the detector's own (TLS seen or not)."""
    return str(alert.observation.detail.get("port_confidence") or alert.signature.confidence)


def app_protocol(alert: Alert) -> str:
    """dns, tls, quic, http; for a flow named by a port or a learned address, what the
    flow spoke (``failed`` when nothing known)."""
    obs = alert.observation
    app = obs.evidence.app_proto
    return str(obs.detail.get("app_proto") or "failed") if app == "flow" else app


def names_server(alert: Alert) -> bool:
    """The matched name is the server's (SNI, Host, certificate, learned address), not a DNS
    name nor a port."""
    return alert.observation.evidence not in DNS_KINDS and alert.observation.evidence != Evidence.PORT


def evidence_strength(alert: Alert) -> str:
    return alert.strength.label


def pack_name(sig: Any) -> str:
    """The signature pack a signature came from: its file name without the extension."""
    return os.path.splitext(os.path.basename(sig.file))[0] if sig.file else ""


def ip_version(addr: str) -> int:
    try:
        return ipaddress.ip_address(addr).version
    except ValueError:
        return 0


def product_version() -> str:
    """This detector's version (imported late: ``detector/__init__`` may import us)."""
    from .. import __version__

    return __version__


@dataclass(frozen=True, slots=True)
class HttpUrl:
    """The pieces of an HTTP request target, as far as they are known."""

    original: str  # the request target as sent
    full: str  # scheme://host[:port]/path?query; "" for CONNECT and asterisk-form
    scheme: str
    host: str
    port: int | None
    path: str
    query: str


def _port(authority: str) -> int | None:
    """The port of ``host:port`` / ``[v6]:port``; None when absent or not a port."""
    tail = authority.rsplit("]", 1)[-1]
    if ":" not in tail:
        return None
    digits = tail.rsplit(":", 1)[1]
    return int(digits) if digits.isdigit() and len(digits) <= 5 and int(digits) <= 65535 else None


def _host(authority: str) -> str:
    """The host of ``[userinfo@]host[:port]`` / ``[v6]:port``, as written."""
    a = authority.rsplit("@", 1)[-1]
    if a.startswith("["):
        close = a.find("]")
        return a[1:close] if close > 0 else a
    return a.rsplit(":", 1)[0] if a.count(":") == 1 else a


def http_url(obs: Observation) -> HttpUrl:
    """Split the request target of an HTTP observation; never raises on hostile text.

    ``host`` is the URL's host: the target's for CONNECT and absolute-form, else the
    observation's (the Host header). The matched hostname is always ``obs.hostname``.
    """
    d = obs.detail
    target = str(d.get("url") or "")
    if obs.evidence == Evidence.HTTP_CONNECT or d.get("http_method") == "CONNECT":
        return HttpUrl(target, "", "", _host(target) or obs.hostname, _port(target), "", "")
    m = _ABSOLUTE.match(target)
    if m:
        scheme, rest = m.group(1).lower(), m.group(3)
        host = _host(m.group(2)) or obs.hostname
        port = _port(m.group(2).rsplit("@", 1)[-1]) or DEFAULT_PORTS.get(scheme)
        full = target
    else:
        # origin-form: the URL the client meant, on the port it sent the request to
        scheme, host, port = "http", obs.hostname, obs.server_port
        rest = target if target.startswith("/") else ""
        netloc = f"[{host}]" if ":" in host else host
        full = f"{scheme}://{netloc}{'' if port == 80 else f':{port}'}{rest}" if rest else ""
    path, _, query = rest.partition("?")
    return HttpUrl(target, full, scheme if full else "", host, port, path, query.split("#", 1)[0])


