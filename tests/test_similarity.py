"""Similarity measures against float64 numpy implementations of the papers' formulas written here (not netlens' code
path), against torch_cka's minibatch CKA on the same batches, invariances as property tests, and degenerate data; bad input
gets an error that names it, with no hook left behind. compare_models and as_features on the models users bring (random-init
timm and Hugging Face models from small configs): features captured with plain forward hooks from `model(**batch)` and a
float64 minibatch CKA written here; maps permuted and pooled by hand."""
from copy import deepcopy
import warnings
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F, torchvision
from hypothesis import given, settings, strategies as st
from scipy.stats import spearmanr
import tiny_models as tiny
from netlens.adapters import feature_layout, Layout
from netlens.similarity import (linear_cka, kernel_cka, unbiased_cka, cca, svcca, pwcca, procrustes, angular_procrustes,
                                dcka, rsa, distance_correlation, mutual_knn, cknna, regression_r2, compare_models, _pair, as_features,
                                layer_similarity, rbf_gram, unbiased_hsic)
from netlens.data import digits_cnn, digits_data, digits_loader
from netlens.hooks import hook_count, ModelSnapshot

rng = np.random.default_rng(0)
X = rng.standard_normal((60, 12))
Y = np.tanh(X @ rng.standard_normal((12, 7))) + 0.3 * rng.standard_normal((60, 7))
Z = X[:, :5] + 0.1 * rng.standard_normal((60, 5))
T = lambda a: torch.from_numpy(a)

def np_center(a): return a - a.mean(0)
def np_hsic(K, L):
    n = len(K); H = np.eye(n) - 1 / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2

def ref_linear_cka(x, y):
    K, L = x @ x.T, y @ y.T
    return np_hsic(K, L) / np.sqrt(np_hsic(K, K) * np_hsic(L, L))

def ref_kernel_cka(x, y):
    def rbf(a):
        d = ((a[:, None] - a[None]) ** 2).sum(-1)
        return np.exp(-d / (2 * np.median(d)))
    K, L = rbf(x), rbf(y)
    return np_hsic(K, L) / np.sqrt(np_hsic(K, K) * np_hsic(L, L))

def ref_unbiased_hsic(K, L):
    "Song et al. 2012, eq. 5"
    n = len(K); K = K.copy(); L = L.copy(); np.fill_diagonal(K, 0); np.fill_diagonal(L, 0); one = np.ones(n)
    return (np.trace(K @ L) + one @ K @ one * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))

def ref_unbiased_cka(x, y):
    K, L = x @ x.T, y @ y.T
    return ref_unbiased_hsic(K, L) / np.sqrt(ref_unbiased_hsic(K, K) * ref_unbiased_hsic(L, L))

def ref_cca(x, y):
    "Canonical correlations as the singular values of Σxx^-1/2 Σxy Σyy^-1/2"
    x, y = np_center(x), np_center(y)
    def inv_sqrt(S):
        w, V = np.linalg.eigh(S); return V @ np.diag(w ** -0.5) @ V.T
    M = inv_sqrt(x.T @ x) @ x.T @ y @ inv_sqrt(y.T @ y)
    return np.linalg.svd(M, compute_uv=False)

def ref_svcca(x, y, keep=0.99):
    "Raghu et al. 2017 / Google's svcca: top singular directions explaining `keep` of the variance, then mean CCA"
    def reduce(a):
        a = np_center(a); U, s, Vt = np.linalg.svd(a, full_matrices=False)
        k = np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep) + 1
        return a @ Vt[:k].T
    return ref_cca(reduce(x), reduce(y)).mean()

def ref_pwcca(x, y):
    "Morcos et al. 2018 with Google's weighting: α_i = Σ_j |<h_i, x_j>| for orthonormalised canonical variates h_i of x"
    xc, yc = np_center(x), np_center(y)
    def inv_sqrt(S):
        w, V = np.linalg.eigh(S); return V @ np.diag(w ** -0.5) @ V.T
    Sxx, Syy = inv_sqrt(xc.T @ xc), inv_sqrt(yc.T @ yc)
    U, rho, _ = np.linalg.svd(Sxx @ xc.T @ yc @ Syy, full_matrices=False)
    H = xc @ Sxx @ U                       # canonical variates of x (unit norm, orthogonal)
    P, _ = np.linalg.qr(H)
    P = P * np.sign(np.sum(P * H, 0))
    alpha = np.abs(P.T @ xc).sum(1)
    return (alpha * rho).sum() / alpha.sum()

def ref_procrustes(x, y):
    "min over orthogonal R of ||xR - y||_F^2 for centred unit-norm x, y (scipy's solver), zero-padding the narrower"
    from scipy.linalg import orthogonal_procrustes
    x, y = np_center(x), np_center(y); x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    p = max(x.shape[1], y.shape[1])
    x = np.pad(x, ((0, 0), (0, p - x.shape[1]))); y = np.pad(y, ((0, 0), (0, p - y.shape[1])))
    R, _ = orthogonal_procrustes(x, y)
    return np.linalg.norm(x @ R - y) ** 2

def ref_dcor(x, y):
    def dc(a):
        d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1)); return d - d.mean(0) - d.mean(1)[:, None] + d.mean()
    A, B = dc(x), dc(y)
    return np.sqrt((A * B).mean() / np.sqrt((A * A).mean() * (B * B).mean()))

