"""The live mode's log: one line per event on standard error (journald when a service)."""

from __future__ import annotations

import contextlib
import os
import sys
import time


def log(msg: str) -> None:
    """One line on standard error; a timestamp unless journald adds its own."""
    stamp = "" if os.environ.get("JOURNAL_STREAM") else time.strftime("%Y-%m-%dT%H:%M:%S%z ")
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{stamp}detector: {msg}\n")
        sys.stderr.flush()


def thousands(v: float) -> str:
    return f"{int(v):,}"

