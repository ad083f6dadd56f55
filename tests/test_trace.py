"""netlens.trace against oracles computed without netlens.
log_forward_pass on torchvision architectures and a loop: module outputs equal forward hooks, labels equal TorchLens', FLOPs
equal FlopCounterMode, validation passes and fails where it must, nothing is left behind. Bad lookups and `layers_to_save` keys
that name nothing say why. intervene and patch_sweep against plain forward hooks, hand-written forwards, a model copy with
swapped modules and autograd. ModelLog.save / load_log: plain data only, round trips exact, arbitrary pickles refused unrun;
layers_to_save predicates and halt against the full log; saved values against hooks' clones when the model writes in place, and what
in-place activations leave in the caller's tensors against a plain forward."""
import copy, pickle, re, warnings
from collections import Counter
import pytest, torch, torch.nn as nn, torch.nn.functional as F, torchvision
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode
from conftest import perturbed, plain_outputs, out_of_place, tv_case, call_keys
import netlens.trace as trace
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count
from netlens.trace import (log_forward_pass, validate_saved_activations, intervene, patch_sweep, plot_patch_sweep, load_log, ModelLog,
                           _FUNCS)

class Loop(nn.Module):
    "One Linear re-used four times"
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
    def forward(self, x):
        for _ in range(4): x = torch.tanh(self.fc(x))
        return x

@pytest.fixture(scope='module', params=['resnet18', 'densenet121', 'vgg11', 'mobilenet_v3_small', 'vit_b_16', 'loop'])
def case(request):
    if request.param == 'loop':
        torch.manual_seed(0)
        return 'loop', Loop().eval(), torch.randn(3, 8)
    return tv_case(request.param)

def check_module_outputs(log, model, x):
    "Every call of every module: the log's tensors for it equal a forward hook's clones; returns how many were compared"
    ref, ref_out = plain_outputs(model, x)
    assert torch.equal(log.output, ref_out) and torch.equal(log['output_1'].tensor, ref_out)
    checked = 0
    for n, vals in ref.items():
        assert log.module_calls[n] == len(vals), n
        for key, v in zip(call_keys(n, len(vals)), vals):
            want, got = trace._tensors(v), [op.tensor for op in log if key in op.output_of]
            assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want)), key
            checked += len(want)
    return checked

def test_module_outputs_equal_forward_hooks(case):
    name, model, x = case
    snap = ModelSnapshot(model)
    assert check_module_outputs(log_forward_pass(model, x), model, x) >= (4 if name == "loop" else 10)
    assert snap.diff(model) == [] and hook_count(model) == 0
    assert torch._C._len_torch_function_stack() == 0

def test_validation_passes(case):
    name, model, x = case
    snap = ModelSnapshot(model)
    assert validate_saved_activations(model, x) is True, name
    assert snap.diff(model) == []

def test_loop_passes_and_gradients():
    torch.manual_seed(0)
    model, x = Loop(), torch.randn(3, 8)
    log = log_forward_pass(model, x, keep_grads=True)
    assert [op.label for op in log][1:-1] == [f"{l}:{p}" for p in range(1, 5) for l in ('linear_1_1', 'tanh_1_2')]
    log.output.pow(2).sum().backward()
    # oracle: retain_grad on each pass of an untraced run
    hs, h = [], x
    for _ in range(4):
        z = model.fc(h); z.retain_grad(); hs.append(z); h = torch.tanh(z)
    model.zero_grad(); h.pow(2).sum().backward()
    for p, z in enumerate(hs, 1): torch.testing.assert_close(log[f'linear_1_1:{p}'].grad, z.grad)

ALEXNET = ['input_1', 'conv2d_1_1', 'relu_1_2', 'maxpool2d_1_3', 'conv2d_2_4', 'relu_2_5', 'maxpool2d_2_6', 'conv2d_3_7',
           'relu_3_8', 'conv2d_4_9', 'relu_4_10', 'conv2d_5_11', 'relu_5_12', 'maxpool2d_3_13', 'adaptiveavgpool2d_1_14',
           'flatten_1_15', 'dropout_1_16', 'linear_1_17', 'relu_6_18', 'dropout_2_19', 'linear_2_20', 'relu_7_21', 'linear_3_22', 'output_1']

def test_alexnet_listing():
    "The 24 layers of TorchLens' README: input, 5 conv2d, 7 relu, 3 maxpool2d, adaptiveavgpool2d, flatten, 2 dropout, 3 linear, output"
    model = torchvision.models.alexnet().eval()
    log = log_forward_pass(model, torch.randn(1, 3, 224, 224), layers_to_save=None)
    assert log.layer_labels == ALEXNET
    assert log['conv2d_3_7'].output_of == ['features.6'] and log['features.6'].label == 'conv2d_3_7'

@pytest.mark.parametrize('name', ['resnet18', 'densenet121', 'vgg11', 'mobilenet_v3_small', 'alexnet'])
def test_labels_equal_torchlens(name):
    "Same labels as TorchLens, whose log also lists buffers as nodes and calls `+=` iadd; ViT differs by design (MultiheadAttention is one op here)"
    import torchlens
    build = getattr(torchvision.models, name)
    torch.manual_seed(0)
    model, x = perturbed(build()), torch.randn(1, 3, 224 if name == 'alexnet' else 32, 224 if name == 'alexnet' else 32)
    theirs = [re.sub('^iadd', 'add', l) for l in torchlens.trace(model, x).layer_labels if not l.startswith('buffer')]
    assert log_forward_pass(model, x, layers_to_save=None).layer_labels == theirs

