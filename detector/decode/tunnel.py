"""Tunnel decapsulation: the frames inside VXLAN, GENEVE, GRE and ERSPAN.

Mirrored traffic (span ports, ERSPAN and cloud packet-mirroring feeds) often arrives
wrapped in a tunnel.  These functions take the payload of the outer UDP datagram or IP
packet and return ``(linktype, inner)``: the LINKTYPE_* of the inner frame and its bytes,
ready for ``strip_link`` (and ``IPDecoder``) as if the frame had been captured locally.

Contract (the same three-way contract as the other decoders):

- a ``(linktype, bytes)`` tuple when a tunnel header was found and stripped;
- ``None`` when there is nothing to decapsulate: ``decapsulate_udp`` for a port that is
  not a tunnel port, GENEVE control (O bit) packets, and payload types this module does
  not decode (PPTP's enhanced GRE, GRE carrying PPP, WCCP, ...); the caller counts these
  as skipped, not as errors;
- ``DecodeError`` for a malformed tunnel header, its ``reason`` prefixed with the tunnel
  (``vxlan-``, ``geneve-``, ``gre-``, ``erspan-``).

Only the tunnel header is checked here; the inner frame is checked by ``strip_link`` and
``IPDecoder`` like any other frame.  No copy is made beyond one slice of the payload.

Nesting: a decapsulated frame may itself carry a tunnel.  The caller recurses, and the
recursion is bounded by ``check_depth(depth)``, which raises
``DecodeError("tunnel-too-deep")`` once ``depth`` reaches ``MAX_TUNNEL_DEPTH`` (the outer
frame is depth 0; a frame taken out of a tunnel is one deeper than the frame it came out
of).  MPLS label stacks and pseudowires are link layers, decoded by ``link.strip_link``
with their own limits (``MAX_MPLS_LABELS``, ``MAX_PW_NESTING``).

Not done on purpose: GRE checksums are not verified (a monitor inspects what it sees; a
span copy with a bad checksum still shows what was sent), GENEVE options are walked for
their lengths but not interpreted (critical or not), and the RFC 1701 GRE routing field is
rejected as Linux does.
"""

from __future__ import annotations

import enum
import struct

from ..errors import DecodeError
from .link import LinkType

LINKTYPE_ETHERNET = int(LinkType.ETHERNET)  # 1
LINKTYPE_RAW = int(LinkType.RAW)  # 101
LINKTYPE_MPLS = int(LinkType.MPLS)  # 219

IPPROTO_GRE = 47  # IANA protocol number for GRE (RFC 2784)
MAX_TUNNEL_DEPTH = 4  # tunnels inside tunnels, outer frame = depth 0


class UDPPort(enum.IntEnum):
    """IANA-assigned UDP destination ports of the tunnels decoded here."""

    VXLAN = 4789  # RFC 7348
    GENEVE = 6081  # RFC 8926


TUNNEL_UDP_PORTS = frozenset({4789, 6081})


class ProtoType(enum.IntEnum):
    """Ethertype-valued protocol types in GRE (RFC 2784) and GENEVE (RFC 8926) headers."""

    IPV4 = 0x0800
    IPV6 = 0x86DD
    TEB = 0x6558  # transparent Ethernet bridging (gretap, NVGRE, GENEVE's Ethernet)
    MPLS_UC = 0x8847  # RFC 4023 MPLS over GRE
    MPLS_MC = 0x8848
    ERSPAN_I_II = 0x88BE  # Cisco ERSPAN type I (no S bit) and type II (S bit)
    ERSPAN_III = 0x22EB


# Payload types carried straight after the tunnel header, and how to read them.
_PAYLOAD_LINKTYPES: dict[int, int] = {
    ProtoType.TEB: LINKTYPE_ETHERNET,
    ProtoType.IPV4: LINKTYPE_RAW,
    ProtoType.IPV6: LINKTYPE_RAW,
    ProtoType.MPLS_UC: LINKTYPE_MPLS,
    ProtoType.MPLS_MC: LINKTYPE_MPLS,
}

Tunnel = tuple[int, bytes]


def check_depth(depth: int) -> None:
    """Raise ``DecodeError("tunnel-too-deep")`` when ``depth`` tunnels have been opened."""
    if depth >= MAX_TUNNEL_DEPTH:
        raise DecodeError("tunnel-too-deep", f"more than {MAX_TUNNEL_DEPTH} nested tunnels")


# -- UDP tunnels -------------------------------------------------------------------------

VXLAN_HEADER = 8
VXLAN_I_FLAG = 0x08  # "VNI present"; RFC 7348 section 5
GENEVE_HEADER = 8
GENEVE_O_BIT = 0x80  # control (OAM) packet
GENEVE_C_BIT = 0x40  # critical options present


def decapsulate_udp(dport: int, payload: bytes) -> Tunnel | None:
    """The frame inside a VXLAN or GENEVE datagram, by UDP destination port; else None."""
    if dport == UDPPort.VXLAN:
        return _vxlan(payload)
    if dport == UDPPort.GENEVE:
        return _geneve(payload)
    return None


def _vxlan(data: bytes) -> Tunnel:
    """RFC 7348: flags(8) reserved(24) VNI(24) reserved(8), then an Ethernet frame.

    The I flag must be set; the other flag bits are reserved and ignored on receipt (the
    group-policy extension, VXLAN-GBP, sets G and uses the reserved bits; it decodes here).
    """
    if len(data) < VXLAN_HEADER:
        raise DecodeError("vxlan-truncated")
    if not data[0] & VXLAN_I_FLAG:
        raise DecodeError("vxlan-no-vni-flag", f"flags 0x{data[0]:02x}")
    return LINKTYPE_ETHERNET, data[VXLAN_HEADER:]


