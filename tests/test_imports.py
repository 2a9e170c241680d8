"""One-way imports: the command line (``detector.cli``) parses and dispatches; no module of
the detector imports it back (only ``python -m detector``, ``detector/__main__.py``, runs
it), and the live mode (``detector.live``) is called by the command line only."""

from __future__ import annotations

import ast

from helpers import REPO

DETECTOR = REPO / "detector"


def _module(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports(path) -> set[str]:
    """The absolute names of the modules ``path`` imports (``from X import y`` counts as
    X and X.y: y may be a module)."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return found


def _modules() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(DETECTOR.rglob("*.py"))}


def test_resolver_sees_relative_imports():
    mods = _modules()
    assert "detector.live" in mods["detector.cli"] or "detector.live.run" in mods["detector.cli"]
    assert "detector.cli.main" in mods["detector.__main__"]
    assert "detector.capture.live" in mods["detector.live.worker"]


def test_no_module_imports_the_command_line():
    offenders = {
        mod: sorted(i for i in imps if i == "detector.cli" or i.startswith("detector.cli."))
        for mod, imps in _modules().items()
        if mod != "detector.__main__"
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_only_the_command_line_calls_live():
    users = {
        mod
        for mod, imps in _modules().items()
        if not mod.startswith("detector.live")
        and any(i == "detector.live" or i.startswith("detector.live.") for i in imps)
    }
    assert users == {"detector.cli"}


def test_live_modules_stay_small():
    """Split by role (startup, controller, workers, reload, health; the de-duplication, shared
    with `ingest -`, is detector/settle.py): none passes about 400 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (DETECTOR / "live").glob("*.py")}
    assert {"controller.py", "worker.py", "reload.py", "health.py", "startup.py"} <= set(sizes)
    assert len((DETECTOR / "settle.py").read_text().splitlines()) <= 400
    assert max(sizes.values()) <= 400, sizes
    assert len((DETECTOR / "capture" / "live.py").read_text().splitlines()) <= 400
