"""Signature packs: the strict loader, file:line problem reports, range expansion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detector.errors import SignatureError
from detector.signatures import (
    CATEGORIES,
    GRADES,
    LEVELS,
    Signature,
    SignatureSet,
    check_pattern,
    expand_range,
    load_signatures,
)

HEAD = "pack: test\ndescription: test pack\nsignatures:\n"


def sig(
    sid: int | str, match: str = 'names: ["ok{sid}.example.com"]', no_source: bool = False, **override: str
) -> str:
    """One signature as YAML text; ``override`` replaces a field's YAML text."""
    fields = {
        "name": '"test signature"',
        "vendor": "Test",
        "products": '["Product"]',
        "category": "update",
        "confidence": "high",
        "severity": "high",
        "product_only": "true",
    }
    fields.update(override)
    out = f"  - id: {sid}\n"
    for k, v in fields.items():
        out += f"    {k}: {v}\n"
    out += "    match:\n      " + match.replace("{sid}", str(sid)) + "\n"
    if not no_source:
        out += '    source:\n      ref: "test §1"\n      grade: A\n'
    return out


def write_pack(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def line_of(text: str, marker: str) -> int:
    """1-based number of the only line holding ``marker``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def problems_of(paths: list[str]) -> list[tuple[str, int, str]]:
    with pytest.raises(SignatureError) as exc:
        load_signatures(paths)
    return exc.value.problems


# -- the bundled pack ----------------------------------------------------------------------


def test_bundled_pack_loads() -> None:
    sigs = load_signatures()
    assert isinstance(sigs, SignatureSet)
    assert len(sigs) > 0
    assert sigs.files and all(f.endswith((".yaml", ".yml")) for f in sigs.files)
    ids = [s.id for s in sigs]
    assert len(ids) == len(set(ids))
    for s in sigs:
        assert isinstance(s, Signature)
        assert s.category in CATEGORIES
        assert s.confidence in LEVELS and s.severity in LEVELS
        assert s.source_ref and s.source_grade in GRADES
        assert s.names or s.suffixes or s.wildcards or s.ports
        assert s.severity_number in (1, 2, 3)
        assert s.line >= 1


def test_bundled_pack_expands_ranges() -> None:
    sigs = load_signatures()
    s = sigs.by_id(1610002)
    assert "s00.upd.kaspersky.com" in s.names
    assert "s19.upd.kaspersky.com" in s.names
    assert not any("{" in n for sg in sigs for n in sg.names + sg.suffixes + sg.wildcards)
    with pytest.raises(KeyError):
        sigs.by_id(1)


def test_good_pack_fields(tmp_path: Path) -> None:
    text = HEAD + sig(42, 'suffixes: ["a.example.com"]', note='"a note"', severity="low")
    text = text.replace("      grade: A\n", '      grade: B\n      urls: ["https://example.com/x"]\n')
    path = write_pack(tmp_path, "good.yaml", text)
    (s,) = load_signatures([path])
    assert s.id == 42
    assert s.suffixes == ("a.example.com",)
    assert s.names == () and s.wildcards == ()
    assert s.products == ("Product",)
    assert s.product_only is True
    assert s.note == "a note"
    assert s.severity_number == 3
    assert (s.source_ref, s.source_grade, s.source_urls) == ("test §1", "B", ("https://example.com/x",))
    assert (s.file, s.line) == (path, 4)


# -- many problems at once -----------------------------------------------------------------


def _bad_pack() -> tuple[str, list[tuple[str, str]]]:
    """A pack with one problem per signature; returns (text, [(marker, message regex)])."""
    parts = [
        sig(1),  # fine: the first owner of id 1
        sig(2).replace("    vendor:", "    colour: blue  # P-unknown\n    vendor:"),
        sig(3).replace("    vendor:", '    name: "again"  # P-dupkey\n    vendor:'),
        sig(1, 'names: ["other.example.com"]').replace("  - id: 1\n", "  - id: 1  # P-dupid\n"),
        sig(5, category="nonsense  # P-category"),
        sig(6, 'names: ["UPPER.example.com"]  # P-upper'),
        sig(7, 'names: ["com"]  # P-tld'),
        sig(8, 'wildcards: ["*.com"]  # P-wildtld'),
        sig(9, no_source=True).replace("  - id: 9\n", "  - id: 9  # P-nosource\n"),
        sig(10, 'names: ["s{5..2}.x.example.com"]  # P-range'),
        sig(11, confidence="sure  # P-confidence"),
        sig(12).replace("      grade: A", "      grade: Z  # P-grade"),
        sig(0).replace("  - id: 0\n", "  - id: 0  # P-idrange\n"),
        sig(14, product_only='"yes"  # P-booltype'),
        sig(15, 'names: ["ok1.example.com"]  # P-duppattern'),
        sig(16, 'names: ["-bad-.example.com"]  # P-label'),
        sig(17, 'wildcards: ["plain.example.com"]  # P-nowild'),
        sig(18, 'names: ["trailing.example.com."]  # P-dot'),
        sig(19, products="[]  # P-products"),
    ]
    text = HEAD + "".join(parts)
    expected = [
        ("P-unknown", r"^signature: unknown key 'colour' \(valid: id, name, "),
        ("P-dupkey", r"^signature: duplicate key 'name'$"),
        ("P-dupid", r"^duplicate id 1 \(first at .*bad\.yaml:4\)$"),
        ("P-category", r"^category 'nonsense' is not one of update, telemetry, "),
        ("P-upper", r"^match\.names: 'UPPER\.example\.com': patterns must be lower case$"),
        ("P-tld", r"^match\.names: 'com': a pattern needs at least two labels"),
        ("P-wildtld", r"^match\.wildcards: '\*\.com': wildcards must leave the registrable domain"),
        ("P-nosource", r"^signature: missing key 'source'"),
        ("P-range", r"^match\.names: 's\{5\.\.2\}\.x\.example\.com': bad numeric range \{5\.\.2\}$"),
        ("P-confidence", r"^confidence 'sure' is not one of high, medium, low$"),
        ("P-grade", r"^source\.grade 'Z' is not one of A, "),
        ("P-idrange", r"^id 0 out of range"),
        ("P-booltype", r"^signature\.product_only must be a bool, not 'yes'$"),
        ("P-duppattern", r"^match\.names: 'ok1\.example\.com' already in signature 1 \(.*bad\.yaml:"),
        ("P-label", r"^match\.names: '-bad-\.example\.com': bad label '-bad-'"),
        ("P-nowild", r"^match\.wildcards: 'plain\.example\.com': a wildcard pattern needs"),
        ("P-dot", r"^match\.names: 'trailing\.example\.com\.': patterns must not end with a dot$"),
        ("P-products", r"^products must list at least one product$"),
    ]
    return text, expected


def test_bad_pack_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    text, expected = _bad_pack()
    path = write_pack(tmp_path, "bad.yaml", text)
    problems = problems_of([path])
    assert all(p == path for p, _, _ in problems)
    got = sorted((ln, msg) for _, ln, msg in problems)
    for marker, pattern in expected:
        ln = line_of(text, marker)
        at_line = [msg for l2, msg in got if l2 == ln]
        assert any(re.search(pattern, m) for m in at_line), (marker, ln, at_line)
    assert len(problems) == len(expected), got


def test_signature_error_text_is_file_line_message(tmp_path: Path) -> None:
    text, _ = _bad_pack()
    path = write_pack(tmp_path, "bad.yaml", text)
    with pytest.raises(SignatureError) as exc:
        load_signatures([path])
    lines = str(exc.value).splitlines()
    assert len(lines) == len(exc.value.problems)
    assert f"{path}:{line_of(text, 'P-unknown')}: signature: unknown key 'colour'" in str(exc.value)
    assert f"{path}:{line_of(text, 'P-dupkey')}: signature: duplicate key 'name'" in lines
    assert f"{path}:{line_of(text, 'P-nosource')}: signature: missing key 'source'" in str(exc.value)
    assert (
        f"{path}:{line_of(text, 'P-upper')}: match.names: 'UPPER.example.com': patterns must be lower case"
        in lines
    )
    for line in lines:
        assert re.match(re.escape(path) + r":\d+: \S", line)


def test_duplicate_id_across_two_files(tmp_path: Path) -> None:
    a = write_pack(tmp_path, "a.yaml", HEAD + sig(7))
    b_text = HEAD + sig(8) + sig(7, 'names: ["other.example.com"]')
    b = write_pack(tmp_path, "b.yaml", b_text)
    problems = problems_of([str(tmp_path)])
    assert problems == [(b, line_of(b_text, "id: 7"), f"duplicate id 7 (first at {a}:4)")]


def test_duplicate_pattern_across_files(tmp_path: Path) -> None:
    write_pack(tmp_path, "a.yaml", HEAD + sig(1, 'suffixes: ["same.example.com"]'))
    b = write_pack(tmp_path, "b.yml", HEAD + sig(2, 'suffixes: ["same.example.com"]'))
    ((path, _, msg),) = problems_of([str(tmp_path)])
    assert path == b
    assert "'same.example.com' already in signature 1" in msg


@pytest.mark.parametrize(
    ("text", "marker", "message"),
    [
        ("", None, "empty signature file"),
        ("pack: x\nsignatures: [\n  - 1\n", None, "YAML syntax"),
        ("pack: x\ndescription: y\n", "pack: x", "pack: missing key 'signatures'"),
        ("pack: x\nsignatures: {}\n", "signatures:", "pack.signatures must be a list"),
        ("pack: x\nextra: 1\nsignatures: []\n", "extra", "pack: unknown key 'extra'"),
        ("- just\n- a list\n", "just", "pack must be a mapping"),
        (HEAD + "  - id: 1\n", "id: 1", "signature: missing key 'name'"),
        (HEAD + sig(1, "{}  # M"), "# M", "match: needs at least one of names, suffixes, wildcards"),
        (HEAD + sig(1, "names: [1, 2]  # M"), "# M", "match.names: every item must be a non-empty string"),
        (HEAD + sig('"abc"', 'names: ["n.example.com"]'), "abc", "signature.id must be a int, not 'abc'"),
        (HEAD + sig(1, name='""  # M'), "# M", "signature.name must not be empty"),
        (HEAD + sig(1, vendor="[a, b]  # M"), "# M", "signature.vendor must be a str"),
    ],
)
def test_structural_problems(tmp_path: Path, text: str, marker: str | None, message: str) -> None:
    path = write_pack(tmp_path, "s.yaml", text)
    problems = problems_of([path])
    line = line_of(text, marker) if marker else None
    assert any((line is None or ln == line) and message in msg for _, ln, msg in problems), problems


def test_missing_file_and_empty_directory(tmp_path: Path) -> None:
    ((path, line, msg),) = problems_of([str(tmp_path / "nope.yaml")])
    assert (line, msg) == (1, "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    ((_, _, msg),) = problems_of([str(empty)])
    assert msg == "no signature files found"


def test_directory_takes_only_yaml_files_sorted(tmp_path: Path) -> None:
    write_pack(tmp_path, "b.yml", HEAD + sig(2))
    write_pack(tmp_path, "a.yaml", HEAD + sig(1))
    write_pack(tmp_path, "README.md", "not yaml: [")
    sigs = load_signatures([str(tmp_path)])
    assert [s.id for s in sigs] == [1, 2]
    assert sigs.files == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yml"))


# -- expand_range and check_pattern --------------------------------------------------------


def test_expand_range_zero_padding() -> None:
    names = expand_range("s{00..19}.upd.x.com")
    assert len(names) == 20
    assert names[0] == "s00.upd.x.com"
    assert names[9] == "s09.upd.x.com"
    assert names[-1] == "s19.upd.x.com"
    assert len(set(names)) == 20


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("plain.example.com", ["plain.example.com"]),
        ("n{8..11}.x.com", ["n8.x.com", "n9.x.com", "n10.x.com", "n11.x.com"]),
        ("n{0..2}.x.com", ["n0.x.com", "n1.x.com", "n2.x.com"]),
        ("n{001..003}.x.com", ["n001.x.com", "n002.x.com", "n003.x.com"]),
        ("n{3..3}.x.com", ["n3.x.com"]),
        ("dnl-{08..10}.geo.x.com", ["dnl-08.geo.x.com", "dnl-09.geo.x.com", "dnl-10.geo.x.com"]),
    ],
)
def test_expand_range(pattern: str, expected: list[str]) -> None:
    assert expand_range(pattern) == expected


@pytest.mark.parametrize("pattern", ["s{5..2}.x.com", "s{0..1000}.x.com"])
def test_expand_range_bad(pattern: str) -> None:
    with pytest.raises(ValueError, match="bad numeric range"):
        expand_range(pattern)


@pytest.mark.parametrize(
    ("kind", "pattern", "problem"),
    [
        ("names", "a.example.com", None),
        ("names", "under_score.example.com", None),
        ("suffixes", "example.com", None),
        ("wildcards", "ksn-*-geo.example.com", None),
        ("wildcards", "s?.example.com", None),
        ("wildcards", "a.*.example.com", None),
        ("names", "UPPER.example.com", "lower case"),
        ("names", "com", "at least two labels"),
        ("suffixes", "com", "at least two labels"),
        ("names", "a.example.com.", "must not end with a dot"),
        ("names", "a..example.com", "bad label ''"),
        ("names", "-a.example.com", "bad label '-a'"),
        ("names", "a*.example.com", "bad label 'a*'"),
        ("names", ("a" * 64) + ".example.com", "bad label"),
        ("names", ".".join(["a" * 63] * 4) + ".com", "longer than 253"),
        ("wildcards", "*.com", "registrable domain"),
        ("wildcards", "a.*", "registrable domain"),
        ("wildcards", "x.exam?le.com", "registrable domain"),
        ("wildcards", "plain.example.com", "needs '*' or '?'"),
        ("wildcards", "a b.example.com", "bad label"),
    ],
)
def test_check_pattern(kind: str, pattern: str, problem: str | None) -> None:
    got = check_pattern(kind, pattern)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_expand_range_total_is_bounded() -> None:
    with pytest.raises(ValueError):
        expand_range("a{0..99}.b{0..99}.x.com")  # 10 000 names from one pattern
