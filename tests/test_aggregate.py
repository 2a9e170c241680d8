"""De-duplication windows and the alert lifecycle, on packet time."""

from __future__ import annotations

import pytest

from detector.aggregate import Aggregator
from detector.model import Alert, Evidence, Match, Observation
from detector.signatures import Signature, load_signatures


@pytest.fixture(scope="module")
def sigs() -> tuple[Signature, Signature]:
    pack = load_signatures()
    return pack.by_id(1610001), pack.by_id(1610002)


def match(
    sig: Signature,
    ts: float,
    client: str = "10.0.0.5",
    hostname: str = "activation-v2.kaspersky.com",
    evidence: Evidence = Evidence.TLS_SNI,
    server: str = "192.0.2.1",
    server_port: int = 443,
    client_port: int = 50000,
    detail: dict | None = None,
) -> Match:
    obs = Observation(
        ts=ts,
        evidence=evidence,
        hostname=hostname,
        client=client,
        server=server,
        client_port=client_port,
        server_port=server_port,
        proto=6,
        flow_id=1,
        detail=detail or {},
    )
    return Match(obs, sig, hostname)


def test_dedup_within_window(sigs) -> None:
    a = Aggregator()
    sig = sigs[0]
    assert a.add(match(sig, 100.0), "f.pcap") == []
    assert a.add(match(sig, 150.0)) == []
    assert a.add(match(sig, 3699.0)) == []  # just inside the hour
    assert len(a) == 1
    (alert,) = a.flush()
    assert isinstance(alert, Alert)
    assert (alert.count, alert.first_seen, alert.last_seen) == (3, 100.0, 3699.0)
    assert alert.source_file == "f.pcap"
    assert alert.observation.ts == 100.0  # the first match is the evidence
    assert alert.signature is sig
    assert a.matches == 3
    assert len(a) == 0


def test_new_window_after_3600s_of_packet_time(sigs) -> None:
    a = Aggregator()
    sig = sigs[0]
    a.add(match(sig, 100.0))
    a.add(match(sig, 200.0))
    out = a.add(match(sig, 3700.0))  # first + 3600: the old window has ended
    assert [(x.count, x.first_seen, x.last_seen) for x in out] == [(2, 100.0, 200.0)]
    (second,) = a.flush()
    assert (second.count, second.first_seen, second.last_seen) == (1, 3700.0, 3700.0)


def test_window_closes_on_other_traffic(sigs) -> None:
    a = Aggregator(window=60.0)
    a.add(match(sigs[0], 0.0))
    a.add(match(sigs[0], 30.0))
    out = a.add(match(sigs[1], 61.0, hostname="s07.upd.kaspersky.com"))
    assert [(x.signature.id, x.count) for x in out] == [(1610001, 2)]
    assert len(a) == 1


def test_expire_directly(sigs) -> None:
    a = Aggregator(window=10.0)
    a.add(match(sigs[0], 0.0))
    a.add(match(sigs[0], 5.0, client="10.0.0.6"))
    assert a.expire(9.9) == []
    assert [x.observation.client for x in a.expire(10.0)] == ["10.0.0.5"]
    assert [x.observation.client for x in a.expire(1e9)] == ["10.0.0.6"]
    assert len(a) == 0


@pytest.mark.parametrize(
    "other",
    [
        {"client": "10.0.0.99"},
        {"hostname": "activate.activation-v2.kaspersky.com"},
        {"evidence": Evidence.DNS_QUERY},
        {"server_port": 8443},  # the same name on another port is other evidence
    ],
)
def test_key_parts_make_separate_alerts(sigs, other: dict) -> None:
    a = Aggregator()
    a.add(match(sigs[0], 1.0))
    a.add(match(sigs[0], 2.0, **other))
    assert len(a) == 2
    assert [x.count for x in a.flush()] == [1, 1]


def _learned(sig, ts, **kw) -> Match:
    kw.setdefault("detail", {"app_proto": "tls"})
    return match(sig, ts, evidence=Evidence.DNS_LEARNED, **kw)


