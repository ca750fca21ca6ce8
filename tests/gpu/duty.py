"""A PyTorch matmul loop at a known duty cycle, timed with CUDA events.

Runs for SECONDS; in every PERIOD_MS it keeps the GPU busy for DUTY x PERIOD_MS
with matmuls, then sleeps. Prints one JSON line: its pid, the wall time, and
the busy time CUDA events measured (the sum of each burst's event-to-event time).
"""
import json
import os
import sys
import time

import torch

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
duty = float(sys.argv[2]) if len(sys.argv) > 2 else 0.4
period = 0.1

a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
torch.cuda.synchronize()

# How long one matmul takes, to size each burst.
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20):
    a @ b
end.record()
torch.cuda.synchronize()
per_matmul_s = start.elapsed_time(end) / 1000.0 / 20
burst = max(1, round(duty * period / per_matmul_s))

print(f"READY {os.getpid()}", flush=True)
busy = 0.0
t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    tick = time.monotonic()
    start.record()
    for _ in range(burst):
        a @ b
    end.record()
    end.synchronize()
    busy += start.elapsed_time(end) / 1000.0
    left = period - (time.monotonic() - tick)
    if left > 0:
        time.sleep(left)
wall = time.monotonic() - t0
print(json.dumps({"pid": os.getpid(), "wall_s": wall, "busy_s": busy,
                  "duty": busy / wall, "target_duty": duty}), flush=True)
