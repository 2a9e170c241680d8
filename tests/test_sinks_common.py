"""The delivery machinery every network sink shares, against a scripted transport: the
spool file, the queue, retries, order, the unconfirmed window, rejects, close.

Also the helpers the other sink tests import: numbered alerts (``alert(i)``, whose EVE
``flow_id`` is ``i + 1``), ``seq_of`` to read that number back, and ``make_certs``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from detector.errors import SinkError
from detector.formats import FORMATS
from detector.model import Alert, Evidence, Match, Observation
from detector.signatures import Signature, load_signatures
from detector.sinks.delivery import Outcome, QueuedSink, Transport, TransportError
from detector.sinks.spool import LENGTH, MAGIC, Spool

T0 = 1_700_000_000.0
HOST = "s05.upd.kaspersky.com"


@cache
def _sig() -> Signature:
    return load_signatures().by_id(1610002)


def alert(i: int) -> Alert:
    """Alert number ``i``: a DNS query for an update server, flow_id ``i + 1``, at T0 + i."""
    obs = Observation(
        ts=T0 + i, evidence=Evidence.DNS_QUERY, hostname=HOST, client="198.18.0.10", server="198.18.0.1",
        client_port=40000 + i % 20000, server_port=53, proto=17, flow_id=i + 1,
        detail={"type": "query", "id": i % 65536, "rrname": HOST, "rrtype": "A"},
    )  # fmt: skip
    return Alert(Match(obs, _sig(), HOST), 1, T0 + i, T0 + i)


def eve(i: int) -> bytes:
    return FORMATS["eve"](alert(i))


_FLOW_ID = re.compile(rb'"flow_id": ?"?(\d+)')  # EVE: a number; ECS labels: a string


def seq_of(record: bytes) -> int:
    """The alert number carried by an EVE record (or any text holding one)."""
    m = _FLOW_ID.search(record)
    assert m, record[:200]
    return int(m.group(1)) - 1


def check_at_least_once(seqs: list[int], n: int, resent: int) -> None:
    """Every alert 0..n-1 arrived, first arrivals in order, each duplicate a counted resend."""
    first: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first.append(s)
    assert first == list(range(n)), f"missing or out of order: {sorted(set(range(n)) - seen)[:20]}"
    dups = len(seqs) - n
    assert dups <= resent, f"{dups} duplicates but only {resent} records were resent"


def make_certs(d: Path, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",),
               tag: str = "") -> dict[str, str]:
    """A private CA and a server certificate it signed (openssl CLI), as file paths."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates (apt-get install openssl)")
    d.mkdir(parents=True, exist_ok=True)
    p = {k: str(d / f"{tag}{k}") for k in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr", "ext.cnf")}
    san = ",".join([*(f"DNS:{n}" for n in names), *(f"IP:{i}" for i in ips)])
    Path(p["ext.cnf"]).write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca.key"], "-out", p["ca.pem"], "-days", "2",
        "-subj", f"/CN=Detector Test CA {tag}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p["server.key"], "-out", p["server.csr"],
        "-subj", f"/CN={names[0] if names else ips[0]}")
    run("x509", "-req", "-in", p["server.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"], "-CAcreateserial",
        "-out", p["server.pem"], "-days", "2", "-extfile", p["ext.cnf"])
    return {"ca": p["ca.pem"], "cert": p["server.pem"], "key": p["server.key"]}


