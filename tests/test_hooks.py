"netlens.hooks (nbs/02_hooks.ipynb): bad inputs, moved from the notebook, each raise a clear error before anything is registered"
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

def note_of(model, f):
    from netlens.hooks import annotate_errors
    try:
        with annotate_errors(model): f()
    except Exception as e: return getattr(e, '__notes__', [])
    raise AssertionError('no error was raised')

def test_annotate_errors_names_the_innermost_module_from_the_traceback(model):
    # the layer is read from the traceback: a layer's forward, a hook on it, a layer called twice, and nothing added to the model
    from netlens.hooks import annotate_errors
    with annotate_errors(model): assert hook_count(model) == 0
    assert note_of(model, lambda: model(torch.rand(2, 3, 28, 28))) == ["netlens: raised in layer 'stem.0' (Conv2d)",
        "netlens: layer 'stem.0' takes 1 channels and got an input of shape (2, 3, 28, 28): give x the model's channels (a grey image for a colour model: x.expand(-1, 3, -1, -1); colour for a grey model: x.mean(1, keepdim=True))"]
    def bad(m, i, o): raise ValueError('hook failed')
    h = model.res.bn2.register_forward_hook(bad)
    try: assert note_of(model, lambda: model(torch.rand(2, 1, 28, 28))) == ["netlens: raised in layer 'res.bn2' (BatchNorm2d)"]
    finally: h.remove()
    twice = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert note_of(twice, lambda: twice(torch.rand(2, 4))) == ["netlens: raised in layer '2' (Linear)"]
    assert note_of(twice, lambda: 1 / 0) == []          # raised outside the model: no note
    assert hook_count(model) == 0 and hook_count(twice) == 0

def _entry_points():
    from netlens.attribution import saliency, grad_cam
    from netlens.trace import log_forward_pass
    from netlens.landscape import dataset_loss, fourier_map
    from netlens.similarity import compare_models
    from netlens.atlas import top_activations
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    return {'saliency': lambda m: saliency(m, x, y), 'grad_cam': lambda m: grad_cam(m, x, y, 'conv3'), 'log_forward_pass': lambda m: log_forward_pass(m, x),
            'dataset_loss': lambda m: dataset_loss(m, (x, y)), 'fourier_map': lambda m: fourier_map(m, (x, y), max_freq=1, show_progress=False),
            'compare_models': lambda m: compare_models(m, m, [x, x], ['conv3'], show_progress=False),
            'top_activations': lambda m: top_activations(m, [x], ['conv3'], k=2, show_progress=False)}

@pytest.mark.parametrize('name', list(_entry_points()))
def test_every_entry_point_names_a_wrong_channel_count(name):
    "A 3-channel batch for the 1-channel digits model: PyTorch's error, and netlens' note naming the layer, its channels, what was passed and the fix"
    model = digits_cnn()
    snap = ModelSnapshot(model)
    with pytest.raises(RuntimeError) as e: _entry_points()[name](model)
    notes = getattr(e.value, '__notes__', [])
    assert any(n.startswith("netlens: layer 'stem.0' takes 1 channels and got an input of shape (") and 'x.mean(1, keepdim=True)' in n for n in notes), notes
    assert snap.diff(model) == [] and hook_count(model) == 0
