"""``--output FORMAT:DESTINATION`` parsing, files and standard output, opening errors, and
the promise that credentials never show in an error, a log line, a repr or the summary."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_formats_common import hostile_alerts
from test_formats_leef import parse_leef
from test_sinks_common import alert, eve

from detector.errors import SinkError
from detector.formats import FORMATS
from detector.outputs import open_outputs, parse_output
from detector.sinks import SINKS
from detector.sinks.file import one_line

HEC_TOKEN = "5e1b2c3d-TOKEN-never-printed-77"
ES_KEY = "c2VjcmV0LWlkOnNlY3JldC1rZXktbmV2ZXItcHJpbnRlZA=="


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "scheme", "fmt", "path", "host", "port", "options"),
    [
        ("-", "file", "eve", "-", "", 0, {}),
        ("alerts.json", "file", "eve", "alerts.json", "", 0, {}),
        ("/var/log/a.json", "file", "eve", "/var/log/a.json", "", 0, {}),
        ("./a:b.json", "file", "eve", "./a:b.json", "", 0, {}),
        ("eve:a:b.json", "file", "eve", "a:b.json", "", 0, {}),
        ("eve:-", "file", "eve", "-", "", 0, {}),
        ("ecs:/var/log/x.json", "file", "ecs", "/var/log/x.json", "", 0, {}),
        ("ocsf:x.json?max_bytes=1000&backups=3", "file", "ocsf", "x.json", "", 0, {"max_bytes": "1000", "backups": "3"}),
        ("what?.json", "file", "eve", "what?.json", "", 0, {}),
        ("file:///tmp/x%20y.json", "file", "eve", "/tmp/x y.json", "", 0, {}),
        ("syslog+udp://127.0.0.1:5514", "syslog+udp", "eve", "", "127.0.0.1", 5514, {}),
        ("cef:syslog+tcp://siem.example:10514", "syslog+tcp", "cef", "", "siem.example", 10514, {}),
        ("leef:syslog+tls://siem.example?ca=/etc/ca.pem", "syslog+tls", "leef", "", "siem.example", 6514, {"ca": "/etc/ca.pem"}),
        ("syslog3164+udp://[::1]:514?facility=local4", "syslog3164+udp", "eve", "", "::1", 514, {"facility": "local4"}),
        ("hec+https://splunk.example:8088?index=sec", "hec+https", "eve", "", "splunk.example", 8088, {"index": "sec"}),
        ("ecs:elastic+https://es.example/alerts-kd", "elastic+https", "ecs", "/alerts-kd", "es.example", 9200, {}),
    ],
)
def test_valid_specs(spec: str, scheme: str, fmt: str, path: str, host: str, port: int, options: dict[str, str]) -> None:
    t = parse_output(spec)
    assert (t.scheme, t.format, t.path, t.host, t.port, t.options) == (scheme, fmt, path, host, port, options)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("xml:/tmp/a.json", "unknown output format 'xml' (valid: cef, ecs, eve, leef, ocsf; for a file whose name has a colon write ./xml:/tmp/a.json)"),
        ("out:1.json", "unknown output format 'out'"),
        ("http://collector:80", "unknown destination scheme 'http' (valid: elastic+https://, hec+https://, syslog+tcp://, "
         "syslog+tls://, syslog+udp://, syslog3164+tcp://, syslog3164+tls://, syslog3164+udp://, a file path, or - for standard output)"),
        ("cef:kafka://broker:9092", "unknown destination scheme 'kafka'"),
        ("eve:", "no destination after eve:"),
        ("", "empty destination"),
        ("syslog+tcp://:514", "no host name"),
        ("syslog+tcp://host:99999", "the port must be a number from 1 to 65535"),
        ("syslog+tcp://host:http", "the port must be a number from 1 to 65535"),
        ("syslog+tcp://host:514/path", "syslog+tcp takes no path"),
        ("syslog+tcp://host:514?color=red", "unknown option 'color' for syslog+tcp (valid: app_name, batch, confirm, facility, msgid, queue, retry_max, sd_id, timeout)"),
        ("syslog+tcp://host:514?ca=/x", "unknown option 'ca' for syslog+tcp"),
        ("hec+https://h?index=a&index=b", "option 'index' given twice"),
        ("a.json?max_bytes=1&colour=red", "unknown option 'colour' for file (valid: backups, max_bytes)"),
    ],
)
def test_invalid_specs(spec: str, message: str) -> None:
    with pytest.raises(SinkError) as err:
        parse_output(spec)
    assert message in str(err.value)


def test_every_format_and_scheme_is_listed() -> None:
    with pytest.raises(SinkError) as err:
        parse_output("nope:x")
    assert all(f in str(err.value) for f in FORMATS)
    with pytest.raises(SinkError) as err:
        parse_output("nope://x")
    assert all(f"{s}://" in str(err.value) for s in SINKS if s != "file")


def test_all_spec_errors_at_once() -> None:
    with pytest.raises(SinkError) as err:
        open_outputs(["xml:a", "b.json", "ftp://x", "b.json"], hostname="s")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and "xml" in lines[0] and "ftp" in lines[1] and "given twice" in lines[2]


# -- files and standard output ----------------------------------------------------------------
def test_bare_path_is_eve_appended(tmp_path: Path) -> None:
    f = tmp_path / "alerts.json"
    f.write_bytes(b"earlier\n")
    outs = open_outputs([str(f)], hostname="s")
    outs.emit(alert(0))
    outs.emit(alert(1))
    outs.close()
    assert f.read_bytes() == b"earlier\n" + eve(0) + eve(1)
    assert outs.summary_lines() == [f"output eve:{f}: 2 written"]
    assert outs.stats()[f"eve:{f}"]["delivered"] == 2


def test_default_is_eve_on_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    outs = open_outputs([], hostname="s")
    outs.emit(alert(3))
    outs.close()
    assert capsysbinary.readouterr().out == eve(3)
    outs = open_outputs(["ecs:-"], hostname="s")
    outs.emit(alert(3))
    outs.close()
    assert capsysbinary.readouterr().out == FORMATS["ecs"](alert(3))


def test_several_formats_to_several_files(tmp_path: Path) -> None:
    specs = [f"{fmt}:{tmp_path / fmt}.log" for fmt in FORMATS]
    outs = open_outputs(specs, hostname="s")
    outs.emit(alert(0))
    outs.close()
    for fmt in FORMATS:
        assert (tmp_path / f"{fmt}.log").read_bytes() == FORMATS[fmt](alert(0))


@pytest.mark.parametrize(
    "record, line",
    [
        (b"plain\n", b"plain\n"),
        (b"a\rb\nc\r\n\n", b"a\\x0db\\x0ac\\x0d\\x0a\n"),
        (b"no newline", b"no newline\n"),
        (b"tab\tnul\x00esc\x1b\xe2\x80\xae\n", b"tab\tnul\x00esc\x1b\xe2\x80\xae\n"),  # only CR/LF change
        (b"\\x0d is text\n", b"\\x0d is text\n"),
    ],
)
def test_one_line_frames_a_record_for_a_file(record: bytes, line: bytes) -> None:
    assert one_line(record) == line


def test_a_leef_record_with_line_breaks_is_one_line_in_a_file(tmp_path: Path) -> None:
    """LEEF cannot escape: a CR/LF from the wire reaches the sink raw; the file (and standard
    output) write it as ``\\x0d``/``\\x0a`` so the record stays one line; nothing else moves."""
    h = "cr\rlf\nend.s05.upd.kaspersky.com"
    a = hostile_alerts(h)["dns"]
    record = FORMATS["leef"](a)
    assert b"\r" in record and record.count(b"\n") > 1  # raw from the format
    f = tmp_path / "leef.log"
    outs = open_outputs([f"leef:{f}", "cef:" + str(tmp_path / "cef.log")], hostname="s")
    outs.emit(a)
    outs.emit(alert(1))
    outs.close()
    data = f.read_bytes()
    assert data.count(b"\n") == 2 and b"\r" not in data
    first = data.split(b"\n")[0] + b"\n"
    assert first == record[:-1].replace(b"\r", b"\\x0d").replace(b"\n", b"\\x0a") + b"\n"
    assert parse_leef(first)[2]["hostname"] == "cr\\x0dlf\\x0aend.s05.upd.kaspersky.com"
    # CEF escapes CR/LF itself: its record is written unchanged
    assert (tmp_path / "cef.log").read_bytes() == FORMATS["cef"](a) + FORMATS["cef"](alert(1))


def test_reopen_after_rename_logrotate(tmp_path: Path) -> None:
    f = tmp_path / "alerts.json"
    outs = open_outputs([str(f)], hostname="s")
    outs.emit(alert(0))
    os.rename(f, tmp_path / "alerts.json.1")  # logrotate moves the file...
    outs.emit(alert(1))  # ...the detector still writes to it until told...
    outs.reopen()  # ...by SIGHUP
    outs.emit(alert(2))
    outs.close()
    assert (tmp_path / "alerts.json.1").read_bytes() == eve(0) + eve(1)
    assert f.read_bytes() == eve(2)


def test_reopen_from_a_signal_handler(tmp_path: Path) -> None:
    """SIGHUP in a real process: the handler only calls reopen()."""
    f = tmp_path / "alerts.json"
    script = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_sinks_common import alert\n"
        "from detector.outputs import open_outputs\n"
        f"outs = open_outputs([{str(f)!r}], hostname='s')\n"
        "signal.signal(signal.SIGHUP, lambda *_: outs.reopen())\n"
        "outs.emit(alert(0)); outs.flush()\n"
        f"os.rename({str(f)!r}, {str(f) + '.1'!r})\n"
        "os.kill(os.getpid(), signal.SIGHUP)\n"
        "outs.emit(alert(1)); outs.close()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert Path(str(f) + ".1").read_bytes() == eve(0)
    assert f.read_bytes() == eve(1)


def test_size_rotation(tmp_path: Path) -> None:
    f = tmp_path / "alerts.json"
    one = len(eve(0))
    outs = open_outputs([f"{f}?max_bytes={one * 2}&backups=2"], hostname="s")
    for i in range(7):
        outs.emit(alert(i))
    outs.close()
    assert f.read_bytes() == eve(6)
    assert Path(f"{f}.1").read_bytes() == eve(4) + eve(5)
    assert Path(f"{f}.2").read_bytes() == eve(2) + eve(3)
    assert not Path(f"{f}.3").exists()  # the oldest went away
    assert "rotated 3 time(s)" in outs.summary_lines()[0]


def test_file_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match=r"/no/such/dir/a\.json: cannot open for writing"):
        open_outputs(["/no/such/dir/a.json"], hostname="s")


def test_a_failing_destination_closes_the_ones_opened_before(tmp_path: Path) -> None:
    port = _closed_port()
    with pytest.raises(SinkError, match=f"syslog\\+tcp://127.0.0.1:{port}"):
        open_outputs([str(tmp_path / "a.json"), f"syslog+tcp://127.0.0.1:{port}"], hostname="s")


# -- network destinations at start --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["syslog+tcp", "syslog+tls", "hec+https", "elastic+https"])
def test_unreachable_at_start_names_it_and_spool_avoids_it(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DETECTOR_HEC_TOKEN", HEC_TOKEN)
    monkeypatch.setenv("DETECTOR_ELASTIC_API_KEY", ES_KEY)
    port = _closed_port()
    spec = f"{kind}://127.0.0.1:{port}" + ("/alerts" if kind.startswith("elastic") else "")
    with pytest.raises(SinkError) as err:
        open_outputs([spec], hostname="s")
    msg = str(err.value)
    assert msg == f"eve:{spec}: cannot connect: Connection refused"
    outs = open_outputs([spec], spool_dir=str(tmp_path), hostname="s")  # with a spool: no error
    outs.emit(alert(0))
    outs.close(0.5)
    (st,) = outs.stats().values()
    assert st["spooled"] == 1 and st["failed"] == 0
    assert "1 waiting in the spool" in outs.summary_lines()[0]
    everything = " ".join([msg, caplog.text, repr(outs), json.dumps(outs.stats()), *outs.summary_lines(),
                           *(repr(s) for _, _, s in outs._outputs), *(repr(t) for t, _, _ in outs._outputs)])
    assert HEC_TOKEN not in everything and ES_KEY not in everything


def test_secrets_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DETECTOR_HEC_TOKEN", HEC_TOKEN)
    from detector.sinks.net import Secret, secret_from_env

    s = secret_from_env("DETECTOR_HEC_TOKEN", "x")
    assert HEC_TOKEN not in repr(s) + str(s) + f"{s}" + repr([s]) and s.reveal() == HEC_TOKEN
    assert Secret("abc").redact("Splunk abc and abc") == "Splunk *** and ***"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)
    # a credential in the URL is refused without being repeated
    with pytest.raises(SinkError) as err:
        parse_output(f"hec+https://user:{HEC_TOKEN}@splunk.example:8088")
    assert HEC_TOKEN not in str(err.value) and "credentials do not belong in the URL" in str(err.value)
    with pytest.raises(SinkError) as err:
        parse_output(f"elastic+https://{ES_KEY}@es.example/idx")
    assert ES_KEY not in str(err.value)
    # a line break in the variable would split the header: refused, and not shown
    monkeypatch.setenv("DETECTOR_HEC_TOKEN", "abc\r\nX-Injected: 1")
    with pytest.raises(SinkError, match="holds a line break") as err:
        open_outputs(["hec+https://127.0.0.1:1"], hostname="s")
    assert "Injected" not in str(err.value)
    assert HEC_TOKEN not in caplog.text


def test_ca_option_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="--ca .*nope.pem: file not found"):
        open_outputs(["-"], ca=str(tmp_path / "nope.pem"), hostname="s")
