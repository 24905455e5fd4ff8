"""`dc-agent run --config FILE`: the agent's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import msgspec

from dcsched import __version__, setup_logging
from dcsched.agents.agent import Agent
from dcsched.agents.checkconfig import check_agent
from dcsched.agents.errors import AgentError
from dcsched.agents.gpu import sim_faults_file
from dcsched.agents.gpu.sim import FAULT_KINDS
from dcsched.protocol.config import AgentConfig, ConfigError, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dc-agent", description="dcsched GPU host agent")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent in the foreground (as systemd does)")
    run.add_argument(
        "--config", help="config file (default: $DCSCHED_CONFIG, else /etc/dcsched/dcsched.toml)"
    )
    run.add_argument("--host", help="host name on the bus (overrides [agent] host)")
    run.add_argument("--backend", choices=["nvml", "sim"], help="overrides [agent] backend")
    run.add_argument("--sim-gpus", type=int, help="overrides [agent] sim_gpus")
    run.add_argument("--state-dir", help="overrides [agent] state_dir")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument(
        "--insecure",
        action="store_true",
        help="run without [cluster] key_file: any broker client can run commands as root "
        "here (a single-user test only)",
    )
    check = sub.add_parser(
        "check-config", help="validate the config file: every problem with its file:line"
    )
    check.add_argument(
        "--config", help="config file (default: $DCSCHED_CONFIG, else /etc/dcsched/dcsched.toml)"
    )
    fault = sub.add_parser(
        "sim-fault", help="inject (or --clear) a fault on a simulated GPU of this host's agent"
    )
    fault.add_argument(
        "--config", help="config file (default: $DCSCHED_CONFIG, else /etc/dcsched/dcsched.toml)"
    )
    fault.add_argument("--state-dir", help="overrides [agent] state_dir")
    fault.add_argument("--gpu", type=int, help="GPU index")
    fault.add_argument("--kind", choices=FAULT_KINDS, default="xid")
    fault.add_argument("--code", type=int, help="the XID (e.g. 79: fallen off the bus)")
    fault.add_argument("--detail", default="", help="text the fault carries")
    fault.add_argument("--clear", action="store_true", help="heal the GPU (no --gpu: all)")
    return p.parse_args(argv)


def sim_fault(cfg: AgentConfig, args: argparse.Namespace) -> None:
    """Edits the sim backend's faults file (read by a running agent with each sample)."""
    path = sim_faults_file(cfg)
    try:
        with open(path) as f:
            faults: dict[str, object] = json.load(f)
    except FileNotFoundError:
        faults = {}
    except (OSError, ValueError) as exc:
        raise AgentError(f"{path}: {exc}") from None
    if args.clear:
        faults = {} if args.gpu is None else {k: v for k, v in faults.items() if k != str(args.gpu)}
    elif args.gpu is None:
        raise AgentError("sim-fault: say which GPU (--gpu N), or --clear")
    else:
        entry: dict[str, object] = {"kind": args.kind, "detail": args.detail}
        if args.code is not None:
            entry["code"] = args.code
        faults[str(args.gpu)] = entry
    os.makedirs(cfg.state_dir, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(faults, f)
    os.replace(tmp, path)


async def _run(agent: Agent) -> None:
    # SIGTERM (systemd stop) and Ctrl-C end the agent cleanly; jobs keep running.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    if args.command == "check-config":
        try:
            checked = load_config(args.config)
        except ConfigError as exc:
            print(exc)
            return 1
        return check_agent(checked).report("dc-agent")
    try:
        cfg = load_config(args.config)
        if args.command == "sim-fault":
            if args.state_dir:
                cfg = msgspec.structs.replace(
                    cfg, agent=msgspec.structs.replace(cfg.agent, state_dir=args.state_dir)
                )
            sim_fault(cfg.agent, args)
            return 0
        overrides = {
            k: v
            for k, v in {
                "host": args.host,
                "backend": args.backend,
                "sim_gpus": args.sim_gpus,
                "state_dir": args.state_dir,
            }.items()
            if v is not None
        }
        cfg = msgspec.structs.replace(cfg, agent=msgspec.structs.replace(cfg.agent, **overrides))
        cfg.broker.host_port()  # a bad broker url is an error now, not a reconnect loop
        cfg.broker.tls_context()  # and so is a bad ca_file
        asyncio.run(_run(Agent(cfg, insecure=args.insecure)))
    except (ConfigError, AgentError) as exc:
        print(f"dc-agent: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
