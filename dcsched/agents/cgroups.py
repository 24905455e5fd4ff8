"""Each job's node part in a cgroup of its own: GPU device limits, kill-all, usage.

Like Slurm's ConstrainDevices: a job may open the NVIDIA device nodes (major 195) of the
GPUs it was given and no other; /dev/nvidiactl, nvidia-modeset, nvidia-uvm and every other
device stay open to it. Cancel kills the whole cgroup at once, so a process that left the
job's session (setsid, double fork) and cleared its environment is still found.

Backends, chosen once at start-up (`choose`, then `probe` tries it with a throwaway process):
- `systemd`: systemd runs the host (/run/systemd/system exists). The job becomes a transient
  scope `dcsched.slice/dcsched-<job>.scope` (D-Bus StartTransientUnit through busctl) with
  a device allow-list: every device group but NVIDIA's, plus the given GPUs' nodes.
- `v1`: the cgroup v1 `devices` controller is mounted. The job gets `dcsched/<job>` in the
  devices, freezer, memory and cpuacct hierarchies (and the cgroup2 one of a hybrid host,
  for cgroup.kill); devices.deny lists the GPUs it was not given.
- `v2`: only cgroup2, no systemd. cgroup.kill and usage only: v2 limits devices through a
  BPF program, which this agent does not load (the reason is logged).
- `none`: cgroups = "off", not root, nothing mounted, or the probe failed (a read-only
  mount in a container). Jobs run as before (process group and DCSCHED_JOB_TAG).

`<job>` is `<job id>_<node rank>_<tag>`: the launch's random tag keeps two agents on one
host (tests, the demo) from ever sharing a cgroup.

A job's cgroup is named by a path relative to each hierarchy's root (the same in all of
them), kept in the job's record: a restarted agent finds it again whatever it would choose
now. The pure part (parsing, choosing, device rules) is unit-tested without a cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dcsched.agents.procs import kill_pids

Kind = Literal["systemd", "v1", "v2", "none"]

NVIDIA_MAJOR = 195  # /dev/nvidia<minor>; nvidiactl is 195:255, nvidia-modeset 195:254
NVIDIA_CONTROL_MINORS = frozenset({254, 255})
PARENT = "dcsched"  # v1/v2 folder, under each hierarchy's root, that holds the jobs' cgroups
SLICE = "dcsched.slice"
# The v1 controllers a job joins: devices for the limits, freezer for an atomic kill, memory
# and cpuacct for usage. cpuset is left out (a new cpuset cgroup has no CPUs until set).
V1_JOINED = ("devices", "freezer", "memory", "cpuacct")
_SETTLE_S = 5.0


class CgroupError(Exception):
    """A job's cgroup could not be made or joined; the message says which file and why."""


# --- pure part ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hierarchy:
    mount: str
    version: Literal[1, 2]
    controllers: frozenset[str]  # v1: from the mount options; v2: empty (all in one tree)


# Mount options of a v1 hierarchy that are not controllers.
_NOT_CONTROLLERS = frozenset({
    "rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "strictatime", "xattr",
    "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods", "nsdelegate",
})  # fmt: skip


def parse_mounts(text: str) -> list[Hierarchy]:
    """The cgroup hierarchies in /proc/self/mounts."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount, fstype, options = fields[1], fields[2], fields[3].split(",")
        mount = mount.replace("\\040", " ")
        if fstype == "cgroup2":
            found.append(Hierarchy(mount, 2, frozenset()))
        elif fstype == "cgroup":
            ctrls = frozenset(o for o in options if o not in _NOT_CONTROLLERS and "=" not in o)
            if any(o.startswith("name=") for o in options) and not ctrls:
                continue  # a named hierarchy without controllers (name=systemd)
            found.append(Hierarchy(mount, 1, ctrls))
    return found


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the choice of backend depends on."""

    euid: int
    systemd_booted: bool  # /run/systemd/system exists: systemd is PID 1 (sd_booted)
    busctl: bool
    hierarchies: tuple[Hierarchy, ...]


@dataclass(frozen=True, slots=True)
class Choice:
    kind: Kind
    reason: str  # why this backend, in words for the log


