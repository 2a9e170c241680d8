"""Hostile names end to end: a capture made by real clients (dig, openssl s_client) whose
DNS queries and TLS SNIs hold ``|``, ``=``, ``\\``, ``"``, ``]``, CR, LF, NUL, ESC, TAB, bidi
controls, invalid UTF-8, 63-byte labels and 253-byte names goes through every format.

``pcaps/hostile/hostile.pcap`` and its ground truth ``pcaps/hostile/expected.json`` come from
``pcaps/hostile/make_hostile_capture.sh`` (the names it sent, never the detector's output).
The capture is replayed once by the command line with every format written to a file, and
EVE, CEF and LEEF also sent as RFC 5424 syslog over UDP to sockets this test binds. Then:

- every file record is exactly one line (a file is line-framed) and strict UTF-8; JSON
  records are printable ASCII; every syslog datagram is one whole message per alert;
- each record is read back by the real parser of its format (``json``; Debian's
  ``lognormalizer`` and the strict CEF reader of the format tests for CEF; the strict
  LEEF 2.0 reader and the strict RFC 5424 parser of the format tests) and its hostname is
  exactly one of the names sent: one layer of the format's own escaping, nothing more.
  Over syslog (UDP frames each message) every format gives every name back exactly, CR,
  LF, TAB, NUL, ESC and U+202E included. In a file, the one difference is LEEF's: LEEF
  has no escape, so a CR/LF in a name is written ``\\x0d``/``\\x0a`` there (the file sink's
  line framing); CEF escapes them itself. lognormalizer reads a line only up to a NUL
  (C strings): records holding one are read exactly by the strict reader and
  lognormalizer is held to that limit;
- the (evidence, hostname) pairs read back equal the names sent, exactly;
- no record gains a key: CEF and LEEF have exactly the keys the format writes for that
  evidence kind, syslog exactly one SD element with its six parameters, and every JSON
  record of an evidence kind has the same shape as the others (some names are plain
  letters, so a key injected by a hostile name would show).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dns.name
import pytest
import test_formats_cef as t_cef
import test_formats_ecs as t_ecs
import test_formats_leef as t_leef
import test_formats_ocsf as t_ocsf
import test_formats_syslog as t_syslog
from helpers import EVE_SCHEMAS, PCAPS

from detector.formats import syslog
from detector.formats.common import PRODUCT, VENDOR

HOSTILE = PCAPS / "hostile"
CAPTURE = HOSTILE / "hostile.pcap"
SCRIPT = HOSTILE / "make_hostile_capture.sh"
TRUTH: dict[str, Any] = json.loads((HOSTILE / "expected.json").read_text())["hostile.pcap"]
CLIENT = TRUTH["client"]

FILE_FORMATS = ("eve", "ecs", "cef", "leef", "ocsf")
SYSLOG_FORMATS = ("eve", "cef", "leef")  # in RFC 5424 over UDP: "syslog-eve" ...
ALL_OUTPUTS = (*FILE_FORMATS, *(f"syslog-{f}" for f in SYSLOG_FORMATS))

DNS_QUERY, TLS_SNI = "dns-query", "tls-sni"
# The keys each format writes for these two evidence kinds (the format tests' tables).
CEF_KEYS = {
    DNS_QUERY: t_cef.COMMON_KEYS | t_cef.V4 | (t_cef.DNS - {"msg"}) | t_cef.CAPTURE,  # a query: no answers
    TLS_SNI: t_cef.COMMON_KEYS | t_cef.V4 | t_cef.CAPTURE,
}
LEEF_KEYS = {
    DNS_QUERY: t_leef.COMMON_KEYS | {"dnsQuery", "dnsType", "dnsId", "pcapFile"},
    TLS_SNI: t_leef.COMMON_KEYS | t_leef.TLS | {"pcapFile"},
}
# Every byte the issue names; the SNIs cannot hold NUL (see pcaps/hostile/README.md).
ISSUE_BYTES = set(b'|=\\"]\r\n\x00\x1b\xe2\x80\xae\xff\xfe\t')
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def want(show=lambda s: s) -> Counter:
    """The (evidence, hostname) pairs the capture must give, in a format's notation."""
    return Counter((a["kind"], show(a["name"])) for a in TRUTH["alerts"])


SENT_TEXT = {(a["kind"], a["name"]): a["sent_text"] for a in TRUTH["alerts"]}


