"""What every method of netlens.attribution shares (nbs/06a_attribution.ipynb). The entry points are discovered from
`netlens.attribution.__all__`, so a new method cannot be left out. Bad input to each is refused with an error that names the
argument and the fix (the same words for the same mistake from every method), or gives the right answer; never a NaN or a
plausible picture of nothing; the model exactly as it was, also in train mode and when the call raises.

Oracles: the method's own result on the clean input (a batch of one is the first row; another memory layout, a tuple or dict
output, keyword inputs give the same values), SmoothGrad's independence of the batch size and of the rest of the batch
(property tests), and a Hugging Face ViT's logits read by a plain wrapper. A test of one method against its reference goes in
that method's file (test_gradients.py, test_cam.py, test_occlusion.py)."""
import inspect, re
import pytest, torch, torch.nn as nn, torchvision
from hypothesis import given, settings, strategies as st, HealthCheck
import tiny_models as tiny
from conftest import perturbed
from captum_cases import case
import netlens.attribution as A
from netlens.attribution import saliency, integrated_gradients, grad_cam, occlusion, guided_backprop
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot
from netlens.core import eval_mode, keep_buffers

CAMS = ('cam', 'grad_cam', 'guided_grad_cam', 'layer_acts_grads')

# name -> call(model, x, target, layer, batch_size); small settings, and the batched path wherever there is one
METHODS = {
    'saliency': lambda m, x, t, l, bs: A.saliency(m, x, t),
    'guided_backprop': lambda m, x, t, l, bs: A.guided_backprop(m, x, t),
    'deconvolution': lambda m, x, t, l, bs: A.deconvolution(m, x, t),
    'input_grad': lambda m, x, t, l, bs: A.input_grad(m, x, t)[0],
    'input_x_gradient': lambda m, x, t, l, bs: A.input_x_gradient(m, x, t),
    'smooth_grad': lambda m, x, t, l, bs: A.smooth_grad(m, x, t, n_samples=3, seed=0, batch_size=bs),
    'integrated_gradients': lambda m, x, t, l, bs: A.integrated_gradients(m, x, t, n_steps=3, batch_size=bs, return_delta=True)[0],
    'cam': lambda m, x, t, l, bs: A.cam(m, x, t, l, 'grad_cam++'),
    'grad_cam': lambda m, x, t, l, bs: A.grad_cam(m, x, t, l),
    'guided_grad_cam': lambda m, x, t, l, bs: A.guided_grad_cam(m, x, t, l),
    'layer_acts_grads': lambda m, x, t, l, bs: A.layer_acts_grads(m, x, t, l)[1],
    'occlusion': lambda m, x, t, l, bs: A.occlusion(m, x, t, window=(1, 8, 8), stride=(1, 8, 8), batch_size=64 if bs is None else bs),
}

BATCHED = ('smooth_grad', 'integrated_gradients', 'occlusion')

def test_every_entry_point_is_covered():
    takes_x = {n for n in A.__all__ if callable(getattr(A, n)) and list(inspect.signature(getattr(A, n)).parameters)[:3] == ['model', 'x', 'target']}
    assert takes_x == set(METHODS)

class Wrap(nn.Module):
    "A module around `m` whose forward returns `out(m(x), x)`"
    def __init__(self, m, out): super().__init__(); self.m, self.out = m, out
    def forward(self, x): return self.out(self.m(x), x)

def _layer(model): return 'm.conv3' if isinstance(model, Wrap) else 'conv3'

def call(name, model, x, t, bs=None): return METHODS[name](model, x, t, _layer(model), bs)

@pytest.fixture(params=list(METHODS))
def name(request): return request.param

# 1. NaN / Inf

@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_input_is_refused(digits, name, bad):
    "saliency, guided_backprop and deconvolution used to return finite maps here, smooth_grad to fail inside torch.normal"
    model, x, y = digits
    xb = x.clone(); xb[1, 0, 7, 7] = bad
    with pytest.raises(ValueError, match=r'x holds NaN or infinite values \(at examples \[1\]\)'): call(name, model, xb, y, bs=2)