def choose(setting: str, facts: HostFacts) -> Choice:
    if setting == "off":
        return Choice("none", "[agent] cgroups = off")
    if facts.euid != 0:
        return Choice("none", "the agent does not run as root")
    v2 = [h for h in facts.hierarchies if h.version == 2]
    if facts.systemd_booted and facts.busctl and v2:
        return Choice("systemd", "systemd runs this host: one transient scope per job")
    if any("devices" in h.controllers for h in facts.hierarchies if h.version == 1):
        extra = " (systemd runs the host but busctl is missing)" if facts.systemd_booted else ""
        return Choice("v1", f"the cgroup v1 devices controller is mounted{extra}")
    if v2:
        return Choice(
            "v2",
            "cgroup v2 without systemd: cancel kills the whole cgroup, but GPUs are not "
            "fenced (v2 device limits need systemd or a BPF program)",
        )
    return Choice("none", "no cgroup filesystem is mounted")


def parse_nvidia_information(text: str) -> tuple[str, int] | None:
    """(GPU UUID, device minor) from /proc/driver/nvidia/gpus/<pci>/information."""
    uuid = re.search(r"^GPU UUID:\s*(\S+)", text, re.MULTILINE)
    minor = re.search(r"^Device Minor:\s*(\d+)", text, re.MULTILINE)
    if uuid is None or minor is None:
        return None
    return uuid.group(1), int(minor.group(1))


def gpu_minors(gpus: Iterable[tuple[int, str]], minor_by_uuid: Mapping[str, int]) -> dict[int, int]:
    """GPU index -> minor of /dev/nvidia<minor>. NVML's index follows PCI order and need not
    be the minor; without the driver's word (a simulated host) the index is taken."""
    return {index: minor_by_uuid.get(uuid, index) for index, uuid in gpus}


def denied_minors(given: Iterable[int], host_minors: Iterable[int]) -> list[int]:
    """The NVIDIA minors a job may not open: every GPU of the host but its own."""
    return sorted(set(host_minors) - set(given) - NVIDIA_CONTROL_MINORS)


def v1_deny_rules(denied: Iterable[int]) -> list[str]:
    """Lines for devices.deny (one write each): the job's cgroup inherits "a *:* rwm"."""
    return [f"c {NVIDIA_MAJOR}:{m} rwm" for m in denied]


def parse_char_groups(proc_devices: str) -> dict[str, set[int]]:
    """Character device group name -> majors, from /proc/devices."""
    groups: dict[str, set[int]] = {}
    section = ""
    for line in proc_devices.splitlines():
        if line.endswith(":"):
            section = line
            continue
        parts = line.split(None, 1)
        if section.startswith("Character") and len(parts) == 2 and parts[0].isdigit():
            groups.setdefault(parts[1].strip(), set()).add(int(parts[0]))
    return groups


def scope_name(job_name: str) -> str:
    return f"dcsched-{job_name}.scope"


def systemd_device_allow(given: Iterable[int], proc_devices: str) -> list[tuple[str, str]]:
    """DeviceAllow= entries for a job's scope. systemd can only allow, so: every block device,
    every character device group but NVIDIA's own major, then the nodes of the given GPUs
    and NVIDIA's control nodes (the NVIDIA major again, minor by minor)."""
    groups = parse_char_groups(proc_devices)
    allow = [("block-*", "rwm")]
    allow += [(f"char-{g}", "rwm") for g, majors in sorted(groups.items())
              if NVIDIA_MAJOR not in majors]  # fmt: skip
    allow += [(f"/dev/nvidia{m}", "rw") for m in sorted(set(given))]
    allow += [("/dev/nvidiactl", "rw"), ("/dev/nvidia-modeset", "rw")]
    return allow


def busctl_start_scope(unit: str, pid: int, allow: list[tuple[str, str]]) -> list[str]:
    """argv of the D-Bus call that makes a transient scope holding `pid`."""
    props: list[list[str]] = [
        ["PIDs", "au", "1", str(pid)],
        ["Slice", "s", SLICE],
        ["Description", "s", f"dcsched job {unit}"],
        ["CollectMode", "s", "inactive-or-failed"],  # no failed scope left behind
        ["CPUAccounting", "b", "true"],
        ["MemoryAccounting", "b", "true"],
        ["DevicePolicy", "s", "closed"],
        ["DeviceAllow", "a(ss)", str(len(allow)), *(x for pair in allow for x in pair)],
    ]
    return [
        "busctl", "call", "--quiet", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
        unit, "fail", str(len(props)), *(x for p in props for x in p), "0",
    ]  # fmt: skip


