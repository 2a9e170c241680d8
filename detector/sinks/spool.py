"""A disk spool: the records a network destination could not take yet, in order, on disk.

One spool per destination, in the directory given with ``--spool``:

- ``NAME.spool``: a header line (``MAGIC``) and then records, each a 4-byte big-endian
  length and the record's bytes (``LENGTH``).  Length-prefixed, so a record may hold any
  byte, newlines included, with no escaping.  Only ever appended to while records wait;
  rewritten (into a temporary file, then renamed over) only to put records in front of it
  when the detector closes.
- ``NAME.offset``: how many bytes of ``NAME.spool`` have been delivered, as decimal text,
  replaced atomically (temporary file + rename) after each delivered batch.

Records are drained from the offset on, in the order they were appended; when the last
one is delivered the spool is truncated to its header and the offset reset.  A record is
delivered *then* the offset moves, so a crash in between repeats a batch (at least once,
never lost).  The spool is read when it is opened: records left by an earlier run go to
the collector before anything new.  A record cut short by a crash at the end of the file
is dropped with a warning (and counted in ``damaged``); it was never delivered nor
acknowledged to anyone, and the spool stays readable.

The file is locked (``flock``) while open: two detectors cannot drain one spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
from typing import BinaryIO

from ..errors import SinkError

MAGIC = b"detector-spool 1\n"
LENGTH = struct.Struct(">I")
MAX_RECORD = 16 * 1024 * 1024  # a longer length field means the file is damaged
SAFE_NAME = re.compile(r"[^A-Za-z0-9.+=-]+")

log = logging.getLogger("detector.sinks")


def spool_name(*parts: str) -> str:
    """A file-name-safe name for a destination (``syslog+tcp_127.0.0.1_514.eve``)."""
    return SAFE_NAME.sub("_", "_".join(p for p in parts if p)).strip("_.")[:150] or "spool"


class Spool:
    """Length-prefixed records on disk, drained in order.  Not thread-safe: callers lock."""

    def __init__(self, directory: str, name: str) -> None:
        self.path = os.path.join(directory, name + ".spool")
        self.offset_path = os.path.join(directory, name + ".offset")
        self.count = 0  # records waiting
        self.damaged = 0  # bytes dropped from a damaged tail
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SinkError(f"spool {self.path}: cannot open: {exc.strerror or exc}") from None
        self._fh: BinaryIO = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise SinkError(f"spool {self.path}: in use by another detector process") from None
        try:
            self._load()
        except OSError as exc:
            self._fh.close()
            raise SinkError(f"spool {self.path}: cannot read: {exc.strerror or exc}") from None

    # -- opening ---------------------------------------------------------------------------
    def _load(self) -> None:
        fh = self._fh
        size = os.fstat(fh.fileno()).st_size
        fh.seek(0)
        head = fh.read(len(MAGIC))
        if size == 0:
            fh.write(MAGIC)
            fh.flush()
            self._offset = len(MAGIC)
            self._write_offset()
            return
        if head != MAGIC:
            raise SinkError(f"spool {self.path}: not a detector spool file (move it away)")
        self._offset = self._read_offset(size)
        # Count the records after the offset; cut a damaged tail.
        pos = self._offset
        fh.seek(pos)
        while pos < size:
            hdr = fh.read(LENGTH.size)
            if len(hdr) < LENGTH.size:
                break
            (n,) = LENGTH.unpack(hdr)
            if n > MAX_RECORD or pos + LENGTH.size + n > size:
                break
            fh.seek(n, os.SEEK_CUR)
            pos += LENGTH.size + n
            self.count += 1
        if pos < size:
            self.damaged = size - pos
            log.warning("spool %s: dropped a damaged tail of %d bytes (cut off by a crash)", self.path, self.damaged)
            fh.truncate(pos)
        fh.seek(0, os.SEEK_END)

    def _read_offset(self, size: int) -> int:
        try:
            with open(self.offset_path, "rb") as f:
                value = int(f.read().strip() or b"0")
        except FileNotFoundError:
            return len(MAGIC)
        except ValueError:
            log.warning("spool %s: unreadable offset file; replaying the whole spool", self.path)
            return len(MAGIC)
        if not len(MAGIC) <= value <= size:
            log.warning("spool %s: offset out of range; replaying the whole spool", self.path)
            return len(MAGIC)
        return value

    def _write_offset(self) -> None:
        tmp = self.offset_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"%d\n" % self._offset)
        os.replace(tmp, self.offset_path)

    # -- use -------------------------------------------------------------------------------
    def append(self, records: list[bytes]) -> None:
        """Append records (raises ``OSError``: the caller counts them as undeliverable)."""
        if not records:
            return
        blob = b"".join(LENGTH.pack(len(r)) + r for r in records)
        fh = self._fh
        end = fh.seek(0, os.SEEK_END)
        try:
            fh.write(blob)
            fh.flush()
        except OSError:
            with contextlib.suppress(OSError):
                fh.truncate(end)  # no half record left behind
            raise
        self.count += len(records)

    def peek(self, max_records: int, max_bytes: int) -> list[bytes]:
        """The oldest waiting records (at least one if any wait), without removing them."""
        out: list[bytes] = []
        fh = self._fh
        fh.seek(self._offset)
        total = 0
        while len(out) < min(max_records, self.count):
            (n,) = LENGTH.unpack(fh.read(LENGTH.size))
            if out and total + n > max_bytes:
                break
            out.append(fh.read(n))
            total += n
        fh.seek(0, os.SEEK_END)
        return out

    def commit(self, records: list[bytes]) -> None:
        """Mark the first ``len(records)`` waiting records (as returned by ``peek``) delivered."""
        if not records:
            return
        self._offset += sum(LENGTH.size + len(r) for r in records)
        self.count -= len(records)
        try:
            if self.count == 0:
                self._fh.truncate(len(MAGIC))
                self._offset = len(MAGIC)
            self._write_offset()
        except OSError as exc:  # the records went out; a restart may send them again
            log.warning("spool %s: cannot record the delivery (%s); a restart may repeat records",
                        self.path, exc.strerror or exc)

    def prepend(self, records: list[bytes]) -> None:
        """Put records in front of the waiting ones (rewrites the file; used at close)."""
        if not records:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as out:
            out.write(MAGIC)
            out.write(b"".join(LENGTH.pack(len(r)) + r for r in records))
            self._fh.seek(self._offset)
            while chunk := self._fh.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        # Take the lock on the new file before it replaces the old one.
        new = open(tmp, "r+b")  # noqa: SIM115 - kept open as the spool
        fcntl.flock(new.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, self.path)
        self._fh.close()
        self._fh = new
        self._fh.seek(0, os.SEEK_END)
        self._offset = len(MAGIC)
        self._write_offset()
        self.count += len(records)

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._fh.close()