def test_non_finite_scores_name_the_users_example(digits, name):
    "Finite x, NaN scores for example 2 only: named as example 2 even when the copies of all examples run in chunks"
    model, x, y = digits
    nan_at_2 = Wrap(model, lambda s, t: torch.where((torch.arange(len(t)) % 3 == 2)[:, None], float('nan'), s))
    with pytest.raises(ValueError, match=r'NaN or infinite for examples \[2\]'): call(name, nan_at_2, x, y, bs=2)

def test_non_finite_baseline_is_refused(digits):
    model, x, y = digits
    for f in (lambda b: A.integrated_gradients(model, x, y, baseline=b, n_steps=2),
              lambda b: A.occlusion(model, x, y, window=(1, 8, 8), stride=(1, 8, 8), baseline=b)):
        with pytest.raises(ValueError, match='baseline holds NaN'): f(float('nan'))

def test_non_finite_gradient_is_refused(digits):
    "Finite x and scores, but a backward that is NaN (sqrt at 0): an error, not a NaN map"
    model, x, y = digits
    sqrt_at_0 = lambda t: model(t) + (t - t[:, :1, :1, :1]).flatten(1)[:, :1].sqrt()   # d sqrt(u)/du at u = 0 is inf
    with pytest.raises(ValueError, match=r'the gradient is NaN or infinite for examples \[0, 1, 2\]'): A.saliency(sqrt_at_0, x, y)

# 2. empty batches and counts

def test_empty_batch_is_refused(digits, name):
    "occlusion and the batched integrated_gradients / smooth_grad used to raise ZeroDivisionError, the others return empty maps"
    model, x, y = digits
    with pytest.raises(ValueError, match=r'x is empty \(shape \(0, 1, 32, 32\)\): pass at least one example'): call(name, model, x[:0], y[:0], bs=4)

@pytest.mark.parametrize('name', BATCHED)
@pytest.mark.parametrize('bs', [0, -1, 2.5])
def test_batch_size_must_be_a_positive_int(digits, name, bs):
    "batch_size=0 used to fail with `range() arg 3 must not be zero` (or ZeroDivisionError)"
    model, x, y = digits
    with pytest.raises(ValueError, match=f'batch_size must be an integer >= 1, got {bs}'): call(name, model, x, y, bs=bs)

def test_counts_and_steps(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match='n_steps must be an integer >= 1, got 0'): A.integrated_gradients(model, x, y, n_steps=0)
    with pytest.raises(ValueError, match='n_steps must be an integer >= 2, got 1'): A.integrated_gradients(model, x, y, n_steps=1, quadrature='riemann_trapezoid')
    with pytest.raises(ValueError, match='n_samples must be an integer >= 1, got 0'): A.smooth_grad(model, x, y, n_samples=0)
    with pytest.raises(ValueError, match='each entry of window must be an integer >= 1, got 0'): A.occlusion(model, x, y, window=(1, 0, 8), stride=(1, 8, 8))

# 3. integrated_gradients(return_delta=True) in train mode

def test_ig_delta_in_train_mode_keeps_the_buffers(digits):
    "The completeness check's two forward passes used to run outside the buffer guard, moving BatchNorm's statistics; they run in eval mode"
    model, x, y = digits
    ref = A.integrated_gradients(model, x, y, n_steps=4, return_delta=True)
    model.train()
    try:
        snap = ModelSnapshot(model)
        torch.testing.assert_close(tuple(A.integrated_gradients(model, x, y, n_steps=4, return_delta=True)), tuple(ref), rtol=0, atol=0)
        assert snap.diff(model) == []
    finally: model.eval()

# 4. train mode: every entry point runs the model in eval mode for the call, and puts each module's flag and buffer back

class Dropped(Wrap):
    "The model with dropout on its scores: with the model's BatchNorms, two modules that change the scores in train mode"
    def __init__(self, m): super().__init__(m, lambda s, t: s); self.drop = nn.Dropout(0.5)
    def forward(self, x): return self.drop(self.m(x))

