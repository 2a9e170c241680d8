"""Suricata rules from the signature set (``detector export suricata``).

One rule per signature, protocol and pattern, on the app-layer sticky buffers ``dns.query``,
``tls.sni``, ``http.host`` and ``quic.sni``:

  exact name   ``content:"s05.upd.kaspersky.com"; nocase; startswith; endswith;``
  suffix       ``dotprefix; content:".upd.kaspersky.com"; nocase; endswith;`` (dotprefix
               puts a '.' before the buffer, so one rule matches the suffix itself and any
               name below it on a label boundary, never ``notupd.kaspersky.com``)
  wildcard     the longest literal piece as the fast pattern, then a pcre (``*`` one or more
               characters inside one label, ``?`` exactly one, as in the matcher)

The matcher ignores one trailing dot; ``tls.sni``, ``quic.sni`` and ``http.host`` keep it,
so TLS, QUIC and HTTP rules have a twin for ``name.`` (DNS names have none).  ``http.host``
is lower-cased by Suricata (which refuses ``nocase`` on it).

Large sets: a signature with more than ``DATASET_THRESHOLD`` exact names (or every one,
with ``--datasets``) gets one rule per protocol on a Suricata *dataset* instead (``to_lowercase;
dataset:isset,kdt-<id>,type string,load kdt-<id>.lst``), the names base64-encoded one a line
as Suricata's string datasets store them, the trailing-dot spelling beside each.

Security Center ports: ``alert tcp|udp any any -> any PORT`` once per flow (a flowbit),
``alert tls`` when the signature requires TLS.

Version 8 (``--suricata-version 8``) adds rules on the names in DNS responses
(``dns.response.rrname``, Suricata 8.0: every record's owner name and the names CNAME, PTR,
MX, NS and SOA records point at), which Suricata 7 has no keyword for.  They also fire on
an answer whose owner is the query name itself, which the matcher reports as dns-query.

sid: ``signature id * 1000 + protocol base + rule number`` (dns 0, tls 200, quic 400,
http 600, dns answers 800, ports 900), so a sid names its signature whatever else the pack
holds.  ``rev`` is 1, or, given the previous export (``--previous FILE``), the previous
rev + 1 for every rule whose text changed.  classtype ``policy-violation`` with
``priority`` from our severity (high 1, medium 2, low 3); ``metadata`` carries the
category, confidence, severity, source reference and grade, and the signature id.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

from ..errors import ConfigError
from ..signatures import Signature, SignatureSet, wildcard_regex
from .common import Bundle, ExportOptions, tar_gz

VERSIONS = (7, 8)
DATASET_THRESHOLD = 64
MAX_HASHSIZE = 262144
SID_MAX = 0xFFFFFFFF
# (app-layer protocol, sticky buffer, sid base, slots, takes nocase, trailing-dot twin)
PROTOCOLS = (
    ("dns", "dns.query", 0, 200, True, False),
    ("tls", "tls.sni", 200, 200, True, True),
    ("quic", "quic.sni", 400, 200, True, True),
    ("http", "http.host", 600, 200, False, True),
)
DNS_ANSWER = ("dns", "dns.response.rrname", 800, 100, True, False)
PORT_BASE, PORT_SLOTS = 900, 100
CLASSTYPE = "policy-violation"
RULES_FILE = "kaspersky.rules"
# msg and metadata are free text from the packs: the characters Suricata's rule parser
# treats specially are escaped (msg) or replaced (metadata values: no ',' or ';').
_MSG_ESCAPE = str.maketrans({'"': '\\"', ";": "\\;", "\\": "\\\\"})
_META_BAD = re.compile(r"[^A-Za-z0-9_.:/+-]+")
_REV = re.compile(r"\brev:(\d+);")
_SID = re.compile(r"\bsid:(\d+);")


def _msg(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).translate(_MSG_ESCAPE)


def _meta(text: str) -> str:
    return _META_BAD.sub("_", text).strip("_") or "none"


def _pcre(pattern: str, dot: bool) -> str:
    return "^" + wildcard_regex(pattern) + ("\\." if dot else "") + "$"


def match_body(kind: str, pattern: str, buffer: str, nocase: bool, dot: bool) -> str:
    """The matching options for one pattern ('names', 'suffixes', 'wildcards')."""
    nc = " nocase;" if nocase else ""
    d = "." if dot else ""
    if kind == "names":
        return f'{buffer}; content:"{pattern}{d}";{nc} startswith; endswith;'
    if kind == "suffixes":
        return f'{buffer}; dotprefix; content:".{pattern}{d}";{nc} endswith;'
    pieces = [p for p in re.split(r"[*?]", pattern) if p]
    fast = max(pieces, key=len)
    last = pattern.endswith(fast)
    content = f'content:"{fast}{d if last else ""}";{nc}' + (" endswith;" if last else "")
    return f'{buffer}; {content} pcre:"/{_pcre(pattern, dot)}/i";'


def dataset_name(sig: Signature) -> str:
    return f"kdt-{sig.id}"


def dataset_lines(sig: Signature) -> bytes:
    """Suricata's string dataset file: one base64 value a line (the name and ``name.``)."""
    out = []
    for n in sig.names:
        out.append(base64.b64encode(n.encode()).decode())
        out.append(base64.b64encode(n.encode() + b".").decode())
    return ("\n".join(out) + "\n").encode()


