"""A bounded cursor over bytes: every hand-written parser reads through it.

Reading past the end (or past a ``restrict`` window) raises ``DecodeError``; no
``IndexError`` or ``struct.error`` ever leaks.
"""

from __future__ import annotations

from ..errors import DecodeError


class Reader:
    __slots__ = ("_data", "_pos", "_end", "_what")

    def __init__(self, data: bytes, what: str = "message", start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self._what = what

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    @property
    def pos(self) -> int:
        return self._pos

    def _take(self, n: int) -> int:
        p = self._pos
        if n < 0 or p + n > self._end:
            raise DecodeError(f"truncated-{self._what}")
        self._pos = p + n
        return p

    def u8(self) -> int:
        return self._data[self._take(1)]

    def u16(self) -> int:
        p = self._take(2)
        d = self._data
        return (d[p] << 8) | d[p + 1]

    def u24(self) -> int:
        p = self._take(3)
        d = self._data
        return (d[p] << 16) | (d[p + 1] << 8) | d[p + 2]

    def u32(self) -> int:
        p = self._take(4)
        return int.from_bytes(self._data[p : p + 4], "big")

    def varint(self) -> int:
        """QUIC variable-length integer (RFC 9000, section 16)."""
        first = self.u8()
        length = 1 << (first >> 6)
        value = first & 0x3F
        for _ in range(length - 1):
            value = (value << 8) | self.u8()
        return value

    def bytes(self, n: int) -> bytes:
        p = self._take(n)
        return self._data[p : p + n]

    def skip(self, n: int) -> None:
        self._take(n)

    def restrict(self, n: int) -> Reader:
        """A reader over the next ``n`` bytes; this reader moves past them."""
        p = self._take(n)
        return Reader(self._data, self._what, p, p + n)

    def vector(self, len_bytes: int) -> Reader:
        """A length-prefixed vector (TLS style) as a sub-reader."""
        n = self.u8() if len_bytes == 1 else self.u16() if len_bytes == 2 else self.u24()
        return self.restrict(n)
