"""Alert-storm control (detector/storm.py): folding, windows, other clients, formats, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector import Detector
from detector.aggregate import Aggregator
from detector.formats import FORMATS
from detector.model import Alert, Evidence, Match, Observation
from detector.signatures import Signature, load_signatures
from detector.sinks.file import one_line
from detector.storm import StormControl
from tests.helpers import EVE_SCHEMAS, dns_query, run_frames
from tests.test_formats_cef import parse_cef_strict
from tests.test_formats_leef import parse_leef

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sigs() -> tuple[Signature, Signature]:
    pack = load_signatures()
    return pack.by_id(1610020), pack.by_id(1610001)


def match(sig: Signature, ts: float, hostname: str, client: str = "10.66.0.1",
          evidence: Evidence = Evidence.DNS_QUERY) -> Match:
    obs = Observation(ts=ts, evidence=evidence, hostname=hostname, client=client, server="192.0.2.53",
                      client_port=50000, server_port=53, proto=17, flow_id=1)
    return Match(obs, sig, hostname)


def feed(agg: Aggregator, matches: list[Match]) -> list[Alert]:
    out: list[Alert] = []
    for m in matches:
        out += agg.add(m)
    return out + agg.flush()


def test_flood_folds_past_threshold_into_one_aggregate(sigs) -> None:
    upd, _ = sigs
    storm = StormControl(threshold=5, window=60, sample=3)
    agg = Aggregator(gate=storm)
    names = [f"r{i}.upd.kaspersky.com" for i in range(100)]
    alerts = feed(agg, [match(upd, 1000 + i * 0.1, n) for i, n in enumerate(names)])
    plain = [a for a in alerts if a.storm is None]
    folded = [a for a in alerts if a.storm is not None]
    assert [a.observation.hostname for a in plain] == names[:5]
    assert len(folded) == 1
    agg_alert = folded[0]
    assert agg_alert.storm.distinct_names == 95 and agg_alert.count == 95
    assert agg_alert.storm.sample == tuple(names[5:8])
    assert agg_alert.first_seen == pytest.approx(1000.5) and agg_alert.last_seen == pytest.approx(1009.9)
    assert storm.counters["folded_names"] == 95 and storm.counters["aggregates"] == 1
    assert len(agg) == 0 and len(storm) == 0


def test_repeats_of_a_folded_name_count_hits_not_names(sigs) -> None:
    upd, _ = sigs
    agg = Aggregator(gate=StormControl(threshold=2, window=60))
    ms = [match(upd, 10 + i, n) for i, n in enumerate(["a.upd.kaspersky.com", "b.upd.kaspersky.com"] + ["c.upd.kaspersky.com"] * 4 + ["d.upd.kaspersky.com"])]
    (agg_alert,) = [a for a in feed(agg, ms) if a.storm is not None]
    assert agg_alert.storm.distinct_names == 2 and agg_alert.count == 5


def test_other_clients_and_other_signatures_alert_at_once(sigs) -> None:
    upd, act = sigs
    agg = Aggregator(window=1.0, gate=StormControl(threshold=3, window=600))
    out: list[Alert] = []
    for i in range(50):
        out += agg.add(match(upd, 100 + i, f"x{i}.upd.kaspersky.com"))
    # Mid-flood: another client, same signature; the flooding client, another signature.
    out += agg.add(match(upd, 160, "s05.upd.kaspersky.com", client="10.9.0.3"))
    out += agg.add(match(act, 161, "activation-v2.kaspersky.com", evidence=Evidence.TLS_SNI))
    out += agg.add(match(upd, 170, "later.upd.kaspersky.com", client="10.9.0.4"))  # closes the 1 s windows
    names = {(a.observation.client, a.observation.hostname) for a in out if a.storm is None}
    assert ("10.9.0.3", "s05.upd.kaspersky.com") in names
    assert ("10.66.0.1", "activation-v2.kaspersky.com") in names
    assert not [a for a in out if a.storm is not None]  # the flood's aggregate waits for its window


def test_window_rolls_over_on_packet_time(sigs) -> None:
    upd, _ = sigs
    agg = Aggregator(window=1.0, gate=StormControl(threshold=2, window=10))
    out: list[Alert] = []
    for i in range(6):
        out += agg.add(match(upd, 100 + i, f"w1-{i}.upd.kaspersky.com"))
    out += agg.add(match(upd, 111, "w2-0.upd.kaspersky.com"))  # next window: alerted again
    storms = [a for a in out if a.storm is not None]
    assert len(storms) == 1 and storms[0].storm.distinct_names == 4  # written when its window ended
    out += agg.flush()
    assert "w2-0.upd.kaspersky.com" in {a.observation.hostname for a in out if a.storm is None}


def test_threshold_zero_is_off_and_no_dedup_also_gated(sigs) -> None:
    upd, _ = sigs
    ms = [match(upd, 1 + i, f"n{i}.upd.kaspersky.com") for i in range(30)]
    assert len(feed(Aggregator(gate=StormControl(threshold=0)), ms)) == 30
    out = feed(Aggregator(dedup=False, gate=StormControl(threshold=10, window=100)), ms)
    assert len(out) == 11 and out[-1].storm.distinct_names == 20


def test_tracked_windows_are_capped(sigs) -> None:
    upd, _ = sigs
    storm = StormControl(threshold=1, window=600, max_keys=10)
    agg = Aggregator(gate=storm)
    out: list[Alert] = []
    for c in range(30):
        for i in range(3):
            out += agg.add(match(upd, 10 + c, f"k{i}.upd.kaspersky.com", client=f"10.1.0.{c}"))
    out += agg.flush()
    assert len(storm) == 0 and storm.counters["keys_evicted"] == 20
    assert sum(1 for a in out if a.storm is not None) == 30  # every client's aggregate still written


@pytest.mark.parametrize("threshold, window, sample", [(-1, 1, 1), (1, 0, 1), (1, 1, 101)])
def test_bad_settings(threshold: int, window: float, sample: int) -> None:
    with pytest.raises(ValueError):
        StormControl(threshold, window, sample)


HOSTILE_NAME = 'evil"\n\x1b[31m|=\\.upd.kaspersky.com'


def _aggregate_alert(sigs) -> Alert:
    upd, _ = sigs
    agg = Aggregator(gate=StormControl(threshold=1, window=60, sample=2))
    hostile = HOSTILE_NAME
    (a,) = [a for a in feed(agg, [match(upd, 1, "a.upd.kaspersky.com"), match(upd, 2, hostile),
                                   match(upd, 3, "b.upd.kaspersky.com")]) if a.storm is not None]
    return a


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_aggregate_alert_in_every_format(sigs, fmt: str) -> None:
    a = _aggregate_alert(sigs)
    record = FORMATS[fmt](a)
    assert record.endswith(b"\n") and one_line(record).count(b"\n") == 1
    if fmt != "leef":  # JSON and CEF escape the sample name's LF themselves (LEEF cannot)
        assert record.count(b"\n") == 1
    line = one_line(record)
    text = line.decode("utf-8")
    assert "b.upd.kaspersky.com" in text and "2" in text
    if fmt == "eve":
        meta = json.loads(text)["alert"]["metadata"]
        assert meta["storm_distinct_names"] == ["2"] and len(meta["storm_sample_names"]) == 2
        assert meta["storm_threshold"] == ["1"] and meta["storm_window_seconds"] == ["60"]
    elif fmt == "ecs":
        assert json.loads(text)["labels"]["storm_distinct_names"] == "2"
    elif fmt == "ocsf":
        assert json.loads(text)["unmapped"]["storm_distinct_names"] == 2
    elif fmt == "cef":
        assert "cn3Label=Storm Distinct Names" in text and "cn3=2" in text
        assert HOSTILE_NAME in parse_cef_strict(record)[1]["msg"]  # one layer of escaping: exact
    elif fmt == "leef":
        assert "storm_distinct_names=2" in text
        assert HOSTILE_NAME in parse_leef(record)[2]["storm_sample_names"]


def test_eve_aggregate_validates_against_suricata_schema(sigs) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from detector.formats import eve

    doc = eve.to_dict(_aggregate_alert(sigs))
    for path in EVE_SCHEMAS:
        jsonschema.validate(doc, json.loads(path.read_text()))


def test_detector_default_folds_a_dns_flood_from_one_client() -> None:
    det = Detector()
    frames = [dns_query(f"q{i:04d}.upd.kaspersky.com", qid=i, sport=20000 + i) for i in range(200)]
    frames.append(dns_query("dnl-03.geo.kaspersky.com", client="192.0.2.77", qid=9))
    alerts = run_frames(frames, det)
    storms = [a for a in alerts if a.storm is not None]
    assert len(storms) == 1 and storms[0].storm.distinct_names == 150
    assert len(alerts) == 50 + 1 + 1
    assert "192.0.2.77" in {a.observation.client for a in alerts}
    assert "folded into 1 aggregate" in (det.storm.summary() or "")


def test_replay_cli_flags_and_summary(tmp_path: Path) -> None:
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap  # type: ignore[attr-defined]

    frames = [Ether(dns_query(f"q{i:04d}.upd.kaspersky.com", qid=i, sport=20000 + i)) for i in range(40)]
    for i, f in enumerate(frames):
        f.time = 1_700_000_000 + i
    pcap = tmp_path / "flood.pcap"
    wrpcap(str(pcap), frames)
    out = tmp_path / "a.json"
    cmd = [sys.executable, "-m", "detector", "replay", str(pcap), "-o", str(out), "--storm-threshold", "10",
           "--storm-window", "30", "--storm-sample", "3"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    storms = [x for x in lines if "storm_distinct_names" in x["alert"]["metadata"]]
    # 0..29 s: 10 alerts + an aggregate of 20; 30..39 s: the next window, 10 alerts.
    assert len(lines) == 21 and [s["alert"]["metadata"]["storm_distinct_names"] for s in storms] == [["20"]]
    assert "alert storms: 20 name(s) (20 hits) folded into 1 aggregate alert(s)" in r.stderr
    bad = subprocess.run([*cmd[:-6], "--storm-window", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--storm-window must be positive" in bad.stderr


def test_live_dedup_folds_and_writes_the_aggregate_when_the_window_ends(sigs) -> None:
    from detector.settle import LiveDedup

    upd, _ = sigs
    d = LiveDedup(window=3600, settle=0, storm=StormControl(threshold=3, window=60))
    out: list[Alert] = []
    for i in range(20):
        out += d.add(match(upd, 1000 + i, f"l{i}.upd.kaspersky.com"), now=0)
    out += d.add(match(upd, 1005, "s05.upd.kaspersky.com", client="10.9.0.3"), now=0)
    out += d.due(now=1)
    assert len(out) == 4 and not [a for a in out if a.storm]
    later = d.expire(1061)
    assert len(later) == 1 and later[0].storm.distinct_names == 17
    assert d.counters.alerts == 5 and len(d) == 4


def test_live_config_keys(tmp_path: Path) -> None:
    from detector import config as cfg

    path = tmp_path / "live.yaml"
    path.write_text("storm-threshold: 20\nstorm_window: 120\nstorm-sample: 5\n")
    s = cfg.resolve({}, str(path))
    assert (s.storm_threshold, s.storm_window, s.storm_sample) == (20, 120.0, 5)
    path.write_text("storm-sample: 500\n")
    with pytest.raises(cfg.ConfigFileError, match=r"live.yaml:1: storm-sample must be between 0 and 100"):
        cfg.resolve({}, str(path))


def test_folded_name_hashes_are_capped_over_all_windows(sigs, monkeypatch) -> None:
    import detector.storm as storm_mod

    upd, _ = sigs
    monkeypatch.setattr(storm_mod, "MAX_DISTINCT_TOTAL", 30)
    storm = StormControl(threshold=1, window=600)
    agg = Aggregator(gate=storm)
    out: list[Alert] = []
    for c in range(3):
        for i in range(21):
            out += agg.add(match(upd, 10 + i, f"h{i}.upd.kaspersky.com", client=f"10.1.0.{c}"))
    assert storm._hashes == 30
    aggs = [a for a in out + agg.flush() if a.storm is not None]
    assert [a.storm.distinct_names for a in aggs] == [20, 20, 20]
    assert [a.storm.exact for a in aggs] == [True, False, False] and storm._hashes == 0
