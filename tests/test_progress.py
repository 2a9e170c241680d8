"""The replay progress bar: drawn on standard error under a real pseudo-terminal, absent
when standard error is a pipe; the unit under a fake clock."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import threading

from helpers import PCAPS, REPO

from detector.progress import Progress

CAPTURES = [str(PCAPS / "tls-sni.pcap"), str(PCAPS / "dns-udp-tcp.pcap"), str(PCAPS / "issue4")]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_counts_bytes_files_packets_and_alerts():
    now = [0.0]
    out = _Tty()
    bar = Progress(out, total_bytes=4_000_000, total_files=2, clock=lambda: now[0])
    now[0] = 2.0
    bar.update(1_000_000, 50_000, 3)
    assert out.getvalue() == ("\r[######..................]  25% 1.0 MB of 4.0 MB, file 1/2 (0 done), "
                              "50,000 packets (25,000/s), 3 alerts\x1b[K")  # fmt: skip
    bar.update(1_500_000, 60_000, 4)  # within the redraw interval: not drawn
    assert out.getvalue().count("\r") == 1
    bar.file_done(2_000_000, 80_000, 5)  # forced
    assert out.getvalue().endswith("50% 2.0 MB of 4.0 MB, file 2/2 (1 done), 80,000 packets (40,000/s), 5 alerts\x1b[K")
    bar.close()
    assert out.getvalue().endswith("\r\x1b[K")


def test_not_a_terminal_writes_nothing():
    out = io.StringIO()
    bar = Progress(out, 10, 1, interval=0)
    bar.update(5, 1, 1)
    bar.file_done(10, 2, 1)
    bar.close()
    assert out.getvalue() == ""


def _replay_with_stderr_on_a_pty() -> tuple[int, bytes, bytes]:
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "detector", "replay", "--exact", *CAPTURES], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    os.close(slave)
    # Read the alerts on another thread: a full stdout pipe would stop the child mid-run.
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(p.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    err = b""
    while True:
        r, _, _ = select.select([master], [], [], 60)
        if not r:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        err += chunk
    reader.join(60)
    out = b"".join(chunks)
    p.wait(60)
    os.close(master)
    return p.returncode, out, err


def test_progress_under_a_pseudo_terminal_and_not_when_piped():
    rc, out, err = _replay_with_stderr_on_a_pty()
    assert rc == 0
    assert b"% " in err and b" of " in err and b"packets (" in err and b"alerts\x1b[K" in err
    assert b"file 3/3" in err or b"(3 done)" in err
    assert err.rstrip().splitlines()[-1].startswith(b"output eve:-:")  # the summary follows the erased bar
    assert b"\x1b" not in out, "standard output (the alerts) never carries the bar"
    piped = subprocess.run([sys.executable, "-m", "detector", "replay", "--exact", *CAPTURES], cwd=REPO, capture_output=True)
    assert piped.returncode == 0
    assert b"\x1b" not in piped.stderr and b"\r" not in piped.stderr and b"packets (" not in piped.stderr
    assert piped.stdout == out, "the alerts are the same with and without the bar"
