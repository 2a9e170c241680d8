"""The compiled core (Rust, ``core/``) and the pure-Python path give identical alerts on
every capture in ``pcaps/``, byte for byte in EVE, de-duplicated and not; the core sheds
bulk, restarts a flow on SYN, keeps capture order and reads damaged files like Python."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys

import pytest
from helpers import PCAPS, REPO

from detector import Detector
from detector.capture import core
from detector.formats import eve
from detector.replay import scan

pytestmark = pytest.mark.skipif(not core.AVAILABLE, reason="the compiled core is not built (no Rust toolchain)")

CAPTURES = sorted(
    p.relative_to(PCAPS).as_posix()
    for p in PCAPS.rglob("*")
    if p.is_file() and p.name.endswith((".pcap", ".pcapng", ".pcap.gz"))
)


def _run(path: str, exact: bool, dedup: bool = True, flow_head: int = 16, part=None) -> tuple[list[bytes], object]:
    det = Detector(dedup=dedup, strict=True)
    out: list = []
    res = scan(det, path, exact, flow_head, out.extend, part)
    out += det.flush()
    return [eve.format_alert(a) for a in out], res


@pytest.mark.parametrize("name", CAPTURES)
@pytest.mark.parametrize("dedup", [True, False])
def test_core_equals_pure_python(name, dedup):
    path = str(PCAPS / name)
    fast, res_fast = _run(path, exact=False, dedup=dedup)
    slow, res_slow = _run(path, exact=True, dedup=dedup)
    assert fast == slow
    assert res_fast.error == res_slow.error
    if core.usable(path):
        assert res_fast.fast
        assert bool(res_fast.warning) == bool(res_slow.warning)


def test_bundled_captures_all_go_through_the_core():
    readable = [n for n in CAPTURES if "damaged" not in n]
    assert readable and all(core.usable(str(PCAPS / n)) for n in readable)


def test_bulk_is_shed_before_python():
    with core.CoreCapture(str(PCAPS / "tls-split-chromium.pcap"), Detector().matcher) as cc:
        n = sum(1 for _ in cc)
        s = cc.stats()
    assert s["packets"] == s["delivered"] + s["shed"] + s["pure_acks"] and n == s["delivered"]
    assert s["shed"] + s["pure_acks"] > 0


def test_counters_ride_with_every_classified_frame():
    with core.CoreCapture(str(PCAPS / "tls-sni.pcap"), Detector().matcher) as cc:
        recs = list(cc)
    counted = [r[3] for r in recs if r[3] is not None]
    assert counted, "TCP/UDP frames carry their flow's counters"
    for start, pf, bf, pr, br, _to_server in counted:
        assert pf >= 1 and bf >= 20 and pr >= 0 and br >= 0 and start > 0
    ts = [r[0] for r in recs]
    assert ts == sorted(ts), "frames reach Python in capture order"


def _pcap(frames: list[bytes]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(f), len(f)) + f)
    return b"".join(out)


def test_port_reuse_after_a_long_flow_is_a_new_flow(tmp_path):
    """Hand-built (scapy): a bulk connection of 40 segments, then a new connection on the
    same ports whose ClientHello names a Kaspersky host. A real client rarely reuses its
    port at once; the core restarts the flow on SYN, so the second one is seen."""
    scapy = pytest.importorskip("scapy.all")
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    tls = _client_hello(b"dnl-01.geo.kaspersky.com")
    frames = []
    c, s = "192.0.2.10", "198.18.0.20"

    def seg(src, dst, sp, dp, flags, seq, ack, load=b""):
        return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack) / load)

    for conn, payload in ((0, b"x" * 100), (1, tls)):
        base = 1000 + conn * 100000
        frames.append(seg(c, s, 40000, 443, "S", base, 0))
        frames.append(seg(s, c, 443, 40000, "SA", 5000, base + 1))
        frames.append(seg(c, s, 40000, 443, "A", base + 1, 5001))
        n = 40 if conn == 0 else 1
        for i in range(n):
            frames.append(seg(c, s, 40000, 443, "PA", base + 1 + i * len(payload), 5001, payload))
        frames.append(seg(c, s, 40000, 443, "FA", base + 1 + n * len(payload), 5001))
    path = tmp_path / "reuse.pcap"
    path.write_bytes(_pcap(frames))
    fast, _ = _run(str(path), exact=False)
    slow, _ = _run(str(path), exact=True)
    assert fast == slow and len(slow) == 1 and b"dnl-01.geo.kaspersky.com" in slow[0]
    del scapy


def _client_hello(sni: bytes) -> bytes:
    name = struct.pack("!BH", 0, len(sni)) + sni
    ext_sni = struct.pack("!HH", 0, len(name) + 2) + struct.pack("!H", len(name)) + name
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(ext_sni)) + ext_sni
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


@pytest.mark.parametrize("n", [2, 3])
def test_shares_give_the_same_alerts_as_one_pass(n):
    path = str(PCAPS / "issue4" / "ip-literal-after-dns.pcap")
    whole, _ = _run(path, exact=False, dedup=False)
    got: list[bytes] = []
    for k in range(n):
        part, _ = _run(path, exact=False, dedup=False, part=(k, n))
        got += part
    assert sorted(got) == sorted(whole)


def test_gzip_is_streamed_and_a_cut_keeps_the_records_before_it(tmp_path):
    src = PCAPS / "tls-sni.pcap"
    gz = tmp_path / "tls.pcap.gz"
    with open(src, "rb") as f, gzip.open(gz, "wb") as g:
        shutil.copyfileobj(f, g)
    def unnamed(lines):
        return [{k: v for k, v in json.loads(x).items() if k != "pcap_filename"} for x in lines]

    assert unnamed(_run(str(gz), exact=False)[0]) == unnamed(_run(str(src), exact=False)[0])
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size * 2 // 3])
    fast, res = _run(str(cut), exact=False)
    slow, _ = _run(str(cut), exact=True)
    assert fast == slow and res.warning and "compressed" in res.warning


def test_lying_record_length_is_a_warning_with_the_offset(tmp_path):
    data = bytearray((PCAPS / "tls-sni.pcap").read_bytes())
    struct.pack_into("<I", data, 24 + 8, 0x7FFFFFFF)  # first record's caplen
    bad = tmp_path / "lying.pcap"
    bad.write_bytes(bytes(data))
    fast, res = _run(str(bad), exact=False)
    assert fast == [] and res.error is None and "offset 24" in (res.warning or "")


def test_cli_summary_names_the_path():
    r = subprocess.run([sys.executable, "-m", "detector", "replay", "pcaps/tls-sni.pcap"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "path: compiled core (Rust)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "detector", "replay", "--exact", "pcaps/tls-sni.pcap"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "path: pure Python" in r.stderr


@pytest.mark.parametrize("name", [n for n in CAPTURES if "damaged" not in n])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_shares_count_every_packet_once(name, n):
    """Over all shares, every packet of the file is counted exactly once (delivered, shed or
    a pure ACK), and the packet total equals the pure-Python reader's."""
    from detector.capture.pcap import CaptureFile

    path = str(PCAPS / name)
    with CaptureFile(path) as cf:
        total = sum(1 for _ in cf)
    seen = 0
    m = Detector().matcher
    for k in range(n):
        with core.CoreCapture(path, m, part=(k, n) if n > 1 else None) as cc:
            delivered = sum(1 for r in cc if not r[4])
            s = cc.stats()
        assert delivered == s["delivered"]
        seen += s["packets"] - s["other_share"]
    assert seen == total


