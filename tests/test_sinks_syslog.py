"""Syslog sinks against a real rsyslog on loopback: UDP, TCP (octet counting) and TLS (gtls
stream driver, a CA and server certificate made by the test), every format, RFC 5424 and
3164; then faults: rsyslog stopped (SIGTERM by PID) and started again mid-run, and a
detector closed while the collector is down whose spool a new run drains.

A last test sends a LEEF record holding CR, LF, NUL and other controls to a collector made
here (a UDP socket; a TCP socket read with strict octet counting): it arrives byte for
byte (rsyslog would escape or drop those characters on receive).

rsyslog writes each message as ``INPUTNAME RAWMSG`` (``%rawmsg%``: the message exactly as
received, without the TCP framing; control-character escaping off) to a file the test
reads back and compares byte for byte with the envelope ``detector.formats.syslog`` makes.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_formats_common import hostile_alerts
from test_formats_leef import parse_leef
from test_formats_syslog import parse_5424
from test_sinks_common import alert, check_at_least_once, make_certs, seq_of, wait_for

from detector.errors import SinkError
from detector.formats import FORMATS
from detector.formats import syslog as syslog_format
from detector.outputs import open_outputs

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
GTLS = bool(glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so") + glob.glob("/usr/lib/rsyslog/lmnsd_gtls.so"))

pytestmark = pytest.mark.skipif(
    RSYSLOGD is None,
    reason="rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls; tests/run.sh does it as root)",
)
needs_gtls = pytest.mark.skipif(not GTLS, reason="rsyslog's TLS driver is not installed (apt-get install rsyslog-gnutls)")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(table: str, port: int, tcp: bool) -> bool:
    want = f"0100007F:{port:04X}"
    try:
        with open(f"/proc/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[1] == want and (not tcp or cols[3] == "0A"):
                    return True
    except OSError:
        return False
    return False


class Rsyslog:
    """One rsyslogd in the foreground with its own config, ports and work directory."""

    def __init__(self, d: Path, certs: dict[str, str]) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.udp, self.tcp, self.tls = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_STREAM)
        self.out = d / "received.log"
        self.conf = d / "rsyslog.conf"
        self.pidfile = d / "rsyslogd.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        tls_input = (
            f'input(type="imtcp" address="127.0.0.1" port="{self.tls}" ruleset="r" name="tls"\n'
            '      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")\n'
            if GTLS else ""
        )
        tls_global = (
            f'  defaultNetstreamDriverCAFile="{certs["ca"]}" defaultNetstreamDriverCertFile="{certs["cert"]}"\n'
            f'  defaultNetstreamDriverKeyFile="{certs["key"]}"\n'
            if GTLS else ""
        )
        self.conf.write_text(
            f'global(workDirectory="{d}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"\n'
            f"{tls_global})\n"
            'module(load="imudp")\n'
            'module(load="imtcp" maxSessions="200")\n'
            'template(name="raw" type="string" string="%inputname% %rawmsg%\\n")\n'
            f'ruleset(name="r") {{ action(type="omfile" file="{self.out}" template="raw") }}\n'
            f'input(type="imudp" address="127.0.0.1" port="{self.udp}" ruleset="r" name="udp")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.tcp}" ruleset="r" name="tcp")\n'
            f"{tls_input}"
        )

    def start(self) -> None:
        assert RSYSLOGD is not None
        self.log = open(self.dir / "rsyslogd.stderr", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )
        ok = wait_for(
            lambda: _listening("udp", self.udp, False) and _listening("tcp", self.tcp, True)
            and (not GTLS or _listening("tcp", self.tls, True)) or proc.poll() is not None,
            10,
        )
        if not ok or proc.poll() is not None:
            err = (self.dir / "rsyslogd.stderr").read_text(errors="replace")
            self.stop()
            pytest.fail(f"rsyslogd did not start: {err[-2000:]}")

    def stop(self) -> None:
        """SIGTERM by PID, wait; SIGKILL only if it does not go within 10 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.log.close()

    def lines(self, marker: bytes) -> list[tuple[str, bytes]]:
        """(input name, raw message) of every message that holds ``marker``."""
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_bytes().split(b"\n"):
            if marker in line:
                name, _, raw = line.partition(b" ")
                out.append((name.decode(), raw))
        return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory, certs: dict[str, str]) -> Iterator[Rsyslog]:
    r = Rsyslog(tmp_path_factory.mktemp("rsyslog"), certs)
    r.start()
    yield r
    r.stop()


def _dest(r: Rsyslog, scheme: str, query: str = "") -> str:
    port = {"udp": r.udp, "tcp": r.tcp, "tls": r.tls}[scheme.split("+")[1]]
    return f"{scheme}://127.0.0.1:{port}" + (f"?{query}" if query else "")


