"""``detector live`` pieces that need no root: the kernel filters (compiled by libpcap and
run on hand-built frames), the live de-duplication policy, the metrics exposition and its
HTTP server, the worker wire format, and the one-line capture errors."""

from __future__ import annotations

import gc
import random
import socket
import struct
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pcapy
import pytest
from scapy.all import GRE, ICMP, IP, TCP, UDP, Ether, IPv6, Raw  # type: ignore[attr-defined]
from scapy.layers.dns import DNS, DNSQR

from detector.capture import live as cap
from detector.capture.live import LIVE_MAX_FLOWS
from detector.live.worker import Worker, WorkerProc, _wire, live_detector
from detector.metrics import CONTENT_TYPE, MetricsServer, Sample, render
from detector.model import Evidence, Match, Observation, Strength
from detector.pipeline import Detector
from detector.settle import LiveDedup
from detector.signatures import load_signatures

# -- the kernel filters ---------------------------------------------------------------------
C, S = "198.18.0.10", "198.18.0.1"
E = Ether(src="02:00:00:00:00:10", dst="02:00:00:00:00:01")
QUIC_LONG = bytes([0xC3]) + b"\x00\x00\x00\x01" + b"\x00" * 40
QUIC_SHORT = bytes([0x43]) + b"\x00" * 40

FRAMES: dict[str, tuple[bytes, str | None]] = {
    "tcp-syn": (bytes(E / IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="S")), "whole"),
    "tcp-fin": (bytes(E / IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="FA")), "whole"),
    "tcp-rst": (bytes(E / IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="R")), "whole"),
    "tcp-hello": (bytes(E / IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="PA") / Raw(b"\x16\x03\x01" + b"x" * 60)), "heads"),
    "tcp-bulk-any-port": (bytes(E / IP(src=S, dst=C) / TCP(sport=8080, dport=40001, flags="A") / Raw(b"y" * 1000)), "heads"),
    "tcp-ksc-13000": (bytes(E / IP(src=C, dst=S) / TCP(sport=40002, dport=13000, flags="PA") / Raw(b"z" * 10)), "heads"),
    "tcp-dns": (bytes(E / IP(src=C, dst=S) / TCP(sport=40003, dport=53, flags="PA") / Raw(b"\x00\x1d" + b"q" * 29)), "whole"),
    "udp-dns": (bytes(E / IP(src=C, dst=S) / UDP(sport=40004, dport=53) / DNS(qd=DNSQR(qname="s05.upd.kaspersky.com"))), "whole"),
    "udp-dns-answer": (bytes(E / IP(src=S, dst=C) / UDP(sport=53, dport=40004) / DNS(qr=1, qd=DNSQR(qname="x.example"))), "whole"),
    "quic-initial": (bytes(E / IP(src=C, dst=S) / UDP(sport=40005, dport=443) / Raw(QUIC_LONG)), "whole"),
    "quic-short": (bytes(E / IP(src=C, dst=S) / UDP(sport=40005, dport=443) / Raw(QUIC_SHORT)), None),
    "udp-ksc-15000": (bytes(E / IP(src=S, dst=C) / UDP(sport=40006, dport=15000) / Raw(b"k" * 20)), "whole"),
    "udp-ksc-13000": (bytes(E / IP(src=C, dst=S) / UDP(sport=40007, dport=13000) / Raw(b"k" * 20)), "whole"),
    "vxlan": (bytes(E / IP(src=C, dst=S) / UDP(sport=40008, dport=4789) / Raw(b"\x08" + b"\x00" * 7 + b"i" * 60)), "whole"),
    "geneve": (bytes(E / IP(src=C, dst=S) / UDP(sport=40009, dport=6081) / Raw(b"\x00" * 8 + b"g" * 60)), "whole"),
    "gre": (bytes(E / IP(src=C, dst=S) / GRE() / IP(src="198.18.9.1", dst="198.18.9.2") / ICMP()), "whole"),
    "ipv4-fragment": (bytes(E / IP(src=S, dst=C, flags="MF", frag=0, proto=17) / Raw(b"f" * 64)), "whole"),
    "ipv4-fragment-tail": (bytes(E / IP(src=S, dst=C, frag=8, proto=17) / Raw(b"f" * 64)), "whole"),
    "ipv6-tcp-bulk": (bytes(E / IPv6(src="2001:db8::10", dst="2001:db8::1") / TCP(sport=40010, dport=443, flags="A") / Raw(b"b" * 500)), "whole"),
    "udp-other": (bytes(E / IP(src=C, dst=S) / UDP(sport=40011, dport=5000) / Raw(b"u" * 100)), None),
    "icmp": (bytes(E / IP(src=C, dst=S) / ICMP()), None),
    "arp": (bytes(Ether(src="02:00:00:00:00:10", dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(b"\x00" * 28)), None),
}


