"""Hostile capture and signature files: a clear warning or error naming the file and the
offset, nothing allocated beyond the caps, and the rest of the run goes on."""

from __future__ import annotations

import bz2
import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from detector.capture.pcap import MAX_RATIO, RATIO_AFTER, CaptureFile
from detector.errors import SignatureError
from detector.signatures import MAX_FILE_CHARS, load_signatures
from tests.helpers import PCAPS, REPO
from tests.test_pcap import PKT_A, PKT_B, _block, epb, idb, pcap_bytes, read_all, shb, write

GOOD = str(PCAPS / "tls-sni.pcap")


def _pcap_snaplen(records: list[bytes], snaplen: int) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)
    for i, data in enumerate(records):
        out += struct.pack("<IIII", 1 + i, 0, len(data), len(data)) + data
    return out


def test_caplen_above_snaplen_is_read_and_counted_once(tmp_path: Path) -> None:
    got, cf = read_all(write(tmp_path, "snap.pcap", _pcap_snaplen([PKT_A] * 500, 40)))
    assert len(got) == 500
    assert cf.warning == "500 record(s) longer than the file's snaplen 40 (the first at offset 24)"


def test_huge_record_length_names_the_offset(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, PKT_A, 60)]) + struct.pack("<IIII", 2, 0, 0xFFFFFFF0, 60) + b"\x00" * 100
    got, cf = read_all(write(tmp_path, "huge.pcap", data))
    assert len(got) == 1
    assert "damaged record at offset 100 after 1 records (captured length 4294967280 is impossible)" in cf.warning


def test_truncation_names_the_offset(tmp_path: Path) -> None:
    data = pcap_bytes([(1, 0, PKT_A, 60), (2, 0, PKT_B, 90)])
    got, cf = read_all(write(tmp_path, "cut.pcap", data[:-10]))
    assert len(got) == 1 and "file cut inside a packet at offset 100 after 1 records" in cf.warning


@pytest.mark.parametrize("blocklen", [12, 16, 28])
def test_pcapng_block_too_short_for_its_type(tmp_path: Path, blocklen: int) -> None:
    short = struct.pack("<II", 6, blocklen) + b"\x00" * (blocklen - 12) + struct.pack("<I", blocklen)
    data = shb() + idb("<", 1) + short + epb("<", 0, 1_000000, PKT_A)
    got, cf = read_all(write(tmp_path, "short.pcapng", data))
    assert [r[2] for r in got] == [PKT_A]
    assert "1 pcapng block(s) too short for their type (the first at offset 48)" in cf.warning


def test_pcapng_short_block_at_the_very_end_does_not_crash(tmp_path: Path) -> None:
    data = shb() + idb("<", 1) + struct.pack("<III", 6, 12, 12)
    got, cf = read_all(write(tmp_path, "end.pcapng", data))
    assert got == [] and "too short" in cf.warning


def test_many_bad_packet_blocks_give_one_short_warning(tmp_path: Path) -> None:
    bad = epb("<", 7, 1_000000, PKT_A)  # interface 7 was never described
    data = shb() + idb("<", 1) + bad * 20_000 + epb("<", 0, 2_000000, PKT_B)
    got, cf = read_all(write(tmp_path, "bad.pcapng", data))
    assert [r[2] for r in got] == [PKT_B]
    assert cf.warning == "20,000 pcapng packet block(s) with a bad interface or length (the first at offset 48)"


def test_pcapng_impossible_timestamp_reads_as_zero(tmp_path: Path) -> None:
    res0 = _block("<", 1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 9, 1) + b"\x00\x00\x00\x00" + b"\x00" * 4)
    data = shb() + res0 + epb("<", 0, (1 << 63), PKT_A)  # 2**63 seconds
    got, cf = read_all(write(tmp_path, "ts.pcapng", data))
    assert got[0][0] == 0.0 and "impossible timestamp" in cf.warning


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_decompression_bomb_stops_with_a_warning(tmp_path: Path, compress) -> None:
    # A valid header, one packet, then zeros: read as empty records until the ratio trips.
    raw = pcap_bytes([(1, 0, PKT_A, 60)]) + bytes(RATIO_AFTER * 4)
    packed = compress(raw)
    assert len(raw) > MAX_RATIO * len(packed)
    path = write(tmp_path, "bomb.pcap.gz", packed)
    n = 0
    with CaptureFile(path) as cf:
        for _ in cf:
            n += 1
    assert n <= RATIO_AFTER // 16 + 10_000
    assert "a decompression bomb? rest skipped" in cf.warning and f"more than {MAX_RATIO}:1" in cf.warning


def _replay(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "alerts.json"
    r = subprocess.run([sys.executable, "-m", "detector", "replay", *args, "-o", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    alerts = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return r, alerts


@pytest.mark.parametrize("exact", [True, False])
def test_replay_goes_on_past_hostile_files(tmp_path: Path, exact: bool) -> None:
    huge = write(tmp_path, "huge.pcap", pcap_bytes([(1, 0, PKT_A, 60)]) + struct.pack("<IIII", 2, 0, 1 << 30, 60))
    magic = write(tmp_path, "magic.pcap", b"\xde\xad\xbe\xef" + bytes(40))
    short = write(tmp_path, "short.pcapng", shb() + idb("<", 1) + struct.pack("<III", 6, 12, 12))
    r, alerts = _replay([*(["--exact"] if exact else []), huge, magic, short, GOOD], tmp_path)
    assert r.returncode == 1, r.stderr  # one file could not be read
    assert f"{magic}: not a pcap or pcapng capture (magic deadbeef)" in r.stderr
    assert f"warning: {huge}:" in r.stderr  # libpcap (fast path) says why, without the offset
    if exact:
        assert f"warning: {huge}: damaged record at offset 100" in r.stderr
        assert f"warning: {short}: 1 pcapng block(s) too short for their type (the first at offset 48)" in r.stderr
    assert alerts and all(a["pcap_filename"] == GOOD for a in alerts)  # the good file after them was read
    assert "Traceback" not in r.stderr


# -- signature files ----------------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused_with_its_lines(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    lol = ", ".join(["*a"] * 9)
    p.write_text("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                 + "".join(f"{x}: &{x} [{lol.replace('a', prev)}]\n" for prev, x in zip("abcdefgh", "bcdefghi", strict=True))
                 + "signatures: [*i]\n")
    with pytest.raises(SignatureError) as ei:
        load_signatures([str(p)])
    problems = ei.value.problems
    assert [ln for _, ln, _ in problems] == list(range(2, 11))
    assert all("anchors and aliases are not allowed" in m for _, _, m in problems)


def test_huge_signature_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "huge.yaml"
    with open(p, "w") as fh:
        fh.write("signatures:\n")
        fh.write("#" * 1000 + "\n" * 1)
        fh.seek(MAX_FILE_CHARS + 10)
        fh.write("\n")
    with pytest.raises(SignatureError, match="file too large"):
        load_signatures([str(p)])


@pytest.mark.parametrize("text, line, message", [
    ("signatures:\n  - id: abc\n", 2, "id"),
    ("signatures: 5\n", 1, "signatures"),
    ("signatures:\n  - {id: 1, match: [1, 2]}\n", 2, "match"),
    ("pack: [1]\nsignatures: []\n", 1, "pack"),
])
def test_wrong_types_are_refused_with_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SignatureError) as ei:
        load_signatures([str(p)])
    assert any(f == str(p) and ln == line and message in m for f, ln, m in ei.value.problems), ei.value.problems
