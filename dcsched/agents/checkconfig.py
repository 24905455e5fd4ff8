"""`dc-agent check-config`: the config file as the agent would read it, every problem with its
file:line, without starting anything."""

from __future__ import annotations

import importlib.util
import os
import shutil

from dcsched.protocol.config import Config, ConfigCheck


def check_agent(cfg: Config) -> ConfigCheck:
    c = ConfigCheck(cfg)
    c.common()
    a = cfg.agent
    if a.backend == "nvml" and importlib.util.find_spec("pynvml") is None:
        c.error("agent.backend", "nvml needs nvidia-ml-py: pip install 'dcsched[agent]'")
    if a.health_check:
        exe = a.health_check[0]
        if not (shutil.which(exe) or (os.path.isfile(exe) and os.access(exe, os.X_OK))):
            c.error("agent.health_check", f"{exe}: not found or not executable")
    if not shutil.which(a.torchrun):
        c.warn(
            "agent.torchrun",
            f"{a.torchrun!r} is not on PATH: only jobs that name [torchrun] python can run",
        )
    for key in ("interval_s", "exit_resend_s", "health_check_timeout_s"):
        if getattr(a, key) <= 0:
            c.error(f"agent.{key}", "must be > 0")
    if a.backend == "sim" and a.sim_gpus <= 0:
        c.error("agent.sim_gpus", "must be > 0")
    return c
