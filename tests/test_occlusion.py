"""netlens.attribution.occlusion (nbs/06_occlusion.ipynb): equal to Captum's Occlusion (in float64) on the cases of
captum_cases.py; bad windows, strides, baselines, batches and model outputs are refused with an error that names the argument
and the fix."""
import re
from copy import deepcopy
import pytest, torch
from captum.attr import Occlusion
from captum_cases import rel_close, case
from netlens.attribution.occlusion import occlusion
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot

def test_occlusion_equals_captum(case):
    """In float64: an occlusion attribution is a difference of two nearly equal scores, so float32 rounding of the scores
    (batched differently by each library) is amplified relative to the attribution; Captum returns float32 at the end"""
    name, model, x, y, _ = case
    model, x = deepcopy(model).double(), x.double()
    c = x.shape[1]
    window, stride = (c, 7, 7), (c, 4, 4)
    theirs = Occlusion(model).attribute(x, target=y, sliding_window_shapes=window, strides=stride, baselines=0., perturbations_per_eval=8)
    rel_close(occlusion(model, x, y, window=window, stride=stride, batch_size=32), theirs)
    theirs_b = Occlusion(model).attribute(x, target=y, sliding_window_shapes=(1, 9, 9), strides=(1, 5, 5), baselines=0.3)
    rel_close(occlusion(model, x, y, window=(1, 9, 9), stride=(1, 5, 5), baseline=0.3), theirs_b)

MODEL = digits_cnn()

_x, _y = digits_data('test')

X, Y = _x[:3].clone(), _y[:3].clone()

XN = X.clone(); XN[0, 0, 0, 0] = float('nan')

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
