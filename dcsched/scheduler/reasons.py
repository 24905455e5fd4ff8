"""A pending reason with its numbers (asked vs free, use vs limit), for `explain`.

Reason codes stay Slurm's (`dcctl queue` shows the code); `explain` adds these words. The
numbers are the snapshot's: GPUs free now, running use against each limit.
"""

from __future__ import annotations

from dcsched.scheduler import filter as filters
from dcsched.scheduler.config import AccountConfig, QosLevel
from dcsched.scheduler.model import JobRequest, Snapshot
from dcsched.scheduler.unsatisfiable import never_fits


def _ask(job: JobRequest) -> str:
    of = f" {job.gpu_type}" if job.gpu_type else ""
    return f"asks {job.nodes} node(s) x {job.gpus_per_node}{of} GPU(s)"


def _free(job: JobRequest, snap: Snapshot) -> str:
    nodes = [n for n in snap.nodes if job.gpu_type in (None, n.gpu_type) and n.state == "up"]
    free = [len(n.free - n.unhealthy) for n in nodes]
    enough = sum(1 for f in free if f >= job.gpus_per_node)
    return (
        f"{_ask(job)}; free now: {sum(free)} GPU(s) on {len(nodes)} usable node(s), "
        f"{enough} of them with {job.gpus_per_node} free (needs {job.nodes})"
    )


def _not_avail(job: JobRequest, snap: Snapshot) -> str:
    of = [n for n in snap.nodes if job.gpu_type in (None, n.gpu_type)]
    big = [n for n in of if len(n.gpus) >= job.gpus_per_node]
    up = [n for n in big if n.state == "up"]
    states = ", ".join(f"{n.name} {n.state}" for n in big if n.state != "up")
    return f"{_ask(job)}; {len(up)} of {len(big)} nodes large enough are up ({states})"


def _dependency(job: JobRequest, snap: Snapshot) -> str:
    running = {r.job_id for r in snap.running}
    pending = {p.job_id for p in snap.pending}
    parts = []
    for kind, dep in job.depends:
        state = snap.finished.get(dep) or (
            "RUNNING" if dep in running else "PENDING" if dep in pending else "unknown"
        )
        parts.append(f"{kind}:{dep} ({dep} is {state})")
    return "waits for " + ", ".join(parts)


def _limits(job: JobRequest, snap: Snapshot) -> dict[str, str]:
    """Each limit reason with its use and cap, from the running jobs."""
    cfg = snap.config
    use = filters.LimitState(cfg, active=True)
    for r in snap.running:
        if not r.terminating:
            use.add(r.account, r.user, r.qos, r.gpus)
    acct = cfg.accounts.get(job.account) or AccountConfig()
    lim = cfg.limits
    qos = cfg.qos.get(job.qos) or QosLevel()

    def pick(own: int | None, default: int | None) -> int | None:
        return own if own is not None else default

    qu = use.qos_user.get((job.qos, job.user), [0, 0])
    qg = use.qos.get(job.qos, [0, 0])
    au = use.account.get(job.account, [0, 0])
    uu = use.user.get((job.account, job.user), [0, 0])
    in_qos, in_acct, acct_name = (
        f"{job.user} in QOS {job.qos}",
        f"{job.user} in account {job.account}",
        f"account {job.account}",
    )
    caps: dict[str, tuple[str, list[int], int, int | None]] = {
        "QOSMaxGRESPerUser": (in_qos, qu, 0, qos.max_gpus_per_user),
        "QOSMaxJobsPerUser": (in_qos, qu, 1, qos.max_jobs_per_user),
        "QOSGrpGRES": (f"QOS {job.qos}", qg, 0, qos.grp_gpus),
        "QOSGrpJobs": (f"QOS {job.qos}", qg, 1, qos.grp_jobs),
        "AssocGrpGRES": (acct_name, au, 0, pick(acct.max_gpus, lim.max_gpus_per_account)),
        "AssocGrpJobs": (acct_name, au, 1, pick(acct.max_jobs, lim.max_jobs_per_account)),
        "AssocMaxGRESPerUser": (
            in_acct,
            uu,
            0,
            pick(acct.max_gpus_per_user, lim.max_gpus_per_user),
        ),
        "AssocMaxJobsLimit": (in_acct, uu, 1, pick(acct.max_jobs_per_user, lim.max_jobs_per_user)),
    }
    out = {}
    for code, (who, used, i, cap) in caps.items():
        what, asked = ("GPUs", job.gpus) if i == 0 else ("jobs", 1)
        out[code] = f"{who} runs {used[i]} {what}, asks {asked} more; the limit is {cap}"
    return out


def detail(reason: str, job: JobRequest, snap: Snapshot, ahead: int) -> str:
    """The reason in words, with its numbers; `ahead`: pending jobs of higher priority."""
    match reason:
        case filters.HELD:
            return f"held: `dcctl release {job.job_id}` lets it be scheduled"
        case filters.DEPENDENCY | filters.NEVER:
            text = _dependency(job, snap)
            return text + ("; it can never be satisfied" if reason == filters.NEVER else "")
        case filters.INVALID_QOS:
            known = sorted({"normal", *snap.config.qos})
            return f"QOS {job.qos!r} is not configured; known: {', '.join(known)}"
        case filters.BAD_CONSTRAINTS:
            hardware = [(n.gpu_type, len(n.gpus)) for n in snap.nodes]
            why = never_fits(job.nodes, job.gpus_per_node, job.gpu_type, hardware)
            return why or f"{_ask(job)}; no node has joined the cluster yet"
        case filters.NODE_NOT_AVAIL:
            return _not_avail(job, snap)
        case filters.RESOURCES:
            return _free(job, snap)
        case filters.PRIORITY:
            return f"{ahead} job(s) of higher priority go first; their GPUs are held for them"
    limits = _limits(job, snap)
    return limits.get(reason, reason)
