"""netlens.attribution.gradients (nbs/04_gradients.ipynb): saliency, input x gradient, integrated gradients, SmoothGrad,
guided backpropagation, deconvolution, and attribution through a layer.

Oracles: Captum's Saliency, InputXGradient, IntegratedGradients, NoiseTunnel (handed netlens' noise), GuidedBackprop and
Deconvolution on the cases of captum_cases.py; Captum's LayerIntegratedGradients / LayerGradientXActivation through a layer of
random-init BERT, GPT-2 and a Hugging Face ViT (the attention mask follows its example in every enlarged batch); the exact
integral of a quadratic for the trapezoid rule (float64); a hand-built guided DenseNet; Adebayo et al.'s randomisation check.
Bad input is refused before any gradient is taken, with an error that names the argument, what it got and the fix."""
import re, warnings
import pytest, torch, torch.nn as nn, torchvision
from captum.attr import (Saliency, InputXGradient, IntegratedGradients, NoiseTunnel, GuidedBackprop, Deconvolution, LayerIntegratedGradients,
                         LayerGradientXActivation)
import tiny_models as tiny
from conftest import perturbed
from captum_cases import rel_close, case, _relu_models
import netlens.attribution as A
from netlens.attribution import ig_quadrature
from netlens.attribution.gradients import (input_grad, saliency, input_x_gradient, guided_backprop, deconvolution, smooth_grad,
                                           integrated_gradients, token_scores, show_tokens)
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count

def test_saliency(case):
    name, model, x, y, _ = case
    snap = ModelSnapshot(model)
    for abs_ in (True, False):
        rel_close(saliency(model, x, y, sign='absolute' if abs_ else 'all'), Saliency(model).attribute(x.clone().requires_grad_(), target=y, abs=abs_))
    assert snap.diff(model) == []

def test_input_x_gradient(case):
    name, model, x, y, _ = case
    rel_close(input_x_gradient(model, x, y), InputXGradient(model).attribute(x.clone().requires_grad_(), target=y))

@pytest.mark.parametrize('quadrature', ['gausslegendre', 'riemann_left', 'riemann_right', 'riemann_middle'])
def test_integrated_gradients(case, quadrature):
    name, model, x, y, _ = case
    ours, d = integrated_gradients(model, x, y, n_steps=20, quadrature=quadrature, return_delta=True)
    theirs, dc = IntegratedGradients(model).attribute(x, target=y, n_steps=20, method=quadrature, return_convergence_delta=True)
    rel_close(ours, theirs)
    torch.testing.assert_close(d, dc.to(d.dtype), rtol=1e-4, atol=1e-4 * theirs.abs().sum().item())

def test_integrated_gradients_baseline_and_batching(case):
    name, model, x, y, _ = case
    b = torch.rand_like(x[:1]) * 0.1
    ours = integrated_gradients(model, x, y, baseline=b, n_steps=16, batch_size=3 * len(x))
    theirs = IntegratedGradients(model).attribute(x, baselines=b.expand_as(x), target=y, n_steps=16, internal_batch_size=5)
    rel_close(ours, theirs)

def test_trapezoid_is_the_true_rule():
    "Captum's riemann_trapezoid weights sum to (n-1)/n; ours integrate the straight line exactly (float64 reference)"
    a, w = ig_quadrature(50, 'riemann_trapezoid')
    assert abs(sum(w) - 1) < 1e-12
    from captum.attr._utils.approximation_methods import approximation_parameters
    step, _ = approximation_parameters('riemann_trapezoid')
    assert abs(sum(step(50)) - 49 / 50) < 1e-12
    # f(x) = (w·x)^2 / 2 has gradient (w·x) w: IG from 0 is exactly x * w (w·x) / 2 componentwise, and the trapezoid rule
    # integrates the linear integrand α (w·x) w without error
    torch.manual_seed(0)
    lin = nn.Linear(6, 1, bias=False).double()
    sq = lambda x: lin(x) ** 2 / 2          # a plain function works as the model too
    x = torch.randn(3, 6, dtype=torch.float64)
    ours = integrated_gradients(sq, x, 0, n_steps=7, quadrature='riemann_trapezoid')
    exact = x * lin.weight.detach() * (x @ lin.weight.detach().T) / 2
    torch.testing.assert_close(ours, exact, rtol=1e-12, atol=1e-12)