def _dataset_body(sig: Signature, buffer: str, lower: bool) -> str:
    n = 2 * len(sig.names)
    # Suricata 7's default datasets.limits.single-hashsize is 262144 rows: larger sets
    # chain (a few entries a row), so the rules load with Suricata's configuration unchanged
    hashsize = min(MAX_HASHSIZE, 1 << max(10, (n - 1).bit_length()))
    memcap = max(16, (n * 160) >> 20)
    low = " to_lowercase;" if lower else ""
    return (f"{buffer};{low} dataset:isset,{dataset_name(sig)},type string,load {dataset_name(sig)}.lst,"
            f"memcap {memcap}mb,hashsize {hashsize};")


def _common(sig: Signature, evidence: str) -> str:
    meta = ", ".join(
        f"{k} {_meta(v)}"
        for k, v in (
            ("kdt_signature_id", str(sig.id)),
            ("kdt_category", sig.category),
            ("kdt_confidence", sig.confidence),
            ("kdt_severity", sig.severity),
            ("kdt_evidence", evidence),
            ("kdt_source_ref", sig.source_ref),
            ("kdt_source_grade", sig.source_grade),
        )
    )
    return f"classtype:{CLASSTYPE}; priority:{sig.severity_number}; metadata:{meta};"


def use_datasets(sig: Signature, opts: ExportOptions) -> bool:
    if not sig.names:
        return False
    return opts.datasets if opts.datasets is not None else len(sig.names) > DATASET_THRESHOLD


