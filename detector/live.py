"""``detector live``: the unattended span-port mode.

One controller process and ``--workers`` capture processes:

- the **controller** reads the settings (``--config`` YAML under the command line), loads
  the signatures, opens the outputs, opens every capture handle (``capture/live.py``) while
  it still has the privileges, binds the metrics socket, then drops to ``--user`` with no
  capability left and forks the workers.  From then on it only receives raw matches from
  the workers, de-duplicates them in one place (``LiveDedup``), writes the alerts, logs
  statistics and kernel drops, and answers signals:
  SIGHUP re-reads the config file and the signatures (all or nothing: a bad file is
  reported as ``file:line: message`` and the previous set stays in force) and reopens the
  output files (logrotate); SIGUSR1 logs a statistics line; SIGTERM and SIGINT stop the
  capture, write what is pending, flush the outputs and exit 0.
- each **worker** runs a ``Detector(collect=True)`` over its share of the traffic (one
  ``PACKET_FANOUT`` member per interface) and ships matches as they are found.

Emission policy (live): an alert is written as soon as its key (``aggregate.key_of``:
client, signature, hostname, evidence kind, app protocol, server port) is first seen, after ``--settle`` seconds (default 0.5) in which
the server's answer may still raise its evidence strength; repeats inside the
``--dedup-window`` (capture time) only increase counters; the next hit after the window
starts a new alert.  So ``alert.metadata.count`` is the number of hits up to the moment it
was written, and ``detector_repeats_total`` counts the rest.  Across workers the
de-duplication is one: a DNS answer handled by another worker than its query still gives
one alert.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import pwd
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from . import config as cfg
from .aggregate import Key, key_of
from .capture import live as cap
from .errors import ConfigError, SignatureError, SinkError
from .matcher import Matcher
from .metrics import MetricsServer, Sample, render
from .model import Alert, Match
from .outputs import Outputs, open_outputs, parse_output
from .pipeline import Detector
from .signatures import CATEGORIES, SignatureSet, load_signatures, pack_files

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TICK = 1.0  # seconds between kernel-statistics polls and metrics snapshots
STOP_GRACE = 3.0  # seconds a worker gets to ship its last matches
READY_TIMEOUT = 60.0
_ALERT_FIELDS = {f.name for f in dataclasses.fields(Alert)}



# --- logging ---------------------------------------------------------------------------------
def log(msg: str) -> None:
    """One line on standard error; a timestamp unless journald adds its own."""
    stamp = "" if os.environ.get("JOURNAL_STREAM") else time.strftime("%Y-%m-%dT%H:%M:%S%z ")
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{stamp}detector: {msg}\n")
        sys.stderr.flush()


def _n(v: float) -> str:
    return f"{int(v):,}"


# --- de-duplication --------------------------------------------------------------------------
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

    def __init__(self, window: float, settle: float, max_open: int = 100_000) -> None:
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
        self._open[key] = _Entry(match, 1, obs.ts, obs.ts, strength, now + self.settle)
        self._pending.append(key)
        while len(self._open) > self.max_open:
            old = next(iter(self._open))
            out += self._close(old)
            c.early += 1
        return out

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
        return out

    def flush(self) -> list[Alert]:
        """Stopping: every alert not written yet."""
        out: list[Alert] = []
        for k in list(self._pending):
            e = self._open.get(k)
            if e is not None and not e.written:
                out.append(self._write(e))
        self._pending.clear()
        return out


# --- signatures by generation ----------------------------------------------------------------
class _SigIndex:
    def __init__(self, sigs: SignatureSet) -> None:
        self.set = sigs
        self.by_id = {s.id: s for s in sigs}


def swap_signatures(det: Any, sigs: SignatureSet) -> None:
    """Put a new signature set into a running Detector (between two packets)."""
    setter = getattr(det, "set_signatures", None)
    if setter is not None:
        setter(sigs)
        return
    det.signatures = sigs
    det.matcher = Matcher(sigs)


# --- workers -----------------------------------------------------------------------------------
@dataclass
class _WorkerProc:
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


def _worker_main(wid: int, handles: list[cap.Handle], conn: Connection, sigs: SignatureSet,
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
        det = Detector(sigs, collect=True)
        cap.Worker(wid, handles, det, conn, flow_head, swap_signatures).run()
    except BaseException as exc:  # noqa: BLE001 - reported to the controller, then exit
        code = 1
        with contextlib.suppress(Exception):
            conn.send(("fatal", wid, f"worker {wid}: internal error: {type(exc).__name__}: {exc}"))
            conn.send(("trace", wid, traceback.format_exc()))
    os._exit(code)


# --- the controller ----------------------------------------------------------------------------
class Controller:
    def __init__(
        self,
        settings: cfg.LiveSettings,
        cli_values: dict[str, Any],
        sigs: SignatureSet,
        outputs: Outputs,
        handles: list[list[cap.Handle]],
        metrics: MetricsServer | None,
        debug: bool = False,
    ) -> None:
        self.settings = settings
        self.cli_values = cli_values
        self.gen = 1
        self.sigsets: dict[int, _SigIndex] = {1: _SigIndex(sigs)}
        self.outputs = outputs
        self.handles = handles
        self.all_handles = [h for hs in handles for h in hs]
        self.metrics = metrics
        self.debug = debug
        self.dedup = LiveDedup(settings.dedup_window, settings.settle)
        self.workers: list[_WorkerProc] = []
        self.flags: set[str] = set()
        self.exit_code = EXIT_OK
        self.stopping = False
        self.started = time.time()
        self.reloads: Counter[str] = Counter()
        self.kstats: dict[str, tuple[int, int, int]] = {}  # iface -> recv, drop, ifdrop
        self.ring_drops: dict[tuple[str, str, int], int] = {}  # (iface, role, worker) -> drops
        self.logged: dict[str, int] = {}  # counter -> value at the last drop line
        self.publish: list[str] = [""]  # the metrics server reads publish[0]
        self.output_errors = 0
        self._output_log_at = 0.0
        self._output_logged = 0
        self.udp_ports = cap.signature_udp_ports(sigs)
        self.rx_base = {i: cap.interface_rx(i) or 0 for i in settings.interface}  # "since the start"

    # -- setup ---------------------------------------------------------------------------
    def start_workers(self) -> None:
        ctx = multiprocessing.get_context("fork")
        parent = os.getpid()
        for wid, hs in enumerate(self.handles):
            mine, theirs = ctx.Pipe(duplex=True)
            others = [w.conn for w in self.workers] + [mine]
            if self.metrics is not None:
                others.append(self.metrics.httpd.socket)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the worker
                _worker_main(wid, hs, theirs, self.sigsets[1].set, self.settings.flow_head, parent, others)
            theirs.close()
            w = _WorkerProc(wid, pid, mine)
            w.start_sender()
            self.workers.append(w)

    def install_signals(self) -> socket.socket:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self._wake_w = w

        def handler(signum: int, _frame: Any) -> None:
            self.flags.add(signal.Signals(signum).name)

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(s, handler)
        return r

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        self.start_workers()
        wake = self.install_signals()
        if self.metrics is not None:
            self.metrics.start()
        start = time.monotonic()
        next_tick = start
        interval = self.settings.stats_interval
        next_stats = start + interval if interval else float("inf")
        announced = False
        try:
            while not self.stopping:
                now = time.monotonic()
                timeout = min(TICK, next_tick - now, next_stats - now)
                nd = self.dedup.next_due()
                if nd is not None:
                    timeout = min(timeout, nd - time.time())
                conns = [w.conn for w in self.workers if not w.done]
                ready = wait([*conns, wake], timeout=max(0.0, timeout))
                if wake in ready:
                    with contextlib.suppress(OSError):
                        wake.recv(4096)
                for c in ready:
                    if c is not wake:
                        self._receive(self._by_conn(c))
                self._write(self.dedup.due(time.time()))
                if not announced:
                    if all(w.ready for w in self.workers):
                        announced = True
                        self._announce()
                    elif time.monotonic() - start > READY_TIMEOUT:
                        log("the workers did not start in time; stopping")
                        self.exit_code = EXIT_FAILED
                        break
                flags, self.flags = self.flags, set()
                if "SIGHUP" in flags:
                    self.reload()
                    if self.settings.stats_interval != interval:
                        interval = self.settings.stats_interval
                        next_stats = time.monotonic() + interval if interval else float("inf")
                if "SIGUSR1" in flags:
                    self._poll_kernel(log_drops=True)
                    log(self.stats_line())
                stop = flags & {"SIGTERM", "SIGINT"}
                if stop:
                    log(f"{min(stop)}: stopping")
                    break
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    self._write(self.dedup.expire(time.time()))
                    self._poll_kernel(log_drops=True)
                    self.update_snapshot()
                if now >= next_stats:
                    log(self.stats_line())
                    next_stats = now + interval
        finally:
            self.shutdown()
        return self.exit_code

    def update_snapshot(self) -> None:
        self.publish[0] = render(self.samples())  # one reference swap: the HTTP thread reads it

    def _by_conn(self, c: Any) -> _WorkerProc:
        return next(w for w in self.workers if w.conn is c)

    def _announce(self) -> None:
        s = self.settings
        ifaces = ", ".join(s.interface)
        log(f"capturing on {ifaces} with {len(self.workers)} worker(s), {len(self.sigsets[self.gen].set)} signatures, "
            f"flow head {s.flow_head}, ring {s.buffer_size >> 20} MiB per handle; alerts to {', '.join(s.output)}")
        if self.metrics is not None:
            log(f"metrics on http://{self.metrics.address}/metrics")

    def _receive(self, w: _WorkerProc) -> None:
        try:
            for _ in range(1000):  # then look at signals and timers again
                if not w.conn.poll():
                    break
                self._message(w, w.conn.recv())
        except (EOFError, OSError):
            w.done = True
            if not self.stopping:
                log(f"worker {w.wid} (pid {w.pid}) ended unexpectedly; stopping")
                self.exit_code = EXIT_FAILED
                self.stopping = True

    def _message(self, w: _WorkerProc, msg: tuple) -> None:
        kind = msg[0]
        if kind == "matches":
            idx = self.sigsets.get(msg[2]) or self.sigsets[self.gen]
            now = time.time()
            for item in msg[3]:
                if item[0] == "m":
                    sig = idx.by_id.get(item[1])
                    if sig is None:
                        continue
                    self._write(self.dedup.add(Match(item[2], sig, item[3]), now))
                else:
                    up = item[1]
                    key, strength = getattr(up, "key", None), getattr(up, "strength", None)
                    if key is not None and strength is not None:
                        self.dedup.upgrade(key, strength)
        elif kind == "stats":
            old = w.stats
            new = msg[2]
            for k, v in new.items():  # counters never go back (a classifier call boundary)
                if isinstance(v, int) and isinstance(old.get(k), int) and k not in ("backlog", "flows", "generation"):
                    new[k] = max(v, old[k])
            if new.get("callback_errors", 0) > old.get("callback_errors", 0):
                log(f"worker {w.wid}: {new['callback_errors'] - old.get('callback_errors', 0)} error(s) in the capture "
                    f"callback (last: {new.get('last_error')})")
            w.stats = new
        elif kind == "ready":
            w.ready = True
        elif kind == "ack":
            w.gen = msg[2]
            if all(x.gen == msg[2] for x in self.workers if not x.done):
                log(f"reload: signature generation {msg[2]} active in every worker")
                for g in [g for g in self.sigsets if g < msg[2]]:
                    del self.sigsets[g]
        elif kind == "fatal":
            log(msg[2])
            self.exit_code = EXIT_FAILED
            self.stopping = True
        elif kind == "trace":
            if self.debug:
                sys.stderr.write(msg[2])
        elif kind == "bye":
            w.done = True

    def _write(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        for a in alerts:
            try:
                self.outputs.emit(a)
            except BrokenPipeError:
                self._output_failed("standard output was closed by its reader", fatal=True)
                return
            except (SinkError, OSError) as exc:
                self._output_failed(str(exc))
        try:
            self.outputs.flush(0.0)
        except BrokenPipeError:
            self._output_failed("standard output was closed by its reader", fatal=True)
        except (SinkError, OSError) as exc:
            self._output_failed(str(exc))

    def _output_failed(self, why: str, fatal: bool = False) -> None:
        """Count it and say so (at most one line per 10 s); the other outputs still got the
        alert.  Only a closed standard output stops the run: nothing could be written."""
        self.output_errors += 1
        now = time.monotonic()
        if fatal or now >= self._output_log_at:
            more = self.output_errors - self._output_logged - 1
            log(f"output failed: {why}" + (f" (and {more} more failure(s))" if more > 0 else "")
                + ("; stopping" if fatal else "; capture continues"))
            self._output_log_at = now + 10.0
            self._output_logged = self.output_errors
        if fatal and not self.stopping:
            self.exit_code = EXIT_FAILED
            self.stopping = True

    # -- reload --------------------------------------------------------------------------
    def reload(self) -> None:
        self.outputs.reopen()
        old = self.settings
        try:
            new = cfg.resolve(self.cli_values, old.config)
            paths = cfg.signature_paths(new, pack_files)
            sigs = load_signatures(paths)
        except cfg.ConfigFileError as exc:
            for p, ln, m in exc.problems:
                log(f"{p}:{ln}: {m}")
            return self._rejected(f"{len(exc.problems)} problem(s) in {old.config}")
        except ConfigError as exc:
            return self._rejected(str(exc))
        except SignatureError as exc:
            for p, ln, m in exc.problems:
                log(f"{p}:{ln}: {m}")
            return self._rejected(f"{len(exc.problems)} signature problem(s)")
        hot, cold = old.changes(new)
        for key in cold:
            opt = cfg.BY_KEY[key]
            log(f"reload: '{key}' changed; it takes effect at the next start (still {getattr(old, opt.dest)!r})")
        keep = {cfg.BY_KEY[k].dest: getattr(old, cfg.BY_KEY[k].dest) for k in cold}
        self.settings = dataclasses.replace(new, **keep)
        self.dedup.window = self.settings.dedup_window
        self.dedup.settle = self.settings.settle
        self.gen += 1
        self.sigsets[self.gen] = _SigIndex(sigs)
        for w in self.workers:
            if not w.done:
                w.outbox.put(("sigs", self.gen, sigs))
        ports = cap.signature_udp_ports(sigs)
        if ports != self.udp_ports:
            try:
                n = cap.refilter(self.all_handles, ports)
                self.udp_ports = ports
                log(f"reload: capture filter updated on {n} handle(s) for UDP ports {', '.join(map(str, ports)) or 'none'}")
            except Exception as exc:  # noqa: BLE001 - keep the old filter, say so
                log(f"reload: capture filter not updated ({exc}); the previous one stays")
        self.reloads["ok"] += 1
        changed = ", ".join(hot) if hot else "nothing else"
        log(f"reload: {len(sigs)} signatures from {len(sigs.files)} file(s) accepted (generation {self.gen}); "
            f"changed: {changed}")

    def _rejected(self, why: str) -> None:
        self.reloads["failed"] += 1
        log(f"reload rejected: {why}; the previous configuration and signatures stay in force")

    # -- statistics ----------------------------------------------------------------------
    def _poll_kernel(self, log_drops: bool) -> None:
        per: dict[str, list[int]] = {}
        for h in self.all_handles:
            try:
                recv, drop, ifdrop = h.stats()
            except Exception:  # noqa: BLE001 - a handle that failed is reported by its worker
                continue
            key = (h.iface, h.role, h.worker)
            self.ring_drops[key] = max(drop, self.ring_drops.get(key, 0))
            cur = per.setdefault(h.iface, [0, 0, 0])
            cur[0] += recv
            cur[1] += drop
            cur[2] = max(cur[2], ifdrop)  # the interface's count, the same on every handle
        for iface, (recv, drop, ifdrop) in per.items():
            old = self.kstats.get(iface, (0, 0, 0))
            self.kstats[iface] = (max(recv, old[0]), max(drop, old[1]), max(ifdrop, old[2]))
        if not log_drops:
            return
        for iface, (_, drop, ifdrop) in self.kstats.items():
            rings = ", ".join(f"{role} {_n(self.ring(iface, role))}" for role in ("heads", "whole"))
            self._drop_line(f"kernel:{iface}", drop, f"{iface}: the kernel dropped {{d}} packet(s) (total {{t}}; by "
                            f"ring: {rings}): a capture ring (--buffer-size) was full; capture continues")
            self._drop_line(f"if:{iface}", ifdrop, f"{iface}: the interface dropped {{d}} packet(s) (total {{t}}); "
                            "capture continues")
        back = sum(w.stats.get("backlog_drops", 0) for w in self.workers)
        self._drop_line("backlog", back, "workers dropped {d} whole packet(s) their parsers could not keep up with "
                        "(total {t}); capture continues")

    def ring(self, iface: str, role: str) -> int:
        return sum(n for (i, r, _), n in self.ring_drops.items() if i == iface and r == role)

    def _drop_line(self, key: str, total: int, template: str) -> None:
        before = self.logged.get(key, 0)
        if total > before:
            log("drops: " + template.format(d=_n(total - before), t=_n(total)))
        self.logged[key] = total

    def totals(self) -> dict[str, int]:
        t: Counter[str] = Counter()
        for w in self.workers:
            for k, v in w.stats.items():
                if isinstance(v, int):
                    t[k] += v
        for recv, drop, ifdrop in self.kstats.values():
            t["received"] += recv
            t["kernel_drops"] += drop
            t["interface_drops"] += ifdrop
        for iface in self.settings.interface:
            rx = cap.interface_rx(iface)
            if rx is not None:
                t["interface_rx"] += rx - self.rx_base.get(iface, 0)
        t["queue"] = self.dedup.pending + self.output_queue()
        return dict(t)

    def output_queue(self) -> int:
        try:
            return sum(int(s.get("queued", 0)) for s in self.outputs.stats().values())
        except Exception:  # noqa: BLE001 - statistics must not stop the capture
            return 0

    def stats_line(self) -> str:
        t = self.totals()
        c = self.dedup.counters
        return (
            f"stats: interfaces received {_n(t.get('interface_rx', 0))} packets, the capture filter passed "
            f"{_n(t.get('received', 0))} (kernel drops {_n(t.get('kernel_drops', 0))}, interface drops "
            f"{_n(t.get('interface_drops', 0))}); shed in C {_n(t.get('shed', 0))}, to Python "
            f"{_n(t.get('python_packets', 0))}, inspected {_n(t.get('inspected', 0))}; alerts {_n(c.alerts)} "
            f"(repeats {_n(c.repeats)}, open {_n(len(self.dedup))}); output queue {_n(t.get('queue', 0))}; "
            f"backlog drops {_n(t.get('backlog_drops', 0))}; workers {sum(not w.done for w in self.workers)}"
        )

    def samples(self) -> list[Sample]:
        t = self.totals()
        c = self.dedup.counters
        out: list[Sample] = []
        for iface, (recv, drop, ifdrop) in sorted(self.kstats.items()):
            lab = {"interface": iface}
            out.append(Sample("detector_packets_received_total", "counter", "Packets the kernel capture filter passed", recv, lab))
            out.append(Sample("detector_kernel_drops_total", "counter", "Packets dropped because the capture ring was full", drop, lab))
            out.append(Sample("detector_interface_drops_total", "counter", "Packets the interface dropped", ifdrop, lab))
            for role in ("heads", "whole"):
                out.append(Sample("detector_ring_drops_total", "counter", "Kernel drops by capture ring: heads (IPv4 "
                                  "TCP, flow heads classified in C) or whole (DNS, SYN/FIN/RST, QUIC, IPv6, ...)",
                                  self.ring(iface, role), {"interface": iface, "ring": role}))
            rx = cap.interface_rx(iface)
            if rx is not None:
                out.append(Sample("detector_interface_rx_packets_total", "counter", "Packets the interface received", rx, lab))
        for name, key, help_ in (
            ("detector_packets_shed_total", "shed", "Packets shed in C after their flow head"),
            ("detector_packets_python_total", "python_packets", "Packets handed to the Python pipeline"),
            ("detector_packets_inspected_total", "inspected", "Packets handed to a protocol parser"),
            ("detector_packets_undecodable_total", "undecodable", "Malformed packets skipped"),
            ("detector_backlog_drops_total", "backlog_drops", "Whole packets dropped because the parsers lagged"),
        ):
            out.append(Sample(name, "counter", help_, t.get(key, 0)))
        out.append(Sample("detector_matches_total", "counter", "Signature hits", c.matches))
        for cat in sorted({*CATEGORIES, *c.by_category}):
            out.append(Sample("detector_alerts_total", "counter", "Alerts written", c.by_category[cat], {"category": cat}))
        out.append(Sample("detector_repeats_total", "counter", "Hits inside an alert's window, counted and not written", c.repeats))
        out.append(Sample("detector_output_errors_total", "counter", "Alerts an output could not take (see the log)", self.output_errors))
        out.append(Sample("detector_output_queue_depth", "gauge", "Alerts held (settle) or queued for an output", t.get("queue", 0)))
        out.append(Sample("detector_open_alerts", "gauge", "Alert windows open for de-duplication", len(self.dedup)))
        out.append(Sample("detector_flows", "gauge", "TCP streams tracked by the workers", t.get("flows", 0)))
        out.append(Sample("detector_signatures", "gauge", "Signatures in force", len(self.sigsets[self.gen].set)))
        out.append(Sample("detector_signature_generation", "gauge", "Signature set generation (1 + reloads)", self.gen))
        for result in ("ok", "failed"):
            out.append(Sample("detector_reloads_total", "counter", "SIGHUP reloads", self.reloads[result], {"result": result}))
        out.append(Sample("detector_workers", "gauge", "Capture worker processes running", sum(not w.done for w in self.workers)))
        out.append(Sample("detector_start_time_seconds", "gauge", "When the detector started (Unix time)", self.started))
        return out

    # -- stopping ------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.stopping = True
        for w in self.workers:
            if not w.done:
                w.outbox.put(("stop",))
        end = time.monotonic() + STOP_GRACE
        while time.monotonic() < end:
            conns = [w.conn for w in self.workers if not w.done]
            if not conns:
                break
            for c in wait(conns, timeout=max(0.0, end - time.monotonic())):
                self._receive(self._by_conn(c))
        for w in self.workers:
            if not w.done:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w.pid, 0)
        self._write(self.dedup.flush())
        self._poll_kernel(log_drops=True)
        try:
            self.outputs.close()
        except (SinkError, BrokenPipeError, OSError) as exc:
            self._output_failed(str(exc))
        for line in self.outputs.summary_lines():
            log(line)
        log(self.stats_line())
        if self.metrics is not None:
            self.metrics.close()


# --- command line ------------------------------------------------------------------------------
DEST_PREFIX = "live_"  # argparse dests, apart from replay's (cli.main inspects a few by name)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "live",
        help="capture from network interfaces and report Kaspersky contacts as they happen",
        description="Capture on one or more interfaces (a span or tap port) and write one alert per "
        "Kaspersky contact as soon as it is seen (EVE JSON on standard output by default). "
        "SIGHUP reloads the config file and signatures, SIGUSR1 logs statistics, SIGTERM stops.",
    )
    p.add_argument("--config", metavar="FILE",
                   help="YAML file setting any option below (keys: the option names without dashes); "
                   "the command line wins; SIGHUP re-reads it")
    for o in cfg.OPTIONS:
        flags = [o.short, f"--{o.key}"] if o.short else [f"--{o.key}"]
        dest = DEST_PREFIX + o.dest
        if o.kind == "bool":
            p.add_argument(f"--{o.key}", dest=dest, action=argparse.BooleanOptionalAction, default=None, help=o.help)
        elif o.kind == "list":
            p.add_argument(*flags, dest=dest, action="append", default=None, metavar=o.metavar, help=o.help)
        else:
            typ: Callable[[str], Any] = {"int": int, "float": float}.get(o.kind, str)
            p.add_argument(*flags, dest=dest, type=typ, default=None, metavar=o.metavar, help=o.help)
    p.set_defaults(func=cmd_live)
    return p


def _err(msg: str) -> None:
    sys.stderr.write(f"detector: {msg}\n")


def _check_user(s: cfg.LiveSettings) -> str | None:
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(s.user)
        except KeyError:
            return f"--user {s.user}: no such user"
        return None
    me = pwd.getpwuid(os.getuid()).pw_name if _known(os.getuid()) else str(os.getuid())
    if s.origin.get("user", "default") != "default" and s.user != me:
        return f"--user {s.user}: only root can switch users (running as {me})"
    return None


def _known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _preload() -> None:
    """Import now what the pipeline would import on first use (the codec for IDNA names,
    dnspython's module for each record type): once the privileges are dropped, the
    installation may not be readable any more (an interpreter under /root, say)."""
    import encodings.idna  # noqa: F401

    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    for t in dns.rdatatype.RdataType:
        with contextlib.suppress(Exception):
            dns.rdata.get_rdata_class(dns.rdataclass.IN, t)


def _hand_over(s: cfg.LiveSettings) -> None:
    """As root, give the output files and the spool directory to ``--user``, so that after
    the privileges are dropped it can still reopen them (SIGHUP after logrotate) and spool.
    Creating a file anew after a rotation needs the directory to be writable by that user
    (the systemd unit's LogsDirectory= does that)."""
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(s.user)
    paths: list[str] = []
    for spec in s.output:
        with contextlib.suppress(SinkError):
            t = parse_output(spec)
            if t.scheme == "file" and t.path not in ("", "-"):
                paths.append(t.path)
    if s.spool:
        paths.append(s.spool)
        with contextlib.suppress(OSError):
            paths += [os.path.join(s.spool, n) for n in os.listdir(s.spool)]
    for path in paths:
        with contextlib.suppress(OSError):
            os.chown(path, pw.pw_uid, pw.pw_gid)


def cmd_live(args: argparse.Namespace) -> int:
    cli_values = {o.dest: getattr(args, DEST_PREFIX + o.dest, None) for o in cfg.OPTIONS}
    try:
        settings = cfg.resolve(cli_values, args.config)
    except cfg.ConfigFileError as exc:
        for p, ln, m in exc.problems:
            sys.stderr.write(f"{p}:{ln}: {m}\n")
        _err(f"{len(exc.problems)} problem(s) in the configuration; nothing was started")
        return EXIT_USAGE
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if not settings.interface:
        _err("no interface: give -i IFACE (or 'interface:' in the --config file)")
        return EXIT_USAGE
    problem = _check_user(settings)
    if problem:
        _err(problem)
        return EXIT_USAGE
    sigs = load_signatures(cfg.signature_paths(settings, pack_files))  # SignatureError: cli.py
    outputs = open_outputs(list(settings.output), spool_dir=settings.spool, ca=settings.ca)  # SinkError: cli.py
    metrics: MetricsServer | None = None
    try:
        try:
            handles = cap.open_handles(cap.CaptureOptions(
                interfaces=settings.interface, workers=settings.workers, snaplen=settings.snaplen,
                buffer_size=settings.buffer_size, promisc=settings.promisc,
                udp_ports=cap.signature_udp_ports(sigs)))
        except cap.LiveCaptureError as exc:
            _err(str(exc))
            outputs.close(1.0)
            return EXIT_USAGE
        snapshot = [""]
        if settings.metrics:
            try:
                metrics = MetricsServer(settings.metrics, lambda: snapshot[0])
            except OSError as exc:
                _err(f"--metrics {settings.metrics}: cannot listen: {exc.strerror or exc}")
                outputs.close(1.0)
                return EXIT_USAGE
        try:
            _preload()
            _hand_over(settings)
            log(cap.drop_privileges(settings.user))
        except (OSError, KeyError, cap.LiveCaptureError) as exc:
            _err(f"cannot drop privileges: {exc}")
            outputs.close(1.0)
            return EXIT_FAILED
        ctl = Controller(settings, cli_values, sigs, outputs, handles, metrics, debug=bool(getattr(args, "debug", False)))
        ctl.publish = snapshot
        ctl.update_snapshot()
        return ctl.run()
    except BaseException:
        with contextlib.suppress(Exception):
            outputs.close(1.0)
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m detector.live ...`` = ``detector live ...``, with cli.py's error mapping,
    also before cli.build_parser registers the subcommand (then this adds it)."""
    from . import cli

    real = cli.build_parser

    def build() -> argparse.ArgumentParser:
        parser = real()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and "live" not in action.choices:
                add_parser(action)
        return parser

    cli.build_parser = build
    return cli.main(["live", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
