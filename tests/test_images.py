"""Bad input to every public function of optvis, dream, style and widgets: converted where unambiguous (8-bit, PIL), else
refused with an error naming the argument; never a clamped or NaN result; outputs detached and contiguous; the caller's
tensors and the model (parameters, buffers, modes, hooks) exactly as before, also when the call raises"""
import importlib, pytest, torch, torch.nn as nn
import PIL.Image
from netlens.data import digits_cnn
from netlens.hooks import ModelSnapshot, hook_count
from netlens.core import tensor_to_pil
from netlens.optvis import (ImageParam, Objective, render, channel, neuron, class_logit, class_prob, jitter, optimize, blank_input,
                            decorrelate_colors, total_variation, resize_to)
from netlens.dream import deep_dream, net_dreamer, invert_features, class_visualization, channel_visualization
from netlens.style import style_transfer, gram, content_loss, style_loss
from netlens.widgets import AttributionExplorer, ChannelExplorer

MODULES = ['netlens.optvis', 'netlens.dream', 'netlens.style', 'netlens.widgets']
# every public name of the four modules, by how this file probes it (a new function fails test_every_public_name_is_probed)
IMAGE_TAKING = {'deep_dream', 'invert_features', 'style_transfer', 'ImageParam', 'AttributionExplorer', 'AttentionExplorer'}
COUNTED = {'render', 'optimize', 'net_dreamer', 'class_visualization', 'channel_visualization', 'ChannelExplorer', 'jitter',
           'random_scale', 'random_rotate', 'blank_input', 'resize_to'}
TENSOR_HELPERS = {'decorrelate_colors', 'correlate_colors', 'total_variation', 'gram', 'style_loss', 'content_loss', 'feature_distance',
                  # the explorers' drawing helpers (tested in nbs/13_widgets.ipynb and the browser test)
                  'colorbar_html', 'grid_image', 'matrix_image', 'overlay_map', 'patch_overlay', 'to_png',
                  'display_scale', 'explorer_layers'}
OBJECTIVES = {'Objective', 'Run', 'objective_value', 'channel', 'neuron', 'layer_activation', 'class_logit', 'class_prob', 'direction', 'diversity', 'tv', 'l1', 'l2'}
NO_INPUT = {'COLOR_CORRELATION', 'Rendered', 'Dreamed', 'Styled', 'pad', 'compose', 'standard_transforms', 'frozen', 'generator',
            'check_layers', 'keep_size', 'PRESETS', 'CHANNEL_METHODS', 'vgg_layer_names', 'avg_pooling', 'default_style_model', 'LAYER_METHODS', 'fig_to_png'}

def test_every_public_name_is_probed():
    names = {n for m in MODULES for n in importlib.import_module(m).__all__}
    assert names == IMAGE_TAKING | COUNTED | TENSOR_HELPERS | OBJECTIVES | NO_INPUT, names ^ (IMAGE_TAKING | COUNTED | TENSOR_HELPERS | OBJECTIVES | NO_INPUT)

torch.manual_seed(0)
DIGITS = digits_cnn()
NET = nn.Sequential(*[m for k in range(3) for m in (nn.Conv2d(3 if k == 0 else 8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))][:-1]).eval()
STYLE = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
SKW = dict(content_layers=['relu2_1'], style_layers=['relu1_1', 'relu2_1'], steps=2, show_progress=False)
KW = dict(steps=2, seed=0, show_progress=False)

# entry point -> (model, call(image), argument name, an image it takes (N, C, 16, 16) in [0, 1], whether it returns images)
G = torch.Generator().manual_seed(1)
ENTRIES = {
    'deep_dream': (DIGITS, lambda x: deep_dream(DIGITS, x, 'res', octaves=2, **KW), 'x', torch.rand(2, 1, 16, 16, generator=G), True),
    'invert_features': (DIGITS, lambda x: invert_features(DIGITS, x, 'conv2', **KW), 'x', torch.rand(2, 1, 16, 16, generator=G), True),
    'style_transfer content': (NET, lambda x: style_transfer(NET, x, STYLE, **SKW), 'x', torch.rand(1, 3, 16, 16, generator=G), True),
    'style_transfer style': (NET, lambda x: style_transfer(NET, STYLE, x, **SKW), 'style', torch.rand(1, 3, 16, 16, generator=G), True),
    'style_transfer init': (NET, lambda x: style_transfer(NET, STYLE, STYLE, init=x, **SKW), 'init', torch.rand(1, 3, 16, 16, generator=G), True),
    'ImageParam.from_image': (None, lambda x: ImageParam.from_image(x)().detach(), 'image', torch.rand(2, 3, 16, 16, generator=G), True),
    'AttributionExplorer': (DIGITS, lambda x: AttributionExplorer(DIGITS, x).attr, 'x', torch.rand(1, 1, 16, 16, generator=G), False),
}

