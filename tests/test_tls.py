"""TLS ClientHello parsing (RFC 8446 section 4.1.2, RFC 6066 section 3, RFC 7301, RFC 8701)."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import DecodeError
from detector.parsers.tls import (
    ClientHello,
    looks_like_tls,
    parse_client_hello,
    parse_client_hello_message,
    version_name,
)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- builders ----------------------------------------------------------------------------

GREASE = (0x0A0A, 0x1A1A, 0x2A2A, 0xFAFA)


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def ext(etype: int, body: bytes) -> bytes:
    return u16(etype) + u16(len(body)) + body


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + u16(len(n)) + n for n in names)
    return ext(0, u16(len(entries)) + entries)


def alpn_ext(*protos: bytes) -> bytes:
    lst = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, u16(len(lst)) + lst)


def versions_ext(*versions: int) -> bytes:
    lst = b"".join(u16(v) for v in versions)
    return ext(43, bytes([len(lst)]) + lst)


def hello_body(
    extensions: bytes | None = b"",
    version: int = 0x0303,
    suites: tuple[int, ...] = (GREASE[0], 0x1301, 0x1302, 0xC02F),
    session_id: bytes = b"\x11" * 32,
) -> bytes:
    body = u16(version) + b"\x5a" * 32 + bytes([len(session_id)]) + session_id
    cs = b"".join(u16(s) for s in suites)
    body += u16(len(cs)) + cs + b"\x01\x00"  # one compression method: null
    if extensions is not None:
        body += u16(len(extensions)) + extensions
    return body


def handshake(body: bytes, htype: int = 1) -> bytes:
    return bytes([htype]) + u24(len(body)) + body


def records(hs: bytes, *cuts: int, ctype: int = 22, version: int = 0x0301) -> bytes:
    """Wrap a handshake message in TLS records, cut at the given handshake offsets."""
    out = b""
    bounds = [0, *cuts, len(hs)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out += bytes([ctype]) + u16(version) + u16(b - a) + hs[a:b]
    return out


def typical_extensions(host: bytes = b"activation-v2.kaspersky.com") -> bytes:
    return (
        ext(GREASE[1], b"")  # a GREASE extension (RFC 8701)
        + sni_ext(host)
        + ext(23, b"")  # extended_master_secret
        + alpn_ext(bytes([0x3A, 0x3A]), b"h2", b"http/1.1")  # GREASE ALPN value first
        + versions_ext(GREASE[2], 0x0304, 0x0303)
        + ext(GREASE[3], b"\x00")  # a second GREASE extension with another value
    )


def typical_hello(host: bytes = b"activation-v2.kaspersky.com") -> bytes:
    return records(handshake(hello_body(typical_extensions(host))))


def real_client_hello(server_hostname: str = "activation-v2.kaspersky.com") -> bytes:
    """The first flight of Python's own TLS client: real ClientHello bytes from OpenSSL."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    data = outgoing.read()
    assert data, "OpenSSL wrote no ClientHello"
    return data


@pytest.fixture(scope="module")
def real_hello() -> bytes:
    return real_client_hello()


# -- fields --------------------------------------------------------------------------------


def test_sni_alpn_and_version_from_built_hello() -> None:
    hello = parse_client_hello(typical_hello())
    assert hello == ClientHello(
        version=0x0304,
        server_name="activation-v2.kaspersky.com",
        alpn=("::", "h2", "http/1.1"),
        ech=False,
    )


def test_real_client_hello_from_openssl(real_hello: bytes) -> None:
    assert looks_like_tls(real_hello)
    hello = parse_client_hello(real_hello)
    assert isinstance(hello, ClientHello)
    assert hello.server_name == "activation-v2.kaspersky.com"
    assert hello.version in (0x0303, 0x0304)
    assert hello.ech is False


def test_real_client_hello_with_alpn() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname="s07.upd.kaspersky.com")
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    hello = parse_client_hello(outgoing.read())
    assert hello is not None
    assert hello.server_name == "s07.upd.kaspersky.com"
    assert hello.alpn == ("h2", "http/1.1")


