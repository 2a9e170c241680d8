"""The host inventory: which internal hosts show Kaspersky traffic, since when, how strong
the evidence is and what kind of product it is.  Built from alerts (``Contact``), one at a
time, so it works the same on a replay, on ``live`` output files and on ``ingest``.

Bounded: memory grows with the number of hosts (capped by ``max_hosts``; the ones beyond
are counted, never silently lost), never with the number of alerts.  Per host at most
``MAX_ROWS`` evidence rows, ``MAX_ENDPOINTS`` endpoints, a few MACs and names, and a
timeline of at most ``MAX_BUCKETS`` buckets (bucket width doubles when more are needed).

Product family, with the reason that decided it (the strongest signal wins):

- ``Security Center server``: the Administration Server / KSN proxy end of a Security
  Center port signature (a Network Agent talks to it on 13000, 14000, 13111, ...).
- ``Endpoint managed by Security Center``: the Network Agent end of such a port, or
  management traffic to the Cloud Console (``*.ksc.kaspersky.com``).
- ``Mail / gateway engine``: a signature whose products are mail or gateway products.
- ``Business endpoint``, ``Consumer product``: a signature whose product list names only
  business (Endpoint Security, Security Center) or only home products (Safe Kids,
  Internet Security, Security Cloud, VPN...).
- ``Kaspersky product (family not determined)``: product traffic (update, telemetry,
  activation...) whose signature names no family.
- ``Website only``: no product-only signature matched: the host visited Kaspersky's
  websites (listed apart; not evidence that software is installed).

The signature packs carry no tags; the family comes from the category, the port
signature's roles (``agent``/``ksc_server``) and the product names in the pack.
"""

from __future__ import annotations

import functools
import ipaddress
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from .contact import STRENGTH_LABEL, Contact

MAX_HOSTS = 250_000
MAX_ROWS = 8  # evidence rows kept per host (the first ones, and the strongest seen)
MAX_ENDPOINTS = 24
MAX_MACS = 4
MAX_NAMES = 4
MAX_KEYS = 32  # distinct categories / evidence kinds per host (untrusted files)
MAX_BUCKETS = 64
FIRST_BUCKET = 60.0  # seconds; doubled while a host's contacts need more buckets
ACTIVE_SECONDS = 86_400.0  # "active": seen within a day of the end of the data

# Addresses that are not globally routable: RFC 1918, CGNAT, link-local, loopback, IPv6
# ULA and link-local, and the documentation / benchmarking ranges only labs use.
DEFAULT_HOME_NET = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "127.0.0.0/8", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "fc00::/7", "fe80::/10", "::1/128", "2001:db8::/32",
)  # fmt: skip

SERVER, AGENT, MAIL, BUSINESS, CONSUMER, PRODUCT, WEBSITE = (
    "Security Center server",
    "Endpoint managed by Security Center",
    "Mail / gateway engine",
    "Business endpoint",
    "Consumer product",
    "Kaspersky product (family not determined)",
    "Website only",
)
FAMILY_RANK = {SERVER: 6, AGENT: 5, MAIL: 4, BUSINESS: 3, CONSUMER: 2, PRODUCT: 1, WEBSITE: 0}
_MAIL_WORDS = ("mail", "gateway", "smtp", "exchange")
_BUSINESS_WORDS = ("endpoint security", "security center", "network agent", "small office", "for business")
_CONSUMER_WORDS = ("safe kids", "internet security", "security cloud", "vpn", "total security",
                   "anti-virus", "kaspersky free", "kaspersky standard", "kaspersky plus", "kaspersky premium")


def _kind(product: str) -> str | None:
    p = product.lower()
    if any(w in p for w in _MAIL_WORDS):
        return MAIL
    if any(w in p for w in _BUSINESS_WORDS):
        return BUSINESS
    if any(w in p for w in _CONSUMER_WORDS):
        return CONSUMER
    return None


@functools.lru_cache(maxsize=4096)
def _products_family(products: tuple[str, ...]) -> str | None:
    """MAIL, BUSINESS or CONSUMER when every product of the signature is of that kind."""
    kinds = {_kind(p) for p in products}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    return None


def family(c: Contact, host: str) -> str:
    """The product family this contact points to for ``host``."""
    if c.evidence == "ksc-port":
        return SERVER if host == c.ksc_server and host != c.agent else AGENT
    if not c.product_only:
        return WEBSITE
    if c.category == "management":
        return AGENT
    return _products_family(c.products) or PRODUCT


_WHAT = {MAIL: "mail/gateway engine", BUSINESS: "business endpoint", CONSUMER: "consumer product"}


