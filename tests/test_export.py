"""Exporters: golden files for every backend, the registry, sids/revs, datasets, and the
formats Zeek documents (its engine is not packaged here; see the README)."""

from __future__ import annotations

import base64
import io
import re
import tarfile

import pytest

from detector.cli import main
from detector.errors import ConfigError
from detector.export import EXPORTERS, ExportOptions, get_exporter, tar_gz, write_bundle
from detector.export import suricata as sx
from detector.export import zeek as zx
from detector.signatures import load_signatures, select
from tests.helpers import REPO
from tests.test_formats_common import golden_check

PACK = REPO / "tests" / "golden" / "export" / "pack.yaml"


@pytest.fixture(scope="module")
def sigs():
    return load_signatures([str(PACK)])


def test_registry_lists_valid_names_on_error():
    with pytest.raises(ConfigError, match="valid: domains, hosts, rpz, suricata, suricata-update, zeek"):
        get_exporter("snort")


@pytest.mark.parametrize(
    "fmt, opts, files",
    [
        ("suricata", {}, {"kaspersky.rules": "suricata7.rules"}),
        ("suricata", {"suricata_version": 8}, {"kaspersky.rules": "suricata8.rules"}),
        ("suricata", {"datasets": True}, {"kaspersky.rules": "suricata7-datasets.rules",
                                           "kdt-1610001.lst": "kdt-1610001.lst", "kdt-1610002.lst": "kdt-1610002.lst"}),
        ("rpz", {}, {"kaspersky.rpz": "kaspersky.rpz"}),
        ("rpz", {"rpz_action": "passthru"}, {"kaspersky.rpz": "kaspersky-passthru.rpz"}),
        ("hosts", {}, {"hosts": "hosts"}),
        ("domains", {}, {"domains.txt": "domains.txt"}),
        ("zeek", {}, {"kaspersky-traffic-detector/zkg.meta": "zeek-zkg.meta",
                      "kaspersky-traffic-detector/scripts/__load__.zeek": "zeek-__load__.zeek",
                      "kaspersky-traffic-detector/scripts/main.zeek": "zeek-main.zeek",
                      "kaspersky-traffic-detector/scripts/kaspersky.intel": "zeek-kaspersky.intel"}),
    ],
)
def test_golden(sigs, fmt, opts, files):
    bundle = EXPORTERS[fmt](sigs, ExportOptions(**opts))
    assert list(bundle) == list(files)
    for path, golden in files.items():
        golden_check(f"export/{golden}", bundle[path])


def test_sids_are_stable_and_derived_from_signature_ids(sigs):
    rules = sx.build_rules(sigs, ExportOptions())
    sids = [int(re.search(r"sid:(\d+);", r).group(1)) for r in rules]
    assert len(set(sids)) == len(sids)
    for rule, sid in zip(rules, sids, strict=True):
        assert f"kdt_signature_id {sid // 1000}," in rule
    # removing one signature does not renumber the others
    fewer = select(sigs, ["update", "management"])
    assert set(sx.build_rules(fewer, ExportOptions())) <= set(rules)