def test_train_mode_gives_the_eval_mode_attribution(digits, name):
    "A model in train mode (BatchNorm and dropout) gets exactly the eval-mode attribution, and is left in its modes with its buffers, also when the call raises"
    model, x, y = digits
    m = Dropped(model).eval()
    ref = call(name, m, x, y, bs=2)
    m.train(); model.res.bn2.eval()                 # mixed modes: each module's own flag is put back
    try:
        with torch.no_grad(), keep_buffers(m):
            train_scores = m(x)
            with eval_mode(m): assert not torch.equal(train_scores, m(x)), 'train mode must change the scores'
        snap = ModelSnapshot(m)
        torch.testing.assert_close(call(name, m, x, y, bs=2), ref, rtol=0, atol=0)
        assert snap.diff(m) == []
        with pytest.raises(IndexError, match='target 10 is out of range'): call(name, m, x, 10, bs=2)
        assert snap.diff(m) == []
    finally: model.eval()

def test_train_mode_keeps_every_buffer(digits, name):
    model, x, y = digits
    model.train()
    try:
        snap = ModelSnapshot(model)
        call(name, model, x, y, bs=2)
        assert snap.diff(model) == []
    finally: model.eval()

# 5. smooth_grad: noise independent of the batching; its own arguments

@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bs=st.integers(1, 20), kind=st.sampled_from(['smoothgrad', 'smoothgrad_sq', 'vargrad']), seed=st.integers(0, 2**32 - 1))
def test_smooth_grad_does_not_depend_on_batch_size(digits, bs, kind, seed):
    "Same seed, any batch_size: the same result (it used to differ by up to 1.6)"
    model, x, y = digits
    ref = A.smooth_grad(model, x, y, n_samples=5, kind=kind, seed=seed)
    torch.testing.assert_close(A.smooth_grad(model, x, y, n_samples=5, kind=kind, seed=seed, batch_size=bs), ref, rtol=1e-6, atol=1e-9)

def test_smooth_grad_does_not_depend_on_the_rest_of_the_batch(digits):
    model, x, y = digits
    ref = A.smooth_grad(model, x, y, n_samples=4, seed=3)
    for i in range(len(x)): torch.testing.assert_close(A.smooth_grad(model, x[i:i+1], y[i:i+1], n_samples=4, seed=3), ref[i:i+1], rtol=1e-6, atol=1e-9)
    assert not torch.equal(ref, A.smooth_grad(model, x, y, n_samples=4, seed=4)), 'another seed, other noise'

def test_smooth_grad_without_seed_follows_torch(digits):
    model, x, y = digits
    torch.manual_seed(1); a = A.smooth_grad(model, x, y, n_samples=3)
    torch.manual_seed(1); b = A.smooth_grad(model, x, y, n_samples=3, batch_size=3)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)

@pytest.mark.parametrize('stdev', [-0.1, float('nan'), float('inf'), '0.1', True])
def test_smooth_grad_stdev(digits, stdev):
    "A negative stdev used to reach torch.normal"
    model, x, y = digits
    with pytest.raises(ValueError, match='stdev must be a number >= 0'): A.smooth_grad(model, x, y, n_samples=2, stdev=stdev)

def test_smooth_grad_one_example_without_its_batch_dimension(digits):
    "(1, 32, 32) used to fail in the first conv with 'expected input[1, 4, 32, 32] to have 1 channels'"
    model, x, y = digits
    with pytest.raises(ValueError, match=r"'stem.0' \(Conv2d\) takes batches of 4 dimensions, got an input of shape \(1, 32, 32\).*x\[None\]"):
        A.smooth_grad(model, x[0], y[0], n_samples=4)

# 6. tuple / dict outputs (one convention: netlens.adapters.model_output)

