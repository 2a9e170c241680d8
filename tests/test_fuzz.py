"""A short, fixed-seed fuzz run of every parser and decoder (tests/fuzz/targets.py), and
every saved finding of the long run (tests/fuzz/run.py) as a regression test.

Seeded from the captures in pcaps/ and mutated (flips, truncations, insertions,
interesting values, splices); plus raw random bytes.  Only the declared error of each
layer may escape.  Derandomized and bounded: the whole file runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import ALLOWED, TARGETS, mutate, regression_files, seeds

EXAMPLES = {"signature_file": 300, "pipeline": 1000, "capture_file": 1000, "capture_file_core": 600, "log_file": 600, "x509": 800}
DEFAULT_EXAMPLES = 1500


def _inputs(name: str) -> st.SearchStrategy[bytes]:
    pool = seeds(name)
    mutated = st.tuples(st.sampled_from(pool), st.randoms(use_true_random=False)).map(
        lambda t: mutate(t[1], t[0], pool))
    return st.one_of(mutated, st.sampled_from(pool), st.binary(max_size=600))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_short_fixed_seed(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES.get(name, DEFAULT_EXAMPLES), derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_inputs(name))
    def run(data: bytes) -> None:
        with contextlib.suppress(ALLOWED):
            target(data)

    run()


@pytest.mark.parametrize("path", regression_files(), ids=lambda p: p.name)
def test_fuzz_regressions(path) -> None:
    name = path.name.rsplit("-", 1)[0]
    with contextlib.suppress(ALLOWED):
        TARGETS[name](path.read_bytes())


def test_seeds_come_from_the_bundled_captures() -> None:
    for name in ("link", "ip", "dns", "tls", "http", "quic", "capture_file", "pipeline"):
        assert len(seeds(name)) >= 3, name
    assert mutate(random.Random(1), b"abc", (b"xyz",), rounds=0) == b"abc"
