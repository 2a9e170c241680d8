"""Reading alert files for ``detector report``: JSON lines of our EVE, ECS or OCSF output
(the format is told apart per line, so a file that mixes them is fine), plain or gzip.

Tolerant per line: a line that is not JSON, not an alert, or too long is counted under
its reason and skipped; an unreadable file is one problem naming it.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .contact import Contact, NotAnAlert, from_record

MAX_LINE = 1 << 20  # an alert line is a few KiB; beyond this it is not one of ours


@dataclass
class LoadStats:
    files: int = 0
    lines: int = 0
    formats: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def read_contacts(paths: list[str], stats: LoadStats) -> Iterator[Contact]:
    for path in paths:
        try:
            with open(path, "rb") as raw:
                gz = raw.read(2) == b"\x1f\x8b"
            fh = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            stats.problems.append(f"{path}: cannot open: {exc.strerror or exc}")
            continue
        stats.files += 1
        try:
            with fh:
                while True:
                    line = fh.readline(MAX_LINE + 1)
                    if not line:
                        break
                    if len(line) > MAX_LINE:
                        stats.skipped["line-too-long"] += 1
                        while line and not line.endswith(b"\n"):
                            line = fh.readline(MAX_LINE)
                        continue
                    if not line.strip():
                        continue
                    stats.lines += 1
                    try:
                        kind, contact = from_record(json.loads(line))
                    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NotAnAlert
                        stats.skipped["not-an-alert" if isinstance(exc, NotAnAlert) else "not-json"] += 1
                        continue
                    stats.formats[kind] += 1
                    yield contact
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            stats.problems.append(f"{path}: read error after {stats.lines} line(s): {exc}")
