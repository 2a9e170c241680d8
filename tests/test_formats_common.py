"""Alerts for the format tests, built directly from model objects, and the properties every
registered format shares: one record per call, one line, terminated by a newline.

The other ``test_formats_*`` modules import ``sample_alerts``, ``hostile_alerts``,
``HOSTILE`` and ``visible`` from here.
"""

from __future__ import annotations

import dataclasses
import os
from functools import cache
from pathlib import Path

import pytest

from detector import __version__
from detector.errors import ConfigError
from detector.formats import FORMATS, get_format
from detector.model import Alert, Evidence, Match, Observation, Strength
from detector.signatures import Signature, load_signatures
from detector.sinks.file import one_line

GOLDEN = Path(__file__).resolve().parent / "golden"
VERSION_MARK = b"@VERSION@"
T0 = 1_700_000_000.25
CLIENT, SERVER = "198.18.0.10", "198.18.0.1"


@cache
def _sigs():
    return load_signatures()


def sig(sid: int) -> Signature:
    return _sigs().by_id(sid)


def make_alert(
    sid: int,
    evidence: Evidence,
    hostname: str,
    detail: dict,
    *,
    client: str = CLIENT,
    server: str = SERVER,
    cport: int = 40000,
    sport: int = 53,
    proto: int = 17,
    pattern: str | None = None,
    count: int = 1,
    first: float = T0,
    last: float | None = None,
    vlan: tuple[int, ...] = (),
    source_file: str | None = None,
    signature: Signature | None = None,
    strength: Strength = Strength.COMPLETED,
) -> Alert:
    obs = Observation(
        ts=first,
        evidence=evidence,
        hostname=hostname,
        client=client,
        server=server,
        client_port=cport,
        server_port=sport,
        proto=proto,
        flow_id=1234567890123456789,
        detail=detail,
        vlan=vlan,
        strength=strength,
    )
    match = Match(obs, signature or sig(sid), pattern or hostname)
    return Alert(match, count, first, first if last is None else last, source_file, strength)