def ref_dcka(x, y, z):
    "Cui et al. 2022: regress the input's centred gram out of each centred gram (least squares on all entries), then CKA"
    n = len(x); H = np.eye(n) - 1 / n
    Kz = H @ z @ z.T @ H
    def resid(a):
        K = H @ a @ a.T @ H
        beta, *_ = np.linalg.lstsq(Kz.reshape(-1, 1), K.reshape(-1), rcond=None)
        return K - beta[0] * Kz
    K, L = resid(x), resid(y)
    return (K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum())

def ref_rsa(x, y):
    iu = np.triu_indices(len(x), 1)
    return spearmanr((1 - np.corrcoef(x))[iu], (1 - np.corrcoef(y))[iu])[0]

def ref_mutual_knn(x, y, k):
    def nn_sets(a):
        S = a @ a.T; np.fill_diagonal(S, -np.inf); return [set(np.argsort(-row)[:k]) for row in S]
    return np.mean([len(a & b) / k for a, b in zip(nn_sets(x), nn_sets(y))])

def ref_r2(x, y):
    from sklearn.linear_model import LinearRegression
    pred = LinearRegression().fit(x, y).predict(x)
    return 1 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()

@pytest.mark.parametrize('ours,ref', [
    (linear_cka, ref_linear_cka), (kernel_cka, ref_kernel_cka), (unbiased_cka, ref_unbiased_cka),
    (svcca, ref_svcca), (pwcca, ref_pwcca), (procrustes, ref_procrustes), (distance_correlation, ref_dcor),
    (rsa, ref_rsa), (regression_r2, ref_r2), (lambda a, b: mutual_knn(a, b, 5), lambda a, b: ref_mutual_knn(a, b, 5))])
def test_measure_equals_float64_reference(ours, ref):
    assert abs(float(ours(T(X), T(Y))) - ref(X, Y)) <= 1e-6 * max(1, abs(ref(X, Y)))

def test_cca_and_dcka_and_angle():
    np.testing.assert_allclose(cca(T(X), T(Y)).numpy(), ref_cca(X, Y)[:7], rtol=1e-7, atol=1e-9)
    assert abs(float(dcka(T(X), T(Y), T(Z))) - ref_dcka(X, Y, Z)) < 1e-8
    assert abs(float(angular_procrustes(T(X), T(Y))) - np.arccos(1 - ref_procrustes(X, Y) / 2)) < 1e-7

def test_cknna_counts_only_mutual_neighbours():
    "With k = n - 1 every pair is a mutual neighbour and CKNNA is unbiased CKA of the raw (uncentred) linear grams"
    x, y = T(X), T(Y)
    K, L = (x @ x.T).numpy(), (y @ y.T).numpy()
    full = ref_unbiased_hsic(K, L) / np.sqrt(ref_unbiased_hsic(K, K) * ref_unbiased_hsic(L, L))
    assert abs(float(cknna(x, y, k=59)) - full) < 1e-8
    assert abs(float(cknna(x, y, k=5))) <= 1.0

