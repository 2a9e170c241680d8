"""The HTML inventory page: one self-contained file (styles, script and charts inline; a
Content-Security-Policy forbids every network fetch), rendered by Jinja2 with
autoescaping on.  Strings from the wire pass the ``wire`` filter first, which turns
control characters and bidi overrides into visible ``\\uNNNN`` text, then autoescaping
turns ``<``, ``>``, ``&``, quotes into entities: a hostile name renders as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2

from ..formats.common import SURROGATES, VISIBLE

TEMPLATES = Path(__file__).with_name("templates")
_SAFE = {**VISIBLE, **SURROGATES}
ROW_H, LABEL_W, CELL_W = 16, 150, 12
# A page a browser opens comfortably: the first hosts of each table (most specific family,
# then most contacts), evidence rows for the first of them; the rest is counted on the
# page and is in the CSV and JSON reports.
MAX_TABLE_HOSTS = 5_000
MAX_EVIDENCE_HOSTS = 1_000


def wire(value: object) -> str:
    return str(value).translate(_SAFE)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every {{ }} is HTML-escaped, attributes included
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["wire"] = wire
    return env


def generate(view: dict[str, Any]) -> Iterator[str]:
    """The page in pieces (Jinja2's streaming ``generate``): one host at a time."""
    tl = view["timeline"]
    chart = {
        "row_h": ROW_H,
        "label_w": LABEL_W,
        "cell_w": CELL_W,
        "width": LABEL_W + CELL_W * max(tl["bins"], 1) + 10,
        "height": ROW_H * len(tl["rows"]) + 30,
    }
    hosts, website = view["hosts"], view["website_hosts"]
    hidden = {
        "hosts": max(0, len(hosts) - MAX_TABLE_HOSTS),
        "website": max(0, len(website) - MAX_TABLE_HOSTS),
        "evidence": max(0, min(len(hosts), MAX_TABLE_HOSTS) - MAX_EVIDENCE_HOSTS),
    }
    view = dict(view, hosts=hosts.head(MAX_TABLE_HOSTS), website_hosts=website.head(MAX_TABLE_HOSTS))
    cats = view["breakdown"]["categories"]
    cat_max = max((c["contacts"] for c in cats), default=1) or 1
    return _env().get_template("report.html.j2").generate(
        v=view, s=view["summary"], tl=tl, chart=chart, cat_max=cat_max, hidden=hidden,
        evidence_hosts=hosts.head(MAX_EVIDENCE_HOSTS),
    )  # fmt: skip


def render(view: dict[str, Any]) -> str:
    return "".join(generate(view))
