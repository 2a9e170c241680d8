"""The human summary written to standard error at the end of a run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .parsers import quic as quicp
from .pipeline import Detector


@dataclass
class RunInfo:
    files_ok: int = 0
    files_failed: list[str] = field(default_factory=list)  # one-line messages
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    alerts_written: int = 0
    file_bytes: int = 0
    fast_files: int = 0
    state: Counter[str] = field(default_factory=Counter)  # bounded tables, summed over workers


def show(text: str) -> str:
    """A wire string made safe for a terminal: anything not printable ASCII is escaped
    (control characters, ESC sequences, bidi overrides)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch if " " <= ch <= "~" else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def render(det: Detector, run: RunInfo) -> str:
    st = det.stats
    lines = []
    nfiles = run.files_ok + len(run.files_failed)
    rate = f", {st.packets / run.seconds:,.0f} packets/s" if run.seconds > 0 else ""
    lines.append(
        f"summary: {nfiles} file(s) read ({run.files_ok} ok, {len(run.warnings)} with warnings, "
        f"{len(run.files_failed)} unreadable), {st.packets:,} packets, {run.file_bytes:,} bytes "
        f"in {run.seconds:.2f} s{rate}"
    )
    if run.fast_files:
        lines.append(
            f"path: compiled core (Rust) for {run.fast_files} file(s); {st.shed:,} packets shed in the core "
            f"(no anchor label, no signature port, flow bulk), {st.packets - st.shed:,} handed to Python"
        )
    elif run.files_ok:
        lines.append("path: pure Python (every packet decoded in Python)")
    for w in run.warnings:
        lines.append(f"  warning: {w}")
    for e in run.files_failed:
        lines.append(f"  error: {e}")
    und = sum(st.undecodable.values())
    lines.append(f"undecodable packets: {und:,}" + (f" ({_counts(st.undecodable)})" if und else ""))
    if st.skipped:
        lines.append(f"not inspected (no IP, or not TCP/UDP): {_counts(st.skipped)}")
    lines.append(f"packets inspected by a parser: {st.inspected:,} of {st.ip_packets:,} IP packets")
    if st.dns_prefiltered:
        lines.append(f"DNS messages holding no signature's label, not parsed further: {st.dns_prefiltered:,}")
    total = sum(st.alerts.values())
    lines.append(f"alerts: {total:,}" + (f" ({_counts(st.alerts)})" if total else ""))
    lines.append(f"Kaspersky hosts found: {len(st.hosts)}")
    for host in sorted(st.hosts, key=lambda h: (-sum(st.hosts[h].values()), h)):
        cats = st.hosts[host]
        names = sorted(show(n) for n in st.host_names.get(host, ()))
        shown = ", ".join(names[:6]) + (f", +{len(names) - 6} more" if len(names) > 6 else "")
        lines.append(f"  {host}  {sum(cats.values())} alert(s): {_counts(cats)}; names: {shown}")
    sc = run.state
    quic = {k[5:]: v for k, v in sc.items() if k.startswith("quic-") and v}
    if not quicp.QUIC_AVAILABLE:
        lines.append("QUIC inspection: OFF (the 'cryptography' package is not installed)")
    elif quic:
        lines.append(f"QUIC Initial packets: {_counts(Counter(quic))}")
    if st.tunnelled:
        lines.append(f"frames taken out of tunnels: {_counts(st.tunnelled)}")
    if st.ech:
        lines.append(f"matched ClientHellos carrying an ECH extension (GREASE, or real ECH: then the name alerted is the outer, public one): {st.ech:,}")
    learned = {k[8:]: v for k, v in sc.items() if k.startswith("learned-") and v}
    if learned:
        lines.append(f"addresses learned from Kaspersky DNS answers: {_counts(Counter(learned))}")
    if sc["streams_incomplete"]:
        lines.append(
            f"streams whose ClientHello or request head never completed: {sc['streams_incomplete']:,} "
            "(cut capture, lost segments, or a head longer than --flow-head packets: try --exact)"
        )
    lines.append(
        f"state: {sc['streams']:,} TCP streams tracked, {sc['streams_evicted']:,} evicted "
        f"({sc['streams_evicted_undecided']:,} undecided); IP fragments {sc['fragments']:,}, "
        f"{sc['reassembled']:,} datagrams reassembled, {sc['frag_evicted']:,} incomplete dropped; "
        f"dedup: {det.aggregator.matches:,} matches, {det.aggregator.early:,} alerts closed early"
    )
    return "\n".join(lines) + "\n"
