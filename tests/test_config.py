"""The ``detector live`` configuration: YAML file + command line + defaults, strict."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from detector import config as cfg
from detector.cli import LIVE_DEST, build_parser
from detector.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "live.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_without_a_file() -> None:
    s = cfg.resolve({})
    assert s == cfg.LiveSettings()
    assert s.workers == 1 and s.settle == 0.5 and s.output == ("-",) and s.user == "nobody"
    assert set(s.origin.values()) == {"default"}


def test_every_key_and_the_command_line_wins(tmp_path: Path) -> None:
    path = write(tmp_path, """\
interface: [eth1, eth2]
workers: 2
buffer-size: 64MiB
snaplen: 2048
promisc: false
flow-head: 8
output: [alerts.json, "cef:syslog+tcp://siem.example:514", "ecs:sub/x.json", "-"]
spool: spool
ca: /etc/ssl/ca.pem
dedup-window: 600
settle: 0
stats-interval: 30
metrics: 127.0.0.1:9108
user: detector
signatures: [packs]
add_signatures: extra.yaml
""")
    s = cfg.resolve({}, path)
    assert s.interface == ("eth1", "eth2") and s.workers == 2 and s.buffer_size == 64 << 20
    assert (s.snaplen, s.promisc, s.flow_head) == (2048, False, 8)
    assert s.output == (str(tmp_path / "alerts.json"), "cef:syslog+tcp://siem.example:514", f"ecs:{tmp_path}/sub/x.json", "-")
    assert s.spool == str(tmp_path / "spool") and s.ca == "/etc/ssl/ca.pem"
    assert (s.dedup_window, s.settle, s.stats_interval) == (600.0, 0.0, 30.0)
    assert (s.metrics, s.user) == ("127.0.0.1:9108", "detector")
    assert s.signatures == (str(tmp_path / "packs"),) and s.add_signatures == (str(tmp_path / "extra.yaml"),)
    assert s.origin["workers"] == f"{path}:2" and s.origin["add_signatures"] == f"{path}:16"

    over = cfg.resolve({"workers": 4, "interface": ["eth9"], "promisc": True, "buffer_size": "1g"}, path)
    assert over.workers == 4 and over.interface == ("eth9",) and over.promisc is True
    assert over.buffer_size == 1 << 30 and over.origin["workers"] == "command line"
    assert over.snaplen == 2048  # from the file still


def test_unknown_key_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 2\ninterfaces: [eth0]\n")
    with pytest.raises(cfg.ConfigFileError) as exc:
        cfg.resolve({}, path)
    ((p, line, msg),) = exc.value.problems
    assert (p, line) == (path, 2) and msg.startswith("unknown key 'interfaces' (valid: interface, workers,")
    assert str(exc.value) == f"{path}:2: {msg}"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("workers: two\n", 1, "workers must be an integer, not 'two'"),
        ("workers: 0\n", 1, "workers must be between 1 and 64, not 0"),
        ("\n\nsnaplen: 12\n", 3, "snaplen must be between 96 and 262144, not 12"),
        ("buffer-size: lots\n", 1, "buffer-size: 'lots' is not a size"),
        ("buffer-size: 512\n", 1, "buffer-size must be between 1.04858e+06"),
        ("promisc: maybe\n", 1, "promisc must be true or false, not 'maybe'"),
        ("dedup-window: -5\n", 1, "dedup-window must be positive, not -5"),
        ("settle: 99\n", 1, "settle must be between 0 and 60, not 99"),
        ("metrics: 9108\n", 1, "metrics: '9108' is not HOST:PORT"),
        ("metrics: 300.0.0.1:9108\n", 1, "'300.0.0.1' is not an IP address"),
        ("metrics: '[::1]:99999'\n", 1, "port 99999 is not between 1 and 65535"),
        ("interface: [eth0, eth0]\n", 1, "an interface is listed twice"),
        ("interface: ['bad name']\n", 1, "'bad name' is not an interface name"),
        ("interface: []\n", 1, "interface must not be an empty list"),
        ("interface: [{a: b}]\n", 1, "interface: every item must be a string"),
        ("workers: [1, 2]\n", 1, "workers must be a single value, not a list"),
        ("user: ~\n", 1, "user must have a value"),
        ("workers: 1\nworkers: 2\n", 2, "duplicate key 'workers' (first set on line 1)"),
        ("buffer_size: 4MiB\nbuffer-size: 8MiB\n", 2, "duplicate key 'buffer-size'"),
        ("- a\n- b\n", 1, "the configuration must be a mapping of option: value"),
        ("workers: [1\n", 2, "YAML syntax:"),
        ("1: x\n", 1, "keys must be option names"),
    ],
)
def test_bad_values_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(cfg.ConfigFileError) as exc:
        cfg.resolve({}, path)
    assert [(p, ln) for p, ln, _ in exc.value.problems] == [(path, line)]
    assert message in exc.value.problems[0][2]


def test_all_problems_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 0\nnope: 1\nsnaplen: x\nsettle: 1\n")
    with pytest.raises(cfg.ConfigFileError) as exc:
        cfg.resolve({"workers": 1}, path)
    assert [ln for _, ln, _ in exc.value.problems] == [1, 2, 3]


def test_empty_file_and_unreadable_file(tmp_path: Path) -> None:
    assert cfg.resolve({}, write(tmp_path, "# nothing set\n")) == cfg.LiveSettings(config=str(tmp_path / "live.yaml"))
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(cfg.ConfigFileError, match=r"missing.yaml:1: cannot read: No such file"):
        cfg.resolve({}, missing)


def test_command_line_values_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"--workers must be between 1 and 64, not 99; --buffer-size: 'x' is not a size"):
        cfg.resolve({"workers": 99, "buffer_size": "x"})
    with pytest.raises(ConfigError, match=r"--metrics: 'localhost' is not HOST:PORT"):
        cfg.resolve({"metrics": "localhost"})


@pytest.mark.parametrize(("text", "size"), [("64MiB", 64 << 20), ("64M", 64 << 20), ("512k", 512 << 10),
                                            ("1G", 1 << 30), ("123", 123), (" 2 mib ", 2 << 20)])
def test_sizes(text: str, size: int) -> None:
    assert cfg.parse_size(text) == size


def test_changes_split_reloadable_from_restart(tmp_path: Path) -> None:
    a = cfg.resolve({}, write(tmp_path, "workers: 1\nsettle: 0\n"))
    b = cfg.resolve({}, write(tmp_path, "workers: 2\nsettle: 1\nadd-signatures: [x.yaml]\n"))
    hot, cold = a.changes(b)
    assert hot == ["settle", "add-signatures"] and cold == ["workers"]


def test_signature_paths_like_replay(tmp_path: Path) -> None:
    def packs(_: object) -> list[str]:
        return ["bundled.yaml"]

    assert cfg.signature_paths(cfg.LiveSettings(), packs) is None
    assert cfg.signature_paths(cfg.LiveSettings(add_signatures=("x.yaml",)), packs) == ["bundled.yaml", "x.yaml"]
    assert cfg.signature_paths(cfg.LiveSettings(signatures=("a",), add_signatures=("x",)), packs) == ["a", "x"]


def test_every_option_is_a_flag_and_a_key() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    live = sub.choices["live"]
    flags = {s for a in live._actions for s in a.option_strings}
    for o in cfg.OPTIONS:
        assert f"--{o.key}" in flags
    assert {a.dest for a in live._actions} >= {LIVE_DEST + o.dest for o in cfg.OPTIONS}
    assert {f"--{o.key}" for o in cfg.OPTIONS} | {"--config", "-h", "--help", "--no-promisc", "-i", "-o"} == flags


def test_bad_config_exits_2_with_file_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "interface: eth0\nworkerz: 2\n")
    r = subprocess.run([sys.executable, "-m", "detector", "live", "--config", path], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        f"{path}:2: unknown key 'workerz' (valid: {', '.join(o.key for o in cfg.OPTIONS)})",
        "detector: 1 problem(s) in the configuration; nothing was started",
    ]


def test_no_interface_exits_2() -> None:
    r = subprocess.run([sys.executable, "-m", "detector", "live"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr == "detector: no interface: give -i IFACE (or 'interface:' in the --config file)\n"
