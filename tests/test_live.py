"""``detector live`` on real interfaces with real traffic (root only).

A lab of network namespaces, all named ``kdl-<pid>-*`` (so parallel runs never collide):

    client  (198.18.0.10, 2001:db8::10) --+
    client2 (198.18.0.11)               --+-- br0 (a hub: ageing_time 0) in -lan
    server  (198.18.0.1, 2001:db8::1)   --+
    monitor (no address)                --+   <- detector live -i eth0 runs here

The server runs dnsmasq (the Kaspersky names and the test-only names) and nginx (HTTP 80,
HTTPS 443); the clients run dig, curl and openssl s_client; nothing uses the machine's
resolver (dig names its server, curl gets --resolve).  Every process is stopped by PID and
every namespace removed, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from detector.capture import core

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
pytestmark = pytest.mark.netns

TOOLS = ("ip", "dnsmasq", "nginx", "dig", "curl", "openssl")
SRV4, SRV6 = "198.18.0.1", "2001:db8::1"
C1, C1_6, C2 = "198.18.0.10", "2001:db8::10", "198.18.0.11"
K_NAMES = ("s05.upd.kaspersky.com", "activation-v2.kaspersky.com", "ksn-file-geo.kaspersky-labs.com",
           "dc1.ksn.kaspersky-labs.com", "dnl-01.geo.kaspersky.com", "crl.kaspersky.com",
           "touch.kaspersky.com", "s07.upd.kaspersky.com")
TEST_NAMES = ("before.kdl-test.example.net", "after.kdl-test.example.net")
DIG = ("dig", "+tries=1", "+time=2")
CURL = ("curl", "-sS", "--max-time", "10", "-o", "/dev/null")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, packet capture)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (bash tests/run.sh installs them as root)"
    return None


def _detector_cmd() -> list[str]:
    return [PY, "-m", "detector", "live"]


PACK = """pack: kdl-test
description: test-only pack for the live reload test
signatures:
  - id: 1699901
    name: "Test-only name {name}"
    vendor: Kaspersky
    products: ["Test product"]
    category: update
    confidence: high
    severity: high
    product_only: true
    match:
      names: ["{name}"]
    source:
      ref: "test"
      grade: A