def guarded(model, f):
    "Run `f()`; whether it returns or raises, the model must be exactly as before and hold no hooks"
    if model is None: return f()
    snap = ModelSnapshot(model)
    try: return f()
    finally: assert snap.diff(model) == [] and hook_count(model) == 0

def valid_output(out, image=False):
    "A detached, contiguous tensor of finite values; an image in [0, 1] if `image`"
    assert isinstance(out, torch.Tensor) and not out.requires_grad and out.grad_fn is None and out.is_contiguous()
    assert torch.isfinite(out).all()
    if image: assert 0 <= out.min() and out.max() <= 1
    return out

@pytest.fixture(params=list(ENTRIES))
def entry(request): return ENTRIES[request.param]

def test_a_good_image(entry):
    model, call, name, x, image = entry
    out = valid_output(guarded(model, lambda: call(x)), image)
    assert out.shape[-2:] == x.shape[-2:]

def poke(x, v):
    "`x` with one pixel set to `v`"
    x = x.clone(); x[..., 3, 3] = v
    return x

@pytest.mark.parametrize('make, err, words', [
    (lambda x: x * 255, ValueError, 'divide by 255'),                        # 8-bit values cast to float: not clamped
    (lambda x: (x - 0.45) / 0.226, ValueError, 'denormalize'),               # ImageNet-normalised: not clamped
    (lambda x: poke(x, float('nan')), ValueError, 'NaN'),
    (lambda x: poke(x, float('inf')), ValueError, 'infinite'),
    (lambda x: poke(x, 1.5), ValueError, 'in [0, 1]'),
    (lambda x: x[:0], ValueError, 'empty'),
    (lambda x: (x * 255).long(), TypeError, 'floating point'),
    (lambda x: x[0, 0], ValueError, 'dimensions'),
    (lambda x: x[None], ValueError, 'dimensions'),
    (lambda x: x.numpy().tolist(), TypeError, 'torch.Tensor'),
], ids=['x255', 'normalised', 'nan', 'inf', 'above1', 'empty', 'int64', 'rank2', 'rank5', 'list'])
def test_a_bad_image_is_refused_by_name(entry, make, err, words):
    model, call, name, x, image = entry
    with pytest.raises(err) as e: guarded(model, lambda: call(make(x)))
    assert words in str(e.value) and str(e.value).startswith(name), str(e.value)

def test_wrong_channel_count_is_refused_by_name(entry):
    model, call, name, x, image = entry
    if model is None: return                                                 # ImageParam takes any channel count
    with pytest.raises(ValueError) as e: guarded(model, lambda: call(x[:, :1].expand(-1, 2, -1, -1)))
    assert str(e.value).startswith(f'{name} has 2 channels, the model takes'), str(e.value)

def test_8bit_and_pil_are_the_same_image(entry):
    model, call, name, x, image = entry
    u8 = (x * 255).round().byte()
    ref = guarded(model, lambda: call(u8.float() / 255))
    torch.testing.assert_close(guarded(model, lambda: call(u8)), ref)
    if len(x) == 1:
        pil = tensor_to_pil(u8[0].float() / 255)
        assert isinstance(pil, PIL.Image.Image)
        torch.testing.assert_close(guarded(model, lambda: call(pil)).reshape(ref.shape), ref, atol=1e-6, rtol=0)

@pytest.mark.parametrize('dtype', [torch.float16, torch.float64])
def test_other_float_dtypes(entry, dtype):
    """Another float dtype is the same image: it is converted to the model's dtype (float32) at the door, so the result equals,
    exactly, the result on the same values given in float32 (for float64: on `x` itself, which float64 holds exactly)"""
    model, call, name, x, image = entry
    out = valid_output(guarded(model, lambda: call(x.to(dtype))), image)
    torch.testing.assert_close(out, guarded(model, lambda: call(x.to(dtype).float())), rtol=0, atol=0)

