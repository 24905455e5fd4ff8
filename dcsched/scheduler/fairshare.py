"""Fair-share: decayed GPU-second usage per (account, user) and Slurm's classic factor.

Usage is plain data (`model.Usage`) that the daemon persists as JSON. The daemon owns the
clock: it calls `accrue` with the running jobs on every pass (and once more for a job as
it finishes) and passes the result in `Snapshot.usage`; `decide` only decays it to `now`.

Factor, as in Slurm's priority/multifactor "classic" fair-share:
    S  = normalised shares (account share of all accounts x user share inside the account)
    U  = usage / total usage
    UE = U for an account; for a user, U_user + (UE_account - U_user) * s_user_in_account
    F  = 2 ** (-UE / S)       in (0, 1]: 1 = unused, 0.5 = used exactly its share
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from dcsched.scheduler.config import SchedulerConfig
from dcsched.scheduler.model import RunningJob, Usage

Key = tuple[str, str]  # (account, user)


def decay(usage: Usage, now: float, half_life_s: float) -> Usage:
    """Usage as seen at `now`; a usage stamped in the future is taken as is."""
    if now <= usage.ts:
        return usage
    k = 0.5 ** ((now - usage.ts) / half_life_s)
    return Usage(now, {key: v * k for key, v in usage.gpu_seconds.items()})


def charge(
    usage: Usage, now: float, account: str, user: str, gpu_seconds: float, half_life_s: float
) -> Usage:
    """Decay to `now`, then add billed GPU-seconds to (account, user)."""
    out = decay(usage, now, half_life_s)
    values = dict(out.gpu_seconds)
    values[(account, user)] = values.get((account, user), 0.0) + gpu_seconds
    return Usage(max(now, out.ts), values)


def accrue(
    usage: Usage, running: Iterable[RunningJob], now: float, config: SchedulerConfig
) -> Usage:
    """Charge every running job for its billed GPU-seconds since max(start, usage.ts)."""
    out = decay(usage, now, config.half_life_s)
    values = dict(out.gpu_seconds)
    for job in running:
        seconds = now - max(job.start_ts, usage.ts)
        if seconds > 0:
            key = (job.account, job.user)
            values[key] = values.get(key, 0.0) + seconds * job.gpus * config.bill(job.gpu_type)
    return Usage(out.ts, values)


@dataclass(frozen=True, slots=True)
class FairshareRow:
    account: str
    user: str  # "" on the account's own row
    raw_shares: float
    norm_shares: float
    raw_usage: float  # decayed, billed GPU-seconds
    norm_usage: float
    effective_usage: float
    fairshare: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FairshareReport:
    ts: float
    half_life_s: float
    rows: tuple[FairshareRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "half_life_s": self.half_life_s,
            "rows": [r.to_dict() for r in self.rows],
        }


def _tree(
    config: SchedulerConfig, usage: Usage, extra: Iterable[Key]
) -> dict[str, dict[str, float]]:
    """account -> user -> raw shares, for configured and seen accounts and users."""
    tree: dict[str, dict[str, float]] = {a: dict(c.users) for a, c in config.accounts.items()}
    for account, user in (*usage.gpu_seconds, *extra):
        users = tree.setdefault(account, {})
        if user not in users:
            users[user] = 1.0
    return tree


def _rows(
    config: SchedulerConfig, usage: Usage, now: float, extra: Iterable[Key]
) -> list[FairshareRow]:
    used = decay(usage, now, config.half_life_s).gpu_seconds
    tree = _tree(config, usage, extra)
    shares = {a: (config.accounts[a].shares if a in config.accounts else 1.0) for a in tree}
    all_shares = sum(shares.values()) or 1.0
    total = sum(used.values())
    rows: list[FairshareRow] = []
    for account in sorted(tree):
        users = tree[account]
        raw_a = sum(used.get((account, u), 0.0) for u in users)
        s_a = shares[account] / all_shares
        u_a = raw_a / total if total > 0 else 0.0
        rows.append(FairshareRow(account, "", shares[account], s_a, raw_a, u_a, u_a, _f(u_a, s_a)))
        user_shares = sum(users.values()) or 1.0
        for user in sorted(users):
            raw_u = used.get((account, user), 0.0)
            within = users[user] / user_shares
            u_u = raw_u / total if total > 0 else 0.0
            ue = u_u + (u_a - u_u) * within
            s_u = s_a * within
            rows.append(FairshareRow(account, user, users[user], s_u, raw_u, u_u, ue, _f(ue, s_u)))
    return rows


def _f(effective: float, shares: float) -> float:
    if shares <= 0:
        return 0.0
    return float(2.0 ** (-effective / shares))


# Fair-share weighs in fully once the decayed usage of all accounts reaches this share of
# what the cluster can deliver in one half-life (its GPUs, billed, x half_life).
WARMUP = 0.25


def warmup(config: SchedulerConfig, usage: Usage, now: float, gpus: float) -> float:
    """How much the usage so far says, in [0, 1]. Shares of a usage that is still small
    next to the cluster's capacity (a fresh cluster, or one idle for weeks) are noise: the
    user who ran one 3-minute job would otherwise wait behind everyone who ran none."""
    window = gpus * config.half_life_s * WARMUP
    if window <= 0:
        return 1.0
    return min(1.0, sum(decay(usage, now, config.half_life_s).gpu_seconds.values()) / window)


def factors(
    config: SchedulerConfig, usage: Usage, now: float, keys: Iterable[Key], gpus: float = 0
) -> dict[Key, float]:
    """Fair-share factor in (0, 1] for each (account, user) in `keys`, for the priority:
    `1 - w * (1 - F)` with w = warmup() on a cluster of `gpus` billed GPUs (0: w = 1, Slurm's F
    as `fairshare_report` shows it)."""
    key_set = set(keys)
    w = warmup(config, usage, now, gpus)
    return {
        (r.account, r.user): 1.0 - w * (1.0 - r.fairshare)
        for r in _rows(config, usage, now, key_set)
        if r.user and (r.account, r.user) in key_set
    }


def fairshare_report(
    config: SchedulerConfig,
    usage: Usage,
    now: float,
    extra: Iterable[Key] = (),
) -> FairshareReport:
    """Like Slurm's sshare: one row per account, then one per user inside it."""
    return FairshareReport(now, config.half_life_s, tuple(_rows(config, usage, now, extra)))
