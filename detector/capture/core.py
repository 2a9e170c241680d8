"""The compiled core: one pass over a capture file in Rust (``core/``, built by PyO3).

The core reads the file (pcap, pcapng, gzip'd), decodes every frame once, counts it in its
flow and hands Python only the frames that can hold evidence, in capture order and in
batches, each with its flow's counters (see ``core/src/classify.rs`` for the rules).
Python then runs them through the same ``Detector`` as the pure-Python path, so matching,
evidence, de-duplication and formats are one code; a test asserts both paths give the
same alerts on every capture.

Where the extension was not built (no Rust toolchain at install time), ``AVAILABLE`` is
False and replay takes the pure-Python path after one warning (``warn_missing``).
"""

from __future__ import annotations

import gzip
import ipaddress
import os
import sys
import zlib
from collections.abc import Callable, Iterator

from ..errors import CaptureError
from ..matcher import Matcher
from ..signatures import Signature
from ..storm import Counted, name_key
from .pcap import PCAP_MAGICS, PCAPNG_SHB

DISABLED = os.environ.get("KD_NO_CORE") == "1"  # diagnostics and tests: run as if it were not built
try:
    if DISABLED:
        raise ImportError("KD_NO_CORE=1")
    from .. import _core  # type: ignore[attr-defined]
except ImportError:  # built without a Rust toolchain: the pure-Python path serves
    _core = None

AVAILABLE = _core is not None
DEFAULT_FLOW_HEAD = 16
BATCH = 8192
LEARN_ONLY = -1  # wire length marking a record from another share, for DNS learning only
HOW_TO_BUILD = (
    "the compiled core (detector._core) is not built: running the pure-Python path (same alerts, "
    "slower). To get the fast path, install a Rust toolchain (https://rustup.rs) and reinstall: "
    "pip install --force-reinstall --no-deps kaspersky-traffic-detector"
)
_warned = False


def warn_missing() -> None:
    """Say once per process that the fast path is missing and how to get it."""
    global _warned
    if not AVAILABLE and not _warned:
        _warned = True
        why = "KD_NO_CORE=1: the compiled core is not used, running the pure-Python path" if DISABLED else HOW_TO_BUILD
        sys.stderr.write(f"detector: warning: {why}\n")


def usable(path: str) -> bool:
    """True when the core can read this file: pcap or pcapng, plain or gzip'd."""
    if not AVAILABLE:
        return False
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
            if magic[:2] == b"\x1f\x8b":
                fh.seek(0)
                with gzip.GzipFile(fileobj=fh) as gz:
                    magic = gz.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return magic in PCAP_MAGICS or magic == PCAPNG_SHB


def state_counters(cs: dict[str, int]) -> dict[str, int]:
    """The core's bounded-table counters from its ``stats()``, under the names the summary
    and the metrics use (``bounds.EVICTIONS``)."""
    return {"core_flows_evicted": cs["flows_evicted"], "core_learned_evicted": cs["learned_evicted"],
            "core_forced": cs["forced"], "core_forced_shed": cs["forced_shed"],
            "core_frags_shed": cs["frags_shed"]}


def prefilter(matcher: Matcher) -> tuple[tuple[bytes, ...] | None, list[list[bytes]] | None]:
    """The anchors and DNS tails the core filters with. Reverse lookups (PTR) go to Python
    too: their answers name internal hosts for the inventory (hostnames.py), as the
    pure-Python path's DNS prefilter lets them through."""
    anchors = None if matcher.dns_anchors is None else (*matcher.dns_anchors, b"\x04arpa\x00")
    tails = matcher.dns_tails()
    if tails is not None:
        tails = [*tails, [b"arpa"]]
    return anchors, tails


