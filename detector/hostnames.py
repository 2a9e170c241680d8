"""Names of internal hosts, learned from the capture: a DHCP client's own host name
(option 81 or 12, tied to its lease by the client MAC) and DNS PTR answers
(``10.0.0.5.in-addr.arpa`` -> ``pc-5.corp.example``).  The pipeline puts the name it knows
for a client, at the time of the alert, in the alert (``client_name`` and
``client_name_source``: ``dhcp`` or ``dns-ptr``); the inventory lists it.

Bounded: at most ``max_entries`` addresses and as many MACs, oldest evicted first.
Sans-I/O, like the rest of the pipeline.  A DHCP name wins over a PTR name (it is the
host's own; a PTR record is what someone else's DNS says).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from .parsers import dhcp

ARPA = (".in-addr.arpa", ".ip6.arpa")


def ptr_address(owner: str) -> str | None:
    """``5.0.0.10.in-addr.arpa`` -> ``10.0.0.5``; nibbles of ``ip6.arpa`` -> the IPv6 address."""
    name = owner.lower().rstrip(".")
    try:
        if name.endswith(ARPA[0]):
            parts = name[: -len(ARPA[0])].split(".")
            if len(parts) != 4:
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        if name.endswith(ARPA[1]):
            nibbles = name[: -len(ARPA[1])].split(".")
            if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
                return None
            return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
    except ValueError:
        return None
    return None


class HostNames:
    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._by_ip: OrderedDict[str, tuple[str, str]] = OrderedDict()  # ip -> (name, source)
        self._by_mac: OrderedDict[str, str] = OrderedDict()  # DHCP client MAC -> its name
        self.learned = 0

    def __len__(self) -> int:
        return len(self._by_ip)

    def _put(self, table: OrderedDict, key: str, value: object) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > self.max_entries:
            table.popitem(last=False)

    def dhcp(self, msg: dhcp.Dhcp) -> None:
        if msg.hostname and msg.mac:
            self._put(self._by_mac, msg.mac, msg.hostname)
        name = msg.hostname or (self._by_mac.get(msg.mac) if msg.mac else None)
        if name and msg.address:
            self._put(self._by_ip, msg.address, (name, "dhcp"))
            self.learned += 1

    def ptr(self, owner: str, target: str) -> None:
        ip = ptr_address(owner)
        if ip is None or not target:
            return
        old = self._by_ip.get(ip)
        if old is not None and old[1] == "dhcp":
            return
        self._put(self._by_ip, ip, (target.rstrip("."), "dns-ptr"))
        self.learned += 1

    def lookup(self, ip: str) -> tuple[str, str] | None:
        return self._by_ip.get(ip)
