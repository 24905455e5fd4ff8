"""`dcsub job.toml`: validate a job file and submit it."""

from __future__ import annotations

import argparse
import sys

from dcsched import __version__
from dcsched.cli.common import add_connection_args, client_from, print_json, run_cli
from dcsched.protocol.jobfile import JobFileError, load_job_file
from dcsched.protocol.jobspec import spec_to_dict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dcsub", description="Submit a job file (TOML) to dcsched.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("job_file", help="the job's TOML file (reference: README.md)")
    p.add_argument("--json", action="store_true", help='print {"job_id": ...}')
    p.add_argument("--dry-run", action="store_true", help="validate only; submit nothing")
    p.add_argument("--hold", action="store_true", help="submit held: it waits for dcctl release")
    add_connection_args(p)
    args = p.parse_args(argv)

    def go() -> int:
        try:
            spec = load_job_file(args.job_file)
        except JobFileError as exc:
            print(
                f"dcsub: {args.job_file} is not a valid job; nothing was submitted:",
                file=sys.stderr,
            )
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        body = spec_to_dict(spec)
        if args.hold:
            body["hold"] = True
        if args.dry_run:
            if args.json:
                print_json({"valid": True, "job": body})
            else:
                r = spec.resources
                print(
                    f"{args.job_file}: valid ({spec.name}: {r.nodes} node(s) x "
                    f"{r.gpus_per_node} GPU(s), limit {spec.time_limit_s} s)"
                )
            return 0
        job_id = client_from(args).submit(body)
        if args.json:
            print_json({"job_id": job_id})
        else:
            print(f"Submitted job {job_id}")
        return 0

    return run_cli("dcsub", go)


if __name__ == "__main__":
    sys.exit(main())
