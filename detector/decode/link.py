"""Link layers: find the IP header inside a frame.

``strip_link(linktype, data)`` returns ``(ip_version, offset, vlan_ids)`` or ``None`` when
the frame carries no IP (ARP, LLDP, ...).  Malformed frames raise ``DecodeError``.

After Ethernet (and its 802.1Q/802.1ad tags) three more layers are followed:

- MPLS (ethertypes 0x8847/0x8848, RFC 3032): labels are popped until bottom of stack (at
  most ``MAX_MPLS_LABELS``); the first nibble of what follows decides, as Suricata does:
  4 is IPv4, 6 is IPv6, 0 is a pseudowire control word (RFC 4385) followed by an
  Ethernet frame (RFC 4448), which is decoded with its own VLAN tags (an Ethernet
  pseudowire may carry MPLS again, at most ``MAX_PW_NESTING`` deep).  Anything else (an
  associated channel after a GAL, a pseudowire without control word) is not IP: ``None``.
- PPPoE session stage (0x8864, RFC 2516) with PPP protocol 0x0021 (IPv4) or 0x0057 (IPv6).
- LINKTYPE_MPLS (219) frames start with the label stack (MPLS over GRE, RFC 4023).

The offset always points into ``data`` itself, also behind a pseudowire: nothing is
copied.  ``vlan_ids`` lists the provider's tags before the label stack, then the tags of
the Ethernet frame inside the pseudowire (like Suricata's ``vlan`` array).
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
    MPLS = 219  # the frame starts with an MPLS label stack
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


class EtherType(enum.IntEnum):
    IPV4 = 0x0800
    IPV6 = 0x86DD
    VLAN = 0x8100  # IEEE 802.1Q
    QINQ = 0x88A8  # IEEE 802.1ad
    QINQ_OLD = 0x9100  # pre-standard QinQ
    MPLS_UC = 0x8847  # RFC 3032 MPLS
    MPLS_MC = 0x8848  # RFC 5332 upstream-assigned labels (formerly "multicast")
    PPPOE_SESSION = 0x8864  # RFC 2516 session stage


class PPPProto(enum.IntEnum):
    """PPP protocol numbers (RFC 1661 / IANA PPP DLL protocol numbers) that carry IP."""

    IPV4 = 0x0021
    IPV6 = 0x0057


VLAN_TYPES = frozenset((EtherType.VLAN, EtherType.QINQ, EtherType.QINQ_OLD))
MPLS_TYPES = frozenset((EtherType.MPLS_UC, EtherType.MPLS_MC))
# Address families seen in DLT_NULL / DLT_LOOP headers: 2 is AF_INET everywhere; AF_INET6
# is 10 (Linux), 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS).
AF_INET = 2
AF_INET6 = frozenset((10, 24, 28, 30))
MAX_VLAN_TAGS = 8
MAX_MPLS_LABELS = 16  # segment-routing stacks reach ~10; more is a loop or garbage
MAX_PW_NESTING = 2  # Ethernet pseudowires inside Ethernet pseudowires
MPLS_BOS = 0x100  # bottom-of-stack bit in a label stack entry
PW_CONTROL_WORD = 4
PPPOE_HEADER = 6

Link = tuple[int, int, tuple[int, ...]]


def _ethertype(
    data: bytes, etype: int, offset: int, vlans: tuple[int, ...], nest: int
) -> Link | None:
    if etype == EtherType.IPV4:
        return 4, offset, vlans
    if etype == EtherType.IPV6:
        return 6, offset, vlans
    if etype in MPLS_TYPES:
        return _mpls(data, offset, vlans, nest)
    if etype == EtherType.PPPOE_SESSION:
        return _pppoe(data, offset, vlans)
    return None


def _ethernet(data: bytes, offset: int, vlans: tuple[int, ...] = (), nest: int = 0) -> Link | None:
    if len(data) < offset + 14:
        raise DecodeError("truncated-ethernet")
    etype = struct.unpack_from("!H", data, offset + 12)[0]
    return _after_ethertype(data, etype, offset + 14, vlans, nest)


def _after_ethertype(
    data: bytes, etype: int, offset: int, vlans: tuple[int, ...] = (), nest: int = 0
) -> Link | None:
    """Skip 802.1Q/802.1ad tags that start at ``offset`` and find the IP header."""
    tags = 0
    while etype in VLAN_TYPES:
        if tags >= MAX_VLAN_TAGS:
            raise DecodeError("too-many-vlan-tags")
        if len(data) < offset + 4:
            raise DecodeError("truncated-vlan")
        tci, etype = struct.unpack_from("!HH", data, offset)
        vlans += (tci & 0x0FFF,)
        tags += 1
        offset += 4
    return _ethertype(data, etype, offset, vlans, nest)


def _mpls(data: bytes, offset: int, vlans: tuple[int, ...], nest: int) -> Link | None:
    """Pop an RFC 3032 label stack (label 20, TC 3, S 1, TTL 8 bits per entry)."""
    for _ in range(MAX_MPLS_LABELS):
        if len(data) < offset + 4:
            raise DecodeError("truncated-mpls")
        entry = struct.unpack_from("!I", data, offset)[0]
        offset += 4
        if entry & MPLS_BOS:
            break
    else:
        raise DecodeError("too-many-mpls-labels")
    if len(data) <= offset:
        raise DecodeError("truncated-mpls")
    nibble = data[offset] >> 4
    if nibble in (4, 6):
        return nibble, offset, vlans
    if nibble == 0:
        # RFC 4385 control word (0000, flags, FRG, length, sequence), then RFC 4448 Ethernet.
        if nest >= MAX_PW_NESTING:
            raise DecodeError("mpls-pw-too-deep")
        return _ethernet(data, offset + PW_CONTROL_WORD, vlans, nest + 1)
    return None


def _pppoe(data: bytes, offset: int, vlans: tuple[int, ...]) -> Link | None:
    """RFC 2516 session header: ver 1, type 1, code 0, session id, length; then PPP."""
    if len(data) < offset + PPPOE_HEADER + 1:
        raise DecodeError("truncated-pppoe")
    vertype, code, length = struct.unpack_from("!BBxxH", data, offset)
    if vertype != 0x11 or code != 0 or length < 1:
        raise DecodeError("bad-pppoe-header")
    offset += PPPOE_HEADER
    proto = data[offset]
    if proto & 1:  # protocol field compressed to one byte (RFC 1661 PFC)
        offset += 1
    else:
        if len(data) < offset + 2:
            raise DecodeError("truncated-pppoe")
        proto = struct.unpack_from("!H", data, offset)[0]
        offset += 2
    if proto == PPPProto.IPV4:
        return 4, offset, vlans
    if proto == PPPProto.IPV6:
        return 6, offset, vlans
    return None


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
    if linktype == LinkType.MPLS:
        return _mpls(data, 0, (), 0)
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
