"""Shared helpers for the benchmark scripts (stdlib + the detector's signature loader).

- ``Patterns``: an independent re-implementation of the signature semantics (exact names,
  label-boundary suffixes, one-label wildcards; case-insensitive; one trailing dot ignored).
  The capture generator uses it to classify the names it sends, the verifier to filter what
  tshark sees.  It deliberately does not use ``detector.matcher`` (the thing under test).
- ``norm_host``: the normalisation the ground truth uses (lower case, no port, no trailing dot).
- ``detector_contacts`` / ``suricata_contacts``: EVE alert files -> set of
  (client_ip, kind, name) contacts, comparable with ``truth.json``.
- ``pcap_stats``: packet count and bytes of a classic pcap file (record headers only).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.path.join(HERE, "_work")
KINDS = ("dns", "tls", "http")

Contact = tuple[str, str, str]  # (client ip, kind, name)


def load_pack(paths: list[str] | None = None):
    """The detector's strict loader (a SignatureSet); the bundled pack by default."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from detector.signatures import load_signatures

    return load_signatures(paths or [os.path.join(REPO, "signatures", "kaspersky.yaml")])


def wildcard_regex(pattern: str, trailing_dot: bool = False) -> str:
    """'ksn-*-geo.kaspersky-labs.com' -> '^ksn-[^.]+-geo\\.kaspersky-labs\\.com$' (the matcher's
    own translation, anchored; optionally allowing one trailing dot)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from detector.signatures import wildcard_regex as source

    return "^" + source(pattern) + ("\\.?" if trailing_dot else "") + "$"


class Patterns:
    """Which names a signature pack matches (any signature; specificity is irrelevant here)."""

    def __init__(self, sigset) -> None:
        self.names: set[str] = set()
        self.suffixes: set[str] = set()
        self.wild: list[re.Pattern[str]] = []
        for sig in sigset:
            self.names.update(sig.names)
            self.suffixes.update(sig.suffixes)
            self.wild.extend(re.compile(wildcard_regex(w)) for w in sig.wildcards)

    def matches(self, name: str) -> bool:
        n = norm_host(name)
        if not n or not n.isascii():
            return False
        if n in self.names:
            return True
        labels = n.split(".")
        for i in range(len(labels)):
            if ".".join(labels[i:]) in self.suffixes:
                return True
        return any(w.match(n) for w in self.wild)


def norm_host(host: str) -> str:
    """Lower case, port removed (``name:8080``, ``[v6]:80``), one trailing dot removed."""
    h = host.strip().lower()
    if h.startswith("["):
        h = h[1:].split("]", 1)[0]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h.endswith("."):
        h = h[:-1]
    return h


def norm_ip(ip: str) -> str:
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def count_lines(path: str) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def load_truth(path: str) -> set[Contact]:
    with open(path) as fh:
        data = json.load(fh)
    return {(norm_ip(c["client"]), c["kind"], c["name"]) for c in data}


def _iter_eve(path: str):
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event_type") == "alert":
                yield rec


# Detector evidence kinds that are a client naming a host (what truth.json records).  Other
# evidence (tls-certificate: a Kaspersky name in a TLS 1.2 server certificate; ip-from-dns;
# ksc-port; quic-sni) is counted separately, not compared: the Suricata rules have no
# equivalent and the capture's ground truth does not describe it.
NAME_EVIDENCE = {"dns-query": "dns", "dns-answer": "dns", "tls-sni": "tls", "http-host": "http",
                 "http-absolute-uri": "http", "http-connect": "http"}


def detector_contacts(path: str, other: dict | None = None) -> set[Contact]:
    """Detector EVE: src_ip is always the client; the matched name is alert.metadata.hostname.

    ``other`` (a dict) receives counts of alerts with other evidence kinds."""
    out: set[Contact] = set()
    for rec in _iter_eve(path):
        kind = rec.get("app_proto")
        md = rec.get("alert", {}).get("metadata", {})
        names = md.get("hostname") or []
        evidence = (md.get("evidence") or [None])[0]
        if evidence is not None and evidence not in NAME_EVIDENCE:
            if other is not None:
                other[evidence] = other.get(evidence, 0) + 1
            continue
        if kind in KINDS and names:
            out.add((norm_ip(rec.get("src_ip", "")), kind, norm_host(names[0])))
    return out


SERVER_PORTS = {53, 80, 443, 8080, 8443}


def _suricata_client(rec: dict) -> str:
    """The client of the flow an alert belongs to.

    Suricata 7 writes the addresses of the packet that triggered the alert; for a DNS
    response or an ACK-triggered stream inspection that packet travels server -> client.
    The ``flow`` object (7.0+: flow.src_ip is the side that opened the flow) is preferred;
    otherwise ``direction``; otherwise the well-known server port.
    """
    flow = rec.get("flow") or {}
    if flow.get("src_ip"):
        return flow["src_ip"]
    if rec.get("direction") == "to_client":
        return rec.get("dest_ip", "")
    if rec.get("src_port") in SERVER_PORTS and rec.get("dest_port") not in SERVER_PORTS:
        return rec.get("dest_ip", "")
    return rec.get("src_ip", "")


def suricata_alert_names(rec: dict) -> list[tuple[str, str]]:
    """(kind, normalised name) pairs an alert carries in its app-layer object."""
    kind = rec.get("app_proto")
    out: list[tuple[str, str]] = []
    if kind == "dns":
        dns = rec.get("dns") or {}
        qs = dns.get("query") or dns.get("queries") or []
        if isinstance(qs, dict):
            qs = [qs]
        for q in qs:
            if isinstance(q, dict) and q.get("rrname"):
                out.append(("dns", norm_host(q["rrname"])))
        if dns.get("rrname"):
            out.append(("dns", norm_host(dns["rrname"])))
    elif kind == "tls":
        sni = (rec.get("tls") or {}).get("sni")
        if sni:
            out.append(("tls", norm_host(sni)))
    elif kind in ("http", "http1", "http2"):
        host = (rec.get("http") or {}).get("hostname")
        if host:
            out.append(("http", norm_host(host)))
    return out


def suricata_contacts(path: str) -> tuple[set[Contact], int]:
    """Suricata EVE alerts -> contacts; also the number of alerts with no usable name."""
    out: set[Contact] = set()
    unnamed = 0
    for rec in _iter_eve(path):
        pairs = suricata_alert_names(rec)
        if not pairs:
            unnamed += 1
            continue
        client = norm_ip(_suricata_client(rec))
        for kind, name in pairs:
            out.add((client, kind, name))
    return out, unnamed


def pcap_stats(path: str) -> dict:
    """Packets, captured bytes, wire bytes, first/last timestamp of a classic pcap file."""
    with open(path, "rb") as fh:
        hdr = fh.read(24)
        magic = hdr[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            end = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            end = ">"
        else:
            raise ValueError(f"{path}: not a classic pcap file")
        div = 1e9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e6
        rec = struct.Struct(end + "IIII")
        n = caplen_sum = wire_sum = 0
        first = last = None
        while True:
            h = fh.read(16)
            if len(h) < 16:
                break
            s, frac, incl, orig = rec.unpack(h)
            fh.seek(incl, 1)
            n += 1
            caplen_sum += incl
            wire_sum += orig
            ts = s + frac / div
            if first is None:
                first = ts
            last = ts
    return {
        "packets": n,
        "captured_bytes": caplen_sum,
        "wire_bytes": wire_sum,
        "file_bytes": os.path.getsize(path),
        "duration_s": (last - first) if first is not None else 0.0,
    }