finite = st.floats(0.2, 5.0)

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=finite, shift=st.floats(-3, 3))
def test_cka_invariances(seed, scale, shift):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64); y = torch.randn(40, 9, generator=g, dtype=torch.float64) + x @ torch.randn(6, 9, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    A = torch.randn(6, 6, generator=g, dtype=torch.float64) + 3 * torch.eye(6, dtype=torch.float64)
    for f in (linear_cka, unbiased_cka, kernel_cka):
        base = f(x, y)
        torch.testing.assert_close(f(scale * x @ Q + shift, y), base, rtol=1e-9, atol=1e-9)   # orthogonal, isotropic scale, shift
        torch.testing.assert_close(f(y, x), base, rtol=1e-9, atol=1e-9)                        # symmetric
        torch.testing.assert_close(f(x, x), torch.tensor(1., dtype=torch.float64))
    torch.testing.assert_close(cca(x @ A, y), cca(x, y), rtol=1e-7, atol=1e-9)                 # CCA: any invertible map
    assert abs(float(linear_cka(x @ torch.diag(torch.tensor([20., 1, 1, 1, 1, 1], dtype=torch.float64)), y) - linear_cka(x, y))) > 1e-6
    assert float(procrustes(x, 2 * x @ Q)) < 1e-10

def test_degenerate_data_is_an_error_or_a_value():
    x = torch.randn(30, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match='no variance'): linear_cka(torch.ones(30, 4), x)
    with pytest.raises(ValueError, match='no variance'): cca(torch.ones(30, 4), x)
    with pytest.raises(ValueError, match='at least 4'): unbiased_cka(x[:3], x[:3])
    rank_def = torch.cat([x[:, :2], x[:, :2] * 2], 1)
    assert torch.isfinite(cca(rank_def, x)).all() and len(cca(rank_def, x)) == 2
    wide = torch.randn(10, 50, dtype=torch.float64)                      # n < p
    for f in (linear_cka, unbiased_cka, svcca, pwcca, procrustes):
        assert torch.isfinite(f(wide, torch.randn(10, 40, dtype=torch.float64))), f.__name__
    half = torch.cat([x[:, :2], torch.full((30, 3), 7.)], 1)              # constant features beside varying ones
    assert torch.isfinite(linear_cka(half, x)) and torch.isfinite(pwcca(half, x))

def test_compare_models_equals_torch_cka_and_float64_reference():
    "torch_cka's minibatch CKA on the same batches; both against a float64 reference. torch_cka leaves its hooks and switches to eval: it gets copies"
    from torch_cka import CKA
    torch.manual_seed(0)
    m1, m2 = digits_cnn(), digits_cnn(pretrained=False)
    layers = ['stem', 'conv2', 'res', 'conv3', 'head']
    loader = digits_loader('test', batch_size=60)
    ours = compare_models(m1, m2, loader, layers, layers, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        c = CKA(deepcopy(m1), deepcopy(m2), model1_layers=layers, model2_layers=layers)
        c.compare(loader)
    theirs = c.export()['CKA'].double()
    # reference: float64 per batch, Song's formula
    acts1, acts2 = [], []
    from netlens.flat import FlatModel
    with torch.no_grad():
        for xb, _ in loader:
            with FlatModel(m1).record(layers) as r1: m1(xb)
            with FlatModel(m2).record(layers) as r2: m2(xb)
            acts1.append([r1[k].flatten(1).double().numpy() for k in layers]); acts2.append([r2[k].flatten(1).double().numpy() for k in layers])
    ref = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            kl = sum(ref_unbiased_hsic(a[i] @ a[i].T, b[j] @ b[j].T) for a, b in zip(acts1, acts2))
            kk = sum(ref_unbiased_hsic(a[i] @ a[i].T, a[i] @ a[i].T) for a in acts1)
            ll = sum(ref_unbiased_hsic(b[j] @ b[j].T, b[j] @ b[j].T) for b in acts2)
            ref[i, j] = kl / np.sqrt(kk * ll)
    np.testing.assert_allclose(ours.matrix.numpy(), ref, rtol=0, atol=1e-5)
    err_theirs, err_ours = np.abs(theirs.numpy() - ref), np.abs(ours.matrix.numpy() - ref)
    print(f"max |error| vs the float64 reference: torch_cka {err_theirs.max():.3g} (column 'head' {err_theirs[:, 4].max():.3g}), netlens {err_ours.max():.3g}")
    # torch_cka evaluates the unbiased HSIC on uncentred float32 grams: where features have a large mean (the logits)
    # its terms cancel catastrophically; elsewhere it agrees with the reference
    np.testing.assert_allclose(theirs.numpy()[:, :4], ref[:, :4], rtol=0, atol=1e-3)
    assert err_theirs.max() > 100 * err_ours.max()

class _Offset(nn.Module):
    "Features far from 0: a tiny input-dependent part on a large offset (`shift`), or huge values (`scale`); layer 'a' and 'b' two views"
    def __init__(self, shift, scale):
        super().__init__(); self.shift, self.scale = shift, scale
        self.a, self.b = nn.Identity(), nn.Identity()
    def forward(self, x):
        return self.a(self.shift + self.scale * x), self.b(self.shift + self.scale * torch.tanh(x @ torch.ones(x.shape[1], 5, dtype=x.dtype)))

@pytest.mark.parametrize('shift,scale', [(1., 1e-5), (0., 1e20)])
def test_float32_features_far_from_zero_give_float64_cka(shift, scale):
    "Centring in float32 loses the digits of a small variation on a large offset (1e-3 off); float32 grams of huge values overflow (NaN). Both measures equal float64 on the same float32 features"
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 40, generator=g) for _ in range(3)]
    m = _Offset(shift, scale)
    feats = [[t.double().numpy() for t in m(x)] for x in batches]          # the float32 features the layers give, in float64
    kl = sum(ref_unbiased_hsic(np_center(a) @ np_center(a).T, np_center(b) @ np_center(b).T) for a, b in feats)
    kk = sum(ref_unbiased_hsic(np_center(a) @ np_center(a).T, np_center(a) @ np_center(a).T) for a, _ in feats)
    ll = sum(ref_unbiased_hsic(np_center(b) @ np_center(b).T, np_center(b) @ np_center(b).T) for _, b in feats)
    ours = compare_models(m, m, batches, ['a'], ['b'], show_progress=False).matrix[0, 0].item()
    assert abs(ours - kl / np.sqrt(kk * ll)) < 1e-6, (ours, kl / np.sqrt(kk * ll))
    A, B = (np.concatenate(f) for f in zip(*feats))
    lin = compare_models(m, m, batches, ['a'], ['b'], measure='linear_cka', show_progress=False).matrix[0, 0].item()
    assert abs(lin - ref_linear_cka(np_center(A), np_center(B))) < 1e-6, (lin, ref_linear_cka(np_center(A), np_center(B)))

