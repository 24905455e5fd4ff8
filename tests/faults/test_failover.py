"""Failover with real processes: PostgreSQL (the machine's, a database per test), a
Mosquitto, two `dcd` on one store with TLS listeners, three `dc-agent`s and a small
workload. The leader is SIGKILLed while jobs run; the standby takes over, the clients
(a list of both daemons, a token) follow it, and every job ends exactly once. Then the new
leader is frozen, its database session cut (as a network cut would), a third daemon takes
over, and the old one, thawed, sends nothing: no agent refuses a stale command. A network
cut between the leader and PostgreSQL (tests/faults/netcut.py): the standby, which serves
reads meanwhile, takes over; the cut-off leader sends nothing more and exits."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dcsched.client import ApiError, Client, ClientError, StreamEvent
from tests.conftest import PROCESS_TIMEOUT, Procs, free_port
from tests.faults.harness import Rig, until
from tests.faults.netcut import NetCut
from tests.integration.test_broker_auth import make_test_ca

pytestmark = [pytest.mark.e2e, pytest.mark.faults, PROCESS_TIMEOUT]
psycopg = pytest.importorskip("psycopg")

# Appends its pid to argv[1].runs (so a second run shows), waits for argv[1], exits 0.
RUN_ONCE = """\
import os, sys, time
marker = sys.argv[1]
with open(marker + ".runs", "a") as f:
    f.write(f"{os.getpid()}\\n")
while not os.path.exists(marker):
    time.sleep(0.1)
