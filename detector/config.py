"""Settings for ``detector live``: command-line flags over an optional YAML file over defaults.

Every long option of ``detector live`` (but ``--config`` itself) is a key of the file,
spelt as the option without its dashes (``buffer-size``; ``buffer_size`` is accepted too).
``OPTIONS`` is the one table both the file loader and the argument parser are built from,
so they cannot drift apart.  A value given on the command line wins over the file's; the
file's wins over the default.  Relative paths in the file are relative to the file.

The loader is strict like the signature loader: unknown or duplicate keys, wrong types and
out-of-range values are all reported at once as ``file:line: message``
(``ConfigFileError``); nothing is half-applied.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError

MiB = 1 << 20
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigFileError(ConfigError):
    """One or more problems in a configuration file, each as ``file:line: message``."""

    def __init__(self, problems: list[tuple[str, int, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p}:{ln}: {msg}" for p, ln, msg in problems))


# --- value parsers (also used for command-line values) -------------------------------------
def parse_size(text: str | int) -> int:
    """Bytes from ``67108864``, ``64MiB``, ``64M``, ``512k`` (binary units)."""
    if isinstance(text, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (write bytes, or e.g. 64MiB, 512k)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9108``, ``[::1]:9108``, ``localhost:9108`` -> (host, port)."""
    text = text.strip()
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$", text) or re.match(r"^([^\s:\[\]]+):(\d{1,5})$", text)
    if not m:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9108 or [::1]:9108)")
    host, port = m.group(1), int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")
    if host[0].isdigit() or ":" in host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
    return host, port


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}, not {v:g}"

    return check


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, not {v:g}"


def _interfaces(v: Any) -> str | None:
    bad = [i for i in v if not _IFNAME.match(i)]
    if bad:
        return f"{bad[0]!r} is not an interface name"
    if len(set(v)) != len(v):
        return "an interface is listed twice"
    return None


def _address(v: Any) -> str | None:
    if v is None:
        return None
    try:
        parse_address(v)
    except ValueError as exc:
        return str(exc)
    return None


def _nonempty(v: Any) -> str | None:
    items = v if isinstance(v, tuple) else (v,)
    return "must not be empty" if any(not str(x).strip() for x in items) else None


@dataclass(frozen=True)
class Option:
    key: str  # YAML key = long flag without "--"
    kind: str  # int, float, bool, size, str, list, address
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    reloadable: bool = False  # applied by SIGHUP without a restart
    path: bool = False  # a path (relative ones are relative to the config file)
    short: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.key.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("interface", "list", (), "interface to capture on (a span or tap port); repeatable",
           _interfaces, short="-i", metavar="IFACE"),
    Option("workers", "int", 1, "capture processes per interface, joined in a PACKET_FANOUT (hash) group "
           "so each flow stays on one; their matches are de-duplicated in one place (default 1)",
           _range(1, 64), metavar="N"),
    Option("buffer-size", "size", 32 * MiB, "kernel ring buffer per capture handle, e.g. 64MiB "
           "(each worker has two handles per interface; default 32MiB)", _range(1 * MiB, 4 << 30), metavar="BYTES"),
    Option("snaplen", "int", 65535, "bytes kept of each packet (default 65535)", _range(96, 262144), metavar="BYTES"),
    Option("promisc", "bool", True, "put the interfaces in promiscuous mode (default: yes; --no-promisc)"),
    Option("flow-head", "int", 16, "packets per flow direction handed to the parsers; the rest of an IPv4 "
           "flow is shed in C (default 16)", _range(4, 1000), metavar="N"),
    Option("output", "list", ("-",), "where alerts go: - (standard output), a file, or a network "
           "destination (syslog+tls://HOST:PORT, hec+https://..., elastic+https://...), each optionally "
           "FORMAT:DEST with FORMAT one of eve, ecs, cef, leef, ocsf; the --output syntax of replay; "
           "repeatable (default -)", _nonempty, path=True, short="-o", metavar="DEST"),
    Option("spool", "str", None, "directory where network outputs keep alerts on disk while their "
           "destination is unreachable (default: none, kept in memory)", _nonempty, path=True, metavar="DIR"),
    Option("ca", "str", None, "CA bundle (PEM) for TLS outputs (default: the system's)", _nonempty,
           path=True, metavar="FILE"),
    Option("dedup-window", "float", 3600.0, "one alert per (client, signature, name, evidence, app protocol, server port) per this "
           "much capture time; repeats inside it are counted, not written (default 3600)",
           _positive, reloadable=True, metavar="SECONDS"),
    Option("settle", "float", 0.5, "hold a new alert this long so the server's answer (DNS answer, "
           "ServerHello, HTTP status) can raise its evidence strength first; 0 writes at once (default 0.5)",
           _range(0, 60), reloadable=True, metavar="SECONDS"),
    Option("storm-threshold", "int", 50, "alert-storm control: past N distinct names from one client under one "
           "signature in storm-window, further names fold into one aggregate alert written when the window "
           "ends; 0 turns it off (default 50)", _range(0, 10_000_000), reloadable=True, metavar="N"),
    Option("storm-window", "float", 600.0, "alert-storm control: the window (default 600)", _positive,
           reloadable=True, metavar="SECONDS"),
    Option("storm-sample", "int", 10, "alert-storm control: names kept as a sample in the aggregate alert "
           "(default 10)", _range(0, 100), reloadable=True, metavar="N"),
    Option("stats-interval", "float", 60.0, "log a statistics line this often; 0 only on SIGUSR1 (default 60)",
           _range(0, 86400), reloadable=True, metavar="SECONDS"),
    Option("metrics", "address", None, "serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9108 "
           "(default: off)", _address, metavar="HOST:PORT"),
    Option("user", "str", "nobody", "user to run as once the capture is open, when started as root "
           "(default nobody)", _nonempty, metavar="USER"),
    Option("signatures", "list", (), "signature file or directory; replaces the bundled packs; repeatable",
           _nonempty, reloadable=True, path=True, metavar="PATH"),
    Option("add-signatures", "list", (), "signature file or directory added to the bundled packs (or to "
           "--signatures); repeatable", _nonempty, reloadable=True, path=True, metavar="PATH"),
)
BY_KEY = {o.key: o for o in OPTIONS}
BY_DEST = {o.dest: o for o in OPTIONS}


