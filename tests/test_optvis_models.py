"""Feature visualisation and DeepDream on the models users bring: timm ViT (register tokens), Swin (NHWC), ConvNeXt,
EfficientNet and Hugging Face's ViTForImageClassification, random init from small configs at 32 px.

Oracles: the channel objective equals the mean of feature k over the patch tokens read by a plain forward hook (prefix
tokens dropped; for Swin, the last dimension of its NHWC maps); class objectives equal the logits of a plain forward
pass; every objective rises over a few steps; fixed-size models are rendered and dreamed at any size without an error
and without changing the size of the result; the model is left exactly as it was."""
import warnings
import pytest, torch
from netlens.hooks import ModelSnapshot, hook_count
from netlens.optvis import ImageParam, render, channel, neuron, class_logit, model_input_size
from netlens.dream import deep_dream, net_dreamer, class_visualization, channel_visualization

import tiny_models as tiny

# name -> (builder, a layer, a channel of it, the layer's layout: 'tokens' (prefix count), 'nhwc' or 'nchw', fixed input size)
BUILD = {
    'timm_vit_reg': (tiny.timm_vit_reg, 'blocks.1', 300, ('tokens', 5), (32, 32)),
    'hf_vit': (tiny.hf_vit, 'vit.layers.1', 30, ('tokens', 1), (32, 32)),
    'timm_swin': (tiny.timm_swin, 'layers.1', 40, ('nhwc',), (32, 32)),
    'timm_convnext_atto': (lambda: tiny.timm_model('convnext_atto'), 'stages.2', 10, ('nchw',), None),
    'timm_efficientnet_b0': (lambda: tiny.timm_model('efficientnet_b0'), 'blocks.4', 10, ('nchw',), None),
}
_CACHE = {}

def model_of(name):
    if name not in _CACHE:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            _CACHE[name] = BUILD[name][0]()
    return _CACHE[name]

