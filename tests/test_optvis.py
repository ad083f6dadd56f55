"""netlens.optvis (nbs/07_optvis.ipynb): feature visualisation. Oracles: Lucent's image parameterisation (the same spectrum
or pixels give the same image); objectives equal to what the layer produced, read by a plain forward hook or FlatModel (the
value before an in-place ReLU; on timm ViT with register tokens, Swin (NHWC), ConvNeXt, EfficientNet and Hugging Face's ViT:
the mean of feature k over the patch tokens, class objectives equal to the logits of a plain forward); every objective rises;
fixed-size models rendered at any size; the model left exactly as it was, also after an error midway. Bad objectives,
counts, sizes and transforms are refused with a message that says what to fix."""
import warnings
import pytest, torch, torch.nn as nn, torchvision
import tiny_models as tiny
from conftest import tv_case, raises
from netlens.flat import FlatModel
from netlens.hooks import ModelSnapshot, hook_count
from netlens.core import normalize
from netlens.data import sample_images, digits_cnn
from netlens.optvis import (ImageParam, Objective, render, channel, neuron, class_logit, class_prob, diversity, tv, jitter, random_scale,
                            random_rotate, model_input_size, Run)

@pytest.fixture(scope='module')
def resnet(): return tv_case('resnet18')[1]

@pytest.mark.parametrize('decorrelate', [True, False])
def test_fft_param_equals_lucent(decorrelate):
    "Same spectrum in, same image out: the 1/f scale, the inverse FFT, lucid's magic 4, the colour matrix and the sigmoid"
    from lucent.optvis import param as lparam
    torch.manual_seed(0)
    (spectrum,), image_f = lparam.image(48, h=32, batch=2, decorrelate=decorrelate)
    ours = ImageParam((32, 48), 3, 2, decorrelate=decorrelate)
    with torch.no_grad(): ours.weight.copy_(spectrum)
    torch.testing.assert_close(ours(), image_f(), rtol=1e-5, atol=1e-6)

def test_pixel_param_equals_lucent():
    from lucent.optvis import param as lparam
    torch.manual_seed(0)
    (pixels,), image_f = lparam.image(16, batch=1, fft=False, decorrelate=True)
    ours = ImageParam(16, 3, 1, fft=False)
    with torch.no_grad(): ours.weight.copy_(pixels)
    torch.testing.assert_close(ours(), image_f(), rtol=1e-5, atol=1e-6)

def test_render_on_torchvision_leaves_model_alone(resnet):
    snap = ModelSnapshot(resnet)
    res = render(resnet, channel('layer2.0', 5) - 0.1 * tv(), size=64, steps=12, preprocess='imagenet', seed=0, thresholds=(12,), show_progress=False)
    assert res.history[-1] > res.history[0]
    assert res.images.shape == (1, 3, 64, 64) and 0 <= res.images.min() and res.images.max() <= 1
    assert snap.diff(resnet) == [] and hook_count(resnet) == 0
    assert all(p.grad is None for p in resnet.parameters())

def test_objective_reads_the_value_before_an_inplace_relu(resnet):
    "bn1 is followed by ReLU(inplace=True): the objective sees BatchNorm's output, negative values included"
    p = ImageParam(48, seed=0)
    res = render(resnet, channel('bn1', 3), param=p, steps=1, lr=0., transforms=None, preprocess='imagenet', thresholds=(1,), show_progress=False)
    with torch.no_grad(), FlatModel(resnet).record('bn1') as rec: resnet(normalize(res.images))
    assert (rec['bn1'][:, 3] < 0).any()
    assert res.history[0] == pytest.approx(rec['bn1'][:, 3].mean().item(), rel=1e-5)

def test_render_is_seeded_and_keeps_the_models_mode(resnet):
    resnet.train()
    try:
        snap = ModelSnapshot(resnet)
        a = render(resnet, neuron('layer1', 2), size=32, steps=3, seed=1, show_progress=False)
        b = render(resnet, neuron('layer1', 2), size=32, steps=3, seed=1, show_progress=False)
        assert torch.equal(a, b) and snap.diff(resnet) == []
    finally: resnet.eval()

def test_model_restored_after_an_error_midway(resnet):
    snap = ModelSnapshot(resnet)
    class Boom(Exception): pass
    calls = []
    def fail(run):
        calls.append(1)
        if len(calls) == 3: raise Boom()
        return run['layer1'].mean()
    from netlens.optvis import Objective
    with pytest.raises(Boom): render(resnet, Objective(fail, 'fail', ['layer1']), size=32, steps=10, show_progress=False)
    assert snap.diff(resnet) == [] and hook_count(resnet) == 0 and all(p.requires_grad for p in resnet.parameters())

def test_float64_model():
    torch.manual_seed(0)
    model = digits_cnn().double()
    img = render(model, channel('conv2', 1), size=32, channels=1, steps=4, transforms=[jitter(2)], show_progress=False)
    assert img.dtype == torch.float64

