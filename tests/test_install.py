"""Installs everywhere: where no Rust toolchain exists, building the package still succeeds
(the core is an optional extension), and the detector runs the pure-Python path with the
same alerts after one warning that says how to get the fast path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import REPO

BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _alerts(stdout: str) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "pcap_filename"} for x in stdout.splitlines() if x]


@pytest.mark.skipif(shutil.which("cargo", path=BARE_PATH) is not None, reason="cargo is on the system PATH here")
def test_build_without_rust_installs_the_pure_python_path(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        rel = f.decode()
        if not (REPO / rel).exists():
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP"))}
    env.update(PATH=BARE_PATH, HOME=str(tmp_path), PIP_DISABLE_PIP_VERSION_CHECK="1")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        assert not [n for n in z.namelist() if "_core" in n and n.endswith((".so", ".pyd"))]
        z.extractall(site)
    # -S: no site hooks, so this venv's editable install of the repo (which has the core)
    # cannot answer for detector._core; the dependencies come from this venv's site-packages.
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    run_env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{deps}")
    capture = str(REPO / "pcaps" / "tls-sni.pcap")
    # (the extracted wheel has no share/ data files: name the bundled pack)
    sigs = str(REPO / "signatures")
    r = subprocess.run([sys.executable, "-S", "-m", "detector", "replay", "--signatures", sigs, capture, capture],
                       cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("compiled core (detector._core) is not built") == 1
    assert "https://rustup.rs" in r.stderr and "path: pure Python" in r.stderr
    ours = subprocess.run([sys.executable, "-m", "detector", "replay", "--exact", capture, capture],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert _alerts(r.stdout) == _alerts(ours.stdout) and _alerts(ours.stdout)