CASES = [
    ("syslog+udp", "eve"),
    ("syslog+tcp", "eve"),
    pytest.param("syslog+tls", "eve", marks=needs_gtls),
    ("syslog+tcp", "cef"),
    ("syslog+udp", "leef"),
    pytest.param("syslog+tls", "ecs", marks=needs_gtls),
    ("syslog+tcp", "ocsf"),
    ("syslog3164+udp", "eve"),
    ("syslog3164+tcp", "cef"),
    pytest.param("syslog3164+tls", "leef", marks=needs_gtls),
]


@pytest.mark.parametrize(("scheme", "fmt"), CASES)
def test_every_alert_arrives_once_and_intact(rsyslog: Rsyslog, certs: dict[str, str], scheme: str, fmt: str) -> None:
    host = f"sensor-{scheme.replace('+', '-')}-{fmt}"
    n = 40
    outs = open_outputs([f"{fmt}:{_dest(rsyslog, scheme)}"], spool_dir=None, ca=certs["ca"], hostname=host)
    for i in range(n):
        outs.emit(alert(i))
    outs.close(10)
    st = outs.stats()[f"{fmt}:{_dest(rsyslog, scheme)}"]
    assert st["delivered"] == n and st["failed"] == 0 and st["resent"] == 0
    marker = f" {host} ".encode()
    assert wait_for(lambda: len(rsyslog.lines(marker)) >= n, 10)
    time.sleep(0.2)  # nothing more arrives
    got = rsyslog.lines(marker)
    wrap = syslog_format.wrap_3164 if scheme.startswith("syslog3164") else syslog_format.wrap
    expected = [wrap(FORMATS[fmt](alert(i)), alert(i), hostname=host)[:-1] for i in range(n)]
    assert [raw for _, raw in got] == expected  # each once, in order, byte for byte
    assert {name for name, _ in got} == {scheme.split("+")[1]}


def test_envelope_options_reach_the_collector(rsyslog: Rsyslog) -> None:
    host = "sensor-options"
    outs = open_outputs([f"eve:{_dest(rsyslog, 'syslog+tcp', 'facility=local5&app_name=kdet&msgid=hit')}"],
                        hostname=host)
    outs.emit(alert(0))
    outs.close(5)
    assert wait_for(lambda: rsyslog.lines(f" {host} ".encode()), 10)
    ((_, raw),) = rsyslog.lines(f" {host} ".encode())
    a = alert(0)
    assert raw == syslog_format.wrap(FORMATS["eve"](a), a, hostname=host, facility=21, app_name="kdet", msgid="hit")[:-1]
    assert b" sensor-options kdet - hit [kdetect@32473 " in raw


def _restart_run(tmp_path: Path, certs: dict[str, str], scheme: str, spool: bool) -> None:
    r = Rsyslog(tmp_path / "rsyslog", certs)
    r.start()
    host = f"sensor-restart-{scheme.split('+')[1]}-{int(spool)}"
    try:
        dest = _dest(r, scheme, "retry_max=0.3")
        outs = open_outputs([dest], spool_dir=str(tmp_path / "spool") if spool else None, ca=certs["ca"], hostname=host)
        for i in range(40):
            outs.emit(alert(i))
            time.sleep(0.005)
        r.stop()  # mid-run: the collector goes away
        for i in range(40, 80):
            outs.emit(alert(i))
            time.sleep(0.01)
        time.sleep(0.5)
        r.start()  # and comes back on the same port
        for i in range(80, 120):
            outs.emit(alert(i))
            time.sleep(0.005)
        outs.close(15)
        (st,) = outs.stats().values()
        assert st["failed"] == 0 and st["queued"] == 0 and st["spooled"] == 0, st
        assert st["retried"] >= 1 and st["delivered"] == 120
        marker = f" {host} ".encode()
        assert wait_for(lambda: len({seq_of(raw) for _, raw in r.lines(marker)}) >= 120, 10)
        time.sleep(0.2)
        check_at_least_once([seq_of(raw) for _, raw in r.lines(marker)], 120, st["resent"])
    finally:
        r.stop()


def test_tcp_collector_restart_mid_run_loses_nothing(tmp_path: Path, certs: dict[str, str]) -> None:
    _restart_run(tmp_path, certs, "syslog+tcp", spool=False)


@needs_gtls
def test_tls_collector_restart_mid_run_loses_nothing_with_spool(tmp_path: Path, certs: dict[str, str]) -> None:
    _restart_run(tmp_path, certs, "syslog+tls", spool=True)