def test_saved_values_survive_inplace_ops():
    "ResNet applies ReLU(inplace=True) to BatchNorm's output: the log keeps BatchNorm's negative values"
    _, model, x = tv_case('resnet18')
    log = log_forward_pass(model, x, layers_to_save=['bn1', 'layer1.0.bn1', 'relu'])
    assert (log['bn1'].tensor < 0).any() and (log['layer1.0.bn1'].tensor < 0).any()
    assert log['relu'].saved and not (log['relu'].tensor < 0).any()
    assert not log['conv1'].saved

def test_gradients_equal_retain_grad():
    _, model, x = tv_case('resnet18')
    log = log_forward_pass(model, x, keep_grads=True)
    log.output[:, 5].sum().backward()
    ref, ref_out = plain_outputs(out_of_place(model), x, retain_grad=True)
    ref_out[:, 5].sum().backward()
    for name in ['conv1', 'bn1', 'layer1.0.bn2', 'layer2.0.downsample.1', 'layer4.1', 'avgpool', 'fc']:
        torch.testing.assert_close(log[name].grad, ref[name][0].grad, msg=name)
    model.zero_grad(set_to_none=True)

def test_validation_catches_wrong_parents(monkeypatch):
    "A tracer that records the wrong producer for every tensor fails validation: the check is not vacuous"
    add_op = trace._Tracer.add_op
    def wrong(self, *a, **k):
        add_op(self, *a, **k)
        op = self.log.entries[-1]
        if op.parents: self.producer[next(t for t in a[4])] = op.parents[0]  # children will read from the grandparent
    monkeypatch.setattr(trace._Tracer, 'add_op', wrong)
    torch.manual_seed(0)
    report = validate_saved_activations(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), torch.randn(3, 4))
    assert not report and len(report.failures) >= 2

def test_nothing_left_behind_after_an_exception():
    _, model, x = tv_case('resnet18')
    snap = ModelSnapshot(model)
    def boom(m, i, o): raise RuntimeError('boom in layer2')
    h = model.layer2[0].bn2.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match='boom'): log_forward_pass(model, x)
    h.remove()
    assert torch._C._len_torch_function_stack() == 0 and hook_count(model) == 0 and snap.diff(model) == []

def test_bad_input():
    torch.manual_seed(0)
    model, x = Loop(), torch.randn(3, 8)
    log = log_forward_pass(model, x)
    with pytest.raises(KeyError, match='closest'): log['linaer_1_1:2']
    with pytest.raises(KeyError, match='fc:1'): log['fc']
    with pytest.raises(ValueError, match='keep_grads=True'): log['fc:1'].grad
    with pytest.raises(TypeError, match='no tensor'): log_forward_pass(model, ['a'])
    with pytest.raises(TypeError, match='nn.Module'): log_forward_pass(lambda x: x, x)
    with pytest.raises(ValueError, match='nesting_depth'): log.draw(nesting_depth=0)
    with pytest.raises(KeyError, match="closest: 'tanh'"): log_forward_pass(model, x, layers_to_save=['tahn'])
    assert hook_count(model) == 0

def test_compiled_model_is_traced_uncompiled():
    torch.manual_seed(0)
    model, x = Loop(), torch.randn(3, 8)
    with pytest.warns(UserWarning, match='uncompiled'): log = log_forward_pass(torch.compile(model), x)
    assert torch.equal(log.output, model(x)) and len(log) == 10

def test_missing_dot_is_explained(monkeypatch):
    log = log_forward_pass(Loop(), torch.randn(3, 8), layers_to_save=None)
    monkeypatch.setattr(trace.shutil, 'which', lambda name: None)
    with pytest.raises(RuntimeError, match='apt-get install graphviz'): log.draw()

def test_show_model_graph_rolls_loops():
    g = trace.show_model_graph(Loop(), torch.randn(3, 8), rolled=True)
    assert g.source.count('x4 passes') == 2 and 'linear_1_1' in g.source

class LSTMNet(nn.Module):
    "Embedding, a fused LSTM (one op in the log) and a head on the last step"
    def __init__(self):
        super().__init__()
        self.emb, self.lstm, self.fc = nn.Embedding(20, 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 3)
    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.fc(h[:, -1])

MORE = {
    'efficientnet_b0': (lambda: perturbed(torchvision.models.efficientnet_b0()), lambda: torch.randn(1, 3, 64, 64)),
    'convnext_tiny': (lambda: perturbed(torchvision.models.convnext_tiny()), lambda: torch.randn(1, 3, 64, 64)),
    'swin_t': (lambda: perturbed(torchvision.models.swin_t()), lambda: torch.randn(1, 3, 64, 64)),
    'lstm': (lambda: LSTMNet().eval(), lambda: torch.randint(0, 20, (2, 7))),
    'transformer_training': (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.2, batch_first=True), 2,
                                                           enable_nested_tensor=False).train(), lambda: torch.randn(2, 5, 16)),
}