"""

NGINX = """user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/ngx-body;
    proxy_temp_path {d}/ngx-proxy;
    fastcgi_temp_path {d}/ngx-fcgi;
    uwsgi_temp_path {d}/ngx-uwsgi;
    scgi_temp_path {d}/ngx-scgi;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    server {{
        listen 80 default_server;
        listen [::]:80 default_server;
        listen 443 ssl default_server;
        listen [::]:443 ssl default_server;
        location / {{ return 200 "kdl test server\\n"; }}
    }}
}}
"""


class Lab:
    def __init__(self) -> None:
        p = f"kdl-{os.getpid() % 100000}"
        self.ns = {k: f"{p}-{k}" for k in ("c", "c2", "s", "lan", "m")}
        self.dir = Path(tempfile.mkdtemp(prefix="kdl-live-"))
        self.dir.chmod(0o755)  # the detector reads its signature files as nobody
        self.procs: list[subprocess.Popen] = []

    # -- plumbing ----------------------------------------------------------------------
    @staticmethod
    def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)

    def nsrun(self, ns: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.run("ip", "netns", "exec", self.ns[ns], *args, check=check, timeout=timeout)

    def start(self, ns: str, args: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[ns], *args], **kw)
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        self.down_namespaces()
        for ns in self.ns.values():
            self.run("ip", "netns", "add", ns)
            self.run("ip", "-n", ns, "link", "set", "lo", "up")
            self.run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                     "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_ra=0",
                     "net.ipv6.conf.default.accept_ra=0", "net.ipv6.conf.all.router_solicitations=0",
                     "net.ipv6.conf.default.router_solicitations=0")
        lan = self.ns["lan"]
        # ageing_time 0: the bridge forgets every MAC at once and floods every frame to every
        # port, like the span port of a switch.
        self.run("ip", "-n", lan, "link", "add", "br0", "type", "bridge", "ageing_time", "0",
                 "forward_delay", "0", "stp_state", "0", "mcast_snooping", "0")
        for k in ("c", "c2", "s", "m"):
            self.run("ip", "link", "add", "eth0", "netns", self.ns[k], "mtu", "1500", "type", "veth",
                     "peer", "name", f"lan-{k}", "netns", lan, "mtu", "1500")
            for ns, dev in ((self.ns[k], "eth0"), (lan, f"lan-{k}")):
                self.run("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                         "tx", "off", "rx", "off", check=False)
            self.run("ip", "-n", lan, "link", "set", f"lan-{k}", "master", "br0", "up")
        self.run("ip", "-n", lan, "link", "set", "br0", "up")
        for k, addrs in (("c", (f"{C1}/24", f"{C1_6}/64")), ("c2", (f"{C2}/24",)), ("s", (f"{SRV4}/24", f"{SRV6}/64"))):
            for a in addrs:
                self.run("ip", "-n", self.ns[k], "addr", "add", a, "dev", "eth0", *(("nodad",) if ":" in a else ()))
        for k in ("c", "c2", "s", "m"):
            self.run("ip", "-n", self.ns[k], "link", "set", "eth0", "up")

    def servers(self) -> None:
        d = self.dir
        self.run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "2", "-subj", "/CN=kdl-test-server.invalid", "-keyout", str(d / "key.pem"),
                 "-out", str(d / "cert.pem"))
        (d / "nginx.conf").write_text(NGINX.format(d=d))
        records = [f"--host-record={n},{SRV4},{SRV6},300" for n in (*K_NAMES, *TEST_NAMES, "notkaspersky.com")]
        self.start("s", ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--user=root",
                         "--group=root", f"--pid-file={d}/dnsmasq.pid", "--bind-interfaces", f"--listen-address={SRV4}",
                         f"--listen-address={SRV6}", *records],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.start("s", ["nginx", "-e", str(d / "nginx-error.log"), "-c", str(d / "nginx.conf"), "-p", str(d)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listening = self.nsrun("s", "ss", "-Hlntu", check=False).stdout
            if all(re.search(rf":{p}\s", listening) for p in (53, 80, 443)):
                return
            time.sleep(0.1)
        raise RuntimeError(f"servers did not start: {listening}")

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def down_namespaces(self) -> None:
        for ns in self.ns.values():
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for p in pids:  # processes still living in our own namespaces, by PID
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def down(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, timeout=3)
        self.down_namespaces()
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        out = self.run("ip", "netns", "list").stdout
        return [ns for ns in self.ns.values() if re.search(rf"^{re.escape(ns)}\b", out, re.M)]


@pytest.fixture(scope="module")
def lab():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.up()
        lab.servers()
        yield lab
    finally:
        lab.down()
    assert lab.leftovers() == [], "namespaces left behind"


class Live:
    """A running ``detector live`` in the monitor namespace."""

    def __init__(self, lab: Lab, *extra: str, name: str = "live", env: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.out = lab.dir / f"{name}.json"
        self.err_path = lab.dir / f"{name}.err"
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [*_detector_cmd(), "-i", "eth0", "--stats-interval", "0", "--output", str(self.out), *extra]
        self.proc = lab.start("m", cmd, stdout=subprocess.DEVNULL, stderr=self._err, cwd=REPO,
                              env={**os.environ, **(env or {})})
        self.wait_log("capturing on", 20)

    def log(self) -> str:
        return self.err_path.read_text()

    def wait_log(self, text: str, timeout: float = 10, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log[after:]:
                return log
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged in {timeout} s; exit {self.proc.poll()}; log:\n{self.log()}")

    def alerts(self) -> list[dict]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def contacts(self) -> set[tuple[str, str, str]]:
        return {(a["src_ip"], a["alert"]["metadata"]["evidence"][0], a["alert"]["metadata"]["hostname"][0])
                for a in self.alerts()}

    def wait_contacts(self, want: set[tuple[str, str, str]], timeout: float = 5.0) -> float:
        """Seconds until every contact in ``want`` has alerted."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if want <= self.contacts():
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"missing after {timeout} s: {sorted(want - self.contacts())}\nlog:\n{self.log()}")

    def pids(self) -> list[int]:
        """The controller and its workers (every process of ours in the monitor namespace)."""
        out = subprocess.run(["ip", "netns", "pids", self.lab.ns["m"]], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(10)
        finally:
            self._err.close()
        return rc


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_live_alerts_every_contact_reload_and_stop(lab: Lab) -> None:
    pack = lab.dir / "test-pack.yaml"
    pack.write_text(PACK.format(name="before.kdl-test.example.net"))
    pack.chmod(0o644)
    port = _free_port()
    live = Live(lab, "--settle", "0.2", "--add-signatures", str(pack), "--metrics", f"127.0.0.1:{port}")

    # Privileges: every process runs as nobody with no capability left.
    for pid in live.pids():
        st = _status(pid)
        if "python" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            continue
        assert st["Uid"].split()[0] == "65534", st["Uid"]
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, st
        assert st["NoNewPrivs"] == "1"

    t0 = time.monotonic()
    lab.nsrun("c", *DIG, f"@{SRV4}", "s05.upd.kaspersky.com", "A")
    lab.nsrun("c", *DIG, f"@{SRV4}", "+tcp", "activation-v2.kaspersky.com", "A")
    lab.nsrun("c", *DIG, "-6", f"@{SRV6}", "dnl-01.geo.kaspersky.com", "AAAA")
    lab.nsrun("c", *CURL, "-k", "--resolve", f"ksn-file-geo.kaspersky-labs.com:443:{SRV4}",
              "https://ksn-file-geo.kaspersky-labs.com/")
    lab.nsrun("c", *CURL, "-6", "-k", "--resolve", f"crl.kaspersky.com:443:[{SRV6}]", "https://crl.kaspersky.com/")
    lab.nsrun("c2", "openssl", "s_client", "-connect", f"{SRV4}:443", "-servername", "dc1.ksn.kaspersky-labs.com",
              "-brief", timeout=15)
    lab.nsrun("c2", *CURL, "-H", "Host: touch.kaspersky.com", f"http://{SRV4}/")
    lab.nsrun("c", *DIG, f"@{SRV4}", "notkaspersky.com", "A")  # a look-alike: no alert
    lab.nsrun("c", *DIG, f"@{SRV4}", "after.kdl-test.example.net", "A")  # not a signature yet
    want = {
        (C1, "dns-query", "s05.upd.kaspersky.com"),
        (C1, "dns-query", "activation-v2.kaspersky.com"),
        (C1_6, "dns-query", "dnl-01.geo.kaspersky.com"),
        (C1, "tls-sni", "ksn-file-geo.kaspersky-labs.com"),
        (C1_6, "tls-sni", "crl.kaspersky.com"),
        (C2, "tls-sni", "dc1.ksn.kaspersky-labs.com"),
        (C2, "http-host", "touch.kaspersky.com"),
    }
    waited = live.wait_contacts(want, timeout=5)
    assert live.contacts() == want, "look-alike or test name alerted, or a contact from the wrong client"
    assert time.monotonic() - t0 < 20 and waited < 5

    # SIGUSR1: one statistics line; the metrics endpoint has the same counters.
    n = len(live.log())
    live.proc.send_signal(signal.SIGUSR1)
    line = live.wait_log("stats:", after=n)[n:]
    assert re.search(r"alerts 7\b", line) and "kernel drops 0" in line, line
    deadline = time.monotonic() + 5  # the snapshot is renewed every second
    while True:
        metrics = lab.nsrun("m", "curl", "-sS", f"http://127.0.0.1:{port}/metrics").stdout
        if re.search(r"^detector_packets_inspected_total [1-9]", metrics, re.M) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert 'detector_kernel_drops_total{interface="eth0"} 0' in metrics
    assert re.search(r"^detector_packets_inspected_total [1-9]", metrics, re.M), metrics
    assert sum(int(v) for v in re.findall(r'^detector_alerts_total\{category="[^"]+"\} (\d+)', metrics, re.M)) == 7
    # Every bounded table's evictions and size, and the alert-storm counters (issue 14).
    assert re.search(r'^detector_evictions_total\{table="streams_evicted",reason="[^"]+"\} 0$', metrics, re.M), metrics
    assert re.search(r'^detector_state\{table="streams"\} \d+$', metrics, re.M)
    assert re.search(r"^detector_storm_aggregates_total 0$", metrics, re.M)

    # SIGHUP with a changed pack: the test-only name alerts now, the old one no more.
    pack.write_text(PACK.format(name="after.kdl-test.example.net"))
    n = len(live.log())
    live.proc.send_signal(signal.SIGHUP)
    live.wait_log("generation 2 active in every worker", after=n)
    lab.nsrun("c", *DIG, f"@{SRV4}", "after.kdl-test.example.net", "A")
    lab.nsrun("c", *DIG, f"@{SRV4}", "before.kdl-test.example.net", "A")
    live.wait_contacts({(C1, "dns-query", "after.kdl-test.example.net")})

    # SIGHUP with a broken pack: rejected with file:line, the previous set stays in force.
    pack.write_text(PACK.format(name="after.kdl-test.example.net").replace("grade: A", "grade: Z") + "  - id: [\n")
    n = len(live.log())
    live.proc.send_signal(signal.SIGHUP)
    log = live.wait_log("reload rejected", after=n)[n:]
    assert re.search(rf"{re.escape(str(pack))}:\d+: ", log), log
    lab.nsrun("c2", *DIG, f"@{SRV4}", "after.kdl-test.example.net", "A")
    live.wait_contacts({(C2, "dns-query", "after.kdl-test.example.net")})
    assert (C1, "dns-query", "before.kdl-test.example.net") not in live.contacts()

    # SIGTERM: flush, exit 0, and nothing of ours keeps running.
    pids = live.pids()
    assert live.stop() == 0
    log = live.log()
    assert "SIGTERM: stopping" in log and "Traceback" not in log
    assert all(not Path(f"/proc/{p}").exists() or _status(p).get("State", "").startswith("Z") for p in pids)
    assert live.pids() == []
    assert len(live.alerts()) == 9


@pytest.mark.parametrize("path", ["core", "python"])
def test_live_two_workers_dedup_and_flush_on_stop(lab: Lab, path: str) -> None:
    """With the compiled core (one handle per interface) and without it (KD_NO_CORE=1:
    heads and whole handles, the C flow-head classifier, Python)."""
    env = {"KD_NO_CORE": "1"} if path == "python" else {}
    live = Live(lab, "--workers", "2", "--settle", "0", name=f"live2-{path}", env=env)
    assert ("through the compiled core" in live.log()) == (path == "core" and core.AVAILABLE)
    assert len(live.pids()) == 3  # the controller and two workers
    # Many flows (new source ports), so both workers get some; repeats of one contact from
    # different ports land on either worker and still make one alert.
    for _ in range(3):
        lab.nsrun("c", *DIG, f"@{SRV4}", "s07.upd.kaspersky.com", "A")
        lab.nsrun("c2", *CURL, "-k", "--resolve", f"activation-v2.kaspersky.com:443:{SRV4}",
                  "https://activation-v2.kaspersky.com/")
    lab.nsrun("c", *DIG, "-6", f"@{SRV6}", "crl.kaspersky.com", "AAAA")
    lab.nsrun("c2", *CURL, "-H", "Host: touch.kaspersky.com", f"http://{SRV4}/")
    want = {
        (C1, "dns-query", "s07.upd.kaspersky.com"),
        (C2, "tls-sni", "activation-v2.kaspersky.com"),
        (C1_6, "dns-query", "crl.kaspersky.com"),
        (C2, "http-host", "touch.kaspersky.com"),
    }
    live.wait_contacts(want)
    time.sleep(0.5)
    alerts = live.alerts()
    assert len(alerts) == len(want) and live.contacts() == want  # one alert per contact

    # An alert still held (a long --settle) is written when the detector is stopped.
    assert live.stop() == 0
    held = Live(lab, "--workers", "2", "--settle", "30", name=f"held-{path}", env=env)
    lab.nsrun("c2", *DIG, f"@{SRV4}", "s05.upd.kaspersky.com", "A")
    time.sleep(1.0)
    assert held.alerts() == []
    assert held.stop(signal.SIGINT) == 0
    assert held.contacts() == {(C2, "dns-query", "s05.upd.kaspersky.com")}
    assert "workers 0" in held.log().splitlines()[-1]


def test_live_attributes_a_nameless_flow_to_an_address_learned_from_dns(lab: Lab) -> None:
    """A real dig, then a real openssl s_client to the answered address without SNI: the
    TLS flow (heads handle, through the compiled core) is attributed to the name the DNS
    answer (whole handle) taught, as replay does."""
    live = Live(lab, "--settle", "0.2", name="learned")
    lab.nsrun("c2", *DIG, f"@{SRV4}", "s07.upd.kaspersky.com", "A")
    time.sleep(0.3)  # the answer is learned before the flow starts, as on a real network
    lab.nsrun("c2", "openssl", "s_client", "-connect", f"{SRV4}:443", "-noservername", "-brief", timeout=15)
    want = {(C2, "dns-query", "s07.upd.kaspersky.com"), (C2, "ip-from-dns", "s07.upd.kaspersky.com")}
    live.wait_contacts(want, timeout=5)
    assert live.contacts() == want
    assert live.stop() == 0


def test_live_errors_are_one_line(lab: Lab) -> None:
    cmd = [*_detector_cmd(), "--stats-interval", "0"]
    r = subprocess.run(["ip", "netns", "exec", lab.ns["m"], *cmd, "-i", "nosuch0"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "no such interface 'nosuch0'" in r.stderr, r.stderr
    # Without CAP_NET_RAW (as nobody, nothing inherited): one line naming the capability.
    r = subprocess.run(["ip", "netns", "exec", lab.ns["m"], "setpriv", "--reuid=65534", "--regid=65534",
                        "--clear-groups", "--inh-caps=-all", *cmd, "-i", "eth0"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "CAP_NET_RAW" in r.stderr, r.stderr


def _rings(pid: int) -> dict[int, int]:
    """Socket inode -> resident kB of the capture rings (PACKET_MMAP) process ``pid`` maps."""
    out: dict[int, int] = {}
    ino = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            ino = int(parts[5][8:-1]) if len(parts) >= 6 and parts[5].startswith("socket:[") else None
        elif ino is not None and parts[0] == "Rss:":
            out[ino] = out.get(ino, 0) + int(parts[1])
    return out


def test_live_workers_map_only_their_own_capture_rings(lab: Lab) -> None:
    """Each capture ring (--buffer-size) counts in full in the resident size of every
    process that maps it: a worker must not inherit the other workers' rings."""
    live = Live(lab, "--workers", "2", "--buffer-size", "8MiB", "--settle", "0", name="rings")
    try:
        ctl = live.proc.pid  # `ip netns exec` execs the detector
        kids = [int(p) for p in Path(f"/proc/{ctl}/task/{ctl}/children").read_text().split()]
        assert len(kids) == 2
        mine = _rings(ctl)
        per = 1 if core.AVAILABLE else 2  # one handle per worker with the compiled core, else heads + whole
        assert len(mine) == 2 * per and all(kb >= 8 * 1024 for kb in mine.values())
        w0, w1 = _rings(kids[0]), _rings(kids[1])
        assert len(w0) == len(w1) == per and not set(w0) & set(w1) and set(w0) | set(w1) == set(mine)
        # ... and they still capture
        lab.nsrun("c", *DIG, f"@{SRV4}", "s07.upd.kaspersky.com", "A")
        lab.nsrun("c2", *CURL, "-k", "--resolve", f"activation-v2.kaspersky.com:443:{SRV4}",
                  "https://activation-v2.kaspersky.com/")
        live.wait_contacts({(C1, "dns-query", "s07.upd.kaspersky.com"), (C2, "tls-sni", "activation-v2.kaspersky.com")})
    finally:
        assert live.stop() == 0