def sample_alerts() -> dict[str, Alert]:
    """One alert of each evidence kind (hand-built, as the pipeline would fill them)."""
    return {
        "dns-query": make_alert(
            1610002, Evidence.DNS_QUERY, "s05.upd.kaspersky.com",
            {"type": "query", "id": 4660, "rrname": "s05.upd.kaspersky.com", "rrtype": "A"},
            count=3, last=T0 + 42.5,
        ),
        "dns-answer": make_alert(
            1610004, Evidence.DNS_ANSWER, "downloads.upd.kaspersky.com",
            {
                "type": "answer", "id": 2, "rrname": "updates.example.net", "rrtype": "A", "rcode": "NOERROR",
                "answers": [
                    {"rrname": "updates.example.net", "rrtype": "CNAME", "ttl": 300, "rdata": "cdn.example.net."},
                    {"rrname": "cdn.example.net", "rrtype": "CNAME", "ttl": 60, "rdata": "downloads.upd.kaspersky.com."},
                    {"rrname": "downloads.upd.kaspersky.com", "rrtype": "A", "ttl": 30, "rdata": "198.18.0.53"},
                ],
            },
            cport=40001,
        ),
        "tls-sni": make_alert(
            1610001, Evidence.TLS_SNI, "activation-v2.kaspersky.com",
            {"sni": "activation-v2.kaspersky.com", "version": "TLS 1.3", "alpn": ["h2", "http/1.1"], "ech": False},
            client="2001:db8::10", server="2001:db8::1", cport=41376, sport=443, proto=6,
            vlan=(100, 7), source_file="pcaps/tls-sni.pcap",
        ),
        "http-host": make_alert(
            1610005, Evidence.HTTP_HOST, "touch.kaspersky.com",
            {
                "url": "/api/v1/touch?id=42", "http_method": "GET", "protocol": "HTTP/1.1",
                "http_user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "hostname": "touch.kaspersky.com",
            },
            cport=41000, sport=80, proto=6, count=12, last=T0 + 3599.75,
        ),
        "http-absolute-uri": make_alert(
            1610009, Evidence.HTTP_URI, "p03.upd.kaspersky.com",
            {
                "url": "http://p03.upd.kaspersky.com/index/u0607g.xml", "http_method": "GET", "protocol": "HTTP/1.1",
                "http_user_agent": None, "hostname": "p03.upd.kaspersky.com",
            },
            cport=41001, sport=8888, proto=6,
        ),
        "http-connect": make_alert(
            1610003, Evidence.HTTP_CONNECT, "cm.k.kaspersky-labs.com",
            {
                "url": "cm.k.kaspersky-labs.com:443", "http_method": "CONNECT", "protocol": "HTTP/1.1",
                "http_user_agent": "KSDE/1.0", "hostname": "cm.k.kaspersky-labs.com",
            },
            cport=41002, sport=8888, proto=6,
        ),
        "tls-certificate": make_alert(
            1610012, Evidence.TLS_CERT, "crl.kaspersky.com",
            {"subject": "CN=crl.kaspersky.com,O=AO Kaspersky Lab", "version": "TLS 1.2",
             "cert_names": ["crl.kaspersky.com", "*.kaspersky.com"]},
            cport=41010, sport=443, proto=6, strength=Strength.WEAK,
        ),
        "quic-sni": make_alert(
            1610013, Evidence.QUIC_SNI, "dc1.ksn.kaspersky-labs.com",
            {"sni": "dc1.ksn.kaspersky-labs.com", "version": "QUICv1", "tls_version": "TLS 1.3",
             "alpn": ["h3"], "ech": False},
            cport=51000, sport=443, proto=17,
        ),
        "ip-from-dns": make_alert(
            1610001, Evidence.DNS_LEARNED, "activation-v2.kaspersky.com",
            {"sni": None, "version": "TLS 1.3", "alpn": [], "ech": True, "app_proto": "tls",
             "resolved_by": "DNS answer to 198.18.0.10 for activation-v2.kaspersky.com"},
            cport=41020, sport=443, proto=6, strength=Strength.WEAK,
        ),
        "ksc-port": make_alert(
            1611001, Evidence.PORT, "tcp/13000",
            {"app_proto": "tls", "agent": "198.18.0.10", "ksc_server": "198.18.0.1",
             "port_confidence": "high", "sni": None},
            cport=41030, sport=13000, proto=6, strength=Strength.STRONG,
        ),
    }  # fmt: skip


LABEL63 = "l" * 63
NAME253 = ".".join([LABEL63, LABEL63, LABEL63, "x" * 61])  # 253 characters
HOSTILE = [
    "a|b=c\\d\"e]f",
    "cr\rlf\nend\r\n",
    "nul\x00esc\x1b[31mred\x1b[0m del\x7f",
    "bidi\u202eevil\u202c lrm\u200e isolate\u2066x\u2069",
    "bad\\xff\\xfeutf8",
    " cs1=injected dhost=evil.example",
    "\tsrc=6.6.6.6\tsev=10",
    '"] [evil@32473 x="y"] ',
    "nel\x85ls\u2028ps\u2029",
    "\\",
    "\\=",
    "=",
    "trailing backslash\\",
    "k=v k2=v2",
    "|||",
    "LEEF:2.0|x|y|1|2|^|cat=evil",
    "caf\u00e9 \u4e2d\u6587 \U0001f600",
    "lone\udcffsurrogate",
    LABEL63 + ".example",
    NAME253,
]
HOSTILE_IDS = [f"h{i}" for i in range(len(HOSTILE))]

