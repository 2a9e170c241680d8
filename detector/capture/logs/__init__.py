"""Other sensors' logs as input: Suricata EVE JSON and Zeek logs (TSV or JSON writer).

``read_log(path)`` opens a file (plain or gzip, told by its first bytes; ``-`` is standard
input), tells its format from its first record, and yields ``LogEvent``s: one connection's
DNS message, TLS/QUIC hello, HTTP request or flow, with the client and server sides
already told apart.  Line by line, nothing kept but the current line and a bounded map of
flows seen with a host name, so a file of many GB costs the memory of one line.  A line
that is not a record (bad JSON, wrong field count, a missing address) is counted in
``LogStats.malformed`` with its line number (the first ``MAX_LISTED`` are kept for the
summary) and skipped: never fatal.
"""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from ...errors import CaptureError
from ...parsers.dns import DnsMessage

MAX_LISTED = 20
MAX_LINE = 1 << 20  # a longer line is malformed (read in pieces, never held whole)


@dataclass(frozen=True, slots=True)
class LogEvent:
    kind: str  # "dns", "tls", "quic", "http", "flow"
    ts: float
    client: str
    cport: int
    server: str
    sport: int
    proto: int  # 6, 17
    flow: str  # the sensor's flow id / Zeek uid: ties app records to their flow record
    dns: DnsMessage | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    vlan: tuple[int, ...] = ()


@dataclass
class LogStats:
    lines: int = 0
    records: Counter[str] = field(default_factory=Counter)  # by sensor record type
    ignored: Counter[str] = field(default_factory=Counter)  # records we have no use for
    malformed: int = 0
    prefiltered: int = 0  # EVE records that cannot name anything we match: not parsed
    malformed_lines: list[str] = field(default_factory=list)  # "file:line: why"
    formats: Counter[str] = field(default_factory=Counter)  # files by format

    def bad(self, path: str, lineno: int, why: str) -> None:
        self.malformed += 1
        if len(self.malformed_lines) < MAX_LISTED:
            self.malformed_lines.append(f"{path}:{lineno}: {why}")


def _open(path: str) -> IO[bytes]:
    if path == "-":
        raw: IO[bytes] = sys.stdin.buffer
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise CaptureError(f"{path}: cannot open: {exc.strerror or exc}") from None
    peek = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if peek == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def content(path: str, numbered: Iterator[tuple[int, bytes | None]], stats: LogStats,
            blank: bytes | None = None) -> Iterator[tuple[int, bytes]]:
    """The lines that hold something, counted; a line too long is counted as malformed.
    ``blank``: the bytes a skipped line may consist of (None: ASCII whitespace; b"": only
    an empty line is skipped)."""
    for n, line in numbered:
        stats.lines += 1
        if line is None:
            stats.bad(path, n, "line too long")
            continue
        if line.strip(blank):
            yield n, line


def lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline), or None for a line over MAX_LINE."""
    n = 0
    while True:
        line = fh.readline(MAX_LINE + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the long line
                line = fh.readline(MAX_LINE)
            yield n, None
            continue
        yield n, line.rstrip(b"\r\n")


def read_log(path: str, stats: LogStats, anchors: tuple[bytes, ...] | None = None) -> Iterator[LogEvent]:
    """Events of one log file; its format is told from its first non-empty line.
    ``anchors``: see ``eve.read`` (EVE only)."""
    from . import eve, zeek

    fh = _open(path)
    try:
        it = lines(fh)
        first: tuple[int, bytes | None] | None = None
        for n, line in it:
            if line is not None and line.strip():
                first = (n, line)
                break
            stats.lines += 1
            if line is None:
                stats.bad(path, n, f"line longer than {MAX_LINE} bytes")
        if first is None:
            return
        n, line = first
        assert line is not None
        if line.startswith(b"#"):
            stats.formats["zeek-tsv"] += 1
            yield from zeek.read_tsv(path, _chain(first, it), stats)
            return
        kind = eve.sniff(line)
        if kind == "eve":
            stats.formats["suricata-eve"] += 1
            yield from eve.read(path, _chain(first, it), stats, anchors)
        elif kind == "zeek-json":
            stats.formats["zeek-json"] += 1
            yield from zeek.read_json(path, _chain(first, it), stats)
        else:
            raise CaptureError(f"{path}: line {n}: neither Suricata EVE JSON nor a Zeek log (TSV or JSON)")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CaptureError(f"{path}: read error: {exc}") from None
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def _chain(first: tuple[int, bytes | None], rest: Iterator[tuple[int, bytes | None]]) -> Iterator[tuple[int, bytes | None]]:
    yield first
    yield from rest


def text(value: Any) -> str:
    return value if isinstance(value, str) else ""


__all__ = ["LogEvent", "LogStats", "read_log"]
