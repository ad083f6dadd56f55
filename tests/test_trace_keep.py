"ModelLog.save / load_log: plain data only, round trips exact, arbitrary pickles refused unrun"
import pickle
import pytest, torch, torch.nn as nn
from torch.testing import assert_close
from netlens.data import digits_cnn, digits_data
from netlens.trace import log_forward_pass, load_log, intervene, ModelLog

MODEL = digits_cnn()
X = digits_data('test')[0][:2]

def roundtrip(log, tmp_path, name='log.pt', **kw):
    p = tmp_path / name
    log.save(p)
    return load_log(p, **kw)

def same(a, b):
    assert b.layer_labels == a.layer_labels and len(a) == len(b)
    for x, y in zip(a, b):
        for k in ('index', 'func_name', 'layer_type', 'shape', 'dtype', 'nbytes', 'parents', 'children', 'module_path', 'output_of', 'params',
                  'label', 'layer_label', 'short_label', 'pass_num', 'n_passes', 'inplace', 'source', 'module', 'n_params', 'saved'):
            assert getattr(x, k) == getattr(y, k), (x.label, k)
        if x.tensor is None: assert y.tensor is None
        else: assert_close(y.tensor, x.tensor, rtol=0, atol=0)
    for k in ('model_name', 'n_params', 'module_types', 'module_calls', 'saved_bytes'): assert getattr(a, k) == getattr(b, k), k
    assert repr(a) == repr(b)

def test_roundtrip_digits_all_partial_none(tmp_path):
    for what in ['all', ['conv', 'res.relu:2', 3], None]:
        log = log_forward_pass(MODEL, X, layers_to_save=what, source_lines=True)
        back = roundtrip(log, tmp_path)
        same(log, back)
        assert_close(back.output, log.output, rtol=0, atol=0)
        for key in ['conv2d_2', 'stem.0', 'res.relu:2', 'head', 5, -1]: assert back[key].label == log[key].label
        with pytest.raises(KeyError, match='closest'): back['conv2d_99']
        if what == 'all': assert back.draw(nesting_depth=1).source == log.draw(nesting_depth=1).source

def test_loaded_file_holds_plain_data_only(tmp_path):
    log = log_forward_pass(MODEL, X)
    log.save(tmp_path / 'a.pt')
    d = torch.load(tmp_path / 'a.pt', weights_only=True)   # the restricted unpickler accepts it
    def walk(x):
        if isinstance(x, dict): [walk(k) or walk(v) for k, v in x.items()]
        elif isinstance(x, (list, tuple)): [walk(v) for v in x]
        else: assert x is None or isinstance(x, (str, int, float, bool, torch.Tensor)), type(x)
    walk(d)

def test_roundtrip_loops_grads_and_dict_outputs(tmp_path):
    class Loop(nn.Module):
        def __init__(self): super().__init__(); self.fc = nn.Linear(4, 4)
        def forward(self, x):
            for _ in range(3): x = torch.tanh(self.fc(x))
            return {'y': x, 'pair': (x.sum(), x.mean())}
    torch.manual_seed(0)
    log = log_forward_pass(Loop(), torch.randn(2, 4), keep_grads=True)
    log.output['y'].sum().backward()
    back = roundtrip(log, tmp_path)
    same(log, back)
    assert back['linear_1:2'].label == log['linear_1:2'].label and back['fc:3'].n_passes == 3
    for a, b in zip(log, back):
        if a.grad is None: assert b.grad is None
        else: assert_close(b.grad, a.grad, rtol=0, atol=0)
    assert set(back.output) == {'y', 'pair'} and isinstance(back.output['pair'], tuple)
    assert_close(back.output['y'], log.output['y'].detach(), rtol=0, atol=0)
    assert not back['output_1'].tensor.requires_grad

def test_roundtrip_gpt2_and_patch_from_a_loaded_log(tmp_path):
    import transformers                                  # a dev extra: missing, the test fails (never skips)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16)).eval()
    ids = torch.randint(0, 100, (1, 8))
    log = log_forward_pass(m, {'input_ids': ids})
    back = roundtrip(log, tmp_path, map_location='cpu')
    same(log, back)
    assert_close(back.output['logits'], log.output.logits, rtol=0, atol=0)
    bad = ids.clone(); bad[0, 3] = 7
    with torch.no_grad():   # activation patching from a saved log, as from the live one
        assert_close(intervene(m, {'input_ids': bad}, {'transformer.h.1': back}).logits, intervene(m, {'input_ids': bad}, {'transformer.h.1': log}).logits)
        assert_close(intervene(m, {'input_ids': bad}, {'transformer.h.1': back}).logits, log.output.logits)

class Payload:
    "Unpickling this creates a file: proof that code ran"
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (open, (self.path, 'w'))

