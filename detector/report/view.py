"""The inventory as plain data (dicts of strings and numbers) that every renderer shares:
summary, hosts, breakdown by category and evidence strength, timeline.  Pure."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from .contact import STRENGTH_LABEL
from .inventory import DEFAULT_HOME_NET, FAMILY_RANK, WEBSITE, Host, Inventory

TIMELINE_HOSTS = 25  # hosts drawn in the timeline (the busiest with product traffic)
TIMELINE_BINS = 60


def when(ts: float | None) -> str:
    """UTC, to the second (time.gmtime: several times faster than datetime.strftime)."""
    if ts is None:
        return ""
    return "{:04d}-{:02d}-{:02d} {:02d}:{:02d}:{:02d}".format(*time.gmtime(ts)[:6])


def _mac(inv: Inventory, h: Host) -> str:
    macs = sorted(h.macs, key=lambda m: -h.macs[m])
    shown = []
    for m in macs:
        n = inv.mac_hosts.get(m, 0)
        shown.append(f"{m} (shared by {n} hosts: a router?)" if n > 8 else m)
    return ", ".join(shown)


def host_view(inv: Inventory, h: Host, rows: bool = True) -> dict[str, Any]:
    """One host as plain data; ``rows=False`` leaves out the evidence rows (table, CSV)."""
    return {
        "ip": h.ip,
        "mac": _mac(inv, h),
        "names": ", ".join(f"{n} ({src})" for n, src in h.names.items()),
        "family": h.family,
        "reason": h.reason,
        "other_families": [f"{f}: {r}" for f, r in h.families.items() if f != h.family],
        "website_only": h.website_only,
        "strength": h.strength_label,
        "strength_rank": h.strength,
        "strongest": h.strongest,
        "first_seen": when(h.first),
        "last_seen": when(h.last),
        "first_ts": h.first,
        "last_ts": h.last,
        "status": "active" if inv.active(h) else f"quiet since {when(h.last)}",
        "alerts": h.alerts,
        "contacts": h.contacts,
        "categories": dict(sorted(h.categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        "evidence": dict(sorted(h.evidence.items(), key=lambda kv: (-kv[1], kv[0]))),
        "endpoints": dict(sorted(h.endpoints.items(), key=lambda kv: (-kv[1], kv[0]))),
        "endpoints_more": h.endpoints_more,
        "rows": [
            {
                "first_seen": when(r.first),
                "last_seen": when(r.last),
                "count": r.count,
                "endpoint": r.endpoint,
                "server": f"{r.server}:{r.server_port}/{r.proto}" if r.server else "",
                "evidence": r.evidence,
                "strength": STRENGTH_LABEL.get(r.strength, "weak"),
                "category": r.category,
                "sid": r.sid,
                "signature": r.signature,
                "source_file": r.source_file,
            }
            for r in (sorted(h.rows, key=lambda r: r.first) if rows else ())
        ],
        "rows_more": h.rows_more,
    }


class HostList:
    """The host views of a list of hosts, made one at a time as they are iterated (a
    100,000-host report is never all in memory as dicts and strings); iterable again."""

    def __init__(self, inv: Inventory, hosts: list[Host], limit: int | None = None, rows: bool = True) -> None:
        self.inv, self.hosts, self.limit, self.rows = inv, hosts, limit, rows

    def __len__(self) -> int:
        return len(self.hosts) if self.limit is None else min(self.limit, len(self.hosts))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for h in self.hosts[: self.limit]:
            yield host_view(self.inv, h, self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return host_view(self.inv, self.hosts[: self.limit][i], self.rows)

    def head(self, n: int) -> HostList:
        return HostList(self.inv, self.hosts, n if self.limit is None else min(n, self.limit), self.rows)

    def light(self) -> HostList:
        """The same hosts without their evidence rows."""
        return HostList(self.inv, self.hosts, self.limit, rows=False)


def build(inv: Inventory, sources: list[str] | None = None) -> dict[str, Any]:
    hosts = inv.hosts()
    product = [h for h in hosts if not h.website_only]
    website = [h for h in hosts if h.website_only]
    families = Counter(h.family for h in product)
    cats: Counter[str] = Counter()
    cat_hosts: Counter[str] = Counter()
    strength_hosts: Counter[str] = Counter(h.strength_label for h in hosts)
    for h in hosts:
        cats.update(h.categories)
        cat_hosts.update(h.categories.keys())
    c = inv.counters
    summary: dict[str, Any] = {
        "product_hosts": len(product),
        "website_hosts": len(website),
        "families": dict(sorted(families.items(), key=lambda kv: -FAMILY_RANK[kv[0]])),
        "active_hosts": sum(1 for h in product if inv.active(h)),
        "alerts": c.alerts,
        "outside_home_net": c.outside,
        "hosts_dropped": c.hosts_dropped,
        "alerts_dropped": c.alerts_dropped,
        "first_seen": when(inv.first),
        "last_seen": when(inv.last),
        "home_net": list(inv.home.cidrs),
        "home_net_label": "the private and lab ranges (default)" if inv.home.cidrs == DEFAULT_HOME_NET else ", ".join(inv.home.cidrs),
        "generated": when(datetime.now(timezone.utc).timestamp()),
        "sources": list(sources or []),
    }
    summary["line"] = summary_line(summary)
    return {
        "summary": summary,
        "hosts": HostList(inv, product),
        "website_hosts": HostList(inv, website),
        "breakdown": {
            "categories": [{"category": k, "contacts": v, "hosts": cat_hosts[k]} for k, v in cats.most_common()],
            "strength": [{"strength": s, "hosts": strength_hosts.get(s, 0)} for s in ("strong", "completed", "weak")],
            "families": [{"family": f, "hosts": n} for f, n in families.most_common()]
            + ([{"family": WEBSITE, "hosts": len(website)}] if website else []),
        },
        "timeline": timeline(inv, product),
    }


def summary_line(s: dict[str, Any]) -> str:
    fams = ", ".join(f"{f} {n}" for f, n in s["families"].items())
    line = (f"{s['product_hosts']} host(s) with Kaspersky product traffic ({s['active_hosts']} active in the last day of data"
            f"{'; ' + fams if fams else ''}), {s['website_hosts']} website-only host(s); {s['alerts']:,} alert(s)")
    if s["first_seen"]:
        line += f" from {s['first_seen']} to {s['last_seen']} UTC"
    if s["outside_home_net"]:
        line += f"; {s['outside_home_net']:,} alert(s) from clients outside the home net not listed"
    if s["hosts_dropped"]:
        line += f"; {s['hosts_dropped']:,} host(s) beyond the inventory's cap NOT LISTED"
    return line


def timeline(inv: Inventory, hosts: list[Host]) -> dict[str, Any]:
    """Contacts per host per time bin, for the busiest ``TIMELINE_HOSTS`` hosts."""
    if inv.first is None or inv.last is None or not hosts:
        return {"bins": 0, "rows": [], "start": "", "end": "", "max": 0}
    start, end = inv.first, max(inv.last, inv.first + 1.0)
    width = (end - start) / TIMELINE_BINS
    top = sorted(hosts, key=lambda h: -h.contacts)[:TIMELINE_HOSTS]
    rows = []
    peak = 0
    for h in top:
        bins = [0] * TIMELINE_BINS
        for lo, hi, n in h.timeline():
            mid = max(start, min(end, (max(lo, h.first) + min(hi, h.last)) / 2))
            i = min(TIMELINE_BINS - 1, int((mid - start) / width))
            bins[i] += n
        peak = max(peak, *bins)
        rows.append({"ip": h.ip, "bins": bins, "family": h.family})
    return {"bins": TIMELINE_BINS, "rows": rows, "start": when(start), "end": when(end), "max": peak}
