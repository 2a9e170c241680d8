"""At-least-once delivery to a network collector: bounded queue, sender thread, retries, spool.

``QueuedSink`` is the part every network destination shares; a ``Transport`` (syslog over
UDP/TCP/TLS, Splunk HEC, Elasticsearch ``_bulk``) only connects and sends.

Where a record can be, oldest first (the order it reaches the collector in):

1. ``unacked``: written to a socket but not yet known to be read (stream and datagram
   transports; HTTP answers every request, so its records never wait here).  A record
   leaves when it has been out for ``confirm_after`` seconds with the connection still
   healthy and the kernel's send queue empty, or when a graceful close is answered by the
   collector closing its side (so it read everything before).  If the connection breaks
   first, these records are sent again: duplicates are possible, losses are not.
2. ``head``: taken from the queue for sending, or put back after a failure.
3. the spool on disk (``spool.Spool``), drained in order.
4. ``pending``: the bounded in-memory queue ``emit`` appends to.

``emit`` never blocks on the network.  When ``pending`` is full, it and the new record are
appended to the spool (so the spool always holds records older than ``pending``); with no
spool the new record is counted as undeliverable and logged.  After every failed attempt
``pending`` is moved to the spool too, so during an outage records wait on disk, not in
memory.  The sender retries with exponential backoff (``retry_initial`` doubling up to
``retry_max`` seconds).  ``close`` waits a bounded time for delivery, then puts whatever is
left (1, 2 and 4, in that order around 3) into the spool, or counts it as undeliverable.

A record the collector refuses outright (malformed, too large: ``Outcome.REJECT``) is never
retried: it is counted as ``rejected`` (part of ``failed``), logged, and with a spool
directory appended to ``NAME.rejected`` beside the spool (length-prefixed like the spool).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from ..errors import SinkError
from ..model import Alert
from .spool import LENGTH, Spool

log = logging.getLogger("detector.sinks")

Encoder = Callable[[bytes, Alert], bytes]
CHECK_INTERVAL = 0.2  # seconds between checks of a connection with unconfirmed records


class TransportError(Exception):
    """A connection-level failure: nothing in the attempt is known to be delivered."""


class CredentialError(TransportError):
    """The collector refused the credential: a configuration error, not an outage."""


class Outcome(enum.Enum):
    OK = "ok"  # taken by the collector (or, for streams, written: see ``confirms``)
    RETRY = "retry"  # refused for now (overloaded, throttled): send again later
    REJECT = "reject"  # refused for good (malformed, too large): never resend


class Transport:
    """One collector connection, used only by the sender thread (and by the start check)."""

    #: True if ``send`` returning OK means the collector has the record (HTTP answers);
    #: False if it only means "written to the socket" (syslog over UDP/TCP/TLS).
    confirms = True
    #: what the collector said about the records it refused in the last ``send`` (for logs)
    detail = ""

    def connect(self) -> None:
        raise NotImplementedError

    def check_credentials(self) -> None:
        """At start, on the first connection: ``CredentialError`` if the collector refuses
        the credential (so a wrong token stops the run before any packet is read)."""

    def send(self, records: list[bytes]) -> list[Outcome]:
        """One outcome per record, in order; ``TransportError`` if the connection failed."""
        raise NotImplementedError

    def healthy(self) -> bool:
        """Cheap check that the connection has not been closed or reset by the peer."""
        return True

    def unsent_bytes(self) -> int:
        """Bytes the kernel still holds for the peer (0 when all were acknowledged)."""
        return 0

    def close_graceful(self, timeout: float) -> bool:
        """Close so that True means the peer read everything sent before."""
        self.close()
        return True

    def close(self) -> None:
        raise NotImplementedError


class QueuedSink:
    """Queue + sender thread + spool around one ``Transport``."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        encode: Encoder,
        *,
        spool: Spool | None = None,
        queue_max: int = 10_000,
        batch_max: int = 200,
        batch_bytes: int = 512 * 1024,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        confirm_after: float = 1.0,
        unacked_max: int = 50_000,
    ) -> None:
        self.name = name
        self._transport = transport
        self._encode = encode
        self._spool = spool
        self._rejected_path = os.path.splitext(spool.path)[0] + ".rejected" if spool is not None else None
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._batch_bytes = batch_bytes
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._confirm_after = confirm_after
        self._unacked_max = unacked_max

        self._cv = threading.Condition()
        self._pending: deque[bytes] = deque()
        self._head: deque[bytes] = deque()
        self._unacked: deque[tuple[float, bytes]] = deque()
        self._connected = False
        self._closing = False
        self._stopped = False
        self._busy = False  # the sender is in a network call
        self._next_attempt = 0.0
        self._backoff = retry_initial
        self._down_since: float | None = None
        self._thread: threading.Thread | None = None
        self._deadline = 0.0
        self._check_at = 0.0  # no confirmation check before this (a peer slow to acknowledge)
        self._spooled_at_start = spool.count if spool else 0
        self.counts = {
            "emitted": 0,
            "delivered": 0,
            "spooled_total": 0,  # records ever written to the spool by this run
            "retried": 0,  # failed attempts (each followed by a retry)
            "resent": 0,  # records sent again after a connection broke
            "rejected": 0,  # refused for good by the collector
            "failed": 0,  # undeliverable: could neither be delivered nor spooled
            "outages": 0,
        }

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect once now: an unreachable collector is an error unless there is a spool."""
        try:
            self._transport.connect()
            self._connected = True
            self._transport.check_credentials()
        except CredentialError as exc:
            self._transport.close()
            raise SinkError(f"{self.name}: {exc}") from None
        except TransportError as exc:
            if self._spool is None:
                raise SinkError(f"{self.name}: cannot connect: {exc}") from None
            self._outage(str(exc))
            log.warning("%s: cannot connect (%s); alerts go to the spool %s until it answers",
                        self.name, exc, self._spool.path)
        if self._spool is not None and self._spool.count:
            log.info("%s: %d record(s) waiting in the spool from an earlier run", self.name, self._spool.count)
        self._thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)
        self._thread.start()

    # -- the emitting side -----------------------------------------------------------------
    def emit(self, payload: bytes, alert: Alert) -> None:
        record = self._encode(payload, alert)
        with self._cv:
            if self._stopped:
                raise SinkError(f"{self.name}: emit after close")
            self.counts["emitted"] += 1
            if len(self._pending) < self._queue_max:
                self._pending.append(record)
            elif self._spool is not None:
                self._to_spool([*self._pending, record])
                self._pending.clear()
            else:
                self.counts["failed"] += 1
                if self.counts["failed"] == 1 or self.counts["failed"] % 1000 == 0:
                    log.error("%s: queue full (%d records) and no spool directory: %d alert(s) undeliverable so far",
                              self.name, self._queue_max, self.counts["failed"])
            self._cv.notify_all()

    def _to_spool(self, records: list[bytes]) -> None:
        """Append to the spool (lock held); what cannot be written is counted, never hidden."""
        assert self._spool is not None
        try:
            self._spool.append(records)
            self.counts["spooled_total"] += len(records)
        except OSError as exc:
            self.counts["failed"] += len(records)
            log.error("%s: cannot write to the spool %s (%s): %d alert(s) undeliverable",
                      self.name, self._spool.path, exc.strerror or exc, len(records))

    # -- the sender thread -----------------------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self._head or (self._spool is not None and self._spool.count) or self._pending)

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception:  # a bug, or the spool's disk failing: keep the records, say so, go on
                log.exception("%s: internal error in the sender; retrying", self.name)
                with self._cv:
                    self._busy = False
                    if self._stopped:
                        return
                    self._schedule_retry("internal error")
                    self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stopped:
                        return
                    now = time.monotonic()
                    if self._has_work() and now >= self._next_attempt:
                        break
                    if self._unacked and now >= self._next_attempt:
                        if self._closing and not self._has_work():
                            break  # graceful close of the connection
                        if now - self._unacked[0][0] >= self._confirm_after and now >= self._check_at:
                            break  # time to confirm
                    wait = CHECK_INTERVAL if self._unacked else 1.0
                    if self._next_attempt > now:
                        wait = min(wait, self._next_attempt - now)
                    self._cv.wait(wait)
                batch, from_spool = self._take()
                closing_now = self._closing and not batch
                self._busy = True
            try:
                if batch:
                    self._attempt(batch, from_spool)
                elif closing_now:
                    self._finish()
                else:
                    self._confirm()
            except TransportError as exc:
                self._failure(str(exc))
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _take(self) -> tuple[list[bytes], bool]:
        """The next batch, oldest first (lock held).  Records from ``pending`` move to ``head``."""
        if not self._head:
            if self._spool is not None and self._spool.count:
                return self._spool.peek(self._batch_max, self._batch_bytes), True
            size = 0
            while self._pending and len(self._head) < self._batch_max:
                size += len(self._pending[0])
                if self._head and size > self._batch_bytes:
                    break
                self._head.append(self._pending.popleft())
        batch: list[bytes] = []
        size = 0
        for r in self._head:
            if len(batch) >= self._batch_max or (batch and size + len(r) > self._batch_bytes):
                break
            batch.append(r)
            size += len(r)
        return batch, False

    def _attempt(self, batch: list[bytes], from_spool: bool) -> None:
        t = self._transport
        if self._connected and not t.healthy():
            self._connected = False
            raise TransportError("connection closed by the collector")
        if not self._connected:
            t.connect()
            self._connected = True
        t.detail = ""
        outcomes = t.send(batch)
        now = time.monotonic()
        with self._cv:
            if self._stopped:
                return  # close() already took the records: they are spooled, sent or not
            if len(outcomes) != len(batch):  # a transport bug: keep the records, say so
                raise TransportError(f"internal: {len(outcomes)} outcomes for {len(batch)} records")
            ok = [r for r, o in zip(batch, outcomes, strict=True) if o is Outcome.OK]
            retry = [r for r, o in zip(batch, outcomes, strict=True) if o is Outcome.RETRY]
            rejected = [r for r, o in zip(batch, outcomes, strict=True) if o is Outcome.REJECT]
            if from_spool:
                self._spool.commit(batch)  # type: ignore[union-attr]
                self._head.extendleft(reversed(retry))
            else:
                for _ in batch:
                    self._head.popleft()
                self._head.extendleft(reversed(retry))
            if t.confirms:
                self.counts["delivered"] += len(ok)
            else:
                self._unacked.extend((now, r) for r in ok)
                while len(self._unacked) > self._unacked_max:
                    self._unacked.popleft()
                    self.counts["delivered"] += 1
            if rejected:
                self._reject(rejected, t.detail)
            if retry:
                self._schedule_retry(f"the collector asked to retry {len(retry)} record(s)"
                                     + (f": {t.detail}" if t.detail else ""))
            else:
                self._recovered()

    def _confirm(self) -> None:
        """Records out for ``confirm_after`` on a healthy, drained connection are delivered."""
        t = self._transport
        if not t.healthy():
            self._connected = False
            raise TransportError("connection closed by the collector")
        if t.unsent_bytes():
            with self._cv:
                self._check_at = time.monotonic() + CHECK_INTERVAL
            return
        cutoff = time.monotonic() - self._confirm_after
        with self._cv:
            while self._unacked and self._unacked[0][0] <= cutoff:
                self._unacked.popleft()
                self.counts["delivered"] += 1

    def _finish(self) -> None:
        """Closing with nothing left to send: close gracefully to confirm the rest."""
        with self._cv:
            remaining = max(0.1, self._deadline - time.monotonic())
        confirmed = self._transport.close_graceful(remaining)
        self._connected = False
        with self._cv:
            if self._stopped:
                return
            if confirmed:
                self.counts["delivered"] += len(self._unacked)
                self._unacked.clear()
            else:
                raise TransportError("the collector did not confirm the last records at close")

    def _failure(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            self._transport.close()
        self._connected = False
        with self._cv:
            if self._stopped:
                return
            if self._unacked:
                self.counts["resent"] += len(self._unacked)
                self._head.extendleft(r for _, r in reversed(self._unacked))
                self._unacked.clear()
            if self._spool is not None and self._pending:
                self._to_spool(list(self._pending))
                self._pending.clear()
            self._schedule_retry(reason)

    def _schedule_retry(self, reason: str) -> None:
        """Lock held."""
        self.counts["retried"] += 1
        self._outage(reason)
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._retry_max)

    def _outage(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.counts["outages"] += 1
            if self._thread is not None:
                where = f"waiting in the spool {self._spool.path}" if self._spool else "waiting in memory"
                log.warning("%s: delivery failed (%s); retrying with backoff, alerts %s", self.name, reason, where)

    def _recovered(self) -> None:
        """Lock held."""
        self._backoff = self._retry_initial
        if self._down_since is not None:
            log.warning("%s: delivering again after %.1f s", self.name, time.monotonic() - self._down_since)
            self._down_since = None

    def _reject(self, records: list[bytes], detail: str) -> None:
        """Lock held."""
        self.counts["rejected"] += len(records)
        self.counts["failed"] += len(records)
        kept = ""
        if self._rejected_path:
            try:
                fd = os.open(self._rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "ab") as f:
                    f.write(b"".join(LENGTH.pack(len(r)) + r for r in records))
                kept = f"; kept in {self._rejected_path}"
            except OSError as exc:
                kept = f"; cannot keep them in {self._rejected_path}: {exc.strerror or exc}"
        log.error("%s: the collector refused %d record(s) for good (%s)%s", self.name, len(records),
                  detail or "no reason given", kept)

    # -- flush, close, counters --------------------------------------------------------------
    def flush(self, timeout: float) -> bool:
        """Wait until everything emitted so far was sent (True) or ``timeout`` passed."""
        end = time.monotonic() + timeout
        with self._cv:
            self._next_attempt = min(self._next_attempt, time.monotonic())
            self._cv.notify_all()
            while self._has_work() or self._busy:
                left = end - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._cv.wait(min(left, 0.2))
            return True

    def close(self, timeout: float) -> None:
        """Deliver for at most ``timeout`` seconds, then spool (or count) what is left."""
        end = time.monotonic() + timeout
        with self._cv:
            if self._stopped:
                return
            self._closing = True
            self._deadline = end
            self._next_attempt = min(self._next_attempt, time.monotonic())  # one last try now
            self._cv.notify_all()
            while (self._has_work() or self._unacked or self._busy) and time.monotonic() < end:
                if self._thread is None or not self._thread.is_alive():
                    break
                self._cv.wait(min(0.1, max(0.0, end - time.monotonic())))
            self._stopped = True
            self._cv.notify_all()
            left = [r for _, r in self._unacked] + list(self._head)
            tail = list(self._pending)
            self._unacked.clear()
            self._head.clear()
            self._pending.clear()
            if self._spool is not None:
                try:
                    self._spool.prepend(left)
                    self.counts["spooled_total"] += len(left)
                except OSError as exc:
                    self.counts["failed"] += len(left)
                    log.error("%s: cannot write to the spool %s (%s): %d alert(s) undeliverable",
                              self.name, self._spool.path, exc.strerror or exc, len(left))
                self._to_spool(tail)
                waiting = self._spool.count
                with contextlib.suppress(OSError):
                    self._spool.close()
                if waiting:
                    log.warning("%s: %d alert(s) not delivered yet, kept in the spool %s for the next run",
                                self.name, waiting, self._spool.path)
            elif left or tail:
                self.counts["failed"] += len(left) + len(tail)
                log.error("%s: %d alert(s) could not be delivered and there is no spool directory",
                          self.name, len(left) + len(tail))
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with contextlib.suppress(Exception):
            self._transport.close()

    def stats(self) -> dict[str, int]:
        with self._cv:
            queued = len(self._pending) + len(self._head) + len(self._unacked)
            spooled = self._spool.count if self._spool is not None else 0
            if self._stopped:
                queued = 0
            c = self.counts
            return {
                "delivered": c["delivered"],
                "queued": queued,
                "spooled": spooled,
                "spooled_total": c["spooled_total"],
                "spooled_at_start": self._spooled_at_start,
                "retried": c["retried"],
                "resent": c["resent"],
                "rejected": c["rejected"],
                "failed": c["failed"],
                "outages": c["outages"],
            }

    def summary(self) -> str:
        s = self.stats()
        parts = [f"{s['delivered']} delivered"]
        if s["queued"]:
            parts.append(f"{s['queued']} queued")
        if s["spooled"]:
            where = self._spool.path if self._spool else ""
            parts.append(f"{s['spooled']} waiting in the spool {where}")
        if s["spooled_at_start"]:
            parts.append(f"{s['spooled_at_start']} found in the spool at start")
        if s["retried"]:
            parts.append(f"{s['retried']} retries over {s['outages']} outage(s)")
        if s["resent"]:
            parts.append(f"{s['resent']} resent (possible duplicates)")
        if s["failed"]:
            rej = f", {s['rejected']} refused by the collector" if s["rejected"] else ""
            parts.append(f"{s['failed']} UNDELIVERABLE{rej}")
        return ", ".join(parts)

    def reopen(self) -> None:
        """Network destinations have nothing to reopen on SIGHUP."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