def test_resnet18_vs_resnet34_blocks_and_vit_tokens():
    from conftest import perturbed
    r18, r34 = perturbed(torchvision.models.resnet18(num_classes=10)), perturbed(torchvision.models.resnet34(num_classes=10), seed=1)
    data = [(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    snap = ModelSnapshot(r18)
    res = compare_models(r18, r34, data, ['layer1', 'layer2', 'layer3', 'layer4', 'fc'], ['layer1', 'layer2', 'layer3', 'layer4', 'fc'], show_progress=False)
    assert res.matrix.shape == (5, 5) and torch.isfinite(res.matrix).all()
    assert snap.diff(r18) == [] and hook_count(r34) == 0
    vit = torchvision.models.vit_b_16(image_size=32).eval()
    vres = compare_models(vit, r18, data, ['encoder.layers.encoder_layer_0', 'encoder.ln'], ['layer4'], show_progress=False)
    assert torch.isfinite(vres.matrix).all()
    vres2 = compare_models(vit, vit, data, ['encoder.ln'], ['encoder.ln'], measure='linear_cka', reduce='mean', show_progress=False)
    assert abs(vres2['encoder.ln', 'encoder.ln'] - 1) < 1e-5

def test_models_on_different_devices_and_export(tmp_path):
    if torch.cuda.is_available():
        m2 = digits_cnn(device='cuda')
    else:
        m2 = digits_cnn()
    res = compare_models(digits_cnn(), m2, digits_loader('test', batch_size=90), ['conv3'], ['conv3'], show_progress=False)
    assert abs(res['conv3', 'conv3'] - 1) < 1e-5
    import json
    d = res.export(tmp_path / 'r.json')
    assert json.loads((tmp_path / 'r.json').read_text()) == d


# ---- bad input, every measure: a correct result or an error naming the argument, never a plausible number ----
from netlens.similarity import MEASURES, layer_similarity, SimilarityResult
from netlens.flat import FlatModel

def _xy(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, torch.tanh(x @ torch.randn(5, 4, generator=g)) + 0.3 * torch.randn(n, 4, generator=g)

@pytest.mark.parametrize('name', list(MEASURES))
def test_measure_dtypes_and_layout_give_the_float_result(name):
    f, (x, y) = MEASURES[name], _xy()
    xi = (3 * x).round().long()
    assert f(xi, y).dtype == torch.float32 and f(xi, y) == f(xi.float(), y)                 # integers: promoted, not a torch error
    xh = x.half()
    assert f(xh, y).dtype == torch.float32 and f(xh, y) == f(xh.float(), y)                 # float16: computed in float32
    r64 = f(x.double(), y.double())
    assert r64.dtype == torch.float64
    torch.testing.assert_close(r64.float(), f(x, y), rtol=1e-4, atol=1e-5)
    xnc = torch.randn(5, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64).T   # non-contiguous (float64: layout, not rounding)
    torch.testing.assert_close(f(xnc, y.double()), f(xnc.contiguous(), y.double()), rtol=1e-10, atol=1e-12)

@pytest.mark.parametrize('name', list(MEASURES))
def test_measure_degenerate_input_is_named(name):
    f, (x, y) = MEASURES[name], _xy()
    for side in (0, 1):
        arg = 'XY'[side]
        bad = lambda t: (t, y) if side == 0 else (x, t)
        for v in (float('nan'), float('inf'), -float('inf')):
            t = (x if side == 0 else y).clone(); t[7, 1] = v
            with pytest.raises(ValueError, match=rf'{arg} holds NaN or infinite values \(at examples \[7\]\)'): f(*bad(t))
        with pytest.raises(ValueError, match=rf'{arg} must be \(n, \.\.\.\)'): f(*bad(torch.randn(30)))
        const = torch.full((30, 3), 2.)
        if name == 'regression_r2' and side == 0: assert f(const, y) == 0          # a constant predictor explains nothing: R² = 0 exactly
        else:
            with pytest.raises(ValueError, match=f'{arg} has no variance'): f(*bad(const))
    for n in (0, 1):
        with pytest.raises(ValueError, match='need at least'): f(x[:n], y[:n])
    with pytest.raises(ValueError, match='same examples'): f(x, y[:20])
    with pytest.raises(TypeError, match='X must be a torch.Tensor, got ndarray'): f(x.numpy(), y)

def test_rsa_ties_take_average_ranks_as_scipy():
    "Integer-valued features give tied RDM entries: Spearman's correlation ranks ties by their average (scipy)"
    g = np.random.default_rng(1)
    pats = g.integers(0, 3, (2, 4, 6)).astype(float); pats[..., 0] = 5  # 4 patterns each, none constant across its features
    x, y = pats[0][g.integers(0, 4, 20)], pats[1][g.integers(0, 4, 20)]   # repeated rows: many tied RDM entries
    iu = np.triu_indices(20, 1)
    rdm = lambda a: (1 - torch.corrcoef(T(a))).numpy()[iu]               # the RDM rsa ranks (ties exact in its own rounding)
    assert len(np.unique(rdm(x))) < len(iu[0]) / 2, 'the fixture has many ties'
    assert abs(float(rsa(T(x), T(y))) - spearmanr(rdm(x), rdm(y))[0]) < 1e-12

def test_mutual_knn_and_cknna_k_is_checked():
    x, y = _xy()
    for f in (mutual_knn, cknna):
        with pytest.raises(ValueError, match='k must be below the number of examples, 30'): f(x, y, k=30)
        with pytest.raises(ValueError, match='k must be an integer >= 1'): f(x, y, k=0)
        with pytest.raises(ValueError, match='k must be an integer >= 1'): f(x, y, k=2.5)

# ---- compare_models over any iterable of batches, layer calls and lengths ----
@pytest.fixture(scope='module')
def digits_batches():
    from netlens.data import digits_data
    x = digits_data('test')[0]
    return [(x[i:i + 40],) for i in range(0, 240, 40)]

def test_compare_models_generator_map_and_iterable_dataset_equal_the_list(digits_batches):
    from torch.utils.data import DataLoader, IterableDataset
    m, layers = digits_cnn(), ['pool1', 'res.relu:1', 'res.relu:2', 'conv3', 'head']
    class Stream(IterableDataset):
        def __iter__(self): return (xb for (b,) in digits_batches for xb in b)
    for measure, reduce in (('cka', 'flatten'), ('linear_cka', 'mean')):
        ref = compare_models(m, m, digits_batches, layers, layers, measure=measure, reduce=reduce, show_progress=False).matrix
        for it in ((b for b in digits_batches), map(tuple, digits_batches), DataLoader(Stream(), batch_size=40)):
            got = compare_models(m, m, it, layers, layers, measure=measure, reduce=reduce, show_progress=False).matrix
            assert torch.equal(got, ref), measure
    other = digits_cnn(pretrained=False)
    gen_two = compare_models(m, other, (b for b in digits_batches), layers, ['conv3'], show_progress=True).matrix   # default progress on
    assert torch.equal(gen_two, compare_models(m, other, digits_batches, layers, ['conv3'], show_progress=False).matrix)

def test_compare_models_loaders_of_different_lengths_are_an_error(digits_batches):
    m = digits_cnn()
    with pytest.raises(ValueError, match='loader has 6 batches and loader2 4'):
        compare_models(m, m, digits_batches, ['conv3'], ['conv3'], loader2=digits_batches[:4], show_progress=False)
    with pytest.raises(ValueError, match='loader ended after 4 batches while loader2 went on'):
        compare_models(m, m, iter(digits_batches[:4]), ['conv3'], ['conv3'], loader2=iter(digits_batches), show_progress=False)
    same = compare_models(m, m, digits_batches, ['conv3'], ['conv3'], loader2=[(b.flip(-1),) for (b,) in digits_batches], show_progress=False)
    assert same.n_examples == 240

def test_layer_call_index_is_honoured_and_ambiguity_refused(digits_batches):
    m, x = digits_cnn(), digits_batches[0][0]
    with torch.no_grad(), FlatModel(m).record('res.relu') as r: m(x)
    a, b = r['res.relu:1'].flatten(1).double().numpy(), r['res.relu:2'].flatten(1).double().numpy()
    v = layer_similarity(m, m, x, 'res.relu:1', 'res.relu:2')
    assert abs(float(v) - ref_linear_cka(np_center(a), np_center(b))) < 1e-5 and v < 0.99
    res = compare_models(m, m, [x], ['res.relu:2'], ['res.relu:1', 'conv3'], measure='linear_cka', show_progress=False)
    assert res.layers1 == ['res.relu:2'] and res.layers2 == ['res.relu:1', 'conv3']
    assert abs(res['res.relu:2', 'res.relu:1'] - float(v)) < 1e-5
    with pytest.raises(ValueError, match=r'layer1 names 2 layers \(stem, conv3\)'): layer_similarity(m, m, x, ['stem', 'conv3'], 'conv3')
    with pytest.raises(ValueError, match=r'layer2 names 2 layers \(stem.2, res.relu\)'): layer_similarity(m, m, x, 'conv3', 'relu')
    with pytest.raises(KeyError, match='ran 2 times'): layer_similarity(m, m, x, 'res.relu', 'conv3')
    with pytest.raises(KeyError, match="no call 3"): layer_similarity(m, m, x, 'res.relu:3', 'conv3')
    # measure='cka' is the estimator compare_models streams; on one batch, unbiased_cka
    c = layer_similarity(m, m, x, 'res.relu:1', 'res.relu:2', measure='cka')
    assert abs(float(c) - ref_unbiased_cka(np_center(a), np_center(b))) < 1e-5
    assert abs(compare_models(m, m, [x], ['res.relu:1'], ['res.relu:2'], show_progress=False).matrix.item() - float(c)) < 1e-5
    assert hook_count(m) == 0

def test_similarity_result_unknown_layer_names_close_matches():
    res = SimilarityResult(torch.eye(2), ['stem', 'conv3'], ['conv2', 'head'])
    with pytest.raises(KeyError, match="unknown layer of model1 \\(rows\\) 'stm'; closest: 'stem'"): res['stm', 'head']
    with pytest.raises(KeyError, match="closest: 'head'"): res['stem', 'haed']
    with pytest.raises(TypeError, match='pair of layer names'): res['stem']
    assert res['conv3', 'head'] == 1.

def test_compare_models_train_mode_dtypes_and_bad_batches(digits_batches):
    m = digits_cnn()
    ref = compare_models(m, m, digits_batches, ['conv2', 'conv3'], ['conv3'], show_progress=False).matrix
    m.train(); m.res.bn1.eval()
    snap = ModelSnapshot(m)
    torch.testing.assert_close(compare_models(m, m, digits_batches, ['conv2', 'conv3'], ['conv3'], show_progress=False).matrix, ref, rtol=0, atol=1e-12)
    assert snap.diff(m) == []
    m.eval()
    assert torch.equal(compare_models(m, m, [(b.double(),) for (b,) in digits_batches], ['conv2', 'conv3'], ['conv3'], show_progress=False).matrix, ref)
    nan = digits_batches[0][0].clone(); nan[5, 0, 3, 3] = float('nan')
    with pytest.raises(ValueError, match=r'a batch of loader holds NaN or infinite values \(at examples \[5\]\)'):
        compare_models(m, m, [nan], ['conv3'], ['conv3'], show_progress=False)
    with pytest.raises(ValueError, match='different numbers of rows'):
        compare_models(m, m, digits_batches, ['stem'], ['conv3'], reduce='positions', show_progress=False)
    with pytest.raises(ValueError, match='must return a scalar'):
        compare_models(m, m, digits_batches, ['conv3'], ['conv3'], measure=lambda a, b: a.mean(0), show_progress=False)

def test_first_dimension_must_be_the_batch():
    "An unbatched image (conv2d accepts (C, H, W)) or a sequence-first layer would make channels or tokens the examples"
    m, x = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3)), torch.rand(1, 32, 32)
    with pytest.raises(ValueError, match=r"layer1: layer '2' outputs shape \(8, 28, 28\) for a batch of 1: its first dimension is not the examples"): layer_similarity(m, m, x, '2', '0')
    class SeqFirst(nn.Module):                                       # as OpenAI's CLIP: (N, T, D) in, (T, N, D) inside
        def __init__(self):
            super().__init__(); self.block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=False)
        def forward(self, x): return self.block(x.permute(1, 0, 2)).permute(1, 0, 2)
    sf = SeqFirst().eval()
    with pytest.raises(ValueError, match=r"model 1: layer 'block.linear1' outputs shape \(10, 6, 16\) for a batch of 6: its first dimension is not the examples.*sequence-first"):
        compare_models(sf, sf, [torch.randn(6, 10, 8)], ['block.linear1'], ['block'], measure='linear_cka', show_progress=False)

