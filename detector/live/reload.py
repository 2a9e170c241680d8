"""SIGHUP: re-read the configuration file and the signatures, all or nothing.

A bad file is reported as ``file:line: message`` and the previous configuration and
signatures stay in force.  A good set becomes a new generation: the workers get it over
their control pipes and acknowledge it; matches keep the generation they were found
with, so the controller resolves each signature id in the set that produced it.  Output
files are reopened (logrotate).  Options that cannot change while running (interfaces,
workers, ...) are reported and keep their value until the next start.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .. import config as cfg
from ..capture import live as cap
from ..errors import ConfigError, SignatureError
from ..signatures import SignatureSet, load_signatures, pack_files
from .log import log

if TYPE_CHECKING:
    from .controller import Controller


class SigIndex:
    """One generation of signatures, by id."""

    def __init__(self, sigs: SignatureSet) -> None:
        self.set = sigs
        self.by_id = {s.id: s for s in sigs}


def reload(ctl: Controller) -> None:
    """SIGHUP in the controller: reopen the output files, then swap in the new settings and
    signatures, or keep the old ones and say why."""
    ctl.outputs.reopen()
    old = ctl.settings
    try:
        new = cfg.resolve(ctl.cli_values, old.config)
        paths = cfg.signature_paths(new, pack_files)
        sigs = load_signatures(paths)
    except cfg.ConfigFileError as exc:
        for p, ln, m in exc.problems:
            log(f"{p}:{ln}: {m}")
        return _rejected(ctl, f"{len(exc.problems)} problem(s) in {old.config}")
    except ConfigError as exc:
        return _rejected(ctl, str(exc))
    except SignatureError as exc:
        for p, ln, m in exc.problems:
            log(f"{p}:{ln}: {m}")
        return _rejected(ctl, f"{len(exc.problems)} signature problem(s)")
    hot, cold = old.changes(new)
    for key in cold:
        opt = cfg.BY_KEY[key]
        log(f"reload: '{key}' changed; it takes effect at the next start (still {getattr(old, opt.dest)!r})")
    keep = {cfg.BY_KEY[k].dest: getattr(old, cfg.BY_KEY[k].dest) for k in cold}
    ctl.settings = dataclasses.replace(new, **keep)
    ctl.dedup.window = ctl.settings.dedup_window
    ctl.dedup.settle = ctl.settings.settle
    storm = ctl.dedup.storm
    storm.threshold, storm.window, storm.sample = (
        ctl.settings.storm_threshold, ctl.settings.storm_window, ctl.settings.storm_sample)
    ctl.gen += 1
    ctl.sigsets[ctl.gen] = SigIndex(sigs)
    for w in ctl.workers:
        if not w.done:
            w.outbox.put(("sigs", ctl.gen, sigs))
    ports = cap.signature_udp_ports(sigs)
    if ports != ctl.udp_ports:
        try:
            n = cap.refilter(ctl.all_handles, ports)
            ctl.udp_ports = ports
            log(f"reload: capture filter updated on {n} handle(s) for UDP ports {', '.join(map(str, ports)) or 'none'}")
        except Exception as exc:  # noqa: BLE001 - keep the old filter, say so
            log(f"reload: capture filter not updated ({exc}); the previous one stays")
    ctl.reloads["ok"] += 1
    changed = ", ".join(hot) if hot else "nothing else"
    log(f"reload: {len(sigs)} signatures from {len(sigs.files)} file(s) accepted (generation {ctl.gen}); "
        f"changed: {changed}")


def _rejected(ctl: Controller, why: str) -> None:
    ctl.reloads["failed"] += 1
    log(f"reload rejected: {why}; the previous configuration and signatures stay in force")
