"netlens.trace on torchvision architectures and a loop: module outputs equal forward hooks, labels equal TorchLens', validation passes and fails where it must, nothing is left behind"
import re
from collections import Counter
import pytest, torch, torch.nn as nn, torchvision
from conftest import perturbed, plain_outputs, out_of_place, tv_case, call_keys
import netlens.trace as trace
from netlens.trace import log_forward_pass, validate_saved_activations
from netlens.hooks import ModelSnapshot, hook_count

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

# ---- composites decomposed (issue 15): every op inside multi-head attention is logged, as TorchLens does, and exactly as torch ran them

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
