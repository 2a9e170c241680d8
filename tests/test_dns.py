"""DNS messages (RFC 1035) over UDP and TCP, parsed with dnspython."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import DecodeError
from detector.parsers import dns as dnsp
from detector.parsers.dns import MAX_ANSWERS, DnsAnswer, DnsMessage, parse_message, split_tcp

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def query(name: str = "activation-v2.kaspersky.com", rdtype: str = "A", qid: int = 4242) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, id=qid)


def cname_response() -> dns.message.Message:
    """www.benign.example -> CNAME chain into vendor infrastructure -> A records."""
    r = dns.message.make_response(query("www.benign.example", "A", 7))
    r.answer.append(dns.rrset.from_text("www.benign.example.", 300, "IN", "CNAME", "cdn.benign.example."))
    r.answer.append(dns.rrset.from_text("cdn.benign.example.", 300, "IN", "CNAME", "s07.upd.kaspersky.com."))
    r.answer.append(dns.rrset.from_text("s07.upd.kaspersky.com.", 60, "IN", "A", "192.0.2.1", "192.0.2.2"))
    return r


def wire_of(msg: dns.message.Message) -> bytes:
    return msg.to_wire()


def tcp_frame(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


# -- parse_message -------------------------------------------------------------------------


def test_query_fields() -> None:
    msg = parse_message(wire_of(query()))
    assert msg.id == 4242
    assert msg.qr is False
    assert msg.opcode == 0
    assert msg.rcode == "NOERROR"
    assert msg.flags & dns.flags.RD
    assert msg.questions == (("activation-v2.kaspersky.com", "A", ("activation-v2", "kaspersky", "com")),)
    assert msg.answers == ()


def test_response_with_cname_chain() -> None:
    msg = parse_message(wire_of(cname_response()))
    assert msg.qr is True
    assert msg.id == 7
    assert [q[:2] for q in msg.questions] == [("www.benign.example", "A")]
    assert msg.answers[:2] == (
        DnsAnswer("www.benign.example", "CNAME", 300, "cdn.benign.example", "cdn.benign.example",
                  ("www", "benign", "example"), ("cdn", "benign", "example")),
        DnsAnswer("cdn.benign.example", "CNAME", 300, "s07.upd.kaspersky.com", "s07.upd.kaspersky.com",
                  ("cdn", "benign", "example"), ("s07", "upd", "kaspersky", "com")),
    )
    # the order of records inside one RRset is not significant
    assert set(msg.answers[2:]) == {
        DnsAnswer("s07.upd.kaspersky.com", "A", 60, "192.0.2.1", None, ("s07", "upd", "kaspersky", "com")),
        DnsAnswer("s07.upd.kaspersky.com", "A", 60, "192.0.2.2", None, ("s07", "upd", "kaspersky", "com")),
    }


@pytest.mark.parametrize(
    ("rdtype", "rdata", "target", "shown"),
    [
        ("CNAME", "t.kaspersky.com.", "t.kaspersky.com", "t.kaspersky.com"),
        ("CNAME", "a\\032b\\.c.kaspersky.com.", "a b.c.kaspersky.com", "a b.c.kaspersky.com"),
        ("DNAME", "kaspersky.com.", "kaspersky.com", "kaspersky.com"),
        ("MX", "10 mx12.kaspersky-labs.com.", "mx12.kaspersky-labs.com", "10 mx12.kaspersky-labs.com"),
        ("NS", "ns1.kaspersky.com.", "ns1.kaspersky.com", "ns1.kaspersky.com"),
        ("PTR", "crl.kaspersky.com.", "crl.kaspersky.com", "crl.kaspersky.com"),
        ("SRV", "0 5 443 ksc.kaspersky.com.", "ksc.kaspersky.com", "0 5 443 ksc.kaspersky.com"),
        ("HTTPS", "1 svc.kaspersky.com. alpn=h2", "svc.kaspersky.com", "1 svc.kaspersky.com. alpn=\"h2\""),
        ("A", "192.0.2.9", None, "192.0.2.9"),
        ("AAAA", "2001:db8::9", None, "2001:db8::9"),
        ("TXT", '"v=spf1 -all"', None, '"v=spf1 -all"'),
    ],
)
def test_answer_targets(rdtype: str, rdata: str, target: str | None, shown: str) -> None:
    r = dns.message.make_response(query("q.example", rdtype))
    r.answer.append(dns.rrset.from_text("q.example.", 120, "IN", rdtype, rdata))
    (ans,) = parse_message(wire_of(r)).answers
    assert ans.rrname == "q.example"
    assert ans.rrtype == rdtype
    assert ans.ttl == 120
    assert ans.target == target
    assert ans.rdata == shown  # a name in the canonical form, as every evidence kind shows it


@pytest.mark.parametrize(
    ("rcode", "text"),
    [(dns.rcode.NOERROR, "NOERROR"), (dns.rcode.NXDOMAIN, "NXDOMAIN"), (dns.rcode.SERVFAIL, "SERVFAIL"),
     (dns.rcode.REFUSED, "REFUSED")],
)
def test_rcode_text(rcode: int, text: str) -> None:
    r = dns.message.make_response(query())
    r.set_rcode(rcode)
    assert parse_message(wire_of(r)).rcode == text


def test_extended_rcode_through_edns() -> None:
    r = dns.message.make_response(dns.message.make_query("x.example", "A", use_edns=0))
    r.set_rcode(dns.rcode.BADVERS)
    assert parse_message(wire_of(r)).rcode == "BADVERS"


def test_answers_are_capped() -> None:
    r = dns.message.make_response(query("many.example", "A"))
    addrs = [f"192.0.2.{i}" for i in range(1, MAX_ANSWERS + 20)]
    r.answer.append(dns.rrset.from_text("many.example.", 60, "IN", "A", *addrs))
    assert len(parse_message(wire_of(r)).answers) == MAX_ANSWERS


def test_trailing_bytes_are_ignored() -> None:
    assert [q[:2] for q in parse_message(wire_of(query()) + b"\x00junk").questions] == [
        ("activation-v2.kaspersky.com", "A"),
    ]


def test_root_question() -> None:
    assert parse_message(wire_of(query(".", "NS"))).questions == ((".", "NS", ()),)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "dns-truncated-header"),
        (b"\x00" * 11, "dns-truncated-header"),
        (wire_of(query())[:11], "dns-truncated-header"),
    ],
    ids=["empty", "eleven-zeros", "query-cut-at-11"],
)
def test_short_header_raises(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        parse_message(wire)
    assert exc.value.reason == reason


_HDR_ONE_QUESTION = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (wire_of(query())[:-3], "dns-malformed"),  # question cut inside the type/class
        (wire_of(query())[:15], "dns-malformed"),  # cut inside the name
        (_HDR_ONE_QUESTION, "dns-malformed"),  # header says one question, nothing follows
        (_HDR_ONE_QUESTION + b"\xc0\x0c\x00\x01\x00\x01", "dns-malformed"),  # pointer to itself
        (_HDR_ONE_QUESTION + b"\x41abc\x00\x00\x01\x00\x01", "dns-malformed"),  # label type 0x40
    ],
    ids=["cut-type-class", "cut-in-name", "missing-question", "pointer-loop", "bad-label-type"],
)
def test_truncated_and_garbage_raise(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        parse_message(wire)
    assert exc.value.reason == reason


def test_truncated_message_never_leaks_other_exceptions() -> None:
    wire = wire_of(cname_response())
    for i in range(len(wire)):
        _check_outcome(wire[:i])


# -- split_tcp -----------------------------------------------------------------------------


def test_split_tcp_two_messages_in_one_buffer() -> None:
    a, b = wire_of(query()), wire_of(cname_response())
    stream = tcp_frame(a) + tcp_frame(b)
    msgs, used = split_tcp(stream)
    assert msgs == [a, b]
    assert used == len(stream)
    assert [parse_message(m).id for m in msgs] == [4242, 7]


def test_split_tcp_message_split_across_calls() -> None:
    a, b = wire_of(query()), wire_of(cname_response())
    stream = tcp_frame(a) + tcp_frame(b)
    cut = len(tcp_frame(a)) + 10  # inside the second message
    msgs, used = split_tcp(stream[:cut])
    assert msgs == [a]
    assert used == len(tcp_frame(a))
    # the caller drops what was used and appends the next segment
    rest = stream[:cut][used:] + stream[cut:]
    msgs, used2 = split_tcp(rest)
    assert msgs == [b]
    assert used2 == len(rest)


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
def test_split_tcp_incomplete_prefix_consumes_nothing(cut: int) -> None:
    frame = tcp_frame(wire_of(query()))
    assert split_tcp(frame[:cut]) == ([], 0)
    assert split_tcp(frame[:-1]) == ([], 0)


def test_split_tcp_every_prefix() -> None:
    frames = [tcp_frame(wire_of(query())), tcp_frame(wire_of(cname_response()))]
    stream = b"".join(frames)
    for i in range(len(stream) + 1):
        msgs, used = split_tcp(stream[:i])
        expected = [f[2:] for j, f in enumerate(frames) if len(b"".join(frames[: j + 1])) <= i]
        assert msgs == expected
        assert used == sum(len(f) for f in frames[: len(expected)])


@pytest.mark.parametrize(
    "stream",
    [b"\x00\x00", b"\x00\x00" + tcp_frame(wire_of(query())), tcp_frame(wire_of(query())) + b"\x00\x00"],
)
def test_split_tcp_zero_length_raises(stream: bytes) -> None:
    with pytest.raises(DecodeError) as exc:
        split_tcp(stream)
    assert exc.value.reason == "dns-tcp-zero-length"


# -- fuzz ----------------------------------------------------------------------------------


def _check_outcome(wire: bytes) -> None:
    try:
        out = parse_message(wire)
    except DecodeError as exc:
        assert exc.reason.startswith("dns-")
        return
    assert isinstance(out, DnsMessage)
    for ans in out.answers:
        assert isinstance(ans, DnsAnswer)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_outcome(data)


@FUZZ
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=200))
def test_fuzz_valid_looking_header_then_noise(header: bytes, body: bytes) -> None:
    # counts of one question and one answer so dnspython walks the noise
    _check_outcome(header[:4] + b"\x00\x01\x00\x01\x00\x00\x00\x00" + body)


_RESPONSE = wire_of(cname_response())


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_RESPONSE) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(12, len(_RESPONSE)))
def test_fuzz_mutations_of_valid_response(edits: list[tuple[int, int]], keep: int) -> None:
    buf = bytearray(_RESPONSE)
    for i, v in edits:
        buf[i] = v
    _check_outcome(bytes(buf[:keep]))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_split_tcp(data: bytes) -> None:
    try:
        msgs, used = split_tcp(data)
    except DecodeError as exc:
        assert exc.reason == "dns-tcp-zero-length"
        return
    assert 0 <= used <= len(data)
    assert used == sum(len(m) + 2 for m in msgs)


# -- messages cut by the snaplen --------------------------------------------------------------
def test_every_cut_of_an_answer_gives_only_whole_names() -> None:
    """Cut a CNAME-chain answer (with an EDNS OPT record) at every length: the names read
    are those whose record lies whole in the bytes kept, in order, and the message says
    it was cut; before the question is whole, nothing is read."""
    r = cname_response()
    r.use_edns(0)
    wire = wire_of(r)
    full = parse_message(wire)
    q_end = 12 + len(dns.name.from_text("www.benign.example").to_wire()) + 4
    seen_answers = 0
    for n in range(12, len(wire) + 1):
        try:
            msg = parse_message(wire[:n], cut=True)
        except DecodeError:
            assert n < q_end
            continue
        assert n >= q_end
        assert msg.truncated and msg.id == 7 and msg.qr
        assert msg.questions == full.questions
        assert msg.answers == full.answers[: len(msg.answers)]
        assert len(msg.answers) >= seen_answers  # more bytes never give fewer records
        seen_answers = len(msg.answers)
    assert seen_answers == len(full.answers)


def test_a_query_cut_inside_its_opt_record_keeps_its_question() -> None:
    q = query()
    q.use_edns(0, options=[dns.edns.GenericOption(10, b"\x01" * 8)])  # a client cookie, as dig sends
    wire = wire_of(q)
    q_end = 12 + len(dns.name.from_text("activation-v2.kaspersky.com").to_wire()) + 4
    with pytest.raises(DecodeError):
        parse_message(wire[: q_end - 1], cut=True)
    for n in range(q_end, len(wire)):
        msg = parse_message(wire[:n], cut=True)
        assert [x[:2] for x in msg.questions] == [("activation-v2.kaspersky.com", "A")]
        assert msg.truncated and not msg.answers


# -- the fast path for simple messages agrees with dnspython ------------------------------------
_LABEL_BYTES = st.sampled_from(list(b"abcXYZ019-_*") + [0x2E, 0x5C, 0x20, 0x22, 0x40, 0xFF, 0x00, 0x7F, 0x3B])


@st.composite
def _simple_candidates(draw) -> bytes:
    labels = draw(st.lists(st.binary(min_size=0, max_size=70).map(bytes) | st.lists(_LABEL_BYTES, min_size=1, max_size=12).map(bytes),
                           min_size=0, max_size=6))
    qname = b"".join(bytes([len(lab) if draw(st.booleans()) or len(lab) < 64 else draw(st.integers(0, 255))]) + lab
                     for lab in labels) + draw(st.sampled_from([b"\x00", b"", b"\xc0\x0c", b"\x00"]))
    flags = draw(st.integers(0, 0xFFFF))
    counts = draw(st.sampled_from([(1, 0, 0, 0), (1, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 1), (2, 0, 0, 0), (0, 0, 0, 0)]))
    tail = draw(st.binary(max_size=8)) if draw(st.booleans()) else struct.pack("!HH", draw(st.integers(0, 0xFFFF)), 1)
    return struct.pack("!HH4H", draw(st.integers(0, 0xFFFF)), flags, *counts) + qname + tail


@settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(_simple_candidates())
def test_simple_path_matches_dnspython(wire: bytes) -> None:
    fast = dnsp._simple(wire)
    if fast is None:
        return
    assert fast == dnsp._full(wire)


def test_simple_path_is_taken_for_a_plain_query_and_an_empty_answer() -> None:
    q = dns.message.make_query("x7k2.upd.kaspersky.com", "AAAA", use_edns=False)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    for m in (q, r):
        wire = m.to_wire()
        assert dnsp._simple(wire) is not None and dnsp._simple(wire) == dnsp._full(wire)
    assert dnsp._simple(dns.message.make_query("a\\.b.example", "A").to_wire()) is None  # needs escaping


def test_dns_message_with_id_is_replace():
    """``DnsMessage.with_id`` (the pipeline's DNS cache) copies every field but the id; a
    field added later and forgotten there fails here."""
    import dataclasses

    from detector.parsers.dns import DnsMessage, DnsQuestion

    values = {"id": 1, "qr": True, "opcode": 2, "rcode": "NXDOMAIN", "flags": 0x8183,
              "questions": (DnsQuestion("a.example", "A", ("a", "example")),), "answers": (), "truncated": True,
              "answer_count": 3}
    assert set(values) == {f.name for f in dataclasses.fields(DnsMessage)}
    msg = DnsMessage(**values)
    assert msg.with_id(0xBEEF) == dataclasses.replace(msg, id=0xBEEF)


# -- the fast path for common answers agrees with dnspython -------------------------------------
_POOL = [b"www", b"WWW", b"cdn", b"upd", b"kaspersky", b"KasperSky", b"com", b"x-1", b"_tcp", b"a\\b", b"a.b", b"\xff"]


@st.composite
def _response_candidates(draw) -> bytes:
    """Responses built byte by byte: names plain or not, compressed (pointers valid or
    not), A/AAAA/CNAME and other records, repeated owners and rdata, odd TTLs, an OPT or
    other additional record; then maybe a few bytes changed or the tail cut."""
    out = bytearray()
    names: list[int] = []  # offsets where a name starts (pointer targets)
    clean = draw(st.booleans())  # only what the fast path takes (and dnspython reads alike)

    def pick(good: list, bad: list):
        return draw(st.sampled_from(good if clean else good + bad))

    def name() -> bytes:
        kind = pick(["plain", "pointer", "tail"], ["badptr", "plain"])
        if kind == "pointer" and names:
            return struct.pack("!H", 0xC000 | draw(st.sampled_from(names)))
        if kind == "badptr":
            return struct.pack("!H", 0xC000 | draw(st.integers(0, len(out) + 40)))
        labels = draw(st.lists(st.sampled_from(_POOL[:-3] if clean else _POOL), min_size=0 if kind == "plain" else 1, max_size=4))
        body = b"".join(bytes([len(x)]) + x for x in labels)
        if kind == "tail" and names:
            return body + struct.pack("!H", 0xC000 | draw(st.sampled_from(names)))
        return body + b"\x00"

    flags = pick([0x8180, 0x8580, 0x8183, 0x8182, 0x8380, 0x8185], [0x0100, 0x8980])
    n_an = draw(st.integers(0, 5))
    additional = pick(["none", "opt", "opt-options"], ["opt-ext", "opt-notroot", "a"])
    n_ns = pick([0], [1])
    out += struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, pick([1], [2]), n_an,
                       n_ns, 0 if additional == "none" else 1)
    names.append(len(out))
    out += name() + struct.pack("!HH", draw(st.sampled_from([1, 28, 5, 255, 0])), 1)
    for _ in range(n_an + n_ns):
        start = len(out)
        owner = name()
        rdtype = pick([1, 28, 5], [2, 16])
        if rdtype in (1, 28):
            rdata = pick([b"\xc6\x12\x00\x01", b"\xc6\x12\x00\x02", b"\x00" * 4], [b"\x01\x02\x03"])
            if rdtype == 28:
                rdata = draw(st.sampled_from([bytes(16), b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01",
                                              bytes(10) + b"\xff\xff\xc6\x12\x00\x01", bytes(12) + b"\x01\x02\x03\x04"]))
        elif rdtype == 16:
            rdata = b"\x03abc"
        else:
            rdata = name()
        if not clean and draw(st.integers(0, 4)) == 0:
            rdata += b"\x00"  # a byte too many
        ttl = draw(st.sampled_from([0, 60, 300, 59, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]))
        out += owner + struct.pack("!HHIH", rdtype, pick([1], [3]), ttl, len(rdata))
        rd_at = len(out)
        out += rdata
        names.append(start)
        if rdtype in (5, 2):
            names.append(rd_at)
    if additional.startswith("opt"):
        options = b"\x00\x0f\x00\x02\x00\x05" if additional == "opt-options" else b""
        ext = b"\x01\x00\x00\x00" if additional == "opt-ext" else b"\x00\x00\x80\x00"
        out += (b"\xc0\x0c" if additional == "opt-notroot" else b"\x00") + b"\x00\x29\x04\xd0" + ext
        out += struct.pack("!H", len(options)) + options
    elif additional == "a":
        out += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc6\x12\x00\x09"
    if draw(st.booleans()):
        out += draw(st.binary(max_size=4))  # trailing bytes (dnspython ignores them)
    if not clean:
        for _ in range(draw(st.integers(0, 2))):
            out[draw(st.integers(2, len(out) - 1))] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            del out[draw(st.integers(12, len(out))):]
    return bytes(out)


@settings(max_examples=4000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(_response_candidates())
def test_response_fast_path_matches_dnspython(wire: bytes) -> None:
    fast = dnsp._simple_response(wire)
    if fast is None:
        return
    assert fast == dnsp._full(wire)


def test_response_fast_path_is_taken_for_common_answers() -> None:
    """A CNAME chain with EDNS, and the answers the benchmark capture is full of (dnsmasq:
    one record and an OPT, EDE options on a refusal)."""
    r = cname_response()
    r.use_edns(0)
    q = query("dc1.ksn.kaspersky-labs.com", "AAAA")
    refused = dns.message.make_response(q)
    refused.set_rcode(dns.rcode.REFUSED)
    refused.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode.PROHIBITED, "blocked")])
    dup = dns.message.make_response(query("s07.upd.kaspersky.com"))
    dup.answer.append(dns.rrset.from_text("s07.upd.kaspersky.com.", 60, "IN", "A", "192.0.2.1"))
    dup.answer.append(dns.rrset.from_text("S07.upd.kaspersky.com.", 30, "IN", "A", "192.0.2.1", "192.0.2.2"))
    wires = [wire_of(m) for m in (r, cname_response(), refused)] + [
        bytes.fromhex("ce718580000100010000000103646331036b736e0e6b6173706572736b792d6c61627303636f6d0000010001"
                      "c00c000100010000003c0004c612000100002904d0000000000000"),
        dup.to_wire(),
    ]
    for wire in wires:
        fast = dnsp._simple_response(wire)
        assert fast is not None and fast == dnsp._full(wire)
        assert parse_message(wire) == fast
    assert [(a.rrname, a.ttl, a.rdata) for a in dnsp._simple_response(dup.to_wire()).answers] == [
        ("s07.upd.kaspersky.com", 30, "192.0.2.1"), ("s07.upd.kaspersky.com", 30, "192.0.2.2")]


def test_response_fast_path_leaves_the_rest_to_dnspython() -> None:
    r = cname_response()
    r.use_edns(0)
    r.set_rcode(dns.rcode.BADVERS)  # an extended rcode, in the OPT record
    mx = dns.message.make_response(query("kaspersky.com", "MX"))
    mx.answer.append(dns.rrset.from_text("kaspersky.com.", 60, "IN", "MX", "10 mx.kaspersky.com."))
    escaped = dns.message.make_response(query("a\\.b.example"))
    escaped.answer.append(dns.rrset.from_text("a\\.b.example.", 60, "IN", "A", "192.0.2.1"))
    for m in (r, mx, escaped, query()):
        assert dnsp._simple_response(m.to_wire()) is None
