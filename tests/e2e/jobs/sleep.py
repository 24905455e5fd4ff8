"""Sleeps for argv[1] seconds, printing a line every 10 s."""

import os
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
start = time.monotonic()
while (left := seconds - (time.monotonic() - start)) > 0:
    print(f"rank {os.environ.get('RANK')}: {left:.0f} s left", flush=True)
    time.sleep(min(10.0, left))
