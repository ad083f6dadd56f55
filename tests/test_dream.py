"""netlens.dream (nbs/08_dream.ipynb): DeepDream, NetDreamer, feature inversion, class and channel grids. Oracles: the
layer's mean square read by FlatModel rises every octave; an inverted image's features approach the target's relative to
noise; net_dreamer equals deep_dream called on its seeded grey-noise start; on fixed-size ViTs (timm with register tokens,
Hugging Face) the size of the result is kept and a ViT's features (not its tokens) are counted. Bad input is refused with a
message that says what to fix, and a refused call keeps the caller's RNG."""
import pytest, torch
from netlens.data import sample_images
from netlens.dream import deep_dream, net_dreamer, invert_features, class_visualization, channel_visualization
from conftest import raises, tv_case
from netlens.core import normalize
from netlens.flat import FlatModel
from netlens.hooks import ModelSnapshot, hook_count
from netlens.optvis import ImageParam
from test_optvis import BUILD, model_of         # the small timm / Hugging Face models the optvis tests render

@pytest.fixture(scope='module')
def model(digits_kept): return digits_kept

@pytest.fixture(scope='module')
def photo(): return sample_images(['astronaut'], size=96, imagenet_norm=False).mean(1, keepdim=True)

@pytest.fixture(scope='module')
def small(photo): return photo[..., ::3, ::3]          # 32x32

def test_bad_calls(model, photo):
    with raises(ValueError, 'the model takes 1'): deep_dream(model, torch.rand(3, 32, 32), 'res')
    with raises(KeyError, 'closest'): deep_dream(model, photo, 'rse')
    with raises(ValueError, 'steps'): deep_dream(model, photo, 'res', steps=0)
    with raises(KeyError, 'closest'): invert_features(model, photo, 'conv9')
    with raises(IndexError, '32 channels'): channel_visualization(model, 'conv2', ks=[40], size=32, steps=1, show_progress=False)
    with raises(ValueError, 'divide by 255'): deep_dream(model, photo * 255, 'res')
    with raises(ValueError, 'denormalize'): invert_features(model, (photo - 0.45) / 0.22, 'conv2')
    with raises(ValueError, 'classes is empty'): class_visualization(model, classes=[], size=32)

def test_bad_images_counts_and_indices(model, small):
    "Refused with the argument's name"
    bad = small.clone(); bad[0, 0, 3, 3] = float('nan')
    with raises(ValueError, 'NaN'): deep_dream(model, bad, 'res')
    with raises(ValueError, 'x is empty'): deep_dream(model, small[:0], 'res')
    with raises(ValueError, 'x is empty'): invert_features(model, small[:0], 'conv2')
    with raises(TypeError, 'floating point'): deep_dream(model, small.long(), 'res')
    with raises(ValueError, '4 dimensions'): deep_dream(model, small[0, 0], 'res')
    with raises(ValueError, 'jitter must be an integer >= 0'): deep_dream(model, small, 'res', jitter=-1)
    with raises(ValueError, 'octave_scale must be a number > 1'): deep_dream(model, small, 'res', octave_scale=float('nan'))
    with raises(ValueError, 'lr must be a finite number'): deep_dream(model, small, 'res', lr=float('inf'))
    with raises(ValueError, 'batch must be an integer >= 1, got 0'): net_dreamer(model, 'res', size=16, batch=0)
    with raises(ValueError, 'size must be an integer >= 1, got 0'): net_dreamer(model, 'res', size=0)

def test_refused_call_keeps_rng(model, small):
    "A refused call leaves the caller's RNG where it was"
    rng = torch.get_rng_state()
    with raises(ValueError, 'steps'): net_dreamer(model, 'res', size=16, steps=0)
    with raises(ValueError, 'steps'): invert_features(model, small, 'conv2', steps=0)
    torch.testing.assert_close(torch.get_rng_state(), rng, rtol=0, atol=0)

def test_grids_refuse_bad_indices(model):
    with raises(IndexError, 'classes 12 is out of range: the model has 10 classes (0 to 9)'): class_visualization(model, classes=[12], size=16)
    with raises(ValueError, 'batch_size must be an integer >= 1'): class_visualization(model, classes=[1], size=16, batch_size=0)
    with raises(ValueError, 'ks is empty'): channel_visualization(model, 'conv2', ks=[], size=16)
    with raises(ValueError, 'batch_size must be an integer >= 1'): channel_visualization(model, 'conv2', ks=[1], size=16, batch_size=0)

@pytest.fixture(scope='module')
def resnet(): return tv_case('resnet18')[1]

def test_deep_dream_on_a_photo_raises_the_layer_every_octave(resnet):
    photo = sample_images(['chelsea'], size=96, imagenet_norm=False)
    snap = ModelSnapshot(resnet)
    out, norms = deep_dream(resnet, photo, 'layer2', octaves=3, steps=6, preprocess='imagenet', seed=0, return_norms=True, show_progress=False)
    with torch.no_grad(), FlatModel(resnet).record('layer2') as rec: resnet(normalize(photo))
    assert (rec['layer2'] ** 2).mean().item() < norms[0] and all(a < b for a, b in zip(norms, norms[1:]))
    assert out.shape == photo.shape and 0 <= out.min() and out.max() <= 1 and snap.diff(resnet) == []

def test_feature_inversion_matches_features(resnet):
    photo = sample_images(['coffee'], size=48, imagenet_norm=False)
    inv = invert_features(resnet, photo, 'layer1', steps=60, preprocess='imagenet', seed=0, show_progress=False)
    fm = FlatModel(resnet)
    def feats(x):
        with torch.no_grad(), fm.record('layer1') as rec: resnet(normalize(x))
        return rec['layer1']
    t = feats(photo)
    err = lambda x: ((feats(x) - t) ** 2).sum() / (t ** 2).sum()
    assert err(inv) < 0.25 * err(ImageParam(48, seed=0)().detach())

def test_net_dreamer_is_deep_dream_from_seeded_grey_noise(resnet):
    """net_dreamer is DeepDream from grey noise, 0.5 + noise * N(0, 1) drawn from `seed` and clamped to [0, 1]: bit for bit the
    image deep_dream makes of that start with the same settings; and the dream raises the layer's mean square over the start"""
    kw = dict(octaves=2, steps=2, preprocess='imagenet', seed=0, show_progress=False)
    out = net_dreamer(resnet, 'layer1', size=40, batch=2, **kw)
    assert out.shape == (2, 3, 40, 40)
    start = (0.5 + 0.1 * torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    torch.testing.assert_close(out, deep_dream(resnet, start, 'layer1', **kw), rtol=0, atol=0)
    def mean_square(x):
        with torch.no_grad(), FlatModel(resnet).record('layer1') as rec: resnet(normalize(x))
        return (rec['layer1'] ** 2).mean().item()
    assert mean_square(out) > mean_square(start)

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
