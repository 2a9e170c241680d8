"""Wires the stages: frame -> decode -> parsers -> matcher -> aggregate.

``Detector`` is the sans-I/O core: it is fed frames (bytes and their capture timestamp)
and returns alerts; it owns the counters the summary reports and never touches a file,
socket or clock.  Only DNS packets and the first bytes of each TCP stream reach a parser:
once a stream is decided it costs one dict lookup per packet.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .aggregate import Aggregator, Key, Upgrade, key_of, make_key
from .correlate import Awaiting, LearnedNames
from .decode import transport, tunnel
from .decode.flowcount import CoreCounters, FlowCounters, FlowRecord
from .decode.flows import DONE, FIN, RST, SYN, FlowKey, FlowTable, Stream
from .decode.ip import IPDecoder, IPProto
from .decode.link import strip_link
from .errors import DecodeError
from .hostnames import HostNames
from .matcher import Matcher
from .model import Alert, Evidence, Match, Observation, Strength
from .parsers import dhcp as dhcpp
from .parsers import dns as dnsp
from .parsers import http as httpp
from .parsers import quic as quicp
from .parsers import tls as tlsp
from .parsers import x509
from .signatures import SignatureSet, load_signatures
from .storm import StormControl

DNS_PORT = 53
MAX_HTTP_REQUESTS = 32  # request heads parsed per connection (keep-alive, proxies)
MAX_DNS_TXNS = 65536  # outstanding DNS queries remembered to pair answers with
MAX_EVIDENCE_ANSWERS = 16
MAX_DONE_RAW = 100_000  # (with 100,000 flows and flow counters: a flood of new flows stays under 200 MB)
MAX_DNS_CACHE = 4096  # distinct DNS messages kept parsed
MAX_DNS_CACHED_WIRE = 512  # ... each at most this long (a parsed 64 KiB answer is big)
MAX_HOSTS = 10_000  # clients the summary lists alerts for; more are counted together
MAX_CERT_ALERTS = 8  # certificate names alerted per connection (a CDN certificate lists many)
_ADDR_TYPES = ("A", "AAAA")
_DHCP_PORTS = (dhcpp.SERVER_PORT, dhcpp.CLIENT_PORT)


@dataclass
class Stats:
    """Counters the pipeline owns; the CLI renders them."""

    packets: int = 0
    bytes: int = 0
    shed: int = 0  # packets a C prefilter read and dropped before Python (fast path)
    ech: int = 0  # ClientHellos with Encrypted Client Hello whose outer name matched
    dns_prefiltered: int = 0  # DNS messages holding no vendor label: not parsed
    dns_cut: int = 0  # DNS messages the snaplen cut, read as far as their bytes go
    dns_txns_evicted: int = 0  # outstanding queries forgotten (table full) before their answer
    tunnelled: Counter[str] = field(default_factory=Counter)  # frames taken out of a tunnel, by kind
    ip_packets: int = 0
    inspected: int = 0  # packets handed to a protocol parser
    skipped: Counter[str] = field(default_factory=Counter)  # not for us (non-IP, ICMP...)
    undecodable: Counter[str] = field(default_factory=Counter)  # malformed, by reason
    observations: Counter[str] = field(default_factory=Counter)  # matched names by evidence
    alerts: Counter[str] = field(default_factory=Counter)  # by category
    hosts: dict[str, Counter[str]] = field(default_factory=dict)  # client -> category counts
    host_names: dict[str, set[str]] = field(default_factory=dict)  # client -> hostnames
    hosts_over: int = 0  # alerts of clients past MAX_HOSTS (not listed one by one)

    def merge(self, other: Stats) -> None:
        """Add a worker's counters (alerts are counted where they are aggregated)."""
        self.packets += other.packets
        self.bytes += other.bytes
        self.shed += other.shed
        self.ech += other.ech
        self.dns_prefiltered += other.dns_prefiltered
        self.dns_cut += other.dns_cut
        self.dns_txns_evicted += other.dns_txns_evicted
        self.tunnelled.update(other.tunnelled)
        self.ip_packets += other.ip_packets
        self.inspected += other.inspected
        self.skipped.update(other.skipped)
        self.undecodable.update(other.undecodable)
        self.observations.update(other.observations)

    def note_alert(self, alert: Alert) -> None:
        cat = alert.signature.category
        self.alerts[cat] += 1
        client = alert.observation.client
        if client not in self.hosts and len(self.hosts) >= MAX_HOSTS:
            self.hosts_over += 1
            return
        self.hosts.setdefault(client, Counter())[cat] += 1
        names = self.host_names.setdefault(client, set())
        if len(names) < 64:
            names.add(alert.observation.hostname)


def flow_id(proto: int, a: str, ap: int, b: str, bp: int) -> int:
    """A stable 63-bit id for the connection, the same for both directions and every run."""
    lo, hi = sorted(((a, ap), (b, bp)))
    h = hashlib.blake2b(f"{proto}|{lo[0]}|{lo[1]}|{hi[0]}|{hi[1]}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") >> 1


