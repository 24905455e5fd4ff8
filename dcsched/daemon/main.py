"""`dcd run --config FILE` and `dcd demo`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from dcsched import __version__, missing_extra, setup_logging
from dcsched.protocol.config import ConfigError, config_path, load_config


async def _run(config_file: str | None, insecure: bool) -> int:
    from dcsched.daemon import gctune
    from dcsched.daemon.service import Daemon

    cfg = load_config(config_file)
    daemon = await Daemon.open(cfg, insecure=insecure)
    gctune.settle()  # the loaded state is what the daemon keeps: out of the collector's way
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop.set)
    await daemon.run()
    return daemon.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcd", description="dcsched head-node daemon")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help=f"config file (default: $DCSCHED_CONFIG or {config_path()})")
    run.add_argument(
        "--insecure",
        action="store_true",
        help="run without [cluster] key_file (commands unsigned: a single-user test only)",
    )
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
    auth = sub.add_parser(
        "broker-auth",
        help="write Mosquitto's password file and ACL for a list of hosts (see docs/security.md)",
    )
    auth.add_argument(
        "--hosts", nargs="*", default=[], help="host names (comma or space separated)"
    )
    auth.add_argument("--hosts-file", help="a file of host names, one a line")
    auth.add_argument("--out", required=True, help="folder for the files (created)")
    auth.add_argument("--config", help="config file for [broker] topic_prefix (optional)")
    auth.add_argument("--daemon-user", default="dcd", help="the daemon's MQTT user (default dcd)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.cmd == "broker-auth":
            return _broker_auth(args)
        if args.cmd == "run":
            return asyncio.run(_run(args.config, args.insecure))
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


def _broker_auth(args: argparse.Namespace) -> int:
    from dcsched.daemon.brokerauth import BrokerAuthError, read_hosts, write_broker_auth

    cfg = load_config(args.config, missing_ok=args.config is None)
    try:
        hosts = read_hosts(args.hosts, args.hosts_file)
        auth = write_broker_auth(args.out, hosts, cfg.broker.topic_prefix, args.daemon_user)
    except (BrokerAuthError, OSError) as exc:
        print(f"dcd broker-auth: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {auth.password_file} and {auth.acl_file} for {len(hosts)} host(s) and the "
        f"daemon's user {args.daemon_user!r}; passwords in {auth.folder / 'passwords'}/.\n"
        "Mosquitto: password_file and acl_file (systemd/mosquitto-dcsched.conf), readable by "
        "the mosquitto user. Each host: [broker] password_file = its own password file (mode "
        "0600, root); username defaults to the host name. The daemon: username = "
        f"{args.daemon_user!r} and its password file."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
