"""The HTML inventory page: one self-contained file (styles, script and charts inline; a
Content-Security-Policy forbids every network fetch), rendered by Jinja2 with
autoescaping on.  Strings from the wire pass the ``wire`` filter first, which turns
control characters and bidi overrides into visible ``\\uNNNN`` text, then autoescaping
turns ``<``, ``>``, ``&``, quotes into entities: a hostile name renders as text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from ..formats.common import SURROGATES, VISIBLE

TEMPLATES = Path(__file__).with_name("templates")
_SAFE = {**VISIBLE, **SURROGATES}
ROW_H, LABEL_W, CELL_W = 16, 150, 12


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


def render(view: dict[str, Any]) -> str:
    tl = view["timeline"]
    chart = {
        "row_h": ROW_H,
        "label_w": LABEL_W,
        "cell_w": CELL_W,
        "width": LABEL_W + CELL_W * max(tl["bins"], 1) + 10,
        "height": ROW_H * len(tl["rows"]) + 30,
    }
    cats = view["breakdown"]["categories"]
    cat_max = max((c["contacts"] for c in cats), default=1) or 1
    return _env().get_template("report.html.j2").render(v=view, s=view["summary"], tl=tl, chart=chart, cat_max=cat_max)
