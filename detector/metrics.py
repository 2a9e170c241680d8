"""An optional Prometheus text endpoint (``detector live --metrics 127.0.0.1:9108``).

Standard library only: ``http.server`` in a daemon thread.  ``GET /metrics`` answers with
the text exposition format 0.0.4, rendered from a snapshot the controller replaces once a
second (a reference swap: the HTTP thread never touches live state).  Any other path is
404.  The socket is bound when the server is created, before the process drops its
privileges, and served after.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .config import parse_address

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Label values escape backslash, double quote and newline; HELP text backslash and newline.
_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # counter | gauge
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def _number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render(samples: Iterable[Sample]) -> str:
    """Samples -> exposition text; one HELP/TYPE block per metric name, in first-seen order."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.name, []).append(s)
    out: list[str] = []
    for name, group in groups.items():
        first = group[0]
        out.append(f"# HELP {name} {first.help.translate(_HELP_ESCAPES)}")
        out.append(f"# TYPE {name} {first.kind}")
        for s in group:
            if s.labels:
                lab = ",".join(f'{k}="{str(v).translate(_LABEL_ESCAPES)}"' for k, v in s.labels.items())
                out.append(f"{name}{{{lab}}} {_number(s.value)}")
            else:
                out.append(f"{name} {_number(s.value)}")
    return "\n".join(out) + "\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MetricsServer:
    """Binds at once (errors are ``OSError``); ``start()`` serves in a daemon thread."""

    def __init__(self, address: str, snapshot: Callable[[], str]) -> None:
        host, port = parse_address(address)
        self.snapshot = snapshot
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "detector-metrics"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = outer.snapshot().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # no line per scrape in the log

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
        self.httpd = server_class((host, port), Handler)
        self.address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True, name="metrics")
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
