"""Frozen dataclasses handed from one stage to the next.

capture -> ``Frame``; decode -> ``Packet``; parsers -> ``Observation``;
matcher -> ``Match``; aggregate -> ``Alert``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Evidence(str, enum.Enum):
    """What kind of traffic carried the hostname."""

    DNS_QUERY = "dns-query"
    DNS_ANSWER = "dns-answer"  # a name seen only in the answer section (CNAME target, owner)
    TLS_SNI = "tls-sni"
    TLS_CERT = "tls-certificate"  # subject CN / SAN of a TLS 1.2 server certificate
    QUIC_SNI = "quic-sni"
    HTTP_HOST = "http-host"
    HTTP_URI = "http-absolute-uri"
    HTTP_CONNECT = "http-connect"
    DNS_LEARNED = "ip-from-dns"  # a flow with no hostname, to an address a Kaspersky name resolved to
    PORT = "ksc-port"  # a Kaspersky Security Center port

    @property
    def app_proto(self) -> str:
        return _APP_PROTO[self]


_APP_PROTO = {
    Evidence.DNS_QUERY: "dns",
    Evidence.DNS_ANSWER: "dns",
    Evidence.TLS_SNI: "tls",
    Evidence.TLS_CERT: "tls",
    Evidence.QUIC_SNI: "quic",
    Evidence.HTTP_HOST: "http",
    Evidence.HTTP_URI: "http",
    Evidence.HTTP_CONNECT: "http",
    Evidence.DNS_LEARNED: "flow",
    Evidence.PORT: "flow",
}


class Strength(enum.IntEnum):
    """How strong the evidence of an alert is (alert.metadata.evidence_strength)."""

    WEAK = 1  # one side only: a query, a ClientHello, a request, an open port, a certificate
    COMPLETED = 2  # the other side answered: DNS answer, ServerHello, HTTP response
    STRONG = 3  # a management port with a TLS handshake in both directions

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Frame:
    """One record of a capture: link type, timestamp (float seconds), bytes."""

    ts: float
    linktype: int
    data: bytes
    wirelen: int


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded TCP or UDP packet.  ``payload`` is the transport payload."""

    ts: float
    src: str
    dst: str
    proto: int  # 6 TCP, 17 UDP
    sport: int
    dport: int
    payload: bytes
    tcp_flags: int = 0
    seq: int = 0
    vlan: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Observation:
    """A hostname seen on the wire, with the protocol record that holds it.

    ``client`` is the host that asked (DNS query sender, TLS/HTTP client), whichever
    direction the packet that carried it travelled.
    """

    ts: float
    evidence: Evidence
    hostname: str  # normalised: lower case, no trailing dot
    client: str
    server: str
    client_port: int
    server_port: int
    proto: int
    flow_id: int
    detail: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    vlan: tuple[int, ...] = ()
    strength: Strength = Strength.WEAK
    # The flow of the packet that gave the match, as of that packet (it included):
    # (start, pkts_toserver, bytes_toserver, pkts_toclient, bytes_toclient, client
    # address, client port, server address, server port); the client is the sender of the
    # flow's first packet (decode/flowcount.py).  None when unknown.
    flow: tuple | None = field(default=None, compare=False, hash=False)
    direction: str = field(default="", compare=False, hash=False)  # to_server / to_client: that packet's


@dataclass(frozen=True, slots=True)
class Match:
    """An observation whose hostname matched a signature."""

    observation: Observation
    signature: Any  # signatures.Signature (kept loose to avoid an import cycle)
    pattern: str


@dataclass(frozen=True, slots=True)
class Alert:
    """A de-duplicated detection: the first match of its key, how often and when it was seen."""

    match: Match
    count: int
    first_seen: float
    last_seen: float
    source_file: str | None = None
    strength: Strength = Strength.WEAK
    storm: Any = None  # storm.StormInfo on an alert-storm aggregate (names folded), else None

    @property
    def severity_number(self) -> int:
        """Suricata's scale (1 high .. 3 low): the signature's, one step lower when the
        evidence is weak (a lone query, hello or open port; anyone can send one)."""
        base = int(self.match.signature.severity_number)
        return min(3, base + 1) if self.strength == Strength.WEAK and base < 3 else base

    @property
    def observation(self) -> Observation:
        return self.match.observation

    @property
    def signature(self) -> Any:
        return self.match.signature
