"""`/metrics` scraped from a real daemon: dcgm-exporter's names and labels, the job join
series, queue depth, histograms, ingest and drops, fair share; `promtool check metrics` on the
scrape; and every series the Grafana dashboard in contrib/ queries exists in it."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dcsched.client import Client
from tests.conftest import Broker, free_port
from tests.integration.daemon_harness import (
    ScriptedAgent,
    api,
    run_on,
    running_daemon,
    until,
    write_config,
)

DASHBOARD = Path(__file__).parents[2] / "contrib" / "grafana" / "dcsched.json"
# promtool lints dcgm-exporter's own `modelName` label (camelCase); it is kept as
# dcgm-exporter spells it so that its dashboards work unchanged. Nothing else may be linted.
KNOWN_LINT = re.compile(r"^DCGM_FI_DEV_\w+ label names should be written in 'snake_case'")
SCHED = "[scheduler.accounts.ml]\nshares = 1\n[scheduler.qos.high]\npriority = 10\n"


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def test_scrape_has_every_series_passes_promtool_and_feeds_the_dashboard(
    tmp_path: Path, mosquitto: Broker, prefix: str
) -> None:
    port = free_port()
    conf = write_config(
        tmp_path, mosquitto, prefix, scheduler=SCHED, metrics_listen=f"127.0.0.1:{port}"
    )
    async with running_daemon(conf) as d, ScriptedAgent(mosquitto, prefix, "n1") as a1:
        a1.sample = {
            "util": 50.0,
            "mem_used": 2 << 30,
            "mem_total": 80 << 30,
            "temp_c": 61.0,
            "power_w": 300.0,
            "sm_clock_mhz": 1980,
            "energy_j": 1234.5,
        }
        client = Client(d.config.daemon.socket)
        await until(lambda: "n1" in d.cluster.nodes, what="node")
        spec = {
            "name": "t",
            "command": ["train.py"],
            "workdir": "/tmp",
            "account": "ml",
            "resources": {"nodes": 1, "gpus_per_node": 1},
        }
        running = await api(client, "submit", spec)
        await run_on(a1, client, running)
        await api(client, "submit", {**spec, "qos": "high", "resources": {"gpus_per_node": 2}})
        await a1.raw("telemetry", b"not json")  # one drop, counted by reason
        await until(lambda: d.bus.codecs()["telemetry"].dropped, what="drop")
        await until(lambda: d.scheduling.usage.usage.gpu_seconds, what="fair-share usage")
        await until(lambda: d.ingest.hosts["n1"].latest.gpus[0].energy_j, what="full samples")

        def scrape() -> tuple[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.headers["Content-Type"], r.read().decode()

        ctype, text = await asyncio.to_thread(scrape)

    assert ctype.startswith("text/plain; version=")
    got = samples(text)
    gpu0 = {"Hostname": "n1", "gpu": "0", "UUID": "n1-0", "modelName": "Simulated-H100"}
    for name, value in {
        "DCGM_FI_DEV_GPU_UTIL": 50.0,
        "DCGM_FI_DEV_FB_USED": 2048.0,  # MiB, as dcgm-exporter
        "DCGM_FI_DEV_POWER_USAGE": 300.0,
        "DCGM_FI_DEV_GPU_TEMP": 61.0,
        "DCGM_FI_DEV_SM_CLOCK": 1980.0,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 1234500.0,  # mJ
    }.items():
        assert (gpu0, value) in got[name], name
    job_info = got["dcsched_gpu_job_info"]
    assert job_info == [
        ({"Hostname": "n1", "gpu": "0", "job": str(running), "user": "root", "account": "ml"}, 1.0)
    ]
    assert ({"state": "PENDING", "account": "ml", "qos": "high"}, 1.0) in got["dcsched_queue_jobs"]
    assert ({"state": "RUNNING", "account": "ml", "qos": "normal"}, 1.0) in got[
        "dcsched_queue_jobs"
    ]
    assert ({"state": "PENDING", "account": "ml", "qos": "high"}, 2.0) in got["dcsched_queue_gpus"]
    assert got["dcsched_job_queue_wait_seconds_count"] == [({}, 1.0)]
    assert got["dcsched_scheduler_pass_seconds_count"][0][1] >= 2
    assert got["dcsched_telemetry_messages_total"][0][1] > 0
    assert ({"kind": "telemetry", "reason": "invalid"}, 1.0) in got[
        "dcsched_messages_dropped_total"
    ]
    [(labels, usage)] = got["dcsched_fairshare_usage_gpu_seconds"]
    assert labels == {"account": "ml", "user": "root"} and usage > 0

    # The dashboard: every metric name in every query is a series of this scrape.
    names = set(got)
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    assert queries
    for q in queries:
        used = metric_names(q)
        assert used, q
        assert used <= names, f"{q}: no such series {sorted(used - names)}"

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus): scrape not linted")
    out = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line for line in (out.stdout + out.stderr).splitlines() if not KNOWN_LINT.match(line)
    ]
    assert out.returncode in (0, 3) and not problems, out.stdout + out.stderr


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL query (or Grafana's label_values()) reads."""
    q = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)  # string literals
    q = re.sub(r"\{[^}]*\}", "", q)  # label matchers
    q = re.sub(r"\[[^\]]*\]", "", q)  # range selectors
    q = re.sub(r"\$\w+", "", q)  # Grafana variables
    q = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", q)
    q = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", q)
    return {
        m.group(1)
        for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(?!\s*\()", q)
        if m.group(1).lower() not in _PROMQL_WORDS
    }


def test_metric_names_reads_promql() -> None:
    assert metric_names(
        'avg by (job) (A{x="y"} * on (Hostname, gpu) group_left (job, user) b_info)'
    ) == {"A", "b_info"}
    assert metric_names(
        "histogram_quantile(0.95, sum by (le) (rate(h_bucket[$__rate_interval])))"
    ) == {"h_bucket"}
    assert metric_names("count(g == 0) or vector(0)") == {"g"}
    assert metric_names("label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)") == {"DCGM_FI_DEV_GPU_UTIL"}
