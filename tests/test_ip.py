"""IPv4 (options), IPv6 (extension headers) and bounded fragment reassembly.

Whole packets and fragments come from scapy (``fragment`` / ``fragment6``); a few headers
are hand-built with ``struct`` where a test needs one exact malformed byte.
"""

from __future__ import annotations

import logging
import random
import struct

import pytest

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.dns import DNS, DNSQR  # noqa: E402
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.packet import Raw  # noqa: E402

from detector.decode.ip import IPDecoder  # noqa: E402
from detector.errors import DecodeError  # noqa: E402

SRC4, DST4 = "192.0.2.10", "198.51.100.53"
SRC6, DST6 = "2001:db8::10", "2001:db8::53"


def big_dns_over_udp(ident: int = 0x4242, size: int = 3000) -> IP:
    """An IPv4/UDP/DNS packet larger than a 1500-byte MTU."""
    return (
        IP(src=SRC4, dst=DST4, id=ident)
        / UDP(sport=40000, dport=53)
        / DNS(rd=1, qd=DNSQR(qname="s07.upd.kaspersky.com"))
        / Raw(b"P" * size)
    )


def v4_fragments(ident: int = 0x4242) -> tuple[list[bytes], bytes]:
    pkt = big_dns_over_udp(ident)
    frags = [bytes(f) for f in fragment(pkt, fragsize=1480)]
    assert len(frags) >= 3
    return frags, bytes(pkt[UDP])


def v6_fragments(ident: int = 99) -> tuple[list[bytes], bytes]:
    pkt = IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(id=ident) / UDP(sport=40000, dport=53) / Raw(b"Q" * 3000)
    frags = [bytes(f) for f in fragment6(pkt, 1280)]
    assert len(frags) >= 3
    return frags, bytes(pkt[UDP])


# -- IPv4 ----------------------------------------------------------------------------------


def test_ipv4_plain() -> None:
    pkt = IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=53) / Raw(b"hello")
    assert IPDecoder().decode(4, bytes(pkt), 0, 0.0) == (SRC4, DST4, 17, bytes(pkt[UDP]))


def test_ipv4_with_options() -> None:
    pkt = IP(src=SRC4, dst=DST4, options=[IPOption_NOP(), IPOption_RR()]) / UDP(sport=1, dport=53) / Raw(b"x")
    raw = bytes(pkt)
    assert raw[0] & 0x0F > 5  # header longer than 20 bytes
    src, dst, proto, l4 = IPDecoder().decode(4, raw, 0, 0.0)
    assert (src, dst, proto) == (SRC4, DST4, 17)
    assert l4 == bytes(pkt[UDP])


def test_ipv4_at_an_offset_with_link_padding_trimmed() -> None:
    pkt = bytes(IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=53) / Raw(b"ab"))
    frame = b"E" * 14 + pkt + b"\x00" * 16  # Ethernet minimum-size padding after the packet
    assert IPDecoder().decode(4, frame, 14, 0.0)[3] == pkt[20:]


def test_ipv4_total_length_zero_takes_what_is_there() -> None:
    pkt = bytearray(bytes(IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=53) / Raw(b"tso")))
    pkt[2:4] = b"\x00\x00"
    assert IPDecoder().decode(4, bytes(pkt), 0, 0.0)[3] == bytes(pkt[20:])


def _v4(vihl: int = 0x45, total: int = 20, proto: int = 17, extra: bytes = b"") -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", vihl, 0, total, 1, 0, 64, proto, 0, bytes(4), bytes(4))
    return hdr + extra


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated-ipv4"),
        (_v4()[:19], "truncated-ipv4"),
        (_v4(vihl=0x44), "bad-ipv4-header"),  # IHL 4: shorter than the fixed header
        (_v4(vihl=0x65), "bad-ipv4-header"),  # version 6 in an IPv4 decode
        (_v4(total=19), "bad-ipv4-length"),
        (_v4(total=100, extra=b"\x00" * 10, proto=6), "truncated-ipv4"),  # snapped TCP (a cut UDP datagram is read: test below)
        (_v4(vihl=0x4F, total=60, extra=b"\x00" * 10), "truncated-ipv4"),  # options cut off
        (_v4(total=100, extra=b"\x00" * 4), "truncated-ipv4"),  # snapped UDP without a whole UDP header
    ],
)
def test_ipv4_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        IPDecoder().decode(4, data, 0, 0.0)
    assert exc.value.reason == reason


# -- IPv6 ----------------------------------------------------------------------------------


def test_ipv6_plain() -> None:
    pkt = IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=53) / Raw(b"x" * 10)
    assert IPDecoder().decode(6, bytes(pkt), 0, 0.0) == (SRC6, DST6, 17, bytes(pkt[UDP]))