@pytest.mark.parametrize(
    "other",
    [
        {"server_port": 80, "detail": {"app_proto": "http"}},  # plain HTTP to port 80, TLS to 443
        {"detail": {"app_proto": "http"}},  # HTTP and TLS on one port
        {"server": "192.0.2.2"},  # another address the name resolved to
    ],
)
def test_flow_evidence_is_not_merged_across_protocol_port_or_address(sigs, other: dict) -> None:
    """ip-from-dns (and ksc-port) name no host of their own: the application protocol, the
    server port and the server address tell the flows apart (issue 11, point 3)."""
    a = Aggregator()
    a.add(_learned(sigs[0], 1.0))
    a.add(_learned(sigs[0], 2.0, **other))
    assert len(a) == 2


def test_flow_evidence_repeats_still_merge(sigs) -> None:
    """Another connection (new client port) of the same kind to the same endpoint: one alert."""
    a = Aggregator()
    a.add(_learned(sigs[0], 1.0))
    a.add(_learned(sigs[0], 2.0, client_port=50001))
    (alert,) = a.flush()
    assert alert.count == 2


def test_named_evidence_is_not_split_by_server_address(sigs) -> None:
    """A host name seen in SNI on two addresses of a CDN is one piece of evidence."""
    a = Aggregator()
    a.add(match(sigs[0], 1.0, server="192.0.2.1"))
    a.add(match(sigs[0], 2.0, server="192.0.2.77"))
    assert len(a) == 1


def test_different_signature_same_host_separate(sigs) -> None:
    a = Aggregator()
    a.add(match(sigs[0], 1.0))
    a.add(match(sigs[1], 1.0))
    assert len(a) == 2


def test_dedup_false_emits_every_match(sigs) -> None:
    a = Aggregator(dedup=False)
    outs = [a.add(match(sigs[0], t), "x.pcap") for t in (1.0, 1.0, 2.0)]
    assert [[(x.count, x.first_seen, x.last_seen, x.source_file) for x in o] for o in outs] == [
        [(1, 1.0, 1.0, "x.pcap")],
        [(1, 1.0, 1.0, "x.pcap")],
        [(1, 2.0, 2.0, "x.pcap")],
    ]
    assert len(a) == 0
    assert a.flush() == []
    assert a.matches == 3


def test_max_open_early_closes_counted(sigs) -> None:
    a = Aggregator(max_open=2)
    assert a.add(match(sigs[0], 1.0, client="10.0.0.1")) == []
    assert a.add(match(sigs[0], 2.0, client="10.0.0.2")) == []
    out = a.add(match(sigs[0], 3.0, client="10.0.0.3"))
    assert [x.observation.client for x in out] == ["10.0.0.1"]  # oldest leaves early
    assert a.early == 1
    out = a.add(match(sigs[0], 4.0, client="10.0.0.4"))
    assert [x.observation.client for x in out] == ["10.0.0.2"]
    assert a.early == 2
    assert len(a) == 2
    # a repeat of an open key is only counted: nothing leaves
    assert a.add(match(sigs[0], 5.0, client="10.0.0.4")) == []
    assert a.early == 2


def test_flush_orders_by_first_seen(sigs) -> None:
    a = Aggregator()
    # replayed files out of time order: insertion order differs from first_seen order
    a.add(match(sigs[0], 500.0, client="c"))
    a.add(match(sigs[0], 100.0, client="a"))
    a.add(match(sigs[0], 300.0, client="b"))
    flushed = a.flush()
    assert [x.observation.client for x in flushed] == ["a", "b", "c"]
    assert [x.first_seen for x in flushed] == [100.0, 300.0, 500.0]


def test_out_of_order_match_moves_first_seen_back(sigs) -> None:
    a = Aggregator()
    a.add(match(sigs[0], 1000.0))
    a.add(match(sigs[0], 900.0))
    (alert,) = a.flush()
    assert (alert.count, alert.first_seen, alert.last_seen) == (2, 900.0, 1000.0)


def test_flush_empty() -> None:
    assert Aggregator().flush() == []