@pytest.mark.parametrize('out', [lambda s, t: (s, t), lambda s, t: {'logits': s, 'x': t}], ids=['tuple', 'dict'])
def test_tuple_and_dict_outputs(digits, name, out):
    "Used to fail with `'tuple' object has no attribute 'ndim'`, then with a clear error: now a tuple's first element and a dict's logits are the scores"
    model, x, y = digits
    assert torch.equal(call(name, Wrap(model, out), x, y, bs=2), call(name, model, x, y, bs=2))

@pytest.mark.parametrize('name', [n for n in METHODS if n not in CAMS])
def test_output_selects_the_scores(digits, name):
    "output= (a key, an index or a function) selects the scores; a dict without logits says how"
    model, x, y = digits
    ref = call(name, model, x, y, bs=2)
    for out, sel in [(lambda s, t: {'scores': s}, 'scores'), (lambda s, t: (t, s), 1), (lambda s, t: (t, s), lambda o: o[1])]:
        g = {'input_grad': lambda: A.input_grad(Wrap(model, out), x, y, output=sel)[0]}.get(name)
        r = g() if g else _with_output(name, Wrap(model, out), x, y, sel)
        assert torch.equal(r, ref), name
    with pytest.raises(TypeError, match=r"a dict with keys \['scores'\] and no 'logits': choose the scores with output="): call(name, Wrap(model, lambda s, t: {'scores': s}), x, y, bs=2)

class Keyword(nn.Module):
    "The digits model taking keyword inputs, with a per-example `scale` of its scores (a stand-in for an attention mask)"
    main_input_name = 'pixel_values'
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, pixel_values, scale=None): return self.m(pixel_values) * (1 if scale is None else scale[:, None])

@pytest.mark.parametrize('name', [n for n in METHODS if n not in CAMS])
def test_dict_inputs(digits, name):
    "A dict of keyword inputs: its main input is attributed; the other per-example inputs follow their examples in every enlarged batch"
    model, x, y = digits
    ref = call(name, model, x, y, bs=2)
    assert torch.equal(call(name, Keyword(model), {'pixel_values': x}, y, bs=2), ref)
    sc = torch.tensor([2., 0.5, 3.])            # positive: every method is positively homogeneous in the score
    torch.testing.assert_close(call(name, Keyword(model), {'scale': sc, 'pixel_values': x}, y, bs=2), ref * sc.view(-1, 1, 1, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"x\['pixel_values'\] must be floating point"): call(name, Keyword(model), {'pixel_values': x.long()}, y)
    with pytest.raises(ValueError, match=r"x\['scale'\] holds NaN"): call(name, Keyword(model), {'pixel_values': x, 'scale': sc * float('nan')}, y)

def _with_output(name, model, x, y, sel):
    kw = {'smooth_grad': dict(n_samples=3, seed=0, batch_size=2), 'integrated_gradients': dict(n_steps=3, batch_size=2),
          'occlusion': dict(window=(1, 8, 8), stride=(1, 8, 8), batch_size=2)}.get(name, {})
    r = getattr(A, name)(model, x, y, output=sel, **kw, **({'return_delta': True} if name == 'integrated_gradients' else {}))
    return r[0] if name == 'integrated_gradients' else r

def test_scores_of_the_wrong_shape(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match=r'must be scores \(N, classes\), got shape \(3,\)'): A.saliency(lambda t: model(t)[:, 0], x, 0)
    with pytest.raises(ValueError, match='has 1 rows for 3 examples'): A.saliency(lambda t: model(t)[:1], x, 0)

# the catalogue: rank, dtype, batch of 1, memory layout, targets, layers, input in the caller's graph

def test_wrong_rank(digits, name):
    model, x, y = digits
    with pytest.raises(ValueError, match='x must be a batch'): call(name, model, x[0, 0, 0], 1)
    if name == 'occlusion': return                   # its window has one entry per dimension: that error comes first
    with pytest.raises(ValueError, match=r'takes batches of 4 dimensions.*x\[None\]'): call(name, model, x[0], y[0])
    with pytest.raises(ValueError, match='takes batches of 4 dimensions'): call(name, model, x.flatten(1), y)

@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64, torch.bool])
def test_integer_input(digits, name, dtype):
    model, x, y = digits
    with pytest.raises(TypeError, match=f'x must be floating point, got {dtype}'): call(name, model, x.to(dtype), y)

