"""``detector live``: the unattended span-port mode.

One controller process and ``--workers`` capture processes:

- the **controller** reads the settings (``--config`` YAML under the command line), loads
  the signatures, opens the outputs, opens every capture handle (``capture/live.py``) while
  it still has the privileges, binds the metrics socket, then drops to ``--user`` with no
  capability left and forks the workers.  From then on it only receives raw matches from
  the workers, de-duplicates them in one place (``LiveDedup``), writes the alerts, logs
  statistics and kernel drops, and answers signals:
  SIGHUP re-reads the config file and the signatures (all or nothing: a bad file is
  reported as ``file:line: message`` and the previous set stays in force) and reopens the
  output files (logrotate); SIGUSR1 logs a statistics line; SIGTERM and SIGINT stop the
  capture, write what is pending, flush the outputs and exit 0.
- each **worker** runs a ``Detector(collect=True)`` over its share of the traffic (one
  ``PACKET_FANOUT`` member per interface) and ships matches as they are found.

Emission policy (live): an alert is written as soon as its key (``aggregate.key_of``:
client, signature, hostname, evidence kind, app protocol, server port) is first seen,
after ``--settle`` seconds (default 0.5) in which the server's answer may still raise its
evidence strength; repeats inside the ``--dedup-window`` (capture time) only increase
counters; the next hit after the window starts a new alert.  So ``alert.metadata.count`` is the number of hits up to the moment it
was written, and ``detector_repeats_total`` counts the rest.  Across workers the
de-duplication is one: a DNS answer handled by another worker than its query still gives
one alert.

The package, one job per module; the command line (``cli.py``) parses the options,
resolves the settings and calls ``run``:

- ``startup.py``: checks, opens outputs, capture handles and the metrics socket, drops
  the privileges, hands over to the controller;
- ``controller.py``: the controller's loop, the alerts it writes, stopping;
- ``worker.py``: the capture workers (``Worker.feed_batch`` is the per-packet loop) and the
  controller's handle on each;
- ``dedup.py``: the live emission policy above;
- ``backlog.py``: the whole packets a worker holds while its heads threads are busy;
- ``reload.py``: SIGHUP;
- ``health.py``: kernel drops, the statistics line, the Prometheus samples;
- ``log.py``: the log lines.
"""

from __future__ import annotations

from .startup import run

__all__ = ["run"]