def test_supported_versions_grease_only_keeps_legacy_version() -> None:
    hs = handshake(hello_body(versions_ext(GREASE[0], GREASE[1]), version=0x0303))
    assert parse_client_hello(records(hs)).version == 0x0303


def test_supported_versions_takes_highest_non_grease() -> None:
    hs = handshake(hello_body(versions_ext(0x0302, 0x0304, GREASE[3], 0x0303)))
    assert parse_client_hello(records(hs)).version == 0x0304


def test_no_sni_gives_none() -> None:
    hs = handshake(hello_body(alpn_ext(b"h2") + versions_ext(0x0304)))
    hello = parse_client_hello(records(hs))
    assert hello is not None
    assert hello.server_name is None
    assert hello.alpn == ("h2",)


def test_no_extensions_at_all() -> None:
    hs = handshake(hello_body(None, version=0x0301))
    assert parse_client_hello(records(hs)) == ClientHello(0x0301, None)


def test_empty_sni_extension_gives_none() -> None:
    hs = handshake(hello_body(ext(0, b"")))
    assert parse_client_hello(records(hs)).server_name is None


def test_sni_skips_non_host_name_entries() -> None:
    entries = bytes([1]) + u16(3) + b"xyz" + bytes([0]) + u16(5) + b"a.com"
    hs = handshake(hello_body(ext(0, u16(len(entries)) + entries)))
    assert parse_client_hello(records(hs)).server_name == "a.com"


def test_ech_extension_sets_ech() -> None:
    hs = handshake(hello_body(sni_ext(b"public.example.com") + ext(0xFE0D, b"\x00\x01\x02\x03")))
    hello = parse_client_hello(records(hs))
    assert hello.ech is True
    assert hello.server_name == "public.example.com"


def test_non_utf8_sni_is_escaped_not_raised() -> None:
    hs = handshake(hello_body(sni_ext(b"bad\xffname.com")))
    assert parse_client_hello(records(hs)).server_name == "bad\\xffname.com"


def test_trailing_records_after_the_hello_are_ignored() -> None:
    stream = typical_hello() + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x05hello"
    assert parse_client_hello(stream).server_name == "activation-v2.kaspersky.com"


def test_parse_client_hello_message_directly() -> None:
    hs = handshake(hello_body(typical_extensions(b"quic.example.com")))
    assert parse_client_hello_message(hs).server_name == "quic.example.com"


@pytest.mark.parametrize(
    ("v", "name"), [(0x0300, "SSLv3"), (0x0303, "TLS 1.2"), (0x0304, "TLS 1.3"), (0x7F1C, "0x7f1c")]
)
def test_version_name(v: int, name: str) -> None:
    assert version_name(v) == name


# -- records and prefixes ------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 40, -1])
def test_handshake_split_across_two_records(cut: int) -> None:
    hs = handshake(hello_body(typical_extensions()))
    cut = cut % len(hs)
    stream = records(hs, cut)
    assert stream != records(hs)
    assert parse_client_hello(stream) == parse_client_hello(records(hs))


def test_handshake_split_across_many_one_byte_records() -> None:
    hs = handshake(hello_body(sni_ext(b"tiny.example.com")))
    stream = records(hs, *range(1, len(hs)))
    assert parse_client_hello(stream).server_name == "tiny.example.com"


def _assert_prefixes(stream: bytes) -> None:
    for i in range(len(stream)):
        assert parse_client_hello(stream[:i]) is None, f"prefix of {i} bytes"
    assert isinstance(parse_client_hello(stream), ClientHello)


def test_every_prefix_of_built_hello_is_incomplete() -> None:
    _assert_prefixes(typical_hello())


def test_every_prefix_of_split_hello_is_incomplete() -> None:
    hs = handshake(hello_body(typical_extensions()))
    _assert_prefixes(records(hs, 2))
    _assert_prefixes(records(hs, 50, 51, 100))


