"""What every exporter shares: options, the bundle type, writing a bundle (the one I/O here)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ..errors import ConfigError
from ..signatures import SignatureSet


@dataclass
class ExportOptions:
    suricata_version: int = 7
    datasets: bool | None = None  # None: automatic (large sets of exact names)
    previous: str | None = None  # text of an earlier rules file: rev is bumped where a rule changed
    rpz_action: str = "nxdomain"  # rpz: nxdomain | nodata | passthru (log only) | drop
    rpz_serial: int = 1
    hosts_address: str = "0.0.0.0"
    zeek_notice: bool = True
    notes: list[str] = field(default_factory=list)  # what could not be expressed (to stderr)


Bundle = dict[str, bytes]
Exporter = Callable[[SignatureSet, ExportOptions], Bundle]


def tar_gz(bundle: Bundle, mtime: int = 0) -> bytes:
    """A reproducible .tar.gz of the bundle (fixed mtime, owner and mode)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        dirs: set[str] = set()
        for path in bundle:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                    tf.addfile(info)
        for path, data in bundle.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tf.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def write_bundle(bundle: Bundle, output: str | None, stdout: IO[bytes] | None = None) -> list[str]:
    """Write the bundle (see ``_write``); an OSError is a ConfigError naming the path."""
    try:
        return _write(bundle, output, stdout)
    except OSError as exc:
        raise ConfigError(f"--output {output}: cannot write: {exc.strerror or exc}") from None


def _write(bundle: Bundle, output: str | None, stdout: IO[bytes] | None) -> list[str]:
    """Write the bundle: one file to ``output`` (or standard output when it is None or
    ``-``); several files into the directory ``output``, or one ``.tar.gz`` when
    ``output`` ends so.  Returns the paths written."""
    archive = len(bundle) == 1 and next(iter(bundle)).endswith((".tar.gz", ".tgz"))  # already one
    if output and output.endswith((".tar.gz", ".tgz")) and not archive:
        with open(output, "wb") as fh:
            fh.write(tar_gz(bundle))
        return [output]
    if len(bundle) == 1 and not (output and os.path.isdir(output)):
        (data,) = bundle.values()
        if not output or output == "-":
            assert stdout is not None
            stdout.write(data)
            stdout.flush()
            return ["-"]
        with open(output, "wb") as fh:
            fh.write(data)
        return [output]
    if not output or output == "-":
        raise ConfigError(f"this export is {len(bundle)} files ({', '.join(list(bundle)[:4])}...): "
                          "give --output DIRECTORY or --output FILE.tar.gz")
    written = []
    for rel, data in bundle.items():
        path = os.path.join(output, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        written.append(path)
    return written
