"""De-duplication and the alert lifecycle, on packet time.

One alert per key per window (default an hour of capture time).  The key is what makes two
matches the same evidence: (client, signature, hostname, evidence kind, application
protocol, server port), plus the server address for evidence that names no host of its own
(``ip-from-dns``, ``ksc-port``).  So a client's plain-HTTP flow to port 80 and its TLS flow
to port 443 of an address it learned from DNS are two alerts, never one.  The first match
opens the window, later matches only bump its count and
``last_seen``.  An alert leaves when capture time passes the end of its window, or at
``flush()``; so its count is final when it is written.  The table is capped: past
``max_open`` open alerts the oldest leaves early (counted in ``early``).
With ``dedup=False`` every match leaves at once as an alert with count 1.
A ``storm.StormControl`` (``gate``) decides before a new alert opens whether its name is
folded into an alert-storm aggregate instead; its aggregates leave with the others.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .model import Alert, Evidence, Match, Strength
from .storm import StormControl

Key = tuple[str, int, str, str, str, int, str]

# Evidence without a host name of its own: the server address tells two flows apart.
_BY_ADDRESS = frozenset({Evidence.DNS_LEARNED, Evidence.PORT})


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The other side of an exchange answered: raise the strength of the alert ``key``
    (kept in order with matches by a worker of ``replay --jobs``)."""

    ts: float
    key: Key
    strength: Strength


class _Open:
    __slots__ = ("match", "count", "first", "last", "source", "strength")

    def __init__(self, match: Match, source: str | None) -> None:
        ts = match.observation.ts
        self.match = match
        self.count = 1
        self.first = ts
        self.last = ts
        self.source = source
        self.strength = match.observation.strength

    def alert(self) -> Alert:
        return Alert(self.match, self.count, self.first, self.last, self.source, self.strength)


def make_key(
    client: str, sid: int, hostname: str, evidence: Evidence, app: str, server: str, server_port: int
) -> Key:
    """The de-duplication key; ``app`` is the application protocol the flow spoke (for
    flow evidence, ``detail["app_proto"]``: tls, http, quic, failed)."""
    return (
        client, sid, hostname, evidence.value, app, server_port,
        server if evidence in _BY_ADDRESS else "",
    )


def key_of(match: Match) -> Key:
    obs = match.observation
    app = obs.detail.get("app_proto") or obs.evidence.app_proto
    return make_key(obs.client, match.signature.id, obs.hostname, obs.evidence, app, obs.server, obs.server_port)


class Aggregator:
    def __init__(self, window: float = 3600.0, dedup: bool = True, max_open: int = 100_000,
                 gate: StormControl | None = None) -> None:
        self.gate = gate if gate is not None else StormControl(threshold=0)
        self.window = window
        self.dedup = dedup
        self.max_open = max_open
        self._open: OrderedDict[Key, _Open] = OrderedDict()
        self.matches = 0
        self.early = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, match: Match, source: str | None = None) -> list[Alert]:
        """Record a match; return the alerts whose window closed by now."""
        self.matches += 1
        obs = match.observation
        if not self.dedup:
            admitted = self.gate.admit(match, source)
            out = self.gate.expire(obs.ts)
            if admitted:
                out.append(Alert(match, 1, obs.ts, obs.ts, source, obs.strength))
            return out
        out = self.expire(obs.ts)
        key = key_of(match)
        cur = self._open.get(key)
        if cur is not None and obs.ts < cur.first + self.window:
            cur.count += 1
            if obs.strength > cur.strength:
                cur.strength = obs.strength
            if obs.ts > cur.last:
                cur.last = obs.ts
            if obs.ts < cur.first:  # files replayed out of time order
                cur.first = obs.ts
            return out
        if cur is not None:  # same key, next window: close the old one now
            out.append(self._open.pop(key).alert())
        admitted = self.gate.admit(match, source)
        out += self.gate.expire(obs.ts)
        if not admitted:
            return out  # folded into an alert-storm aggregate
        self._open[key] = _Open(match, source)
        while len(self._open) > self.max_open:
            out.append(self._open.popitem(last=False)[1].alert())
            self.early += 1
        return out

    def upgrade(self, key: Key, strength: Strength) -> bool:
        """The other side answered: raise the open alert's evidence strength."""
        cur = self._open.get(key)
        if cur is None or strength <= cur.strength:
            return False
        cur.strength = strength
        return True

    def expire(self, now: float) -> list[Alert]:
        out: list[Alert] = []
        op = self._open
        while op:
            first = next(iter(op.values()))
            if now < first.first + self.window:
                break
            out.append(op.popitem(last=False)[1].alert())
        return out + self.gate.expire(now)

    def flush(self) -> list[Alert]:
        out = [o.alert() for o in self._open.values()] + self.gate.flush()
        self._open.clear()
        out.sort(key=lambda a: a.first_seen)
        return out
