"""UTC timestamps as text, fast: the formats write three or four per alert.

``utc_text(ts, tail)`` is exactly ``datetime.fromtimestamp(ts, timezone.utc)
.strftime("%Y-%m-%dT%H:%M:%S.%f") + tail`` (``tests/test_clock.py`` checks it on edge and
random values), without a ``datetime`` and a ``strftime`` per call: the date and time of
day are formatted once per second of capture time (a small cache) and the microseconds
are rounded as ``datetime.fromtimestamp`` rounds them (half to even, CPython's
``_PyTime_ObjectToTimeval``).  Values outside 0..year 10000 (and NaN) take the
``datetime`` path, so they fail or format exactly as before.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

MAX_CACHED_SECONDS = 4096  # distinct seconds kept formatted (a capture's alerts cluster)
_LIMIT = 253_402_300_800.0  # 10000-01-01T00:00:00Z: past it datetime raises
_seconds: dict[int, str] = {}


def _slow(ts: float, tail: str) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + tail


def utc_text(ts: float, tail: str) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffff`` + ``tail`` (``+0000``, ``Z``) for a POSIX time."""
    if not 0.0 <= ts < _LIMIT - 1.0:
        return _slow(ts, tail)
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)  # round(float): half to even, as datetime does
    if us >= 1_000_000:
        whole += 1.0
        us -= 1_000_000
    sec = int(whole)
    head = _seconds.get(sec)
    if head is None:
        if len(_seconds) >= MAX_CACHED_SECONDS:
            _seconds.clear()
        head = _seconds[sec] = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{us:06d}{tail}"
