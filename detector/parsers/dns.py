"""DNS messages (RFC 1035) parsed with dnspython, over UDP and over TCP.

``parse_message(wire)`` returns a ``DnsMessage`` or raises ``DecodeError``.
``split_tcp(stream)`` cuts a TCP DNS byte stream (RFC 1035 section 4.2.2: a two-byte length
before each message) into whole messages and says how many bytes it consumed.

Names are taken from the question, from every answer record's owner, and from the names an
answer points at (CNAME/DNAME targets, and the targets of SRV, MX, NS, PTR, SVCB/HTTPS),
so a benign-looking query whose answer is a CNAME into vendor infrastructure is seen.

Every name is kept twice: as its wire labels (each label's bytes as UTF-8 text, a byte that
is not valid UTF-8 as ``\\xNN``), which the matcher walks, and as the displayed name, those
labels joined by dots: the canonical form every evidence kind shares (a TLS SNI holding the
same bytes reads the same).  It is not DNS presentation format: a space stays a space, a
backslash one backslash, a dot byte inside a label a dot (the labels, not the text, say
where a label ends).

A message cut short by the capture's snaplen (``parse_message(wire, cut=True)``) is read as
far as its bytes go: every question, and every answer record that lies whole in the
captured bytes; ``DnsMessage.truncated`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import dns.exception
import dns.ipv4
import dns.ipv6
import dns.rcode
import dns.rdatatype

if TYPE_CHECKING:  # imported where used (_dnspython): the common messages never need them
    import dns.message
    import dns.name
    import dns.rdata
    import dns.rdataclass

from ..errors import DecodeError

MAX_ANSWERS = 64  # records kept per message for evidence; more are counted, not kept
MAX_QUESTIONS = 16  # questions read from a cut message (real ones hold one)

Labels = tuple[str, ...]


def label_text(raw: bytes) -> str:
    """One label (or a whole SNI/Host) in the canonical form: UTF-8, else ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


def name_labels(n: dns.name.Name) -> Labels:
    """The labels of a wire name in the canonical form, the root label left out."""
    return tuple(label_text(x) for x in n.labels if x)


def name_text(labels: Labels) -> str:
    """The displayed name: the labels joined by dots (the root alone: ``.``)."""
    return ".".join(labels) or "."


def labels_of(text: str) -> Labels:
    """Labels of a name that arrived as text (a log line): split on dots, one trailing dot
    dropped.  (A dot inside a label cannot be told from a boundary in text.)"""
    t = text[:-1] if text.endswith(".") else text
    return tuple(t.split(".")) if t else ()


def question_of(name: str, rrtype: str) -> DnsQuestion:
    """A question from a log line's text (canonical form)."""
    labels = labels_of(name)
    return DnsQuestion(name_text(labels) if labels else name, rrtype, labels)


def answer_of(rrname: str, rrtype: str, ttl: int, rdata: str, target: str | None) -> DnsAnswer:
    """An answer record from a log line's text (canonical form)."""
    labels = labels_of(rrname)
    tl = labels_of(target) if target else None
    return DnsAnswer(name_text(labels) if labels else rrname, rrtype, ttl, rdata,
                     name_text(tl) if tl else None, labels, tl or None)


class DnsQuestion(NamedTuple):
    name: str  # the displayed name (canonical form)
    rrtype: str
    labels: Labels


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    rrname: str
    rrtype: str
    ttl: int
    rdata: str  # a target name in the canonical form (MX, SRV: with their numbers); else dnspython's text
    target: str | None  # the name this record points at, if any
    rrname_labels: Labels = ()
    target_labels: Labels | None = None


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    qr: bool
    opcode: int
    rcode: str
    flags: int
    questions: tuple[DnsQuestion, ...]
    answers: tuple[DnsAnswer, ...]
    truncated: bool = False  # cut by the snaplen: only what lay whole in the captured bytes
    answer_count: int = 0  # a cut message: the answer records its header counts (some may be cut)

    def with_id(self, ident: int) -> DnsMessage:
        """The same message under another 16-bit id (``dataclasses.replace``, without its
        per-call field introspection: the pipeline's parsed-message cache calls it often)."""
        return DnsMessage(ident, self.qr, self.opcode, self.rcode, self.flags, self.questions, self.answers,
                          self.truncated, self.answer_count)


