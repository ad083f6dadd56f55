"""Overhead of FlatModel.record against plain forward hooks, measured in the same run.

    python benchmarks/record.py [--size 224] [--batch 8] [--reps 5]

Rows: a bare forward (the floor); raw `register_forward_hook`s that clone each output (what a careful user writes
by hand, and the least that correct capture under in-place ops costs); `FlatModel.record` on the same layers.
The ratio record / raw hooks is what netlens adds for names, every-call keys, error notes and guaranteed removal.
Same work in both: the same modules (`find('conv2d')` matches by type name, so on mobilenet_v3_small it also takes the
Conv2dNormActivation blocks, for both), one forward, every call's output detached and cloned. The three contenders run
interleaved, after one warm-up each, and each keeps its median.
"""
import argparse, statistics, time
import torch, torchvision
from netlens.core import model_device
from netlens.flat import FlatModel

def median_times(runs, reps):
    "Median seconds of each contender (name -> function), run interleaved `reps` times after one warm-up each, so drifts in machine speed hit all alike"
    for f in runs.values(): f()
    ts = {k: [] for k in runs}
    for _ in range(reps):
        for k, f in runs.items():
            t = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}

def raw_hooks(model, names, x):
    mods, out, hs = dict(model.named_modules()), {}, []
    for n in names: hs.append(mods[n].register_forward_hook(lambda m, i, o, n=n: out.setdefault(n, []).append(o.detach().clone())))
    try: model(x)
    finally:
        for h in hs: h.remove()
    return out

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--size', type=int, default=224); p.add_argument('--batch', type=int, default=8); p.add_argument('--reps', type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in ['resnet18', 'mobilenet_v3_small']:
        model = getattr(torchvision.models, name)().eval()
        x = torch.randn(a.batch, 3, a.size, a.size, device=model_device(model))
        fm = FlatModel(model)
        for which, names in [('all convs', fm.find('conv2d')), ('every layer', fm.layer_names)]:
            def rec():
                with fm.record(names) as r: model(x)
            with torch.no_grad(): t = median_times({'bare': lambda: model(x), 'raw': lambda: raw_hooks(model, names, x), 'ours': rec}, a.reps)
            rows.append((name, which, len(names), t['bare'], t['raw'], t['ours']))
    print(f"batch {a.batch} x 3 x {a.size} x {a.size}, median of {a.reps}, {torch.get_num_threads()} threads, device {x.device}")
    print(f"{'model':<20}{'layers':<14}{'n':>4}{'forward s':>11}{'raw hooks s':>13}{'record s':>10}{'record/raw':>12}{'record/forward':>16}")
    for name, which, n, bare, raw, ours in rows:
        print(f"{name:<20}{which:<14}{n:>4}{bare:>11.4f}{raw:>13.4f}{ours:>10.4f}{ours/raw:>12.2f}{ours/bare:>16.2f}")

if __name__ == '__main__': main()
