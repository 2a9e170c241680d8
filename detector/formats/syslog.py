"""Syslog envelopes around any format's record: RFC 5424 (``wrap``) and, for old receivers,
RFC 3164 (``wrap_3164``). Pure functions: the time is the alert's first match.

RFC 5424::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [kdetect@32473 sid=".." ...] MSG

- PRI = facility * 8 + severity; severity from the alert's level (the signature's, one
  step lower on weak evidence, as in the EVE record; ``SEVERITY``: high is 4 Warning,
  medium 5 Notice, low 6 Informational: a finding to look at, not an outage).
  The default facility is local0 (``DEFAULT_FACILITY``).
- TIMESTAMP: UTC with microseconds (``2023-11-14T22:13:20.250000Z``, six digits at most).
- HOSTNAME, APP-NAME, PROCID, MSGID: only PRINTUSASCII (33-126) is kept, anything else
  becomes ``_``; cut to 255/48/128/32 characters; an empty field is the NILVALUE ``-``.
- STRUCTURED-DATA: one element, SD-ID ``kdetect@32473`` (32473 is the Private Enterprise
  Number that RFC 5612 reserves for documentation; a site with its own PEN passes
  ``sd_id``). Parameters: sid, category, client, hostname, evidence, count. SD-NAMEs are
  PRINTUSASCII without ``=``, space, ``]`` and ``"``, at most 32 characters (``sd_name``).
  PARAM-VALUEs escape ``"``, ``\\`` and ``]`` with a backslash (RFC 5424 section 6.3.3,
  ``PARAM_ESCAPES``) and nothing else: a control character, a tab, CR, LF, NUL, a bidi
  control is written as it is (a PARAM-VALUE is any UTF-8), so a reader gets back exactly
  the name that crossed the wire. Only a lone surrogate, not a character, is never
  written: it becomes ``\\uDXXX`` text (``SURROGATES``), then escaped like any text.
  ``sd=False`` writes the NILVALUE instead.
- MSG: the payload without its trailing newline, its bytes as they are (MSG-ANY; a
  payload that is not valid UTF-8 has the offending bytes written as ``\\xNN``). Plain by
  default: receivers treat it as UTF-8 anyway, and a BOM in front of JSON trips readers
  that parse the MSG; ``bom=True`` writes the BOM of RFC 5424's MSG-UTF8.

So a message may hold a raw CR or LF (in a PARAM-VALUE, or in a LEEF payload's value):
the syslog sinks frame every message themselves (one UDP datagram; RFC 6587 octet
counting over TCP and TLS, ``detector.sinks.syslog``), so it arrives whole and exact. A
receiver that frames by line (RFC 6587 non-transparent framing) would cut it there;
rsyslog's imtcp and syslog-ng's ``syslog()`` source read octet counting.

RFC 3164::

    <PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG

with the month in English, the day padded with a space, the time in UTC (3164 has no zone),
TAG cut to 32 characters of ``[A-Za-z0-9._-]``. RFC 3164's 1024-byte limit is not enforced:
an alert does not fit, and current receivers accept longer messages.

Both return one record terminated by ``\\n``, like every format; a sink that frames
messages itself (UDP datagrams, RFC 6587 octet counting) drops that newline.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from ..model import Alert
from .common import SURROGATES, iso_utc, severity_level, storm_text


class Facility(enum.IntEnum):
    """RFC 5424 section 6.2.1, table 1."""

    KERN = 0
    USER = 1
    MAIL = 2
    DAEMON = 3
    AUTH = 4
    SYSLOG = 5
    LPR = 6
    NEWS = 7
    UUCP = 8
    CRON = 9
    AUTHPRIV = 10
    FTP = 11
    NTP = 12
    AUDIT = 13
    ALERT = 14
    CLOCK = 15
    LOCAL0 = 16
    LOCAL1 = 17
    LOCAL2 = 18
    LOCAL3 = 19
    LOCAL4 = 20
    LOCAL5 = 21
    LOCAL6 = 22
    LOCAL7 = 23


class Severity(enum.IntEnum):
    """RFC 5424 section 6.2.1, table 2."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7


SEVERITY = {"high": Severity.WARNING, "medium": Severity.NOTICE, "low": Severity.INFORMATIONAL}
DEFAULT_FACILITY = Facility.LOCAL0
VERSION = "1"
NILVALUE = "-"
SD_ID = "kdetect@32473"
MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID, MAX_MSGID, MAX_SD_NAME = 255, 48, 128, 32, 32
MAX_TAG = 32
BOM = b"\xef\xbb\xbf"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

