"""Repeated calls don't grow memory: each public computation, called many times on the digits model, frees its result
when the caller drops it (weak references die), leaves no module hook, global hook or torch function mode behind, and the
resident memory of a fresh process stays flat over the second half of the calls (a leak of one result per call would
break the bound). The RSS part runs in a fresh process: in a long test session the allocator reuses memory that earlier
tests freed, so a leak there need not grow RSS at all (seen: a kept log per call grew it by 0 MiB)."""
import gc, json, os, subprocess, sys, weakref
from pathlib import Path
import pytest, torch
from torch.nn.modules import module as torch_module
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count
from netlens.attribution import saliency, integrated_gradients, grad_cam
from netlens.similarity import compare_models
from netlens.trace import log_forward_pass
from netlens.optvis import render, channel

N = 20       # calls per function; memory is compared between call N//2 and call N
SLACK = 3    # growth allowed over the second half, in calls' worth; one leaked result per call grows it by N//2 = 10

def rss() -> int:
    "Resident memory of this process in bytes, after a full garbage collection"
    gc.collect()
    try:
        with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except OSError:
        import psutil
        return psutil.Process().memory_info().rss

_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks', '_global_backward_hooks', '_global_backward_pre_hooks')

def leftovers(model, x) -> dict:
    "What a call may leave behind: hooks on the model's modules, global module hooks, torch function modes, grad mode, the input's autograd state"
    return {'module hooks': hook_count(model), 'function modes': torch._C._len_torch_function_stack(), 'grad enabled': torch.is_grad_enabled(),
            **{h: len(getattr(torch_module, h, {})) for h in _GLOBAL_HOOKS}, 'x requires grad': x.requires_grad, 'x.grad': x.grad}

def tensors_in(obj, skip) -> list:
    "The tensors reachable from `obj` (through sequences, dicts, attributes and slots), except those whose id is in `skip` (the model's and the inputs)"
    found, seen, todo = [], set(), [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen or o is None or isinstance(o, (str, bytes, int, float, bool, torch.dtype, torch.device, torch.Size)): continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            if id(o) not in skip: found.append(o)
        elif isinstance(o, dict): todo += list(o.values())
        elif isinstance(o, (list, tuple, set)): todo += list(o)
        elif not isinstance(o, (type, torch.nn.Module)) and not callable(o):
            todo += list(getattr(o, '__dict__', {}).values())
            todo += [getattr(o, s, None) for c in type(o).__mro__ for s in getattr(c, '__slots__', ()) if s != '__weakref__']
    return found

def nbytes(ts) -> int:
    "Bytes held by the storages of `ts`, each counted once"
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ts if t.device.type != 'meta'}
    return sum(storages.values())

def forward_bytes(model, x) -> int:
    "Bytes of one forward pass's activations on `x` (every leaf module's output): what a graph or a recording kept alive by a leak would hold"
    sizes = []
    hs = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
          for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad(): model(x)
    finally:
        for h in hs: h.remove()
    return sum(sizes)

@pytest.fixture(scope='module')
def digits():
    torch.manual_seed(0)
    x, y = digits_data('test')
    return digits_cnn(), x[:8], y[:8]

def log_with_grads(m, x, y):
    "A log with gradients, after a backward pass that runs the gradient hooks it put on the graph"
    log = log_forward_pass(m, x, keep_grads=True)
    log.output.gather(1, y[:, None]).sum().backward()
    m.zero_grad(set_to_none=True)
    return log

CALLS = {
    'saliency': lambda m, x, y: saliency(m, x, y),
    'integrated_gradients': lambda m, x, y: integrated_gradients(m, x, y, n_steps=4, batch_size=len(x)),
    'grad_cam': lambda m, x, y: grad_cam(m, x, y, 'conv3'),
    'compare_models': lambda m, x, y: compare_models(m, loader=[x], layers1=['conv2', 'res', 'conv3'], show_progress=False),
    'log_forward_pass': lambda m, x, y: log_forward_pass(m, x),
    'log_forward_pass_keep_grads': log_with_grads,
    'render': lambda m, x, y: render(m, channel('conv3', 0), size=32, batch=len(x), steps=2, show_progress=False, seed=0),
}

