"""Replaying capture files through a ``Detector``: one file at a time, or spread over
several processes (``--jobs``).

With ``jobs > 1`` every worker process runs its own Detector in *collect* mode: it returns
the raw matches of its file (or of its share of a large file, split by a BPF hash of the
IP addresses), and the parent feeds them, file by file in the order given, to its one
aggregator.  So the alerts, their counts and their order are those of a single process
(the de-duplication is one, merged).  What a worker cannot share with the others is
per-connection state across *files*: a ClientHello cut between two rotated files is seen
by one process reading both, not by two.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from . import bounds
from .aggregate import Upgrade
from .capture import core
from .capture.pcap import CaptureFile
from .errors import CaptureError
from .model import Alert, Match
from .pipeline import Detector, Stats
from .signatures import SignatureSet


@dataclass
class FileResult:
    path: str
    error: str | None = None  # unreadable: one line naming the file
    warning: str | None = None  # damaged but read
    fast: bool = False
    file_bytes: int = 0
    matches: list[Match | Upgrade] = field(default_factory=list)  # worker mode only
    stats: Stats | None = None  # worker mode only
    state: Counter[str] = field(default_factory=Counter)  # worker mode only


def open_capture(det: Detector, path: str, exact: bool, flow_head: int,
                 part: tuple[int, int] | None = None) -> CaptureFile | core.CoreCapture:
    """The compiled core where it is built and reads the file; else the Python reader."""
    if not exact:
        core.warn_missing()
        if core.usable(path):
            return core.CoreCapture(path, det.matcher, flow_head=flow_head, part=part)
    return CaptureFile(path)


def scan(det: Detector, path: str, exact: bool, flow_head: int, emit: Callable[[list[Alert]], None],
         part: tuple[int, int] | None = None, progress: Callable[[int | None, int], None] | None = None) -> FileResult:
    """Feed one file (or one share of it) to ``det``; alerts that become ready go to ``emit``.
    ``progress(bytes_read_in_file or None, packets)`` is called every few thousand records."""
    res = FileResult(path)
    try:
        cf = open_capture(det, path, exact, flow_head, part)
    except CaptureError as exc:
        res.error = str(exc)
        return res
    det.set_source(path)
    det.reset_state()
    feed = det.feed
    try:
        with cf:
            if isinstance(cf, core.CoreCapture):
                det.storm.attach(cf.muter)  # folded DNS names counted in the core (storm.py)
                try:
                    for ts, linktype, data, counters, learn_only in cf.batches(progress):
                        if learn_only:
                            det.learn_only(ts, linktype, data)
                            continue
                        out = feed(ts, linktype, data, counters=counters)
                        if out:
                            emit(out)
                finally:
                    det.storm.detach()
            else:
                for ts, linktype, data, _wirelen in (cf if progress is None else _ticking(cf, det, progress)):
                    out = feed(ts, linktype, data)
                    if out:
                        emit(out)
    except CaptureError as exc:
        res.error = str(exc)
        return res
    if isinstance(cf, core.CoreCapture):
        det.account_shed(cf.shed())
        res.fast = True
    if part is None or part[0] == 0:
        res.file_bytes = os.path.getsize(path) if os.path.isfile(path) else 0
    res.warning = cf.warning
    res.state = state_counters(det)
    if isinstance(cf, core.CoreCapture):  # the core's own bounded tables
        res.state.update(core.state_counters(cf.stats()))
    return res


def _ticking(cf: CaptureFile, det: Detector, progress: Callable[[int | None, int], None],
             every: int = 4096) -> Iterator[tuple[float, int, bytes, int]]:
    """The records of ``cf`` (the pure-Python reader), calling ``progress`` every ``every``."""
    for n, rec in enumerate(cf, 1):
        if not n % every:
            progress(cf.tell(), det.stats.packets)
        yield rec


def state_counters(det: Detector) -> Counter[str]:
    """The bounded tables' counters, summed across workers for the summary."""
    return bounds.state(det)


# -- worker processes --------------------------------------------------------------------
_SIGS: SignatureSet | None = None


def _init_worker(sigs: SignatureSet) -> None:
    global _SIGS
    _SIGS = sigs


def _work(path: str, exact: bool, flow_head: int, part: tuple[int, int] | None) -> FileResult:
    det = Detector(_SIGS, collect=True)
    try:
        res = scan(det, path, exact, flow_head, lambda _alerts: None, part)
    except Exception as exc:  # noqa: BLE001 - reported as this file's error, never a hang
        return FileResult(path, error=f"{path}: internal error in worker: {type(exc).__name__}: {exc}")
    res.matches = det.collected
    res.stats = det.stats
    return res


def parallel(sigs: SignatureSet, files: list[str], jobs: int, exact: bool, flow_head: int) -> Iterator[FileResult]:
    """Results per file, in the order of ``files``; a large pcap is split across the
    workers when there are fewer files than workers."""
    split = len(files) < jobs
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(sigs,)) as ex:
        pending: list[tuple[str, list[Future[FileResult]]]] = []
        for path in files:
            if split and not exact and core.usable(path):
                futs = [ex.submit(_work, path, exact, flow_head, (k, jobs)) for k in range(jobs)]
            else:
                futs = [ex.submit(_work, path, exact, flow_head, None)]
            pending.append((path, futs))
        for path, futs in pending:
            parts = [f.result() for f in futs]
            yield _combine(path, parts)


def _combine(path: str, parts: list[FileResult]) -> FileResult:
    if len(parts) == 1:
        return parts[0]
    out = FileResult(path, stats=Stats())
    for p in parts:
        out.error = out.error or p.error
        if p.warning and (out.warning is None or p.warning not in out.warning):
            out.warning = f"{out.warning}; {p.warning}" if out.warning else p.warning
        out.fast = out.fast or p.fast
        out.file_bytes += p.file_bytes
        out.matches.extend(p.matches)
        if p.stats is not None:
            out.stats.merge(p.stats)  # type: ignore[union-attr]
        out.state.update(p.state)
    out.matches.sort(key=lambda m: m.ts if isinstance(m, Upgrade) else m.observation.ts)  # stable: ties keep share order
    return out
