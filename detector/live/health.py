"""Health of a live run: kernel and interface drop counters, the statistics line (SIGUSR1,
``--stats-interval``, at the end) and the Prometheus samples behind ``--metrics``.

Kernel counters come from every capture handle; drops are logged once per increase, with
the totals, and the capture continues.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .. import bounds
from ..capture import live as cap
from ..metrics import Sample
from ..signatures import CATEGORIES
from .log import log, thousands

if TYPE_CHECKING:
    from .controller import Controller


class Health:
    """The counters the controller reports, gathered from its workers and handles."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.kstats: dict[str, tuple[int, int, int]] = {}  # iface -> recv, drop, ifdrop
        self.ring_drops: dict[tuple[str, str, int], int] = {}  # (iface, role, worker) -> drops
        self.logged: dict[str, int] = {}  # counter -> value at the last drop line
        self.rx_base = {i: cap.interface_rx(i) or 0 for i in ctl.settings.interface}  # "since the start"

    def poll_kernel(self, log_drops: bool) -> None:
        ctl = self.ctl
        per: dict[str, list[int]] = {}
        for h in ctl.all_handles:
            try:
                recv, drop, ifdrop = h.stats()
            except Exception:  # noqa: BLE001 - a handle that failed is reported by its worker
                continue
            key = (h.iface, h.role, h.worker)
            self.ring_drops[key] = max(drop, self.ring_drops.get(key, 0))
            cur = per.setdefault(h.iface, [0, 0, 0])
            cur[0] += recv
            cur[1] += drop
            cur[2] = max(cur[2], ifdrop)  # the interface's count, the same on every handle
        for iface, (recv, drop, ifdrop) in per.items():
            old = self.kstats.get(iface, (0, 0, 0))
            self.kstats[iface] = (max(recv, old[0]), max(drop, old[1]), max(ifdrop, old[2]))
        if not log_drops:
            return
        for iface, (_, drop, ifdrop) in self.kstats.items():
            rings = ", ".join(f"{role} {thousands(self.ring(iface, role))}" for role in self.roles())
            self._drop_line(f"kernel:{iface}", drop, f"{iface}: the kernel dropped {{d}} packet(s) (total {{t}}; by "
                            f"ring: {rings}): a capture ring (--buffer-size) was full; capture continues")
            self._drop_line(f"if:{iface}", ifdrop, f"{iface}: the interface dropped {{d}} packet(s) (total {{t}}); "
                            "capture continues")
        back = sum(w.stats.get("backlog_drops", 0) for w in ctl.workers)
        self._drop_line("backlog", back, "workers dropped {d} whole packet(s) their parsers could not keep up with "
                        "(total {t}); capture continues")

    def roles(self) -> list[str]:
        """The capture rings' roles: "all" (with the compiled core), or "heads" and "whole"."""
        return sorted({h.role for h in self.ctl.all_handles}) or ["heads", "whole"]

    def ring(self, iface: str, role: str) -> int:
        return sum(n for (i, r, _), n in self.ring_drops.items() if i == iface and r == role)

    def _drop_line(self, key: str, total: int, template: str) -> None:
        before = self.logged.get(key, 0)
        if total > before:
            log("drops: " + template.format(d=thousands(total - before), t=thousands(total)))
        self.logged[key] = total

    def totals(self) -> dict[str, int]:
        ctl = self.ctl
        t: Counter[str] = Counter()
        for w in ctl.workers:
            for k, v in w.stats.items():
                if isinstance(v, int):
                    t[k] += v
        for recv, drop, ifdrop in self.kstats.values():
            t["received"] += recv
            t["kernel_drops"] += drop
            t["interface_drops"] += ifdrop
        for iface in ctl.settings.interface:
            rx = cap.interface_rx(iface)
            if rx is not None:
                t["interface_rx"] += rx - self.rx_base.get(iface, 0)
        t["queue"] = ctl.dedup.pending + self.output_queue()
        return dict(t)

    def output_queue(self) -> int:
        ctl = self.ctl
        try:
            return sum(int(s.get("queued", 0)) for s in ctl.outputs.stats().values())
        except Exception:  # noqa: BLE001 - statistics must not stop the capture
            return 0

    def stats_line(self) -> str:
        ctl = self.ctl
        t = self.totals()
        c = ctl.dedup.counters
        return (
            f"stats: interfaces received {thousands(t.get('interface_rx', 0))} packets, the capture filter passed "
            f"{thousands(t.get('received', 0))} (kernel drops {thousands(t.get('kernel_drops', 0))}, interface drops "
            f"{thousands(t.get('interface_drops', 0))}); shed in C {thousands(t.get('shed', 0))}, to Python "
            f"{thousands(t.get('python_packets', 0))}, inspected {thousands(t.get('inspected', 0))}; alerts {thousands(c.alerts)} "
            f"(repeats {thousands(c.repeats)}, open {thousands(len(ctl.dedup))}); output queue {thousands(t.get('queue', 0))}; "
            f"backlog drops {thousands(t.get('backlog_drops', 0))}; workers {sum(not w.done for w in ctl.workers)}"
        )

    def samples(self) -> list[Sample]:
        ctl = self.ctl
        t = self.totals()
        c = ctl.dedup.counters
        out: list[Sample] = []
        for iface, (recv, drop, ifdrop) in sorted(self.kstats.items()):
            lab = {"interface": iface}
            out.append(Sample("detector_packets_received_total", "counter", "Packets the kernel capture filter passed", recv, lab))
            out.append(Sample("detector_kernel_drops_total", "counter", "Packets dropped because the capture ring was full", drop, lab))
            out.append(Sample("detector_interface_drops_total", "counter", "Packets the interface dropped", ifdrop, lab))
            for role in self.roles():
                out.append(Sample("detector_ring_drops_total", "counter", "Kernel drops by capture ring: all (every "
                                  "packet, to the compiled core), or heads (IPv4 TCP, flow heads classified in C) "
                                  "and whole (DNS, SYN/FIN/RST, QUIC, IPv6, ...)",
                                  self.ring(iface, role), {"interface": iface, "ring": role}))
            rx = cap.interface_rx(iface)
            if rx is not None:
                out.append(Sample("detector_interface_rx_packets_total", "counter", "Packets the interface received", rx, lab))
        for name, key, help_ in (
            ("detector_packets_shed_total", "shed", "Packets shed in C after their flow head"),
            ("detector_packets_python_total", "python_packets", "Packets handed to the Python pipeline"),
            ("detector_packets_inspected_total", "inspected", "Packets handed to a protocol parser"),
            ("detector_packets_undecodable_total", "undecodable", "Malformed packets skipped"),
            ("detector_backlog_drops_total", "backlog_drops", "Whole packets dropped because the parsers lagged"),
        ):
            out.append(Sample(name, "counter", help_, t.get(key, 0)))
        out.append(Sample("detector_matches_total", "counter", "Signature hits", c.matches))
        for cat in sorted({*CATEGORIES, *c.by_category}):
            out.append(Sample("detector_alerts_total", "counter", "Alerts written", c.by_category[cat], {"category": cat}))
        out.append(Sample("detector_repeats_total", "counter", "Hits inside an alert's window, counted and not written", c.repeats))
        for key, what in bounds.EVICTIONS.items():
            out.append(Sample("detector_evictions_total", "counter", "Entries a bounded table let go (see bounds.py)",
                              t.get(f"state_{key}", 0), {"table": key, "reason": what}))
        for key in sorted(bounds.GAUGES):
            out.append(Sample("detector_state", "gauge", "Size of a bounded table summed over the workers (entries or bytes)",
                              t.get(f"state_{key}", 0), {"table": key}))
        sc = ctl.dedup.storm.counters
        for what, help_ in (("folded_names", "Distinct names folded into alert-storm aggregates"),
                            ("folded_hits", "Hits folded into alert-storm aggregates"),
                            ("aggregates", "Alert-storm aggregate alerts written"),
                            ("keys_evicted", "Alert-storm windows closed early because the table was full")):
            out.append(Sample(f"detector_storm_{what}_total", "counter", help_, sc[what]))
        out.append(Sample("detector_storm_windows", "gauge", "Alert-storm (client, signature) windows tracked", len(ctl.dedup.storm)))
        out.append(Sample("detector_output_errors_total", "counter", "Alerts an output could not take (see the log)", ctl.output_errors))
        out.append(Sample("detector_output_queue_depth", "gauge", "Alerts held (settle) or queued for an output", t.get("queue", 0)))
        out.append(Sample("detector_open_alerts", "gauge", "Alert windows open for de-duplication", len(ctl.dedup)))
        out.append(Sample("detector_flows", "gauge", "TCP streams tracked by the workers", t.get("flows", 0)))
        out.append(Sample("detector_signatures", "gauge", "Signatures in force", len(ctl.sigsets[ctl.gen].set)))
        out.append(Sample("detector_signature_generation", "gauge", "Signature set generation (1 + reloads)", ctl.gen))
        for result in ("ok", "failed"):
            out.append(Sample("detector_reloads_total", "counter", "SIGHUP reloads", ctl.reloads[result], {"result": result}))
        out.append(Sample("detector_workers", "gauge", "Capture worker processes running", sum(not w.done for w in ctl.workers)))
        out.append(Sample("detector_start_time_seconds", "gauge", "When the detector started (Unix time)", ctl.started))
        return out
