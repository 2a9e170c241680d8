"""Per-flow packet and byte counters, as Suricata's alert ``flow`` object reports them.

One bounded table (LRU, evictions counted) keyed by IP protocol and the unordered pair of
(address, port) endpoints of the innermost TCP/UDP packet (after tunnel decapsulation and
IP reassembly).  Semantics, shared with the compiled core that may count instead of us:

- the flow's ``to_server`` direction is the direction of its first packet seen, whose
  sender is the client (``FlowRecord.client``);
- a TCP segment with SYN set and ACK clear starts a NEW record (counters reset, start =
  its timestamp, its sender the client), even if the pair was seen before;
- every TCP/UDP packet of the flow counts, pure ACKs and packets of decided streams too;
- bytes are the IP packet's length (IPv4 total length, IPv6 40 + payload length; for
  fragments, of the reassembled datagram), not the frame's;
- ``start`` is the timestamp of the flow's first packet;
- an alert reports the counters as of the packet that produced its match, that packet
  included.

A capture layer that counted the packets itself (the Rust core) hands ``Detector.feed``
``counters=(start_ts, pkts_fwd, bytes_fwd, pkts_rev, bytes_rev[, to_server])``: absolute
counts of this packet's flow including this packet, ``fwd`` being this packet's
direction; the optional sixth item says whether this packet travels to the server (else
the record's own notion of the client decides).  ``FlowRecord.absolute`` takes them in
place of the detector's count of that packet; packets the detector counted itself (fed
without counters) stay on top.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_FLOWS = 100_000
SYN, ACK = 0x02, 0x10

Endpoint = tuple[str, int]
CoreCounters = tuple  # (start_ts, pkts_fwd, bytes_fwd, pkts_rev, bytes_rev[, to_server])


class FlowRecord:
    """The counters of one flow.  ``pkts``/``bytes`` are (to_server, to_client)."""

    # Slots, and the four own counters as slots rather than a list: a flood of new flows
    # holds 100,000s of these.
    __slots__ = ("key", "client", "start", "pts", "bts", "ptc", "btc", "core", "core_start", "live")

    def __init__(self, key: tuple, client: Endpoint, ts: float) -> None:
        self.key = key
        self.client = client  # (address, port) of the sender of the first packet seen
        self.start = ts
        self.pts = self.bts = self.ptc = self.btc = 0  # counted here: packets, bytes to server / to client
        self.core: tuple[int, int, int, int] | None = None  # the capture layer's, absolute
        self.core_start: float | None = None
        self.live = True  # still in the table (a decided stream's raw-skip entry may outlive it)

    def add(self, to_server: bool, length: int) -> None:
        if to_server:
            self.pts += 1
            self.bts += length
        else:
            self.ptc += 1
            self.btc += length

    def absolute(self, counters: CoreCounters, sender: Endpoint) -> None:
        """Counters a capture layer counted, this packet included (see the module doc)."""
        start, pf, bf, pr, br = (counters[0], int(counters[1]), int(counters[2]), int(counters[3]), int(counters[4]))
        to_server = bool(counters[5]) if len(counters) > 5 else sender == self.client
        self.core = (pf, bf, pr, br) if to_server else (pr, br, pf, bf)
        self.core_start = float(start)

    def counts(self) -> tuple[float, int, int, int, int]:
        """(start, pkts_toserver, bytes_toserver, pkts_toclient, bytes_toclient)."""
        c = self.core
        if c is None:
            return self.start, self.pts, self.bts, self.ptc, self.btc
        start = self.start if self.core_start is None else min(self.start, self.core_start)
        return start, c[0] + self.pts, c[1] + self.bts, c[2] + self.ptc, c[3] + self.btc

    def direction(self, sender: Endpoint) -> str:
        return "to_server" if sender == self.client else "to_client"


class FlowCounters:
    """The bounded table of ``FlowRecord`` (least recently seen evicted first)."""

    def __init__(self, max_flows: int = MAX_FLOWS) -> None:
        self.max_flows = max_flows
        self._t: OrderedDict[tuple, FlowRecord] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._t)

    def clear(self) -> None:
        """Forget every flow (a new capture file); the eviction count stays."""
        for rec in self._t.values():
            rec.live = False
        self._t.clear()

    def record(self, ts: float, proto: int, src: str, sport: int, dst: str, dport: int, tcp_flags: int = 0) -> FlowRecord:
        """The record of this packet's flow (created, or renewed on a TCP SYN without ACK)."""
        a, b = (src, sport), (dst, dport)
        key = (proto, a, b) if a < b else (proto, b, a)
        t = self._t
        rec = t.get(key)
        if rec is None or (proto == 6 and tcp_flags & (SYN | ACK) == SYN):
            if rec is not None:
                rec.live = False
                del t[key]
            rec = FlowRecord(key, a, ts)
            t[key] = rec
            if len(t) > self.max_flows:
                _, old = t.popitem(last=False)
                old.live = False
                self.evicted += 1
        else:
            t.move_to_end(key)
        return rec

    def count(
        self, ts: float, proto: int, src: str, sport: int, dst: str, dport: int, length: int, tcp_flags: int = 0,
        counters: CoreCounters | None = None,
    ) -> FlowRecord:
        """Count one packet (or take a capture layer's counters for it); its record."""
        rec = self.record(ts, proto, src, sport, dst, dport, tcp_flags)
        if counters is None:
            rec.add((src, sport) == rec.client, length)
        else:
            if len(counters) > 5:  # the capture layer saw the flow's first packet: it knows the client
                rec.client = (src, sport) if counters[5] else (dst, dport)
            rec.absolute(counters, (src, sport))
        return rec

    def touch(self, rec: FlowRecord, to_server: bool, length: int) -> None:
        """Count a packet of a known record (the raw skip of decided streams)."""
        rec.add(to_server, length)
        if rec.live:
            self._t.move_to_end(rec.key)
