"""netlens.landscape (nbs/11_landscape.ipynb): loss landscapes and Fourier heat maps against float64 references written
here, on the digits model, a perturbed resnet18 and the models users bring (random-init Hugging Face models: the loss
evaluated by hand at the same points of parameter space); any iterable of batches; bad input gets an error that names it,
not a ZeroDivisionError or an all-NaN map, and the model is left as it was."""
from copy import deepcopy
import pytest, torch, torch.nn as nn, torch.nn.functional as F, torchvision
import tiny_models as tiny
from torch.func import functional_call
from conftest import perturbed
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot
from netlens.landscape import (conjugate, direction_to, fourier_basis, fourier_map, landscape1d, landscape2d,
                               random_direction)
import math
from netlens.landscape import normalize_direction

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])

@pytest.fixture(scope='module')
def digits():
    x, y = digits_data('test')
    return digits_cnn(), x[:24], y[:24]

def test_landscape2d_equals_functional_reference(digits):
    "Every grid value equals the loss of a functional_call at θ0 + a·d1 + b·d2 computed in float64"
    model, x, y = digits
    m64, x64 = digits_cnn().double(), x.double()
    d1, d2 = random_direction(m64, seed=3), random_direction(m64, seed=4)
    xs, ys, L = landscape2d(m64, (x64, y), F.cross_entropy, (-0.4, 0.4), (-0.4, 0.4), 0.2, directions=[d1, d2], show_progress=False)
    names = [n for n, _ in m64.named_parameters()]
    theta0 = [p.detach().clone() for p in m64.parameters()]
    buffers = dict(m64.named_buffers())
    for i, a in enumerate(xs.tolist()):
        for j, b in enumerate(ys.tolist()):
            params = {n: t + a * u + b * v for n, t, u, v in zip(names, theta0, d1, d2)}
            with torch.no_grad(): ref = F.cross_entropy(functional_call(m64, {**params, **buffers}, (x64,)), y)
            torch.testing.assert_close(L[i, j], ref, rtol=1e-12, atol=1e-12)

@pytest.mark.parametrize('device', DEVICES)
def test_resnet18_centre_exact_and_parameters_restored(device):
    model = perturbed(torchvision.models.resnet18(num_classes=10)).to(device)
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.arange(6, device=device) % 10
    snap = ModelSnapshot(model)
    with torch.no_grad(): base = F.cross_entropy(model(x), y)
    xs, ys, L = landscape2d(model, (x, y), F.cross_entropy, (-.2, .2), (-.2, .2), 0.2, seed=0, show_progress=False)
    assert torch.equal(L[1, 1], base.cpu())
    assert snap.diff(model) == []
    for (n, p), d in zip(model.named_parameters(), random_direction(model, seed=0)):
        if p.dim() > 1: torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
        else: assert not d.any(), n

def test_interpolation_ends_at_the_other_model(digits):
    model, x, y = digits
    other = digits_cnn(pretrained=False)
    ts, L = landscape1d(model, (x, y), F.cross_entropy, (0, 1), 0.5, direction=direction_to(model, other), show_progress=False)
    hybrid = digits_cnn(); hybrid.load_state_dict({**model.state_dict(), **dict(other.named_parameters())})
    with torch.no_grad(): torch.testing.assert_close(L[-1], F.cross_entropy(hybrid(x), y), rtol=1e-4, atol=1e-5)

def _fft_basis(h, w, i, j):
    "Reference plane wave from the spectrum: ones at (i, j) and its conjugate, inverse FFT, unit norm (float64)"
    s = torch.zeros(h, w, dtype=torch.complex128)
    s[i, j] = 1; s[(-i) % h, (-j) % w] = 1
    u = torch.fft.ifft2(s)
    assert u.imag.abs().max() < 1e-12
    return u.real / u.real.norm()

@pytest.mark.parametrize('h,w', [(32, 32), (31, 31), (8, 12)])
def test_fourier_basis_is_one_plane_wave(h, w):
    freqs = [(i, j) for i in range(h) for j in range(w)]
    B = fourier_basis(h, w, freqs, dtype=torch.float64)
    for (i, j), u in zip(freqs, B):
        torch.testing.assert_close(u, _fft_basis(h, w, i, j), rtol=0, atol=1e-10)

