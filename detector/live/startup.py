"""Starting ``detector live``: everything that needs the privileges happens here, before
they are dropped.

In order: check the settings, load the signatures, open the outputs (every collector
reached, or spooled), open every capture handle (``capture/live.py``, needs
``CAP_NET_RAW``), bind the metrics socket, give the output files to ``--user``, import what
the pipeline would import lazily, drop to ``--user`` with no capability left, and hand
over to the ``Controller``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from typing import Any

from .. import config as cfg
from ..capture import core
from ..capture import live as cap
from ..errors import ConfigError, DetectorError, SinkError
from ..metrics import MetricsServer
from ..outputs import open_outputs, parse_output
from ..signatures import load_signatures, pack_files
from .controller import Controller
from .log import log


def _check_user(s: cfg.LiveSettings) -> str | None:
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(s.user)
        except KeyError:
            return f"--user {s.user}: no such user"
        return None
    me = pwd.getpwuid(os.getuid()).pw_name if _known(os.getuid()) else str(os.getuid())
    if s.origin.get("user", "default") != "default" and s.user != me:
        return f"--user {s.user}: only root can switch users (running as {me})"
    return None


def _known(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _preload() -> None:
    """Import now what the pipeline would import on first use (the codec for IDNA names,
    dnspython's module for each record type): once the privileges are dropped, the
    installation may not be readable any more (an interpreter under /root, say)."""
    import encodings.idna  # noqa: F401

    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    for t in dns.rdatatype.RdataType:
        with contextlib.suppress(Exception):
            dns.rdata.get_rdata_class(dns.rdataclass.IN, t)


def _hand_over(s: cfg.LiveSettings) -> None:
    """As root, give the output files and the spool directory to ``--user``, so that after
    the privileges are dropped it can still reopen them (SIGHUP after logrotate) and spool.
    Creating a file anew after a rotation needs the directory to be writable by that user
    (the systemd unit's LogsDirectory= does that)."""
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(s.user)
    paths: list[str] = []
    for spec in s.output:
        with contextlib.suppress(SinkError):
            t = parse_output(spec)
            if t.scheme == "file" and t.path not in ("", "-"):
                paths.append(t.path)
    if s.spool:
        paths.append(s.spool)
        with contextlib.suppress(OSError):
            paths += [os.path.join(s.spool, n) for n in os.listdir(s.spool)]
    for path in paths:
        with contextlib.suppress(OSError):
            os.chown(path, pw.pw_uid, pw.pw_gid)


def run(settings: cfg.LiveSettings, cli_values: dict[str, Any], debug: bool = False) -> int:
    """Start a live run with resolved settings (``cli_values``: the command line's own
    values, re-applied over the config file at each reload); returns the run's status
    (``controller.EXIT_OK`` or ``EXIT_FAILED``) when it stops.  Problems before the capture
    starts are raised: ``ConfigError`` (usage: nothing was started), ``SignatureError``,
    ``SinkError``, or ``DetectorError`` (the privileges could not be dropped)."""
    if not settings.interface:
        raise ConfigError("no interface: give -i IFACE (or 'interface:' in the --config file)")
    problem = _check_user(settings)
    if problem:
        raise ConfigError(problem)
    sigs = load_signatures(cfg.signature_paths(settings, pack_files))
    outputs = open_outputs(list(settings.output), spool_dir=settings.spool, ca=settings.ca)
    try:
        try:
            handles = cap.open_handles(cap.CaptureOptions(
                interfaces=settings.interface, workers=settings.workers, snaplen=settings.snaplen,
                buffer_size=settings.buffer_size, promisc=settings.promisc,
                udp_ports=cap.signature_udp_ports(sigs), one_handle=core.AVAILABLE))
        except cap.LiveCaptureError as exc:
            raise ConfigError(str(exc)) from exc
        snapshot = [""]
        metrics: MetricsServer | None = None
        if settings.metrics:
            try:
                metrics = MetricsServer(settings.metrics, lambda: snapshot[0])
            except OSError as exc:
                raise ConfigError(f"--metrics {settings.metrics}: cannot listen: {exc.strerror or exc}") from exc
        try:
            _preload()
            _hand_over(settings)
            log(cap.drop_privileges(settings.user))
        except (OSError, KeyError, cap.LiveCaptureError) as exc:
            raise DetectorError(f"cannot drop privileges: {exc}") from exc
        ctl = Controller(settings, cli_values, sigs, outputs, handles, metrics, debug=debug)
        ctl.publish = snapshot
        ctl.update_snapshot()
        return ctl.run()
    except BaseException:
        with contextlib.suppress(Exception):
            outputs.close(1.0)
        raise
