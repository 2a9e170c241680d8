"""Syslog envelopes: RFC 5424 messages read back by a strict parser written from the RFC's
ABNF (section 6) and, where rsyslog is installed, by rsyslog itself (imtcp + mmpstrucdata);
RFC 3164 messages by the same two. Every header field, SD parameter and the MSG must come
back exactly; hostile values may add no parameter and no line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime

import pytest
from test_formats_common import (
    HOSTILE,
    HOSTILE_IDS,
    golden_check,
    hostile_alerts,
    no_surrogates,
    sample_alerts,
)

from detector.formats import FORMATS, syslog
from detector.model import Alert

SD_KEYS = ["sid", "category", "client", "hostname", "evidence", "count"]
PRINTUSASCII = re.compile(r"[\x21-\x7e]+")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")
_SD_NAME = re.compile(r'[\x21-\x7e]{1,32}')


class SyslogError(ValueError):
    pass


def _token(text: str, i: int) -> tuple[str, int]:
    j = text.find(" ", i)
    if j < 0:
        raise SyslogError(f"missing field at {i}")
    return text[i:j], j + 1


def parse_5424(record: bytes) -> dict:
    """RFC 5424 section 6, strictly, for one message as the module writes it (ending in the
    newline that a framing transport drops; a PARAM-VALUE and the MSG may hold any other
    byte, CR and LF included). Returns the fields, the SD elements (id -> params, in
    order, duplicates rejected) and the MSG bytes."""
    if not record.endswith(b"\n"):
        raise SyslogError("not one message ending in a newline")
    m = re.match(rb"<(\d{1,3})>([1-9]\d{0,2}) ", record)
    if not m or int(m.group(1)) > 191 or (len(m.group(1)) > 1 and m.group(1)[0:1] == b"0"):
        raise SyslogError("bad PRI/VERSION")
    text = record[m.end() : -1].decode("utf-8")  # header and SD are UTF-8 (SD values may be non-ASCII)
    out: dict = {"pri": int(m.group(1)), "version": int(m.group(2))}
    i = 0
    for name, limit in (("timestamp", None), ("hostname", 255), ("app_name", 48), ("procid", 128), ("msgid", 32)):
        tok, i = _token(text, i)
        if tok != "-":
            if name == "timestamp":
                if not _TIMESTAMP.fullmatch(tok):
                    raise SyslogError(f"bad TIMESTAMP {tok!r}")
                datetime.fromisoformat(tok.replace("Z", "+00:00"))
            elif not PRINTUSASCII.fullmatch(tok) or len(tok) > limit:  # type: ignore[operator]
                raise SyslogError(f"bad {name} {tok!r}")
        out[name] = tok
    sd: dict[str, dict[str, str]] = {}
    if text[i] == "-":
        i += 1
    else:
        while i < len(text) and text[i] == "[":
            i += 1
            j = i
            while j < len(text) and text[j] not in ' ]':
                j += 1
            sd_id = text[i:j]
            if not _SD_NAME.fullmatch(sd_id) or any(c in sd_id for c in '="'):
                raise SyslogError(f"bad SD-ID {sd_id!r}")
            if sd_id in sd:
                raise SyslogError(f"SD-ID {sd_id!r} twice")
            params: dict[str, str] = {}
            i = j
            while text[i] == " ":
                eq = text.index("=", i)
                pname = text[i + 1 : eq]
                if not _SD_NAME.fullmatch(pname) or any(c in pname for c in ' ]"'):
                    raise SyslogError(f"bad PARAM-NAME {pname!r}")
                if text[eq + 1] != '"':
                    raise SyslogError("PARAM-VALUE not quoted")
                k, value = eq + 2, []
                while text[k] != '"':
                    c = text[k]
                    if c == "]":
                        raise SyslogError("unescaped ] in PARAM-VALUE")
                    if c == "\\":
                        if text[k + 1] not in '"\\]':
                            raise SyslogError(f"backslash before {text[k + 1]!r}")
                        value.append(text[k + 1])
                        k += 2
                        continue
                    value.append(c)
                    k += 1
                if pname in params:
                    raise SyslogError(f"PARAM-NAME {pname!r} twice")
                params[pname] = "".join(value)
                i = k + 1
            if text[i] != "]":
                raise SyslogError("SD-ELEMENT not closed")
            sd[sd_id] = params
            i += 1
    out["sd"] = sd
    rest = text[i:].encode("utf-8")
    if rest and not rest.startswith(b" "):
        raise SyslogError("no SP before MSG")
    out["msg"] = rest[1:]
    return out


def parse_3164(record: bytes) -> dict:
    m = re.fullmatch(
        rb"<(\d{1,3})>([A-Z][a-z]{2} [ 1-3]\d \d{2}:\d{2}:\d{2}) ([\x21-\x7e]+) ([A-Za-z0-9._-]{1,32})(?:\[([A-Za-z0-9._-]+)\])?: (.*)\n",
        record,
        re.DOTALL,
    )
    if not m:
        raise SyslogError("not an RFC 3164 message")
    return {
        "pri": int(m.group(1)), "timestamp": m.group(2).decode(), "hostname": m.group(3).decode(),
        "tag": m.group(4).decode(), "pid": m.group(5) and m.group(5).decode(), "msg": m.group(6),
    }  # fmt: skip


def expected_sd(alert: Alert) -> dict[str, str]:
    obs, sig = alert.observation, alert.signature
    return {
        "sid": str(sig.id), "category": no_surrogates(sig.category), "client": obs.client,
        "hostname": no_surrogates(obs.hostname), "evidence": obs.evidence.value, "count": str(alert.count),
    }  # fmt: skip


# -- the parser itself ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, problem",
    [
        (b"<13>1 - - - - - -", "one message"),
        (b"<192>1 - - - - - -\n", "PRI"),
        (b"<13>1 2024-01-01 h a p m -\n", "TIMESTAMP"),
        (b"<13>1 2024-01-01T00:00:00.1234567Z h a p m -\n", "TIMESTAMP"),
        (b"<13>1 - h\xc3\xa9 a p m -\n", "bad hostname"),
        (b"<13>1 - h a p 123456789012345678901234567890123 -\n", "bad msgid"),
        (b'<13>1 - h a p m [x@1 a="b]"]\n', "unescaped ]"),
        (b'<13>1 - h a p m [x@1 a="\\n"]\n', "backslash before 'n'"),
        (b'<13>1 - h a p m [x@1 a="1" a="2"]\n', "twice"),
        (b'<13>1 - h a p m [x@1 a="1"][x@1 b="2"]\n', "twice"),
        (b'<13>1 - h a p m [x=1 a="1"]\n', "bad SD-ID"),
        (b"<13>1 - h a p m -msg\n", "no SP before MSG"),
    ],
)
def test_parser_rejects(record, problem):
    with pytest.raises((SyslogError, ValueError), match=problem):
        parse_5424(record)


def test_parser_reads():
    p = parse_5424(b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] \xef\xbb\xbfAn application event\n')
    assert p["sd"] == {"exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"}}
    assert (p["pri"], p["procid"], p["msg"]) == (165, "-", b"\xef\xbb\xbfAn application event")


# -- RFC 5424 -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_wraps_every_format(fmt, kind):
    alert = sample_alerts()[kind]
    payload = FORMATS[fmt](alert)
    p = parse_5424(syslog.wrap(payload, alert, hostname="sensor-1.example.net"))
    assert p["msg"] == payload[:-1]
    assert p["sd"] == {"kdetect@32473": expected_sd(alert)}
    assert (p["hostname"], p["app_name"], p["procid"], p["msgid"]) == ("sensor-1.example.net", "kaspersky-detector", "-", "alert")


@pytest.mark.parametrize("kind", list(sample_alerts()))
def test_golden(kind):
    alert = sample_alerts()[kind]
    golden_check(f"syslog5424-cef-{kind}.log", syslog.wrap(FORMATS["cef"](alert), alert, hostname="sensor-1", procid="4242"))
    golden_check(f"syslog3164-leef-{kind}.log", syslog.wrap_3164(FORMATS["leef"](alert), alert, hostname="sensor-1"))


def test_pri_timestamp_and_options():
    a = sample_alerts()["http-host"]  # severity high
    p = parse_5424(syslog.wrap(b"x\n", a, hostname="h", facility=syslog.Facility.AUTH, sd=False, bom=True))
    assert p["pri"] == 4 * 8 + 4 and p["version"] == 1
    assert p["timestamp"] == "2023-11-14T22:13:20.250000Z"
    assert p["sd"] == {} and p["msg"] == syslog.BOM + b"x"
    low = dataclass_replace_sig(a, severity="low")
    assert parse_5424(syslog.wrap(b"x", low, hostname="h"))["pri"] == 16 * 8 + 6
    with pytest.raises(ValueError):
        syslog.wrap(b"x", a, hostname="h", facility=24)


def dataclass_replace_sig(alert: Alert, **changes) -> Alert:
    import dataclasses

    sig = dataclasses.replace(alert.signature, **changes)
    return dataclasses.replace(alert, match=dataclasses.replace(alert.match, signature=sig))


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("hostname", "my host\u00e9.example", "my_host_.example"),
        ("hostname", "", "-"),
        ("hostname", "h" * 300, "h" * 255),
        ("app_name", "a" * 60, "a" * 48),
        ("procid", "1 2", "1_2"),
        ("msgid", "m\nx" + "y" * 40, "m_x" + "y" * 29),
    ],
)
def test_header_fields_cleaned(field, value, shown):
    a = sample_alerts()["dns-query"]
    kwargs = {"hostname": "h", field: value}
    assert parse_5424(syslog.wrap(b"x", a, **kwargs))[field] == shown


def test_sd_names_are_valid():
    for name in [syslog.SD_ID, *SD_KEYS]:
        assert syslog.sd_name(name) == name
    assert syslog.sd_name('a b="c]d') == "abcd"
    with pytest.raises(ValueError):
        syslog.sd_name(" ")


def test_msg_is_the_payload_as_it_is():
    """MSG-ANY: the payload's bytes unchanged (CR, LF, NUL included: the transports frame
    each message); only a byte that is not UTF-8 is written as ``\\xNN``."""
    a = sample_alerts()["dns-query"]
    p = parse_5424(syslog.wrap(b"a\r\nb\x00c\x1b\xe2\x80\xae\xffd\n", a, hostname="h"))
    assert p["msg"] == b"a\r\nb\x00c\x1b\xe2\x80\xae\\xffd"


def test_param_values_carry_one_layer_only():
    """RFC 5424 6.3.3: ``"``, ``\\`` and ``]`` escaped, every other character as it is."""
    raw = "cr\rlf\nnul\x00tab\tesc\x1b del\x7f nel\x85 bidi\u202eevil"
    assert syslog.param_value(raw) == raw
    assert syslog.param_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert syslog.param_value("lone\udcff") == "lone\\\\udcff"  # a surrogate is never written
    a = hostile_alerts(raw)["dns"]
    assert parse_5424(syslog.wrap(b"x\n", a, hostname="h"))["sd"][syslog.SD_ID]["hostname"] == raw


