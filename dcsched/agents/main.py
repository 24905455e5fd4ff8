"""`dc-agent run --config FILE`: the agent's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import msgspec

from dcsched import __version__
from dcsched.agents.agent import Agent
from dcsched.agents.errors import AgentError
from dcsched.protocol.config import ConfigError, load_config


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
    return p.parse_args(argv)


async def _run(agent: Agent) -> None:
    # SIGTERM (systemd stop) and Ctrl-C end the agent cleanly; jobs keep running.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config)
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
        asyncio.run(_run(Agent(cfg)))
    except (ConfigError, AgentError) as exc:
        print(f"dc-agent: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
