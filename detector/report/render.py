"""Inventory view -> text: ``table`` (terminal), ``csv`` (spreadsheets), ``json`` (tickets),
``html`` (``html.py``).  ``RENDERERS`` is the registry.  Pure: returns a string.

Escaping, per format, for strings that came from the wire (names, endpoints, MACs):

- table: control characters, ESC, C1, bidi controls and lone surrogates become visible
  ``\\xNN`` / ``\\uNNNN`` text (no terminal escape sequence can pass); colour only when
  asked for (the CLI asks when the output is a terminal and ``NO_COLOR`` is unset).
- csv: the same, and a cell starting with ``= + - @`` (a spreadsheet formula) gets a
  leading ``'`` (OWASP's CSV-injection advice).
- json: ``ensure_ascii``: every non-ASCII and control character is a ``\\uXXXX`` escape.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from ..formats.common import VISIBLE, no_surrogates

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
COLOURS = {"family": "\x1b[1;31m", "website": "\x1b[33m", "head": "\x1b[1m", "dim": "\x1b[2m", "reset": "\x1b[0m"}
MAX_CELL = 60


def clean(text: object) -> str:
    return str(text).translate(VISIBLE)


def _cut(text: str, n: int = MAX_CELL) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _cats(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


TABLE_COLUMNS = ("host", "MAC", "name", "family", "evidence", "categories", "first seen", "last seen", "status", "alerts")


def _table_rows(hosts: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            h["ip"], h["mac"] or "-", h["names"] or "-", h["family"], h["strength"], _cats(h["categories"]),
            h["first_seen"], h["last_seen"], "active" if h["status"] == "active" else "quiet", str(h["alerts"]),
        ]
        for h in hosts
    ]


def _grid(rows: list[list[str]], colour: bool, hl: str) -> list[str]:
    rows = [[_cut(clean(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [list(TABLE_COLUMNS), *rows]) for i in range(len(TABLE_COLUMNS))]
    c = COLOURS if colour else dict.fromkeys(COLOURS, "")
    out = [c["head"] + "  ".join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths, strict=True)).rstrip() + c["reset"]]
    for r in rows:
        cells = [v.ljust(w) for v, w in zip(r, widths, strict=True)]
        cells[3] = c[hl] + cells[3] + c["reset"]
        out.append("  ".join(cells).rstrip())
    return out


def render_table(view: dict[str, Any], colour: bool = False) -> str:
    s = view["summary"]
    lines = [clean(s["line"]), ""]
    if view["hosts"]:
        lines.append("Hosts with Kaspersky product traffic:")
        lines += _grid(_table_rows(view["hosts"]), colour, "family")
        lines.append("")
        lines.append("Why (product family):")
        for h in view["hosts"]:
            lines.append(f"  {clean(h['ip'])}: {clean(h['reason'])}")
        lines.append("")
    if view["website_hosts"]:
        lines.append("Hosts that only visited Kaspersky websites (no product traffic):")
        lines += _grid(_table_rows(view["website_hosts"]), colour, "website")
        lines.append("")
    if not view["hosts"] and not view["website_hosts"]:
        lines.append("No internal host shows Kaspersky traffic.")
    return "\n".join(lines).rstrip("\n") + "\n"


CSV_COLUMNS = (
    "ip", "mac", "hostnames", "product_traffic", "family", "reason", "strength", "strongest_evidence",
    "first_seen_utc", "last_seen_utc", "status", "alerts", "contacts", "categories", "evidence_kinds", "endpoints",
)  # fmt: skip


def _csv_cell(v: object) -> str:
    s = clean(v)
    return "'" + s if s.startswith(FORMULA_START) else s


def render_csv(view: dict[str, Any], colour: bool = False) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for h in view["hosts"] + view["website_hosts"]:
        w.writerow([_csv_cell(v) for v in (
            h["ip"], h["mac"], h["names"], "no" if h["website_only"] else "yes", h["family"], h["reason"],
            h["strength"], h["strongest"], h["first_seen"], h["last_seen"], h["status"], h["alerts"], h["contacts"],
            _cats(h["categories"]), _cats(h["evidence"]), _cats(h["endpoints"]),
        )])  # fmt: skip
    return buf.getvalue()


def render_json(view: dict[str, Any], colour: bool = False) -> str:
    return json.dumps(no_surrogates(view), ensure_ascii=True, indent=1) + "\n"


def render_html(view: dict[str, Any], colour: bool = False) -> str:
    from .html import render

    return render(view)


RENDERERS: dict[str, Callable[..., str]] = {
    "table": render_table,
    "csv": render_csv,
    "json": render_json,
    "html": render_html,
}
EXTENSIONS = {".html": "html", ".htm": "html", ".csv": "csv", ".json": "json", ".txt": "table"}
