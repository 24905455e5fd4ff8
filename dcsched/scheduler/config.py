"""Scheduler configuration: plain frozen data, parsed from the `[scheduler]` TOML table."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("fifo", "greedy", "default", "las")
DAY = 86400.0
LAS_RESERVE_AFTER_S = 3600.0
STARVATION_S = 5 * DAY


@dataclass(frozen=True, slots=True)
class Weights:
    """Multipliers of the priority factors; every factor is in [0, 1]."""

    age: float = 1000.0
    fairshare: float = 500.0
    job_size: float = 3000.0
    qos: float = 2000.0
    nice: float = 100.0


@dataclass(frozen=True, slots=True)
class AccountConfig:
    shares: float = 1.0
    # user -> shares inside the account; users not listed get 1.
    users: Mapping[str, float] = field(default_factory=dict)
    max_gpus: int | None = None
    max_jobs: int | None = None
    max_gpus_per_user: int | None = None
    max_jobs_per_user: int | None = None


@dataclass(frozen=True, slots=True)
class QosLevel:
    priority: int = 0
    max_gpus_per_user: int | None = None
    max_jobs_per_user: int | None = None
    grp_gpus: int | None = None
    grp_jobs: int | None = None
    # names of QOS levels whose preemptible jobs this QOS may preempt
    preempt: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps applied to every user / account unless the account sets its own."""

    max_gpus_per_user: int | None = None
    max_jobs_per_user: int | None = None
    max_gpus_per_account: int | None = None
    max_jobs_per_account: int | None = None


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    policy: str = "default"  # "fifo" | "greedy" | "default" | "las"
    weights: Weights = field(default_factory=Weights)
    accounts: Mapping[str, AccountConfig] = field(default_factory=dict)
    qos: Mapping[str, QosLevel] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    # billing weight per GPU type for fair-share usage; types not listed bill 1.0
    billing: Mapping[str, float] = field(default_factory=dict)
    half_life_s: float = 7 * DAY
    # short on purpose: an 8-GPU job that waited this long passes fresh 1-GPU jobs
    max_age_s: float = 8 * 3600.0
    # job size, in GPU-seconds requested, that scores 0 on the (favour-small) size factor
    size_ref_gpu_s: float = 64 * 14 * DAY
    backfill_depth: int = 16
    # a job that does not fit gets its reservation (which lower jobs must not delay) only
    # once it has waited this long: until then GPUs are not drained for it. None: 0 under
    # `default`, LAS_RESERVE_AFTER_S under `las` (which has preemption for urgent work)
    reserve_after_s: float | None = None
    preempt_grace_s: float = 60.0
    # `las` only: what one preemption is expected to cost its victim (work done again),
    # the run a job keeps before it may be preempted, and the most times one job is
    preempt_cost_s: float = 300.0
    min_run_s: float = 4 * 3600.0
    max_preemptions: int = 2
    # `las` only: estimate runs from Snapshot.history (the user's completed runs of the
    # same time limit) instead of from attained service alone (estimate.py)
    use_history: bool = False
    # a job pending this long goes ahead of every priority (oldest first), so its
    # reservation bounds its wait whatever keeps arriving; 0 turns the guard off. None:
    # STARVATION_S under `default`, off under `las` (starvation(): why, there)
    starvation_s: float | None = None

    @classmethod
    def from_mapping(
        cls, d: Mapping[str, Any], *, duration: DurationParser | None = None
    ) -> SchedulerConfig:
        """`duration` reads the duration keys (dcsched.protocol.durations.parse_seconds);
        without it they must be numbers of seconds."""
        return parse_config(d, duration=duration)

    def qos_level(self, name: str) -> QosLevel | None:
        if name in self.qos:
            return self.qos[name]
        return QosLevel() if name == "normal" else None

    def starvation(self) -> float:
        """The starvation guard's age, 0 when off. Off by default under `las`: there the
        guard cost more than it bounded (docs/scheduler.md, "The starvation guard under
        las"): the drains it forces for the oldest jobs, oldest first, turn a busy cluster
        into fifo with drains, while preemption and reservations already start the work
        that waits."""
        if self.starvation_s is not None:
            return self.starvation_s
        return 0.0 if self.policy == "las" else STARVATION_S

    def reserve_after(self) -> float:
        if self.reserve_after_s is not None:
            return self.reserve_after_s
        return LAS_RESERVE_AFTER_S if self.policy == "las" else 0.0

    def history(
        self, history: Mapping[tuple[str, float], tuple[float, ...]]
    ) -> Mapping[tuple[str, float], tuple[float, ...]]:
        """The run history `las` uses: the snapshot's under `use_history`, else none."""
        return history if self.use_history else {}

    def bill(self, gpu_type: str) -> float:
        return self.billing.get(gpu_type, 1.0)


