"""HTTPS collectors: Splunk HTTP Event Collector and Elasticsearch/OpenSearch ``_bulk``.

Both batch several alerts per request (``delivery.QueuedSink`` hands over up to
``batch_max`` records) over one kept-alive HTTPS connection with certificate and host
name verification on.  An HTTP answer is an acknowledgement, so a record counts as
delivered when the collector said so.

Splunk HEC (``hec+https://HOST:PORT``): ``POST /services/collector/event`` with
``Authorization: Splunk TOKEN`` (the token from ``DETECTOR_HEC_TOKEN``); the body is one
event object per line, ``{"time":..,"host":..,"source":..,"sourcetype":..,"event":..}``.
``event`` is the record itself when the format is JSON (eve, ecs, ocsf) and the record as a
string otherwise (cef, leef); ``time`` is the alert's first match.  Answers: 200 delivered;
400 "invalid data format"/"event field is required/blank" for a batch is retried one event
at a time and the event at fault is rejected (the others delivered); 401/403 (token), 429,
5xx and other 400 codes (index, channel: configuration) are retried with backoff; 413
splits the batch.  HEC indexer acknowledgement is not used.

Elasticsearch (``elastic+https://HOST:PORT/INDEX``): ``POST /_bulk``, ``Content-Type:
application/x-ndjson``, ``Authorization: ApiKey KEY`` (the encoded key from
``DETECTOR_ELASTIC_API_KEY``; ``auth=none`` for a cluster without security).  Each alert is a
``{"create":{"_index":INDEX}}`` action line and the document: the record when it is a JSON
object, else ``{"message": record}``, with ``@timestamp`` (the first match) added when the
record has none, as data streams require.  The answer is read item by item: 2xx (and 409,
already there) delivered; 429 and 5xx retried; 400 (mapping, parsing) rejected for good;
any other item error retried with backoff.  A partly failed batch is retried from its first
failed item: the items after it that succeeded are not sent again, so Elasticsearch can
hold them before the retried one (it orders by ``@timestamp``, not arrival).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import ssl
from typing import Any

from .. import __version__
from ..formats.ecs import iso_utc
from ..model import Alert
from .delivery import CredentialError, Encoder, Outcome, Transport, TransportError
from .net import Secret, describe, peer_closed

USER_AGENT = f"kaspersky-traffic-detector/{__version__}"
HEC_PATH = "/services/collector/event"
HEC_SOURCE = "kaspersky-traffic-detector"
#: Splunk source types for each format (``sourcetype=`` overrides)
HEC_SOURCETYPES = {"eve": "suricata", "ecs": "_json", "ocsf": "_json", "cef": "cef", "leef": "leef"}
#: HEC error codes that blame an event, not the configuration
HEC_EVENT_ERRORS = {6, 12, 13}
MAX_ANSWER = 16 * 1024 * 1024
# Elasticsearch index names: lower case, none of \ / * ? " < > | , # : or space, not - _ +
# first, not . or .. (https://www.elastic.co/guide/en/elasticsearch/reference/current/indices-create-index.html)
INDEX_NAME = re.compile(r'^(?![-_+.])[^A-Z\\/*?"<>|,#: ]{1,255}$')
JSON_DUMPS: dict[str, Any] = {"ensure_ascii": True, "separators": (",", ":")}


def _as_json_object(payload: bytes) -> dict[str, Any] | None:
    if not payload.lstrip().startswith(b"{"):
        return None
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _text(payload: bytes) -> str:
    """A text record as a JSON string, without its own newline only: a LEEF value may end
    in a CR/LF of its own (JSON carries it escaped)."""
    text = payload.decode("utf-8", "backslashreplace")
    return text[:-1] if text.endswith("\n") else text


def hec_encoder(fmt: str, hostname: str, options: dict[str, str]) -> Encoder:
    meta: dict[str, Any] = {
        "host": hostname,
        "source": options.get("source", HEC_SOURCE),
        "sourcetype": options.get("sourcetype", HEC_SOURCETYPES.get(fmt, "_json")),
    }
    if "index" in options:
        meta["index"] = options["index"]

    def encode(payload: bytes, alert: Alert) -> bytes:
        obj = _as_json_object(payload)
        event = {"time": round(alert.first_seen, 3), **meta, "event": obj if obj is not None else _text(payload)}
        return json.dumps(event, **JSON_DUMPS).encode("ascii")

    return encode


def elastic_encoder(fmt: str) -> Encoder:
    def encode(payload: bytes, alert: Alert) -> bytes:
        obj = _as_json_object(payload)
        if obj is None:
            obj = {"message": _text(payload)}
        if "@timestamp" not in obj:
            obj = {"@timestamp": iso_utc(alert.first_seen), **obj}
        return json.dumps(obj, **JSON_DUMPS).encode("ascii")

    return encode


class HttpTransport(Transport):
    """One kept-alive HTTPS connection; subclasses build the request and read the answer."""

    confirms = True

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, *, secret: Secret | None, timeout: float = 10.0) -> None:
        self.host, self.port, self.ctx, self.timeout = host, port, ctx, timeout
        self._secret = secret
        self.conn: http.client.HTTPSConnection | None = None

    def connect(self) -> None:
        self.close()
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)
        try:
            conn.connect()
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(describe(exc)) from None
        self.conn = conn

    path = "/"

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def check_credentials(self) -> None:
        """At start: an empty POST, which both collectors refuse for its emptiness only
        once the credential passed (HEC: 400 "No data"; _bulk: 400 "request body is
        required").  A 401 or 403 is a configuration error, reported before any packet."""
        status, answer = self.post(self.path, b"", self._headers())
        if status in (401, 403):
            raise CredentialError(f"the collector refused the credential ({self.explain(status, answer)})")

    def healthy(self) -> bool:
        return self.conn is not None and self.conn.sock is not None and not peer_closed(self.conn.sock, self.timeout)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.conn is None:
            self.connect()  # the collector closed the last one after its answer
        assert self.conn is not None
        try:
            self.conn.request("POST", path, body=body, headers={"User-Agent": USER_AGENT, **headers})
            resp = self.conn.getresponse()
            answer = resp.read(MAX_ANSWER)
            if resp.will_close:
                self.close()
            return resp.status, answer
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(describe(exc)) from None

    def explain(self, status: int, answer: bytes) -> str:
        """``HTTP 403: text`` from an answer, with the credential cut out if it was echoed."""
        text = answer[:300].decode("utf-8", "replace").strip().replace("\n", " ")
        if self._secret is not None:
            text = self._secret.redact(text)
        return f"HTTP {status}" + (f": {text}" if text else "")

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class HecTransport(HttpTransport):
    path = HEC_PATH

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._secret is not None:
            h["Authorization"] = "Splunk " + self._secret.reveal()
        return h

    def send(self, records: list[bytes]) -> list[Outcome]:
        status, answer = self.post(self.path, b"\n".join(records) + b"\n", self._headers())
        if status == 200:
            return [Outcome.OK] * len(records)
        code = _hec_code(answer)
        if (status == 400 and code in HEC_EVENT_ERRORS) or status == 413:
            if len(records) == 1:
                self.detail = self.explain(status, answer)
                return [Outcome.REJECT]
            out: list[Outcome] = []
            for r in records:  # find the event at fault; the others go through
                out += self.send([r])
            return out
        raise TransportError(f"the collector refused the batch ({self.explain(status, answer)})")


def _hec_code(answer: bytes) -> int | None:
    try:
        code = json.loads(answer).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


class ElasticTransport(HttpTransport):
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, *, index: str, prefix: str = "",
                 secret: Secret | None, timeout: float = 10.0) -> None:
        super().__init__(host, port, ctx, secret=secret, timeout=timeout)
        self.action = json.dumps({"create": {"_index": index}}, **JSON_DUMPS).encode("ascii")
        self.path = prefix.rstrip("/") + "/_bulk"

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/x-ndjson"}
        if self._secret is not None:
            h["Authorization"] = "ApiKey " + self._secret.reveal()
        return h

    def send(self, records: list[bytes]) -> list[Outcome]:
        body = b"".join(self.action + b"\n" + r + b"\n" for r in records)
        status, answer = self.post(self.path, body, self._headers())
        if status in (400, 413) and len(records) > 1:
            out: list[Outcome] = []
            for r in records:
                out += self.send([r])
            return out
        if status in (400, 413):
            self.detail = self.explain(status, answer)
            return [Outcome.REJECT]
        if status != 200:
            raise TransportError(f"the collector refused the batch ({self.explain(status, answer)})")
        try:
            doc = json.loads(answer)
            items = doc["items"] if doc.get("errors") else None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TransportError("the collector's answer is not a _bulk response") from None
        if items is None:
            return [Outcome.OK] * len(records)
        if not isinstance(items, list) or len(items) != len(records):
            raise TransportError(f"the _bulk response has {len(items) if isinstance(items, list) else 'no'} "
                                 f"items for {len(records)} documents")
        out = [_item_outcome(it) for it in items]
        bad = [(i, it) for i, (it, o) in enumerate(zip(items, out, strict=True)) if o is not Outcome.OK]
        if bad:
            self.detail = f"{len(bad)} item error(s), the first: item {bad[0][0]}: {self._item_error(bad[0][1])}"
        return out

    def _item_error(self, item: Any) -> str:
        try:
            (result,) = item.values()
            err = result.get("error") or {}
            text = f"{result.get('status')} {err.get('type', '')}: {err.get('reason', '')}"[:300]
        except (AttributeError, ValueError, TypeError):
            text = "unreadable item"
        return self._secret.redact(text) if self._secret is not None else text


def _item_outcome(item: Any) -> Outcome:
    try:
        (result,) = item.values()
        status = int(result.get("status", 0))
    except (AttributeError, ValueError, TypeError):
        return Outcome.RETRY
    if 200 <= status < 300 or status == 409:
        return Outcome.OK
    if status == 400:
        return Outcome.REJECT
    return Outcome.RETRY
