"""IBM QRadar Log Event Extended Format (LEEF 2.0), one record per alert.

``LEEF:2.0|Vendor|Product|Version|EventID|x09|key=value<TAB>key=value...``

LEEF has no escape mechanism at all, so a value is written exactly as it is: a reader gets
back the name that crossed the wire (its bytes as UTF-8, each byte that is not UTF-8
already ``\\xNN`` text), control characters, bidi controls, ``=`` and ``|`` included (a
reader splits a pair at its first ``=``, and the header ends at the sixth ``|``). Only a
lone surrogate, not a character, is never written: it becomes ``\\uDXXX`` text
(``SURROGATES``, as in every format).

What keeps a value from ending its attribute is the delimiter, which LEEF 2.0 declares in
the header of each event (a character or its hex value, ``x09``): ``DELIMITERS`` are the
candidates, tab first (LEEF 1.0's fixed delimiter, so an ordinary record is unchanged),
and each event uses the first one that occurs in none of its values
(``choose_delimiter``). Only when every candidate occurs somewhere in the event's values
(hostile input: a name holding a tab, ``^``, ``~`` and a backtick) is the tab used anyway
and each tab inside a value written as the visible text ``\\x09`` (``FALLBACK_VISIBLE``):
the one place where a LEEF value can differ from what was sent.

A value may hold a raw CR or LF: transports that frame messages (syslog over UDP, or over
TCP/TLS with RFC 6587 octet counting) carry them, and a reader gets the name back exactly.
A line-framed destination (a file, standard output) cannot: ``detector.sinks.file``
writes a CR/LF inside a record as ``\\x0d``/``\\x0a`` there (``one_line``).

Header fields come from the signature YAML and this program (vendor, product, version,
event id), never from the wire; LEEF cannot escape in them, so there control characters,
DEL, C1, U+2028/U+2029 and bidi controls are made visible as ``\\xNN``/``\\uNNNN`` text
(``VISIBLE``) and a ``|`` is written ``\\x7c`` (``HEADER_VISIBLE``).

Keys: the LEEF 2.0 predefined attributes where one fits (``devTime``/``devTimeFormat``,
``cat``, ``sev`` 1-10, ``src``, ``dst``, ``srcPort``, ``dstPort``, ``proto``, ``url``), then
custom camelCase keys. ``sev`` is the alert's level: the signature's, one step lower on
weak evidence, as in the EVE record. ``devTime`` is the first match, in
``DEV_TIME_FORMAT`` (the Java SimpleDateFormat pattern of IBM's LEEF examples; month
names are English whatever the locale). Empty values are left out.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..model import Alert, Evidence
from .common import (
    DNS_KINDS,
    HTTP_KINDS,
    PRODUCT,
    SURROGATES,
    VENDOR,
    VISIBLE,
    app_protocol,
    confidence_level,
    evidence_strength,
    http_url,
    product_version,
    severity_level,
    storm_text,
)

LEEF_VERSION = "2.0"
#: attribute delimiter candidates, in order of preference (tab: LEEF 1.0's, the usual one)
DELIMITERS = ("\t", "^", "~", "`")
DELIMITER = DELIMITERS[0]
DEV_TIME_FORMAT = "MMM dd yyyy HH:mm:ss.SSS zzz"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SEVERITY = {"high": 8, "medium": 5, "low": 3}
PROTO_NAMES = {6: "TCP", 17: "UDP"}
LIST_SEPARATOR = "; "

HEADER_VISIBLE = {**VISIBLE, ord("|"): "\\x7c"}
#: when every candidate occurs in a value: the tab, written as visible text inside values
FALLBACK_VISIBLE = {ord(DELIMITER): "\\x09"}


def dev_time(ts: float) -> str:
    """``DEV_TIME_FORMAT`` in UTC: ``Nov 14 2023 22:13:20.250 UTC``."""
    t = datetime.fromtimestamp(ts, timezone.utc)
    return f"{MONTHS[t.month - 1]} {t:%d %Y %H:%M:%S}.{t.microsecond // 1000:03d} UTC"


def clean_value(value: str) -> str:
    """A value as LEEF carries it: unchanged, but for lone surrogates (never written)."""
    return value.translate(SURROGATES)


def clean_header(value: str) -> str:
    """A header field (configuration, not wire data): controls made visible, ``|`` as ``\\x7c``."""
    return value.translate(HEADER_VISIBLE)


def declaration(delimiter: str) -> str:
    """The header field declaring ``delimiter``, in LEEF 2.0's hex form (``x09``)."""
    return f"x{ord(delimiter):02x}"


