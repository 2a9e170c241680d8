"""Host names in an X.509 certificate (subject CN and SAN dNSName), via the
``cryptography`` package when it is installed (the ``quic`` extra); otherwise off."""

from __future__ import annotations

import functools

from ..errors import DecodeError

try:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    X509_AVAILABLE = True
except ImportError:  # pragma: no cover - optional dependency
    X509_AVAILABLE = False

MAX_NAMES = 64
MAX_CACHED_CERTS = 256  # parsed certificates kept (by their DER bytes)


def cert_names(der: bytes) -> tuple[str, list[str]]:
    """-> (subject as text, [CN and SAN DNS names]).  Raises DecodeError if unparsable."""
    if not X509_AVAILABLE:
        return "", []
    subject, names = _parsed(bytes(der))
    return subject, list(names)


@functools.lru_cache(maxsize=MAX_CACHED_CERTS)
def _parsed(der: bytes) -> tuple[str, tuple[str, ...]]:
    """The parse of one certificate, kept for the next connection to the same server (the
    same few certificates come again and again; a failed parse raises and is not kept)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject.rfc4514_string()
        names: list[str] = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names += san.value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            pass
    except (ValueError, TypeError, UnicodeError, x509.InvalidVersion) as exc:
        # InvalidVersion (a version field other than v1/v3) is no ValueError: found by
        # tests/fuzz/run.py (tests/fuzz/regressions/x509-3c0ddc6c031e.bin).
        raise DecodeError("x509-malformed", type(exc).__name__) from None
    seen: dict[str, None] = {}
    for n in names[: MAX_NAMES * 2]:
        seen.setdefault(n, None)
    return subject, tuple(seen)[:MAX_NAMES]
