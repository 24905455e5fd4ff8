"""The pure part of job cgroups: what the host has, which backend, which devices."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from dcsched.agents.cgroups import (
    SLICE,
    Cgroups,
    Choice,
    Hierarchy,
    HostFacts,
    busctl_start_scope,
    choose,
    denied_minors,
    gpu_minors,
    parse_char_groups,
    parse_flat_keyed,
    parse_mounts,
    parse_nvidia_information,
    systemd_device_allow,
    v1_deny_rules,
)
from dcsched.protocol.config import Config, ConfigError, load_config
from tests.unit.agents.helpers import make_agent

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
/dev/vda / ext4 rw,relatime 0 0
"""
V2_ONLY = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"


def test_parse_mounts_finds_v1_controllers_and_v2_and_skips_named_hierarchies() -> None:
    assert parse_mounts(HYBRID) == [
        Hierarchy("/sys/fs/cgroup/cpu,cpuacct", 1, frozenset({"cpu", "cpuacct"})),
        Hierarchy("/sys/fs/cgroup/devices", 1, frozenset({"devices"})),
        Hierarchy("/sys/fs/cgroup/freezer", 1, frozenset({"freezer"})),
        Hierarchy("/sys/fs/cgroup/unified", 2, frozenset()),
    ]
    assert parse_mounts(V2_ONLY) == [Hierarchy("/sys/fs/cgroup", 2, frozenset())]
    assert parse_mounts("") == []


def facts(mounts: str, *, euid: int = 0, systemd: bool = False, busctl: bool = True) -> HostFacts:
    return HostFacts(euid, systemd, busctl, tuple(parse_mounts(mounts)))


@pytest.mark.parametrize(
    ("setting", "host", "kind", "why"),
    [
        ("off", facts(HYBRID), "none", "cgroups = off"),
        ("auto", facts(HYBRID, euid=1000), "none", "not run as root"),
        ("auto", facts(""), "none", "no cgroup filesystem"),
        ("auto", facts(HYBRID), "v1", "devices controller"),
        ("auto", facts(V2_ONLY, systemd=True), "systemd", "transient scope"),
        ("auto", facts(HYBRID, systemd=True), "systemd", "transient scope"),
        ("auto", facts(HYBRID, systemd=True, busctl=False), "v1", "busctl is missing"),
        ("auto", facts(V2_ONLY), "v2", "GPUs are not fenced"),
    ],
)
def test_choose(setting: str, host: HostFacts, kind: str, why: str) -> None:
    choice = choose(setting, host)
    assert choice.kind == kind and why in choice.reason


def test_gpu_minors_come_from_the_driver_else_the_index() -> None:
    info = (
        "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 123\n"
        "GPU UUID: \t GPU-aaaa-bbbb\nVideo BIOS: \t 96.00.30.00.01\nDevice Minor: \t 3\n"
    )
    assert parse_nvidia_information(info) == ("GPU-aaaa-bbbb", 3)
    assert parse_nvidia_information("Model: x\n") is None
    # NVML's index 0 is the GPU at minor 3; a GPU the driver does not list keeps its index.
    assert gpu_minors([(0, "GPU-aaaa-bbbb"), (1, "GPU-cccc")], {"GPU-aaaa-bbbb": 3}) == {
        0: 3,
        1: 1,
    }


def test_device_rules_deny_only_the_gpus_not_given() -> None:
    assert denied_minors([0, 2], range(4)) == [1, 3]
    assert denied_minors([], [0, 1]) == [0, 1]
    assert denied_minors(range(4), range(4)) == []
    # nvidiactl (255) and nvidia-modeset (254) share the major: never denied.
    assert denied_minors([0], [0, 1, 254, 255]) == [1]
    assert v1_deny_rules([1, 3]) == ["c 195:1 rwm", "c 195:3 rwm"]


PROC_DEVICES = """\
Character devices:
  1 mem
  5 /dev/tty
136 pts
195 nvidia-frontend
231 infiniband_verbs
510 nvidia-uvm

Block devices:
  7 loop
259 blkext
"""