# ---- errors that name the bad argument (features, kernels, k, compare_models, layer_similarity); no hook left behind ----
@pytest.fixture(scope='module')
def XY():
    torch.manual_seed(0)
    X = torch.randn(50, 8, dtype=torch.float64)
    return X, torch.tanh(X @ torch.randn(8, 5, dtype=torch.float64))

@pytest.fixture(scope='module')
def model(): return digits_cnn()

def test_features_errors():
    a = torch.randn(6, 4, 5, 5)
    with pytest.raises(KeyError, match="closest: 'flatten'"): as_features(a, 'flaten')
    with pytest.raises(ValueError, match='same examples'): _pair(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match='Y holds NaN or infinite values'): _pair(torch.randn(5, 3), torch.full((5, 2), float('nan')))
    with pytest.raises(ValueError, match=r"Y must be \(n, \.\.\.\).*Y\[:, None\]"): _pair(torch.randn(5, 3), torch.randn(5))
    with pytest.raises(ValueError, match='size must be an integer >= 1'): as_features(a, 'avgpool', 0)
    with pytest.raises(TypeError, match='X must be a torch.Tensor, got ndarray'): _pair(np.ones((5, 3)), torch.randn(5, 3))
    with pytest.raises(ValueError, match='at least 2 examples, got 1'): _pair(torch.randn(1, 3), torch.randn(1, 3))