@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused_unrun(tmp_path):
    marker = tmp_path / 'ran'
    for payload in [Payload(marker), {'format': 'netlens.ModelLog', 'version': 1, 'ops': [Payload(marker)]}]:
        torch.save(payload, tmp_path / 'evil.pt')
        with pytest.raises(ValueError, match='refused'): load_log(tmp_path / 'evil.pt')
        assert not marker.exists()
    with open(tmp_path / 'raw.pkl', 'wb') as f: pickle.dump(Payload(marker), f)
    with pytest.raises(ValueError, match='load_log'): load_log(tmp_path / 'raw.pkl')
    assert not marker.exists()
    # an nn.Module pickled whole (torch.save(model)) is refused too
    torch.save(nn.Linear(2, 2), tmp_path / 'module.pt')
    with pytest.raises(ValueError, match='refused'): load_log(tmp_path / 'module.pt')

def test_other_files_are_named(tmp_path):
    torch.save({'w': torch.zeros(2)}, tmp_path / 'w.pt')
    with pytest.raises(ValueError, match='not one written by ModelLog.save'): load_log(tmp_path / 'w.pt')
    torch.save({'format': 'netlens.ModelLog', 'version': 99}, tmp_path / 'v.pt')
    with pytest.raises(ValueError, match='version'): load_log(tmp_path / 'v.pt')
    (tmp_path / 'text.pt').write_text('hello')
    with pytest.raises(ValueError, match='load_log'): load_log(tmp_path / 'text.pt')
    with pytest.raises(FileNotFoundError): load_log(tmp_path / 'missing.pt')

# ------------------------------------------------------------------------------------------------ select and halt
from netlens.hooks import ModelSnapshot, hook_count

def entries_equal(part, full, n=None):
    n = len(part) if n is None else n
    assert part.layer_labels[:n] == full.layer_labels[:n]
    for a, b in zip(part.entries[:n], full.entries[:n]):
        one = lambda path: tuple(m.removesuffix(':1') for m in path)   # a call cut short counts the calls that ran: 'res.relu', not 'res.relu:1'
        assert (a.parents, one(a.module_path), a.shape) == (b.parents, one(b.module_path), b.shape)
        if a.tensor is not None: assert_close(a.tensor, b.tensor, rtol=0, atol=0)

PREDICATES = [lambda op: op.layer_type == 'conv2d', lambda op: op.module is not None and op.module.startswith('res.'),
              lambda op: op.pass_num == 2 or op.label.endswith(':2'), lambda op: op.n_params > 0, lambda op: 'output_1' in op.label]

@pytest.mark.parametrize('pred', PREDICATES)
def test_layers_to_save_predicate_equals_the_full_log(pred):
    full = log_forward_pass(MODEL, X)
    part = log_forward_pass(MODEL, X, layers_to_save=pred)
    entries_equal(part, full)
    assert [op.label for op in part if op.saved] == [op.label for op in full if pred(op)]
    for op in part:
        if op.saved: assert_close(op.tensor, full[op.label].tensor, rtol=0, atol=0)

def test_predicate_on_a_loop_sees_final_labels():
    class Loop(nn.Module):
        def __init__(self): super().__init__(); self.fc = nn.Linear(4, 4)
        def forward(self, x):
            for _ in range(3): x = torch.tanh(self.fc(x))
            return x
    torch.manual_seed(0)
    m, x = Loop(), torch.randn(2, 4)
    part = log_forward_pass(m, x, layers_to_save=lambda op: op.label == 'linear_1_1:1' or op.module == 'fc:3')
    assert [op.label for op in part if op.saved] == ['linear_1_1:1', 'linear_1_1:3']
    h = m.fc(x)
    assert_close(part['linear_1_1:1'].tensor, h)
    halted = log_forward_pass(m, x, halt='fc:2')
    # passes are counted as far as the pass ran: tanh ran once before the halt (so no ':1'), the linear twice
    assert halted.layer_labels == ['input_1', 'linear_1_1:1', 'tanh_1_2', 'linear_1_1:2']
    assert halted['linear_1_1:2'].n_passes == 2

@pytest.mark.parametrize('halt', ['res', 'res.relu:1', 'res.relu:2', 'relu_2', 'relu_2_7', 'conv2d_4', 5, 'stem', 'head.2',
                                  lambda op: op.layer_type == 'add', lambda op: op.index == 9])
