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


# -- a fresh clone holds what the tests read -------------------------------------------------
FIXTURES = REPO / "tests" / "fixtures" / "ref"


def test_reference_fixtures_are_in_the_repository_with_their_provenance():
    """Every third-party reference file the tests read lies in tests/fixtures/ref/, and is
    the file its README names (SHA-256); the GPL-2.0 Suricata schemas carry their licence."""
    import hashlib
    import re

    readme = (FIXTURES / "README.md").read_text()
    listed = dict((path, digest) for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    assert set(listed) == {
        "ecs-9.4.0-flat.yml",
        "ocsf-schema-1.8.0-json.tar.gz",
        "suricata/suricata-eve-schema-7.0.10.json",
        "suricata/suricata-eve-schema-8.0.6.json",
    }
    for path, digest in listed.items():
        assert hashlib.sha256((FIXTURES / path).read_bytes()).hexdigest() == digest, path
    assert "GNU GENERAL PUBLIC LICENSE" in (FIXTURES / "suricata" / "COPYING").read_text()
    assert "Version 2, June 1991" in (FIXTURES / "suricata" / "COPYING").read_text()


def test_no_test_reads_files_outside_the_repository():
    """The suite once looked up ../shared/ref beside the checkout, so a clean clone skipped
    about a hundred tests; nothing may reach above the repository again."""
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        text = path.read_text()
        for needle in ("REPO.parent", "parents[2]", '"shared"', "../shared", "shared/ref"):
            if needle in text and path.name != "test_packaging.py":
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []
