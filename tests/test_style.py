"""netlens.style (nbs/09_style.ipynb): style transfer lowers the style loss (Adam, the tutorial preset) and leaves a VGG as
it was (no average pooling swapped in); bad input is refused with a message that says what to fix."""
import pytest, torch, torch.nn as nn, torchvision
from copy import deepcopy
from netlens.data import sample_images
from netlens.hooks import ModelSnapshot, hook_count
from netlens.style import gram, style_loss, style_transfer

from conftest import raises

def test_losses_refuse_mismatched_features():
    f = torch.randn(1, 4, 8, 8)
    with raises(ValueError, 'features must be (N, C, H, W)'): gram(f[0, 0])
    with raises(ValueError, 'take both from the same layer'): style_loss(f, gram(f)[:, :2, :2])

def test_bad_calls_on_vgg():
    torch.manual_seed(0)
    net = torchvision.models.vgg11().features.eval()
    snap = ModelSnapshot(net)
    content_img, style_img = sample_images(['astronaut', 'coffee'], size=64, imagenet_norm=False)
    with raises(ValueError, 'channels'): style_transfer(net, content_img, style_img[:1])
    with raises(KeyError, 'VGG names'): style_transfer(net, content_img, style_img, style_layers=['relu9_1'])
    with raises(ValueError, 'steps'): style_transfer(net, content_img, style_img, steps=0)
    assert snap.diff(net) == []
    assert hook_count(net) == 0

@pytest.fixture(scope='module')
def images(): return sample_images(['astronaut', 'coffee'], size=16, imagenet_norm=False)

@pytest.fixture(scope='module')
def small_net():
    torch.manual_seed(0)
    return nn.Sequential(*[m for k in range(3) for m in (nn.Conv2d(3 if k == 0 else 8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))][:-1]).eval()

kw = dict(content_layers=['relu2_1'], style_layers=['relu1_1', 'relu2_1'], steps=3, show_progress=False)

def test_bad_images_layers_and_counts(images, small_net):
    c16, s16 = images
    snap = ModelSnapshot(small_net)
    with raises(ValueError, 'divide by 255'): style_transfer(small_net, c16 * 255, s16, **kw)
    with raises(ValueError, 'init has shape (1, 3, 8, 8), x (1, 3, 16, 16)'): style_transfer(small_net, c16, s16, init=c16[:, ::2, ::2], **kw)
    with raises(ValueError, 'style must be one image'): style_transfer(small_net, c16, torch.stack([s16, s16]), **kw)
    with raises(ValueError, 'both empty'): style_transfer(small_net, c16, s16, **dict(kw, content_layers=[], style_layers=[]))
    with raises(ValueError, 'x has 1 channels, the model takes 3'): style_transfer(small_net, c16[:1], s16[:1], **kw)
    with raises(TypeError, 'floating point'): style_transfer(small_net, c16.double().long(), s16, **kw)
    bad = c16.clone(); bad[0, 2, 2] = float('inf')
    with raises(ValueError, 'NaN or infinite'): style_transfer(small_net, bad, s16, **kw)
    with raises(ValueError, 'steps must be an integer >= 1, got 2.5'): style_transfer(small_net, c16, s16, steps=2.5)
    assert snap.diff(small_net) == []
    assert hook_count(small_net) == 0

def test_nan_loss_is_refused(images, small_net):
    c16, s16 = images
    nan_net = deepcopy(small_net)
    with torch.no_grad(): nan_net[3].bias[0] = float('nan')       # a broken model: NaN features from the second convolution on
    with raises(ValueError, 'the loss is nan at evaluation 1'): style_transfer(nan_net, c16, s16, **kw)
    assert hook_count(nan_net) == 0

def test_style_transfer_adam_tutorial():
    torch.manual_seed(0)
    net = torchvision.models.vgg11().features.eval()
    content, style = sample_images(['chelsea', 'rocket'], size=48, imagenet_norm=False)
    out, hist = style_transfer(net, content, style, preset='tutorial', optimizer='adam', lr=0.02, steps=60, show_progress=False, return_history=True)
    assert hist['style'][-1] < hist['style'][0] / 3 and out.shape == content.shape
    assert not any(isinstance(m, nn.AvgPool2d) for m in net.modules())
