"""Flow counters (decode/flowcount.py): the semantics the compiled core shares, the raw
skip of decided streams, the ``counters=`` hook of ``Detector.feed``, and the counts of
real captures against an independent count of the same packets."""

from __future__ import annotations

import json

import pytest
from helpers import PCAPS
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from detector import Detector
from detector.decode.flowcount import FlowCounters

A, B = ("198.18.0.10", 40000), ("198.18.0.1", 443)


def test_first_packet_names_the_client_and_start():
    fc = FlowCounters()
    r = fc.count(1.0, 17, *B, *A, 100)  # the server's datagram comes first: it is the "client"
    fc.count(2.0, 17, *A, *B, 50)
    assert r.client == B and r.counts() == (1.0, 1, 100, 1, 50)
    assert r.direction(B) == "to_server" and r.direction(A) == "to_client"


def test_syn_without_ack_starts_a_new_record():
    fc = FlowCounters()
    old = fc.count(1.0, 6, *A, *B, 60, 0x02)
    fc.count(1.1, 6, *B, *A, 60, 0x12)  # SYN-ACK: same flow
    fc.count(1.2, 6, *A, *B, 52, 0x10)
    assert old.counts() == (1.0, 2, 112, 1, 60)
    new = fc.count(5.0, 6, *B, *A, 60, 0x02)  # a new SYN on the same ports, from the other side
    assert new is not old and not old.live and new.client == B and new.counts() == (5.0, 1, 60, 0, 0)
    assert len(fc) == 1


def test_udp_and_tcp_on_the_same_ports_are_two_flows():
    fc = FlowCounters()
    assert fc.count(1.0, 6, *A, *B, 1) is not fc.count(1.0, 17, *A, *B, 1)


def test_lru_cap_counts_evictions_and_keeps_recent_flows():
    fc = FlowCounters(max_flows=3)
    recs = [fc.count(float(i), 17, "198.18.0.10", 1000 + i, *B, 10) for i in range(3)]
    fc.count(3.0, 17, "198.18.0.10", 1000, *B, 10)  # the first flow is seen again: most recent
    fc.count(4.0, 17, "198.18.0.10", 2000, *B, 10)  # a fourth evicts the least recently seen
    assert fc.evicted == 1 and not recs[1].live and recs[0].live and len(fc) == 3
    fc.touch(recs[2], True, 5)  # a raw-skip packet keeps its flow recent
    fc.count(5.0, 17, "198.18.0.10", 3000, *B, 10)
    assert recs[2].live and not recs[0].live and fc.evicted == 2


def test_core_counters_replace_the_own_count_and_own_packets_stay_on_top():
    fc = FlowCounters()
    r = fc.count(10.0, 17, *A, *B, 100)  # counted here (e.g. a datagram the core passed whole)
    # the core's absolute counts for a packet from B: (start, fwd = B's direction, rev)
    fc.count(11.0, 17, *B, *A, 80, counters=(9.5, 3, 240, 5, 600))
    assert r.counts() == (9.5, 5 + 1, 600 + 100, 3, 240)
    # an explicit to_server flag wins over the record's notion of the client
    fc.count(12.0, 17, *B, *A, 80, counters=(9.5, 4, 320, 5, 600, True))
    assert r.counts() == (9.5, 4 + 1, 320 + 100, 5, 600)


def _frames(name):
    return [(float(p.time), bytes(p)) for p in rdpcap(str(PCAPS / name))]


def _independent(frames, upto_ts, flow_pred):
    """Count a flow's packets up to and including ``upto_ts`` with scapy, not the detector."""
    first = None
    cnt = {"ts": [0, 0], "tc": [0, 0]}
    for ts, raw in frames:
        pkt = Ether(raw)
        if TCP not in pkt or ts > upto_ts:
            continue
        ip = pkt[IP] if IP in pkt else pkt[IPv6]
        ends = ((ip.src, pkt[TCP].sport), (ip.dst, pkt[TCP].dport))
        if not flow_pred(ends):
            continue
        if first is None:
            first = ends[0]
        d = "ts" if ends[0] == first else "tc"
        cnt[d][0] += 1
        cnt[d][1] += ip.len if IP in pkt else 40 + ip.plen
    return cnt


@pytest.mark.parametrize("exact", [True])
def test_tls_alert_counts_every_packet_of_its_flow_up_to_the_client_hello(exact):
    frames = _frames("tls-sni.pcap")
    det = Detector(dedup=False)
    recs = []
    for ts, raw in frames:
        recs += det.feed(ts, 1, raw)
    recs += det.flush()
    from detector.formats import eve

    tls = [eve.to_dict(a) for a in recs if a.observation.evidence.value == "tls-sni"]
    assert tls
    for doc in tls:
        ports = {doc["src_port"], doc["dest_port"]}
        want = _independent(frames, max(a.observation.ts for a in recs if a.observation.flow_id == doc["flow_id"]),
                            lambda e, ports=ports: {e[0][1], e[1][1]} == ports)
        f = doc["flow"]
        assert (f["pkts_toserver"], f["bytes_toserver"], f["pkts_toclient"], f["bytes_toclient"]) == (
            *want["ts"], *want["tc"]), json.dumps(doc["flow"])
        assert f["pkts_toserver"] >= 3  # SYN, ACK, ClientHello: pure ACKs count


def test_the_raw_skip_of_decided_streams_still_counts():
    """After a stream is decided its packets take the one-lookup skip; they are counted all
    the same: the totals after the whole capture equal an independent count."""
    frames = _frames("tls-sni.pcap")
    det = Detector()
    skipped = 0
    for ts, raw in frames:
        before = det.stats.inspected
        if raw[47:48] and not raw[47] & 7 and raw[26:38] in det._done_raw:
            skipped += 1
        det.feed(ts, 1, raw)
        assert det.stats.inspected >= before
    assert skipped, "the capture must exercise the raw skip"
    for rec in list(det.flowc._t.values()):
        proto, a, b = rec.key
        if proto != 6:
            continue
        want = _independent(frames, float("inf"), lambda e, ends={a, b}: set(e) == ends)
        _start, pts, bts, ptc, btc = rec.counts()
        assert (pts, bts, ptc, btc) == (*want["ts"], *want["tc"]), rec.key


def test_feed_counters_hook_sets_the_alert_flow():
    frames = _frames("tls-sni.pcap")
    det = Detector(dedup=False)
    out = []
    for i, (ts, raw) in enumerate(frames):
        out += det.feed(ts, 1, raw, counters=(1000.0, 100 + i, 10_000 + i, 7, 700))
    out += det.flush()
    from detector.formats import eve

    docs = [eve.to_dict(a) for a in out if a.observation.evidence.value == "tls-sni"]
    assert docs
    for doc in docs:
        f = doc["flow"]
        assert f["start"] == "1970-01-01T00:16:40.000000+0000"  # min(core start, own start)
        # the ClientHello travels to the server: fwd is to_server
        assert f["pkts_toclient"] == 7 and f["bytes_toclient"] == 700
        assert f["pkts_toserver"] >= 100 and f["bytes_toserver"] - f["pkts_toserver"] == 9900
