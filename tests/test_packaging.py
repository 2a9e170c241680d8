"""What an operator installs: the runtime dependencies are the ones the detector imports.

scapy builds the tests' hand-made edge-case packets; it is a test dependency only, and no
module of the detector may import it (an operator's install does not have it)."""

from __future__ import annotations

import ast
import subprocess
import sys

import tomllib
from helpers import REPO

DETECTOR = REPO / "detector"


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    out = set()
    for r in reqs:
        name = r.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        out.add(name.strip().lower())
    return out


def test_scapy_is_a_test_dependency_only():
    project = _project()
    assert "scapy" not in _names(project["dependencies"])
    assert "scapy" in _names(project["optional-dependencies"]["test"])


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_no_detector_module_imports_scapy():
    offenders = [str(p.relative_to(REPO)) for p in sorted(DETECTOR.rglob("*.py")) if "scapy" in _imports(p)]
    assert offenders == []


def test_every_module_imports_without_scapy():
    """Import every detector module in a fresh interpreter where scapy cannot be imported."""
    mods = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in DETECTOR.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = "import sys, importlib\nsys.modules['scapy'] = None\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
