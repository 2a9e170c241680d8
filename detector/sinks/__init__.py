"""Bytes -> somewhere, one module per transport.  ``SINKS`` maps a scheme to an opener.

Every sink takes ``emit(payload, alert)`` (``payload`` is one record of any format, ending
in a newline; ``alert`` is there for envelopes that need its time or severity), and has
``flush(timeout)``, ``close(timeout)``, ``reopen()``, ``stats()`` and ``summary()``.
``detector.outputs`` parses ``--output`` specs into a ``Target`` and calls the opener.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import SinkError
from ..model import Alert
from . import http, syslog
from .delivery import QueuedSink, Transport
from .file import FileSink
from .net import secret_from_env, tls_context
from .spool import Spool, spool_name

HEC_TOKEN_ENV = "DETECTOR_HEC_TOKEN"
ELASTIC_KEY_ENV = "DETECTOR_ELASTIC_API_KEY"


class Sink(Protocol):
    name: str

    def emit(self, payload: bytes, alert: Alert) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def close(self, timeout: float) -> None: ...

    def reopen(self) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def summary(self) -> str: ...


@dataclass(frozen=True)
class Target:
    """One parsed destination (no credentials in it: those come from the environment)."""

    scheme: str  # a key of SINKS
    format: str  # a key of detector.formats.FORMATS
    path: str = ""  # file path, "-", or the URL path
    host: str = ""
    port: int = 0
    options: dict[str, str] = field(default_factory=dict)
    name: str = ""  # for messages: FORMAT:DESTINATION without options

    def opt_int(self, key: str, default: int, minimum: int = 1) -> int:
        raw = self.options.get(key)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) < minimum:
            raise SinkError(f"{self.name}: option {key} must be an integer of at least {minimum}, not {raw!r}")
        return int(raw)

    def opt_float(self, key: str, default: float) -> float:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value < 1e6:
            raise SinkError(f"{self.name}: option {key} must be a positive number of seconds, not {raw!r}")
        return value


@dataclass(frozen=True)
class OpenContext:
    """What every opener may need besides the target: the CLI's --spool, --ca, --sensor-name."""

    hostname: str
    spool_dir: str | None = None
    ca: str | None = None


Opener = Callable[[Target, OpenContext], Sink]

QUEUE_OPTIONS = ("queue", "batch", "retry_max", "timeout")
STREAM_OPTIONS = ("confirm",)
#: the options each scheme accepts after ``?`` (anything else is an error listing these)
OPTIONS: dict[str, tuple[str, ...]] = {
    "file": ("max_bytes", "backups"),
    "syslog+udp": (*syslog.ENVELOPE_OPTIONS["5424"], *QUEUE_OPTIONS, *STREAM_OPTIONS),
    "syslog+tcp": (*syslog.ENVELOPE_OPTIONS["5424"], *QUEUE_OPTIONS, *STREAM_OPTIONS),
    "syslog+tls": (*syslog.ENVELOPE_OPTIONS["5424"], *QUEUE_OPTIONS, *STREAM_OPTIONS, "ca"),
    "syslog3164+udp": (*syslog.ENVELOPE_OPTIONS["3164"], *QUEUE_OPTIONS, *STREAM_OPTIONS),
    "syslog3164+tcp": (*syslog.ENVELOPE_OPTIONS["3164"], *QUEUE_OPTIONS, *STREAM_OPTIONS),
    "syslog3164+tls": (*syslog.ENVELOPE_OPTIONS["3164"], *QUEUE_OPTIONS, *STREAM_OPTIONS, "ca"),
    "hec+https": ("index", "source", "sourcetype", "ca", *QUEUE_OPTIONS),
    "elastic+https": ("auth", "ca", *QUEUE_OPTIONS),
}


def open_file(t: Target, ctx: OpenContext) -> Sink:
    max_bytes = t.opt_int("max_bytes", 0) if "max_bytes" in t.options else None
    backups = t.opt_int("backups", 5)
    if t.path == "-" and max_bytes is not None:
        raise SinkError(f"{t.name}: standard output cannot be rotated (max_bytes)")
    sink = FileSink(t.path, max_bytes=max_bytes, backups=backups)
    sink.name = t.name
    return sink


