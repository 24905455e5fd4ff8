"""GPU backends: `nvml` (real GPUs through nvidia-ml-py) and `sim` (declared, simulated GPUs)."""

from __future__ import annotations

from dcsched.agents.gpu.base import FaultHandler, GpuBackend
from dcsched.agents.gpu.sim import SimBackend
from dcsched.protocol.config import AgentConfig

__all__ = ["FaultHandler", "GpuBackend", "SimBackend", "make_backend"]


def make_backend(cfg: AgentConfig, host: str) -> GpuBackend:
    if cfg.backend == "sim":
        return SimBackend(host, cfg.sim_gpus, cfg.sim_gpu_model, cfg.sim_gpu_mem_gib)
    # Imported here so that the sim backend never needs nvidia-ml-py.
    from dcsched.agents.gpu.nvml import NvmlBackend

    return NvmlBackend(host)
