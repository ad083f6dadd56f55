"""The models and inputs on which the attribution tests compare netlens with Captum: random-init resnet18 at 64x64 and
vgg11, both with perturbed BatchNorm statistics, and the trained digits model. `case` is a module-scoped fixture (import
it into a test module to use it); `rel_close` is the agreement the comparisons assert."""
import pytest, torch, torch.nn as nn, torchvision
from conftest import perturbed
from netlens.data import digits_cnn, digits_data

def rel_close(a, b, rtol=1e-5):
    "Agreement to a relative error `rtol` of the largest magnitude (float32 sums of many terms round at that scale)"
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} vs scale {scale:.3g} (rel {err / scale:.3g})"

def _digits():
    x, y = digits_data('test')
    return 'digits', digits_cnn(), x[:4], y[:4], 'conv3'

def _resnet():
    torch.manual_seed(0)          # the same random init whatever ran before (the tolerances below hold for this model, not any)
    return 'resnet18', perturbed(torchvision.models.resnet18()), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 817]), 'layer4'

def _vgg():
    torch.manual_seed(0)
    return 'vgg11', perturbed(torchvision.models.vgg11()), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2]), 'features.18'

CASES = {'digits': _digits, 'resnet18': _resnet, 'vgg11': _vgg}

@pytest.fixture(scope='module', params=list(CASES))
def case(request): return CASES[request.param]()

def _relu_models():
    "Captum's guided backprop hooks ReLU modules: it is defined on models whose ReLUs are all modules used once each"
    x, y = digits_data('test')
    vgg = perturbed(torchvision.models.vgg11())
    for m in vgg.modules():
        if isinstance(m, nn.ReLU): m.inplace = False
    return [('vgg11', vgg, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2]))]