def test_diversity_spreads_a_batch(resnet):
    "Adding diversity makes the images of a batch less alike at that layer"
    def spread(images):
        with torch.no_grad(), FlatModel(resnet).record('layer2') as rec: resnet(normalize(images))
        g = rec['layer2'].flatten(2); g = torch.nn.functional.normalize((g @ g.transpose(1, 2)).flatten(1), dim=1)
        return (g @ g.T)[0, 1].item()
    kw = dict(size=48, batch=2, steps=24, preprocess='imagenet', seed=0, show_progress=False)
    plain = render(resnet, channel('layer2', 7), **kw)
    diverse = render(resnet, channel('layer2', 7) + 20 * diversity('layer2'), **kw)
    assert spread(diverse) < spread(plain)

class FakeRun:
    def __init__(self, acts, image=None, output=None): self.acts, self.image, self.output = acts, image, output
    def __getitem__(self, k): return self.acts[k]

@pytest.fixture(scope='module')
def model(digits_kept): return digits_kept

def test_objectives_on_a_fake_pass():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    run = FakeRun({'l': a}, image=torch.zeros(2, 3, 4, 4), output=torch.tensor([[1., 5.], [2., 3.]]))
    with raises(IndexError, '2 outputs'): class_logit(2)(run)
    with raises(ValueError, 'batch >= 2'): diversity('l')(FakeRun({'l': a[:1]}))

def test_render_refuses_before_any_step(model):
    with raises(KeyError, 'closest'): render(model, channel('conv9', 0), channels=1, steps=2, show_progress=False)
    with raises(IndexError, '10 outputs'): render(model, class_logit(10), size=32, channels=1, steps=2, show_progress=False)
    with raises(ValueError, 'channels=1'): render(model, class_logit(1), size=32, channels=3, steps=2, show_progress=False)
    with raises(ValueError, 'steps'): render(model, class_logit(1), size=32, channels=1, steps=0, show_progress=False)
    with raises(ValueError, 'batch must be an integer >= 1, got 0'): render(model, channel('conv2', 0), size=32, batch=0, show_progress=False)
    with raises(ValueError, 'objective nan is nan at step 1'):
        render(model, Objective(lambda r: r.image.sum() * float('nan'), 'nan'), size=32, steps=2, show_progress=False)

def test_counts_sizes_and_transforms(model):
    "Counts, sizes and transforms refused before torch sees them"
    with raises(ValueError, 'size must be an integer >= 1, got 0'): render(model, channel('conv2', 0), size=0, show_progress=False)
    with raises(ValueError, 'size must be an integer >= 1, got -3'): ImageParam((8, -3))
    with raises(ValueError, 'channels must be an integer >= 1'): render(model, channel('conv2', 0), size=16, channels=-1, show_progress=False)
    with raises(ValueError, 'steps must be an integer >= 1, got 2.0'): render(model, channel('conv2', 0), size=16, steps=2.0, show_progress=False)
    with raises(ValueError, 'jitter(20) crops 20 pixels'): render(model, channel('conv2', 0), size=16, transforms=[jitter(20)], show_progress=False)
    with raises(ValueError, 'd must be an integer >= 0'): jitter(-1)
    with raises(ValueError, 'scales is empty'): random_scale([])
    with raises(ValueError, 'angles is empty'): random_rotate([])

def test_objectives_checked_at_every_step(model):
    with raises(IndexError, 'its maps are 16x16'): render(model, neuron('conv2', 1, x=50), size=32, transforms=None, steps=1, show_progress=False)
    with raises(TypeError, 'must give one number'): render(model, Objective(lambda r: r.image.flatten(), 'vec'), size=16, steps=1, show_progress=False)
    with raises(TypeError, "is a str, not a tensor: choose the scores with output="): class_logit(0)(Run(None, None, 'cat'))
    with raises(ValueError, "output=lambda o: o[:, -1]"): class_logit(0)(Run(None, None, torch.zeros(1, 7, 10)))  # a sequence's scores
    with raises(ValueError, '(N, classes)'): class_prob(0)(Run(None, None, torch.zeros(1, 10, 2)))
    lstm = nn.Sequential(nn.Flatten(2), nn.LSTM(256, 4))   # a layer whose output is a tuple
    with raises(TypeError, "layer '1' outputs a tuple, not a tensor"):
        render(lstm, channel('1', 0), size=16, channels=1, transforms=None, steps=1, show_progress=False)

def test_from_image_refuses_what_as_images_refuses():
    u8 = (torch.rand(1, 3, 8, 8) * 255).round().byte()
    with raises(ValueError, 'divide by 255'): ImageParam.from_image(u8.float())
    with raises(ValueError, 'empty'): ImageParam.from_image(torch.rand(0, 3, 8, 8))

def test_wrong_size_gets_a_note():
    "A model that cannot take the rendered size: torch's error gets a note saying what the loop fed it"
    big_kernel = nn.Sequential(nn.Conv2d(1, 2, 5))
    with pytest.raises(RuntimeError) as e: render(big_kernel, channel('0', 0), size=3, transforms=None, steps=1, show_progress=False)
    assert 'size=' in ''.join(getattr(e.value, '__notes__', ['size='])), e.value

def test_refused_call_keeps_rng(model):
    "A refused call leaves the caller's RNG where it was (seed=None draws the start from it)"
    rng = torch.get_rng_state()
    with raises(ValueError, 'steps'): render(model, channel('conv2', 0), size=16, steps=0)
    with raises(KeyError, 'closest'): render(model, channel('conv9', 0), size=16)
    torch.testing.assert_close(torch.get_rng_state(), rng, rtol=0, atol=0)

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
