"""Capture workers: the forked processes that read the capture handles and run the
pipeline, and the controller's handle on each of them.

A worker (``Worker``) runs a ``Detector(collect=True)`` over its handles (opened by the
controller, ``capture/live.py``).  With the compiled core, one handle per interface ("all"):
the main thread hands each libpcap batch to the core's classifier as it is (``feed_raw``),
which hands the Detector what can hold evidence, in the order of the wire.  Without it:

- one thread per heads handle, blocked in ``loop_filtered`` (libpcap cannot be woken
  without a packet, so it gets a thread of its own); its callback feeds the Detector;
- the main thread waits (``select``) on the whole handles (non-blocking) and the control
  pipe, feeds whole packets, ships matches and counters, swaps signatures on a reload.

Both feed one Detector under one lock (``feed_batch``).  While the heads threads are busy,
whole packets are queued (bounded) and fed by the heads callbacks, so neither thread
starves the other for the GIL; when the heads are idle the main thread feeds them itself.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import struct
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .. import bounds
from ..capture import core
from ..capture import live as cap
from ..capture.live import (
    ADMIT_HEADS,
    BATCH,
    CHUNK,
    CHUNK_SECONDS,
    LIVE_MAX_FLOWS,
    SHIP_MATCHES,
    SHIP_SECONDS,
    STATS_SECONDS,
    Handle,
)
from ..pipeline import Detector
from ..signatures import SignatureSet
from .backlog import Backlog


# --- the controller's side -------------------------------------------------------------------
@dataclass
class WorkerProc:
    wid: int
    pid: int
    conn: Connection
    outbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    ready: bool = False
    done: bool = False  # said goodbye or its pipe closed
    gen: int = 1
    stats: dict[str, Any] = field(default_factory=dict)

    def start_sender(self) -> None:
        """Control messages (a signature set can be large) go through a thread, so the
        controller never blocks on a full pipe while the worker is sending to it."""

        def run() -> None:
            while True:
                msg = self.outbox.get()
                try:
                    self.conn.send(msg)
                except (OSError, ValueError):
                    return
                if msg[0] == "stop":
                    return

        threading.Thread(target=run, daemon=True, name=f"to-worker-{self.wid}").start()


def worker_main(wid: int, handles: list[cap.Handle], conn: Connection, sigs: SignatureSet,
                 flow_head: int, parent: int, close_fds: list[Any]) -> None:
    """The body of a forked worker; never returns."""
    code = 0
    try:
        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(s, signal.SIG_IGN)  # the controller handles these
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        cap.die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        for c in close_fds:
            with contextlib.suppress(Exception):
                c.close()
        Worker(wid, handles, live_detector(sigs), conn, flow_head).run()
    except BaseException as exc:  # noqa: BLE001 - reported to the controller, then exit
        code = 1
        with contextlib.suppress(Exception):
            conn.send(("fatal", wid, f"worker {wid}: internal error: {type(exc).__name__}: {exc}"))
            conn.send(("trace", wid, traceback.format_exc()))
    os._exit(code)


def live_detector(sigs: SignatureSet) -> Detector:
    """A worker's pipeline: raw matches collected for the controller, and the flow tables
    capped at ``LIVE_MAX_FLOWS`` (every SYN of the whole handle reaches Python in live)."""
    return Detector(sigs, collect=True, max_flows=LIVE_MAX_FLOWS)


# --- the worker process ----------------------------------------------------------------------
class _Rotate(Exception):
    """Raised from the heads callback to end a classifier call (fresh flow table)."""


@dataclass
class _HeadsState:
    handle: Handle
    admitted: int = 0  # totals of the finished classifier calls
    shed: int = 0


@dataclass
class WorkerCounters:
    backlog_drops: int = 0  # whole packets dropped because the heads threads lagged
    callback_errors: int = 0
    last_error: str = ""
    whole: int = 0  # whole packets read


class Worker:
    """Runs in a forked worker process: reads its handles, feeds ``det`` (a
    ``Detector(collect=True)``) and talks to the controller over ``conn``.

    Messages to the controller: ("ready", wid), ("matches", wid, gen, items),
    ("stats", wid, dict), ("ack", wid, gen), ("fatal", wid, text), ("bye", wid).
    From the controller: ("sigs", gen, SignatureSet), ("stop",)."""

    def __init__(
        self,
        wid: int,
        handles: Sequence[Handle],
        det: Any,
        conn: Any,
        flow_head: int,
    ) -> None:
        self.wid = wid
        self.heads = [_HeadsState(h) for h in handles if h.role == "heads"]
        self.whole = [h for h in handles if h.role != "heads"]  # read by the main thread
        self.det = det
        self.conn = conn
        self.flow_head = flow_head
        self.lock = threading.Lock()
        self.backlog = Backlog()  # whole packets waiting for the busy heads threads
        self.heads_active = 0.0  # monotonic time of the last heads callback
        self.counters = WorkerCounters()
        self.gen = 0
        self.fatal: str | None = None
        # The compiled core's classifier (None where it is not built): every batch goes
        # through it, and only the frames that can hold evidence reach the Python pipeline.
        self.core: Any = core.live_classifier(det.matcher, flow_head, LIVE_MAX_FLOWS)

    # -- feeding (callers hold self.lock) ---------------------------------------------
    def feed_raw(self, linktype: int, pkts: bytes, meta: bytes) -> None:
        """One libpcap batch of an "all" handle (meta: sec, usec, offset, length per frame)
        through the core's classifier; what it hands up goes to the Detector."""
        self._feed_records(self.core.push_raw(linktype, pkts, meta))

    def feed_batch(self, batch: Iterable[tuple[float, int, bytes]]) -> None:
        """Without the core: (timestamp, link type, frame) of a heads or whole handle (DNS,
        SYN/FIN/RST, QUIC, IPv6, ...), in capture order, to the Python pipeline."""
        feed = self.det.feed
        for ts, lt, data in batch:
            feed(ts, lt, data)

    def _feed_records(self, records: list[tuple[float, int, bytes, Any, bool]]) -> None:
        feed = self.det.feed
        for ts, lt, data, counters, _learn_only in records:
            feed(ts, lt, data, counters=counters)

    def _tick(self) -> None:
        """An idle link: frames the core holds for a still-undecided flow are released
        after its bound (2 s), not only when the next packet arrives."""
        if self.core is not None:
            self._feed_records(self.core.tick(time.time()))

    def _drain(self) -> None:
        for batch in self.backlog.take():
            self.feed_batch(batch)

    # -- heads threads ----------------------------------------------------------------
    def _heads_loop(self, st: _HeadsState) -> None:
        h = st.handle
        lt = h.linktype
        feed_heads = self.feed_batch
        lock = self.lock
        mono = time.monotonic
        deadline = [0.0]

        def cb(hdr: Any, data: bytes, _cls: int) -> None:
            now = mono()
            self.heads_active = now
            sec, usec = hdr.getts()
            with lock:
                if self.backlog:
                    self._drain()
                try:
                    feed_heads([(sec + usec * 1e-6, lt, data)])
                except Exception as exc:  # noqa: BLE001 - Detector swallows its own; count ours
                    self.counters.callback_errors += 1
                    self.counters.last_error = f"{type(exc).__name__}: {exc}"
            if now > deadline[0]:
                raise _Rotate

        while self.fatal is None:
            deadline[0] = mono() + CHUNK_SECONDS
            try:
                h.cap.loop_filtered(CHUNK, cb, ADMIT_HEADS, b"", self.flow_head, l2_offset=h.l2_offset)
            except _Rotate:
                pass
            except Exception as exc:  # noqa: BLE001 - the interface went away, libpcap failed
                self.fatal = f"{h.iface}: capture failed: {exc}"
            finally:
                adm, shed = h.cap.filtered_stats()[:2]
                st.admitted += adm
                st.shed += shed

    # -- main thread ------------------------------------------------------------------
    def _read_whole(self, h: Handle) -> int:
        """Read what the whole handle holds (non-blocking); feed it or queue it."""
        n_total = 0
        lt = h.linktype
        for _ in range(64):  # at most 64 batches before looking at the pipe again
            if self._backlog_full():
                break  # the rest waits in the kernel ring
            try:
                pkts, meta = h.cap.next_batch(BATCH)
            except Exception as exc:  # noqa: BLE001
                self.fatal = f"{h.iface}: capture failed: {exc}"
                return n_total
            if not meta:
                break
            n = len(meta) // 16
            n_total += n
            self.counters.whole += n
            if self.core is not None:  # one handle: the batch goes to the core as it is
                with self.lock:
                    self.feed_raw(lt, pkts, meta)
            elif time.monotonic() - self.heads_active < 0.2:
                # The heads threads are busy: they feed these between their own packets.
                with self.lock:
                    if not self.backlog.add(_frames(lt, pkts, meta)):
                        self.counters.backlog_drops += n
            else:
                with self.lock:
                    self._drain()
                    self.feed_batch(_frames(lt, pkts, meta))
            if len(self.det.collected) >= SHIP_MATCHES:
                self._ship()  # a flood of hits travels in small messages, not one of 64 batches
            if n < BATCH:
                break
        return n_total

    def _backlog_full(self) -> bool:
        """Heads threads busy and no room for a batch: reading the whole handle would drop."""
        return time.monotonic() - self.heads_active < 0.2 and not self.backlog.room()

    def _take(self) -> list[Any]:
        """The matches collected so far (caller holds the lock)."""
        items = self.det.collected
        if items:
            self.det.collected = []
        return items

    def _send_matches(self, gen: int, items: list[Any]) -> None:
        if items:
            self.conn.send(("matches", self.wid, gen, [_wire(m) for m in items]))

    def _ship(self) -> None:
        with self.lock:
            items = self._take()
        self._send_matches(self.gen, items)

    def stats(self) -> dict[str, Any]:
        """Counters and table sizes, under the lock: a heads thread feeding meanwhile changes
        the tables walked ("OrderedDict mutated during iteration" ended a worker)."""
        with self.lock:
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        det = self.det
        st = det.stats
        admitted = shed = 0
        for hs in self.heads:
            live = hs.handle.cap.filtered_stats()
            admitted += hs.admitted + live[0]
            shed += hs.shed + live[1]
        cs = self.core.stats() if self.core is not None else None
        if cs is not None:  # one handle: the core sheds what holds no evidence
            shed += cs["packets"] - cs["delivered"]
        out: dict[str, Any] = {
            "python_packets": st.packets,
            "python_bytes": st.bytes,
            "inspected": st.inspected,
            "undecodable": sum(st.undecodable.values()),
            "heads_admitted": admitted,
            "shed": shed,
            "whole": self.counters.whole,
            "backlog": self.backlog.packets,
            "backlog_drops": self.counters.backlog_drops,
            "callback_errors": self.counters.callback_errors,
            "last_error": self.counters.last_error,
            "flows": len(det.flows),
            "flows_evicted": det.flows.evicted,
            "fragments_evicted": getattr(det.ip, "frag_evicted", 0),
            "generation": self.gen,
        }
        out.update({f"state_{k}": v for k, v in bounds.state(det).items()})  # every bounded table
        if cs is not None:
            out.update({f"state_{k}": v for k, v in core.state_counters(cs).items()})
        return out

    def _control(self) -> bool:
        """Handle control messages; False when told to stop."""
        while self.conn.poll():
            msg = self.conn.recv()
            if msg[0] == "stop":
                return False
            if msg[0] == "sigs":
                gen, sigs = msg[1], msg[2]
                with self.lock:  # between two packets: the swap is atomic for the pipeline
                    if self.core is not None:  # what the old anchors held back goes first
                        self._feed_records(self.core.finish())
                    items = self._take()
                    self.det.set_signatures(sigs)
                    if self.core is not None:  # the new signatures' anchors and ports
                        self.core = core.live_classifier(self.det.matcher, self.flow_head, LIVE_MAX_FLOWS)
                    old, self.gen = self.gen, gen
                self._send_matches(old, items)
                self.conn.send(("ack", self.wid, gen))
        return True

    def run(self) -> None:
        threads = [threading.Thread(target=self._heads_loop, args=(st,), daemon=True, name=f"heads-{st.handle.iface}") for st in self.heads]
        for t in threads:
            t.start()
        self.conn.send(("ready", self.wid))
        fds: list[Any] = [self.conn] + [h.cap.getfd() for h in self.whole]
        by_fd = {h.cap.getfd(): h for h in self.whole}
        next_ship = next_stats = 0.0
        running = True
        while running:
            ready, _, _ = select.select(fds[:1] if self._backlog_full() else fds, [], [], SHIP_SECONDS)  # full: wait in the ring
            for r in ready:
                h = by_fd.get(r) if isinstance(r, int) else None
                if h is not None:
                    self._read_whole(h)
            if self.conn in ready:
                running = self._control()
            now = time.monotonic()
            if self.backlog and now - self.heads_active >= 0.2:
                with self.lock:
                    self._drain()
            if now >= next_ship:
                with self.lock:
                    self._tick()
                self._ship()
                next_ship = now + SHIP_SECONDS
            if now >= next_stats:
                self.conn.send(("stats", self.wid, self.stats()))
                next_stats = now + STATS_SECONDS
            if self.fatal:
                self._ship()
                self.conn.send(("fatal", self.wid, self.fatal))
                return
        # Stopping: feed what is queued, ship it, say goodbye.  The heads threads stay
        # blocked in libpcap; the process ends with os._exit in the caller.
        with self.lock:
            self._drain()
            if self.core is not None:
                self._feed_records(self.core.finish())
        self._ship()
        self.conn.send(("stats", self.wid, self.stats()))
        self.conn.send(("bye", self.wid))


def _frames(lt: int, pkts: bytes, meta: bytes) -> list[tuple[float, int, bytes]]:
    return [(sec + usec * 1e-6, lt, pkts[off : off + caplen]) for sec, usec, off, caplen in struct.iter_unpack("=IIII", meta)]


def _wire(item: Any) -> Any:
    """A match travels as (signature id, observation, pattern): the controller holds the
    same signature set (by generation), so the Signature object is not pickled for every
    hit.  Anything else (an evidence upgrade) travels as it is."""
    sig = getattr(item, "signature", None)
    obs = getattr(item, "observation", None)
    if sig is not None and obs is not None:
        return ("m", sig.id, obs, item.pattern)
    return ("x", item)
