"Bad input to netlens.similarity gets an error that names it (moved from nbs/10_similarity.ipynb); hooks are gone afterwards"
import numpy as np, pytest, torch, torch.nn as nn
from netlens.data import digits_cnn, digits_data, digits_loader
from netlens.hooks import hook_count, ModelSnapshot
from netlens.similarity import (_pair, as_features, compare_models, cknna, kernel_cka, layer_similarity, mutual_knn, rbf_gram,
                                rsa)

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
    with pytest.raises(ValueError, match='layer2 names 5 layers'): layer_similarity(model, 'conv3', model, nn.Conv2d, xt)
    with pytest.raises(KeyError, match="ran 2 times: ask for 'res.relu:1', 'res.relu:2'"): layer_similarity(model, 'res.relu', model, 'conv3', xt)
    with pytest.raises(KeyError, match="closest: 'conv3'"): layer_similarity(model, 'conv33', model, 'conv3', xt)
    with pytest.raises(ValueError, match=r'x holds NaN or infinite values \(at examples \[0\]\)'): layer_similarity(model, 'conv3', model, 'conv3', xt.clone().index_fill_(0, torch.tensor([0]), float('nan')))
    with pytest.raises(ValueError, match='need at least 2 examples, got 1'): layer_similarity(model, 'conv3', model, 'conv2', xt[:1])
    with pytest.raises(TypeError, match='x2 must be a torch.Tensor'): layer_similarity(model, 'conv3', model, 'conv3', xt, x2=xt.numpy())
    assert hook_count(model) == 0
