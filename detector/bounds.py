"""Every table the traffic fills, its cap and its eviction counter, in one place.

An attacker on the span port chooses the keys of these tables (addresses, ports, IDs,
names), so each is capped by default, evicts by a fixed rule, and counts what it evicted.
``state(det)`` gathers the sizes and counters for the end-of-run summary (``replay``, summed
over ``--jobs`` workers) and for the live metrics (each worker ships it in its statistics).

| table (owner)                         | cap (default)                                  | eviction rule                               |
|---------------------------------------|------------------------------------------------|---------------------------------------------|
| TCP streams (decode/flows.FlowTable)  | 100,000 entries; 32 KiB + 32 KiB out-of-order per stream; 32 MiB buffered in all | oldest entry; oldest undecided stream given up (decided) |
| flow counters (decode/flowcount.FlowCounters) | 100,000 flows                  | least recently seen flow                    |
| IP fragments (decode/ip.IPDecoder)    | 4,096 datagrams, 16 MiB (payload + 96 B per piece), 256 pieces per datagram, 30 s | oldest datagram; a datagram past 256 pieces |
| QUIC CRYPTO (parsers/quic.QuicTracker)| 4,096 connections, 64 KiB each, 16 MiB in all, 30 s | least recently seen connection |
| DNS transactions (pipeline)           | 65,536 outstanding queries                     | oldest                                      |
| DNS parse cache (pipeline)            | 4,096 messages of at most 512 bytes            | oldest                                      |
| decided raw keys (pipeline)           | 100,000                                        | oldest                                      |
| learned addresses (correlate.LearnedNames) | 65,536, TTL 60 s .. 1 day                 | oldest; expired on lookup                   |
| awaiting answers (correlate.Awaiting) | 65,536 flows                                   | oldest                                      |
| open alerts (aggregate.Aggregator)    | 100,000                                        | oldest alert written early                  |
| alert-storm windows (storm.StormControl) | 10,000 (client, signature); 50 + 65,536 name hashes each, 500,000 in all | oldest window's aggregate written early |
| summary hosts (pipeline.Stats)        | 10,000 clients, 64 names each                  | later clients counted together              |
| live worker: flows (capture/live.LIVE_MAX_FLOWS) | 50,000 TCP streams, 50,000 flow counters, 50,000 core flows (per worker) | oldest, as above |
| live worker: whole-packet backlog (live/worker) | 50,000 packets, 16 MiB (MAX_BACKLOG, MAX_BACKLOG_BYTES) | when full, packets wait in the kernel ring; a batch past the room left is dropped, counted (backlog drops) |
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def state(det: Any) -> Counter[str]:
    """Sizes (``*-entries``, ``*-bytes``) and eviction counters of ``det``'s tables."""
    c: Counter[str] = Counter({f"quic-{k}": v for k, v in det.quic.counters.items()})
    c.update({f"learned-{k}": v for k, v in det.learned.counters.items()})
    fl, ip = det.flows, det.ip
    c.update({
        "awaiting-evicted": det.awaiting.evicted,
        "streams": len(fl),
        "streams_evicted": fl.evicted,
        "streams_evicted_undecided": fl.evicted_undecided,
        "streams_evicted_bytes": fl.evicted_bytes,
        "streams_buffered_bytes": fl.buffered,
        "streams_incomplete": sum(1 for _, s in fl.streams() if s.mode in ("tls", "http") and s.data),
        "fragments": ip.fragments,
        "reassembled": ip.reassembled,
        "frag_evicted": ip.frag_evicted,
        "frag_too_many": ip.frag_too_many,
        "frag_pending": len(ip._frags),
        "quic_buffered_bytes": det.quic.buffered,
        "quic_conns": len(det.quic),
        "learned_entries": len(det.learned),
        "awaiting_entries": len(det.awaiting._t),
        "dns_txns": len(det._txns),
        "dns_txns_evicted": det.stats.dns_txns_evicted,
        "done_raw": len(det._done_raw),
        "flow_counters": len(det.flowc),
        "flow_counters_evicted": det.flowc.evicted,
    })
    return c


# Sizes: summed over workers as gauges, never "counters that only go up".
GAUGES = frozenset({"streams", "streams_buffered_bytes", "streams_incomplete", "frag_pending", "quic_buffered_bytes",
                    "quic_conns", "learned_entries", "awaiting_entries", "dns_txns", "done_raw", "flow_counters"})
EVICTIONS = {
    "streams_evicted": "TCP stream table full",
    "streams_evicted_bytes": "TCP stream bytes over budget",
    "frag_evicted": "IP fragments incomplete (timeout, table or bytes full)",
    "frag_too_many": "IP datagrams with too many fragments",
    "quic-evicted": "QUIC connection table full",
    "quic-evicted-bytes": "QUIC CRYPTO bytes over budget",
    "learned-evicted": "learned-address table full",
    "awaiting-evicted": "awaiting-answer table full",
    "flow_counters_evicted": "flow counter table full",
    "core_flows_evicted": "compiled core: flow table full",
    "core_learned_evicted": "compiled core: learned-address table full",
    "core_forced": "compiled core: undecided flows handed up at a queue bound",
    "core_frags_shed": "compiled core: fragmented IP datagrams that never completed",
    "core_forced_shed": "compiled core: undecided flows' waiting packets shed at a bound (nothing Python reads)",
    "dns_txns_evicted": "DNS transaction table full",
}


def evictions_line(sc: Counter[str], det: Any) -> str:
    """``evictions: ...`` for the summary: every bounded table that had to let go."""
    parts = [f"{what} {sc[key]:,}" for key, what in EVICTIONS.items() if sc.get(key)]
    agg, storm = det.aggregator, det.storm
    if agg.early:
        parts.append(f"open alerts written early (table full) {agg.early:,}")
    if storm.counters["keys_evicted"]:
        parts.append(f"alert-storm windows closed early {storm.counters['keys_evicted']:,}")
    if det.stats.hosts_over:
        parts.append(f"alerts of clients past the summary's {len(det.stats.hosts):,} listed {det.stats.hosts_over:,}")
    return "evictions from bounded tables: " + ("; ".join(parts) if parts else "none")
