"""QUIC client Initial packets (RFC 9000, RFC 9001, RFC 9369) and the ClientHello inside them.

A QUIC client's first flight is protected with keys anyone can derive from the Destination
Connection ID of its first Initial packet (RFC 9001 section 5.2), so a passive observer can
read the TLS ClientHello and its server name.  ``QuicTracker.datagram`` is fed UDP payloads
(sans-I/O: the caller gives the addresses and the packet time) and:

* walks every long-header packet coalesced in the datagram (RFC 9000 section 12.2),
  skipping 0-RTT, Handshake and Retry packets and stopping at a short-header packet;
* for each Initial packet of QUIC v1 or v2 removes header protection (AES-128-ECB on the
  sample, RFC 9001 section 5.4) and decrypts the payload (AEAD_AES_128_GCM, section 5.3);
* parses the frames an Initial may carry (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE);
* reassembles CRYPTO data per connection, out of order and across packets and datagrams
  (Chromium splits its ClientHello over two Initial packets and shuffles its CRYPTO frames),
  until the whole handshake message is there, then parses it with
  ``tls.parse_client_hello_message``.

Three-way contract: a ``ClientHello`` (once per connection), ``None`` while more is needed
or the datagram holds nothing for us, ``DecodeError`` (reason ``quic-...``) when a packet is
malformed.  Packets that do not decrypt with the client's Initial keys (the server's Initial
packets above all) are not malformed: they are counted as ``undecryptable-<reason>``.

Connections are keyed by the client's address, port and original Destination Connection
ID.  Later client Initials that carry the server's chosen connection ID are matched through
the client's address and decrypted with the original keys.  Once a client is followed,
datagrams sent *to* its address and port are the server's and are counted as
``skipped-server`` without any decryption attempt; a server Initial seen without its client
(asymmetric capture) fails to decrypt and is counted ``undecryptable-aead``.  Tables are bounded: at most
``max_conns`` connections (oldest evicted, counted) kept for at most ``timeout`` seconds of
packet time, at most ``max_crypto`` bytes of CRYPTO data each.

``cryptography`` is optional: without it ``QUIC_AVAILABLE`` is False and the tracker only
counts ``disabled``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from ..errors import DecodeError
from .reader import Reader
from .tls import ClientHello, HandshakeType, parse_client_hello_message

try:  # optional dependency: QUIC support is off without it
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    QUIC_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    QUIC_AVAILABLE = False


class QuicVersion(enum.IntEnum):
    NEGOTIATION = 0x00000000  # RFC 9000 section 17.2.1
    V1 = 0x00000001  # RFC 9000
    V2 = 0x6B3343CF  # RFC 9369


class FrameType(enum.IntEnum):
    """Frames permitted in Initial packets (RFC 9000 section 12.4, table 3)."""

    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    ACK_ECN = 0x03
    CRYPTO = 0x06
    CONNECTION_CLOSE = 0x1C  # transport variant; 0x1d never appears in Initials


class PacketType(enum.IntEnum):
    INITIAL = 0
    ZERO_RTT = 1
    HANDSHAKE = 2
    RETRY = 3


@dataclass(frozen=True, slots=True)
class VersionParams:
    salt: bytes  # RFC 9001 section 5.2 / RFC 9369 section 3.3.1
    key_label: bytes
    iv_label: bytes
    hp_label: bytes
    types: dict[int, PacketType]  # long-header type bits -> packet type


VERSIONS: dict[int, VersionParams] = {
    QuicVersion.V1: VersionParams(
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
        b"quic key",
        b"quic iv",
        b"quic hp",
        {0: PacketType.INITIAL, 1: PacketType.ZERO_RTT, 2: PacketType.HANDSHAKE, 3: PacketType.RETRY},
    ),
    QuicVersion.V2: VersionParams(
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
        b"quicv2 key",
        b"quicv2 iv",
        b"quicv2 hp",
        # RFC 9369 section 3.2: Initial 0b01, 0-RTT 0b10, Handshake 0b11, Retry 0b00
        {1: PacketType.INITIAL, 2: PacketType.ZERO_RTT, 3: PacketType.HANDSHAKE, 0: PacketType.RETRY},
    ),
}

MAX_CID = 20  # RFC 9000 section 17.2: v1 (and v2) connection IDs are at most 20 bytes
SAMPLE_LEN = 16  # RFC 9001 section 5.4.2
TAG_LEN = 16
MAX_CRYPTO_PIECES = 512  # disjoint CRYPTO ranges held per connection before giving up
MAX_PACKETS_PER_DATAGRAM = 16


def looks_like_quic_initial(payload: bytes) -> bool:
    """Cheap sniff: long header, QUIC v1 or v2, Initial packet type (first packet only)."""
    if len(payload) < 7 or not payload[0] & 0x80:
        return False
    params = VERSIONS.get(int.from_bytes(payload[1:5], "big"))
    return params is not None and params.types[(payload[0] >> 4) & 3] is PacketType.INITIAL


def version_name(version: int) -> str:
    """A QUIC version as Zeek's quic.log writes it: "1", "quicv2", else hex."""
    if version == QuicVersion.V1:
        return "1"
    if version == QuicVersion.V2:
        return "quicv2"
    return f"0x{version:08x}"


