"""What the network sinks share: secrets that never print, TLS contexts, connecting.

Certificate verification is always on: the collector's certificate must chain to the
system's trust store, or to the ``ca`` file given (per destination, or ``--ca`` for all),
and name the host of the destination (DNS name or IP address in subjectAltName).  There
is no switch to turn it off.
"""

from __future__ import annotations

import os
import select
import socket
import ssl

from ..errors import SinkError
from .delivery import TransportError


class Secret:
    """A credential: ``repr``/``str`` never show it; ``reveal()`` does, for the one header."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the secret replaced (for a collector's answer)."""
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled")


def secret_from_env(var: str, what: str) -> Secret:
    value = os.environ.get(var, "").strip()
    if not value:
        raise SinkError(f"{what}: the environment variable {var} is not set (it holds the credential)")
    if any(c in value for c in "\r\n\0"):
        raise SinkError(f"{what}: the environment variable {var} holds a line break or NUL")
    return Secret(value)


def tls_context(ca: str | None, what: str) -> ssl.SSLContext:
    """A client context: verification and host name check on, TLS 1.2 or later."""
    try:
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise SinkError(f"{what}: cannot load the CA file {ca}: {getattr(exc, 'strerror', None) or exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def describe(exc: BaseException) -> str:
    """A short reason for a network failure (no traceback, no credentials: none are in it)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror or exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(describe(exc)) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def wrap_tls(sock: socket.socket, ctx: ssl.SSLContext, host: str) -> ssl.SSLSocket:
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise TransportError(describe(exc)) from None


def peer_closed(sock: socket.socket, timeout: float | None) -> bool:
    """True if the peer closed or reset the connection (checked without blocking).

    Our collectors send nothing unasked, so anything readable on an idle connection is a
    close, a reset, or TLS housekeeping (a session ticket), which ``recv`` consumes.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        sock.setblocking(False)
        try:
            data = sock.recv(4096)
        finally:
            sock.settimeout(timeout)
        return data == b""
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
        return False
    except (OSError, ssl.SSLError, ValueError):
        return True
