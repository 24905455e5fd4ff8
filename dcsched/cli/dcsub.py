"""`dcsub job.toml`: validate a job file and submit it.

Options given on the command line override the file, as sbatch's do: `-a/--array`,
`--hold`, `-d/--dependency`, `-t/--time`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dcsched import __version__
from dcsched.cli.common import client_from, duration, print_json, run_cli
from dcsched.protocol.config import add_connection_args
from dcsched.protocol.durations import FORMS
from dcsched.protocol.jobfile import JobFileError, load_job_file
from dcsched.protocol.jobspec import (
    JobSpec,
    JobSpecError,
    parse_array,
    parse_duration,
    spec_to_dict,
    validate_spec,
)

# the option that overrides each key, to name it in an error
_FLAGS = {
    "array": "--array",
    "hold": "--hold",
    "dependency": "--dependency",
    "resources.time_limit": "--time",
}


def _time(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (a bare number is minutes)") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcsub",
        description="Submit a job file (TOML) to dcsched. Options override the file.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("job_file", help="the job's TOML file (reference: README.md)")
    p.add_argument("--json", action="store_true", help='print {"job_id": ...}')
    p.add_argument("--dry-run", action="store_true", help="validate only; submit nothing")
    p.add_argument(
        "-a",
        "--array",
        metavar="INDEXES",
        help="a job array, overrides the file's array: 0-99%%8, 0-15:4, 1,3,5 (%%N: at most N "
        "tasks run at once)",
    )
    p.add_argument("--hold", action="store_true", help="submit held: it waits for dcctl release")
    p.add_argument(
        "-t",
        "--time",
        type=_time,
        metavar="LIMIT",
        help=f"time limit, overrides [resources] time_limit: {FORMS}",
    )
    p.add_argument(
        "-d",
        "--dependency",
        metavar="DEPS",
        help="overrides the file's dependency, comma-separated: afterok:12:13,afterany:14",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="admins: queue it even if no node of the cluster could run it (yet)",
    )
    add_connection_args(p)
    return p


def _override(spec: JobSpec, a: argparse.Namespace) -> JobSpec:
    """The file's spec with the command line's options in their place, validated again."""
    body: dict[str, Any] = spec_to_dict(spec)
    if a.array is not None:
        body["array"] = a.array
    if a.hold:
        body["hold"] = True
    if a.time is not None:
        body["resources"]["time_limit"] = a.time
    if a.dependency is not None:
        body["dependency"] = [d.strip() for d in a.dependency.split(",") if d.strip()]
    return validate_spec(body)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        try:
            spec = _override(load_job_file(args.job_file), args)
        except JobFileError as exc:
            print(
                f"dcsub: {args.job_file} is not a valid job; nothing was submitted:",
                file=sys.stderr,
            )
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        except JobSpecError as exc:
            print("dcsub: the options are not valid; nothing was submitted:", file=sys.stderr)
            for pr in exc.problems:
                print(f"  {_FLAGS.get(pr.key, pr.key)}: {pr.message}", file=sys.stderr)
                if pr.hint:
                    print(f"    hint: {pr.hint}", file=sys.stderr)
            return 1
        body = spec_to_dict(spec)
        indexes, limit = parse_array(spec.array) if spec.array else ((), None)
        if args.dry_run:
            if args.json:
                print_json({"valid": True, "job": body})
            else:
                r = spec.resources
                tasks = f"{len(indexes)} tasks of " if spec.array else ""
                print(
                    f"{args.job_file}: valid ({spec.name}: {tasks}{r.nodes} node(s) x "
                    f"{r.gpus_per_node} GPU(s), limit {duration(spec.time_limit_s)})"
                )
            return 0
        job_id = client_from(args).submit(body, force=args.force)
        held = " (held)" if spec.hold else ""
        if args.json:
            print_json({"job_id": job_id, **({"array_tasks": len(indexes)} if spec.array else {})})
        elif spec.array:
            # The array's id is its first task's; the tasks are 12_0, 12_1, ... (as in Slurm).
            at_once = f", at most {limit} at once" if limit else ""
            print(
                f"Submitted array job {job_id}: {len(indexes)} tasks, {job_id}_{indexes[0]}"
                f" to {job_id}_{indexes[-1]}{at_once}{held}"
            )
        else:
            print(f"Submitted job {job_id}{held}")
        return 0

    return run_cli("dcsub", go)


if __name__ == "__main__":
    sys.exit(main())