def wait_for(cond: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


# -- the spool file -------------------------------------------------------------------------
def test_spool_keeps_records_in_order_across_reopen(tmp_path: Path) -> None:
    s = Spool(str(tmp_path), "dest")
    recs = [b"one\n", b"two\nwith\nnewlines", b"", b"\x00\xff binary", b"x" * 70000]
    s.append(recs[:3])
    s.append(recs[3:])
    assert s.count == 5
    assert s.peek(2, 1 << 20) == recs[:2]
    s.commit(recs[:2])
    s.close()
    s = Spool(str(tmp_path), "dest")  # a new run finds the rest, from the offset on
    assert s.count == 3
    assert s.peek(10, 10) == recs[2:4]  # max_bytes: stops before the 70000-byte record...
    assert s.peek(10, 1 << 20) == recs[2:]
    s.commit(recs[2:])
    assert s.count == 0 and os.path.getsize(s.path) == len(MAGIC)  # drained: truncated
    s.close()


def test_spool_prepend_puts_records_first(tmp_path: Path) -> None:
    s = Spool(str(tmp_path), "dest")
    s.append([b"c", b"d"])
    s.commit(s.peek(1, 100))  # c delivered
    s.prepend([b"a", b"b"])
    assert s.peek(10, 100) == [b"a", b"b", b"d"]
    s.close()
    s = Spool(str(tmp_path), "dest")
    assert s.peek(10, 100) == [b"a", b"b", b"d"]
    s.close()


def test_spool_cut_tail_is_dropped_and_counted(tmp_path: Path) -> None:
    s = Spool(str(tmp_path), "dest")
    s.append([b"whole", b"cut short"])
    s.close()
    with open(s.path, "r+b") as f:
        f.truncate(os.path.getsize(s.path) - 3)  # a crash in the middle of a write
    s = Spool(str(tmp_path), "dest")
    assert s.count == 1 and s.damaged == LENGTH.size + len(b"cut short") - 3
    assert s.peek(10, 100) == [b"whole"]
    s.append([b"after"])
    assert s.peek(10, 100) == [b"whole", b"after"]
    s.close()


def test_spool_is_locked_and_checked(tmp_path: Path) -> None:
    s = Spool(str(tmp_path), "dest")
    with pytest.raises(SinkError, match="in use by another detector process"):
        Spool(str(tmp_path), "dest")
    s.close()
    (tmp_path / "other.spool").write_bytes(b"not a spool")
    with pytest.raises(SinkError, match="not a detector spool file"):
        Spool(str(tmp_path), "other")


# -- the queue and the sender, with a scripted transport -------------------------------------
class FakeTransport(Transport):
    """A collector that can be up or down and answer per record; remembers what arrived."""

    def __init__(self, confirms: bool = True) -> None:
        self.confirms = confirms
        self.up = True
        self.connected = False
        self.got: list[bytes] = []
        self.batches: list[int] = []
        self.answer: dict[bytes, list[Outcome]] = {}  # per record: outcomes for its next sends
        self.broken = False  # the connection was reset after the last send
        self.lock = threading.Lock()

    def connect(self) -> None:
        if not self.up:
            raise TransportError("connection refused")
        self.connected, self.broken = True, False

    def send(self, records: list[bytes]) -> list[Outcome]:
        with self.lock:
            if not self.up or not self.connected:
                raise TransportError("connection reset")
            out = []
            for r in records:
                o = self.answer[r].pop(0) if self.answer.get(r) else Outcome.OK
                out.append(o)
                if o is Outcome.OK:
                    self.got.append(r)
            self.batches.append(len(records))
            return out

    def healthy(self) -> bool:
        return self.up and not self.broken

    def close_graceful(self, timeout: float) -> bool:
        self.connected = False
        return self.up

    def close(self) -> None:
        self.connected = False


def rec(i: int) -> bytes:
    return b"rec %d" % i


def seqs(got: list[bytes]) -> list[int]:
    return [int(r.split()[1]) for r in got]


def sink(t: FakeTransport, spool: Spool | None = None, **kw: Any) -> QueuedSink:
    kw = {"retry_initial": 0.02, "retry_max": 0.05, "confirm_after": 0.2, **kw}
    s = QueuedSink("fake://collector", t, lambda payload, a: payload, spool=spool, **kw)
    s.start()
    return s


def test_delivers_in_order_in_batches() -> None:
    t = FakeTransport()
    s = sink(t, batch_max=50)
    for i in range(500):
        s.emit(rec(i), alert(0))
    assert s.flush(5)
    s.close(2)
    assert seqs(t.got) == list(range(500))
    assert max(t.batches) > 1  # several records per send
    assert s.stats()["delivered"] == 500 and s.stats()["failed"] == 0


def test_unreachable_at_start_without_spool_is_an_error() -> None:
    t = FakeTransport()
    t.up = False
    with pytest.raises(SinkError, match=r"fake://collector: cannot connect: connection refused"):
        sink(t)


def test_outage_queue_overflow_goes_to_spool_and_order_holds(tmp_path: Path) -> None:
    t = FakeTransport()
    sp = Spool(str(tmp_path), "fake")
    s = sink(t, sp, queue_max=10, batch_max=7)
    for i in range(20):
        s.emit(rec(i), alert(0))
    assert s.flush(5)
    t.up = False
    for i in range(20, 200):  # the queue overflows into the spool, the sender keeps failing
        s.emit(rec(i), alert(0))
    assert wait_for(lambda: s.stats()["retried"] >= 2, 5)
    assert s.stats()["spooled"] > 0
    t.up = True
    assert s.flush(10)
    for i in range(200, 230):
        s.emit(rec(i), alert(0))
    s.close(5)
    assert seqs(t.got) == list(range(230))
    st = s.stats()
    assert st["delivered"] == 230 and st["failed"] == 0 and st["spooled"] == 0 and st["queued"] == 0


def test_without_spool_overflow_is_counted_never_silent(caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTransport()
    s = sink(t, queue_max=5)
    t.up = False
    for i in range(12):
        s.emit(rec(i), alert(0))
    s.close(0.3)
    st = s.stats()
    assert st["delivered"] + st["failed"] == 12 and st["failed"] >= 7
    assert "undeliverable" in caplog.text and "no spool directory" in caplog.text


def test_close_with_collector_down_spools_everything_and_next_run_drains_it(tmp_path: Path) -> None:
    t = FakeTransport()
    s = sink(t, Spool(str(tmp_path), "fake"))
    for i in range(10):
        s.emit(rec(i), alert(0))
    assert s.flush(5)
    t.up = False
    for i in range(10, 50):
        s.emit(rec(i), alert(0))
    s.close(0.5)
    assert s.stats()["spooled"] == 40 and s.stats()["failed"] == 0
    t.up = True
    s2 = sink(t, Spool(str(tmp_path), "fake"))  # the next run: spool first, then new records
    assert s2.stats()["spooled_at_start"] == 40
    for i in range(50, 60):
        s2.emit(rec(i), alert(0))
    s2.close(5)
    assert seqs(t.got) == list(range(60))


def test_unreachable_at_start_with_spool_waits_on_disk(tmp_path: Path) -> None:
    t = FakeTransport()
    t.up = False
    s = sink(t, Spool(str(tmp_path), "fake"))
    for i in range(5):
        s.emit(rec(i), alert(0))
    time.sleep(0.2)
    t.up = True
    s.close(5)
    assert seqs(t.got) == list(range(5))


def test_retry_and_reject_outcomes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = FakeTransport()
    t.answer[rec(3)] = [Outcome.RETRY, Outcome.RETRY]
    t.answer[rec(5)] = [Outcome.REJECT]
    s = sink(t, Spool(str(tmp_path), "fake"), batch_max=10)
    for i in range(10):
        s.emit(rec(i), alert(0))
    s.close(5)
    got = seqs(t.got)
    assert sorted(got) == [0, 1, 2, 3, 4, 6, 7, 8, 9] and len(got) == 9
    st = s.stats()
    assert st["rejected"] == 1 and st["failed"] == 1 and st["delivered"] == 9
    rejected = (tmp_path / "fake.rejected").read_bytes()
    assert rejected == LENGTH.pack(len(rec(5))) + rec(5)
    assert "refused 1 record(s) for good" in caplog.text


def test_unconfirmed_records_are_resent_when_the_connection_breaks() -> None:
    t = FakeTransport(confirms=False)
    s = sink(t, confirm_after=30.0)
    for i in range(5):
        s.emit(rec(i), alert(0))
    assert s.flush(5)
    assert s.stats()["delivered"] == 0 and s.stats()["queued"] == 5  # sent, not confirmed
    t.broken = True  # the collector went away: were they read?  Send them again.
    for i in range(5, 8):
        s.emit(rec(i), alert(0))
    s.close(5)
    got = seqs(t.got)
    check_at_least_once(got, 8, s.stats()["resent"])
    assert got[:5] == [0, 1, 2, 3, 4] and s.stats()["resent"] == 5


def test_unconfirmed_records_are_confirmed_after_a_while() -> None:
    t = FakeTransport(confirms=False)
    s = sink(t, confirm_after=0.1)
    for i in range(5):
        s.emit(rec(i), alert(0))
    assert wait_for(lambda: s.stats()["delivered"] == 5, 5)
    s.close(1)
    assert seqs(t.got) == list(range(5))


def test_records_in_the_spool_survive_a_failing_sender(tmp_path: Path) -> None:
    """Records read from the spool stay there until delivered: a send failing half-way
    leaves them for the next attempt (and, after close, for the next run)."""
    t = FakeTransport()
    t.up = False
    sp = Spool(str(tmp_path), "fake")
    sp.append([rec(i) for i in range(6)])
    s = sink(t, sp)
    s.close(0.3)
    sp2 = Spool(str(tmp_path), "fake")
    assert sp2.peek(100, 1 << 20) == [rec(i) for i in range(6)]
    sp2.close()


def test_eve_helper_roundtrip() -> None:
    assert seq_of(eve(41)) == 41
    assert json.loads(eve(3))["flow_id"] == 4


def test_a_peer_slow_to_acknowledge_is_polled_not_spun() -> None:
    class Slow(FakeTransport):
        def __init__(self) -> None:
            super().__init__(confirms=False)
            self.unsent = 100
            self.polls = 0

        def unsent_bytes(self) -> int:
            self.polls += 1
            return self.unsent

    t = Slow()
    s = sink(t, confirm_after=0.05)
    s.emit(rec(0), alert(0))
    time.sleep(0.6)
    assert s.stats()["delivered"] == 0 and 1 <= t.polls <= 6  # every 0.2 s, not a busy loop
    t.unsent = 0
    assert wait_for(lambda: s.stats()["delivered"] == 1, 2)
    s.close(1)