def test_ipv6_hop_by_hop_and_destination_options() -> None:
    pkt = (
        IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["2001:db8::99"])
        / IPv6ExtHdrDestOpt()
        / UDP(sport=1, dport=53)
        / Raw(b"payload")
    )
    src, dst, proto, l4 = IPDecoder().decode(6, bytes(pkt), 0, 0.0)
    assert (src, dst, proto) == (SRC6, DST6, 17)
    assert l4 == bytes(pkt[UDP])


def test_ipv6_atomic_fragment_is_a_whole_datagram() -> None:
    pkt = IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(id=5, offset=0, m=0) / UDP(sport=1, dport=53)
    dec = IPDecoder()
    assert dec.decode(6, bytes(pkt), 0, 0.0) == (SRC6, DST6, 17, bytes(pkt[UDP]))
    assert dec.fragments == 0


def test_ipv6_payload_length_zero_takes_what_is_there() -> None:
    pkt = bytearray(bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=53) / Raw(b"j")))
    pkt[4:6] = b"\x00\x00"
    assert IPDecoder().decode(6, bytes(pkt), 0, 0.0)[3] == bytes(pkt[40:])


def _v6(nh: int, payload: bytes, plen: int | None = None) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload) if plen is None else plen, nh, 64)
        + bytes(16)
        + bytes(16)
        + payload
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated-ipv6"),
        (_v6(17, b"")[:39], "truncated-ipv6"),
        (b"\x40" + _v6(17, b"")[1:], "bad-ipv6-header"),
        (_v6(6, b"\x00" * 20, plen=100), "truncated-ipv6"),  # snapped TCP
        (_v6(0, b"\x11\x00\x00\x00"), "truncated-ipv6-ext"),  # hop-by-hop header cut
        (_v6(60, b"\x11\x05" + b"\x00" * 6), "truncated-ipv6-ext"),  # says 48 bytes, has 8
        (_v6(44, b"\x11\x00\x00"), "truncated-ipv6-ext"),  # fragment header cut
        (_v6(51, b"\x11\x00"), "truncated-ipv6-ext"),  # AH cut
        (_v6(60, b"\x3c\x00" + b"\x00" * 6), "truncated-ipv6-ext"),  # chain ends early
        (_v6(60, (b"\x3c\x00" + b"\x00" * 6) * 20), "too-many-ipv6-ext"),
    ],
)
def test_ipv6_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        IPDecoder().decode(6, data, 0, 0.0)
    assert exc.value.reason == reason


# -- IPv4 fragments ------------------------------------------------------------------------


def test_ipv4_fragments_in_order() -> None:
    frags, udp = v4_fragments()
    dec = IPDecoder()
    results = [dec.decode(4, f, 0, 1.0) for f in frags]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] == (SRC4, DST4, 17, udp)
    assert dec.fragments == len(frags)
    assert dec.reassembled == 1
    # the reassembled datagram still parses as the DNS query it was
    assert DNS(udp[8:]).qd[0].qname == b"s07.upd.kaspersky.com."


@pytest.mark.parametrize("seed", range(5))
def test_ipv4_fragments_out_of_order(seed: int) -> None:
    frags, udp = v4_fragments()
    order = list(reversed(frags)) if seed == 0 else random.Random(seed).sample(frags, len(frags))
    dec = IPDecoder()
    results = [dec.decode(4, f, 0, 1.0) for f in order]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] == (SRC4, DST4, 17, udp)


def test_ipv4_duplicate_fragments() -> None:
    frags, udp = v4_fragments()
    dec = IPDecoder()
    assert dec.decode(4, frags[0], 0, 1.0) is None
    assert dec.decode(4, frags[0], 0, 1.0) is None  # retransmitted
    assert dec.decode(4, frags[2], 0, 1.0) is None
    assert dec.decode(4, frags[1], 0, 1.0)[3] == udp


def test_ipv4_interleaved_datagrams() -> None:
    a, udp_a = v4_fragments(1)
    b, udp_b = v4_fragments(2)
    dec = IPDecoder()
    out = []
    for fa, fb in zip(a, b, strict=True):
        out.append(dec.decode(4, fa, 0, 1.0))
        out.append(dec.decode(4, fb, 0, 1.0))
    assert [r[3] for r in out if r] == [udp_a, udp_b]


def test_ipv4_missing_fragment_never_completes() -> None:
    frags, _ = v4_fragments()
    dec = IPDecoder()
    for _ in range(3):
        for f in frags[:1] + frags[2:]:
            assert dec.decode(4, f, 0, 1.0) is None
    assert dec.reassembled == 0


