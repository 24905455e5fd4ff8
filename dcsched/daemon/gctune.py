"""The cyclic garbage collector, tuned for the daemon's heap.

At a real cluster's size the daemon holds hundreds of thousands of container objects that
live for hours (live jobs, their scheduler views and listing rows, telemetry history), and
receives some 50,000 short-lived ones a second (1,000 hosts' telemetry, each message a
tree of structs and lists that refcounting frees a second later). With CPython's default
thresholds (700, 10, 10) the collector ran a young collection every few milliseconds and a
full one over the whole heap every second or two while jobs were submitted: pauses of
60-400 ms, the submissions' p99 (bench/daemon_scale.py, docs/performance.md).

So: what exists after start-up (modules, the loaded state) is frozen, out of every
collection's reach; a young collection waits for 50,000 surviving allocations (most of the
telemetry has been freed by refcounting before that); and the full collection, which walks
everything, runs a hundred times less often. Reference cycles are still collected, only
later; the daemon's state has none (plain frozen dataclasses and dicts).
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 50, 100)


def settle() -> None:
    """After start-up: collect once, freeze what is left, and set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
