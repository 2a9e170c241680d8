"""ArcSight Common Event Format (CEF:0), one line per alert.

``CEF:0|Vendor|Product|Version|SignatureID|Name|Severity| key=value key=value ...``

Escaping (ArcSight "Implementing ArcSight CEF", rev. 25/26), exactly one layer:

- extension values: only the spec's escapes, ``\\`` -> ``\\\\``, ``=`` -> ``\\=``, CR ->
  ``\\r``, LF -> ``\\n`` (``EXTENSION_ESCAPES``); every other character is written as it is
  (a tab, NUL, ESC, DEL, C1 controls, bidi controls such as U+202E, a ``|``), so a CEF
  reader gets back exactly the name that crossed the wire (its bytes as UTF-8, each byte
  that is not UTF-8 already ``\\xNN`` text). A record never holds a raw CR or LF, so it is
  one line on any transport. The one exception: a lone surrogate is not a character and is
  never written; it becomes ``\\uDXXX`` text (``SURROGATES``, as in every format), whose
  backslash is then escaped like any other;
- header fields: ``\\`` -> ``\\\\`` and ``|`` -> ``\\|`` (``HEADER_ESCAPES``). They come from the
  signature YAML and this program (vendor, product, version, id, name, severity), never
  from the wire, and CEF has no escape for CR/LF in a header, so there control characters,
  DEL, C1, U+2028/U+2029 and bidi controls are first made visible as ``\\xNN``/``\\uNNNN``
  text (``VISIBLE``);
- extension keys are fixed names from the CEF dictionary (letters and digits only).

A reader that works on C strings stops at a NUL: liblognorm (rsyslog's mmnormalize,
``lognormalizer``) returns a value holding a NUL cut short at it. Only DNS can carry a NUL
in a name; the JSON formats and LEEF give it back whole.

Empty values are left out rather than sent as ``key=`` (some parsers, liblognorm among
them, reject an empty last value).

One space separates the header from the first extension pair (``EXTENSION_LEAD``). The
CEF examples show none; but every released liblognorm (rsyslog's mmnormalize, Debian's
2.0.6 included) drops the first character after the last header ``|``
(rsyslog/liblognorm#363, fixed only on its master branch), and ArcSight, Elastic's
``decode_cef`` and liblognorm master all skip spaces before the first key.

Field choices: ``src``/``dst`` carry IPv4 addresses, as the dictionary defines them; an
IPv6 pair goes in ``c6a2``/``c6a3`` ("Source/Destination IPv6 Address", the dictionary's
suggested labels). ``rt``, ``start`` and ``end`` are milliseconds since the epoch
(``rt`` is the first match, as in the EVE record). ``dhost`` is the matched hostname
(for DNS the name looked up, not the resolver; none for a port signature). ``cat`` is
the signature's category; ``cn2`` the evidence strength (1 weak, 2 completed, 3 strong);
``msg`` the DNS answers, the certificate's names, the DNS answer that named a learned
address or the KSC agent and server. Severity 0-10 (``SEVERITY``) from the alert's level:
the signature's, one step lower on weak evidence, as in the EVE record.
"""

from __future__ import annotations

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
    epoch_ms,
    http_url,
    ip_version,
    product_version,
    severity_level,
    storm_fields,
)

CEF_VERSION = "0"
EXTENSION_LEAD = " "
SEVERITY = {"high": 8, "medium": 5, "low": 3}
PROTO_NAMES = {6: "TCP", 17: "UDP"}
LIST_SEPARATOR = "; "

HEADER_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|"})
EXTENSION_ESCAPES = str.maketrans({"\\": "\\\\", "=": "\\=", "\r": "\\r", "\n": "\\n"})


def escape_header(value: str) -> str:
    """A header field (configuration, not wire data): controls made visible, then escaped."""
    return value.translate(VISIBLE).translate(HEADER_ESCAPES)


def escape_value(value: str) -> str:
    """An extension value: the spec's four escapes and nothing else (lone surrogates aside)."""
    return value.translate(SURROGATES).translate(EXTENSION_ESCAPES)


def header(alert: Alert) -> list[str]:
    """The seven header fields, unescaped."""
    sig = alert.signature
    level = str(SEVERITY[severity_level(alert)])
    return ["CEF:" + CEF_VERSION, VENDOR, PRODUCT, product_version(), str(sig.id), sig.name, level]


