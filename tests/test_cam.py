"""netlens.attribution.cam (nbs/05_gradcam.ipynb): CAM, GradCAM, GradCAM++, guided GradCAM, layer_acts_grads.

Oracles: Captum's LayerGradCam and GuidedGradCam on the cases of captum_cases.py; GradCAM by hand on plain forward hooks (the
layer's output and `torch.autograd.grad` of the target scores, permuted or reshaped to (N, C, h, w) by hand) on the feature
layouts users bring: channels-last Swin stages, ViT tokens with class and register tokens, Hugging Face ModelOutputs and
keyword inputs, BERT's word tokens. Bad input is refused with an error that names the layer, the argument or the fix, and the
model is left as it was."""
import re, warnings
import pytest, torch, torch.nn as nn, torchvision
from captum.attr import LayerGradCam, GuidedGradCam, LayerAttribution
import tiny_models as tiny
from captum_cases import rel_close, case, _relu_models
import netlens.attribution as A
from netlens.adapters import Layout
from netlens.attribution.cam import cam, grad_cam, guided_grad_cam, layer_acts_grads
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count

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

def hand_gradcam(model, x, target, layer:str, to_maps, scores=lambda o: o):
    "GradCAM without relu from its definition: weights = gradients averaged over (h, w), map = Σ_c w_c A_c; `to_maps` lays the layer's output out as (N, C, h, w)"
    box = []
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: box.append(o))
    try: out = model(**x) if isinstance(x, dict) else model(x)
    finally: h.remove()
    assert len(box) == 1
    s = scores(out).gather(1, torch.as_tensor(target).view(-1, 1)).sum()
    g, = torch.autograd.grad(s, box[0])
    A_, G_ = to_maps(box[0].detach()), to_maps(g)
    return (G_.mean((2, 3), keepdim=True) * A_).sum(1), A_, G_