# -- the run ----------------------------------------------------------------------------------
def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("detector")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "detector"]


def replay(pcap: Path, out: Path) -> dict[str, list[bytes]]:
    """One run of the command line writing every format to a file and EVE, CEF and LEEF as
    syslog to UDP sockets bound here. File records keep their newline; a datagram (one
    message, framed by UDP) gets one added, as the format module writes it."""
    socks: dict[str, socket.socket] = {}
    try:
        args = []
        for fmt in FILE_FORMATS:
            args += ["--output", f"{fmt}:{out / (fmt + '.log')}"]
        for fmt in SYSLOG_FORMATS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            socks[fmt] = s
            args += ["--output", f"{fmt}:syslog+udp://127.0.0.1:{s.getsockname()[1]}"]
        r = subprocess.run([*_cli(), "replay", str(pcap), *args], capture_output=True, timeout=60)
        err = r.stderr.decode("utf-8", "replace")
        assert r.returncode == 0, err
        assert "undecodable packets: 0" in err, err
        got: dict[str, list[bytes]] = {}
        for fmt in FILE_FORMATS:
            data = (out / f"{fmt}.log").read_bytes()
            assert data.endswith(b"\n"), fmt
            got[fmt] = [line + b"\n" for line in data[:-1].split(b"\n")]
        for fmt, s in socks.items():  # the run is over: every datagram is queued already
            s.settimeout(0.3)
            msgs = []
            while True:
                try:
                    msgs.append(s.recv(65535))
                except TimeoutError:
                    break
            got[f"syslog-{fmt}"] = [m + b"\n" for m in msgs]  # framed by UDP: may hold CR/LF
        return got
    finally:
        for s in socks.values():
            s.close()


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, list[bytes]]:
    return replay(CAPTURE, tmp_path_factory.mktemp("hostile"))


# -- reading each format back -----------------------------------------------------------------
def file_lines(text: str) -> str:
    """What a line-framed file shows of text: CR and LF as ``\\x0d``/``\\x0a`` (an
    independent restatement of ``detector.sinks.file.one_line``)."""
    return text.replace("\r", "\\x0d").replace("\n", "\\x0a")


def one_line_each(recs: list[bytes], output: str) -> None:
    assert len(recs) == len(TRUTH["alerts"]), f"{output}: {len(recs)} records for {len(TRUTH['alerts'])} alerts"
    for rec in recs:
        assert rec.endswith(b"\n")
        rec[:-1].decode("utf-8")  # strict: no invalid UTF-8, no lone surrogate
        if not output.startswith("syslog-"):  # a file: one line per record
            assert rec.count(b"\n") == 1 and b"\r" not in rec, rec
        if output in ("eve", "ecs", "ocsf"):
            assert all(0x20 <= c < 0x7F for c in rec[:-1]), f"{output}: not printable ASCII"


def shape(obj: Any) -> Any:
    """A JSON value's structure: keys and value types, list elements as a set of shapes."""
    if isinstance(obj, dict):
        return tuple(sorted((k, shape(v)) for k, v in obj.items()))
    if isinstance(obj, list):
        return ("list", tuple(sorted({repr(shape(v)) for v in obj})))
    return type(obj).__name__


def same_shape_per_kind(pairs: list[tuple[str, Any]], output: str) -> None:
    shapes: dict[str, set[str]] = {}
    for kind, doc in pairs:
        shapes.setdefault(kind, set()).add(repr(shape(doc)))
    assert set(shapes) == {DNS_QUERY, TLS_SNI}, output
    for kind, found in shapes.items():
        assert len(found) == 1, f"{output}: {kind} records differ in their keys"


def read_eve(recs: list[bytes]) -> Counter:
    out, docs = Counter(), []
    for rec in recs:
        doc = json.loads(rec)
        m = doc["alert"]["metadata"]
        assert len(m["evidence"]) == 1 and len(m["hostname"]) == 1
        kind, host = m["evidence"][0], m["hostname"][0]
        sent = SENT_TEXT[(kind, host)]
        assert (doc["dns"]["query"][0]["rrname"] if kind == DNS_QUERY else doc["tls"]["sni"]) == sent
        assert doc["src_ip"] == CLIENT
        out[(kind, host)] += 1
        docs.append((kind, doc))
    same_shape_per_kind(docs, "eve")
    return out


