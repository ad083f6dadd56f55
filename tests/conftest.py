"Shared fixtures: non-degenerate random-init torchvision models and the oracles the tests compare against"
import re
from copy import deepcopy
from functools import lru_cache
import pytest, torch, torch.nn as nn, torchvision

def perturbed(model, seed=0):
    "`model` in eval mode with BatchNorm statistics, affine parameters and zeroed heads randomised, so no layer is an identity or zero"
    g = torch.Generator().manual_seed(seed)
    rnd = lambda t, scale=1.: torch.randn(t.shape, generator=g, dtype=t.dtype) * scale
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(rnd(m.running_mean, 0.1))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(1 + rnd(m.weight, 0.2)); m.bias.copy_(rnd(m.bias, 0.1))
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.abs().max() == 0:  # ViT's zero head
                m.weight.copy_(rnd(m.weight, 0.02))
                if m.bias is not None: m.bias.copy_(rnd(m.bias, 0.02))
    return model.eval()

# name -> (builder, input size): small inputs that the architecture still accepts
TORCHVISION = {
    'resnet18': (lambda: torchvision.models.resnet18(), 32),
    'densenet121': (lambda: torchvision.models.densenet121(), 32),
    'vgg11': (lambda: torchvision.models.vgg11(), 32),
    'mobilenet_v3_small': (lambda: torchvision.models.mobilenet_v3_small(), 32),
    'vit_b_16': (lambda: torchvision.models.vit_b_16(image_size=32), 32),
}

@lru_cache(maxsize=None)
def tv_case(name):
    "(name, model, input) for torchvision architecture `name`, built once per session (tests leave models as they found them)"
    build, size = TORCHVISION[name]
    torch.manual_seed(0)
    return name, perturbed(build()), torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))

@pytest.fixture(scope='session', params=list(TORCHVISION))
def tv_model(request):
    "(name, model, input) for each torchvision architecture"
    return tv_case(request.param)

def call_keys(name, n):
    "Recording / log keys of a module that ran `n` times: `name`, or `name:1` ... `name:n`"
    return [name] if n == 1 else [f"{name}:{i+1}" for i in range(n)]

def out_of_place(model):
    "A deep copy of `model` with every in-place module made out of place"
    m2 = deepcopy(model)
    for m in m2.modules():
        if getattr(m, 'inplace', False): m.inplace = False
    return m2

def plain_outputs(model, x, names=None, retain_grad=False):
    """Each module's outputs (a list, one per call) by name, through raw forward hooks; copied when the hook runs
    (Python-level in-place ops such as ResNet's `out += identity` or DenseNet's `F.relu(..., inplace=True)` remain in an
    out-of-place copy). With `retain_grad` the output keeps its `.grad` and the model continues on a clone of it, so
    no later in-place op touches the tensor whose gradient autograd retains."""
    outs, hs = {}, []
    def keep(n, o):
        if not retain_grad: return outs.setdefault(n, []).append(_detach(o))
        outs.setdefault(n, []).append(o)
        if isinstance(o, torch.Tensor) and o.requires_grad:
            o.retain_grad()
            return o.clone()
    for n, m in model.named_modules():
        if n and (names is None or n in names): hs.append(m.register_forward_hook(lambda m, i, o, n=n: keep(n, o)))
    try: y = model(x)
    finally:
        for h in hs: h.remove()
    return outs, y

def _detach(o):
    if isinstance(o, torch.Tensor): return o.detach().clone()
    if isinstance(o, (tuple, list)): return type(o)(_detach(v) for v in o)
    return o

def raises(exc, contains):
    "pytest.raises for an error whose message contains `contains` literally"
    return pytest.raises(exc, match=re.escape(contains))

@pytest.fixture(scope='module')
def digits_kept():
    "The digits CNN for a module of bad-input tests: when they are done, every refused call has left it as it was, with no hook"
    from netlens.data import digits_cnn
    from netlens.hooks import ModelSnapshot, hook_count
    m = digits_cnn()
    snap = ModelSnapshot(m)
    yield m
    assert snap.diff(m) == []
    assert hook_count(m) == 0

def pytest_configure(config):
    "The `slow` mark: tests over 10 s on a shared 2-core CPU; they run by default (CI runs them), `-m 'not slow'` leaves them out"
    config.addinivalue_line('markers', "slow: a test over 10 s on a shared 2-core CPU (deselect with -m 'not slow')")

@pytest.fixture(scope='module')
def digits():
    "(the trained digits model, 3 test digits, their labels): the attribution suites' small case"
    from netlens.data import digits_cnn, digits_data
    x, y = digits_data('test')
    return digits_cnn(), x[:3], y[:3]
