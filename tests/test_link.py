"""Link layers: strip_link finds the IP header inside a frame.

Frames are hand-built with ``struct`` so every header byte is visible in the test.
"""

from __future__ import annotations

import struct

import pytest

from detector.decode.link import LinkType, strip_link
from detector.errors import DecodeError

IPV4 = bytes([0x45, 0x00, 0x00, 0x14]) + b"\x00" * 16  # a bare 20-byte IPv4 header
IPV6 = bytes([0x60]) + b"\x00" * 39
MAC_DST = bytes.fromhex("001122334455")
MAC_SRC = bytes.fromhex("66778899aabb")


def eth(ethertype: int, payload: bytes, *tags: tuple[int, int]) -> bytes:
    """Ethernet II with optional VLAN tags, each (tag protocol id, VLAN id)."""
    out = MAC_DST + MAC_SRC
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, (5 << 13) | vid)  # PCP 5, to check the mask
    return out + struct.pack("!H", ethertype) + payload


def sll(protocol: int, payload: bytes) -> bytes:
    """Linux cooked capture v1: packet type, ARPHRD, addr len, 8-byte addr, protocol."""
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_SRC + b"\x00\x00", protocol) + payload


def sll2(protocol: int, payload: bytes) -> bytes:
    """Linux cooked capture v2: protocol, reserved, ifindex, ARPHRD, type, addr len, addr."""
    return struct.pack("!HHIHBB8s", protocol, 0, 3, 1, 0, 6, MAC_SRC + b"\x00\x00") + payload


# -- Ethernet and VLANs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (eth(0x0800, IPV4), (4, 14, ())),
        (eth(0x86DD, IPV6), (6, 14, ())),
        (eth(0x0800, IPV4, (0x8100, 10)), (4, 18, (10,))),
        (eth(0x86DD, IPV6, (0x8100, 4095)), (6, 18, (4095,))),
        # QinQ: 802.1ad service tag outside, 802.1Q customer tag inside
        (eth(0x0800, IPV4, (0x88A8, 100), (0x8100, 200)), (4, 22, (100, 200))),
        (eth(0x0800, IPV4, (0x9100, 7), (0x8100, 8)), (4, 22, (7, 8))),  # pre-standard QinQ
        (eth(0x0800, IPV4, *[(0x8100, i) for i in range(1, 9)]), (4, 14 + 32, tuple(range(1, 9)))),
    ],
)
def test_ethernet(frame: bytes, expected: tuple) -> None:
    assert strip_link(LinkType.ETHERNET, frame) == expected
    version, offset, _ = expected
    assert frame[offset] >> 4 == version


@pytest.mark.parametrize(
    "frame",
    [
        eth(0x0806, b"\x00" * 28),  # ARP
        eth(0x88CC, b"\x00" * 20),  # LLDP
        eth(0x0806, b"\x00" * 28, (0x8100, 3)),  # ARP on a VLAN
        eth(0x0050, b"\x00" * 50),  # 802.3 length field
    ],
)
def test_ethernet_without_ip_is_none(frame: bytes) -> None:
    assert strip_link(LinkType.ETHERNET, frame) is None


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "truncated-ethernet"),
        (eth(0x0800, b"")[:13], "truncated-ethernet"),
        (MAC_DST + MAC_SRC + b"\x81\x00" + b"\x00\x0a\x08", "truncated-vlan"),  # tag cut short
        (eth(0x0800, IPV4, (0x88A8, 1))[:16], "truncated-vlan"),
        (eth(0x0800, IPV4, *[(0x8100, i) for i in range(1, 10)]), "too-many-vlan-tags"),  # 9 tags: too many
    ],
)
def test_ethernet_malformed(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        strip_link(LinkType.ETHERNET, frame)
    assert exc.value.reason == reason


# -- Linux cooked captures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (sll(0x0800, IPV4), (4, 16, ())),
        (sll(0x86DD, IPV6), (6, 16, ())),
        (sll(0x0806, b"\x00" * 28), None),
    ],
)
def test_sll(frame: bytes, expected: tuple | None) -> None:
    assert strip_link(LinkType.LINUX_SLL, frame) == expected


def test_sll_with_vlan_tag_finds_the_vlan_id() -> None:
    frame = sll(0x8100, struct.pack("!HH", 42, 0x0800) + IPV4)
    result = strip_link(LinkType.LINUX_SLL, frame)
    assert result is not None
    assert result[0] == 4
    assert result[2] == (42,)