def test_dtype_mismatch(digits, name):
    "float64 input to a float32 model used to fail inside torch ('expected scalar type Double but found Float'); and the reverse"
    model, x, y = digits
    with pytest.raises(TypeError, match=r'x is torch.float64 but the model.s parameters are torch.float32: convert x'): call(name, model, x.double(), y)
    m64 = digits_cnn().double()
    with pytest.raises(TypeError, match=r'x is torch.float32 but the model.s parameters are torch.float64'): call(name, m64, x, y)
    r64 = call(name, m64, x.double(), y)                          # matching dtypes work, and stay in float64
    assert r64.dtype == torch.float64 and torch.isfinite(r64).all()

def test_batch_of_one_and_memory_layout(digits, name):
    "A batch of one is the matching row; channels-last and strided input give exactly the contiguous result (digits model)"
    model, x, y = digits
    ref = call(name, model, x, y)
    atol = 1e-5 if name == 'occlusion' else 1e-6       # occlusion: a difference of two scores of order 10, each rounded at ~1e-6
    torch.testing.assert_close(call(name, model, x[2:], y[2:]), ref[2:], rtol=1e-5, atol=atol)
    strided = torch.stack([x, x], -1)[..., 0]
    assert not strided.is_contiguous()
    for xv in (x.contiguous(memory_format=torch.channels_last), strided): assert torch.equal(call(name, model, xv, y), ref)

@pytest.fixture(scope='module')
def resnet():
    return perturbed(torchvision.models.resnet18()), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 817])

@pytest.mark.parametrize('name', ['saliency', 'integrated_gradients', 'grad_cam', 'occlusion'])
def test_channels_last_resnet(resnet, name):
    "Channels-last input to a real network: the contiguous result, to float32 rounding (a channels-last conv sums in another order)"
    model, x, y = resnet
    f = {'saliency': lambda x: A.saliency(model, x, y, sign='all'), 'integrated_gradients': lambda x: A.integrated_gradients(model, x, y, n_steps=4),
         'grad_cam': lambda x: A.grad_cam(model, x, y, 'layer3', relu=False),
         'occlusion': lambda x: A.occlusion(model, x.double(), y, window=(3, 8, 8), stride=(3, 8, 8))}[name]
    if name == 'occlusion': model = model.double()        # a difference of two close scores: compare in float64
    try:
        a, b = f(x), f(x.contiguous(memory_format=torch.channels_last))
        assert a.abs().max() > 0
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    finally: model.float()

def test_targets(digits, name):
    model, x, y = digits
    for t in (10, -1, [1, 2, 10]):
        with pytest.raises(IndexError, match='out of range: the model has 10 outputs'): call(name, model, x, t)
    with pytest.raises(ValueError, match=r'one per example \(3\)'): call(name, model, x, [1, 2])
    with pytest.raises(TypeError, match='integer class indices'): call(name, model, x, 1.0)

@pytest.mark.parametrize('name', CAMS)
def test_unknown_layer(digits, name):
    model, x, y = digits
    with pytest.raises(KeyError, match="unknown layer 'conv4'; closest: 'conv3'"): METHODS[name](model, x, y, 'conv4', None)

def test_input_in_the_callers_graph(digits, name):
    "The result is not attached to the caller's graph, and the caller's x gets no .grad"
    model, x, y = digits
    xg = (x.clone().requires_grad_() * 1.0)            # a non-leaf in the caller's graph
    r = call(name, model, xg, y)
    assert not r.requires_grad and r.grad_fn is None
    b = torch.zeros(1, 1, 32, 32, requires_grad=True)
    for f in (lambda: A.integrated_gradients(model, x, y, baseline=b, n_steps=2), lambda: A.occlusion(model, x, y, (1, 8, 8), (1, 8, 8), baseline=b[0])):
        assert not f().requires_grad                  # a baseline in the caller's graph used to pull the result into it
    assert b.grad is None

