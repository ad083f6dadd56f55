"""Attribution methods against Captum on the same models and inputs (random-init resnet18 at 64x64 and vgg11, both with
perturbed BatchNorm statistics, and the trained digits model), plus the axioms and references Captum cannot give."""
import warnings
from copy import deepcopy
import pytest, torch, torch.nn as nn, torchvision
from captum.attr import (Saliency, InputXGradient, IntegratedGradients, NoiseTunnel, GuidedBackprop, Deconvolution, LayerGradCam,
                         GuidedGradCam, Occlusion, LayerAttribution)
from conftest import perturbed
from netlens.attribution import (saliency, input_x_gradient, guided_backprop, deconvolution, smooth_grad, integrated_gradients, grad_cam,
                                 guided_grad_cam, occlusion, ig_quadrature)
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot

def rel_close(a, b, rtol=1e-5):
    "Agreement to a relative error `rtol` of the largest magnitude (float32 sums of many terms round at that scale)"
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} vs scale {scale:.3g} (rel {err / scale:.3g})"

def _digits():
    x, y = digits_data('test')
    return 'digits', digits_cnn(), x[:4], y[:4], 'conv3'

def _resnet():
    torch.manual_seed(0)          # the same random init whatever ran before (the tolerances below hold for this model, not any)
    return 'resnet18', perturbed(torchvision.models.resnet18()), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 817]), 'layer4'

def _vgg():
    torch.manual_seed(0)
    return 'vgg11', perturbed(torchvision.models.vgg11()), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2]), 'features.18'

CASES = {'digits': _digits, 'resnet18': _resnet, 'vgg11': _vgg}

@pytest.fixture(scope='module', params=list(CASES))
def case(request): return CASES[request.param]()

def test_saliency(case):
    name, model, x, y, _ = case
    snap = ModelSnapshot(model)
    for abs_ in (True, False):
        rel_close(saliency(model, x, y, abs=abs_), Saliency(model).attribute(x.clone().requires_grad_(), target=y, abs=abs_))
    assert snap.diff(model) == []

def test_input_x_gradient(case):
    name, model, x, y, _ = case
    rel_close(input_x_gradient(model, x, y), InputXGradient(model).attribute(x.clone().requires_grad_(), target=y))

@pytest.mark.parametrize('method', ['gausslegendre', 'riemann_left', 'riemann_right', 'riemann_middle'])
def test_integrated_gradients(case, method):
    name, model, x, y, _ = case
    ours, d = integrated_gradients(model, x, y, n_steps=20, method=method, return_delta=True)
    theirs, dc = IntegratedGradients(model).attribute(x, target=y, n_steps=20, method=method, return_convergence_delta=True)
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
    ours = integrated_gradients(sq, x, 0, n_steps=7, method='riemann_trapezoid')
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

def _relu_models():
    "Captum's guided backprop hooks ReLU modules: it is defined on models whose ReLUs are all modules used once each"
    x, y = digits_data('test')
    vgg = perturbed(torchvision.models.vgg11())
    for m in vgg.modules():
        if isinstance(m, nn.ReLU): m.inplace = False
    return [('vgg11', vgg, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2]))]

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
    plain = saliency(model, x, 5, abs=False)
    assert (ours - plain).abs().max() > 1e-3 * plain.abs().max(), 'the functional ReLU is guided too'

def test_grad_cam_equals_layer_grad_cam(case):
    name, model, x, y, layer = case
    lgc = LayerGradCam(model, dict(model.named_modules())[layer])
    for relu in (True, False):
        raw = lgc.attribute(x, target=y, relu_attributions=relu)
        rel_close(grad_cam(model, x, y, layer, interpolate=False, relu=relu), raw[:, 0])
        up = LayerAttribution.interpolate(raw, x.shape[-2:], interpolate_mode='bilinear')
        rel_close(grad_cam(model, x, y, layer, relu=relu), up[:, 0])
    per_channel = lgc.attribute(x, target=y, attr_dim_summation=False)
    rel_close(grad_cam(model, x, y, layer, channel=3, interpolate=False, relu=False), per_channel[:, 3])

def test_guided_grad_cam_equals_captum():
    for name, model, x, y in _relu_models():
        layer = dict(model.named_modules())['features.18']
        for mode in ('nearest', 'bilinear'):
            theirs = GuidedGradCam(model, layer).attribute(x.clone().requires_grad_(), target=y, interpolate_mode=mode)
            rel_close(guided_grad_cam(model, x, y, 'features.18', mode=mode), theirs)

def test_occlusion_equals_captum(case):
    """In float64: an occlusion attribution is a difference of two nearly equal scores, so float32 rounding of the scores
    (batched differently by each library) is amplified relative to the attribution; Captum returns float32 at the end"""
    name, model, x, y, _ = case
    model, x = deepcopy(model).double(), x.double()
    c = x.shape[1]
    window, stride = (c, 7, 7), (c, 4, 4)
    theirs = Occlusion(model).attribute(x, target=y, sliding_window_shapes=window, strides=stride, baselines=0., perturbations_per_eval=8)
    rel_close(occlusion(model, x, y, window=window, stride=stride, batch_size=32), theirs)
    theirs_b = Occlusion(model).attribute(x, target=y, sliding_window_shapes=(1, 9, 9), strides=(1, 5, 5), baselines=0.3)
    rel_close(occlusion(model, x, y, window=(1, 9, 9), stride=(1, 5, 5), baseline=0.3), theirs_b)

def test_ig_completeness_converges_on_digits():
    x, y = digits_data('test')
    model = digits_cnn()
    gaps = {}
    for n in (50, 200, 1000):
        _, d = integrated_gradients(model, x[:8], y[:8], n_steps=n, method='riemann_trapezoid', return_delta=True, batch_size=2000)
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

def test_model_untouched_on_errors(case):
    name, model, x, y, layer = case
    model.train()
    snap = ModelSnapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for f in (lambda: saliency(model, x, 10_000), lambda: grad_cam(model, x, y, 'nope'),
                  lambda: integrated_gradients(model, x, y, baseline=torch.zeros(7)), lambda: occlusion(model, x, y, window=(1, 999, 999), stride=(1, 1, 1)),
                  lambda: guided_backprop(model, torch.cat([x, x], 1)[:, :x.shape[1] + 1], y)):
            with pytest.raises((IndexError, KeyError, ValueError, RuntimeError)): f()
    assert snap.diff(model) == []
    model.eval()
