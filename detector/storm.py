"""Alert-storm control: one client flooding one signature with distinct names.

A random-subdomain flood (``<random>.upd.kaspersky.com`` a thousand times a second) gives
one alert per name: a storm that buries the real contacts and floods the SIEM.  This
stage is a threshold in the manner of Suricata's ``threshold``/``detection_filter``, keyed
``by_src`` and per signature, on packet time:

- per (client, signature) a window opens with the first name (``window`` seconds of
  capture time, default 600);
- the first ``threshold`` distinct names of a window (default 50) are alerted as usual;
- every further name of that window is *folded*: it raises no alert of its own, and at
  the end of the window one aggregate alert is written for all of them, carrying the count
  of distinct names folded, the first and last seen, and a sample of at most ``sample``
  names (default 10) in ``alert.metadata`` (``storm_*`` keys, see ``StormInfo``);
- other clients, and other signatures of the same client, are not affected: their names
  alert as usual and at once.

Where it sits: the stage decides when the de-duplication stage (``aggregate.Aggregator``
for ``replay``, ``live.LiveDedup`` for ``live``) is about to *open* an alert for a new
(client, signature, name, evidence) key; ``admit()`` is that one hook.  Deciding there and
not on the alerts the de-duplication writes (which leave at the end of their window) keeps
a folded name from holding an open alert at all, so a flood costs one bounded record here
instead of one open alert per name, and the decision is made on the packet's time.  The
aggregate alerts leave through the same stage as every other alert (``expire``/``flush``),
so outputs need no change of their own beyond showing the ``storm_*`` fields.

Muting in the compiled core: a folded name still costs a trip through Python (decode, DNS
parse, match) before it is folded, and a flood is mostly such trips. So once a window folds,
the stage asks its ``muter`` (the compiled core's, ``capture.core.StormMuter``, set by
``attach`` for one file) to count the rest of the window's plain DNS questions itself: names
under the signature's suffixes that no other signature can claim (``Matcher.exclusive_suffixes``),
other than the names this window has already alerted or folded (their keys go with the
request, so their repeats still reach the de-duplication). When the window closes, or the
file ends (``detach``), the core's counts (hits, distinct names by the same ``name_key``,
first and last seen, sample names) join the aggregate. The aggregate is then the same one
alert with the same counts: a name is one hit (its repeats and its answer join it, as they
join its one de-duplication key; without de-duplication every message is a hit), and a name
the core counted is distinct from those Python counted by construction.

Bounded: at most ``max_keys`` (client, signature) windows are tracked (the oldest window
is closed early, and counted, past it); the distinct names of a folded window are counted
exactly up to ``MAX_DISTINCT`` per window and ``MAX_DISTINCT_TOTAL`` over all (by their 64-bit
``name_key``), beyond which every further hit counts as a new name (``StormInfo.exact`` false).  ``threshold=0`` turns the stage off.
"""

from __future__ import annotations

import argparse
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .model import Alert, Match

if TYPE_CHECKING:
    from .signatures import Signature

DEFAULT_THRESHOLD = 50
DEFAULT_WINDOW = 600.0
DEFAULT_SAMPLE = 10
MAX_SAMPLE = 100
MAX_KEYS = 10_000
MAX_DISTINCT = 65_536  # folded-name hashes per window ...
MAX_DISTINCT_TOTAL = 500_000  # ... and over all windows (about 30 MB)

