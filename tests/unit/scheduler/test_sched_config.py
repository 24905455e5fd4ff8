"""SchedulerConfig.from_mapping: the [scheduler] TOML table, with errors that name the key."""

from __future__ import annotations

import tomllib

import pytest

from dcsched.protocol.durations import parse_seconds
from dcsched.scheduler import AccountConfig, QosLevel, SchedulerConfig

EXAMPLE = """
[scheduler]
policy = "default"
half_life = "14d"
max_age = "12h"
backfill_depth = 32
preempt_grace = "2m"
starvation_age = "4d"
size_ref_gpu_hours = 1000

[scheduler.weights]
age = 2000
fairshare = 1000
job_size = 1500
qos = 5000
nice = 10

[scheduler.billing]
H100 = 2.0
A100 = 1.0

[scheduler.limits]
max_gpus_per_user = 32
max_jobs_per_account = 200

[scheduler.accounts.vision]
shares = 3
users = { alice = 2, bob = 1 }
max_gpus = 64

[scheduler.accounts.nlp]
users = ["carol"]

[scheduler.qos.high]
priority = 100
max_gpus_per_user = 16
preempt = ["scavenger"]

[scheduler.qos.scavenger]
priority = 0
"""


def test_the_documented_example_parses() -> None:
    cfg = SchedulerConfig.from_mapping(tomllib.loads(EXAMPLE)["scheduler"], duration=parse_seconds)
    assert cfg.policy == "default"
    assert cfg.half_life_s == 14 * 86400
    assert cfg.max_age_s == 12 * 3600
    assert cfg.backfill_depth == 32
    assert cfg.preempt_grace_s == 120
    assert cfg.starvation_s == 4 * 86400
    off = SchedulerConfig.from_mapping({"starvation_age": 0}, duration=parse_seconds)
    assert off.starvation_s == 0
    assert cfg.size_ref_gpu_s == 1000 * 3600
    assert cfg.weights.qos == 5000
    assert cfg.bill("H100") == 2.0 and cfg.bill("other") == 1.0
    assert cfg.limits.max_gpus_per_user == 32
    assert cfg.accounts["vision"] == AccountConfig(3.0, {"alice": 2.0, "bob": 1.0}, max_gpus=64)
    assert cfg.accounts["nlp"].users == {"carol": 1.0}
    assert cfg.qos["high"] == QosLevel(100, 16, preempt=("scavenger",))


def test_empty_table_is_the_default_config() -> None:
    assert SchedulerConfig.from_mapping({}) == SchedulerConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"polcy": "fifo"}, "scheduler.polcy: unknown key"),
        ({"policy": "sjf"}, "scheduler.policy: expected one of fifo, greedy, default"),
        ({"weights": {"agee": 1}}, "scheduler.weights.agee: unknown key"),
        ({"weights": {"age": -1}}, "scheduler.weights.age: must be a number >= 0"),
        ({"weights": {"age": "x"}}, "scheduler.weights.age: expected a number"),
        ({"half_life": "7 days"}, "scheduler.half_life: cannot read '7 days' as a duration"),
        ({"half_life": "1:75"}, "scheduler.half_life: '1:75': minutes and seconds"),
        ({"half_life": 0}, "scheduler.half_life: a duration must be positive"),
        ({"accounts": {"a": {"share": 1}}}, "scheduler.accounts.a.share: unknown key"),
        ({"accounts": {"a": {"users": {"u": "x"}}}}, "scheduler.accounts.a.users.u"),
        ({"accounts": {"a": 1}}, "scheduler.accounts.a: expected a table"),
        ({"qos": {"h": {"preempt": "low"}}}, "scheduler.qos.h.preempt: expected a list"),
        ({"qos": {"h": {"preempt": ["low"]}}}, "scheduler.qos.h.preempt: unknown QOS 'low'"),
        ({"qos": {"h": {"priority": 1.5}}}, "scheduler.qos.h.priority: expected a whole"),
        ({"limits": {"max_gpus": 1}}, "scheduler.limits.max_gpus: unknown key"),
        ({"backfill_depth": True}, "scheduler.backfill_depth: expected a whole number"),
        ({"billing": {"H100": -2}}, "scheduler.billing.H100: must be a number >= 0"),
    ],
)
def test_bad_keys_are_named(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SchedulerConfig.from_mapping(table, duration=parse_seconds)


def test_duration_keys_use_the_project_grammar_with_numbers_in_seconds() -> None:
    cfg = SchedulerConfig.from_mapping(
        {"half_life": 3600, "max_age": "1-00:00", "preempt_grace": "1:30"}, duration=parse_seconds
    )
    assert (cfg.half_life_s, cfg.max_age_s, cfg.preempt_grace_s) == (3600, 86400, 90)


def test_without_a_grammar_only_seconds_are_read() -> None:
    assert SchedulerConfig.from_mapping({"half_life": 60}).half_life_s == 60
    with pytest.raises(ValueError, match=r"scheduler\.half_life: expected seconds"):
        SchedulerConfig.from_mapping({"half_life": "7d"})


def test_las_and_reservation_keys() -> None:
    cfg = SchedulerConfig.from_mapping(
        {
            "policy": "las",
            "preempt_cost": "10m",
            "min_run": "2h",
            "max_preemptions": 3,
            "reserve_after": "30m",
        },
        duration=parse_seconds,
    )
    assert (cfg.policy, cfg.preempt_cost_s, cfg.min_run_s) == ("las", 600, 7200)
    assert (cfg.max_preemptions, cfg.reserve_after()) == (3, 1800)
    # unset: no wait under default; under las (which can preempt for urgent work) an hour
    assert SchedulerConfig().reserve_after() == 0
    assert SchedulerConfig(policy="las").reserve_after() == 3600
    # the starvation guard: 5 days under default, off under las unless asked for
    assert (SchedulerConfig().starvation(), SchedulerConfig(policy="las").starvation()) == (
        5 * 86400,
        0,
    )
    guarded = SchedulerConfig.from_mapping(
        {"policy": "las", "starvation_age": "3d"}, duration=parse_seconds
    )
    assert guarded.starvation() == 3 * 86400
    assert SchedulerConfig.from_mapping({"starvation_age": 0}).starvation() == 0
    off = SchedulerConfig.from_mapping({"preempt_cost": 0, "min_run": "0", "reserve_after": 0})
    assert (off.preempt_cost_s, off.min_run_s, off.reserve_after()) == (0, 0, 0)
    with pytest.raises(ValueError, match=r"scheduler\.max_preemptions: expected a whole number"):
        SchedulerConfig.from_mapping({"max_preemptions": -1})
    with pytest.raises(ValueError, match=r"scheduler\.min_run: "):
        SchedulerConfig.from_mapping({"min_run": "soon"}, duration=parse_seconds)
    # the run history: off unless asked for, and only true or false
    assert not cfg.use_history and cfg.history({("u", 60.0): (1.0,)}) == {}
    on = SchedulerConfig.from_mapping({"use_history": True})
    assert on.history({("u", 60.0): (1.0,)}) == {("u", 60.0): (1.0,)}
    with pytest.raises(ValueError, match=r"scheduler\.use_history: expected true or false"):
        SchedulerConfig.from_mapping({"use_history": "yes"})
