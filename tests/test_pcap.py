"""Streaming pcap / pcapng reader and capture-path expansion.

Capture files are written byte by byte with ``struct`` into ``tmp_path``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from pathlib import Path

import pytest

from detector.capture.pcap import CaptureFile, expand_paths
from detector.errors import CaptureError

PKT_A = bytes(range(60))
PKT_B = b"\xaa" * 90
PKT_C = b"\x45" + b"\x00" * 40


# -- writers -------------------------------------------------------------------------------


def pcap_bytes(
    records: list[tuple[int, int, bytes, int]], endian: str = "<", nano: bool = False, linktype: int = 1
) -> bytes:
    """Classic pcap: records are (seconds, fraction in usec or nsec, data, wire length)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for sec, frac, data, wirelen in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), wirelen) + data
    return out


def _block(endian: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(endian + "II", btype, length) + body + struct.pack(endian + "I", length)


def shb(endian: str = "<") -> bytes:
    return _block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(endian: str, linktype: int, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    body = struct.pack(endian + "HHI", linktype, 0, 262144)
    if tsresol is not None:
        body += struct.pack(endian + "HH", 9, 1) + bytes([tsresol]) + b"\x00" * 3
    if tsoffset is not None:
        body += struct.pack(endian + "HHq", 14, 8, tsoffset)
    if tsresol is not None or tsoffset is not None:
        body += struct.pack(endian + "HH", 0, 0)  # opt_endofopt
    return _block(endian, 1, body)


def epb(endian: str, ifid: int, ticks: int, data: bytes, wirelen: int | None = None) -> bytes:
    hdr = struct.pack(
        endian + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
        len(data) if wirelen is None else wirelen,
    )
    return _block(endian, 6, hdr + data)


def spb(endian: str, data: bytes) -> bytes:
    return _block(endian, 3, struct.pack(endian + "I", len(data)) + data)


def write(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def read_all(path: str) -> tuple[list[tuple[float, int, bytes, int]], CaptureFile]:
    with CaptureFile(path) as cf:
        return list(cf), cf


def assert_records(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for (ts, lt, data, wl), (ets, elt, edata, ewl) in zip(got, expected, strict=True):
        assert ts == pytest.approx(ets, abs=1e-6)
        assert (lt, data, wl) == (elt, edata, ewl)


# -- pcap ----------------------------------------------------------------------------------


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_microseconds(tmp_path: Path, endian: str) -> None:
    path = write(
        tmp_path, "a.pcap",
        pcap_bytes([(1700000000, 123456, PKT_A, 60), (1700000001, 999999, PKT_B, 1514)], endian),
    )
    got, cf = read_all(path)
    assert_records(got, [(1700000000.123456, 1, PKT_A, 60), (1700000001.999999, 1, PKT_B, 1514)])
    assert cf.format == "pcap"
    assert cf.compression is None
    assert cf.records == 2
    assert cf.bytes == len(PKT_A) + len(PKT_B)
    assert cf.warning is None


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_nanoseconds(tmp_path: Path, endian: str) -> None:
    path = write(
        tmp_path, "n.pcap",
        pcap_bytes([(1700000000, 123456789, PKT_A, 60), (5, 1, PKT_C, 41)], endian, nano=True, linktype=101),
    )
    got, cf = read_all(path)
    assert_records(got, [(1700000000.123456789, 101, PKT_A, 60), (5.000000001, 101, PKT_C, 41)])
    assert cf.warning is None


def test_pcap_linktype_upper_bits_are_masked(tmp_path: Path) -> None:
    # the upper 16 bits of the link-type field carry FCS information (pcap spec)
    path = write(tmp_path, "fcs.pcap", pcap_bytes([(1, 0, PKT_A, 60)], linktype=(0x1 << 28) | 1))
    got, _ = read_all(path)
    assert got[0][1] == 1


def test_pcap_header_only_has_no_records(tmp_path: Path) -> None:
    got, cf = read_all(write(tmp_path, "h.pcap", pcap_bytes([])))
    assert got == []
    assert cf.warning is None


@pytest.mark.parametrize("cut", [-1, -30, -len(PKT_B) - 5])  # inside data; inside the header
def test_truncated_pcap_keeps_records_before_cut(tmp_path: Path, cut: int) -> None:
    data = pcap_bytes([(1, 10, PKT_A, 60), (2, 20, PKT_C, 41), (3, 30, PKT_B, 90)])
    got, cf = read_all(write(tmp_path, "t.pcap", data[:cut]))
    assert_records(got, [(1.00001, 1, PKT_A, 60), (2.00002, 1, PKT_C, 41)])
    assert cf.warning is not None
    assert "after 2 records" in cf.warning


def test_pcap_cut_inside_file_header(tmp_path: Path) -> None:
    got, cf = read_all(write(tmp_path, "fh.pcap", pcap_bytes([])[:10]))
    assert got == []
    assert cf.warning is not None


def test_pcap_impossible_caplen_stops_with_warning(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, PKT_A, 60)]) + struct.pack("<IIII", 2, 0, 50_000_000, 60) + b"\x00" * 100
    got, cf = read_all(write(tmp_path, "d.pcap", data))
    assert len(got) == 1
    assert "damaged record" in cf.warning


def test_pcap_many_records_across_chunks(tmp_path: Path) -> None:
    recs = [(i, i % 1000000, bytes([i % 256]) * (100 + i % 1400), 1500) for i in range(2000)]
    got, cf = read_all(write(tmp_path, "big.pcap", pcap_bytes(recs)))
    assert len(got) == 2000
    assert [r[2] for r in got] == [r[2] for r in recs]
    assert cf.warning is None


# -- pcapng --------------------------------------------------------------------------------


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_two_interfaces(tmp_path: Path, endian: str) -> None:
    data = (
        shb(endian)
        + idb(endian, 1)  # Ethernet, default microsecond resolution
        + idb(endian, 101, tsresol=9)  # raw IP, nanoseconds
        + epb(endian, 0, 1700000000_123456, PKT_A)
        + epb(endian, 1, 1700000000_987654321, PKT_C, wirelen=1000)
        + epb(endian, 0, 1700000001_000001, PKT_B)
    )
    got, cf = read_all(write(tmp_path, "two.pcapng", data))
    assert cf.format == "pcapng"
    assert_records(
        got,
        [
            (1700000000.123456, 1, PKT_A, 60),
            (1700000000.987654321, 101, PKT_C, 1000),
            (1700000001.000001, 1, PKT_B, 90),
        ],
    )
    assert cf.warning is None


def test_pcapng_binary_tsresol_and_tsoffset(tmp_path: Path) -> None:
    data = shb() + idb("<", 1, tsresol=0x80 | 10, tsoffset=1000) + epb("<", 0, 2048 + 512, PKT_A)
    got, _ = read_all(write(tmp_path, "res.pcapng", data))
    assert got[0][0] == pytest.approx(1000 + 2.5, abs=1e-6)


def test_pcapng_unknown_blocks_skipped_and_simple_packet_block(tmp_path: Path) -> None:
    data = (
        shb()
        + idb("<", 113)
        + _block("<", 5, b"\x00" * 16)  # interface statistics block
        + _block("<", 0x40000BAD, b"custom")  # unknown block type
        + spb("<", PKT_C)
        + epb("<", 0, 3_000000, PKT_A)
    )
    got, cf = read_all(write(tmp_path, "misc.pcapng", data))
    assert_records(got, [(0.0, 113, PKT_C, 41), (3.0, 113, PKT_A, 60)])
    assert cf.warning is None


def test_pcapng_second_section_resets_interfaces(tmp_path: Path) -> None:
    data = (
        shb() + idb("<", 1) + epb("<", 0, 1_000000, PKT_A)
        + shb(">") + idb(">", 101, tsresol=9) + epb(">", 0, 2_000000000, PKT_C)
    )
    got, _ = read_all(write(tmp_path, "sec.pcapng", data))
    assert_records(got, [(1.0, 1, PKT_A, 60), (2.0, 101, PKT_C, 41)])


def test_pcapng_packet_for_unknown_interface_warns(tmp_path: Path) -> None:
    data = shb() + idb("<", 1) + epb("<", 5, 1_000000, PKT_A) + epb("<", 0, 2_000000, PKT_B)
    got, cf = read_all(write(tmp_path, "if.pcapng", data))
    assert [r[2] for r in got] == [PKT_B]
    assert cf.warning is not None


@pytest.mark.parametrize("cut", [-1, -8, -40])
def test_truncated_pcapng_keeps_records_before_cut(tmp_path: Path, cut: int) -> None:
    data = shb() + idb("<", 1) + epb("<", 0, 1_000000, PKT_A) + epb("<", 0, 2_000000, PKT_B)
    got, cf = read_all(write(tmp_path, "t.pcapng", data[:cut]))
    assert_records(got, [(1.0, 1, PKT_A, 60)])
    assert "after 1 records" in cf.warning


def test_pcapng_bad_block_length(tmp_path: Path) -> None:
    data = shb() + idb("<", 1) + epb("<", 0, 1_000000, PKT_A) + struct.pack("<II", 6, 13) + b"\x00" * 20
    got, cf = read_all(write(tmp_path, "bl.pcapng", data))
    assert len(got) == 1
    assert "damaged pcapng block" in cf.warning


def test_pcapng_bad_byte_order_mark(tmp_path: Path) -> None:
    data = bytearray(shb() + idb("<", 1) + epb("<", 0, 1_000000, PKT_A))
    data[8:12] = b"\x00\x00\x00\x00"
    got, cf = read_all(write(tmp_path, "bom.pcapng", bytes(data)))
    assert got == []
    assert "byte-order mark" in cf.warning


# -- compression ---------------------------------------------------------------------------

_TWO = [(1, 5, PKT_A, 60), (2, 6, PKT_B, 90)]
_TWO_EXPECTED = [(1.000005, 1, PKT_A, 60), (2.000006, 1, PKT_B, 90)]


@pytest.mark.parametrize(
    ("name", "compress", "kind"),
    [
        ("c.pcap.gz", gzip.compress, "gzip"),
        ("c.pcap.bz2", bz2.compress, "bzip2"),
        ("c.pcap.xz", lzma.compress, "xz"),
        ("misleading.pcap", gzip.compress, "gzip"),  # recognised by magic, not by name
    ],
)
def test_compressed(tmp_path: Path, name: str, compress, kind: str) -> None:
    got, cf = read_all(write(tmp_path, name, compress(pcap_bytes(_TWO))))
    assert_records(got, _TWO_EXPECTED)
    assert cf.compression == kind
    assert cf.warning is None


def test_gzip_pcapng(tmp_path: Path) -> None:
    data = shb() + idb("<", 1, tsresol=9) + epb("<", 0, 7_000000123, PKT_A)
    got, cf = read_all(write(tmp_path, "x.pcapng.gz", gzip.compress(data)))
    assert_records(got, [(7.000000123, 1, PKT_A, 60)])
    assert cf.format == "pcapng"


def test_truncated_gzip_warns(tmp_path: Path) -> None:
    gz = gzip.compress(pcap_bytes(_TWO * 50))
    got, cf = read_all(write(tmp_path, "cut.pcap.gz", gz[: len(gz) // 2]))
    assert cf.warning is not None
    assert "compressed" in cf.warning


def test_truncated_gzip_keeps_records_before_cut(tmp_path: Path) -> None:
    records = [(i, 0, bytes([i]) * 200, 200) for i in range(100)]
    gz = gzip.compress(pcap_bytes(records), compresslevel=1)
    got, cf = read_all(write(tmp_path, "cut.pcap.gz", gz[: len(gz) * 3 // 4]))
    assert cf.warning is not None
    assert len(got) >= 10  # most of the file was there before the cut
    assert [r[2] for r in got] == [r[2] for r in records[: len(got)]]


# (bzip2 is left out: it decompresses whole 900 kB blocks, so a cut block yields nothing)
@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress])
def test_compressed_truncated_keeps_every_whole_record(tmp_path: Path, compress) -> None:
    records = [(i, 0, bytes([i]) * 300, 300) for i in range(200)]
    raw = pcap_bytes(records)
    blob = compress(raw)
    got, cf = read_all(write(tmp_path, "cut.pcap.z", blob[: len(blob) - 40]))
    assert cf.warning is not None
    assert 0 < len(got) < 200
    assert [r[2] for r in got] == [r[2] for r in records[: len(got)]]


def test_gzip_pcapng_keeps_reading_after_a_bad_block_warning(tmp_path: Path) -> None:
    pkt = b"x" * 1000
    data = shb() + idb("<", 1) + epb("<", 7, 1, pkt)  # interface 7 does not exist
    data += b"".join(epb("<", 0, i, pkt) for i in range(1500))  # ~1.5 MiB, past one chunk
    plain, _ = read_all(write(tmp_path, "p.pcapng", data))
    assert len(plain) == 1500  # the uncompressed file reads fine
    got, cf = read_all(write(tmp_path, "z.pcapng.gz", gzip.compress(data, compresslevel=1)))
    assert "bad interface" in cf.warning
    assert len(got) == 1500


# -- not captures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n" * 4, "not a pcap or pcapng"),
        (b"\x1f\x8bnot really gzip at all", ""),
    ],
)
def test_not_a_capture(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, "bad.pcap", content)
    with pytest.raises(CaptureError) as exc, CaptureFile(path) as cf:
        list(cf)
    assert path in str(exc.value)
    assert message in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError) as exc:
        CaptureFile(str(tmp_path / "nope.pcap"))
    assert "cannot open" in str(exc.value)


# -- expand_paths --------------------------------------------------------------------------


def test_expand_paths_directory(tmp_path: Path) -> None:
    d = tmp_path / "caps"
    (d / "sub").mkdir(parents=True)
    (d / "b.pcap").write_bytes(pcap_bytes([]))
    (d / "a.pcap.gz").write_bytes(gzip.compress(pcap_bytes([])))
    (d / "sub" / "c.PCAPNG").write_bytes(b"")
    (d / "README.md").write_text("not a capture")
    (d / "notes.txt").write_text("nope")
    files, problems = expand_paths([str(d)])
    assert files == [str(d / "a.pcap.gz"), str(d / "b.pcap"), str(d / "sub" / "c.PCAPNG")]
    assert problems == []


def test_expand_paths_glob_and_explicit_files(tmp_path: Path) -> None:
    for n in ("x1.pcap", "x2.pcap", "y.pcap"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "README.md").write_text("explicitly named files are always tried")
    files, problems = expand_paths([str(tmp_path / "x*.pcap"), str(tmp_path / "README.md")])
    assert files == [str(tmp_path / "x1.pcap"), str(tmp_path / "x2.pcap"), str(tmp_path / "README.md")]
    assert problems == []


def test_expand_paths_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("x")
    args = [str(empty), str(tmp_path / "missing.pcap"), str(tmp_path / "z*.pcap")]
    files, problems = expand_paths(args)
    assert files == []
    assert len(problems) == 3
    assert problems[0].startswith(str(empty)) and "no capture files" in problems[0]
    assert "no such file" in problems[1]
    assert "no file matches" in problems[2]


def test_expand_paths_glob_skips_directories(tmp_path: Path) -> None:
    (tmp_path / "d.pcap").mkdir()
    (tmp_path / "f.pcap").write_bytes(b"")
    files, problems = expand_paths([os.path.join(str(tmp_path), "*.pcap")])
    assert files == [str(tmp_path / "f.pcap")]
    assert problems == []
