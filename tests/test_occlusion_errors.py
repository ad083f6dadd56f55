"""Bad input to occlusion (nbs/06_occlusion.ipynb): windows, strides, baselines, batches and the model's output are refused
with an error that names the argument and the fix. Moved from the notebook, which keeps one example of a clear error."""
import re
import pytest, torch
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot
from netlens.attribution.occlusion import occlusion

MODEL = digits_cnn()
_x, _y = digits_data('test')
X, Y = _x[:3].clone(), _y[:3].clone()
XN = X.clone(); XN[0, 0, 0, 0] = float('nan')
W, S = (1, 8, 8), (1, 8, 8)

@pytest.mark.parametrize('call, exc, regex', [
    (lambda: occlusion(MODEL, X, Y, window=(6, 6), stride=(4, 4)), ValueError, 'one entry per input dimension'),
    (lambda: occlusion(MODEL, X, Y, window=(1, 4, 4), stride=(1, 8, 8)), ValueError, 'never be covered'),
    (lambda: occlusion(MODEL, X, Y, window=(1, 6, 6), stride=(1, 4, 4), baseline=torch.zeros(2, 32, 32)), ValueError, 'does not broadcast'),
    (lambda: occlusion(MODEL, X.byte(), Y, window=(1, 6, 6), stride=(1, 4, 4)), TypeError, 'floating point'),
])
def test_windows_baselines_dtypes(call, exc, regex):
    snap = ModelSnapshot(MODEL)
    with pytest.raises(exc, match=regex): call()
    assert snap.diff(MODEL) == []

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: occlusion(MODEL, XN, Y, window=W, stride=S), ValueError, 'x holds NaN or infinite values (at examples [0])'),
    (lambda: occlusion(MODEL, X[:0], Y[:0], window=W, stride=S), ValueError, 'x is empty'),
    (lambda: occlusion(MODEL, X, Y, window=W, stride=S, batch_size=0), ValueError, 'batch_size must be an integer >= 1, got 0'),
    (lambda: occlusion(lambda t: {'scores': MODEL(t)}, X, Y, window=W, stride=S), TypeError, "a dict with keys ['scores'] and no 'logits'"),
    (lambda: occlusion(MODEL, X, Y, window=8, stride=8), TypeError, 'window must be a tuple'),
    (lambda: occlusion(MODEL, X, Y, window=W, stride=(1, 2.5, 2)), ValueError, 'each entry of stride must be an integer >= 1, got 2.5'),
])
def test_input_scores_and_sizes(call, exc, contains):
    with pytest.raises(exc, match=re.escape(contains)): call()