@pytest.mark.parametrize('name', list(MORE))
def test_more_architectures(name):
    "Validation passes (dropout inside attention replays with its generator state) and module outputs equal forward hooks"
    torch.manual_seed(0)
    build, data = MORE[name]
    model, x = build(), data()
    snap = ModelSnapshot(model)
    assert validate_saved_activations(model, x) is True
    if not model.training: check_module_outputs(log_forward_pass(model, x), model, x)
    assert snap.diff(model) == []

def test_parallel_and_compiled_wrappers_are_traced_as_the_model():
    "DataParallel (whose replicas run in other threads, outside the tracer's thread-local mode) and compile(DataParallel) are traced as the module inside"
    torch.manual_seed(0)
    model, x = Loop(), torch.randn(3, 8)
    ref = log_forward_pass(model, x)
    log = log_forward_pass(nn.DataParallel(model), x)
    assert log.layer_labels == ref.layer_labels and list(log.module_types) == ['fc'] and torch.equal(log.output, ref.output)
    with pytest.warns(UserWarning, match='uncompiled'): log = log_forward_pass(torch.compile(nn.DataParallel(model)), x)
    assert log.layer_labels == ref.layer_labels
    assert validate_saved_activations(nn.DataParallel(model), x) is True

def test_layers_to_save_that_saves_nothing_is_refused():
    torch.manual_seed(0)
    model, x = Loop(), torch.randn(3, 8)
    n = len(log_forward_pass(model, x, layers_to_save=None))
    with pytest.raises(IndexError, match=f'position {n} is out of range: the pass logged {n} ops'): log_forward_pass(model, x, layers_to_save=[0, n])
    with pytest.raises(KeyError, match="module 'fc' ran 4 time"): log_forward_pass(model, x, layers_to_save=['fc:5'])
    with pytest.raises(KeyError, match="'linear_1_1' ran at most 4 pass"): log_forward_pass(model, x, layers_to_save=['linear_1_1:5'])
    saved = lambda keys: [op.label for op in log_forward_pass(model, x, layers_to_save=keys) if op.saved]
    assert saved(['fc:4']) == ['linear_1_1:4'] and saved([n - 1]) == ['output_1'] and saved(['linear_1_1:2']) == ['linear_1_1:2']

# ---- composites decomposed: every op inside multi-head attention is logged, as TorchLens does, and exactly as torch ran them

COMPOSITES = {torch.nn.functional.multi_head_attention_forward, torch.nn.functional.normalize, torch.nn.functional.local_response_norm}

class CallCounter(torch.overrides.TorchFunctionMode):
    "The oracle: tensors each torch function produced, by TorchLens layer type; composites run their body with this mode on, as torch's own docs show"
    def __init__(self):
        super().__init__()
        self.n = Counter()
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in COMPOSITES:
            with self: return torch.overrides.redispatch_function(func, types, args, kwargs)
        out = func(*args, **kwargs)
        name = getattr(func, '__name__', '')
        if name == '__get__': return out    # a property (x.shape, x.T...): a tensor attribute, not an operation
        k = 1 if name == '__setitem__' else len(trace._tensors(out))
        if k: self.n[name.lower().replace('_', '')] += k
        return out

def torch_counts(model, x):
    with torch.no_grad(), CallCounter() as c: model(x)
    return c.n

SWIN = lambda: perturbed(torchvision.models.swin_t())

@pytest.mark.parametrize('name', ['vit_b_16', 'swin_t'])
def test_composites_are_logged_as_their_ops(name):
    "Per layer type: netlens logs every call torch made (an independent counter), and at least as many as TorchLens 2.36; validation holds"
    import torchlens
    if name == 'vit_b_16': _, model, x = tv_case('vit_b_16')
    else: torch.manual_seed(0); model, x = SWIN(), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    log = log_forward_pass(model, x)
    ours = Counter(op.layer_type for op in log if op.layer_type not in ('input', 'output'))
    assert ours == torch_counts(model, x)
    tl = torchlens.trace(model, x)
    theirs = Counter(tl[l].layer_type for l in tl.layer_labels if tl[l].func_name not in ('none',) and not tl[l].is_buffer)
    theirs.pop('input', None); theirs.pop('output', None)
    # TorchLens adds an 'identity' node for a module that returns its input (Swin's StochasticDepth in eval): torch ran nothing there;
    # netlens marks the op that made the tensor as that module's output instead
    for l in tl.layer_labels:
        if tl[l].layer_type == 'identity': assert any(tl[l].module in op.output_of for op in log), tl[l].module
    theirs.pop('identity', None)
    short = {k: (ours[k], v) for k, v in theirs.items() if ours[k] < v}
    assert not short, short
    assert 'multiheadattentionforward' not in ours
    if name == 'vit_b_16':
        assert ours['add'] == 25 and theirs['add'] == 13    # TorchLens drops each block's second residual add
        assert ours['linear'] == 49 and ours['scaleddotproductattention'] == 12
    assert validate_saved_activations(model, x) is True

