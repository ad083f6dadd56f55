"intervene against oracles computed without netlens: plain forward hooks, hand-written forwards, a model copy with swapped modules, autograd"
import copy
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from torch.testing import assert_close
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count
from netlens.trace import intervene, log_forward_pass, _FUNCS

MODEL = digits_cnn()
XS = digits_data('test')[0][:4]
X, X2 = XS[:2], XS[2:4]

def digits_forward(m, x, act2=F.relu, act3=F.relu, pre_head=lambda t: t):
    "DigitsCNN.forward written out by hand"
    x = m.pool1(m.stem(x))
    x = act2(m.bn2(m.conv2(x)))
    x = m.pool2(m.res(x))
    return m.head(pre_head(act3(m.conv3(x))))

def hooked(m, module, f, x):
    "The output of `m(x)` with a plain forward hook replacing `module`'s output by f(output) (every call)"
    h = module.register_forward_hook(lambda mod, i, o: f(o))
    try: return m(x)
    finally: h.remove()

def clean_state(m, snap):
    assert snap.diff(m) == [] and hook_count(m) == 0 and torch._C._len_torch_function_stack() == 0
    assert not any(getattr(f, '_netlens_swap', False) for f in _FUNCS)

@pytest.mark.parametrize('name,key', [('conv3', 'conv3'), ('res', 'res'), ('head', 'head'), ('stem', 'stem'), ('stem.2', 'stem.2'),
                                      ('res.bn2', 'res.bn2'), ('head.2', 'head.2')])
def test_module_edit_equals_forward_hook(name, key):
    snap = ModelSnapshot(MODEL)
    f = lambda o: o * -0.7 + 0.1
    with torch.no_grad():
        assert_close(intervene(MODEL, X, {key: f}), hooked(MODEL, MODEL.get_submodule(name), f, X), rtol=0, atol=0)
    clean_state(MODEL, snap)

def test_module_called_twice_by_call():
    relu = MODEL.res.relu   # called twice: 'res.relu:1' and 'res.relu:2'
    calls = []
    def f(o):
        calls.append(1)
        return o * 2 if len(calls) == 2 else o
    with torch.no_grad():
        expected = hooked(MODEL, relu, f, X)
        assert_close(intervene(MODEL, X, {'res.relu:2': lambda o: o * 2}), expected, rtol=0, atol=0)
        assert not torch.equal(expected, MODEL(X))

def test_functional_op_equals_hand_written():
    log = log_forward_pass(MODEL, X, layers_to_save=None)
    assert log['relu_2'].module is None and log['relu_5'].module is None   # both functional ReLUs
    with torch.no_grad():
        assert_close(intervene(MODEL, X, {'relu_2': lambda t: t * 0.3}), digits_forward(MODEL, X, act2=lambda t: F.relu(t) * 0.3))
        assert_close(intervene(MODEL, X, {log['relu_5'].label: torch.ones(log['relu_5'].shape)}), digits_forward(MODEL, X, act3=torch.ones_like))
        # by position and by predicate
        assert_close(intervene(MODEL, X, {log['relu_5'].index: torch.zeros_like}), digits_forward(MODEL, X, act3=torch.zeros_like))
        assert_close(intervene(MODEL, X, {(lambda op: op.short_label == 'relu_5'): torch.zeros_like}), digits_forward(MODEL, X, act3=torch.zeros_like))

def test_replace_funcs_equals_swapped_copy():
    snap = ModelSnapshot(MODEL)
    m = copy.deepcopy(MODEL)
    n = 0
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU): setattr(parent, name, nn.GELU()); n += 1
    assert n == 2   # stem.2 and res.relu; the other two ReLUs are functional
    with torch.no_grad():
        expected = digits_forward(m, X, act2=F.gelu, act3=F.gelu)
        assert not torch.allclose(expected, MODEL(X))
        assert_close(intervene(MODEL, X, {}, replace_funcs={'relu': F.gelu}), expected)
        # swaps and edits together: the edit applies to the swapped op's output
        assert_close(intervene(MODEL, X, {'relu_5': lambda t: t * 2}, replace_funcs={'relu': F.gelu}),
                     digits_forward(m, X, act2=F.gelu, act3=lambda t: F.gelu(t) * 2))
    clean_state(MODEL, snap)