def test_smoothgrad_same_noise(case):
    """Given the same noise, the statistics are Captum's: NoiseTunnel is handed netlens' draws for seed=0 (samples 0..9) in
    place of its torch.normal call"""
    from unittest import mock
    from netlens.attribution.gradients import _unit_noise
    name, model, x, y, _ = case
    x, y = x[:1], y[:1]
    sigma = 0.15 * (x.max() - x.min()).item()
    unit, calls = _unit_noise(0, range(10), x.shape[1:], x.device, x.dtype), []
    def normal(mean, std): calls.append(std.shape); return mean + std * unit
    for kind in ('smoothgrad', 'smoothgrad_sq', 'vargrad'):
        ours = smooth_grad(model, x, y, n_samples=10, stdev=0.15, kind=kind, seed=0)
        with mock.patch.object(torch, 'normal', normal):
            theirs = NoiseTunnel(Saliency(model)).attribute(x.clone().requires_grad_(), nt_type=kind, nt_samples=10, stdevs=sigma, target=y, abs=False)
        rel_close(ours, theirs, 1e-5 if kind != 'vargrad' else 1e-4)
    assert calls == [(10, *x.shape[1:])] * 3, 'Captum drew its noise in one call of the same shape'

@pytest.mark.parametrize('name,model,x,y', _relu_models())
def test_guided_backprop_and_deconvolution_equal_captum(name, model, x, y):
    rel_close(guided_backprop(model, x, y), GuidedBackprop(model).attribute(x.clone().requires_grad_(), target=y))
    rel_close(deconvolution(model, x, y), Deconvolution(model).attribute(x.clone().requires_grad_(), target=y))

def test_guided_backprop_densenet_functional_relu():
    "DenseNet applies F.relu in forward: the reference replaces every ReLU, modules and functional, in a deep copy"
    from copy import deepcopy
    import torch.nn.functional as F
    from netlens.attribution.gradients import _ReLURule
    model = perturbed(torchvision.models.densenet121())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref_model = deepcopy(model)
    class G(nn.Module):
        def forward(self, t): return _ReLURule.apply(t, 'guided', False)
    for parent in ref_model.modules():
        for n, c in parent.named_children():
            if isinstance(c, nn.ReLU): setattr(parent, n, G())
    def forward(t):  # DenseNet.forward with its functional relu guided
        f = ref_model.features(t)
        out = F.adaptive_avg_pool2d(G()(f), (1, 1))
        return ref_model.classifier(torch.flatten(out, 1))
    xr = x.clone().requires_grad_()
    ref, = torch.autograd.grad(forward(xr)[0, 5], xr)
    ours = guided_backprop(model, x, 5)
    rel_close(ours, ref, 1e-6)
    plain = saliency(model, x, 5, sign='all')
    assert (ours - plain).abs().max() > 1e-3 * plain.abs().max(), 'the functional ReLU is guided too'

def test_ig_completeness_converges_on_digits():
    x, y = digits_data('test')
    model = digits_cnn()
    gaps = {}
    for n in (50, 200, 1000):
        _, d = integrated_gradients(model, x[:8], y[:8], n_steps=n, quadrature='riemann_trapezoid', return_delta=True, batch_size=2000)
        gaps[n] = d.abs().max().item()
    print('trapezoid completeness gap', gaps)
    assert gaps[1000] < gaps[200] < gaps[50]
    with torch.no_grad(): rise = (model(x[:8]) - model(torch.zeros_like(x[:8])))[range(8), y[:8]].abs().min().item()
    assert gaps[1000] < 0.01 * rise or gaps[1000] < gaps[50] / 4

