"""The per-direction TCP stream buffer and the bounded flow table."""

from __future__ import annotations

import pytest

from detector.decode.flows import DONE, MAX_PENDING, WINDOW, FlowTable, Stream

CAP = 32 * 1024
BASE = 1000


def stream(base: int = BASE) -> Stream:
    return Stream(base, ts=5.0)


# -- Stream.add ----------------------------------------------------------------------------


def test_in_order_segments() -> None:
    s = stream()
    assert s.add(BASE, b"hello ", CAP) is True
    assert s.add(BASE + 6, b"world", CAP) is True
    assert bytes(s.data) == b"hello world"
    assert s.pending == {}
    assert s.first_ts == 5.0


def test_out_of_order_second_segment_first() -> None:
    s = stream()
    assert s.add(BASE + 6, b"world", CAP) is False  # held beyond the gap
    assert bytes(s.data) == b""
    assert s.pending == {6: b"world"}
    assert s.add(BASE, b"hello ", CAP) is True
    assert bytes(s.data) == b"hello world"
    assert s.pending == {}


def test_three_segments_reverse_order() -> None:
    s = stream()
    assert s.add(BASE + 8, b"89", CAP) is False
    assert s.add(BASE + 4, b"4567", CAP) is False
    assert s.add(BASE, b"0123", CAP) is True
    assert bytes(s.data) == b"0123456789"
    assert s.pending == {}


def test_gap_stays_open_until_filled() -> None:
    s = stream()
    s.add(BASE, b"ab", CAP)
    assert s.add(BASE + 4, b"ef", CAP) is False
    assert bytes(s.data) == b"ab"
    assert s.add(BASE + 2, b"cd", CAP) is True
    assert bytes(s.data) == b"abcdef"


@pytest.mark.parametrize(
    ("seq_off", "payload", "grew", "data"),
    [
        (0, b"hello", False, b"hello"),  # exact retransmission
        (1, b"ell", False, b"hello"),  # retransmission inside
        (3, b"loXYZ", True, b"helloXYZ"),  # overlaps the end and brings new bytes
        (0, b"hello!!", True, b"hello!!"),  # same start, longer
        (5, b"", False, b"hello"),  # empty segment at the end
    ],
)
def test_retransmission_overlap(seq_off: int, payload: bytes, grew: bool, data: bytes) -> None:
    s = stream()
    s.add(BASE, b"hello", CAP)
    assert s.add(BASE + seq_off, payload, CAP) is grew
    assert bytes(s.data) == data


def test_overlap_keeps_first_copy_of_bytes() -> None:
    s = stream()
    s.add(BASE, b"hello", CAP)
    s.add(BASE + 3, b"XXXXX", CAP)
    assert bytes(s.data) == b"hello" + b"XXX"


@pytest.mark.parametrize(
    ("seq", "payload", "grew", "data"),
    [
        (BASE - 10, b"0123456789", False, b""),  # wholly before the start
        (BASE - 3, b"abcXYZ", True, b"XYZ"),  # straddles the start: only the tail is kept
        (BASE - 1, b"!", False, b""),
    ],
)
def test_before_base_segments(seq: int, payload: bytes, grew: bool, data: bytes) -> None:
    s = stream()
    assert s.add(seq, payload, CAP) is grew
    assert bytes(s.data) == data
    assert s.pending == {}


def test_sequence_number_wraparound() -> None:
    base = 0xFFFFFFF8
    s = stream(base)
    assert s.add(base, b"01234567", CAP) is True
    assert s.add(0, b"89", CAP) is True  # seq wrapped past 2**32
    assert bytes(s.data) == b"0123456789"
    assert s.add(base - 2, b"xx01", CAP) is False  # before the start across the wrap
    assert bytes(s.data) == b"0123456789"


def test_cap_truncation() -> None:
    s = stream()
    assert s.add(BASE, b"a" * 60, 64) is True
    assert s.add(BASE + 60, b"b" * 10, 64) is True
    assert len(s.data) == 64
    assert bytes(s.data) == b"a" * 60 + b"b" * 4


def test_cap_truncation_after_pending_merge() -> None:
    s = stream()
    s.add(BASE + 50, b"z" * 50, 64)
    assert s.add(BASE, b"y" * 50, 64) is True
    assert bytes(s.data) == b"y" * 50 + b"z" * 14


def test_segment_past_cap_is_not_growth() -> None:
    s = stream()
    s.add(BASE, b"a" * 64, 64)
    assert s.add(BASE + 64, b"more", 64) is False
    assert bytes(s.data) == b"a" * 64