@dataclass(frozen=True)
class LiveSettings:
    interface: tuple[str, ...] = ()
    workers: int = 1
    buffer_size: int = 32 * MiB
    snaplen: int = 65535
    promisc: bool = True
    flow_head: int = 16
    output: tuple[str, ...] = ("-",)
    spool: str | None = None
    ca: str | None = None
    dedup_window: float = 3600.0
    settle: float = 0.5
    storm_threshold: int = 50
    storm_window: float = 600.0
    storm_sample: int = 10
    stats_interval: float = 60.0
    metrics: str | None = None
    user: str = "nobody"
    signatures: tuple[str, ...] = ()
    add_signatures: tuple[str, ...] = ()
    config: str | None = None
    # where each value came from: "default", "FILE:LINE" or "command line"
    origin: Mapping[str, str] = field(default_factory=dict, compare=False)

    def changes(self, other: LiveSettings) -> tuple[list[str], list[str]]:
        """Keys whose value differs in ``other``: (reloadable, needing a restart)."""
        hot: list[str] = []
        cold: list[str] = []
        for o in OPTIONS:
            if getattr(self, o.dest) != getattr(other, o.dest):
                (hot if o.reloadable else cold).append(o.key)
        return hot, cold


# --- the YAML file --------------------------------------------------------------------------
class _FileLoader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.problems: list[tuple[str, int, str]] = []

    def err(self, node: Node | None, msg: str) -> None:
        self.problems.append((self.path, node.start_mark.line + 1 if node is not None else 1, msg))

    def load(self) -> dict[str, tuple[Any, int]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigFileError([(self.path, 1, f"cannot read: {msg}")]) from None
        try:
            root = yaml.compose(text, Loader=_YAML_LOADER)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigFileError([(self.path, mark.line + 1 if mark else 1, f"YAML syntax: {getattr(exc, 'problem', exc)}")]) from None
        if root is None:
            return {}  # an empty file sets nothing
        if not isinstance(root, MappingNode):
            self.err(root, "the configuration must be a mapping of option: value")
            raise ConfigFileError(self.problems)
        out: dict[str, tuple[Any, int]] = {}
        lines: dict[str, int] = {}
        for knode, vnode in root.value:
            key = knode.value if isinstance(knode, ScalarNode) and knode.tag.endswith(":str") else None
            if key is None:
                self.err(knode, "keys must be option names")
                continue
            opt = BY_KEY.get(key) or BY_KEY.get(key.replace("_", "-"))
            if opt is None:
                self.err(knode, f"unknown key '{key}' (valid: {', '.join(o.key for o in OPTIONS)})")
                continue
            if opt.key in lines:
                self.err(knode, f"duplicate key '{key}' (first set on line {lines[opt.key]})")
                continue
            lines[opt.key] = knode.start_mark.line + 1
            value = self.value(opt, vnode)
            if value is _BAD:
                continue
            problem = opt.check(value) if opt.check and value is not None else None
            if problem:
                self.err(vnode, _say(opt.key, problem))
                continue
            out[opt.dest] = (value, lines[opt.key])
        if self.problems:
            raise ConfigFileError(self.problems)
        return out

    def value(self, opt: Option, node: Node) -> Any:
        tag = node.tag.rsplit(":", 1)[-1] if isinstance(node, ScalarNode) else ""
        what = opt.key
        if opt.kind == "list":
            items = node.value if isinstance(node, SequenceNode) else [node]
            vals: list[str] = []
            for item in items:
                if not isinstance(item, ScalarNode) or item.tag.rsplit(":", 1)[-1] not in ("str", "int"):
                    self.err(item, f"{what}: every item must be a string")
                    return _BAD
                vals.append(self.resolve(opt, item.value))
            if not vals:
                self.err(node, f"{what} must not be an empty list")
                return _BAD
            return tuple(vals)
        if not isinstance(node, ScalarNode):
            self.err(node, f"{what} must be a single value, not a {'list' if isinstance(node, SequenceNode) else 'mapping'}")
            return _BAD
        if tag == "null":
            if opt.default is None:
                return None
            self.err(node, f"{what} must have a value")
            return _BAD
        raw = node.value
        try:
            if opt.kind == "int" and tag == "int":
                return int(raw, 0)
            if opt.kind == "float" and tag in ("int", "float"):
                return float(raw)
            if opt.kind == "bool" and tag == "bool":
                return raw.lower() in ("true", "yes", "on")
            if opt.kind == "size" and tag in ("int", "str"):
                return parse_size(int(raw, 0) if tag == "int" else raw)
            if opt.kind in ("str", "address") and tag in ("str", "int"):
                return self.resolve(opt, raw)
        except ValueError as exc:
            self.err(node, f"{what}: {exc}")
            return _BAD
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "size": "a size",
                "str": "a string", "address": "HOST:PORT"}[opt.kind]
        self.err(node, f"{what} must be {kind}, not {raw!r}")
        return _BAD

    def resolve(self, opt: Option, value: str) -> str:
        if not opt.path or value == "-" or "://" in value:
            return value
        if opt.key == "output":
            fmt, sep, rest = value.partition(":")
            if sep and re.fullmatch(r"[a-z][a-z0-9_-]*", fmt):
                return value if not rest or rest == "-" or ":" in rest else f"{fmt}:{self.abspath(rest)}"
        return self.abspath(value)

    def abspath(self, value: str) -> str:
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(self.base, value))


