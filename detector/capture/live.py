"""Live capture from network interfaces (a span port, a tap), for ``detector live``.

With the compiled core (``CaptureOptions.one_handle``), one libpcap handle per interface
(role "all", every IPv4/IPv6 packet); its batches go to the core's classifier whole
(``push_raw``), in the order of the wire, as in a replay.  Without it, two handles per
interface, BPF filters in the kernel, disjoint (a packet reaches Python at most once):

- **heads**: plain IPv4 TCP (no fragment, not port 53, no SYN/FIN/RST); the pcapy-ng C
  classifier (``loop_filtered``, ``flow_cutoff``) hands Python only the first ``flow_head``
  packets of each direction of each flow (handshakes, ClientHellos also when split,
  request heads, Security Center TCP ports); the bulk never becomes a Python object.
- **whole**: every packet of the rest the pipeline can use: DNS, TCP SYN/FIN/RST (the
  flow table sees connections open and close), QUIC long headers on UDP 443, Security
  Center UDP ports, IPv4 fragments, tunnels (VXLAN, GENEVE, GRE), and all IPv6.

With ``workers > 1`` each worker's handles join one ``PACKET_FANOUT`` group (hash) per
interface and role: a flow (both directions, SYN/FIN and data) always reaches one worker.
The controller opens the handles while it still has the privileges (``CAP_NET_RAW``);
workers inherit them through ``fork`` (``detector/live/worker.py``).  This module also
drops the privileges.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pwd
import signal
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import DetectorError
from .fast import LINKS

try:
    import pcapy
except ImportError:  # pragma: no cover - pcapy-ng is a dependency
    pcapy = None

# Kaspersky Security Center ports (kaspersky-endpoints.md §3).  TCP ports are plain TCP:
# the heads handle passes every IPv4 TCP flow, so they need no rule of their own.
KSC_TCP_PORTS = (13000, 13291, 13292, 13295, 13299, 13111, 14000, 17111, 8060, 8061)
KSC_TCP_RANGES = ((23100, 23199), (23700, 23799), (27200, 27299), (29200, 29299))
KSC_UDP_PORTS = (13000, 15000, 15001, 15111)
TUNNEL_UDP_PORTS = (4789, 6081)  # VXLAN, GENEVE (GRE is IP protocol 47)
QUIC_PORT = 443

DEFAULT_SNAPLEN = 65535
DEFAULT_BUFFER = 32 << 20  # bytes of kernel ring per handle
TIMEOUT_MS = 100  # TPACKET_V3 block timeout: a packet reaches Python within this
FLOW_HEAD_CLASS = 1  # pcapy-ng generic class "within the first flow_cutoff packets"
ADMIT_HEADS = 1 << FLOW_HEAD_CLASS
CHUNK = 1 << 16  # packets per classifier call: its flow table starts afresh each call
CHUNK_SECONDS = 60.0  # ... and at least this often, so a reused 5-tuple is seen anew
BATCH = 512  # whole-handle packets per next_batch call
MAX_BACKLOG = 50_000  # whole packets queued for the heads threads before they are dropped
MAX_BACKLOG_BYTES = 16 << 20  # ... and their bytes (frame + 128 per packet): 50,000 full frames would be 75 MB
BACKLOG_OVERHEAD = 128  # bytes a queued packet costs beyond its frame (tuple, float, bytes header)
BACKLOG_FRAME = 1_518  # the frame size room is kept for: a full backlog leaves packets in the ring
# A live worker's flow tables, per worker: the Python stream and flow-counter tables
# (decode/flows.py, decode/flowcount.py; about 0.9 KB per entry: a SYN flood from random
# sources, which reaches Python in live, stays near 45 MB) and the compiled core's flow
# table (about 0.55 KB per flow).  Replay keeps 150,000 and 200,000: its core sheds floods
# before Python, and it has no capture rings to fit beside them.
LIVE_MAX_FLOWS = 50_000
SHIP_SECONDS = 0.05  # how often a worker sends its matches to the controller
SHIP_MATCHES = 1_000  # ... and as soon as it holds this many (a DNS flood: about 1.6 KB each, unpickled)
STATS_SECONDS = 1.0  # how often a worker sends its counters

# --- kernel-side filters ---------------------------------------------------------------
# Plain IPv4 TCP that is not DNS, not a fragment and carries no SYN/FIN/RST: flow heads.
HEADS = "ip and ip[6:2] & 0x3fff = 0 and tcp and not port 53 and tcp[13] & 0x07 = 0"


def whole_filter(udp_ports: Iterable[int] = ()) -> str:
    """The IPv4/IPv6 traffic passed whole (see the module docstring)."""
    ports = sorted({*KSC_UDP_PORTS, *TUNNEL_UDP_PORTS, *udp_ports} - {53, QUIC_PORT})
    udp = " or ".join(f"port {p}" for p in ports)
    return (
        "(ip and (ip[6:2] & 0x3fff != 0 or ip proto 47 or port 53"
        " or (tcp and tcp[13] & 0x07 != 0)"
        f" or (udp and ({udp} or (port {QUIC_PORT} and udp[8] & 0x80 = 0x80)))))"
        " or ip6"
    )


def all_filter(ethernet: bool) -> str:
    """With the compiled core: every IP packet, through one handle."""
    return "ip or ip6 or (vlan and (ip or ip6))" if ethernet else "ip or ip6"


def filters(ethernet: bool, udp_ports: Iterable[int] = ()) -> tuple[str, str]:
    """(heads, whole) BPF for one interface.  On Ethernet each also matches frames that
    still carry a VLAN tag inline (QinQ, or no VLAN offload); ``vlan`` comes last, where
    its offset shift is meant."""
    w = whole_filter(udp_ports)
    if not ethernet:
        return HEADS, w
    return f"({HEADS}) or (vlan and ({HEADS}))", f"({w}) or (vlan and ({w}))"


def signature_udp_ports(signatures: Iterable[Any]) -> tuple[int, ...]:
    """UDP ports named by port signatures (``match.ports: [udp/N]``), when the loaded
    signature model has them: they are passed whole so the pipeline sees every packet."""
    out: set[int] = set()
    for sig in signatures:
        for proto, lo, hi in getattr(sig, "ports", ()) or ():
            if proto == "udp":
                out.update(range(lo, hi + 1))
    return tuple(sorted(out))


# --- errors ----------------------------------------------------------------------------
class LiveCaptureError(DetectorError):
    """An interface cannot be captured (missing, no permission, libpcap refused)."""


NEED_CAP = (
    "capturing needs CAP_NET_RAW: run as root, under the systemd unit "
    "(AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN), or give the interpreter the capability "
    "with setcap cap_net_raw,cap_net_admin=eip (see the README)"
)


def check_permission() -> None:
    """Fail early, with one clear line, when the process may not open a packet socket."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise LiveCaptureError(NEED_CAP) from None
    except OSError as exc:  # no AF_PACKET (not Linux)
        raise LiveCaptureError(f"live capture needs Linux packet sockets: {exc.strerror or exc}") from None
    s.close()


