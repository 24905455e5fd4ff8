"""Telemetry ingest benchmark: simulated 8-GPU hosts publish through a real Mosquitto into a
running daemon (`dcd run`, its own process). Prints one JSON object.

    python bench/ingest.py --hosts 2000 --rate 2000 --seconds 20

`lost` counts host messages the publishers handed to the broker that the daemon did not
ingest; `daemon_cpu_pct` is the daemon's CPU over the measured window (100 = one core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from dcsched.client import Client
from dcsched.protocol.codec import encode
from dcsched.protocol.messages import GpuInfo, GpuSample, HostStatus, JobProcs, Telemetry
from dcsched.protocol.topics import Topics

PREFIX = "bench/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _telemetry(host: str, seq: int, gpus: int) -> bytes:
    t = time.time()
    return encode(
        Telemetry(
            host=host,
            ts=t,
            seq=seq,
            simulated=True,
            gpus=[
                GpuSample(
                    index=i,
                    uuid=f"GPU-{host}-{i}",
                    util=87.5 + i,
                    mem_used=61 << 30,
                    mem_total=80 << 30,
                    temp_c=61.0 + i,
                    power_w=512.25,
                    sm_clock_mhz=1980,
                    energy_j=123456.75 + seq,
                    pids=[40000 + i],
                )
                for i in range(gpus)
            ],
            jobs=[
                JobProcs(
                    job_id="1",
                    node_rank=0,
                    gpus=list(range(gpus)),
                    pids=[40000 + i for i in range(gpus)],
                )
            ],
        )
    )


def _publish(port: int, hosts: list[str], rate: float, seconds: float, gpus: int) -> int:
    """Publishes `rate` host messages/s round-robin over `hosts`; returns how many were sent."""
    topics = Topics(PREFIX)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for h in hosts:
        st = HostStatus(
            host=h,
            state="online",
            ts=time.time(),
            simulated=True,
            backend="sim",
            gpus=[
                GpuInfo(index=i, uuid=f"GPU-{h}-{i}", model="Simulated-H100", mem_total=80 << 30)
                for i in range(gpus)
            ],
        )
        c.publish(topics.host(h, "status"), encode(st), qos=1, retain=True)
    time.sleep(2.0)  # let the daemon take in the inventory before the measured window
    topic = [topics.host(h, "telemetry") for h in hosts]
    sent, seq = 0, 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            i = sent % len(hosts)
            if i == 0:
                seq += 1
            info = c.publish(topic[i], _telemetry(hosts[i], seq, gpus), qos=0)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                sent += 1
        time.sleep(0.002)
    time.sleep(0.5)
    c.loop_stop()
    c.disconnect()
    return sent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=2000)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--rate", type=float, default=2000.0, help="host messages per second")
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args()

    d = Path(tempfile.mkdtemp(prefix="dcsched-bench-"))
    port = _free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
    )
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs: list[subprocess.Popen[bytes]] = []
    with (d / "mosquitto.log").open("wb") as log:
        procs.append(
            subprocess.Popen(
                [mosq, "-c", str(d / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
            )
        )
    (d / "cluster.key").write_text(uuid.uuid4().hex * 2)  # dcd refuses to start without one
    (d / "dcd.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\ntopic_prefix = "{PREFIX}"\n'
        f'[cluster]\nkey_file = "{d / "cluster.key"}"\n'
        f'[daemon]\nstate_dir = "{d}"\nsocket = "{d / "dcd.sock"}"\nmetrics_listen = ""\n'
        "node_timeout_s = 600.0\n"
    )
    with (d / "dcd.log").open("wb") as log:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dcsched.daemon.main",
                "--log-level",
                "warning",
                "run",
                "--config",
                str(d / "dcd.toml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs.append(daemon)
    client = Client(str(d / "dcd.sock"))
    result: dict[str, Any] = {}
    try:
        for _ in range(100):
            try:
                if client.health()["broker_connected"]:
                    break
            except Exception:
                pass
            time.sleep(0.1)
        hosts = [f"h{i:05d}" for i in range(a.hosts)]
        base = client.cluster()["telemetry"]["messages"]
        cpu0, t0 = _cpu_seconds(daemon.pid), time.monotonic()
        sent = _publish(port, hosts, a.rate, a.seconds, a.gpus)
        # Let the daemon drain what the broker already queued for it.
        got, last = 0, -1
        while got != last:
            last = got
            time.sleep(1.0)
            got = client.cluster()["telemetry"]["messages"] - base
        wall = time.monotonic() - t0 - 1.0
        cpu = _cpu_seconds(daemon.pid) - cpu0
        summary = client.cluster()
        result = {
            "hosts": a.hosts,
            "gpus_per_host": a.gpus,
            "target_rate": a.rate,
            "seconds": a.seconds,
            "sent": sent,
            "ingested": got,
            "lost": sent - got,
            "host_msgs_per_s": round(got / a.seconds, 1),
            "gpu_samples_per_s": round(got * a.gpus / a.seconds, 1),
            "payload_bytes": len(_telemetry(hosts[0], 1, a.gpus)),
            "daemon_cpu_pct": round(100 * cpu / wall, 1),
            "dropped_undecodable": summary["telemetry"]["dropped"]["telemetry"],
            "nodes_seen": summary["nodes"],
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if result and result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
