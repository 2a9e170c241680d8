"""The bounded per-direction TCP stream table.

Each direction of a TCP connection is keyed by ``(src, sport, dst, dport)``.  The table
keeps only the first bytes a side sent (up to ``max_stream`` bytes, in sequence order,
with out-of-order segments held until the gap fills) for as long as a parser still needs
them.  Once a stream is decided (its ClientHello or request head parsed, or its first
bytes are neither TLS, HTTP nor DNS), it is marked ``DONE`` and every later packet costs
one dict lookup.  The table is capped: the oldest entries are evicted and counted, and a
FIN or RST removes the entry.
"""

from __future__ import annotations

from collections.abc import Iterator

DONE = None  # sentinel value for a decided stream (kept so later packets are skipped)
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10
MAX_PENDING = 64  # out-of-order segments held per stream
WINDOW = 1 << 20  # accept segments at most this far ahead of the stream start

FlowKey = tuple[str, int, str, int]


class Stream:
    """The reassembled first bytes of one direction of a connection."""

    __slots__ = ("base", "data", "pending", "mode", "consumed", "first_ts")

    def __init__(self, base: int, ts: float) -> None:
        self.base = base  # sequence number of data[0]
        self.data = bytearray()
        self.pending: dict[int, bytes] = {}  # offset -> bytes, beyond a gap
        self.mode = ""  # "", "tls", "http", "dns"
        self.consumed = 0  # bytes the DNS parser already took from the front
        self.first_ts = ts

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
            if off < WINDOW and len(self.pending) < MAX_PENDING and off not in self.pending:
                self.pending[off] = payload
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
                if o + len(chunk) > len(self.data):
                    self.data += chunk[len(self.data) - o :]
        if len(self.data) > cap:
            del self.data[cap:]
        return len(self.data) > before


class FlowTable:
    def __init__(self, max_flows: int = 200_000, max_stream: int = 32 * 1024) -> None:
        self.max_flows = max_flows
        self.max_stream = max_stream
        self._t: dict[FlowKey, Stream | int | None] = {}
        self.evicted = 0
        self.evicted_undecided = 0

    def __len__(self) -> int:
        return len(self._t)

    def get(self, key: FlowKey) -> Stream | int | None | bool:
        """The entry, or False when the key is unknown (``None`` means decided)."""
        return self._t.get(key, False)

    def set(self, key: FlowKey, value: Stream | int | None) -> None:
        t = self._t
        if key not in t and len(t) >= self.max_flows:
            old = next(iter(t))
            if isinstance(t.pop(old), Stream):
                self.evicted_undecided += 1
            self.evicted += 1
        t[key] = value

    def remove(self, key: FlowKey) -> None:
        self._t.pop(key, None)

    def streams(self) -> Iterator[tuple[FlowKey, Stream]]:
        for k, v in self._t.items():
            if isinstance(v, Stream):
                yield k, v