def check_interface(name: str) -> None:
    if name == "any":
        return
    try:
        socket.if_nametoindex(name)
    except OSError:
        have = ", ".join(n for _, n in socket.if_nameindex()) or "none"
        raise LiveCaptureError(f"no such interface {name!r} (interfaces here: {have})") from None


# --- handles -----------------------------------------------------------------------------
@dataclass
class Handle:
    """One libpcap handle: ``role`` is "heads" or "whole", or "all" (``one_handle``)."""

    iface: str
    role: str
    worker: int
    cap: Any
    linktype: int
    l2_offset: int
    bpf: str

    def stats(self) -> tuple[int, int, int]:
        """(received, kernel drops, interface drops) from the kernel, cumulative."""
        recv, drop, ifdrop = self.cap.stats()
        return int(recv), int(drop), int(ifdrop)


@dataclass(frozen=True)
class CaptureOptions:
    interfaces: tuple[str, ...]
    workers: int = 1
    snaplen: int = DEFAULT_SNAPLEN
    buffer_size: int = DEFAULT_BUFFER
    promisc: bool = True
    udp_ports: tuple[int, ...] = ()
    one_handle: bool = False  # the compiled core classifies: one "all" handle per interface


def _open_one(iface: str, opts: CaptureOptions) -> Any:
    cap = pcapy.create(iface)
    cap.set_snaplen(opts.snaplen)
    cap.set_promisc(bool(opts.promisc))
    cap.set_timeout(TIMEOUT_MS)
    cap.set_buffer_size(opts.buffer_size)
    try:
        cap.activate()
    except pcapy.PcapError as exc:
        text = str(exc)
        low = text.lower()
        if "permission" in low or "not permitted" in low:
            raise LiveCaptureError(f"{iface}: {NEED_CAP}") from None
        if "no such device" in low:
            raise LiveCaptureError(f"no such interface {iface!r}") from None
        raise LiveCaptureError(f"{iface}: cannot capture: {text}") from None
    return cap


