"""Bad input to the shared checks of netlens.adapters (nbs/00a_adapters.ipynb): each names the argument, what it got and
the fix. Moved from the notebook, which keeps one example per check."""
import re
import numpy as np, pytest, torch, torch.nn as nn
from netlens.adapters import check_batch, as_images, check_number, check_scores, check_module, to_model_input, model_output

def fails(exc, contains): return pytest.raises(exc, match=re.escape(contains))

X = torch.rand(2, 3, 8, 8)
IMG = torch.rand(3, 8, 8)
S = torch.randn(4, 10)
NET = nn.Sequential(nn.Linear(4, 3))
EMB = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
IDS = torch.tensor([[1, 2], [3, 4]])

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: check_batch(X.mul(255).byte()), TypeError, 'float'),
    (lambda: check_batch(X[:0], 'x'), ValueError, 'empty'),
    (lambda: check_batch(torch.rand(5)), ValueError, 'x[None]'),
    (lambda: check_batch(np.zeros((2, 3)), 'image'), TypeError, 'image_to_tensor'),
    (lambda: check_batch(X[0], 'image', ndim=4), ValueError, '4 dimensions'),
    (lambda: as_images(IMG * 255), ValueError, 'divide by 255'),
    (lambda: as_images(IMG, channels=1), ValueError, '3 channels, the model takes 1'),
])
def test_batches_and_images(call, exc, contains):
    with fails(exc, contains): call()

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: check_number(-0.1, 'stdev', 0), ValueError, 'stdev must be a number >= 0, got -0.1'),
    (lambda: check_number(0, 'norm', 0, strict=True), ValueError, 'norm must be a positive number, got 0'),
    (lambda: check_number(1, 'octave_scale', 1, strict=True), ValueError, 'octave_scale must be a number > 1, got 1'),
    (lambda: check_scores({'logits': S}), TypeError, "a dict with keys ['logits'], not a tensor of scores (N, classes): choose them with output="),
    (lambda: check_scores(S[:, :, None]), ValueError, '(N, classes)'),
])
def test_numbers_and_scores(call, exc, contains):
    with fails(exc, contains): call()

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: check_module(3, functions=True), TypeError, 'model must be a torch.nn.Module or a function of x, got int'),
    (lambda: check_module('fc', 'Hook', 'm'), TypeError, "get_submodule('fc')"),
    (lambda: to_model_input(IDS.byte(), EMB), TypeError, 'x.float() / 255'),                       # 8-bit: images
    (lambda: to_model_input(IDS[:0], EMB, 'ids'), ValueError, 'ids is empty'),
    (lambda: to_model_input(torch.full((2, 4), float('nan')), NET), ValueError, 'holds NaN'),
])
def test_models_and_their_input(call, exc, contains):
    with fails(exc, contains): call()

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: model_output({'logits': S}, output='logit'), KeyError, "output='logit' selects nothing from the model's output, a dict with keys ['logits']"),
    (lambda: model_output('cat'), TypeError, "is a str, not a tensor: choose the scores with output="),
    (lambda: model_output(S, output=1.5), TypeError, "output must be a key, an index or a function"),
])
def test_model_output(call, exc, contains):
    with fails(exc, contains): call()
