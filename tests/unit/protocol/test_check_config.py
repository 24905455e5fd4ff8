"""`dcd check-config` and `dc-agent check-config`: every problem, with its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcsched.agents import main as agent_main
from dcsched.daemon import main as dcd_main
from dcsched.protocol.config import ConfigError, load_config, locate

BAD = """\
[broker]
url = "http://x"

[cluster]
key_file = "/nonexistent/key"

[daemon]
port_range = "2000-1000"
drain_on = ["xid", "fire"]

[agent]
backend = "sim"
health_check = ["/no/such/check"]
interval_s = 0

[scheduler.weights]
agee = 1
"""


def test_locate_finds_keys_tables_and_dotted_keys() -> None:
    text = "# c\n[daemon]\nsocket_mode = 1\n[scheduler]\naccounts.ml.shares = 2\n"
    assert locate(text, "daemon.socket_mode") == 3
    assert locate(text, "daemon.admins") == 2  # not set: its table
    assert locate(text, "scheduler.accounts.ml.shares") == 5
    assert locate(text, "agent.host") is None


def test_load_config_says_the_line(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[daemon]\nsocket = '/x'\nportz = 1\n")
    with pytest.raises(ConfigError, match=rf"^{f}:3: Object contains unknown field `portz`"):
        load_config(str(f))
    f.write_text("[daemon]\nsocket = \n")
    with pytest.raises(ConfigError, match=rf"^{f}:2: "):
        load_config(str(f))


def test_dcd_check_config_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(BAD)
    assert dcd_main.main(["check-config", "--config", str(f)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{f}:2: broker.url: expected mqtt://HOST:PORT or mqtts://HOST:PORT, e.g. mqtt://127.0.0.1:1883",
        f"{f}:5: cluster.key_file: /nonexistent/key: No such file or directory",
        f"{f}:8: daemon.port_range: port_range = '2000-1000' is outside 1024-65535",
        f"{f}:17: scheduler.weights.agee: unknown key; expected one of age, fairshare, job_size,"
        " qos, nice",
        f"{f}:9: daemon.drain_on: unknown fault 'fire'; faults are xid, ecc, thermal, power, lost",
    ]


def test_dc_agent_check_config_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(BAD)
    assert agent_main.main(["check-config", "--config", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{f}:13: agent.health_check: /no/such/check: not found or not executable" in out
    assert f"{f}:14: agent.interval_s: must be > 0" in out


def test_a_good_file_is_ok_with_its_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k"
    key.write_text("x" * 32)
    f = tmp_path / "good.toml"
    f.write_text(
        f'[cluster]\nkey_file = "{key}"\n[agent]\nbackend = "sim"\ntorchrun = "/bin/true"\n'
    )
    assert dcd_main.main(["check-config", "--config", str(f)]) == 0
    assert agent_main.main(["check-config", "--config", str(f)]) == 0
    assert capsys.readouterr().out == f"{f}: ok for dcd\n{f}: ok for dc-agent\n"
    example = Path(__file__).parents[3] / "docs" / "dcsched.example.toml"
    assert dcd_main.main(["check-config", "--config", str(example)]) == 0


def test_dcd_check_config_names_a_listener_without_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "tls.toml"
    f.write_text('[daemon]\nlisten = "0.0.0.0:6818"\n')
    assert dcd_main.main(["check-config", "--config", str(f)]) == 1
    assert f"{f}:2: daemon.listen: listen is set but tls_cert_file/tls_key_file are not" in (
        capsys.readouterr().out
    )
    f.write_text(
        '[daemon]\nlisten = "0.0.0.0:6818"\ntls_cert_file = "/no/cert"\ntls_key_file = "/no/key"\n'
    )
    assert dcd_main.main(["check-config", "--config", str(f)]) == 1
    assert f"{f}:3: daemon.tls_cert_file: tls_cert_file/tls_key_file (/no/cert, /no/key)" in (
        capsys.readouterr().out
    )