def fanout_group(base: int, iface_index: int, role: str) -> int:
    """A 16-bit PACKET_FANOUT group id, distinct per interface and role."""
    return (base + 2 * iface_index + (role == "whole")) & 0xFFFF


def open_handles(opts: CaptureOptions, fanout_base: int | None = None) -> list[list[Handle]]:
    """All handles, grouped per worker: ``[worker][...]``, heads and whole per interface.

    The handles of worker k join the fanout groups k-th on every interface, so a flow's
    heads and whole packets go to the same worker (the kernel's fanout hash is symmetric
    and indexes the members in joining order)."""
    if pcapy is None or not hasattr(pcapy, "create"):
        raise LiveCaptureError("live capture needs pcapy-ng (pip install pcapy-ng)")
    check_permission()
    for iface in opts.interfaces:
        check_interface(iface)
    if fanout_base is None:
        fanout_base = (os.getpid() * 8) & 0xFFFF
    out: list[list[Handle]] = [[] for _ in range(opts.workers)]
    for i, iface in enumerate(opts.interfaces):
        for k in range(opts.workers):
            for role in ("all",) if opts.one_handle else ("heads", "whole"):
                cap = _open_one(iface, opts)
                dlt = cap.datalink()
                if dlt not in LINKS:
                    raise LiveCaptureError(f"{iface}: link type {dlt} is not supported")
                l2_offset, linktype = LINKS[dlt]
                heads, whole = filters(dlt == 1, opts.udp_ports)
                bpf = all_filter(dlt == 1) if role == "all" else heads if role == "heads" else whole
                try:
                    cap.setfilter(bpf)
                except pcapy.PcapError as exc:
                    raise LiveCaptureError(f"{iface}: BPF filter refused: {exc}") from None
                if opts.workers > 1:
                    try:
                        cap.set_fanout(fanout_group(fanout_base, i, role), pcapy.PACKET_FANOUT_HASH)
                    except pcapy.PcapError as exc:
                        raise LiveCaptureError(f"{iface}: PACKET_FANOUT: {exc}") from None
                if role != "heads":
                    cap.setnonblock(1)  # read after select(); libpcap's poll would block forever
                out[k].append(Handle(iface, role, k, cap, linktype, l2_offset, bpf))
    return out


_MADV_DONTFORK, _MADV_DOFORK = 10, 11


def _socket_maps() -> dict[int, list[tuple[int, int]]]:
    """Socket inode -> (address, length) of the mappings of this process that map a socket:
    libpcap's capture rings (PACKET_MMAP), shown as ``socket:[inode]`` in /proc/self/maps."""
    out: dict[int, list[tuple[int, int]]] = {}
    with contextlib.suppress(OSError), open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("socket:[") and parts[5].endswith("]"):
                lo, _, hi = parts[0].partition("-")
                with contextlib.suppress(ValueError):
                    out.setdefault(int(parts[5][8:-1]), []).append((int(lo, 16), int(hi, 16) - int(lo, 16)))
    return out