def test_randomisation_sanity_check():
    "Adebayo et al. 2018: the saliency of the trained model must differ from that of a copy with random weights"
    from scipy.stats import spearmanr
    x, y = digits_data('test')
    trained, rand = digits_cnn(), digits_cnn(pretrained=False)
    a, b = saliency(trained, x[:16], y[:16]), saliency(rand, x[:16], y[:16])
    rho = [spearmanr(u.flatten().numpy(), v.flatten().numpy())[0] for u, v in zip(a, b)]
    print('rank correlation trained vs randomised saliency:', sum(rho) / len(rho))
    assert sum(rho) / len(rho) < 0.5

def close(a, b, tol=1e-4):
    "Agreement within `tol`, absolute and relative to the largest magnitude; the error is printed for the report"
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    print(f'max abs error {err:.2e} (scale {scale:.2e})')
    assert a.shape == b.shape and scale > 0 and err <= tol * max(1., scale), f"max abs error {err:.3g} vs scale {scale:.3g}"

@pytest.fixture(scope='module')
def bert():
    m = tiny.hf_bert(initializer_range=0.3)   # larger than 0.02: attention far from uniform, so the mask matters
    ids = torch.tensor([[2, 15, 27, 33, 41, 3], [2, 19, 8, 3, 0, 0]])        # example 1 padded
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return m, ids, mask, torch.tensor([1, 2])

def bert_fwd(m): return lambda ids, mask: m(input_ids=ids, attention_mask=mask).logits

@pytest.mark.parametrize('layer', ['bert.embeddings', 'bert.embeddings.word_embeddings'])
def test_bert_layer_integrated_gradients_equal_captum(bert, layer):
    m, ids, mask, y = bert
    snap = ModelSnapshot(m)
    ours, d = A.integrated_gradients(m, {'input_ids': ids, 'attention_mask': mask}, y, layer=layer, n_steps=16, return_delta=True)
    lig = LayerIntegratedGradients(bert_fwd(m), m.get_submodule(layer))
    theirs, dc = lig.attribute(ids, target=y, additional_forward_args=(mask,), n_steps=16, method='gausslegendre', return_convergence_delta=True)
    assert ours.shape == (2, 6, 32)
    close(ours, theirs)
    close(d, dc.to(d.dtype))
    assert snap.diff(m) == [] and hook_count(m) == 0

def test_bert_mask_follows_its_example(bert):
    "The padded example's attribution in the batch (copy-major steps, in chunks) is its attribution alone, and, on its real tokens, that of the unpadded example"
    m, ids, mask, y = bert
    batch = {'input_ids': ids, 'attention_mask': mask}
    full = A.integrated_gradients(m, batch, y, layer='bert.embeddings', n_steps=8, batch_size=6)      # 3 steps per forward
    alone = A.integrated_gradients(m, {'input_ids': ids[1:], 'attention_mask': mask[1:]}, y[1:], layer='bert.embeddings', n_steps=8)
    unpadded = A.integrated_gradients(m, {'input_ids': ids[1:, :4], 'attention_mask': mask[1:, :4]}, y[1:], layer='bert.embeddings', n_steps=8)
    torch.testing.assert_close(full[1:], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full[1:, :4], unpadded, rtol=1e-4, atol=1e-5)
    assert (full[1] - A.integrated_gradients(m, {'input_ids': ids, 'attention_mask': torch.ones_like(mask)}, y, layer='bert.embeddings', n_steps=8)[1]).abs().max() > 1e-2 * full[1].abs().max(), 'the mask matters'