def test_layouts_give_the_same_result(entry):
    model, call, name, x, image = entry
    ref = guarded(model, lambda: call(x))
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(valid_output(guarded(model, lambda: call(cl))), ref)
    t = x.transpose(-1, -2).contiguous().transpose(-1, -2)                    # the same values, non-contiguous
    assert not t.is_contiguous()
    torch.testing.assert_close(valid_output(guarded(model, lambda: call(t))), ref)

def test_input_requiring_grad_is_left_alone(entry):
    model, call, name, x, image = entry
    xg = x.clone().requires_grad_()
    out = valid_output(guarded(model, lambda: call(xg)))
    assert xg.grad is None and torch.equal(xg.detach(), x)
    torch.testing.assert_close(out, guarded(model, lambda: call(x)))

# the batch that holds a batch of one's example as its first row, where the result's rows do not depend on the rest of the
# batch: ImageParam.from_image treats each image on its own (the example inside `x`, exactly); deep_dream couples a batch only
# through its step, gradient / mean |gradient| over the whole batch, which two copies of the image leave unchanged but for the
# order of the float32 sum: at most one rounding (float32 eps) of the [0, 1] image per step, 2 octaves x 2 steps here.
# invert_features is coupled by Adam's eps and by its objective's ratio over the batch, style_transfer takes one image, the
# explorer shows one: for those the unbatched image is the oracle.
IN_A_BATCH = {'ImageParam.from_image': (lambda x: x, 0.),
              'deep_dream': (lambda x: x[:1].repeat(2, 1, 1, 1), 4 * torch.finfo(torch.float32).eps)}

def test_batch_of_one(entry, request):
    "A batch of one is the image without its batch dimension, exactly; and, where examples are independent, its row in a larger batch"
    model, call, name, x, image = entry
    one = valid_output(guarded(model, lambda: call(x[:1])), image)
    torch.testing.assert_close(guarded(model, lambda: call(x[0])).reshape(one.shape), one, rtol=0, atol=0)   # (C, H, W) may come back as given
    key = request.node.callspec.params['entry']
    if key in IN_A_BATCH:
        batch, atol = IN_A_BATCH[key]
        torch.testing.assert_close(guarded(model, lambda: call(batch(x)))[:1], one, rtol=0, atol=atol)

def test_model_in_train_mode_is_restored(entry):
    model, call, name, x, image = entry
    if model is None: return                                                 # no model
    ref = guarded(model, lambda: call(x))
    model.train()
    try:
        if hasattr(model, 'res'): model.res.bn1.eval()                       # mixed modes, each restored
        torch.testing.assert_close(valid_output(guarded(model, lambda: call(x)), image), ref)   # run in eval mode, every flag restored (the mode policy, 00a)
    finally: model.eval()

# counts, sizes, indices and model outputs of the functions without an image argument
TwoHeads = type('TwoHeads', (nn.Module,), {'__init__': lambda s: (nn.Module.__init__(s), setattr(s, 'm', DIGITS))[0],
                                           'forward': lambda s, x: (s.m(x), x)})
DictOut = type('DictOut', (nn.Module,), {'__init__': lambda s: (nn.Module.__init__(s), setattr(s, 'm', DIGITS))[0],
                                         'forward': lambda s, x: {'logits': s.m(x)}})
NoLogits = type('NoLogits', (nn.Module,), {'__init__': lambda s: (nn.Module.__init__(s), setattr(s, 'm', DIGITS))[0],
                                           'forward': lambda s, x: {'scores': s.m(x)}})