def _vlan(frame: bytes) -> bytes:
    """The same frame with an 802.1Q tag inline (a trunk without VLAN offload)."""
    return frame[:12] + b"\x81\x00\x00\x64" + frame[12:]


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "vlan"])
@pytest.mark.parametrize("name", sorted(FRAMES))
def test_filters_pass_each_packet_to_one_handle_at_most(name: str, tagged: bool) -> None:
    heads, whole = cap.filters(True)
    frame, want = FRAMES[name]
    if tagged:
        frame = _vlan(frame)
    got = {role for role, expr in (("heads", heads), ("whole", whole))
           if pcapy.compile(pcapy.DLT_EN10MB, 65535, expr, 1, 0).filter(frame)}
    assert got == ({want} if want else set())


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "vlan"])
def test_the_one_handle_of_the_core_takes_every_ip_packet(tagged: bool) -> None:
    """With the compiled core each interface has one handle ("all"): every IPv4/IPv6
    packet, tagged or not, whichever of the two handles it would go to without the core."""
    prog = pcapy.compile(pcapy.DLT_EN10MB, 65535, cap.all_filter(True), 1, 0)
    for name, (frame, _want) in FRAMES.items():
        if tagged:
            frame = _vlan(frame)
        assert bool(prog.filter(frame)) == (name != "arp"), name


def test_whole_filter_takes_udp_ports_of_port_signatures() -> None:
    frame = bytes(E / IP(src=C, dst=S) / UDP(sport=40000, dport=5000) / Raw(b"u" * 10))
    _, whole = cap.filters(True, udp_ports=(5000,))
    assert pcapy.compile(pcapy.DLT_EN10MB, 65535, whole, 1, 0).filter(frame)

    class Sig:
        ports = (("udp", 5000, 5002), ("tcp", 13000, 13000))

    assert cap.signature_udp_ports([Sig()]) == (5000, 5001, 5002)


def test_raw_ip_links_have_no_vlan_clause() -> None:
    heads, whole = cap.filters(False)
    assert "vlan" not in heads + whole
    pkt = bytes(IP(src=C, dst=S) / UDP(sport=40004, dport=53) / DNS(qd=DNSQR(qname="a.example")))
    assert pcapy.compile(pcapy.DLT_RAW, 65535, whole, 1, 0).filter(pkt)


def test_fanout_groups_differ_per_interface_and_role() -> None:
    ids = {cap.fanout_group(0xFFF0, i, r) for i in range(4) for r in ("heads", "whole")}
    assert len(ids) == 8 and all(0 <= g <= 0xFFFF for g in ids)


def test_missing_interface_is_one_clear_line() -> None:
    with pytest.raises(cap.LiveCaptureError, match=r"^no such interface 'nosuch0' \(interfaces here: .*lo"):
        cap.check_interface("nosuch0")


# -- de-duplication ---------------------------------------------------------------------------
SIGS = load_signatures()
SIG = SIGS.by_id(1610002)


def _match(ts: float, client: str = C, name: str = "s05.upd.kaspersky.com", port: int = 40000,
           strength: Strength = Strength.WEAK, evidence: Evidence = Evidence.DNS_QUERY) -> Match:
    obs = Observation(ts=ts, evidence=evidence, hostname=name, client=client, server=S, client_port=port,
                      server_port=53, proto=17, flow_id=1, detail={"type": "query", "rrname": name, "rrtype": "A"},
                      strength=strength)
    return Match(obs, SIG, name)


def test_first_hit_is_written_after_settle_repeats_are_counted() -> None:
    d = LiveDedup(window=3600, settle=0.5)
    assert d.add(_match(100.0), now=1000.0) == []
    assert d.due(1000.4) == []
    d.add(_match(100.1, port=40001), now=1000.1)  # a repeat before the alert is written
    (a,) = d.due(1000.5)
    assert (a.count, a.first_seen, a.last_seen) == (2, 100.0, 100.1)
    d.add(_match(200.0, port=40002), now=1100.0)  # after: counted, not written
    assert d.due(2000.0) == [] and d.flush() == []
    assert (d.counters.alerts, d.counters.repeats, d.counters.matches) == (1, 1, 3)


def test_settle_zero_writes_at_once_and_keys_are_separate() -> None:
    d = LiveDedup(window=3600, settle=0.0)
    d.add(_match(1.0), now=10.0)
    d.add(_match(1.0, client="198.18.0.11"), now=10.0)
    d.add(_match(1.0, evidence=Evidence.DNS_ANSWER), now=10.0)
    assert len(d.due(10.0)) == 3


