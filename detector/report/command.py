"""``detector report ALERTS...`` and the ``replay --report FILE`` hook.

The report is written at the end: to ``--output FILE`` (or standard output).  The format
comes from ``--format``, else from the file's extension (``.html``, ``.csv``, ``.json``;
anything else: ``table``).  Colour only for a table written to a terminal (and not when
``NO_COLOR`` is set).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import sys
from typing import TextIO

from ..errors import ConfigError
from .inventory import DEFAULT_HOME_NET, HomeNet, Inventory
from .load import LoadStats, read_contacts
from .render import EXTENSIONS, RENDERERS
from .view import build

EXIT_OK, EXIT_INPUT = 0, 1


def home_net(cidrs: list[str] | None) -> HomeNet:
    for c in cidrs or ():
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ConfigError(f"--home-net {c}: not an address range (e.g. 10.0.0.0/8 or 2001:db8::/32)") from None
    return HomeNet(cidrs or None)


def pick_format(fmt: str | None, path: str | None) -> str:
    if fmt:
        if fmt not in RENDERERS:
            raise ConfigError(f"unknown report format {fmt!r} (valid: {', '.join(RENDERERS)})")
        return fmt
    if path and path != "-":
        return EXTENSIONS.get(os.path.splitext(path)[1].lower(), "table")
    return "table"


def write(inv: Inventory, path: str | None, fmt: str, sources: list[str], stream: TextIO | None = None) -> None:
    """Render and write; a file is written whole to a temporary name, then renamed."""
    view = build(inv, sources)
    if path in (None, "-"):
        out = stream or sys.stdout
        colour = fmt == "table" and out.isatty() and "NO_COLOR" not in os.environ
        for piece in RENDERERS[fmt](view, colour=colour):
            out.write(piece)
        out.flush()
        return
    assert path is not None
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            for piece in RENDERERS[fmt](view):
                fh.write(piece)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"report {path}: cannot write: {exc.strerror or exc}") from None


def check_writable(path: str | None) -> None:
    """Fail before a long run, not after it."""
    if path in (None, "-"):
        return
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise ConfigError(f"report {path}: directory {d} does not exist or is not writable")


def cmd_report(args: argparse.Namespace) -> int:
    fmt = pick_format(args.format, args.output)
    check_writable(args.output)
    inv = Inventory(home_net(args.home_net))
    stats = LoadStats()
    for c in read_contacts(args.alerts, stats):
        inv.add(c)
    for p in stats.problems:
        sys.stderr.write(f"detector: {p}\n")
    write(inv, args.output, fmt, list(args.alerts))
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.skipped.items()))
    fmts = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.formats.items()))
    if not args.quiet:
        sys.stderr.write(f"report: {stats.files} file(s), {stats.lines:,} line(s) ({fmts or 'no alerts'})"
                         f"{'; skipped: ' + skipped if skipped else ''}; {len(inv):,} host(s)"
                         f"{' -> ' + args.output if args.output not in (None, '-') else ''}\n")
    return EXIT_INPUT if stats.problems else EXIT_OK


def add_home_net(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home-net", action="append", metavar="CIDR",
                   help="internal address range, repeatable (default: the private and lab ranges: "
                   f"{', '.join(DEFAULT_HOME_NET)})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="host inventory from alert files (table, CSV, JSON, HTML)",
                       description="Read alert files (JSON lines of EVE, ECS or OCSF as this tool writes "
                       "them, gzip or plain) and list the internal hosts showing Kaspersky traffic: since "
                       "when, how strong the evidence, which product family and why.")
    p.add_argument("alerts", nargs="+", metavar="ALERTS", help="alert file(s)")
    p.add_argument("--format", "-f", choices=list(RENDERERS), help="default: from --output's extension, else table")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report here (default: standard output)")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary line on standard error")
    add_home_net(p)
    p.set_defaults(func=cmd_report)
