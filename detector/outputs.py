"""Where alerts go: ``--output FORMAT:DESTINATION`` (repeatable), opened before any packet.

Spec grammar::

    SPEC        = [FORMAT ":"] DESTINATION
    FORMAT      = eve | ecs | cef | leef | ocsf        (detector.formats.FORMATS; default eve)
    DESTINATION = "-"                                 standard output
                | PATH ["?" OPTIONS]                  a file, appended to
                | SCHEME "://" HOST [":" PORT] [PATH] ["?" OPTIONS]
    OPTIONS     = KEY "=" VALUE ("&" KEY "=" VALUE)*  (URL-encoded)

So ``alerts.json`` and ``-`` keep meaning EVE to that file / to standard output, ``eve:-``
and ``ecs:/var/log/x.json`` name the format, ``cef:syslog+tls://siem:6514`` sends CEF in
syslog.  A prefix before ``:`` that is not a format is an error that lists the formats (to
write to a file whose name has a colon, give ``./a:b.json`` or ``eve:a:b.json``); a
``SCHEME://`` that is not in ``detector.sinks.SINKS`` is an error that lists the schemes.

Schemes (default port):

- ``syslog+udp`` (514), ``syslog+tcp`` (514, RFC 6587 octet counting), ``syslog+tls``
  (6514, RFC 5425): RFC 5424 messages; ``syslog3164+udp|tcp|tls`` for RFC 3164 receivers.
  Options: ``facility`` (local0 default, a name or 0-23), ``app_name`` (the 3164 TAG),
  ``msgid`` and ``sd_id`` (5424 only), ``ca`` (TLS).
- ``hec+https`` (8088): Splunk HEC; token in ``DETECTOR_HEC_TOKEN``.  Options ``index``,
  ``source``, ``sourcetype``, ``ca``.
- ``elastic+https`` (9200) ``/INDEX``: Elasticsearch/OpenSearch ``_bulk``; API key in
  ``DETECTOR_ELASTIC_API_KEY`` (``auth=none`` for a cluster without security).  ``ca``.
- every network scheme: ``queue`` (records held in memory, 10000), ``batch`` (records
  per send, 200), ``retry_max`` (longest wait between retries, 30 s), ``timeout`` (connect
  and send, 10 s); syslog also ``confirm`` (seconds before a sent message counts as
  delivered, 1).
- files: ``max_bytes`` and ``backups`` (size rotation, see ``sinks/file.py``); without
  them, rotate with logrotate and SIGHUP (``Outputs.reopen``).

Credentials are never part of a spec (a URL with ``user:password@`` is refused): they come
from the environment and are never printed, logged or shown in a ``repr``.

A network destination is connected to when it is opened: if it cannot be reached,
``open_outputs`` raises ``SinkError`` naming it, unless a spool directory is given (the
alerts then wait on disk until it answers).  A credential the collector refuses (HTTP 401
or 403 to an empty request at start) is an error with or without a spool.

Delivery (``sinks/delivery.py``): each network destination has a bounded queue and a
sender thread that retries with capped exponential backoff.  Alerts the queue cannot
hold, or that wait during an outage, go to ``SPOOL/<scheme>_<host>_<port>_<format>.spool``
(length-prefixed records, fsynced at close) and are sent first when the collector is
back, in this run or the next.  TCP, TLS and HTTP deliver at least once, in order (a
``_bulk`` item retried after a per-item 429 arrives after the items behind it that went
through); UDP is best effort.  What can be neither delivered nor spooled, and what a
collector refuses for good (kept in ``... .rejected`` beside the spool), is counted in
``stats()``/``summary_lines()`` and logged, never dropped silently.  ``close`` waits up to
its timeout for delivery, then spools what is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError, SinkError
from .formats import FORMATS, Formatter
from .model import Alert
from .sinks import DEFAULT_PORTS, OPTIONS, SINKS, OpenContext, Sink, Target

DEFAULT_SPEC = "-"
DEFAULT_FORMAT = "eve"
CLOSE_TIMEOUT = 10.0

_FORMAT_PREFIX = re.compile(r"^([a-z][a-z0-9_-]*):(?!//)(.*)$", re.DOTALL)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://", re.DOTALL)
_FILE_OPTIONS = re.compile(r"^[a-z_]+=[^&?]*(?:&[a-z_]+=[^&?]*)*$")


def _valid(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def parse_output(spec: str) -> Target:
    """One ``--output`` value -> a ``Target``; ``SinkError`` says what is wrong."""
    if not spec:
        raise SinkError("--output: empty destination")
    fmt, rest = DEFAULT_FORMAT, spec
    m = _FORMAT_PREFIX.match(spec)
    if m and not _URL.match(spec):
        if m.group(1) not in FORMATS:
            raise SinkError(
                f"--output {spec}: unknown output format {m.group(1)!r} (valid: {_valid(FORMATS)}; "
                f"for a file whose name has a colon write ./{spec})"
            )
        fmt, rest = m.group(1), m.group(2)
        if not rest:
            raise SinkError(f"--output {spec}: no destination after {fmt}:")
    u = _URL.match(rest)
    if not u:
        return _file_target(spec, fmt, rest)
    scheme = u.group(1).lower()
    if scheme == "file":
        return _file_target(spec, fmt, unquote(rest[len("file://"):]) or "/")
    if scheme not in SINKS:
        raise SinkError(f"--output {spec}: unknown destination scheme {scheme!r} "
                        f"(valid: {_valid(k + '://' for k in SINKS if k != 'file')}, a file path, or - for standard output)")
    return _url_target(spec, fmt, scheme, rest)


def _file_target(spec: str, fmt: str, path: str) -> Target:
    options: dict[str, str] = {}
    base, q, query = path.rpartition("?")
    if q and base and _FILE_OPTIONS.match(query):
        path = base
        options = _options(spec, query, "file")
    name = f"{fmt}:{path}"
    return Target(scheme="file", format=fmt, path=path, options=options, name=name)


def _options(spec: str, query: str, scheme: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SinkError(f"--output {spec}: options must be KEY=VALUE joined by &") from None
    valid = OPTIONS[scheme]
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in valid:
            raise SinkError(f"--output {spec}: unknown option {key!r} for {scheme} (valid: {_valid(valid)})")
        if key in out:
            raise SinkError(f"--output {spec}: option {key!r} given twice")
        out[key] = value
    return out


def _url_target(spec: str, fmt: str, scheme: str, rest: str) -> Target:
    u = urlsplit(rest)
    if "@" in u.netloc:
        # Never echo the spec: it holds a credential.
        env = "DETECTOR_HEC_TOKEN or DETECTOR_ELASTIC_API_KEY"
        raise SinkError(f"--output {scheme}://...: credentials do not belong in the URL (they would show in "
                        f"process lists and logs); give them in {env}")
    shown = spec.split("?", 1)[0]
    if u.fragment:
        raise SinkError(f"--output {shown}: a destination has no #fragment")
    try:
        port = u.port
    except ValueError:
        raise SinkError(f"--output {shown}: the port must be a number from 1 to 65535") from None
    host = u.hostname or ""
    if not host:
        raise SinkError(f"--output {shown}: no host name")
    port = port or DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise SinkError(f"--output {shown}: the port must be a number from 1 to 65535")
    path = unquote(u.path)
    if scheme != "elastic+https" and path not in ("", "/"):
        raise SinkError(f"--output {shown}: {scheme} takes no path (only HOST:PORT)")
    options = _options(spec, u.query, scheme) if u.query else {}
    netloc = f"[{host}]" if ":" in host else host
    name = f"{fmt}:{scheme}://{netloc}:{port}{path if scheme == 'elastic+https' else ''}"
    return Target(scheme=scheme, format=fmt, path=path, host=host, port=port, options=options, name=name)


class Outputs:
    """The opened destinations of a run; ``emit`` formats each alert once per format."""

    def __init__(self, outputs: list[tuple[Target, Formatter, Sink]]) -> None:
        self._outputs = outputs
        self._closed = False

    def emit(self, alert: Alert) -> None:
        """Hand one alert to every destination.  Network destinations never raise here."""
        cache: dict[str, bytes] = {}
        error: BaseException | None = None
        for target, fmt, sink in self._outputs:
            payload = cache.get(target.format)
            if payload is None:
                payload = cache[target.format] = fmt(alert)
            try:
                sink.emit(payload, alert)
            except (SinkError, BrokenPipeError) as exc:  # the others still get the alert
                error = error or exc
        if error is not None:
            raise error

    def flush(self, timeout: float = 5.0) -> bool:
        """Write out files; wait up to ``timeout`` for the network queues to drain."""
        end = time.monotonic() + timeout
        ok = True
        for _, _, sink in self._outputs:
            ok = sink.flush(max(0.0, end - time.monotonic())) and ok
        return ok

    def reopen(self) -> None:
        """Reopen files by name at the next write (after logrotate).  Signal-handler safe."""
        for _, _, sink in self._outputs:
            sink.reopen()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Flush everything, wait up to ``timeout`` for network delivery, spool what is left."""
        if self._closed:
            return
        self._closed = True
        end = time.monotonic() + timeout
        error: BaseException | None = None
        try:
            self.flush(timeout)  # all queues drain in parallel, each on its own thread
        except (SinkError, BrokenPipeError) as exc:
            error = exc
        for _, _, sink in self._outputs:
            try:
                sink.close(max(0.5, end - time.monotonic()))
            except (SinkError, BrokenPipeError) as exc:
                error = error or exc
        if error is not None:
            raise error

    def stats(self) -> dict[str, dict[str, int]]:
        """Per destination: delivered, queued, spooled, retried, failed (undeliverable), ..."""
        return {target.name: sink.stats() for target, _, sink in self._outputs}

    def summary_lines(self) -> list[str]:
        return [f"output {target.name}: {sink.summary()}" for target, _, sink in self._outputs]

    @property
    def undeliverable(self) -> int:
        return sum(sink.stats().get("failed", 0) for _, _, sink in self._outputs)

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outputs({[t.name for t, _, _ in self._outputs]!r})"


