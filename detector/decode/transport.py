"""TCP (RFC 9293) and UDP (RFC 768) headers."""

from __future__ import annotations

import struct

from ..errors import DecodeError

_TCP = struct.Struct("!HHIIBB")
_UDP = struct.Struct("!HHH")


def tcp(l4: bytes) -> tuple[int, int, int, int, bytes]:
    """-> (sport, dport, seq, flags, payload)"""
    if len(l4) < 20:
        raise DecodeError("truncated-tcp")
    sport, dport, seq, _ack, off, flags = _TCP.unpack_from(l4, 0)
    hlen = (off >> 4) * 4
    if hlen < 20 or hlen > len(l4):
        raise DecodeError("bad-tcp-header-length")
    return sport, dport, seq, flags, l4[hlen:]


def udp(l4: bytes, cut: bool = False) -> tuple[int, int, bytes]:
    """-> (sport, dport, payload); ``cut``: the snaplen cut the datagram, so the payload
    is what was captured (shorter than the UDP length says)."""
    if len(l4) < 8:
        raise DecodeError("truncated-udp")
    sport, dport, ulen = _UDP.unpack_from(l4, 0)
    if ulen < 8:
        if ulen == 0:  # jumbogram or offload: the IP length rules
            return sport, dport, l4[8:]
        raise DecodeError("bad-udp-length")
    if ulen > len(l4):
        if cut:
            return sport, dport, l4[8:]
        raise DecodeError("truncated-udp")
    return sport, dport, l4[8:ulen]
