"""Per-GPU processes and per-job CPU / host memory in telemetry, and its size."""

from __future__ import annotations

import subprocess
import sys
import time

from dcsched.agents.gpu.sim import SimBackend
from dcsched.agents.procs import CpuMeter, ProcNames, usage
from dcsched.protocol.codec import encode, telemetry_codec
from dcsched.protocol.messages import CMD_MAX, GpuProc, GpuSample, JobProcs, Telemetry

#: what one host's telemetry may weigh at 8 GPUs and 16 processes (docs/dctop.md)
BUDGET = 8 * 1024


def test_sim_lists_one_of_the_jobs_processes_per_gpu_it_holds() -> None:
    sim = SimBackend("h1", 4, "Sim", 80, seed=1)
    pids = [100, 101, 102, 103]  # torchrun, then its workers
    samples = sim.sample(1000.0, {1: pids, 2: pids, 3: pids})
    assert samples[0].procs == []
    listed = [s.procs[0].pid for s in samples[1:]]
    assert listed == [101, 102, 103]  # the newest: the workers, one per GPU
    for s in samples[1:]:
        mem = s.procs[0].gpu_mem
        assert s.mem_used is not None and mem is not None and 0 < mem <= s.mem_used


def test_proc_names_and_usage_from_proc() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: sum(range(10000))", "--spin"]
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # until the child has exec'd (its cmdline is the new program's)
            user, cmd = ProcNames(CMD_MAX).get(child.pid)
            if cmd.endswith("--spin") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        names = ProcNames(CMD_MAX)
        assert user and cmd.startswith(sys.executable) and cmd.endswith("--spin")
        assert names.get(2**22 + 12345) == ("", "")  # no such process: blank, no error
        meter = CpuMeter()
        t0 = time.time()
        ticks, rss = usage([child.pid])
        assert meter.percent("j", t0, ticks) is None  # no rate from one sample
        deadline = time.monotonic() + 30
        pct = None
        while pct is None or pct <= 0:
            time.sleep(0.3)
            ticks, rss = usage([child.pid, 2**22 + 12345])
            pct = meter.percent("j", time.time(), ticks)
            assert time.monotonic() < deadline, "the spinning child never showed CPU use"
        assert rss > 1 << 20  # a Python interpreter holds megabytes
    finally:
        child.kill()
        child.wait()


def test_telemetry_with_8_gpus_and_16_processes_stays_within_budget() -> None:
    cmd = "/opt/conda/bin/python -u -m torch.distributed.run --nproc-per-node 8 train.py " * 4
    gpus = [
        GpuSample(
            index=i,
            uuid=f"GPU-{i:08x}-1111-2222-3333-444444444444",
            util=97.5,
            mem_used=70_000_000_000,
            mem_total=85_899_345_920,
            temp_c=71.0,
            power_w=612.3,
            sm_clock_mhz=1980,
            energy_j=123456789.0,
            pids=[40000 + 2 * i, 40001 + 2 * i],
            procs=[
                GpuProc(pid=40000 + 2 * i + k, user="alice", cmd=cmd[:CMD_MAX], gpu_mem=34 << 30)
                for k in range(2)
            ],
        )
        for i in range(8)
    ]
    jobs = [
        JobProcs(
            job_id=str(1000 + n),
            node_rank=0,
            gpus=list(range(4 * n, 4 * n + 4)),
            pids=list(range(40000 + 8 * n, 40008 + 8 * n)),
            cpu_pct=795.5,
            rss=64 << 30,
        )
        for n in range(2)
    ]
    msg = Telemetry(host="gpu0001", ts=1.8e9, seq=123456, gpus=gpus, jobs=jobs)
    size = len(encode(msg))
    print(f"telemetry at 8 GPUs and 16 processes: {size} bytes")
    assert size <= BUDGET


def test_older_messages_without_processes_still_decode() -> None:
    old = (
        b'{"type":"telemetry","v":1,"host":"h","ts":1.0,"seq":1,'
        b'"gpus":[{"index":0,"uuid":"u","pids":[5]}],'
        b'"jobs":[{"job_id":"1","node_rank":0,"pids":[5]}]}'
    )
    msg = telemetry_codec().decode(old)
    assert msg.gpus[0].procs == [] and msg.jobs[0].cpu_pct is None and msg.jobs[0].rss is None
