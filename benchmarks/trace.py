"""Trace speed and memory: netlens' log_forward_pass against a plain forward and TorchLens, in one run.

    python benchmarks/trace.py [--reps 9] [--threads N] [--skip-torchlens] [--skip-memory] [--skip-validate] [--glibc-defaults]
                               [--models resnet18 efficientnet_b0 mobilenet_v3_large vit_b_16 resnet50]

resnet18, efficientnet_b0, mobilenet_v3_large, vit_b_16 and resnet50 (torchvision, random init, eval) at 224x224, batch 1, CPU,
under torch.no_grad, torch's default threads (--threads sets them in every process; on 2 cores shared with other work,
one thread keeps a contender from waiting on a descheduled second thread at every op):
  - wall and CPU time of a plain forward, of log_forward_pass(model, x, layers_to_save='all') and of
    torchlens.trace(..., CaptureOptions(layers_to_save='all', compute_input_output_distances=False)): one forward each, no
    autograd, every operation's output saved (TorchLens also logs and saves BatchNorm's buffers: 151 entries for resnet18 against
    netlens' 71, 0.2 % more bytes). netlens keeps each op's own output and copies it only before an op writes into it (the
    residual `+=`), or at the end when the model's output, input or parameters still hold it; an in-place ReLU/SiLU/Hardswish
    of a BatchNorm output writes its result to new memory instead, so that output needs no copy; TorchLens copies every
    output. The saved values are the same (the zoo's validation tests); the work saved is copying what nothing overwrites.
    On vit_b_16 both see inside multi-head attention (netlens decomposes F.multi_head_attention_forward into its ops,
    as TorchLens' wrappers do): 420 TorchLens entries against netlens' 432, the difference being the second residual
    add of each encoder block, which TorchLens leaves out, and the input and output entries; so equal work again.
    Under torch.no_grad a plain forward (and TorchLens, which uses no TorchFunctionMode) would take
    nn.MultiheadAttention's fused fast path (one torch._native_multi_head_attention op, 132 TorchLens entries),
    which a TorchFunctionMode always turns off; the fast path is switched off for every contender
    (torch.backends.mha.set_fastpath_enabled(False)), so all three run the same ops.
    TorchLens' default compute_input_output_distances=True adds a breadth-first search of the graph from the inputs
    and from the outputs (mark_layer_depths) that netlens does not do; it is switched off for the equal-work row and
    timed with its defaults in a row of its own ('torchlens-defaults'), left out of the ratio.
    How it is timed: each contender runs in a process of its own (TorchLens wraps torch's functions at its first call and
    leaves them wrapped, which would slow the others in a shared process), started once per model; the contenders'
    processes take turns, one call each per round, `reps` rounds after one warm-up call each, so that the drifts of a
    shared machine hit all alike. Each timed call starts after a full garbage collection and runs with the collector off
    (timeit's convention: a TorchLens trace leaves about 9,000 objects in reference cycles, whose collection would land at
    random in any contender's time). Every process gets the same glibc settings: MALLOC_TRIM_THRESHOLD_ and
    MALLOC_MMAP_THRESHOLD_ set high, so memory freed by one call is reused by the next instead of being returned to the
    system and faulted in again (with glibc's defaults the ratios of the contenders that hold every output, netlens
    and TorchLens, moved by up to +-30 % from run to run on 2 shared cores: --glibc-defaults measures that way).
    Reported: the median over the rounds, the spread (fastest and slowest) and two ratios to the plain forward:
    median to median and fastest to fastest;
  - halt= on resnet50: log_forward_pass(model, x, layers_to_save=<the ops inside layer1>, halt=<the last of them>)
    against a plain full forward, interleaved in the same way: it stops the forward after layer1, so it should take less;
  - peak memory of log_forward_pass(..., 'all') in a fresh process (VmHWM above the resident size before the call),
    against the bytes it saved;
  - validate_saved_activations(resnet18) against torchlens.validate(..., scope='saved', validate_metadata=False), one call
    each, not the same work: netlens runs 2 forwards (the logged pass and a fresh one) plus its replays and perturbation
    checks; TorchLens runs 3 forwards plus its replays (metadata invariant checks off, as netlens has none).
Progress goes to stderr, the tables to stdout, and a JSON line of every number last.
"""
import argparse, gc, json, os, statistics, subprocess, sys, time
import torch, torchvision
from netlens.trace import log_forward_pass, validate_saved_activations