@pytest.mark.parametrize("scheme", ["syslog+tcp", pytest.param("syslog+tls", marks=needs_gtls)])
def test_spool_survives_a_detector_restart(tmp_path: Path, certs: dict[str, str], scheme: str) -> None:
    r = Rsyslog(tmp_path / "rsyslog", certs)
    r.start()
    host = f"sensor-spool-{scheme.split('+')[1]}"
    spool = str(tmp_path / "spool")
    dest = _dest(r, scheme, "retry_max=0.3")
    try:
        outs = open_outputs([dest], spool_dir=spool, ca=certs["ca"], hostname=host)
        for i in range(20):
            outs.emit(alert(i))
        assert outs.flush(5)
        r.stop()
        for i in range(20, 50):
            outs.emit(alert(i))
        outs.close(1.0)  # the collector is down: what is left stays in the spool
        (st1,) = outs.stats().values()
        assert st1["failed"] == 0 and st1["spooled"] >= 30, st1
        assert any(n.endswith(".spool") and os.path.getsize(os.path.join(spool, n)) > 100 for n in os.listdir(spool))

        r.start()
        outs2 = open_outputs([dest], spool_dir=spool, ca=certs["ca"], hostname=host)  # a new run
        for i in range(50, 60):
            outs2.emit(alert(i))
        outs2.close(10)
        (st2,) = outs2.stats().values()
        assert st2["spooled_at_start"] == st1["spooled"] and st2["spooled"] == 0 and st2["failed"] == 0
        marker = f" {host} ".encode()
        assert wait_for(lambda: len({seq_of(raw) for _, raw in r.lines(marker)}) >= 60, 10)
        time.sleep(0.2)
        check_at_least_once([seq_of(raw) for _, raw in r.lines(marker)], 60, st1["resent"] + st2["resent"])
    finally:
        r.stop()


def test_unreachable_collector_at_start(tmp_path: Path) -> None:
    port = _free_port(socket.SOCK_STREAM)
    with pytest.raises(SinkError, match=rf"eve:syslog\+tcp://127\.0\.0\.1:{port}: cannot connect: Connection refused"):
        open_outputs([f"syslog+tcp://127.0.0.1:{port}"], hostname="s")
    outs = open_outputs([f"syslog+tcp://127.0.0.1:{port}"], spool_dir=str(tmp_path), hostname="s")
    outs.emit(alert(0))
    outs.close(0.5)
    assert outs.stats()[f"eve:syslog+tcp://127.0.0.1:{port}"]["spooled"] == 1


@needs_gtls
def test_tls_certificate_is_verified(rsyslog: Rsyslog, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other", tag="other-")  # a CA that did not sign rsyslog's cert
    with pytest.raises(SinkError, match="syslog\\+tls://127.0.0.1:.*certificate"):
        open_outputs([_dest(rsyslog, "syslog+tls")], ca=other["ca"], hostname="s")
    with pytest.raises(SinkError, match="certificate"):  # the system's CAs do not know it either
        open_outputs([_dest(rsyslog, "syslog+tls")], hostname="s")


# -- a hostile name crosses the syslog transports whole ----------------------------------------
def _octet_counted(data: bytes) -> list[bytes]:
    """RFC 6587 section 3.4.1, strictly: ``MSG-LEN SP SYSLOG-MSG`` repeated, nothing else."""
    out, i = [], 0
    while i < len(data):
        sp = data.index(b" ", i)
        length = data[i:sp]
        assert length.isdigit() and not length.startswith(b"0"), data[i : i + 20]
        out.append(data[sp + 1 : sp + 1 + int(length)])
        assert len(out[-1]) == int(length), "a frame cut short"
        i = sp + 1 + int(length)
    return out


def _stream_collector(srv: socket.socket, got: list[bytes]) -> None:
    conn, _ = srv.accept()
    with conn:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    got.extend(_octet_counted(data))


@pytest.mark.parametrize("scheme", ["syslog+udp", "syslog+tcp", "syslog3164+tcp"])
def test_line_breaks_and_controls_cross_whole(scheme: str) -> None:
    """A LEEF record holding a name with CR, LF, TAB, NUL, ESC and U+202E (LEEF has no escape)
    reaches a collector byte for byte in its message: UDP frames it as a datagram, TCP with
    octet counting. The SD hostname and the LEEF hostname read back exactly as sent."""
    name = "cr\rlf\nnul\x00tab\tesc\x1b[31m\u202eevil.s05.upd.kaspersky.com"
    a = hostile_alerts(name)["dns"]
    host = "sensor-hostile"
    got: list[bytes] = []
    kind = socket.SOCK_DGRAM if scheme.endswith("udp") else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]
        thread = None
        if kind == socket.SOCK_STREAM:
            srv.listen(1)
            thread = threading.Thread(target=_stream_collector, args=(srv, got), daemon=True)
            thread.start()
        outs = open_outputs([f"leef:{scheme}://127.0.0.1:{port}"], hostname=host)
        outs.emit(a)
        outs.emit(alert(1))
        outs.close(5)
        if thread is not None:
            thread.join(10)
        else:
            srv.settimeout(2)
            got += [srv.recv(65535), srv.recv(65535)]
    wrap = syslog_format.wrap_3164 if scheme.startswith("syslog3164") else syslog_format.wrap
    assert got == [wrap(FORMATS["leef"](x), x, hostname=host)[:-1] for x in (a, alert(1))]
    assert b"\r" in got[0] and b"\n" in got[0] and b"\x00" in got[0]
    if scheme.startswith("syslog+"):
        p = parse_5424(got[0] + b"\n")
        assert p["sd"][syslog_format.SD_ID]["hostname"] == name
        assert parse_leef(p["msg"] + b"\n")[2]["hostname"] == name