def _dnspython() -> None:
    """Import the parts of dnspython that only the general path uses (about 50 ms at
    start-up that a capture of common messages never needs)."""
    import dns.message  # noqa: F401
    import dns.name  # noqa: F401
    import dns.rdata  # noqa: F401
    import dns.rdataclass  # noqa: F401


def _target(rd: object) -> Labels | None:
    for attr in ("target", "exchange"):
        v = getattr(rd, attr, None)
        if isinstance(v, dns.name.Name):
            return name_labels(v)
    return None


def _answer(owner: dns.name.Name, rdtype: int, ttl: int, rd: dns.rdata.Rdata) -> DnsAnswer:
    labels = name_labels(owner)
    target = _target(rd)
    if target is None or rdtype in (dns.rdatatype.SVCB, dns.rdatatype.HTTPS):
        rdata = rd.to_text()[:512]
    elif rdtype == dns.rdatatype.MX:
        rdata = f"{getattr(rd, 'preference', 0)} {name_text(target)}"
    elif rdtype == dns.rdatatype.SRV:
        rdata = " ".join(str(getattr(rd, k, 0)) for k in ("priority", "weight", "port")) + " " + name_text(target)
    else:
        rdata = name_text(target)
    return DnsAnswer(
        name_text(labels), dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype)), int(ttl), rdata,
        None if target is None else name_text(target), labels, target,
    )


def _question(n: dns.name.Name, rdtype: int) -> DnsQuestion:
    labels = name_labels(n)
    return DnsQuestion(name_text(labels), dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype)), labels)


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
    text = name[1:].decode("ascii")
    return DnsMessage(
        id=(wire[0] << 8) | wire[1],
        qr=bool(qr),
        opcode=(flags >> 11) & 0xF,
        rcode=_RCODE_TEXT[flags & 0xF],
        flags=flags,
        questions=(DnsQuestion(text, ttext, tuple(text.split("."))),),
        answers=(),
    )


# Records the response fast path reads (A, CNAME, AAAA in class IN); anything else: dnspython.
_FAST_TYPES = {1: "A", 5: "CNAME", 28: "AAAA"}
_FAST_MAX_RECORDS = 16
_MAX_POINTER_CHAIN = 16  # dnspython's MAX_COMPRESSION_POINTER_CHAIN


def _plain_name(wire: bytes, pos: int, end: int) -> tuple[tuple[bytes, ...], int] | None:
    """A name of plain labels at ``pos`` (compressed or not) read exactly as dnspython reads
    it (pointers strictly backwards, each target ending before the name part that pointed
    at it, at most 255 bytes); its labels and where the record goes on.  None for a name
    dnspython would reject or that needs escaping: the caller then asks dnspython."""
    labels: list[bytes] = []
    start = biggest = pos
    limit = end
    after = -1
    hops = 0
    size = 1
    while True:
        if pos >= limit:
            return None
        n = wire[pos]
        if n == 0:
            pos += 1
            break
        if n < 64:
            stop = pos + 1 + n
            if stop > limit:
                return None
            label = wire[pos + 1 : stop]
            if label.translate(None, _PLAIN_BYTES):
                return None
            labels.append(label)
            size += n + 1
            pos = stop
        elif n >= 192 and pos + 2 <= limit:
            ptr = ((n & 0x3F) << 8) | wire[pos + 1]
            if after < 0:
                after = pos + 2
            hops += 1
            if ptr >= biggest or hops > _MAX_POINTER_CHAIN:
                return None
            biggest = ptr
            limit = start
            pos = start = ptr
        else:
            return None
    if size > 255:
        return None
    return tuple(labels), (pos if after < 0 else after)


