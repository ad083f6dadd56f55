"""Wrapped models: every entry point on `torch.compile(model)` and `nn.DataParallel(model)` gives the same
values as on the plain model, because it runs the module behind the wrapper (hooks, relu_rule modes and recordings act on
it). torch.compile is lazy: the compiled wrapper is never run here (netlens must not run it), so building it costs nothing.
After every call the wrapper is left as it was: no hooks on it or on the inner model, the same `_orig_mod`, nothing compiled."""
import warnings
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from netlens.data import digits_cnn, digits_data
from netlens.hooks import hook_count
from netlens.flat import FlatModel
from netlens import attribution as A, optvis as O, similarity as S, landscape as L, dream as D, style as ST, widgets as W

MODEL = digits_cnn()
_x, _y = digits_data('test')
X, Y = _x[:3].clone(), _y[:3].clone()
OTHER = torch.compile(digits_cnn(pretrained=False))   # wrapped too: direction_to unwraps both

def _compiled(m):
    c = torch.compile(m)
    def refuse(*a, **k): raise AssertionError("netlens ran the compiled wrapper: it must run the module behind it")
    c.forward = refuse                      # an instance attribute: any call of the wrapper fails the test (nothing compiles)
    return c

WRAPPERS = {'compile': _compiled, 'dataparallel': nn.DataParallel, 'compile(dataparallel)': lambda m: _compiled(nn.DataParallel(m))}

def _record(m, x):
    fm = FlatModel(m)
    with torch.no_grad(), fm.record(['conv2', 'conv3']) as rec: fm.model(x)
    return torch.cat([rec['conv2'].flatten(1), rec['conv3'].flatten(1)], 1)

CASES = {
    'saliency': lambda m: A.saliency(m, X, Y),
    'guided_backprop': lambda m: A.guided_backprop(m, X, Y),
    'deconvolution': lambda m: A.deconvolution(m, X, Y),
    'input_grad': lambda m: A.input_grad(m, X, Y)[0],
    'smooth_grad': lambda m: A.smooth_grad(m, X, Y, n_samples=2, seed=0),
    'integrated_gradients': lambda m: A.integrated_gradients(m, X, Y, n_steps=4),
    'grad_cam': lambda m: A.grad_cam(m, X, Y, 'conv3'),
    'guided_grad_cam': lambda m: A.guided_grad_cam(m, X, Y, 'conv3'),
    'layer_acts_grads': lambda m: torch.cat([t.flatten() for t in A.layer_acts_grads(m, X, Y, 'conv3')]),
    'occlusion': lambda m: A.occlusion(m, X, Y, window=(1, 8, 8), stride=(1, 8, 8)),
    'FlatModel.record': lambda m: _record(m, X),
    'render': lambda m: O.render(m, O.channel('conv3', 1), steps=2, size=16, seed=0, show_progress=False),
    'deep_dream': lambda m: D.deep_dream(m, X[:1], 'conv2', octaves=1, steps=1, seed=0, show_progress=False),
    'class_visualization': lambda m: D.class_visualization(m, [0, 1], size=16, steps=1, seed=0, show_progress=False),
    'channel_visualization': lambda m: D.channel_visualization(m, 'conv3', [0], size=16, steps=1, seed=0, show_progress=False),
    'invert_features': lambda m: D.invert_features(m, X[0], 'conv2', steps=1, seed=0, show_progress=False),
    'style_transfer': lambda m: ST.style_transfer(m, X[0], X[1], content_layers=['conv2'], style_layers=['conv3'], steps=1, optimizer='adam',
                                                  preprocess=None, show_progress=False, seed=0),
    'AttributionExplorer': lambda m: W.AttributionExplorer(m, X[:1]).compute(),
    'ChannelExplorer': lambda m: W.ChannelExplorer(m, size=16, steps=1).compute(),
    'compare_models': lambda m: S.compare_models(m, loader=[(X.repeat(2, 1, 1, 1), Y.repeat(2))], layers1=['conv2', 'conv3'], show_progress=False).matrix,
    'layer_similarity': lambda m: S.layer_similarity(m, m, X, 'conv2', 'conv3'),
    'landscape1d': lambda m: L.landscape1d(m, (X, Y), F.cross_entropy, step_size=0.5, seed=0, show_progress=False)[1],
    'landscape2d': lambda m: L.landscape2d(m, (X, Y), F.cross_entropy, step_size=1., seed=0, show_progress=False)[2],
    'dataset_loss': lambda m: L.dataset_loss(m, (X, Y), F.cross_entropy),
    'direction_to': lambda m: torch.cat([d.flatten() for d in L.direction_to(m, OTHER)]),
    'fourier_map': lambda m: L.fourier_map(m, (X, Y), max_freq=1, show_progress=False),
}
REF = {}

@pytest.mark.parametrize('wrap', list(WRAPPERS))
@pytest.mark.parametrize('name', list(CASES))
def test_wrapped_equals_plain(name, wrap):
    f = CASES[name]
    if name not in REF: REF[name] = f(MODEL)
    w = WRAPPERS[wrap](MODEL)
    before = dict(w.named_children())
    with warnings.catch_warnings():
        warnings.simplefilter('error')                       # attribution and the rest: no warning for a wrapped model
        out = f(w)
    torch.testing.assert_close(out, REF[name], rtol=1e-6, atol=1e-6, equal_nan=True)   # fourier_map: NaN beyond max_freq
    assert hook_count(w) == 0 and hook_count(MODEL) == 0
    assert dict(w.named_children()) == before and not MODEL.training
    assert all(p.requires_grad and p.grad is None for p in MODEL.parameters())

def test_compare_models_names_the_model():
    r = S.compare_models(_compiled(MODEL), loader=[(X.repeat(2, 1, 1, 1), Y.repeat(2))], layers1=['conv3'], show_progress=False)
    assert r.model1 == type(MODEL).__name__, r.model1      # the model's own class, not OptimizedModule
