"""HTTP/1.x request heads (RFC 9112): the Host header, absolute-form targets and CONNECT.

``parse_request(stream)`` takes the first bytes a client sent and returns an
``HttpRequest`` once the head (request line and header fields) is complete, ``None``
while it needs more bytes, and raises ``DecodeError`` when the bytes are not an HTTP
request or the head grows past ``MAX_HEAD``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DecodeError

MAX_HEAD = 16 * 1024
METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY MOVE "
    b"LOCK UNLOCK SEARCH REPORT".split()
)
_REQUEST_LINE = re.compile(rb"([A-Z]{3,10}) ([^ \r\n]{1,8192}) HTTP/(\d)\.(\d)\r?$")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#]*)")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    version: str
    host: str | None  # the Host header field value, as sent
    user_agent: str | None
    head_len: int  # bytes of the head, including the blank line
    body_len: int  # Content-Length, 0 when absent, -1 when chunked or unknown


def looks_like_http(first: bytes | bytearray) -> bool:
    """Cheap content sniff: the stream starts with a known method and a space."""
    sp = first.find(b" ", 0, 12)
    return sp > 0 and bytes(first[:sp]) in METHODS


def parse_request(stream: bytes) -> HttpRequest | None:
    end = stream.find(b"\n\r\n")
    end2 = stream.find(b"\n\n")
    if end < 0 or (0 <= end2 < end):
        end = end2
    if end < 0:
        if len(stream) > MAX_HEAD:
            raise DecodeError("http-head-too-long")
        return None
    if end > MAX_HEAD:
        raise DecodeError("http-head-too-long")
    head_len = end + (3 if stream[end : end + 3] == b"\n\r\n" else 2)
    lines = stream[:end].split(b"\n")
    m = _REQUEST_LINE.match(lines[0])
    if not m or m.group(1) not in METHODS:
        raise DecodeError("http-bad-request-line")
    host = user_agent = None
    body_len = 0
    chunked = False  # Transfer-Encoding overrides Content-Length (RFC 9112 section 6.3)
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # obs-fold or junk: ignored, not fatal
        lname = name.strip().lower()
        if lname == b"host" and host is None:
            host = _text(value.strip())
        elif lname == b"user-agent" and user_agent is None:
            user_agent = _text(value.strip())
        elif lname == b"content-length":
            v = value.strip()
            body_len = int(v) if v.isdigit() and len(v) < 16 else -1
        elif lname == b"transfer-encoding":
            chunked = True
    return HttpRequest(
        method=m.group(1).decode("ascii"),
        target=_text(m.group(2)),
        version=f"HTTP/{m.group(3).decode()}.{m.group(4).decode()}",
        host=host,
        user_agent=user_agent,
        head_len=head_len,
        body_len=-1 if chunked else body_len,
    )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def authority_host(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> host (userinfo already removed)."""
    a = authority.strip()
    if a.startswith("["):
        close = a.find("]")
        return a[1:close] if close > 0 else a
    if a.count(":") == 1:
        return a.rsplit(":", 1)[0]
    return a


def target_host(method: str, target: str) -> str | None:
    """The host named by the request target: CONNECT authority or absolute-form URI."""
    if method == "CONNECT":
        return authority_host(target) or None
    m = _ABSOLUTE.match(target)
    if m:
        return authority_host(m.group(1)) or None
    return None
