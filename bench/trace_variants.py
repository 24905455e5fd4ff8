"""Workloads for checking a policy beyond the traces it was tuned on (docs/scheduler.md).

    python bench/trace_variants.py [--traces ../shared/traces] [--out /tmp/dcsched-variants]

Writes, deterministically:
- `itp-half.csv`: every other job of itp-dev (for 20x8: the same offered load on half the
  cluster, fewer tenants' jobs at a time);
- `synth4.csv`: a synthetic four-tenant workload, 12,000 jobs over about 24 days, with
  Pareto (alpha 0.9) run times (median about 4 minutes, a tail of days), day/night bursts,
  and time limits users pick coarsely, half of them far above the run (24 h or 72 h asked
  whatever the job needs): the time limit says little there. Meant for 12x8 (offered load
  about 0.75, bursts above capacity).
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from pathlib import Path

HOUR, DAY = 3600, 86400
LIMITS = (HOUR, 4 * HOUR, 12 * HOUR, DAY, 3 * DAY, 7 * DAY, 14 * DAY)
# tenant: (share of jobs, GPU counts it asks for)
TENANTS = {
    "ta": (0.45, (1, 1, 1, 2, 4, 8)),
    "tb": (0.25, (1, 2, 4, 8, 8, 16)),
    "tc": (0.2, (1, 1, 1, 1, 2)),
    "td": (0.1, (8, 16, 32)),
}


def synth4(n: int = 12000, seed: int = 13) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    t = 0.0
    for i in range(n):
        day = math.sin(t / DAY * 2 * math.pi) > 0
        t += rng.expovariate((1.6 if day else 0.4) / 170.0)
        tenant = rng.choices(list(TENANTS), [v[0] for v in TENANTS.values()])[0]
        gpus = rng.choice(TENANTS[tenant][1])
        run = max(1, round(min(14 * DAY - 1, 120 * rng.paretovariate(0.9))))
        limit = next(lim for lim in LIMITS if lim >= run)
        if rng.random() < 0.5:  # asks far more than it needs
            limit = max(limit, rng.choice((DAY, 3 * DAY)))
        out.append(
            {
                "job_id": f"s{i}",
                "submit_s": round(t),
                "duration_s": run,
                "gpus": gpus,
                "user": f"{tenant}u{rng.randrange(3)}",
                "account": tenant,
                "time_limit_s": limit,
            }
        )
    return out


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("../shared/traces"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/dcsched-variants"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.traces / "itp-dev.csv").open(newline="") as f:
        itp: list[dict[str, object]] = list(csv.DictReader(f))
    _write(args.out / "itp-half.csv", itp[::2])
    _write(args.out / "synth4.csv", synth4())
    print(args.out)


if __name__ == "__main__":
    main()
