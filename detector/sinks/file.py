"""Standard output and files (appending).  Opened before any packet is read."""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from ..errors import SinkError


class FileSink:
    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self._fh: BinaryIO
        if path == "-":
            self._fh = sys.stdout.buffer
            self._close = False
        else:
            try:
                self._fh = open(path, "ab")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise SinkError(f"{path}: cannot open for writing: {exc.strerror or exc}") from None
            self._close = True

    def write(self, record: bytes) -> None:
        try:
            self._fh.write(record)
        except OSError as exc:
            raise SinkError(f"{self.path}: write failed: {exc.strerror or exc}") from None
        self.written += 1

    def flush(self) -> None:
        try:
            self._fh.flush()
            if self._close:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"{self.path}: flush failed: {exc.strerror or exc}") from None

    def close(self) -> None:
        self.flush()
        if self._close:
            self._fh.close()