def live_classifier(matcher: Matcher, flow_head: int = DEFAULT_FLOW_HEAD, max_flows: int | None = None) -> object | None:
    """The core's classifier for frames a live capture hands over in batches, or None
    where the core is not built.  ``max_flows`` caps its flow table (the core's default,
    200,000, otherwise)."""
    if _core is None:
        return None
    anchors, tails = prefilter(matcher)
    cap = {} if max_flows is None else {"max_flows": max_flows}
    return _core.Classifier(list(anchors) if anchors is not None else None, matcher.ports(6), matcher.ports(17),
                            flow_head=flow_head, tails=tails, **cap)


class StormMuter:
    """``storm.Muter`` over a replay scanner (``core/src/mute.rs``): counts a
    folding window's plain DNS questions in the core, under the signature's suffixes that no
    other signature claims; the exact names of other signatures under them go as exceptions."""

    def __init__(self, target: object, matcher: Matcher) -> None:
        self._t = target
        self._m = matcher

    def mute(self, client: str, sig: Signature, until: float, except_keys: list[int], sample: int,
             repeats: bool) -> bool:
        scope = [(x, names) for x, names in self._m.exclusive_suffixes(sig) if x.isascii()]
        if not scope:
            return False
        try:
            raw = ipaddress.ip_address(client).packed
        except ValueError:
            return False
        keys = list(except_keys)
        for _suffix, names in scope:
            keys.extend(name_key(n) for n in names)
        ok: bool = self._t.mute(raw, sig.id, until, [x.encode("ascii") for x, _ in scope], keys,  # type: ignore[attr-defined]
                                max(0, sample), repeats)
        return ok

    def take(self, client: str, sig_id: int) -> Counted | None:
        got: Counted | None = self._t.take_mute(ipaddress.ip_address(client).packed, sig_id)  # type: ignore[attr-defined]
        return got


class CoreCapture:
    """Iterate the records the core hands up: ``(ts, linktype, data, counters, learn_only)``."""

    def __init__(self, path: str, matcher: Matcher, flow_head: int = DEFAULT_FLOW_HEAD,
                 part: tuple[int, int] | None = None, max_flows: int = 100_000,
                 read_ahead: bool | None = None) -> None:
        assert _core is not None, "CoreCapture needs the compiled core"
        self.path = path
        anchors, tails = prefilter(matcher)
        try:
            self._scanner = _core.Scanner(
                path,
                list(anchors) if anchors is not None else None,
                matcher.ports(6),
                matcher.ports(17),
                flow_head=flow_head,
                max_flows=max_flows,
                part=part,
                tails=tails,
                # a thread classifies ahead of Python (default: not for a share of a file, --jobs)
                read_ahead=part is None if read_ahead is None else read_ahead,
            )
        except OSError as exc:
            raise CaptureError(str(exc)) from None
        self.bytes = os.path.getsize(path)
        self.muter = StormMuter(self._scanner, matcher)

    @property
    def warning(self) -> str | None:
        w: str | None = self._scanner.warning
        return w

    @property
    def format(self) -> str:
        return f"{self._scanner.format} (compiled core)"

    def stats(self) -> dict[str, int]:
        s: dict[str, int] = self._scanner.stats()
        return s

    def shed(self) -> int:
        """Frames of this file (or share) that never reached Python."""
        s = self.stats()
        return s["packets"] - s["delivered"] - s["other_share"]

    def tell(self) -> int:
        """Bytes of the capture read so far."""
        pos: int = self._scanner.position
        return pos

    def packets_read(self) -> int:
        n: int = self._scanner.packets
        return n

    def __iter__(self) -> Iterator[tuple[float, int, bytes, tuple | None, bool]]:
        return self.batches(None)

    def batches(self, progress: Callable[[int | None, int], None] | None) -> Iterator[tuple[float, int, bytes, tuple | None, bool]]:
        """The records; ``progress(bytes read, packets read)`` after every slice of the file."""
        sc = self._scanner
        while not sc.done:
            batch = sc.next_batch(BATCH)
            if progress is not None:
                progress(self.tell(), self.packets_read())
            yield from batch

    def close(self) -> None:
        pass

    def __enter__(self) -> CoreCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
