"""The live emission policy: one de-duplication for every worker of ``detector live``, and
for ``detector ingest -`` (a stream): used by both, so it lives beside ``aggregate.py``.

An alert is written as soon as its key (``aggregate.key_of``) is first seen, after a
settle time in which the server's answer may still raise its evidence strength; repeats
inside the window only increase counters; the next hit after the window starts a new alert.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .aggregate import Key, key_of
from .model import Alert, Match
from .storm import StormControl

_ALERT_FIELDS = {f.name for f in dataclasses.fields(Alert)}


@dataclass
class _Entry:
    match: Match
    count: int
    first: float
    last: float
    strength: Any
    due: float  # wall-clock time to write it
    written: bool = False


@dataclass
class DedupCounters:
    matches: int = 0
    alerts: int = 0
    repeats: int = 0  # hits inside an open window, after the alert (counted, not written)
    upgrades: int = 0
    early: int = 0  # windows closed early because the table was full
    by_category: Counter[str] = field(default_factory=Counter)


class LiveDedup:
    """The live emission policy (see the module docstring), bounded by ``max_open``."""

    def __init__(self, window: float, settle: float, max_open: int = 100_000, storm: StormControl | None = None) -> None:
        self.storm = storm if storm is not None else StormControl(threshold=0)  # storm.py: admit() gates new keys
        self.window = window
        self.settle = settle
        self.max_open = max_open
        self._open: OrderedDict[Key, _Entry] = OrderedDict()  # in first-seen order
        self._pending: deque[Key] = deque()  # not written yet, in arrival order
        self.counters = DedupCounters()

    def __len__(self) -> int:
        return len(self._open)

    @property
    def pending(self) -> int:
        return len(self._pending)

    key = staticmethod(key_of)  # the same key as replay's aggregator

    def add(self, match: Match, now: float) -> list[Alert]:
        """Record a hit (``now``: wall clock).  Returns alerts that must be written at once
        (the oldest entry of a full table, if it was still waiting)."""
        c = self.counters
        c.matches += 1
        obs = match.observation
        key = self.key(match)
        cur = self._open.get(key)
        strength = getattr(obs, "strength", None)
        if cur is not None and obs.ts < cur.first + self.window:
            cur.count += 1
            cur.last = max(cur.last, obs.ts)
            cur.first = min(cur.first, obs.ts)  # two workers: a little out of order
            if strength is not None and (cur.strength is None or strength > cur.strength):
                cur.strength = strength
            if cur.written:
                c.repeats += 1
            return []
        out: list[Alert] = []
        if cur is not None:  # same key, the window has passed: a new alert
            out += self._close(key)
        admitted = self.storm.admit(match)
        out += self._storm_alerts(self.storm.expire(obs.ts))
        if not admitted:
            return out  # folded into an alert-storm aggregate, written when its window ends
        self._open[key] = _Entry(match, 1, obs.ts, obs.ts, strength, now + self.settle)
        self._pending.append(key)
        while len(self._open) > self.max_open:
            old = next(iter(self._open))
            out += self._close(old)
            c.early += 1
        return out

    def _storm_alerts(self, alerts: list[Alert]) -> list[Alert]:
        for a in alerts:
            self.counters.alerts += 1
            self.counters.by_category[a.signature.category] += 1
        return alerts

    def upgrade(self, key: Key, strength: Any) -> None:
        """The server answered: raise the strength (shown if the alert is not written yet)."""
        cur = self._open.get(tuple(key))  # type: ignore[arg-type]
        if cur is not None and (cur.strength is None or strength > cur.strength):
            cur.strength = strength
            self.counters.upgrades += 1

    def _close(self, key: Key) -> list[Alert]:
        e = self._open.pop(key)
        return [] if e.written else [self._write(e)]

    def _write(self, e: _Entry) -> Alert:
        e.written = True
        c = self.counters
        c.alerts += 1
        c.by_category[e.match.signature.category] += 1
        kw: dict[str, Any] = {}
        if "strength" in _ALERT_FIELDS and e.strength is not None:
            kw["strength"] = e.strength
        return Alert(e.match, e.count, e.first, e.last, None, **kw)

    def due(self, now: float) -> list[Alert]:
        """Alerts whose settle time has passed, in arrival order."""
        out: list[Alert] = []
        pend = self._pending
        while pend:
            e = self._open.get(pend[0])
            if e is None or e.written:
                pend.popleft()
                continue
            if e.due > now:
                break
            pend.popleft()
            out.append(self._write(e))
        return out

    def next_due(self) -> float | None:
        for k in self._pending:
            e = self._open.get(k)
            if e is not None and not e.written:
                return e.due
        return None

    def expire(self, now: float) -> list[Alert]:
        """Close windows that ended before ``now`` (capture time = wall clock when live)."""
        out: list[Alert] = []
        op = self._open
        while op:
            k, e = next(iter(op.items()))
            if now < e.first + self.window:
                break
            out += self._close(k)
        return out + self._storm_alerts(self.storm.expire(now))

    def flush(self) -> list[Alert]:
        """Stopping: every alert not written yet."""
        out: list[Alert] = []
        for k in list(self._pending):
            e = self._open.get(k)
            if e is not None and not e.written:
                out.append(self._write(e))
        self._pending.clear()
        return out + self._storm_alerts(self.storm.flush())

