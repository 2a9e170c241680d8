"""A progress bar for long ``replay`` runs, on standard error, only when it is a terminal.

It knows nothing of the capture readers: the replay loop calls ``update(bytes_done,
packets, alerts)`` every few thousand packets (``bytes_done`` counts whole files done plus
the position in the current one when the reader can tell it), and ``file_done`` after
each file.  It redraws at most every ``interval`` seconds, on one line (``\\r`` and erase
to end of line), and ``close`` erases it so the summary starts on a clean line.  When
standard error is not a terminal nothing is ever written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 24


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


class Progress:
    def __init__(self, stream: TextIO, total_bytes: int, total_files: int, *, enabled: bool | None = None,
                 interval: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.total_bytes = max(total_bytes, 0)
        self.total_files = total_files
        self.files_done = 0
        self.bytes_done = 0  # of whole files done
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self._next = 0.0
        self._drawn = False
        self._last = (0, 0, 0)

    def update(self, bytes_done: int, packets: int, alerts: int, force: bool = False) -> None:
        if not self.enabled:
            return
        self._last = (bytes_done, packets, alerts)
        now = self.clock()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        elapsed = max(now - self.start, 1e-6)
        frac = min(1.0, bytes_done / self.total_bytes) if self.total_bytes else 0.0
        fill = int(frac * WIDTH)
        bar = "#" * fill + "." * (WIDTH - fill)
        line = (f"[{bar}] {frac * 100:3.0f}% {_size(bytes_done)} of {_size(self.total_bytes)}, "
                f"file {min(self.files_done + 1, self.total_files)}/{self.total_files} ({self.files_done} done), "
                f"{packets:,} packets ({packets / elapsed:,.0f}/s), {alerts:,} alerts")
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def file_done(self, size: int, packets: int, alerts: int) -> None:
        self.files_done += 1
        self.bytes_done += size
        self.update(self.bytes_done, packets, alerts, force=True)

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