def test_kernel_errors_name_the_side_and_the_bandwidth(XY):
    "The error names the side without variance (kernel_cka said 'X' for a constant Y); a bad bandwidth is not 'no variance'"
    X, Y = XY
    with pytest.raises(ValueError, match='^Y has no variance'): kernel_cka(X[:10], torch.ones(10, 3))
    with pytest.raises(ValueError, match='sigma must be positive'): kernel_cka(X, Y, sigma=0)
    with pytest.raises(ValueError, match='median distance .* is 0.*sigma='): rbf_gram(torch.cat([torch.zeros(8, 2), torch.ones(2, 2)]))

@pytest.mark.parametrize('f', [mutual_knn, cknna, rsa])
def test_degenerate_input_is_refused(XY, f):
    X, Y = XY
    Xn = X.clone(); Xn[3, 1] = float('nan')
    with pytest.raises(ValueError, match=r'X holds NaN or infinite values \(at examples \[3\]\)'): f(Xn, Y)
    with pytest.raises(ValueError, match='X holds NaN or infinite'): f(X.clone().index_fill_(0, torch.tensor([0]), float('inf')), Y)
    with pytest.raises(ValueError, match='X has no variance'): f(torch.ones(50, 5), Y)
    with pytest.raises(ValueError, match='Y has no variance'): f(X, torch.full((50, 3), 2.))

def test_k_outside_its_range(XY):
    X, Y = XY
    with pytest.raises(ValueError, match='k must be below the number of examples, 50'): mutual_knn(X, Y, k=50)
    with pytest.raises(ValueError, match='k must be an integer >= 1'): cknna(X, Y, k=0)

def test_compare_models_errors(model):
    loader = digits_loader('test', batch_size=64)
    snap = ModelSnapshot(model)
    with pytest.raises(KeyError, match="closest: 'cka'|closest: 'linear_cka'"): compare_models(model, model, loader, ['conv3'], measure='ckaa', show_progress=False)
    with pytest.raises(TypeError, match=r"dict with keys \['a'\], and DigitsCNN's forward does not take them.*input_key="): compare_models(model, model, [{'a': x} for x, _ in loader], ['conv3'], show_progress=False)
    assert hook_count(model) == 0 and snap.diff(model) == []

def test_loaders_of_different_lengths_and_unknown_layers(model):
    "Two loaders of different lengths are an error, also when neither has a length; so is a result indexed by a layer it does not hold"
    xt_ = digits_data('test')[0]
    parts = [(xt_[i:i + 60],) for i in range(0, 360, 60)]
    with pytest.raises(ValueError, match='loader has 6 batches and loader2 5'): compare_models(model, model, parts, ['conv3'], loader2=parts[:5], show_progress=False)
    with pytest.raises(ValueError, match='loader2 ended after 5 batches while loader went on'): compare_models(model, model, iter(parts), ['conv3'], loader2=iter(parts[:5]), show_progress=False)
    ref = compare_models(model, model, parts, ['stem', 'conv2', 'res', 'conv3', 'head'], ['res.relu:2', 'conv3'], show_progress=False)
    with pytest.raises(KeyError, match="closest: 'conv3'"): ref['stem', 'conv']
    assert hook_count(model) == 0

