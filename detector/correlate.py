"""State that ties one packet's evidence to another's, all bounded and sans-I/O.

- ``LearnedNames``: addresses that a client got in a DNS answer for a Kaspersky name, so a
  later flow from that client to that address with no host name of its own (an IP-literal
  URL, Encrypted Client Hello, TLS resumption without SNI, a binary protocol) is still
  attributed to the name.  An entry lives for the answer's TTL, at least ``min_ttl``
  (clients connect right after an answer even when its TTL is 0) and at most ``max_ttl``;
  the table is capped, and evictions are counted.
- ``Awaiting``: client requests whose alert gets stronger when the server answers
  (a ServerHello, an HTTP status line): keyed by the server's direction of the flow.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

LearnedKey = tuple[str, str]  # client, server address


class LearnedNames:
    def __init__(self, max_entries: int = 65536, min_ttl: float = 60.0, max_ttl: float = 86400.0) -> None:
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._t: OrderedDict[LearnedKey, tuple[float, str, Any, float]] = OrderedDict()
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._t)

    def learn(self, client: str, addr: str, ts: float, ttl: int, hostname: str, hit: Any, count: bool = True) -> None:
        life = min(max(float(ttl), self.min_ttl), self.max_ttl)
        key = (client, addr)
        self._t.pop(key, None)
        self._t[key] = (ts + life, hostname, hit, ts)
        self.counters["learned"] += count
        while len(self._t) > self.max_entries:
            self._t.popitem(last=False)
            self.counters["evicted"] += count

    def lookup(self, client: str, addr: str, ts: float, unless: str | None = None) -> tuple[str, Any, float] | None:
        """(hostname, hit, when learned) or None; an expired entry is dropped.  ``unless``:
        a name the flow already carries (an ECH outer name): learning it adds nothing."""
        entry = self._t.get((client, addr))
        if entry is None:
            return None
        expiry, hostname, hit, learned_at = entry
        if ts > expiry:
            del self._t[(client, addr)]
            self.counters["expired"] += 1
            return None
        if hostname == unless:
            return None
        self.counters["used"] += 1
        return hostname, hit, learned_at


class Awaiting:
    """Alerts waiting for the other side of their exchange; FIFO-capped."""

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._t: OrderedDict[tuple[str, int, str, int], list[tuple[Any, str]]] = OrderedDict()
        self.evicted = 0

    def add(self, server_key: tuple[str, int, str, int], agg_key: Any, kind: str) -> None:
        self._t.setdefault(server_key, []).append((agg_key, kind))
        while len(self._t) > self.max_entries:
            self._t.popitem(last=False)
            self.evicted += 1

    def pop(self, server_key: tuple[str, int, str, int]) -> list[tuple[Any, str]] | None:
        return self._t.pop(server_key, None)