def extension(alert: Alert) -> list[tuple[str, str]]:
    """The extension pairs, unescaped, in output order; empty values already left out."""
    obs = alert.observation
    sig = alert.signature
    d = obs.detail
    ev = obs.evidence
    pairs: list[tuple[str, str]] = [
        ("rt", str(epoch_ms(alert.first_seen))),
        ("start", str(epoch_ms(alert.first_seen))),
        ("end", str(epoch_ms(alert.last_seen))),
        ("cnt", str(alert.count)),
    ]
    if ip_version(obs.client) == 6 or ip_version(obs.server) == 6:
        pairs += [
            ("c6a2Label", "Source IPv6 Address"), ("c6a2", obs.client),
            ("c6a3Label", "Destination IPv6 Address"), ("c6a3", obs.server),
        ]  # fmt: skip
    else:
        pairs += [("src", obs.client), ("dst", obs.server)]
    app = app_protocol(alert)
    pairs += [
        ("spt", str(obs.client_port)),
        ("dpt", str(obs.server_port)),
        ("proto", PROTO_NAMES.get(obs.proto, str(obs.proto))),
        ("app", app.upper()),
        ("dhost", "" if ev == Evidence.PORT else obs.hostname),
        ("cat", sig.category),
        ("externalId", str(obs.flow_id)),
        ("cs1Label", "Evidence"), ("cs1", ev.value),
        ("cs2Label", "Confidence"), ("cs2", confidence_level(alert)),
        ("cs3Label", "Matched Pattern"), ("cs3", alert.match.pattern),
        ("cs4Label", "Source Reference"), ("cs4", sig.source_ref),
        ("cs5Label", "Affected Products"), ("cs5", LIST_SEPARATOR.join(sig.products)),
        ("cn2Label", "Evidence Strength"), ("cn2", str(int(alert.strength))),
    ]  # fmt: skip
    msg = ""
    if ev in DNS_KINDS:
        pairs += [("cs6Label", "DNS Query"), ("cs6", str(d.get("rrname") or obs.hostname))]
        if isinstance(d.get("id"), int):
            pairs += [("cn1Label", "DNS ID"), ("cn1", str(d["id"]))]
        msg = LIST_SEPARATOR.join(
            " ".join(str(a.get(k, "")) for k in ("rrname", "rrtype", "rdata")) for a in d.get("answers") or ()
        )
    elif ev in HTTP_KINDS or (app == "http" and d.get("url")):
        url = http_url(obs)
        pairs += [
            ("request", url.full or url.original),
            ("requestMethod", str(d.get("http_method") or "")),
            ("requestClientApplication", str(d.get("http_user_agent") or "")),
        ]
    elif ev == Evidence.TLS_CERT:
        names = ", ".join(str(n) for n in d.get("cert_names") or ())
        msg = f"certificate subject {d.get('subject') or '-'}; names {names or '-'}"
    elif ev == Evidence.PORT:
        msg = f"KSC agent {d.get('agent') or '-'}, server {d.get('ksc_server') or '-'}"
    if d.get("resolved_by"):
        msg = str(d["resolved_by"])
    if d.get("truncated"):  # the snaplen cut the message: names read from what was captured
        pairs += [("cfp1Label", "Evidence Truncated"), ("cfp1", "1")]
    storm = dict(storm_fields(alert))  # an alert-storm aggregate (storm.py)
    if storm:
        pairs += [("cn3Label", "Storm Distinct Names"), ("cn3", str(storm["storm_distinct_names"]))]
        msg = (f"alert storm: {storm['storm_distinct_names']} more distinct names from this client under this "
               f"signature in {storm['storm_window_seconds']} s; sample: {LIST_SEPARATOR.join(storm['storm_sample_names'])}")
    pairs.append(("msg", msg))
    pairs += [
        ("flexString1Label", "Source Grade"), ("flexString1", sig.source_grade),
        ("flexString2Label", "Capture File"), ("flexString2", alert.source_file or ""),
    ]  # fmt: skip
    out = [(k, v) for k, v in pairs if v]
    # A label without its value would mislabel nothing, but it is noise: drop it too.
    present = {k for k, _ in out}
    return [(k, v) for k, v in out if not k.endswith("Label") or k[: -len("Label")] in present]


def format_alert(alert: Alert) -> bytes:
    magic, *fields = header(alert)
    head = "|".join([magic, *(escape_header(f) for f in fields)])
    ext = " ".join(f"{k}={escape_value(v)}" for k, v in extension(alert))
    return f"{head}|{EXTENSION_LEAD}{ext}\n".encode()
