"""The controller of ``detector live``: one process that owns the outputs and the one
de-duplication, and answers signals.

After ``startup.run`` has opened everything and dropped the privileges, the controller
forks the workers (``worker.py``) and loops: it receives their raw matches and counters,
de-duplicates the matches (``dedup.py``), writes the alerts, polls the kernel counters and
logs drops and statistics (``health.py``), and answers signals: SIGHUP reloads
(``reload.py``), SIGUSR1 logs a statistics line, SIGTERM and SIGINT stop the capture,
write what is pending, flush the outputs and exit 0.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import Counter
from multiprocessing.connection import wait
from typing import Any

from .. import bounds
from .. import config as cfg
from ..capture import live as cap
from ..errors import SinkError
from ..metrics import MetricsServer, render
from ..model import Alert, Match
from ..outputs import Outputs
from ..settle import LiveDedup
from ..signatures import SignatureSet
from ..storm import StormControl
from .health import Health
from .log import log
from .reload import SigIndex, reload
from .worker import WorkerProc, worker_main

EXIT_OK, EXIT_FAILED = 0, 1  # the run's status (cli.py returns it as the exit status)
TICK = 1.0  # seconds between kernel-statistics polls and metrics snapshots
STOP_GRACE = 3.0  # seconds a worker gets to ship its last matches
READY_TIMEOUT = 60.0


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
        self.sigsets: dict[int, SigIndex] = {1: SigIndex(sigs)}
        self.outputs = outputs
        self.handles = handles
        self.all_handles = [h for hs in handles for h in hs]
        self.metrics = metrics
        self.debug = debug
        self.dedup = LiveDedup(settings.dedup_window, settings.settle,
                               storm=StormControl(settings.storm_threshold, settings.storm_window, settings.storm_sample))
        self.workers: list[WorkerProc] = []
        self.flags: set[str] = set()
        self.exit_code = EXIT_OK
        self.stopping = False
        self.started = time.time()
        self.reloads: Counter[str] = Counter()
        self.publish: list[str] = [""]  # the metrics server reads publish[0]
        self.output_errors = 0
        self._output_log_at = 0.0
        self._output_logged = 0
        self.udp_ports = cap.signature_udp_ports(sigs)
        self.health = Health(self)

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
            cap.inherit_rings(self.all_handles, hs)  # only its own capture rings
            pid = os.fork()
            if pid == 0:  # the worker
                worker_main(wid, hs, theirs, self.sigsets[1].set, self.settings.flow_head, parent, others)
            theirs.close()
            w = WorkerProc(wid, pid, mine)
            w.start_sender()
            self.workers.append(w)
        cap.inherit_rings(self.all_handles, self.all_handles)  # as they were

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
                    reload(self)
                    if self.settings.stats_interval != interval:
                        interval = self.settings.stats_interval
                        next_stats = time.monotonic() + interval if interval else float("inf")
                if "SIGUSR1" in flags:
                    self.health.poll_kernel(log_drops=True)
                    log(self.health.stats_line())
                stop = flags & {"SIGTERM", "SIGINT"}
                if stop:
                    log(f"{min(stop)}: stopping")
                    break
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    self._write(self.dedup.expire(time.time()))
                    self.health.poll_kernel(log_drops=True)
                    self.update_snapshot()
                if now >= next_stats:
                    log(self.health.stats_line())
                    next_stats = now + interval
        finally:
            self.shutdown()
        return self.exit_code

    def update_snapshot(self) -> None:
        self.publish[0] = render(self.health.samples())  # one reference swap: the HTTP thread reads it

    def _by_conn(self, c: Any) -> WorkerProc:
        return next(w for w in self.workers if w.conn is c)

    def _announce(self) -> None:
        s = self.settings
        ifaces = ", ".join(s.interface)
        log(f"capturing on {ifaces} with {len(self.workers)} worker(s), {len(self.sigsets[self.gen].set)} signatures, "
            f"flow head {s.flow_head}, ring {s.buffer_size >> 20} MiB per handle, {self._path()}; "
            f"alerts to {', '.join(s.output)}")

    def _path(self) -> str:
        if any(h.role == "all" for h in self.all_handles):
            return "one handle per interface through the compiled core"
        return "heads and whole handles, pure Python (the compiled core is not built or KD_NO_CORE=1)"
        if self.metrics is not None:
            log(f"metrics on http://{self.metrics.address}/metrics")

    def _receive(self, w: WorkerProc) -> None:
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

    def _message(self, w: WorkerProc, msg: tuple) -> None:
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
                if (isinstance(v, int) and isinstance(old.get(k), int) and k not in ("backlog", "flows", "generation")
                        and k[6:] not in bounds.GAUGES):
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
        self.health.poll_kernel(log_drops=True)
        try:
            self.outputs.close()
        except (SinkError, BrokenPipeError, OSError) as exc:
            self._output_failed(str(exc))
        for line in self.outputs.summary_lines():
            log(line)
        log(self.health.stats_line())
        if self.metrics is not None:
            self.metrics.close()