MODELS = {k: getattr(torchvision.models, k) for k in ('resnet18', 'efficientnet_b0', 'mobilenet_v3_large', 'vit_b_16', 'resnet50')}
PIN = {'MALLOC_TRIM_THRESHOLD_': str(2**40), 'MALLOC_MMAP_THRESHOLD_': str(2**25)}   # 32 MB: glibc's largest mmap threshold on 64-bit

def setup(name):
    torch.manual_seed(0)
    return MODELS[name]().eval(), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))

def in_layer1(op): return any(m == 'layer1' or m.startswith(('layer1.', 'layer1:')) for m in op.module_path)

def contender(name, which):
    "The call to time (a function of no arguments) and what to report about it, in this process"
    model, x = setup(name)
    if which == 'forward': return (lambda: model(x)), {}
    if which == 'netlens':
        n = len(log_forward_pass(model, x, None))
        return (lambda: log_forward_pass(model, x, 'all')), {'entries': n}
    if which == 'netlens-halt':
        last = [op for op in log_forward_pass(model, x, None) if in_layer1(op)][-1].label
        log = log_forward_pass(model, x, in_layer1, halt=last)
        assert log.entries[-1].label == last and all(op.saved == in_layer1(op) for op in log if op.layer_type != 'input'), "halt did not stop after layer1"
        return (lambda: log_forward_pass(model, x, in_layer1, halt=last)), {'entries': len(log), 'saved': sum(op.saved for op in log), 'halt': last}
    import torchlens
    from torchlens.options import CaptureOptions
    opts = CaptureOptions(layers_to_save='all') if which == 'torchlens-defaults' else CaptureOptions(layers_to_save='all', compute_input_output_distances=False)
    n = len(torchlens.trace(model, x, capture=CaptureOptions(layers_to_save=None)).layer_labels)
    return (lambda: torchlens.trace(model, x, capture=opts)), {'entries': n, 'torchlens': torchlens.__version__}

def worker(name, which, threads):
    "A contender's process: set up, warm up, then time one call per 'run' line read from stdin"
    if int(threads): torch.set_num_threads(int(threads))
    torch.backends.mha.set_fastpath_enabled(False)   # the fused path a TorchFunctionMode turns off: off for every contender
    with torch.no_grad():
        f, info = contender(name, which)
        f()
        print(json.dumps(info), flush=True)
        for line in sys.stdin:
            if line.strip() != 'run': break
            gc.collect(); gc.disable()
            w, c = time.perf_counter(), time.process_time()
            f()
            w, c = time.perf_counter() - w, time.process_time() - c
            gc.enable()
            print(w, c, flush=True)