def _rules_for(sig: Signature, opts: ExportOptions) -> Iterator[tuple[int, str]]:
    if sig.id * 1000 + 999 > SID_MAX:
        raise ConfigError(f"signature {sig.id}: id too large for a Suricata sid (id * 1000 + 999 must be at most {SID_MAX})")
    protos = list(PROTOCOLS) + ([DNS_ANSWER] if opts.suricata_version >= 8 else [])
    evidence = {"dns.query": "dns-query", "tls.sni": "tls-sni", "quic.sni": "quic-sni", "http.host": "http-host",
                "dns.response.rrname": "dns-answer"}
    datasets = use_datasets(sig, opts)
    for app, buffer, base, slots, nocase, twin in protos:
        bodies: list[tuple[str, str]] = []  # (shown pattern, options)
        if datasets:
            bodies.append((f"{len(sig.names)} names", _dataset_body(sig, buffer, lower=buffer != "http.host")))
        for kind in ("names", "suffixes", "wildcards"):
            if kind == "names" and datasets:
                continue
            for pattern in getattr(sig, kind):
                shown = f"*.{pattern}" if kind == "suffixes" else pattern
                for dot in (False, True) if twin else (False,):
                    bodies.append((shown + ("." if dot else ""), match_body(kind, pattern, buffer, nocase, dot)))
        if len(bodies) > slots:
            raise ConfigError(f"signature {sig.id}: {len(bodies)} {app} rules do not fit its {slots} sids; "
                              "export with --datasets (exact names) or split the signature")
        # QUIC: the Initial travels before the flow is established (UDP: a reply seen)
        flow = "" if app == "dns" else "flow:to_server; " if app == "quic" else "flow:established,to_server; "
        for n, (shown, body) in enumerate(bodies):
            msg = _msg(f"KDT {sig.category} {shown} ({evidence[buffer]}) - {sig.name}")
            yield (sig.id * 1000 + base + n,
                   f'alert {app} any any -> any any (msg:"{msg}"; {flow}{body} {_common(sig, evidence[buffer])}')
    for n, (proto, lo, hi) in enumerate(sig.ports):
        port = str(lo) if lo == hi else f"{lo}:{hi}"
        app = "tls" if sig.tls_required and proto == "tcp" else proto
        flow = "flow:established,to_server; " if proto == "tcp" else "flow:to_server; "
        bit = f"kdt.port.{sig.id}"
        msg = _msg(f"KDT {sig.category} {proto}/{port} (ksc-port) - {sig.name}")
        if n >= PORT_SLOTS:
            raise ConfigError(f"signature {sig.id}: more than {PORT_SLOTS} port rules")
        yield (sig.id * 1000 + PORT_BASE + n,
               f'alert {app} any any -> any {port} (msg:"{msg}"; {flow}flowbits:isnotset,{bit}; flowbits:set,{bit}; '
               f"{_common(sig, 'ksc-port')}")


def previous_revs(text: str) -> dict[int, tuple[int, str]]:
    """sid -> (rev, rule text without rev) of an earlier export."""
    out: dict[int, tuple[int, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("alert "):
            continue
        s, r = _SID.search(line), _REV.search(line)
        if s and r:
            out[int(s.group(1))] = (int(r.group(1)), _canon(line))
    return out


def _canon(rule: str) -> str:
    """A rule without its sid and rev, white space collapsed: what a change is judged on."""
    return " ".join(_REV.sub("", _SID.sub("", rule)).split())


def build_rules(sigs: SignatureSet, opts: ExportOptions) -> list[str]:
    if opts.suricata_version not in VERSIONS:
        raise ConfigError(f"--suricata-version {opts.suricata_version}: valid: {', '.join(map(str, VERSIONS))}")
    prev = previous_revs(opts.previous) if opts.previous else {}
    rules = []
    for sig in sigs:
        for sid, text in _rules_for(sig, opts):
            rule = f"{text} sid:{sid}; rev:1;)"
            if sid in prev:
                old_rev, old_text = prev[sid]
                rev = old_rev if old_text == _canon(rule) else old_rev + 1
                rule = f"{text} sid:{sid}; rev:{rev};)"
            rules.append(rule)
    return rules


def export_rules(sigs: SignatureSet, opts: ExportOptions) -> Bundle:
    """``kaspersky.rules``, plus one dataset file per signature whose names go to a dataset."""
    rules = build_rules(sigs, opts)
    files = ", ".join(f.rsplit("/", 1)[-1] for f in sigs.files)
    head = (f"# Kaspersky traffic detector: Suricata {opts.suricata_version} rules from {files}\n"
            f"# {len(rules)} rules for {len(sigs)} signatures. Generated by `detector export suricata`; do not edit.\n")
    if opts.suricata_version < 8:
        head += "# Suricata 7 has no keyword for names in DNS answers (CNAME targets): export for 8 to match them.\n"
    bundle: Bundle = {RULES_FILE: (head + "\n".join(rules) + "\n").encode()}
    for sig in sigs:
        if use_datasets(sig, opts):
            bundle[f"{dataset_name(sig)}.lst"] = dataset_lines(sig)
    return bundle


def export_update_source(sigs: SignatureSet, opts: ExportOptions) -> Bundle:
    """A suricata-update source: a .tar.gz with ``rules/kaspersky.rules`` (and datasets)."""
    inner = {f"rules/{k}": v for k, v in export_rules(sigs, opts).items()}
    return {"kaspersky-rules.tar.gz": tar_gz(inner)}