def test_halt_gives_the_first_entries_of_a_full_log(halt):
    full = log_forward_pass(MODEL, X)
    snap = ModelSnapshot(MODEL)
    part = log_forward_pass(MODEL, X, halt=halt)
    stop = next(op for op in full if halt(op)) if callable(halt) else full[halt]
    assert len(part) == stop.index + 1 and part.entries[-1].label == stop.label
    entries_equal(part, full)
    assert part.output is None and not any(op.layer_type == 'output' for op in part)
    assert snap.diff(MODEL) == [] and hook_count(MODEL) == 0 and torch._C._len_torch_function_stack() == 0

def test_halt_stops_the_forward_and_leaves_the_model_clean():
    seen = []
    m = digits_cnn().train()
    h = m.conv3.register_forward_pre_hook(lambda mod, i: seen.append(1))   # the user's own hook stays and, after the halt, never fires
    try:
        snap = ModelSnapshot(m)
        part = log_forward_pass(m, X, halt='res', layers_to_save=['conv2'])
        assert seen == [] and snap.diff(m) == [] and m.training and hook_count(m) == 1
        assert [op.label for op in part if op.saved] == [part['conv2'].label]
    finally: h.remove()

class Swallow(nn.Module):
    "A forward that catches every Exception: halting must still stop it"
    def __init__(self): super().__init__(); self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
    def forward(self, x):
        try: y = self.a(x)
        except Exception: y = x
        return self.b(y)

def test_halt_is_not_swallowed_and_errors_are_named():
    part = log_forward_pass(Swallow(), torch.randn(2, 3), halt='a')
    assert part.entries[-1].label == part['a'].label and 'b' not in {m for op in part for m in op.module_path}
    with pytest.raises(KeyError, match='halt'): log_forward_pass(MODEL, X, halt='bogus')
    with pytest.raises(IndexError, match='halt'): log_forward_pass(MODEL, X, halt=999)
    with pytest.raises(ValueError, match='negative'): log_forward_pass(MODEL, X, halt=-2)
    with pytest.raises(ValueError, match='call 0'): log_forward_pass(MODEL, X, halt='res.relu:0')
    with pytest.raises(TypeError, match='halt'): log_forward_pass(MODEL, X, halt=2.5)
    with pytest.raises(ValueError, match='predicate'): log_forward_pass(MODEL, X, halt=lambda op: False)
    with pytest.raises(KeyError, match='halted at'): log_forward_pass(MODEL, X, halt='res', layers_to_save=['head'])
    assert torch._C._len_torch_function_stack() == 0 and hook_count(MODEL) == 0

def test_a_selected_or_halted_log_saves_and_loads(tmp_path):
    part = log_forward_pass(MODEL, X, layers_to_save=lambda op: op.layer_type == 'relu', halt='res')
    back = roundtrip(part, tmp_path)
    same(part, back)
    assert back.output is None and isinstance(back.layers_to_save, str)

# ------------------------------------------------------------------------------------------------ summary and FLOPs
from torch.utils.flop_counter import FlopCounterMode

def counted(m, *args, **kw):
    with FlopCounterMode(display=False) as c, torch.no_grad(): m(*args, **kw)
    return c.get_total_flops()

def test_flops_equal_torch_flop_counter(tmp_path):
    log = log_forward_pass(MODEL, X, layers_to_save=None)
    assert log.flops == counted(MODEL, X) > 0
    assert roundtrip(log, tmp_path).flops == log.flops   # from the log alone
    torch.manual_seed(0)
    vgg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Flatten(), nn.Linear(8 * 64, 5))
    x = torch.randn(3, 3, 8, 8)
    assert log_forward_pass(vgg, x, layers_to_save=None).flops == counted(vgg, x)

def test_flops_of_attention_equal_the_eager_matmuls():
    import transformers                                  # a dev extra: missing, the test fails (never skips)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16)
    torch.manual_seed(0)
    eager = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, attn_implementation='eager')).eval()
    torch.manual_seed(0)
    sdpa = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, attn_implementation='sdpa')).eval()
    ids = torch.randint(0, 100, (2, 8))
    fe = log_forward_pass(eager, {'input_ids': ids}, layers_to_save=None).flops
    assert fe == counted(eager, ids)
    slog = log_forward_pass(sdpa, {'input_ids': ids}, layers_to_save=None)
    assert any(op.layer_type == 'scaleddotproductattention' for op in slog)
    assert slog.flops == fe   # the fused kernel does the same multiply-adds as the eager matmuls

def test_summary_lists_every_op_with_totals():
    log = log_forward_pass(MODEL, X)
    s = log.summary()
    lines = s.splitlines()
    assert len(lines) == len(log) + 2 and lines[0].split()[:3] == ['op', 'module', 'shape']
    for op, line in zip(log, lines[1:]): assert line.startswith(op.label)
    assert f"{log.flops:,} FLOPs" in lines[-1] and f"{log.n_params:,} parameters" in lines[-1]
    assert '589,824' in s   # the stem's convolution: 2 * (2*16*32*32) * (1*3*3)
    short = log.summary(max_rows=5)
    assert len(short.splitlines()) == 5 + 3 and f"{len(log) - 5} more ops" in short

