"""The fast path for large classic pcap files: libpcap reads, BPF filters and the
pcapy-ng C classifier sheds the bulk, so Python sees only what can hold a hostname.

Two libpcap handles read the same file in one pass each, and their packets are merged in
timestamp order:

- handle A takes plain IPv4 (untagged or one 802.1Q tag) that is not DNS, not a fragment
  and not a tunnel, and the C classifier (``loop_filtered`` with ``flow_cutoff``) admits
  only the first ``flow_head`` packets of each direction of each flow: handshakes,
  ClientHellos (also when split over several segments), request heads.  The bulk after
  them never becomes a Python object.  The classifier's flow table is per call, and a call
  covers ``CHUNK`` packets, so a 5-tuple reused later in a long capture is seen again.
  Known limit: it does not restart a flow on SYN, so a second connection on the same ports
  *within* one chunk, after a first one longer than ``flow_head`` packets, is shed
  (``--exact`` sees it; tests/test_review.py keeps an expected-failure test for it).
- handle B takes everything else, whole: DNS (any number of messages per flow), IPv4
  fragments (for reassembly), tunnels, QinQ, and all IPv6 (the C classifier is IPv4-only,
  so IPv6 takes the exact Python path and no IPv6 detection is lost).

Used for uncompressed pcap files of the link types below.  pcapng goes through the
streaming Python reader, because libpcap stops in the middle of a pcapng file whose
interfaces have different link types (found only when it reaches the second interface).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ..errors import CaptureError
from .pcap import PCAP_MAGICS, Record

try:
    import pcapy
except ImportError:  # pragma: no cover - pcapy-ng is a dependency; this is for embedders
    pcapy = None

CHUNK = 1 << 16  # packets per classifier call (its flow table starts afresh each call)
FLOW_HEAD = 1  # pcapy-ng class of "within the first flow_cutoff packets of its flow"
ADMIT_HEADS = 1 << FLOW_HEAD
ADMIT_ALL = 7
DEFAULT_FLOW_HEAD = 16

# libpcap DLT value -> (where the IPv4 header starts, LINKTYPE number for our decoder)
LINKS = {
    1: (14, 1),  # Ethernet
    113: (16, 113),  # Linux cooked v1
    276: (20, 276),  # Linux cooked v2
    12: (0, 101),  # raw IP (DLT_RAW on Linux)
    14: (0, 101),
    101: (0, 101),
    0: (4, 0),  # BSD loopback
}
# Plain IPv4, not DNS, not a fragment, not GRE/VXLAN/GENEVE: safe to shed after the head.
_HEADABLE = "ip and ip[6:2] & 0x3fff = 0 and not port 53 and not ip proto 47 and not udp port 4789 and not udp port 6081"


def _share(k: int, n: int) -> str:
    """Share ``k`` of ``n`` by a hash of the two IP addresses (the sum of their last bytes:
    the same in both directions, so a flow, its DNS transactions and its fragments stay
    together).  Share 0 also takes everything that is not IP."""
    expr = f"(ip and (ip[15] + ip[19]) % {n} = {k}) or (ip6 and (ip6[23] + ip6[39]) % {n} = {k})"
    return f"{expr} or not (ip or ip6)" if k == 0 else expr


# The frame's own EtherType is not a VLAN tag.  Written without libpcap's ``vlan`` keyword,
# which shifts the offsets of everything after it in the expression.
_UNTAGGED = "not (ether[12:2] = 0x8100 or ether[12:2] = 0x88a8 or ether[12:2] = 0x9100)"


LEARN_ONLY = -1  # wire length marking a record from another share, for DNS learning only


# TCP segments with no payload and no SYN/FIN/RST (pure ACKs: about a third of TCP): they
# carry nothing to parse, so BPF drops them; a count-only handle keeps the packet total.
_PURE_ACK4 = (
    "tcp and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) = 0 "
    "and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) = 0"
)
_PURE_ACK6 = "ip6 and ip6[6] = 6 and ip6[53] & 0x07 = 0 and ip6[4:2] - ((ip6[52] & 0xf0) >> 2) = 0"


def filters(ethernet: bool, part: tuple[int, int] | None, drop_pure_acks: bool = True) -> tuple[str, str, str | None]:
    """BPF for handle A (flow heads), handle B (whole) and handle D (pure ACKs: counted,
    never delivered), optionally for one share.

    Together they cover every packet of the file exactly once (tested).  On Ethernet the
    ``vlan`` keyword appears only as the last alternative, where its offset shift is meant.
    """
    h = _HEADABLE
    s = _share(*part) if part else "1 = 1"
    if drop_pure_acks:
        a_in, b_in = f"({h}) and not ({_PURE_ACK4})", f"not ({h}) and not ({_PURE_ACK6})"
        d_in: str | None = f"((({h}) and ({_PURE_ACK4})) or ({_PURE_ACK6}))"
    else:
        a_in, b_in, d_in = f"({h})", f"not ({h})", None
    if not ethernet:
        d = f"{d_in} and ({s})" if d_in else None
        return f"{a_in} and ({s})", f"{b_in} and ({s})", d
    a = f"({a_in} and ({s})) or (vlan and {a_in} and ({s}))"
    b = f"({_UNTAGGED} and {b_in} and ({s})) or (vlan and {b_in} and ({s}))"
    d = f"({d_in} and ({s})) or (vlan and {d_in} and ({s}))" if d_in else None
    return a, b, d


def usable(path: str) -> bool:
    """True when the fast path can read this file (uncompressed classic pcap, libpcap present)."""
    if pcapy is None:
        return False
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError:
        return False
    return magic in PCAP_MAGICS


class NotOnFastPath(CaptureError):
    """The file is readable, just not by the fast path: use the streaming reader."""


class FastCapture:
    """Iterate merged records ``(ts, linktype, data, wirelen)`` of one pcap file."""

    def __init__(
        self, path: str, flow_head: int = DEFAULT_FLOW_HEAD, part: tuple[int, int] | None = None, drop_pure_acks: bool = True
    ) -> None:
        self.path = path
        self.flow_head = flow_head
        self.warning: str | None = None
        self.format = "pcap (libpcap fast path)"
        self.compression = None
        self.records = 0  # packets libpcap read, both handles
        self.delivered = 0  # packets handed to Python
        self.bytes = os.path.getsize(path)
        try:
            self._a = pcapy.open_offline(path)
            self._b = pcapy.open_offline(path)
        except pcapy.PcapError as exc:
            raise CaptureError(f"{path}: {exc}") from None
        if not hasattr(self._a, "loop_filtered"):
            raise NotOnFastPath(f"{path}: this pcapy is not pcapy-ng (no loop_filtered)")
        dlt = self._a.datalink()
        if dlt not in LINKS:
            raise NotOnFastPath(f"{path}: link type {dlt} not on the fast path")
        self.l2_offset, self.linktype = LINKS[dlt]
        a_filter, b_filter, d_filter = filters(dlt == 1, part, drop_pure_acks)
        self._a_filter, self._b_filter, self._d_filter = a_filter, b_filter, d_filter
        # A share also reads the other shares' DNS (UDP and TCP), to learn the addresses its
        # own clients resolved (the answer and the later flow have different address pairs).
        self._c = None
        if part is not None:
            self._c = pcapy.open_offline(path)
            other = f"port 53 and not ({_share(*part)})"
            c_filter = f"({other}) or (vlan and {other})" if dlt == 1 else other
            self._c.setfilter(c_filter)
        try:
            self._a.setfilter(a_filter)
            self._b.setfilter(b_filter)
        except pcapy.PcapError as exc:
            raise NotOnFastPath(f"{path}: BPF: {exc}") from None

    def close(self) -> None:
        for h in (self._a, self._b, self._c):
            if h is None:
                continue
            with contextlib.suppress(Exception):  # closing twice: nothing to do
                h.close()

    def __enter__(self) -> FastCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _warn(self, msg: str) -> None:
        self.warning = f"{self.warning}; {msg}" if self.warning else msg

    def _count_to_error(self, bpf: str) -> int:
        """Packets matching ``bpf`` before libpcap's error in a damaged file (the classifier's
        counters are lost with the exception, so count them one by one; damaged files only)."""
        n = 0

        def cb(*_: object) -> None:
            nonlocal n
            n += 1

        h = pcapy.open_offline(self.path)
        try:
            h.setfilter(bpf)
            h.loop_filtered(-1, cb, ADMIT_ALL, b"", 0, l2_offset=self.l2_offset)
        except pcapy.PcapError:
            pass
        finally:
            with contextlib.suppress(Exception):
                h.close()
        return n

    def _handle(
        self, cap: object, admit: int, cutoff: int, bpf: str, count: bool = True
    ) -> Iterator[tuple[float, bytes]]:
        buf: list[tuple[tuple[int, int], bytes]] = []
        append = buf.append
        counted = 0

        def cb(hdr: object, data: bytes, _cls: int) -> None:
            append((hdr.getts(), data))  # type: ignore[attr-defined]

        while True:
            failed = False
            try:
                res = cap.loop_filtered(CHUNK, cb, admit, b"", cutoff, l2_offset=self.l2_offset)  # type: ignore[attr-defined]
                processed = res[0] + res[1]
            except pcapy.PcapError as exc:
                failed = True
                processed = 0
                if self.warning is None or str(exc) not in self.warning:
                    self._warn(f"libpcap stopped: {exc} (records before it were read)")
            if count:
                if failed:
                    self.records += self._count_to_error(bpf) - counted
                else:
                    self.records += processed
                    counted += processed
            for (sec, usec), data in buf:
                yield sec + usec * 1e-6, data
            buf.clear()
            if failed or processed < CHUNK:
                return

    def _count_pure_acks(self) -> None:
        """One more pass with the pure-ACK filter, admitting nothing: only the count."""
        if self._d_filter is None:
            return
        d = pcapy.open_offline(self.path)
        counted = 0
        try:
            d.setfilter(self._d_filter)
            while True:
                res = d.loop_filtered(CHUNK * 16, lambda *_: None, 0, b"", 0, l2_offset=self.l2_offset)
                counted += res[0] + res[1]
                if res[0] + res[1] < CHUNK * 16:
                    break
        except pcapy.PcapError:
            counted = self._count_to_error(self._d_filter)  # the damage is reported by the other handles
        finally:
            self.records += counted
            with contextlib.suppress(Exception):
                d.close()

    def __iter__(self) -> Iterator[Record]:
        self._count_pure_acks()
        lt = self.linktype
        a = self._handle(self._a, ADMIT_HEADS, self.flow_head, self._a_filter)
        b = self._handle(self._b, ADMIT_ALL, 0, self._b_filter)
        c = self._learn_only() if self._c is not None else iter(())
        na = next(a, None)
        nb = next(b, None)
        nc = next(c, None)
        while na is not None or nb is not None:
            if nc is not None and (na is None or nc[0] <= na[0]) and (nb is None or nc[0] <= nb[0]):
                yield nc[0], lt, nc[1], LEARN_ONLY
                nc = next(c, None)
                continue
            if nb is None or (na is not None and na[0] <= nb[0]):
                cur, na = na, next(a, None)
            else:
                cur, nb = nb, next(b, None)
            self.delivered += 1
            yield cur[0], lt, cur[1], len(cur[1])  # type: ignore[index]

    def _learn_only(self) -> Iterator[tuple[float, bytes]]:
        # These packets are counted by the share that owns them.
        yield from self._handle(self._c, ADMIT_ALL, 0, "", count=False)