PRINTUSASCII = frozenset(range(33, 127))
SD_NAME_FORBIDDEN = frozenset(b'= ]"')
TAG_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
REPLACEMENT = "_"
PARAM_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "]": "\\]"})


def pri(facility: int, severity: int) -> int:
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError(f"facility {facility} / severity {severity} out of range")
    return facility * 8 + severity


def severity_of(alert: Alert) -> Severity:
    return SEVERITY[severity_level(alert)]


def header_field(value: str, limit: int, allowed: frozenset[int] = PRINTUSASCII) -> str:
    """Keep ``allowed`` characters, replace the rest with ``_``, cut to ``limit``; ``-`` if empty."""
    out = "".join(c if ord(c) in allowed else REPLACEMENT for c in value)[:limit]
    return out or NILVALUE


def sd_name(name: str) -> str:
    """An SD-NAME: PRINTUSASCII except ``= ]"`` and space, 1 to 32 characters."""
    out = "".join(c for c in name if ord(c) in PRINTUSASCII and ord(c) not in SD_NAME_FORBIDDEN)[:MAX_SD_NAME]
    if not out:
        raise ValueError(f"no SD-NAME can be made of {name!r}")
    return out


def param_value(value: str) -> str:
    """A PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped, nothing else (lone surrogates aside)."""
    return value.translate(SURROGATES).translate(PARAM_ESCAPES)


def sd_params(alert: Alert) -> list[tuple[str, str]]:
    obs = alert.observation
    sig = alert.signature
    return [
        ("sid", str(sig.id)),
        ("category", sig.category),
        ("client", obs.client),
        ("hostname", obs.hostname),
        ("evidence", obs.evidence.value),
        ("count", str(alert.count)),
        *storm_text(alert),  # an alert-storm aggregate (storm.py)
    ]


def structured_data(alert: Alert, sd_id: str = SD_ID) -> str:
    params = "".join(f' {sd_name(k)}="{param_value(v)}"' for k, v in sd_params(alert))
    return f"[{sd_name(sd_id)}{params}]"


def _msg(payload: bytes) -> bytes:
    if payload.endswith(b"\n"):
        payload = payload[:-1]
    return payload.decode("utf-8", "backslashreplace").encode("utf-8")


def wrap(
    payload: bytes,
    alert: Alert,
    *,
    hostname: str,
    app_name: str = "kaspersky-detector",
    procid: str = NILVALUE,
    msgid: str = "alert",
    facility: int = DEFAULT_FACILITY,
    sd: bool = True,
    sd_id: str = SD_ID,
    bom: bool = False,
) -> bytes:
    """One RFC 5424 message (terminated by ``\\n``) carrying ``payload`` as its MSG."""
    head = " ".join(
        [
            f"<{pri(facility, severity_of(alert))}>{VERSION}",
            iso_utc(alert.first_seen),
            header_field(hostname, MAX_HOSTNAME),
            header_field(app_name, MAX_APP_NAME),
            header_field(procid, MAX_PROCID),
            header_field(msgid, MAX_MSGID),
            structured_data(alert, sd_id) if sd else NILVALUE,
        ]
    )
    return head.encode("utf-8") + b" " + (BOM if bom else b"") + _msg(payload) + b"\n"


def timestamp_3164(ts: float) -> str:
    """``Mmm dd hh:mm:ss`` in UTC, English month, day padded with a space."""
    t = datetime.fromtimestamp(ts, timezone.utc)
    return f"{MONTHS[t.month - 1]} {t.day:2d} {t:%H:%M:%S}"


def wrap_3164(
    payload: bytes,
    alert: Alert,
    *,
    hostname: str,
    tag: str = "kaspersky-detector",
    procid: str | None = None,
    facility: int = DEFAULT_FACILITY,
) -> bytes:
    """One RFC 3164 message (terminated by ``\\n``) carrying ``payload``."""
    host = header_field(hostname, MAX_HOSTNAME)
    name = header_field(tag, MAX_TAG, TAG_CHARS)
    pid = f"[{header_field(procid, MAX_PROCID, TAG_CHARS)}]" if procid else ""
    head = f"<{pri(facility, severity_of(alert))}>{timestamp_3164(alert.first_seen)} {host} {name}{pid}:"
    return head.encode("ascii") + b" " + _msg(payload) + b"\n"
