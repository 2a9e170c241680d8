"""Tunnels: VXLAN, GENEVE, GRE and ERSPAN decapsulation (detector.decode.tunnel), MPLS and
PPPoE after Ethernet (detector.decode.link), and the captures in pcaps/tunnels/.

Headers are hand-built with ``struct`` so every bit under test is visible.  The captures
are real traffic (dig, curl against dnsmasq and openssl s_server in network namespaces):
vxlan.pcap went through kernel VXLAN devices, the others were wrapped by
pcaps/tunnels/tunnels.py (see make_tunnel_captures.sh).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Ether  # type: ignore[attr-defined]
from scapy.layers.dns import DNS, DNSQR

from detector import Detector
from detector.capture.pcap import CaptureFile
from detector.decode import transport
from detector.decode.ip import IPDecoder, IPProto
from detector.decode.link import MAX_MPLS_LABELS, LinkType, strip_link
from detector.decode.tunnel import (
    IPPROTO_GRE,
    MAX_TUNNEL_DEPTH,
    TUNNEL_UDP_PORTS,
    check_depth,
    decapsulate_gre,
    decapsulate_udp,
)
from detector.errors import DecodeError
from detector.parsers import dns as dnsp
from detector.parsers import tls as tlsp
from detector.pipeline import Stats

TUNNELS = Path(__file__).resolve().parents[1] / "pcaps" / "tunnels"

MAC_DST = bytes.fromhex("001122334455")
MAC_SRC = bytes.fromhex("66778899aabb")
IPV4 = bytes([0x45, 0x00, 0x00, 0x14]) + b"\x00" * 16  # a bare 20-byte IPv4 header
IPV6 = bytes([0x60]) + b"\x00" * 39
INNER = MAC_DST + MAC_SRC + b"\x08\x00" + IPV4  # an inner Ethernet frame


def eth(ethertype: int, payload: bytes, *vlans: int) -> bytes:
    tags = b"".join(struct.pack("!HH", 0x8100, v) for v in vlans)
    return MAC_DST + MAC_SRC + tags + struct.pack("!H", ethertype) + payload


# -- builders -------------------------------------------------------------------------------


def vxlan(vni: int = 4242, flags: int = 0x08) -> bytes:
    """RFC 7348: flags(8) reserved(24) VNI(24) reserved(8)."""
    return struct.pack("!B3xI", flags, vni << 8)


def geneve(ptype: int, options: bytes = b"", version: int = 0, o: bool = False, c: bool = False, optlen: int | None = None) -> bytes:
    """RFC 8926: Ver(2) OptLen(6) O C Rsvd(6) Protocol(16) VNI(24) Rsvd(8), options."""
    words = len(options) // 4 if optlen is None else optlen
    return struct.pack("!BBHI", (version << 6) | words, (o << 7) | (c << 6), ptype, 4242 << 8) + options


def geneve_option(data: bytes, cls: int = 0xFFFF, typ: int = 1) -> bytes:
    """class(16) type(8) R(3) length(5, 4-byte words) + data."""
    return struct.pack("!HBB", cls, typ, len(data) // 4) + data


def gre(ptype: int, c: bool = False, k: bool = False, s: bool = False, version: int = 0, extra_flags: int = 0) -> bytes:
    """RFC 2784/2890: C R K S ... Ver(3), protocol type, then checksum, key, sequence."""
    flags = (c << 15) | (k << 13) | (s << 12) | version | extra_flags
    out = struct.pack("!HH", flags, ptype)
    if c:
        out += struct.pack("!HH", 0xBEEF, 0)  # checksum + reserved1 (not verified)
    if k:
        out += struct.pack("!I", 42)
    if s:
        out += struct.pack("!I", 7)
    return out


def erspan2(session: int = 123, version: int = 1, index: int = 5) -> bytes:
    """Ver(4) VLAN(12) COS(3) En(2) T(1) SessionID(10) Reserved(12) Index(20)."""
    return struct.pack("!HHI", (version << 12) | 10, (5 << 13) | (2 << 11) | session, index)


def erspan3(o: bool = False, ft: int = 0, version: int = 2, platform: bytes = b"\x0c\x00\x00\x05\x00\x00\x00\x01") -> bytes:
    """Ver(4) VLAN(12) COS(3) BSO(2) T(1) SessionID(10), Timestamp(32), SGT(16),
    P(1) FT(5) HWID(6) D(1) Gra(2) O(1), then the platform subheader when O is set."""
    word = (1 << 15) | (ft << 10) | (7 << 4) | (1 << 3) | (1 << 1) | int(o)
    out = struct.pack("!HHIHH", (version << 12) | 10, 124, 0x12345678, 0xABCD, word)
    return out + (platform if o else b"")


def mpls(*labels: int, ttl: int = 64) -> bytes:
    """Label stack entries, bottom-of-stack set on the last."""
    return b"".join(
        struct.pack("!I", (label << 12) | (0x100 if i == len(labels) - 1 else 0) | ttl) for i, label in enumerate(labels)
    )


def pppoe(ppp: bytes, vertype: int = 0x11, code: int = 0) -> bytes:
    return struct.pack("!BBHH", vertype, code, 0x1234, len(ppp)) + ppp


# -- constants ------------------------------------------------------------------------------


def test_constants() -> None:
    assert frozenset({4789, 6081}) == TUNNEL_UDP_PORTS
    assert IPPROTO_GRE == 47
    assert LinkType.MPLS == 219


def test_depth_limit() -> None:
    for depth in range(MAX_TUNNEL_DEPTH):
        check_depth(depth)
    with pytest.raises(DecodeError) as exc:
        check_depth(MAX_TUNNEL_DEPTH)
    assert exc.value.reason == "tunnel-too-deep"


# -- VXLAN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [0x08, 0x88, 0x0C, 0xFF])  # I; I+G (VXLAN-GBP); reserved bits ignored
def test_vxlan(flags: int) -> None:
    assert decapsulate_udp(4789, vxlan(flags=flags) + INNER) == (1, INNER)


def test_vxlan_empty_inner_frame_is_left_to_strip_link() -> None:
    lt, inner = decapsulate_udp(4789, vxlan()) or (None, None)
    assert (lt, inner) == (1, b"")
    with pytest.raises(DecodeError):
        strip_link(1, b"")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "vxlan-truncated"),
        (vxlan()[:7], "vxlan-truncated"),
        (vxlan(flags=0x00) + INNER, "vxlan-no-vni-flag"),
        (vxlan(flags=0x80) + INNER, "vxlan-no-vni-flag"),
    ],
)
def test_vxlan_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decapsulate_udp(4789, payload)
    assert exc.value.reason == reason


@pytest.mark.parametrize("port", [53, 443, 4790, 6635, 0, 65535])
def test_udp_port_not_a_tunnel(port: int) -> None:
    assert decapsulate_udp(port, vxlan() + INNER) is None


# -- GENEVE ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected_linktype"),
    [
        (geneve(0x6558), 1),
        (geneve(0x0800), 101),
        (geneve(0x86DD), 101),
        (geneve(0x8847), 219),  # MPLS
        (geneve(0x6558, geneve_option(b"abcd")), 1),
        (geneve(0x6558, geneve_option(b"") + geneve_option(b"12345678" * 2)), 1),
        (geneve(0x6558, geneve_option(b"x" * 124)), 1),  # longest single option: 31 words
        (geneve(0x6558, geneve_option(b"abcd"), c=True), 1),  # critical option: still inspected
    ],
)
def test_geneve(header: bytes, expected_linktype: int) -> None:
    assert decapsulate_udp(6081, header + INNER) == (expected_linktype, INNER)


@pytest.mark.parametrize("ptype", [0x0806, 0x88CC, 0x0000, 0xFFFF, 0x880B])
def test_geneve_unknown_protocol_is_none(ptype: int) -> None:
    assert decapsulate_udp(6081, geneve(ptype) + INNER) is None


def test_geneve_control_packet_is_none() -> None:
    assert decapsulate_udp(6081, geneve(0x6558, o=True) + INNER) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "geneve-truncated"),
        (geneve(0x6558)[:7], "geneve-truncated"),
        (geneve(0x6558, optlen=2), "geneve-truncated"),  # options announced, not there
        (geneve(0x6558, geneve_option(b"abcd"))[:12], "geneve-truncated"),
        (geneve(0x6558, version=1) + INNER, "geneve-bad-version"),
        (geneve(0x6558, version=3) + INNER, "geneve-bad-version"),
        # an option longer than the option area
        (geneve(0x6558, geneve_option(b"abcdefgh"), optlen=2) + INNER, "geneve-bad-option-length"),
        # option area not made of whole options (a 2-word area holding a 1-word header + junk
        # whose length field says 2 words)
        (geneve(0x6558, struct.pack("!HBB", 1, 1, 2) + b"abcd") + INNER, "geneve-bad-option-length"),
    ],
)
def test_geneve_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decapsulate_udp(6081, payload)
    assert exc.value.reason == reason


def test_geneve_options_skipped_exactly() -> None:
    opts = geneve_option(b"abcd") + geneve_option(b"efghijkl", cls=0x0102, typ=0x80)
    lt, inner = decapsulate_udp(6081, geneve(0x0800, opts) + IPV4) or (0, b"")
    assert (lt, inner) == (101, IPV4)


# -- GRE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [False, True])
@pytest.mark.parametrize("k", [False, True])
@pytest.mark.parametrize("s", [False, True])
def test_gre_optional_fields(c: bool, k: bool, s: bool) -> None:
    header = gre(0x6558, c=c, k=k, s=s)
    assert len(header) == 4 + 4 * (c + k + s)
    assert decapsulate_gre(header + INNER) == (1, INNER)


@pytest.mark.parametrize(
    ("ptype", "inner", "linktype"),
    [(0x6558, INNER, 1), (0x0800, IPV4, 101), (0x86DD, IPV6, 101), (0x8847, mpls(100) + IPV4, 219), (0x8848, mpls(5) + IPV6, 219)],
)
def test_gre_payload_types(ptype: int, inner: bytes, linktype: int) -> None:
    assert decapsulate_gre(gre(ptype, k=True) + inner) == (linktype, inner)


def test_gre_mpls_payload_decodes_with_strip_link() -> None:
    lt, inner = decapsulate_gre(gre(0x8847) + mpls(16, 100) + IPV4) or (0, b"")
    assert strip_link(lt, inner) == (4, 8, ())


@pytest.mark.parametrize("ptype", [0x880B, 0x883E, 0x0806, 0x0000])  # PPP, WCCP, ARP, nothing
def test_gre_unknown_payload_is_none(ptype: int) -> None:
    assert decapsulate_gre(gre(ptype) + INNER) is None


def test_gre_version_1_pptp_is_none() -> None:
    # RFC 2637 enhanced GRE: K set, S set, version 1, protocol 0x880B (PPP)
    header = struct.pack("!HHHHI", 0x3001, 0x880B, 10, 0x1234, 1)
    assert decapsulate_gre(header + b"\xff\x03\x00\x21" + IPV4) is None


def test_gre_ignores_reserved_bits() -> None:
    # recursion control and reserved0 bits 6-12: ignored on receipt (RFC 2784)
    assert decapsulate_gre(gre(0x0800, extra_flags=0x0F80) + IPV4) == (101, IPV4)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "gre-truncated"),
        (b"\x00\x00\x65", "gre-truncated"),
        (gre(0x6558, c=True)[:6], "gre-truncated"),
        (gre(0x6558, c=True, k=True, s=True)[:15], "gre-truncated"),
        (gre(0x6558, k=True)[:7], "gre-truncated"),
        (gre(0x6558, version=2) + INNER, "gre-bad-version"),
        (gre(0x6558, version=7) + INNER, "gre-bad-version"),
        (gre(0x6558, extra_flags=0x4000) + INNER, "gre-routing-present"),
    ],
)
def test_gre_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decapsulate_gre(payload)
    assert exc.value.reason == reason


# -- ERSPAN ---------------------------------------------------------------------------------


def test_erspan_type1_has_no_header() -> None:
    assert decapsulate_gre(gre(0x88BE) + INNER) == (1, INNER)


def test_erspan_type2() -> None:
    assert decapsulate_gre(gre(0x88BE, s=True) + erspan2() + INNER) == (1, INNER)


def test_erspan_type2_with_key_too() -> None:
    assert decapsulate_gre(gre(0x88BE, k=True, s=True) + erspan2() + INNER) == (1, INNER)


@pytest.mark.parametrize("o", [False, True])
def test_erspan_type3(o: bool) -> None:
    header = gre(0x22EB, s=True) + erspan3(o=o)
    assert len(header) == 8 + 12 + (8 if o else 0)
    assert decapsulate_gre(header + INNER) == (1, INNER)


def test_erspan_type3_ip_frame_type() -> None:
    assert decapsulate_gre(gre(0x22EB, s=True) + erspan3(ft=2) + IPV4) == (101, IPV4)


@pytest.mark.parametrize("ft", [1, 3, 31])
def test_erspan_type3_reserved_frame_type_is_none(ft: int) -> None:
    assert decapsulate_gre(gre(0x22EB, s=True) + erspan3(ft=ft) + INNER) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (gre(0x88BE, s=True), "erspan-truncated"),
        (gre(0x88BE, s=True) + erspan2()[:7], "erspan-truncated"),
        (gre(0x88BE, s=True) + erspan2(version=2) + INNER, "erspan-bad-version"),
        (gre(0x88BE, s=True) + erspan2(version=0) + INNER, "erspan-bad-version"),
        (gre(0x22EB, s=True) + erspan3()[:11], "erspan-truncated"),
        (gre(0x22EB, s=True) + erspan3(o=True)[:19], "erspan-truncated"),
        (gre(0x22EB, s=True) + erspan3(version=1) + INNER, "erspan-bad-version"),
    ],
)
def test_erspan_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decapsulate_gre(payload)
    assert exc.value.reason == reason


# -- every prefix, and fuzz -----------------------------------------------------------------

VALID_UDP = [
    (4789, vxlan() + INNER),
    (6081, geneve(0x6558, geneve_option(b"abcd") + geneve_option(b"")) + INNER),
    (6081, geneve(0x86DD) + IPV6),
]
VALID_GRE = [
    gre(0x6558, c=True, k=True, s=True) + INNER,
    gre(0x0800) + IPV4,
    gre(0x88BE) + INNER,
    gre(0x88BE, s=True) + erspan2() + INNER,
    gre(0x22EB, s=True) + erspan3(o=True) + INNER,
]


def _ok(result: object) -> None:
    assert result is None or (
        isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], int) and isinstance(result[1], bytes)
    )


@pytest.mark.parametrize(("port", "message"), VALID_UDP)
def test_udp_every_prefix(port: int, message: bytes) -> None:
    for n in range(len(message) + 1):
        try:
            _ok(decapsulate_udp(port, message[:n]))
        except DecodeError as exc:
            assert exc.reason.startswith(("vxlan-", "geneve-"))


@pytest.mark.parametrize("message", VALID_GRE)
def test_gre_every_prefix(message: bytes) -> None:
    for n in range(len(message) + 1):
        try:
            _ok(decapsulate_gre(message[:n]))
        except DecodeError as exc:
            assert exc.reason.startswith(("gre-", "erspan-"))


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(port=st.sampled_from([4789, 6081, 53, 4790]), data=st.binary(max_size=96))
def test_fuzz_udp(port: int, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        _ok(decapsulate_udp(port, data))


@FUZZ
@given(
    flags=st.integers(0, 0xFFFF),
    ptype=st.sampled_from([0x6558, 0x0800, 0x86DD, 0x88BE, 0x22EB, 0x8847, 0x880B]),
    rest=st.binary(max_size=64),
)
def test_fuzz_gre(flags: int, ptype: int, rest: bytes) -> None:
    with contextlib.suppress(DecodeError):
        _ok(decapsulate_gre(struct.pack("!HH", flags, ptype) + rest))


@FUZZ
@given(etype=st.sampled_from([0x8847, 0x8848, 0x8864, 0x8100]), rest=st.binary(max_size=80))
def test_fuzz_strip_link_mpls_pppoe(etype: int, rest: bytes) -> None:
    try:
        result = strip_link(1, eth(etype, rest))
    except DecodeError:
        return
    if result is not None:
        version, offset, vlans = result
        assert version in (4, 6) and 0 <= offset <= 14 + len(rest) and isinstance(vlans, tuple)


# -- MPLS and PPPoE in strip_link -----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (eth(0x8847, mpls(100) + IPV4), (4, 18, ())),
        (eth(0x8847, mpls(100) + IPV6), (6, 18, ())),
        (eth(0x8847, mpls(16005, 100) + IPV4), (4, 22, ())),
        (eth(0x8848, mpls(16005, 100, 7) + IPV6), (6, 26, ())),
        (eth(0x8847, mpls(0) + IPV4), (4, 18, ())),  # IPv4 explicit null
        (eth(0x8847, mpls(2) + IPV6), (6, 18, ())),  # IPv6 explicit null
        (eth(0x8847, mpls(16005, 100) + IPV4, 10), (4, 26, (10,))),  # provider VLAN first
        (eth(0x8847, mpls(*range(16, 16 + MAX_MPLS_LABELS)) + IPV4), (4, 14 + 4 * MAX_MPLS_LABELS, ())),
    ],
)
def test_mpls(frame: bytes, expected: tuple) -> None:
    assert strip_link(LinkType.ETHERNET, frame) == expected
    assert frame[expected[1]] >> 4 == expected[0]


def test_mpls_pseudowire_with_control_word() -> None:
    cw = struct.pack("!HH", 0, 17)  # first nibble 0, sequence 17
    inner = eth(0x0800, IPV4, 300)  # the customer's frame, with its own 802.1Q tag
    frame = eth(0x8847, mpls(16005, 200) + cw + inner)
    offset = 14 + 8 + 4 + 14 + 4
    assert strip_link(LinkType.ETHERNET, frame) == (4, offset, (300,))
    assert frame[offset:] == IPV4


def test_mpls_pseudowire_keeps_provider_and_customer_vlans() -> None:
    inner = eth(0x86DD, IPV6, 300, 301)
    frame = eth(0x8847, mpls(200) + b"\x00" * 4 + inner, 10)
    assert strip_link(LinkType.ETHERNET, frame) == (6, 18 + 4 + 4 + 22, (10, 300, 301))


def test_mpls_pseudowire_inside_pseudowire() -> None:
    inner = eth(0x8847, mpls(300) + b"\x00" * 4 + eth(0x0800, IPV4))
    frame = eth(0x8847, mpls(200) + b"\x00" * 4 + inner)
    assert strip_link(LinkType.ETHERNET, frame) == (4, len(frame) - 20, ())
    too_deep = eth(0x8847, mpls(100) + b"\x00" * 4 + frame)
    with pytest.raises(DecodeError) as exc:
        strip_link(LinkType.ETHERNET, too_deep)
    assert exc.value.reason == "mpls-pw-too-deep"


@pytest.mark.parametrize(
    "payload",
    [
        mpls(13) + b"\x10\x00\x00\x07" + b"\x00" * 20,  # GAL + associated channel header (OAM)
        mpls(200) + MAC_DST + MAC_SRC + b"\x08\x00" + IPV4,  # pseudowire without control word
        mpls(200) + b"\xf0" * 20,
    ],
)
def test_mpls_payload_not_ip_is_none(payload: bytes) -> None:
    assert strip_link(LinkType.ETHERNET, eth(0x8847, payload)) is None


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (eth(0x8847, b""), "truncated-mpls"),
        (eth(0x8847, mpls(100)[:3]), "truncated-mpls"),
        (eth(0x8847, mpls(100, 200)[:4]), "truncated-mpls"),  # bottom of stack never reached
        (eth(0x8847, mpls(100)), "truncated-mpls"),  # nothing after the stack
        (eth(0x8847, mpls(*range(16, 17 + MAX_MPLS_LABELS)) + IPV4), "too-many-mpls-labels"),
        (eth(0x8847, mpls(200) + b"\x00" * 4 + MAC_DST), "truncated-ethernet"),  # PW frame cut
    ],
)
def test_mpls_malformed(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        strip_link(LinkType.ETHERNET, frame)
    assert exc.value.reason == reason


def test_linktype_mpls() -> None:
    assert strip_link(LinkType.MPLS, mpls(16, 100) + IPV6) == (6, 8, ())


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (eth(0x8864, pppoe(b"\x00\x21" + IPV4)), (4, 22, ())),
        (eth(0x8864, pppoe(b"\x00\x57" + IPV6)), (6, 22, ())),
        (eth(0x8864, pppoe(b"\x21" + IPV4)), (4, 21, ())),  # protocol field compressed
        (eth(0x8864, pppoe(b"\x00\x21" + IPV4), 7), (4, 26, (7,))),
        (eth(0x8864, pppoe(b"\xc0\x21" + b"\x01\x01\x00\x04")), None),  # LCP
        (eth(0x8864, pppoe(b"\x80\x21" + b"\x01\x01\x00\x04")), None),  # IPCP
    ],
)
def test_pppoe(frame: bytes, expected: tuple | None) -> None:
    assert strip_link(LinkType.ETHERNET, frame) == expected


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (eth(0x8864, pppoe(b"\x00\x21")[:6]), "truncated-pppoe"),
        (eth(0x8864, pppoe(b"\x00")), "truncated-pppoe"),
        (eth(0x8864, pppoe(b"\x00\x21" + IPV4, vertype=0x12)), "bad-pppoe-header"),
        (eth(0x8864, pppoe(b"\x00\x21" + IPV4, code=0x09)), "bad-pppoe-header"),  # discovery PADI code
        (eth(0x8864, struct.pack("!BBHH", 0x11, 0, 1, 0) + b"\x00\x21"), "bad-pppoe-header"),
    ],
)
def test_pppoe_malformed(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        strip_link(LinkType.ETHERNET, frame)
    assert exc.value.reason == reason


@pytest.mark.parametrize(
    "frame",
    [
        eth(0x8847, mpls(16005, 200) + b"\x00\x00\x00\x01" + eth(0x0800, IPV4, 300)),
        eth(0x8864, pppoe(b"\x00\x57" + IPV6), 5),
    ],
)
def test_strip_link_every_prefix(frame: bytes) -> None:
    for n in range(len(frame) + 1):
        try:
            result = strip_link(LinkType.ETHERNET, frame[:n])
        except DecodeError:
            continue
        assert result is None or result[1] <= n


# -- the captures ---------------------------------------------------------------------------

EXPECTED = json.loads((TUNNELS / "expected.json").read_text()) if (TUNNELS / "expected.json").exists() else {}
# the tunnel each file's contacts are found in: (nesting depth, inner VLAN ids)
LAYOUT = {
    "vxlan.pcap": (1, ()),
    "gre.pcap": (1, ()),
    "gre-ip.pcap": (1, ()),
    "erspan1.pcap": (1, ()),
    "erspan2.pcap": (1, ()),
    "erspan3.pcap": (1, ()),
    "geneve.pcap": (1, ()),
    "geneve-ip.pcap": (1, ()),
    "mpls.pcap": (0, ()),  # MPLS and PPPoE are link layers: strip_link finds the IP
    "mpls-pw.pcap": (0, (300,)),
    "pppoe.pcap": (0, ()),
    "inner.pcap": (0, ()),
}


def _unwrap(ip: IPDecoder, ts: float, linktype: int, data: bytes, depth: int = 0):
    """Decode a frame the way the pipeline does, opening tunnels recursively; yields
    (depth, vlans, src, dst, proto, l4) for every innermost IP packet."""
    link = strip_link(linktype, data)
    if link is None:
        return
    version, off, vlans = link
    decoded = ip.decode(version, data, off, ts)
    if decoded is None:
        return
    src, dst, proto, l4 = decoded
    inner = None
    if proto == IPProto.UDP:
        _, dport, payload = transport.udp(l4)
        if dport in TUNNEL_UDP_PORTS:
            inner = decapsulate_udp(dport, payload)
    elif proto == IPPROTO_GRE:
        inner = decapsulate_gre(l4)
    if inner is not None:
        check_depth(depth)
        yield from _unwrap(ip, ts, inner[0], inner[1], depth + 1)
    else:
        yield depth, vlans, src, dst, proto, l4


def _is_kaspersky(name: str) -> bool:
    return name == "kaspersky.com" or name.endswith((".kaspersky.com", ".kaspersky-labs.com"))


def test_every_tunnel_capture_is_listed() -> None:
    files = sorted(p.name for p in TUNNELS.glob("*.pcap"))
    assert files and files == sorted(EXPECTED) == sorted(LAYOUT)


def _inner_contacts(path: Path, want_depth: int, want_vlans: tuple[int, ...]) -> set[tuple[str, str, str]]:
    """(client, name, kind) of every Kaspersky DNS query and ClientHello inside the tunnels
    of ``path``, checking that every IP packet came out at the expected depth."""
    ip = IPDecoder()
    found: set[tuple[str, str, str]] = set()
    packets = 0
    with CaptureFile(str(path)) as cf:
        for ts, linktype, data, _ in cf:
            for depth, vlans, src, _dst, proto, l4 in _unwrap(ip, ts, linktype, data):
                packets += 1
                assert (depth, vlans) == (want_depth, want_vlans)
                assert not src.startswith("198.18.200.")  # never an outer address
                if proto == IPProto.UDP:
                    _, dport, payload = transport.udp(l4)
                    if dport == 53:
                        msg = dnsp.parse_message(payload)
                        assert not msg.qr
                        found.update((src, q.lower(), "dns") for q, *_ in msg.questions if _is_kaspersky(q.lower()))
                elif proto == IPProto.TCP:
                    _, dport, _, _, payload = transport.tcp(l4)
                    if dport == 443 and payload and tlsp.looks_like_tls(payload) and payload[5] == 1:
                        hello = tlsp.parse_client_hello(payload)
                        assert hello is not None and hello.server_name
                        found.add((src, hello.server_name, "tls"))
    assert packets >= 40  # every frame of the lab's traffic came out of its tunnel
    return found


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_capture_inner_contacts(name: str) -> None:
    found = _inner_contacts(TUNNELS / name, *LAYOUT[name])
    assert found == {(c["client"], c["name"], c["kind"]) for c in EXPECTED[name]}
    assert len(found) == 4  # two clients (IPv4, IPv6) x (DNS query, TLS SNI)


def _can_make_captures() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [t for t in ("ip", "ethtool", "tcpdump", "tshark", "dnsmasq", "dig", "curl", "openssl") if not shutil.which(t)]
    return f"missing tools: {' '.join(missing)}" if missing else None


@pytest.mark.netns
def test_fresh_tunnel_captures(tmp_path: Path) -> None:
    """Run make_tunnel_captures.sh now into a temporary directory and check what it made."""
    why = _can_make_captures()
    if why:
        pytest.skip(why)
    r = subprocess.run(
        ["bash", str(TUNNELS / "make_tunnel_captures.sh")],
        env={**os.environ, "DEST": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "kdtun-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    expected = json.loads((tmp_path / "expected.json").read_text())
    assert sorted(expected) == sorted(LAYOUT)
    for name, want in expected.items():
        assert _inner_contacts(tmp_path / name, *LAYOUT[name]) == {(c["client"], c["name"], c["kind"]) for c in want}, name


# -- through the Detector (runs once pipeline.py decapsulates: Stats.tunnelled exists) ------

_KIND = {"dns-query": "dns", "dns-answer": "dns", "tls-sni": "tls"}
_INTEGRATED = "tunnelled" in {f.name for f in dataclasses.fields(Stats)}
needs_pipeline = pytest.mark.skipif(not _INTEGRATED, reason="pipeline.py does not decapsulate tunnels yet")


@needs_pipeline
@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_detector_reports_inner_clients(name: str) -> None:
    det = Detector(strict=True)
    alerts = []
    with CaptureFile(str(TUNNELS / name)) as cf:
        for ts, linktype, data, _ in cf:
            alerts += det.feed(ts, linktype, data)
    alerts += det.flush()
    got = {(a.observation.client, a.observation.hostname, _KIND[a.observation.evidence.value]) for a in alerts}
    assert got == {(c["client"], c["name"], c["kind"]) for c in EXPECTED[name]}
    assert sum(det.stats.undecodable.values()) == 0, det.stats.undecodable
    if LAYOUT[name][0]:
        assert sum(det.stats.tunnelled.values()) > 0


def _nest(levels: int, frame: bytes) -> bytes:
    """Wrap an Ethernet frame in ``levels`` GRE (transparent Ethernet bridging) tunnels."""
    for i in range(levels):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 4 + len(frame), i, 0, 64, 47, 0, bytes([198, 18, 200, 1]), bytes([198, 18, 200, 2]))
        frame = eth(0x0800, ip + gre(0x6558) + frame)
    return frame


@needs_pipeline
def test_detector_nesting_limit() -> None:
    query = bytes(
        Ether() / IP(src="198.18.0.10", dst="198.18.0.1") / UDP(sport=40000, dport=53)
        / DNS(rd=1, qd=DNSQR(qname="s05.upd.kaspersky.com"))
    )
    det = Detector(strict=True)
    assert det.feed(1.0, 1, _nest(MAX_TUNNEL_DEPTH, query)) == []
    assert [a.observation.client for a in det.flush()] == ["198.18.0.10"]
    assert det.stats.tunnelled["gre"] == MAX_TUNNEL_DEPTH
    det = Detector(strict=True)
    det.feed(1.0, 1, _nest(MAX_TUNNEL_DEPTH + 1, query))
    assert det.flush() == []
    assert det.stats.undecodable == {"tunnel-too-deep": 1}