def test_every_prefix_of_real_hello_is_incomplete(real_hello: bytes) -> None:
    _assert_prefixes(real_hello)


# -- malformed -----------------------------------------------------------------------------

_GOOD_HS = handshake(hello_body(sni_ext(b"a.example.com")))


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (records(_GOOD_HS, ctype=23), "tls-not-handshake"),  # application data
        (records(_GOOD_HS, ctype=21), "tls-not-handshake"),  # alert
        (records(_GOOD_HS, version=0x0203), "tls-not-handshake"),  # SSLv2-ish major
        (b"GET / HTTP/1.1\r\n\r\n", "tls-not-handshake"),
        (records(_GOOD_HS, 10, ctype=22)[:15] + b"\x17\x03\x03\x00\x05hello", "tls-not-handshake"),
        (records(handshake(hello_body(), htype=2)), "tls-not-client-hello"),  # ServerHello
        (records(handshake(b"", htype=11)), "tls-not-client-hello"),  # Certificate
        (b"\x16\x03\x01\x00\x00", "tls-bad-record-length"),
        (b"\x16\x03\x01\x48\x01" + b"\x01", "tls-bad-record-length"),  # 0x4801 > 2^14 + 2048
        (b"\x16\x03\x01\xff\xff", "tls-bad-record-length"),
        (b"\x16\x03\x01\x00\x04\x01\x01\x00\x00", "tls-client-hello-too-long"),
        (records(handshake(hello_body(suites=()))), "tls-bad-cipher-suites"),
        (records(handshake(hello_body(sni_ext(b"")))), "tls-empty-server-name"),
        (records(handshake(hello_body(sni_ext(b"a.com") + sni_ext(b"b.com")))), "tls-duplicate-extension"),
        (records(handshake(hello_body(ext(GREASE[0], b"") + ext(GREASE[0], b"")))), "tls-duplicate-extension"),
        # complete handshake message whose inner lengths overrun it
        (records(handshake(hello_body()[:-1])), "truncated-tls-client-hello"),
        (records(handshake(b"\x03\x03" + b"\x00" * 10)), "truncated-tls-client-hello"),
        (records(handshake(hello_body(ext(0, b"\x00\x09\x00\x00\x05a.com")))), "truncated-tls-client-hello"),
    ],
)
def test_malformed_raises_with_reason(stream: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        parse_client_hello(stream)
    assert exc.value.reason == reason


def test_cipher_suites_odd_length_row() -> None:
    # hand-built: cipher suite vector of length 3
    body = u16(0x0303) + b"\x00" * 32 + b"\x00" + u16(3) + b"\x13\x01\x13" + b"\x01\x00"
    with pytest.raises(DecodeError) as exc:
        parse_client_hello(records(handshake(body)))
    assert exc.value.reason == "tls-bad-cipher-suites"


def test_duplicate_extension_raises() -> None:
    hs = handshake(hello_body(alpn_ext(b"h2") + sni_ext(b"x.com") + alpn_ext(b"h2")))
    with pytest.raises(DecodeError) as exc:
        parse_client_hello(records(hs))
    assert exc.value.reason == "tls-duplicate-extension"


# -- sniffing ------------------------------------------------------------------------------


def test_looks_like_tls() -> None:
    assert looks_like_tls(typical_hello())
    assert looks_like_tls(typical_hello()[:6])
    assert not looks_like_tls(typical_hello()[:5])  # needs the handshake type
    assert not looks_like_tls(records(handshake(hello_body(), htype=2)))  # ServerHello
    assert not looks_like_tls(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not looks_like_tls(b"CONNECT a:443 HTTP/1.1\r\n\r\n")
    assert not looks_like_tls(b"")
    assert not looks_like_tls(records(_GOOD_HS, ctype=23))
    assert not looks_like_tls(b"\x16\x03\x05\x00\x10\x01")  # minor version beyond TLS 1.3


# -- fuzz ----------------------------------------------------------------------------------


def _check_outcome(stream: bytes) -> None:
    try:
        out = parse_client_hello(stream)
    except DecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert out is None or isinstance(out, ClientHello)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_outcome(data)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_behind_a_handshake_header(data: bytes) -> None:
    # Get past the record/handshake checks so the body parser sees the noise.
    _check_outcome(records(handshake(data)))
    try:
        out = parse_client_hello_message(handshake(data))
    except DecodeError:
        return
    assert isinstance(out, ClientHello)


_VALID = typical_hello()


@st.composite
def mutated_hello(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([_VALID, records(handshake(hello_body(typical_extensions())), 7)])))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 4))]
        else:
            del data[i:]
    return bytes(data)


