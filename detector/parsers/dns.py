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


def parse_message(wire: bytes) -> DnsMessage:
    if len(wire) < 12:
        raise DecodeError("dns-truncated-header")
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