def test_fragment_table_is_bounded_in_count() -> None:
    dec = IPDecoder(max_datagrams=3)
    for ident in range(10):
        frags, _ = v4_fragments(ident)
        assert dec.decode(4, frags[0], 0, 1.0) is None
    assert dec.frag_evicted == 7
    # the oldest were dropped: completing datagram 0 now never succeeds
    frags0, _ = v4_fragments(0)
    assert all(dec.decode(4, f, 0, 1.0) is None for f in frags0[1:])
    # the newest survived
    frags9, udp9 = v4_fragments(9)
    results = [dec.decode(4, f, 0, 1.0) for f in frags9[1:]]
    assert results[-1][3] == udp9


def test_fragment_table_is_bounded_in_bytes_across_datagrams() -> None:
    dec = IPDecoder(max_bytes=2000)
    for ident in range(4):
        frags, _ = v4_fragments(ident)
        dec.decode(4, frags[0], 0, 1.0)  # 1480 bytes each
    assert dec.frag_evicted >= 2


def test_fragment_table_is_bounded_in_bytes_within_one_datagram() -> None:
    dec = IPDecoder(max_bytes=4000)
    body = b"Z" * 1000
    # one datagram, many non-adjacent fragments (holes between them, so it never completes)
    for i in range(20):
        frag = bytes(IP(src=SRC4, dst=DST4, id=7, proto=17, flags="MF", frag=i * 250) / Raw(body))
        assert dec.decode(4, frag, 0, 1.0) is None
    assert dec._frag_bytes <= dec.max_bytes  # the table's own byte counter


def test_fragment_timeout_expiry() -> None:
    frags, udp = v4_fragments()
    dec = IPDecoder(timeout=30.0)
    assert dec.decode(4, frags[0], 0, 100.0) is None
    assert dec.decode(4, frags[1], 0, 131.0) is None  # 31 s later: the first part expired
    assert dec.frag_evicted == 1
    assert dec.decode(4, frags[2], 0, 131.5) is None  # so the datagram cannot complete
    assert dec.reassembled == 0


def test_fragment_within_timeout_completes() -> None:
    frags, udp = v4_fragments()
    dec = IPDecoder(timeout=30.0)
    results = [dec.decode(4, f, 0, 100.0 + 10 * i) for i, f in enumerate(frags)]  # 0, 10, 20 s
    assert results[-1][3] == udp
    assert dec.frag_evicted == 0


def test_fragment_expiry_is_triggered_by_other_traffic() -> None:
    old, _ = v4_fragments(1)
    new, udp_new = v4_fragments(2)
    dec = IPDecoder(timeout=5.0)
    dec.decode(4, old[0], 0, 0.0)
    results = [dec.decode(4, f, 0, 60.0) for f in new]
    assert dec.frag_evicted == 1
    assert results[-1][3] == udp_new


# -- IPv6 fragments ------------------------------------------------------------------------


def test_ipv6_fragments_in_order() -> None:
    frags, udp = v6_fragments()
    dec = IPDecoder()
    results = [dec.decode(6, f, 0, 1.0) for f in frags]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] == (SRC6, DST6, 17, udp)
    assert dec.reassembled == 1


@pytest.mark.parametrize("seed", range(4))
def test_ipv6_fragments_out_of_order(seed: int) -> None:
    frags, udp = v6_fragments()
    order = list(reversed(frags)) if seed == 0 else random.Random(seed).sample(frags, len(frags))
    dec = IPDecoder()
    results = [dec.decode(6, f, 0, 1.0) for f in order]
    assert results[-1] == (SRC6, DST6, 17, udp)
    assert results[:-1] == [None] * (len(frags) - 1)


def test_ipv6_fragments_after_hop_by_hop() -> None:
    pkt = (
        IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrFragment(id=1234)
        / UDP(sport=1, dport=53)
        / Raw(b"R" * 2500)
    )
    frags = [bytes(f) for f in fragment6(pkt, 1280)]
    dec = IPDecoder()
    results = [dec.decode(6, f, 0, 1.0) for f in reversed(frags)]
    assert results[-1] == (SRC6, DST6, 17, bytes(pkt[UDP]))


def test_ipv6_fragment_with_destination_options_in_fragmentable_part() -> None:
    pkt = (
        IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrFragment(id=77)
        / IPv6ExtHdrDestOpt()
        / UDP(sport=1, dport=53)
        / Raw(b"D" * 2500)
    )
    frags = [bytes(f) for f in fragment6(pkt, 1280)]
    dec = IPDecoder()
    results = [dec.decode(6, f, 0, 1.0) for f in frags]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] == (SRC6, DST6, 17, bytes(pkt[UDP]))


def test_ipv6_missing_fragment_never_completes() -> None:
    frags, _ = v6_fragments()
    dec = IPDecoder()
    assert all(dec.decode(6, f, 0, 1.0) is None for f in frags[1:])
    assert all(dec.decode(6, f, 0, 1.0) is None for f in frags[1:])
    assert dec.reassembled == 0


