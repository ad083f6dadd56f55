"""Bad input to the class activation maps (nbs/05_gradcam.ipynb): each is refused with an error that names the layer,
the argument or the fix, and the model is left as it was. Moved from the notebook, which keeps one example of a clear error."""
import re, warnings
import pytest, torch, torch.nn as nn
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot
from netlens.attribution.cam import cam, grad_cam, guided_grad_cam, layer_acts_grads, vit_reshape

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
    (lambda: cam(MODEL, X, Y, 'conv3', 'gradcam+'), KeyError, "closest: 'gradcam\\+\\+'"),
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
    for f in (grad_cam, guided_grad_cam, lambda *a: cam(*a, method='gradcam++'), layer_acts_grads):
        with fails(ValueError, "the model's output is NaN or infinite for examples [1]"): f(NaNFor1(MODEL), X, Y, 'm.conv3')
        torch.testing.assert_close(f(Logits(MODEL), X, Y, 'm.conv3'), f(MODEL, X, Y, 'conv3'))
        with fails(ValueError, 'x is empty'): f(MODEL, X[:0], Y[:0], 'conv3')

def test_edge_cases():
    snap = ModelSnapshot(MODEL)
    xg = X.clone().requires_grad_()
    assert grad_cam(MODEL, xg, Y, 'conv3').requires_grad is False and xg.grad is None
    torch.testing.assert_close(grad_cam(MODEL, X.contiguous(memory_format=torch.channels_last), Y, 'conv3'), grad_cam(MODEL, X, Y, 'conv3'), rtol=0, atol=0)
    with fails(TypeError, 'channel must be an int'): grad_cam(MODEL, X, Y, 'conv3', channel=2.5)
    with fails(ValueError, 'vit_reshape takes tokens (N, T, D)'): vit_reshape(torch.zeros(2, 5), prefix=1)
    with fails(ValueError, 'cannot lay 21 tokens less 1 prefix tokens on a square grid'): vit_reshape(torch.zeros(2, 21, 8), prefix=1)   # the old guess kept them all
    with fails(ValueError, "reshape must return maps (N, C, h, w) for the 4 examples; for the output of layer 'conv3' it returned shape (4, 64, 64)"):
        grad_cam(MODEL, X, Y, 'conv3', reshape=lambda t: t.flatten(2))
    with fails(TypeError, "layer 'both' outputs a tuple, not a tensor"): grad_cam(WithBoth(MODEL), X, Y, 'both')
    MODEL.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); cam(MODEL, X, Y, 'conv3', 'layercam')
    finally: MODEL.eval()
    assert snap.diff(MODEL) == []