def open_outputs(
    specs: list[str] | None,
    *,
    spool_dir: str | None = None,
    ca: str | None = None,
    hostname: str | None = None,
) -> Outputs:
    """Parse and open every destination (standard output when ``specs`` is empty).

    Raises ``SinkError`` (all spec errors at once, or the first destination that cannot be
    opened, with the ones opened before it closed again) before any alert exists.
    """
    targets: list[Target] = []
    problems: list[str] = []
    for spec in specs or [DEFAULT_SPEC]:
        try:
            targets.append(parse_output(spec))
        except SinkError as exc:
            problems.append(str(exc))
    seen: set[tuple[str, str, str, int, str]] = set()
    for t in targets:
        key = (t.scheme, t.path, t.host, t.port, t.format)
        if key in seen and t.path != "-":
            problems.append(f"--output {t.name}: given twice")
        seen.add(key)
    if problems:
        raise SinkError("\n".join(problems))
    if ca is not None and not os.path.isfile(ca):
        raise SinkError(f"--ca {ca}: file not found")
    if spool_dir is not None:
        try:
            os.makedirs(spool_dir, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"--spool {spool_dir}: cannot create: {exc.strerror or exc}") from None
    ctx = OpenContext(hostname=hostname or socket.gethostname(), spool_dir=spool_dir, ca=ca)
    opened: list[tuple[Target, Formatter, Sink]] = []
    try:
        for t in targets:
            try:
                fmt = FORMATS[t.format]
            except KeyError:  # parse_output checked it; keep the registry the one truth
                raise ConfigError(f"unknown output format {t.format!r} (valid: {_valid(FORMATS)})") from None
            opened.append((t, fmt, SINKS[t.scheme](t, ctx)))
    except BaseException:
        for _, _, sink in opened:
            with contextlib.suppress(SinkError, OSError):
                sink.close(0.5)
        raise
    return Outputs(opened)
