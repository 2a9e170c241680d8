"""IPv4 (with options) and IPv6 (with extension headers), and bounded fragment reassembly.

``IPDecoder.decode(version, data, offset, ts)`` returns ``(src, dst, proto, l4)`` where
``l4`` is the transport header and payload, or ``None`` while a fragmented datagram is
incomplete.  Malformed headers raise ``DecodeError``.

After each ``decode`` the decoder says two more things about the datagram it returned:
``length``, its IP length (IPv4 total length, IPv6 40 + payload length; for a reassembled
datagram, the whole datagram's), and ``cut``, how many of its bytes the capture's snaplen
left out.  Only an unfragmented UDP datagram may come back cut (a DNS message whose first
bytes still hold whole names); anything else cut short raises ``truncated-ipv4/6``.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections import OrderedDict

from ..errors import DecodeError


class IPProto(enum.IntEnum):
    """IANA protocol numbers (RFC 790 and successors) used by the decoder."""

    HOPOPT = 0
    TCP = 6
    UDP = 17
    IPV6_ROUTE = 43
    IPV6_FRAG = 44
    ESP = 50
    AH = 51
    IPV6_NONXT = 59
    IPV6_OPTS = 60
    MOBILITY = 135
    HIP = 139
    SHIM6 = 140


# Extension headers with the generic (next header, length in 8-octet units) layout.
GENERIC_EXT = frozenset(
    (IPProto.HOPOPT, IPProto.IPV6_ROUTE, IPProto.IPV6_OPTS, IPProto.MOBILITY, IPProto.HIP, IPProto.SHIM6)
)
MAX_EXT_HEADERS = 16
MAX_FRAGMENTS = 256  # per datagram (64 KiB in 8-byte pieces would be 8192: a memory attack)
FRAGMENT_OVERHEAD = 96  # bytes a held fragment costs beyond its payload (dict slot, bytes object)

IPResult = tuple[str, str, int, bytes]


class _Pending:
    __slots__ = ("first_ts", "parts", "size", "total")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.parts: dict[int, bytes] = {}
        self.size = 0
        self.total = -1  # known once the last fragment arrived


class IPDecoder:
    """Decodes IP headers and owns the fragment table (bounded in count, bytes and time)."""

    def __init__(self, max_datagrams: int = 4096, max_bytes: int = 16 << 20, timeout: float = 30.0) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._frags: OrderedDict[tuple[bytes, bytes, int, int], _Pending] = OrderedDict()
        self._frag_bytes = 0
        self.fragments = 0
        self.reassembled = 0
        self.frag_evicted = 0  # incomplete datagrams dropped (time out, table or byte budget full)
        self.frag_too_many = 0  # datagrams dropped for more than MAX_FRAGMENTS pieces
        self._addr_cache: dict[bytes, str] = {}
        self.length = 0  # IP length of the datagram the last decode() returned
        self.cut = 0  # bytes of it the snaplen left out (unfragmented UDP only)

    # -- addresses ---------------------------------------------------------------------
    def _addr(self, raw: bytes) -> str:
        s = self._addr_cache.get(raw)
        if s is None:
            if len(self._addr_cache) > 65536:
                self._addr_cache.clear()
            s = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
            self._addr_cache[raw] = s
        return s

    # -- headers -----------------------------------------------------------------------
    def plain_ethernet_ipv4(self, data: bytes) -> IPResult | None:
        """The common frame in a few slices: untagged Ethernet II carrying IPv4 without
        options, not a fragment, whole in the capture.  Exactly what ``strip_link`` and
        ``decode`` give for it (``test_ip`` checks); None for any other frame, which then
        takes that general path."""
        if len(data) < 34 or data[12] != 8 or data[13] or data[14] != 0x45 or data[20] & 0x3F or data[21]:
            return None
        total = (data[16] << 8) | data[17]
        if total < 20 or 14 + total > len(data):
            return None
        self.length, self.cut = total, 0
        return self._addr(data[26:30]), self._addr(data[30:34]), data[23], data[34 : 14 + total]

    def decode(self, version: int, data: bytes, off: int, ts: float) -> IPResult | None:
        if version == 4:
            return self._ipv4(data, off, ts)
        return self._ipv6(data, off, ts)

    def _ipv4(self, data: bytes, off: int, ts: float) -> IPResult | None:
        if len(data) < off + 20:
            raise DecodeError("truncated-ipv4")
        vihl, total, ident, frag, proto = struct.unpack_from("!BxHHHxB", data, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20:
            raise DecodeError("bad-ipv4-header")
        if total < ihl:
            if total == 0:  # TSO on the capturing host: length left 0; use what we have
                total = len(data) - off
            else:
                raise DecodeError("bad-ipv4-length")
        end = off + total
        more = frag & 0x2000
        frag_off = (frag & 0x1FFF) * 8
        self.length, self.cut = total, 0
        if end > len(data):
            if proto != IPProto.UDP or more or frag_off or len(data) < off + ihl + 8:
                raise DecodeError("truncated-ipv4")  # snapped or cut short
            self.cut, end = end - len(data), len(data)
        src = data[off + 12 : off + 16]
        dst = data[off + 16 : off + 20]
        payload = data[off + ihl : end]
        if more or frag_off:
            whole = self._fragment((src, dst, ident, proto), frag_off, bool(more), payload, ts)
            if whole is None:
                return None
            payload = whole
            self.length = ihl + len(whole)
        return self._addr(src), self._addr(dst), proto, payload

    def _ipv6(self, data: bytes, off: int, ts: float) -> IPResult | None:
        if len(data) < off + 40:
            raise DecodeError("truncated-ipv6")
        if data[off] >> 4 != 6:
            raise DecodeError("bad-ipv6-header")
        plen, nxt = struct.unpack_from("!HB", data, off + 4)
        src = data[off + 8 : off + 24]
        dst = data[off + 24 : off + 40]
        end = off + 40 + plen
        if plen == 0:  # jumbogram or TSO: take what is there
            end = len(data)
        self.length, self.cut = end - off, 0
        if end > len(data):
            cut = end - len(data)
            end = len(data)
            nxt, pos, frag = _walk_ext(data, off + 40, end, nxt)
            if nxt != IPProto.UDP or frag is not None or end < pos + 8:
                raise DecodeError("truncated-ipv6")
            self.cut = cut
            return self._addr(src), self._addr(dst), nxt, data[pos:end]
        nxt, pos, frag = _walk_ext(data, off + 40, end, nxt)
        payload = data[pos:end]
        if frag is not None:
            frag_off, more, ident = frag
            whole = self._fragment((src, dst, ident, -1), frag_off, more, payload, ts)
            if whole is None:
                return None
            # The fragmentable part may begin with more extension headers.
            unfragmentable = pos - off - 48  # extension headers before the fragment header
            nxt, pos, frag = _walk_ext(whole, 0, len(whole), nxt)
            if frag is not None:
                raise DecodeError("nested-ipv6-fragment")
            payload = whole[pos:]
            self.length = 40 + unfragmentable + len(whole)
        return self._addr(src), self._addr(dst), nxt, payload

    # -- fragments ---------------------------------------------------------------------
    def _fragment(
        self, key: tuple[bytes, bytes, int, int], offset: int, more: bool, payload: bytes, ts: float
    ) -> bytes | None:
        self.fragments += 1
        self._expire(ts)
        pend = self._frags.get(key)
        if pend is None:
            pend = _Pending(ts)
            self._frags[key] = pend
            while len(self._frags) > self.max_datagrams or self._frag_bytes > self.max_bytes:
                self._drop_oldest()
        if offset not in pend.parts:
            if len(pend.parts) >= MAX_FRAGMENTS:
                del self._frags[key]
                self._frag_bytes -= pend.size
                self.frag_too_many += 1
                raise DecodeError("ip-too-many-fragments")
            pend.parts[offset] = payload
            cost = len(payload) + FRAGMENT_OVERHEAD
            pend.size += cost
            self._frag_bytes += cost
            while self._frag_bytes > self.max_bytes and self._frags:
                self._drop_oldest()
            if key not in self._frags:
                return None  # this datagram itself was over the budget
        if not more:
            pend.total = offset + len(payload)
        if pend.total < 0 or pend.size < pend.total:
            return None
        # All bytes present (overlaps make size >= total): assemble in offset order,
        # a later-offset fragment overwriting an overlap.
        out = bytearray()
        for off in sorted(pend.parts):
            if off > len(out):
                return None  # a hole: wait for more
            part = pend.parts[off]
            if off + len(part) > len(out):
                out[off:] = part
        del self._frags[key]
        self._frag_bytes -= pend.size
        self.reassembled += 1
        return bytes(out[: pend.total])

    def _drop_oldest(self) -> None:
        _, old = self._frags.popitem(last=False)
        self._frag_bytes -= old.size
        self.frag_evicted += 1

    def _expire(self, ts: float) -> None:
        while self._frags:
            key = next(iter(self._frags))
            if ts - self._frags[key].first_ts <= self.timeout:
                break
            self._drop_oldest()


def _walk_ext(data: bytes, pos: int, end: int, nxt: int) -> tuple[int, int, tuple[int, bool, int] | None]:
    """Skip IPv6 extension headers; stop at the upper layer or at a real fragment header.

    Returns (next header, position, (offset, more, id) or None).  An atomic fragment
    (offset 0, no more fragments; RFC 6946) is a whole datagram and is skipped like any
    other extension header.
    """
    for _ in range(MAX_EXT_HEADERS):
        if nxt in GENERIC_EXT:
            if pos + 8 > end:
                raise DecodeError("truncated-ipv6-ext")
            nxt, hlen = data[pos], data[pos + 1]
            pos += (hlen + 1) * 8
        elif nxt == IPProto.AH:
            if pos + 8 > end:
                raise DecodeError("truncated-ipv6-ext")
            nxt, hlen = data[pos], data[pos + 1]
            pos += (hlen + 2) * 4
        elif nxt == IPProto.IPV6_FRAG:
            if pos + 8 > end:
                raise DecodeError("truncated-ipv6-ext")
            nxt, fo, ident = struct.unpack_from("!BxHI", data, pos)
            pos += 8
            if fo & 0xFFF9:  # offset or M flag set: a real fragment
                return nxt, pos, (fo & 0xFFF8, bool(fo & 1), ident)
        else:
            if pos > end:
                raise DecodeError("truncated-ipv6-ext")
            return nxt, pos, None
    raise DecodeError("too-many-ipv6-ext")
