"""Signature packs: strict YAML loader -> one validated ``SignatureSet``.

The loader walks PyYAML's node graph (not plain dicts) so that every problem is reported as
``file:line: message``: unknown or duplicate keys, missing keys, wrong types, unknown
enumeration values, malformed patterns, duplicate ids and patterns across all packs.  All
problems are collected and raised together as one ``SignatureError``.

Pattern kinds (``match:``):
- ``names``: exact hostnames;
- ``suffixes``: the name itself and any name below it, on a label boundary;
- ``wildcards``: ``*`` is one or more characters inside one label, ``?`` exactly one.
Any pattern may hold one numeric range ``{00..19}``, expanded at load time (the width of
the first bound is kept, so ``{00..19}`` gives ``00`` ... ``19``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import SignatureError

CATEGORIES = ("update", "telemetry", "activation", "certificate", "management", "product-web", "vendor-domain")
LEVELS = ("high", "medium", "low")
# Suricata's alert.severity: 1 is the most severe.
SEVERITY_NUMBER = {"high": 1, "medium": 2, "low": 3}
GRADES = ("A", "A-p", "B", "C", "D", "L", "B/D", "C/D")


def _default_pack_dir() -> str:
    """The bundled packs: $DETECTOR_SIGNATURES, the checkout's signatures/, or the copy a
    wheel installs under <prefix>/share/kaspersky-traffic-detector/signatures."""
    env = os.environ.get("DETECTOR_SIGNATURES")
    if env:
        return env
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "signatures")
    if os.path.isdir(here):
        return here
    return os.path.join(sys.prefix, "share", "kaspersky-traffic-detector", "signatures")


DEFAULT_PACK_DIR = _default_pack_dir()

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_WILD_LABEL = re.compile(r"^[a-z0-9_?*-]{1,63}$")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
# A whole valid name in one match (the common case); problems get the slow, precise path.
_NAME_OK = re.compile(r"(?:(?!-)[a-z0-9_-]{1,63}(?<!-)\.)+(?!-)[a-z0-9_-]{1,63}(?<!-)")
MAX_RANGE = 1000
MAX_FILE_CHARS = 64 << 20  # a signature file larger than this is refused (1,000,000 names take ~30 MiB)
# libyaml's C parser when PyYAML has it (its wheels do): large packs load ten times faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

TOP_KEYS = {"pack": str, "description": str, "signatures": list}
SIG_KEYS = {
    "id": int,
    "name": str,
    "vendor": str,
    "products": list,
    "category": str,
    "confidence": str,
    "severity": str,
    "product_only": bool,
    "match": dict,
    "source": dict,
    "note": str,
    "listener": str,
    "tls_required": bool,
}
SIG_REQUIRED = ("id", "name", "vendor", "products", "category", "confidence", "severity", "product_only", "match", "source")
MATCH_KEYS = {"names": list, "suffixes": list, "wildcards": list, "ports": list}
LISTENERS = ("server", "agent")
def wildcard_regex(pattern: str, escape: str = ".-") -> str:
    """A wildcard pattern as regular-expression source (no anchors): ``*`` is one or more
    characters inside one label, ``?`` exactly one; the characters in ``escape`` get a
    backslash.  The loader admits only ``[a-z0-9_.-*?]``, so nothing else needs one.  The
    matcher compiles it; the Suricata (PCRE) and Zeek exporters write it."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("[^.]+")
        elif ch == "?":
            out.append("[^.]")
        elif ch in escape:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


_PORT_SPEC = re.compile(r"^(tcp|udp)/(\d{1,5})(?:-(\d{1,5}))?$")
MAX_PORT_RANGE = 1000
SOURCE_KEYS = {"ref": str, "grade": str, "urls": list}
SOURCE_REQUIRED = ("ref", "grade")


@dataclass(frozen=True, slots=True)
class Signature:
    id: int
    name: str
    vendor: str
    products: tuple[str, ...]
    category: str
    confidence: str
    severity: str
    product_only: bool
    names: tuple[str, ...]
    suffixes: tuple[str, ...]
    wildcards: tuple[str, ...]
    ports: tuple[tuple[str, int, int], ...]  # (proto, first, last)
    source_ref: str
    source_grade: str
    source_urls: tuple[str, ...]
    note: str
    file: str
    line: int
    listener: str = "server"  # for ports: who listens (the Kaspersky side is the other end too)
    tls_required: bool = False  # for ports: alert only when the flow speaks TLS

    @property
    def severity_number(self) -> int:
        return SEVERITY_NUMBER[self.severity]


