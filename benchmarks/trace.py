"""Trace speed and memory: netlens' log_forward_pass against a plain forward and TorchLens, in one run.

    python benchmarks/trace.py [--reps 7] [--skip-torchlens] [--skip-memory] [--models resnet18 resnet50 vit_b_16]

resnet18, resnet50 and vit_b_16 (random init, eval) at 224x224, batch 1, CPU, under torch.no_grad:
  - wall and CPU time (median over reps, contenders interleaved, one warm-up each) of a plain forward, of
    log_forward_pass(model, x, layers_to_save='all') and of torchlens.trace(..., CaptureOptions(layers_to_save='all',
    compute_input_output_distances=False)): one forward each, no autograd, every operation's output saved as a copy
    (TorchLens also logs and saves BatchNorm's buffers: 151 entries for resnet18 against netlens' 71, 0.2 % more bytes).
    On vit_b_16 both see inside multi-head attention (netlens decomposes F.multi_head_attention_forward into its ops,
    as TorchLens' wrappers do): 420 TorchLens entries against netlens' 432, the difference being the second residual
    add of each encoder block, which TorchLens leaves out, and the input and output entries; so equal work again.
    Under torch.no_grad a plain forward (and TorchLens, which uses no TorchFunctionMode) would take
    nn.MultiheadAttention's fused fast path (one torch._native_multi_head_attention op, 132 TorchLens entries),
    which a TorchFunctionMode always turns off; the fast path is switched off for every contender
    (torch.backends.mha.set_fastpath_enabled(False), restored after), so all three run the same ops.
    TorchLens' default compute_input_output_distances=True adds a breadth-first search of the graph from the inputs
    and from the outputs (mark_layer_depths) that netlens does not do; it is switched off for the equal-work row and
    timed with its defaults in a row of its own ('torchlens-defaults'), left out of the ratio. TorchLens wraps torch's
    functions at its first call and leaves them wrapped, so the forward and netlens rows after it run through its
    wrappers too (a few per cent at most on a plain resnet18 forward, on one thread). Each timed call starts after a
    full garbage collection and runs with the collector off (timeit's convention): a TorchLens trace leaves about
    9,000 objects in reference cycles, and a full collection in this process took 0.4-0.6 s on 2 shared cores, which would
    otherwise land at random in any contender's time;
  - peak memory of log_forward_pass(..., 'all') in a fresh process (VmHWM above the resident size before the call),
    against the bytes it saved;
  - validate_saved_activations(resnet18) against torchlens.validate(..., scope='saved', validate_metadata=False), one call
    each, not the same work: netlens runs 2 forwards (the logged pass and a fresh one) plus its replays and perturbation
    checks; TorchLens runs 3 forwards plus its replays (metadata invariant checks off, as netlens has none).
"""
import argparse, gc, json, statistics, subprocess, sys, time
import torch, torchvision
from netlens.trace import log_forward_pass, validate_saved_activations

MODELS = {'resnet18': torchvision.models.resnet18, 'resnet50': torchvision.models.resnet50, 'vit_b_16': torchvision.models.vit_b_16}

def setup(name):
    torch.manual_seed(0)
    return MODELS[name]().eval(), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))

def times(f):
    "(wall, cpu) seconds of one call, with the garbage collector run before it and off during it (timeit's convention)"
    gc.collect(); gc.disable()
    try:
        w, c = time.perf_counter(), time.process_time()
        f()
        return time.perf_counter() - w, time.process_time() - c
    finally: gc.enable()

def median_times(runs, reps):
    "Run the contenders interleaved `reps` times (after one warm-up each); median wall and CPU seconds of each"
    for f in runs.values(): f()
    got = {k: [] for k in runs}
    for _ in range(reps):
        for k, f in runs.items(): got[k].append(times(f))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in got.items()}

def peak_mb(name):
    "In a fresh process: resident MB before log_forward_pass(..., 'all'), the high-water mark during it, and the MB it saved"
    code = f"""
import sys, torch
sys.path.insert(0, 'benchmarks')
from trace import setup
from netlens.trace import log_forward_pass
model, x = setup({name!r})
with torch.no_grad(): model(x); log_forward_pass(model, x, None)   # warm up the allocator and the kernels
status = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) / 1024
open('/proc/self/clear_refs', 'w').write('5')
before = status('VmRSS:')
with torch.no_grad(): log = log_forward_pass(model, x, 'all')
print(before, status('VmHWM:'), log.saved_bytes / 2**20)
"""
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    return tuple(map(float, out))

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--skip-torchlens', action='store_true')
    p.add_argument('--skip-memory', action='store_true')
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    a = p.parse_args()
    torchlens = None
    if not a.skip_torchlens:
        import torchlens
        from torchlens.options import CaptureOptions
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" + (f", torchlens {torchlens.__version__}" if torchlens else ''))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try: results = run(a, torchlens, CaptureOptions if torchlens else None)
    finally: torch.backends.mha.set_fastpath_enabled(fastpath)
    print(json.dumps(results))

def run(a, torchlens, CaptureOptions):
    results = {}
    for name in a.models:
        model, x = setup(name)
        runs = {'forward': lambda: model(x), 'netlens': lambda: log_forward_pass(model, x, 'all')}
        if torchlens:
            runs['torchlens'] = lambda: torchlens.trace(model, x, capture=CaptureOptions(layers_to_save='all', compute_input_output_distances=False))
            runs['torchlens-defaults'] = lambda: torchlens.trace(model, x, capture=CaptureOptions(layers_to_save='all'))
        with torch.no_grad(): t = median_times(runs, a.reps)
        with torch.no_grad():
            n_ops = len(log_forward_pass(model, x, None))
            n_tl = len(torchlens.trace(model, x, capture=CaptureOptions(layers_to_save=None)).layer_labels) if torchlens else None
        results[name] = {k: {'wall_ms': w * 1e3, 'cpu_ms': c * 1e3} for k, (w, c) in t.items()}
        f = t['forward']
        print(f"\n{name} ({n_ops} entries" + (f", TorchLens {n_tl}" if n_tl else '') + f"): median of {a.reps}")
        print(f"  {'':18} {'wall ms':>9} {'cpu ms':>9} {'x forward (wall, cpu)':>24}")
        for k, (w, c) in t.items(): print(f"  {k:18} {w*1e3:9.1f} {c*1e3:9.1f} {w/f[0]:12.2f} {c/f[1]:10.2f}")
        if torchlens: print(f"  torchlens / netlens (same work): {t['torchlens'][0]/t['netlens'][0]:.1f}x wall, {t['torchlens'][1]/t['netlens'][1]:.1f}x cpu")
        if not a.skip_memory:
            before, high, saved = peak_mb(name)
            results[name]['memory_mb'] = {'saved': saved, 'peak_above_start': high - before}
            print(f"  memory: saved {saved:.1f} MB, peak above start {high - before:.1f} MB ({(high - before) / saved:.2f}x saved)")
    model, x = setup('resnet18')
    v = {'netlens': lambda: validate_saved_activations(model, x)}
    if torchlens: v['torchlens'] = lambda: torchlens.validate(model, x, scope='saved', validate_metadata=False)
    tv = {k: times(f)[0] for k, f in v.items()}
    assert validate_saved_activations(model, x) is True
    results['validate_resnet18_s'] = tv
    print("\nvalidate_saved_activations(resnet18): " + ', '.join(f"{k} {s:.2f} s" for k, s in tv.items()))
    return results

if __name__ == '__main__': main()