def test_anatome_pairing_mixes_two_waves():
    "anatome pairs (i, j) with (h-1-i, w-1-j): for even sizes that spectrum holds two different waves"
    h = w = 32; i, j = 3, 5
    s = torch.zeros(h, w, dtype=torch.complex128); s[i, j] = 1; s[h - 1 - i, w - 1 - j] = 1
    peaks = (torch.fft.fft2(torch.fft.ifft2(s).real).abs() > 1e-9).sum().item()
    assert peaks == 4 and conjugate(i, j, h, w) != (h - 1 - i, w - 1 - j)

def test_fourier_map_equals_loop_reference(digits):
    "Without random signs, every entry equals a float64 loop over all h*w frequencies with the FFT-built basis"
    model, x, y = digits
    m64, x64 = digits_cnn().double(), x[:6].double()
    y6 = y[:6]
    got = fourier_map(m64, (x64, y6), metric=F.cross_entropy, norm=3., random_sign=False, batch_size=64, show_progress=False)
    ref = torch.empty(32, 32, dtype=torch.float64)
    with torch.no_grad():
        for i in range(32):
            for j in range(32):
                ref[i, j] = F.cross_entropy(m64(x64 + 3. * _fft_basis(32, 32, i, j)), y6)
    torch.testing.assert_close(got.double(), torch.fft.fftshift(ref), rtol=1e-6, atol=1e-6)

def test_fourier_map_batching_and_loader_invariant(digits):
    model, x, y = digits
    a = fourier_map(model, (x[:8], y[:8]), max_freq=4, batch_size=8, show_progress=False)
    b = fourier_map(model, (x[:8], y[:8]), max_freq=4, batch_size=4096, show_progress=False)
    assert torch.equal(torch.nan_to_num(a, -1), torch.nan_to_num(b, -1))
    c = fourier_map(model, (x[:8], y[:8]), max_freq=4, seed=1, show_progress=False)
    assert not torch.equal(torch.nan_to_num(a, -1), torch.nan_to_num(c, -1)), 'the random signs depend on the seed'
    from torch.utils.data import DataLoader, TensorDataset
    one = fourier_map(model, (x[:8], y[:8]), metric=F.cross_entropy, random_sign=False, max_freq=4, show_progress=False)
    two = fourier_map(model, DataLoader(TensorDataset(x[:8], y[:8]), batch_size=5), metric=F.cross_entropy,
                      random_sign=False, max_freq=4, show_progress=False)
    torch.testing.assert_close(torch.nan_to_num(one), torch.nan_to_num(two))

# ---- any iterable of batches; bad input named, not a ZeroDivisionError or an all-NaN map ----
from torch.utils.data import DataLoader, IterableDataset
from netlens.landscape import dataset_loss

def _parts(x, y, k=8): return [(x[i:i + k], y[i:i + k]) for i in range(0, len(x), k)]

def test_landscapes_read_generators_maps_and_iterable_datasets_like_lists(digits):
    model, x, y = digits
    parts = _parts(x, y)
    class Stream(IterableDataset):
        def __iter__(self): return iter(zip(x, y))
    ref = landscape2d(model, parts, F.cross_entropy, (-.5, .5), (-.5, .5), 0.5, seed=0, show_progress=False)[2]
    for it in ((b for b in parts), map(tuple, parts), DataLoader(Stream(), batch_size=8)):
        assert torch.equal(landscape2d(model, it, F.cross_entropy, (-.5, .5), (-.5, .5), 0.5, seed=0)[2], ref)   # default progress
    fm = fourier_map(model, parts, max_freq=2, show_progress=False)
    for it in ((b for b in parts), DataLoader(Stream(), batch_size=8)):
        assert torch.equal(fourier_map(model, it, max_freq=2).nan_to_num(-1), fm.nan_to_num(-1))

def test_empty_and_bad_counts_are_named(digits):
    model, x, y = digits
    for f in (lambda d: landscape1d(model, d, F.cross_entropy, show_progress=False),
              lambda d: landscape2d(model, d, F.cross_entropy, step_size=1, show_progress=False),
              lambda d: fourier_map(model, d, show_progress=False), lambda d: dataset_loss(model, d, F.cross_entropy)):
        with pytest.raises(ValueError, match=r'loader \(batch 0, x\) is empty'): f((x[:0], y[:0]))
        with pytest.raises(ValueError, match=r'loader \(batch 1, x\) holds NaN or infinite values \(at examples \[2\]\)'):
            bad = x[8:16].clone(); bad[2, 0, 5, 5] = float('inf'); f([(x[:8], y[:8]), (bad, y[8:16])])
        with pytest.raises(TypeError, match=r'loader \(batch 0, x\) must be floating point, got torch.uint8'): f(((x * 255).byte(), y))
        with pytest.raises(ValueError, match='no batches'): f(iter([]))
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): fourier_map(model, (x, y), batch_size=0)
    with pytest.raises(ValueError, match='max_freq must be an integer >= 0, got -1'): fourier_map(model, (x, y), max_freq=-1)
    with pytest.raises(ValueError, match='norm must be a positive number'): fourier_map(model, (x, y), norm=0)
    m0 = fourier_map(model, (x[:1], y[:1]), max_freq=0, show_progress=False)      # one image, one frequency
    assert (~torch.isnan(m0)).sum() == 1

