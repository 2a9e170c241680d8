"""Alert -> bytes, one pure module per format.  ``FORMATS`` is the registry."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..model import Alert
from . import cef, ecs, eve, leef, ocsf

Formatter = Callable[[Alert], bytes]

FORMATS: dict[str, Formatter] = {
    "eve": eve.format_alert,
    "ecs": ecs.format_alert,
    "cef": cef.format_alert,
    "leef": leef.format_alert,
    "ocsf": ocsf.format_alert,
}


def get_format(name: str) -> Formatter:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown output format {name!r} (valid: {', '.join(sorted(FORMATS))})") from None
