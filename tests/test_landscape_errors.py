"Bad input to netlens.landscape gets an error that names it (moved from nbs/11_landscape.ipynb); the model is left as it was"
import math
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot
from netlens.landscape import dataset_loss, fourier_map, landscape1d, landscape2d, normalize_direction, random_direction

@pytest.fixture(scope='module')
def digits():
    model = digits_cnn()
    x, y = digits_data('test')
    return model, x, y, (x[:64], y[:64])

def test_dataset_loss_errors(digits):
    model, x, y, (xs_, ys_) = digits
    with pytest.raises(ValueError, match='no batches'): dataset_loss(model, [], F.cross_entropy)
    with pytest.raises(ValueError, match="reduction='mean'"): dataset_loss(model, (xs_, ys_), lambda o, t: F.cross_entropy(o, t, reduction='none'))

def test_direction_errors(digits):
    model = digits[0]
    d = random_direction(model, seed=0)
    with pytest.raises(ValueError, match="normalize must be"): random_direction(model, normalize='filters')
    with pytest.raises(ValueError, match='has no parameters'): random_direction(nn.ReLU())
    with pytest.raises(ValueError, match='16 parameters, the direction 2'): normalize_direction(d[:2], model)

def test_landscape_errors_leave_the_model(digits):
    model, x, y, data = digits
    snap = ModelSnapshot(model)
    with pytest.raises(ValueError, match='step_size must be a positive number'): landscape1d(model, data, F.cross_entropy, step_size=0)
    with pytest.raises(ValueError, match='low < high'): landscape1d(model, data, F.cross_entropy, x_range=(1, -1))
    with pytest.raises(ValueError, match='no batches'): landscape1d(model, [], F.cross_entropy, show_progress=False)
    with pytest.raises(ValueError, match='scalar'): landscape1d(model, data, lambda o, t: o.sum(1), show_progress=False)
    with pytest.raises(ValueError, match='has no parameters'): landscape1d(nn.Flatten(), data, F.cross_entropy)
    assert snap.diff(model) == []

def test_empty_batches_and_bad_grids_are_named(digits):
    "An empty batch was a ZeroDivisionError; a NaN direction would make every loss NaN"
    model, x, y, data = digits
    xs_, ys_ = data
    snap = ModelSnapshot(model)
    with pytest.raises(ValueError, match=r'data \(batch 0, x\) is empty'): landscape1d(model, (xs_[:0], ys_[:0]), F.cross_entropy, show_progress=False)
    with pytest.raises(ValueError, match=r'data \(batch 0, x\) is empty'): landscape2d(model, [(xs_[:0], ys_[:0])], F.cross_entropy, show_progress=False)
    with pytest.raises(ValueError, match='step_size must be a positive number'): landscape1d(model, data, F.cross_entropy, step_size=float('nan'))
    with pytest.raises(ValueError, match='finite low < high'): landscape1d(model, data, F.cross_entropy, x_range=(-1, math.inf))
    with pytest.raises(ValueError, match=r'NaN or infinite values \(tensors \[3\]\)'): landscape1d(model, data, F.cross_entropy, direction=[torch.full_like(p, float('nan')) if i == 3 else p.detach() for i, p in enumerate(model.parameters())])
    with pytest.raises(TypeError, match='list of tensors'): landscape1d(model, data, F.cross_entropy, direction=torch.zeros(3))
    assert snap.diff(model) == []

def test_fourier_map_errors(digits):
    model, x, y, _ = digits
    few = (x[:8], y[:8])
    with pytest.raises(ValueError, match="metric must be"): fourier_map(model, few, metric='loss')
    with pytest.raises(ValueError, match='images'): fourier_map(nn.Linear(4, 2), (torch.randn(3, 4), torch.zeros(3)))
    with pytest.raises(ValueError, match='no batches'): fourier_map(model, [])

def test_fourier_map_bad_sizes_and_counts_are_named(digits):
    "Not a ZeroDivisionError or an all-NaN map"
    model, x, y, _ = digits
    few = (x[:8], y[:8])
    with pytest.raises(ValueError, match=r'data \(batch 0, x\) is empty'): fourier_map(model, (x[:0], y[:0]), show_progress=False)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): fourier_map(model, few, batch_size=0)
    with pytest.raises(ValueError, match='max_freq must be an integer >= 0, got -1'): fourier_map(model, few, max_freq=-1)
    with pytest.raises(ValueError, match='norm must be a positive number'): fourier_map(model, few, norm=float('nan'))
    with pytest.raises(ValueError, match=r'data \(batch 0, x\) holds NaN'): fourier_map(model, (x[:2].clone().fill_(float('nan')), y[:2]), max_freq=1, show_progress=False)
    with pytest.raises(ValueError, match=r'every image must be \(32, 32\)'): fourier_map(model, [(x[:2], y[:2]), (x[:2, :, :16, :16], y[:2])], max_freq=1, show_progress=False)
    with pytest.raises(ValueError, match=r'class indices y of shape \(2,\)'): fourier_map(model, (x[:2], F.one_hot(y[:2], 10)), max_freq=1, show_progress=False)
