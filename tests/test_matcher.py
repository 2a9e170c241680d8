"""The hostname index: exact > wildcard > longest suffix, on normalised ASCII names only."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.matcher import Hit, Matcher, normalise
from detector.signatures import load_signatures

PACK = """\
pack: matcher-test
description: precedence fixtures
signatures:
{body}
"""

SIGS = {
    1: 'names: ["exact.example.com", "w-exact.example.com"]',
    2: 'suffixes: ["example.com"]',
    3: 'suffixes: ["deep.example.com"]',
    4: 'wildcards: ["w-*.example.com"]',
    5: 'wildcards: ["a?.deep.example.com"]',
    6: 'wildcards: ["x.*.other.test"]',
    7: 'names: ["only.exact.test"]',
}


def _sig(sid: int, match: str) -> str:
    return (
        f"  - id: {sid}\n    name: \"s{sid}\"\n    vendor: T\n    products: [\"P\"]\n"
        "    category: update\n    confidence: high\n    severity: high\n    product_only: true\n"
        f"    match:\n      {match}\n    source:\n      ref: r\n      grade: A\n"
    )


@pytest.fixture(scope="module")
def matcher(tmp_path_factory: pytest.TempPathFactory) -> Matcher:
    path: Path = tmp_path_factory.mktemp("pack") / "m.yaml"
    path.write_text(PACK.format(body="".join(_sig(i, m) for i, m in SIGS.items())))
    return Matcher(load_signatures([str(path)]))


@pytest.fixture(scope="module")
def bundled() -> Matcher:
    return Matcher(load_signatures())


def _hit(m: Matcher, name: str) -> tuple[int, str, str] | None:
    h = m.lookup(name)
    return None if h is None else (h.signature.id, h.kind, h.pattern)


# -- precedence ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("exact.example.com", (1, "name", "exact.example.com")),
        ("w-exact.example.com", (1, "name", "w-exact.example.com")),  # exact beats wildcard
        ("w-abc.example.com", (4, "wildcard", "w-*.example.com")),  # wildcard beats suffix
        ("w-.example.com", (2, "suffix", "example.com")),  # odd label, still under example.com; '*' needs 1+ chars
        ("w-a.b.example.com", (2, "suffix", "example.com")),  # '*' stays inside one label
        ("ab.deep.example.com", (5, "wildcard", "a?.deep.example.com")),  # wildcard beats suffix
        ("abc.deep.example.com", (3, "suffix", "deep.example.com")),  # '?' is exactly one
        ("a.deep.example.com", (3, "suffix", "deep.example.com")),
        ("x.y.deep.example.com", (3, "suffix", "deep.example.com")),  # longest suffix
        ("deep.example.com", (3, "suffix", "deep.example.com")),  # a suffix covers itself
        ("example.com", (2, "suffix", "example.com")),
        ("sub.exact.example.com", (2, "suffix", "example.com")),  # names are exact only
        ("x.mid.other.test", (6, "wildcard", "x.*.other.test")),
        ("y.mid.other.test", None),
        ("x.other.test", None),
        ("only.exact.test", (7, "name", "only.exact.test")),
        ("sub.only.exact.test", None),
        ("exact.test", None),
    ],
)
def test_precedence(matcher: Matcher, name: str, expected: tuple | None) -> None:
    assert _hit(matcher, name) == expected


def test_size_counts_patterns(matcher: Matcher) -> None:
    assert matcher.size == 8


def test_lookup_returns_hit(matcher: Matcher) -> None:
    h = matcher.lookup("exact.example.com")
    assert isinstance(h, Hit)
    assert h.signature.name == "s1"


# -- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["EXACT.Example.COM", "exact.example.com.", "Exact.Example.Com.", "EXACT.EXAMPLE.COM."],
)
def test_case_and_trailing_dot(matcher: Matcher, name: str) -> None:
    assert _hit(matcher, name) == (1, "name", "exact.example.com")


@pytest.mark.parametrize(
    "name",
    [
        "notexample.com",
        "example.com.evil.test",
        "exact.example.com.evil.test",
        "example.co",
        "com",
        "exact.example.com..",  # two trailing dots
        "a..example.com",  # empty label
        ".example.com",
        "example.com\x00",
        "exact.example.com ",
        "exact.example.com/",
        "",
        ".",
    ],
)
def test_never_matches(matcher: Matcher, name: str) -> None:
    assert matcher.lookup(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "\u212aaspersky.com",  # KELVIN SIGN, lower-cases to 'k'
        "\u212aASPERSKY.COM",
        "activation-v2.\u212aaspersky.com",
        "kaspersky\u3002com",  # ideographic full stop
        "ka\u017fpersky.com",  # LATIN SMALL LETTER LONG S
        "kaspersky.com\u200b",  # zero-width space
        "kаspersky.com",  # Cyrillic а
    ],
)
def test_non_ascii_never_matches(bundled: Matcher, name: str) -> None:
    # Only ASCII is case-folded, so a look-alike never spells a signature's labels.
    assert bundled.lookup(name) is None


@pytest.mark.parametrize(
    "name",
    [" exact.example.com", "*.example.com", "-a.example.com", "a-.example.com", "a|b=c\\d\"e].example.com",
     "x\r\ny.example.com", "\x00\x1b[31m.example.com", "\u202eevil.example.com", "a\\xff\\xfe.example.com",
     "\u212a.example.com", "exact\\.example.com"],
)
def test_hostile_labels_under_a_suffix_match_the_suffix(matcher: Matcher, name: str) -> None:
    """Whatever a sender puts left of the vendor's domain, the name is under that domain:
    it alerts (and every output format escapes it); it never matches an exact name."""
    assert _hit(matcher, name) == (2, "suffix", "example.com")
    hit = matcher.lookup(name)
    assert hit is not None and hit.name == normalise(name)


def test_kelvin_sign_really_is_a_lookalike() -> None:
    assert "\u212aaspersky.com".lower() == "kaspersky.com"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a" * 63 + ".example.com", True),
        ("a" * 64 + ".example.com", True),  # text limits allow \\DDD escapes (4 characters a byte)
        ("a" * 253 + ".example.com", False),  # label text over 63 * 4
        (".".join(["a" * 49] * 5) + ".example.com", True),  # 262 characters
        ("a." * 121 + "example.com", True),  # 253 characters
        ("a." * 2000 + "example.com", False),  # over 253 * 4 characters
    ],
)
def test_over_long_names(matcher: Matcher, name: str, ok: bool) -> None:
    assert (matcher.lookup(name) is not None) is ok


def test_253_and_254_characters(matcher: Matcher) -> None:
    name = "b" * 61 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 51 + ".example.com"
    assert len(name) == 253
    assert _hit(matcher, name) == (2, "suffix", "example.com")
    assert _hit(matcher, name + ".") == (2, "suffix", "example.com")  # 254 with the root dot
    assert _hit(matcher, "b" * 800 + "." + name) is None  # over the text limit


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Exact.Example.COM.", "exact.example.com"),
        ("under_score.example.com", "under_score.example.com"),
        ("xn--80ak6aa92e.com", "xn--80ak6aa92e.com"),
        ("1.2.3.4", "1.2.3.4"),
        ("a..b", None),
        ("", None),
        ("..", None),
    ],
)
def test_normalise(raw: str, norm: str | None) -> None:
    assert normalise(raw) == norm


def test_lookup_normalised_skips_normalisation(matcher: Matcher) -> None:
    assert matcher.lookup_normalised("exact.example.com").kind == "name"
    # no case folding here: the exact entry is missed, only the suffix is found
    assert matcher.lookup_normalised("EXACT.example.com").kind == "suffix"


# -- the bundled pack ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sid", "kind"),
    [
        ("activation-v2.kaspersky.com", 1610001, "name"),
        ("ACTIVATION-V2.KASPERSKY.COM.", 1610001, "name"),
        ("s07.upd.kaspersky.com", 1610002, "name"),
        ("s19.upd.kaspersky.com", 1610002, "name"),
        ("s20.upd.kaspersky.com", 1610020, "suffix"),  # outside the range: the upd suffix
        ("ksn-anything-geo.kaspersky-labs.com", 1610016, "wildcard"),
        ("www.kaspersky.com", 1619001, "suffix"),
        ("kaspersky.com", 1619001, "suffix"),
    ],
)
def test_bundled_pack(bundled: Matcher, name: str, sid: int, kind: str) -> None:
    h = bundled.lookup(name)
    assert h is not None
    assert (h.signature.id, h.kind) == (sid, kind)


@pytest.mark.parametrize(
    "name",
    [
        "notkaspersky.com",
        "kaspersky.com.evil.example",
        "activation-v2.kaspersky.com.evil.example",
        "kaspersky.co",
        "kaspersky",
        "xkaspersky-labs.com",
    ],
)
def test_bundled_pack_look_alikes_never_match(bundled: Matcher, name: str) -> None:
    assert bundled.lookup(name) is None


# -- names given as wire labels (DNS) ------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected", "shown"),
    [
        (("exact", "example", "com"), (1, "name", "exact.example.com"), "exact.example.com"),
        (("EXACT", "Example", "COM"), (1, "name", "exact.example.com"), "exact.example.com"),
        # a dot byte inside a label is no label boundary: these are not exact.example.com
        (("exact.example", "com"), None, None),
        (("exact", "example.com"), None, None),
        (("x", "deep.example", "com"), None, None),
        # ... but a label holding dots left of a suffix is under it, and shown as sent
        (("a.b", "example", "com"), (2, "suffix", "example.com"), "a.b.example.com"),
        (("exact.example.com",  "example", "com"), (2, "suffix", "example.com"), "exact.example.com.example.com"),
        (("tab\tsrc=6.6.6.6 x", "deep", "example", "com"), (3, "suffix", "deep.example.com"),
         "tab\tsrc=6.6.6.6 x.deep.example.com"),
        # '*' and '?' stay inside one label, and a dotted label is one label
        (("w-a.b", "example", "com"), (4, "wildcard", "w-*.example.com"), "w-a.b.example.com"),
        (("a.", "deep", "example", "com"), (5, "wildcard", "a?.deep.example.com"), "a..deep.example.com"),
        (("x", "m.id", "other", "test"), (6, "wildcard", "x.*.other.test"), "x.m.id.other.test"),
        (("\x00", "example", "com"), (2, "suffix", "example.com"), "\x00.example.com"),
        (("\x00.", "example", "com"), (2, "suffix", "example.com"), "\x00..example.com"),
        ((".", "example", "com"), (2, "suffix", "example.com"), "..example.com"),
        (("", "example", "com"), None, None),
        ((), None, None),
        (("\xff" * 63, "example", "com"), (2, "suffix", "example.com"), "\xff" * 63 + ".example.com"),
    ],
)
def test_lookup_labels(matcher: Matcher, labels: tuple[str, ...], expected: tuple | None, shown: str | None) -> None:
    hit = matcher.lookup_labels(labels)
    assert (None if hit is None else (hit.signature.id, hit.kind, hit.pattern)) == expected
    assert (None if hit is None else hit.name) == shown


def test_a_nul_label_never_reaches_the_trie_internals(matcher: Matcher) -> None:
    # Labels are str keys; the trie's own markers are ints, so a NUL label is just a label.
    assert _hit(matcher, "\x00.example.com") == (2, "suffix", "example.com")
    assert _hit(matcher, "\x01.deep.example.com") == (3, "suffix", "deep.example.com")
    assert matcher.lookup_labels(["\x00", "\x01", "example", "com"]) is not None


def test_cached_lookups_answer_as_uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """``lookup``/``lookup_labels`` keep answers by name: asked again (or after the cache
    was emptied at its bound) they answer exactly what a fresh Matcher answers."""
    import detector.matcher as m

    sigs = load_signatures()
    names = ["activation-v2.kaspersky.com", "ACTIVATION-v2.Kaspersky.COM.", "www.example.com", "", "..", "a" * 300,
             "dnl-05.geo.kaspersky.com", "x.ksn.kaspersky-labs.com", "kaspersky.com.evil.example"]
    labels = [tuple(n.rstrip(".").split(".")) for n in names if n] + [("a.b", "kaspersky", "com"), ()]
    monkeypatch.setattr(m, "MAX_CACHED_LOOKUPS", 4)
    cached = Matcher(sigs)
    for _ in range(3):
        for n in names:
            assert cached.lookup(n) == Matcher(sigs).lookup(n)
        for lab in labels:
            assert cached.lookup_labels(lab) == Matcher(sigs).lookup_labels(lab)
            assert cached.lookup_labels(list(lab)) == Matcher(sigs).lookup_labels(lab)
    assert len(cached._by_name) <= 4 and len(cached._by_labels) <= 4
    assert cached.lookup("activation-v2.kaspersky.com") is not None