def _queued(t: Target, ctx: OpenContext, transport: Transport, encode: syslog.Encoder) -> Sink:
    spool = None
    if ctx.spool_dir:
        spool = Spool(ctx.spool_dir, spool_name(t.scheme, t.host, str(t.port), t.path, t.format))
    sink = QueuedSink(
        t.name, transport, encode,
        spool=spool,
        queue_max=t.opt_int("queue", 10_000),
        batch_max=t.opt_int("batch", 200),
        retry_max=t.opt_float("retry_max", 30.0),
        retry_initial=min(0.5, t.opt_float("retry_max", 30.0)),
        confirm_after=t.opt_float("confirm", 1.0),
    )  # fmt: skip
    try:
        sink.start()
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    return sink


def _ca(t: Target, ctx: OpenContext) -> str | None:
    ca = t.options.get("ca") or ctx.ca
    if ca and not os.path.isfile(ca):
        raise SinkError(f"{t.name}: CA file {ca} not found")
    return ca


def open_syslog(t: Target, ctx: OpenContext) -> Sink:
    kind, transport_name = t.scheme.split("+")
    rfc = "3164" if kind == "syslog3164" else "5424"
    try:
        encode = syslog.encoder(rfc, ctx.hostname, t.options)
    except ValueError as exc:
        raise SinkError(f"{t.name}: {exc}") from None
    timeout = t.opt_float("timeout", 10.0)
    transport: Transport
    if transport_name == "udp":
        transport = syslog.DatagramTransport(t.host, t.port)
    elif transport_name == "tcp":
        transport = syslog.StreamTransport(t.host, t.port, timeout=timeout)
    else:
        ctx_tls = tls_context(_ca(t, ctx), t.name)
        transport = syslog.StreamTransport(t.host, t.port, ctx=ctx_tls, timeout=timeout)
    return _queued(t, ctx, transport, encode)


def open_hec(t: Target, ctx: OpenContext) -> Sink:
    secret = secret_from_env(HEC_TOKEN_ENV, t.name)
    transport = http.HecTransport(t.host, t.port, tls_context(_ca(t, ctx), t.name), secret=secret,
                                  timeout=t.opt_float("timeout", 10.0))
    return _queued(t, ctx, transport, http.hec_encoder(t.format, ctx.hostname, t.options))


def open_elastic(t: Target, ctx: OpenContext) -> Sink:
    auth = t.options.get("auth", "apikey")
    if auth not in ("apikey", "none"):
        raise SinkError(f"{t.name}: option auth must be apikey (from {ELASTIC_KEY_ENV}) or none, not {auth!r}")
    secret = secret_from_env(ELASTIC_KEY_ENV, t.name) if auth == "apikey" else None
    prefix, _, index = t.path.rstrip("/").rpartition("/")
    if not http.INDEX_NAME.match(index) or index in (".", ".."):
        raise SinkError(f"{t.name}: {index!r} is not an index name (lower case, no \\ / * ? \" < > | , # : or space)"
                        if index else f"{t.name}: the URL must end with the index: elastic+https://HOST:PORT/INDEX")
    transport = http.ElasticTransport(t.host, t.port, tls_context(_ca(t, ctx), t.name), index=index, prefix=prefix,
                                      secret=secret, timeout=t.opt_float("timeout", 10.0))
    return _queued(t, ctx, transport, http.elastic_encoder(t.format))


SINKS: dict[str, Opener] = {
    "file": open_file,
    "syslog+udp": open_syslog,
    "syslog+tcp": open_syslog,
    "syslog+tls": open_syslog,
    "syslog3164+udp": open_syslog,
    "syslog3164+tcp": open_syslog,
    "syslog3164+tls": open_syslog,
    "hec+https": open_hec,
    "elastic+https": open_elastic,
}

DEFAULT_PORTS: dict[str, int] = {
    **{f"{k}+{t}": p for k in ("syslog", "syslog3164") for t, p in syslog.DEFAULT_PORTS.items()},
    "hec+https": 8088,
    "elastic+https": 9200,
}
