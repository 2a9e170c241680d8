"""The long fuzz run: every target of ``targets.py`` for a while, with a random seed.

    .venv/bin/python tests/fuzz/run.py                      # 60 s per target
    .venv/bin/python tests/fuzz/run.py --seconds 600 --only dns,tls --seed 7
    .venv/bin/python tests/fuzz/run.py --coverage           # also line coverage of detector/

A mutation fuzzer over the same seeds and mutations as the short run in the test suite
(``tests/test_fuzz.py``), without hypothesis' per-example overhead.  An input that makes a
target raise anything but its declared error is a finding: it is saved as
``tests/fuzz/regressions/<target>-<sha1>.bin`` (one per distinct exception type and place),
which ``tests/test_fuzz.py`` replays from then on; fix the bug and commit the file.
Inputs that pass are added to the pool when they are new (a cheap stand-in for coverage
guidance: the pool grows along the mutations that did not fail).  Prints, per target:
seconds, executions, executions/s, findings and, with ``--coverage``, the lines of
``detector/`` the target reached.  Exit status 1 when there is a finding.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.targets import ALLOWED, REGRESSIONS, TARGETS, mutate, seeds  # noqa: E402

POOL_MAX = 2000


def fuzz(name: str, seconds: float, rng: random.Random) -> tuple[int, list[tuple[str, Path]]]:
    target = TARGETS[name]
    pool = list(seeds(name))
    findings: dict[str, Path] = {}
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(50):
            base = rng.choice(pool)
            data = mutate(rng, base, tuple(pool)) if rng.random() < 0.95 else rng.randbytes(rng.randrange(600))
            n += 1
            try:
                target(data)
            except ALLOWED:
                continue
            except Exception as exc:  # noqa: BLE001 - that is what we are looking for
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                where = f"{type(exc).__name__} at {Path(tb.filename).name}:{tb.lineno}"
                if where not in findings:
                    path = REGRESSIONS / f"{name}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
                    REGRESSIONS.mkdir(exist_ok=True)
                    path.write_bytes(data)
                    findings[where] = path
                    print(f"  {name}: {where}: {exc!s:.200} -> {path}", file=sys.stderr)
                continue
            if len(pool) < POOL_MAX and rng.random() < 0.05:
                pool.append(data)
    return n, [(w, p) for w, p in findings.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    ap.add_argument("--only", default="", help="comma-separated targets (default all): " + ", ".join(TARGETS))
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--coverage", action="store_true", help="measure line coverage of detector/ (needs 'coverage')")
    args = ap.parse_args()
    names = [x for x in args.only.split(",") if x] or list(TARGETS)
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"seed {seed}", file=sys.stderr)
    for name in names:
        seeds(name)  # read the captures (and import every module) before any measuring
    cov = None
    if args.coverage:
        import coverage

        cov = coverage.Coverage(source=["detector"], data_file=None)
    rows = []
    total_findings = 0
    for name in names:
        rng = random.Random(f"{seed}-{name}")
        if cov is not None:
            cov.erase()
            cov.start()
        t0 = time.monotonic()
        n, findings = fuzz(name, args.seconds, rng)
        took = time.monotonic() - t0
        lines = ""
        if cov is not None:
            cov.stop()
            data = cov.get_data()
            lines = str(sum(len(data.lines(f) or ()) for f in data.measured_files()))
        total_findings += len(findings)
        rows.append((name, took, n, len(findings), lines))
    print("| target | seconds | executions | executions/s | findings |" + (" detector lines reached |" if cov else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|" if cov else ""))
    for name, took, n, f, lines in rows:
        print(f"| {name} | {took:.0f} | {n:,} | {n / took:,.0f} | {f} |" + (f" {lines} |" if cov else ""))
    return 1 if total_findings else 0


if __name__ == "__main__":
    sys.exit(main())
