"""Fuzz targets for every parser and decoder of the pure-Python path, and their seeds.

A target takes bytes and either returns or raises the declared error of its layer
(``DecodeError`` for wire data, ``CaptureError`` for capture files, ``SignatureError`` for
signature files); anything else escaping is a bug.  Seeds come from the real captures in
``pcaps/`` (frames, and the DNS, TLS, HTTP, QUIC payloads and certificates the detector's own
decoders take out of them) and from the bundled signature pack.

Used by ``tests/test_fuzz.py`` (a short derandomized hypothesis run of each, plus every
saved finding in ``tests/fuzz/regressions/``) and by ``tests/fuzz/run.py`` (the long run).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detector.capture.pcap import CaptureFile
from detector.decode import transport
from detector.decode.flows import FlowTable, Stream
from detector.decode.ip import IPDecoder
from detector.decode.link import strip_link
from detector.errors import CaptureError, DecodeError, SignatureError

REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
LINKTYPES = (1, 0, 101, 113, 276, 12, 228, 229, 108, 14)
MAX_SEED = 4096

Target = Callable[[bytes], object]


def _parts(data: bytes, n_max: int = 8) -> list[bytes]:
    """Cut one input into up to ``n_max`` pieces (a length byte before each)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data) and len(out) < n_max:
        n = data[pos]
        out.append(data[pos + 1 : pos + 1 + n * 8])
        pos += 1 + n * 8
    return out


# -- targets --------------------------------------------------------------------------------------
def link(data: bytes) -> object:
    if not data:
        return None
    try:
        return strip_link(LINKTYPES[data[0] % len(LINKTYPES)], data[1:])
    except DecodeError:
        return None


def ip(data: bytes) -> object:
    """IPv4/IPv6 headers and fragment reassembly: every piece fed to one decoder."""
    dec = IPDecoder(max_datagrams=16, max_bytes=1 << 16)
    for i, piece in enumerate([data, *_parts(data)]):
        with contextlib.suppress(DecodeError):
            dec.decode(4 if piece[:1] and piece[0] >> 4 == 4 else 6, piece, 0, float(i))
    assert 0 <= dec._frag_bytes <= dec.max_bytes + (1 << 16)
    return None


def tcp_reassembly(data: bytes) -> object:
    """Segments at chosen offsets (overlaps, gaps, wrap-around) into a small table: the
    byte caps must hold whatever the order."""
    cap = 256
    table = FlowTable(max_flows=4, max_stream=cap, max_bytes=3 * cap)
    for i, piece in enumerate(_parts(data, 32)):
        if len(piece) < 4:
            continue
        key = ("a", i % 6, "b", 80)
        s = table.get(key)
        if not isinstance(s, Stream):
            s = Stream(1000, 0.0)
            table.set(key, s)
        seq = (1000 + struct.unpack("!h", piece[:2])[0] * 4) & 0xFFFFFFFF
        table.grow(key, s, seq, piece[2:])
        assert len(s.data) <= cap and s.pbytes <= cap
    assert table.buffered == sum(s.acct for _, s in table.streams())
    assert table.buffered <= 3 * cap + 2 * cap
    return None


def transport_headers(data: bytes) -> object:
    for fn in (transport.tcp, transport.udp):
        with contextlib.suppress(DecodeError):
            fn(data)
    return None


def dns(data: bytes) -> object:
    from detector.parsers import dns as dnsp

    for fn in (dnsp.parse_message, dnsp.split_tcp):
        with contextlib.suppress(DecodeError):
            fn(data)
    return None


def tls(data: bytes) -> object:
    from detector.parsers import tls as tlsp

    tlsp.looks_like_tls(data[:6])
    tlsp.looks_like_server_hello(data[:6])
    for fn in (tlsp.parse_client_hello, tlsp.parse_server_flight):
        with contextlib.suppress(DecodeError):
            fn(data)
    return None


def x509(data: bytes) -> object:
    from detector.parsers import x509 as x

    try:
        return x.cert_names(data)
    except DecodeError:
        return None


def http(data: bytes) -> object:
    from detector.parsers import http as httpp

    httpp.looks_like_http(data[:8])
    try:
        req = httpp.parse_request(data)
    except DecodeError:
        return None
    if req is not None:
        httpp.target_host(req.method, req.target)
        if req.host:
            httpp.authority_host(req.host)
    return None


def quic(data: bytes) -> object:
    from detector.parsers import quic as quicp

    t = quicp.QuicTracker(max_conns=8, max_bytes=1 << 16)
    for i, piece in enumerate([data, *_parts(data, 4)]):
        with contextlib.suppress(DecodeError):
            t.datagram("198.18.0.10", 50000, "198.18.0.1", 443, piece, float(i))
    return None