def test_systemd_allow_list_keeps_every_device_but_other_gpus() -> None:
    assert parse_char_groups(PROC_DEVICES) == {
        "mem": {1},
        "/dev/tty": {5},
        "pts": {136},
        "nvidia-frontend": {195},
        "infiniband_verbs": {231},
        "nvidia-uvm": {510},
    }
    allow = systemd_device_allow([2], PROC_DEVICES)
    names = [name for name, _ in allow]
    assert "char-nvidia-frontend" not in names  # that would open every GPU
    assert {"char-infiniband_verbs", "char-nvidia-uvm", "char-pts", "block-*"} <= set(names)
    assert ("/dev/nvidia2", "rw") in allow and ("/dev/nvidiactl", "rw") in allow
    assert "/dev/nvidia0" not in names


def test_busctl_call_has_a_consistent_signature() -> None:
    argv = busctl_start_scope("dcsched-j1_0_ab.scope", 4242, [("block-*", "rwm")])
    i = argv.index("ssa(sv)a(sa(sv))")
    assert argv[i + 1 : i + 3] == ["dcsched-j1_0_ab.scope", "fail"]
    count = int(argv[i + 3])
    # Walk the properties as busctl will: name, signature, then the value's words.
    rest, names = argv[i + 4 : -1], []
    for _ in range(count):
        name, sig = rest[0], rest[1]
        names.append(name)
        width = {"s": 1, "b": 1}.get(sig)
        if sig == "au":
            width = 1 + int(rest[2])
        elif sig == "a(ss)":
            width = 1 + 2 * int(rest[2])
        assert width is not None, sig
        rest = rest[2 + width :]
    assert rest == [] and argv[-1] == "0"  # no auxiliary units
    assert names[:2] == ["PIDs", "Slice"] and "DevicePolicy" in names
    assert argv[i + 4 : i + 8] == ["PIDs", "au", "1", "4242"]
    assert SLICE in argv


def test_parse_flat_keyed() -> None:
    assert parse_flat_keyed("usage_usec 1500\nuser_usec 1000\nbad\nx y\n") == {
        "usage_usec": 1500,
        "user_usec": 1000,
    }


def test_describe_says_which_backend_or_why_none() -> None:
    hs = parse_mounts(HYBRID)
    on = Cgroups(choose("auto", facts(HYBRID)), hs)
    assert on.enabled
    text = on.describe()
    assert text.startswith("job cgroups: v1 (the cgroup v1 devices controller is mounted)")
    assert "/sys/fs/cgroup/devices" in text and "/sys/fs/cgroup/unified" in text
    off = Cgroups(choose("auto", facts(HYBRID, euid=1000)), hs)
    assert not off.enabled and off.prepare("j1_0_t", [0]) == ""
    assert "none (the agent does not run as root); jobs run without GPU device limits" in (
        off.describe()
    )


def test_the_agent_takes_the_setting_from_its_config(tmp_path: Path, agent_config: Config) -> None:
    cfg = msgspec.structs.replace(
        agent_config, agent=msgspec.structs.replace(agent_config.agent, cgroups="off")
    )
    cgroups = make_agent(cfg, tmp_path).launcher.cgroups
    assert cgroups.kind == "none" and "[agent] cgroups = off" in cgroups.describe()
    conf = tmp_path / "bad.toml"
    conf.write_text('[agent]\ncgroups = "yes"\n')
    with pytest.raises(ConfigError, match=r"cgroups"):
        load_config(str(conf))


def test_a_backend_that_does_not_work_here_falls_back_before_any_launch(tmp_path: Path) -> None:
    # /dev/null stands in for a read-only cgroup mount: nothing can be made under it.
    broken = Hierarchy("/dev/null", 1, frozenset({"devices"}))
    cg = Cgroups(Choice("v1", "test"), [broken], parent="p")
    cg.probe()
    assert cg.kind == "none" and "cannot make /dev/null/p" in cg.reason
    assert cg.prepare("j1_0_t", [0]) == ""  # jobs still run
    # A folder that is no cgroup filesystem: a process cannot join it.
    cg = Cgroups(Choice("v1", "test"), [Hierarchy(str(tmp_path), 1, frozenset({"devices"}))])
    cg.probe()
    assert cg.kind == "none" and cg.reason.startswith("v1 does not work here: cannot move")
    assert [p.name for p in (tmp_path / "dcsched").iterdir()] == []  # the probe cleaned up
