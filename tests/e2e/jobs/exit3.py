"""A worker that fails with exit code 3 (rank 0 only; the others wait to be stopped)."""

import os
import sys
import time

if os.environ.get("RANK") == "0":
    print("rank 0 exiting with 3", flush=True)
    sys.exit(3)
time.sleep(60)