def test_model_untouched_when_refused(digits, name):
    model, x, y = digits
    model.train()
    try:
        snap = ModelSnapshot(model)
        xb = x.clone(); xb[0, 0, 0, 0] = float('nan')
        for bad in (lambda: call(name, model, xb, y), lambda: call(name, model, x[0], y[0]), lambda: call(name, model, x.double(), y),
                    lambda: call(name, model, x, 10)):
            with pytest.raises((ValueError, TypeError, IndexError)): bad()
        assert snap.diff(model) == []
    finally: model.eval()

MODEL = digits_cnn()

_x, _y = digits_data('test')

X, Y = _x[:2].clone(), _y[:2].clone()

ERROR_METHODS = {  # (model, x, target, layer) for each entry point, as in the notebook
    'saliency': lambda m, x, t, l: A.saliency(m, x, t), 'guided_backprop': lambda m, x, t, l: A.guided_backprop(m, x, t),
    'deconvolution': lambda m, x, t, l: A.deconvolution(m, x, t), 'input_grad': lambda m, x, t, l: A.input_grad(m, x, t)[0],
    'input_x_gradient': lambda m, x, t, l: A.input_x_gradient(m, x, t),
    'smooth_grad': lambda m, x, t, l: A.smooth_grad(m, x, t, n_samples=2, batch_size=2, seed=0),
    'integrated_gradients': lambda m, x, t, l: A.integrated_gradients(m, x, t, n_steps=3, batch_size=2, return_delta=True)[0],
    'cam': lambda m, x, t, l: A.cam(m, x, t, l, 'xgrad_cam'), 'grad_cam': lambda m, x, t, l: A.grad_cam(m, x, t, l),
    'guided_grad_cam': lambda m, x, t, l: A.guided_grad_cam(m, x, t, l), 'layer_acts_grads': lambda m, x, t, l: A.layer_acts_grads(m, x, t, l)[1],
    'occlusion': lambda m, x, t, l: A.occlusion(m, x, t, window=(1, 8, 8), stride=(1, 8, 8), batch_size=2)}

@pytest.mark.parametrize('name', list(ERROR_METHODS))
def test_dtype_and_target_errors(name):
    f, snap = ERROR_METHODS[name], ModelSnapshot(MODEL)
    with pytest.raises(TypeError, match=re.escape('x is torch.float64 but the model')): f(MODEL, X.double(), Y, 'conv3')
    with pytest.raises(TypeError, match=re.escape('x must be floating point, got torch.uint8')): f(MODEL, (X * 255).byte(), Y, 'conv3')
    with pytest.raises(IndexError, match=re.escape('target 10 is out of range')): f(MODEL, X, 10, 'conv3')
    assert snap.diff(MODEL) == []

def test_model_untouched_on_errors(case):
    name, model, x, y, layer = case
    model.train()
    snap = ModelSnapshot(model)
    for f in (lambda: saliency(model, x, 10_000), lambda: grad_cam(model, x, y, 'nope'),
              lambda: integrated_gradients(model, x, y, baseline=torch.zeros(7)), lambda: occlusion(model, x, y, window=(1, 999, 999), stride=(1, 1, 1)),
              lambda: guided_backprop(model, torch.cat([x, x], 1)[:, :x.shape[1] + 1], y)):
        with pytest.raises((IndexError, KeyError, ValueError, RuntimeError)): f()
    assert snap.diff(model) == []
    model.eval()

@pytest.fixture(scope='module')
def hf_vit():
    return tiny.hf_vit(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 3])

class Logits(nn.Module):
    "The plain wrapper users used to write"
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(x).logits

