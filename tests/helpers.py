"""Shared test helpers: build frames with scapy (hand-built edge cases, said so where used)
and run the detector over them."""

from __future__ import annotations

from pathlib import Path

from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw  # type: ignore[attr-defined]
from scapy.layers.dns import DNS, DNSQR, DNSRR

from detector import Detector
from detector.model import Alert

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
# Third-party reference files (ECS, OCSF, Suricata EVE schemas): see tests/fixtures/ref/README.md
REF = REPO / "tests" / "fixtures" / "ref"
EVE_SCHEMAS = [REF / "suricata" / "suricata-eve-schema-7.0.10.json", REF / "suricata" / "suricata-eve-schema-8.0.6.json"]

CLIENT, SERVER = "198.18.0.10", "198.18.0.1"


def dns_query(name: str, client: str = CLIENT, qid: int = 1, sport: int = 40000) -> bytes:
    return bytes(Ether() / IP(src=client, dst=SERVER) / UDP(sport=sport, dport=53) / DNS(id=qid, rd=1, qd=DNSQR(qname=name)))


def dns_cname_response(qname: str, target: str, client: str = CLIENT, qid: int = 2) -> bytes:
    an = DNSRR(rrname=qname, type="CNAME", rdata=target) / DNSRR(rrname=target, type="A", rdata="198.18.0.1")
    return bytes(Ether() / IP(src=SERVER, dst=client) / UDP(sport=53, dport=40001) / DNS(id=qid, qr=1, qd=DNSQR(qname=qname), an=an))


def dns_a_response(qname: str, addr: str, client: str = CLIENT, qid: int = 3, ttl: int = 300) -> bytes:
    an = DNSRR(rrname=qname, type="A", rdata=addr, ttl=ttl)
    return bytes(Ether() / IP(src=SERVER, dst=client) / UDP(sport=53, dport=40002) / DNS(id=qid, qr=1, qd=DNSQR(qname=qname), an=an))


def udp_payload(payload: bytes, client: str = CLIENT, dport: int = 443, sport: int = 51000) -> bytes:
    return bytes(Ether() / IP(src=client, dst=SERVER) / UDP(sport=sport, dport=dport) / Raw(payload))


def tcp_payload(payload: bytes, client: str = CLIENT, dport: int = 80, sport: int = 41000, seq: int = 1000, v6: bool = False) -> bytes:
    ip = IPv6(src="2001:db8::10", dst="2001:db8::1") if v6 else IP(src=client, dst=SERVER)
    return bytes(Ether() / ip / TCP(sport=sport, dport=dport, flags="PA", seq=seq) / Raw(payload))


def run_frames(frames: list[bytes], det: Detector | None = None, t0: float = 1_700_000_000.0) -> list[Alert]:
    det = det or Detector(strict=True)
    out: list[Alert] = []
    for i, f in enumerate(frames):
        out += det.feed(t0 + i, 1, f)
    return out + det.flush()