def hooked(model, layer_name, x):
    "The output of `layer_name` on `x`, by a plain forward hook (no netlens), and the model's logits"
    got = {}
    h = model.get_submodule(layer_name).register_forward_hook(lambda m, i, o: got.__setitem__('a', o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad(): out = model(x)
    finally: h.remove()
    return got['a'], (out.logits if hasattr(out, 'logits') else out)

def feature_mean(a, k, kind):
    "Feature k of a layer's output averaged over its positions, by hand"
    if kind[0] == 'tokens': return a[:, kind[1]:, k].mean(1)            # (N, T, D): the patch tokens, prefix tokens dropped
    if kind[0] == 'nhwc': return a[..., k].mean((1, 2))                 # (N, H, W, C)
    return a[:, k].mean((1, 2))                                         # (N, C, H, W)

@pytest.fixture(params=list(BUILD))
def case(request):
    name = request.param
    model = model_of(name)
    snap = ModelSnapshot(model)
    yield (name, model) + BUILD[name][1:]
    assert snap.diff(model) == [] and hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())

KW = dict(size=32, show_progress=False, seed=0)

def test_fixed_input_size_is_read_from_the_model(case):
    name, model, lname, k, kind, fixed = case
    assert model_input_size(model) == fixed

def test_channel_objective_is_the_feature_over_the_patch_tokens(case):
    "One step at lr 0 without transforms: the objective's value is the hand-computed mean of feature k over the positions"
    name, model, lname, k, kind, fixed = case
    res = render(model, channel(lname, k), param=ImageParam(32, seed=0), steps=1, lr=0., transforms=None, thresholds=(1,), show_progress=False)
    a, _ = hooked(model, lname, res.images)
    want = feature_mean(a, k, kind).item()
    assert res.history[0] == pytest.approx(want, rel=1e-4, abs=1e-5)
    if kind[0] == 'tokens':                                             # not the mean with the class and register tokens in it
        assert res.history[0] != pytest.approx(a[:, :, k].mean().item(), rel=1e-3, abs=1e-4)

def test_channel_and_class_objectives_rise(case):
    "A few steps with the standard transforms raise the channel (by the hook on the image before and after) and the class logit"
    name, model, lname, k, kind, fixed = case
    start = ImageParam(32, seed=0)().detach()
    for objective, read in [(channel(lname, k), lambda x: feature_mean(hooked(model, lname, x)[0], k, kind).item()),
                            (class_logit(3), lambda x: hooked(model, lname, x)[1][0, 3].item())]:
        res = render(model, objective, steps=5, lr=0.1, thresholds=(5,), **KW)
        assert res.images.shape == (1, 3, 32, 32)
        assert read(res.images) > read(start), (name, objective)

def test_neuron_reads_the_centre_of_the_grid(case):
    name, model, lname, k, kind, fixed = case
    res = render(model, neuron(lname, k), param=ImageParam(32, seed=0), steps=1, lr=0., transforms=None, thresholds=(1,), show_progress=False)
    a, _ = hooked(model, lname, res.images)
    if kind[0] == 'tokens':
        h = w = 4                                                        # 32 px, 8 px patches
        want = a[0, kind[1] + (h // 2) * w + w // 2, k]
    elif kind[0] == 'nhwc': want = a[0, a.shape[1] // 2, a.shape[2] // 2, k]
    else: want = a[0, k, a.shape[2] // 2, a.shape[3] // 2]
    assert res.history[0] == pytest.approx(want.item(), rel=1e-4, abs=1e-5)

def test_neuron_without_a_grid_is_refused():
    vit = model_of('timm_vit_reg')
    with pytest.raises(ValueError, match="neuron needs features on a 2-D grid, but layer 'head' gives shape"):
        render(vit, neuron('head', 1), steps=1, **KW)
    with pytest.raises(ValueError, match="a sequence of 21 tokens without a grid"):
        render(vit, neuron('blocks.1', 1, layout='sequence'), steps=1, **KW)

def test_hf_vit_class_objective_without_a_wrapper():
    "render(hf_vit, class_logit(3)): the ModelOutput's logits, at the model's own size; output= chooses the same explicitly"
    hf = model_of('hf_vit')
    a = render(hf, class_logit(3), steps=2, seed=0, show_progress=False)
    assert a.shape == (1, 3, 32, 32)
    torch.testing.assert_close(render(hf, class_logit(3), steps=2, seed=0, show_progress=False, output='logits'), a, rtol=0, atol=0)
    b = render(hf, class_logit(3), param=ImageParam(32, seed=0), steps=1, lr=0., transforms=None, thresholds=(1,), show_progress=False)
    with torch.no_grad(): assert b.history[0] == pytest.approx(hf(b.images).logits[0, 3].item(), rel=1e-5)

@pytest.mark.parametrize('name', ['timm_vit_reg', 'hf_vit', 'timm_swin'])
def test_fixed_size_models_take_any_render_size(name):
    "Rendering at 48 px for a 32 px model: each transformed image is resized to 32 for the model, the result stays 48"
    model = model_of(name)
    out = render(model, channel(*BUILD[name][1:3]), size=48, steps=2, seed=0, show_progress=False)
    assert out.shape == (1, 3, 48, 48)

@pytest.mark.parametrize('name', ['timm_vit_reg', 'hf_vit'])
def test_deep_dream_on_a_fixed_size_vit_keeps_the_size(name):
    model = model_of(name)
    snap = ModelSnapshot(model)
    lname = BUILD[name][1]
    for size in (32, 48):
        photo = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
        out, norms = deep_dream(model, photo, lname, octaves=3, steps=3, lr=0.05, seed=0, return_norms=True, show_progress=False)
        assert out.shape == photo.shape and 0 <= out.min() and out.max() <= 1 and not torch.equal(out, photo)
        assert norms[-1] > norms[0]
    assert net_dreamer(model, lname, octaves=2, steps=2, seed=0, show_progress=False).shape == (1, 3, 32, 32)   # the model's size by default
    assert snap.diff(model) == [] and hook_count(model) == 0

def test_grids_on_a_vit():
    "channel_visualization counts a ViT's features (384), not its tokens; class_visualization reads a ModelOutput"
    vit, hf = model_of('timm_vit_reg'), model_of('hf_vit')
    grid = channel_visualization(vit, 'blocks.1', ks=[300, 383], steps=2, seed=0, show_progress=False)
    assert grid.shape == (2, 3, 32, 32)
    with pytest.raises(IndexError, match="layer 'blocks.1' has 384 channels"): channel_visualization(vit, 'blocks.1', ks=[384], steps=1, show_progress=False)
    assert class_visualization(hf, classes=[1, 4], steps=2, seed=0, show_progress=False).shape == (2, 3, 32, 32)