def test_dict_outputs_are_read_by_the_convention_and_output_chooses(digits):
    model, x, y = digits
    class Pair(nn.Module):
        def __init__(self, m): super().__init__(); self.m = m
        def forward(self, x): return {'logits': self.m(x), 'x': x}
    class Named(Pair):
        def forward(self, x): return {'scores': self.m(x), 'x': x}
    pair, named = Pair(model), Named(model)
    ref = fourier_map(model, (x[:4], y[:4]), max_freq=2, show_progress=False)
    for kw in ({}, {'output': 'logits'}, {'output': lambda o: o['logits']}):          # a dict's logits; a key; a function
        assert torch.equal(fourier_map(pair, (x[:4], y[:4]), max_freq=2, show_progress=False, **kw).nan_to_num(-1), ref.nan_to_num(-1))
    assert torch.equal(fourier_map(named, (x[:4], y[:4]), max_freq=2, output='scores', show_progress=False).nan_to_num(-1), ref.nan_to_num(-1))
    with pytest.raises(TypeError, match=r"fourier_map: the model's output is a dict with keys \['scores', 'x'\] and no 'logits': choose the scores with output="):
        fourier_map(named, (x[:4], y[:4]), max_freq=1, show_progress=False)
    with pytest.raises(TypeError, match=r"model's output is a dict with keys \['scores', 'x'\] and no 'logits': choose the scores with output="):
        landscape1d(named, (x[:4], y[:4]), F.cross_entropy, show_progress=False)
    with pytest.raises(KeyError, match=r"output='score' selects nothing"):
        landscape1d(named, (x[:4], y[:4]), output='score', show_progress=False)
    d = random_direction(model, seed=0)
    want = landscape1d(model, (x, y), F.cross_entropy, step_size=0.5, direction=d, show_progress=False)[1]
    assert torch.equal(landscape1d(pair, (x, y), step_size=0.5, direction=d, show_progress=False)[1], want)
    assert torch.equal(landscape1d(named, (x, y), step_size=0.5, direction=d, output='scores', show_progress=False)[1], want)
    with pytest.raises(ValueError, match='NaN or infinite for examples'):
        fourier_map(lambda t: model(t) * float('nan'), (x[:4], y[:4]), max_freq=1, show_progress=False)

def test_dtypes_layout_and_train_mode(digits):
    model, x, y = digits
    ref1 = landscape1d(model, (x, y), F.cross_entropy, step_size=0.5, seed=0, show_progress=False)[1]
    assert torch.equal(landscape1d(model, (x.double(), y), F.cross_entropy, step_size=0.5, seed=0, show_progress=False)[1], ref1)
    xnc = x.transpose(2, 3).contiguous().transpose(2, 3)                           # same values, other strides
    torch.testing.assert_close(landscape1d(model, (xnc, y), F.cross_entropy, step_size=0.5, seed=0, show_progress=False)[1], ref1)
    fm = fourier_map(model, (x[:8], y[:8]), max_freq=2, show_progress=False)
    assert torch.equal(fourier_map(model, (x[:8].half(), y[:8]), max_freq=2, show_progress=False).isnan(), fm.isnan())
    m = digits_cnn(); m.train(); m.res.bn1.eval()
    snap = ModelSnapshot(m)
    assert torch.equal(landscape1d(m, (x, y), F.cross_entropy, step_size=0.5, seed=0, show_progress=False)[1], ref1)   # evaluated in eval mode
    assert torch.equal(fourier_map(m, (x[:8], y[:8]), max_freq=2, show_progress=False).nan_to_num(-1), fm.nan_to_num(-1))
    assert snap.diff(m) == []

@pytest.fixture(scope='module')
def digits_full():
    model = digits_cnn()
    x, y = digits_data('test')
    return model, x, y, (x[:64], y[:64])

