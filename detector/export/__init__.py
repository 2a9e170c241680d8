"""SignatureSet -> rule packs and lists for other engines, one module per backend.

Every exporter is a function ``(signatures, options) -> Bundle``: the files it produces,
by relative path, in order.  A one-file bundle can go to standard output; a bundle of
several files (rules + datasets, a Zeek package) goes to a directory, or to a ``.tar.gz``
(the layout ``suricata-update add-source`` accepts).  ``EXPORTERS`` is the registry; an
unknown name is an error that lists the valid ones.  Exporters are pure: no clock, no I/O
(``write_bundle`` is the one function here that writes).
"""

from __future__ import annotations

from ..errors import ConfigError
from . import lists, rpz, suricata, zeek
from .common import Bundle, Exporter, ExportOptions, tar_gz, write_bundle

EXPORTERS: dict[str, Exporter] = {
    "suricata": suricata.export_rules,
    "suricata-update": suricata.export_update_source,
    "zeek": zeek.export_package,
    "rpz": rpz.export_zone,
    "hosts": lists.export_hosts,
    "domains": lists.export_domains,
}

__all__ = ["EXPORTERS", "Bundle", "ExportOptions", "Exporter", "get_exporter", "tar_gz", "write_bundle"]


def get_exporter(name: str) -> Exporter:
    try:
        return EXPORTERS[name]
    except KeyError:
        raise ConfigError(f"unknown export format {name!r} (valid: {', '.join(sorted(EXPORTERS))})") from None
