"""The same words for the same mistake from every method of `netlens.attribution` (nbs/06a_attribution.ipynb): float64
input for a float32 model, 8-bit input, an out-of-range target. Moved from the notebook, which keeps its shared checks."""
import re
import pytest, torch
import netlens.attribution as A
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot

MODEL = digits_cnn()
_x, _y = digits_data('test')
X, Y = _x[:2].clone(), _y[:2].clone()
METHODS = {  # (model, x, target, layer) for each entry point, as in the notebook
    'saliency': lambda m, x, t, l: A.saliency(m, x, t), 'guided_backprop': lambda m, x, t, l: A.guided_backprop(m, x, t),
    'deconvolution': lambda m, x, t, l: A.deconvolution(m, x, t), 'input_grad': lambda m, x, t, l: A.input_grad(m, x, t)[0],
    'input_x_gradient': lambda m, x, t, l: A.input_x_gradient(m, x, t),
    'smooth_grad': lambda m, x, t, l: A.smooth_grad(m, x, t, n_samples=2, batch_size=2, seed=0),
    'integrated_gradients': lambda m, x, t, l: A.integrated_gradients(m, x, t, n_steps=3, batch_size=2, return_delta=True)[0],
    'cam': lambda m, x, t, l: A.cam(m, x, t, l, 'xgradcam'), 'grad_cam': lambda m, x, t, l: A.grad_cam(m, x, t, l),
    'guided_grad_cam': lambda m, x, t, l: A.guided_grad_cam(m, x, t, l), 'layer_acts_grads': lambda m, x, t, l: A.layer_acts_grads(m, x, t, l)[1],
    'occlusion': lambda m, x, t, l: A.occlusion(m, x, t, window=(1, 8, 8), stride=(1, 8, 8), batch_size=2)}

@pytest.mark.parametrize('name', list(METHODS))
def test_dtype_and_target_errors(name):
    f, snap = METHODS[name], ModelSnapshot(MODEL)
    with pytest.raises(TypeError, match=re.escape('x is torch.float64 but the model')): f(MODEL, X.double(), Y, 'conv3')
    with pytest.raises(TypeError, match=re.escape('x must be floating point, got torch.uint8')): f(MODEL, (X * 255).byte(), Y, 'conv3')
    with pytest.raises(IndexError, match=re.escape('target 10 is out of range')): f(MODEL, X, 10, 'conv3')
    assert snap.diff(MODEL) == []