def read_ecs(recs: list[bytes]) -> Counter:
    out, docs = Counter(), []
    for rec in recs:
        doc = json.loads(rec)
        kind = doc["labels"]["evidence"]
        host = doc["related"]["hosts"][0]
        sent = SENT_TEXT[(kind, host)]
        assert set(doc["related"]["hosts"]) <= {host, sent}
        if kind == DNS_QUERY:
            assert doc["dns"]["question"]["name"] == sent
        else:
            assert (doc["tls"]["client"]["server_name"], doc["destination"]["domain"]) == (sent, host)
        assert doc["message"] == f"{doc['rule']['name']}: {host} ({kind}) from {CLIENT}"
        out[(kind, host)] += 1
        docs.append((kind, doc))
    same_shape_per_kind(docs, "ecs")
    return out


def read_ocsf(recs: list[bytes]) -> Counter:
    out, docs = Counter(), []
    for rec in recs:
        doc = json.loads(rec)
        kind = doc["unmapped"]["evidence"]
        names = [o["value"] for o in doc["observables"] if o["type_id"] == 1]  # Hostname
        assert len(names) == 1
        # a DNS record carries the query name as sent (case kept), a TLS record the matched name
        host = names[0] if kind == TLS_SNI else names[0].translate(_LOWER)
        sent = SENT_TEXT[(kind, host)]
        (ev,) = doc["evidences"]
        if kind == DNS_QUERY:
            assert ev["query"]["hostname"] == sent == names[0]
        else:
            assert (ev["tls"]["sni"], ev["dst_endpoint"]["hostname"]) == (sent, host)
        assert doc["message"] == f"{doc['finding_info']['title']}: {host} ({kind}) from {CLIENT}"
        out[(kind, host)] += 1
        docs.append((kind, doc))
    same_shape_per_kind(docs, "ocsf")
    return out


def read_cef(recs: list[bytes], tmp_path_factory) -> Counter:
    """Back through lognormalizer and the strict reader: header fields exactly, the
    extension's key set exactly, the names exactly as sent."""
    out = Counter()
    parsed = t_cef.parse_cef(recs, tmp_path_factory)
    cut = t_cef.parse_cef([r.split(b"\x00")[0] + b"\n" for r in recs if b"\x00" in r], tmp_path_factory)
    for rec, p in zip(recs, parsed, strict=True):
        head, ext = t_cef.parse_cef_strict(rec)
        if b"\x00" in rec:  # lognormalizer stops at the NUL: it reads the record cut there
            assert p == cut.pop(0)
        else:
            assert "cef" in p, f"lognormalizer could not parse it: {p}"
            got = p["cef"]
            assert set(got) == {*t_cef.HEADER_NAMES, "Extensions"}
            assert ([got[n] for n in t_cef.HEADER_NAMES], got["Extensions"]) == (head, ext)
        assert head[:2] == [VENDOR, PRODUCT]
        kind, host = ext["cs1"], ext["dhost"]
        assert set(ext) == CEF_KEYS[kind], (host, set(ext) ^ CEF_KEYS[kind])
        assert ext["src"] == CLIENT
        if kind == DNS_QUERY:
            assert ext["cs6"] == SENT_TEXT[(kind, host)]
        out[(kind, host)] += 1
    return out


def read_leef(recs: list[bytes], show=lambda s: s) -> Counter:
    """The strict LEEF reader; ``show`` is what the destination does to a value (a file:
    ``file_lines``)."""
    shown = {(k, show(n)): show(s) for (k, n), s in SENT_TEXT.items()}
    out = Counter()
    for rec in recs:
        head, delimiter, attrs = t_leef.parse_leef(rec)
        assert delimiter in t_leef.CANDIDATES and head[:2] == [VENDOR, PRODUCT]
        assert t_leef.expected_delimiter(list(attrs.values())) == delimiter
        kind, host = attrs["evidence"], attrs["hostname"]
        assert set(attrs) == LEEF_KEYS[kind], (host, set(attrs) ^ LEEF_KEYS[kind])
        assert attrs["dnsQuery" if kind == DNS_QUERY else "tlsSni"] == shown[(kind, host)]
        assert attrs["src"] == CLIENT
        out[(kind, host)] += 1
    return out