def test_bert_gradient_x_activation_equal_captum(bert):
    m, ids, mask, y = bert
    batch = {'input_ids': ids, 'attention_mask': mask}
    for layer in ('bert.embeddings', 'bert.encoder.layer.0.output'):
        mod = m.get_submodule(layer)
        close(A.input_x_gradient(m, batch, y, layer=layer), LayerGradientXActivation(bert_fwd(m), mod).attribute(ids, target=y, additional_forward_args=(mask,)))
        grad = LayerGradientXActivation(bert_fwd(m), mod, multiply_by_inputs=False).attribute(ids, target=y, additional_forward_args=(mask,))
        close(A.saliency(m, batch, y, layer=layer, sign='all'), grad)
        close(A.saliency(m, batch, y, layer=layer), grad.abs())
        close(A.input_grad(m, batch, y, layer=layer)[0], grad)

def test_bert_token_ids_without_a_layer(bert):
    m, ids, mask, y = bert
    for f in (lambda v: A.saliency(m, v, y), lambda v: A.integrated_gradients(m, v, y, n_steps=2), lambda v: A.input_x_gradient(m, v, y)):
        with pytest.raises(TypeError, match=r"^x holds integer token ids \(torch.int64\), which have no gradient: attribute through a layer, e\.g\. layer='bert.embeddings.word_embeddings'$"): f(ids)
        with pytest.raises(TypeError, match=r"^x\['input_ids'\] holds integer token ids .*layer='bert.embeddings.word_embeddings'"): f({'input_ids': ids, 'attention_mask': mask})
    for name, f in [('smooth_grad', lambda: A.smooth_grad(m, ids, y, n_samples=2)), ('occlusion', lambda: A.occlusion(m, ids, y, window=(1,), stride=(1,))),
                    ('guided_backprop', lambda: A.guided_backprop(m, ids, y))]:
        with pytest.raises(TypeError, match=f"{name} has no layer=; attribute through a layer with saliency, input_x_gradient or integrated_gradients"): f()

def test_token_scores_and_show_tokens(bert):
    m, ids, mask, y = bert
    attr = A.integrated_gradients(m, {'input_ids': ids, 'attention_mask': mask}, y, layer='bert.embeddings', n_steps=4)
    s = A.token_scores(attr)
    torch.testing.assert_close(s, attr.sum(-1))
    h = A.show_tokens([f't{i}' for i in ids[0].tolist()], s[0])
    assert h.data.count('<mark') == 6 and h._repr_html_() == h.data

@pytest.fixture(scope='module')
def gpt2():
    m = tiny.hf_gpt2()
    return m, torch.tensor([[5, 17, 42, 8, 91], [60, 3, 3, 77, 12]]), torch.tensor([17, 4])

def test_gpt2_last_token_through_wte_equals_captum(gpt2):
    m, ids, y = gpt2
    last = lambda o: o.logits[:, -1]
    ours, d = A.integrated_gradients(m, ids, y, layer='transformer.wte', output=last, n_steps=16, return_delta=True)
    theirs, dc = LayerIntegratedGradients(lambda t: m(t).logits[:, -1], m.transformer.wte).attribute(ids, target=y, n_steps=16, return_convergence_delta=True)
    close(ours, theirs); close(d, dc.to(d.dtype))
    close(A.input_x_gradient(m, ids, y, layer='transformer.wte', output=last), LayerGradientXActivation(lambda t: m(t).logits[:, -1], m.transformer.wte).attribute(ids, target=y))
    with pytest.raises(ValueError, match=r"must be scores \(N, classes\), got shape \(2, 5, 100\).*output=lambda o: o\[:, -1\]"): A.saliency(m, ids, y, layer='transformer.wte')
    with pytest.raises(ValueError, match=r"layer 'transformer.wpe' outputs shape \(1, 5, 32\) for a batch of 2: its first dimension is not the examples"):
        A.saliency(m, ids, y, layer='transformer.wpe', output=last)

@pytest.fixture(scope='module')
def hf_vit():
    return tiny.hf_vit(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 3])

def test_vit_layer_integrated_gradients_equal_captum(hf_vit):
    "layer= on float inputs: the baseline (zeros) in input space, the path in the layer's output space"
    m, x, y = hf_vit
    ours = A.integrated_gradients(m, x, y, layer='vit.embeddings', n_steps=8)
    close(ours, LayerIntegratedGradients(lambda t: m(t).logits, m.vit.embeddings).attribute(x, target=y, n_steps=8))
    assert ours.shape == (2, 17, 32)