def test_attention_op_has_q_k_v_as_parents():
    "On vit_b_16 each of the 12 attention ops has three parents: q, k and v, equal to the in-projection of the block's ln_1 output"
    _, model, x = tv_case('vit_b_16')
    log = log_forward_pass(model, x)
    sdpa = [op for op in log if op.func_name == 'scaled_dot_product_attention']
    assert len(sdpa) == 12
    for i, op in enumerate(sdpa):
        blk = model.encoder.layers[i]
        assert op.module == f'encoder.layers.encoder_layer_{i}.self_attention' and len(op.parents) == 3
        h = log[f'encoder.layers.encoder_layer_{i}.ln_1'].tensor
        heads, d = blk.self_attention.num_heads, blk.self_attention.head_dim
        qkv = (h @ blk.self_attention.in_proj_weight.T + blk.self_attention.in_proj_bias).unflatten(-1, (3, heads, d))
        for j, p in enumerate(op.parents):
            torch.testing.assert_close(log.entries[p].tensor, qkv[:, :, j].transpose(1, 2), rtol=1e-5, atol=1e-5)

def test_mha_with_weights_logs_its_softmax():
    "need_weights=True: the softmax inside F.multi_head_attention_forward is logged; its head mean is the weights MultiheadAttention returns"
    torch.manual_seed(0)
    mha, q = nn.MultiheadAttention(8, 2, batch_first=True).eval(), torch.randn(2, 5, 8)
    log = log_forward_pass(mha, (q, q, q))
    sm = [op for op in log if op.func_name == 'softmax']
    assert len(sm) == 1 and sm[0].module is None   # the model is the MHA itself
    torch.testing.assert_close(sm[0].tensor.view(2, 2, 5, 5).mean(1), mha(q, q, q)[1])
    assert validate_saved_activations(mha, (q, q, q)) is True

def test_decomposition_without_one_hop_skip(monkeypatch):
    "Older torch (no _skip_one_hop_torch_function): the composite's body runs with its checks off; same log"
    torch.manual_seed(0)
    mha, q = nn.MultiheadAttention(8, 2, batch_first=True).eval(), torch.randn(2, 5, 8)
    ref = log_forward_pass(mha, (q, q, q), kwargs=dict(need_weights=False))
    monkeypatch.setattr(trace, '_HOP', None)
    log = log_forward_pass(mha, (q, q, q), kwargs=dict(need_weights=False))
    assert log.layer_labels == ref.layer_labels and 'scaleddotproductattention_1_20' in log.layer_labels
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(log, ref))
    assert torch._C._len_torch_function_stack() == 0

def test_same_line_ops_are_separate_layers():
    "`q, k, v = qkv[0], qkv[1], qkv[2]` (Swin, and inside MHA) is three layers, not three passes; torchvision's files are not torch's"
    import torchlens
    torch.manual_seed(0)
    model, x = SWIN(), torch.randn(1, 3, 32, 32)
    torchlens.trace(model, x)   # TorchLens leaves its wrappers on torch's functions: their frames are not the caller
    log = log_forward_pass(model, x, layers_to_save=None, source_lines=True)
    assert all(op.n_passes == 1 for op in log)
    qkv = [op for op in log if op.func_name == '__getitem__' and op.module == 'features.1.0.attn' and 'qkv[0]' in op.source]
    assert len(qkv) == 3 and len({op.layer_label for op in qkv}) == 3 and qkv[0].source.startswith('swin_transformer.py:')

# ------------------------------------------------------------------------------------------------ bad lookups and layers_to_save keys
@pytest.fixture(scope='module')
def digits():
    "The notebook's digits model, two test images and their full log"
    model, x = digits_cnn(), digits_data('test')[0][:2]
    return model, x, log_forward_pass(model, x)

def test_unknown_label_lists_the_closest(digits):
    with pytest.raises(Exception, match='closest'): digits[2]['conv2d_9']

def test_position_out_of_range(digits):
    with pytest.raises(Exception, match='out of range'): digits[2][99]

def test_negative_position_refused(digits):
    model, x, _ = digits
    with pytest.raises(Exception, match='negative'): log_forward_pass(model, x, layers_to_save=[-1])

def test_position_past_the_last_op(digits):
    model, x, log = digits
    with pytest.raises(IndexError, match=re.escape(f'position 9999 is out of range: the pass logged {len(log)} ops')):
        log_forward_pass(model, x, layers_to_save=[9999])

def test_module_call_that_did_not_happen(digits):
    model, x, _ = digits
    with pytest.raises(KeyError, match=re.escape("module 'res.relu' ran 2 time(s): there is no call 3")):
        log_forward_pass(model, x, layers_to_save=['res.relu:3'])

# every form of layers_to_save either saves something or says why (each of these saved nothing, silently)
@pytest.mark.parametrize('keys, err, msg', [(['stem.0:2'], KeyError, "ran 1 time(s): there is no call 2 (ask for 'stem.0')"),
                                            (['res.relu:0'], ValueError, 'count from 1'),
                                            (['conv2d_1:2'], KeyError, 'there is no pass 2'),
                                            ([''], ValueError, "pass 'all'"),
                                            (['relu:2'], KeyError, 'there is no pass 2')])
def test_layers_to_save_that_saves_nothing(digits, keys, err, msg):
    model, x, _ = digits
    with pytest.raises(err, match=re.escape(msg)): log_forward_pass(model, x, layers_to_save=keys)

