"""The agent's state file `{state_dir}/jobs.json`, rewritten atomically after every change.

It holds what a restarted agent needs: the jobs it runs (to re-adopt them), the results of
the commands it executed (so a repeated cmd_id is answered, never executed twice), the
events the broker does not have yet, the exits the daemon has not acknowledged yet (a
JobExited must survive a broker crash and an agent restart: it goes out again until an
AckExit names it), the last exits (a late Cancel or a QueryJob is answered with them), and
the replay guard (newest daemon epoch, recent command nonces).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from dcsched.agents.errors import StateError
from dcsched.protocol.codec import ReplayState
from dcsched.protocol.messages import GpuFault, JobExited, JobStarted

MAX_COMMANDS = 5_000
MAX_EXITED = 1_000
# A daemon that never acknowledges must not grow the state file (and each resend) forever.
MAX_UNACKED = 1_000
STATE_VERSION = 1


class JobRecord(msgspec.Struct, kw_only=True):
    job_id: str
    node_rank: int
    pid: int  # the runner; its process group is the job's
    pgid: int
    starttime: int  # with pid, guards re-adoption against a recycled pid
    child_pid: int  # torchrun
    tag: str  # DCSCHED_JOB_TAG in every process of the job
    log_path: str
    status_file: str
    gpus: list[int] = []
    cmd_ids: list[str] = []
    started_ts: float = 0.0
    cancel_signal: int | None = None  # last signal a Cancel sent, if any
    cancel_reason: str = ""
    cgroup: str = ""  # the job's cgroup, relative to each hierarchy's root; "" = none
    warned_ts: float | None = None  # a Cancel's warning signal went to the workers then

    @property
    def key(self) -> str:
        return job_key(self.job_id, self.node_rank)


class CommandResult(msgspec.Struct, kw_only=True):
    cmd_id: str
    job_id: str
    ok: bool
    error: str = ""
    code: str = ""  # Ack.code


class AgentState(msgspec.Struct, kw_only=True):
    version: int = STATE_VERSION
    jobs: dict[str, JobRecord] = {}
    commands: list[CommandResult] = []  # oldest first, bounded
    outbox: list[JobStarted | JobExited | GpuFault] = []  # in publishing order
    unacked: list[JobExited] = []  # published, not yet acknowledged; oldest first, bounded
    exited: list[JobExited] = []  # the last exits, oldest first, bounded
    # newest daemon epoch accepted and recent nonces: a command is never accepted twice,
    # nor from an older daemon, across agent restarts
    replay: ReplayState = msgspec.field(default_factory=ReplayState)


def job_key(job_id: str, node_rank: int) -> str:
    return f"{job_id}#{node_rank}"


class StateStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "jobs.json"
        self.state = AgentState()
        self._commands: dict[str, CommandResult] = {}

    def load(self) -> AgentState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.state
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            self.state = msgspec.json.decode(raw, type=AgentState)
        except msgspec.DecodeError as exc:
            # A corrupt state file must not keep the agent from starting; keep it for a person.
            bad = self.path.with_suffix(".corrupt")
            os.replace(self.path, bad)
            raise StateError(f"{self.path} is corrupt ({exc}); moved to {bad}") from None
        self._commands = {c.cmd_id: c for c in self.state.commands}
        return self.state

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(msgspec.json.encode(self.state))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror}") from None

    # --- commands executed at most once -----------------------------------------------------

    def command(self, cmd_id: str) -> CommandResult | None:
        return self._commands.get(cmd_id)

    def remember_command(self, result: CommandResult) -> None:
        self._commands[result.cmd_id] = result
        self.state.commands.append(result)
        if len(self.state.commands) > MAX_COMMANDS:
            drop = self.state.commands[: len(self.state.commands) - MAX_COMMANDS]
            del self.state.commands[: len(drop)]
            for c in drop:
                self._commands.pop(c.cmd_id, None)

    # --- exits --------------------------------------------------------------------------------

    def remember_exit(self, ev: JobExited) -> None:
        self.state.exited.append(ev)
        del self.state.exited[: max(0, len(self.state.exited) - MAX_EXITED)]

    def keep_unacked(self, ev: JobExited) -> list[JobExited]:
        """Keeps a published exit until the daemon acknowledges it; returns those dropped to
        stay within MAX_UNACKED (oldest first)."""
        unacked = self.state.unacked
        if any(exit_key(u) == exit_key(ev) for u in unacked):
            return []
        unacked.append(ev)
        dropped = unacked[: max(0, len(unacked) - MAX_UNACKED)]
        del unacked[: len(dropped)]
        return dropped

    def ack_exit(self, job_id: str, node_rank: int, launch_id: str = "") -> int:
        """Forgets the exits an AckExit names, also one still waiting in the outbox (the daemon
        has it already); an empty launch_id names every run. Returns how many were forgotten."""

        def named(ev: object) -> bool:
            return (
                isinstance(ev, JobExited)
                and ev.job_id == job_id
                and ev.node_rank == node_rank
                and (not launch_id or ev.launch_id == launch_id)
            )

        st = self.state
        before = len(st.unacked) + len(st.outbox)
        # In place: the publishing loop holds these lists.
        st.unacked[:] = [e for e in st.unacked if not named(e)]
        st.outbox[:] = [e for e in st.outbox if not named(e)]
        return before - len(st.unacked) - len(st.outbox)

    def last_exits(self, job_id: str) -> list[JobExited]:
        """The latest exit of each node rank of a job that ran here."""
        latest: dict[int, JobExited] = {}
        for ev in self.state.exited:
            if ev.job_id == job_id:
                latest[ev.node_rank] = ev
        return [latest[r] for r in sorted(latest)]


def exit_key(ev: JobExited) -> tuple[str, int, str]:
    """One run's exit: a run (launch_id) of a node part ends once."""
    return ev.job_id, ev.node_rank, ev.launch_id