def reason(c: Contact, fam: str) -> str:
    """Why ``c`` points to ``fam`` (shown beside the family)."""
    if fam == SERVER:
        return f"Security Center server: Network Agent {c.agent or c.client} uses port {c.endpoint} ({c.signature})"
    if fam == AGENT and c.evidence == "ksc-port":
        return f"Security Center agent: management port {c.endpoint} to {c.ksc_server or c.server}"
    if fam == AGENT:
        return f"Security Center agent: management traffic to {c.endpoint}"
    if fam == WEBSITE:
        return f"website only: {c.endpoint} ({c.category})"
    if fam in _WHAT:
        return f"{_WHAT[fam]}: {c.category} traffic to {c.endpoint} ({'; '.join(c.products)})"
    return f"{c.category} traffic to {c.endpoint} (signature names {'; '.join(c.products) or 'no product'})"


def classify(c: Contact, host: str) -> tuple[str, str]:
    fam = family(c, host)
    return fam, reason(c, fam)


@dataclass(slots=True)
class Host:
    ip: str
    first: float
    last: float
    alerts: int = 0
    contacts: int = 0
    product_alerts: int = 0
    strength: int = 0
    strongest: str = ""
    strongest_rank: tuple[int, bool] = (0, False)
    family: str = WEBSITE
    reason: str = ""
    families: dict[str, str] = field(default_factory=dict)  # family -> first reason
    macs: dict[str, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # name -> how it was learned
    categories: dict[str, int] = field(default_factory=dict)
    evidence: dict[str, int] = field(default_factory=dict)
    endpoints: dict[str, int] = field(default_factory=dict)
    endpoints_more: int = 0
    rows: list[Contact] = field(default_factory=list)
    rows_more: int = 0
    rows_floor: tuple[int, bool] = (0, False)  # the weakest kept row, once the rows are full
    width: float = FIRST_BUCKET
    base: int = 0  # bucket number (floor(ts / width)) of buckets[0]
    buckets: array | None = None  # contacts per bucket, MAX_BUCKETS of them (a few hundred bytes)

    @property
    def website_only(self) -> bool:
        return self.product_alerts == 0

    @property
    def strength_label(self) -> str:
        return STRENGTH_LABEL.get(self.strength, "weak")

    def timeline(self) -> list[tuple[float, float, int]]:
        """(start, end, contacts) per non-empty bucket, in time order."""
        w, b = self.width, self.base
        return [((b + i) * w, (b + i + 1) * w, n) for i, n in enumerate(self.buckets or ()) if n]


def _bump(d: dict[str, int], key: str, n: int, cap: int) -> bool:
    if key in d:
        d[key] += n
        return True
    if len(d) < cap:
        d[key] = n
        return True
    return False


class HomeNet:
    """Which addresses are internal (``--home-net``)."""

    def __init__(self, cidrs: Iterable[str] | None = None) -> None:
        self.cidrs = tuple(cidrs or DEFAULT_HOME_NET)
        nets = [ipaddress.ip_network(c, strict=False) for c in self.cidrs]
        self._v4 = [n for n in nets if n.version == 4]
        self._v6 = [n for n in nets if n.version == 6]
        self.contains = functools.lru_cache(maxsize=1 << 16)(self._contains)

    def _contains(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        nets = self._v4 if ip.version == 4 else self._v6
        return any(ip in n for n in nets)


@dataclass
class Counters:
    alerts: int = 0  # contacts added
    outside: int = 0  # alerts whose client is outside the home net (not inventoried)
    hosts_dropped: int = 0  # hosts beyond max_hosts (their alerts are counted here too)
    alerts_dropped: int = 0


_intern = sys.intern


class Inventory:
    """Feed it contacts; ``hosts()`` gives the inventory."""

    def __init__(self, home_net: HomeNet | None = None, max_hosts: int = MAX_HOSTS) -> None:
        self.home = home_net or HomeNet()
        self.max_hosts = max_hosts
        self._hosts: dict[str, Host] = {}
        self._dropped: set[str] = set()  # at most a bounded sample, for the count
        self.counters = Counters()
        self.first: float | None = None
        self.last: float | None = None
        self.mac_hosts: dict[str, int] = {}  # MAC -> hosts it was seen for (a router's is many)

    def __len__(self) -> int:
        return len(self._hosts)

    def add_alert(self, alert: object) -> None:
        """An in-process ``model.Alert`` (the replay hook)."""
        from .contact import from_alert

        self.add(from_alert(alert))  # type: ignore[arg-type]

    def add(self, c: Contact) -> None:
        cnt = self.counters
        cnt.alerts += 1
        inside = self.home.contains(c.client)
        peer = ""
        if c.evidence == "ksc-port":  # the Security Center end is a Kaspersky host too
            other = c.server
            if other in (c.agent, c.ksc_server) and self.home.contains(other):
                peer = other
        if not inside and not peer:
            cnt.outside += 1
            return
        self.first = c.first if self.first is None or c.first < self.first else self.first
        self.last = c.last if self.last is None or c.last > self.last else self.last
        if inside:
            self._add_to(c.client, c, own=True)
        if peer:
            self._add_to(peer, c, own=False)

    def _host(self, ip: str, c: Contact) -> Host | None:
        h = self._hosts.get(ip)
        if h is not None:
            return h
        if len(self._hosts) >= self.max_hosts:
            if len(self._dropped) < 1_000_000 and ip not in self._dropped:
                self._dropped.add(ip)
                self.counters.hosts_dropped += 1
            self.counters.alerts_dropped += 1
            return None
        h = self._hosts[ip] = Host(ip=_intern(ip), first=c.first, last=c.last)
        return h

    def _add_to(self, ip: str, c: Contact, own: bool) -> None:
        h = self._host(ip, c)
        if h is None:
            return
        h.first = min(h.first, c.first)
        h.last = max(h.last, c.last)
        h.alerts += 1
        h.contacts += c.count
        if c.product_only:
            h.product_alerts += 1
        if own and c.client_mac:
            if c.client_mac not in h.macs and len(h.macs) < MAX_MACS:
                h.macs[c.client_mac] = 0
                self.mac_hosts[c.client_mac] = self.mac_hosts.get(c.client_mac, 0) + 1
            if c.client_mac in h.macs:
                h.macs[c.client_mac] += 1
        if own and c.client_name and c.client_name not in h.names and len(h.names) < MAX_NAMES:
            h.names[c.client_name] = c.client_name_source or "?"
        _bump(h.categories, _intern(c.category), c.count, MAX_KEYS)
        _bump(h.evidence, _intern(c.evidence), c.count, MAX_KEYS)
        if not _bump(h.endpoints, _intern(c.endpoint), c.count, MAX_ENDPOINTS):
            h.endpoints_more += 1
        rank = (c.strength, c.product_only)
        if rank > h.strongest_rank:
            h.strongest_rank = rank
            h.strength = c.strength
            h.strongest = f"{STRENGTH_LABEL.get(c.strength, 'weak')}: {c.evidence} {c.endpoint}"
        fam = family(c, ip)
        new, better = fam not in h.families, FAMILY_RANK[fam] > FAMILY_RANK[h.family] or not h.reason
        if new or better:
            why = reason(c, fam)
            if new:
                h.families[fam] = why
            if better:
                h.family, h.reason = fam, why
        rows = h.rows
        if len(rows) < MAX_ROWS:
            rows.append(c)
            if len(rows) == MAX_ROWS:
                h.rows_floor = min((r.strength, r.product_only) for r in rows)
        else:
            h.rows_more += 1
            if rank > h.rows_floor:  # replace the weakest row with a stronger one
                weakest = min(range(len(rows)), key=lambda i: (rows[i].strength, rows[i].product_only))
                rows[weakest] = c
                h.rows_floor = min((r.strength, r.product_only) for r in rows)
        self._timeline(h, c)

    @staticmethod
    def _timeline(h: Host, c: Contact) -> None:
        """Count ``c`` in its bucket; when it falls outside the MAX_BUCKETS the host has,
        shift them (an earlier contact) or make every bucket twice as wide."""
        k = int(c.first // h.width)
        b = h.buckets
        if b is None:
            b = h.buckets = array("Q", bytes(8 * MAX_BUCKETS))
            h.base = k
        while not h.base <= k < h.base + MAX_BUCKETS:
            used = [i for i, n in enumerate(b) if n]
            lo, hi = min(h.base, k), max(h.base + used[-1], k) if used else k
            if hi - lo < MAX_BUCKETS:  # fits once the buckets start at lo
                new = array("Q", bytes(8 * MAX_BUCKETS))
                for i in used:
                    new[h.base + i - lo] = b[i]
                h.base, h.buckets, b = lo, new, new
                break
            new = array("Q", bytes(8 * MAX_BUCKETS))  # coarsen: twice as wide
            nb = h.base // 2
            for i in used:
                new[(h.base + i) // 2 - nb] += b[i]
            h.width *= 2
            h.base, h.buckets, b = nb, new, new
            k = int(c.first // h.width)
        b[k - h.base] += c.count

    def hosts(self) -> list[Host]:
        """Hosts with product traffic first (most specific family, then most contacts),
        then the website-only ones."""
        return sorted(self._hosts.values(), key=lambda h: (h.website_only, -FAMILY_RANK[h.family], -h.contacts, h.ip))

    def active(self, h: Host) -> bool:
        return self.last is not None and h.last >= self.last - ACTIVE_SECONDS