@dataclass(frozen=True)
class SignatureSet:
    signatures: tuple[Signature, ...]
    files: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.signatures)

    def __iter__(self) -> Iterator[Signature]:
        return iter(self.signatures)

    def by_id(self, sid: int) -> Signature:
        for s in self.signatures:
            if s.id == sid:
                return s
        raise KeyError(sid)


def expand_range(pattern: str) -> list[str]:
    """``s{00..19}.upd.example`` -> 20 names.  Raises ValueError on a bad range."""
    m = _RANGE.search(pattern) if "{" in pattern else None
    if not m:
        return [pattern]
    if len(_RANGE.findall(pattern)) > 1:
        raise ValueError("only one numeric range per pattern")
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo or hi - lo >= MAX_RANGE:
        raise ValueError(f"bad numeric range {m.group(0)}")
    width = len(m.group(1)) if m.group(1).startswith("0") else 0
    out: list[str] = []
    for i in range(lo, hi + 1):
        out.extend(expand_range(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end() :]))
    return out


def check_pattern(kind: str, pattern: str) -> str | None:
    """Return a problem description, or None when the expanded pattern is valid."""
    if kind != "wildcards" and len(pattern) <= 253 and _NAME_OK.fullmatch(pattern):
        return None
    if pattern != pattern.lower():
        return "patterns must be lower case"
    if pattern.endswith("."):
        return "patterns must not end with a dot"
    if len(pattern) > 253:
        return "name longer than 253 characters"
    labels = pattern.split(".")
    if len(labels) < 2:
        return "a pattern needs at least two labels (never a bare top-level domain)"
    for label in labels:
        if kind == "wildcards":
            if not _WILD_LABEL.match(label):
                return f"bad label {label!r}"
        elif not _LABEL.match(label):
            return f"bad label {label!r} (letters, digits, '-', '_'; 1 to 63 characters)"
    if kind == "wildcards":
        if "*" not in pattern and "?" not in pattern:
            return "a wildcard pattern needs '*' or '?' (use names: for exact names)"
        if "*" in labels[-1] or "?" in labels[-1] or "*" in labels[-2] or "?" in labels[-2]:
            return "wildcards must leave the registrable domain (last two labels) literal"
    return None


