"""The cyclic garbage collector, tuned for the daemon's heap.

At a real cluster's size the daemon holds hundreds of thousands of container objects that
live for hours (live jobs, their scheduler views and listing rows, telemetry history), and
creates tens of thousands a second that live a little longer than a young collection's
interval (1,000 hosts' telemetry, each message a tree of structs and lists kept until the
host's next one; a scheduling pass's working set, kept across its slices). With CPython's
default thresholds (700, 10, 10) those were promoted to the old generation and triggered a
full collection of the whole heap every second or two while jobs were submitted: pauses of
60-400 ms, the submissions' p99 (bench/daemon_scale.py, docs/performance.md).

So: what exists after start-up (modules, the loaded state) is frozen, out of every
collection's reach; a young collection waits for 10,000 surviving allocations (a few
milliseconds each: 50,000 made them tens); the middle one waits for 50 of those, by when the
telemetry it would promote has been freed by refcounting; and the full collection, which
walks everything, runs hundreds of times less often than by default. Cycles are still
collected, only later.
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 50, 100)


def settle() -> None:
    """After start-up: collect once, freeze what is left, and set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
