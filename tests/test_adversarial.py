"""The adversarial benchmark at a small scale: every flood stays bounded and quiet, and
every real contact hidden in it is still reported (benchmarks/adversarial.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_small_floods_keep_every_hidden_contact_and_stay_quiet(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "adversarial.py"), "--scale", "0.04",
                        "--work", str(tmp_path), "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["capture"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"normal", "dns", "syn", "frag", "hello16m", "flows"}
    for row in rows.values():
        assert row["found"] == row["hidden"] >= 10 and row["status"] == 0 and row["rss_mb"] < 200
    dns = rows["dns"]  # 5,000 random names from one client: 50 alerts, one aggregate, 11 real contacts
    assert dns["storm"] == 1 and dns["alerts"] == 50 + 1 + 11