def check_gradcam(model, x, y, layer, to_maps, scores=lambda o: o, **kw):
    "grad_cam (with and without relu, one channel, resized) equals the hand computation; the model is left as it was"
    snap = ModelSnapshot(model)
    ref, A_, G_ = hand_gradcam(model, x, y, layer, to_maps, scores)
    assert ref.abs().max() > 0, 'a degenerate fixture: every map is 0'
    torch.testing.assert_close(A.grad_cam(model, x, y, layer, interpolate=False, relu=False, **kw), ref)
    torch.testing.assert_close(A.grad_cam(model, x, y, layer, interpolate=False, **kw), ref.clamp(min=0))
    torch.testing.assert_close(A.grad_cam(model, x, y, layer, channel=3, interpolate=False, relu=False, **kw), G_[:, 3].mean((1, 2))[:, None, None] * A_[:, 3])
    acts, grads = A.layer_acts_grads(model, x, y, layer, **kw)
    torch.testing.assert_close(acts, A_); torch.testing.assert_close(grads, G_)
    main = x.get('pixel_values') if isinstance(x, dict) else x
    if main is None:
        with pytest.raises(ValueError, match=r"interpolate=True resizes the map to the input image's size, but x\['input_ids'\] has shape \(2, 9\), not images: pass interpolate=False"):
            A.grad_cam(model, x, y, layer, **kw)
        return ref
    up = torch.nn.functional.interpolate(ref.clamp(min=0)[:, None], size=main.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
    torch.testing.assert_close(A.grad_cam(model, x, y, layer, **kw), up)
    assert snap.diff(model) == [] and hook_count(model) == 0
    return ref

TARGETS = torch.tensor([1, 4])

# Swin: stages output channels-last maps (N, h, w, C)

@pytest.fixture(scope='module')
def timm_swin():
    return tiny.timm_swin(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

@pytest.mark.parametrize('layer', ['layers.1', 'layers.2', 'layers.3'])
def test_timm_swin_stages_are_permuted(timm_swin, layer):
    "Used to be read as NCHW: (N, h, w, C) gave maps over the wrong dimensions, then a plausible 32x32 picture"
    model, x = timm_swin
    ref = check_gradcam(model, x, TARGETS, layer, lambda t: t.permute(0, 3, 1, 2))
    side = {'layers.1': 4, 'layers.2': 2, 'layers.3': 1}[layer]
    assert ref.shape == (2, side, side)

def test_timm_swin_window_attention_is_refused(timm_swin):
    "Window attention outputs (N·windows, tokens, C): its first dimension is not the batch"
    model, x = timm_swin
    with pytest.raises(ValueError, match=r"layer 'layers.0.blocks.0.attn' outputs shape \(32, 4, 24\) for a batch of 2: its first dimension is not the examples"):
        A.grad_cam(model, x, TARGETS, 'layers.0.blocks.0.attn')
    assert hook_count(model) == 0

def test_torchvision_swin():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=5).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for layer, side in (('features.5', 4), ('features.7', 2)):
        assert check_gradcam(model, x, TARGETS, layer, lambda t: t.permute(0, 3, 1, 2)).shape == (2, side, side)
    assert check_gradcam(model, x, TARGETS, 'permute', lambda t: t).shape == (2, 2, 2)     # after its own Permute: NCHW

# ViT tokens: the prefix tokens the model declares are dropped, the patches laid on the model's grid

@pytest.fixture(scope='module')
def timm_vit():
    return tiny.timm_vit_reg(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

def _grid(prefix, side):
    return lambda t: t[:, prefix:].transpose(1, 2).reshape(len(t), t.shape[-1], side, side)

@pytest.mark.parametrize('layer', ['blocks.0', 'blocks.1.norm1', 'blocks.0.mlp.fc1'])
def test_timm_vit_register_tokens_are_dropped(timm_vit, layer):
    "21 tokens: 1 class + 4 register tokens + a 4x4 grid (the square-grid guess refused 21 tokens, and would lay 25 tokens of 8 registers on a 5x5 grid)"
    model, x = timm_vit
    assert model.num_prefix_tokens == 5
    assert check_gradcam(model, x, TARGETS, layer, _grid(5, 4)).shape == (2, 4, 4)

def test_torchvision_vit_class_token():
    "torchvision's ViT has one class token and says so (the test the square-grid guess used to pass)"
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(image_size=32).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert check_gradcam(model, x, TARGETS, 'encoder.layers.encoder_layer_11.ln_1', _grid(1, 2)).shape == (2, 2, 2)

@pytest.fixture(scope='module')
def hf_vit():
    return tiny.hf_vit(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

@pytest.mark.parametrize('layer', ['vit.layers.0', 'vit.layers.1.layernorm_before'])
def test_hf_vit_model_output(hf_vit, layer):
    "A ModelOutput's logits are the scores (no wrapper module, no prefixed layer names); the config's one class token is dropped; tensor or keyword input"
    model, x = hf_vit
    logits = lambda o: o.logits
    ref = check_gradcam(model, x, TARGETS, layer, _grid(1, 4), logits)
    assert ref.shape == (2, 4, 4)
    check_gradcam(model, {'pixel_values': x}, TARGETS, layer, _grid(1, 4), logits)
    torch.testing.assert_close(A.grad_cam(model, x, TARGETS, layer, relu=False, interpolate=False, output='logits'), ref)
    torch.testing.assert_close(A.grad_cam(model, x, TARGETS, layer, relu=False, interpolate=False, output=lambda o: o.logits * 2), 2 * ref)

def test_hf_vit_guided_grad_cam_keyword_input(hf_vit):
    "guided_grad_cam on a dict: shaped like its pixel_values, the map resized to them (GELU only: guided backprop is the gradient, with a warning)"
    model, x = hf_vit
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ggc = A.guided_grad_cam(model, {'pixel_values': x}, TARGETS, 'vit.layers.0')
        g = A.saliency(model, x, TARGETS, sign='all')
    assert ggc.shape == x.shape
    torch.testing.assert_close(ggc, g * A.grad_cam(model, x, TARGETS, 'vit.layers.0')[:, None])

# word tokens have no grid

@pytest.fixture(scope='module')
def bert():
    m = tiny.hf_bert()
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids); mask[1, 6:] = 0
    return m, {'input_ids': ids, 'attention_mask': mask}

def test_bert_tokens_are_not_a_map(bert):
    "BERT's 9 word tokens used to be laid out as a 3x3 image; now refused, with the fix"
    model, x = bert
    for f in (A.grad_cam, A.layer_acts_grads, lambda *a: A.cam(*a, method='layer_cam')):
        with pytest.raises(ValueError, match=r"a map needs features on a 2-D grid, but 'bert.encoder.layer.0' outputs a sequence of 9 tokens without a grid: .*layout="):
            f(model, x, torch.tensor([0, 2]), 'bert.encoder.layer.0')
    assert hook_count(model) == 0

def test_bert_declared_grid_and_mask(bert):
    "With layout= declaring a grid the tokens are laid on it; the attention mask reaches the model (the map changes without it)"
    model, x = bert
    y = torch.tensor([0, 2])
    lay = Layout('tokens', 0, (3, 3))
    to_maps = lambda t: t.transpose(1, 2).reshape(2, 32, 3, 3)
    ref = check_gradcam(model, x, y, 'bert.encoder.layer.0', to_maps, lambda o: o.logits, layout=lay)
    unmasked = A.grad_cam(model, {'input_ids': x['input_ids']}, y, 'bert.encoder.layer.0', interpolate=False, relu=False, layout=lay)
    assert torch.equal(unmasked[0], ref[0]) and not torch.allclose(unmasked[1], ref[1])

# what the model returns and takes (the digits model)

class Wrap(nn.Module):
    "The digits model returning `out(scores, x)`, taking `pixel_values` and an optional per-example `scale` as keywords"
    main_input_name = 'pixel_values'
    def __init__(self, m, out=lambda s, x: s): super().__init__(); self.m, self.out = m, out
    def forward(self, pixel_values, scale=None): return self.out(self.m(pixel_values) * (1 if scale is None else scale[:, None]), pixel_values)

CAMS = {'cam': lambda *a, **k: A.cam(*a, method='grad_cam++', **k), 'grad_cam': A.grad_cam, 'guided_grad_cam': A.guided_grad_cam,
        'layer_acts_grads': lambda *a, **k: torch.cat([t.flatten() for t in A.layer_acts_grads(*a, **k)])}

@pytest.mark.parametrize('name', list(CAMS))
def test_outputs_and_keyword_inputs(digits, name):
    "A tuple's first element and a dict's logits are the scores (the CAMs used to demand a wrapper module); output= chooses otherwise; a dict of keyword inputs is passed as keywords, its per-example tensors kept with their examples"
    model, x, y = digits
    f = CAMS[name]
    ref = f(model, x, y, 'conv3')
    for out in (lambda s, t: (s, t), lambda s, t: {'logits': s, 'x': t}):
        torch.testing.assert_close(f(Wrap(model, out), x, y, 'm.conv3'), ref, rtol=0, atol=0)
    for out, sel in [(lambda s, t: {'scores': s}, 'scores'), (lambda s, t: (t, s), 1), (lambda s, t: (t, s), lambda o: o[1])]:
        torch.testing.assert_close(f(Wrap(model, out), x, y, 'm.conv3', output=sel), ref, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"a dict with keys \['scores'\] and no 'logits': choose the scores with output="):
        f(Wrap(model, lambda s, t: {'scores': s}), x, y, 'm.conv3')
    torch.testing.assert_close(f(Wrap(model), {'pixel_values': x}, y, 'm.conv3'), ref, rtol=0, atol=0)
    if name in ('grad_cam', 'guided_grad_cam'):   # a positive scale of the scores scales GradCAM's gradients, hence its map, and guided GradCAM twice
        sc = torch.tensor([2., 0.5, 3.])
        k = sc.view(-1, *[1] * (ref.ndim - 1)) ** (2 if name == 'guided_grad_cam' else 1)
        torch.testing.assert_close(f(Wrap(model), {'scale': sc, 'pixel_values': x}, y, 'm.conv3'), ref * k, rtol=1e-5, atol=1e-5 * (ref * k).abs().max().item())
    with pytest.raises(ValueError, match=r"x\['scale'\] holds NaN"): f(Wrap(model), {'pixel_values': x, 'scale': torch.full((3,), float('nan'))}, y, 'm.conv3')
    assert hook_count(model) == 0

def fails(exc, contains): return pytest.raises(exc, match=re.escape(contains))

MODEL = digits_cnn()

_x, _y = digits_data('test')

X, Y = _x[:4].clone(), _y[:4].clone()

class Pair(nn.Module):                                   # a model that returns (scores, features)
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, t): return self.m(t), t

@pytest.mark.parametrize('call, exc, regex', [
    (lambda: grad_cam(MODEL, X, Y, 'res.relu'), KeyError, "ran 2 times"),
    (lambda: grad_cam(MODEL, X, Y, 'head.2'), ValueError, "a map needs features on a 2-D grid, but 'head.2' outputs shape \\(4, 10\\): pick a layer with a grid"),
    (lambda: grad_cam(MODEL, X, Y, 'conv3', channel=64), IndexError, 'has 64 channels'),
    (lambda: cam(MODEL, X, Y, 'conv3', 'grad_cam+'), KeyError, "closest: 'grad_cam\\+\\+'"),
    (lambda: grad_cam(MODEL, X, 11, 'conv3'), IndexError, 'out of range'),
])
def test_layers_channels_methods_targets(call, exc, regex):
    snap = ModelSnapshot(MODEL)
    with pytest.raises(exc, match=regex): call()
    assert snap.diff(MODEL) == []

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: guided_grad_cam(Pair(MODEL), X, Y, 'm.conv3', output=1), ValueError, "must be scores (N, classes), got shape (4, 1, 32, 32)"),
    (lambda: grad_cam(MODEL, X.double(), Y, 'conv3'), TypeError, 'x is torch.float64'),
    (lambda: grad_cam(MODEL, X[0], Y[0], 'conv3'), ValueError, 'add it with x[None]'),
])
def test_bad_input_and_output(call, exc, contains):
    with fails(exc, contains): call()