@FUZZ
@given(mutated_hello())
def test_fuzz_mutations_of_valid_hello(data: bytes) -> None:
    _check_outcome(data)


# -- the indexed extension loop reads as the plain Reader loop did -------------------------------
def _reference_hello(hs: bytes) -> ClientHello:
    """``parse_client_hello_message`` as it was, every extension through a sub-Reader: the
    reference the indexed loop must agree with, value or error."""
    from detector.parsers.reader import Reader
    from detector.parsers.tls import ExtensionType, _server_name

    r = Reader(hs, "tls-client-hello")
    if r.u8() != 1:
        raise DecodeError("tls-not-client-hello")
    body = r.restrict(r.u24())
    version = body.u16()
    body.skip(32)
    body.skip(body.u8())
    suites = body.u16()
    if suites % 2 or suites == 0:
        raise DecodeError("tls-bad-cipher-suites")
    body.skip(suites)
    body.skip(body.u8())
    server_name, alpn, ech = None, [], False
    if body.remaining == 0:
        return ClientHello(version, None)
    exts = body.vector(2)
    seen: set[int] = set()
    while exts.remaining:
        etype = exts.u16()
        e = exts.vector(2)
        if etype in seen:
            raise DecodeError("tls-duplicate-extension")
        seen.add(etype)
        if etype == ExtensionType.SERVER_NAME:
            server_name = _server_name(e)
        elif etype == ExtensionType.ALPN and e.remaining:
            protos = e.vector(2)
            while protos.remaining:
                alpn.append(protos.bytes(protos.u8()).decode("ascii", "backslashreplace"))
        elif etype == ExtensionType.SUPPORTED_VERSIONS and e.remaining:
            versions = e.vector(1)
            best = 0
            while versions.remaining >= 2:
                v = versions.u16()
                if v & 0x0F0F != 0x0A0A:
                    best = max(best, v)
            version = best or version
        elif etype == ExtensionType.ENCRYPTED_CLIENT_HELLO:
            ech = True
    return ClientHello(version, server_name, tuple(alpn), ech)


def _outcome(f, hs: bytes) -> object:
    try:
        return f(hs)
    except DecodeError as exc:
        return ("error", exc.reason)


_HELLO_MSG = handshake(hello_body(typical_extensions() + ext(0xFE0D, b"\x00\x01") + ext(13, b"\x00\x02\x04\x03")))


@settings(max_examples=3000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, len(_HELLO_MSG) - 1), st.integers(0, 255)), max_size=4),
       st.integers(0, len(_HELLO_MSG)))
def test_extension_loop_matches_the_reader_loop(edits: list[tuple[int, int]], keep: int) -> None:
    buf = bytearray(_HELLO_MSG)
    for i, v in edits:
        buf[i] = v
    hs = bytes(buf[:keep])
    assert _outcome(parse_client_hello_message, hs) == _outcome(_reference_hello, hs)


def test_extension_loop_matches_on_a_real_hello(real_hello: bytes) -> None:
    hs = real_hello[5:]
    for n in range(len(hs) + 1):
        assert _outcome(parse_client_hello_message, hs[:n]) == _outcome(_reference_hello, hs[:n])
