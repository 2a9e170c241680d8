"""Standard output and files (appending).  Opened before any packet is read.

Rotation, either way:

- by an outside tool (logrotate): it renames the file, then signals the detector
  (``SIGHUP``); ``reopen()`` makes the next write (or flush) close the renamed file and
  open a new one under the original name.  ``reopen()`` only sets a flag, so it is safe to
  call from a signal handler, even one that interrupts a write.
- by the detector itself, with ``max_bytes`` (and ``backups``, default 5): before a record
  that would take the file past ``max_bytes``, ``FILE`` becomes ``FILE.1``, ``FILE.1``
  becomes ``FILE.2`` and so on up to ``FILE.<backups>`` (the oldest is removed), like
  Python's ``RotatingFileHandler``.  A record is never split across two files.

Line framing: a reader of a file splits it into records at line breaks, so a record may
hold no line break but its last.  LEEF values have no escape, so a LEEF record can hold
a raw CR or LF from a hostile name (the other formats escape them: JSON and CEF as
``\\r``/``\\n``); here, and only in line-framed destinations, such a CR/LF is written as
the text ``\\x0d``/``\\x0a`` (``one_line``).  Every other byte of the record is written as
the format made it.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import BinaryIO

from ..errors import SinkError
from ..model import Alert

DEFAULT_BACKUPS = 5
LINE_BREAKS = ((b"\r", b"\\x0d"), (b"\n", b"\\x0a"))


def one_line(record: bytes) -> bytes:
    """``record`` (ending in a newline) as one line: a CR or LF before its final newline is
    written as ``\\x0d``/``\\x0a`` text.  For any line-framed destination."""
    body = record[:-1] if record.endswith(b"\n") else record
    if b"\r" in body or b"\n" in body:
        for raw, shown in LINE_BREAKS:
            body = body.replace(raw, shown)
    return body + b"\n"


class FileSink:
    def __init__(self, path: str, *, max_bytes: int | None = None, backups: int = DEFAULT_BACKUPS) -> None:
        self.path = path
        self.name = path
        self.written = 0
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0
        self._reopen = False
        self._size = 0
        self._fh: BinaryIO
        if max_bytes is not None and (max_bytes < 1 or backups < 1):
            raise SinkError(f"{path}: max_bytes and backups must be at least 1")
        if path == "-":
            self._fh = sys.stdout.buffer
            self._close = False
        else:
            self._fh = self._open()
            self._close = True

    def _open(self) -> BinaryIO:
        try:
            fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot open for writing: {exc.strerror or exc}") from None
        self._size = os.fstat(fh.fileno()).st_size
        return fh

    def reopen(self) -> None:
        """Ask for the file to be reopened by name before the next write (logrotate, SIGHUP)."""
        self._reopen = True

    def _do_reopen(self) -> None:
        self._reopen = False
        if not self._close:
            return
        old = self._fh
        self._fh = self._open()
        try:
            old.close()
        except OSError as exc:
            raise SinkError(f"{self.path}: close before reopening failed: {exc.strerror or exc}") from None

    def _rotate(self) -> None:
        self._fh.close()
        try:
            for i in range(self.backups - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        except OSError as exc:
            raise SinkError(f"{self.path}: rotation failed: {exc.strerror or exc}") from None
        finally:
            self._fh = self._open()
        self.rotations += 1

    def write(self, record: bytes) -> None:
        if self._reopen:
            self._do_reopen()
        if self._close and self.max_bytes is not None and self._size and self._size + len(record) > self.max_bytes:
            self._rotate()
        try:
            self._fh.write(record)
        except BrokenPipeError:
            raise  # standard output closed by its reader (piped into head): not an error
        except OSError as exc:
            raise SinkError(f"{self.path}: write failed: {exc.strerror or exc}") from None
        self._size += len(record)
        self.written += 1

    def emit(self, payload: bytes, alert: Alert) -> None:
        self.write(one_line(payload))

    def flush(self, timeout: float = 0.0) -> bool:
        if self._reopen:
            self._do_reopen()
        try:
            self._fh.flush()
            if self._close and stat.S_ISREG(os.fstat(self._fh.fileno()).st_mode):
                os.fsync(self._fh.fileno())  # devices and pipes (e.g. /dev/null) cannot be synced
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise SinkError(f"{self.path}: flush failed: {exc.strerror or exc}") from None
        return True

    def close(self, timeout: float = 0.0) -> None:
        try:
            self.flush()
        finally:
            if self._close and not self._fh.closed:
                self._fh.close()

    def stats(self) -> dict[str, int]:
        return {"delivered": self.written, "queued": 0, "spooled": 0, "retried": 0, "failed": 0,
                "rotations": self.rotations}

    def summary(self) -> str:
        rot = f", rotated {self.rotations} time(s)" if self.rotations else ""
        return f"{self.written} written{rot}"

    def __repr__(self) -> str:
        return f"<FileSink {self.path}>"