def test_layer_similarity_errors(model):
    xt = digits_data('test')[0][:100]
    with pytest.raises(ValueError, match='layer2 names 5 layers'): layer_similarity(model, model, xt, 'conv3', nn.Conv2d)
    with pytest.raises(KeyError, match="ran 2 times: ask for 'res.relu:1', 'res.relu:2'"): layer_similarity(model, model, xt, 'res.relu', 'conv3')
    with pytest.raises(KeyError, match="closest: 'conv3'"): layer_similarity(model, model, xt, 'conv33', 'conv3')
    with pytest.raises(ValueError, match=r'x holds NaN or infinite values \(at examples \[0\]\)'): layer_similarity(model, model, xt.clone().index_fill_(0, torch.tensor([0]), float('nan')), 'conv3', 'conv3')
    with pytest.raises(ValueError, match='need at least 2 examples, got 1'): layer_similarity(model, model, xt[:1], 'conv3', 'conv2')
    with pytest.raises(TypeError, match='x2 must be a torch.Tensor'): layer_similarity(model, model, xt, 'conv3', 'conv3', x2=xt.numpy())
    assert hook_count(model) == 0

# ---- the models users bring: random-init timm and Hugging Face models ----
bert, hf_vit, swin = tiny.hf_bert, tiny.hf_vit, tiny.timm_swin

def hooked_features(model, names, batch):
    "Each named module's output from `model(**batch)`, captured with plain forward hooks, flattened, in float64"
    acts, hs = {}, []
    for n in names: hs.append(model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.detach().flatten(1).double())))
    try:
        with torch.no_grad(): model(**batch)
    finally:
        for h in hs: h.remove()
    return acts

def minibatch_cka64(feats, layers1, layers2):
    "Nguyen et al.'s minibatch CKA in float64: sums of unbiased HSICs over batches, pair by pair"
    out = torch.zeros(len(layers1), len(layers2), dtype=torch.float64)
    gram = lambda f: (f - f.mean(0)) @ (f - f.mean(0)).T
    for i, a in enumerate(layers1):
        for j, b in enumerate(layers2):
            kl = sum(unbiased_hsic(gram(d[a]), gram(d[b])) for d in feats)
            kk = sum(unbiased_hsic(gram(d[a]), gram(d[a])) for d in feats)
            ll = sum(unbiased_hsic(gram(d[b]), gram(d[b])) for d in feats)
            out[i, j] = kl / (kk * ll).sqrt()
    return out

LAYERS = ['bert.embeddings', 'bert.encoder.layer.0.output', 'bert.encoder.layer.1.output', 'bert.pooler', 'classifier']

def test_bert_padded_batches_pass_the_mask():
    m, batches = bert(), tiny.text_batches()
    snap = ModelSnapshot(m)
    res = compare_models(m, m, batches, LAYERS, LAYERS, show_progress=False)
    inputs = [{k: v for k, v in b.items() if k != 'labels'} for b in batches]
    ref = minibatch_cka64([hooked_features(m, LAYERS, b) for b in inputs], LAYERS, LAYERS)
    torch.testing.assert_close(res.matrix, ref, rtol=1e-5, atol=1e-5)
    assert res.n_examples == 14 and hook_count(m) == 0 and snap.diff(m) == []
    # the mask matters: without it (inputs=['input_ids']) the padding counts as words, as in an unpadded loader of the same ids
    no_mask = compare_models(m, m, batches, LAYERS, LAYERS, inputs=['input_ids'], show_progress=False).matrix
    assert (no_mask - res.matrix).abs().max() > 1e-3
    ones = [{**b, 'attention_mask': torch.ones_like(b['attention_mask'])} for b in batches]
    torch.testing.assert_close(compare_models(m, m, ones, LAYERS, LAYERS, show_progress=False).matrix, no_mask, rtol=1e-6, atol=1e-6)
    # input_key keeps its meaning: that entry alone, positionally
    torch.testing.assert_close(compare_models(m, m, batches, LAYERS, LAYERS, input_key='input_ids', show_progress=False).matrix, no_mask, rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match=r"inputs= names \['token_type'\]"): compare_models(m, m, batches, LAYERS, inputs=['token_type'], show_progress=False)
    with pytest.raises(ValueError, match='not both'): compare_models(m, m, batches, LAYERS, inputs=['input_ids'], input_key='input_ids', show_progress=False)

def test_bert_other_measures_and_layer_similarity_take_dicts():
    m, batches = bert(), tiny.text_batches(n=(14,))
    x = {k: v for k, v in batches[0].items() if k != 'labels'}
    f = hooked_features(m, ['bert.encoder.layer.1.output', 'classifier'], x)
    want = unbiased_cka(f['bert.encoder.layer.1.output'], f['classifier']).item()
    assert abs(compare_models(m, m, batches, ['bert.encoder.layer.1.output'], ['classifier'], show_progress=False).matrix.item() - want) < 1e-5
    lin = compare_models(m, m, batches, ['bert.encoder.layer.1.output'], ['classifier'], measure='linear_cka', show_progress=False).matrix.item()
    assert abs(lin - linear_cka(f['bert.encoder.layer.1.output'], f['classifier']).item()) < 1e-5
    assert abs(layer_similarity(m, m, x, 'bert.encoder.layer.1.output', 'classifier').item() - lin) < 1e-5

def test_position_embeddings_are_refused_by_name():
    m = bert()
    with pytest.raises(ValueError, match=r"model 1: layer 'bert.embeddings.position_embeddings' outputs shape \(1, 9, 32\) for a batch of 8: its first dimension is not the examples"):
        compare_models(m, m, tiny.text_batches(), ['bert.embeddings.position_embeddings'], ['classifier'], show_progress=False)
    gpt2 = tiny.hf_gpt2()
    with pytest.raises(ValueError, match=r"layer 'transformer.wpe' outputs shape \(1, 9, 32\) for a batch of 8"):
        compare_models(gpt2, gpt2, [{k: v for k, v in b.items() if k != 'labels'} for b in tiny.text_batches()], show_progress=False)   # every leaf layer that ran
    assert hook_count(gpt2) == 0