def test_guided_backprop_warns_without_relu(hf_vit):
    m, x, y = hf_vit
    for f in (A.guided_backprop, A.deconvolution):
        with pytest.warns(UserWarning, match="no ReLU ran in the model's forward pass"): r = f(m, x, y)
        torch.testing.assert_close(r, A.saliency(m, x, y, sign='all'), rtol=0, atol=0)
    dm, (dx, dy) = digits_cnn(), digits_data('test')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        A.guided_backprop(dm, dx[:2], dy[:2]); A.deconvolution(dm, dx[:2], dy[:2]); A.smooth_grad(dm, dx[:2], dy[:2], n_samples=2, guided=True)

def fails(exc, contains): return pytest.raises(exc, match=re.escape(contains))

MODEL = digits_cnn()

_x, _y = digits_data('test')

X, Y = _x[:4].clone(), _y[:4].clone()

XN = X.clone(); XN[2, 0, 5, 5] = float('nan')

XN = X.clone(); XN[2, 0, 5, 5] = float('nan')

NAN_AT_2 = lambda t: torch.where(torch.arange(len(t))[:, None] == 2, float('nan'), MODEL(t))   # finite x, NaN scores for example 2

PAIR = lambda t: (MODEL(t), t)                                                                  # (scores, features)

@pytest.mark.parametrize('call, exc, regex', [
    (lambda: input_grad(MODEL, X, 10), IndexError, 'target 10 is out of range: the model has 10 outputs'),
    (lambda: input_grad(MODEL, X, [1, 2]), ValueError, r'one per example \(4\)'),
    (lambda: input_grad(MODEL, X, 1.5), TypeError, 'integer class'),
    (lambda: input_grad(MODEL, (X * 255).byte(), 1), TypeError, 'floating point'),
    (lambda: input_grad(MODEL, torch.rand(5), 1), ValueError, 'add a batch dimension'),
    (lambda: input_grad('resnet', X, 1), TypeError, 'nn.Module or a function'),
])
def test_input_grad_targets_and_input(call, exc, regex):
    with pytest.raises(exc, match=regex): call()

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: input_grad(MODEL, X[:0], Y[:0]), ValueError, 'x is empty'),
    (lambda: input_grad(NAN_AT_2, X, Y), ValueError, "the model's output is NaN or infinite for examples [2]"),
    (lambda: input_grad(lambda t: {'scores': MODEL(t)}, X, Y), TypeError, "a dict with keys ['scores'] and no 'logits': choose the scores with output="),
    (lambda: input_grad(MODEL, X.double(), Y), TypeError, "x is torch.float64 but the model's parameters are torch.float32"),
    (lambda: input_grad(MODEL, X[0], Y[0]), ValueError, "layer 'stem.0' (Conv2d) takes batches of 4 dimensions"),
])
def test_input_grad_bad_input(call, exc, contains):
    with fails(exc, contains): call()