# ------------------------------------------------------------------------------------------------ intervene: edits, swaps and patches
EDIT_MODEL = digits_cnn()
EDIT_XS = digits_data('test')[0][:4]
EDIT_X, EDIT_X2 = EDIT_XS[:2], EDIT_XS[2:4]

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
    snap = ModelSnapshot(EDIT_MODEL)
    f = lambda o: o * -0.7 + 0.1
    with torch.no_grad():
        assert_close(intervene(EDIT_MODEL, EDIT_X, {key: f}), hooked(EDIT_MODEL, EDIT_MODEL.get_submodule(name), f, EDIT_X), rtol=0, atol=0)
    clean_state(EDIT_MODEL, snap)

def test_module_called_twice_by_call():
    relu = EDIT_MODEL.res.relu   # called twice: 'res.relu:1' and 'res.relu:2'
    calls = []
    def f(o):
        calls.append(1)
        return o * 2 if len(calls) == 2 else o
    with torch.no_grad():
        expected = hooked(EDIT_MODEL, relu, f, EDIT_X)
        assert_close(intervene(EDIT_MODEL, EDIT_X, {'res.relu:2': lambda o: o * 2}), expected, rtol=0, atol=0)
        assert not torch.equal(expected, EDIT_MODEL(EDIT_X))

def test_functional_op_equals_hand_written():
    log = log_forward_pass(EDIT_MODEL, EDIT_X, layers_to_save=None)
    assert log['relu_2'].module is None and log['relu_5'].module is None   # both functional ReLUs
    with torch.no_grad():
        assert_close(intervene(EDIT_MODEL, EDIT_X, {'relu_2': lambda t: t * 0.3}), digits_forward(EDIT_MODEL, EDIT_X, act2=lambda t: F.relu(t) * 0.3))
        assert_close(intervene(EDIT_MODEL, EDIT_X, {log['relu_5'].label: torch.ones(log['relu_5'].shape)}), digits_forward(EDIT_MODEL, EDIT_X, act3=torch.ones_like))
        # by position and by predicate
        assert_close(intervene(EDIT_MODEL, EDIT_X, {log['relu_5'].index: torch.zeros_like}), digits_forward(EDIT_MODEL, EDIT_X, act3=torch.zeros_like))
        assert_close(intervene(EDIT_MODEL, EDIT_X, {(lambda op: op.short_label == 'relu_5'): torch.zeros_like}), digits_forward(EDIT_MODEL, EDIT_X, act3=torch.zeros_like))

def test_replace_funcs_equals_swapped_copy():
    snap = ModelSnapshot(EDIT_MODEL)
    m = copy.deepcopy(EDIT_MODEL)
    n = 0
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU): setattr(parent, name, nn.GELU()); n += 1
    assert n == 2   # stem.2 and res.relu; the other two ReLUs are functional
    with torch.no_grad():
        expected = digits_forward(m, EDIT_X, act2=F.gelu, act3=F.gelu)
        assert not torch.allclose(expected, EDIT_MODEL(EDIT_X))
        assert_close(intervene(EDIT_MODEL, EDIT_X, {}, replace_funcs={'relu': F.gelu}), expected)
        # swaps and edits together: the edit applies to the swapped op's output
        assert_close(intervene(EDIT_MODEL, EDIT_X, {'relu_5': lambda t: t * 2}, replace_funcs={'relu': F.gelu}),
                     digits_forward(m, EDIT_X, act2=F.gelu, act3=lambda t: F.gelu(t) * 2))
    clean_state(EDIT_MODEL, snap)

def test_patching_every_op_gives_the_clean_output():
    clean = log_forward_pass(EDIT_MODEL, EDIT_X)
    with torch.no_grad():
        assert_close(intervene(EDIT_MODEL, EDIT_X2, {(lambda op: op.layer_type != 'input'): clean}), clean.output, rtol=0, atol=0)
        assert_close(intervene(EDIT_MODEL, EDIT_X2, {'input_1': clean}), clean.output, rtol=0, atol=0)
        # one op patched: the clean value there, the corrupted run before it
        out, plog = intervene(EDIT_MODEL, EDIT_X2, {'conv3': clean}, return_log=True)
    corrupt = log_forward_pass(EDIT_MODEL, EDIT_X2)
    assert_close(plog['conv3'].tensor, clean['conv3'].tensor, rtol=0, atol=0)
    assert_close(plog['res'].tensor, corrupt['res'].tensor, rtol=0, atol=0)
    with torch.no_grad(): assert_close(out, digits_forward(EDIT_MODEL, EDIT_X2, act3=lambda t: F.relu(clean['conv3'].tensor)))