class Detector:
    """Feed it frames; it returns alerts.  ``flush()`` at the end of input."""

    def __init__(
        self,
        signatures: SignatureSet | None = None,
        *,
        dedup: bool = True,
        window: float = 3600.0,
        max_flows: int = 100_000,
        max_stream: int = 32 * 1024,
        strict: bool = False,
        collect: bool = False,
        storm: StormControl | None = None,
    ) -> None:
        self.strict = strict  # re-raise unexpected exceptions (--debug, tests)
        # collect=True: keep raw matches in ``collected`` instead of aggregating them (a
        # worker of ``replay --jobs``; the parent aggregates every worker's matches in order).
        self.collect = collect
        self.collected: list[Match | Upgrade] = []
        self.cert_names = x509.X509_AVAILABLE  # TLS 1.2 certificate names need `cryptography`
        self.signatures = signatures if signatures is not None else load_signatures()
        self.matcher = Matcher(self.signatures)
        self.storm = storm if storm is not None else StormControl()  # alert-storm control (storm.py)
        self.aggregator = Aggregator(window=window, dedup=dedup, gate=self.storm)
        self.storm.count_repeats = not dedup
        self._max_flows, self._max_stream = max_flows, max_stream
        self.stats = Stats()
        self._source: str | None = None
        self._out: list[Alert] = []
        self.flowc = FlowCounters(max_flows)
        self.reset_state()

    def set_signatures(self, signatures: SignatureSet) -> None:
        """Swap in a new signature set between two packets (live reload)."""
        self.signatures = signatures
        self.matcher = Matcher(signatures)

    def reset_state(self) -> None:
        """Forget per-connection state (streams, fragments, DNS transactions, learned
        addresses, pending exchanges); counters and open alerts stay.  ``replay`` calls it
        at the start of every file, so each file is read alike by one process or by
        ``--jobs`` workers."""
        self.ip = IPDecoder()
        self.flows = FlowTable(max_flows=self._max_flows, max_stream=self._max_stream)
        self.flowc.clear()
        self._cur: FlowRecord | None = None  # the flow counters of the packet being read
        self._cur_sender: tuple[str, int] = ("", 0)
        self._counters: CoreCounters | None = None
        self._txns: OrderedDict[tuple[str, int, str, int, int], None] = OrderedDict()
        self.learned = LearnedNames()
        self.hostnames = HostNames()  # internal hosts' names from DHCP and DNS PTR answers
        self.awaiting = Awaiting()
        self.quic = quicp.QuicTracker()
        # Raw address+port bytes of decided TCP streams (untagged Ethernet), for feed()'s
        # one-lookup skip, with the flow's counters and whether this direction is the
        # client's; FIFO-capped like the flow table (an OrderedDict: a dict's oldest-first
        # eviction is quadratic).
        self._done_raw: OrderedDict[bytes, tuple[FlowRecord, bool]] = OrderedDict()
        self._dns_cache: OrderedDict[bytes, dnsp.DnsMessage] = OrderedDict()
        self._rk: bytes | None = None
        self._quiet = False  # learn_only(): learn addresses, nothing else
        self._macs: tuple[str, bytes, bytes] | None = None  # this frame's (src IP, src MAC, dst MAC)
        self._quiet_state: tuple[Stats, FlowTable, IPDecoder, OrderedDict, FlowCounters] | None = None

    def learn_only(self, ts: float, linktype: int, data: bytes) -> None:
        """A DNS packet (UDP or TCP) that belongs to another worker's share of the file:
        learn the addresses in its answer, for this share's flows; alert, count and keep
        nothing else.  It runs through the normal decoders against scratch tables and
        counters, so the main ones (and the summary) are untouched."""
        if self._quiet_state is None:
            self._quiet_state = (Stats(), FlowTable(max_flows=4096), IPDecoder(), OrderedDict(), FlowCounters(4096))
        saved = (self.stats, self.flows, self.ip, self._txns, self.flowc, self._rk, self._out, self._counters)
        self.stats, self.flows, self.ip, self._txns, self.flowc = self._quiet_state
        self._rk, self._out, self._quiet, self._counters = None, [], True, None
        try:
            self._frame(ts, linktype, data, 0)
        except DecodeError:
            pass
        finally:
            self.stats, self.flows, self.ip, self._txns, self.flowc, self._rk, self._out, self._counters = saved
            self._quiet = False

    # -- input -------------------------------------------------------------------------
    def set_source(self, name: str | None) -> None:
        """Name the capture the following frames come from (EVE ``pcap_filename``)."""
        self._source = name

    def feed(self, ts: float, linktype: int, data: bytes, counters: CoreCounters | None = None) -> list[Alert]:
        """Process one frame; return alerts that are ready (their window closed).

        ``counters``: a capture layer that counted this packet's flow itself passes
        ``(start_ts, pkts_fwd, bytes_fwd, pkts_rev, bytes_rev[, to_server])`` (absolute,
        this packet included, fwd = this packet's direction); they replace the detector's
        own count of this packet (``decode/flowcount.py``)."""
        st = self.stats
        st.packets += 1
        st.bytes += len(data)
        self._out = []
        self._counters = counters
        # The common case first: an untagged Ethernet TCP segment of a decided stream,
        # without SYN/FIN/RST, costs one slice and one dict lookup, nothing decoded.
        rk = None
        if linktype == 1 and len(data) >= 54:
            et = data[12:14]
            if et == b"\x08\x00" and data[14] == 0x45 and not (data[20] & 0x3F or data[21]) and data[23] == 6:
                rk = data[26:38]
                if not data[47] & 7:
                    done = self._done_raw.get(rk)
                    if done is not None:
                        st.ip_packets += 1
                        self._skip_count(done, (data[16] << 8) | data[17], counters)
                        return self._out
            elif et == b"\x86\xdd" and data[20] == 6 and len(data) >= 74:
                rk = data[22:58]
                if not data[67] & 7:
                    done = self._done_raw.get(rk)
                    if done is not None:
                        st.ip_packets += 1
                        self._skip_count(done, 40 + ((data[18] << 8) | data[19]), counters)
                        return self._out
        self._rk = rk
        try:
            self._frame(ts, linktype, data, 0)
        except DecodeError as exc:
            st.undecodable[exc.reason] += 1
        except Exception as exc:  # a bug must not stop a run: count it, say which
            if self.strict:
                raise
            st.undecodable[f"internal-error-{type(exc).__name__}"] += 1
        return self._out

    def _skip_count(self, done: tuple[FlowRecord, bool], length: int, counters: CoreCounters | None) -> None:
        """Count a packet of a decided stream that the raw skip passes over."""
        rec, to_server = done
        if counters is None:
            self.flowc.touch(rec, to_server, length)
        else:
            rec.absolute(counters if len(counters) > 5 else (*counters[:5], to_server), ("", 0))

    def _count(self, ts: float, proto: int, src: str, sport: int, dst: str, dport: int, flags: int = 0) -> None:
        """Count the packet in its flow; the record stays current for the matches it gives."""
        self._cur = self.flowc.count(ts, proto, src, sport, dst, dport, self.ip.length, flags, self._counters)
        self._cur_sender = (src, sport)

    def _frame(self, ts: float, linktype: int, data: bytes, depth: int) -> None:
        """Decode one frame; ``depth`` is how many tunnels it was taken out of (0: as captured)."""
        st = self.stats
        ip = self.ip.plain_ethernet_ipv4(data) if linktype == 1 else None  # the common frame, quickly
        vlans: tuple[int, ...] = ()
        if ip is not None:
            version = 4
        else:
            link = strip_link(linktype, data)
            if link is None:
                st.skipped["not-ip"] += 1
                return
            version, off, vlans = link
            ip = self.ip.decode(version, data, off, ts)
            if ip is None:
                return  # a fragment held for reassembly
        if depth == 0:
            st.ip_packets += 1
        src, dst, proto, l4 = ip
        self._macs = (src, data[6:12], data[0:6]) if linktype == 1 else None  # Ethernet: who sent it
        if proto == IPProto.TCP:
            self._tcp(ts, src, dst, l4, vlans)
        elif proto == IPProto.UDP:
            cut = self.ip.cut  # the snaplen cut the datagram: only DNS can use what is left
            sport, dport, payload = transport.udp(l4, bool(cut))
            if cut and sport != DNS_PORT and dport != DNS_PORT:
                raise DecodeError("truncated-ipv4" if version == 4 else "truncated-ipv6")
            if dport not in tunnel.TUNNEL_UDP_PORTS:
                self._count(ts, IPProto.UDP, src, sport, dst, dport)
            if dport in tunnel.TUNNEL_UDP_PORTS:
                inner = tunnel.decapsulate_udp(dport, payload)
                if inner is None:
                    st.skipped["tunnel-payload-not-decoded"] += 1
                else:
                    self._tunnel(ts, "vxlan" if dport == 4789 else "geneve", inner, depth)
            elif sport == DNS_PORT or dport == DNS_PORT:
                st.inspected += 1
                self._dns(ts, src, sport, dst, dport, IPProto.UDP, payload, vlans, bool(cut))
            elif sport in _DHCP_PORTS and dport in _DHCP_PORTS:
                self.hostnames.dhcp(dhcpp.parse(payload))  # DecodeError: feed() counts it
            elif quicp.looks_like_quic_initial(payload):
                st.inspected += 1
                self._quic(ts, src, sport, dst, dport, payload, vlans)
            else:
                psig = self.matcher.lookup_port(IPProto.UDP, dport)
                if psig is not None and not psig.tls_required:
                    self._port_hit(ts, psig, src, sport, dst, dport, IPProto.UDP, False, None, vlans)
        elif proto == tunnel.IPPROTO_GRE:
            inner = tunnel.decapsulate_gre(l4)
            if inner is None:
                st.skipped["tunnel-payload-not-decoded"] += 1  # PPTP, GRE/PPP, WCCP...
            else:
                self._tunnel(ts, "gre", inner, depth)
        else:
            st.skipped["other-ip-protocol"] += 1

    def _tunnel(self, ts: float, kind: str, inner: tuple[int, bytes], depth: int) -> None:
        """Inspect the frame inside a tunnel like a captured one (at most MAX_TUNNEL_DEPTH deep)."""
        tunnel.check_depth(depth)  # DecodeError("tunnel-too-deep")
        self._rk = None  # the outer frame's addresses are not the inner flow's
        self.stats.tunnelled[kind] += 1
        linktype, frame = inner
        self._frame(ts, linktype, frame, depth + 1)

    def _quic(self, ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes, vlans: tuple[int, ...]) -> None:
        hello = self.quic.datagram(src, sport, dst, dport, payload, ts)  # DecodeError: feed() counts it
        if hello is None:
            return
        detail = _hello_detail(hello, version=quicp.version_name(self.quic.last_version), tls_version=tlsp.version_name(hello.version))
        self._named_hello(ts, Evidence.QUIC_SNI, hello, detail, src, sport, dst, dport, IPProto.UDP, vlans)
        if not hello.server_name or hello.ech:  # as for TLS over TCP
            self._hostless(ts, src, sport, dst, dport, IPProto.UDP, "quic", detail, vlans, hello.server_name)

    def _named_hello(
        self, ts: float, evidence: Evidence, hello: tlsp.ClientHello, detail: dict, src: str, sport: int, dst: str,
        dport: int, proto: int, vlans: tuple[int, ...],
    ) -> Match | None:
        """The ClientHello's server name, if it matches (TLS over TCP, or QUIC)."""
        if not hello.server_name:
            return None
        if hello.ech:
            self.stats.ech += 1
        return self._observe(ts, evidence, hello.server_name, src, sport, dst, dport, proto, detail, vlans)

    def account_shed(self, n: int) -> None:
        """Count packets that a capture layer read and shed before they reached ``feed``."""
        self.stats.packets += n
        self.stats.shed += n

    def feed_frames(self, frames: Iterable[tuple[float, int, bytes]]) -> list[Alert]:
        out: list[Alert] = []
        for ts, linktype, data in frames:
            out.extend(self.feed(ts, linktype, data))
        return out

    def flush(self) -> list[Alert]:
        """End of input: every open alert, in first-seen order."""
        out = self.aggregator.flush()
        for a in out:
            self.stats.note_alert(a)
        return out

    # -- TCP ---------------------------------------------------------------------------
    def _tcp(self, ts: float, src: str, dst: str, l4: bytes, vlans: tuple[int, ...]) -> None:
        sport, dport, seq, flags, payload = transport.tcp(l4)
        self._count(ts, IPProto.TCP, src, sport, dst, dport, flags)
        key: FlowKey = (src, sport, dst, dport)
        flows = self.flows
        entry = flows.get(key)
        if flags & (SYN | FIN | RST) and self._rk is not None:
            # Connection boundaries always reach here (the raw skip lets them through):
            # the raw key goes, whatever became of the flow-table entry (evicted, ...).
            self._done_raw.pop(self._rk, None)
        if entry is DONE and flags & SYN:
            entry = False  # a new connection (SYN or SYN-ACK) reusing a decided flow's ports
            flows.remove(key)
        if entry is DONE:
            if flags & (FIN | RST):
                flows.remove(key)
            return
        if not payload:
            if flags & RST or (flags & FIN and entry is not False):
                flows.remove(key)
            elif flags & SYN and entry is False:
                flows.set(key, (seq + 1) & 0xFFFFFFFF)
            return
        if flags & SYN:
            seq = (seq + 1) & 0xFFFFFFFF  # data on a SYN (TCP Fast Open) starts after the ISN
        if isinstance(entry, Stream):
            stream = entry
        else:
            stream = Stream(entry if isinstance(entry, int) and entry is not False else seq, ts)
            flows.set(key, stream)
        if not flows.grow(key, stream, seq, payload) and stream.mode:
            return
        self.stats.inspected += 1
        try:
            done = self._stream(ts, key, stream, vlans)
        except DecodeError as exc:
            self.stats.undecodable[exc.reason] += 1
            done = True
        if done:
            flows.set(key, DONE)
            if self._rk is not None and self._cur is not None:
                raw = self._done_raw
                raw[self._rk] = (self._cur, self._cur_sender == self._cur.client)
                if len(raw) > MAX_DONE_RAW:
                    raw.popitem(last=False)
        if flags & (FIN | RST):
            flows.remove(key)
            if self._rk is not None:
                self._done_raw.pop(self._rk, None)  # it may have been decided by this segment

    def _stream(self, ts: float, key: FlowKey, s: Stream, vlans: tuple[int, ...]) -> bool:
        """Parse what the stream holds; True once the stream is decided."""
        data = s.data
        if not data:
            return False
        src, sport, dst, dport = key
        if not s.mode:
            if len(data) < 6 and _could_grow_into_known(bytes(data)):
                return False  # too few bytes to tell
            waiting = self.awaiting.pop(key)
            if waiting:
                self._answered(ts, waiting, data)
            if sport == DNS_PORT or dport == DNS_PORT:
                s.mode = "dns"
            elif tlsp.looks_like_tls(data):
                s.mode = "tls"
            elif httpp.looks_like_http(data):
                s.mode = "http"
            elif self.cert_names and tlsp.looks_like_server_hello(data) and not (
                waiting and any(kind == "tls" for _key, kind in waiting)
            ):
                # The certificate's names (TLS 1.2): only when the client's SNI did not
                # already name the flow, so the X.509 parse stays off the common path.
                s.mode = "tls-server"
            elif len(data) < 12 and _could_grow_into_known(bytes(data)):
                return False
            else:
                # Neither TLS, HTTP nor DNS: decided.  If this side spoke first, a Kaspersky
                # port or an address learned from DNS can still name the flow.
                rev = self.flows.get((dst, dport, src, sport))
                if rev is not DONE and not isinstance(rev, Stream):  # the other side sent no data yet
                    self._client_flow(ts, key, "failed", {}, vlans)
                return True
        full = len(data) >= self.flows.max_stream
        if s.mode == "tls":
            hello = tlsp.parse_client_hello(bytes(data))
            if hello is None:
                if full:
                    raise DecodeError("tls-client-hello-too-long")
                return False
            detail = _hello_detail(hello, version=tlsp.version_name(hello.version))
            named = self._named_hello(ts, Evidence.TLS_SNI, hello, detail, src, sport, dst, dport, IPProto.TCP, vlans)
            if named is not None:
                self.awaiting.add((dst, dport, src, sport), key_of(named), "tls")
            # No host name of its own (no SNI), or ECH (the outer name is the public name,
            # the inner one is hidden, whether or not the outer one matched): an address
            # learned from DNS may still name the flow.
            hostless = not hello.server_name or hello.ech
            self._client_flow(ts, key, "tls", detail if hostless else None, vlans, hello.server_name)
            return True
        if s.mode == "tls-server":
            return self._server_flight(ts, key, s, vlans, full)
        if s.mode == "http":
            return self._http(ts, key, s, vlans, full)
        # DNS over TCP, either direction; keeps going for the life of the connection.
        messages, used = dnsp.split_tcp(bytes(data))
        if used:
            del data[:used]
            s.base = (s.base + used) & 0xFFFFFFFF
            s.consumed += 1
        for wire in messages:
            if self._no_anchor(wire):
                continue
            try:
                self._dns_message(ts, src, sport, dst, dport, IPProto.TCP, self._parse_dns(wire), vlans)
            except DecodeError as exc:
                self.stats.undecodable[exc.reason] += 1
        return len(data) >= self.flows.max_stream

    def _http(self, ts: float, key: FlowKey, s: Stream, vlans: tuple[int, ...], full: bool) -> bool:
        src, sport, dst, dport = key
        data = s.data
        while data:
            req = httpp.parse_request(bytes(data))
            if req is None:
                return full
            s.consumed += 1
            detail = {
                "tx_id": s.consumed - 1,  # the request's number on its connection (Suricata's tx_id)
                "url": req.target,
                "http_method": req.method,
                "protocol": req.version,
                "http_user_agent": req.user_agent,
                "hostname": req.host,
                "host_header": req.host,
            }
            seen: set[str] = set()
            named: list[Match] = []
            target = httpp.target_host(req.method, req.target)
            if target:
                kind = Evidence.HTTP_CONNECT if req.method == "CONNECT" else Evidence.HTTP_URI
                seen.add(target.lower().rstrip("."))
                m = self._observe(ts, kind, target, src, sport, dst, dport, 6, dict(detail, hostname=target), vlans)
                named += [m] if m else []
            if req.host:
                host = httpp.authority_host(req.host)
                if host.lower().rstrip(".") not in seen:
                    m = self._observe(ts, Evidence.HTTP_HOST, host, src, sport, dst, dport, 6, dict(detail, hostname=host), vlans)
                    named += [m] if m else []
            if s.consumed == 1:  # the connection's first request: the response upgrades it
                for m in named:
                    self.awaiting.add((dst, dport, src, sport), key_of(m), "http")
                hostless = not named and not target and (not req.host or _is_ip_literal(httpp.authority_host(req.host)))
                self._client_flow(ts, key, "http", detail if hostless else None, vlans)
            if req.body_len != 0 or s.consumed >= MAX_HTTP_REQUESTS:
                return True  # a body, or enough requests: decided
            del data[: req.head_len]
            s.base = (s.base + req.head_len) & 0xFFFFFFFF
            if req.method == "CONNECT":
                # What follows is the tunnelled protocol (usually a TLS ClientHello naming
                # the same or another host): sniff it afresh.
                s.mode = ""
                return self._stream(ts, key, s, vlans)
        return False

    # -- DNS ---------------------------------------------------------------------------
    def _dns(
        self, ts: float, src: str, sport: int, dst: str, dport: int, proto: int, payload: bytes, vlans: tuple[int, ...],
        cut: bool = False,
    ) -> None:
        if self._no_anchor(payload):
            return
        msg = dnsp.parse_message(payload, cut=True) if cut else self._parse_dns(payload)
        if cut:
            self.stats.dns_cut += 1
        self._dns_message(ts, src, sport, dst, dport, proto, msg, vlans)

    def _parse_dns(self, wire: bytes) -> dnsp.DnsMessage:
        """dnspython parses each distinct message once: the same question (or the same
        answer) from many clients differs only in the 16-bit id, so the rest of the wire
        bytes key a small cache of parsed messages."""
        if len(wire) < 12:
            return dnsp.parse_message(wire)  # raises the right DecodeError
        cache = self._dns_cache
        body = wire[2:]
        msg = cache.get(body)
        if msg is None:
            msg = dnsp.parse_message(wire)
            if len(wire) <= MAX_DNS_CACHED_WIRE:
                cache[body] = msg
                if len(cache) > MAX_DNS_CACHE:
                    cache.popitem(last=False)
            return msg
        return msg.with_id((wire[0] << 8) | wire[1])

    def _no_anchor(self, wire: bytes) -> bool:
        """True when a DNS message cannot name anything we match (cheap byte search before
        the full dnspython parse); counted in the summary."""
        anchors = self.matcher.dns_anchors
        if anchors is None:
            return False
        low = wire.lower()
        for a in anchors:
            if a in low:
                return False
        if b"\x04arpa\x00" in low:  # a reverse lookup may name an internal host (hostnames.py)
            return False
        self.stats.dns_prefiltered += 1
        return True

    def _dns_message(
        self, ts: float, src: str, sport: int, dst: str, dport: int, proto: int, msg: dnsp.DnsMessage, vlans: tuple[int, ...]
    ) -> None:
        txns = self._txns
        if not msg.qr:
            txns[(src, sport, dst, dport, msg.id)] = None
            if len(txns) > MAX_DNS_TXNS:
                txns.popitem(last=False)
                self.stats.dns_txns_evicted += 1
            for q in msg.questions:
                detail = {"type": "query", "id": msg.id, "rrname": q.name, "rrtype": q.rrtype, "opcode": msg.opcode,
                          "tx_id": self._dns_tx_id(proto)}
                if msg.truncated:
                    detail["truncated"] = True
                self._observe(ts, Evidence.DNS_QUERY, q.name, src, sport, dst, dport, proto, detail, vlans, labels=q.labels)
            return
        # A response: the client is the destination.
        for a in msg.answers:
            if a.rrtype == "PTR" and a.target:
                self.hostnames.ptr(a.rrname, a.target)
        query_seen = txns.pop((dst, dport, src, sport, msg.id), False) is None
        # NOERROR with records; when the snaplen cut them, the header still counts them
        answered = msg.rcode == "NOERROR" and bool(msg.answers or msg.answer_count)
        if answered:
            self._dns_answered(ts, dst, src, sport, msg, query_seen)
        qname, qtype = (msg.questions[0].name, msg.questions[0].rrtype) if msg.questions else ("", "")
        answers = [
            {"rrname": a.rrname, "rrtype": a.rrtype, "ttl": a.ttl, "rdata": a.rdata}
            for a in msg.answers[:MAX_EVIDENCE_ANSWERS]
        ]
        base = {"type": "answer", "id": msg.id, "rrname": qname, "rrtype": qtype, "rcode": msg.rcode, "answers": answers,
                "opcode": msg.opcode, "flags": msg.flags, "tx_id": self._dns_tx_id(proto)}
        if msg.truncated:
            base["truncated"] = True
        names: dict[dnsp.Labels, None] = {}
        qnames = {tuple(x.lower() for x in q.labels) for q in msg.questions}
        strength = Strength.COMPLETED if answered else Strength.WEAK
        if not query_seen:  # only the answer was captured: its question is still evidence
            for q in msg.questions:
                self._observe(ts, Evidence.DNS_QUERY, q.name, dst, dport, src, sport, proto, base, vlans, strength, q.labels)
        for a in msg.answers:
            for n in (a.rrname_labels, a.target_labels):
                if n and tuple(x.lower() for x in n) not in qnames:
                    names[n] = None
        for n in names:
            self._observe(ts, Evidence.DNS_ANSWER, dnsp.name_text(n), dst, dport, src, sport, proto, base, vlans,
                          Strength.COMPLETED, n)

    def _dns_tx_id(self, proto: int) -> int:
        """Suricata's transaction number of a DNS message: each message of a flow is one,
        in order; over UDP a message is a packet, so it is the flow's packets before this
        one.  (Over TCP, 0: messages are not numbered per connection here.)"""
        rec = self._cur
        if proto != IPProto.UDP or rec is None:
            return 0
        _start, pts, _b, ptc, _b2 = rec.counts()
        return max(0, pts + ptc - 1)

    def _dns_answered(
        self, ts: float, client: str, server: str, server_port: int, msg: dnsp.DnsMessage, query_seen: bool
    ) -> None:
        """An answer with records: upgrade the query's alert, and learn the addresses a
        Kaspersky name resolved to (the first name of the CNAME chain that matches)."""
        chain = [q.labels for q in msg.questions] + [a.target_labels for a in msg.answers if a.target_labels]
        for labels in chain:
            hit = self.matcher.lookup_labels(labels)
            if hit is None:
                continue
            if query_seen:
                for q in msg.questions:
                    qhit = self.matcher.lookup_labels(q.labels)
                    if qhit is not None:
                        qkey = make_key(client, qhit.signature.id, qhit.name, Evidence.DNS_QUERY, "dns", server, server_port)
                        self._upgrade(ts, qkey, Strength.COMPLETED)
            for a in msg.answers:
                if a.rrtype in _ADDR_TYPES:
                    self.learned.learn(client, a.rdata, ts, a.ttl, hit.name, hit, count=not self._quiet)
            return

    # -- matching ----------------------------------------------------------------------
    def _observe(
        self,
        ts: float,
        evidence: Evidence,
        name: str,
        client: str,
        cport: int,
        server: str,
        sport: int,
        proto: int,
        detail: dict,
        vlans: tuple[int, ...],
        strength: Strength = Strength.WEAK,
        labels: dnsp.Labels | None = None,
    ) -> Match | None:
        """``labels``: the name's wire labels (DNS), matched as labels; else the name's text."""
        hit = self.matcher.lookup(name) if labels is None else self.matcher.lookup_labels(labels)
        if hit is None:
            return None
        return self._emit(ts, evidence, hit.name, hit.signature, hit.pattern, client, cport, server, sport, proto, detail, vlans, strength)

    def _emit(
        self,
        ts: float,
        evidence: Evidence,
        name: str,
        signature: Any,
        pattern: str,
        client: str,
        cport: int,
        server: str,
        sport: int,
        proto: int,
        detail: dict,
        vlans: tuple[int, ...],
        strength: Strength,
    ) -> Match:
        rec = self._cur
        flow, direction = None, ""
        if rec is not None:
            f_start, pts, bts, ptc, btc = rec.counts()
            (_p, a, b) = rec.key
            other = b if a == rec.client else a
            flow = (f_start, pts, bts, ptc, btc, rec.client[0], rec.client[1], other[0], other[1])
            direction = rec.direction(self._cur_sender)
        if self._macs is not None:  # the client's (and server's) MAC, from this frame's Ethernet header
            sent_by_client = self._macs[0] == client
            cmac, smac = self._macs[1:] if sent_by_client else self._macs[:0:-1]
            detail = {**detail, "client_mac": cmac.hex(":"), "server_mac": smac.hex(":")}
        named = self.hostnames.lookup(client)
        if named is not None:
            detail = {**detail, "client_name": named[0], "client_name_source": named[1]}
        obs = Observation(
            ts=ts,
            evidence=evidence,
            hostname=name,
            client=client,
            server=server,
            client_port=cport,
            server_port=sport,
            proto=proto,
            flow_id=flow_id(proto, client, cport, server, sport),
            detail=detail,
            vlan=vlans,
            strength=strength,
            flow=flow,
            direction=direction,
        )
        self.stats.observations[evidence.value] += 1
        match = Match(obs, signature, pattern)
        if self._quiet:
            return match
        if self.collect:
            self.collected.append(match)
            return match
        for alert in self.aggregator.add(match, self._source):
            self.stats.note_alert(alert)
            self._out.append(alert)
        return match

    def _upgrade(self, ts: float, key: Key, strength: Strength) -> None:
        if self._quiet:
            return
        if self.collect:
            self.collected.append(Upgrade(ts, key, strength))
        else:
            self.aggregator.upgrade(key, strength)

    # -- flows without a host name, ports, the server's side ---------------------------
    def _client_flow(
        self, ts: float, key: FlowKey, app: str, hostless: dict | None, vlans: tuple[int, ...], sni: str | None = None
    ) -> None:
        """A client's first bytes are decided: a Kaspersky port names the flow; so does an
        address the client learned from a Kaspersky DNS answer, when the flow itself carries
        no host name (``hostless`` is then the protocol detail, else None)."""
        src, sport, dst, dport = key
        psig = self.matcher.lookup_port(IPProto.TCP, dport)
        if psig is not None and (app == "tls" or not psig.tls_required):
            self._port_hit(ts, psig, src, sport, dst, dport, IPProto.TCP, app == "tls", sni, vlans, app)
        if hostless is not None:
            m = self._hostless(ts, src, sport, dst, dport, IPProto.TCP, app, hostless, vlans, sni)
            if m is not None:
                self.awaiting.add((dst, dport, src, sport), key_of(m), "any")

    def _hostless(
        self, ts: float, src: str, sport: int, dst: str, dport: int, proto: int, app: str, detail: dict,
        vlans: tuple[int, ...], outer: str | None = None,
    ) -> Match | None:
        """A flow with no host name of its own (or only an ECH outer name, ``outer``), to an
        address ``src`` learned from a DNS answer for a Kaspersky name: attributed to that
        name, unless it is the outer name itself (already reported as the SNI)."""
        learned = self.learned.lookup(src, dst, ts, unless=outer.lower().rstrip(".") if outer else None)
        if learned is None:
            return None
        hostname, hit, _learned_at = learned
        detail = dict(detail, app_proto=app, resolved_by=f"DNS answer to {src} for {hostname}")
        return self._emit(ts, Evidence.DNS_LEARNED, hostname, hit.signature, hit.pattern, src, sport, dst, dport,
                          proto, detail, vlans, Strength.WEAK)

    def _port_hit(
        self, ts: float, sig: Any, src: str, sport: int, dst: str, dport: int, proto: int, tls: bool,
        sni: str | None, vlans: tuple[int, ...], app: str = "failed",
    ) -> Match:
        agent, server = (dst, src) if sig.listener == "agent" else (src, dst)
        detail = {
            "app_proto": app,
            "agent": agent,
            "ksc_server": server,
            "port_confidence": "high" if tls else "medium",
            "sni": sni,
        }
        endpoint = f"{proto_name(proto)}/{dport}"
        m = self._emit(ts, Evidence.PORT, endpoint, sig, endpoint, src, sport, dst, dport, proto, detail, vlans, Strength.WEAK)
        if proto == IPProto.TCP:
            self.awaiting.add((dst, dport, src, sport), key_of(m), "port-tls" if tls else "any")
        return m

    def _answered(self, ts: float, waiting: list, data: bytearray) -> None:
        """The server's first bytes on a flow whose client request raised an alert."""
        hello = tlsp.looks_like_server_hello(data)
        http = bytes(data[:5]) == b"HTTP/"
        for agg_key, kind in waiting:
            if kind == "port-tls" and hello:
                self._upgrade(ts, agg_key, Strength.STRONG)
            elif (kind == "tls" and hello) or (kind == "http" and http) or kind in ("any", "port-tls"):
                self._upgrade(ts, agg_key, Strength.COMPLETED)

    def _server_flight(self, ts: float, key: FlowKey, s: Stream, vlans: tuple[int, ...], full: bool) -> bool:
        """TLS 1.2 and older: names in the server's certificate (weak evidence: a shared
        CDN certificate lists many names)."""
        flight = tlsp.parse_server_flight(bytes(s.data))
        if flight is None:
            if full:
                raise DecodeError("tls-server-flight-too-long")
            return False
        if not flight.certificates:
            return True
        server, sport, client, cport = key
        subject, names = x509.cert_names(flight.certificates[0])
        alerted = 0
        for name in names:
            if alerted >= MAX_CERT_ALERTS:
                break
            detail = {"subject": subject, "version": tlsp.version_name(flight.version), "cert_names": names[:16]}
            if self._observe(ts, Evidence.TLS_CERT, name.lstrip("*."), client, cport, server, sport, 6, detail, vlans):
                alerted += 1
        return True

    # -- records another sensor logged (capture/logs.py, ``detector ingest``) -------------
    # The same _observe/_dns_message/_port_hit/_hostless as for packets: one code path from
    # a host name to a Match, whatever carried it.
    def log_name(
        self, ts: float, evidence: Evidence, name: str, client: str, cport: int, server: str, sport: int,
        proto: int, detail: dict, vlans: tuple[int, ...] = (), answered: bool = False,
    ) -> list[Alert]:
        """A host name a log record holds (SNI, HTTP host, certificate name); ``answered``:
        the log shows the server's reply (ServerHello, HTTP status)."""
        self._out = []
        m = self._observe(ts, evidence, name, client, cport, server, sport, proto, detail, vlans)
        if m is not None and answered:
            self._upgrade(ts, key_of(m), Strength.COMPLETED)
        return self._out

    def log_dns(self, ts: float, client: str, cport: int, server: str, sport: int, proto: int,
                msg: dnsp.DnsMessage, vlans: tuple[int, ...] = ()) -> list[Alert]:
        """A logged DNS query (``msg.qr`` False) or response, as if its packet was seen."""
        self._out = []
        if msg.qr:
            self._dns_message(ts, server, sport, client, cport, proto, msg, vlans)
        else:
            self._dns_message(ts, client, cport, server, sport, proto, msg, vlans)
        return self._out

    def log_flow(
        self, ts: float, client: str, cport: int, server: str, sport: int, proto: int, app: str, *,
        named: bool, client_data: bool, answered: bool, server_hello: bool, detail: dict | None = None,
        vlans: tuple[int, ...] = (),
    ) -> list[Alert]:
        """A logged connection: a Security Center port, or (``named`` False: no host name of
        its own) an address the client learned from a Kaspersky DNS answer."""
        self._out = []
        psig = self.matcher.lookup_port(proto, sport)
        tls = app == "tls"
        if psig is not None and (client_data or proto == IPProto.UDP) and (tls or not psig.tls_required):
            m = self._port_hit(ts, psig, client, cport, server, sport, proto, tls, (detail or {}).get("sni"), vlans,
                               app if proto == IPProto.TCP else "failed")
            if proto == IPProto.TCP and answered:
                self._upgrade(ts, key_of(m), Strength.STRONG if tls and server_hello else Strength.COMPLETED)
        if not named and client_data and app != "dns":
            h = self._hostless(ts, client, cport, server, sport, proto, app, dict(detail or {}), vlans)
            if h is not None and answered and proto == IPProto.TCP:
                self._upgrade(ts, key_of(h), Strength.COMPLETED)
        return self._out

    def add_matches(self, matches: Iterable[Match | Upgrade], source: str | None) -> list[Alert]:
        """Aggregate matches found elsewhere (by a worker process) as if seen here."""
        out: list[Alert] = []
        for match in matches:
            if isinstance(match, Upgrade):
                self.aggregator.upgrade(match.key, match.strength)
                continue
            for alert in self.aggregator.add(match, source):
                self.stats.note_alert(alert)
                out.append(alert)
        return out


_PREFIXES = tuple(m + b" " for m in httpp.METHODS)


def _hello_detail(hello: tlsp.ClientHello, **versions: str) -> dict:
    return {"sni": hello.server_name, **versions, "alpn": list(hello.alpn), "ech": hello.ech}


def proto_name(proto: int) -> str:
    return "tcp" if proto == IPProto.TCP else "udp" if proto == IPProto.UDP else str(proto)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _could_grow_into_known(first: bytes) -> bool:
    """A stream's first few bytes are still a prefix of a TLS record or an HTTP method."""
    if first[0] == tlsp.ContentType.HANDSHAKE:
        return len(first) < 6
    return any(p.startswith(first) for p in _PREFIXES)
