"""Bad input to the gradient methods (nbs/04_gradients.ipynb): each is refused before any gradient is taken, with an error
that names the argument, what it got and the fix. Moved from the notebook, which keeps one example of a clear error."""
import re
import pytest, torch, torch.nn as nn
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot
from netlens.attribution.gradients import (input_grad, saliency, guided_backprop, deconvolution, smooth_grad, integrated_gradients,
                                           token_scores, show_tokens)

def fails(exc, contains): return pytest.raises(exc, match=re.escape(contains))

MODEL = digits_cnn()
_x, _y = digits_data('test')
X, Y = _x[:4].clone(), _y[:4].clone()
XN = X.clone(); XN[2, 0, 5, 5] = float('nan')
NAN_AT_2 = lambda t: torch.where(torch.arange(len(t))[:, None] == 2, float('nan'), MODEL(t))   # finite x, NaN scores for example 2
PAIR = lambda t: (MODEL(t), t)                                                                  # (scores, features)

@pytest.mark.parametrize('call, exc, regex', [
    (lambda: input_grad(MODEL, X, 10), IndexError, 'target 10 is out of range: the model has 10 outputs'),
    (lambda: input_grad(MODEL, X, [1, 2]), ValueError, r'one per example \(4\)'),
    (lambda: input_grad(MODEL, X, 1.5), TypeError, 'integer class'),
    (lambda: input_grad(MODEL, (X * 255).byte(), 1), TypeError, 'floating point'),
    (lambda: input_grad(MODEL, torch.rand(5), 1), ValueError, 'add a batch dimension'),
    (lambda: input_grad('resnet', X, 1), TypeError, 'nn.Module or a function'),
])
def test_input_grad_targets_and_input(call, exc, regex):
    with pytest.raises(exc, match=regex): call()

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: input_grad(MODEL, X[:0], Y[:0]), ValueError, 'x is empty'),
    (lambda: input_grad(NAN_AT_2, X, Y), ValueError, "the model's output is NaN or infinite for examples [2]"),
    (lambda: input_grad(lambda t: {'scores': MODEL(t)}, X, Y), TypeError, "a dict with keys ['scores'] and no 'logits': choose the scores with output="),
    (lambda: input_grad(MODEL, X.double(), Y), TypeError, "x is torch.float64 but the model's parameters are torch.float32"),
    (lambda: input_grad(MODEL, X[0], Y[0]), ValueError, "layer 'stem.0' (Conv2d) takes batches of 4 dimensions"),
])
def test_input_grad_bad_input(call, exc, contains):
    with fails(exc, contains): call()

def test_saliency_guided_deconvolution_refuse_what_they_used_to_draw():
    "NaN input, NaN scores, dict outputs without logits, empty batches; a tuple's first element is the scores; nothing attached to the caller's graph"
    snap = ModelSnapshot(MODEL)
    for f in (saliency, guided_backprop, deconvolution):
        with fails(ValueError, 'at examples [2]'): f(MODEL, XN, Y)
        with fails(ValueError, 'NaN or infinite for examples [2]'): f(NAN_AT_2, X, Y)
        with fails(TypeError, "and no 'logits'"): f(lambda t: {'scores': MODEL(t)}, X, Y)
        torch.testing.assert_close(f(PAIR, X, Y), f(MODEL, X, Y), rtol=0, atol=0)
        with fails(ValueError, 'x is empty'): f(MODEL, X[:0], Y[:0])
        xg = X.clone().requires_grad_()
        assert f(MODEL, xg, Y).requires_grad is False and xg.grad is None
        torch.testing.assert_close(f(MODEL, X.contiguous(memory_format=torch.channels_last), Y), f(MODEL, X, Y), rtol=0, atol=0)
    assert snap.diff(MODEL) == []

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: smooth_grad(MODEL, X, Y, kind='smooth'), ValueError, 'kind must be'),
    (lambda: smooth_grad(MODEL, X, Y, n_samples=0), ValueError, 'n_samples must be an integer >= 1, got 0'),
    (lambda: smooth_grad(MODEL, X, Y, stdev=-0.1), ValueError, 'stdev must be a number >= 0'),
    (lambda: smooth_grad(MODEL, XN, Y), ValueError, 'x holds NaN or infinite values (at examples [2])'),
    (lambda: smooth_grad(MODEL, X[:0], Y[:0], batch_size=8), ValueError, 'x is empty'),
    (lambda: smooth_grad(MODEL, X, Y, batch_size=0), ValueError, 'batch_size must be an integer >= 1, got 0'),
    (lambda: smooth_grad(MODEL, X[0], Y[0], n_samples=4), ValueError, 'is x one example without its batch dimension? add it with x[None]'),
])
def test_smooth_grad_bad_input(call, exc, contains):
    with fails(exc, contains): call()

@pytest.mark.parametrize('call, exc, regex', [
    (lambda: integrated_gradients(MODEL, X, Y, baseline=torch.zeros(3, 32, 32)), ValueError, 'does not broadcast'),
    (lambda: integrated_gradients(MODEL, X, Y, n_steps=0), ValueError, re.escape('n_steps must be an integer >= 1, got 0')),
    (lambda: integrated_gradients(MODEL, X, Y, method='riemann_lft'), KeyError, "closest: 'riemann_left'"),
    (lambda: integrated_gradients(MODEL, X[:0], Y[:0], batch_size=8), ValueError, 'x is empty'),
    (lambda: integrated_gradients(MODEL, X, Y, batch_size=0), ValueError, re.escape('batch_size must be an integer >= 1, got 0')),
    (lambda: integrated_gradients(MODEL, X, Y, baseline=float('nan')), ValueError, 'baseline holds NaN'),
])
def test_integrated_gradients_bad_input(call, exc, regex):
    with pytest.raises(exc, match=regex): call()

class TinyText(nn.Module):
    "Token ids -> embedding -> mean over the unmasked tokens -> linear"
    main_input_name = 'input_ids'
    def __init__(self):
        super().__init__(); torch.manual_seed(0); self.emb, self.head = nn.Embedding(20, 4), nn.Linear(4, 3)
    def forward(self, input_ids, attention_mask):
        m = attention_mask.float()[..., None]
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))

def test_token_attribution_bad_input():
    tt = TinyText()
    ids, mask, yt = torch.tensor([[3, 5, 7, 2], [4, 9, 0, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), torch.tensor([2, 0])
    batch = {'input_ids': ids, 'attention_mask': mask}
    ts = token_scores(integrated_gradients(tt, batch, yt, layer='emb', n_steps=4))
    words = ['the', 'cat', 'sat', '<b>']
    with fails(KeyError, "unknown layer 'embb'; closest: 'emb'"): integrated_gradients(tt, batch, yt, layer='embb')
    with fails(ValueError, "scores must be one per token (4)"): show_tokens(words, ts)
    with fails(ValueError, "attr must be a token attribution (N, T, D)"): token_scores(ts)
    with fails(ValueError, "baseline must be a token id (an integer) for token ids, got 0.5"): integrated_gradients(tt, batch, yt, layer='emb', baseline=0.5)
    with fails(ValueError, "x['input_ids'] must be a batch of token ids (N, T)"): saliency(tt, {'input_ids': ids[0], 'attention_mask': mask[0]}, 0, layer='emb')
    assert sum(len(m._forward_hooks) for m in tt.modules()) == 0
