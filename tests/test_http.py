"""HTTP/1.x request heads (RFC 9112): Host, absolute-form targets, CONNECT."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import DecodeError
from detector.parsers.http import (
    MAX_HEAD,
    HttpRequest,
    authority_host,
    looks_like_http,
    parse_request,
    target_host,
)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEAD = (
    b"GET /activationservice/activationservice.svc HTTP/1.1\r\n"
    b"Host: activation-v2.kaspersky.com\r\n"
    b"User-Agent: KES/11.6\r\n"
    b"Accept: */*\r\n"
    b"\r\n"
)


def test_basic_request() -> None:
    req = parse_request(HEAD + b"trailing body bytes")
    assert req == HttpRequest(
        method="GET",
        target="/activationservice/activationservice.svc",
        version="HTTP/1.1",
        host="activation-v2.kaspersky.com",
        user_agent="KES/11.6",
        head_len=len(HEAD),
        body_len=0,
    )


@pytest.mark.parametrize(
    ("host_value", "host"),
    [
        (b"upd.kaspersky.com:8080", "upd.kaspersky.com"),
        (b"[2001:db8::1]:8080", "2001:db8::1"),
        (b"[2001:db8::1]", "2001:db8::1"),
        (b"crl.kaspersky.com.", "crl.kaspersky.com."),  # trailing dot kept; the matcher drops it
        (b"crl.kaspersky.com.:80", "crl.kaspersky.com."),
        (b"  spaced.example.com  ", "spaced.example.com"),
        (b"2001:db8::1", "2001:db8::1"),  # bare IPv6 (invalid but seen): not cut at a colon
    ],
)
def test_host_header_and_authority_host(host_value: bytes, host: str) -> None:
    req = parse_request(b"GET / HTTP/1.1\r\nHost: " + host_value + b"\r\n\r\n")
    assert req is not None
    assert req.host == host_value.strip().decode()
    assert authority_host(req.host) == host


def test_first_host_header_wins_and_name_is_case_insensitive() -> None:
    req = parse_request(b"GET / HTTP/1.1\r\nhOsT: first.example\r\nHost: second.example\r\n\r\n")
    assert req.host == "first.example"


def test_missing_host() -> None:
    req = parse_request(b"GET / HTTP/1.0\r\n\r\n")
    assert req.host is None
    assert req.version == "HTTP/1.0"
    assert target_host(req.method, req.target) is None


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("http://upd.kaspersky.com/index.xml", "upd.kaspersky.com"),
        ("http://upd.kaspersky.com:8080/x", "upd.kaspersky.com"),
        ("http://user:pw@upd.kaspersky.com/x", "upd.kaspersky.com"),
        ("https://[2001:db8::1]:8443/", "2001:db8::1"),
        ("HTTP://Mixed.Example.COM?q=1", "Mixed.Example.COM"),
        ("http://dot.example.com./", "dot.example.com."),
        ("/relative/path", None),
        ("*", None),
        ("http:///nohost", None),
    ],
)
def test_absolute_form_target(target: str, host: str | None) -> None:
    req = parse_request(f"GET {target} HTTP/1.1\r\nHost: other.example\r\n\r\n".encode())
    assert req.target == target
    assert target_host(req.method, req.target) == host


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("ksc.kaspersky.com:443", "ksc.kaspersky.com"),
        ("[2001:db8::2]:443", "2001:db8::2"),
        ("noport.example.com", "noport.example.com"),
    ],
)
def test_connect_authority(target: str, host: str) -> None:
    req = parse_request(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert req.method == "CONNECT"
    assert target_host(req.method, req.target) == host


def test_bare_lf_line_endings() -> None:
    head = b"POST /x HTTP/1.1\nHost: lf.example.com\nContent-Length: 12\n\n"
    req = parse_request(head + b"hello world!")
    assert req.method == "POST"
    assert req.host == "lf.example.com"
    assert req.head_len == len(head)
    assert req.body_len == 12


def test_mixed_line_endings_end_at_first_blank_line() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a.example\n\r\n"
    req = parse_request(head + b"GET /2 HTTP/1.1\n\n")
    assert req.head_len == len(head)
    assert req.host == "a.example"


def test_head_len_allows_pipelining() -> None:
    second = b"GET /two HTTP/1.1\r\nHost: b.example\r\n\r\n"
    req = parse_request(HEAD + second)
    assert req.head_len == len(HEAD)
    nxt = parse_request((HEAD + second)[req.head_len :])
    assert nxt.target == "/two"
    assert nxt.host == "b.example"


@pytest.mark.parametrize(
    ("headers", "body_len"),
    [
        (b"Content-Length: 1234\r\n", 1234),
        (b"content-length:0\r\n", 0),
        (b"Content-Length: abc\r\n", -1),
        (b"Content-Length: -5\r\n", -1),
        (b"Content-Length: 99999999999999999999\r\n", -1),
        (b"Transfer-Encoding: chunked\r\n", -1),
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", -1),
        (b"", 0),
    ],
)
def test_body_length(headers: bytes, body_len: int) -> None:
    req = parse_request(b"POST /up HTTP/1.1\r\nHost: x.example\r\n" + headers + b"\r\n")
    assert req.body_len == body_len


def test_transfer_encoding_overrides_later_content_length() -> None:
    # RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, in either order
    req = parse_request(
        b"POST /up HTTP/1.1\r\nHost: x.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    )
    assert req.body_len == -1


def test_user_agent_and_obs_fold_lines_are_tolerated() -> None:
    req = parse_request(
        b"GET / HTTP/1.1\r\nUser-Agent: Agent/1.0\r\n continued fold line\r\nno colon here\r\nHost: h.example\r\n\r\n"
    )
    assert req.user_agent == "Agent/1.0"
    assert req.host == "h.example"


def test_non_utf8_host_is_escaped_not_raised() -> None:
    req = parse_request(b"GET / HTTP/1.1\r\nHost: bad\xff.example\r\n\r\n")
    assert req.host == "bad\\xff.example"


# -- incomplete and malformed --------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [HEAD, b"GET / HTTP/1.1\nHost: lf.example.com\n\n", b"CONNECT a.example:443 HTTP/1.1\r\n\r\n"],
)
def test_every_prefix_is_incomplete(head: bytes) -> None:
    for i in range(len(head)):
        assert parse_request(head[:i]) is None, f"prefix of {i} bytes"
    assert isinstance(parse_request(head), HttpRequest)


def test_head_too_long_without_terminator() -> None:
    stream = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD
    with pytest.raises(DecodeError) as exc:
        parse_request(stream)
    assert exc.value.reason == "http-head-too-long"


def test_head_too_long_with_terminator_far_away() -> None:
    stream = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n"
    with pytest.raises(DecodeError) as exc:
        parse_request(stream)
    assert exc.value.reason == "http-head-too-long"


def test_head_just_under_the_limit_is_incomplete_not_an_error() -> None:
    stream = b"GET / HTTP/1.1\r\nX-Pad: "
    stream += b"a" * (MAX_HEAD - len(stream))
    assert len(stream) == MAX_HEAD
    assert parse_request(stream) is None


@pytest.mark.parametrize(
    "head",
    [
        b"FOO / HTTP/1.1\r\n\r\n",  # not a known method
        b"get / HTTP/1.1\r\n\r\n",  # lower-case method
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",  # two spaces
        b"GET / HTTP/11\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"GET HTTP/1.1\r\n\r\n",  # no target
        b"GET / HTTP/1.1\r\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",  # leading blank line
        b"\x16\x03\x01\x00\x05\n\n",
    ],
)
def test_bad_request_line(head: bytes) -> None:
    with pytest.raises(DecodeError) as exc:
        parse_request(head)
    assert exc.value.reason == "http-bad-request-line"


# -- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"GET / HTTP/1.1\r\n", True),
        (b"CONNECT a:443 HTTP/1.1", True),
        (b"PROPPATCH /x HTTP/1.1", True),
        (b"POST ", True),
        (b"GET", False),  # no space yet
        (b"get / HTTP/1.1", False),
        (b"FOO / HTTP/1.1", False),
        (b" GET / HTTP/1.1", False),
        (b"\x16\x03\x01\x02\x00\x01", False),
        (b"", False),
        (b"ABCDEFGHIJKLMNOP / HTTP/1.1", False),
    ],
)
def test_looks_like_http(first: bytes, expected: bool) -> None:
    assert looks_like_http(first) is expected


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("a.example:80", "a.example"),
        ("a.example", "a.example"),
        ("[::1]:80", "::1"),
        ("[::1", "[::1"),  # unclosed bracket: returned as is
        ("  a.example:80 ", "a.example"),
    ],
)
def test_authority_host(authority: str, host: str) -> None:
    assert authority_host(authority) == host


# -- fuzz ----------------------------------------------------------------------------------


def _check_outcome(stream: bytes) -> None:
    try:
        out = parse_request(stream)
    except DecodeError as exc:
        assert exc.reason in ("http-head-too-long", "http-bad-request-line")
        return
    assert out is None or isinstance(out, HttpRequest)
    if out is not None:
        assert 0 < out.head_len <= len(stream)
        assert out.body_len >= -1
        target_host(out.method, out.target)  # must not raise either
        if out.host is not None:
            authority_host(out.host)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_outcome(data)


_PIECES = [
    b"GET ", b"CONNECT ", b"POST ", b"/", b"http://", b"[", b"]", b":", b"@", b"a.example", b"8080",
    b" HTTP/1.1", b"\r\n", b"\n", b"Host: ", b"Content-Length: ", b"Transfer-Encoding: chunked",
    b"12", b"\xff", b" ", b"\x00",
]


@FUZZ
@given(st.lists(st.sampled_from(_PIECES), max_size=30))
def test_fuzz_http_like_token_soup(pieces: list[bytes]) -> None:
    _check_outcome(b"".join(pieces))


@FUZZ
@given(st.data())
def test_fuzz_mutations_of_valid_head(data: st.DataObject) -> None:
    buf = bytearray(HEAD)
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(buf) - 1)) if buf else 0
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set" and buf:
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif buf:
            del buf[i : i + data.draw(st.integers(1, 4))]
    _check_outcome(bytes(buf))