def inherit_rings(handles: Iterable[Handle], mine: Iterable[Handle]) -> int:
    """Before forking a worker: let it inherit the capture rings of its own handles
    (``mine``) only.  Every ring (``--buffer-size``) is mapped in the process that opened it
    and counts in full in the resident size of every process that maps it; without this a
    worker would map every worker's rings.  The others' are marked MADV_DONTFORK (the
    worker never reads those handles, and keeps them referenced, so libpcap never touches
    them there), its own MADV_DOFORK.  Returns how many rings are left out; a ring not
    found (no PACKET_MMAP) is simply inherited as before."""
    own = {_inode(h) for h in mine}
    maps = _socket_maps()
    libc = _libc()
    left_out = 0
    for h in handles:
        ino = _inode(h)
        advice = _MADV_DOFORK if ino in own else _MADV_DONTFORK
        for addr, length in maps.get(ino, ()):
            if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), advice) == 0 and ino not in own:
                left_out += 1
    return left_out


def _inode(h: Handle) -> int:
    try:
        return os.fstat(h.cap.getfd()).st_ino
    except (OSError, ValueError, AttributeError):
        return -1


def refilter(handles: Iterable[Handle], udp_ports: Iterable[int]) -> int:
    """Install a new whole filter (new UDP port signatures) on the whole handles; the
    kernel filter lives on the socket, so this works from the controller after the
    workers forked.  Returns how many handles changed."""
    n = 0
    ports = tuple(udp_ports)
    for h in handles:
        if h.role != "whole":
            continue
        new = filters(h.linktype == 1, ports)[1]
        if new != h.bpf:
            h.cap.setfilter(new)
            h.bpf = new
            n += 1
    return n


def interface_rx(iface: str) -> int | None:
    """Packets the interface received (before any filter), from sysfs."""
    try:
        with open(f"/sys/class/net/{iface}/statistics/rx_packets") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


# --- privileges ----------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _prctl(option: int, arg: int = 0) -> int:
    return int(_libc().prctl(option, ctypes.c_ulong(arg), 0, 0, 0))


def _clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets (capset(2))."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    hdr = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    if _libc().capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def capabilities() -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of this process, from /proc."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Cap"):
                k, v = line.split(":", 1)
                out[k] = int(v.strip(), 16)
    return out


def drop_privileges(user: str | None) -> str:
    """After the capture handles are open: become ``user`` (when root) and keep no
    capability at all.  Returns a one-line description for the log.

    As root: supplementary groups cleared, gid and uid of ``user``; the bounding set is
    emptied first, and changing uid from 0 clears every capability.  Not root (file
    capabilities from setcap, or systemd's AmbientCapabilities): the ambient set is cleared
    and capset() empties the rest.  Either way no_new_privs is set, so no later exec can
    gain privileges back.  What the capture still needs after this is only the open
    sockets: reading them, their statistics and their filters require no capability."""
    if os.geteuid() == 0 and user:
        pw = pwd.getpwnam(user)
        for cap in range(64):
            if _prctl(_PR_CAPBSET_DROP, cap) != 0:
                break  # past the last capability this kernel knows
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    _clear_capabilities()
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    caps = capabilities()
    if caps.get("CapEff") or caps.get("CapPrm") or caps.get("CapAmb"):
        raise LiveCaptureError(f"could not drop capabilities: {caps}")
    name = pwd.getpwuid(os.getuid()).pw_name if _has_user(os.getuid()) else str(os.getuid())
    return f"running as {name} (uid {os.getuid()}, gid {os.getgid()}), no capabilities"


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def die_with_parent() -> None:
    """A worker gets SIGKILL when the controller dies, however it dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# --- the worker ---------------------------------------------------------------------------
