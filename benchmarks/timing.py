"Timing shared by the benchmark scripts: contenders run interleaved, each keeps its best time"
import time
import torch

def clock(f):
    "Seconds `f()` takes (waiting for CUDA work to finish where there is any)"
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t = time.perf_counter(); f()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return time.perf_counter() - t

def best_of(runs, reps):
    "Run the contenders `runs` (name -> function) interleaved `reps` times, so drifts in machine speed hit all alike; best time each"
    best = {k: float('inf') for k in runs}
    for _ in range(reps):
        for k, f in runs.items(): best[k] = min(best[k], clock(f))
    return best
