"""formats/clock.py: the fast UTC timestamp text is byte for byte what datetime writes."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.formats import clock
from detector.formats.common import iso_utc
from detector.formats.eve import timestamp


def _reference(ts: float, tail: str) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + tail


EDGES = [
    0.0, 0, 1, 0.5, 0.0000005, 0.0000015, 0.0000025, 0.9999995, 0.9999994, 0.99999949999, 1.9999999999,
    1_700_000_000, 1_700_000_000.5, 1_700_000_000.1234565, 1_700_000_000.9999996, 1_719_230_400.123456,
    1_719_230_400.000000499, 86_399.9999995, 951_782_399.9999999, 4_102_444_799.9999995, 253_402_300_798.25,
    253_402_300_799.0, 253_402_300_799.9999, 1e-300, 5e-324, math.nextafter(1.0, 0.0),
]  # fmt: skip


@pytest.mark.parametrize("ts", EDGES)
def test_edges(ts):
    assert clock.utc_text(ts, "+0000") == _reference(ts, "+0000")


def test_random_capture_times():
    rnd = random.Random(10)
    for _ in range(200_000):
        ts = rnd.uniform(0, 4_102_444_800) if rnd.random() < 0.5 else 1_700_000_000 + rnd.random() * 1e6
        if rnd.random() < 0.3:  # microsecond halves, where the rounding rule shows
            ts = math.floor(ts) + (rnd.randrange(1_000_000) + 0.5) / 1e6
        assert clock.utc_text(ts, "Z") == _reference(ts, "Z"), repr(ts)


@given(st.floats(min_value=0, max_value=253_402_300_799.99, allow_nan=False))
def test_any_time(ts):
    assert clock.utc_text(ts, "+0000") == _reference(ts, "+0000")


@pytest.mark.parametrize("ts", [-1.5, -0.0000005, 253_402_300_800.0, 1e20, math.inf, math.nan])
def test_out_of_range_as_datetime(ts):
    """Outside the fast range the datetime path answers (or raises) exactly as before."""
    try:
        want: str | type[BaseException] = _reference(ts, "Z")
    except (ValueError, OverflowError, OSError) as exc:
        want = type(exc)
    if isinstance(want, str):
        assert clock.utc_text(ts, "Z") == want
    else:
        with pytest.raises(want):
            clock.utc_text(ts, "Z")


def test_cache_is_bounded():
    for s in range(clock.MAX_CACHED_SECONDS * 3):
        clock.utc_text(1_700_000_000 + s + 0.25, "Z")
    assert len(clock._seconds) <= clock.MAX_CACHED_SECONDS


def test_formats_use_it():
    assert timestamp(1_719_230_400.123456) == "2024-06-24T12:00:00.123456+0000"
    assert iso_utc(1_700_000_000) == "2023-11-14T22:13:20.000000Z"

