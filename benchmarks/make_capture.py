#!/usr/bin/env python3
"""make_capture.py - build the benchmark capture from real traffic (run as root).

    sudo .venv/bin/python benchmarks/make_capture.py [--bulk-mb 800] [--scale 1.0] [--seed 7]

Writes (benchmarks/_work/ is git-ignored; the capture is generated, never committed):
    benchmarks/_work/bench.pcap         the capture (~1,000,000 packets, ~0.9 GB by default)
    benchmarks/_work/truth.json         distinct Kaspersky contacts the clients really made:
                                        [{"client": ip, "kind": dns|tls|http, "name": ...}]
    benchmarks/_work/capture_info.json  sizes, tcpdump counters, what ran, tshark verification

The lab (two network namespaces joined by one veth pair; nothing is connected to the host's
interfaces and neither namespace has a default route; only 198.18.0.0/15 and 2001:db8::/32):

    kdtbench-c  kb-c  198.18.1.1 .. 198.18.1.20/16   ===== veth =====  kb-s  198.18.0.1/16  kdtbench-s
                      2001:db8::1:1 .. ::1:5/64     (MTU 1500,              2001:db8::1/64
                                                     offloads off,          198.18.0.2, 2001:db8::2
                                                     tcpdump on kb-s)       ("mirror", bulk only)

Servers in kdtbench-s: dnsmasq (answers every name with 198.18.0.1 / 2001:db8::1, UDP and TCP)
and nginx (HTTP 80/8080, HTTPS 443/8443; self-signed wildcard certificates chosen by SNI:
one for Kaspersky names, one for everything else; random-data files for bulk downloads).
Clients in kdtbench-c, run in parallel batches (a thread pool, like ``xargs -P``), each
picking its source address (dig -b, curl --interface, openssl s_client -bind):
  * bulk: curl downloads of 20-50 MB files over HTTP and HTTPS from the mirror address,
    whose egress is shaped with tc htb (--bulk-mbit, all bulk flows together) so that
    tcpdump keeps up; the client reads at full speed, so TCP ACKs as it normally does;
    interleaved with everything below;
  * dig: one batch file per client address (``dig -f``), ~1000 UDP queries per IPv4 client,
    fewer per IPv6 client, plus ~30 TCP queries per client;
  * curl: one config file per client (``curl -K``, many operations, ``--parallel``) for HTTPS
    and one for HTTP (Host from the URL, ``:8080`` ports, ``Host: name.`` with a trailing
    dot, upper-case Host headers, several requests on one keep-alive connection);
  * openssl s_client: a few TLS 1.2/1.3 handshakes per client (some SNIs with a trailing dot);
  * curl through the system resolver (dnsmasq via /etc/netns/kdtbench-c/resolv.conf).
Names: ordinary ones (www.example.org, random *.example.net ...), look-alike decoys
(notkaspersky.com, kaspersky.com.evil.example, mykaspersky-labs.com,
upd-kaspersky.com.example.org ...) and Kaspersky names from signatures/kaspersky.yaml (every
exact name, the bare suffixes plus names below them, wildcard instances), some in mixed case.

Ground truth is recorded from what ran: dig batches that ran, curl operations that got a
local address (``-w %{local_ip}``: the connection was made, so the ClientHello or request
went out), s_client runs that connected, resolver lookups (their source address is the route
source to the name server).  Afterwards tshark -n extracts dns.qry.name,
tls.handshake.extensions_server_name and http.host from the capture and the two sets are
compared; differences are printed and saved in capture_info.json.

Cleanup (also on error, Ctrl-C, SIGTERM): every process started is stopped by PID, any
process left in our two namespaces is killed by PID, the namespaces and
/etc/netns/kdtbench-c are removed, the temporary directory is deleted (--keep-work keeps it).
Needs: iproute2 ethtool tcpdump tshark dnsmasq nginx(-light) bind9-dnsutils curl openssl.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contextlib

import bench_lib  # noqa: E402

NS_C, NS_S = "kdtbench-c", "kdtbench-s"
IF_C, IF_S = "kb-c", "kb-s"
SRV4, SRV6 = "198.18.0.1", "2001:db8::1"
BULK4, BULK6 = "198.18.0.2", "2001:db8::2"  # the "mirror" address: bulk downloads, shaped
CLIENTS4 = [f"198.18.1.{i}" for i in range(1, 21)]
CLIENTS6 = [f"2001:db8::1:{i}" for i in range(1, 6)]
TOOLS = ("ip", "ethtool", "tcpdump", "tshark", "dnsmasq", "nginx", "dig", "curl", "openssl")

ORDINARY_FIXED = ["www.example.org", "example.org", "mail.example.org", "www.example.com",
                  "api.example.com", "static.example.net", "login.example.net", "news.example.org"]
DECOYS = ["notkaspersky.com", "kaspersky.com.evil.example", "mykaspersky-labs.com",
          "upd-kaspersky.com.example.org", "kaspersky.example.net", "s05.upd.kaspersky.com.evil.example",
          "kaspersky-labs.com.example.net", "xkaspersky.com", "activation-v2-kaspersky.com",
          "dnl-01.geo.kaspersky.com.example.org", "securelist.com.example.net", "kasperskylabs.example",
          "touch-kaspersky.com", "ksn-file-geo.kaspersky-labs.example"]
WORDS = ["alpha", "cdn", "img", "news", "shop", "mail", "api", "video", "static", "auth",
         "files", "docs", "status", "media", "assets", "beta", "portal", "track", "sync", "data"]

STOP = threading.Event()


def log(msg: str) -> None:
    sys.stderr.write(time.strftime("[%H:%M:%S] ") + msg + "\n")
    sys.stderr.flush()


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------
# process bookkeeping: everything we start is tracked and stopped by PID
# ---------------------------------------------------------------------------
class Procs:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # RLock: stop_all() may run in a signal handler
        self.live: dict[int, subprocess.Popen] = {}

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        if STOP.is_set():
            raise Failure("stopping")
        p = subprocess.Popen(cmd, **kw)
        with self.lock:
            self.live[p.pid] = p
        return p

    def forget(self, p: subprocess.Popen) -> None:
        with self.lock:
            self.live.pop(p.pid, None)

    def run(self, cmd: list[str], timeout: float, stdin=subprocess.DEVNULL) -> tuple[int, str, str]:
        p = self.popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       errors="replace")
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            err += f"\n[make_capture: killed after {timeout} s]"
        finally:
            self.forget(p)
        return p.returncode, out, err

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        self.forget(p)

    def stop_all(self) -> None:
        with self.lock:
            procs = list(self.live.values())
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        deadline = time.time() + 3
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with self.lock:
            self.live.clear()


PROCS = Procs()


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> str:
    rc, out, err = PROCS.run(list(cmd), timeout)
    if check and rc != 0:
        raise Failure(f"command failed ({rc}): {' '.join(cmd)}\n{err.strip()}")
    return out


def inns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def ns_exists(ns: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == ns for line in out.splitlines() if line.strip())


def teardown_lab() -> None:
    """Kill (by PID) what still lives in our namespaces, then delete them."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for ns in (NS_C, NS_S):
            if not ns_exists(ns):
                continue
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), sig)
        time.sleep(0.3)
    for ns in (NS_C, NS_S):
        if ns_exists(ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir("/etc/netns")  # only if empty


def nooffload(ns: str, ifc: str) -> None:
    rc, _, _ = PROCS.run(inns(ns, "ethtool", "-K", ifc, "tso", "off", "gso", "off", "gro", "off",
                              "tx", "off", "rx", "off"), 10)
    if rc != 0:
        PROCS.run(inns(ns, "ethtool", "-K", ifc, "tso", "off", "gso", "off", "gro", "off"), 10)


def build_lab(bulk_mbit: int) -> None:
    log(f"building the lab (namespaces {NS_C}, {NS_S})")
    sh("ip", "netns", "add", NS_C)
    sh("ip", "netns", "add", NS_S)
    sh("ip", "link", "add", IF_C, "netns", NS_C, "address", "02:00:00:00:b1:01", "mtu", "1500", "type", "veth",
       "peer", "name", IF_S, "netns", NS_S, "address", "02:00:00:00:b0:01", "mtu", "1500")
    for ns, ifc in ((NS_C, IF_C), (NS_S, IF_S)):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # no router solicitations / DAD noise on the capture link
        sh(*inns(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{ifc}.accept_ra=0"))
        sh(*inns(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{ifc}.router_solicitations=0"))
        nooffload(ns, ifc)
    sh("ip", "-n", NS_S, "addr", "add", f"{SRV4}/16", "dev", IF_S)
    sh("ip", "-n", NS_S, "addr", "add", f"{SRV6}/64", "dev", IF_S, "nodad")
    sh("ip", "-n", NS_S, "addr", "add", f"{BULK4}/16", "dev", IF_S)
    sh("ip", "-n", NS_S, "addr", "add", f"{BULK6}/64", "dev", IF_S, "nodad")
    for a in CLIENTS4:
        sh("ip", "-n", NS_C, "addr", "add", f"{a}/16", "dev", IF_C)
    for a in CLIENTS6:
        sh("ip", "-n", NS_C, "addr", "add", f"{a}/64", "dev", IF_C, "nodad")
    for ns, ifc in ((NS_C, IF_C), (NS_S, IF_S)):
        sh("ip", "-n", ns, "link", "set", ifc, "up")
    # Shape only what leaves the mirror address (the bulk downloads) so that tcpdump keeps up;
    # the receiver still reads at line rate, so it ACKs as usual (every second segment).
    # Short connections to 198.18.0.1 / 2001:db8::1 are not shaped.
    tc = ["ip", "netns", "exec", NS_S, "tc"]
    sh(*tc, "qdisc", "replace", "dev", IF_S, "root", "handle", "1:", "htb", "default", "10")
    sh(*tc, "class", "add", "dev", IF_S, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit", "quantum", "60000")
    sh(*tc, "class", "add", "dev", IF_S, "parent", "1:", "classid", "1:20", "htb", "rate", f"{bulk_mbit}mbit",
       "ceil", f"{bulk_mbit}mbit", "quantum", "60000")
    sh(*tc, "filter", "add", "dev", IF_S, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
       "match", "ip", "src", f"{BULK4}/32", "flowid", "1:20")
    sh(*tc, "filter", "add", "dev", IF_S, "parent", "1:", "protocol", "ipv6", "prio", "2", "u32",
       "match", "ip6", "src", f"{BULK6}/128", "flowid", "1:20")
    # a resolver for the clients that use the system resolver (curl without --resolve)
    os.makedirs(f"/etc/netns/{NS_C}", exist_ok=True)
    with open(f"/etc/netns/{NS_C}/resolv.conf", "w") as fh:
        fh.write(f"nameserver {SRV4}\noptions timeout:2 attempts:1\n")
    with open(f"/etc/netns/{NS_C}/hosts", "w") as fh:
        fh.write("127.0.0.1 localhost\n::1 localhost\n")


def wait_for(seconds: float, fn) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if fn():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------
def kaspersky_server_names(sigset) -> str:
    """nginx server_name entries for every name the pack matches: exact names, ".suffix"
    (nginx: the suffix and every name below it) and a regex per wildcard.  nginx lower-cases
    the SNI and drops a trailing dot before matching."""
    out = []
    for sig in sigset:
        out += list(sig.names)
        out += ["." + x for x in sig.suffixes]
        out += ['"~' + bench_lib.wildcard_regex(w) + '"' for w in sig.wildcards]
    return "\n            ".join(dict.fromkeys(out))


def start_servers(work: str, bulk_sizes: list[int], sigset) -> list[subprocess.Popen]:
    """dnsmasq + nginx.  nginx picks the certificate by SNI like real servers do: Kaspersky
    names get a self-signed certificate for Kaspersky wildcard names, everything else (the
    ordinary names and the look-alikes) one for example.* and the decoy domains; so a TLS 1.2
    certificate carries a Kaspersky name only when the client asked for one."""
    log(f"starting dnsmasq and nginx; writing bulk files {bulk_sizes} MB")
    certs = {
        "other": ("/CN=*.example.net", ("*.example.org", "example.org", "*.example.net", "*.example.com",
                                        "notkaspersky.com", "mykaspersky-labs.com", "*.evil.example",
                                        "*.example.org", "xkaspersky.com", "touch-kaspersky.com")),
        "kaspersky": ("/CN=*.kaspersky.com", ("*.kaspersky.com", "kaspersky.com", "*.upd.kaspersky.com",
                                              "*.geo.kaspersky.com", "*.kaspersky-labs.com",
                                              "*.ksn.kaspersky-labs.com", "*.geoksn.kaspersky.com")),
    }
    for tag, (subj, names) in certs.items():
        san = ",".join("DNS:" + n for n in dict.fromkeys(names))
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-days", "3650", "-subj", subj, "-addext", f"subjectAltName={san}",
           "-keyout", f"{work}/{tag}-key.pem", "-out", f"{work}/{tag}-cert.pem")
    www = os.path.join(work, "www")
    os.makedirs(os.path.join(www, "bulk"), exist_ok=True)
    os.makedirs(os.path.join(work, "nginx", "tmp"), exist_ok=True)
    for mb in sorted(set(bulk_sizes)):
        with open(os.path.join(www, "bulk", f"{mb}m.bin"), "wb") as fh:
            for _ in range(mb):
                fh.write(os.urandom(1 << 20))  # incompressible, like update packages
    ng = os.path.join(work, "nginx")
    knames = kaspersky_server_names(sigset)
    conf = f"""# nginx for the benchmark capture (generated by make_capture.py)
user root;
worker_processes 2;
daemon off;
pid {ng}/nginx.pid;
error_log {ng}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {ng}/tmp/body;
    proxy_temp_path {ng}/tmp/proxy;
    fastcgi_temp_path {ng}/tmp/fastcgi;
    uwsgi_temp_path {ng}/tmp/uwsgi;
    scgi_temp_path {ng}/tmp/scgi;
    server_tokens off;
    default_type application/octet-stream;
    keepalive_requests 10000;
    ssl_protocols TLSv1.2 TLSv1.3;
    server_names_hash_bucket_size 128;
    server {{
        listen 443 ssl;
        listen [::]:443 ssl;
        listen 8443 ssl;
        listen [::]:8443 ssl;
        server_name {knames};
        ssl_certificate {work}/kaspersky-cert.pem;
        ssl_certificate_key {work}/kaspersky-key.pem;
        root {www};
        location /bulk/ {{ }}
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
    server {{
        ssl_certificate {work}/other-cert.pem;
        ssl_certificate_key {work}/other-key.pem;
        listen 80 default_server reuseport backlog=4096;
        listen [::]:80 default_server;
        listen 8080 default_server;
        listen [::]:8080 default_server;
        listen 443 ssl default_server reuseport backlog=4096;
        listen [::]:443 ssl default_server;
        listen 8443 ssl default_server;
        listen [::]:8443 ssl default_server;
        server_name _;
        root {www};
        location /bulk/ {{ }}
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""
    with open(os.path.join(work, "nginx.conf"), "w") as fh:
        fh.write(conf)
    procs = []
    procs.append(PROCS.popen(inns(NS_S, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                  "--no-poll", "--user=root", "--group=root", f"--pid-file={work}/dnsmasq.pid",
                                  f"--listen-address={SRV4},{SRV6}", "--bind-interfaces",
                                  f"--address=/#/{SRV4}", f"--address=/#/{SRV6}", "--local-ttl=60",
                                  "--cache-size=0", "--dns-forward-max=1000"),
                             stdout=open(f"{work}/dnsmasq.out", "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
    procs.append(PROCS.popen(inns(NS_S, "nginx", "-e", f"{ng}/error.log", "-c", f"{work}/nginx.conf", "-p", ng + "/"),
                             stdout=open(f"{work}/nginx.out", "w"), stderr=subprocess.STDOUT))  # noqa: SIM115

    def up() -> bool:
        out = subprocess.run(inns(NS_S, "ss", "-Hlntu"), capture_output=True, text=True).stdout
        ports = {ln.split()[4].rsplit(":", 1)[-1] for ln in out.splitlines() if len(ln.split()) > 4}
        return {"53", "80", "443", "8080", "8443"} <= ports

    if not wait_for(15, up):
        raise Failure(f"servers did not come up (see {work}/nginx.out, {work}/dnsmasq.out)")
    return procs


# ---------------------------------------------------------------------------
# the plan: which names each client contacts, how
# ---------------------------------------------------------------------------
def rand_label(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def kaspersky_names(sigset, pats: bench_lib.Patterns, rng: random.Random) -> list[str]:
    """Every exact name; each suffix bare and with two names below it; wildcard instances."""
    names: list[str] = []
    for sig in sigset:
        names.extend(sig.names)
        for suf in sig.suffixes:
            names.append(suf)
            names.append(f"{rng.choice(WORDS)}{rng.randint(1, 99)}.{suf}")
            names.append(f"{rand_label(rng, 6)}.{suf}")
        for w in sig.wildcards:
            for _ in range(3):
                names.append(re.sub(r"\?", lambda _m: rng.choice(string.digits),
                                    re.sub(r"\*", lambda _m: rand_label(rng, rng.randint(2, 8)), w)))
    names = sorted(set(names))
    bad = [n for n in names if not pats.matches(n)]
    if bad:
        raise Failure(f"generated Kaspersky names that the pack does not match: {bad[:5]}")
    return names


def ordinary_names(rng: random.Random, n: int) -> list[str]:
    out = list(ORDINARY_FIXED)
    while len(out) < n:
        r = rng.random()
        if r < 0.4:
            out.append(f"{rng.choice(WORDS)}{rng.randint(1, 999)}.example.net")
        elif r < 0.7:
            out.append(f"{rand_label(rng, rng.randint(4, 12))}.{rng.choice(WORDS)}.example.com")
        else:
            out.append(f"{rng.choice(WORDS)}-{rand_label(rng, 5)}.example.org")
    return sorted(set(out))


def mixcase(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c for c in name)


class Plan:
    """Generates the client jobs; the truth is filled in from what the jobs report."""

    def __init__(self, args, sigset, work: str) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.pats = bench_lib.Patterns(sigset)
        self.knames = kaspersky_names(sigset, self.pats, self.rng)
        self.ordinary = ordinary_names(self.rng, 3000)
        self.decoys = [d for d in DECOYS if not self.pats.matches(d)]
        for n in self.ordinary:
            if self.pats.matches(n):
                raise Failure(f"ordinary name {n} matches the pack")
        if len(self.decoys) != len(DECOYS):
            raise Failure(f"decoys that match the pack: {sorted(set(DECOYS) - set(self.decoys))}")
        self.must = [f"s{i:02d}.upd.kaspersky.com" for i in range(20)] + [
            "activation-v2.kaspersky.com", "touch.kaspersky.com", "ksn-file-geo.kaspersky-labs.com",
            "ksn-url-geo.kaspersky-labs.com", "ksn-verdict-geo.kaspersky-labs.com"] + [
            f"dnl-{i:02d}.geo.kaspersky.com" for i in range(20)]
        self.truth: set[tuple[str, str, str]] = set()
        self.truth_lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []
        self.opid = 0
        self.ops: dict[str, tuple[str, str, str]] = {}  # op id -> (kind, host as written, planned client)

    def add_truth(self, client: str, kind: str, name: str) -> None:
        n = bench_lib.norm_host(name)
        if self.pats.matches(n):
            with self.truth_lock:
                self.truth.add((bench_lib.norm_ip(client), kind, n))

    def count(self, key: str, n: int = 1) -> None:
        with self.truth_lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def problem(self, msg: str) -> None:
        with self.truth_lock:
            self.problems.append(msg)
        log("WARNING: " + msg)

    def pick(self, kset: list[str], k_share: float, decoy_share: float) -> str:
        r = self.rng.random()
        if r < k_share:
            return self.rng.choice(kset)
        if r < k_share + decoy_share:
            return self.rng.choice(self.decoys)
        return self.rng.choice(self.ordinary)

    def kset(self, size: int) -> list[str]:
        return self.rng.sample(self.knames, min(size, len(self.knames))) + self.rng.sample(self.must, 6)

    def next_op(self, kind: str, host: str, client: str) -> str:
        self.opid += 1
        oid = f"o{self.opid}"
        self.ops[oid] = (kind, host, client)
        return oid

    # ---- jobs (each returns a callable run in the pool) ----
    def jobs(self) -> tuple[list, list]:
        s = self.args.scale
        rng = self.rng
        short: list = []
        for fam, clients in (("4", CLIENTS4), ("6", CLIENTS6)):
            srv = SRV4 if fam == "4" else SRV6
            n_udp = int((2500 if fam == "4" else 1000) * s)
            for c in clients:
                kset = self.kset(70)
                lines, planned = [], []
                for _ in range(n_udp):
                    name = self.pick(kset, 0.10, 0.05)
                    if self.pats.matches(name) and rng.random() < 0.05:
                        name = mixcase(rng, name)
                    qt = rng.choices(["A", "AAAA", "TXT", "MX", "HTTPS"], [60, 30, 4, 3, 3])[0]
                    lines.append(f"-b {c} @{srv} +tries=1 +time=2 {name} {qt}")
                    planned.append(name)
                short.append(self._dig_job(c, lines, planned, "dig-udp"))
                lines, planned = [], []
                for _ in range(int(80 * s) or 1):
                    name = self.pick(kset, 0.3, 0.1)
                    lines.append(f"-b {c} @{srv} +tcp +tries=1 +time=3 {name} {rng.choice(['A', 'AAAA'])}")
                    planned.append(name)
                short.append(self._dig_job(c, lines, planned, "dig-tcp"))
                short.append(self._curl_https_job(c, fam, self.kset(30), int(250 * s) or 1))
                short.append(self._curl_http_job(c, fam, self.kset(30), int(200 * s) or 1))
                short.append(self._sclient_job(c, fam, self.kset(10), int((20 if fam == "4" else 10) * s) or 1))
        short.append(self._resolver_job(int(60 * s) or 1))
        rng.shuffle(short)
        return short, self._bulk_jobs()

    def _dig_job(self, client: str, lines: list[str], planned: list[str], key: str):
        path = os.path.join(self.work, "batches", f"{key}-{client}.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")

        def run() -> None:
            rc, out, err = PROCS.run(inns(NS_C, "dig", "-f", path, "+noall", "+question"), 600)
            asked = out.count("\n")
            timeouts = (out + err).count("timed out")
            self.count(key, len(lines))
            if timeouts:
                self.count(key + "-timeouts", timeouts)
            if asked < len(lines) * 0.99:
                self.problem(f"{key} {client}: only {asked} of {len(lines)} questions printed (rc {rc}): {err[-300:]}")
            # UDP: the query went out whether or not it was answered; TCP: printed = connected
            for name in planned:
                self.add_truth(client, "dns", name)
        return run

    WOUT = "%{exitcode} %{local_ip} %{http_code} %{url_effective}\\n"

    def _curl_ops(self, client: str, fam: str, ops: list[dict], bulk: bool = False) -> str:
        if bulk:
            srv = BULK4 if fam == "4" else f"[{BULK6}]"
        else:
            srv = SRV4 if fam == "4" else f"[{SRV6}]"
        blocks = []
        for op in ops:
            b = ["silent", "insecure", 'output = "/dev/null"', f'write-out = "{self.WOUT}"', "max-time = 20",
                 "connect-timeout = 5"]
            if op.get("interface", True):
                b.append(f'interface = "{client}"')
            if op.get("resolve"):
                b.append(f'resolve = "{op["resolve"]}:{op["port"]}:{srv}"')
            for h in op.get("headers", []):
                b.append(f'header = "{h}"')
            b.extend(op.get("extra", []))
            b.append(f'url = "{op["url"]}"')
            blocks.append("\n".join(b))
        return "\nnext\n".join(blocks) + "\n"

    def _run_curl(self, client: str, key: str, cfg: str, parallel: bool, timeout: float, dns_client: str | None = None):
        path = os.path.join(self.work, "batches", f"{key}-{client}.curl")
        with open(path, "w") as fh:
            fh.write(cfg)
        cmd = ["curl", "-K", path] + (["--parallel", "--parallel-max", "4"] if parallel else [])
        rc, out, err = PROCS.run(inns(NS_C, *cmd), timeout)
        done = 0
        for line in out.splitlines():
            m = re.match(r"(\d+) (\S*) (\d+) \S+/k/(o\d+)", line)
            if not m:
                continue
            code, local, oid = int(m.group(1)), m.group(2), m.group(4)
            kind, host, _planned = self.ops[oid]
            done += 1
            if dns_client:  # resolved through the system resolver: the lookup is a DNS contact
                self.add_truth(dns_client, "dns", host)
            if local:  # connected: the ClientHello / the request head went out
                self.add_truth(local, kind, host)
                self.count(key)
            else:
                self.count(key + "-failed")
                if code not in (6, 7, 28):
                    self.problem(f"{key} {client}: {line}")
        if done == 0:
            self.problem(f"{key} {client}: no transfers reported (rc {rc}): {err[-300:]}")

    def _curl_https_job(self, client: str, fam: str, kset: list[str], n: int):
        ops = []
        for _ in range(n):
            name = self.pick(kset, 0.3, 0.1)
            port = 8443 if self.rng.random() < 0.1 else 443
            oid = self.next_op("tls", name, client)
            pfx = "" if port == 443 else f":{port}"
            extra = ['tls-max = "1.2"'] if self.rng.random() < 0.2 else []
            ops.append({"url": f"https://{name}{pfx}/k/{oid}", "resolve": name, "port": port, "extra": extra})
        cfg = self._curl_ops(client, fam, ops)
        return lambda: self._run_curl(client, "curl-https", cfg, True, 600)

    def _curl_http_job(self, client: str, fam: str, kset: list[str], n: int):
        srv = SRV4 if fam == "4" else f"[{SRV6}]"
        ops = []
        for _ in range(n):
            name = self.pick(kset, 0.3, 0.1)
            r = self.rng.random()
            if r < 0.6:
                oid = self.next_op("http", name, client)
                ops.append({"url": f"http://{name}/k/{oid}", "resolve": name, "port": 80})
            elif r < 0.75:
                oid = self.next_op("http", name, client)
                ops.append({"url": f"http://{name}:8080/k/{oid}", "resolve": name, "port": 8080})
            else:
                # URL with the server's address and a Host header: with a trailing dot, or in
                # mixed case.  curl keeps one connection to the address, so these requests
                # share keep-alive connections; "Connection: close" on most of them keeps the
                # runs short (a few different Host headers per connection, as a client behind
                # a load balancer might send; dozens per connection would be a proxy pattern).
                h = f"{name}." if r < 0.9 else mixcase(self.rng, name)
                oid = self.next_op("http", h, client)
                hdrs = [f"Host: {h}"] + (["Connection: close"] if self.rng.random() < 0.7 else [])
                ops.append({"url": f"http://{srv}/k/{oid}", "headers": hdrs})
        if fam == "4" and client == CLIENTS4[3]:  # the classic plain-HTTP endpoint, always present
            oid = self.next_op("http", "touch.kaspersky.com", client)
            ops.append({"url": f"http://touch.kaspersky.com/k/{oid}", "resolve": "touch.kaspersky.com", "port": 80})
        cfg = self._curl_ops(client, fam, ops)
        return lambda: self._run_curl(client, "curl-http", cfg, True, 600)

    def _sclient_job(self, client: str, fam: str, kset: list[str], n: int):
        conns = []
        for _ in range(n):
            name = self.pick(kset, 0.5, 0.2)
            dot = self.rng.random() < 0.15
            port = self.rng.choice([443, 443, 8443])
            ver = self.rng.choice(["-tls1_2", "-tls1_3", None])
            conns.append((name + ("." if dot else ""), port, ver))

        def run() -> None:
            for sni, port, ver in conns:
                if fam == "4":
                    connect, bind = f"{SRV4}:{port}", f"{client}:0"
                else:
                    connect, bind = f"[{SRV6}]:{port}", f"[{client}]:0"
                cmd = ["openssl", "s_client", "-connect", connect, "-bind", bind, "-servername", sni, "-brief"]
                if ver:
                    cmd.append(ver)
                rc, out, err = PROCS.run(inns(NS_C, *cmd), 20)
                if "CONNECTION ESTABLISHED" in out + err or "Protocol version" in out + err:
                    self.add_truth(client, "tls", sni)
                    self.count("s_client")
                else:
                    self.problem(f"s_client {client} {sni}: rc {rc}: {(out + err)[-300:]}")
        return run

    def _resolver_job(self, n: int):
        """curl through the system resolver: glibc asks dnsmasq (A and AAAA) from the route source."""
        route = subprocess.run(inns(NS_C, "ip", "route", "get", SRV4), capture_output=True, text=True).stdout
        m = re.search(r"\bsrc (\S+)", route)
        if not m:
            raise Failure(f"no route source towards {SRV4}: {route}")
        dns_client = m.group(1)
        kset = self.kset(20)
        ops = []
        for _ in range(n):
            name = self.pick(kset, 0.5, 0.2)
            if self.rng.random() < 0.5:
                oid = self.next_op("tls", name, dns_client)
                ops.append({"url": f"https://{name}/k/{oid}", "interface": False})
            else:
                oid = self.next_op("http", name, dns_client)
                ops.append({"url": f"http://{name}/k/{oid}", "interface": False})
        cfg = self._curl_ops("resolver", "4", ops)
        return lambda: self._run_curl("resolver", "curl-resolver", cfg, False, 600, dns_client=dns_client)

    def _bulk_jobs(self) -> list:
        rng = self.rng
        sizes = [50, 40, 30, 20]
        targets = [("https", "dnl-03.geo.kaspersky.com"), ("http", "mirror.example.net"),
                   ("https", "cdn7.example.org"), ("http", "s07.upd.kaspersky.com"),
                   ("https", "downloads.upd.kaspersky.com"), ("http", "www.example.org"),
                   ("https", "video.example.com"), ("http", "dnl-11.geo.kaspersky.com")]
        jobs, total, i = [], 0, 0
        while total < self.args.bulk_mb:
            mb = sizes[i % len(sizes)]
            scheme, name = targets[i % len(targets)]
            fam = "6" if i % 5 == 4 else "4"
            client = rng.choice(CLIENTS6 if fam == "6" else CLIENTS4)
            kind = "tls" if scheme == "https" else "http"
            oid = self.next_op(kind, name, client)
            port = 443 if scheme == "https" else 80
            op = {"url": f"{scheme}://{name}/bulk/{mb}m.bin?k/{oid}", "resolve": name, "port": port,
                  "extra": ["max-time = 300"]}
            cfg = self._curl_ops(client, fam, [op], bulk=True).replace("max-time = 20\n", "")
            jobs.append(self._bulk_job(client, i, cfg, mb))
            total += mb
            i += 1
        self.counts["bulk-planned-mb"] = total
        return jobs

    def _bulk_job(self, client: str, i: int, cfg: str, mb: int):
        def run() -> None:
            path = os.path.join(self.work, "batches", f"bulk{i}.curl")
            with open(path, "w") as fh:
                fh.write(cfg)
            rc, out, err = PROCS.run(inns(NS_C, "curl", "-K", path), 400)
            m = re.match(r"(\d+) (\S*) (\d+) \S+k/(o\d+)", out.strip())
            if not m or m.group(1) != "0" or m.group(3) != "200":
                self.problem(f"bulk download {i} from {client}: {out.strip()} {err[-300:]}")
            if m and m.group(2):
                kind, host, _ = self.ops[m.group(4)]
                self.add_truth(m.group(2), kind, host)
                self.count("bulk-downloads")
                self.count("bulk-mb", mb)
        return run


# ---------------------------------------------------------------------------
# verification with tshark
# ---------------------------------------------------------------------------
def tshark_contacts(pcap: str, pats: bench_lib.Patterns, timeout: float) -> tuple[set, dict]:
    cmd = ["tshark", "-n", "-r", pcap, "-o", "http.desegment_body:FALSE",
           "-o", "tcp.analyze_sequence_numbers:FALSE", "-d", "tcp.port==8443,tls", "-d", "tcp.port==8080,http",
           "-Y", "(dns && dns.flags.response == 0) || tls.handshake.type == 1 || http.request",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=|",
           "-e", "ip.src", "-e", "ipv6.src", "-e", "dns.qry.name", "-e", "tls.handshake.extensions_server_name",
           "-e", "http.host"]
    t0 = time.time()
    rc, out, err = PROCS.run(cmd, timeout)
    if rc != 0:
        raise Failure(f"tshark failed ({rc}): {err[-500:]}")
    seen: set = set()
    other = {"dns": set(), "tls": set(), "http": set()}
    for line in out.splitlines():
        f = line.split("\t")
        if len(f) < 5:
            continue
        src = f[0] or f[1]
        for kind, col in (("dns", f[2]), ("tls", f[3]), ("http", f[4])):
            for name in filter(None, col.split("|")):
                n = bench_lib.norm_host(name)
                if pats.matches(n):
                    seen.add((bench_lib.norm_ip(src), kind, n))
                else:
                    other[kind].add(n)
    return seen, {"seconds": round(time.time() - t0, 1), "non_kaspersky_names": {k: len(v) for k, v in other.items()},
                  "decoys_seen": sorted({n for v in other.values() for n in v} & set(DECOYS))}


# ---------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=bench_lib.WORK, help="output directory (default benchmarks/_work)")
    ap.add_argument("--bulk-mb", type=int, default=900, help="total MB of bulk downloads (default 900)")
    ap.add_argument("--bulk-mbit", type=int, default=160,
                    help="shaped rate of all bulk downloads together, Mbit/s (default 160)")
    ap.add_argument("--bulk-parallel", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=3, help="short-connection jobs at once (default 3)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplier for the short-connection counts")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--deadline", type=float, default=900, help="abort the traffic after this many seconds")
    ap.add_argument("--no-verify", action="store_true", help="skip the tshark verification")
    ap.add_argument("--keep-work", action="store_true")
    args = ap.parse_args()

    if os.geteuid() != 0:
        log("run as root")
        return 2
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        log(f"missing tools: {missing} (apt-get install iproute2 ethtool tcpdump tshark dnsmasq-base "
            "nginx-light bind9-dnsutils curl openssl)")
        return 2

    def on_signal(signum, _frame):
        STOP.set()
        PROCS.stop_all()  # running clients end now; queued jobs fail at once (STOP)
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    os.makedirs(args.out, exist_ok=True)
    pcap = os.path.join(args.out, "bench.pcap")
    tmp_pcap = pcap + ".partial"
    work = tempfile.mkdtemp(prefix="kdt-bench.")
    os.chmod(work, 0o755)
    rc = 1
    t_start = time.time()
    try:
        teardown_lab()  # leftovers of an interrupted earlier run
        sigset = bench_lib.load_pack()
        plan = Plan(args, sigset, work)
        build_lab(args.bulk_mbit)
        short_jobs, bulk_jobs = plan.jobs()
        servers = start_servers(work, [50, 40, 30, 20], sigset)
        # warm the neighbour caches so that the capture starts with real traffic
        sh(*inns(NS_C, "dig", "+short", f"@{SRV4}", "warmup.example.org"))
        sh(*inns(NS_C, "dig", "+short", f"@{SRV6}", "warmup.example.org", "AAAA"))

        log(f"capturing on {NS_S}/{IF_S} -> {tmp_pcap}")
        tlog = os.path.join(work, "tcpdump.log")
        tcpd = PROCS.popen(inns(NS_S, "tcpdump", "-n", "-i", IF_S, "-s", "0", "-B", "262144", "-Z", "root",
                                "-w", tmp_pcap), stdout=subprocess.DEVNULL, stderr=open(tlog, "w"))  # noqa: SIM115
        if not wait_for(10, lambda: "listening on" in bench_lib.read_text(tlog)):
            raise Failure(f"tcpdump did not start: {bench_lib.read_text(tlog)}")
        time.sleep(0.5)

        log(f"traffic: {len(short_jobs)} short-connection jobs ({args.parallel} at once), "
            f"{len(bulk_jobs)} bulk downloads ({args.bulk_parallel} at once, {args.bulk_mbit} Mbit/s together)")
        t_traffic = time.time()
        with cf.ThreadPoolExecutor(args.bulk_parallel) as bulk_pool, cf.ThreadPoolExecutor(args.parallel) as pool:
            futs = [bulk_pool.submit(j) for j in bulk_jobs] + [pool.submit(j) for j in short_jobs]
            done, pending = cf.wait(futs, timeout=args.deadline)
            if pending:
                STOP.set()
                PROCS.stop_all()
                raise Failure(f"traffic did not finish within {args.deadline} s")
            for f in done:
                f.result()  # re-raise job exceptions
        t_traffic = time.time() - t_traffic
        log(f"traffic done in {t_traffic:.0f} s; stopping the capture")
        time.sleep(2.0)  # last FIN/ACKs, and let tcpdump drain its ring buffer
        PROCS.stop(tcpd, signal.SIGINT, wait=30)
        tstats = bench_lib.read_text(tlog)
        m = re.search(r"(\d+) packets captured.*?(\d+) packets received by filter.*?(\d+) packets dropped by kernel",
                      tstats, re.S)
        captured, received, dropped = (int(x) for x in m.groups()) if m else (-1, -1, -1)
        if dropped:
            plan.problem(f"tcpdump: {dropped} packets dropped by the kernel (lower --bulk-mbit)")
        for p in servers:
            PROCS.stop(p)
        os.replace(tmp_pcap, pcap)
        os.chmod(pcap, 0o644)

        truth = sorted(plan.truth)
        with open(os.path.join(args.out, "truth.json"), "w") as fh:
            json.dump([{"client": c, "kind": k, "name": n} for c, k, n in truth], fh, indent=1)
            fh.write("\n")
        stats = bench_lib.pcap_stats(pcap)
        per_kind = {k: sum(1 for t in truth if t[1] == k) for k in bench_lib.KINDS}
        log(f"capture: {stats['packets']:,} packets, {stats['file_bytes'] / 1e6:,.0f} MB; "
            f"truth: {len(truth)} contacts {per_kind}")

        verify: dict = {"skipped": True}
        if not args.no_verify:
            log("verifying the ground truth with tshark -n (dns.qry.name, tls SNI, http.host)")
            seen, info = tshark_contacts(pcap, plan.pats, 1200)
            missing = sorted(set(truth) - seen)
            extra = sorted(seen - set(truth))
            verify = {"tshark_contacts": len(seen), "missing_in_capture": [list(x) for x in missing],
                      "not_in_truth": [list(x) for x in extra], **info}
            log(f"tshark: {len(seen)} contacts in {info['seconds']} s; in truth but not in the capture: "
                f"{len(missing)}; in the capture but not in truth: {len(extra)}")
            for x in missing[:10]:
                log(f"  missing in capture: {x}")
            for x in extra[:10]:
                log(f"  not in truth: {x}")
            log(f"  decoys seen in the capture: {len(info['decoys_seen'])} of {len(DECOYS)}")
            if missing or extra:
                plan.problem(f"truth and capture differ: {len(missing)} missing, {len(extra)} extra")

        info = {
            "pcap": os.path.relpath(pcap, bench_lib.REPO),
            **stats,
            "tcpdump": {"captured": captured, "received_by_filter": received, "dropped_by_kernel": dropped},
            "truth_contacts": len(truth), "truth_by_kind": per_kind,
            "truth_clients": len({t[0] for t in truth}),
            "kaspersky_names_in_pool": len(plan.knames),
            "decoys": plan.decoys,
            "ran": plan.counts,
            "args": vars(args),
            "traffic_seconds": round(t_traffic, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "problems": plan.problems,
            "verify": verify,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(os.path.join(args.out, "capture_info.json"), "w") as fh:
            json.dump(info, fh, indent=1)
            fh.write("\n")
        log("ran: " + ", ".join(f"{k} {v}" for k, v in sorted(plan.counts.items())))
        log(f"done in {time.time() - t_start:.0f} s: {pcap}")
        rc = 0 if not plan.problems else 3
        if plan.problems:
            log(f"{len(plan.problems)} problem(s), see capture_info.json")
    except Failure as exc:
        log(f"ERROR: {exc}")
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc})")
        rc = 130
    finally:
        STOP.set()
        PROCS.stop_all()
        teardown_lab()
        if os.path.exists(tmp_pcap):
            os.unlink(tmp_pcap)
        if args.keep_work or rc not in (0, 3, 130):
            shutil.rmtree(os.path.join(work, "www", "bulk"), ignore_errors=True)  # large, not needed for debugging
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