def _simple_response(wire: bytes) -> DnsMessage | None:
    """The common answer without dnspython: a standard query's response with one question
    and A/AAAA/CNAME records of plain names (compressed or not), no authority records,
    and at most an EDNS OPT record without extended rcode bits.  It gives what
    dnspython gives (records grouped into RRsets in first-seen order, duplicates dropped,
    the smallest TTL, a later CNAME of the same owner replacing an earlier one), or None
    for anything else; ``test_dns`` checks both agree on generated and mutated messages."""
    flags = (wire[2] << 8) | wire[3]
    qd, an, ns, ar = (wire[4] << 8) | wire[5], (wire[6] << 8) | wire[7], (wire[8] << 8) | wire[9], (wire[10] << 8) | wire[11]
    if not flags & 0x8000 or flags & 0x7800 or qd != 1 or ns or ar > 1 or an > _FAST_MAX_RECORDS:
        return None
    end = len(wire)
    q = _plain_name(wire, 12, end)
    if q is None or q[1] + 4 > end:
        return None
    qlabels, pos = q
    qtype = (wire[pos] << 8) | wire[pos + 1]
    pos += 4
    rrsets: dict[tuple[tuple[bytes, ...], int], list] = {}  # (owner, lower-cased; type) -> [owner, ttl, rdatas]
    for _ in range(an):
        o = _plain_name(wire, pos, end)
        if o is None or o[1] + 10 > end:
            return None
        owner, pos = o
        rdtype, rdclass, rdlen = (wire[pos] << 8) | wire[pos + 1], (wire[pos + 2] << 8) | wire[pos + 3], (wire[pos + 8] << 8) | wire[pos + 9]
        ttl = int.from_bytes(wire[pos + 4 : pos + 8], "big")
        pos += 10
        rend = pos + rdlen
        if rdtype not in _FAST_TYPES or rdclass != 1 or rend > end:
            return None
        rd: bytes | tuple[bytes, ...]
        if rdtype == 5:
            t = _plain_name(wire, pos, rend)
            if t is None or t[1] != rend:
                return None
            rd = t[0]
        elif rdlen != (4 if rdtype == 1 else 16):
            return None
        else:
            rd = wire[pos:rend]
        pos = rend
        if ttl > 0x7FFFFFFF:
            ttl = 0
        key = (tuple(x.lower() for x in owner), rdtype)
        rrset = rrsets.get(key)
        if rrset is None:
            rrsets[key] = [owner, ttl, [rd]]
            continue
        rrset[1] = min(rrset[1], ttl)
        if rdtype == 5:
            rrset[2] = [rd]  # a singleton type
        elif rd not in rrset[2]:
            rrset[2].append(rd)
    # The additional record: an OPT (root name) without extended rcode bits.  Nothing else
    # of it shows in what we return: whether dnspython reads its options or records an
    # error for them (continue_on_error), the rcode is the header's.
    if ar and (pos + 11 > end or wire[pos] or wire[pos + 1 : pos + 3] != b"\x00\x29" or wire[pos + 5]):
        return None
    if not rrsets and not ar:
        return None  # _simple's case, or nothing to gain
    answers: list[DnsAnswer] = []
    for (_, rdtype), (owner, ttl, rdatas) in rrsets.items():
        labels = tuple(x.decode("ascii") for x in owner)
        rrname, rrtype = name_text(labels), _FAST_TYPES[rdtype]
        for value in rdatas:
            if len(answers) >= MAX_ANSWERS:
                break
            if rdtype == 5:
                target = tuple(x.decode("ascii") for x in value)
                text = name_text(target)
                answers.append(DnsAnswer(rrname, rrtype, ttl, text, text, labels, target))
            else:
                addr = dns.ipv4.inet_ntoa(value) if rdtype == 1 else dns.ipv6.inet_ntoa(value)
                answers.append(DnsAnswer(rrname, rrtype, ttl, addr, None, labels, None))
    ttext = _TYPE_TEXT.get(qtype)
    if ttext is None:
        ttext = _TYPE_TEXT[qtype] = dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]  # (any int is taken)
    qtext = tuple(x.decode("ascii") for x in qlabels)
    return DnsMessage(
        id=(wire[0] << 8) | wire[1],
        qr=True,
        opcode=0,
        rcode=_RCODE_TEXT[flags & 0xF],
        flags=flags,
        questions=(DnsQuestion(name_text(qtext), ttext, qtext),),
        answers=tuple(answers),
    )


