"""parsers/x509.py: a certificate's names, parsed once and kept by its DER bytes."""

from __future__ import annotations

import datetime

import pytest

from detector.errors import DecodeError
from detector.parsers import x509 as x

crypto_x509 = pytest.importorskip("cryptography.x509")


def _der(cn: str, *sans: str) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = crypto_x509.Name([crypto_x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    b = (crypto_x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if sans:
        b = b.add_extension(crypto_x509.SubjectAlternativeName([crypto_x509.DNSName(s) for s in sans]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_names_and_the_cache_hands_out_copies() -> None:
    der = _der("s05.upd.kaspersky.com", "s05.upd.kaspersky.com", "www.example.org")
    subject, names = x.cert_names(der)
    assert subject == "CN=s05.upd.kaspersky.com"
    assert names == ["s05.upd.kaspersky.com", "www.example.org"]
    names.append("changed by a caller")
    assert x.cert_names(bytearray(der)) == (subject, ["s05.upd.kaspersky.com", "www.example.org"])
    assert x._parsed.cache_info().hits >= 1


def test_malformed_raises_every_time() -> None:
    bad = _der("a.example")[:-40]
    for _ in range(2):
        with pytest.raises(DecodeError) as exc:
            x.cert_names(bad)
        assert exc.value.reason == "x509-malformed"


def test_cache_is_bounded() -> None:
    for i in range(x.MAX_CACHED_CERTS + 20):
        x.cert_names(_der(f"h{i}.example"))
    assert x._parsed.cache_info().currsize <= x.MAX_CACHED_CERTS