def read_syslog(output: str, recs: list[bytes], lines: list[bytes], tmp_path_factory) -> Counter:
    """RFC 5424, strictly: one SD element with exactly its six parameters, the hostname
    exactly as sent; the MSG is the format's record, read back by its own parser to the
    same name, and the same as the file's line but for the file's line framing."""
    fmt = output.removeprefix("syslog-")
    out, msgs = Counter(), []
    for rec in recs:
        p = t_syslog.parse_5424(rec)
        assert (p["app_name"], p["msgid"]) == ("kaspersky-detector", "alert")
        assert list(p["sd"]) == [syslog.SD_ID]
        sd = p["sd"][syslog.SD_ID]
        assert list(sd) == t_syslog.SD_KEYS
        assert (sd["client"], sd["count"]) == (CLIENT, "1")
        out[(sd["evidence"], sd["hostname"])] += 1
        msgs.append(p["msg"])
    payloads = [m + b"\n" for m in msgs]
    inner = read_cef(payloads, tmp_path_factory) if fmt == "cef" else (read_eve if fmt == "eve" else read_leef)(payloads)
    assert inner == out
    assert Counter(file_lines(m.decode("utf-8")).encode() for m in msgs) == Counter(line[:-1] for line in lines)
    return out


def read_back(output: str, recs: dict[str, list[bytes]], tmp_path_factory) -> tuple[Counter, Counter]:
    """(what the parser read back, what was sent as that destination shows it)."""
    if output == "eve":
        return read_eve(recs[output]), want()
    if output == "ecs":
        return read_ecs(recs[output]), want()
    if output == "ocsf":
        return read_ocsf(recs[output]), want()
    if output == "cef":
        return read_cef(recs[output], tmp_path_factory), want()
    if output == "leef":
        return read_leef(recs[output], file_lines), want(file_lines)
    return read_syslog(output, recs[output], recs[output.removeprefix("syslog-")], tmp_path_factory), want()


# -- the ground truth is what was sent --------------------------------------------------------
def canonical(labels: tuple[bytes, ...]) -> str:
    """The one form every evidence kind shows a name in: the wire bytes as UTF-8, each byte
    that is not valid UTF-8 as ``\\xNN``, labels joined by dots."""
    return b".".join(labels).decode("utf-8", "backslashreplace")


NO_ALERT = "no-alert"


def test_ground_truth_is_what_the_clients_sent():
    sent = [r for r in TRUTH["sent"] if r["kind"] != NO_ALERT]
    assert [{k: r[k] for k in ("kind", "name", "sent_text")} for r in sent] == TRUTH["alerts"]
    assert len(set(SENT_TEXT)) == len(sent), "a name twice"
    dns_bytes, sni_bytes, dns_labels, sni_names = set(), set(), [], []
    for r in (r for r in sent if r["kind"] == DNS_QUERY):
        wire = bytes.fromhex(r["wire"])
        name, used = dns.name.from_wire(wire, 0)
        assert used == len(wire) <= 255
        assert dns.name.from_text(r["sent"]) == name, "dig's argument is another name"
        assert canonical(name.labels[:-1]) == r["sent_text"]
        assert r["sent_text"].translate(_LOWER) == r["name"]
        dns_bytes |= set(b"".join(name.labels))
        dns_labels += [len(x) for x in name.labels]
    for r in (r for r in sent if r["kind"] == TLS_SNI):
        raw = bytes.fromhex(r["sent"])
        assert raw.decode("utf-8", "backslashreplace") == r["sent_text"]
        assert r["sent_text"].translate(_LOWER) == r["name"]
        sni_bytes |= set(raw)
        sni_names.append(raw)
    assert dns_bytes >= ISSUE_BYTES
    assert ISSUE_BYTES - {0} <= sni_bytes and 0 not in sni_bytes
    assert set(TRUTH["not_sent_in_sni"]) == {"NUL"}
    assert max(dns_labels) == 63 and max(len(x) for n in sni_names for x in n.split(b".")) == 63
    assert max(len(dns.name.from_wire(bytes.fromhex(r["wire"]), 0)[0].to_wire()) for r in sent if "wire" in r) == 255
    assert max(len(n) for n in sni_names) == 253  # 255 in wire format
    assert any(b"\xe2\x80\xae" in n for n in sni_names) and "\u202e" in "".join(r["sent_text"] for r in sent)


