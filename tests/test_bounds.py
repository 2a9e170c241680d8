"""Bounded state (detector/bounds.py): each traffic-keyed table caps, evicts and counts."""

from __future__ import annotations

import struct

import pytest

from detector import Detector
from detector.bounds import EVICTIONS, GAUGES, evictions_line, state
from detector.decode.ip import MAX_FRAGMENTS, IPDecoder
from detector.errors import DecodeError
from detector.pipeline import MAX_HOSTS
from tests.helpers import dns_query, run_frames
from tests.test_quic import crypto, feed, protect

pytest.importorskip("cryptography")


def _ipv4_fragment(ident: int, offset: int, more: bool, payload: bytes, src: bytes = b"\xc6\x12\x00\x0a") -> bytes:
    frag = (0x2000 if more else 0) | (offset // 8)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, 17, 0, src, b"\xc6\x12\x00\x01") + payload


def test_tiny_fragments_are_capped_per_datagram() -> None:
    ip = IPDecoder()
    for i in range(MAX_FRAGMENTS):
        assert ip.decode(4, _ipv4_fragment(7, 8 * i, True, b"x" * 8), 0, 1.0) is None
    with pytest.raises(DecodeError, match="ip-too-many-fragments"):
        ip.decode(4, _ipv4_fragment(7, 8 * MAX_FRAGMENTS, True, b"x" * 8), 0, 1.0)
    assert ip.frag_too_many == 1 and ip._frag_bytes == 0 and not ip._frags


def test_fragment_bytes_count_their_overhead() -> None:
    ip = IPDecoder(max_bytes=10_000)
    for ident in range(200):  # 200 first fragments of 8 bytes: 200 * (8 + 96) > 10,000
        ip.decode(4, _ipv4_fragment(ident, 0, True, b"y" * 8), 0, 1.0)
    assert ip._frag_bytes <= 10_000 and ip.frag_evicted > 0


def test_quic_crypto_bytes_budget_evicts_oldest_connections() -> None:
    from detector.parsers.quic import QuicTracker

    t = QuicTracker(max_bytes=3000)
    part = b"\x01" + (4000).to_bytes(3, "big") + bytes(996)  # 1000 bytes of a 4000-byte hello: held
    for i in range(10):
        dcid = bytes([i]) * 8
        assert feed(t, protect(crypto(0, part) + b"\x00" * 200, dcid=dcid), sport=50000 + i) is None
    assert t.buffered <= 3000 and t.counters["evicted-bytes"] >= 7
    assert t.buffered == sum(c.stored for c in t._conns.values())


def test_summary_hosts_are_capped(monkeypatch) -> None:
    import detector.pipeline as pl

    monkeypatch.setattr(pl, "MAX_HOSTS", 5)
    det = Detector()
    frames = [dns_query("dnl-03.geo.kaspersky.com", client=f"198.18.1.{i}", qid=i) for i in range(1, 9)]
    alerts = run_frames(frames, det)
    assert len(alerts) == 8 and len(det.stats.hosts) == 5 and det.stats.hosts_over == 3
    assert "past the summary's 5 listed 3" in evictions_line(state(det), det)
    assert MAX_HOSTS == 10_000


def test_state_has_every_table_and_no_unknown_keys() -> None:
    det = Detector()
    run_frames([dns_query("dnl-03.geo.kaspersky.com")], det)
    sc = state(det)
    for key in list(EVICTIONS) + sorted(GAUGES):
        if not key.startswith(("quic-", "learned-", "core_")):  # core_*: from the compiled core's reader (replay.scan)
            assert key in sc, key
    assert evictions_line(sc, det) == "evictions from bounded tables: none"


def test_live_metrics_export_every_table(tmp_path) -> None:
    from detector import config as cfg
    from detector.live.controller import Controller
    from detector.live.worker import WorkerProc
    from detector.metrics import render
    from detector.outputs import open_outputs
    from detector.signatures import load_signatures

    outs = open_outputs([str(tmp_path / "a.json")])
    try:
        ctl = Controller(cfg.resolve({}), {}, load_signatures(), outs, [], None)
        ctl.workers = []  # stats as two workers would ship them
        for wid, evicted in ((0, 3), (1, 4)):
            w = WorkerProc(wid, 0, None)  # type: ignore[arg-type]
            w.stats = {"state_streams_evicted": evicted, "state_streams": 10, "state_frag_too_many": 1}
            ctl.workers.append(w)
        text = render(ctl.health.samples())
    finally:
        outs.close(1.0)
    assert 'detector_evictions_total{table="streams_evicted",reason="TCP stream table full"} 7' in text
    assert 'detector_evictions_total{table="frag_too_many",reason="IP datagrams with too many fragments"} 2' in text
    assert 'detector_state{table="streams"} 20' in text
    for key in EVICTIONS:
        assert f'table="{key}"' in text
    assert "detector_storm_aggregates_total 0" in text and "detector_storm_windows 0" in text