def test_patching_every_op_gives_the_clean_output():
    clean = log_forward_pass(MODEL, X)
    with torch.no_grad():
        assert_close(intervene(MODEL, X2, {(lambda op: op.layer_type != 'input'): clean}), clean.output, rtol=0, atol=0)
        assert_close(intervene(MODEL, X2, {'input_1': clean}), clean.output, rtol=0, atol=0)
        # one op patched: the clean value there, the corrupted run before it
        out, plog = intervene(MODEL, X2, {'conv3': clean}, return_log=True)
    corrupt = log_forward_pass(MODEL, X2)
    assert_close(plog['conv3'].tensor, clean['conv3'].tensor, rtol=0, atol=0)
    assert_close(plog['res'].tensor, corrupt['res'].tensor, rtol=0, atol=0)
    with torch.no_grad(): assert_close(out, digits_forward(MODEL, X2, act3=lambda t: F.relu(clean['conv3'].tensor)))

def test_gradient_through_an_intervention_equals_autograd():
    x = X.clone().requires_grad_()
    v = torch.randn(64, 1, 1, requires_grad=True)
    got = torch.autograd.grad(intervene(MODEL, x, {'relu_5': lambda o: o * 2 + v}).logsumexp(-1).sum(), [x, v])
    want = torch.autograd.grad(digits_forward(MODEL, x, act3=lambda t: F.relu(t) * 2 + v).logsumexp(-1).sum(), [x, v])
    for g, w in zip(got, want): assert_close(g, w)
    # a tensor replacement that requires grad gets its gradient; what it replaced gets none
    r = torch.rand(2, 64, 8, 8, requires_grad=True)
    (gr, gx) = torch.autograd.grad(intervene(MODEL, x, {'relu_5': r})[:, 1].sum(), [r, x], allow_unused=True)
    (wr,) = torch.autograd.grad(MODEL.head(r)[:, 1].sum(), [r])
    assert_close(gr, wr)
    assert gx is None or gx.abs().sum() == 0
    assert all(p.grad is None for p in MODEL.parameters())

def test_train_mode_same_dropout_draws_and_buffers_kept():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3)).train()
    x = torch.randn(5, 6)
    snap = ModelSnapshot(m)
    rng = torch.get_rng_state()
    out = intervene(m, x, {'3': lambda o: o * 3})
    assert snap.diff(m) == [] and m.training   # BatchNorm's running statistics are put back
    torch.set_rng_state(rng)
    expected = hooked(m, m[3], lambda o: o * 3, x)   # the same dropout mask as the edited pass
    assert_close(out, expected)

def test_loop_passes_and_multi_output_ops():
    class Loop(nn.Module):
        def __init__(self): super().__init__(); self.fc = nn.Linear(6, 6)
        def forward(self, x):
            a, b = x.split(3, dim=1)
            x = torch.cat([b, a], 1)
            for _ in range(3): x = torch.tanh(self.fc(x))
            return x
    torch.manual_seed(1)
    m, x = Loop(), torch.randn(2, 6)
    def by_hand(edit_pass=None, f=None, swap_split=False):
        a, b = x.split(3, dim=1)
        if swap_split: b = b * 0
        h = torch.cat([b, a], 1)
        for p in range(1, 4):
            h = m.fc(h)
            if p == edit_pass: h = f(h)
            h = torch.tanh(h)
        return h
    log = log_forward_pass(m, x, layers_to_save=None)
    f = lambda o: o + 1
    with torch.no_grad():
        assert_close(intervene(m, x, {'linear_1:2': f}), by_hand(2, f))
        assert_close(intervene(m, x, {'fc:3': f}), by_hand(3, f))
        split2 = [op for op in log if op.func_name == 'split'][1]
        assert_close(intervene(m, x, {split2.label: torch.zeros_like}), by_hand(swap_split=True))

