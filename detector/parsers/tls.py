"""TLS ClientHello (RFC 8446 section 4.1.2; RFC 5246 section 7.4.1.2) and its server name
(RFC 6066 section 3).

``parse_client_hello(stream)`` takes the first bytes a client sent on a connection (TLS
records, possibly cut anywhere) and returns a ``ClientHello`` once the whole handshake
message is there, ``None`` while it needs more bytes, and raises ``DecodeError`` when the
bytes are not a ClientHello.  The handshake message may span several records and several
TCP segments; the caller reassembles the byte stream, this module the records.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import DecodeError
from .reader import Reader


class ContentType(enum.IntEnum):
    HANDSHAKE = 22  # RFC 8446 section 5.1


class HandshakeType(enum.IntEnum):
    CLIENT_HELLO = 1  # RFC 8446 section 4
    SERVER_HELLO = 2
    CERTIFICATE = 11
    SERVER_HELLO_DONE = 14


class ExtensionType(enum.IntEnum):
    SERVER_NAME = 0  # RFC 6066
    ALPN = 16  # RFC 7301
    SUPPORTED_VERSIONS = 43  # RFC 8446
    ENCRYPTED_CLIENT_HELLO = 0xFE0D  # draft-ietf-tls-esni


NAME_TYPE_HOST_NAME = 0
MAX_RECORD = (1 << 14) + 2048  # RFC 8446 section 5.2 ceiling for any record
MAX_HELLO = 1 << 16  # a ClientHello larger than this is not credible


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int  # legacy_version, or the highest supported_versions entry
    server_name: str | None
    alpn: tuple[str, ...] = ()
    ech: bool = False


def looks_like_tls(first: bytes | bytearray) -> bool:
    """Cheap content sniff on a stream's first bytes: a TLS record carrying a ClientHello.

    Needs six bytes (record header and handshake type), so a server's first flight
    (ServerHello) is told apart and never reaches the parser.
    """
    return (
        len(first) >= 6
        and first[0] == ContentType.HANDSHAKE
        and first[1] == 3
        and first[2] <= 4
        and first[5] == HandshakeType.CLIENT_HELLO
    )


def _handshake_bytes(stream: bytes) -> bytes | None:
    """Concatenate handshake-record fragments until one whole handshake message is there."""
    hs = bytearray()
    pos = 0
    need = -1
    while True:
        if need >= 0 and len(hs) >= need:
            return bytes(hs[:need])
        if len(stream) - pos < 5:
            return None
        ctype, major, length = stream[pos], stream[pos + 1], (stream[pos + 3] << 8) | stream[pos + 4]
        if ctype != ContentType.HANDSHAKE or major != 3:
            raise DecodeError("tls-not-handshake")
        if length == 0 or length > MAX_RECORD:
            raise DecodeError("tls-bad-record-length")
        frag = stream[pos + 5 : pos + 5 + length]
        hs += frag
        pos += 5 + length
        if need < 0 and len(hs) >= 4:
            if hs[0] != HandshakeType.CLIENT_HELLO:
                raise DecodeError("tls-not-client-hello")
            need = 4 + ((hs[1] << 16) | (hs[2] << 8) | hs[3])
            if need > MAX_HELLO:
                raise DecodeError("tls-client-hello-too-long")
        if len(frag) < length:  # record itself incomplete
            if need >= 0 and len(hs) >= need:
                return bytes(hs[:need])
            return None


def parse_client_hello(stream: bytes) -> ClientHello | None:
    hs = _handshake_bytes(stream)
    if hs is None:
        return None
    return parse_client_hello_message(hs)


_READ_EXTENSIONS = frozenset({ExtensionType.SERVER_NAME, ExtensionType.ALPN, ExtensionType.SUPPORTED_VERSIONS})


def parse_client_hello_message(hs: bytes) -> ClientHello:
    """Parse one complete handshake message (type, u24 length, body); used by QUIC too."""
    r = Reader(hs, "tls-client-hello")
    if r.u8() != HandshakeType.CLIENT_HELLO:
        raise DecodeError("tls-not-client-hello")
    body = r.restrict(r.u24())
    version = body.u16()
    body.skip(32)  # random
    body.skip(body.u8())  # legacy_session_id
    suites = body.u16()
    if suites % 2 or suites == 0:
        raise DecodeError("tls-bad-cipher-suites")
    body.skip(suites)
    body.skip(body.u8())  # legacy_compression_methods
    server_name: str | None = None
    alpn: list[str] = []
    ech = False
    if body.remaining == 0:
        return ClientHello(version, None)  # SSLv3/TLS 1.0 era hello without extensions
    exts = body.vector(2)
    seen: set[int] = set()
    # The extension headers are read by index (a ClientHello carries a dozen or more); a
    # Reader is made only for the three read further.  Same bounds, same errors.
    pos, end = exts.pos, exts.pos + exts.remaining
    while pos < end:
        if pos + 4 > end:
            raise DecodeError("truncated-tls-client-hello")
        etype, n = (hs[pos] << 8) | hs[pos + 1], (hs[pos + 2] << 8) | hs[pos + 3]
        pos += 4
        if pos + n > end:
            raise DecodeError("truncated-tls-client-hello")
        start, pos = pos, pos + n
        if etype in seen:
            raise DecodeError("tls-duplicate-extension")  # RFC 8446 section 4.2
        seen.add(etype)
        if etype not in _READ_EXTENSIONS:
            if etype == ExtensionType.ENCRYPTED_CLIENT_HELLO:
                ech = True
            continue
        ext = Reader(hs, "tls-client-hello", start, pos)
        if etype == ExtensionType.SERVER_NAME:
            server_name = _server_name(ext)
        elif etype == ExtensionType.ALPN and ext.remaining:
            protos = ext.vector(2)
            while protos.remaining:
                alpn.append(protos.bytes(protos.u8()).decode("ascii", "backslashreplace"))
        elif etype == ExtensionType.SUPPORTED_VERSIONS and ext.remaining:
            versions = ext.vector(1)
            best = 0
            while versions.remaining >= 2:
                v = versions.u16()
                if v & 0x0F0F != 0x0A0A:  # skip GREASE (RFC 8701)
                    best = max(best, v)
            version = best or version
    return ClientHello(version, server_name, tuple(alpn), ech)


def _server_name(ext: Reader) -> str | None:
    if not ext.remaining:
        return None  # empty extension (a server's echo; never sent by clients)
    names = ext.vector(2)
    while names.remaining:
        ntype = names.u8()
        raw = names.bytes(names.u16())
        if ntype == NAME_TYPE_HOST_NAME:
            if not raw:
                raise DecodeError("tls-empty-server-name")
            return raw.decode("utf-8", "backslashreplace")
    return None


TLS_VERSIONS = {0x0300: "SSLv3", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}


def version_name(v: int) -> str:
    return TLS_VERSIONS.get(v, f"0x{v:04x}")


@dataclass(frozen=True, slots=True)
class ServerFlight:
    """What a server's first flight says: the negotiated version and, for TLS 1.2 and
    older (where it travels in clear), the certificate chain (DER, leaf first)."""

    version: int
    certificates: tuple[bytes, ...] = ()


def looks_like_server_hello(first: bytes | bytearray) -> bool:
    return (
        len(first) >= 6
        and first[0] == ContentType.HANDSHAKE
        and first[1] == 3
        and first[5] == HandshakeType.SERVER_HELLO
    )


def _messages(stream: bytes, limit: int = MAX_HELLO) -> tuple[list[bytes], bool]:
    """Whole handshake messages from the start of a record stream, and whether the
    handshake records ended (another content type follows)."""
    hs = bytearray()
    pos = 0
    while len(stream) - pos >= 5:
        ctype, length = stream[pos], (stream[pos + 3] << 8) | stream[pos + 4]
        if ctype != ContentType.HANDSHAKE:
            return _split_messages(bytes(hs)), True
        if length == 0 or length > MAX_RECORD:
            raise DecodeError("tls-bad-record-length")
        hs += stream[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(hs) > limit:
            raise DecodeError("tls-server-flight-too-long")
    return _split_messages(bytes(hs)), False


def _split_messages(hs: bytes) -> list[bytes]:
    out = []
    pos = 0
    while len(hs) - pos >= 4:
        n = 4 + ((hs[pos + 1] << 16) | (hs[pos + 2] << 8) | hs[pos + 3])
        if len(hs) - pos < n:
            break
        out.append(hs[pos : pos + n])
        pos += n
    return out


def parse_server_flight(stream: bytes) -> ServerFlight | None:
    """ServerHello (and Certificate, for TLS 1.2 and older) from the server's first bytes."""
    msgs, ended = _messages(stream)
    if not msgs:
        return ServerFlight(0) if ended else None
    r = Reader(msgs[0], "tls-server-hello")
    if r.u8() != HandshakeType.SERVER_HELLO:
        raise DecodeError("tls-not-server-hello")
    body = r.restrict(r.u24())
    version = body.u16()
    body.skip(32)
    body.skip(body.u8())
    body.skip(3)  # cipher suite, compression method
    if body.remaining:
        exts = body.vector(2)
        while exts.remaining:
            etype = exts.u16()
            ext = exts.vector(2)
            if etype == ExtensionType.SUPPORTED_VERSIONS and ext.remaining >= 2:
                version = ext.u16()
    if version >= 0x0304:
        return ServerFlight(version)  # the certificate is encrypted from here on
    for msg in msgs[1:]:
        if msg[0] == HandshakeType.CERTIFICATE:
            cr = Reader(msg, "tls-certificate")
            cr.skip(4)
            chain = cr.vector(3)
            certs = []
            while chain.remaining:
                certs.append(chain.bytes(chain.u24()))
            return ServerFlight(version, tuple(certs))
        if msg[0] == HandshakeType.SERVER_HELLO_DONE:
            return ServerFlight(version)
    return ServerFlight(version) if ended else None