# -- key derivation (RFC 9001 section 5, RFC 8446 section 7.1) -----------------------------


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(SHA256(), length, info).derive(secret)


@dataclass(frozen=True, slots=True)
class InitialKeys:
    secret: bytes
    key: bytes
    iv: bytes
    hp: bytes


def client_initial_keys(dcid: bytes, version: int) -> InitialKeys:
    """The client's Initial secret, AEAD key, IV and header-protection key."""
    params = VERSIONS[version]
    initial = hkdf_extract(params.salt, dcid)
    secret = hkdf_expand_label(initial, b"client in", b"", 32)
    return InitialKeys(
        secret,
        hkdf_expand_label(secret, params.key_label, b"", 16),
        hkdf_expand_label(secret, params.iv_label, b"", 12),
        hkdf_expand_label(secret, params.hp_label, b"", 16),
    )


def decode_packet_number(largest: int, truncated: int, nbits: int) -> int:
    """RFC 9000 appendix A.3."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


class _Undecryptable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decrypt_initial(packet: bytes, pn_off: int, end: int, keys: InitialKeys, largest_pn: int) -> tuple[int, bytes]:
    """Remove header protection and decrypt one Initial packet.

    ``packet[:end]`` is the whole packet (its header starts at 0), ``pn_off`` where the packet
    number starts.  Returns (packet number, plaintext); raises ``_Undecryptable`` when the
    keys do not fit.  The caller has checked that the sample is present.
    """
    sample = packet[pn_off + 4 : pn_off + 4 + SAMPLE_LEN]
    enc = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    first = packet[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    truncated = 0
    for i in range(pn_len):
        truncated = (truncated << 8) | (packet[pn_off + i] ^ mask[1 + i])
    header = bytes([first]) + packet[1:pn_off] + truncated.to_bytes(pn_len, "big")
    pn = decode_packet_number(largest_pn, truncated, pn_len * 8)
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    try:
        plain = AESGCM(keys.key).decrypt(nonce, packet[pn_off + pn_len : end], header)
    except InvalidTag:
        raise _Undecryptable("aead") from None
    if first & 0x0C:  # reserved bits must be zero once unprotected (RFC 9000 section 17.2)
        raise DecodeError("quic-reserved-bits-set")
    return pn, plain


# -- frames (RFC 9000 section 19) ------------------------------------------------------------


def parse_initial_frames(plain: bytes) -> list[tuple[int, bytes]]:
    """The CRYPTO frames, as (offset, data), of a decrypted Initial payload."""
    if not plain:
        raise DecodeError("quic-empty-packet")
    r = Reader(plain, "frame")
    out: list[tuple[int, bytes]] = []
    n = len(plain)
    while r.remaining:
        ftype = r.u8()
        if ftype == FrameType.PADDING:
            pos = r.pos
            nxt = pos
            while nxt < n and plain[nxt] == 0:
                nxt += 1
            r.skip(nxt - pos)
        elif ftype == FrameType.PING:
            pass
        elif ftype in (FrameType.ACK, FrameType.ACK_ECN):
            r.varint()  # largest acknowledged
            r.varint()  # ack delay
            ranges = r.varint()
            r.varint()  # first ack range
            for _ in range(ranges):  # each range is at least two bytes: bounded by the reader
                r.varint()  # gap
                r.varint()  # ack range length
            if ftype == FrameType.ACK_ECN:
                r.varint()  # ECT(0)
                r.varint()  # ECT(1)
                r.varint()  # ECN-CE
        elif ftype == FrameType.CRYPTO:
            offset = r.varint()
            length = r.varint()
            if offset + length > (1 << 62) - 1:
                raise DecodeError("quic-crypto-offset-too-large")
            out.append((offset, r.bytes(length)))
        elif ftype == FrameType.CONNECTION_CLOSE:
            r.varint()  # error code
            r.varint()  # frame type
            r.skip(r.varint())  # reason phrase
        else:
            raise DecodeError("quic-frame-not-allowed-in-initial", f"0x{ftype:02x}")
    return out


# -- per-connection state -----------------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    keys: InitialKeys
    version: int
    ts: float
    largest_pn: int = -1
    done: bool = False
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # as received, new data only
    stored: int = 0  # bytes held in chunks
    ranges: list[tuple[int, int]] = field(default_factory=list)  # sorted, disjoint, [start, end)

    def add(self, offset: int, chunk: bytes, cap: int) -> None:
        """Keep one CRYPTO frame's data; memory is bounded by ``cap`` bytes and pieces."""
        if not chunk:
            return
        end = offset + len(chunk)
        if end > cap:
            raise DecodeError("quic-crypto-too-long")
        if any(a <= offset and end <= b for a, b in self.ranges):
            return  # a retransmission of data already held
        self.stored += len(chunk)
        if self.stored > cap:
            raise DecodeError("quic-crypto-too-long")
        self.chunks.append((offset, chunk))
        merged: list[tuple[int, int]] = []
        lo, hi = offset, end
        for a, b in self.ranges:
            if b < lo or a > hi:
                merged.append((a, b))
            else:
                lo, hi = min(lo, a), max(hi, b)
        merged.append((lo, hi))
        merged.sort()
        if len(merged) > MAX_CRYPTO_PIECES:
            raise DecodeError("quic-crypto-too-fragmented")
        self.ranges = merged

    def contiguous(self) -> int:
        """How many bytes from offset 0 are held without a gap."""
        if self.ranges and self.ranges[0][0] == 0:
            return self.ranges[0][1]
        return 0

    def prefix(self, n: int) -> bytes:
        """The first ``n`` bytes (``n`` <= ``contiguous()``)."""
        out = bytearray(n)
        for off, chunk in self.chunks:
            if off < n:
                piece = chunk[: n - off]
                out[off : off + len(piece)] = piece
        return bytes(out)