"""
JOBS = 12  # 6 GPUs: half run when the leader dies, half wait


HOSTS = ("node1", "node2", "node3")


class HaRig(Rig):
    """The Rig's broker and agents; daemons of its own, on one PostgreSQL store."""

    servers: list[str]
    token: str  # a's token for the login node's client

    def start_ha_daemon(self, name: str, store: str, ca_dir: Path) -> subprocess.Popen[bytes]:
        port = free_port()
        d = self.dir / name
        d.mkdir()
        conf = d / "dcd.toml"
        conf.write_text(
            self._common() + f'[daemon]\nstate_dir = "{d}"\nsocket = "{d / "dcd.sock"}"\n'
            f'store = "{store}"\nmetrics_listen = ""\nlisten = "127.0.0.1:{port}"\n'
            f'tls_cert_file = "{ca_dir / "server.crt"}"\ntls_key_file = "{ca_dir / "server.key"}"\n'
            f'advertise_url = "https://127.0.0.1:{port}"\ncommand_retry_s = 1.0\n'
            "pass_interval_s = 1.0\nnode_timeout_s = 30.0\ncancel_grace_s = 3.0\n"
            f'port_range = "{20000 + port % 20000}-{20099 + port % 20000}"\n'
        )
        with (self.dir / f"{name}.log").open("ab") as log:
            proc = self.procs.popen(
                [sys.executable, "-m", "dcsched.daemon.main", "run", "--config", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.servers.append(f"127.0.0.1:{port}")
        return proc

    def pair(
        self, store_a: str, store_b: str, ca_dir: Path
    ) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
        """Daemon a leading on `store_a`, b standing by on `store_b` (the same PostgreSQL), the
        client of a login node (both daemons, the standby first) and three agents up."""
        a = self.start_ha_daemon("a", store_a, ca_dir)
        until(lambda: _role(self.dir / "a" / "dcd.sock") == "leader", 60, "a to lead")
        b = self.start_ha_daemon("b", store_b, ca_dir)
        until(lambda: _role(self.dir / "b" / "dcd.sock") == "standby", 60, "b to stand by")
        self.token = Client(str(self.dir / "a" / "dcd.sock")).new_token()["token"]
        self.client = Client(
            timeout=20.0,
            servers=self.servers[::-1],
            token=self.token,
            ca_file=str(ca_dir / "ca.crt"),
        )
        for h in HOSTS:
            self.start_agent(h)
        self.wait_nodes_up(*HOSTS)
        return a, b

    def run_once_spec(self, i: int) -> dict[str, Any]:
        """Job i of the workload: it fails if it ever runs a second time (RUN_ONCE)."""
        script = self.jobs_dir / "run_once.py"
        if not script.exists():
            script.write_text(RUN_ONCE)
        marker = str(self.marker(f"w{i}"))
        return self.spec(f"w{i}", marker, command=[str(script), marker])


def _role(sock: Path) -> str:
    try:
        return str(Client(str(sock), timeout=5).health().get("role", ""))
    except ApiError as exc:
        return str(exc.details.get("role", ""))
    except ClientError:
        return ""


def _terminate_session(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE %s",
            (f"dcd@%:{pid}",),
        )


def test_the_standby_takes_over_and_every_job_ends_once(
    tmp_path: Path, procs: Procs, postgres_url: str
) -> None:
    make_test_ca(tmp_path)
    rig = HaRig(tmp_path, procs)
    rig.servers = []
    rig.start_broker()
    a, b = rig.pair(postgres_url, postgres_url, tmp_path)
    jobs = [rig.submit(rig.run_once_spec(i)) for i in range(JOBS)]
    until(lambda: sum(rig.job(j)["state"] == "RUNNING" for j in jobs) == 6, 120, "six jobs running")

    # The event stream of a login node's client, open on the leader, moves to the next.
    events: queue.Queue[StreamEvent] = queue.Queue()
    stream = rig.client.events()
    threading.Thread(target=lambda: [events.put(e) for e in stream], daemon=True).start()
    assert events.get(timeout=30).kind == "hello"

    killed = time.monotonic()
    a.send_signal(signal.SIGKILL)
    a.wait(30)
    until(lambda: _role(tmp_path / "b" / "dcd.sock") == "leader", 60, "b to take over")
    took_over = time.monotonic() - killed
    # b knows nothing of a's cursors: it says so, and the stream goes on from b.
    assert until(lambda: events.get(timeout=30).kind == "reset", 60, "a reset from b")
    stream.close()
    for i in range(JOBS):
        rig.marker(f"w{i}").touch()
    ends = {j: rig.wait(j, {"COMPLETED"}, 180)["state"] for j in jobs}
    resumed = time.monotonic() - killed
    assert set(ends.values()) == {"COMPLETED"}, rig.logs()
    for i in range(JOBS):  # each ran exactly once
        runs = (rig.jobs_dir / f"w{i}.go.runs").read_text().split()
        assert len(runs) == 1, (i, runs, rig.logs())
    print(f"failover: takeover {took_over:.1f} s after SIGKILL; all {JOBS} done {resumed:.1f} s")

    # The deposed-leader case: b frozen, its session cut, a third daemon leads; b thawed
    # must send nothing (its next batch finds the lock gone) and exit 3.
    rig.start_ha_daemon("c", postgres_url, tmp_path)
    until(lambda: _role(tmp_path / "c" / "dcd.sock") == "standby", 60, "c to stand by")
    # A frozen daemon's listener accepts and never answers: a short timeout passes it over.
    rig.client = Client(
        timeout=5.0, servers=rig.servers[::-1], token=rig.token, ca_file=str(tmp_path / "ca.crt")
    )
    late = [rig.submit(rig.run_once_spec(i)) for i in range(JOBS, JOBS + 3)]
    until(lambda: all(rig.job(j)["state"] == "RUNNING" for j in late), 120, "late jobs running")
    b.send_signal(signal.SIGSTOP)
    _terminate_session(postgres_url, b.pid)
    until(lambda: _role(tmp_path / "c" / "dcd.sock") == "leader", 60, "c to take over")
    for i in range(JOBS, JOBS + 3):
        rig.marker(f"w{i}").touch()
    b.send_signal(signal.SIGCONT)
    assert b.wait(60) == 3, rig.logs()
    for j in late:
        rig.wait(j, {"COMPLETED"}, 120)
    agent_logs = "".join((tmp_path / f"{h}.log").read_text() for h in HOSTS)
    assert "dropped a command" not in agent_logs, rig.logs()  # no stale epoch, no replay


# Appends its pid to argv[1].runs, sleeps argv[2] seconds, exits 0.
RUN_AND_END = """\
import os, sys, time
with open(sys.argv[1] + ".runs", "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.skipif(
    not os.environ.get("DCSCHED_FAILOVER_KILLS"),
    reason="a measurement run (minutes): DCSCHED_FAILOVER_KILLS=5 DCSCHED_FAILOVER_JOBS=100",
)
def test_seeded_kills_of_the_leader_under_a_workload(
    tmp_path: Path, procs: Procs, postgres_url: str
) -> None:
    """The leader SIGKILLed at seeded random moments while jobs come and go; each killed
    daemon comes back as a standby. Every job completes exactly once; takeovers timed."""
    kills = int(os.environ["DCSCHED_FAILOVER_KILLS"])
    n_jobs = int(os.environ.get("DCSCHED_FAILOVER_JOBS", "100"))
    rng = random.Random(int(os.environ.get("DCSCHED_FAILOVER_SEED", "12")))
    make_test_ca(tmp_path)
    rig = HaRig(tmp_path, procs)
    rig.servers = []
    rig.start_broker()
    daemons = {}
    for name in ("d0", "d1"):
        daemons[name] = rig.start_ha_daemon(name, postgres_url, tmp_path)
        up = tmp_path / name / "dcd.sock"
        until(lambda up=up: _role(up) in ("leader", "standby"), 60, f"{name} up")
    leader = next(n for n in daemons if _role(tmp_path / n / "dcd.sock") == "leader")
    token = Client(str(tmp_path / leader / "dcd.sock")).new_token()["token"]
    ca = str(tmp_path / "ca.crt")
    rig.client = Client(timeout=20.0, servers=rig.servers, token=token, ca_file=ca)
    hosts = ("node1", "node2", "node3")
    for h in hosts:
        rig.start_agent(h)
    rig.wait_nodes_up(*hosts)
    script = rig.jobs_dir / "run_and_end.py"
    script.write_text(RUN_AND_END)
    jobs = []
    for i in range(n_jobs):
        marker = str(rig.marker(f"j{i}"))
        secs = f"{rng.uniform(0.5, 4.0):.1f}"
        jobs.append(rig.submit(rig.spec(f"j{i}", marker, command=[str(script), marker, secs])))
    takeovers = []
    for k in range(kills):
        time.sleep(rng.uniform(1.0, 8.0))
        killed = time.monotonic()
        daemons[leader].send_signal(signal.SIGKILL)
        daemons[leader].wait(30)

        def new_leader() -> str | None:
            for n, proc in daemons.items():
                if proc.poll() is None and _role(tmp_path / n / "dcd.sock") == "leader":
                    return n
            return None

        leader = until(new_leader, 60, "a new leader", every=0.1)
        takeovers.append(round(time.monotonic() - killed, 2))
        name = f"d{k + 2}"  # the killed one comes back, as a standby
        daemons[name] = rig.start_ha_daemon(name, postgres_url, tmp_path)
        rig.client = Client(timeout=20.0, servers=rig.servers, token=rig.token, ca_file=ca)
    ends = {j: rig.wait(j, {"COMPLETED"}, 600)["state"] for j in jobs}
    assert set(ends.values()) == {"COMPLETED"}, rig.logs()
    runs = [(rig.jobs_dir / f"j{i}.go.runs").read_text().split() for i in range(n_jobs)]
    twice = [i for i, r in enumerate(runs) if len(r) != 1]
    assert not twice, (twice, rig.logs())
    agent_logs = "".join((tmp_path / f"{h}.log").read_text() for h in HOSTS)
    assert "dropped a command" not in agent_logs, rig.logs()
    print(f"failover: {n_jobs} jobs, {kills} kills, takeovers (s): {takeovers}")


class CommandSniffer:
    """Every command the broker carries to the agents: (monotonic time seen, host, epoch)."""

    def __init__(self, rig: Rig) -> None:
        self.seen: list[tuple[float, str, int]] = []
        topic = f"{rig.prefix}/hosts/+/cmd"
        self.proc = rig.procs.popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(rig.broker_port), "-t", topic, "-v"],
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            topic, _, payload = line.decode().partition(" ")
            signed = json.loads(payload)
            self.seen.append((time.monotonic(), topic.split("/")[-2], int(signed["epoch"])))


def test_a_network_cut_between_the_leader_and_postgresql(
    tmp_path: Path, procs: Procs, postgres_url: str
) -> None:
    """The leader reaches PostgreSQL over a link the test cuts (no reset, no answer: a
    silent fault). The server drops its session (keepalives), so the standby takes over;
    the cut-off leader blocks in its next store call or lock check, sends nothing, and
    exits 3 once its own TCP gives up. Every job ends once; takeover times are printed."""
    why = NetCut.available()
    if why:
        pytest.skip(why)
    make_test_ca(tmp_path)
    rig = HaRig(tmp_path, procs)
    rig.servers = []
    rig.start_broker()
    sniffer = CommandSniffer(rig)
    pg = urlsplit(postgres_url)
    with NetCut((pg.hostname or "127.0.0.1", pg.port or 5432)) as net:
        user = pg.netloc.rpartition("@")[0]
        cut_url = pg._replace(netloc=f"{user}@{net.address}" if user else net.address).geturl()
        sock_a, sock_b = tmp_path / "a" / "dcd.sock", tmp_path / "b" / "dcd.sock"
        a, _ = rig.pair(cut_url, postgres_url, tmp_path)
        jobs = [rig.submit(rig.run_once_spec(i)) for i in range(JOBS)]
        until(lambda: sum(rig.job(j)["state"] == "RUNNING" for j in jobs) == 6, 120, "6 running")
        running = [j for j in jobs if rig.job(j)["state"] == "RUNNING"]
        waiting = [j for j in jobs if j not in running]

        # The standby answers reads from the store, says so, and sends changes to the leader.
        standby = Client(str(sock_b), timeout=10.0)
        listed = until(lambda: standby.request("GET", "/v1/jobs"), 30, "the standby's list")
        assert sorted(j["id"] for j in listed["jobs"]) == sorted(jobs)
        assert listed["standby"]["leader"].startswith("dcd@")
        assert {standby.job(j)["state"] for j in running} == {"RUNNING"}
        with pytest.raises(ApiError, match="standby, leader is dcd@") as refused:
            standby.submit(rig.run_once_spec(99))
        assert refused.value.status == 503

        # dcctl of a login node, the standby listed first: its reads and changes reach a.
        ca = str(tmp_path / "ca.crt")
        env = {k: v for k, v in os.environ.items() if k != "DCSCHED_SOCKET"}
        servers = ",".join(rig.servers[::-1])
        dcctl = [sys.executable, "-m", "dcsched.cli.dcctl", "--server", servers]
        dcctl += ["--ca-file", ca, "--config", str(tmp_path / "a" / "dcd.toml")]
        for args, state in ((["hold"], "HELD"), (["queue"], "HELD"), (["release"], "PENDING")):
            out = subprocess.run(
                [*dcctl, *args, *([str(waiting[0])] if args != ["queue"] else [])],
                env={**env, "DCSCHED_TOKEN": rig.token},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.returncode == 0, (args, out.stderr)
            assert Client(str(sock_a)).job(waiting[0])["state"] == state
            if args == ["queue"]:
                assert str(waiting[0]) in out.stdout, out.stdout
        epoch_a = Client(str(sock_a)).cluster()["epoch"]
        cut = time.monotonic()
        net.cut()
        for j in running:  # they end while nobody can journal it: the next leader will
            rig.marker(f"w{jobs.index(j)}").touch()
        until(lambda: _role(sock_b) == "leader", 60, "b to take over", every=0.1)
        took_over = time.monotonic() - cut
        # Read from b: a, cut off, still answers from its memory until it gives up.
        rig.client = Client(str(sock_b), timeout=20.0)
        until(
            lambda: any(rig.job(j)["state"] == "RUNNING" for j in waiting),
            60,
            "b to schedule",
            every=0.1,
        )
        resumed = time.monotonic() - cut
        assert a.wait(90) == 3, rig.logs()
        stood_down = time.monotonic() - cut
        for j in waiting:
            rig.marker(f"w{jobs.index(j)}").touch()
        ends = {j: rig.wait(j, {"COMPLETED"}, 180)["state"] for j in jobs}
    assert set(ends.values()) == {"COMPLETED"}, rig.logs()
    for i in range(JOBS):  # each ran exactly once
        runs = (rig.jobs_dir / f"w{i}.go.runs").read_text().split()
        assert len(runs) == 1, (i, runs, rig.logs())
    epoch_b = Client(str(sock_b)).cluster()["epoch"]
    assert epoch_b > epoch_a
    # Nothing of a's reached the agents once b led, and no agent dropped a command.
    late = [(t - cut, h, e) for t, h, e in sniffer.seen if e != epoch_b and t > cut + took_over]
    assert not late, late
    assert {e for _, _, e in sniffer.seen} <= {epoch_a, epoch_b}
    agent_logs = "".join((tmp_path / f"{h}.log").read_text() for h in HOSTS)
    assert "dropped a command" not in agent_logs, rig.logs()
    print(
        f"network cut: b led {took_over:.1f} s after the cut, scheduled {resumed:.1f} s after;"
        f" a sent nothing more and exited 3 {stood_down:.1f} s after"
    )
