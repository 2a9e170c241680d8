"""CEF lines read back by a real CEF parser: liblognorm's ``cef`` field type, run through
Debian's ``lognormalizer`` (package liblognorm-utils), and by a strict reader written here
from the CEF specification (``parse_cef_strict``). Every header field and extension pair
must come back exactly, hostile values included (an extension value is the sent text with
one layer of CEF escaping, nothing more), and no other key may appear.

lognormalizer reads its input as C strings: a line holding a NUL is read only up to it.
Records with a NUL (only DNS carries one) are checked exactly by the strict reader, and
lognormalizer is held to that known limit (it reads them as if cut at the NUL)."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache

import pytest
from test_formats_common import (
    HOSTILE,
    HOSTILE_IDS,
    golden_check,
    hostile_alerts,
    no_surrogates,
    sample_alerts,
    visible,
)

from detector.formats import cef
from detector.model import Alert

RULEBASE = "version=2\nrule=:%cef:cef%\n"
HEADER_NAMES = ("DeviceVendor", "DeviceProduct", "DeviceVersion", "SignatureID", "Name", "Severity")
COMMON_KEYS = {
    "rt", "start", "end", "cnt", "spt", "dpt", "proto", "app", "dhost", "cat", "externalId",
    "cs1Label", "cs1", "cs2Label", "cs2", "cs3Label", "cs3", "cs4Label", "cs4", "cs5Label", "cs5",
    "flexString1Label", "flexString1", "cn2Label", "cn2",
}  # fmt: skip
V4 = {"src", "dst"}
V6 = {"c6a2Label", "c6a2", "c6a3Label", "c6a3"}
DNS = {"cs6Label", "cs6", "cn1Label", "cn1", "msg"}
HTTP = {"request", "requestMethod", "requestClientApplication"}
CAPTURE = {"flexString2Label", "flexString2"}


@cache
def _lognormalizer() -> str:
    exe = shutil.which("lognormalizer")
    if not exe:
        pytest.skip("lognormalizer not installed (apt-get install liblognorm-utils)")
    return exe


def parse_cef(lines: list[bytes], tmp_path_factory) -> list[dict]:
    """Run lognormalizer once over all lines; one parsed object per line, in order."""
    rules = tmp_path_factory.mktemp("lognorm") / "cef.rulebase"
    rules.write_text(RULEBASE)
    out = subprocess.run(
        [_lognormalizer(), "-r", str(rules), "-e", "json"],
        input=b"".join(lines), capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    # split at LF only: str.splitlines() would also split at NEL, U+2028, U+2029 in a value
    parsed = [json.loads(line) for line in out.stdout.split(b"\n") if line]
    assert len(parsed) == len(lines), out.stderr
    return parsed


_UNESCAPE = {"\\": "\\", "=": "=", "r": "\r", "n": "\n"}


class CefError(ValueError):
    pass


def split_header(text: str) -> tuple[list[str], int]:
    """The seven header fields (``CEF:0`` first) split at unescaped ``|``, unescaped
    (``\\\\`` and ``\\|`` only), and the index where the extension begins."""
    fields, cur, i = [], "", 0
    while len(fields) < 7:
        if i >= len(text):
            raise CefError("header has fewer than 7 fields")
        c = text[i]
        if c == "\\":
            if text[i + 1 : i + 2] not in ("\\", "|"):
                raise CefError(f"bad header escape at {i}")
            cur, i = cur + text[i + 1], i + 2
            continue
        if c == "|":
            fields.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    return fields, i


def parse_cef_strict(record: bytes) -> tuple[list[str], dict[str, str]]:
    """CEF by its specification, strictly: one line; seven header fields split at unescaped
    ``|`` (escapes ``\\\\`` and ``\\|`` only); then pairs ``key=value`` separated by a space,
    where a key is letters, digits and ``_`` ending at an unescaped ``=`` (every ``=`` of a
    value is escaped) and a value's escapes are ``\\\\``, ``\\=``, ``\\r``, ``\\n`` only.
    Returns the six header fields after ``CEF:0`` and the extension."""
    if not record.endswith(b"\n") or record.count(b"\n") != 1 or b"\r" in record:
        raise CefError("not exactly one line")
    text = record[:-1].decode("utf-8")  # strict
    fields, i = split_header(text)
    if fields[0] != "CEF:0":
        raise CefError(f"not CEF:0: {fields[0]!r}")
    # the extension: decode escapes, remembering where the unescaped "=" are
    body, keys_at = text[i:].lstrip(" "), []
    chars: list[str] = []
    j = 0
    while j < len(body):
        c = body[j]
        if c == "\\":
            if body[j + 1 : j + 2] not in _UNESCAPE:
                raise CefError(f"bad extension escape {body[j : j + 2]!r}")
            chars.append(_UNESCAPE[body[j + 1]])
            j += 2
            continue
        if c == "=":
            keys_at.append(len(chars))
        chars.append(c)
        j += 1
    ext: dict[str, str] = {}
    starts = []
    for eq in keys_at:  # the key: the word characters right before the "=", after a space
        k = eq
        while k > 0 and (chars[k - 1].isascii() and (chars[k - 1].isalnum() or chars[k - 1] == "_")):
            k -= 1
        if k == eq or (k > 0 and chars[k - 1] != " "):
            raise CefError(f"bad key before '=' at {eq}")
        starts.append((k, eq))
    for n, (k, eq) in enumerate(starts):
        key = "".join(chars[k:eq])
        end = starts[n + 1][0] - 1 if n + 1 < len(starts) else len(chars)
        if key in ext:
            raise CefError(f"duplicate key {key!r}")
        ext[key] = "".join(chars[eq + 1 : end])
    if starts and starts[0][0] != 0:
        raise CefError("text before the first key")
    return fields[1:], ext


def expected(alert: Alert) -> tuple[list[str], dict[str, str]]:
    """What a reader must get back: the module's unescaped fields; header fields
    (configuration) with the characters a header cannot carry made visible, extension
    values exactly as they are (lone surrogates aside: never written)."""
    head = [visible(f) for f in cef.header(alert)[1:]]
    ext = {k: no_surrogates(v) for k, v in cef.extension(alert)}
    return head, ext


def check_round_trip(alert: Alert, parsed: dict) -> dict[str, str]:
    assert "cef" in parsed, f"lognormalizer could not parse it: {parsed}"
    got = parsed["cef"]
    head, ext = expected(alert)
    assert [got[n] for n in HEADER_NAMES] == head
    assert set(got) == {*HEADER_NAMES, "Extensions"}
    assert got["Extensions"] == ext
    assert parse_cef_strict(cef.format_alert(alert)) == (head, ext)
    return got["Extensions"]


# -- the records ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_golden(kind):
    golden_check(f"cef-{kind}.log", cef.format_alert(sample_alerts()[kind]))


def test_samples_round_trip(tmp_path_factory):
    alerts = sample_alerts()
    parsed = parse_cef([cef.format_alert(a) for a in alerts.values()], tmp_path_factory)
    got = {k: check_round_trip(a, p) for (k, a), p in zip(alerts.items(), parsed, strict=True)}
    assert set(got["dns-answer"]) == COMMON_KEYS | V4 | DNS
    assert set(got["tls-sni"]) == COMMON_KEYS | V6 | CAPTURE
    assert set(got["http-host"]) == COMMON_KEYS | V4 | HTTP
    assert set(got["http-absolute-uri"]) == COMMON_KEYS | V4 | HTTP - {"requestClientApplication"}
    q = got["dns-answer"]
    assert (q["src"], q["spt"], q["dst"], q["dpt"]) == ("198.18.0.10", "40001", "198.18.0.1", "53")
    assert (q["dhost"], q["cs6"], q["cn1"], q["cat"]) == ("downloads.upd.kaspersky.com", "updates.example.net", "2", "update")
    assert q["msg"].startswith("updates.example.net CNAME cdn.example.net.; cdn.example.net CNAME downloads.upd")
    assert (q["rt"], q["cnt"]) == ("1700000000250", "1")
    t = got["tls-sni"]
    assert (t["c6a2"], t["c6a3"], t["c6a2Label"]) == ("2001:db8::10", "2001:db8::1", "Source IPv6 Address")
    h = got["http-host"]
    assert h["request"] == "http://touch.kaspersky.com/api/v1/touch?id=42"
    assert (h["cnt"], h["start"], h["end"]) == ("12", "1700000000250", "1700003600000")
    assert got["http-connect"]["request"] == "cm.k.kaspersky-labs.com:443"
    c = got["tls-certificate"]
    assert set(c) == COMMON_KEYS | V4 | {"msg"} and c["cn2"] == "1"
    assert c["msg"] == "certificate subject CN=crl.kaspersky.com,O=AO Kaspersky Lab; names crl.kaspersky.com, *.kaspersky.com"
    assert (got["quic-sni"]["app"], got["quic-sni"]["proto"]) == ("QUIC", "UDP")
    learned = got["ip-from-dns"]
    assert (learned["app"], learned["dhost"]) == ("TLS", "activation-v2.kaspersky.com")
    assert learned["msg"] == "DNS answer to 198.18.0.10 for activation-v2.kaspersky.com"
    port = got["ksc-port"]
    assert "dhost" not in port and (port["cs3"], port["dpt"], port["cs2"], port["cn2"]) == ("tcp/13000", "13000", "high", "3")
    assert port["msg"] == "KSC agent 198.18.0.10, server 198.18.0.1"


def test_weak_evidence_lowers_severity():
    a = sample_alerts()
    assert cef.header(a["tls-certificate"])[6] == "5"  # high signature, weak evidence
    assert cef.header(a["dns-answer"])[6] == "8"


def test_severity_scale():
    assert [cef.SEVERITY[s] for s in ("low", "medium", "high")] == [3, 5, 8]
    assert all(0 <= v <= 10 for v in cef.SEVERITY.values())


def test_escaping_tables():
    assert cef.escape_value("a\\b=c\r\nd|e") == "a\\\\b\\=c\\r\\nd|e"
    assert cef.escape_header("a\\b|c=d") == "a\\\\b\\|c=d"
    assert cef.escape_header("a\nb") == "a\\\\x0ab"  # a header: configuration, controls visible


def test_extension_values_carry_one_layer_only():
    """Only the spec's four escapes: NUL, ESC, TAB, DEL, C1, U+2028 and bidi controls are
    written raw; text that looks like an escape is just escaped text."""
    raw = "nul\x00esc\x1b[31m\ttab del\x7f nel\x85 ls\u2028 bidi\u202eevil\u202c"
    assert cef.escape_value(raw) == raw
    assert cef.escape_value("\\x00 is text") == "\\\\x00 is text"
    assert cef.escape_value("lone\udcff") == "lone\\\\udcff"  # a surrogate is never written


@pytest.mark.parametrize(
    "record, problem",
    [
        (b"CEF:0|a|b|1|2|n|5| k=v\nx\n", "one line"),
        (b"CEF:0|a|b|1|2|n\n", "fewer than 7"),
        (b"CEF:0|a|b\\x|1|2|n|5| k=v\n", "bad header escape"),
        (b"CEF:0|a|b|1|2|n|5| k=a\\tb\n", "bad extension escape"),
        (b"CEF:0|a|b|1|2|n|5| k=v k=w\n", "duplicate key"),
        (b"CEF:0|a|b|1|2|n|5| k=v x.y=w\n", "bad key"),
        (b"CEF:0|a|b|1|2|n|5| junk k=v\n", "before the first key"),
    ],
)
def test_strict_reader_rejects(record, problem):
    with pytest.raises(CefError, match=problem):
        parse_cef_strict(record)


def test_strict_reader_reads():
    assert parse_cef_strict(b"CEF:0|a\\|b|p|1|2|n|5| k=a b\\=c\\\\ j=\x00\\r\\n|\n") == (
        ["a|b", "p", "1", "2", "n", "5"], {"k": "a b=c\\", "j": "\x00\r\n|"})


def test_hostile_values_round_trip(tmp_path_factory):
    cases = [(h, kind, a) for h in HOSTILE for kind, a in hostile_alerts(h).items()]
    records = [cef.format_alert(a) for _, _, a in cases]
    parsed = parse_cef(records, tmp_path_factory)
    # lognormalizer's limit: a line is read as a C string, up to its first NUL
    cut = parse_cef([r.split(b"\x00")[0] + b"\n" for r in records if b"\x00" in r], tmp_path_factory)
    assert cut, "no hostile value holds a NUL"
    for (h, kind, alert), p, record in zip(cases, parsed, records, strict=True):
        if b"\x00" in record:
            assert p == cut.pop(0), (h, kind)
            head, ext = parse_cef_strict(record)
            assert (head, ext) == expected(alert)
        else:
            ext = check_round_trip(alert, p)
            head = [p["cef"][n] for n in HEADER_NAMES]
        v = no_surrogates(h)
        assert ext["dhost"] == v, (h, kind)
        if kind == "http":
            assert set(ext) == COMMON_KEYS | V4 | HTTP | CAPTURE, h
            assert (ext["requestClientApplication"], ext["cs3"], ext["flexString2"]) == (v, v, v)
            netloc = f"[{v}]" if ":" in h else v  # a host with a colon is written as an IPv6 literal
            assert ext["request"] == f"http://{netloc}/p?{v}"
            assert head[4] == visible("sig " + h)
            assert ext["cat"] == no_surrogates("cat " + h)
        elif kind == "dns":
            assert set(ext) == COMMON_KEYS | V4 | DNS, h
            assert ext["cs6"] == v and ext["msg"] == f"{v} CNAME {v}"
        elif kind == "cert":
            assert set(ext) == COMMON_KEYS | V4 | {"msg"}, h
            assert ext["msg"] == f"certificate subject CN={v}; names {v}, x"
        elif kind == "learned":
            assert set(ext) == COMMON_KEYS | V4 | {"msg"}, h
            assert ext["msg"] == "DNS answer for " + v
        else:
            assert set(ext) == COMMON_KEYS | V4, h


@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_header_without_a_parser(h):
    # Independent of liblognorm: the header is the first seven unescaped pipes, each field
    # unescapes to what was sent (controls made visible: no raw one in a header), and one
    # space leads into the extension.
    for alert in hostile_alerts(h).values():
        line = cef.format_alert(alert).decode()
        fields, i = split_header(line)
        assert fields == ["CEF:0", *expected(alert)[0]]
        assert line[i] == " " and line[i + 1] != " "
        assert "\r" not in line and line.count("\n") == 1
        assert visible(line[:i]) == line[:i], "a control or bidi character raw in the header"
