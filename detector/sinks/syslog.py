"""Syslog to a collector: UDP (RFC 5426), TCP with octet counting (RFC 6587 section 3.4.1)
and TLS (RFC 5425), each message an RFC 5424 envelope (or RFC 3164, ``syslog3164+...``)
from ``detector.formats.syslog`` around any format's record.

Framing: a UDP datagram is one message, without the record's newline; over TCP and TLS a
message is ``LENGTH SP MESSAGE`` (octet counting), so a message may hold any byte and
the receiver never has to guess where it ends.

Delivery (``delivery.QueuedSink``): plain syslog has no acknowledgements, so a message
written to a socket counts as delivered only after ``confirm_after`` seconds (default 1)
with the connection still up and the kernel's send queue empty, or when at close the
collector answers our end of stream by closing its side (it read everything before).  A
connection found closed or reset before that has its unconfirmed messages sent again
(at least once: a message can arrive twice, none is lost).  Before each write the socket
is checked for a close from the collector (as rsyslog's omfwd does), so a collector that
restarted gets a fresh connection instead of a write into the void.

UDP has no connection: a collector that is down is noticed only through the ICMP "port
unreachable" the kernel reports on the (connected) socket, which is reliable on a local
network and lost across most firewalls.  UDP is best effort; use TCP or TLS for
at-least-once delivery.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import socket
import ssl
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

from ..formats import syslog as syslog_format
from ..model import Alert
from .delivery import Encoder, Outcome, Transport, TransportError
from .net import connect_tcp, describe, peer_closed, wrap_tls

DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
FACILITIES = {f.name.lower(): int(f) for f in syslog_format.Facility}
#: spec options passed to the envelope, for each RFC
ENVELOPE_OPTIONS = {"5424": ("facility", "app_name", "msgid", "sd_id"), "3164": ("facility", "app_name")}


def facility(value: str) -> int:
    """``local0``..``local7``, any RFC 5424 facility name, or its number."""
    v = value.strip().lower()
    if v.isdigit() and 0 <= int(v) <= 23:
        return int(v)
    if v in FACILITIES:
        return FACILITIES[v]
    raise ValueError(f"unknown facility {value!r} (valid: {', '.join(FACILITIES)} or 0-23)")


def encoder(rfc: str, hostname: str, options: dict[str, str]) -> Encoder:
    """Alert payload -> one syslog message without its newline (framing is the sink's)."""
    kw: dict[str, Any] = {"hostname": hostname}
    if "facility" in options:
        kw["facility"] = facility(options["facility"])
    if rfc == "3164":
        if "app_name" in options:
            kw["tag"] = options["app_name"]
        wrap: Callable[..., bytes] = syslog_format.wrap_3164
    else:
        for key in ("app_name", "msgid", "sd_id"):
            if key in options:
                kw[key] = options[key]
        wrap = syslog_format.wrap

    def encode(payload: bytes, alert: Alert) -> bytes:
        msg = wrap(payload, alert, **kw)
        return msg[:-1] if msg.endswith(b"\n") else msg

    return encode


def _outq(sock: socket.socket) -> int:
    """Bytes not yet acknowledged by the peer (Linux SIOCOUTQ); 0 where unknown."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])
    except (OSError, AttributeError):
        return 0


class StreamTransport(Transport):
    """Octet-counted syslog over TCP, or over TLS when ``ctx`` is given."""

    confirms = False

    def __init__(self, host: str, port: int, *, ctx: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        self.host, self.port, self.ctx, self.timeout = host, port, ctx, timeout
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        self.close()
        sock = connect_tcp(self.host, self.port, self.timeout)
        self.sock = wrap_tls(sock, self.ctx, self.host) if self.ctx is not None else sock
        self.sock.settimeout(self.timeout)

    def send(self, records: list[bytes]) -> list[Outcome]:
        if self.sock is None:
            raise TransportError("not connected")
        data = b"".join(b"%d " % len(r) + r for r in records)
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(describe(exc)) from None
        return [Outcome.OK] * len(records)

    def healthy(self) -> bool:
        return self.sock is not None and not peer_closed(self.sock, self.timeout)

    def unsent_bytes(self) -> int:
        return _outq(self.sock) if self.sock is not None else 0

    def close_graceful(self, timeout: float) -> bool:
        """End our side and wait for the collector to close its own: it then read it all."""
        sock = self.sock
        self.sock = None
        if sock is None:
            return False
        end = time.monotonic() + timeout
        try:
            sock.settimeout(max(0.05, end - time.monotonic()))
            if isinstance(sock, ssl.SSLSocket):
                try:
                    raw = sock.unwrap()  # close_notify; the collector answers or closes
                except ssl.SSLEOFError:
                    return True  # it closed the connection after reading our close_notify
                except ssl.SSLError:
                    return False
            else:
                raw = sock
            raw.shutdown(socket.SHUT_WR)
            while time.monotonic() < end:
                raw.settimeout(max(0.05, end - time.monotonic()))
                if raw.recv(4096) == b"":
                    return True
            return False
        except (OSError, ssl.SSLError, ValueError):
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class DatagramTransport(Transport):
    """One syslog message per UDP datagram, on a connected socket (to hear ICMP errors)."""

    confirms = False

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        self.close()
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise TransportError(describe(exc)) from None
        self.sock = sock

    def send(self, records: list[bytes]) -> list[Outcome]:
        if self.sock is None:
            raise TransportError("not connected")
        out: list[Outcome] = []
        for r in records:
            try:
                self.sock.send(r)
                out.append(Outcome.OK)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    out.append(Outcome.REJECT)  # larger than a datagram can be
                    continue
                raise TransportError(describe(exc)) from None
        return out

    def healthy(self) -> bool:
        if self.sock is None:
            return False
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

    def close_graceful(self, timeout: float) -> bool:
        time.sleep(min(0.05, timeout))  # room for an ICMP error on the last datagrams
        ok = self.healthy()
        self.close()
        return ok

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
