"""What /proc says about a job's processes.

A job is found by a tag in its environment (DCSCHED_JOB_TAG) as well as by its process
group: torchrun starts every worker in a session of its own, so the group alone would miss
the workers, and a tag survives reparenting when torchrun dies first.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TAG_VAR = "DCSCHED_JOB_TAG"


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgid: int
    starttime: int  # clock ticks after boot: with the pid, names one process for good
    cpu_ticks: int = 0  # user + system time, clock ticks
    rss_pages: int = 0


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return ProcStat(
            pid,
            rest[0],
            int(rest[1]),
            int(rest[2]),
            int(rest[19]),
            int(rest[11]) + int(rest[12]),
            int(rest[21]),
        )
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, starttime: int | None = None) -> bool:
    """True while the process runs; a zombie or a recycled pid counts as gone."""
    st = read_stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return starttime is None or st.starttime == starttime


def _read_tag(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:  # gone, or another user's process while the agent is not root
        return None
    key = TAG_VAR.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace")
    return None


class ProcScanner:
    """Maps job tags to live pids; caches each process's tag by (pid, starttime)."""

    def __init__(self) -> None:
        self._tags: dict[tuple[int, int], str | None] = {}
        self._lock = threading.Lock()  # telemetry and cleanup scan from worker threads

    def scan(self, jobs: Mapping[str, int]) -> dict[str, list[int]]:
        """`jobs` maps tag -> process group id; returns tag -> sorted live pids."""
        with self._lock:
            return self._scan(jobs)

    def _scan(self, jobs: Mapping[str, int]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {tag: [] for tag in jobs}
        by_pgid = {pgid: tag for tag, pgid in jobs.items() if pgid > 0}
        seen: set[tuple[int, int]] = set()
        for pid in _pids():
            st = read_stat(pid)
            if st is None or st.state in ("Z", "X"):
                continue
            key = (pid, st.starttime)
            seen.add(key)
            if key not in self._tags:
                self._tags[key] = _read_tag(pid)
            tag = self._tags[key]
            if tag in found:
                found[tag].append(pid)
            elif st.pgid in by_pgid:
                found[by_pgid[st.pgid]].append(pid)
        # Forget processes that are gone so the cache stays as big as the process table.
        for key in self._tags.keys() - seen:
            del self._tags[key]
        return found

    def pids_of(self, tag: str, pgid: int) -> list[int]:
        return self.scan({tag: pgid})[tag]


CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def usage(pids: Iterable[int]) -> tuple[int, int]:
    """(CPU clock ticks used, resident bytes) summed over these processes (gone ones: 0)."""
    ticks = rss = 0
    for pid in pids:
        st = read_stat(pid)
        if st is not None:
            ticks += st.cpu_ticks
            rss += st.rss_pages * PAGE
    return ticks, rss


class CpuMeter:
    """Each job's CPU use between two samples, as percent of one core."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def percent(self, key: str, now: float, ticks: int) -> float | None:
        last = self._last.get(key)
        self._last[key] = (now, ticks)
        if last is None or now <= last[0] or ticks < last[1]:
            return None  # the first sample (or the set of processes shrank): no rate yet
        return round((ticks - last[1]) / CLK_TCK / (now - last[0]) * 100, 1)

    def forget_except(self, keys: Iterable[str]) -> None:
        keep = set(keys)
        for k in self._last.keys() - keep:
            del self._last[k]


class ProcNames:
    """A process's user and command line, read from /proc once per (pid, starttime)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cache: dict[tuple[int, int], tuple[str, str]] = {}
        self._users: dict[int, str] = {}

    def get(self, pid: int) -> tuple[str, str]:
        st = read_stat(pid)
        if st is None:
            return "", ""
        key = (pid, st.starttime)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            hit = self._cache[key] = (self._user(pid), self._cmd(pid))
        return hit

    def _user(self, pid: int) -> str:
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return ""
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def _cmd(self, pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read(4 * self.limit)
        except OSError:
            return ""
        text = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        return text[: self.limit]


def _pids() -> Iterable[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def kill_group(pgid: int, sig: int) -> None:
    if pgid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        if pid > 1 and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


SIGNAL_NAMES = {int(s): s.name for s in signal.Signals}
