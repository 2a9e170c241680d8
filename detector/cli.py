"""Command line: ``detector replay``, ``detector signatures check|list``.

The only place that maps errors to exit statuses:
  0  the run completed (with or without alerts; damaged-but-readable files only warn)
  1  one or more inputs could not be read (each named on standard error); the others ran
  2  usage, signature or output errors: nothing was read
  3  an internal error (a bug); rerun with --debug for the traceback
  4  the run completed but some alerts could be neither delivered nor spooled
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence

from . import __version__, replay
from .capture import fast
from .capture.pcap import expand_paths
from .errors import ConfigError, DetectorError, SignatureError, SinkError
from .outputs import open_outputs
from .pipeline import Detector
from .progress import Progress
from .replay import FileResult
from .report import command as report_cmd
from .signatures import DEFAULT_PACK_DIR, SignatureSet, load_signatures, pack_files
from .summary import RunInfo, render

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_INTERNAL, EXIT_UNDELIVERED = 0, 1, 2, 3, 4


def _err(msg: str) -> None:
    sys.stderr.write(f"detector: {msg}\n")


def _signatures(args: argparse.Namespace) -> SignatureSet:
    paths = list(args.signatures or [])
    if args.add_signatures:
        paths = (paths or pack_files(None)) + list(args.add_signatures)
    return load_signatures(paths or None)


def cmd_replay(args: argparse.Namespace) -> int:
    sigs = _signatures(args)
    files, problems = expand_paths(args.paths)
    if not files and problems:
        for p in problems:
            _err(p)
        return EXIT_INPUT
    # Every destination is opened (and every collector reached, unless --spool) before
    # any packet is read: a SinkError here is exit status 2.
    inventory = None
    if args.report:  # the inventory consumes the same Alert objects the outputs get
        report_format = report_cmd.pick_format(args.report_format, args.report)
        report_cmd.check_writable(args.report)
        inventory = report_cmd.Inventory(report_cmd.home_net(args.home_net))
    outs = open_outputs(args.output or [], spool_dir=args.spool, ca=args.ca, hostname=args.sensor_name)
    if hasattr(signal, "SIGHUP"):  # logrotate: reopen output files by name
        signal.signal(signal.SIGHUP, lambda *_: outs.reopen())
    det = Detector(sigs, dedup=not args.no_dedup, window=args.dedup_window, strict=args.debug)
    run = RunInfo(files_failed=list(problems))
    for p in problems:
        _err(p)
    start = time.perf_counter()
    bar = Progress(sys.stderr, sum(_size(f) for f in files), len(files), enabled=False if args.quiet else None)

    def emit(alerts: list) -> None:
        for a in alerts:
            outs.emit(a)
            if inventory is not None:
                inventory.add_alert(a)
        run.alerts_written += len(alerts)

    def tick(in_file: int | None, packets: int) -> None:
        bar.update(bar.bytes_done + (in_file or 0), packets, run.alerts_written)

    def done(res: FileResult) -> None:
        bar.file_done(_size(res.path), det.stats.packets, run.alerts_written)
        if res.error:
            _err(res.error)
            run.files_failed.append(res.error)
            return
        run.file_bytes += res.file_bytes
        run.fast_files += res.fast
        if res.warning:
            msg = f"{res.path}: {res.warning}"
            _err(f"warning: {msg}")
            run.warnings.append(msg)
        run.files_ok += 1

    try:
        if args.jobs > 1:
            for res in replay.parallel(sigs, files, args.jobs, args.exact, args.flow_head):
                if res.stats is not None:
                    det.stats.merge(res.stats)
                run.state.update(res.state)
                emit(det.add_matches(res.matches, res.path))
                done(res)
        else:
            for path in files:
                res = replay.scan(det, path, args.exact, args.flow_head, emit, progress=tick if bar.enabled else None)
                run.state.update(res.state)
                done(res)
        emit(det.flush())
    except KeyboardInterrupt:
        _err("interrupted; writing the alerts found so far")
        emit(det.flush())
    finally:
        bar.close()
        run.seconds = time.perf_counter() - start
        outs.close(args.output_timeout)  # waits for collectors, spools what is left
        if inventory is not None:
            report_cmd.write(inventory, args.report, report_format, list(files))
    if not args.quiet:
        sys.stderr.write(render(det, run))
        sys.stderr.write("".join(line + "\n" for line in outs.summary_lines()))
    if run.files_failed:
        return EXIT_INPUT
    if outs.undeliverable:
        _err(f"{outs.undeliverable} alert(s) could be neither delivered nor spooled (see above)")
        return EXIT_UNDELIVERED
    return EXIT_OK


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def cmd_signatures_check(args: argparse.Namespace) -> int:
    sigs = load_signatures(args.paths or None)
    n_patterns = sum(len(s.names) + len(s.suffixes) + len(s.wildcards) for s in sigs)
    print(f"ok: {len(sigs)} signatures, {n_patterns} patterns in {len(sigs.files)} file(s)")
    return EXIT_OK


def cmd_signatures_list(args: argparse.Namespace) -> int:
    sigs = _signatures(args)
    for s in sigs:
        pats = [*s.names, *(f"*.{x} (and {x})" for x in s.suffixes), *s.wildcards]
        shown = ", ".join(pats[:4]) + (f", +{len(pats) - 4} more" if len(pats) > 4 else "")
        print(f"{s.id}\t{s.category}\t{s.severity}/{s.confidence}\t{s.name}\t[{shown}]\t({s.source_ref}, {s.source_grade})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="detector",
        description="Find Kaspersky software on a network by its traffic (DNS, TLS and QUIC SNI, HTTP, certificates, Security Center ports).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def sig_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--signatures", action="append", metavar="PATH",
                        help=f"signature file or directory; replaces the bundled packs ({DEFAULT_PACK_DIR}); repeatable")
        sp.add_argument("--add-signatures", action="append", metavar="PATH",
                        help="signature file or directory added to the bundled packs (or to --signatures); repeatable")

    r = sub.add_parser("replay", help="read capture files and report Kaspersky contacts",
                       description="Read pcap/pcapng files (plain, gzip, bzip2 or xz), directories "
                       "(recursively) and globs; write one Suricata EVE JSON alert per line to "
                       "standard output (or --output) and a summary to standard error.")
    r.add_argument("paths", nargs="+", metavar="PATH", help="capture file, directory or glob")
    r.add_argument("--output", "-o", action="append", metavar="[FORMAT:]DEST",
                   help="where alerts go, repeatable (default: EVE JSON on standard output). FORMAT: "
                   "eve (default), ecs, cef, leef, ocsf. DEST: - (standard output), a file (appended; "
                   "FILE?max_bytes=N&backups=K rotates it), syslog+udp|tcp|tls://HOST[:PORT] (RFC 5424; "
                   "syslog3164+... for RFC 3164), hec+https://HOST[:PORT] (Splunk HEC, token in "
                   "DETECTOR_HEC_TOKEN), elastic+https://HOST[:PORT]/INDEX (_bulk, API key in "
                   "DETECTOR_ELASTIC_API_KEY)")
    r.add_argument("--spool", metavar="DIR",
                   help="keep alerts a network destination cannot take (down, slow) in DIR and send them "
                   "when it is back, also in a later run; without it an unreachable destination at "
                   "start is an error")
    r.add_argument("--ca", metavar="FILE", help="CA certificates (PEM) for TLS destinations without their own ?ca=")
    r.add_argument("--sensor-name", metavar="NAME",
                   help="this sensor's name in syslog HOSTNAME and HEC host (default: the host name)")
    r.add_argument("--output-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="at the end, how long to wait for collectors before spooling what is left (default 10)")
    r.add_argument("--no-dedup", action="store_true", help="one alert per hit, no aggregation")
    r.add_argument("--dedup-window", type=float, default=3600.0, metavar="SECONDS",
                   help="aggregate repeated hits per (client, signature, name, evidence) over this much capture time (default 3600)")
    r.add_argument("--quiet", "-q", action="store_true", help="no summary on standard error")
    r.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="spread the files (or one large pcap, by a hash of the IP addresses) over N "
                   "processes; the alerts are the same as with one (default 1)")
    r.add_argument("--exact", action="store_true",
                   help="read every packet in Python (no libpcap fast path); slower, for captures whose "
                   "client hellos or request heads span more than --flow-head packets")
    r.add_argument("--flow-head", type=int, default=fast.DEFAULT_FLOW_HEAD, metavar="N",
                   help=f"fast path: packets per flow direction handed to the parsers (default {fast.DEFAULT_FLOW_HEAD})")
    r.add_argument("--report", metavar="FILE",
                   help="at the end, write the host inventory to FILE (format from the extension: "
                   ".html, .csv, .json, else a table; - for standard output)")
    r.add_argument("--report-format", choices=["table", "csv", "json", "html"], help="the --report format, whatever the extension")
    report_cmd.add_home_net(r)
    sig_opts(r)
    r.set_defaults(func=cmd_replay)

    from . import live  # the span-port mode: capture, workers, reload, stats, metrics

    live.add_parser(sub)
    report_cmd.add_parser(sub)

    s = sub.add_parser("signatures", help="check or list signature packs")
    ssub = s.add_subparsers(dest="sigcmd", metavar="ACTION")
    ssub.required = True
    c = ssub.add_parser("check", help="validate signature files (all problems, as file:line: message)")
    c.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: the bundled packs)")
    c.set_defaults(func=cmd_signatures_check)
    lst = ssub.add_parser("list", help="print the loaded signature set")
    sig_opts(lst)
    lst.set_defaults(func=cmd_signatures_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "dedup_window", 1.0) <= 0:
        parser.error("--dedup-window must be positive")
    if not 1 <= getattr(args, "jobs", 1) <= 256:
        parser.error("--jobs must be between 1 and 256")
    if getattr(args, "flow_head", 4) < 4:
        parser.error("--flow-head must be at least 4")
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                        format="detector: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except SignatureError as exc:
        for path, line, msg in exc.problems:
            sys.stderr.write(f"{path}:{line}: {msg}\n")
        _err(f"{len(exc.problems)} signature problem(s); nothing was run")
        return EXIT_USAGE
    except (ConfigError, SinkError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except DetectorError as exc:
        _err(str(exc))
        return EXIT_INPUT
    except BrokenPipeError:
        return EXIT_OK  # e.g. piped into head
    except Exception:
        if args.debug:
            raise
        _err("internal error: " + traceback.format_exc().strip().splitlines()[-1] + " (rerun with --debug)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