def test_dataset_loss_errors(digits_full):
    model, x, y, (xs_, ys_) = digits_full
    with pytest.raises(ValueError, match='no batches'): dataset_loss(model, [], F.cross_entropy)
    with pytest.raises(ValueError, match="reduction='mean'"): dataset_loss(model, (xs_, ys_), lambda o, t: F.cross_entropy(o, t, reduction='none'))

def test_direction_errors(digits_full):
    model = digits_full[0]
    d = random_direction(model, seed=0)
    with pytest.raises(ValueError, match="scale must be"): random_direction(model, scale='filters')
    with pytest.raises(ValueError, match='has no parameters'): random_direction(nn.ReLU())
    with pytest.raises(ValueError, match='16 parameters, the direction 2'): normalize_direction(d[:2], model)

def test_landscape_errors_leave_the_model(digits_full):
    model, x, y, data = digits_full
    snap = ModelSnapshot(model)
    with pytest.raises(ValueError, match='step_size must be a positive number'): landscape1d(model, data, F.cross_entropy, step_size=0)
    with pytest.raises(ValueError, match='low < high'): landscape1d(model, data, F.cross_entropy, x_range=(1, -1))
    with pytest.raises(ValueError, match='no batches'): landscape1d(model, [], F.cross_entropy, show_progress=False)
    with pytest.raises(ValueError, match='scalar'): landscape1d(model, data, lambda o, t: o.sum(1), show_progress=False)
    with pytest.raises(ValueError, match='has no parameters'): landscape1d(nn.Flatten(), data, F.cross_entropy)
    assert snap.diff(model) == []

def test_empty_batches_and_bad_grids_are_named(digits_full):
    "An empty batch was a ZeroDivisionError; a NaN direction would make every loss NaN"
    model, x, y, data = digits_full
    xs_, ys_ = data
    snap = ModelSnapshot(model)
    with pytest.raises(ValueError, match=r'loader \(batch 0, x\) is empty'): landscape1d(model, (xs_[:0], ys_[:0]), F.cross_entropy, show_progress=False)
    with pytest.raises(ValueError, match=r'loader \(batch 0, x\) is empty'): landscape2d(model, [(xs_[:0], ys_[:0])], F.cross_entropy, show_progress=False)
    with pytest.raises(ValueError, match='step_size must be a positive number'): landscape1d(model, data, F.cross_entropy, step_size=float('nan'))
    with pytest.raises(ValueError, match='finite low < high'): landscape1d(model, data, F.cross_entropy, x_range=(-1, math.inf))
    with pytest.raises(ValueError, match=r'NaN or infinite values \(tensors \[3\]\)'): landscape1d(model, data, F.cross_entropy, direction=[torch.full_like(p, float('nan')) if i == 3 else p.detach() for i, p in enumerate(model.parameters())])
    with pytest.raises(TypeError, match='list of tensors'): landscape1d(model, data, F.cross_entropy, direction=torch.zeros(3))
    assert snap.diff(model) == []

def test_fourier_map_errors(digits_full):
    model, x, y, _ = digits_full
    few = (x[:8], y[:8])
    with pytest.raises(ValueError, match="metric must be"): fourier_map(model, few, metric='loss')
    with pytest.raises(ValueError, match='images'): fourier_map(nn.Linear(4, 2), (torch.randn(3, 4), torch.zeros(3)))
    with pytest.raises(ValueError, match='no batches'): fourier_map(model, [])

def test_fourier_map_bad_sizes_and_counts_are_named(digits_full):
    "Not a ZeroDivisionError or an all-NaN map"
    model, x, y, _ = digits_full
    few = (x[:8], y[:8])
    with pytest.raises(ValueError, match=r'loader \(batch 0, x\) is empty'): fourier_map(model, (x[:0], y[:0]), show_progress=False)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): fourier_map(model, few, batch_size=0)
    with pytest.raises(ValueError, match='max_freq must be an integer >= 0, got -1'): fourier_map(model, few, max_freq=-1)
    with pytest.raises(ValueError, match='norm must be a positive number'): fourier_map(model, few, norm=float('nan'))
    with pytest.raises(ValueError, match=r'loader \(batch 0, x\) holds NaN'): fourier_map(model, (x[:2].clone().fill_(float('nan')), y[:2]), max_freq=1, show_progress=False)
    with pytest.raises(ValueError, match=r'every image must be \(32, 32\)'): fourier_map(model, [(x[:2], y[:2]), (x[:2, :, :16, :16], y[:2])], max_freq=1, show_progress=False)
    with pytest.raises(ValueError, match=r'class indices y of shape \(2,\)'): fourier_map(model, (x[:2], F.one_hot(y[:2], 10)), max_freq=1, show_progress=False)