def test_short_flow_head_is_reported_not_silent():
    # 40-byte segments: the ClientHello needs more than 4 packets of its flow.
    r = subprocess.run([sys.executable, "-m", "detector", "replay", "--flow-head", "4", "pcaps/tls-split-small-mss.pcap"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "tls-sni" not in r.stdout
    assert "never completed" in r.stderr and "--exact" in r.stderr
    r = subprocess.run([sys.executable, "-m", "detector", "replay", "pcaps/tls-split-small-mss.pcap"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.count('"tls-sni"') == 2


def test_a_gzip_bomb_is_stopped_by_the_core_too(tmp_path):
    """A gzip'd capture expanding more than 200:1 past 16 MiB: the core stops it with the
    same warning as the Python reader; the records before it are read, the run goes on."""
    head = (PCAPS / "tls-sni.pcap").read_bytes()
    bomb = tmp_path / "bomb.pcap.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as g:
        g.write(head)
        record = struct.pack("<IIII", 1_764_000_000, 0, 65535, 65535) + b"\0" * 65535  # an empty 64 KiB frame
        for _ in range(1024):  # 64 MiB that compress ~1000:1
            g.write(record)
    fast, res = _run(str(bomb), exact=False)
    slow, res_slow = _run(str(bomb), exact=True)
    assert res.fast and "decompression bomb" in (res.warning or "")
    assert "decompression bomb" in (res_slow.warning or "")
    assert fast and fast == slow


def _bench_frames():
    """The adversarial benchmark's frame builders (hand-built packets: floods and pauses no
    real client produces on cue)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import adversarial
    finally:
        sys.path.pop(0)
    return adversarial


def _flood_then(tmp_path, tail_frames, n=30_000, step=1e-4):
    """``n`` SYNs from distinct sources (never answered), then ``tail_frames``."""
    adv = _bench_frames()
    w = adv.Writer(str(tmp_path / "flood.pcap"))
    ts = adv.T0
    for i in range(n):
        src = bytes([10, 77, (i >> 8) & 0xFF, i & 0xFF])
        w.add(adv._tcp(src, 50000, adv.SERVER, 443, i * 7919, adv.SYN), ts)
        ts += step
    for frame in tail_frames(adv):
        ts += step
        w.add(frame, ts)
    w.close()
    return str(tmp_path / "flood.pcap")


def test_a_syn_flood_stays_in_the_core_and_a_contact_after_it_is_reported(tmp_path):
    """SYN-only flows that never finish are shed at the queue's bounds, not handed up; a
    ClientHello after the flood (on a flow whose SYN sat in the flood) is still reported."""
    c, s = bytes([192, 0, 2, 10]), bytes([198, 18, 0, 20])

    def tail(adv):
        hello = _client_hello(b"dnl-01.geo.kaspersky.com")
        return [adv._tcp(c, 40000, s, 443, 1001, adv.ACK | adv.PSH, hello, ack=1)]

    adv = _bench_frames()
    path = _flood_then(tmp_path, lambda a: [adv._tcp(c, 40000, s, 443, 1000, adv.SYN)] + [
        adv._tcp(bytes([10, 78, i >> 8, i & 0xFF]), 2000, adv.SERVER, 443, 1, adv.SYN) for i in range(25_000)
    ] + tail(a))
    with core.CoreCapture(path, Detector().matcher) as cc:
        delivered = sum(1 for _ in cc)
        st = cc.stats()
    assert st["forced_shed"] > 50_000 - 20_000 - 100 and st["forced"] == 0
    assert delivered == 1, "the flood's SYNs reached Python"
    fast, _ = _run(path, exact=False)
    slow, _ = _run(path, exact=True)
    assert fast == slow and len(fast) == 1 and b"dnl-01.geo.kaspersky.com" in fast[0]


def test_a_message_begun_before_a_flood_is_still_handed_up(tmp_path):
    """A ClientHello whose first segment waits past the queue's bounds (30,000 packets of
    flood in between) is handed up, not shed: Python needs that segment to read the SNI
    that the second one completes."""
    c, s = bytes([192, 0, 2, 11]), bytes([198, 18, 0, 21])
    hello = _client_hello(b"a" * 60 + b".dnl-01.geo.kaspersky.com")
    cut = 20  # the anchor label lies wholly in the second segment
    adv = _bench_frames()
    w = adv.Writer(str(tmp_path / "split.pcap"))
    ts = adv.T0
    w.add(adv._tcp(c, 40001, s, 443, 1000, adv.SYN), ts)
    w.add(adv._tcp(c, 40001, s, 443, 1001, adv.ACK | adv.PSH, hello[:cut], ack=1), ts)
    for i in range(30_000):
        ts += 1e-4
        w.add(adv._tcp(bytes([10, 79, i >> 8, i & 0xFF]), 3000, adv.SERVER, 443, 1, adv.SYN), ts)
    w.add(adv._tcp(c, 40001, s, 443, 1001 + cut, adv.ACK | adv.PSH, hello[cut:], ack=1), ts + 0.001)
    w.close()
    path = str(tmp_path / "split.pcap")
    with core.CoreCapture(path, Detector().matcher) as cc:
        list(cc)
        st = cc.stats()
    assert st["forced"] >= 1 and st["forced_shed"] > 0
    fast, _ = _run(path, exact=False)
    slow, _ = _run(path, exact=True)
    assert fast == slow and len(fast) == 1 and b"dnl-01.geo.kaspersky.com" in fast[0]


def test_fragments_that_never_complete_stay_in_the_core(tmp_path):
    """Hand-built: 20,000 first fragments that never complete (a memory and CPU attack no
    real client makes), then a DNS query split in two fragments that does complete. Only the
    complete datagram's fragments reach Python; the query is reported."""
    adv = _bench_frames()
    c = bytes([192, 0, 2, 12])
    w = adv.Writer(str(tmp_path / "frag.pcap"))
    ts = adv.T0
    for i in range(20_000):
        ts += 1e-4
        udp = struct.pack("!HHHH", 5000, 53, 1480, 0) + bytes(1472)
        w.add(adv._ip4(bytes([10, 80, i >> 8, i & 0xFF]), adv.RESOLVER, 17, udp, ident=i, frag=0x2000), ts)
    query = adv.dns_query(77, "dnl-02.geo.kaspersky.com")
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(query), 0) + query
    w.add(adv._ip4(c, adv.RESOLVER, 17, udp[:24], ident=999, frag=0x2000), ts + 0.001)  # offset 0, more
    w.add(adv._ip4(c, adv.RESOLVER, 17, udp[24:], ident=999, frag=3), ts + 0.002)  # offset 24 bytes
    w.close()
    path = str(tmp_path / "frag.pcap")
    with core.CoreCapture(path, Detector().matcher) as cc:
        delivered = sum(1 for _ in cc)
        st = cc.stats()
    assert delivered == 2 and st["frags_shed"] == 20_000
    fast, _ = _run(path, exact=False)
    slow, _ = _run(path, exact=True)
    assert fast == slow and len(fast) == 1 and b"dnl-02.geo.kaspersky.com" in fast[0]


@pytest.mark.parametrize("dedup", [True, False])
def test_a_dns_flood_is_counted_in_the_core_with_the_same_alerts(tmp_path, dedup):
    """The adversarial benchmark's random-subdomain flood (hand-built: one client, 20,000
    names under upd.kaspersky.com, NXDOMAIN answers) with its hidden real contacts. Once the
    storm control folds, the core counts the flood's names itself; the alerts, the storm
    aggregate included (distinct names, hits, first and last seen, sample), are the same as
    the pure-Python path's, byte for byte."""
    adv = _bench_frames()
    path = str(tmp_path / "dns-flood.pcap")
    contacts = adv.gen_flood("dns", path, 40_000, 2_000.0, seed=7)
    fast, _ = _run(path, exact=False, dedup=dedup)
    slow, _ = _run(path, exact=True, dedup=dedup)
    assert fast == slow
    aggregates = [json.loads(x) for x in fast if b"storm_distinct_names" in x]
    assert len(aggregates) == 1
    assert aggregates[0]["alert"]["metadata"]["storm_distinct_names"] == ["19950"]  # 20,000 names less 50 alerted
    names = {json.loads(x)["alert"]["metadata"]["hostname"][0] for x in fast}
    assert all(name in names for _kind, _client, name in contacts), "a hidden contact went missing"
    muted = {}
    for ahead in (False, True):
        det = Detector(dedup=dedup, strict=True)
        with core.CoreCapture(path, det.matcher, read_ahead=ahead) as cc:
            det.storm.attach(cc.muter)
            for ts, lt, data, counters, _lo in cc:
                det.feed(ts, lt, data, counters=counters)
            det.storm.detach()
            muted[ahead] = cc.stats()["dns_muted"]
    assert muted[False] > 20_000, "the flood still went through Python"
    # Reading ahead, the batches classified before the first mute (up to 5 of 8,192 records:
    # the whole of this small flood, when the thread is quick) reach Python; the alerts
    # above are the same all the same.
    assert muted[True] <= muted[False]


def test_storm_scope_leaves_other_signatures_names_out():
    """The suffixes the core may count under: a signature's own, with the exact names of
    other signatures below it as exceptions; none where another signature's suffix or
    wildcard lies below (the generic kaspersky.com catch-all)."""
    m = Detector().matcher
    by_suffix = {x: (sig, names) for sig in m.signatures for x, names in m.exclusive_suffixes(sig)}
    sig, names = by_suffix["upd.kaspersky.com"]
    assert "s05.upd.kaspersky.com" in names and m.lookup("s05.upd.kaspersky.com").signature is not sig
    assert all(m.lookup(n).signature is not sig for n in names)
    assert m.lookup("q8z1x0.upd.kaspersky.com").signature is sig
    assert "kaspersky.com" not in by_suffix  # ksc., upd., geo. ... belong to other signatures


def test_name_key_is_the_cores():
    from detector.storm import name_key

    assert name_key("a") == 0xAF63DC4C8601EC8C  # FNV-1a 64 test vector, as core/src/mute.rs
    assert name_key("X1.UPD.Kaspersky.com") == name_key("x1.upd.kaspersky.com")