def test_dns_and_sni_alerts_carry_the_same_string(records):
    """One name, sent by dig and by openssl s_client: both alerts read the same."""
    shown: dict[str, set[str]] = {DNS_QUERY: set(), TLS_SNI: set()}
    for rec in records["eve"]:
        doc = json.loads(rec)
        kind = doc["alert"]["metadata"]["evidence"][0]
        shown[kind].add(doc["dns"]["query"][0]["rrname"] if kind == DNS_QUERY else doc["tls"]["sni"])
    by_what: dict[str, dict[str, str]] = {}
    for r in TRUTH["sent"]:
        by_what.setdefault(r["what"], {})[r["kind"]] = r["sent_text"]
    both = {w: k for w, k in by_what.items() if DNS_QUERY in k and TLS_SNI in k}
    assert len(both) >= 12
    for what, kinds in both.items():
        if "\x00" in kinds[DNS_QUERY]:
            continue  # the SNI was sent without the NUL (no client can send it)
        assert kinds[DNS_QUERY] == kinds[TLS_SNI], what
        assert kinds[DNS_QUERY] in shown[DNS_QUERY] and kinds[TLS_SNI] in shown[TLS_SNI], what


def test_names_sent_with_dots_inside_a_label_raise_no_alert(records):
    """dig sent ``s05\\.upd\\.kaspersky.com`` (one label holding dots, under .com): its
    text reads like a Kaspersky name, its labels are not one."""
    negative = [r for r in TRUTH["sent"] if r["kind"] == NO_ALERT]
    assert {r["sent_text"] for r in negative} == {"s05.upd.kaspersky.com", "x.kaspersky.com.example"}
    for r in negative:
        wire = bytes.fromhex(r["wire"])
        assert any(b"." in x for x in dns.name.from_wire(wire, 0)[0].labels)
    hosts = {json.loads(rec)["alert"]["metadata"]["hostname"][0] for rec in records["eve"]}
    assert not hosts & {r["name"] for r in negative}


# -- the bundled capture through every format -------------------------------------------------
@pytest.mark.parametrize("output", ALL_OUTPUTS)
def test_one_line_per_alert(records, output):
    one_line_each(records[output], output)


@pytest.mark.parametrize("output", ALL_OUTPUTS)
def test_read_back_exactly_the_names_sent(records, output, tmp_path_factory):
    got, expected = read_back(output, records, tmp_path_factory)
    assert got == expected, {"missing": expected - got, "unexpected": got - expected}


@pytest.mark.parametrize("fmt", ["eve", "ecs", "ocsf"])
def test_json_records_validate(records, fmt):
    docs = [json.loads(rec) for rec in records[fmt]]
    if fmt == "eve":
        jsonschema = pytest.importorskip("jsonschema")
        for path in EVE_SCHEMAS:
            validator = jsonschema.Draft202012Validator(json.loads(path.read_text()))
            for doc in docs:
                assert not list(validator.iter_errors(doc)), doc["alert"]["metadata"]["hostname"]
    elif fmt == "ecs":
        for doc in docs:
            assert t_ecs.ecs_problems(doc) == [], doc["related"]["hosts"]
    else:
        for doc in docs:
            assert t_ocsf.schema().validate(doc) == [], doc["observables"][0]["value"]


# -- a fresh capture ---------------------------------------------------------------------------
def _can_make_captures() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [t for t in ("ip", "ethtool", "tcpdump", "tshark", "dnsmasq", "dig", "openssl") if not shutil.which(t)]
    return f"missing tools: {' '.join(missing)}" if missing else None


@pytest.mark.netns
def test_fresh_capture_from_real_clients(tmp_path, tmp_path_factory):
    """Run make_hostile_capture.sh now into a temporary directory (DEST): the names it
    sends are the ones in the repository's ground truth, and the new capture reads back
    exactly through every format."""
    why = _can_make_captures()
    if why:
        pytest.skip(why)
    r = subprocess.run(
        ["bash", str(SCRIPT)], env={**os.environ, "DEST": str(tmp_path)}, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "verify: 0 problem(s)" in r.stderr
    assert "kdh-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    fresh = json.loads((tmp_path / "expected.json").read_text())["hostile.pcap"]
    assert fresh["alerts"] == TRUTH["alerts"]
    recs = replay(tmp_path / "hostile.pcap", tmp_path)
    for output in ALL_OUTPUTS:
        one_line_each(recs[output], output)
        if output == "cef" and not shutil.which("lognormalizer"):
            continue
        got, expected = read_back(output, recs, tmp_path_factory)
        assert got == expected, output