_UNSAFE = frozenset([
    *range(0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
    *range(0x202A, 0x202F), *range(0x2066, 0x206A), *range(0xD800, 0xE000),
])  # fmt: skip


def visible(s: str, keep: str = "") -> str:
    """What the CEF and LEEF headers (configuration, never wire data) and the human-facing
    text promise a reader gets back for ``s``: characters that may not be written raw as
    ``\\xNN`` / ``\\uNNNN`` text (an independent restatement of the modules' tables, so a
    change to either shows here)."""
    return "".join(
        c if ord(c) not in _UNSAFE or c in keep else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in s
    )


def no_surrogates(s: str) -> str:
    """What every format promises a reader gets back for a value ``s``, after exactly one
    layer of its own escaping: the same text, but a lone surrogate (not a character; strict
    readers reject it) as visible ``\\uXXXX`` text."""
    return "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) < 0xE000 else c for c in s)


def hostile_alerts(h: str) -> dict[str, Alert]:
    """The hostile string in every wire-derived field of a DNS and an HTTP alert, and in the
    signature's name (configuration, but the header of CEF/LEEF must survive it too)."""
    base = sig(1610005)
    bad_sig = dataclasses.replace(base, name=f"sig {h}", category=f"cat {h}", source_ref=f"ref {h}")
    return {
        "http": make_alert(
            1610005, Evidence.HTTP_HOST, h,
            {"url": "/p?" + h, "http_method": "GET", "protocol": "HTTP/1.1", "http_user_agent": h, "hostname": h},
            cport=41000, sport=80, proto=6, pattern=h, signature=bad_sig, source_file=h,
        ),
        "dns": make_alert(
            1610004, Evidence.DNS_ANSWER, h,
            {
                "type": "answer", "id": 7, "rrname": h, "rrtype": "A", "rcode": "NOERROR",
                "answers": [{"rrname": h, "rrtype": "CNAME", "ttl": 5, "rdata": h}],
            },
        ),
        "tls": make_alert(
            1610001, Evidence.TLS_SNI, h, {"sni": h, "version": "TLS 1.2"}, cport=41376, sport=443, proto=6
        ),
        "cert": make_alert(
            1610012, Evidence.TLS_CERT, h, {"subject": "CN=" + h, "version": "TLS 1.2", "cert_names": [h, "x"]},
            cport=41010, sport=443, proto=6,
        ),
        "learned": make_alert(
            1610001, Evidence.DNS_LEARNED, h,
            {"app_proto": "tls", "version": "TLS 1.3", "sni": h, "resolved_by": "DNS answer for " + h},
            cport=41020, sport=443, proto=6,
        ),
    }  # fmt: skip


def golden_check(name: str, data: bytes) -> None:
    """Compare with ``tests/golden/<name>``; ``UPDATE_GOLDEN=1`` rewrites the file. The
    detector's version is stored as ``@VERSION@`` so a release does not touch every file."""
    path = GOLDEN / name
    stored = data.replace(__version__.encode(), VERSION_MARK)
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stored)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 once and review the file"
    assert stored == path.read_bytes(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 rewrites it)"


# -- properties every registered format shares -------------------------------------------
def test_registry_lists_every_format():
    assert set(FORMATS) == {"eve", "ecs", "cef", "leef", "ocsf"}
    assert get_format("cef") is FORMATS["cef"]


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: cef, ecs, eve, leef, ocsf"):
        get_format("splunk")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_one_line_per_alert(fmt):
    for alert in sample_alerts().values():
        line = FORMATS[fmt](alert)
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
        line.decode("utf-8")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_values_stay_one_record(fmt, h):
    """One record per alert, ending in its newline, strict UTF-8 (no lone surrogate). The
    JSON formats and CEF escape CR and LF, so their record is one line anywhere; LEEF has no
    escape and keeps a raw CR/LF, which a line-framed sink writes as ``\\x0d``/``\\x0a``
    (``one_line``): after that it is one line too, and nothing else changed."""
    for alert in hostile_alerts(h).values():
        record = FORMATS[fmt](alert)
        assert record.endswith(b"\n")
        record.decode("utf-8")  # strict: no lone surrogate, no invalid byte
        line = one_line(record)
        assert line.count(b"\n") == 1 and b"\r" not in line
        if fmt == "leef":
            assert line == record.replace(b"\r", b"\\x0d").replace(b"\n", b"\\x0a")[:-4] + b"\n"
        else:
            assert line == record
        if fmt in ("eve", "ecs", "ocsf"):
            assert all(0x20 <= c < 0x7F for c in record[:-1]), "JSON: not printable ASCII"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_formats_are_pure(fmt):
    a = sample_alerts()["http-host"]
    assert FORMATS[fmt](a) == FORMATS[fmt](a)