def test_gradient_through_an_intervention_equals_autograd():
    x = EDIT_X.clone().requires_grad_()
    v = torch.randn(64, 1, 1, requires_grad=True)
    got = torch.autograd.grad(intervene(EDIT_MODEL, x, {'relu_5': lambda o: o * 2 + v}).logsumexp(-1).sum(), [x, v])
    want = torch.autograd.grad(digits_forward(EDIT_MODEL, x, act3=lambda t: F.relu(t) * 2 + v).logsumexp(-1).sum(), [x, v])
    for g, w in zip(got, want): assert_close(g, w)
    # a tensor replacement that requires grad gets its gradient; what it replaced gets none
    r = torch.rand(2, 64, 8, 8, requires_grad=True)
    (gr, gx) = torch.autograd.grad(intervene(EDIT_MODEL, x, {'relu_5': r})[:, 1].sum(), [r, x], allow_unused=True)
    (wr,) = torch.autograd.grad(EDIT_MODEL.head(r)[:, 1].sum(), [r])
    assert_close(gr, wr)
    assert gx is None or gx.abs().sum() == 0
    assert all(p.grad is None for p in EDIT_MODEL.parameters())

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
    snap = ModelSnapshot(EDIT_MODEL)
    cases = [({'relu_99': torch.zeros_like}, KeyError, 'closest'),
             ({'bogus.module': torch.zeros_like}, KeyError, 'bogus.module'),
             ({'res.relu': torch.zeros_like}, KeyError, 'res.relu:1'),
             ({999: torch.zeros_like}, IndexError, '999'),
             ({'conv3': torch.zeros(3)}, ValueError, 'shape'),
             ({'conv3': 'zeros'}, TypeError, 'replacement'),
             ({'conv3': lambda o: o.sum()}, ValueError, 'returned shape'),
             ({'conv3': lambda o: o.tolist()}, TypeError, 'not a tensor'),
             ({(lambda op: False): torch.zeros_like}, KeyError, 'predicate'),
             ({'conv3': log_forward_pass(EDIT_MODEL, EDIT_X, layers_to_save=['conv2'])}, ValueError, 'layers_to_save'),
             ({'conv3': log_forward_pass(nn.Sequential(nn.Flatten(), nn.Linear(1024, 3)), EDIT_X)}, ValueError, 'different op sequence'),
             ({'conv3': log_forward_pass(EDIT_MODEL, EDIT_XS[:3])}, ValueError, 'shape')]
    for edits, err, words in cases:
        with pytest.raises(err, match=words): intervene(EDIT_MODEL, EDIT_X, edits)
        clean_state(EDIT_MODEL, snap)
    with pytest.raises(TypeError, match='edits'): intervene(EDIT_MODEL, EDIT_X, [('conv3', 0)])
    with pytest.raises(KeyError, match="'relu'"): intervene(EDIT_MODEL, EDIT_X, {}, replace_funcs={'rellu': F.gelu})
    with pytest.raises(TypeError, match='replace_funcs'): intervene(EDIT_MODEL, EDIT_X, {}, replace_funcs={'relu': 3})
    with pytest.raises(TypeError, match='intervene'): intervene('conv3', EDIT_X, {})
    def boom(o): raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'): intervene(EDIT_MODEL, EDIT_X, {'res.relu:2': boom}, replace_funcs={'relu': F.gelu})
    clean_state(EDIT_MODEL, snap)
    m = EDIT_MODEL.train()
    try:
        snap = ModelSnapshot(m)
        with pytest.raises(RuntimeError, match='boom'): intervene(m, EDIT_X, {'conv2': boom})
        clean_state(m, snap); assert m.training
    finally: EDIT_MODEL.eval()

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
    else: m, x, kw = EDIT_MODEL, EDIT_X, None
    log = log_forward_pass(m, x, kwargs=kw)
    with torch.no_grad(): out, ilog = intervene(m, x, {}, return_log=True, kwargs=kw)
    assert ilog.layer_labels == log.layer_labels
    for a, b in zip(log, ilog): assert_close(a.tensor, b.tensor, rtol=0, atol=0)
    with torch.no_grad():   # every op patched from its own log changes nothing
        assert_close(_first(intervene(m, x, {(lambda op: op.layer_type != 'input'): log}, kwargs=kw)), _first(log.output))

def _first(out): return out[0] if isinstance(out, tuple) else out['logits'] if isinstance(out, dict) else out

# ------------------------------------------------------------------------------------------------ patch_sweep

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

def test_trace_records_the_model_as_it_is_and_says_so():
    "The mode policy (00a): the trace never changes a flag; a BatchNorm or dropout in train mode gets one warning per call, naming it"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    m[1].eval()                                                    # mixed modes: only the dropout trains
    x, x2 = torch.randn(5, 6), torch.randn(5, 6)
    snap = ModelSnapshot(m)
    for call in (lambda: log_forward_pass(m, x), lambda: intervene(m, x, {'1': lambda o: o * 2}),
                 lambda: patch_sweep(m, x, x2, ['0', '1', '2'])):
        with pytest.warns(UserWarning, match=r"^3 of the model are in train mode: .*call model.eval\(\) first") as ws: call()
        assert len([w for w in ws if 'train mode' in str(w.message)]) == 1, [str(w.message) for w in ws]   # once, not per site
        assert ws[0].filename == __file__                          # points at the caller's line
        assert snap.diff(m) == [] and [k.training for k in m.modules()] == [True, True, False, True, True, True]
    m.eval()
    with warnings.catch_warnings(): warnings.simplefilter('error'); log_forward_pass(m, x)   # eval mode: silent

