"""Typed, versioned messages on the bus. Every payload is one tagged msgspec Struct."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PROTOCOL_VERSION = 1
# An integer the daemon stores: SQLite's range. msgspec reads JSON integers up to 2**64 - 1;
# a larger one is refused at decoding (a counted drop), not by the store (a failed write).
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    v: int = PROTOCOL_VERSION


# --- telemetry: agent -> daemon, QoS 0, latest wins --------------------------------------


#: a process's command line is cut to this many characters on the wire (telemetry budget)
CMD_MAX = 160


class GpuProc(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A process using a GPU (NVML's running compute processes; the sim backend invents them
    for the jobs it runs). user and cmd come from /proc; empty when it cannot be read."""

    pid: int
    user: str = ""
    cmd: str = ""  # the command line, space-joined, cut to CMD_MAX
    gpu_mem: int | None = None  # bytes of this GPU's memory it holds


class GpuSample(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One GPU at one instant. None means the driver does not report that field (N/A)."""

    index: Int64
    uuid: str
    util: float | None = None  # percent
    mem_used: Int64 | None = None  # bytes
    mem_total: Int64 | None = None  # bytes
    temp_c: float | None = None
    power_w: float | None = None
    sm_clock_mhz: int | None = None
    energy_j: float | None = None  # cumulative since driver load
    pids: list[int] = []
    health: str = "ok"  # "ok" | "lost" | "xid" | "ecc" | "thermal" | "power"
    procs: list[GpuProc] = []  # added in 0.2; older agents send none


class JobProcs(msgspec.Struct, kw_only=True, omit_defaults=True):
    job_id: str
    node_rank: int
    gpus: list[int] = []
    pids: list[int] = []
    # over the job's process tree on this host (added in 0.2; None from older agents)
    cpu_pct: float | None = None  # percent of one core since the last sample
    rss: int | None = None  # bytes of host memory resident


class Telemetry(Message, tag="telemetry"):
    host: str
    ts: float
    seq: int
    gpus: list[GpuSample]
    jobs: list[JobProcs] = []
    simulated: bool = False


# --- status: agent -> daemon, QoS 1, retained; the MQTT will sets it offline --------------


class GpuInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    uuid: str
    model: str
    mem_total: int | None = None


class HostStatus(Message, tag="status"):
    host: str
    state: Literal["online", "offline"]
    ts: float
    addr: str = ""
    agent_version: str = ""
    backend: str = ""
    driver: str = ""
    simulated: bool = False
    gpus: list[GpuInfo] = []
    running_jobs: list[str] = []  # job ids with a live process group here, for reconciliation


# --- commands: daemon -> agent, QoS 1, signed; each cmd_id is executed at most once ---------


class Launch(Message, tag="launch"):
    cmd_id: str
    job_id: str
    node_rank: int
    nnodes: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    gpus: list[int]
    command: list[str]
    workdir: str = ""
    env: dict[str, str] = {}
    user: str = ""
    python: str | None = None  # interpreter with torch; None: `torchrun` from the agent's PATH
    no_python: bool = False  # the command is a program, not a script: torchrun --no-python


class Cancel(Message, tag="cancel"):
    cmd_id: str
    job_id: str
    grace_s: float = 10.0
    reason: str = "cancelled"
    # The job's warning signal (job file `signal`): sent to the workers first, and SIGTERM
    # only `signal_lead_s` later (or once they have exited), so the job can checkpoint.
    signal: int | None = None
    signal_lead_s: float = 0.0


class Signal(Message, tag="signal"):
    """Send `signal` to the job's workers (torchrun's children, by pid), not to torchrun:
    torchrun passes on only SIGTERM, SIGINT, SIGHUP and SIGQUIT, and dies of the others."""

    cmd_id: str
    job_id: str
    signal: int


class FetchLog(Message, tag="fetch_log"):
    """Ask for a piece of a node's log; offset < 0 means the last max_bytes."""

    cmd_id: str
    job_id: str
    node_rank: int
    offset: int = -1
    max_bytes: int = 64 * 1024


class AckExit(Message, tag="ack_exit"):
    """The daemon has journaled this exit: the agent may forget it. Until then the agent
    publishes the exit again every `exit_resend_s` and after every reconnect (an end-to-end
    ack: the broker having it is not enough, a broker crash loses what it held)."""

    cmd_id: str
    job_id: str
    node_rank: int
    launch_id: str = ""


class QueryJob(Message, tag="query_job"):
    """What does this host know of a job? Answered with a JobReport (never remembered, as
    FetchLog). The daemon asks before it ever declares a job vanished from a node."""

    cmd_id: str
    job_id: str


class LogNotice(Message, tag="log_notice"):
    """A line for a job's log from the daemon (the idle-GPU warning): the agent appends it to
    the node's log, where the job's owner reads it. Fire and forget, never remembered."""

    cmd_id: str
    job_id: str
    node_rank: int
    text: str


Command = Launch | Cancel | Signal | FetchLog | AckExit | QueryJob | LogNotice


class SignedCommand(msgspec.Struct, kw_only=True, tag="signed", tag_field="type"):
    """A command's encoded bytes with an HMAC over (ts, nonce, host, epoch, body): `host` is
    the agent it is for, `epoch` the sending daemon's (see docs/security.md)."""

    ts: float
    nonce: str
    body: bytes
    host: str = ""
    epoch: int = 0
    mac: str = ""


# --- events: agent -> daemon, QoS 1 --------------------------------------------------------


class Ack(Message, tag="ack"):
    host: str
    cmd_id: str
    job_id: str
    ok: bool = True
    error: str = ""
    # why a command was refused, for the daemon to act on: "" (see error), "port_in_use"
    # (the rank-0 host could not bind the master port: retried with another port), "invalid"
    # (the launch could never run here: the job fails at once), "unhealthy" (the host's health
    # check failed: the job goes back to the queue, the node is drained)
    code: str = ""


class JobStarted(Message, tag="job_started"):
    host: str
    job_id: str
    node_rank: Int64
    pid: Int64
    ts: float
    log_path: str = ""
    # cmd_id of the Launch that began this run: tells a requeued job's runs apart
    launch_id: str = ""


class JobExited(Message, tag="job_exited"):
    host: str
    job_id: str
    node_rank: Int64
    ts: float
    exit_code: Int64 | None = None
    signal: Int64 | None = None
    reason: str = ""  # "", "cancelled", "launch_failed", "lost"
    launch_id: str = ""


class GpuFault(Message, tag="gpu_fault"):
    host: str
    gpu_index: int
    ts: float
    kind: str  # "xid" | "ecc" | "thermal" | "power" | "lost"
    code: int | None = None
    detail: str = ""


class LogChunk(Message, tag="log_chunk"):
    host: str
    cmd_id: str
    job_id: str
    node_rank: int
    offset: int
    size: int  # the file's size when read
    data: str = ""
    error: str = ""
    # where the next read should start: offset + the bytes `data` was decoded from
    next_offset: int = -1


class JobReport(Message, tag="job_report"):
    """The answer to QueryJob: the node ranks of the job running here, and the remembered
    exits (latest per rank) of those that ended. A rank in neither is unknown here."""

    host: str
    cmd_id: str
    job_id: str
    running: list[int] = []
    exits: list[JobExited] = []


Event = Ack | JobStarted | JobExited | GpuFault | LogChunk | JobReport