def test_input_edit_and_kwargs():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.a = nn.Linear(4, 3)
        def forward(self, x, y, scale=1.): return self.a(x) * scale + y
    torch.manual_seed(2)
    m, x, y = Two(), torch.randn(2, 4), torch.randn(2, 3)
    with torch.no_grad():
        assert_close(intervene(m, [x, y], {'input_2': torch.ones(2, 3)}, kwargs={'scale': 2.}), m.a(x) * 2 + 1)
        assert_close(intervene(m, [x, y], {'a': torch.zeros_like}), y)

def test_tiny_gpt2_block_edit_equals_hook():
    import transformers                                  # a dev extra: missing, the test fails (never skips)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16)).eval()
    ids = torch.randint(0, 100, (2, 8))
    mlp = m.transformer.h[0].mlp
    with torch.no_grad():
        expected = hooked(m, mlp, lambda o: o * 0, ids).logits
        got = intervene(m, {'input_ids': ids}, {'transformer.h.0.mlp': torch.zeros_like})
        assert_close(got.logits, expected)

def test_errors_name_the_problem_and_leave_the_model_clean():
    snap = ModelSnapshot(MODEL)
    cases = [({'relu_99': torch.zeros_like}, KeyError, 'closest'),
             ({'bogus.module': torch.zeros_like}, KeyError, 'bogus.module'),
             ({'res.relu': torch.zeros_like}, KeyError, 'res.relu:1'),
             ({999: torch.zeros_like}, IndexError, '999'),
             ({'conv3': torch.zeros(3)}, ValueError, 'shape'),
             ({'conv3': 'zeros'}, TypeError, 'replacement'),
             ({'conv3': lambda o: o.sum()}, ValueError, 'returned shape'),
             ({'conv3': lambda o: o.tolist()}, TypeError, 'not a tensor'),
             ({(lambda op: False): torch.zeros_like}, KeyError, 'predicate'),
             ({'conv3': log_forward_pass(MODEL, X, layers_to_save=['conv2'])}, ValueError, 'layers_to_save'),
             ({'conv3': log_forward_pass(nn.Sequential(nn.Flatten(), nn.Linear(1024, 3)), X)}, ValueError, 'different op sequence'),
             ({'conv3': log_forward_pass(MODEL, XS[:3])}, ValueError, 'shape')]
    for edits, err, words in cases:
        with pytest.raises(err, match=words): intervene(MODEL, X, edits)
        clean_state(MODEL, snap)
    with pytest.raises(TypeError, match='edits'): intervene(MODEL, X, [('conv3', 0)])
    with pytest.raises(KeyError, match="'relu'"): intervene(MODEL, X, {}, replace_funcs={'rellu': F.gelu})
    with pytest.raises(TypeError, match='replace_funcs'): intervene(MODEL, X, {}, replace_funcs={'relu': 3})
    with pytest.raises(TypeError, match='intervene'): intervene('conv3', X, {})
    def boom(o): raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'): intervene(MODEL, X, {'res.relu:2': boom}, replace_funcs={'relu': F.gelu})
    clean_state(MODEL, snap)
    m = MODEL.train()
    try:
        snap = ModelSnapshot(m)
        with pytest.raises(RuntimeError, match='boom'): intervene(m, X, {'conv2': boom})
        clean_state(m, snap); assert m.training
    finally: MODEL.eval()

@pytest.mark.parametrize('which', ['gpt2', 'mha', 'digits'])
def test_intervened_log_has_the_labels_of_log_forward_pass(which):
    "Loops and composites are recognised by calling frames: the intervening tracer must not shift them (a regression: GPT-2's labels moved)"
    import transformers                                  # a dev extra: missing, the test fails (never skips)
    torch.manual_seed(0)
    if which == 'gpt2':
        m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16)).eval()
        x, kw = {'input_ids': torch.randint(0, 100, (1, 8))}, None
    elif which == 'mha':
        m, q = nn.MultiheadAttention(8, 2, batch_first=True).eval(), torch.randn(2, 5, 8)
        x, kw = (q, q, q), dict(need_weights=False)
    else: m, x, kw = MODEL, X, None
    log = log_forward_pass(m, x, kwargs=kw)
    with torch.no_grad(): out, ilog = intervene(m, x, {}, return_log=True, kwargs=kw)
    assert ilog.layer_labels == log.layer_labels
    for a, b in zip(log, ilog): assert_close(a.tensor, b.tensor, rtol=0, atol=0)
    with torch.no_grad():   # every op patched from its own log changes nothing
        assert_close(_first(intervene(m, x, {(lambda op: op.layer_type != 'input'): log}, kwargs=kw)), _first(log.output))