def test_swin_window_attention_is_refused_by_name():
    m, x = swin(), torch.rand(4, 3, 32, 32)
    with pytest.raises(ValueError, match=r"model 1: layer 'layers.0.blocks.0.attn' outputs shape \(64, 4, 24\) for a batch of 4: its first dimension is not the examples"):
        compare_models(m, m, [x], ['layers.0.blocks.0.attn'], ['layers.3'], show_progress=False)
    with pytest.raises(ValueError, match=r"layer 'layers.0.blocks.0.attn.qkv' outputs shape \(64, 4, 72\) for a batch of 4"):   # every leaf layer: the first one met
        compare_models(m, m, [x], show_progress=False)
    assert hook_count(m) == 0

def test_swin_nhwc_stage_is_pooled_as_the_permuted_maps():
    m, x = swin(), torch.rand(6, 3, 32, 32)
    acts = {}
    hs = [m.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o.detach())) for n in ('layers.1', 'layers.2')]
    with torch.no_grad(): m(x)
    for h in hs: h.remove()
    t = acts['layers.1']
    assert t.shape == (6, 4, 4, 48)                                         # NHWC
    lay = feature_layout(m, 'layers.1', t)
    assert lay == Layout('nhwc')
    maps = t.permute(0, 3, 1, 2)                                            # by hand: (N, C, H, W)
    torch.testing.assert_close(as_features(t, 'mean', layout=lay), maps.mean((2, 3)))
    torch.testing.assert_close(as_features(t, 'avgpool', 2, layout=lay), F.adaptive_avg_pool2d(maps, 2).flatten(1))
    torch.testing.assert_close(as_features(t, 'positions', layout=lay), maps.flatten(2).transpose(1, 2).reshape(-1, 48))
    # compare_models finds the layout itself: on one batch its CKA is unbiased_cka of the hand-pooled maps
    want = unbiased_cka(maps.mean((2, 3)).double(), acts['layers.2'].permute(0, 3, 1, 2).mean((2, 3)).double()).item()
    got = compare_models(m, m, [x], ['layers.1'], ['layers.2'], reduce='mean', show_progress=False).matrix.item()
    assert abs(got - want) < 1e-5
    wrong = unbiased_cka(t.flatten(2).mean(2).double(), acts['layers.2'].flatten(2).mean(2).double()).item()   # NHWC read as NCHW
    assert abs(wrong - want) > 1e-3, 'the test must tell the two readings apart'

def test_vit_register_tokens_are_dropped_when_pooling():
    m = tiny.timm_vit_reg()
    x = torch.rand(6, 3, 32, 32)
    acts = {}
    h = m.blocks[1].register_forward_hook(lambda mod, i, o: acts.__setitem__('b', o.detach()))
    with torch.no_grad(): m(x)
    h.remove()
    b = acts['b']; assert b.shape == (6, 21, 384)
    f = as_features(b, 'mean', layout=feature_layout(m, 'blocks.1', b))
    torch.testing.assert_close(f, b[:, 5:].mean(1))                       # 1 class + 4 register tokens dropped
    got = compare_models(m, m, [x], ['blocks.1'], ['blocks.0'], reduce='mean', measure='linear_cka', show_progress=False).matrix.item()
    a0 = {}
    h = m.blocks[0].register_forward_hook(lambda mod, i, o: a0.__setitem__('b', o.detach()))
    with torch.no_grad(): m(x)
    h.remove()
    assert abs(got - linear_cka(b[:, 5:].mean(1).double(), a0['b'][:, 5:].mean(1).double()).item()) < 1e-5

def test_resnet50_zero_init_bn3_gives_nan_rows_and_one_warning():
    m = tiny.timm_model('resnet50')   # zero_init_last: every bn3 starts at 0
    x = [torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)]
    l1, l2 = ['layer1.0.conv3', 'layer1.0.bn3', 'layer1.1', 'layer2.0.bn3'], ['layer1.0.bn3', 'layer3', 'fc']
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        res = compare_models(m, m, x, l1, l2, show_progress=False)
    said = [str(v.message) for v in w if 'no variance' in str(v.message)]
    assert len(said) == 1 and "'layer1.0.bn3', 'layer2.0.bn3'" in said[0], said
    M = res.matrix
    assert M[[1, 3]].isnan().all() and M[:, 0].isnan().all() and not M[[0, 2]][:, 1:].isnan().any()
    rest = compare_models(m, m, x, ['layer1.0.conv3', 'layer1.1'], ['layer3', 'fc'], show_progress=False).matrix
    torch.testing.assert_close(M[[0, 2]][:, 1:], rest, rtol=1e-6, atol=1e-7)
    # every leaf layer: the sixteen bn3 rows are NaN, the matrix is kept, one warning
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        full = compare_models(m, m, x[:1], show_progress=False)
    said = [str(v.message) for v in w if 'no variance' in str(v.message)]
    assert len(said) == 1 and 'and 8 more' in said[0], said
    nan_rows = [k for k, r in zip(full.layers1, full.matrix) if r.isnan().all()]
    assert len(nan_rows) == 16 and all(k.endswith('bn3') for k in nan_rows)
    assert not full.matrix[[i for i, k in enumerate(full.layers1) if not k.endswith('bn3')]][:, [i for i, k in enumerate(full.layers2) if not k.endswith('bn3')]].isnan().any()
    assert hook_count(m) == 0
