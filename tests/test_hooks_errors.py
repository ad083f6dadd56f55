"Bad inputs to netlens.hooks, moved from nbs/02_hooks.ipynb: each raises a clear error before anything is registered"
import pytest, torch
from netlens.data import digits_cnn
from netlens.hooks import Hook, Hooks, ModelSnapshot, hook_count, hook_output

@pytest.fixture
def model(): return digits_cnn()

def test_bad_module_lists_are_refused(model):
    with pytest.raises(ValueError, match='at least one module'): Hooks([])
    with pytest.raises(TypeError, match='got Tensor'): Hooks([model.conv2, torch.ones(1)])
    with pytest.raises(TypeError, match=r"get_submodule\('conv2'\)"): hook_output('conv2')
    with pytest.raises(TypeError, match='hook_func must be callable'): Hook(model.conv2, 'mean')
    assert hook_count(model) == 0

@pytest.mark.parametrize('f', [hook_count, ModelSnapshot])
def test_a_non_module_model_is_named(f):
    # every public function refuses a non-module model with a TypeError naming the argument (was: AttributeError deep inside)
    with pytest.raises(TypeError, match=r"needs a torch.nn.Module as `model`, got Tensor"): f(torch.ones(3))

def test_diff_against_a_non_module(model):
    with pytest.raises(TypeError, match='got Tensor'): ModelSnapshot(model).diff(torch.ones(3))
