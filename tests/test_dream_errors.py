"Bad input to netlens.dream, refused with a message that says what to fix (moved from nbs/08_dream.ipynb, which keeps one example)"
import pytest, torch
from netlens.data import sample_images
from netlens.dream import deep_dream, net_dreamer, invert_features, class_visualization, channel_visualization

from conftest import raises

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
    with raises(ValueError, 'image is empty'): deep_dream(model, small[:0], 'res')
    with raises(ValueError, 'image is empty'): invert_features(model, small[:0], 'conv2')
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
