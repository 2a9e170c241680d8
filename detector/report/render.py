"""Inventory view -> text: ``table`` (terminal), ``csv`` (spreadsheets), ``json`` (tickets),
``html`` (``html.py``).  ``RENDERERS`` is the registry: each yields the text in pieces, one
host at a time, so a large inventory is written without building it whole in memory
(``render_*`` join them, for small reports and tests).  Pure.

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
from collections.abc import Callable, Iterable, Iterator
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


def _table_row(h: dict[str, Any]) -> list[str]:
    row = [
        h["ip"], h["mac"] or "-", h["names"] or "-", h["family"], h["strength"], _cats(h["categories"]),
        h["first_seen"], h["last_seen"], "active" if h["status"] == "active" else "quiet", str(h["alerts"]),
    ]  # fmt: skip
    return [_cut(clean(c)) for c in row]


def _light(hosts: Any) -> Any:
    """Hosts without evidence rows when the list can leave them out (table and CSV)."""
    return hosts.light() if hasattr(hosts, "light") else hosts


def _grid(hosts: Iterable[dict[str, Any]], colour: bool, hl: str) -> Iterator[str]:
    widths = [len(c) for c in TABLE_COLUMNS]
    for h in hosts:  # first pass: column widths
        widths = [max(w, len(v)) for w, v in zip(widths, _table_row(h), strict=True)]
    c = COLOURS if colour else dict.fromkeys(COLOURS, "")
    yield c["head"] + "  ".join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths, strict=True)).rstrip() + c["reset"] + "\n"
    for h in hosts:
        cells = [v.ljust(w) for v, w in zip(_table_row(h), widths, strict=True)]
        cells[3] = c[hl] + cells[3] + c["reset"]
        yield "  ".join(cells).rstrip() + "\n"


def iter_table(view: dict[str, Any], colour: bool = False) -> Iterator[str]:
    yield clean(view["summary"]["line"]) + "\n"
    if len(view["hosts"]):
        yield "\nHosts with Kaspersky product traffic:\n"
        yield from _grid(_light(view["hosts"]), colour, "family")
        yield "\nWhy (product family):\n"
        for h in view["hosts"]:
            yield f"  {clean(h['ip'])}: {clean(h['reason'])}\n"
    if len(view["website_hosts"]):
        yield "\nHosts that only visited Kaspersky websites (no product traffic):\n"
        yield from _grid(_light(view["website_hosts"]), colour, "website")
    if not len(view["hosts"]) and not len(view["website_hosts"]):
        yield "\nNo internal host shows Kaspersky traffic.\n"


CSV_COLUMNS = (
    "ip", "mac", "hostnames", "product_traffic", "family", "reason", "strength", "strongest_evidence",
    "first_seen_utc", "last_seen_utc", "status", "alerts", "contacts", "categories", "evidence_kinds", "endpoints",
)  # fmt: skip


def _csv_cell(v: object) -> str:
    s = clean(v)
    return "'" + s if s.startswith(FORMULA_START) else s


def iter_csv(view: dict[str, Any], colour: bool = False) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for hosts in (view["hosts"], view["website_hosts"]):
        for h in _light(hosts):
            w.writerow([_csv_cell(v) for v in (
                h["ip"], h["mac"], h["names"], "no" if h["website_only"] else "yes", h["family"], h["reason"],
                h["strength"], h["strongest"], h["first_seen"], h["last_seen"], h["status"], h["alerts"],
                h["contacts"], _cats(h["categories"]), _cats(h["evidence"]), _cats(h["endpoints"]),
            )])  # fmt: skip
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _json(value: Any) -> str:
    return json.dumps(no_surrogates(value), ensure_ascii=True)


def iter_json(view: dict[str, Any], colour: bool = False) -> Iterator[str]:
    """One JSON document: summary, breakdown, timeline, then one host per line."""
    yield "{"
    for key in ("summary", "breakdown", "timeline"):
        yield f'"{key}": {_json(view[key])},\n'
    for i, key in enumerate(("hosts", "website_hosts")):
        yield f'"{key}": ['
        for n, h in enumerate(view[key]):
            yield (",\n" if n else "\n") + _json(h)
        yield "]" + (",\n" if i == 0 else "")
    yield "}\n"


def iter_html(view: dict[str, Any], colour: bool = False) -> Iterator[str]:
    from .html import generate

    return generate(view)


RENDERERS: dict[str, Callable[..., Iterator[str]]] = {
    "table": iter_table,
    "csv": iter_csv,
    "json": iter_json,
    "html": iter_html,
}
EXTENSIONS = {".html": "html", ".htm": "html", ".csv": "csv", ".json": "json", ".txt": "table"}


def render(fmt: str, view: dict[str, Any], colour: bool = False) -> str:
    return "".join(RENDERERS[fmt](view, colour))


def render_table(view: dict[str, Any], colour: bool = False) -> str:
    return render("table", view, colour)


def render_csv(view: dict[str, Any], colour: bool = False) -> str:
    return render("csv", view)


def render_json(view: dict[str, Any], colour: bool = False) -> str:
    return render("json", view)
