"""The install path of docs/admin-guide.md, tried for real: the wheel installed into a fresh
virtualenv that stands for /opt/dcsched, with only the agent's dependencies (a GPU host). Its
console scripts, its `--version`, the message of a part that is not installed, and the
systemd units (which `systemd-analyze verify` checks against that install)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import distribution, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SCRIPTS = sorted(PROJECT["scripts"])
UNITS = ("dcd.service", "dc-agent.service")
PREFIX = "/opt/dcsched"
PIP = (sys.executable, "-m", "pip")


def _closure(names: list[str]) -> set[str]:
    """These distributions and everything they need (not their extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        for req in requires(name) or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[<>=!~\[; (]", req, maxsplit=1)[0])
    return seen


def _names(reqs: list[str]) -> list[str]:
    return [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in reqs]


def build_wheel(d: Path) -> Path:
    """The project's wheel, built from a copy of the source (a build leaves build/ behind)."""
    src = d / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "__pycache__", "*.egg-info", ".*_cache", "tests"
        ),
    )
    wheels = d / "wheels"
    subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        timeout=300,
    )
    return next(wheels.glob("dcsched-*.whl"))


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    """A virtualenv with dcsched (the wheel built here) and only what `dcsched[agent]`
    pulls in: the dependencies are linked from this environment instead of downloaded."""
    d = tmp_path_factory.mktemp("install")
    venv = d / "opt-dcsched"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [*PIP, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    deps = d / "agent-deps"
    deps.mkdir()
    agent = _names(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["agent"])
    for name in _closure(agent):
        for f in distribution(name).files or []:
            top = f.parts[0]
            src = Path(str(f.locate())).parents[len(f.parts) - 1] / top
            skip = top.endswith(".dist-info") or top in ("..", "__pycache__")
            if not skip and not (deps / top).exists():
                (deps / top).symlink_to(src)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "agent-deps.pth").write_text(f"{deps}\n")
    yield venv


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
        check=False,
    )


def test_every_command_has_version(gpu_host: Path) -> None:
    for script in SCRIPTS:
        out = _run(gpu_host, script, "--version")
        assert (out.returncode, out.stdout.strip()) == (0, f"{script} 0.1.0"), out.stderr


def test_a_part_not_installed_says_which_extra_to_install(gpu_host: Path) -> None:
    out = _run(gpu_host, "dctop")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "dctop: this install lacks the 'tui' part (textual is not installed). "
        "Install it into the same environment: pip install 'dcsched[tui]'"
    )
    out = _run(gpu_host, "dcd", "run", "--config", "/nonexistent.toml")
    assert out.returncode == 2
    assert "pip install 'dcsched[daemon]'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # What a GPU host needs works: the agent's and the clients' commands start.
    for script in ("dc-agent", "dcctl", "dcsub"):
        out = _run(gpu_host, script, "--help")
        assert out.returncode == 0, (script, out.stderr)


def test_units_and_docs_are_installed_where_the_units_look(gpu_host: Path) -> None:
    for unit in UNITS:
        text = (gpu_host / "share" / "dcsched" / "systemd" / unit).read_text()
        assert text == (ROOT / "systemd" / unit).read_text()
        doc = re.search(r"^Documentation=file://(\S+)$", text, re.M)
        assert doc and doc.group(1).startswith(PREFIX + "/")
        assert (gpu_host / doc.group(1).removeprefix(PREFIX + "/")).is_file()
        start = re.search(r"^ExecStart=(\S+)", text, re.M)
        assert start and start.group(1).startswith(PREFIX + "/bin/")
        assert (gpu_host / start.group(1).removeprefix(PREFIX + "/")).is_file()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_passes_on_both_units(gpu_host: Path, tmp_path: Path) -> None:
    # verify needs no running systemd; it checks ExecStart's binary, so the units are pointed
    # at this install instead of /opt/dcsched. It exits 0 on warnings: any output fails.
    for unit in UNITS:
        text = (gpu_host / "share" / "dcsched" / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace(PREFIX, str(gpu_host)))
    out = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    bad = tmp_path / "bad.service"
    bad.write_text((tmp_path / "dcd.service").read_text().replace("Type=notify", "Type=notifyy"))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, check=False
    )
    assert "notifyy" in out.stderr  # the check sees a broken unit


def test_units_fit_the_daemon_and_the_agent() -> None:
    dcd = (ROOT / "systemd" / "dcd.service").read_text()
    agent = (ROOT / "systemd" / "dc-agent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=dcsched",
        "StateDirectory=dcsched\n",
        "RuntimeDirectory=dcsched\n",
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=yes",
    ):
        assert line in dcd, line
    assert "Restart=on-failure" in agent and "StateDirectory=dcsched-agent" in agent
    assert "Type=notify" in agent and "WatchdogSec=" in agent and "NotifyAccess=main" in agent
    assert "User=" not in agent  # root: it starts jobs as their users
    kept = re.search(r"^CapabilityBoundingSet=(.+)$", agent, re.M)
    assert kept
    for cap in kept.group(1).split():  # each capability kept says why
        assert re.search(rf"^#.*{cap.removeprefix('CAP_')}", agent, re.M), cap


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_the_agents_capabilities_are_enough_to_start_a_job_as_its_user() -> None:
    """The launcher's own test of a job run as `nobody`, under exactly the capability bounding
    set that dc-agent.service keeps (and without CAP_CHOWN, to show the check bites)."""
    unit = (ROOT / "systemd" / "dc-agent.service").read_text()
    kept = re.search(r"^CapabilityBoundingSet=(.+)$", unit, re.M)
    assert kept
    caps = [c.removeprefix("CAP_").lower() for c in kept.group(1).split()]

    def run(capabilities: list[str]) -> subprocess.CompletedProcess[str]:
        bounding = ",".join(["-all", *(f"+{c}" for c in capabilities)])
        setpriv = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all"]
        test = str(ROOT / "tests" / "unit" / "agents" / "test_launcher.py")
        pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "submitting_user"]
        return subprocess.run(
            [*setpriv, sys.executable, *pytest_args, test],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )

    out = run(caps)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr
    assert run([c for c in caps if c != "chown"]).returncode != 0