def parse_flat_keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


# --- I/O part -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """What a job's cgroup says it used; None where this host's cgroups do not tell."""

    cpu_s: float | None  # CPU time of all its processes, user + system
    memory_bytes: int | None  # host memory in use, page cache that can be dropped left out


def host_facts(mounts: str | None = None) -> HostFacts:
    if mounts is None:
        mounts = Path("/proc/self/mounts").read_text()
    return HostFacts(
        euid=os.geteuid(),
        systemd_booted=os.path.isdir("/run/systemd/system"),
        busctl=shutil.which("busctl") is not None,
        hierarchies=tuple(parse_mounts(mounts)),
    )


def host_gpu_minors(
    gpus: Iterable[tuple[int, str]], dev: str = "/dev"
) -> tuple[dict[int, int], set[int]]:
    """(GPU index -> minor, every NVIDIA GPU minor on this host): the driver's word where it
    has one, /dev/nvidia<N> nodes for GPUs the inventory does not list."""
    by_uuid: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for d in Path("/proc/driver/nvidia/gpus").iterdir():
            with contextlib.suppress(OSError):
                info = parse_nvidia_information((d / "information").read_text())
                if info:
                    by_uuid[info[0]] = info[1]
    minors = gpu_minors(gpus, by_uuid)
    every = set(minors.values()) | set(by_uuid.values())
    with contextlib.suppress(OSError):
        for name in os.listdir(dev):
            if re.fullmatch(r"nvidia\d+", name):
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(dev, name))
                    if os.major(st.st_rdev) == NVIDIA_MAJOR:
                        every.add(os.minor(st.st_rdev))
    return minors, every


