"""Overhead of `top_activations` against the plain forwards over the same loader, measured in the same run.

    python benchmarks/atlas.py [--size 64] [--batch 32] [--batches 8] [--reps 3] [--k 9]

Contenders, on the same model and the same batches (a list of tensors, so no data loading is timed):
`forward`: the loop a user writes, `model(x)` per batch under `torch.no_grad()` in eval mode; `top_activations`:
one pass ranking every channel of the layers named (top-k and, in a second row, lowest-k too). The two run
interleaved, after one warm-up each; each keeps its median and its fastest run (on a shared machine the fastest is
the least disturbed), and its median CPU time (this process only: with one thread, what other processes on a shared
machine cannot inflate). The ratios are top_activations / forward, of each (target <= 1.15).
Models: the digits CNN on its 360 test digits, and a random-init torchvision resnet18 on random images of `--size` px.
Progress goes to stderr, the table to stdout.
"""
import argparse, statistics, sys, time
import torch, torchvision
from netlens.atlas import top_activations
from netlens.data import digits_cnn, digits_data

def median_times(runs, reps):
    "(median, fastest, median CPU) seconds of each contender (name -> function), run interleaved `reps` times after one warm-up each"
    for f in runs.values(): f()
    ts, cpu = {k: [] for k in runs}, {k: [] for k in runs}
    for r in range(reps):
        print(f"  rep {r + 1}/{reps}", file=sys.stderr, flush=True)
        for k, f in runs.items():
            t, c = time.perf_counter(), time.process_time(); f()
            ts[k].append(time.perf_counter() - t); cpu[k].append(time.process_time() - c)
    return {k: (statistics.median(v), min(v), statistics.median(cpu[k])) for k, v in ts.items()}

def forwards(model, batches):
    with torch.no_grad():
        for b in batches: model(b)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--size', type=int, default=64); p.add_argument('--batch', type=int, default=32)
    p.add_argument('--batches', type=int, default=8); p.add_argument('--reps', type=int, default=3); p.add_argument('--k', type=int, default=9)
    a = p.parse_args()
    torch.manual_seed(0)
    x, _ = digits_data('test')
    cases = [('digits', digits_cnn().eval(), [x[i:i + a.batch] for i in range(0, len(x), a.batch)], ['conv3']),
             ('resnet18', torchvision.models.resnet18().eval(), [torch.randn(a.batch, 3, a.size, a.size) for _ in range(a.batches)], ['layer3']),
             ('resnet18', None, None, ['layer1', 'layer2', 'layer3', 'layer4'])]
    rows = []
    for name, model, batches, layers in cases:
        model, batches = (model, batches) if model is not None else (rows[-1][-2], rows[-1][-1])
        for lowest in (False, True):
            print(f"{name} {layers} lowest={lowest}", file=sys.stderr, flush=True)
            t = median_times({'forward': lambda: forwards(model, batches),
                              'top': lambda: top_activations(model, batches, layers, k=a.k, lowest=lowest, show_progress=False)}, a.reps)
            rows.append((name, ','.join(layers), lowest, sum(len(b) for b in batches), t['forward'], t['top'], model, batches))
    print(f"batch {a.batch}, resnet18 at {a.size} px, k={a.k}, median of {a.reps}, {torch.get_num_threads()} threads, cpu")
    print(f"{'model':<10}{'layers':<28}{'lowest':<8}{'examples':>9}{'forward s':>11}{'top_act s':>11}{'ratio':>8}{'fastest ratio':>15}{'cpu ratio':>11}")
    for name, layers, lowest, n, fw, top, *_ in rows:
        print(f"{name:<10}{layers:<28}{str(lowest):<8}{n:>9}{fw[0]:>11.4f}{top[0]:>11.4f}{top[0] / fw[0]:>8.2f}{top[1] / fw[1]:>15.2f}{top[2] / fw[2]:>11.2f}")
    print(f"ratio top_activations / forward: worst {max(r[5][0] / r[4][0] for r in rows):.2f}x of medians, "
          f"{max(r[5][1] / r[4][1] for r in rows):.2f}x of fastest runs, {max(r[5][2] / r[4][2] for r in rows):.2f}x of CPU times (target <= 1.15x)")

if __name__ == '__main__': main()