def test_intervene_return_log_is_a_named_tuple():
    r = intervene(EDIT_MODEL, EDIT_X, {'conv3': lambda o: o * 0.5}, return_log=True)
    assert type(r).__name__ == 'Intervened' and r.output is r[0] and r.log is r[1]
    assert_close(r.output, intervene(EDIT_MODEL, EDIT_X, {'conv3': lambda o: o * 0.5}), rtol=0, atol=0)
    assert_close(r.log.output, r.output, rtol=0, atol=0)

def test_patch_sweep_equals_hook_patching_on_digits():
    pred = EDIT_MODEL(EDIT_XS).argmax(-1)
    assert pred[0] != pred[2]
    clean, corrupt = EDIT_XS[:1], EDIT_XS[2:3]
    sites = ['conv2', 'res.conv1', 'res.bn2', 'res', 'head.2']
    c, k = pred[0], pred[2]
    metric = lambda out: out[0, c] - out[0, k]
    with torch.no_grad():
        want = torch.stack([metric(hook_patch(EDIT_MODEL, EDIT_MODEL.get_submodule(s), clean, corrupt)) for s in sites])
        got = patch_sweep(EDIT_MODEL, clean, corrupt, sites)   # the default metric is this logit difference
        assert_close(got, want)
        lo, hi = metric(EDIT_MODEL(corrupt)), metric(EDIT_MODEL(clean))
        assert_close(patch_sweep(EDIT_MODEL, clean, corrupt, sites, relative=True), (want - lo) / (hi - lo))
        assert_close(patch_sweep(EDIT_MODEL, clean, corrupt, sites, metric=lambda o: o.softmax(-1)[0, c]),
                     torch.stack([hook_patch(EDIT_MODEL, EDIT_MODEL.get_submodule(s), clean, corrupt).softmax(-1)[0, c] for s in sites]))
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
    snap = ModelSnapshot(EDIT_MODEL)
    with pytest.raises(ValueError, match='sites'): patch_sweep(EDIT_MODEL, EDIT_X[:1], EDIT_X[1:2], [])
    with pytest.raises(ValueError, match='shape'): patch_sweep(EDIT_MODEL, EDIT_X[:1], EDIT_X, ['res'])
    with pytest.raises(KeyError, match='bogus'): patch_sweep(EDIT_MODEL, EDIT_X[:1], EDIT_X[1:2], ['bogus'])
    with pytest.raises(TypeError, match='metric'): patch_sweep(EDIT_MODEL, EDIT_X[:1], EDIT_X[1:2], ['res'], metric='logit')
    with pytest.raises(ValueError, match='token_dim'): patch_sweep(EDIT_MODEL, EDIT_X[:1], EDIT_X[1:2], ['res', 'head.2'], token_dim=3)
    with pytest.raises(ValueError, match='relative=True needs'): patch_sweep(EDIT_MODEL, EDIT_X[:1], EDIT_X[:1], ['res'], relative=True)
    with pytest.raises(TypeError, match='patch_sweep'): patch_sweep(None, EDIT_X[:1], EDIT_X[1:2], ['res'])
    assert snap.diff(EDIT_MODEL) == [] and hook_count(EDIT_MODEL) == 0
    import matplotlib; matplotlib.use('Agg')
    ax = plot_patch_sweep(torch.rand(3, 4), ['a', 'b', 'c'])
    assert [t.get_text() for t in ax.get_yticklabels()] == ['a', 'b', 'c']
    ax = plot_patch_sweep(torch.rand(3), [lambda op: True, 'b', 0])
    assert len(ax.patches) == 3
    with pytest.raises(ValueError, match='site names'): plot_patch_sweep(torch.rand(3), ['a'])
    with pytest.raises(ValueError, match='shape'): plot_patch_sweep(torch.rand(2, 3, 4))

# ------------------------------------------------------------------------------------------------ resnet18: edits by call, in-place ReLUs

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

# ------------------------------------------------------------------------------------------------ ModelLog.save / load_log
KEEP_MODEL = digits_cnn()
KEEP_X = digits_data('test')[0][:2]

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
        log = log_forward_pass(KEEP_MODEL, KEEP_X, layers_to_save=what, source_lines=True)
        back = roundtrip(log, tmp_path)
        same(log, back)
        assert_close(back.output, log.output, rtol=0, atol=0)
        for key in ['conv2d_2', 'stem.0', 'res.relu:2', 'head', 5, -1]: assert back[key].label == log[key].label
        with pytest.raises(KeyError, match='closest'): back['conv2d_99']
        if what == 'all': assert back.draw(nesting_depth=1).source == log.draw(nesting_depth=1).source

def test_loaded_file_holds_plain_data_only(tmp_path):
    log = log_forward_pass(KEEP_MODEL, KEEP_X)
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
    full = log_forward_pass(KEEP_MODEL, KEEP_X)
    part = log_forward_pass(KEEP_MODEL, KEEP_X, layers_to_save=pred)
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
    full = log_forward_pass(KEEP_MODEL, KEEP_X)
    snap = ModelSnapshot(KEEP_MODEL)
    part = log_forward_pass(KEEP_MODEL, KEEP_X, halt=halt)
    stop = next(op for op in full if halt(op)) if callable(halt) else full[halt]
    assert len(part) == stop.index + 1 and part.entries[-1].label == stop.label
    entries_equal(part, full)
    assert part.output is None and not any(op.layer_type == 'output' for op in part)
    assert snap.diff(KEEP_MODEL) == [] and hook_count(KEEP_MODEL) == 0 and torch._C._len_torch_function_stack() == 0

