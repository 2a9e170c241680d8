"""Command line: ``detector replay``, ``live``, ``ingest``, ``export``, ``signatures check|list``.

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
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, replay
from . import config as cfg
from .capture import core
from .capture.pcap import expand_paths
from .errors import ConfigError, DetectorError, SignatureError, SinkError
from .outputs import open_outputs
from .pipeline import Detector
from .progress import Progress
from .replay import FileResult
from .report import command as report_cmd
from .signatures import (
    CATEGORIES,
    DEFAULT_PACK_DIR,
    SignatureSet,
    load_signatures,
    pack_files,
    select,
)
from .storm import StormControl, add_storm_options, check_storm_options
from .summary import RunInfo, render

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_INTERNAL, EXIT_UNDELIVERED = 0, 1, 2, 3, 4


def _err(msg: str) -> None:
    sys.stderr.write(f"detector: {msg}\n")


def _signatures(args: argparse.Namespace) -> SignatureSet:
    paths = list(args.signatures or [])
    if args.add_signatures:
        paths = (paths or pack_files(None)) + list(args.add_signatures)
    sigs = load_signatures(paths or None)
    return select(sigs, getattr(args, "only", None))


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
    storm = StormControl(args.storm_threshold, args.storm_window, args.storm_sample)
    det = Detector(sigs, dedup=not args.no_dedup, window=args.dedup_window, strict=args.debug, storm=storm)
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


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportOptions, get_exporter, write_bundle

    exporter = get_exporter(args.format)
    previous = None
    if args.previous:
        with open(args.previous, encoding="utf-8", errors="replace") as fh:
            previous = fh.read()
    opts = ExportOptions(suricata_version=args.suricata_version, datasets=args.datasets, previous=previous,
                         rpz_action=args.rpz_action, rpz_serial=args.rpz_serial, hosts_address=args.hosts_address)
    bundle = exporter(_signatures(args), opts)
    written = write_bundle(bundle, args.output, sys.stdout.buffer)
    for note in opts.notes:
        _err(f"note: {note}")
    if written != ["-"]:
        _err(f"wrote {', '.join(written[:5])}{' ...' if len(written) > 5 else ''}")
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    from .ingest import run_ingest

    return run_ingest(args, _signatures(args))


LIVE_DEST = "live_"  # argparse dests of `live`, apart from replay's (main inspects a few by name)


def cmd_live(args: argparse.Namespace) -> int:
    from . import live  # the span-port mode (capture, workers, reload, stats, metrics)

    cli_values = {o.dest: getattr(args, LIVE_DEST + o.dest, None) for o in cfg.OPTIONS}
    try:
        settings = cfg.resolve(cli_values, args.config)
    except cfg.ConfigFileError as exc:
        for path, line, msg in exc.problems:
            sys.stderr.write(f"{path}:{line}: {msg}\n")
        _err(f"{len(exc.problems)} problem(s) in the configuration; nothing was started")
        return EXIT_USAGE
    return live.run(settings, cli_values, debug=args.debug)


def _live_parser(sub: Any) -> None:
    """``detector live``: every option of ``config.OPTIONS`` (also settable in --config)."""
    p = sub.add_parser(
        "live",
        help="capture from network interfaces and report Kaspersky contacts as they happen",
        description="Capture on one or more interfaces (a span or tap port) and write one alert per "
        "Kaspersky contact as soon as it is seen (EVE JSON on standard output by default). "
        "SIGHUP reloads the config file and signatures, SIGUSR1 logs statistics, SIGTERM stops.",
    )
    p.add_argument("--config", metavar="FILE",
                   help="YAML file setting any option below (keys: the option names without dashes); "
                   "the command line wins; SIGHUP re-reads it")
    for o in cfg.OPTIONS:
        flags = [o.short, f"--{o.key}"] if o.short else [f"--{o.key}"]
        dest = LIVE_DEST + o.dest
        if o.kind == "bool":
            p.add_argument(f"--{o.key}", dest=dest, action=argparse.BooleanOptionalAction, default=None, help=o.help)
        elif o.kind == "list":
            p.add_argument(*flags, dest=dest, action="append", default=None, metavar=o.metavar, help=o.help)
        else:
            typ: Callable[[str], Any] = {"int": int, "float": float}.get(o.kind, str)
            p.add_argument(*flags, dest=dest, type=typ, default=None, metavar=o.metavar, help=o.help)
    p.set_defaults(func=cmd_live)


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
                   help="aggregate repeated hits per (client, signature, name, evidence, app protocol, server port) over this much capture time (default 3600)")
    add_storm_options(r)
    r.add_argument("--quiet", "-q", action="store_true", help="no summary on standard error")
    r.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="spread the files (or one large pcap, by a hash of the IP addresses) over N "
                   "processes; the alerts are the same as with one (default 1)")
    r.add_argument("--exact", action="store_true",
                   help="read every packet in Python (no compiled core); slower, for captures whose "
                   "client hellos or request heads span more than --flow-head packets")
    r.add_argument("--flow-head", type=int, default=core.DEFAULT_FLOW_HEAD, metavar="N",
                   help=f"compiled core: packets per direction of an interesting flow handed to the parsers (default {core.DEFAULT_FLOW_HEAD})")
    r.add_argument("--report", metavar="FILE",
                   help="at the end, write the host inventory to FILE (format from the extension: "
                   ".html, .csv, .json, else a table; - for standard output)")
    r.add_argument("--report-format", choices=["table", "csv", "json", "html"], help="the --report format, whatever the extension")
    report_cmd.add_home_net(r)
    sig_opts(r)
    r.set_defaults(func=cmd_replay)

    _live_parser(sub)

    def only_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--only", action="append", metavar="CATEGORY", choices=CATEGORIES,
                        help=f"keep only signatures of this category, repeatable ({', '.join(CATEGORIES)})")

    from .export import EXPORTERS

    e = sub.add_parser("export", help="compile the signatures into rules or lists for other engines",
                       description="Compile the loaded signature set (the same one replay and live match "
                       "with) into Suricata rules, a suricata-update source, a Zeek package, a DNS "
                       "response policy zone, a hosts file or a domain list.")
    e.add_argument("format", choices=sorted(EXPORTERS), metavar="FORMAT", help=", ".join(sorted(EXPORTERS)))
    e.add_argument("--output", "-o", metavar="PATH",
                   help="file, directory (for several files) or FILE.tar.gz; default standard output")
    e.add_argument("--suricata-version", type=int, choices=(7, 8), default=7,
                   help="suricata: the keywords of this version (8 adds names in DNS answers; default 7)")
    ds = e.add_mutually_exclusive_group()
    ds.add_argument("--datasets", action="store_true", default=None,
                    help="suricata: exact names in Suricata datasets (default: only for signatures of more than 64 names)")
    ds.add_argument("--no-datasets", dest="datasets", action="store_false", help="suricata: one rule per name")
    e.add_argument("--previous", metavar="RULES",
                   help="suricata: an earlier export; rev is bumped for every rule whose text changed")
    e.add_argument("--rpz-action", default="nxdomain", choices=("nxdomain", "nodata", "passthru", "drop"),
                   help="rpz: what the resolver answers (passthru: answer normally, log only; default nxdomain)")
    e.add_argument("--rpz-serial", type=int, default=1, metavar="N", help="rpz: SOA serial (e.g. $(date +%%s))")
    e.add_argument("--hosts-address", default="0.0.0.0", metavar="IP", help="hosts: the address (default 0.0.0.0)")
    sig_opts(e)
    only_opt(e)
    e.set_defaults(func=cmd_export)

    from .ingest import add_parser as add_ingest_parser

    add_ingest_parser(sub, sig_opts, only_opt, cmd_ingest)
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
    problem = check_storm_options(args)
    if problem:
        parser.error(problem)
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