ConnKey = tuple[str, int, bytes]


class QuicTracker:
    """Reassembles client Initial CRYPTO data per connection and yields ClientHellos."""

    def __init__(self, max_conns: int = 4096, max_crypto: int = 64 * 1024, timeout: float = 30.0,
                 max_bytes: int = 16 << 20) -> None:
        self.max_conns = max_conns
        self.max_crypto = max_crypto
        self.max_bytes = max_bytes  # CRYPTO bytes held over all connections
        self.buffered = 0
        self.timeout = timeout
        self.counters: Counter[str] = Counter()
        self.last_version = 0  # QUIC version of the connection whose ClientHello was returned last
        self._conns: OrderedDict[ConnKey, _Conn] = OrderedDict()  # least recently seen first
        self._by_addr: dict[tuple[str, int], ConnKey] = {}  # client address -> its latest conn

    def __len__(self) -> int:
        return len(self._conns)

    def datagram(self, src: str, sport: int, dst: str, dport: int, payload: bytes, ts: float) -> ClientHello | None:
        if not QUIC_AVAILABLE:
            self.counters["disabled"] += 1
            return None
        self._expire(ts)
        if (dst, dport) in self._by_addr and (src, sport) not in self._by_addr:
            self.counters["skipped-server"] += 1  # sent to a client we follow: the server's side
            return None
        try:
            return self._datagram(src, sport, bytes(payload), ts)
        except DecodeError as exc:
            if exc.reason.startswith("quic-"):
                raise
            raise DecodeError(f"quic-{exc.reason}") from None  # the Reader's truncated-...

    def _datagram(self, src: str, sport: int, data: bytes, ts: float) -> ClientHello | None:
        pos = 0
        first_dcid: bytes | None = None
        for _ in range(MAX_PACKETS_PER_DATAGRAM):
            if pos >= len(data):
                return None
            if not data[pos] & 0x80:
                if pos == 0:
                    self.counters["skipped-short-header"] += 1
                return None  # a short-header packet (or padding) runs to the end
            hello, pos, first_dcid = self._packet(src, sport, data, pos, ts, first_dcid)
            if hello is not None or pos < 0:
                return hello
        self.counters["skipped-too-many-packets"] += 1
        return None

    # -- one long-header packet ----------------------------------------------------------
    def _packet(
        self, src: str, sport: int, data: bytes, start: int, ts: float, first_dcid: bytes | None
    ) -> tuple[ClientHello | None, int, bytes | None]:
        """Handle the packet at ``start``; return (hello, next packet's offset or -1, dcid)."""
        r = Reader(data, "packet", start)
        first = r.u8()
        version = r.u32()
        params = VERSIONS.get(version)
        if params is None:
            self.counters["skipped-version"] += 1  # negotiation, drafts, other versions
            return None, -1, first_dcid
        dcid_len = r.u8()
        if dcid_len > MAX_CID:
            raise DecodeError("quic-bad-cid-length")
        dcid = r.bytes(dcid_len)
        scid_len = r.u8()
        if scid_len > MAX_CID:
            raise DecodeError("quic-bad-cid-length")
        r.skip(scid_len)
        ptype = params.types[(first >> 4) & 3]
        if first_dcid is not None and dcid != first_dcid:
            self.counters["skipped-coalesced-other-cid"] += 1  # RFC 9000 section 12.2
            return None, -1, first_dcid
        if ptype is PacketType.RETRY:
            self.counters["skipped-retry"] += 1
            return None, -1, dcid  # a Retry has no Length: it fills the datagram
        if ptype is PacketType.INITIAL:
            r.skip(r.varint())  # token
        length = r.varint()
        pn_off = r.pos
        r.skip(length)  # raises when the packet is longer than the datagram
        end = r.pos
        if ptype is not PacketType.INITIAL:
            self.counters[f"skipped-{ptype.name.lower().replace('_', '-')}"] += 1
            return None, end, dcid
        if length < 4 + SAMPLE_LEN:
            raise DecodeError("quic-initial-too-short")
        self.counters["initial"] += 1
        packet = data[start:end]
        return self._initial(src, sport, dcid, version, packet, pn_off - start, ts), end, dcid

    def _initial(self, src: str, sport: int, dcid: bytes, version: int, packet: bytes, pn_off: int, ts: float) -> ClientHello | None:
        key: ConnKey = (src, sport, dcid)
        conn = self._conns.get(key)
        if conn is None:
            # A later Initial from a client we follow carries the server's connection ID but
            # is protected with the keys of the original one (RFC 9001 section 5.2), in the
            # version the server chose if it upgraded the connection (RFC 9368: v1 -> v2).
            known = self._by_addr.get((src, sport))
            if known is not None and (kconn := self._conns.get(known)) is not None:
                kkeys = kconn.keys if kconn.version == version else client_initial_keys(known[2], version)
                try:
                    pn, plain = decrypt_initial(packet, pn_off, len(packet), kkeys, kconn.largest_pn)
                except _Undecryptable:
                    pass
                else:
                    return self._absorb(known, kconn, pn, plain, ts)
            keys = client_initial_keys(dcid, version)
            try:
                pn, plain = decrypt_initial(packet, pn_off, len(packet), keys, -1)
            except _Undecryptable as exc:
                self.counters[f"undecryptable-{exc.reason}"] += 1
                return None
            conn = _Conn(keys, version, ts)
            self._conns[key] = conn
            self._by_addr[(src, sport)] = key
            while len(self._conns) > self.max_conns:
                self._drop(next(iter(self._conns)))
                self.counters["evicted"] += 1
            return self._absorb(key, conn, pn, plain, ts)
        if conn.done:
            self.counters["after-hello"] += 1
            return None
        try:
            pn, plain = decrypt_initial(packet, pn_off, len(packet), conn.keys, conn.largest_pn)
        except _Undecryptable as exc:
            self.counters[f"undecryptable-{exc.reason}"] += 1
            return None
        return self._absorb(key, conn, pn, plain, ts)

    def _absorb(self, key: ConnKey, conn: _Conn, pn: int, plain: bytes, ts: float) -> ClientHello | None:
        self.counters["decrypted"] += 1
        conn.ts = ts
        self._conns.move_to_end(key)
        conn.largest_pn = max(conn.largest_pn, pn)
        if conn.done:
            self.counters["after-hello"] += 1
            return None
        before = conn.stored
        try:
            for offset, chunk in parse_initial_frames(plain):
                conn.add(offset, chunk, self.max_crypto)
            hello = self._hello(conn)
        except DecodeError:
            self.buffered += conn.stored - before
            self._finish(conn)  # decided: later packets of this connection are ignored
            raise
        self.buffered += conn.stored - before
        while self.buffered > self.max_bytes and len(self._conns) > 1:
            old = next(iter(self._conns))
            if old == key:
                self._conns.move_to_end(key)
                continue
            self._drop(old)
            self.counters["evicted-bytes"] += 1
        if hello is not None:
            self.counters["client-hello"] += 1
            self.last_version = conn.version
            self._finish(conn)
        return hello

    def _hello(self, conn: _Conn) -> ClientHello | None:
        have = conn.contiguous()
        if have < 4:
            return None
        head = conn.prefix(4)
        if head[0] != HandshakeType.CLIENT_HELLO:
            raise DecodeError("quic-tls-not-client-hello")
        need = 4 + int.from_bytes(head[1:4], "big")
        if need > self.max_crypto:
            raise DecodeError("quic-client-hello-too-long")
        if have < need:
            return None
        try:
            return parse_client_hello_message(conn.prefix(need))
        except DecodeError as exc:
            raise DecodeError(f"quic-{exc.reason}") from None

    # -- table upkeep --------------------------------------------------------------------
    def _finish(self, conn: _Conn) -> None:
        self.buffered -= conn.stored
        conn.stored = 0
        conn.done = True
        conn.chunks = []
        conn.ranges = []

    def _drop(self, key: ConnKey) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            self.buffered -= conn.stored
        addr = (key[0], key[1])
        if self._by_addr.get(addr) == key:
            del self._by_addr[addr]

    def _expire(self, ts: float) -> None:
        conns = self._conns
        limit = ts - self.timeout
        while conns:
            key, conn = next(iter(conns.items()))
            if conn.ts >= limit:
                return
            self._drop(key)
            self.counters["expired"] += 1