def _first(out): return out[0] if isinstance(out, tuple) else out['logits'] if isinstance(out, dict) else out

# ------------------------------------------------------------------------------------------------ patch_sweep
from netlens.trace import patch_sweep, plot_patch_sweep

def hook_patch(m, module, clean_in, corrupt_in, pos=None, dim=1):
    "The corrupted output with `module`'s output (every call) replaced by its clean value (at `pos` along `dim` only), by plain hooks"
    got = []
    h = module.register_forward_hook(lambda mod, i, o: got.append(o.detach().clone()))
    try: m(**clean_in) if isinstance(clean_in, dict) else m(clean_in)
    finally: h.remove()
    it = iter(got)
    def put(mod, i, o):
        c = next(it)
        if pos is None: return c
        o = o.clone(); o.narrow(dim, pos, 1).copy_(c.narrow(dim, pos, 1)); return o
    h = module.register_forward_hook(put)
    try: return m(**corrupt_in) if isinstance(corrupt_in, dict) else m(corrupt_in)
    finally: h.remove()

def test_patch_sweep_equals_hook_patching_on_digits():
    pred = MODEL(XS).argmax(-1)
    assert pred[0] != pred[2]
    clean, corrupt = XS[:1], XS[2:3]
    sites = ['conv2', 'res.conv1', 'res.bn2', 'res', 'head.2']
    c, k = pred[0], pred[2]
    metric = lambda out: out[0, c] - out[0, k]
    with torch.no_grad():
        want = torch.stack([metric(hook_patch(MODEL, MODEL.get_submodule(s), clean, corrupt)) for s in sites])
        got = patch_sweep(MODEL, clean, corrupt, sites)   # the default metric is this logit difference
        assert_close(got, want)
        lo, hi = metric(MODEL(corrupt)), metric(MODEL(clean))
        assert_close(patch_sweep(MODEL, clean, corrupt, sites, normalize=True), (want - lo) / (hi - lo))
        assert_close(patch_sweep(MODEL, clean, corrupt, sites, metric=lambda o: o.softmax(-1)[0, c]),
                     torch.stack([hook_patch(MODEL, MODEL.get_submodule(s), clean, corrupt).softmax(-1)[0, c] for s in sites]))
    assert_close(got[3], hi)   # the residual block's output is all the head sees
    assert not torch.allclose(got[1], hi)   # a branch of the block alone is not

def test_patch_sweep_positions_equal_hook_patching_on_gpt2():
    import transformers                                  # a dev extra: missing, the test fails (never skips)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16, initializer_range=0.2)).eval()
    ids = torch.randint(0, 100, (1, 8))
    bad = ids.clone(); bad[0, 3] = (ids[0, 3] + 2) % 100
    metric = lambda out: out.logits[0, -1, 5] - out.logits[0, -1, 7]
    names = ['transformer.h.0.attn.c_proj', 'transformer.h.0.mlp', 'transformer.h.1.ln_1']
    with torch.no_grad():
        got = patch_sweep(m, {'input_ids': ids}, {'input_ids': bad}, names, metric, token_dim=1)
        want = torch.tensor([[float(metric(hook_patch(m, m.get_submodule(n), {'input_ids': ids}, {'input_ids': bad}, pos=p))) for p in range(8)] for n in names])
    assert got.shape == (3, 8)
    assert_close(got, want)
    assert got.std() > 0