def test_rev_bumped_only_where_a_rule_changed(sigs, tmp_path):
    first = "\n".join(sx.build_rules(sigs, ExportOptions()))
    assert set(re.findall(r"rev:(\d+);", first)) == {"1"}
    again = sx.build_rules(sigs, ExportOptions(previous=first))
    assert "\n".join(again) == first  # nothing changed, nothing bumped
    changed = tmp_path / "pack.yaml"
    changed.write_text(PACK.read_text().replace("severity: medium", "severity: high"))
    new = sx.build_rules(load_signatures([str(changed)]), ExportOptions(previous=first))
    revs = {int(re.search(r"sid:(\d+);", r).group(1)): int(re.search(r"rev:(\d+);", r).group(1)) for r in new}
    assert {sid for sid, rev in revs.items() if rev == 2} == {sid for sid in revs if sid // 1000 == 1610002}
    assert all(rev == 1 for sid, rev in revs.items() if sid // 1000 != 1610002)


def test_priority_and_metadata_from_the_signature(sigs):
    rules = sx.build_rules(sigs, ExportOptions())
    low = [r for r in rules if "sid:1619001" in r]
    assert low and all("priority:3;" in r and "kdt_category vendor-domain," in r for r in low)
    # free text cannot break out of msg or metadata
    act = next(r for r in rules if "sid:1610001000;" in r)
    assert 'Activation \\"v2\\"\\; with a back\\\\slash, a comma"' in act
    assert "kdt_source_ref kaspersky-endpoints.md_1a," in act


def test_datasets_are_base64_lines_and_automatic_for_large_sets(tmp_path):
    names = "\n".join(f"        - n{i}.bulk.example.com" for i in range(100))
    pack = tmp_path / "big.yaml"
    pack.write_text(PACK.read_text().split("  - id: 1610002")[0].replace("names: [\"activation-v2.kaspersky.com\"]", "names:\n" + names))
    bundle = EXPORTERS["suricata"](load_signatures([str(pack)]), ExportOptions())
    assert list(bundle) == ["kaspersky.rules", "kdt-1610001.lst"]
    values = [base64.b64decode(line).decode() for line in bundle["kdt-1610001.lst"].decode().splitlines()]
    assert values[:2] == ["n0.bulk.example.com", "n0.bulk.example.com."] and len(values) == 200
    rules = bundle["kaspersky.rules"].decode()
    assert rules.count("dataset:isset,kdt-1610001,type string,load kdt-1610001.lst") == 4  # dns, tls, quic, http
    assert "to_lowercase" in rules
    no = EXPORTERS["suricata"](load_signatures([str(pack)]), ExportOptions(datasets=False))
    assert list(no) == ["kaspersky.rules"]


def test_too_many_rules_for_a_signature_says_use_datasets(tmp_path):
    names = "\n".join(f"        - n{i}.bulk.example.com" for i in range(300))
    pack = tmp_path / "big.yaml"
    pack.write_text(PACK.read_text().split("  - id: 1610002")[0].replace("names: [\"activation-v2.kaspersky.com\"]", "names:\n" + names))
    with pytest.raises(ConfigError, match="--datasets"):
        EXPORTERS["suricata"](load_signatures([str(pack)]), ExportOptions(datasets=False))


def test_suricata_update_source_layout(sigs):
    (name, data), = EXPORTERS["suricata-update"](sigs, ExportOptions()).items()
    assert name.endswith(".tar.gz")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert "rules/kaspersky.rules" in members
        assert tf.extractfile("rules/kaspersky.rules").read() == EXPORTERS["suricata"](sigs, ExportOptions())["kaspersky.rules"]
    assert tar_gz({"a": b"1"}) == tar_gz({"a": b"1"})  # reproducible


def test_unexpressible_wildcards_are_reported(sigs):
    for fmt in ("rpz", "hosts", "domains"):
        opts = ExportOptions()
        out = EXPORTERS[fmt](sigs, opts)
        assert any("ksn-*-geo.kaspersky-labs.com" in v.decode() for v in out.values())
        assert opts.notes and "1 wildcard" in opts.notes[0]


# -- Zeek: the documented formats ------------------------------------------------------------
def test_zeek_intel_file_follows_the_input_framework_format(sigs):
    """Zeek's ASCII input reader: a ``#fields`` header, one TAB between fields, every row as
    many fields as the header, ``-`` for an empty field, no TAB/newline inside a value, and
    ``Intel::DOMAIN`` indicators (docs.zeek.org: Intelligence Framework)."""
    text = zx.intel_file(sigs, ExportOptions())
    lines = text.split("\n")
    assert lines[-1] == "" and lines[0].startswith("#fields\t")
    fields = lines[0].split("\t")[1:]
    assert fields[:2] == ["indicator", "indicator_type"] and all(f.startswith("meta.") for f in fields[2:])
    rows = [line.split("\t") for line in lines[1:-1]]
    assert rows and all(len(r) == len(fields) for r in rows)
    assert all(v and v.strip() == v and "\r" not in v for r in rows for v in r)
    assert {r[1] for r in rows} == {"Intel::DOMAIN"}
    assert {r[0] for r in rows} == {"activation-v2.kaspersky.com", "s00.upd.kaspersky.com", "s01.upd.kaspersky.com", "s02.upd.kaspersky.com"}
    assert all(r[fields.index("meta.do_notice")] in ("T", "F") for r in rows)
    no_url = [r for r in rows if r[0].startswith("s0")]
    assert all(r[fields.index("meta.url")] == "-" for r in no_url)


def _zeek_tokens_ok(script: str) -> None:
    """Brackets balance outside string literals and patterns; every string literal closes."""
    stack, i, pairs = [], 0, {")": "(", "]": "[", "}": "{"}
    while i < len(script):
        ch = script[i]
        if ch == "#":
            i = script.index("\n", i)
        elif ch == '"':
            j = i + 1
            while script[j] != '"':
                assert script[j] != "\n", f"unterminated string at {i}"
                j += 2 if script[j] == "\\" else 1
            i = j
        elif ch == "/" and script[i + 1] == "^":  # a pattern /^...$/
            i = script.index("$/", i) + 1
        elif ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            assert stack and stack.pop() == pairs[ch], f"unbalanced {ch} at {i}"
        i += 1
    assert not stack


def test_zeek_script_is_well_formed_and_uses_documented_events(sigs):
    script = zx.main_script(sigs)
    _zeek_tokens_ok(script)
    # the log events of Zeek's base scripts (stable since Zeek 2.x), one record argument each
    for ev in ("event DNS::log_dns(rec: DNS::Info)", "event SSL::log_ssl(rec: SSL::Info)",
               "event HTTP::log_http(rec: HTTP::Info)"):
        assert ev in script
    assert '["upd.kaspersky.com"] = [$id=1610002' in script and '["kaspersky.com"] = [$id=1619001' in script
    assert "[$re=/^ksn-[^.]+-geo\\.kaspersky-labs\\.com$/" in script
    assert '$name="Vendor domain\\x09with a tab"' in script  # a TAB escaped inside a literal
    intel = zx.intel_file(sigs, ExportOptions())
    assert 'activation: Activation "v2"; with a back\\slash  a comma (kaspersky-endpoints.md §1a)' in intel
    assert 'redef Intel::read_files += { @DIR + "/kaspersky.intel" };' in script


def test_zeek_string_and_pattern_escaping():
    assert zx.zeek_string('a"b\\c\n\u00e9') == '"a\\"b\\\\c\\x0a\\xc3\\xa9"'
    assert zx.zeek_pattern("a?b*.x-y.com") == "/^a[^.]b[^.]+\\.x-y\\.com$/"


# -- the command -------------------------------------------------------------------------
def test_cli_export_stdout_file_directory_and_only(tmp_path, capsysbinary):
    assert main(["export", "suricata", "--signatures", str(PACK), "--only", "management"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert out.count("\nalert ") + out.startswith("alert ") == 2 and "ksc-port" in out
    assert main(["export", "zeek", "--signatures", str(PACK), "-o", str(tmp_path / "z")]) == 0
    assert (tmp_path / "z" / "kaspersky-traffic-detector" / "scripts" / "main.zeek").exists()
    assert main(["export", "rpz", "--signatures", str(PACK), "-o", str(tmp_path / "k.rpz")]) == 0
    assert (tmp_path / "k.rpz").read_text().startswith("; Kaspersky")
    # several files cannot go to standard output
    assert main(["export", "zeek", "--signatures", str(PACK)]) == 2
    assert "--output DIRECTORY" in capsysbinary.readouterr().err.decode()
    with pytest.raises(SystemExit):
        main(["export", "nosuch"])


def test_write_bundle_tar(tmp_path, sigs):
    bundle = EXPORTERS["zeek"](sigs, ExportOptions())
    out = tmp_path / "pkg.tar.gz"
    write_bundle(bundle, str(out))
    with tarfile.open(out) as tf:
        assert "kaspersky-traffic-detector/zkg.meta" in tf.getnames()