def test_sll_with_vlan_tag_offset_points_at_ip() -> None:
    frame = sll(0x8100, struct.pack("!HH", 42, 0x0800) + IPV4)
    assert strip_link(LinkType.LINUX_SLL, frame) == (4, 20, (42,))


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (sll2(0x0800, IPV4), (4, 20, ())),
        (sll2(0x86DD, IPV6), (6, 20, ())),
        (sll2(0x0806, b"\x00" * 28), None),
    ],
)
def test_sll2(frame: bytes, expected: tuple | None) -> None:
    assert strip_link(LinkType.LINUX_SLL2, frame) == expected


def test_sll2_with_vlan_tag() -> None:
    frame = sll2(0x8100, struct.pack("!HH", 42, 0x0800) + IPV4)
    assert strip_link(LinkType.LINUX_SLL2, frame) == (4, 24, (42,))


@pytest.mark.parametrize(
    ("linktype", "frame", "reason"),
    [
        (LinkType.LINUX_SLL, sll(0x0800, b"")[:15], "truncated-sll"),
        (LinkType.LINUX_SLL, b"", "truncated-sll"),
        (LinkType.LINUX_SLL2, sll2(0x0800, b"")[:19], "truncated-sll2"),
        (LinkType.LINUX_SLL2, b"\x08\x00", "truncated-sll2"),
    ],
)
def test_cooked_truncated(linktype: int, frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        strip_link(linktype, frame)
    assert exc.value.reason == reason


# -- raw IP --------------------------------------------------------------------------------


@pytest.mark.parametrize("linktype", [101, 12, 14, 228, 229])
@pytest.mark.parametrize(("packet", "version"), [(IPV4, 4), (IPV6, 6)])
def test_raw(linktype: int, packet: bytes, version: int) -> None:
    assert strip_link(linktype, packet) == (version, 0, ())


@pytest.mark.parametrize(
    ("packet", "reason"),
    [(b"", "truncated-ip"), (b"\x55" + IPV4[1:], "bad-ip-version"), (b"\x00", "bad-ip-version")],
)
def test_raw_malformed(packet: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        strip_link(LinkType.RAW, packet)
    assert exc.value.reason == reason


# -- BSD loopback --------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize(
    ("family", "expected"),
    [
        (2, (4, 4, ())),  # AF_INET
        (10, (6, 4, ())),  # AF_INET6 on Linux
        (24, (6, 4, ())),  # NetBSD / OpenBSD
        (28, (6, 4, ())),  # FreeBSD
        (30, (6, 4, ())),  # macOS
        (17, None),  # something else
        (0, None),
    ],
)
def test_null_both_byte_orders(order: str, family: int, expected: tuple | None) -> None:
    payload = IPV4 if family == 2 else IPV6
    assert strip_link(LinkType.NULL, struct.pack(order + "I", family) + payload) == expected


@pytest.mark.parametrize(("family", "expected"), [(2, (4, 4, ())), (24, (6, 4, ())), (30, (6, 4, ()))])
def test_loop_is_network_order(family: int, expected: tuple) -> None:
    assert strip_link(LinkType.LOOP, struct.pack("!I", family) + IPV4) == expected
    # little-endian bytes read in network order give a huge family: not IP
    assert strip_link(LinkType.LOOP, struct.pack("<I", family) + IPV4) is None


@pytest.mark.parametrize("linktype", [LinkType.NULL, LinkType.LOOP])
@pytest.mark.parametrize("frame", [b"", b"\x02\x00\x00"])
def test_null_truncated(linktype: int, frame: bytes) -> None:
    with pytest.raises(DecodeError) as exc:
        strip_link(linktype, frame)
    assert exc.value.reason == "truncated-null"


# -- unsupported ---------------------------------------------------------------------------


@pytest.mark.parametrize("linktype", [105, 127, 147, 9999, -1])  # 802.11, radiotap, user0, ...
def test_unsupported_linktype(linktype: int) -> None:
    with pytest.raises(DecodeError) as exc:
        strip_link(linktype, eth(0x0800, IPV4))
    assert exc.value.reason == "unsupported-linktype"
    assert str(linktype) in str(exc.value)