class Cgroups:
    """Makes, joins, kills, measures and removes jobs' cgroups on this host."""

    def __init__(
        self,
        choice: Choice,
        hierarchies: Iterable[Hierarchy],
        *,
        gpu_minors: Mapping[int, int] | None = None,
        host_minors: Iterable[int] = (),
        parent: str = PARENT,
    ) -> None:
        self.kind: Kind = choice.kind
        self.reason = choice.reason
        self.hierarchies = list(hierarchies)
        self.gpu_minors = dict(gpu_minors or {})
        self.host_minors = set(host_minors) | set(self.gpu_minors.values())
        self.parent = parent

    @classmethod
    def detect(
        cls, setting: str, gpus: Iterable[tuple[int, str]] = (), parent: str = PARENT
    ) -> Cgroups:
        facts = host_facts()
        minors, every = host_gpu_minors(gpus)
        cgroups = cls(
            choose(setting, facts),
            facts.hierarchies,
            gpu_minors=minors,
            host_minors=every,
            parent=parent,
        )
        cgroups.probe()
        return cgroups

    def probe(self) -> None:
        """Puts a throwaway process through a job's whole cycle (make, join, kill, remove)
        before any job depends on the backend: a container often mounts the cgroup
        filesystem read-only, and a systemd host may refuse us on D-Bus. A backend that
        fails falls back to none (jobs run, unfenced) with the reason, instead of failing
        every launch."""
        if self.kind in ("v1", "v2"):
            for h in self._joined():
                try:
                    (Path(h.mount) / self.parent).mkdir(exist_ok=True)
                except OSError as exc:
                    needed = "devices" in h.controllers if self.kind == "v1" else h.version == 2
                    if needed:
                        where = Path(h.mount) / self.parent
                        self.kind, self.reason = "none", f"cannot make {where}: {exc.strerror}"
                        return
                    # Not needed for the limits: left out (no kill-all or usage through it).
                    self.hierarchies.remove(h)
        if self.kind == "none":
            return
        sleep = shutil.which("sleep")
        argv = [sleep, "60"] if sleep else [sys.executable, "-c", "import time; time.sleep(60)"]
        sleeper = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        rel = ""
        try:
            rel = self.prepare(f"probe-{os.getpid()}-{sleeper.pid}", [])
            self.attach(rel, sleeper.pid)
            if sleeper.pid not in self.pids(rel):
                raise CgroupError(f"a process moved into {rel} is not listed there")
        except CgroupError as exc:
            self.kind, self.reason = "none", f"{self.kind} does not work here: {exc}"
        finally:
            sleeper.kill()
            sleeper.wait()
            if rel:
                self.remove(rel)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        if self.kind == "none":
            return f"job cgroups: none ({self.reason}); jobs run without GPU device limits"
        where = ", ".join(h.mount for h in self._joined())
        if self.kind == "systemd":
            where = f"{SLICE} (systemd)"
        return f"job cgroups: {self.kind} ({self.reason}); in {where}"

    def _joined(self) -> list[Hierarchy]:
        if self.kind == "v1":
            v1 = [h for h in self.hierarchies if h.version == 1 and h.controllers & set(V1_JOINED)]
            return v1 + [h for h in self.hierarchies if h.version == 2][:1]
        if self.kind in ("v2", "systemd"):
            return [h for h in self.hierarchies if h.version == 2][:1]
        return []

    def _dirs(self, rel: str) -> list[tuple[Hierarchy, Path]]:
        """The job's folders that exist now, in every mounted hierarchy."""
        out = []
        for h in self.hierarchies:
            d = Path(h.mount) / rel
            if rel and d.is_dir():
                out.append((h, d))
        return out

    # --- start ---------------------------------------------------------------------------------

    def prepare(self, name: str, gpus: Iterable[int]) -> str:
        """Makes the job's cgroup (empty, its device rules set) and returns its path relative
        to each hierarchy's root; "" when cgroups are off. Nothing is left on failure."""
        given = [self.gpu_minors.get(g, g) for g in gpus]
        if self.kind == "none":
            return ""
        if self.kind == "systemd":
            return f"{SLICE}/{scope_name(name)}"  # made with its first process, by attach()
        rel = f"{self.parent}/{name}"
        made: list[Path] = []
        try:
            for h in self._joined():
                base = Path(h.mount) / self.parent
                base.mkdir(exist_ok=True)
                if h.version == 2:
                    _enable_v2_controllers(base)
                d = base / name
                d.mkdir()
                made.append(d)
                if "devices" in h.controllers:
                    for rule in v1_deny_rules(denied_minors(given, self.host_minors)):
                        _write(d / "devices.deny", rule)
        except OSError as exc:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise CgroupError(f"cannot make the job's cgroup: {exc}") from None
        return rel

    def attach(self, rel: str, pid: int, gpus: Iterable[int] = ()) -> None:
        """Moves `pid` (which has run nothing of the user's yet) into the job's cgroup."""
        if not rel:
            return
        if self.kind == "systemd":
            unit = rel.rsplit("/", 1)[-1]
            given = [self.gpu_minors.get(g, g) for g in gpus]
            try:
                devices = Path("/proc/devices").read_text()
                argv = busctl_start_scope(unit, pid, systemd_device_allow(given, devices))
                subprocess.run(argv, check=True, capture_output=True, timeout=30, text=True)
            except (OSError, subprocess.SubprocessError) as exc:
                err = getattr(exc, "stderr", "") or exc
                raise CgroupError(f"systemd could not make scope {unit}: {err}") from None
            # The unit starts asynchronously: the process must be in it before it goes on.
            deadline = time.monotonic() + _SETTLE_S
            while unit not in _read(f"/proc/{pid}/cgroup"):
                if time.monotonic() > deadline:
                    raise CgroupError(f"process {pid} did not join scope {unit}")
                time.sleep(0.01)
            return
        dirs = self._dirs(rel)
        if not dirs:
            raise CgroupError(f"the job's cgroup {rel} is gone")
        for _, d in dirs:
            try:
                _write(d / "cgroup.procs", str(pid))
            except OSError as exc:
                raise CgroupError(f"cannot move process {pid} into {d}: {exc}") from None

    # --- watch and stop ------------------------------------------------------------------------

    def pids(self, rel: str) -> list[int]:
        """Every live process in the job's cgroup."""
        found: set[int] = set()
        for _, d in self._dirs(rel):
            found.update(int(p) for p in _read(str(d / "cgroup.procs")).split() if p.isdigit())
        return sorted(found)

    def kill(self, rel: str) -> None:
        """SIGKILL to every process in the cgroup at once: cgroup.kill where the kernel has it
        (v2, 5.14+), else freeze, kill each, thaw (v1), else kill until none is left."""
        dirs = self._dirs(rel)
        for h, d in dirs:
            if h.version == 2 and (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(d / "cgroup.kill", "1")
                    return
        freezer = next((d for h, d in dirs if "freezer" in h.controllers), None)
        if freezer is not None:
            with contextlib.suppress(OSError):
                _write(freezer / "freezer.state", "FROZEN")
                deadline = time.monotonic() + _SETTLE_S
                while _read(str(freezer / "freezer.state")).strip() != "FROZEN":
                    if time.monotonic() > deadline:
                        break  # stuck in FREEZING (a task in the kernel): kill anyway
                    time.sleep(0.01)
            try:
                kill_pids(self.pids(rel), signal.SIGKILL)
            finally:
                with contextlib.suppress(OSError):
                    _write(freezer / "freezer.state", "THAWED")  # SIGKILL is delivered on thaw
            return
        for _ in range(100):  # no freezer: a process may fork between the read and the kill
            pids = self.pids(rel)
            if not pids:
                return
            kill_pids(pids, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self, rel: str, timeout: float = _SETTLE_S) -> bool:
        """Kills what is left and removes the cgroup; False if it is still busy after
        `timeout` (a process stuck in the kernel) and stays for a later try."""
        if not rel:
            return True
        deadline = time.monotonic() + timeout
        self.kill(rel)
        while self.pids(rel):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        if rel.endswith(".scope"):
            return True  # systemd removes an empty scope itself (CollectMode)
        busy = False
        for _, d in self._dirs(rel):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY: the last process has left cgroup.procs but not quite exited yet.
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        busy = True
                        break
                    time.sleep(0.02)
        return not busy

    def sweep(self, keep: Iterable[str] = (), min_age_s: float = 60.0) -> list[str]:
        """Removes the empty job cgroups an agent that died left under the parent, except
        those in `keep`. Only empty ones can go (rmdir refuses the rest), and only those
        older than `min_age_s`: another agent on this host may have just made one for a job
        whose first process joins it a moment later. Returns the paths it removed, relative
        to the hierarchies' roots."""
        removed: set[str] = set()
        now = time.time()
        for h in self.hierarchies:
            base = Path(h.mount) / self.parent
            with contextlib.suppress(OSError):
                for d in base.iterdir():
                    rel = f"{self.parent}/{d.name}"
                    if rel in keep or not d.is_dir():
                        continue
                    with contextlib.suppress(OSError):
                        if (
                            now - d.stat().st_mtime >= min_age_s
                            and not _read(str(d / "cgroup.procs")).split()
                        ):
                            d.rmdir()
                            removed.add(rel)
        return sorted(removed)

    def usage(self, rel: str) -> Usage:
        """CPU time and memory of the job's cgroup (for dctop; not sent as telemetry yet)."""
        cpu_s: float | None = None
        mem: int | None = None
        for h, d in self._dirs(rel):
            if h.version == 2:
                stat = parse_flat_keyed(_read(str(d / "cpu.stat")))
                if "usage_usec" in stat and cpu_s is None:
                    cpu_s = stat["usage_usec"] / 1e6
                current = _read(str(d / "memory.current")).strip()
                if current.isdigit() and mem is None:
                    inactive = parse_flat_keyed(_read(str(d / "memory.stat"))).get(
                        "inactive_file", 0
                    )
                    mem = max(0, int(current) - inactive)
            elif "cpuacct" in h.controllers:
                ns = _read(str(d / "cpuacct.usage")).strip()
                if ns.isdigit():
                    cpu_s = int(ns) / 1e9
            elif "memory" in h.controllers:
                used = _read(str(d / "memory.usage_in_bytes")).strip()
                if used.isdigit():
                    stat = parse_flat_keyed(_read(str(d / "memory.stat")))
                    mem = max(0, int(used) - stat.get("total_inactive_file", 0))
        return Usage(cpu_s, mem)


def _write(path: Path, text: str) -> None:
    # One write() per value: the kernel takes one rule or pid per write to these files.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _enable_v2_controllers(parent: Path) -> None:
    """Turns on cpu and memory accounting for the jobs under `parent` where the host offers
    them (best effort: without them only cgroup.kill and cpu.stat's total work)."""
    available = set(_read(str(parent / "cgroup.controllers")).split())
    enabled = set(_read(str(parent / "cgroup.subtree_control")).split())
    for ctrl in ("cpu", "memory"):
        if ctrl in available and ctrl not in enabled:
            with contextlib.suppress(OSError):
                _write(parent / "cgroup.subtree_control", f"+{ctrl}")
