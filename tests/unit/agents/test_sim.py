from __future__ import annotations

from dcsched.agents.gpu import make_backend
from dcsched.agents.gpu.sim import SimBackend
from dcsched.protocol.config import AgentConfig


def test_inventory_is_declared_and_stable_across_restarts() -> None:
    a = SimBackend("h1", 3, "Sim-A100", 40)
    b = SimBackend("h1", 3, "Sim-A100", 40)
    inv = a.inventory()
    assert [g.index for g in inv] == [0, 1, 2]
    assert {g.model for g in inv} == {"Sim-A100"}
    assert inv[0].mem_total == 40 * 1024**3
    assert [g.uuid for g in inv] == [g.uuid for g in b.inventory()]
    assert len({g.uuid for g in inv}) == 3
    assert a.simulated and a.driver_version() == "simulated"


def test_busy_gpus_run_hot_and_idle_ones_stay_cold() -> None:
    sim = SimBackend("h1", 2, "Sim", 80, seed=1)
    samples = []
    for t in range(10):
        samples = sim.sample(1000.0 + t, {1: [42, 43]})
    idle, busy = samples
    assert idle.util is not None and idle.util < 3
    assert busy.util is not None and busy.util > 70
    assert (
        busy.power_w is not None and idle.power_w is not None and busy.power_w > 400 > idle.power_w
    )
    assert busy.mem_used is not None and idle.mem_used is not None and busy.mem_used > idle.mem_used
    assert busy.pids == [42, 43] and idle.pids == []
    assert busy.sm_clock_mhz == 1980 and idle.sm_clock_mhz == 345


def test_energy_integrates_power() -> None:
    sim = SimBackend("h1", 1, "Sim", 80, seed=2)
    (first,) = sim.sample(100.0, {})
    assert first.energy_j == 0.0
    (second,) = sim.sample(102.0, {})
    assert second.power_w is not None and second.energy_j is not None
    assert abs(second.energy_j - 2.0 * second.power_w) < 1.0
    (third,) = sim.sample(103.0, {})
    assert third.energy_j is not None and third.energy_j > second.energy_j


def test_make_backend_sim_from_config() -> None:
    backend = make_backend(AgentConfig(backend="sim", sim_gpus=2, sim_gpu_model="X"), "h")
    assert backend.name == "sim" and len(backend.inventory()) == 2
    backend.close()