@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_values_5424(h):
    for alert in hostile_alerts(h).values():
        for fmt in ("cef", "leef", "ecs"):
            payload = FORMATS[fmt](alert)
            record = syslog.wrap(payload, alert, hostname=h, app_name=h, procid=h, msgid=h)
            p = parse_5424(record)
            assert p["sd"] == {"kdetect@32473": expected_sd(alert)}
            assert p["msg"] == payload[:-1]


# -- RFC 3164 -------------------------------------------------------------------------------
def test_3164():
    a = sample_alerts()["dns-query"]
    payload = FORMATS["cef"](a)
    p = parse_3164(syslog.wrap_3164(payload, a, hostname="sensor 1", procid="77"))
    assert p == {
        "pri": 16 * 8 + 4, "timestamp": "Nov 14 22:13:20", "hostname": "sensor_1",
        "tag": "kaspersky-detector", "pid": "77", "msg": payload[:-1],
    }  # fmt: skip
    assert syslog.timestamp_3164(1_700_000_000 - 10 * 86400) == "Nov  4 22:13:20"


@pytest.mark.parametrize("h", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_values_3164(h):
    for alert in hostile_alerts(h).values():
        payload = FORMATS["leef"](alert)
        p = parse_3164(syslog.wrap_3164(payload, alert, hostname=h, tag=h, procid=h))
        assert p["msg"] == payload[:-1]


# -- rsyslog as the receiver ------------------------------------------------------------------
RSYSLOG_CONF = """
global(workDirectory="{work}" maxMessageSize="256k" parser.escapeControlCharacterTab="off")
module(load="imtcp")
module(load="mmpstrucdata")
template(name="fields" type="list") {{
  constant(value="{{")
  property(outname="pri" name="pri" format="jsonf") constant(value=",")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf") constant(value=",")
  property(outname="hostname" name="hostname" format="jsonf") constant(value=",")
  property(outname="app_name" name="app-name" format="jsonf") constant(value=",")
  property(outname="procid" name="procid" format="jsonf") constant(value=",")
  property(outname="msgid" name="msgid" format="jsonf") constant(value=",")
  property(outname="msg" name="msg" format="jsonf") constant(value=",")
  property(outname="sd" name="$!" format="jsonf")
  constant(value="}}\\n")
}}
ruleset(name="in") {{
  action(type="mmpstrucdata")
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="in")
"""


def rsyslog_received(text: str, *, end: bool = False) -> str:
    """What rsyslog makes of the exact text it receives (an independent restatement of its
    defaults): ``parser.escapeControlCharactersOnReceive`` (on by default) writes every
    control character below 0x20, NUL included, as ``#`` and three octal digits, but the
    tab (exempted by this config); and a LF that ends the whole message is dropped
    (``parser.dropTrailingLFOnReception``). rsyslog cannot hand a control character on
    as it is: with that escaping off, 8.2302 drops them (and still escapes NUL)."""
    if end and text.endswith("\n"):
        text = text[:-1]
    return "".join(f"#{ord(c):03o}" if ord(c) < 0x20 and c != "\t" else c for c in text)


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory):
    exe = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
    if not exe:
        pytest.skip("rsyslogd not installed (apt-get install rsyslog)")
    work = tmp_path_factory.mktemp("rsyslog")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = work / "out.jsonl"
    conf = work / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=work, out=out, port=port))
    proc = subprocess.Popen(
        [exe, "-n", "-f", str(conf), "-i", str(work / "pid")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"rsyslogd did not start: {proc.stdout.read().decode() if proc.stdout else ''}")
                time.sleep(0.05)
        yield port, out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _send(rsyslog, records: list[bytes]) -> list[dict]:
    port, out = rsyslog
    before = out.read_bytes().count(b"\n") if out.exists() else 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        # RFC 6587 octet counting, as detector.sinks.syslog frames: a message may hold a LF
        s.sendall(b"".join(b"%d %s" % (len(r) - 1, r[:-1]) for r in records))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = out.read_bytes().splitlines() if out.exists() else []
        if len(lines) >= before + len(records):
            return [json.loads(line) for line in lines[before:]]
        time.sleep(0.05)
    raise AssertionError(f"rsyslog wrote {len(lines) - before} of {len(records)} messages")


def test_rsyslog_reads_5424(rsyslog):
    """Every header field back exactly; SD parameters and MSG exactly as rsyslog's
    receive defaults (``rsyslog_received``) make of the names sent."""
    cases = [(h, a) for h in [*HOSTILE, "plain"] for a in hostile_alerts(h).values()]
    cases += [("sample", a) for a in sample_alerts().values()]
    records = [syslog.wrap(FORMATS["cef"](a), a, hostname="sensor-1.example.net", procid="4242") for _, a in cases]
    got = _send(rsyslog, records)
    assert len(got) == len(cases)
    for (h, alert), g in zip(cases, got, strict=True):
        payload = FORMATS["cef"](alert)
        assert g["pri"] == str(16 * 8 + {1: 4, 2: 5, 3: 6}[alert.severity_number]), h
        assert g["timestamp"] == "2023-11-14T22:13:20.250000Z"
        assert (g["hostname"], g["app_name"], g["procid"], g["msgid"]) == ("sensor-1.example.net", "kaspersky-detector", "4242", "alert")
        assert g["msg"] == rsyslog_received(payload[:-1].decode(), end=True), h
        sd = {k: rsyslog_received(v) for k, v in expected_sd(alert).items()}
        assert json.loads(g["sd"]) == {"rfc5424-sd": {"kdetect@32473": sd}}, h


def test_rsyslog_reads_3164(rsyslog):
    cases = [a for h in HOSTILE for a in hostile_alerts(h).values()]
    records = [syslog.wrap_3164(FORMATS["leef"](a), a, hostname="sensor-1", procid="77") for a in cases]
    got = _send(rsyslog, records)
    for alert, g in zip(cases, got, strict=True):
        assert (g["pri"], g["hostname"], g["app_name"], g["procid"]) == ("132", "sensor-1", "kaspersky-detector", "77")
        assert g["msg"].lstrip(" ") == rsyslog_received(FORMATS["leef"](alert)[:-1].decode(), end=True)
