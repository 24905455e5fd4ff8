"""A toy training run that checkpoints on SIGUSR1 (dcsched's warning signal) and resumes.

argv: RESULT CHECKPOINT [GATE]. 40 steps of a deterministic update; on a first run
(DCSCHED_RESTART_COUNT=0) it waits at step 20 until GATE exists, so a test can stop it
there. On SIGUSR1 it saves (step, state) to CHECKPOINT at the next step and exits 0; a run
that finds CHECKPOINT resumes from it. RESULT gets the final state, the restart count and
the step it resumed from.
"""

import json
import os
import signal
import sys
import time

result, checkpoint = sys.argv[1], sys.argv[2]
gate = sys.argv[3] if len(sys.argv) > 3 else ""
restarts = int(os.environ.get("DCSCHED_RESTART_COUNT", "0"))
warned = []


def on_warning(signum, frame):
    warned.append(signum)


def save(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


signal.signal(signal.SIGUSR1, on_warning)
step, state, resumed = 0, 1, None
if os.path.exists(checkpoint):
    with open(checkpoint) as f:
        saved = json.load(f)
    step, state, resumed = saved["step"], saved["state"], saved["step"]
    print(f"resumed from step {step} (restart {restarts})", flush=True)
while step < 40:
    if warned:
        save(checkpoint, {"step": step, "state": state})
        print(f"warning signal: checkpoint at step {step}", flush=True)
        sys.exit(0)
    if step == 20 and gate and restarts == 0 and not os.path.exists(gate):
        if not os.path.exists(gate + ".waiting"):
            save(gate + ".waiting", {"pid": os.getpid()})
        time.sleep(0.05)
        continue
    state = (state * 31 + step) % 1_000_003
    step += 1
save(result, {"state": state, "restarts": restarts, "resumed": resumed})
