"""Alert -> bytes, one pure module per format.  ``FORMATS`` is the registry."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..model import Alert
from . import eve

Formatter = Callable[[Alert], bytes]

FORMATS: dict[str, Formatter] = {
    "eve": eve.format_alert,
}


def get_format(name: str) -> Formatter:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown output format {name!r} (valid: {', '.join(sorted(FORMATS))})") from None
