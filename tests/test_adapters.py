"""netlens.adapters (nbs/00a_adapters.ipynb): the conventions every module reads. Its shared checks refuse bad input with an
error that names the argument, what it got and the fix; and the conventions (check_module, unwrap_model, to_model_input,
check_index, check_scores' fix/group, keeps_rng) hold at every entry point that uses them: each convention test failed while
a module kept its own copy of the convention (or none). Oracles: the same call on the plain model or input, the caller's RNG."""
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count
from netlens import attribution as A, landscape as L, similarity as S, trace as T, optvis as O, dream as D, style as ST
from netlens.flat import FlatModel
import re
import numpy as np
from netlens.adapters import check_batch, as_images, check_number, check_scores, check_module, to_model_input, model_output

MODEL = digits_cnn()
X, Y = [t[:4].clone() for t in digits_data('test')]
KW = dict(size=16, steps=1, seed=0, show_progress=False)

class Dropped(nn.Module):
    "The digits model behind a dropout layer, in train mode: every forward draws from torch's global generator"
    def __init__(self, m): super().__init__(); self.drop, self.m = nn.Dropout(0.5), m
    def forward(self, x): return self.m(self.drop(x))

def nan_scores(t): return MODEL(t) * float('nan')

class TokenNet(nn.Module):
    "Token ids (N, T) -> scores (N, 3), through an embedding"
    def __init__(self):
        super().__init__(); torch.manual_seed(0)
        self.emb, self.fc = nn.Embedding(20, 4), nn.Linear(4, 3)
    def forward(self, ids): return self.fc(self.emb(ids).mean(1))

# ---- the caller's RNG: a call that raises after drawing leaves it where it was (keeps_rng) ----
def _refused(call, err=Exception):
    before = torch.get_rng_state()
    with pytest.raises(err): call()
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG moved"

def test_smooth_grad_without_seed_restores_the_rng_when_it_raises():
    _refused(lambda: A.smooth_grad(nan_scores, X, Y, n_samples=2), ValueError)        # noise drawn, then NaN scores refused

def test_landscape_entry_points_restore_the_rng_when_they_raise():
    _refused(lambda: L.random_direction(MODEL, scale='bogus'), ValueError)       # drawn, then the option refused
    _refused(lambda: L.landscape1d(MODEL, (X, Y), lambda o, y: o.sum(1), step_size=1., show_progress=False), ValueError)  # not a scalar loss
    _refused(lambda: L.landscape2d(MODEL, (X, Y), lambda o, y: o.sum(1), step_size=1., show_progress=False), ValueError)
    m = Dropped(MODEL).train()
    snap = ModelSnapshot(m)
    _refused(lambda: L.dataset_loss(m, (X, Y), lambda o, y: o.sum(1)), ValueError)                 # dropout drew, then refused
    _refused(lambda: L.fourier_map(m, (X, Y), metric=lambda o, y: o.sum(1), max_freq=0, train=True, show_progress=False), ValueError)
    assert snap.diff(m) == []

def test_fourier_map_in_train_mode_leaves_batchnorm_statistics_alone():
    m = digits_cnn().train()          # BatchNorm in train mode normalises with each batch; looking must not move its statistics
    snap = ModelSnapshot(m)
    assert torch.isfinite(L.fourier_map(m, (X, Y), max_freq=1, train=True, show_progress=False)).any()
    assert snap.diff(m) == []

def test_log_forward_pass_restores_the_rng_when_it_raises():
    m = Dropped(MODEL).train()
    _refused(lambda: T.log_forward_pass(m, X, layers_to_save=[99999]), IndexError)   # the pass ran (and drew), then the key refused
    assert hook_count(m) == 0

# ---- the model: checked and unwrapped in one place ----
def test_nested_compiled_models_are_traced_uncompiled_with_a_warning():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    wrapped = nn.DataParallel(nn.DataParallel(torch.compile(net, backend='eager')))   # compiled two wrappers deep
    x = torch.randn(3, 8)
    with pytest.warns(UserWarning, match='uncompiled'): log = T.log_forward_pass(wrapped, x)
    assert torch.equal(log.output, net(x))
    assert T.validate_saved_activations(wrapped, x)

def test_non_modules_are_refused_by_name():
    with pytest.raises(TypeError, match='validate_saved_activations needs a torch.nn.Module as `model`, got function'):
        T.validate_saved_activations(lambda t: t, X)
    with pytest.raises(TypeError, match='dataset_loss needs a torch.nn.Module as `model`, got function'):
        L.dataset_loss(lambda t: t, (X, Y), F.cross_entropy)
    with pytest.raises(TypeError, match='vgg_layer_names needs a torch.nn.Module as `model`, got str'): ST.vgg_layer_names('vgg19')
    with pytest.raises(TypeError, match='model must be a torch.nn.Module or a function of x, got int'): L.fourier_map(3, (X, Y))
    with pytest.raises(TypeError, match='model must be a torch.nn.Module or a function of x, got int'): A.saliency(3, X, Y)