C = channel('conv2', 1)
REFUSALS = [
    ('render steps=0', lambda: render(DIGITS, C, size=16, steps=0), ValueError, 'steps must be an integer >= 1'),
    ('render steps=2.5', lambda: render(DIGITS, C, size=16, steps=2.5), ValueError, 'steps must be an integer >= 1'),
    ('render batch=0', lambda: render(DIGITS, C, size=16, batch=0), ValueError, 'batch must be an integer >= 1'),
    ('render size=0', lambda: render(DIGITS, C, size=0), ValueError, 'size must be an integer >= 1'),
    ('render size=(16,)', lambda: render(DIGITS, C, size=(16,)), ValueError, 'size is an int or a pair'),
    ('render channels=-1', lambda: render(DIGITS, C, size=16, channels=-1), ValueError, 'channels must be an integer >= 1'),
    ('render unknown layer', lambda: render(DIGITS, channel('conv9', 0), size=16, **KW), KeyError, "closest: 'conv3'"),
    ('render channel 32', lambda: render(DIGITS, channel('conv2', 32), size=16, **KW), IndexError, "channel 32 is out of range: layer 'conv2' has 32 channels"),
    ('render class 10', lambda: render(DIGITS, class_logit(10), size=16, **KW), IndexError, 'class 10 is out of range: the model has 10 outputs'),
    ('render neuron x=99', lambda: render(DIGITS, neuron('conv2', 1, x=99), size=16, **KW), IndexError, 'x in 0..'),
    ('render jitter 16 on 16px', lambda: render(DIGITS, C, size=16, transforms=[jitter(16)], **KW), ValueError, 'jitter(16) crops 16 pixels'),
    ('render dict without logits', lambda: render(NoLogits(), class_prob(1), size=16, **KW), TypeError, "a dict with keys ['scores'] and no 'logits': choose the scores with output="),
    ('render output key missing', lambda: render(DictOut(), class_logit(1), size=16, output='logit', **KW), KeyError, "output='logit' selects nothing"),
    ('render output not scores', lambda: render(TwoHeads(), class_logit(1), size=16, output=1, **KW), ValueError, 'must be scores (N, classes), got shape (1, 1, 16, 16)'),
    ('render output bad kind', lambda: render(DictOut(), class_logit(1), size=16, output=1.5, **KW), TypeError, 'output must be a key, an index or a function'),
    ('render vector objective', lambda: render(DIGITS, Objective(lambda r: r.image.flatten(), 'v'), size=16, **KW), TypeError, 'one number'),
    ('render NaN objective', lambda: render(DIGITS, Objective(lambda r: r.image.sum() / 0 * 0, 'z'), size=16, **KW), ValueError, 'objective z is nan'),
    ('optimize steps=0', lambda: optimize(DIGITS, C, ImageParam(16, 1), steps=0), ValueError, 'steps must be an integer >= 1'),
    ('net_dreamer batch=0', lambda: net_dreamer(DIGITS, 'res', size=16, batch=0), ValueError, 'batch must be an integer >= 1'),
    ('net_dreamer size=0', lambda: net_dreamer(DIGITS, 'res', size=0), ValueError, 'size must be an integer >= 1'),
    ('deep_dream octaves=0', lambda: deep_dream(DIGITS, torch.rand(1, 1, 16, 16), 'res', octaves=0), ValueError, 'octaves must be an integer >= 1'),
    ('deep_dream unknown layer', lambda: deep_dream(DIGITS, torch.rand(1, 1, 16, 16), 'rse'), KeyError, "closest: 'res'"),
    ('class_visualization []', lambda: class_visualization(DIGITS, classes=[], size=16, **KW), ValueError, 'classes is empty'),
    ('class_visualization [10]', lambda: class_visualization(DIGITS, classes=[10], size=16, **KW), IndexError, 'classes 10 is out of range: the model has 10 classes'),
    ('class_visualization [-1]', lambda: class_visualization(DIGITS, classes=[-1], size=16, **KW), IndexError, 'classes -1 is out of range'),
    ('class_visualization batch_size=0', lambda: class_visualization(DIGITS, size=16, batch_size=0, **KW), ValueError, 'batch_size must be'),
    ('class_visualization dict without logits', lambda: class_visualization(NoLogits(), size=16, **KW), TypeError, "no 'logits': choose the scores with output="),
    ('channel_visualization []', lambda: channel_visualization(DIGITS, 'conv2', ks=[], size=16, **KW), ValueError, 'ks is empty'),
    ('channel_visualization [32]', lambda: channel_visualization(DIGITS, 'conv2', ks=[32], size=16, **KW), IndexError, "layer 'conv2' has 32 channels"),
    ('channel_visualization batch_size=0', lambda: channel_visualization(DIGITS, 'conv2', size=16, batch_size=0, **KW), ValueError, 'batch_size must be'),
    ('channel_visualization unknown layer', lambda: channel_visualization(DIGITS, 'conv9', size=16, **KW), KeyError, "closest: 'conv3'"),
    ('style_transfer steps=0', lambda: style_transfer(NET, STYLE, STYLE, steps=0), ValueError, 'steps must be an integer >= 1'),
    ('style_transfer unknown layer', lambda: style_transfer(NET, STYLE, STYLE, style_layers=['relu9_1']), KeyError, 'VGG names'),
    ('style_transfer two styles', lambda: style_transfer(NET, STYLE, STYLE.expand(2, 3, 16, 16), **SKW), ValueError, 'style must be one image'),
    ('explorer target 10', lambda: AttributionExplorer(DIGITS, torch.rand(1, 1, 16, 16), target=10), IndexError, 'target 10 is out of range'),
    ('explorer target -1', lambda: AttributionExplorer(DIGITS, torch.rand(1, 1, 16, 16), target=-1), IndexError, 'target -1 is out of range'),
    ('explorer dict without logits', lambda: AttributionExplorer(NoLogits(), torch.rand(2, 1, 16, 16)), TypeError, "no 'logits': choose the scores with output="),
    ('explorer unknown layer', lambda: AttributionExplorer(DIGITS, torch.rand(1, 1, 16, 16), layers=['conv9']), KeyError, "closest: 'conv3'"),
    ('explorer n_samples=0', lambda: AttributionExplorer(DIGITS, torch.rand(1, 1, 16, 16), n_samples=0), ValueError, 'n_samples must be'),
    ('channel explorer steps=0', lambda: ChannelExplorer(DIGITS, size=16, steps=0), ValueError, 'steps must be an integer >= 1'),
    ('channel explorer size=0', lambda: ChannelExplorer(DIGITS, size=0), ValueError, 'size must be an integer >= 1'),
    ('blank_input size=-2', lambda: blank_input(DIGITS, -2), ValueError, 'size must be an integer >= 1'),
    ('resize_to size=0', lambda: resize_to(0), ValueError, 'size must be an integer >= 1'),
    ('decorrelate_colors rank 3', lambda: decorrelate_colors(torch.rand(3, 4, 4)), ValueError, '(N, 3, H, W)'),
    ('total_variation 1 pixel', lambda: total_variation(torch.rand(1, 1, 1, 1)), ValueError, 'H, W >= 2'),
    ('gram rank 2', lambda: gram(torch.rand(3, 4)), ValueError, 'features must be (N, C, H, W)'),
    ('content_loss shapes', lambda: content_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 1, 4)), ValueError, 'the features are (1, 2, 4, 4)'),
    ('style_loss shapes', lambda: style_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 3)), ValueError, 'take both from the same layer'),
]

