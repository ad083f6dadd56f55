"""netlens under torch.distributed: the share of work each rank does, and the wall time of 1 vs 2 processes for a landscape2d.

    python benchmarks/distributed.py [--steps 7] [--examples 256]

Runs the same worker three ways on the digits model (CPU, gloo): one process with one thread, one process with two
threads (what one process gets from a 2-core machine), and `torchrun --nproc_per_node 2` with one thread per process.
Each worker times landscape2d (steps x steps grid over n examples) between barriers, and counts, with a forward hook,
the share of the work its rank did: grid points of landscape2d, batches of compare_models over a DistributedSampler
shard, frequencies of fourier_map. "launch" is the whole command as the shell sees it (start-up and imports included).

Measured on the 2-core development machine, shared with other jobs (load average ~14 during the run):

processes x threads   rank  grid points  batches  frequencies  landscape s  launch s
1 x 1                    0           49        4           85        18.55     41.09
1 x 2                    0           49        4           85        86.14    113.98
2 x 1                    0           25        2           43         9.81     42.46
2 x 1                    1           24        2           42         9.82     42.46
landscape2d: 1.89x faster on 2 processes than on 1 (one thread each); two threads in one process oversubscribe the
loaded cores. The launch times are dominated by start-up and by compare_models / fourier_map, which are short here.
"""
import argparse, atexit, json, os, subprocess, sys, tempfile, time
from pathlib import Path

def worker(a):
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset, DistributedSampler
    if 'RANK' in os.environ: dist.init_process_group('gloo'); atexit.register(dist.destroy_process_group)   # leave the group before exiting
    from netlens.data import digits_cnn, digits_data
    from netlens.distributed import get_rank, get_world_size, barrier
    from netlens.landscape import landscape2d, fourier_map
    from netlens.similarity import compare_models
    torch.set_num_threads(a.threads)
    model, (x, y) = digits_cnn(), digits_data('all')
    x, y = x[:a.examples], y[:a.examples]
    sizes = []
    model.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    data = [(x[i:i + 128], y[i:i + 128]) for i in range(0, a.examples, 128)]
    barrier(); t = time.perf_counter()
    landscape2d(model, data, F.cross_entropy, (-1, 1), (-1, 1), 2 / (a.steps - 1), seed=0, show_progress=False)
    barrier(); secs = time.perf_counter() - t
    points = len(sizes) // len(data); sizes.clear()
    ds = TensorDataset(x, y)
    compare_models(model, model, DataLoader(ds, batch_size=64, sampler=DistributedSampler(ds, shuffle=False) if get_world_size() > 1 else None),
                   ['conv2'], ['conv3'], show_progress=False)
    batches = len(sizes); sizes.clear()
    fourier_map(model, (x[:16], y[:16]), max_freq=6, show_progress=False)
    freqs = sum(sizes) // 16
    res = dict(rank=get_rank(), world=get_world_size(), threads=a.threads, landscape_s=secs, points=points, batches=batches, freqs=freqs)
    Path(a.out, f"r{get_rank()}.json").write_text(json.dumps(res))   # a file per rank: lines two ranks print to one stdout can merge

def launch(procs, threads, a):
    here = Path(__file__).resolve()
    run = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(procs)] if procs > 1 else [sys.executable]
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        p = subprocess.run(run + [str(here), '--worker', '--threads', str(threads), '--steps', str(a.steps), '--examples', str(a.examples), '--out', out],
                           capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': str(threads)})
        wall = time.perf_counter() - t
        if p.returncode: raise RuntimeError(p.stdout + p.stderr)
        return wall, [json.loads(Path(out, f"r{r}.json").read_text()) for r in range(procs)]

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--steps', type=int, default=7); p.add_argument('--examples', type=int, default=256)
    p.add_argument('--threads', type=int, default=1); p.add_argument('--worker', action='store_true'); p.add_argument('--out', default='.')
    a = p.parse_args()
    if a.worker: return worker(a)
    print(f"landscape2d {a.steps}x{a.steps} = {a.steps ** 2} grid points over {a.examples} digits; compare_models over {a.examples} examples in batches of 64; "
          f"fourier_map max_freq=6 on 16 images; {os.cpu_count()} cores")
    print(f"{'processes x threads':<21}{'rank':>5}{'grid points':>13}{'batches':>9}{'frequencies':>13}{'landscape s':>13}{'launch s':>10}")
    base = None
    for procs, threads in ((1, 1), (1, 2), (2, 1)):
        wall, ranks = launch(procs, threads, a)
        for d in ranks:
            print(f"{f'{procs} x {threads}':<21}{d['rank']:>5}{d['points']:>13}{d['batches']:>9}{d['freqs']:>13}{d['landscape_s']:>13.2f}{wall:>10.2f}")
        t = ranks[0]['landscape_s']
        base = base or t
        print(f"{'':<21}{'':>5}{'speed-up of landscape2d over 1 x 1: ' + format(base / t, '.2f'):>58}")

if __name__ == '__main__': main()