def parse_message(wire: bytes, cut: bool = False) -> DnsMessage:
    """``cut``: the capture's snaplen cut the datagram, so ``wire`` may end anywhere."""
    if len(wire) < 12:
        raise DecodeError("dns-truncated-header")
    if not cut:
        simple = _simple(wire) or _simple_response(wire)
        if simple is not None:
            return simple
    return _full(wire, cut)


def _full(wire: bytes, cut: bool = False) -> DnsMessage:
    """Any message, by dnspython (or as far as its bytes go, when ``cut``)."""
    _dnspython()
    try:
        if cut:
            return _parse_cut(wire)
        # A query (QR clear) needs only its question: parsing nothing else is much cheaper.
        query = not wire[2] & 0x80
        msg = dns.message.from_wire(wire, ignore_trailing=True, continue_on_error=True, question_only=query)
        if msg.errors and not any(msg.sections):
            # Nothing could be salvaged (continue_on_error keeps what parsed before a bad
            # record, which we still want for partly damaged answers).
            raise DecodeError("dns-malformed", type(msg.errors[0].exception).__name__)
        questions = tuple(_question(rrset.name, rrset.rdtype) for rrset in msg.question)
        answers: list[DnsAnswer] = []
        for rrset in msg.answer:
            for rd in rrset:
                if len(answers) >= MAX_ANSWERS:
                    break
                answers.append(_answer(rrset.name, rrset.rdtype, rrset.ttl, rd))
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


def _parse_cut(wire: bytes) -> DnsMessage:
    """A message the snaplen cut: the header, then questions and answer records for as long
    as each lies whole in ``wire`` (a name's compression pointers must point into it too).
    The first record that runs past the end stops the read; nothing after it is guessed."""
    ident, flags, qdcount, ancount = (int.from_bytes(wire[i : i + 2], "big") for i in (0, 2, 4, 6))
    pos = 12
    questions: list[DnsQuestion] = []
    answers: list[DnsAnswer] = []
    try:
        for _ in range(min(qdcount, MAX_QUESTIONS)):
            n, used = dns.name.from_wire(wire, pos)
            if pos + used + 4 > len(wire):
                raise DecodeError("dns-cut")
            rdtype = int.from_bytes(wire[pos + used : pos + used + 2], "big")
            questions.append(_question(n, rdtype))
            pos += used + 4
        if flags & 0x8000:
            for _ in range(min(ancount, MAX_ANSWERS)):
                n, used = dns.name.from_wire(wire, pos)
                p = pos + used
                if p + 10 > len(wire):
                    raise DecodeError("dns-cut")
                rdtype = int.from_bytes(wire[p : p + 2], "big")
                rdclass = int.from_bytes(wire[p + 2 : p + 4], "big")
                ttl = int.from_bytes(wire[p + 4 : p + 8], "big")
                rdlen = int.from_bytes(wire[p + 8 : p + 10], "big")
                if p + 10 + rdlen > len(wire):
                    raise DecodeError("dns-cut")
                rd = dns.rdata.from_wire(dns.rdataclass.RdataClass.make(rdclass), dns.rdatatype.RdataType.make(rdtype),
                                         wire, p + 10, rdlen)
                answers.append(_answer(n, rdtype, ttl, rd))
                pos = p + 10 + rdlen
    except (DecodeError, dns.exception.DNSException, ValueError, IndexError):
        pass  # the rest lies beyond the captured bytes (or is damaged): what was read stands
    if not questions and not answers:
        raise DecodeError("dns-cut-before-a-name")
    return DnsMessage(
        id=ident,
        qr=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=dns.rcode.to_text(dns.rcode.Rcode.make(flags & 0xF)),
        flags=flags,
        questions=tuple(questions),
        answers=tuple(answers),
        truncated=True,
        answer_count=ancount,
    )


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