def test_segments_far_ahead_are_not_held() -> None:
    s = stream()
    assert s.add(BASE + WINDOW, b"far", CAP) is False
    assert s.add(BASE + CAP, b"past the cap: never parsed", CAP) is False
    assert s.pending == {}
    assert s.add(BASE + CAP - 1, b"near", CAP) is False
    assert s.pending == {CAP - 1: b"n"}  # trimmed to the cap
    assert s.pbytes == 1


def test_pending_bytes_are_bounded_by_the_cap() -> None:
    s = stream()
    for i in range(MAX_PENDING):
        s.add(BASE + 1 + i, bytes(CAP), CAP)  # overlapping out-of-order segments, each up to the cap
    assert s.pbytes <= CAP and sum(map(len, s.pending.values())) == s.pbytes


def test_table_byte_budget_gives_up_the_oldest_undecided_streams() -> None:
    t = FlowTable(max_flows=1000, max_stream=CAP, max_bytes=4 * CAP)
    keys = [("10.0.0.1", 1000 + i, "10.0.0.2", 443) for i in range(10)]
    for k in keys:
        s = Stream(BASE, 0.0)
        t.set(k, s)
        t.grow(k, s, BASE, bytes(CAP))
    assert t.buffered <= 4 * CAP and t.evicted_bytes == 6
    assert [t.get(k) for k in keys[:6]] == [DONE] * 6
    assert all(isinstance(t.get(k), Stream) for k in keys[6:])
    t.set(keys[9], DONE)
    t.remove(keys[8])
    assert t.buffered == 2 * CAP


def test_pending_is_bounded() -> None:
    s = stream()
    for i in range(MAX_PENDING + 10):
        s.add(BASE + 10 + 2 * i, b"x", CAP)
    assert len(s.pending) == MAX_PENDING


def test_pending_same_offset_kept_once() -> None:
    s = stream()
    s.add(BASE + 5, b"first", CAP)
    s.add(BASE + 5, b"second", CAP)
    assert s.pending == {5: b"first"}


def test_pending_overlapping_each_other() -> None:
    s = stream()
    s.add(BASE + 2, b"cdef", CAP)
    s.add(BASE + 4, b"efgh", CAP)
    assert s.add(BASE, b"ab", CAP) is True
    assert bytes(s.data) == b"abcdefgh"
    assert s.pending == {}


def test_pending_wholly_old_is_dropped_when_reached() -> None:
    s = stream()
    s.add(BASE + 2, b"cd", CAP)
    assert s.add(BASE, b"abcdef", CAP) is True
    assert bytes(s.data) == b"abcdef"
    assert s.pending == {}


# -- FlowTable -----------------------------------------------------------------------------

K = [("10.0.0.1", 40000 + i, "10.0.0.2", 443) for i in range(10)]


def test_flow_table_get_set_remove() -> None:
    t = FlowTable(max_flows=10)
    assert t.get(K[0]) is False  # unknown
    t.set(K[0], 12345)  # SYN seen: next sequence number
    assert t.get(K[0]) == 12345
    t.set(K[0], DONE)
    assert t.get(K[0]) is None  # decided
    assert len(t) == 1
    t.remove(K[0])
    t.remove(K[0])  # removing twice is fine
    assert t.get(K[0]) is False
    assert len(t) == 0


def test_flow_table_eviction_counts() -> None:
    t = FlowTable(max_flows=3)
    t.set(K[0], stream())  # undecided
    t.set(K[1], DONE)  # decided
    t.set(K[2], 777)  # SYN only
    assert (t.evicted, t.evicted_undecided) == (0, 0)
    t.set(K[3], stream())  # evicts K[0], a Stream
    assert (t.evicted, t.evicted_undecided) == (1, 1)
    assert t.get(K[0]) is False
    t.set(K[4], stream())  # evicts K[1], decided
    assert (t.evicted, t.evicted_undecided) == (2, 1)
    t.set(K[5], stream())  # evicts K[2], an int
    assert (t.evicted, t.evicted_undecided) == (3, 1)
    assert len(t) == 3
    assert [t.get(k) is not False for k in K[3:6]] == [True, True, True]


def test_flow_table_updating_existing_key_does_not_evict() -> None:
    t = FlowTable(max_flows=2)
    t.set(K[0], stream())
    t.set(K[1], stream())
    t.set(K[0], DONE)
    t.set(K[1], DONE)
    assert t.evicted == 0
    assert len(t) == 2


def test_flow_table_streams_lists_only_undecided() -> None:
    t = FlowTable()
    s1, s2 = stream(), stream()
    t.set(K[0], s1)
    t.set(K[1], DONE)
    t.set(K[2], 5)
    t.set(K[3], s2)
    assert list(t.streams()) == [(K[0], s1), (K[3], s2)]


def test_flow_table_defaults() -> None:
    t = FlowTable()
    assert t.max_flows == 100_000
    assert t.max_stream == 32 * 1024