def test_halt_stops_the_forward_and_leaves_the_model_clean():
    seen = []
    m = digits_cnn().train()
    h = m.conv3.register_forward_pre_hook(lambda mod, i: seen.append(1))   # the user's own hook stays and, after the halt, never fires
    try:
        snap = ModelSnapshot(m)
        part = log_forward_pass(m, KEEP_X, halt='res', layers_to_save=['conv2'])
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
    with pytest.raises(KeyError, match='halt'): log_forward_pass(KEEP_MODEL, KEEP_X, halt='bogus')
    with pytest.raises(IndexError, match='halt'): log_forward_pass(KEEP_MODEL, KEEP_X, halt=999)
    with pytest.raises(ValueError, match='negative'): log_forward_pass(KEEP_MODEL, KEEP_X, halt=-2)
    with pytest.raises(ValueError, match='call 0'): log_forward_pass(KEEP_MODEL, KEEP_X, halt='res.relu:0')
    with pytest.raises(TypeError, match='halt'): log_forward_pass(KEEP_MODEL, KEEP_X, halt=2.5)
    with pytest.raises(ValueError, match='predicate'): log_forward_pass(KEEP_MODEL, KEEP_X, halt=lambda op: False)
    with pytest.raises(KeyError, match='halted at'): log_forward_pass(KEEP_MODEL, KEEP_X, halt='res', layers_to_save=['head'])
    assert torch._C._len_torch_function_stack() == 0 and hook_count(KEEP_MODEL) == 0

def test_a_selected_or_halted_log_saves_and_loads(tmp_path):
    part = log_forward_pass(KEEP_MODEL, KEEP_X, layers_to_save=lambda op: op.layer_type == 'relu', halt='res')
    back = roundtrip(part, tmp_path)
    same(part, back)
    assert back.output is None and isinstance(back.layers_to_save, str)

# ------------------------------------------------------------------------------------------------ summary and FLOPs

def counted(m, *args, **kw):
    with FlopCounterMode(display=False) as c, torch.no_grad(): m(*args, **kw)
    return c.get_total_flops()

def test_flops_equal_torch_flop_counter(tmp_path):
    log = log_forward_pass(KEEP_MODEL, KEEP_X, layers_to_save=None)
    assert log.flops == counted(KEEP_MODEL, KEEP_X) > 0
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
    log = log_forward_pass(KEEP_MODEL, KEEP_X)
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

class InPlace(nn.Module):
    "In-place activations: of a fresh BatchNorm output, of the caller's input (through a no-op `contiguous`) and of a view of a fresh output"
    def __init__(self):
        super().__init__(); self.bn = nn.BatchNorm1d(4)
    def forward(self, x):
        y = F.relu(self.bn(x), inplace=True)
        F.hardtanh(x.contiguous(), -0.5, 0.5, inplace=True)
        z = self.bn(x) * 2
        F.silu(z[:2], inplace=True)
        return y + x + z

def test_in_place_activations_leave_what_a_plain_forward_leaves(monkeypatch):
    "Only the fresh BatchNorm output moves to new memory for its ReLU (nothing copied); the caller's input and a view are written in place, as a plain forward writes them"
    torch.manual_seed(0)
    m = InPlace().eval()
    with torch.no_grad(): m.bn.running_mean.normal_(); m.bn.bias.normal_()
    x = torch.randn(3, 4)
    x0, arr, ptr = x.clone(), x.numpy(), x.data_ptr()
    moved = []
    relocatable = trace._Tracer.relocatable
    monkeypatch.setattr(trace._Tracer, 'relocatable', lambda self, *a: moved.append(relocatable(self, *a)) or moved[-1])
    with torch.no_grad():
        want_x = x0.clone(); want = m(want_x)
        log = log_forward_pass(m, x)
        bn, z = m.bn(x0), m.bn(F.hardtanh(x0, -0.5, 0.5)) * 2
    assert moved == [True, False, False]
    assert x.data_ptr() == ptr and torch.equal(x, want_x) and torch.equal(torch.from_numpy(arr), want_x)   # the caller's x, written in place
    assert_close(log.output, want, rtol=0, atol=0)
    for key, value in [('input_1', x0), ('bn:1', bn), ('relu_1', F.relu(bn)), ('hardtanh_1', F.hardtanh(x0, -0.5, 0.5)), ('mul_1', z), ('silu_1', F.silu(z[:2]))]:
        assert_close(log[key].tensor, value, rtol=0, atol=0, msg=key)

def test_a_wrong_channel_count_is_named():
    "3 channels into the 1-channel digits model: PyTorch's conv error, with notes naming the layer, its channels, the input's shape and the fix"
    m = digits_cnn()
    with pytest.raises(RuntimeError) as e: log_forward_pass(m, torch.rand(2, 3, 32, 32))
    assert e.value.__notes__[0] == "netlens: raised in layer 'stem.0' (Conv2d)"
    assert e.value.__notes__[1].startswith("netlens: layer 'stem.0' takes 1 channels and got an input of shape (2, 3, 32, 32): give x the model's channels")
    assert hook_count(m) == 0