StormKey = tuple[str, int]  # client, signature id
_FNV_OFFSET, _FNV_PRIME, _MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
_LOWER = bytes(range(256)).translate(bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz"))


def name_key(name: str) -> int:
    """A name's 64-bit key: FNV-1a over its UTF-8 bytes with ASCII letters lower-cased (so
    DNS 0x20 case games count once). The compiled core computes the same (``mute.rs``)."""
    h = _FNV_OFFSET
    for b in name.encode("utf-8", "surrogatepass").translate(_LOWER):
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


# What a muter reports for one window: hits, distinct names, exact, first, last, sample.
Counted = tuple[int, int, bool, float, float, list[str]]


class Muter(Protocol):
    def mute(self, client: str, sig: Signature, until: float, except_keys: list[int], sample: int,
             repeats: bool) -> bool: ...

    def take(self, client: str, sig_id: int) -> Counted | None: ...


@dataclass(frozen=True, slots=True)
class StormInfo:
    """What an aggregate alert carries besides its first folded match."""

    distinct_names: int  # names folded into this alert (not counting the first ``threshold``)
    sample: tuple[str, ...]  # the first folded names, at most ``sample``
    threshold: int
    window: float
    exact: bool = True  # False: past MAX_DISTINCT hashes, every further hit counted as a name


class _Window:
    __slots__ = ("start", "names", "first_match", "first", "last", "hits", "hashes", "sample", "source", "overflow",
                 "muted", "elsewhere", "approx")

    def __init__(self, start: float) -> None:
        self.start = start
        self.names: set[int] = set()  # hashes of the names alerted in this window (<= threshold)
        self.first_match: Match | None = None  # the first folded match
        self.first = self.last = start
        self.hits = 0  # folded matches (repeats included)
        self.hashes: set[int] = set()  # folded distinct names, as 64-bit hashes
        self.sample: list[str] = []
        self.source: str | None = None
        self.overflow = 0  # folded hits past MAX_DISTINCT hashes
        self.muted = False  # the compiled core counts this window's plain DNS questions
        self.elsewhere = 0  # distinct names the core counted
        self.approx = False  # the core's count went past its bound


class StormControl:
    def __init__(
        self,
        threshold: int = DEFAULT_THRESHOLD,
        window: float = DEFAULT_WINDOW,
        sample: int = DEFAULT_SAMPLE,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if threshold < 0 or window <= 0 or not 0 <= sample <= MAX_SAMPLE or max_keys < 1:
            raise ValueError("storm control: threshold >= 0, window > 0, 0 <= sample <= 100, max_keys >= 1")
        self.threshold = threshold
        self.window = window
        self.sample = sample
        self.max_keys = max_keys
        self._t: OrderedDict[StormKey, _Window] = OrderedDict()  # in window-start order
        self._hashes = 0  # folded-name hashes held over all windows
        self._ready: list[Alert] = []  # aggregates closed by admit(), handed out by expire()
        self.counters: Counter[str] = Counter()  # aggregates, folded_hits, folded_names, keys_evicted, core_*
        self.muter: Muter | None = None  # the compiled core, for one file (attach/detach)
        # Without de-duplication every match is admitted, so a muter counts repeats as hits.
        self.count_repeats = False

    def attach(self, muter: Muter) -> None:
        """Let ``muter`` count folded DNS names of the file it reads (until ``detach``)."""
        self.muter = muter

    def detach(self) -> None:
        """The file is through: take every count the muter holds into its window."""
        if self.muter is not None:
            for key, w in self._t.items():
                self._take(key, w)
        self.muter = None

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def __len__(self) -> int:
        return len(self._t)

    def admit(self, match: Match, source: str | None = None) -> bool:
        """A match is about to open a new alert: True to let it, False when it is folded
        into its client's and signature's aggregate (which ``expire``/``flush`` hand out)."""
        if not self.threshold:
            return True
        obs = match.observation
        ts = obs.ts
        key = (obs.client, match.signature.id)
        w = self._t.get(key)
        if w is None or ts >= w.start + self.window:
            if w is not None:
                self._close(key)
            w = self._t[key] = _Window(ts)
            while len(self._t) > self.max_keys:
                old = next(iter(self._t))
                self._close(old)
                self.counters["keys_evicted"] += 1
        name = obs.hostname
        h = name_key(name)  # what the two sets hold (and the core's mutes)
        if h in w.names:
            return True
        if len(w.names) < self.threshold:
            w.names.add(h)
            return True
        # Past the threshold: fold.
        c = self.counters
        c["folded_hits"] += 1
        w.hits += 1
        if w.first_match is None:
            w.first_match, w.first, w.last, w.source = match, ts, ts, source
        else:
            w.first, w.last = min(w.first, ts), max(w.last, ts)
        if len(w.hashes) < MAX_DISTINCT and self._hashes < MAX_DISTINCT_TOTAL:
            if h not in w.hashes:
                w.hashes.add(h)
                self._hashes += 1
                c["folded_names"] += 1
                if len(w.sample) < self.sample:
                    w.sample.append(name)
                if w.muted and self.muter is not None:
                    # Folded here while the core mutes the window (a batch it classified
                    # before the mute, when it reads ahead): its repeats stay Python's.
                    self.muter.mute(obs.client, match.signature, w.start + self.window, [h],
                                    self.sample - len(w.sample), self.count_repeats)
        else:
            w.overflow += 1
            c["folded_names"] += 1
        if self.muter is not None and not w.muted:
            w.muted = self.muter.mute(obs.client, match.signature, w.start + self.window,
                                      [*w.names, *w.hashes], self.sample - len(w.sample), self.count_repeats)
            if w.muted:
                c["core_mutes"] += 1
        return False

    def _take(self, key: StormKey, w: _Window) -> None:
        if not w.muted or self.muter is None:
            return
        w.muted = False
        got = self.muter.take(key[0], key[1])
        if got is None:
            return
        hits, distinct, exact, first, last, sample = got
        w.hits += hits
        w.elsewhere += distinct
        w.approx = w.approx or not exact
        w.first, w.last = min(w.first, first), max(w.last, last)
        w.sample.extend(sample[: max(0, self.sample - len(w.sample))])
        c = self.counters
        c["folded_hits"] += hits
        c["folded_names"] += distinct
        c["core_hits"] += hits

    def _close(self, key: StormKey) -> None:
        self._take(key, self._t[key])
        w = self._t.pop(key)
        self._hashes -= len(w.hashes)
        if w.first_match is None:
            return
        info = StormInfo(len(w.hashes) + w.overflow + w.elsewhere, tuple(w.sample), self.threshold, self.window,
                         exact=not (w.overflow or w.approx))
        m = w.first_match
        self._ready.append(Alert(m, w.hits, w.first, w.last, w.source, m.observation.strength, storm=info))
        self.counters["aggregates"] += 1

    def expire(self, now: float) -> list[Alert]:
        """Aggregates of windows that ended by ``now`` (packet time), and any closed early."""
        t = self._t
        while t:
            key, w = next(iter(t.items()))
            if now < w.start + self.window:
                break
            self._close(key)
        out, self._ready = self._ready, []
        return out

    def flush(self) -> list[Alert]:
        """End of input: every aggregate still open."""
        for key in list(self._t):
            self._close(key)
        out, self._ready = self._ready, []
        return out

    def summary(self) -> str | None:
        """One line for the end-of-run summary, or None when nothing was folded."""
        c = self.counters
        if not self.threshold:
            return "alert-storm control: off"
        if not c["folded_hits"] and not c["keys_evicted"]:
            return None
        return (
            f"alert storms: {c['folded_names']:,} name(s) ({c['folded_hits']:,} hits) folded into "
            f"{c['aggregates']:,} aggregate alert(s) (over {self.threshold} distinct names per client and "
            f"signature in {self.window:g} s){_in_core(c['core_hits'])}{_evicted(c['keys_evicted'])}"
        )


def add_storm_options(p: argparse.ArgumentParser) -> None:
    """The ``replay`` flags (``live`` has the same as config keys, ``config.OPTIONS``)."""
    p.add_argument("--storm-threshold", type=int, default=DEFAULT_THRESHOLD, metavar="N",
                   help="alert-storm control: past N distinct names from one client under one signature in "
                   f"--storm-window, further names fold into one aggregate alert; 0 turns it off (default {DEFAULT_THRESHOLD})")
    p.add_argument("--storm-window", type=float, default=DEFAULT_WINDOW, metavar="SECONDS",
                   help=f"alert-storm control: the window, in capture time (default {DEFAULT_WINDOW:g})")
    p.add_argument("--storm-sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                   help=f"alert-storm control: names kept as a sample in the aggregate alert, 0-{MAX_SAMPLE} (default {DEFAULT_SAMPLE})")


def check_storm_options(args: argparse.Namespace) -> str | None:
    if getattr(args, "storm_threshold", 0) < 0:
        return "--storm-threshold must be 0 (off) or more"
    if getattr(args, "storm_window", 1.0) <= 0:
        return "--storm-window must be positive"
    if not 0 <= getattr(args, "storm_sample", 0) <= MAX_SAMPLE:
        return f"--storm-sample must be between 0 and {MAX_SAMPLE}"
    return None


def _in_core(n: int) -> str:
    return f"; {n:,} of the folded hits counted in the compiled core (DNS)" if n else ""


def _evicted(n: int) -> str:
    return f"; {n:,} client/signature windows closed early (table full)" if n else ""
