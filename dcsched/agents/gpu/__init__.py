"""GPU backends: `nvml` (real GPUs through nvidia-ml-py) and `sim` (declared, simulated GPUs)."""

from __future__ import annotations

import os

from dcsched.agents.gpu.base import FaultHandler, GpuBackend
from dcsched.agents.gpu.sim import SimBackend
from dcsched.protocol.config import AgentConfig

__all__ = ["FaultHandler", "GpuBackend", "SimBackend", "make_backend", "sim_faults_file"]


def sim_faults_file(cfg: AgentConfig) -> str:
    """Where `dc-agent sim-fault` writes the faults the sim backend injects."""
    return os.path.join(cfg.state_dir, "sim-faults.json")


def make_backend(cfg: AgentConfig, host: str) -> GpuBackend:
    if cfg.backend == "sim":
        return SimBackend(
            host,
            cfg.sim_gpus,
            cfg.sim_gpu_model,
            cfg.sim_gpu_mem_gib,
            faults_file=sim_faults_file(cfg),
        )
    # Imported here so that the sim backend never needs nvidia-ml-py.
    from dcsched.agents.gpu.nvml import NvmlBackend

    return NvmlBackend(host)