def test_a_new_window_alerts_again() -> None:
    d = LiveDedup(window=60, settle=0.0)
    d.add(_match(0.0), now=0.0)
    assert len(d.due(0.0)) == 1
    d.add(_match(30.0), now=30.0)
    assert d.due(30.0) == []
    d.add(_match(61.0), now=61.0)  # the window of the first hit has passed
    (a,) = d.due(61.0)
    assert a.first_seen == 61.0 and a.count == 1


def test_expire_by_clock_empties_the_table() -> None:
    d = LiveDedup(window=60, settle=0.0)
    d.add(_match(0.0), now=0.0)
    d.due(0.0)
    assert d.expire(59.0) == [] and len(d) == 1
    assert d.expire(60.0) == [] and len(d) == 0  # already written: nothing more


def test_the_answer_upgrades_an_alert_still_settling() -> None:
    d = LiveDedup(window=3600, settle=0.5)
    m = _match(5.0)
    d.add(m, now=5.0)
    d.upgrade(LiveDedup.key(m), Strength.COMPLETED)
    (a,) = d.due(6.0)
    assert a.strength == Strength.COMPLETED
    d.add(_match(5.1, strength=Strength.STRONG), now=6.1)  # too late to show: counted
    assert d.due(7.0) == []


def test_full_table_writes_the_oldest_pending_never_loses_it() -> None:
    d = LiveDedup(window=3600, settle=10.0, max_open=2)
    out = []
    for i in range(3):
        out += d.add(_match(float(i), client=f"198.18.0.{20 + i}"), now=float(i))
    assert [a.observation.client for a in out] == ["198.18.0.20"] and d.counters.early == 1
    assert [a.observation.client for a in d.flush()] == ["198.18.0.21", "198.18.0.22"]


def test_matches_travel_without_their_signature() -> None:
    m = _match(1.0)
    kind, sid, obs, pattern = _wire(m)
    assert (kind, sid, obs, pattern) == ("m", SIG.id, m.observation, m.pattern)
    assert _wire("other")[0] == "x"


# -- metrics ------------------------------------------------------------------------------------
def test_render_groups_and_escapes() -> None:
    text = render([
        Sample("x_total", "counter", "help with \\ and\nnewline", 3, {"interface": 'e"th\\0\n'}),
        Sample("x_total", "counter", "ignored", 4, {"interface": "eth1"}),
        Sample("y", "gauge", "a gauge", 1.5),
    ])
    assert text == (
        "# HELP x_total help with \\\\ and\\nnewline\n# TYPE x_total counter\n"
        'x_total{interface="e\\"th\\\\0\\n"} 3\nx_total{interface="eth1"} 4\n'
        "# HELP y a gauge\n# TYPE y gauge\ny 1.5\n"
    )


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_server_serves_the_snapshot() -> None:
    state = {"text": "a 1\n"}
    srv = MetricsServer(f"127.0.0.1:{_port()}", lambda: state["text"])
    srv.start()
    try:
        with urllib.request.urlopen(f"http://{srv.address}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"] == CONTENT_TYPE and r.read() == b"a 1\n"
        state["text"] = "a 2\n"
        with urllib.request.urlopen(f"http://{srv.address}/metrics", timeout=5) as r:
            assert r.read() == b"a 2\n"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://{srv.address}/", timeout=5)
        assert exc.value.code == 404
    finally:
        srv.close()


def test_metrics_address_in_use_is_an_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            MetricsServer(f"127.0.0.1:{s.getsockname()[1]}", lambda: "")


def test_control_messages_go_through_the_sender_thread() -> None:
    a, b = socket.socketpair()
    from multiprocessing.connection import Connection

    mine, theirs = Connection(a.detach()), Connection(b.detach())
    w = WorkerProc(0, 0, mine)
    w.start_sender()
    big: Any = ("sigs", 2, b"x" * (1 << 20))  # larger than a socket buffer
    w.outbox.put(big)
    w.outbox.put(("stop",))
    assert theirs.recv() == big and theirs.recv() == ("stop",)


# -- a worker's statistics and its feeding threads ---------------------------------------------
def _hello_head(i: int) -> bytes:
    """The first segment of a ClientHello from client 198.18.x.y: a stream Python keeps."""
    f = bytearray(FRAMES["tcp-hello"][0])
    f[26:30] = struct.pack("!I", 0xC6120000 + i)  # source address
    return bytes(f)


