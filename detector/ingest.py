"""``detector ingest PATH...|-``: other sensors' logs through the same matcher, de-duplication
and outputs as ``replay``.

``capture/logs`` reads the files (Suricata EVE JSON, Zeek TSV or JSON; gzip; standard
input) into ``LogEvent``s; ``feed`` hands each to the Detector's ``log_*`` methods, which
run the same code as a packet would (``_observe``/``_dns_message``/``_port_hit``/
``_hostless``), so an alert from a log is the alert ``replay`` writes for the traffic.
Files are read in the order given and share the Detector's state (a Zeek ``dns.log``
teaches the addresses a later ``conn.log`` is checked against): give DNS logs first.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .aggregate import Upgrade
from .capture.logs import LogEvent, LogStats, read_log
from .errors import CaptureError
from .model import Alert, Evidence
from .outputs import open_outputs
from .parsers import http as httpp
from .pipeline import Detector
from .settle import LiveDedup
from .signatures import SignatureSet
from .summary import show

MAX_FLOWS = 65536
EXIT_OK, EXIT_INPUT, EXIT_UNDELIVERED = 0, 1, 4


@dataclass
class _Flow:
    named: bool = False  # the flow carried a host name of its own (SNI, Host)
    server_hello: bool = False
    answered: bool = False


class Feeder:
    """LogEvents -> the Detector; remembers (bounded) which flows carried a host name."""

    def __init__(self, det: Detector, max_flows: int = MAX_FLOWS) -> None:
        self.det = det
        self.flows: OrderedDict[str, _Flow] = OrderedDict()
        self.max_flows = max_flows

    def _flow(self, key: str) -> _Flow:
        f = self.flows.get(key)
        if f is None:
            f = self.flows[key] = _Flow()
            if len(self.flows) > self.max_flows:
                self.flows.popitem(last=False)
        return f

    def feed(self, ev: LogEvent) -> list[Alert]:
        det, f = self.det, ev.fields
        args = (ev.client, ev.cport, ev.server, ev.sport, ev.proto)
        if ev.kind == "dns":
            assert ev.dns is not None
            return det.log_dns(ev.ts, *args, ev.dns, ev.vlan)
        if ev.kind in ("tls", "quic"):
            fl = self._flow(ev.flow) if ev.flow else _Flow()
            sni = f.get("sni") or ""
            version = f.get("version") or ""
            hello = bool(version) and version.upper() != "UNDETERMINED" or bool(f.get("established"))
            fl.named = fl.named or bool(sni)
            fl.server_hello = fl.server_hello or hello
            fl.answered = fl.answered or hello
            out: list[Alert] = []
            evidence = Evidence.QUIC_SNI if ev.kind == "quic" else Evidence.TLS_SNI
            detail: dict = {"sni": sni or None, "version": version, "alpn": [], "ech": False}
            matched = False
            if sni:
                before = det.stats.observations[evidence.value]
                out += det.log_name(ev.ts, evidence, sni, *args, detail, ev.vlan, answered=hello and ev.kind == "tls")
                matched = det.stats.observations[evidence.value] > before
            cn = _common_name(f.get("subject") or "")
            if ev.kind == "tls" and not matched and cn and version.upper() in ("TLS 1.2", "TLSV1.2", "TLS 1.1", "TLS 1.0", "TLSV1", "TLSV1.1"):
                cert = {"subject": f.get("subject"), "version": version, "cert_names": [cn]}
                out += det.log_name(ev.ts, Evidence.TLS_CERT, cn.lstrip("*."), *args, cert, ev.vlan)
            return out
        if ev.kind == "http":
            fl = self._flow(ev.flow) if ev.flow else _Flow()
            method, url, host = f.get("http_method") or "", f.get("url") or "", f.get("hostname") or ""
            answered = f.get("status") not in (None, "", "-")
            fl.answered = fl.answered or answered
            detail = {k: f.get(k) for k in ("url", "http_method", "protocol", "http_user_agent")}
            out = []
            target = httpp.target_host(method, url)
            if target:
                kind = Evidence.HTTP_CONNECT if method == "CONNECT" else Evidence.HTTP_URI
                out += det.log_name(ev.ts, kind, target, *args, dict(detail, hostname=target), ev.vlan, answered=answered)
            if host:
                h = httpp.authority_host(host)
                if not target or h.lower().rstrip(".") != target.lower().rstrip("."):
                    out += det.log_name(ev.ts, Evidence.HTTP_HOST, h, *args, dict(detail, hostname=h), ev.vlan, answered=answered)
            fl.named = fl.named or bool(target) or bool(host and not _is_ip(httpp.authority_host(host)))
            return out
        # a flow record: ports, and addresses learned from DNS for flows without a name
        fl = self.flows.get(ev.flow) or _Flow()
        app = f.get("app_proto") or ""
        if "orig_bytes" in f:  # Zeek conn.log
            client_data = f["orig_bytes"] > 0 or ev.proto == 17
            answered = f["resp_bytes"] > 0
        else:  # EVE flow: an app_proto (even "failed") means the client sent data
            client_data = bool(app) or ev.proto == 17
            answered = fl.answered or (isinstance(f.get("pkts_toclient"), int) and f["pkts_toclient"] > 2)
        server_hello = fl.server_hello or (app == "tls" and answered and "orig_bytes" in f)
        return det.log_flow(ev.ts, *args, app or "failed", named=fl.named, client_data=client_data,
                            answered=answered, server_hello=server_hello, vlans=ev.vlan)


def _common_name(subject: str) -> str:
    for part in subject.replace("/", ",").split(","):
        k, _, v = part.strip().partition("=")
        if k.strip().upper() == "CN":
            return v.strip()
    return ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ingest(det: Detector, paths: list[str], emit: Callable[[list[Alert]], None], stats: LogStats,
           after: Callable[[LogEvent], None] | None = None) -> list[str]:
    """Read every file into ``det``; alerts that become ready go to ``emit`` (``after`` is
    called after every record: the streaming mode's emission).  Returns the files that
    could not be read (one message each)."""
    feeder = Feeder(det)
    failed: list[str] = []
    for path in paths:
        det.set_source(None if path == "-" else path)
        try:
            anchors = det.matcher.dns_anchors
            for ev in read_log(path, stats, tuple(a[1:] for a in anchors) if anchors is not None else None):
                try:
                    out = feeder.feed(ev)
                except Exception as exc:  # a bug must not stop a run: count it, say which
                    if det.strict:
                        raise
                    det.stats.undecodable[f"internal-error-{type(exc).__name__}"] += 1
                    continue
                if out:
                    emit(out)
                if after is not None:
                    after(ev)
        except CaptureError as exc:
            failed.append(str(exc))
    return failed


def summary(det: Detector, stats: LogStats, seconds: float, written: int) -> str:
    rate = stats.lines / seconds if seconds > 0 else 0.0
    out = [f"ingest: {stats.lines} lines in {seconds:.1f} s ({rate:,.0f} lines/s); "
           f"files: {', '.join(f'{v} {k}' for k, v in sorted(stats.formats.items())) or 'none'}"]
    if stats.records:
        out.append("  records: " + ", ".join(f"{k} {v}" for k, v in stats.records.most_common()))
    if stats.prefiltered:
        out.append(f"  records holding no signature's label (not parsed): {stats.prefiltered}")
    if stats.ignored:
        out.append("  not used: " + ", ".join(f"{k} {v}" for k, v in stats.ignored.most_common()))
    if stats.malformed:
        out.append(f"  malformed lines skipped: {stats.malformed}" + (" (first listed)" if stats.malformed > len(stats.malformed_lines) else ""))
        out.extend("    " + show(m) for m in stats.malformed_lines)
    if det.stats.undecodable:
        out.append("  not processed: " + ", ".join(f"{k} {v}" for k, v in det.stats.undecodable.most_common()))
    obs = det.stats.observations
    out.append(f"  matched names: {sum(obs.values())}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(obs.items())) + ")" if obs else ""))
    cats = det.stats.alerts
    out.append(f"  alerts written: {written}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())) + ")" if cats else ""))
    if det.stats.hosts:
        out.append(f"  hosts with Kaspersky contacts: {len(det.stats.hosts)}")
    return "\n".join(out) + "\n"


def run_ingest(args: argparse.Namespace, sigs: SignatureSet) -> int:
    outs = open_outputs(args.output or [], spool_dir=args.spool, ca=None, hostname=args.sensor_name)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: outs.reopen())
    # Standard input is a stream that may never end (tail -F eve.json): there an alert is
    # written --settle seconds after its first record, as `live` does (LiveDedup), instead
    # of when its de-duplication window closes.
    stream = "-" in args.paths and not args.no_dedup
    det = Detector(sigs, dedup=not args.no_dedup, window=args.dedup_window, strict=args.debug, collect=stream)
    live = LiveDedup(args.dedup_window, args.settle) if stream else None
    stats = LogStats()
    written = 0
    start = time.perf_counter()

    def emit(alerts: list[Alert]) -> None:
        nonlocal written
        for a in alerts:
            outs.emit(a)
            if stream:
                det.stats.note_alert(a)
        written += len(alerts)

    lock = threading.Lock()  # the ticker below and the reader share `live` and the outputs

    def after(ev: LogEvent) -> None:
        assert live is not None
        now = time.monotonic()
        out: list[Alert] = []
        with lock:
            for m in det.collected:
                if isinstance(m, Upgrade):
                    live.upgrade(m.key, m.strength)
                else:
                    out += live.add(m, now)
            det.collected.clear()
            out += live.expire(ev.ts) + live.due(now)
            if out:
                emit(out)
                outs.flush(0.0)  # files and standard output now; network queues send on their own

    stop = threading.Event()

    def ticker() -> None:
        """A quiet stream still gets its alerts once they have settled."""
        assert live is not None
        while not stop.wait(max(0.05, args.settle / 2)):
            with lock:
                out = live.due(time.monotonic())
                if out:
                    emit(out)
                    outs.flush(0.0)

    if stream:
        threading.Thread(target=ticker, name="ingest-settle", daemon=True).start()

    def finish() -> None:
        stop.set()
        if live is not None:
            after(LogEvent("flow", 0.0, "", 0, "", 0, 0, ""))
            with lock:
                emit(live.flush())
        else:
            emit(det.flush())

    failed: list[str] = []
    try:
        failed = ingest(det, list(args.paths), emit, stats, after if stream else None)
        finish()
    except KeyboardInterrupt:
        sys.stderr.write("detector: interrupted; writing the alerts found so far\n")
        finish()
    finally:
        outs.close(args.output_timeout)
    for msg in failed:
        sys.stderr.write(f"detector: {msg}\n")
    if not args.quiet:
        sys.stderr.write(summary(det, stats, time.perf_counter() - start, written))
        sys.stderr.write("".join(line + "\n" for line in outs.summary_lines()))
    if failed:
        return EXIT_INPUT
    if outs.undeliverable:
        return EXIT_UNDELIVERED
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction, sig_opts: Callable, only_opt: Callable, func: Callable) -> None:
    i = sub.add_parser(
        "ingest", help="read Suricata EVE JSON or Zeek logs and report Kaspersky contacts",
        description="Read Suricata EVE JSON (dns v2/v3, tls, quic, http, flow, alert records) and Zeek "
        "dns/ssl/http/conn logs (TSV or JSON writer), plain or gzip, or standard input (-, e.g. "
        "tail -F eve.json | detector ingest -); write the alerts replay would write for the same "
        "traffic. Malformed lines are counted and skipped with their line numbers.")
    i.add_argument("paths", nargs="+", metavar="PATH", help="log file, or - for standard input")
    i.add_argument("--output", "-o", action="append", metavar="[FORMAT:]DEST",
                   help="where alerts go, repeatable, as for replay (default: EVE JSON on standard output)")
    i.add_argument("--spool", metavar="DIR", help="as for replay")
    i.add_argument("--sensor-name", metavar="NAME", help="as for replay")
    i.add_argument("--output-timeout", type=float, default=10.0, metavar="SECONDS", help="as for replay")
    i.add_argument("--no-dedup", action="store_true", help="one alert per hit, no aggregation")
    i.add_argument("--dedup-window", type=float, default=3600.0, metavar="SECONDS",
                   help="aggregate repeated hits per (client, signature, name, evidence) over this much log time (default 3600)")
    i.add_argument("--settle", type=float, default=0.5, metavar="SECONDS",
                   help="reading standard input: write an alert this long after its first record, as live does "
                   "(default 0.5; files are written when their de-duplication window closes, as replay does)")
    i.add_argument("--quiet", "-q", action="store_true", help="no summary on standard error")
    sig_opts(i)
    only_opt(i)
    i.set_defaults(func=func)