def _file(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="kd-fuzz-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _read_whole_file(data: bytes, open_capture: Callable[[str], Any]) -> None:
    """Write ``data`` to a file and read every record of it: only CaptureError (an
    unreadable file) may escape; damage is a bounded warning."""
    path = _file(data, ".pcap")
    try:
        with open_capture(path) as cf:
            for _ in cf:
                pass
            assert cf.warning is None or len(cf.warning) < 4096
    except CaptureError:
        pass
    finally:
        os.unlink(path)


def capture_file(data: bytes) -> object:
    """The pcap/pcapng reader (and its gzip/bzip2/xz front) on whole files."""
    _read_whole_file(data, CaptureFile)
    return None


def capture_file_core(data: bytes) -> object:
    """The compiled core's reader and classifier on whole files (skipped where the core is
    not built)."""
    from detector import Detector
    from detector.capture import core

    if core.AVAILABLE:
        matcher = _detector(Detector).matcher  # type: ignore[attr-defined]
        _read_whole_file(data, lambda path: core.CoreCapture(path, matcher))
    return None


def log_file(data: bytes) -> object:
    """`detector ingest`'s readers (Suricata EVE JSON, Zeek TSV and JSON logs, gzip) on
    whole files: malformed lines are counted, never raised."""
    from detector.capture.logs import LogStats, read_log

    path = _file(data, ".log")
    try:
        stats = LogStats()
        for _ in read_log(path, stats):
            pass
    except CaptureError:
        pass
    finally:
        os.unlink(path)
    return None


def signature_file(data: bytes) -> object:
    from detector.signatures import load_signatures

    path = _file(data, ".yaml")
    try:
        with contextlib.suppress(SignatureError):
            load_signatures([path])
    finally:
        os.unlink(path)
    return None


def pipeline(data: bytes) -> object:
    """Whole frames through a strict Detector (any exception but DecodeError is raised,
    not counted), then every alert through every output format."""
    from detector import Detector
    from detector.formats import FORMATS

    det = _detector(Detector)
    det.reset_state()
    alerts = []
    for i, piece in enumerate([data, *_parts(data, 6)]):
        if piece:
            alerts += det.feed(1_700_000_000.0 + i, LINKTYPES[piece[0] % 3], piece[1:])
    alerts += det.flush()
    for a in alerts:
        for fmt in FORMATS.values():
            fmt(a)
    return None


@functools.cache
def _detector(cls: type) -> object:
    return cls(strict=True)


TARGETS: dict[str, Target] = {
    "link": link,
    "ip": ip,
    "tcp_reassembly": tcp_reassembly,
    "transport": transport_headers,
    "dns": dns,
    "tls": tls,
    "x509": x509,
    "http": http,
    "quic": quic,
    "capture_file": capture_file,
    "capture_file_core": capture_file_core,
    "log_file": log_file,
    "signature_file": signature_file,
    "pipeline": pipeline,
}
ALLOWED = (DecodeError, CaptureError, SignatureError)


# -- seeds ----------------------------------------------------------------------------------------
@functools.cache
def frames() -> tuple[tuple[int, bytes], ...]:
    """(linktype, frame) of every bundled capture, at most 64 per file."""
    out: list[tuple[int, bytes]] = []
    for path in sorted(PCAPS.rglob("*.pcap*")):
        if "damaged" in path.parts or path.suffix == ".gz":
            continue
        try:
            with CaptureFile(str(path)) as cf:
                for n, (_ts, lt, data, _w) in enumerate(cf):
                    if n >= 64:
                        break
                    out.append((lt, bytes(data[:MAX_SEED])))
        except CaptureError:
            continue
    return tuple(out)


@functools.cache
def payloads() -> dict[str, tuple[bytes, ...]]:
    """Transport payloads of the bundled captures, sorted by what they look like."""
    from detector.parsers import tls as tlsp

    kinds: dict[str, list[bytes]] = {k: [] for k in ("ip", "transport", "dns", "tls", "http", "quic", "cert")}
    dec = IPDecoder()
    for lt, frame in frames():
        try:
            lk = strip_link(lt, frame)
            if lk is None:
                continue
            kinds["ip"].append(frame[lk[1]:])
            res = dec.decode(lk[0], frame, lk[1], 0.0)
        except DecodeError:
            continue
        if res is None:
            continue
        _src, _dst, proto, l4 = res
        kinds["transport"].append(l4)
        try:
            if proto == 17:
                sport, dport, pl = transport.udp(l4)
                kinds["dns" if 53 in (sport, dport) else "quic"].append(pl)
            elif proto == 6:
                pl = transport.tcp(l4)[4]
                if pl[:1] == b"\x16":
                    kinds["tls"].append(pl)
                    flight = tlsp.parse_server_flight(pl) if tlsp.looks_like_server_hello(pl) else None
                    if flight is not None:
                        kinds["cert"] += list(flight.certificates)
                elif pl[:4].isalpha():
                    kinds["http"].append(pl)
        except DecodeError:
            continue
    return {k: tuple(dict.fromkeys(v))[:200] or (b"",) for k, v in kinds.items()}


LOG_SEEDS = (
    b'{"timestamp":"2026-11-28T02:27:36.660791+0000","flow_id":1,"event_type":"dns","src_ip":"198.18.0.10",'
    b'"src_port":41002,"dest_ip":"198.18.0.1","dest_port":53,"proto":"UDP","dns":{"version":2,"type":"answer",'
    b'"id":7,"rrname":"downloads.upd.kaspersky.com","rrtype":"A","rcode":"NOERROR","answers":[{"rrname":'
    b'"downloads.upd.kaspersky.com","rrtype":"A","ttl":60,"rdata":"198.18.0.1"}]}}\n'
    b'{"timestamp":"2026-11-28T02:27:36.760791+0000","flow_id":2,"event_type":"tls","src_ip":"198.18.0.10",'
    b'"src_port":41003,"dest_ip":"198.18.0.1","dest_port":443,"proto":"TCP","tls":{"sni":"s01.upd.kaspersky.com",'
    b'"version":"TLS 1.3"}}\n'
    b'{"timestamp":"2026-11-28T02:27:37.0+0000","flow_id":3,"event_type":"flow","src_ip":"198.18.0.10",'
    b'"src_port":41004,"dest_ip":"198.18.0.1","dest_port":13000,"proto":"TCP","app_proto":"failed"}\n',
    b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n"
    b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\tqtype_name\t"
    b"rcode_name\tanswers\tTTLs\n#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\t"
    b"string\tstring\tvector[string]\tvector[interval]\n"
    b"1764000000.0\tC1\t198.18.0.10\t41002\t198.18.0.1\t53\tudp\t7\tdnl-01.geo.kaspersky.com\tA\t"
    b"NOERROR\t198.18.0.1\t60.0\n",
    b'{"ts":1764000000.0,"uid":"C2","id.orig_h":"198.18.0.10","id.orig_p":41005,"id.resp_h":"198.18.0.1",'
    b'"id.resp_p":443,"server_name":"activation-v2.kaspersky.com","version":"TLSv13"}\n',
)


@functools.cache
def seeds(target: str) -> tuple[bytes, ...]:
    p = payloads()
    if target == "link":
        return tuple(bytes([LINKTYPES.index(lt) if lt in LINKTYPES else 0]) + f for lt, f in frames())
    if target in ("ip", "transport", "dns", "tls", "http", "quic"):
        return p[target]
    if target == "x509":
        return p["cert"] if p["cert"] != (b"",) else (_self_signed(),)
    if target == "tcp_reassembly":
        rng = random.Random(1)
        return tuple(bytes(rng.randrange(256) for _ in range(rng.randrange(8, 200))) for _ in range(20))
    if target == "log_file":
        return LOG_SEEDS
    if target in ("capture_file", "capture_file_core"):
        out = []
        for path in sorted(PCAPS.rglob("*.pcap*")):
            with open(path, "rb") as fh:
                out.append(fh.read(MAX_SEED))
        return tuple(out)
    if target == "signature_file":
        text = (REPO / "signatures" / "kaspersky.yaml").read_bytes()
        cut = text.find(b"\n  - id:", text.find(b"\n  - id:", text.find(b"\n  - id:") + 1) + 1)
        return (text[:cut], text[: text.find(b"\n  - id:")] + b"\n")
    if target == "pipeline":
        return tuple(bytes([lt if lt < 3 else 1]) + f for lt, f in frames() if lt in (0, 1))
    raise KeyError(target)


def _self_signed() -> bytes:
    import datetime

    from cryptography import x509 as cx
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = cx.Name([cx.NameAttribute(NameOID.COMMON_NAME, "ksn.kaspersky-labs.com")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (cx.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(cx.SubjectAlternativeName([cx.DNSName("*.kaspersky.com")]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


# -- mutations (shared by the hypothesis strategy and the long run) ---------------------------------
INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x80\x00", b"\x7f\xff",
               b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x10\x00\x00")


def mutate(rng: random.Random, data: bytes, pool: tuple[bytes, ...], rounds: int | None = None) -> bytes:
    """Flips, truncations, insertions, interesting values and splices."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6) if rounds is None else rounds):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[pos:]
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif op == 3:
            v = rng.choice(INTERESTING)
            buf[pos : pos + len(v)] = v
        elif op == 4 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
        elif op == 5 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
    return bytes(buf[: 1 << 16])


def regression_files(target: str | None = None) -> list[Path]:
    return sorted(p for p in REGRESSIONS.glob("*.bin") if target is None or p.name.startswith(target + "-"))