def call_and_drop(f, m, x, y):
    "Call `f` once; return weak references to its result and every tensor in it, and the bytes those tensors hold, after dropping it"
    skip = {id(t) for t in [*m.parameters(), *m.buffers(), x, y]}
    out = f(m, x, y)
    ts = tensors_in(out, skip)
    refs = [weakref.ref(t) for t in ts]
    try: refs.append(weakref.ref(out))
    except TypeError: pass   # a tuple or NamedTuple: its tensors are watched
    size = nbytes(ts)
    del out, ts
    return refs, size

@pytest.mark.parametrize('name', list(CALLS))
def test_repeated_calls_free_their_results(digits, name):
    m, x, y = digits
    f = CALLS[name]
    snap, before = ModelSnapshot(m), leftovers(m, x)
    refs, size = call_and_drop(f, m, x, y)
    assert refs and size > 0, f"{name}: no tensor found in the result"
    alive = [sum(r() is not None for r in call_and_drop(f, m, x, y)[0]) for _ in range(N)]
    assert alive == [0] * N, f"{name}: objects of dropped results still alive after gc, per call: {alive}"
    assert leftovers(m, x) == before, f"{name}: left behind {leftovers(m, x)} (was {before})"
    assert snap.diff(m) == [], name

def rss_growth(f, m, x, y, keep=False) -> int:
    "RSS growth between call N//2 and call N of `f` (results dropped, or all `keep`-t)"
    kept = []
    for i in range(1, N + 1):
        out = f(m, x, y)
        if keep: kept.append(out)
        del out
        if i == N // 2: mid = rss()
    return rss() - mid

def rss_report():
    "Run in a fresh process: {name: (growth, per_call)} for every call, and for a log kept per call (a leak on purpose)"
    torch.manual_seed(0)
    x, y = digits_data('test')
    m, x, y = digits_cnn(), x[:8], y[:8]
    per_call = lambda f: max(nbytes(tensors_in(f(m, x, y), {id(t) for t in [*m.parameters(), *m.buffers(), x, y]})), forward_bytes(m, x))
    res = {name: (rss_growth(f, m, x, y), per_call(f)) for name, f in CALLS.items()}
    res['a kept log per call'] = (rss_growth(log_with_grads, m, x, y, keep=True), per_call(log_with_grads))
    print(json.dumps(res))

def test_rss_stays_flat_and_the_bound_sees_a_leak():
    r = subprocess.run([sys.executable, '-c', 'import test_memory; test_memory.rss_report()'], cwd=Path(__file__).parent,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    growth, per_call = res.pop('a kept log per call')
    assert (N // 2) * per_call > SLACK * per_call   # a leak of one result per call breaks the bound...
    assert growth > SLACK * per_call, f"a kept log per call grew RSS by only {growth / 2**20:.1f} MiB: the bound cannot see leaks"   # ...and it is seen
    grown = {n: f"{g / 2**20:.1f} MiB (bound {SLACK * p / 2**20:.1f})" for n, (g, p) in res.items() if g >= SLACK * p}
    assert not grown, f"RSS grew over {N // 2} calls: {grown}"

def test_logs_are_freed_by_reference_counting(digits):
    "No reference cycle at all: a dropped log is freed at once, without the garbage collector (the fixed leak kept it alive through tensor hooks)"
    m, x, y = digits
    gc.collect(); gc.disable()
    try:
        for f in (lambda m, x, y: log_forward_pass(m, x), log_with_grads, lambda m, x, y: log_forward_pass(m, x, layers_to_save=None, keep_grads=True)):
            refs, _ = call_and_drop(f, m, x, y)
            assert all(r() is None for r in refs)
    finally: gc.enable()
