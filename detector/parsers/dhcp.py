"""DHCPv4 messages (RFC 2131, options RFC 2132 and RFC 4702), for the host names clients
give themselves: only what names a host is read, through the bounded ``Reader``.

``parse(payload)`` returns a ``Dhcp`` (message type, client MAC, the address the message
is about, the host name), or raises ``DecodeError``.  Which address: ``yiaddr`` of an
ACK (the lease), else the requested address (option 50), else ``ciaddr`` (a renewing
client).  The name: option 81 (client FQDN; ASCII or DNS wire format, RFC 4702 2.3.1),
else option 12 (host name).  Names are returned as sent (at most 255 bytes, undecodable
bytes escaped): they are wire strings, escaped by every output.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import DecodeError
from .reader import Reader

SERVER_PORT, CLIENT_PORT = 67, 68
MAGIC = b"\x63\x82\x53\x63"
OPT_PAD, OPT_END = 0, 255
OPT_HOSTNAME, OPT_REQUESTED_IP, OPT_MESSAGE_TYPE, OPT_FQDN = 12, 50, 53, 81
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
FQDN_E = 0x04  # the name is in DNS wire format


@dataclass(frozen=True, slots=True)
class Dhcp:
    op: int  # 1 request (client), 2 reply (server)
    message_type: int
    mac: str  # aa:bb:cc:dd:ee:ff ("" when the hardware address is not Ethernet)
    address: str  # the client's IPv4 address this message is about, "" if none
    hostname: str  # "" if none


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0")[:255].decode("utf-8", "backslashreplace")


def _wire_name(raw: bytes) -> str:
    labels, r = [], Reader(raw, "dhcp-fqdn")
    while r.remaining:
        n = r.u8()
        if n == 0:
            break
        if n > 63:
            raise DecodeError("dhcp-fqdn-bad-label")
        labels.append(_text(r.bytes(n)))
    return ".".join(labels)


def parse(payload: bytes) -> Dhcp:
    r = Reader(payload, "dhcp")
    op, htype, hlen = r.u8(), r.u8(), r.u8()
    r.skip(1 + 4 + 2 + 2)  # hops, xid, secs, flags
    ciaddr, yiaddr = r.bytes(4), r.bytes(4)
    r.skip(8)  # siaddr, giaddr
    chaddr = r.bytes(16)
    r.skip(64 + 128)  # sname, file
    if op not in (1, 2):
        raise DecodeError("dhcp-bad-op")
    if r.bytes(4) != MAGIC:
        raise DecodeError("dhcp-no-magic-cookie")
    mtype, requested, hostname, fqdn = 0, b"", b"", ""
    while r.remaining:
        code = r.u8()
        if code == OPT_END:
            break
        if code == OPT_PAD:
            continue
        value = r.bytes(r.u8())
        if code == OPT_MESSAGE_TYPE and value:
            mtype = value[0]
        elif code == OPT_REQUESTED_IP and len(value) == 4:
            requested = value
        elif code == OPT_HOSTNAME:
            hostname = value
        elif code == OPT_FQDN and len(value) > 3:
            fqdn = _wire_name(value[3:]) if value[0] & FQDN_E else _text(value[3:])
    mac = chaddr[:6].hex(":") if htype == 1 and hlen == 6 else ""
    addr = b""
    if mtype == ACK and yiaddr != b"\0\0\0\0":
        addr = yiaddr
    elif mtype in (DISCOVER, REQUEST, INFORM) and requested:
        addr = requested
    elif mtype in (REQUEST, INFORM) and ciaddr != b"\0\0\0\0":
        addr = ciaddr
    address = str(ipaddress.IPv4Address(addr)) if addr else ""
    return Dhcp(op, mtype, mac, address, fqdn or (_text(hostname) if hostname else ""))
