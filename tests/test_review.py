"""Review findings: regression tests for bugs found in review (hand-built packets with scapy),
including the libpcap fast path's port-reuse limit that the compiled core removed."""

from __future__ import annotations

from scapy.all import IP, TCP, Ether, Raw, wrpcap  # type: ignore[attr-defined]

from detector import Detector
from detector.replay import scan

CLIENT, SERVER = "198.18.0.10", "198.18.0.1"
# Linux-like TCP options: SYN with MSS/SACK/TS/WS (74-byte frame), later segments with TS only.
SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
TS_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
REQ = b"GET / HTTP/1.1\r\nHost: activation-v2.kaspersky.com\r\n\r\n"


def seg(flags: str, seq: int, payload: bytes = b"", options: list | None = None, sport: int = 41000) -> bytes:
    p = Ether() / IP(src=CLIENT, dst=SERVER) / TCP(sport=sport, dport=80, flags=flags, seq=seq, options=options or [])
    if payload:
        p = p / Raw(payload)
    return bytes(p)


def run(frames: list[bytes], det: Detector | None = None) -> list:
    det = det or Detector(strict=True)
    out = []
    for i, f in enumerate(frames):
        out += det.feed(1_700_000_000.0 + i, 1, f)
    return out + det.flush()


def _names(alerts: list) -> list[str]:
    return [a.observation.hostname for a in alerts]


# -- 1. Detector.feed's raw-bytes skip keeps a stale entry ------------------------------------
# _done_raw is only updated when feed() computed the raw key, i.e. for frames of >= 74 bytes.
# A Linux FIN/RST (66 bytes with timestamps, 54/60 without options) or an option-less SYN is
# shorter, so _tcp removes the flow but leaves the raw key; a new connection reusing the
# ports then has every data segment skipped at the top of feed().


def test_short_fin_leaves_stale_raw_key_and_new_connection_is_skipped() -> None:
    frames = [
        seg("S", 100, options=SYN_OPTS),
        seg("PA", 101, b"\x00" * 40, TS_OPTS),  # neither TLS nor HTTP: the stream is decided
        seg("FA", 141, options=TS_OPTS),  # 66-byte FIN: feed() computes no raw key
        seg("S", 5000, options=SYN_OPTS),  # a new connection on the same ports
        seg("PA", 5001, REQ, TS_OPTS),
    ]
    assert len(frames[2]) < 74
    assert _names(run(frames)) == ["activation-v2.kaspersky.com"]


def test_short_syn_after_decided_stream_does_not_clear_raw_key() -> None:
    # The FIN of the first connection was not seen (lost, or shed in C on the fast path); the
    # new connection's SYN carries no options (54 bytes), so the DONE entry is removed from the
    # flow table but not from the raw-key table.
    frames = [
        seg("S", 100, options=SYN_OPTS),
        seg("PA", 101, b"\x00" * 40, TS_OPTS),
        seg("S", 5000),
        seg("PA", 5001, REQ, TS_OPTS),
    ]
    assert len(frames[2]) < 74
    assert _names(run(frames)) == ["activation-v2.kaspersky.com"]


def test_flow_table_eviction_leaves_raw_key_and_new_connection_is_skipped() -> None:
    # The decided stream is evicted from the (capped) flow table; the raw key stays, and the
    # SYN of a new connection on its ports pops it only when the flow entry is still DONE.
    det = Detector(strict=True, max_flows=2)
    frames = [seg("S", 100, options=SYN_OPTS), seg("PA", 101, b"\x00" * 40, TS_OPTS)]
    frames += [seg("S", 1, options=SYN_OPTS, sport=50000 + i) for i in range(3)]  # evict it
    frames += [seg("S", 5000, options=SYN_OPTS), seg("PA", 5001, REQ, TS_OPTS)]
    assert _names(run(frames, det)) == ["activation-v2.kaspersky.com"]


# -- 2. --jobs: a share learns other shares' DNS answers over UDP only -------------------------
# capture/fast.py:152 reads only "udp src port 53" from the other shares and
# Detector.learn_only (pipeline.py:154) drops anything but UDP, so a Kaspersky name resolved
# over TCP/53 (or in a fragmented UDP answer, or inside a tunnel) in one share does not name
# the client's later name-less flow in another share.  One process alerts ip-from-dns.