def test_ipv4_and_ipv6_fragments_with_same_id_do_not_mix() -> None:
    f4, udp4 = v4_fragments(5)
    f6, udp6 = v6_fragments(5)
    dec = IPDecoder()
    out = [dec.decode(4, f, 0, 1.0) for f in f4[:-1]] + [dec.decode(6, f, 0, 1.0) for f in f6]
    assert out[-1][3] == udp6
    assert dec.decode(4, f4[-1], 0, 1.0)[3] == udp4


# -- datagrams cut by the snaplen (pcaps/issue4/dns-snaplen.pcap is the real capture) -------
@pytest.mark.parametrize("v6", [False, True])
def test_a_cut_udp_datagram_comes_back_with_its_cut_and_length(v6: bool) -> None:
    udp = UDP(sport=40000, dport=53) / Raw(b"q" * 100)
    pkt = bytes((IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="198.18.0.1", dst="198.18.0.2")) / udp)
    dec = IPDecoder()
    src, dst, proto, l4 = dec.decode(6 if v6 else 4, pkt[:60], 0, 0.0)
    assert proto == 17 and l4 == pkt[40 if v6 else 20 : 60]
    assert (dec.length, dec.cut) == (len(pkt), len(pkt) - 60)
    dec.decode(6 if v6 else 4, pkt, 0, 0.0)
    assert (dec.length, dec.cut) == (len(pkt), 0)


@pytest.mark.parametrize("v6", [False, True])
def test_a_cut_tcp_segment_or_fragment_is_still_truncated(v6: bool) -> None:
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="198.18.0.1", dst="198.18.0.2")
    tcp = bytes(ip / TCP(sport=1, dport=443) / Raw(b"t" * 100))
    with pytest.raises(DecodeError, match="truncated-ipv"):
        IPDecoder().decode(6 if v6 else 4, tcp[:70], 0, 0.0)
    frags = fragment6(ip / IPv6ExtHdrFragment() / UDP(dport=53) / Raw(b"f" * 3000), 1280) if v6 else \
        fragment(ip / UDP(dport=53) / Raw(b"f" * 3000), 1400)
    with pytest.raises(DecodeError, match="truncated-ipv"):
        IPDecoder().decode(6 if v6 else 4, bytes(frags[0])[:100], 0, 0.0)


def test_reassembled_length_is_the_whole_datagram() -> None:
    whole = IP(src="198.18.0.1", dst="198.18.0.2", id=7) / UDP(dport=53) / Raw(b"f" * 3000)
    dec = IPDecoder()
    out = [dec.decode(4, bytes(f), 0, 0.0) for f in fragment(whole, 1400)]
    assert out[-1] is not None and dec.length == len(bytes(whole))


def test_plain_ethernet_ipv4_is_the_general_path() -> None:
    """``IPDecoder.plain_ethernet_ipv4`` (the pipeline's quick path) gives what strip_link
    + decode give, length and cut included, or None; on real frames and on every byte of
    them changed, and on every prefix."""
    from scapy.layers.l2 import Ether

    from detector.decode.link import strip_link
    from detector.errors import DecodeError

    frames = [
        bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="198.18.0.2") / TCP(sport=40000, dport=443) / Raw(b"x" * 30)),
        bytes(Ether() / IP(src="192.0.2.1", dst="198.18.0.2", flags="DF") / UDP(sport=5353, dport=53) / Raw(b"q" * 12)),
        bytes(Ether() / IP(src="192.0.2.1", dst="198.18.0.2", options=[IPOption_NOP()]) / TCP() / Raw(b"y")),
        bytes(Ether() / IP(src="192.0.2.1", dst="198.18.0.2", flags="MF", frag=0) / UDP() / Raw(b"z" * 20)),
        bytes(Ether() / IP(src="192.0.2.1", dst="198.18.0.2") / TCP()) + b"\x00" * 6,  # Ethernet padding
    ]
    rnd = random.Random(3)

    def general(data: bytes):
        dec = IPDecoder()
        try:
            link = strip_link(1, data)
            if link is None:
                return "not-ip"
            out = dec.decode(link[0], data, link[1], 0.0)
        except DecodeError as exc:
            return exc.reason
        return out, dec.length, dec.cut, link

    cases = []
    for f in frames:
        cases += [f[:n] for n in range(len(f) + 1)]
        for _ in range(300):
            buf = bytearray(f)
            buf[rnd.randrange(12, 40)] = rnd.randrange(256)
            cases.append(bytes(buf))
    quick = 0
    for data in cases:
        dec = IPDecoder()
        got = dec.plain_ethernet_ipv4(data)
        if got is None:
            continue
        quick += 1
        assert (got, dec.length, dec.cut, (4, 14, ())) == general(data)
    assert quick > 500