class NaNFor1(nn.Module):
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, t): return torch.where(torch.arange(len(t))[:, None] == 1, float('nan'), self.m(t))

class Logits(nn.Module):
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, t): return {'logits': self.m(t)}

class Both(nn.Module):                                   # a layer that outputs a tuple
    def forward(self, t): return t, t

class WithBoth(nn.Module):
    def __init__(self, m): super().__init__(); self.m, self.both = m, Both()
    def forward(self, t): return self.m(self.both(t)[0])

def test_every_cam_refuses_nan_scores_and_empty_batches():
    for f in (grad_cam, guided_grad_cam, lambda *a: cam(*a, method='grad_cam++'), layer_acts_grads):
        with fails(ValueError, "the model's output is NaN or infinite for examples [1]"): f(NaNFor1(MODEL), X, Y, 'm.conv3')
        torch.testing.assert_close(f(Logits(MODEL), X, Y, 'm.conv3'), f(MODEL, X, Y, 'conv3'))
        with fails(ValueError, 'x is empty'): f(MODEL, X[:0], Y[:0], 'conv3')

def test_edge_cases():
    snap = ModelSnapshot(MODEL)
    xg = X.clone().requires_grad_()
    assert grad_cam(MODEL, xg, Y, 'conv3').requires_grad is False and xg.grad is None
    torch.testing.assert_close(grad_cam(MODEL, X.contiguous(memory_format=torch.channels_last), Y, 'conv3'), grad_cam(MODEL, X, Y, 'conv3'), rtol=0, atol=0)
    with fails(TypeError, 'channel must be an int'): grad_cam(MODEL, X, Y, 'conv3', channel=2.5)
    with fails(ValueError, "21 tokens less 1 prefix token(s) do not fill a 4x4 grid: pass the model's prefix and grid"):   # a wrong layout= is named, not reshaped
        grad_cam(tiny.timm_vit_reg(), torch.rand(2, 3, 32, 32), 0, 'blocks.1', layout=Layout('tokens', 1, (4, 4)))
    with fails(ValueError, "reshape must return maps (N, C, h, w) for the 4 examples; for the output of layer 'conv3' it returned shape (4, 64, 64)"):
        grad_cam(MODEL, X, Y, 'conv3', reshape=lambda t: t.flatten(2))
    with fails(TypeError, "layer 'both' outputs a tuple, not a tensor"): grad_cam(WithBoth(MODEL), X, Y, 'both')
    MODEL.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); cam(MODEL, X, Y, 'conv3', 'layer_cam')
    finally: MODEL.eval()
    assert snap.diff(MODEL) == []