class _Loader:
    def __init__(self) -> None:
        self.problems: list[tuple[str, int, str]] = []
        self.sigs: list[Signature] = []
        self.ids: dict[int, tuple[str, int]] = {}
        self.patterns: dict[tuple[str, str], tuple[str, int, int]] = {}
        self.port_owner: dict[tuple[str, str], tuple[str, int, int]] = {}

    def err(self, path: str, node: Node | None, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append((path, line, msg))

    def mapping(
        self, path: str, node: Node, keys: Mapping[str, Any], what: str
    ) -> dict[str, tuple[Node, Any]]:
        if not isinstance(node, MappingNode):
            self.err(path, node, f"{what} must be a mapping")
            return {}
        out: dict[str, tuple[Node, Any]] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, ScalarNode) else None
            if not isinstance(key, str):
                self.err(path, knode, f"{what}: keys must be strings")
                continue
            if key in out:
                self.err(path, knode, f"{what}: duplicate key '{key}'")
                continue
            if key not in keys:
                self.err(path, knode, f"{what}: unknown key '{key}' (valid: {', '.join(keys)})")
                continue
            value = self.value(path, vnode, keys[key], f"{what}.{key}")
            if value is not None:
                out[key] = (vnode, value)
        return out

    def value(self, path: str, node: Node, typ: type, what: str) -> Any:
        if typ is list:
            if not isinstance(node, SequenceNode):
                self.err(path, node, f"{what} must be a list")
                return None
            return node.value
        if typ is dict:
            return node  # checked by mapping()
        if not isinstance(node, ScalarNode):
            self.err(path, node, f"{what} must be a {typ.__name__}")
            return None
        tag = node.tag.rsplit(":", 1)[-1]
        if typ is int and tag == "int":
            try:
                return int(node.value)
            except ValueError:
                pass
        if typ is bool and tag == "bool":
            return node.value.lower() in ("true", "yes", "on")
        if typ is str and tag == "str":
            if not node.value.strip():
                self.err(path, node, f"{what} must not be empty")
                return None
            return node.value
        self.err(path, node, f"{what} must be a {typ.__name__}, not {node.value!r}")
        return None

    def strings(self, path: str, items: Iterable[Node], what: str) -> list[tuple[Node, str]]:
        out: list[tuple[Node, str]] = []
        for item in items:
            if isinstance(item, ScalarNode) and item.tag.endswith(":str") and item.value.strip():
                out.append((item, item.value))
            else:
                self.err(path, item, f"{what}: every item must be a non-empty string")
        return out

    def load_file(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_FILE_CHARS + 1)
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append((path, 1, f"cannot read: {exc}"))
            return
        if len(text) > MAX_FILE_CHARS:
            self.problems.append((path, 1, f"file too large (more than {MAX_FILE_CHARS >> 20} MiB): not a signature pack"))
            return
        try:
            # Anchors and aliases have no use in a pack and are the stuff of "billion laughs"
            # bombs: refused, each at its line, before anything is built from the file.
            lines: dict[int, str] = {}
            for e in yaml.parse(text, Loader=_YAML_LOADER):
                if isinstance(e, yaml.AliasEvent) and len(lines) < 10:
                    lines.setdefault(e.start_mark.line + 1 if e.start_mark else 1, str(e.anchor))
            if lines:
                for line, anchor in lines.items():
                    self.problems.append((path, line, f"YAML alias *{anchor}: anchors and aliases are not allowed in signature files"))
                return
            root = yaml.compose(text, Loader=_YAML_LOADER)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            self.problems.append((path, mark.line + 1 if mark else 1, f"YAML syntax: {getattr(exc, 'problem', exc)}"))
            return
        if root is None:
            self.problems.append((path, 1, "empty signature file"))
            return
        top = self.mapping(path, root, TOP_KEYS, "pack")
        if "signatures" not in top:
            if isinstance(root, MappingNode):
                self.err(path, root, "pack: missing key 'signatures'")
            return
        for item in top["signatures"][1]:
            self.load_signature(path, item)

    def load_signature(self, path: str, node: Node) -> None:
        before = len(self.problems)
        f = self.mapping(path, node, SIG_KEYS, "signature")
        for key in SIG_REQUIRED:
            if key not in f and isinstance(node, MappingNode) and not any(
                isinstance(k, ScalarNode) and k.value == key for k, _ in node.value
            ):
                self.err(path, node, f"signature: missing key '{key}'")
        sid = f.get("id", (None, None))[1]
        if isinstance(sid, int):
            if not 1 <= sid <= 0x7FFFFFFF:
                self.err(path, f["id"][0], f"id {sid} out of range (1 to 2147483647, a Suricata sid)")
            elif sid in self.ids:
                p, ln = self.ids[sid]
                self.err(path, f["id"][0], f"duplicate id {sid} (first at {p}:{ln})")
            else:
                self.ids[sid] = (path, f["id"][0].start_mark.line + 1)
        for key, allowed in (("category", CATEGORIES), ("confidence", LEVELS), ("severity", LEVELS)):
            if key in f and f[key][1] not in allowed:
                self.err(path, f[key][0], f"{key} {f[key][1]!r} is not one of {', '.join(allowed)}")
        products = self.strings(path, f["products"][1], "products") if "products" in f else []
        if "products" in f and not products:
            self.err(path, f["products"][0], "products must list at least one product")
        patterns: dict[str, list[str]] = {"names": [], "suffixes": [], "wildcards": []}
        ports: list[tuple[str, int, int]] = []
        if "match" in f:
            m = self.mapping(path, f["match"][0], MATCH_KEYS, "match")
            if "ports" in m:
                ports = self.ports(path, m["ports"][1], sid if isinstance(sid, int) else 0)
            for kind in ("names", "suffixes", "wildcards"):
                for pnode, raw in self.strings(path, m[kind][1], f"match.{kind}") if kind in m else []:
                    try:
                        expanded = expand_range(raw)
                    except ValueError as exc:
                        self.err(path, pnode, f"match.{kind}: {raw!r}: {exc}")
                        continue
                    for pat in expanded:
                        problem = check_pattern(kind, pat)
                        if problem:
                            self.err(path, pnode, f"match.{kind}: {pat!r}: {problem}")
                            continue
                        if (kind, pat) in self.patterns:
                            p, ln, other = self.patterns[(kind, pat)]
                            self.err(path, pnode, f"match.{kind}: {pat!r} already in signature {other} ({p}:{ln})")
                            continue
                        self.patterns[(kind, pat)] = (path, pnode.start_mark.line + 1, sid if isinstance(sid, int) else 0)
                        patterns[kind].append(pat)
            if not any(patterns.values()) and not ports and len(self.problems) == before:
                self.err(path, f["match"][0], "match: needs at least one of names, suffixes, wildcards, ports")
        source_ref = grade = ""
        urls: list[str] = []
        if "source" in f:
            src = self.mapping(path, f["source"][0], SOURCE_KEYS, "source")
            for key in SOURCE_REQUIRED:
                if key not in src:
                    self.err(path, f["source"][0], f"source: missing key '{key}' (every signature cites its source)")
            source_ref = str(src.get("ref", (None, ""))[1])
            grade = str(src.get("grade", (None, ""))[1])
            if "grade" in src and grade not in GRADES:
                self.err(path, src["grade"][0], f"source.grade {grade!r} is not one of {', '.join(GRADES)}")
            urls = [u for _, u in self.strings(path, src["urls"][1], "source.urls")] if "urls" in src else []
        if "listener" in f and f["listener"][1] not in LISTENERS:
            self.err(path, f["listener"][0], f"listener {f['listener'][1]!r} is not one of {', '.join(LISTENERS)}")
        if len(self.problems) != before or not isinstance(sid, int):
            return
        self.sigs.append(
            Signature(
                id=sid,
                name=str(f["name"][1]),
                vendor=str(f["vendor"][1]),
                products=tuple(p for _, p in products),
                category=str(f["category"][1]),
                confidence=str(f["confidence"][1]),
                severity=str(f["severity"][1]),
                product_only=bool(f["product_only"][1]),
                names=tuple(patterns["names"]),
                suffixes=tuple(patterns["suffixes"]),
                wildcards=tuple(patterns["wildcards"]),
                source_ref=source_ref,
                source_grade=grade,
                source_urls=tuple(urls),
                note=str(f["note"][1]) if "note" in f else "",
                file=path,
                line=node.start_mark.line + 1,
                ports=tuple(ports),
                listener=str(f["listener"][1]) if "listener" in f else "server",
                tls_required=bool(f["tls_required"][1]) if "tls_required" in f else False,
            )
        )

    def ports(self, path: str, items: list[Node], sid: int) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        for pnode, spec in self.strings(path, items, "match.ports"):
            m = _PORT_SPEC.match(spec)
            if not m:
                self.err(path, pnode, f"match.ports: {spec!r}: write tcp/PORT, udp/PORT or tcp/FIRST-LAST")
                continue
            lo = int(m.group(2))
            hi = int(m.group(3)) if m.group(3) else lo
            if not 1 <= lo <= hi <= 65535 or hi - lo >= MAX_PORT_RANGE:
                self.err(path, pnode, f"match.ports: {spec!r}: ports 1 to 65535, first <= last, at most {MAX_PORT_RANGE} in a range")
                continue
            clash = next((p for p in range(lo, hi + 1) if (m.group(1), str(p)) in self.port_owner), None)
            if clash is not None:
                p2, ln, other = self.port_owner[(m.group(1), str(clash))]
                self.err(path, pnode, f"match.ports: {m.group(1)}/{clash} already in signature {other} ({p2}:{ln})")
                continue
            for p in range(lo, hi + 1):
                self.port_owner[(m.group(1), str(p))] = (path, pnode.start_mark.line + 1, sid)
            out.append((m.group(1), lo, hi))
        return out


