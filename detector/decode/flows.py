"""The bounded per-direction TCP stream table.

Each direction of a TCP connection is keyed by ``(src, sport, dst, dport)``.  The table
keeps only the first bytes a side sent (up to ``max_stream`` bytes, in sequence order,
with out-of-order segments held until the gap fills) for as long as a parser still needs
them.  Once a stream is decided (its ClientHello or request head parsed, or its first
bytes are neither TLS, HTTP nor DNS), it is marked ``DONE`` and every later packet costs
one dict lookup.  The table is capped: the oldest entries are evicted and counted, and a
FIN or RST removes the entry.

Memory is bounded three ways: ``max_flows`` entries; per stream at most ``max_stream``
bytes of data plus at most ``max_stream`` bytes of out-of-order segments (only segments
that start within the first ``max_stream`` bytes are held: later ones could never be
parsed); and ``max_bytes`` buffered over all streams, past which the oldest undecided
streams are given up (marked decided, counted in ``evicted_bytes``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

DONE = None  # sentinel value for a decided stream (kept so later packets are skipped)
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10
MAX_PENDING = 64  # out-of-order segments held per stream
WINDOW = 1 << 20  # accept segments at most this far ahead of the stream start

FlowKey = tuple[str, int, str, int]


class Stream:
    """The reassembled first bytes of one direction of a connection."""

    __slots__ = ("base", "data", "pending", "mode", "consumed", "first_ts", "pbytes", "acct")

    def __init__(self, base: int, ts: float) -> None:
        self.base = base  # sequence number of data[0]
        self.data = bytearray()
        self.pending: dict[int, bytes] = {}  # offset -> bytes, beyond a gap
        self.mode = ""  # "", "tls", "http", "dns"
        self.consumed = 0  # bytes the DNS parser already took from the front
        self.first_ts = ts
        self.pbytes = 0  # bytes held in pending
        self.acct = 0  # bytes the table counts for this stream (FlowTable.grow)

    def add(self, seq: int, payload: bytes, cap: int) -> bool:
        """Add a segment; True when contiguous data grew."""
        off = (seq - self.base) & 0xFFFFFFFF
        if off >= 0x80000000:  # before the start: keep only the new tail
            back = 0x100000000 - off
            if back >= len(payload):
                return False
            payload = payload[back:]
            off = 0
        before = have = len(self.data)
        if off > have:
            # Only what can end up within the first ``cap`` bytes is worth holding.
            if off < min(WINDOW, cap) and len(self.pending) < MAX_PENDING and off not in self.pending:
                payload = payload[: cap - off]
                if self.pbytes + len(payload) <= cap:
                    self.pending[off] = payload
                    self.pbytes += len(payload)
            return False
        if off + len(payload) > have:
            self.data += payload[have - off :]
        while self.pending:
            have = len(self.data)
            ready = [o for o in self.pending if o <= have]
            if not ready:
                break
            for o in sorted(ready):
                chunk = self.pending.pop(o)
                self.pbytes -= len(chunk)
                if o + len(chunk) > len(self.data):
                    self.data += chunk[len(self.data) - o :]
        if len(self.data) > cap:
            del self.data[cap:]
        return len(self.data) > before


class FlowTable:
    def __init__(self, max_flows: int = 100_000, max_stream: int = 32 * 1024, max_bytes: int = 32 << 20) -> None:
        self.max_flows = max_flows
        self.max_stream = max_stream
        self.max_bytes = max_bytes
        # OrderedDict, not dict: evicting the oldest of a plain dict (next(iter(d))) scans
        # the deleted slots at its front, quadratic under a flood of new flows.
        self._t: OrderedDict[FlowKey, Stream | int | None] = OrderedDict()
        self._streams: OrderedDict[FlowKey, None] = OrderedDict()  # keys holding a Stream, oldest first
        self.buffered = 0  # bytes held by all streams (data + out-of-order segments)
        self.evicted = 0  # entries pushed out by a full table
        self.evicted_undecided = 0  # ... of which streams still undecided
        self.evicted_bytes = 0  # undecided streams given up to stay under max_bytes

    def __len__(self) -> int:
        return len(self._t)

    def get(self, key: FlowKey) -> Stream | int | None | bool:
        """The entry, or False when the key is unknown (``None`` means decided)."""
        return self._t.get(key, False)

    def set(self, key: FlowKey, value: Stream | int | None) -> None:
        t = self._t
        cur = t.get(key, False)
        if isinstance(cur, Stream) and cur is not value:
            self._release(key, cur)
        elif cur is False and len(t) >= self.max_flows:
            old, gone = t.popitem(last=False)
            if isinstance(gone, Stream):
                self._release(old, gone)
                self.evicted_undecided += 1
            self.evicted += 1
        t[key] = value
        if isinstance(value, Stream):
            self._streams[key] = None

    def remove(self, key: FlowKey) -> None:
        gone = self._t.pop(key, None)
        if isinstance(gone, Stream):
            self._release(key, gone)

    def _release(self, key: FlowKey, s: Stream) -> None:
        self.buffered -= s.acct
        s.acct = 0
        self._streams.pop(key, None)

    def grow(self, key: FlowKey, s: Stream, seq: int, payload: bytes) -> bool:
        """``s.add`` for the stream of ``key``, keeping the table under ``max_bytes``: the
        oldest other undecided streams are given up (decided, counted) when it is over."""
        grew = s.add(seq, payload, self.max_stream)
        size = len(s.data) + s.pbytes
        self.buffered += size - s.acct
        s.acct = size
        streams = self._streams
        while self.buffered > self.max_bytes and len(streams) > 1:
            old = next(iter(streams))
            if old == key:  # never this one: move it behind the others
                streams.move_to_end(old)
                continue
            gone = self._t.get(old)
            if isinstance(gone, Stream):
                self._release(old, gone)
                self._t[old] = DONE
                self.evicted_bytes += 1
            else:
                del streams[old]
        return grew

    def streams(self) -> Iterator[tuple[FlowKey, Stream]]:
        for k, v in self._t.items():
            if isinstance(v, Stream):
                yield k, v
