"""``replay --jobs N``: the same alerts, counts and order as one process, for several files
and for one pcap split across workers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector", "replay", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _summary_without_timing(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("summary:")]


@pytest.mark.parametrize("paths", [["pcaps/*.pcap", "pcaps/linktypes", "pcaps/damaged/gzip"], ["pcaps/tls-sni.pcap"], ["pcaps/dns-udp-tcp.pcap"]])
@pytest.mark.parametrize("jobs", ["2", "3"])
def test_jobs_output_identical(paths, jobs):
    one = _run(*paths)
    many = _run("--jobs", jobs, *paths)
    assert one.returncode == many.returncode == 0
    assert one.stdout and many.stdout == one.stdout
    assert _summary_without_timing(many.stderr) == _summary_without_timing(one.stderr)


def test_jobs_with_unreadable_file():
    r = _run("--jobs", "2", "pcaps/damaged/not-a-capture.pcap", "pcaps/tls-sni.pcap")
    assert r.returncode == 1
    assert "not-a-capture.pcap: not a pcap or pcapng capture" in r.stderr
    assert len(r.stdout.splitlines()) == 5