def _geneve(data: bytes) -> Tunnel | None:
    """RFC 8926 section 3.4: Ver(2) OptLen(6) O C Rsvd(6) ProtocolType(16) VNI(24) Rsvd(8).

    Options (OptLen 4-byte words) follow, each class(16) type(8) R(3) Length(5) + data.
    """
    if len(data) < GENEVE_HEADER:
        raise DecodeError("geneve-truncated")
    first, flags, ptype = struct.unpack_from("!BBH", data, 0)
    if first >> 6 != 0:
        raise DecodeError("geneve-bad-version", str(first >> 6))
    end = GENEVE_HEADER + (first & 0x3F) * 4
    if len(data) < end:
        raise DecodeError("geneve-truncated")
    pos = GENEVE_HEADER
    while pos < end:
        if pos + 4 > end:
            raise DecodeError("geneve-bad-option-length")
        pos += 4 + (data[pos + 3] & 0x1F) * 4
        if pos > end:
            raise DecodeError("geneve-bad-option-length")
    if flags & GENEVE_O_BIT:
        return None  # a control message between tunnel endpoints, not user traffic
    linktype = _PAYLOAD_LINKTYPES.get(ptype)
    if linktype is None:
        return None
    return linktype, data[end:]


# -- GRE and ERSPAN ----------------------------------------------------------------------

GRE_C = 0x8000  # checksum (and reserved1) present, RFC 2784
GRE_R = 0x4000  # RFC 1701 routing present: not supported (Linux drops these too)
GRE_K = 0x2000  # key present, RFC 2890
GRE_S = 0x1000  # sequence number present, RFC 2890
GRE_VERSION = 0x0007
GRE_ENHANCED = 1  # version 1: PPTP's enhanced GRE (RFC 2637), carries PPP

ERSPAN_II_HEADER = 8
ERSPAN_III_HEADER = 12
ERSPAN_III_SUBHEADER = 8  # platform-specific subheader, present when the O bit is set
ERSPAN_III_O_BIT = 0x01
ERSPAN_FT_ETHERNET = 0
ERSPAN_FT_IP = 2


def decapsulate_gre(payload: bytes) -> Tunnel | None:
    """The frame inside a GRE packet (IP protocol 47), ERSPAN types I, II and III included.

    GRE header (RFC 2784, RFC 2890): C R K S s Recur(3) A Flags(4) Ver(3), protocol
    type(16), then checksum+reserved1 (C), key (K) and sequence number (S), 4 bytes each.
    Version 1 (PPTP) and payload types not decoded here give None.
    """
    if len(payload) < 4:
        raise DecodeError("gre-truncated")
    flags, ptype = struct.unpack_from("!HH", payload, 0)
    version = flags & GRE_VERSION
    if version == GRE_ENHANCED:
        return None
    if version != 0:
        raise DecodeError("gre-bad-version", str(version))
    if flags & GRE_R:
        raise DecodeError("gre-routing-present")
    pos = 4 + 4 * (bool(flags & GRE_C) + bool(flags & GRE_K) + bool(flags & GRE_S))
    if len(payload) < pos:
        raise DecodeError("gre-truncated")
    if ptype == ProtoType.ERSPAN_I_II:
        if not flags & GRE_S:
            return LINKTYPE_ETHERNET, payload[pos:]  # type I: the frame follows GRE directly
        return _erspan2(payload, pos)
    if ptype == ProtoType.ERSPAN_III:
        return _erspan3(payload, pos)
    linktype = _PAYLOAD_LINKTYPES.get(ptype)
    if linktype is None:
        return None
    return linktype, payload[pos:]


def _erspan2(data: bytes, pos: int) -> Tunnel:
    """ERSPAN type II: Ver(4)=1 VLAN(12) COS(3) En(2) T(1) SessionID(10) Rsvd(12) Index(20)."""
    if len(data) < pos + ERSPAN_II_HEADER:
        raise DecodeError("erspan-truncated")
    version = data[pos] >> 4
    if version != 1:
        raise DecodeError("erspan-bad-version", f"{version} in a type II header")
    return LINKTYPE_ETHERNET, data[pos + ERSPAN_II_HEADER :]


def _erspan3(data: bytes, pos: int) -> Tunnel | None:
    """ERSPAN type III: Ver(4)=2 VLAN(12) COS(3) BSO(2) T(1) SessionID(10), Timestamp(32),
    SGT(16) P(1) FT(5) HWID(6) D(1) Gra(2) O(1), then 8 platform-specific bytes if O.

    FT (frame type) 0 is an Ethernet frame and 2 an IP packet; the rest are reserved (None).
    """
    if len(data) < pos + ERSPAN_III_HEADER:
        raise DecodeError("erspan-truncated")
    version = data[pos] >> 4
    if version != 2:
        raise DecodeError("erspan-bad-version", f"{version} in a type III header")
    word = struct.unpack_from("!H", data, pos + 10)[0]
    frame_type = (word >> 10) & 0x1F
    pos += ERSPAN_III_HEADER
    if word & ERSPAN_III_O_BIT:
        pos += ERSPAN_III_SUBHEADER
        if len(data) < pos:
            raise DecodeError("erspan-truncated")
    if frame_type == ERSPAN_FT_ETHERNET:
        return LINKTYPE_ETHERNET, data[pos:]
    if frame_type == ERSPAN_FT_IP:
        return LINKTYPE_RAW, data[pos:]
    return None