def choose_delimiter(values: list[str]) -> tuple[str, bool]:
    """The first of ``DELIMITERS`` in none of ``values`` (already cleaned), and False; when
    every candidate occurs, the first one and True (its occurrences must be made visible)."""
    for d in DELIMITERS:
        if not any(d in v for v in values):
            return d, False
    return DELIMITER, True


def header(alert: Alert, delimiter: str = DELIMITER) -> list[str]:
    """The header fields after ``LEEF:2.0``, uncleaned; the last one declares the delimiter."""
    return [VENDOR, PRODUCT, product_version(), str(alert.signature.id), declaration(delimiter)]


def attributes(alert: Alert) -> list[tuple[str, str]]:
    """The attribute pairs, uncleaned, in output order; empty values already left out."""
    obs = alert.observation
    sig = alert.signature
    d = obs.detail
    ev = obs.evidence
    app = app_protocol(alert)
    pairs: list[tuple[str, str]] = [
        ("devTime", dev_time(alert.first_seen)),
        ("devTimeFormat", DEV_TIME_FORMAT),
        ("cat", sig.category),
        ("sev", str(SEVERITY[severity_level(alert)])),
        ("src", obs.client),
        ("dst", obs.server),
        ("srcPort", str(obs.client_port)),
        ("dstPort", str(obs.server_port)),
        ("proto", PROTO_NAMES.get(obs.proto, str(obs.proto))),
        ("name", sig.name),
        ("hostname", "" if ev == Evidence.PORT else obs.hostname),
        ("evidence", ev.value),
        ("evidenceStrength", evidence_strength(alert)),
        ("appProto", app),
        ("count", str(alert.count)),
        ("lastSeen", dev_time(alert.last_seen)),
        ("matchedPattern", alert.match.pattern),
        ("confidence", confidence_level(alert)),
        ("signatureSeverity", sig.severity),
        ("signatureVendor", sig.vendor),
        ("affectedProducts", LIST_SEPARATOR.join(sig.products)),
        ("productOnly", "true" if sig.product_only else "false"),
        ("sourceRef", sig.source_ref),
        ("sourceGrade", sig.source_grade),
        ("flowId", str(obs.flow_id)),
    ]
    if obs.vlan:
        pairs.append(("vlan", ",".join(str(v) for v in obs.vlan)))
    if ev in DNS_KINDS:
        answers = LIST_SEPARATOR.join(
            " ".join(str(a.get(k, "")) for k in ("rrname", "rrtype", "rdata")) for a in d.get("answers") or ()
        )
        pairs += [
            ("dnsQuery", str(d.get("rrname") or obs.hostname)),
            ("dnsType", str(d.get("rrtype") or "")),
            ("dnsId", str(d["id"]) if isinstance(d.get("id"), int) else ""),
            ("dnsRcode", str(d.get("rcode") or "")),
            ("dnsAnswers", answers),
        ]
        if d.get("truncated"):  # the snaplen cut the message: names read from what was captured
            pairs.append(("truncated", "true"))
    elif ev in HTTP_KINDS or (app == "http" and d.get("url")):
        url = http_url(obs)
        pairs += [
            ("url", url.full or url.original),
            ("httpMethod", str(d.get("http_method") or "")),
            ("httpVersion", str(d.get("protocol") or "")),
            ("userAgent", str(d.get("http_user_agent") or "")),
        ]
    elif app in ("tls", "quic"):
        pairs += [
            ("tlsSni", str(d.get("sni") or "")),
            ("tlsVersion", str(d.get("tls_version" if app == "quic" else "version") or "")),
            ("quicVersion", str(d.get("version") or "") if app == "quic" else ""),
            ("certSubject", str(d.get("subject") or "")),
            ("certNames", LIST_SEPARATOR.join(str(n) for n in d.get("cert_names") or ())),
        ]
    pairs += [
        ("resolvedBy", str(d.get("resolved_by") or "")),
        ("kscAgent", str(d.get("agent") or "") if ev == Evidence.PORT else ""),
        ("kscServer", str(d.get("ksc_server") or "") if ev == Evidence.PORT else ""),
    ]
    if alert.source_file:
        pairs.append(("pcapFile", alert.source_file))
    pairs += storm_text(alert)  # an alert-storm aggregate (storm.py)
    return [(k, v) for k, v in pairs if v]


def format_alert(alert: Alert) -> bytes:
    pairs = [(k, clean_value(v)) for k, v in attributes(alert)]
    delimiter, fallback = choose_delimiter([v for _, v in pairs])
    if fallback:
        pairs = [(k, v.translate(FALLBACK_VISIBLE)) for k, v in pairs]
    head = "|".join(["LEEF:" + LEEF_VERSION, *(clean_header(f) for f in header(alert, delimiter))])
    body = delimiter.join(f"{k}={v}" for k, v in pairs)
    return f"{head}|{body}\n".encode()
