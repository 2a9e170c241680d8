"""Link layers: find the IP header inside a frame.

``strip_link(linktype, data)`` returns ``(ip_version, offset, vlan_ids)`` or ``None`` when
the frame carries no IP (ARP, LLDP, ...).  Malformed frames raise ``DecodeError``.
"""

from __future__ import annotations

import enum
import struct

from ..errors import DecodeError


class LinkType(enum.IntEnum):
    """LINKTYPE_* values from the tcpdump.org link-layer header types registry."""

    NULL = 0  # BSD loopback, 4-byte address family in host byte order
    ETHERNET = 1
    RAW_OPENBSD = 12  # DLT_RAW on OpenBSD
    RAW_BSD = 14  # DLT_RAW on some BSDs
    RAW = 101
    LOOP = 108  # OpenBSD loopback, address family in network byte order
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


class EtherType(enum.IntEnum):
    IPV4 = 0x0800
    IPV6 = 0x86DD
    VLAN = 0x8100  # IEEE 802.1Q
    QINQ = 0x88A8  # IEEE 802.1ad
    QINQ_OLD = 0x9100  # pre-standard QinQ


VLAN_TYPES = frozenset((EtherType.VLAN, EtherType.QINQ, EtherType.QINQ_OLD))
# Address families seen in DLT_NULL / DLT_LOOP headers: 2 is AF_INET everywhere; AF_INET6
# is 10 (Linux), 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS).
AF_INET = 2
AF_INET6 = frozenset((10, 24, 28, 30))
MAX_VLAN_TAGS = 8

Link = tuple[int, int, tuple[int, ...]]


def _ethertype(etype: int, offset: int, vlans: tuple[int, ...]) -> Link | None:
    if etype == EtherType.IPV4:
        return 4, offset, vlans
    if etype == EtherType.IPV6:
        return 6, offset, vlans
    return None


def _ethernet(data: bytes, offset: int) -> Link | None:
    if len(data) < offset + 14:
        raise DecodeError("truncated-ethernet")
    return _after_ethertype(data, struct.unpack_from("!H", data, offset + 12)[0], offset + 14)


def _after_ethertype(data: bytes, etype: int, offset: int) -> Link | None:
    """Skip 802.1Q/802.1ad tags that start at ``offset`` and find the IP header."""
    vlans: tuple[int, ...] = ()
    while etype in VLAN_TYPES:
        if len(vlans) >= MAX_VLAN_TAGS:
            raise DecodeError("too-many-vlan-tags")
        if len(data) < offset + 4:
            raise DecodeError("truncated-vlan")
        tci, etype = struct.unpack_from("!HH", data, offset)
        vlans += (tci & 0x0FFF,)
        offset += 4
    return _ethertype(etype, offset, vlans)


def _version_nibble(data: bytes, offset: int) -> Link | None:
    if len(data) <= offset:
        raise DecodeError("truncated-ip")
    v = data[offset] >> 4
    if v in (4, 6):
        return v, offset, ()
    raise DecodeError("bad-ip-version")


def strip_link(linktype: int, data: bytes) -> Link | None:
    if linktype == LinkType.ETHERNET:
        return _ethernet(data, 0)
    if linktype == LinkType.LINUX_SLL:
        if len(data) < 16:
            raise DecodeError("truncated-sll")
        return _after_ethertype(data, struct.unpack_from("!H", data, 14)[0], 16)
    if linktype == LinkType.LINUX_SLL2:
        if len(data) < 20:
            raise DecodeError("truncated-sll2")
        return _after_ethertype(data, struct.unpack_from("!H", data, 0)[0], 20)
    if linktype in (LinkType.RAW, LinkType.RAW_OPENBSD, LinkType.RAW_BSD, LinkType.IPV4, LinkType.IPV6):
        return _version_nibble(data, 0)
    if linktype in (LinkType.NULL, LinkType.LOOP):
        if len(data) < 4:
            raise DecodeError("truncated-null")
        if linktype == LinkType.LOOP:
            family = struct.unpack_from("!I", data, 0)[0]
        else:
            # Host byte order of the capturing machine: the family is small, so take
            # whichever reading gives a small number.
            le, be = struct.unpack_from("<I", data, 0)[0], struct.unpack_from(">I", data, 0)[0]
            family = min(le, be)
        if family == AF_INET:
            return 4, 4, ()
        if family in AF_INET6:
            return 6, 4, ()
        return None
    raise DecodeError("unsupported-linktype", str(linktype))