# The duration grammar lives in dcsched.protocol.durations, which this pure core may not
# import: the caller (dcd, dcsim) hands its parser in. Numbers here are seconds.
DurationParser = Callable[[object], float]


def _seconds_only(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected seconds as a number here, got {value!r}")
    return float(value)


def parse_duration(value: object, key: str, parse: DurationParser = _seconds_only) -> float:
    """Seconds (> 0) from `parse` (the project's grammar), the error named by its key."""
    try:
        seconds = parse(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{key}: duration must be positive, got {value!r}")
    return seconds


def _table(d: object, key: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{key}: expected a table, got {type(d).__name__}")
    return d


def _check_keys(d: Mapping[str, Any], allowed: tuple[str, ...], key: str) -> None:
    for k in d:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise ValueError(f"{where}: unknown key; expected one of {', '.join(allowed)}")


def _number(value: object, key: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{key}: must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: expected a whole number >= 0, got {value!r}")
    return value


def _opt_count(d: Mapping[str, Any], name: str, key: str) -> int | None:
    return _count(d[name], f"{key}.{name}") if name in d else None


_CAPS = ("max_gpus_per_user", "max_jobs_per_user")


def _parse_weights(d: Mapping[str, Any], key: str) -> Weights:
    fields = ("age", "fairshare", "job_size", "qos", "nice")
    _check_keys(d, fields, key)
    return Weights(**{k: _number(v, f"{key}.{k}") for k, v in d.items()})


def _parse_account(d: Mapping[str, Any], key: str) -> AccountConfig:
    _check_keys(d, ("shares", "users", "max_gpus", "max_jobs", *_CAPS), key)
    users_raw = d.get("users", {})
    users: dict[str, float] = {}
    if isinstance(users_raw, list):
        for u in users_raw:
            if not isinstance(u, str):
                raise ValueError(f"{key}.users: expected user names, got {u!r}")
            users[u] = 1.0
    else:
        for u, s in _table(users_raw, f"{key}.users").items():
            users[u] = _number(s, f"{key}.users.{u}")
    return AccountConfig(
        shares=_number(d.get("shares", 1.0), f"{key}.shares"),
        users=users,
        max_gpus=_opt_count(d, "max_gpus", key),
        max_jobs=_opt_count(d, "max_jobs", key),
        max_gpus_per_user=_opt_count(d, "max_gpus_per_user", key),
        max_jobs_per_user=_opt_count(d, "max_jobs_per_user", key),
    )


def _parse_qos(d: Mapping[str, Any], key: str) -> QosLevel:
    _check_keys(d, ("priority", "grp_gpus", "grp_jobs", "preempt", *_CAPS), key)
    preempt = d.get("preempt", [])
    if not isinstance(preempt, list) or not all(isinstance(p, str) for p in preempt):
        raise ValueError(f"{key}.preempt: expected a list of QOS names, got {preempt!r}")
    return QosLevel(
        priority=_count(d.get("priority", 0), f"{key}.priority"),
        max_gpus_per_user=_opt_count(d, "max_gpus_per_user", key),
        max_jobs_per_user=_opt_count(d, "max_jobs_per_user", key),
        grp_gpus=_opt_count(d, "grp_gpus", key),
        grp_jobs=_opt_count(d, "grp_jobs", key),
        preempt=tuple(preempt),
    )


_TOP = (
    "policy",
    "weights",
    "accounts",
    "qos",
    "limits",
    "billing",
    "half_life",
    "max_age",
    "size_ref_gpu_hours",
    "backfill_depth",
    "reserve_after",
    "preempt_grace",
    "starvation_age",
    "preempt_cost",
    "min_run",
    "max_preemptions",
    "use_history",
)


def parse_config(
    d: Mapping[str, Any], key: str = "scheduler", *, duration: DurationParser | None = None
) -> SchedulerConfig:
    """Parse a `[scheduler]` table; ValueError names the offending key."""
    parse = duration or _seconds_only
    d = _table(d, key)
    _check_keys(d, _TOP, key)
    policy = d.get("policy", "default")
    if policy not in POLICIES:
        raise ValueError(f"{key}.policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    limits_d = _table(d.get("limits", {}), f"{key}.limits")
    limit_keys = (*_CAPS, "max_gpus_per_account", "max_jobs_per_account")
    _check_keys(limits_d, limit_keys, f"{key}.limits")
    limits = Limits(**{k: _opt_count(limits_d, k, f"{key}.limits") for k in limit_keys})
    accounts = {
        name: _parse_account(_table(a, f"{key}.accounts.{name}"), f"{key}.accounts.{name}")
        for name, a in _table(d.get("accounts", {}), f"{key}.accounts").items()
    }
    qos = {
        name: _parse_qos(_table(q, f"{key}.qos.{name}"), f"{key}.qos.{name}")
        for name, q in _table(d.get("qos", {}), f"{key}.qos").items()
    }
    for name, level in qos.items():
        for target in level.preempt:
            if target not in qos and target != "normal":
                raise ValueError(f"{key}.qos.{name}.preempt: unknown QOS {target!r}")
    billing = {
        t: _number(w, f"{key}.billing.{t}")
        for t, w in _table(d.get("billing", {}), f"{key}.billing").items()
    }
    depth = _count(d.get("backfill_depth", 16), f"{key}.backfill_depth")
    default = SchedulerConfig()
    return SchedulerConfig(
        policy=policy,
        weights=_parse_weights(_table(d.get("weights", {}), f"{key}.weights"), f"{key}.weights"),
        accounts=accounts,
        qos=qos,
        limits=limits,
        billing=billing,
        half_life_s=parse_duration(d["half_life"], f"{key}.half_life", parse)
        if "half_life" in d
        else default.half_life_s,
        max_age_s=parse_duration(d["max_age"], f"{key}.max_age", parse)
        if "max_age" in d
        else default.max_age_s,
        size_ref_gpu_s=_number(d["size_ref_gpu_hours"], f"{key}.size_ref_gpu_hours", minimum=1)
        * 3600.0
        if "size_ref_gpu_hours" in d
        else default.size_ref_gpu_s,
        backfill_depth=depth,
        reserve_after_s=_seconds_or_zero(d, "reserve_after", key, 0.0, parse)
        if "reserve_after" in d
        else None,
        preempt_grace_s=parse_duration(d["preempt_grace"], f"{key}.preempt_grace", parse)
        if "preempt_grace" in d
        else default.preempt_grace_s,
        starvation_s=_seconds_or_zero(d, "starvation_age", key, STARVATION_S, parse)
        if "starvation_age" in d
        else None,
        preempt_cost_s=_seconds_or_zero(d, "preempt_cost", key, default.preempt_cost_s, parse),
        min_run_s=_seconds_or_zero(d, "min_run", key, default.min_run_s, parse),
        max_preemptions=_count(d["max_preemptions"], f"{key}.max_preemptions")
        if "max_preemptions" in d
        else default.max_preemptions,
        use_history=_flag(d.get("use_history", False), f"{key}.use_history"),
    )


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    return value


def _seconds_or_zero(
    d: Mapping[str, Any], name: str, key: str, default: float, parse: DurationParser
) -> float:
    """A duration key that also takes 0 (off)."""
    if name not in d:
        return default
    value = d[name]
    if value in (0, "0") and not isinstance(value, bool):
        return 0.0
    return parse_duration(value, f"{key}.{name}", parse)
