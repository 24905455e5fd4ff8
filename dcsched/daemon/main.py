"""`dcd run --config FILE` and `dcd demo`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from dcsched import __version__, missing_extra, setup_logging
from dcsched.protocol.config import ConfigError, config_path, load_config


async def _run(config_file: str | None) -> int:
    from dcsched.daemon.service import Daemon

    cfg = load_config(config_file)
    daemon = await Daemon.open(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop.set)
    await daemon.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dcd", description="dcsched head-node daemon")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help=f"config file (default: $DCSCHED_CONFIG or {config_path()})")
    check = sub.add_parser(
        "check-config", help="validate the config file: every problem with its file:line"
    )
    check.add_argument(
        "--config", help=f"config file (default: $DCSCHED_CONFIG or {config_path()})"
    )
    demo = sub.add_parser(
        "demo",
        help="a whole cluster on this machine: broker, daemon and agents with simulated GPUs",
    )
    demo.add_argument("--agents", type=int, default=2, help="simulated hosts (default 2)")
    demo.add_argument("--gpus", type=int, default=4, help="simulated GPUs per host (default 4)")
    demo.add_argument("--dir", help="state folder (default: a new temporary folder)")
    demo.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="embedded broker (auto: mosquitto when on PATH, else amqtt)",
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.cmd == "run":
            return asyncio.run(_run(args.config))
        if args.cmd == "check-config":
            from dcsched.daemon.checkconfig import check_daemon

            try:
                cfg = load_config(args.config)
            except ConfigError as exc:
                print(exc)
                return 1
            return check_daemon(cfg).report("dcd")
        from dcsched.daemon.demo import run_demo

        return asyncio.run(run_demo(args.agents, args.gpus, args.dir, args.broker))
    except ConfigError as exc:
        print(f"dcd: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        message = missing_extra("dcd", exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
