"""DNS messages (RFC 1035) parsed with dnspython, over UDP and over TCP.

``parse_message(wire)`` returns a ``DnsMessage`` or raises ``DecodeError``.
``split_tcp(stream)`` cuts a TCP DNS byte stream (RFC 1035 section 4.2.2: a two-byte length
before each message) into whole messages and says how many bytes it consumed.

Names are taken from the question, from every answer record's owner, and from the names an
answer points at (CNAME/DNAME targets, and the targets of SRV, MX, NS, PTR, SVCB/HTTPS),
so a benign-looking query whose answer is a CNAME into vendor infrastructure is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype

from ..errors import DecodeError

MAX_ANSWERS = 64  # records kept per message for evidence; more are counted, not kept


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    rrname: str
    rrtype: str
    ttl: int
    rdata: str
    target: str | None  # the name this record points at, if any


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    qr: bool
    opcode: int
    rcode: str
    flags: int
    questions: tuple[tuple[str, str], ...]  # (name, type)
    answers: tuple[DnsAnswer, ...]


def _name(n: dns.name.Name) -> str:
    return n.to_text(omit_final_dot=True)


def _target(rd: object) -> str | None:
    for attr in ("target", "exchange"):
        v = getattr(rd, attr, None)
        if isinstance(v, dns.name.Name):
            return _name(v)
    return None


_PLAIN_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*"
_TYPE_TEXT: dict[int, str] = {}
_RCODE_TEXT = {v: dns.rcode.to_text(v) for v in range(16)}  # type: ignore[arg-type]  # (any int is taken)


def _simple(wire: bytes) -> DnsMessage | None:
    """The common message in a few slices, without dnspython: one question whose labels
    need no escaping and no compression, and either a query (only its question is read,
    as below) or an answer with no records at all (NXDOMAIN, NODATA without EDNS).
    None for anything else, which dnspython then parses; ``test_dns`` checks both agree."""
    qd, an, ns, ar = wire[4:6], wire[6], wire[8:10], wire[10:12]
    qr = wire[2] & 0x80
    if qd != b"\x00\x01" or (qr and (an or wire[7] or ns != b"\x00\x00" or ar != b"\x00\x00")):
        return None
    pos = 12
    dots: list[int] = []  # where the length bytes are, in the name
    end = len(wire)
    while True:
        if pos >= end:
            return None
        n = wire[pos]
        if n == 0:
            break
        if n > 63:
            return None
        dots.append(pos - 12)
        pos += 1 + n
    if not dots or pos - 12 + 1 > 255 or pos + 5 > end:
        return None
    name = bytearray(wire[12:pos])
    for d in dots:
        name[d] = 0x61  # a plain byte, so that one translate() checks every label byte
    if name.translate(None, _PLAIN_BYTES):
        return None
    for d in dots:
        name[d] = 0x2E
    qtype = (wire[pos + 1] << 8) | wire[pos + 2]
    ttext = _TYPE_TEXT.get(qtype)
    if ttext is None:
        ttext = _TYPE_TEXT[qtype] = dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]  # (any int is taken)
    flags = (wire[2] << 8) | wire[3]
    return DnsMessage(
        id=(wire[0] << 8) | wire[1],
        qr=bool(qr),
        opcode=(flags >> 11) & 0xF,
        rcode=_RCODE_TEXT[flags & 0xF],
        flags=flags,
        questions=((name[1:].decode("ascii"), ttext),),
        answers=(),
    )


def parse_message(wire: bytes) -> DnsMessage:
    if len(wire) < 12:
        raise DecodeError("dns-truncated-header")
    simple = _simple(wire)
    if simple is not None:
        return simple
    return _full(wire)


def _full(wire: bytes) -> DnsMessage:
    """Any message, by dnspython."""
    try:
        # A query (QR clear) needs only its question: parsing nothing else is much cheaper.
        query = not wire[2] & 0x80
        msg = dns.message.from_wire(wire, ignore_trailing=True, continue_on_error=True, question_only=query)
        if msg.errors and not any(msg.sections):
            # Nothing could be salvaged (continue_on_error keeps what parsed before a bad
            # record, which we still want for partly damaged answers).
            raise DecodeError("dns-malformed", type(msg.errors[0].exception).__name__)
        questions = tuple(
            (_name(rrset.name), dns.rdatatype.to_text(rrset.rdtype)) for rrset in msg.question
        )
        answers: list[DnsAnswer] = []
        for rrset in msg.answer:
            owner = _name(rrset.name)
            rtype = dns.rdatatype.to_text(rrset.rdtype)
            for rd in rrset:
                if len(answers) >= MAX_ANSWERS:
                    break
                answers.append(DnsAnswer(owner, rtype, int(rrset.ttl), rd.to_text()[:512], _target(rd)))
        return DnsMessage(
            id=msg.id,
            qr=bool(msg.flags & 0x8000),
            opcode=int(msg.opcode()),
            rcode=dns.rcode.to_text(msg.rcode()),
            flags=int(msg.flags),
            questions=questions,
            answers=tuple(answers),
        )
    except DecodeError:
        raise
    except dns.exception.DNSException as exc:
        raise DecodeError("dns-malformed", type(exc).__name__) from None
    except (ValueError, TypeError, IndexError, KeyError, UnicodeError, OverflowError) as exc:
        # dnspython is strict about well-formed input; anything else on hostile bytes is
        # still just a malformed message to us.
        raise DecodeError("dns-malformed", type(exc).__name__) from None


def split_tcp(stream: bytes) -> tuple[list[bytes], int]:
    """Whole length-prefixed messages at the start of ``stream`` and the bytes they used."""
    out: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 2:
        n = (stream[pos] << 8) | stream[pos + 1]
        if n == 0:
            raise DecodeError("dns-tcp-zero-length")
        if len(stream) - pos - 2 < n:
            break
        out.append(stream[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out, pos