def race(name, contenders, reps, env, threads=0):
    "Each contender in its own process, taking turns, `reps` rounds: {contender: (info, [(wall, cpu)...])}"
    procs = {k: subprocess.Popen([sys.executable, __file__, '--worker', name, k, str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for k in contenders}
    try:
        info = {k: json.loads(p.stdout.readline()) for k, p in procs.items()}
        got = {k: [] for k in procs}
        for r in range(reps):
            for k, p in procs.items():
                p.stdin.write('run\n'); p.stdin.flush()
                got[k].append(tuple(map(float, p.stdout.readline().split())))
            print(f"  {name}: round {r + 1}/{reps}", file=sys.stderr, flush=True)
    finally:
        for p in procs.values():
            try: p.stdin.close()
            except OSError: pass
            p.wait()
    return {k: (info[k], got[k]) for k in procs}

def table(name, res, base='forward'):
    "Print medians, spread and ratios to `base`; the numbers as a dict"
    med = lambda v, i: statistics.median(t[i] for t in v)
    fast = lambda v, i: min(t[i] for t in v)
    b = res[base][1]
    print(f"  {'':20} {'wall ms':>9} {'cpu ms':>9} {'fastest':>9} {'slowest':>9}   {'x forward: median':>17} {'fastest':>8} {'cpu':>6}")
    out = {}
    for k, (info, v) in res.items():
        r = {'wall_ms': med(v, 0) * 1e3, 'cpu_ms': med(v, 1) * 1e3, 'fastest_ms': fast(v, 0) * 1e3, 'slowest_ms': max(t[0] for t in v) * 1e3,
             'x_median': med(v, 0) / med(b, 0), 'x_fastest': fast(v, 0) / fast(b, 0), 'x_cpu': med(v, 1) / med(b, 1), **info}
        out[k] = r
        print(f"  {k:20} {r['wall_ms']:9.1f} {r['cpu_ms']:9.1f} {r['fastest_ms']:9.1f} {r['slowest_ms']:9.1f}   {r['x_median']:17.2f} {r['x_fastest']:8.2f} {r['x_cpu']:6.2f}")
    return out

def peak_mb(name, env):
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
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, env=env).stdout.split()
    return tuple(map(float, out))

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--reps', type=int, default=9)
    p.add_argument('--skip-torchlens', action='store_true')
    p.add_argument('--skip-memory', action='store_true')
    p.add_argument('--skip-validate', action='store_true')
    p.add_argument('--glibc-defaults', action='store_true', help="leave glibc's malloc settings at their defaults")
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--threads', type=int, default=0, help="torch threads in every contender's process (0: torch's default)")
    p.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker: return worker(*a.worker)
    env = dict(os.environ) if a.glibc_defaults else {**os.environ, **PIN}
    tl = None
    if not a.skip_torchlens: import torchlens as tl
    if a.threads: torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" + (f", torchlens {tl.__version__}" if tl else '') +
          ", glibc malloc " + ('defaults' if a.glibc_defaults else ' '.join(f"{k}={v}" for k, v in PIN.items())) + f"; {a.reps} rounds")
    results = {}
    for name in a.models:
        ks = ['forward', 'netlens'] + (['torchlens', 'torchlens-defaults'] if tl else [])
        res = race(name, ks, a.reps, env, a.threads)
        print(f"\n{name} ({res['netlens'][0]['entries']} entries" + (f", TorchLens {res['torchlens'][0]['entries']}" if tl else '') + ")")
        results[name] = table(name, res)
        if tl:
            r = results[name]
            print(f"  netlens {r['netlens']['x_median']:.2f}x a plain forward, TorchLens {r['torchlens']['x_median']:.2f}x (medians); "
                  f"torchlens / netlens (same work): {r['torchlens']['wall_ms'] / r['netlens']['wall_ms']:.1f}x wall")
        if not a.skip_memory:
            before, high, saved = peak_mb(name, env)
            results[name]['memory_mb'] = {'saved': saved, 'peak_above_start': high - before}
            print(f"  memory: saved {saved:.1f} MB, peak above start {high - before:.1f} MB ({(high - before) / saved:.2f}x saved)")
    res = race('resnet50', ['forward', 'netlens-halt'], a.reps, env, a.threads)
    h = res['netlens-halt'][0]
    print(f"\nresnet50, halt: the {h['saved']} ops inside layer1 saved, halt={h['halt']!r} ({h['entries']} of the pass' entries logged)")
    results['resnet50_halt'] = r = table('resnet50', res)
    print(f"  halted log / full plain forward: {r['netlens-halt']['x_median']:.2f}x (median), {r['netlens-halt']['x_fastest']:.2f}x (fastest)")
    if not a.skip_validate:
        torch.backends.mha.set_fastpath_enabled(False)
        model, x = setup('resnet18')
        v = {'netlens': lambda: validate_saved_activations(model, x)}
        if tl: v['torchlens'] = lambda: tl.validate(model, x, scope='saved', validate_metadata=False)
        tv = {}
        for k, f in v.items():
            t = time.perf_counter(); f(); tv[k] = time.perf_counter() - t
        assert validate_saved_activations(model, x) is True
        results['validate_resnet18_s'] = tv
        print("\nvalidate_saved_activations(resnet18): " + ', '.join(f"{k} {s:.2f} s" for k, s in tv.items()))
    print(json.dumps(results))

if __name__ == '__main__': main()