# ---- the input: floats to the model's device and dtype, token ids to its device, anything else refused (to_model_input) ----
def test_token_ids_reach_a_model_with_an_embedding_in_landscape_and_similarity():
    net, ids = TokenNet(), torch.randint(20, (6, 5), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(L.dataset_loss(net, (ids, y), F.cross_entropy), F.cross_entropy(net(ids), y))   # was refused
    assert torch.isfinite(L.landscape1d(net, (ids, y), F.cross_entropy, step_size=1., seed=0, show_progress=False)[1]).all()
    r = S.layer_similarity(net, net, ids, 'emb', 'fc')
    assert 0 < r <= 1
    assert S.compare_models(net, net, [ids], ['emb'], ['fc'], show_progress=False).matrix.shape == (1, 1)
    with pytest.raises(TypeError, match=r'loader \(batch 0, x\) must be floating point, got torch.int64'): L.fourier_map(net, (ids, y), show_progress=False)

def test_integer_images_are_refused_before_the_model_runs():
    u8, ids = (X * 255).round().byte(), (X * 255).long()
    for call in (lambda x: S.layer_similarity(MODEL, MODEL, x, 'conv2', 'conv3'),
                 lambda x: S.compare_models(MODEL, MODEL, [x], ['conv2'], ['conv3'], show_progress=False)):
        with pytest.raises(TypeError, match=r'must be floating point, got torch.uint8: images as integers\? use x.float\(\) / 255'): call(u8)
        with pytest.raises(TypeError, match=r'must be floating point, got torch.int64: convert it with x.float\(\)'): call(ids)
    with pytest.raises(ValueError, match='x is empty'): S.layer_similarity(MODEL, MODEL, X[:0], 'conv2', 'conv3')

# ---- indices: an integer in 0..n-1, the same words everywhere (check_index) ----
@pytest.mark.parametrize('k', [2.5, True, -1])
def test_objective_indices_are_checked(k):
    err = IndexError if k == -1 else TypeError
    with pytest.raises(err, match='channel'): O.render(MODEL, O.channel('conv2', k), **KW)    # 2.5: torch's own error; True: a silently wrong map
    with pytest.raises(err, match='class'): O.render(MODEL, O.class_logit(k), **KW)
    with pytest.raises(err, match='classes'): D.class_visualization(MODEL, classes=[k], **KW)
    with pytest.raises(err, match='\\bk\\b'): FlatModel(MODEL).channel('conv3', k)

def test_flat_model_channel_names_the_count():
    with pytest.raises(IndexError, match="k 64 is out of range: layer 'conv3' has 64 channels \\(0 to 63\\)"): FlatModel(MODEL).channel('conv3', 64)
    with pytest.raises(IndexError, match='k -1 is out of range'): FlatModel(MODEL).channel('conv3', -1)     # was a ValueError
    assert FlatModel(MODEL).channel('conv3', torch.tensor(5)).k == 5

# ---- scores: every module's words for a non-tensor output come from check_scores (fix=) ----
def test_dataset_loss_reads_the_output_convention():
    "A tuple's first element and a dict's logits are the scores; a dict without logits names the fix (output=)"
    class Pair(nn.Module):
        def __init__(self, m, kind): super().__init__(); self.m, self.kind = m, kind
        def forward(self, x): return (self.m(x), x) if self.kind == 'tuple' else {self.kind: self.m(x)}
    ref = L.dataset_loss(MODEL, (X, Y), F.cross_entropy)
    assert L.dataset_loss(Pair(MODEL, 'tuple'), (X, Y), F.cross_entropy) == ref
    assert L.dataset_loss(Pair(MODEL, 'logits'), (X, Y), F.cross_entropy) == ref
    assert L.dataset_loss(Pair(MODEL, 'scores'), (X, Y), F.cross_entropy, output='scores') == ref
    with pytest.raises(TypeError, match=r"no 'logits': choose the scores with output="):
        L.dataset_loss(Pair(MODEL, 'scores'), (X, Y), F.cross_entropy)

def fails(exc, contains): return pytest.raises(exc, match=re.escape(contains))

X8 = torch.rand(2, 3, 8, 8)

IMG = torch.rand(3, 8, 8)

SCORES = torch.randn(4, 10)

NET = nn.Sequential(nn.Linear(4, 3))

EMB = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))

IDS = torch.tensor([[1, 2], [3, 4]])

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: check_batch(X8.mul(255).byte()), TypeError, 'float'),
    (lambda: check_batch(X8[:0], 'x'), ValueError, 'empty'),
    (lambda: check_batch(torch.rand(5)), ValueError, 'x[None]'),
    (lambda: check_batch(np.zeros((2, 3)), 'image'), TypeError, 'image_to_tensor'),
    (lambda: check_batch(X8[0], 'image', ndim=4), ValueError, '4 dimensions'),
    (lambda: as_images(IMG * 255), ValueError, 'divide by 255'),
    (lambda: as_images(IMG, channels=1), ValueError, '3 channels, the model takes 1'),
])
def test_batches_and_images(call, exc, contains):
    with fails(exc, contains): call()

@pytest.mark.parametrize('call, exc, contains', [
    (lambda: check_number(-0.1, 'stdev', 0), ValueError, 'stdev must be a number >= 0, got -0.1'),
    (lambda: check_number(0, 'norm', 0, strict=True), ValueError, 'norm must be a positive number, got 0'),
    (lambda: check_number(1, 'octave_scale', 1, strict=True), ValueError, 'octave_scale must be a number > 1, got 1'),
    (lambda: check_scores({'logits': SCORES}), TypeError, "a dict with keys ['logits'], not a tensor of scores (N, classes): choose them with output="),
    (lambda: check_scores(SCORES[:, :, None]), ValueError, '(N, classes)'),
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
    (lambda: model_output({'logits': SCORES}, output='logit'), KeyError, "output='logit' selects nothing from the model's output, a dict with keys ['logits']"),
    (lambda: model_output('cat'), TypeError, "is a str, not a tensor: choose the scores with output="),
    (lambda: model_output(SCORES, output=1.5), TypeError, "output must be a key, an index or a function"),
])
def test_model_output(call, exc, contains):
    with fails(exc, contains): call()