@pytest.mark.parametrize('name, f, err, words', REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_with_a_clear_error(name, f, err, words):
    model = NET if name.startswith('style_transfer') else DIGITS
    with pytest.raises(err) as e: guarded(model, f)
    assert words in str(e.value), str(e.value)

@pytest.mark.parametrize('f', [
    lambda: render(DIGITS, C, size=16, batch=1, **KW),
    lambda: net_dreamer(DIGITS, 'res', size=16, batch=1, octaves=1, **KW),
    lambda: class_visualization(DIGITS, classes=[4], size=16, **KW),
    lambda: channel_visualization(DIGITS, 'conv2', ks=[4], size=16, **KW),
], ids=['render', 'net_dreamer', 'class_visualization', 'channel_visualization'])
def test_a_batch_of_one_and_train_mode(f):
    "A batch of one from a model in train mode: exactly the image of the model in eval mode (the optimisers run it frozen, in eval mode)"
    ref = valid_output(guarded(DIGITS, f))
    DIGITS.train()
    try:
        out = valid_output(guarded(DIGITS, f))
        assert out.shape[0] == 1 and 0 <= out.min() and out.max() <= 1
    finally: DIGITS.eval()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)

@pytest.mark.parametrize('wrapper', [TwoHeads, DictOut], ids=['tuple', 'dict'])
def test_tuple_and_dict_outputs_give_the_scores(wrapper):
    "Class objectives read scores by model_output (a tuple's first element, a dict's logits): the same images as on the bare model"
    ref = guarded(DIGITS, lambda: render(DIGITS, class_logit(1) + class_prob(2), size=16, **KW))
    torch.testing.assert_close(guarded(DIGITS, lambda: render(wrapper(), class_logit(1) + class_prob(2), size=16, **KW)), ref, rtol=0, atol=0)
    kw = dict(classes=[3], size=16, **KW)
    torch.testing.assert_close(guarded(DIGITS, lambda: class_visualization(wrapper(), **kw)), class_visualization(DIGITS, **kw), rtol=0, atol=0)