# ---- the models users bring: random-init Hugging Face models (a ViT's ModelOutput, BERT's dict batches, GPT-2's token ids) ----
def _hand_landscape(model, xs, d, loss_at):
    "The loss at θ0 + a·d for each a, on a copy of the model"
    m = deepcopy(model)
    ps, p0 = list(m.parameters()), [p.detach().clone() for p in model.parameters()]
    out = []
    with torch.no_grad():
        for a in xs.tolist():
            for p, q, di in zip(ps, p0, d): p.copy_(q + a * di)
            out.append(loss_at(m))
    return torch.stack(out)

def test_landscape1d_on_hf_vit_model_output():
    m, x, y = tiny.hf_vit(), torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    snap = ModelSnapshot(m)
    d = random_direction(m, seed=0)
    xs, ls = landscape1d(m, (x, y), F.cross_entropy, step_size=0.5, direction=d, show_progress=False)
    want = _hand_landscape(m, xs, d, lambda mm: F.cross_entropy(mm(pixel_values=x).logits, y))
    torch.testing.assert_close(ls, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(landscape1d(m, (x, y), step_size=0.5, direction=d, show_progress=False)[1], ls)                # default loss
    assert torch.equal(landscape1d(m, ({'pixel_values': x}, y), step_size=0.5, direction=d, show_progress=False)[1], ls)   # x a dict
    assert snap.diff(m) == []
    ref = fourier_map(lambda t: m(t).logits, (x, y), max_freq=1, show_progress=False)
    assert torch.equal(fourier_map(m, (x, y), max_freq=1, show_progress=False).nan_to_num(-1), ref.nan_to_num(-1))
    assert torch.equal(fourier_map(m, (x, y), max_freq=1, output='logits', show_progress=False).nan_to_num(-1), ref.nan_to_num(-1))

def test_landscape1d_on_bert_dict_batches():
    m, batches = tiny.hf_bert(), tiny.text_batches()
    with torch.no_grad(): m.classifier.weight.mul_(100)                   # a random BERT's logits are near 0: make the loss tell inputs apart
    d = random_direction(m, seed=1)
    xs, ls = landscape1d(m, batches, step_size=0.5, direction=d, show_progress=False)
    def loss_at(mm):
        tot = sum(F.cross_entropy(mm(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits, b['labels']) * len(b['labels']) for b in batches)
        return tot / sum(len(b['labels']) for b in batches)
    torch.testing.assert_close(ls, _hand_landscape(m, xs, d, loss_at), rtol=1e-5, atol=1e-6)
    pairs = [({k: v for k, v in b.items() if k != 'labels'}, b['labels']) for b in batches]          # (x, y) with x a dict
    assert torch.equal(landscape1d(m, pairs, F.cross_entropy, step_size=0.5, direction=d, show_progress=False)[1], ls)
    with torch.no_grad():
        assert abs(dataset_loss(m, batches).item() - loss_at(m).item()) < 1e-6
        no_mask = dataset_loss(m, [({'input_ids': b['input_ids']}, b['labels']) for b in batches])
    assert abs(no_mask.item() - loss_at(m).item()) > 1e-3, 'the mask reaches the model'
    with pytest.raises(ValueError, match=r"loader \(batch 0\) is a dict with keys \['input_ids', 'attention_mask'\] and no 'labels'"):
        dataset_loss(m, [{k: v for k, v in b.items() if k != 'labels'} for b in batches])

def test_landscape1d_on_gpt2_token_ids():
    m = tiny.hf_gpt2()
    ids, y = torch.randint(0, 100, (4, 7), generator=torch.Generator().manual_seed(0)), torch.tensor([3, 5, 7, 9])
    last = lambda o: o.logits[:, -1]
    d = random_direction(m, seed=2)
    xs, ls = landscape1d(m, (ids, y), step_size=0.5, direction=d, output=last, show_progress=False)
    torch.testing.assert_close(ls, _hand_landscape(m, xs, d, lambda mm: F.cross_entropy(mm(ids).logits[:, -1], y)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"scores must be scores \(N, classes\), got shape \(4, 7, 100\).*output="):
        dataset_loss(m, (ids, y))
