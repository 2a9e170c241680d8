"""The exported response policy zone in a real resolver: Unbound (Debian) on loopback, a
free high port, started and stopped by this test (by PID).  Two authoritative zones
(``for-upstream``) stand in for the Internet, so without the policy every name resolves;
with it a Kaspersky name (exact, and below a suffix) is rewritten, a look-alike is not."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from detector.cli import main

pytestmark = pytest.mark.skipif(shutil.which("unbound") is None, reason="unbound not installed (tests/run.sh installs it as root)")

ZONE = """$ORIGIN {zone}.
$TTL 60
@ SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 60
@ NS ns.invalid.
@ A 192.0.2.2
activation-v2 A 192.0.2.1
x.upd A 192.0.2.3
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_unbound(d: Path, rpz: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    zones = ""
    for zone in ("kaspersky.com", "notkaspersky.com"):
        (d / f"{zone}.zone").write_text(ZONE.format(zone=zone))
        zones += (f'auth-zone:\n  name: "{zone}."\n  zonefile: "{d}/{zone}.zone"\n'
                  "  for-downstream: no\n  for-upstream: yes\n")
    conf = d / "unbound.conf"
    conf.write_text(f"""server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  use-syslog: no
  logfile: "{d}/unbound.log"
  verbosity: 1
  do-ip6: no
  module-config: "respip iterator"
  access-control: 127.0.0.0/8 allow
{zones}rpz:
  name: "kaspersky.rpz."
  zonefile: "{rpz}"
  rpz-log: yes
  rpz-log-name: "kdt"
""")
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    proc = subprocess.Popen(["unbound", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = d / "unbound.log"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if log.exists() and "start of service" in log.read_text():
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"unbound did not start: {log.read_text() if log.exists() else ''} {proc.stderr.read() if proc.stderr else ''}")


def ask(port: int, name: str) -> tuple[str, list[str]]:
    r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=5)
    return dns.rcode.to_text(r.rcode()), [rd.to_text() for rrset in r.answer for rd in rrset]


@pytest.mark.parametrize("action", ["nxdomain", "passthru"])
def test_unbound_applies_the_exported_zone(tmp_path, action):
    rpz = tmp_path / "kaspersky.rpz"
    assert main(["export", "rpz", "--rpz-action", action, "-o", str(rpz)]) == 0
    proc, port = start_unbound(tmp_path, rpz)
    try:
        exact, below, lookalike = (ask(port, n) for n in
                                   ("activation-v2.kaspersky.com", "x.upd.kaspersky.com", "notkaspersky.com"))
        log = (tmp_path / "unbound.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert lookalike == ("NOERROR", ["192.0.2.2"])
    assert "notkaspersky.com" not in log
    if action == "nxdomain":
        assert exact == ("NXDOMAIN", []) and below == ("NXDOMAIN", [])
    else:  # log only: answered normally, the hit is in the resolver's log
        assert exact == ("NOERROR", ["192.0.2.1"]) and below == ("NOERROR", ["192.0.2.3"])
    assert f"rpz: applied [kdt] activation-v2.kaspersky.com. rpz-{action}" in log
    assert "x.upd.kaspersky.com. A IN" in log
