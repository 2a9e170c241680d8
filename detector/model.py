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
    HTTP_HOST = "http-host"
    HTTP_URI = "http-absolute-uri"
    HTTP_CONNECT = "http-connect"

    @property
    def app_proto(self) -> str:
        return self.value.split("-", 1)[0]


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

    @property
    def observation(self) -> Observation:
        return self.match.observation

    @property
    def signature(self) -> Any:
        return self.match.signature