def test_worker_statistics_wait_for_the_packet_loop() -> None:
    """stats() walks the detector's tables; it must do so under the lock the heads
    threads feed under, not while one of them inserts."""
    w = Worker(0, [], Detector(SIGS, collect=True), None, 16)
    got: list[dict[str, Any]] = []
    with w.lock:  # a heads thread in the middle of a packet
        t = threading.Thread(target=lambda: got.append(w.stats()))
        t.start()
        t.join(0.3)
        assert t.is_alive() and not got
    t.join(5)
    assert len(got) == 1 and got[0]["state_streams"] == 0


def test_worker_statistics_while_a_heads_thread_feeds() -> None:
    """The SYN-flood crash of a live worker ("OrderedDict mutated during iteration" in
    bounds.state): a thread feeds new streams packet by packet as the heads callback does,
    while the main thread sends statistics.  With real threads and a real Detector."""
    w = Worker(0, [], Detector(SIGS, collect=True), None, 16)
    n = 10_000
    frames = [(1.0 + i * 1e-4, 1, _hello_head(i)) for i in range(n)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as two busy threads on a span port do

    def feed() -> None:
        for item in frames:
            with w.lock:
                w.feed_batch([item])

    t = threading.Thread(target=feed)
    try:
        t.start()
        rounds = 0
        while t.is_alive():
            st = w.stats()
            assert st["state_streams"] <= n
            rounds += 1
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert rounds > 1 and w.stats()["state_streams"] == n


def _syn(rng: random.Random) -> bytes:
    """A SYN from a random source to a random port (a SYN flood)."""
    f = bytearray(FRAMES["tcp-syn"][0])
    f[26:30] = rng.randbytes(4)
    f[34:38] = rng.randbytes(4)  # ports
    f[38:42] = rng.randbytes(4)  # sequence number
    return bytes(f)


def test_a_live_worker_stays_small_under_a_syn_flood() -> None:
    """In live every SYN reaches Python (the whole handle): a flood of them from random
    sources fills the stream and flow-counter tables, about 0.9 KB each.  A worker's
    tables are capped at LIVE_MAX_FLOWS, the oldest evicted and counted."""
    rng = random.Random(7)
    n = 100_000
    frames = [_syn(rng) for _ in range(n)]
    det = live_detector(SIGS)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, f in enumerate(frames):
            det.feed(1.0 + i * 1e-5, 1, f)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 60 << 20, f"{grown >> 20} MB for {n:,} SYNs"
    assert len(det.flows) == len(det.flowc) == LIVE_MAX_FLOWS
    assert det.flows.evicted == det.flowc.evicted == n - LIVE_MAX_FLOWS


def test_the_backlog_is_bounded_in_bytes_and_a_full_one_drops_nothing(tmp_path: Path) -> None:
    """Whole packets wait for the heads threads in a backlog bounded in packets and in
    bytes (50,000 full-size frames would be 75 MB).  Once it is full the rest waits in the
    capture handle (the kernel ring), not read to be dropped: a DNS flood behind a busy
    heads thread lost hidden contacts so, with no kernel drop.  A real libpcap handle."""
    frame = bytes(E / IP(src=C, dst=S, flags="MF", proto=17) / Raw(b"f" * 1480))
    n = 20_000
    path = tmp_path / "frags.pcap"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(n):
            fh.write(struct.pack("<IIII", 1_767_225_600 + i // 1000, i % 1000, len(frame), len(frame)) + frame)
    h = cap.Handle("file", "whole", 0, pcapy.open_offline(str(path)), 1, 14, "")
    w = Worker(0, [], live_detector(SIGS), None, 16)
    w.core = None  # two handles (no compiled core): only they have a backlog
    w.heads_active = time.monotonic() + 3600  # the heads threads are busy: whole packets queue
    while w._read_whole(h):
        pass
    queued = sum(len(d) for batch in w.backlog.batches for _, _, d in batch)
    assert queued <= cap.MAX_BACKLOG_BYTES and w.backlog.bytes <= cap.MAX_BACKLOG_BYTES
    assert 0 < w.backlog.packets < n and w.counters.backlog_drops == 0
    w.heads_active = 0.0  # the heads threads went idle: the backlog, then the rest of the handle
    while w._read_whole(h):
        pass
    assert w.backlog.packets == w.backlog.bytes == 0 and w.det.stats.packets == n and w.counters.backlog_drops == 0


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_live_workers_core_flow_table_is_capped() -> None:
    """A million distinct flows (benchmarks/adversarial.py, "flows"): their heads go
    through the compiled core's classifier, whose flow table a live worker caps at
    LIVE_MAX_FLOWS (about 0.55 KB a flow; the core's own default, 200,000, made a worker
    290 MB with its capture rings)."""
    from detector.capture import core

    if core._core is None:
        pytest.skip("the compiled core is not built")
    rng = random.Random(3)
    n = 150_000
    tmpl = bytes(E / IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="PA") / Raw(b"\0" * 64))
    frames = []
    for i in range(n):  # one segment of 64 random bytes per flow, as the benchmark's
        f = bytearray(tmpl)
        f[26:30] = rng.randbytes(4)
        f[34:38] = rng.randbytes(4)  # ports
        f[54:] = rng.randbytes(64)
        frames.append((1.0 + i * 1e-5, 1, bytes(f)))
    w = Worker(0, [], live_detector(SIGS), None, 16)
    before = _rss_kb()
    for i in range(0, n, 512):
        w.feed_raw(1, *_batch(frames[i : i + 512]))
    grown = _rss_kb() - before
    st = w.stats()
    assert st["state_core_flows_evicted"] >= n - LIVE_MAX_FLOWS
    assert grown < 50 * 1024, f"{grown >> 10} MB for {n:,} flows"


def _batch(frames: list[tuple[float, int, bytes]]) -> tuple[bytes, bytes]:
    """Frames as one libpcap batch (pcapy-ng's ``next_batch``): the frames end to end, and
    per frame seconds, microseconds, offset and length."""
    pkts, meta = bytearray(), bytearray()
    for ts, _lt, f in frames:
        meta += struct.pack("=IIII", int(ts), round((ts % 1) * 1e6) % 1_000_000, len(pkts), len(f))
        pkts += f
    return bytes(pkts), bytes(meta)


@pytest.mark.parametrize("name", ["tls-split-chromium.pcap", "dns-udp-tcp.pcap", "http-host-proxy.pcap",
                                  "negative-controls.pcap", "tls-sni.pcap"])
def test_the_one_handle_through_the_core_matches_replay(name: str) -> None:
    """A live worker with the compiled core: a real libpcap handle ("all") read in batches
    into the core's classifier gives the matches a replay of the same capture gives."""
    from detector.capture import core

    if core._core is None:
        pytest.skip("the compiled core is not built")
    path = Path(__file__).resolve().parent.parent / "pcaps" / name
    w = Worker(0, [], live_detector(SIGS), None, 16)
    h = cap.Handle("file", "all", 0, pcapy.open_offline(str(path)), 1, 14, "")
    while w._read_whole(h):
        pass
    w._feed_records(w.core.finish())
    ref = live_detector(SIGS)
    with core.CoreCapture(str(path), ref.matcher) as cf:
        for ts, lt, data, counters, _learn in cf:
            ref.feed(ts, lt, data, counters=counters)
    got, want = [_wire(m) for m in w.det.collected], [_wire(m) for m in ref.collected]
    assert got == want and (len(got) > 0) == (name != "negative-controls.pcap")
    st = w.stats()
    assert st["whole"] == w.core.stats()["packets"] and st["python_packets"] < st["whole"]
    assert st["shed"] == st["whole"] - st["python_packets"]


def test_a_flood_of_hits_travels_in_small_messages(tmp_path: Path) -> None:
    """A random-subdomain DNS flood under a Kaspersky name: every query is a hit the
    worker ships to the controller.  Up to 64 batches are read at a time; their hits go
    in messages of about SHIP_MATCHES (unpickled, about 1.6 KB each), not one of 32,768
    packets' worth, which both processes would hold at once."""
    from multiprocessing import Pipe

    tmpl = bytes(E / IP(src=C, dst=S) / UDP(sport=40004, dport=53, chksum=0) / DNS(qd=DNSQR(qname="a" * 12 + ".upd.kaspersky.com")))
    at = tmpl.index(b"a" * 12)
    rng = random.Random(5)
    n = 5_000
    path = tmp_path / "dns-flood.pcap"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(n):
            f = tmpl[:at] + bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12)) + tmpl[at + 12 :]
            fh.write(struct.pack("<IIII", 1_767_225_600, i, len(f), len(f)) + f)
    mine, theirs = Pipe()
    got: list[Any] = []

    def read() -> None:
        while (m := theirs.recv()) != ("end",):
            got.append(m)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        w = Worker(0, [], live_detector(SIGS), mine, 16)
        h = cap.Handle("file", "whole", 0, pcapy.open_offline(str(path)), 1, 14, "")
        while w._read_whole(h):
            pass
        w._ship()
    finally:
        mine.send(("end",))
        reader.join(10)
    sizes = [len(m[3]) for m in got if m[0] == "matches"]
    assert sum(sizes) == n
    assert max(sizes) <= cap.SHIP_MATCHES + cap.BATCH, sizes
