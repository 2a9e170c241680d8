"""Wires the stages: frame -> decode -> parsers -> matcher -> aggregate.

``Detector`` is the sans-I/O core: it is fed frames (bytes and their capture timestamp)
and returns alerts; it owns the counters the summary reports and never touches a file,
socket or clock.  Only DNS packets and the first bytes of each TCP stream reach a parser:
once a stream is decided it costs one dict lookup per packet.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .aggregate import Aggregator
from .decode import transport
from .decode.flows import DONE, FIN, RST, SYN, FlowKey, FlowTable, Stream
from .decode.ip import IPDecoder, IPProto
from .decode.link import strip_link
from .errors import DecodeError
from .matcher import Matcher
from .model import Alert, Evidence, Match, Observation
from .parsers import dns as dnsp
from .parsers import http as httpp
from .parsers import tls as tlsp
from .signatures import SignatureSet, load_signatures

DNS_PORT = 53
MAX_HTTP_REQUESTS = 32  # request heads parsed per connection (keep-alive, proxies)
MAX_DNS_TXNS = 65536  # outstanding DNS queries remembered to pair answers with
MAX_EVIDENCE_ANSWERS = 16


@dataclass
class Stats:
    """Counters the pipeline owns; the CLI renders them."""

    packets: int = 0
    bytes: int = 0
    shed: int = 0  # packets a C prefilter read and dropped before Python (fast path)
    ip_packets: int = 0
    inspected: int = 0  # packets handed to a protocol parser
    skipped: Counter[str] = field(default_factory=Counter)  # not for us (non-IP, ICMP...)
    undecodable: Counter[str] = field(default_factory=Counter)  # malformed, by reason
    observations: Counter[str] = field(default_factory=Counter)  # matched names by evidence
    alerts: Counter[str] = field(default_factory=Counter)  # by category
    hosts: dict[str, Counter[str]] = field(default_factory=dict)  # client -> category counts
    host_names: dict[str, set[str]] = field(default_factory=dict)  # client -> hostnames

    def merge(self, other: Stats) -> None:
        """Add a worker's counters (alerts are counted where they are aggregated)."""
        self.packets += other.packets
        self.bytes += other.bytes
        self.shed += other.shed
        self.ip_packets += other.ip_packets
        self.inspected += other.inspected
        self.skipped.update(other.skipped)
        self.undecodable.update(other.undecodable)
        self.observations.update(other.observations)

    def note_alert(self, alert: Alert) -> None:
        cat = alert.signature.category
        self.alerts[cat] += 1
        client = alert.observation.client
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
        max_flows: int = 200_000,
        max_stream: int = 32 * 1024,
        strict: bool = False,
        collect: bool = False,
    ) -> None:
        self.strict = strict  # re-raise unexpected exceptions (--debug, tests)
        # collect=True: keep raw matches in ``collected`` instead of aggregating them (a
        # worker of ``replay --jobs``; the parent aggregates every worker's matches in order).
        self.collect = collect
        self.collected: list[Match] = []
        self.signatures = signatures if signatures is not None else load_signatures()
        self.matcher = Matcher(self.signatures)
        self.aggregator = Aggregator(window=window, dedup=dedup)
        self.ip = IPDecoder()
        self.flows = FlowTable(max_flows=max_flows, max_stream=max_stream)
        self.stats = Stats()
        self._txns: OrderedDict[tuple[str, int, str, int, int], None] = OrderedDict()
        self._source: str | None = None
        self._out: list[Alert] = []

    # -- input -------------------------------------------------------------------------
    def set_source(self, name: str | None) -> None:
        """Name the capture the following frames come from (EVE ``pcap_filename``)."""
        self._source = name

    def feed(self, ts: float, linktype: int, data: bytes) -> list[Alert]:
        """Process one frame; return alerts that are ready (their window closed)."""
        st = self.stats
        st.packets += 1
        st.bytes += len(data)
        self._out = []
        try:
            link = strip_link(linktype, data)
            if link is None:
                st.skipped["not-ip"] += 1
                return self._out
            version, off, vlans = link
            ip = self.ip.decode(version, data, off, ts)
            if ip is None:
                return self._out  # a fragment held for reassembly
            st.ip_packets += 1
            src, dst, proto, l4 = ip
            if proto == IPProto.TCP:
                self._tcp(ts, src, dst, l4, vlans)
            elif proto == IPProto.UDP:
                sport, dport, payload = transport.udp(l4)
                if sport == DNS_PORT or dport == DNS_PORT:
                    st.inspected += 1
                    self._dns(ts, src, sport, dst, dport, IPProto.UDP, payload, vlans)
            else:
                st.skipped["other-ip-protocol"] += 1
        except DecodeError as exc:
            st.undecodable[exc.reason] += 1
        except Exception as exc:  # a bug must not stop a run: count it, say which
            if self.strict:
                raise
            st.undecodable[f"internal-error-{type(exc).__name__}"] += 1
        return self._out

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
        key: FlowKey = (src, sport, dst, dport)
        flows = self.flows
        entry = flows.get(key)
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
        if not stream.add(seq, payload, flows.max_stream) and stream.mode:
            return
        self.stats.inspected += 1
        try:
            done = self._stream(ts, key, stream, vlans)
        except DecodeError as exc:
            self.stats.undecodable[exc.reason] += 1
            done = True
        if done:
            flows.set(key, DONE)
        if flags & (FIN | RST):
            flows.remove(key)

    def _stream(self, ts: float, key: FlowKey, s: Stream, vlans: tuple[int, ...]) -> bool:
        """Parse what the stream holds; True once the stream is decided."""
        data = s.data
        if not data:
            return False
        src, sport, dst, dport = key
        if not s.mode:
            if sport == DNS_PORT or dport == DNS_PORT:
                s.mode = "dns"
            elif tlsp.looks_like_tls(data):
                s.mode = "tls"
            elif httpp.looks_like_http(data):
                s.mode = "http"
            else:
                # Neither TLS, HTTP nor DNS (decided), unless the first bytes are too few to say.
                return not (len(data) < 12 and _could_grow_into_known(bytes(data)))
        full = len(data) >= self.flows.max_stream
        if s.mode == "tls":
            hello = tlsp.parse_client_hello(bytes(data))
            if hello is None:
                if full:
                    raise DecodeError("tls-client-hello-too-long")
                return False
            if hello.server_name:
                detail = {
                    "sni": hello.server_name,
                    "version": tlsp.version_name(hello.version),
                    "alpn": list(hello.alpn),
                    "ech": hello.ech,
                }
                self._observe(ts, Evidence.TLS_SNI, hello.server_name, src, sport, dst, dport, 6, detail, vlans)
            return True
        if s.mode == "http":
            return self._http(ts, key, s, vlans, full)
        # DNS over TCP, either direction; keeps going for the life of the connection.
        messages, used = dnsp.split_tcp(bytes(data))
        if used:
            del data[:used]
            s.base = (s.base + used) & 0xFFFFFFFF
            s.consumed += 1
        for wire in messages:
            try:
                self._dns_message(ts, src, sport, dst, dport, IPProto.TCP, dnsp.parse_message(wire), vlans)
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
                "url": req.target,
                "http_method": req.method,
                "protocol": req.version,
                "http_user_agent": req.user_agent,
                "hostname": req.host,
            }
            seen: set[str] = set()
            target = httpp.target_host(req.method, req.target)
            if target:
                kind = Evidence.HTTP_CONNECT if req.method == "CONNECT" else Evidence.HTTP_URI
                seen.add(target.lower().rstrip("."))
                self._observe(ts, kind, target, src, sport, dst, dport, 6, dict(detail, hostname=target), vlans)
            if req.host:
                host = httpp.authority_host(req.host)
                if host.lower().rstrip(".") not in seen:
                    self._observe(ts, Evidence.HTTP_HOST, host, src, sport, dst, dport, 6, dict(detail, hostname=host), vlans)
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
    def _dns(self, ts: float, src: str, sport: int, dst: str, dport: int, proto: int, payload: bytes, vlans: tuple[int, ...]) -> None:
        self._dns_message(ts, src, sport, dst, dport, proto, dnsp.parse_message(payload), vlans)

    def _dns_message(
        self, ts: float, src: str, sport: int, dst: str, dport: int, proto: int, msg: dnsp.DnsMessage, vlans: tuple[int, ...]
    ) -> None:
        txns = self._txns
        if not msg.qr:
            txns[(src, sport, dst, dport, msg.id)] = None
            if len(txns) > MAX_DNS_TXNS:
                txns.popitem(last=False)
            for qname, qtype in msg.questions:
                detail = {"type": "query", "id": msg.id, "rrname": qname, "rrtype": qtype}
                self._observe(ts, Evidence.DNS_QUERY, qname, src, sport, dst, dport, proto, detail, vlans)
            return
        # A response: the client is the destination.
        query_seen = txns.pop((dst, dport, src, sport, msg.id), False) is None
        qname, qtype = msg.questions[0] if msg.questions else ("", "")
        answers = [
            {"rrname": a.rrname, "rrtype": a.rrtype, "ttl": a.ttl, "rdata": a.rdata}
            for a in msg.answers[:MAX_EVIDENCE_ANSWERS]
        ]
        base = {"type": "answer", "id": msg.id, "rrname": qname, "rrtype": qtype, "rcode": msg.rcode, "answers": answers}
        names: dict[str, None] = {}
        qnames = {q.lower().rstrip(".") for q, _ in msg.questions}
        if not query_seen:  # only the answer was captured: its question is still evidence
            for q, _ in msg.questions:
                self._observe(ts, Evidence.DNS_QUERY, q, dst, dport, src, sport, proto, base, vlans)
        for a in msg.answers:
            for n in (a.rrname, a.target):
                if n and n.lower().rstrip(".") not in qnames:
                    names[n] = None
        for n in names:
            self._observe(ts, Evidence.DNS_ANSWER, n, dst, dport, src, sport, proto, base, vlans)

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
    ) -> None:
        hit = self.matcher.lookup(name)
        if hit is None:
            return
        obs = Observation(
            ts=ts,
            evidence=evidence,
            hostname=name.lower().rstrip("."),
            client=client,
            server=server,
            client_port=cport,
            server_port=sport,
            proto=proto,
            flow_id=flow_id(proto, client, cport, server, sport),
            detail=detail,
            vlan=vlans,
        )
        self.stats.observations[evidence.value] += 1
        match = Match(obs, hit.signature, hit.pattern)
        if self.collect:
            self.collected.append(match)
            return
        for alert in self.aggregator.add(match, self._source):
            self.stats.note_alert(alert)
            self._out.append(alert)

    def add_matches(self, matches: Iterable[Match], source: str | None) -> list[Alert]:
        """Aggregate matches found elsewhere (by a worker process) as if seen here."""
        out: list[Alert] = []
        for match in matches:
            for alert in self.aggregator.add(match, source):
                self.stats.note_alert(alert)
                out.append(alert)
        return out


_PREFIXES = tuple(m + b" " for m in httpp.METHODS)


def _could_grow_into_known(first: bytes) -> bool:
    """A stream's first few bytes are still a prefix of a TLS record or an HTTP method."""
    if first[0] == tlsp.ContentType.HANDSHAKE:
        return len(first) < 6
    return any(p.startswith(first) for p in _PREFIXES)