@pytest.mark.parametrize('method', ['saliency', 'integrated_gradients', 'occlusion', 'smooth_grad', 'input_x_gradient'])
def test_vit_model_output(hf_vit, method):
    "saliency(hf_vit, x, y) used to fail with `'ImageClassifierOutput' object has no attribute 'ndim'`"
    m, x, y = hf_vit
    kw = {'integrated_gradients': dict(n_steps=8), 'occlusion': dict(window=(3, 8, 8), stride=(3, 8, 8)), 'smooth_grad': dict(n_samples=3, seed=0)}.get(method, {})
    f = lambda model, v, **o: getattr(A, method)(model, v, y, **kw, **o)
    ref = f(Logits(m), x)
    assert ref.shape == x.shape and ref.abs().max() > 0
    for r in (f(m, x), f(m, x, output=lambda o: o.logits), f(m, x, output='logits'), f(m, {'pixel_values': x})):
        torch.testing.assert_close(r, ref, rtol=1e-6, atol=1e-7)

# every layer= takes the keys of FlatModel: a name, 'name:k' (the k-th call), an ordinal, the submodule

def _layer_oracle(model, x, y, name, call):
    "(output, gradient of the summed target scores) of call `call` of layer `name`: retain_grad on an out-of-place copy of the model"
    from conftest import out_of_place
    ref, outs = out_of_place(model), []
    def keep(m, i, o): o.retain_grad(); outs.append(o)
    h = ref.get_submodule(name).register_forward_hook(keep)
    try: ref(x).gather(1, y[:, None]).sum().backward()
    finally: h.remove()
    return outs[call - 1].detach(), outs[call - 1].grad

def _explorer_cam(model, x, y, key):
    "The explorer's GradCAM of each example at `key`, and its layer control's value"
    from netlens.widgets import AttributionExplorer
    e = AttributionExplorer(model, x, layers=[key], method='grad_cam', background=False)
    return torch.cat([e.compute({**e.state(), 'image': i, 'target': int(y[i])}) for i in range(len(x))]), e.state()['layer']

LAYER_FUNCS = {
    'saliency': (lambda m, x, y, key: A.saliency(m, x, y, layer=key), lambda a, g: g.abs()),
    'input_x_gradient': (lambda m, x, y, key: A.input_x_gradient(m, x, y, layer=key), lambda a, g: g * a),
    'integrated_gradients': (lambda m, x, y, key: A.integrated_gradients(m, x, y, layer=key, n_steps=4), None),
    'grad_cam': (lambda m, x, y, key: A.grad_cam(m, x, y, key, interpolate=False), lambda a, g: (g.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)),
    'AttributionExplorer': (_explorer_cam, None),   # its maps: grad_cam's, resized to the image
}

@pytest.mark.parametrize('fn', list(LAYER_FUNCS))
@pytest.mark.parametrize('layer,call', [('conv3', 1), ('res.relu', 2)])
def test_layer_takes_every_key_form(digits, fn, layer, call):
    model, x, y = digits
    names = [n for n, _ in model.named_modules() if n]
    keys = [f'{layer}:{call}', model.get_submodule(layer) if call == 1 else None, names.index(layer) if call == 1 else None, layer if call == 1 else None]
    f, rule = LAYER_FUNCS[fn]
    got = [f(model, x, y, k) for k in keys if k is not None]
    if fn == 'AttributionExplorer':
        from netlens.flat import FlatModel
        assert [g[1] for g in got] == [FlatModel(model).key_of(k) for k in keys if k is not None]   # the layer control: the key's one spelling, its call kept
        got = [g[0] for g in got]
        want = torch.cat([A.grad_cam(model, x[i:i + 1], int(y[i]), f'{layer}:{call}') for i in range(len(x))])   # one image at a time, as the explorer
        torch.testing.assert_close(got[0], want, rtol=0, atol=0)
    for g in got[1:]: torch.testing.assert_close(g, got[0], rtol=0, atol=0)
    if rule is not None:
        a, g = _layer_oracle(model, x, y, layer, call)
        torch.testing.assert_close(got[0], rule(a, g))
    if call > 1:
        with pytest.raises(KeyError, match=rf"layer '{layer}' ran {call} times: ask for '{layer}:1', '{layer}:2'"): f(model, x, y, layer)