def test_saliency_guided_deconvolution_refuse_what_they_used_to_draw():
    "NaN input, NaN scores, dict outputs without logits, empty batches; a tuple's first element is the scores; nothing attached to the caller's graph"
    snap = ModelSnapshot(MODEL)
    for f in (saliency, guided_backprop, deconvolution):
        with fails(ValueError, 'at examples [2]'): f(MODEL, XN, Y)
        with fails(ValueError, 'NaN or infinite for examples [2]'): f(NAN_AT_2, X, Y)
        with fails(TypeError, "and no 'logits'"): f(lambda t: {'scores': MODEL(t)}, X, Y)
        torch.testing.assert_close(f(PAIR, X, Y), f(MODEL, X, Y), rtol=0, atol=0)
        with fails(ValueError, 'x is empty'): f(MODEL, X[:0], Y[:0])
        xg = X.clone().requires_grad_()
        assert f(MODEL, xg, Y).requires_grad is False and xg.grad is None
        torch.testing.assert_close(f(MODEL, X.contiguous(memory_format=torch.channels_last), Y), f(MODEL, X, Y), rtol=0, atol=0)
    assert snap.diff(MODEL) == []

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: smooth_grad(MODEL, X, Y, kind='smooth'), ValueError, 'kind must be'),
    (lambda: smooth_grad(MODEL, X, Y, n_samples=0), ValueError, 'n_samples must be an integer >= 1, got 0'),
    (lambda: smooth_grad(MODEL, X, Y, stdev=-0.1), ValueError, 'stdev must be a number >= 0'),
    (lambda: smooth_grad(MODEL, XN, Y), ValueError, 'x holds NaN or infinite values (at examples [2])'),
    (lambda: smooth_grad(MODEL, X[:0], Y[:0], batch_size=8), ValueError, 'x is empty'),
    (lambda: smooth_grad(MODEL, X, Y, batch_size=0), ValueError, 'batch_size must be an integer >= 1, got 0'),
    (lambda: smooth_grad(MODEL, X[0], Y[0], n_samples=4), ValueError, 'is x one example without its batch dimension? add it with x[None]'),
])
def test_smooth_grad_bad_input(call, exc, contains):
    with fails(exc, contains): call()

@pytest.mark.parametrize('call, exc, regex', [
    (lambda: integrated_gradients(MODEL, X, Y, baseline=torch.zeros(3, 32, 32)), ValueError, 'does not broadcast'),
    (lambda: integrated_gradients(MODEL, X, Y, n_steps=0), ValueError, re.escape('n_steps must be an integer >= 1, got 0')),
    (lambda: integrated_gradients(MODEL, X, Y, quadrature='riemann_lft'), KeyError, "unknown quadrature 'riemann_lft'; closest: 'riemann_left'"),
    (lambda: integrated_gradients(MODEL, X[:0], Y[:0], batch_size=8), ValueError, 'x is empty'),
    (lambda: integrated_gradients(MODEL, X, Y, batch_size=0), ValueError, re.escape('batch_size must be an integer >= 1, got 0')),
    (lambda: integrated_gradients(MODEL, X, Y, baseline=float('nan')), ValueError, 'baseline holds NaN'),
])
def test_integrated_gradients_bad_input(call, exc, regex):
    with pytest.raises(exc, match=regex): call()

class TinyText(nn.Module):
    "Token ids -> embedding -> mean over the unmasked tokens -> linear"
    main_input_name = 'input_ids'
    def __init__(self):
        super().__init__(); torch.manual_seed(0); self.emb, self.head = nn.Embedding(20, 4), nn.Linear(4, 3)
    def forward(self, input_ids, attention_mask):
        m = attention_mask.float()[..., None]
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))

def test_token_attribution_bad_input():
    tt = TinyText()
    ids, mask, yt = torch.tensor([[3, 5, 7, 2], [4, 9, 0, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), torch.tensor([2, 0])
    batch = {'input_ids': ids, 'attention_mask': mask}
    ts = token_scores(integrated_gradients(tt, batch, yt, layer='emb', n_steps=4))
    words = ['the', 'cat', 'sat', '<b>']
    with fails(KeyError, "unknown layer 'embb'; closest: 'emb'"): integrated_gradients(tt, batch, yt, layer='embb')
    with fails(ValueError, "scores must be one per token (4)"): show_tokens(words, ts)
    with fails(ValueError, "attr must be a token attribution (N, T, D)"): token_scores(ts)
    with fails(ValueError, "baseline must be a token id (an integer) for token ids, got 0.5"): integrated_gradients(tt, batch, yt, layer='emb', baseline=0.5)
    with fails(ValueError, "x['input_ids'] must be a batch of token ids (N, T)"): saliency(tt, {'input_ids': ids[0], 'attention_mask': mask[0]}, 0, layer='emb')
    assert sum(len(m._forward_hooks) for m in tt.modules()) == 0