_BAD = object()


def _say(what: str, problem: str) -> str:
    """'workers' + 'must be ...' -> 'workers must be ...'; other problems after a colon."""
    return f"{what} {problem}" if problem.startswith(("must ", "is ")) else f"{what}: {problem}"


def load_file(path: str) -> dict[str, tuple[Any, int]]:
    """The settings a file gives: dest -> (value, line).  Raises ``ConfigFileError``."""
    return _FileLoader(path).load()


# --- command line + file + defaults ----------------------------------------------------------
def check_cli(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options given on the command line (not None), parsed and checked."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for opt in OPTIONS:
        v = values.get(opt.dest)
        if v is None:
            continue
        if opt.kind == "list":
            v = tuple(v)
        elif opt.kind == "size":
            try:
                v = parse_size(v)
            except ValueError as exc:
                problems.append(f"--{opt.key}: {exc}")
                continue
        problem = opt.check(v) if opt.check else None
        if problem:
            problems.append(_say(f"--{opt.key}", problem))
            continue
        out[opt.dest] = v
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def resolve(cli: Mapping[str, Any], config: str | None = None) -> LiveSettings:
    """Defaults, then the file (if any), then the command line.  Raises ``ConfigError``
    (``ConfigFileError`` for the file's problems)."""
    given = check_cli(cli)
    from_file = load_file(config) if config else {}
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for opt in OPTIONS:
        if opt.dest in given:
            values[opt.dest] = given[opt.dest]
            origin[opt.dest] = "command line"
        elif opt.dest in from_file:
            values[opt.dest], line = from_file[opt.dest]
            origin[opt.dest] = f"{config}:{line}"
        else:
            origin[opt.dest] = "default"
    return replace(LiveSettings(), **values, config=config, origin=origin)


def signature_paths(s: LiveSettings, pack_files: Callable[[Iterable[str] | None], list[str]]) -> list[str] | None:
    """The signature paths the settings name (None: the bundled packs), as ``replay`` does."""
    paths = list(s.signatures)
    if s.add_signatures:
        paths = (paths or pack_files(None)) + list(s.add_signatures)
    return paths or None
