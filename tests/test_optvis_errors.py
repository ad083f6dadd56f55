"Bad input to netlens.optvis, refused with a message that says what to fix (moved from nbs/07_optvis.ipynb, which keeps one example)"
import pytest, torch, torch.nn as nn
from netlens.optvis import (ImageParam, Objective, render, channel, neuron, class_logit, class_prob, diversity, jitter, random_scale,
                            random_rotate, _Run)

from conftest import raises

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
    with raises(TypeError, "is a str, not a tensor: choose the scores with output="): class_logit(0)(_Run(None, None, 'cat'))
    with raises(ValueError, "output=lambda o: o[:, -1]"): class_logit(0)(_Run(None, None, torch.zeros(1, 7, 10)))  # a sequence's scores
    with raises(ValueError, '(N, classes)'): class_prob(0)(_Run(None, None, torch.zeros(1, 10, 2)))
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
