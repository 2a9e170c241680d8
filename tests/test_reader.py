"""Reader: the bounded big-endian cursor every hand-written parser reads through."""

from __future__ import annotations

import pytest

from detector.errors import DecodeError
from detector.parsers.reader import Reader


def test_fixed_width_integers_are_big_endian() -> None:
    r = Reader(bytes.fromhex("01 0203 040506 0708090a ff"))
    assert r.u8() == 0x01
    assert r.u16() == 0x0203
    assert r.u24() == 0x040506
    assert r.u32() == 0x0708090A
    assert r.u8() == 0xFF
    assert r.remaining == 0
    assert r.pos == 11


@pytest.mark.parametrize(
    ("hexbytes", "value"),
    [
        # RFC 9000 appendix A.1 (sample variable-length integer decodings)
        ("c2197c5eff14e88c", 151288809941952652),
        ("9d7f3e7d", 494878333),
        ("7bbd", 15293),
        ("25", 37),
        # RFC 9000 A.1: "the single byte 0x25 ... could also be encoded as 0x4025"
        ("4025", 37),
        # edges of each length
        ("00", 0),
        ("3f", 63),
        ("7fff", 16383),
        ("bfffffff", (1 << 30) - 1),
        ("ffffffffffffffff", (1 << 62) - 1),
    ],
)
def test_varint_rfc9000(hexbytes: str, value: int) -> None:
    data = bytes.fromhex(hexbytes)
    r = Reader(data + b"\xaa")
    assert r.varint() == value
    assert r.pos == len(data)
    assert r.u8() == 0xAA


@pytest.mark.parametrize(
    ("data", "read"),
    [
        (b"", Reader.u8),
        (b"\x01", Reader.u16),
        (b"\x01\x02", Reader.u24),
        (b"\x01\x02\x03", Reader.u32),
        (b"", Reader.varint),
        (b"\x40", Reader.varint),  # two-byte varint, one byte there
        (b"\x80\x00\x00", Reader.varint),  # four-byte varint, three there
        (b"\xc2\x19\x7c\x5e\xff\x14\xe8", Reader.varint),  # eight-byte varint, seven there
    ],
)
def test_overrun_raises_decode_error(data: bytes, read) -> None:
    r = Reader(data, "thing")
    with pytest.raises(DecodeError) as exc:
        read(r)
    assert exc.value.reason == "truncated-thing"


@pytest.mark.parametrize(
    ("data", "call", "reason"),
    [
        (b"abc", lambda r: r.bytes(4), "truncated-message"),
        (b"abc", lambda r: r.skip(4), "truncated-message"),
        (b"abc", lambda r: r.bytes(-1), "truncated-message"),
        (b"abc", lambda r: r.skip(-1), "truncated-message"),
        (b"abc", lambda r: r.restrict(4), "truncated-message"),
        (b"\x03ab", lambda r: r.vector(1), "truncated-message"),
        (b"\x00\x03ab", lambda r: r.vector(2), "truncated-message"),
        (b"\x00\x00\x03ab", lambda r: r.vector(3), "truncated-message"),
        (b"\x00", lambda r: r.vector(2), "truncated-message"),  # length itself cut
    ],
)
def test_bad_lengths_raise_decode_error(data: bytes, call, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        call(Reader(data))
    assert exc.value.reason == reason


def test_failed_read_does_not_move_the_cursor() -> None:
    r = Reader(b"\x01\x02\x03")
    with pytest.raises(DecodeError):
        r.u32()
    assert r.pos == 0
    assert r.u24() == 0x010203


def test_bytes_and_skip() -> None:
    r = Reader(b"hello world")
    assert r.bytes(5) == b"hello"
    r.skip(1)
    assert r.bytes(0) == b""
    assert r.bytes(5) == b"world"
    assert r.remaining == 0


def test_restrict_is_a_window_and_moves_the_parent_past_it() -> None:
    r = Reader(b"\x01\x02\x03\x04\x05", "rec")
    sub = r.restrict(3)
    assert r.pos == 3
    assert r.remaining == 2
    assert sub.remaining == 3
    assert sub.u16() == 0x0102
    # The window ends at its own limit, not at the end of the data.
    with pytest.raises(DecodeError) as exc:
        sub.u16()
    assert exc.value.reason == "truncated-rec"
    assert sub.u8() == 0x03
    assert r.u16() == 0x0405


def test_nested_restrict_inherits_what() -> None:
    r = Reader(b"\x00" * 8, "outer")
    inner = r.restrict(4).restrict(2)
    inner.u16()
    with pytest.raises(DecodeError) as exc:
        inner.u8()
    assert exc.value.reason == "truncated-outer"


@pytest.mark.parametrize(
    ("len_bytes", "prefix"),
    [(1, b"\x03"), (2, b"\x00\x03"), (3, b"\x00\x00\x03")],
)
def test_vector(len_bytes: int, prefix: bytes) -> None:
    r = Reader(prefix + b"abc" + b"Z")
    v = r.vector(len_bytes)
    assert v.remaining == 3
    assert v.bytes(3) == b"abc"
    assert r.bytes(1) == b"Z"


def test_empty_vector() -> None:
    r = Reader(b"\x00\x00rest")
    v = r.vector(2)
    assert v.remaining == 0
    assert r.bytes(4) == b"rest"


def test_start_and_end_bound_the_reader() -> None:
    r = Reader(b"0123456789", start=2, end=5)
    assert r.pos == 2
    assert r.remaining == 3
    assert r.bytes(3) == b"234"
    with pytest.raises(DecodeError):
        r.u8()


def test_decode_error_is_a_value_error_with_reason() -> None:
    with pytest.raises(ValueError) as exc:
        Reader(b"").u8()
    assert isinstance(exc.value, DecodeError)
    assert exc.value.reason == "truncated-message"