def pack_files(paths: Iterable[str] | None) -> list[str]:
    """Signature files from paths (files or directories of *.yaml / *.yml)."""
    out: list[str] = []
    for p in paths if paths else [DEFAULT_PACK_DIR]:
        if os.path.isdir(p):
            out.extend(
                os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith((".yaml", ".yml"))
            )
        else:
            out.append(p)
    return out


def load_signatures(paths: Iterable[str] | None = None) -> SignatureSet:
    """Load and validate signature packs; the bundled packs when ``paths`` is empty.

    Raises ``SignatureError`` listing every problem as ``file:line: message``.
    """
    files = pack_files(paths)
    loader = _Loader()
    if not files:
        raise SignatureError([(str(list(paths or [])), 1, "no signature files found")])
    for path in files:
        if not os.path.exists(path):
            loader.problems.append((path, 1, "no such file"))
            continue
        loader.load_file(path)
    if loader.problems:
        raise SignatureError(loader.problems)
    return SignatureSet(tuple(loader.sigs), tuple(files))


def select(sigs: SignatureSet, categories: Iterable[str] | None) -> SignatureSet:
    """Only the signatures of these categories (``--only``); all when None or empty."""
    if not categories:
        return sigs
    keep = set(categories)
    return SignatureSet(tuple(s for s in sigs if s.category in keep), sigs.files)