def _tcp_dns_then_hostless_flow(path: str) -> None:
    import struct

    from scapy.layers.dns import DNS, DNSQR, DNSRR

    client, resolver, server = "198.18.0.10", "198.18.0.53", "203.0.113.8"  # shares (10+53)%2=1, (10+8)%2=0
    name = "activation-v2.kaspersky.com"
    q = bytes(DNS(id=7, rd=1, qd=DNSQR(qname=name)))
    a = bytes(DNS(id=7, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, type="A", rdata=server, ttl=300)))
    spec = [
        (client, resolver, 40000, 53, "PA", 1, struct.pack("!H", len(q)) + q),
        (resolver, client, 53, 40000, "PA", 1, struct.pack("!H", len(a)) + a),
        (client, server, 41000, 443, "S", 100, b""),
        (server, client, 443, 41000, "SA", 500, b""),
        (client, server, 41000, 443, "PA", 101, b"\x00" * 64),  # no host name of its own
    ]
    pkts = []
    for i, (s, d, sp, dp, fl, seq, pl) in enumerate(spec):
        x = Ether() / IP(src=s, dst=d) / TCP(sport=sp, dport=dp, flags=fl, seq=seq)
        if pl:
            x = x / Raw(pl)
        x.time = 1_700_000_000.0 + i * 0.01
        pkts.append(x)
    wrpcap(path, pkts)


def test_jobs_split_learns_names_from_tcp_dns_like_one_process(tmp_path) -> None:
    import subprocess
    import sys

    pcap = str(tmp_path / "tcpdns.pcap")
    _tcp_dns_then_hostless_flow(pcap)

    def run_cli(*extra: str) -> str:
        r = subprocess.run([sys.executable, "-m", "detector", "replay", "-q", *extra, pcap],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    one = run_cli()
    assert '"ip-from-dns"' in one
    assert run_cli("--jobs", "2") == one


# -- 3. Fast path: a connection reusing the ports of one past its flow head was shed ----------
# The old pcapy-ng classifier counted packets per 5-tuple for a whole chunk and did not start
# a flow afresh on SYN, so a new connection on the same ports was shed whole.  The compiled
# core restarts a flow on a SYN without ACK: the new connection is seen, as by --exact.


def test_fast_path_port_reuse_within_chunk_matches_exact(tmp_path) -> None:
    big_fin_opts = [*TS_OPTS, ("NOP", None), ("NOP", None), ("SAck", (1, 2))]  # >= 74 bytes: not finding 1
    frames = [seg("S", 100, options=SYN_OPTS)]
    seq = 101
    for _ in range(30):  # more than the flow head (16) packets in this direction
        frames.append(seg("PA", seq, b"\x00" * 100, TS_OPTS))
        seq += 100
    frames += [seg("FA", seq, options=big_fin_opts), seg("S", 5000, options=SYN_OPTS), seg("PA", 5001, REQ, TS_OPTS)]
    assert len(frames[-3]) >= 74
    pkts = []
    for i, f in enumerate(frames):
        x = Ether(f)
        x.time = 1_700_000_000.0 + i * 0.001
        pkts.append(x)
    path = str(tmp_path / "reuse.pcap")
    wrpcap(path, pkts)

    def names(exact: bool) -> list[str]:
        det = Detector(strict=True)
        out: list = []
        res = scan(det, path, exact, 16, out.extend)
        assert res.fast is not exact
        return _names(out + det.flush())

    assert names(True) == ["activation-v2.kaspersky.com"]
    assert names(False) == names(True)


# -- 4. Fast path on a cut file: packets read before the cut are not counted -----------------
# FastCapture._count_pure_acks (capture/fast.py:209-215) adds a pass's count only when
# loop_filtered returns; on a cut file it raises and the pure ACKs read before the cut are
# lost (and _handle, fast.py:195, counts only the delivered packets of a failing chunk, not
# the shed ones).  The summary's packet total is then lower than --exact's.


def test_fast_path_counts_packets_of_a_cut_file_like_exact(tmp_path) -> None:
    frames = [seg("S", 100, options=SYN_OPTS)]
    seq = 101
    for _ in range(10):
        frames.append(seg("PA", seq, b"\x00" * 100, TS_OPTS))
        seq += 100
        frames.append(seg("A", seq, options=TS_OPTS))  # a pure ACK (handle D)
    pkts = []
    for i, f in enumerate(frames):
        x = Ether(f)
        x.time = 1_700_000_000.0 + i * 0.001
        pkts.append(x)
    whole = tmp_path / "whole.pcap"
    wrpcap(str(whole), pkts)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[:-20])  # cut inside the last record

    def packets(exact: bool) -> int:
        det = Detector(strict=True)
        res = scan(det, str(cut), exact, 16, lambda _a: None)
        assert res.fast is not exact and res.warning
        return det.stats.packets

    assert packets(False) == packets(True) == len(frames) - 1
