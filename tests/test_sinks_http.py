"""Splunk HEC and Elasticsearch ``_bulk`` sinks against loopback HTTPS collectors written
here (http.server + ssl, a CA and server certificate made by the test).

The collectors check what the real ones check and answer as they answer:

- HEC: ``POST /services/collector/event``, ``Authorization: Splunk TOKEN`` (401 code 2
  without, 403 code 4 for a wrong one), a body of JSON event objects (``time``, ``host``,
  ``source``, ``sourcetype``, ``event``), 400 code 5 "No data" for an empty body, 400 code 6
  for malformed events, 200 code 0 "Success";
- ``_bulk``: ``Authorization: ApiKey KEY``, ``Content-Type: application/x-ndjson`` (406
  otherwise), NDJSON ending in a newline, ``{"create":{"_index":...}}`` action lines each
  followed by a JSON object, the per-item answer (``errors``, ``items[].create.status``)
  with scripted per-item failures (429 ``es_rejected_execution_exception``, 400
  ``mapper_parsing_exception``).

Each collector records every violation in ``problems``; every test asserts there are none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_formats_common import hostile_alerts
from test_sinks_common import T0, alert, check_at_least_once, eve, make_certs, seq_of, wait_for

from detector.errors import SinkError
from detector.formats import FORMATS
from detector.outputs import open_outputs
from detector.sinks.spool import LENGTH

TOKEN = "hec-7d3f0c2a-SECRET-TOKEN-91b4"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="  # base64 id:key, made up
INDEX = "detector-alerts"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, collector: Collector) -> None:
        self.collector = collector
        self.conns: set[socket.socket] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        tls = self.collector.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.conns.add(tls)
        return tls, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up, handshakes our own tests make fail

    def cut_all(self) -> None:
        for c in list(self.conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        try:
            self._post()
        except Exception as exc:  # a bug in the collector or a client it cannot read
            self.server.collector.problems.append(f"collector error: {exc!r}")
            raise

    def _post(self) -> None:
        c = self.server.collector
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with c.lock:
            c.requests.append((self.path, dict(self.headers), body))
            forced = c.fail_next.pop(0) if c.fail_next and body else None
        if c.kind == "hec":
            self._hec(c, body, forced)
        else:
            self._bulk(c, body, forced)

    # -- Splunk HEC ------------------------------------------------------------------------
    def _hec(self, c: Collector, body: bytes, forced: int | None) -> None:
        if self.path != "/services/collector/event":
            c.problems.append(f"HEC path {self.path}")
            return self._answer(404, {"text": "The requested URL was not found on this server.", "code": 404})
        auth = self.headers.get("Authorization")
        if not auth:
            return self._answer(401, {"text": "Token is required", "code": 2})
        if auth != f"Splunk {c.secret}":
            # Echo what was sent, as a careless proxy might: the client must not log it.
            return self._answer(403, {"text": f"Invalid token {auth}", "code": 4})
        if forced:
            return self._answer(forced, {"text": "Server is busy", "code": 9})
        if not body.strip():
            return self._answer(400, {"text": "No data", "code": 5})
        events: list[Any] = []
        pos, dec = 0, json.JSONDecoder()
        text = body.decode("utf-8")
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            try:
                ev, pos = dec.raw_decode(text, pos)
            except ValueError:
                return self._answer(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": len(events)})
            ok = (
                isinstance(ev, dict) and ev.get("event") not in (None, "", {})
                and isinstance(ev.get("time"), (int, float)) and isinstance(ev.get("host"), str)
                and isinstance(ev.get("source"), str) and isinstance(ev.get("sourcetype"), str)
            )  # fmt: skip
            if not ok:
                c.problems.append(f"HEC event malformed: {str(ev)[:200]}")
                return self._answer(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": len(events)})
            with c.lock:
                text_ev = json.dumps(ev["event"]).encode()
                statuses = c.item_fail.get(seq_of(text_ev)) if b"flow_id" in text_ev else None
                refused = statuses.pop(0) if statuses else None
            if refused:
                return self._answer(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": len(events)})
            events.append(ev)
        with c.lock:
            c.batches.append(len(events))
            c.events.extend(events)
        self._answer(200, {"text": "Success", "code": 0})

    # -- Elasticsearch _bulk ----------------------------------------------------------------
    def _bulk(self, c: Collector, body: bytes, forced: int | None) -> None:
        if self.path != "/_bulk":
            c.problems.append(f"_bulk path {self.path}")
            return self._answer(404, {"error": "no handler", "status": 404})
        if self.headers.get("Authorization") != f"ApiKey {c.secret}":
            return self._answer(401, {"error": {"type": "security_exception", "reason": "unable to authenticate with provided credentials"}, "status": 401})
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/x-ndjson":
            c.problems.append(f"_bulk content type {ctype!r}")
            return self._answer(406, {"error": f"Content-Type header [{ctype}] is not supported", "status": 406})
        if not body:
            return self._answer(400, {"error": {"type": "parse_exception", "reason": "request body is required"}, "status": 400})
        if forced:
            return self._answer(forced, {"error": {"type": "es_rejected_execution_exception", "reason": "busy"}, "status": forced})
        if not body.endswith(b"\n"):
            c.problems.append("_bulk body does not end with a newline")
            return self._answer(400, {"error": {"type": "illegal_argument_exception", "reason": "The bulk request must be terminated by a newline [\\n]"}, "status": 400})
        lines = body[:-1].split(b"\n")
        if len(lines) % 2:
            c.problems.append("_bulk: odd number of lines")
            return self._answer(400, {"error": {"type": "illegal_argument_exception", "reason": "odd"}, "status": 400})
        items, errors = [], False
        for action_line, doc_line in zip(lines[::2], lines[1::2], strict=True):
            action, doc = json.loads(action_line), json.loads(doc_line)
            if action != {"create": {"_index": INDEX}}:
                c.problems.append(f"_bulk action {action}")
            if not isinstance(doc, dict) or "@timestamp" not in doc:
                c.problems.append(f"_bulk document {str(doc)[:100]}")
            seq = seq_of(doc_line)
            with c.lock:
                statuses = c.item_fail.get(seq)
                status = statuses.pop(0) if statuses else 201
            if status == 201:
                with c.lock:
                    c.events.append(doc)
                items.append({"create": {"_index": INDEX, "_id": f"id{len(c.events)}", "status": 201, "result": "created"}})
            else:
                errors = True
                kind = "es_rejected_execution_exception" if status == 429 else "mapper_parsing_exception"
                items.append({"create": {"_index": INDEX, "status": status, "error": {"type": kind, "reason": f"item {seq} refused"}}})
        with c.lock:
            c.batches.append(len(items))
        self._answer(200, {"took": 3, "errors": errors, "items": items})


class Collector:
    def __init__(self, kind: str, certs: dict[str, str], secret: str) -> None:
        self.kind, self.secret = kind, secret
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(certs["cert"], certs["key"])
        self.lock = threading.Lock()
        self.events: list[Any] = []
        self.batches: list[int] = []
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.problems: list[str] = []
        self.fail_next: list[int] = []  # statuses for the next whole (non-empty) requests
        self.item_fail: dict[int, list[int]] = {}  # alert number -> statuses of its next tries
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = _Server(self.port, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Down hard: no listener, every open connection cut."""
        srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
            srv.cut_all()
        if self._thread is not None:
            self._thread.join(5)

    def seqs(self) -> list[int]:
        with self.lock:
            return [seq_of(json.dumps(e["event"] if self.kind == "hec" else e).encode()) for e in self.events]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def hec(certs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    monkeypatch.setenv("DETECTOR_HEC_TOKEN", TOKEN)
    c = Collector("hec", certs, TOKEN)
    c.start()
    yield c
    c.stop()
    assert not c.problems


@pytest.fixture
def elastic(certs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    monkeypatch.setenv("DETECTOR_ELASTIC_API_KEY", API_KEY)
    c = Collector("elastic", certs, API_KEY)
    c.start()
    yield c
    c.stop()
    assert not c.problems


def hec_url(c: Collector, q: str = "") -> str:
    return f"hec+https://127.0.0.1:{c.port}" + (f"?{q}" if q else "")


def es_url(c: Collector, q: str = "") -> str:
    return f"elastic+https://127.0.0.1:{c.port}/{INDEX}" + (f"?{q}" if q else "")


# -- Splunk HEC -----------------------------------------------------------------------------
def test_hec_delivers_every_event_batched(hec: Collector, certs: dict[str, str]) -> None:
    outs = open_outputs([hec_url(hec)], ca=certs["ca"], hostname="sensor-7")
    for i in range(300):
        outs.emit(alert(i))
    outs.close(10)
    assert hec.seqs() == list(range(300))
    assert max(hec.batches) > 1 and sum(hec.batches) == 300  # several events per request
    ev = hec.events[5]
    assert ev == {"time": T0 + 5, "host": "sensor-7", "source": "kaspersky-traffic-detector",
                  "sourcetype": "suricata", "event": json.loads(eve(5))}
    path, headers, _ = hec.requests[-1]
    assert headers["Authorization"] == f"Splunk {TOKEN}" and headers["Content-Type"] == "application/json"
    (st,) = outs.stats().values()
    assert st["delivered"] == 300 and st["failed"] == 0 and st["retried"] == 0


def test_hec_text_formats_are_strings(hec: Collector, certs: dict[str, str]) -> None:
    outs = open_outputs([f"cef:{hec_url(hec, 'index=netsec&sourcetype=cef:kdetect')}"], ca=certs["ca"], hostname="s")
    outs.emit(alert(1))
    outs.close(5)
    (ev,) = hec.events
    assert ev["event"] == FORMATS["cef"](alert(1)).decode().rstrip("\n")
    assert ev["index"] == "netsec" and ev["sourcetype"] == "cef:kdetect"


def test_hec_text_records_keep_their_line_breaks(hec: Collector, certs: dict[str, str]) -> None:
    """A LEEF value holds a raw CR/LF (LEEF has no escape); HEC's JSON carries it: the event
    is the record without its own newline, the value's trailing CR/LF kept."""
    a = hostile_alerts("cr\rlf\nend\r\n")["http"]
    record = FORMATS["leef"](a)
    assert record.endswith(b"\r\n\n")  # the capture file's name, the last value, ends in CR LF
    outs = open_outputs([f"leef:{hec_url(hec)}"], ca=certs["ca"], hostname="s")
    outs.emit(a)
    outs.close(5)
    (ev,) = hec.events
    assert ev["event"] == record[:-1].decode()


def test_hec_outage_and_recovery(hec: Collector, certs: dict[str, str], tmp_path: Path) -> None:
    outs = open_outputs([hec_url(hec, "retry_max=0.2")], spool_dir=str(tmp_path), ca=certs["ca"], hostname="s")
    for i in range(50):
        outs.emit(alert(i))
    assert outs.flush(5)
    hec.stop()
    for i in range(50, 120):
        outs.emit(alert(i))
    (name,) = outs.stats()
    assert wait_for(lambda: outs.stats()[name]["retried"] >= 2, 5)
    hec.fail_next = [503, 503]  # back, but busy at first
    hec.start()
    for i in range(120, 150):
        outs.emit(alert(i))
    outs.close(10)
    st = outs.stats()[name]
    check_at_least_once(hec.seqs(), 150, st["resent"])
    assert hec.seqs() == list(range(150))  # HTTP answers every batch: no duplicates here
    assert st["failed"] == 0 and st["spooled"] == 0 and st["retried"] >= 3


def test_hec_spool_survives_a_detector_restart(hec: Collector, certs: dict[str, str], tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    outs = open_outputs([hec_url(hec, "retry_max=0.2")], spool_dir=spool, ca=certs["ca"], hostname="s")
    for i in range(10):
        outs.emit(alert(i))
    assert outs.flush(5)
    hec.stop()
    for i in range(10, 40):
        outs.emit(alert(i))
    outs.close(0.5)
    (st,) = outs.stats().values()
    assert st["spooled"] == 30 and st["failed"] == 0
    hec.start()
    outs2 = open_outputs([hec_url(hec)], spool_dir=spool, ca=certs["ca"], hostname="s")
    for i in range(40, 45):
        outs2.emit(alert(i))
    outs2.close(10)
    assert hec.seqs() == list(range(45))
    (st2,) = outs2.stats().values()
    assert st2["spooled_at_start"] == 30 and st2["delivered"] == 35 and st2["spooled"] == 0


def test_hec_wrong_token_stops_at_start_and_is_never_shown(
    hec: Collector, certs: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-TOKEN-0000-not-the-one"
    monkeypatch.setenv("DETECTOR_HEC_TOKEN", wrong)
    with pytest.raises(SinkError) as err:
        open_outputs([hec_url(hec)], spool_dir=None, ca=certs["ca"], hostname="s")
    msg = str(err.value)
    assert "refused the credential (HTTP 403" in msg and hec_url(hec) in msg
    assert wrong not in msg and "***" in msg  # the collector echoed it; we cut it out
    assert wrong not in caplog.text and TOKEN not in caplog.text
    monkeypatch.delenv("DETECTOR_HEC_TOKEN")
    with pytest.raises(SinkError, match="DETECTOR_HEC_TOKEN is not set"):
        open_outputs([hec_url(hec)], ca=certs["ca"], hostname="s")


def test_hec_token_revoked_mid_run_keeps_the_alerts(
    hec: Collector, certs: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outs = open_outputs([hec_url(hec, "retry_max=0.2")], spool_dir=str(tmp_path), ca=certs["ca"], hostname="s")
    hec.secret = "rotated"
    for i in range(5):
        outs.emit(alert(i))
    (name,) = outs.stats()
    assert wait_for(lambda: outs.stats()[name]["retried"] >= 1, 5)
    outs.close(0.5)
    st = outs.stats()[name]
    assert st["spooled"] == 5 and st["failed"] == 0
    assert "HTTP 403" in caplog.text and TOKEN not in caplog.text and "Splunk ***" in caplog.text
    hec.secret = TOKEN


def test_hec_malformed_event_is_rejected_alone(hec: Collector, certs: dict[str, str], tmp_path: Path) -> None:
    hec.item_fail = {3: [400, 400]}  # HEC finds event 3 malformed, whatever batch it comes in
    outs = open_outputs([hec_url(hec, "batch=10")], spool_dir=str(tmp_path), ca=certs["ca"], hostname="s")
    (name,) = outs.stats()
    for i in range(5):
        outs.emit(alert(i))
    outs.close(5)
    assert hec.seqs() == [0, 1, 2, 4]  # the others went through, in order
    st = outs.stats()[name]
    assert st["rejected"] == 1 and st["failed"] == 1 and st["delivered"] == 4
    rejected = [p for p in tmp_path.iterdir() if p.suffix == ".rejected"]
    assert len(rejected) == 1 and seq_of(rejected[0].read_bytes()[LENGTH.size:]) == 3


# -- Elasticsearch _bulk ----------------------------------------------------------------------
def test_elastic_bulk_pairs_auth_and_item_retries(elastic: Collector, certs: dict[str, str], tmp_path: Path) -> None:
    elastic.item_fail = {7: [429, 429], 30: [503], 44: [400]}
    outs = open_outputs([es_url(elastic, "retry_max=0.2")], spool_dir=str(tmp_path), ca=certs["ca"], hostname="s")
    for i in range(60):
        outs.emit(alert(i))
    outs.close(10)
    got = elastic.seqs()
    assert sorted(got) == [i for i in range(60) if i != 44] and len(got) == 59  # no duplicates
    (st,) = outs.stats().values()
    assert st["delivered"] == 59 and st["rejected"] == 1 and st["failed"] == 1 and st["retried"] >= 2
    path, headers, body = elastic.requests[-1]
    assert headers["Authorization"] == f"ApiKey {API_KEY}"
    assert headers["Content-Type"] == "application/x-ndjson" and body.endswith(b"\n")
    assert max(elastic.batches) > 1
    doc = next(d for d in elastic.events if d["flow_id"] == 1)
    assert doc == {"@timestamp": "2023-11-14T22:13:20.000000Z", **json.loads(eve(0))}


def test_elastic_ecs_documents_are_kept_as_is(elastic: Collector, certs: dict[str, str]) -> None:
    outs = open_outputs([f"ecs:{es_url(elastic)}"], ca=certs["ca"], hostname="s")
    outs.emit(alert(2))
    outs.close(5)
    assert elastic.events == [json.loads(FORMATS["ecs"](alert(2)))]


def test_elastic_outage_and_spool(elastic: Collector, certs: dict[str, str], tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    outs = open_outputs([es_url(elastic, "retry_max=0.2")], spool_dir=spool, ca=certs["ca"], hostname="s")
    for i in range(20):
        outs.emit(alert(i))
    assert outs.flush(5)
    elastic.stop()
    elastic.fail_next = [429]
    for i in range(20, 50):
        outs.emit(alert(i))
    outs.close(0.5)
    elastic.start()
    outs2 = open_outputs([es_url(elastic, "retry_max=0.2")], spool_dir=spool, ca=certs["ca"], hostname="s")
    for i in range(50, 55):
        outs2.emit(alert(i))
    outs2.close(10)
    assert elastic.seqs() == list(range(55))


def test_elastic_wrong_key_and_bad_index(elastic: Collector, certs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_ELASTIC_API_KEY", "bm90LXRoZS1rZXk6c2VjcmV0LXZhbHVlLTQy")
    with pytest.raises(SinkError) as err:
        open_outputs([es_url(elastic)], ca=certs["ca"], hostname="s")
    assert "refused the credential (HTTP 401" in str(err.value)
    assert "bm90LXRoZS1rZXk6c2VjcmV0LXZhbHVlLTQy" not in str(err.value)
    with pytest.raises(SinkError, match="'Alerts' is not an index name"):
        open_outputs([f"elastic+https://127.0.0.1:{elastic.port}/Alerts"], ca=certs["ca"], hostname="s")


# -- TLS verification -------------------------------------------------------------------------
def test_certificate_and_host_name_are_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_HEC_TOKEN", TOKEN)
    named = make_certs(tmp_path / "named", names=("collector.test",), ips=(), tag="named-")
    c = Collector("hec", named, TOKEN)  # a certificate for another name than 127.0.0.1
    c.start()
    try:
        with pytest.raises(SinkError, match=r"hec\+https://127\.0\.0\.1:\d+: cannot connect: TLS certificate not accepted: .*(IP address mismatch|hostname)"):
            open_outputs([hec_url(c)], ca=named["ca"], hostname="s")
        with pytest.raises(SinkError, match="certificate not accepted"):
            open_outputs([hec_url(c)], hostname="s")  # the system's CAs: unknown issuer
        with pytest.raises(SinkError, match="CA file .* not found"):
            open_outputs([hec_url(c, f"ca={tmp_path}/missing.pem")], hostname="s")
        assert not c.events
    finally:
        c.stop()


def test_ca_per_destination(hec: Collector, certs: dict[str, str]) -> None:
    outs = open_outputs([hec_url(hec, f"ca={certs['ca']}")], ca=None, hostname="s")
    outs.emit(alert(0))
    outs.close(5)
    assert hec.seqs() == [0]
