"""Streaming readers for pcap and pcapng files, plain or compressed.

Records are read in large chunks and sliced with ``struct.unpack_from``, never whole files
and never through scapy.  A file that ends inside a record is not an error: the frames
before the cut are yielded and ``CaptureFile.warning`` says where the file was cut.

Supported:
- pcap: both byte orders, micro- and nanosecond timestamps (magic a1b2c3d4 / a1b23c4d);
- pcapng: any number of sections and interfaces, a link type per interface, ``if_tsresol``
  and ``if_tsoffset``; enhanced, simple and obsolete packet blocks; other blocks skipped;
- gzip, bzip2 and xz compression, recognised by magic bytes (not by file name).

Hostile files: every warning names the byte offset (in the uncompressed stream) of the
record or block it is about, and repeated ones are counted, not repeated (the warning text
stays short whatever the file holds).  A record longer than ``MAX_RECORD`` or a block
longer than ``MAX_RECORD + 64`` ends the file with a warning (nothing that size is ever
allocated); a record longer than the file's own snaplen is read (libpcap does the same) and
counted; a compressed stream that expands more than ``MAX_RATIO`` times past
``RATIO_AFTER`` bytes is a decompression bomb: the rest is skipped with a warning.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import CaptureError

CHUNK = 1 << 20
# A record longer than this cannot be real (libpcap's own ceiling is 256 KiB; jumbo frames
# and 64 KiB loopback packets fit well below 1 MiB).  Beyond it the file is damaged.
MAX_RECORD = 1 << 20
MAX_RATIO = 200  # decompressed : compressed bytes (real captures: 2-20; deflate can reach ~1032, bzip2 far more)
RATIO_AFTER = 16 << 20  # ... checked once this much was decompressed
MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z: later (or negative) times cannot be written
# The smallest length of each pcapng block type we read (header, fixed fields, trailer).
MIN_BLOCK = {6: 32, 2: 32, 3: 16, 1: 20}

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
COMPRESSED_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}
# Names taken when a directory is expanded (explicitly named files are always tried).
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".ntar")
COMPRESSION_SUFFIXES = ("", ".gz", ".bz2", ".xz")

Record = tuple[float, int, bytes, int]  # ts, linktype, data, wire length


def expand_paths(args: list[str]) -> tuple[list[str], list[str]]:
    """Files, directories (recursively, capture-looking names only) and globs -> file list.

    Returns (files, problems); a problem is a one-line message naming the argument.
    """
    files: list[str] = []
    problems: list[str] = []
    for arg in args:
        if os.path.isdir(arg):
            found = []
            for root, dirs, names in os.walk(arg):
                dirs.sort()
                for name in sorted(names):
                    low = name.lower()
                    if any(low.endswith(c + z) for c in CAPTURE_SUFFIXES for z in COMPRESSION_SUFFIXES):
                        found.append(os.path.join(root, name))
            if not found:
                problems.append(f"{arg}: directory holds no capture files")
            files.extend(found)
        elif os.path.exists(arg) or arg == "-":
            files.append(arg)
        elif glob.has_magic(arg):
            matched = sorted(glob.glob(arg, recursive=True))
            if not matched:
                problems.append(f"{arg}: no file matches this pattern")
            files.extend(p for p in matched if os.path.isfile(p))
        else:
            problems.append(f"{arg}: no such file or directory")
    return files, problems


class CaptureFile:
    """Iterate the records of one capture file: ``for ts, linktype, data, wirelen in cf``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.warning: str | None = None
        self.format = "?"
        self.compression: str | None = None
        self._z_failed = False
        self.records = 0
        self.bytes = 0
        self.offset = 0  # bytes of the (uncompressed) file consumed before the current buffer
        self._decompressed = 0
        self._repeats: dict[str, list[int]] = {}  # warning kind -> [count, first offset]
        self._fh = self._open(path)

    # -- opening -----------------------------------------------------------------------
    def _open(self, path: str) -> BinaryIO:
        try:
            raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise CaptureError(f"{path}: cannot open: {exc.strerror or exc}") from None
        head = raw.read(6)
        raw.seek(0)
        fh: BinaryIO = raw
        for magic, kind in COMPRESSED_MAGICS.items():
            if head.startswith(magic):
                self.compression = kind
                if kind == "gzip":
                    fh = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]  # noqa: SIM115
                elif kind == "bzip2":
                    fh = bz2.BZ2File(raw)  # type: ignore[assignment]  # noqa: SIM115
                else:
                    fh = lzma.LZMAFile(raw)  # type: ignore[assignment]  # noqa: SIM115
                break
        self._raw = raw
        return fh

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            self._raw.close()

    def tell(self) -> int:
        """Bytes of the file read so far (of the compressed file, when it is compressed)."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        if self.compression is None:
            try:
                return self._fh.read(n)
            except OSError as exc:
                self._warn(f"read error ({exc.strerror or exc})")
                return b""
        # Compressed: take what the decompressor has piece by piece (read1), so that a
        # stream cut short still yields every byte before the cut.
        parts: list[bytes] = []
        got = 0
        while got < n and not self._z_failed:
            try:
                piece = self._fh.read1(n - got)  # type: ignore[attr-defined]
            except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
                self._z_failed = True
                self._warn(f"compressed data ends early or is corrupt ({exc})")
                break
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        self._decompressed += got
        if self._decompressed > RATIO_AFTER and not self._z_failed:
            packed = max(1, self._raw.tell())
            if self._decompressed > MAX_RATIO * packed:
                self._z_failed = True
                self._warn(f"compressed data expands more than {MAX_RATIO}:1 ({self._decompressed:,} bytes from "
                           f"{packed:,}) at offset {self._decompressed - got:,}: a decompression bomb? rest skipped")
                return b""
        return b"".join(parts)

    def _warn(self, msg: str) -> None:
        self.warning = f"{self.warning}; {msg}" if self.warning else msg

    def _repeat(self, kind: str, offset: int) -> None:
        """A problem that may recur for every record: counted, reported once at the end."""
        seen = self._repeats.setdefault(kind, [0, offset])
        seen[0] += 1

    def _report_repeats(self) -> None:
        for kind, (n, first) in self._repeats.items():
            self._warn(f"{n:,} {kind} (the first at offset {first:,})")
        self._repeats.clear()

    def __iter__(self) -> Iterator[Record]:
        head = self._read(24)
        if not head:
            if self.warning:
                raise CaptureError(f"{self.path}: {self.warning}")
            raise CaptureError(f"{self.path}: empty file, not a capture")
        magic = head[:4]
        if magic in PCAP_MAGICS:
            self.format = "pcap"
            return self._iter_pcap(head)
        if magic == PCAPNG_SHB:
            self.format = "pcapng"
            return self._iter_pcapng(head)
        raise CaptureError(f"{self.path}: not a pcap or pcapng capture (magic {head[:4].hex()})")

    def _iter_pcap(self, head: bytes) -> Iterator[Record]:
        if len(head) < 24:
            self._warn("file ends inside the pcap file header")
            return
        try:
            yield from self._pcap_records(head)
        finally:
            self._report_repeats()

    def _pcap_records(self, head: bytes) -> Iterator[Record]:
        endian, unit = PCAP_MAGICS[head[:4]]
        snaplen = struct.unpack_from(endian + "I", head, 16)[0]
        linktype = struct.unpack_from(endian + "I", head, 20)[0] & 0xFFFF
        rec_hdr = struct.Struct(endian + "IIII")
        buf = b""
        pos = 0
        self.offset = 24
        read = self._read
        while True:
            if len(buf) - pos < 16:
                more = read(CHUNK)
                self.offset += pos
                buf = buf[pos:] + more
                pos = 0
                if len(buf) < 16:
                    if buf:
                        self._warn(f"file cut inside a record header at offset {self.offset:,} after {self.records} records")
                    return
            sec, frac, caplen, wirelen = rec_hdr.unpack_from(buf, pos)
            if caplen > MAX_RECORD:
                self._warn(
                    f"damaged record at offset {self.offset + pos:,} after {self.records} records "
                    f"(captured length {caplen} is impossible); rest of file skipped"
                )
                return
            if caplen > snaplen > 0:
                self._repeat(f"record(s) longer than the file's snaplen {snaplen}", self.offset + pos)
            end = pos + 16 + caplen
            if end > len(buf):
                more = read(max(CHUNK, caplen + 16))
                self.offset += pos
                buf = buf[pos:] + more
                pos = 0
                end = 16 + caplen
                if end > len(buf):
                    self._warn(f"file cut inside a packet at offset {self.offset:,} after {self.records} records")
                    return
            self.records += 1
            self.bytes += caplen
            yield sec + frac * unit, linktype, buf[pos + 16 : end], wirelen
            pos = end

    def _iter_pcapng(self, head: bytes) -> Iterator[Record]:
        try:
            yield from self._pcapng_blocks(head)
        finally:
            self._report_repeats()

    def _pcapng_blocks(self, head: bytes) -> Iterator[Record]:
        buf = head
        pos = 0
        self.offset = 0
        endian = "<"
        interfaces: list[tuple[int, float, int]] = []  # linktype, ts unit, ts offset
        read = self._read
        while True:
            if len(buf) - pos < 12:
                self.offset += pos
                buf = buf[pos:] + read(CHUNK)
                pos = 0
                if len(buf) < 12:
                    if buf:
                        self._warn(f"file cut inside a block header at offset {self.offset:,} after {self.records} records")
                    return
            btype = buf[pos : pos + 4]
            if btype == PCAPNG_SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    self._warn(f"bad byte-order mark in a pcapng section header at offset {self.offset + pos:,}; rest skipped")
                    return
                interfaces = []
            blocktype, blocklen = struct.unpack_from(endian + "II", buf, pos)
            if blocklen < 12 or blocklen % 4 or blocklen > MAX_RECORD + 64:
                self._warn(
                    f"damaged pcapng block at offset {self.offset + pos:,} after {self.records} records "
                    f"(block length {blocklen}); rest of file skipped"
                )
                return
            end = pos + blocklen
            if end > len(buf):
                self.offset += pos
                buf = buf[pos:] + read(max(CHUNK, blocklen))
                pos = 0
                end = blocklen
                if end > len(buf):
                    self._warn(f"file cut inside a block at offset {self.offset:,} after {self.records} records")
                    return
            body = pos + 8
            if blocklen < MIN_BLOCK.get(blocktype, 12):
                self._repeat("pcapng block(s) too short for their type", self.offset + pos)
            elif blocktype == 6 or blocktype == 2:  # enhanced / obsolete packet block
                if blocktype == 6:
                    ifid, tsh, tsl, caplen, wirelen = struct.unpack_from(endian + "IIIII", buf, body)
                else:
                    ifid, _drops, tsh, tsl, caplen, wirelen = struct.unpack_from(
                        endian + "HHIIII", buf, body
                    )
                data_at = body + 20
                if ifid < len(interfaces) and data_at + caplen <= end - 4:
                    linktype, unit, offset = interfaces[ifid]
                    self.records += 1
                    self.bytes += caplen
                    ts = ((tsh << 32) | tsl) * unit + offset
                    if not 0.0 <= ts <= MAX_TS:
                        self._repeat("record(s) with an impossible timestamp (read as 0)", self.offset + pos)
                        ts = 0.0
                    yield ts, linktype, buf[data_at : data_at + caplen], wirelen
                else:
                    self._repeat("pcapng packet block(s) with a bad interface or length", self.offset + pos)
            elif blocktype == 3:  # simple packet block: interface 0, no timestamp
                if interfaces:
                    (wirelen,) = struct.unpack_from(endian + "I", buf, body)
                    caplen = min(wirelen, blocklen - 16)
                    self.records += 1
                    self.bytes += caplen
                    yield 0.0, interfaces[0][0], buf[body + 4 : body + 4 + caplen], wirelen
            elif blocktype == 1:  # interface description block
                linktype = struct.unpack_from(endian + "H", buf, body)[0]
                unit, offset = _idb_options(buf, body + 8, end - 4, endian)
                interfaces.append((linktype, unit, offset))
            pos = end


def _idb_options(buf: bytes, pos: int, end: int, endian: str) -> tuple[float, int]:
    """Read if_tsresol (9) and if_tsoffset (14) from an IDB's options."""
    unit, offset = 1e-6, 0
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0 or pos + 4 + length > end:
            break
        val = buf[pos + 4 : pos + 4 + length]
        if code == 9 and length >= 1:
            r = val[0]
            unit = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
        elif code == 14 and length >= 8:
            offset = struct.unpack_from(endian + "q", val)[0]
        pos += 4 + length + (-length % 4)
    return unit, offset