def test_patch_sweep_errors_and_plot():
    snap = ModelSnapshot(MODEL)
    with pytest.raises(ValueError, match='sites'): patch_sweep(MODEL, X[:1], X[1:2], [])
    with pytest.raises(ValueError, match='shape'): patch_sweep(MODEL, X[:1], X, ['res'])
    with pytest.raises(KeyError, match='bogus'): patch_sweep(MODEL, X[:1], X[1:2], ['bogus'])
    with pytest.raises(TypeError, match='metric'): patch_sweep(MODEL, X[:1], X[1:2], ['res'], metric='logit')
    with pytest.raises(ValueError, match='token_dim'): patch_sweep(MODEL, X[:1], X[1:2], ['res', 'head.2'], token_dim=3)
    with pytest.raises(ValueError, match='normalize'): patch_sweep(MODEL, X[:1], X[:1], ['res'], normalize=True)
    with pytest.raises(TypeError, match='patch_sweep'): patch_sweep(None, X[:1], X[1:2], ['res'])
    assert snap.diff(MODEL) == [] and hook_count(MODEL) == 0
    import matplotlib; matplotlib.use('Agg')
    ax = plot_patch_sweep(torch.rand(3, 4), ['a', 'b', 'c'])
    assert [t.get_text() for t in ax.get_yticklabels()] == ['a', 'b', 'c']
    ax = plot_patch_sweep(torch.rand(3), [lambda op: True, 'b', 0])
    assert len(ax.patches) == 3
    with pytest.raises(ValueError, match='site names'): plot_patch_sweep(torch.rand(3), ['a'])
    with pytest.raises(ValueError, match='shape'): plot_patch_sweep(torch.rand(2, 3, 4))

# ------------------------------------------------------------------------------------------------ resnet18 (the model)
import torchvision

def perturbed_resnet18():
    "A random-init torchvision resnet18 in eval mode, its BatchNorm statistics and biases perturbed (a fresh one is positively homogeneous)"
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
    return m

@pytest.mark.parametrize('key,call', [('maxpool', 1), ('layer1.0', 1), ('layer2.1.bn2', 1), ('layer3.0.downsample', 1), ('layer4', 1),
                                      ('avgpool', 1), ('fc', 1), ('layer1.1.relu:1', 1), ('layer3.0.relu:2', 2)])
def test_resnet18_module_edit_equals_forward_hook(key, call):
    m = perturbed_resnet18()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    module = m.get_submodule(key.split(':')[0])
    f = lambda o: o * -0.7 + 0.1
    n = [0]
    def on_call(o):   # a plain forward hook fires at every call of the module: replace only the asked-for one
        n[0] += 1
        return f(o) if n[0] == call else o
    with torch.no_grad(): plain = m(x)
    snap, rng = ModelSnapshot(m), torch.get_rng_state()
    with torch.no_grad(): got = intervene(m, x, {key: f})
    assert torch.equal(torch.get_rng_state(), rng)
    clean_state(m, snap); assert not m.training
    with torch.no_grad(): want = hooked(m, module, on_call, x)
    assert n[0] >= call and not torch.allclose(want, plain)   # the edit changes the output
    assert_close(got, want, rtol=0, atol=0)
    # a replacement tensor (the hook's value at that call) gives the same output as the function
    with torch.no_grad():
        log = log_forward_pass(m, x, layers_to_save=[key])
        assert_close(intervene(m, x, {key: f(log[key].tensor)}), want, rtol=0, atol=0)
    clean_state(m, snap)

def test_replacements_are_not_written_into_by_later_in_place_ops():
    "resnet18's ReLU(inplace=True) after bn1 writes into whatever replaced bn1's output: never into the caller's tensor or a log's"
    m = perturbed_resnet18()
    x, x2 = torch.randn(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean = log_forward_pass(m, x)
        saved, r = clean['bn1'].tensor.clone(), torch.randn(clean['bn1'].shape)
        r0 = r.clone()
        got = intervene(m, x2, {'bn1': clean}), intervene(m, x2, {'bn1': r}), intervene(m, x2, {'bn1': lambda o: r})
        want = hooked(m, m.bn1, lambda mod_out: saved.clone(), x2), *[hooked(m, m.bn1, lambda mod_out: r0.clone(), x2)] * 2
    assert_close(clean['bn1'].tensor, saved, rtol=0, atol=0) ; assert_close(r, r0, rtol=0, atol=0)
    assert (saved < 0).any()   # the in-place ReLU would have changed it
    for g, w in zip(got, want): assert_close(g, w, rtol=0, atol=0)