@pytest.mark.parametrize('name', ['resnet18', 'vit_b_16'])
def test_summary_flops_equal_torch_flop_counter_on_torchvision(name):
    "224 px, batch 1 (the models' own size); the summary's total is FlopCounterMode's count of the same forward"
    import torchvision
    from torch.nn.attention import sdpa_kernel, SDPBackend
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    log = log_forward_pass(m, x, layers_to_save=None)
    # The pass netlens logs runs nn.MultiheadAttention's decomposed path (a TorchFunctionMode turns its fused fast path off), so the
    # counter runs it too. On CPU, FlopCounterMode has no formula for SDPA's CPU kernel (it counts it as 0): the math backend runs the
    # same attention as the matmuls the counter does count.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH): want = counted(m, x)
    finally: torch.backends.mha.set_fastpath_enabled(fast)
    assert log.flops == want > 0
    assert f"{want:,} FLOPs" in log.summary(max_rows=0).splitlines()[-1]
    if name == 'vit_b_16': assert sum(op.layer_type == 'scaleddotproductattention' for op in log) == 12

# ------------------------------------------------------------------------------------------------ saved values kept by reference, copied before a write
import torchvision

def hooked_outputs(m, x, names):
    "Each module's output, cloned by a plain forward hook at the moment the module returns (the oracle)"
    got, hs = {}, [m.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: [got.setdefault(n, o.detach().clone())] and None) for n in names]
    try:
        with torch.no_grad(): out = m(x)
    finally:
        for h in hs: h.remove()
    return got, out

def test_values_overwritten_in_place_later_are_as_they_were():
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()   # ReLU(inplace=True) after every BatchNorm, and `out += identity`
    x = torch.randn(1, 3, 64, 64)
    names = ['bn1', 'layer1.0.bn1', 'layer1.0.bn2', 'layer2.0.downsample.1', 'layer4.1.bn2']
    want, _ = hooked_outputs(m, x, names)
    with torch.no_grad(): log = log_forward_pass(m, x)
    for n in names: assert_close(log[n].tensor, want[n], rtol=0, atol=0)
    assert not torch.equal(log['bn1'].tensor, log['relu'].tensor)   # the ReLU wrote into bn1's output after it was saved
    # what the caller and the model keep is not the log's: writing into them afterwards leaves the log alone
    with torch.no_grad():
        log = log_forward_pass(m, x)
        out, x0, first = log.output, log['input_1'].tensor.clone(), log['output_1'].tensor.clone()
        out.mul_(0); x.add_(1)
    assert_close(log['output_1'].tensor, first, rtol=0, atol=0) ; assert_close(log['input_1'].tensor, x0, rtol=0, atol=0)
    assert log['output_1'].tensor.abs().sum() > 0

class Cache(nn.Module):
    "Keeps a view of a parameter and its last hidden state; writes into a logged tensor where the mode cannot see it (`unseen`)"
    def __init__(self, unseen=False):
        super().__init__(); self.lin, self.w, self.unseen, self.cache = nn.Linear(4, 4), nn.Parameter(torch.randn(4)), unseen, None
    def forward(self, x):
        h = self.lin(x)
        v = self.w[None].expand_as(h)   # a view of the parameter
        s = h + v
        self.cache = s
        if self.unseen:
            with torch._C.DisableTorchFunction(): h.mul_(-1)   # no TorchFunctionMode sees this write; h's version counter does
        return s * 2 + h

def test_held_elsewhere_or_written_unseen_is_copied():
    torch.manual_seed(0)
    m, x = Cache(), torch.randn(3, 4)
    with torch.no_grad():
        log = log_forward_pass(m, x)
        h, s, w = m.lin(x), m.lin(x) + m.w, m.w.clone()
        m.w.add_(1); m.cache.mul_(0)   # the model's own state changes after the pass
    assert_close(log['lin'].tensor, h, rtol=0, atol=0)
    assert_close(log['expandas_1_3'].tensor, w[None].expand(3, 4), rtol=0, atol=0)
    assert_close(log['add_1_4'].tensor, s, rtol=0, atol=0)
    mu = Cache(unseen=True); mu.load_state_dict(m.state_dict())
    with torch.no_grad():
        h = mu.lin(x)
        log = log_forward_pass(mu, x)
        want = (h + mu.w) * 2 - h
    assert_close(log['lin'].tensor, h, rtol=0, atol=0)   # as it was when logged, not as the unseen write left it
    assert_close(log.output, want) ; assert_close(log['output_1'].tensor, want)
