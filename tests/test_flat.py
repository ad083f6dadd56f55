"""FlatModel on torchvision architectures: what it records equals plain hooks on an out-of-place copy, and the model is left as it
was; bad requests to FlatModel and its recordings (layer keys, models, patterns, recorded keys, channels) raise an error that says
what to do."""
import pytest, torch, torch.nn as nn
from conftest import out_of_place, plain_outputs, call_keys as _keys
from netlens.data import digits_cnn, digits_data
from netlens.flat import FlatModel
from netlens.hooks import ModelSnapshot, hook_count


def _equal(a, b):
    if isinstance(a, torch.Tensor): return torch.equal(a, b)
    if isinstance(a, (tuple, list)): return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a == b

def test_outputs_equal_out_of_place_hooks(tv_model):
    name, model, x = tv_model
    fm = FlatModel(model)
    snap = ModelSnapshot(model)
    with fm.record(fm.layer_names) as rec: out = model(x)
    ref, ref_out = plain_outputs(out_of_place(model), x)
    assert torch.equal(out, ref_out)
    for n, vals in ref.items():
        for key, v in zip(_keys(n, len(vals)), vals): assert _equal(rec[key], v), f"{name}: {key}"
    assert sorted(rec) == sorted(k for n, vals in ref.items() for k in _keys(n, len(vals)))
    assert snap.diff(model) == []

def test_inplace_layers_are_protected():
    "ResNet's BatchNorm outputs keep their negative values although ReLU(inplace=True) runs on them next"
    import torchvision
    from conftest import perturbed
    model = perturbed(torchvision.models.resnet18())
    x = torch.randn(2, 3, 32, 32)
    fm = FlatModel(model)
    with fm.record(['bn1', 'layer1.0.bn1', 'relu', 'layer1.0.relu']) as rec: model(x)
    assert (rec['bn1'] < 0).any() and (rec['layer1.0.bn1'] < 0).any()
    assert not (rec['relu'] < 0).any()
    assert list(rec) == ['bn1', 'layer1.0.bn1', 'relu', 'layer1.0.relu:1', 'layer1.0.relu:2']

def test_gradients_equal_out_of_place_retain_grad(tv_model):
    name, model, x = tv_model
    fm = FlatModel(model)
    snap = ModelSnapshot(model)
    x = x.clone().requires_grad_()
    target = torch.tensor([1, 7])
    with fm.record(fm.layer_names, grads=True) as rec:
        model(x).gather(1, target[:, None]).sum().backward()
    ref_model = out_of_place(model)
    ref, ref_out = plain_outputs(ref_model, x, retain_grad=True)
    ref_out.gather(1, target[:, None]).sum().backward()
    checked = 0
    for n, vals in ref.items():
        for key, v in zip(_keys(n, len(vals)), vals):
            if isinstance(v, torch.Tensor) and v.grad is not None:
                torch.testing.assert_close(rec.grads[key], v.grad, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
                checked += 1
    assert checked > 10
    assert any(rec.grads[k].abs().sum() > 0 for k in rec.grads), 'a non-degenerate model has non-zero gradients'
    model.zero_grad(set_to_none=True)
    assert snap.diff(model) == []

def test_model_unchanged_after_exception(tv_model):
    name, model, x = tv_model
    fm = FlatModel(model)
    model.train()
    snap = ModelSnapshot(model)
    with pytest.raises(RuntimeError) as e:
        with fm.record(fm.find('conv')[:3] or fm.layer_names[:3], grads=True): model(x[:, :2])  # two channels for a three-channel model
    assert snap.diff(model) == [] and hook_count(model) == 0
    if hasattr(e.value, '__notes__'): assert e.value.__notes__[0].startswith('netlens: raised in layer')
    model.eval()

def test_vit_unused_submodule_is_explained():
    "nn.MultiheadAttention uses out_proj's weights directly: recording it says so instead of returning nothing"
    import torchvision
    model = torchvision.models.vit_b_16(image_size=32).eval()
    fm = FlatModel(model)
    layer = 'encoder.layers.encoder_layer_0.self_attention.out_proj'
    with fm.record([layer, 'encoder.layers.encoder_layer_0.mlp']) as rec: model(torch.randn(1, 3, 32, 32))
    with pytest.raises(KeyError, match='did not run in the forward pass'): rec[layer]
    assert rec['encoder.layers.encoder_layer_0.mlp'].shape == (1, 5, 768)

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])

@pytest.mark.parametrize('device', DEVICES)
def test_record_stays_on_device_or_moves_to_cpu(device):
    from netlens.data import digits_cnn, digits_data
    model = digits_cnn(device=device)
    x = digits_data('test')[0][:4].to(device)
    fm = FlatModel(model)
    with fm.record('conv3') as rec, fm.record('conv3', cpu=True) as rec_cpu: out = model(x)
    assert rec['conv3'].device == out.device and rec_cpu['conv3'].device.type == 'cpu'
    assert torch.equal(rec['conv3'].cpu(), rec_cpu['conv3'])
    assert rec['conv3'].abs().sum() > 0

def test_compiled_and_parallel_models_are_unwrapped():
    "Layers of a torch.compile'd / DataParallel model keep their own names and are recorded through `fm.model`; the compiled wrapper, called in the block, runs eagerly so the hooks run"
    from netlens.data import digits_cnn, digits_data
    model, x = digits_cnn(), digits_data('test')[0][:4]
    plain = FlatModel(model)
    with plain.record(['conv2', 'res.relu']) as ref: model(x)
    compiled = torch.compile(model, backend='eager')
    compiled(x)   # compiled before the hooks go on
    snap = ModelSnapshot(model)
    for wrapped in (compiled, torch.nn.DataParallel(model), torch.nn.DataParallel(compiled)):
        fm = FlatModel(wrapped)
        assert fm.layer_names == plain.layer_names and fm.model is model
        with fm.record(['conv2', 'res.relu']) as rec: fm.model(x)
        assert sorted(rec) == sorted(ref) and all(torch.equal(rec[k], ref[k]) for k in ref)
    with FlatModel(compiled).record('conv2') as rec: compiled(x)     # the user's call of the compiled wrapper runs eagerly inside record
    assert torch.equal(rec['conv2'], ref['conv2'])
    assert snap.diff(model) == [] and hook_count(model) == 0

def test_bad_layer_keys_are_explained():
    from netlens.data import digits_cnn
    fm = FlatModel(digits_cnn())
    with pytest.raises(KeyError, match="unknown layer 'res.rleu'; closest: 'res.relu'"): fm['res.rleu']
    with pytest.raises(KeyError, match="unknown layer 'res.rleu:2'; closest: 'res.relu'"): fm.resolve(['res.rleu:2'])
    with pytest.raises(ValueError, match='calls count from 1'): fm.resolve('res.relu:0')
    with pytest.raises(TypeError, match='got Tensor'): FlatModel(torch.ones(2))
    with pytest.raises(TypeError, match='not float'): fm[1.0]

# channels are features in every layout: dimension 1 of maps, the last dimension of channels-last maps and of tokens

def _timm_vit():
    from tiny_models import timm_vit_reg
    return timm_vit_reg()

def test_vit_channel_is_a_feature_of_the_patch_tokens():
    "channel('blocks.1', k) used to index dimension 1 (the 21 tokens: 'it has 21 channels'); now feature k of the 16 patch tokens on their 4x4 grid, the 5 prefix tokens dropped"
    model, x = _timm_vit(), torch.rand(2, 3, 32, 32)
    fm = FlatModel(model)
    assert fm.n_channels('blocks.1', x) == 384 and fm.n_channels('blocks.1.mlp.fc1') == 1536
    with fm.record(['blocks.1', 'blocks.1.mlp.fc1']) as rec: model(x)
    for k in (0, 300, 383): assert torch.equal(fm.channel('blocks.1', k, x)(rec), rec['blocks.1'][:, 5:, k].reshape(2, 4, 4))
    assert torch.equal(fm.channel('blocks.1.mlp.fc1', 1000)(rec), rec['blocks.1.mlp.fc1'][:, 5:, 1000].reshape(2, 4, 4))
    with pytest.raises(IndexError, match="k 384 is out of range: layer 'blocks.1' has 384 channels"): fm.channel('blocks.1', 384, x)
    with pytest.raises(IndexError, match="k 384 is out of range: layer 'blocks.1' has 384 channels"): fm.channel('blocks.1', 384)(rec)   # known once recorded
    assert hook_count(model) == 0

def test_swin_channel_is_the_last_dimension():
    "A Swin stage's (N, h, w, C): channel k used to be an image row"
    from tiny_models import timm_swin
    model = timm_swin()
    x = torch.rand(2, 3, 32, 32)
    fm = FlatModel(model)
    assert fm.n_channels('layers.1', x) == 48 and fm.n_channels('layers.2', x) == 96
    with fm.record(['layers.1', 'layers.2']) as rec: model(x)
    assert rec['layers.1'].shape == (2, 4, 4, 48)
    assert torch.equal(fm.channel('layers.1', 40, x)(rec), rec['layers.1'][..., 40])
    assert torch.equal(fm.channel('layers.2', 95)(rec), rec['layers.2'][..., 95])
    with pytest.raises(ValueError, match=r"layer 'layers.0.blocks.0.attn' outputs shape \(32, 4, 24\) for a batch of 2: its first dimension is not the examples"):
        fm.n_channels('layers.0.blocks.0.attn', x)
    assert hook_count(model) == 0

def test_hf_text_and_image_channels():
    "BERT: feature k along the sequence (N, T), from a dict of keyword inputs; HF ViT: the config's class token dropped"
    from tiny_models import hf_bert, hf_vit
    bert = hf_bert()
    ids = torch.randint(0, 100, (2, 9)); batch = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    fm = FlatModel(bert)
    assert fm.n_channels('bert.encoder.layer.1', batch) == 32 and fm.output_shapes(batch)['bert.encoder.layer.1'] == [(2, 9, 32)]
    with fm.record('bert.encoder.layer.1') as rec: bert(**batch)
    assert torch.equal(fm.channel('bert.encoder.layer.1', 31, batch)(rec), rec['bert.encoder.layer.1'][:, :, 31])
    vit = hf_vit()
    fm, x = FlatModel(vit), torch.rand(2, 3, 32, 32)
    with fm.record('vit.layers.0') as rec: vit(x)
    assert fm.n_channels('vit.layers.0', x) == 32
    assert torch.equal(fm.channel('vit.layers.0', 7)(rec), rec['vit.layers.0'][:, 1:, 7].reshape(2, 4, 4))

def test_show_channels_tokens_and_sequences():
    "Patch tokens drawn on their grid, one image per feature; a sequence as strips"
    import matplotlib.pyplot as plt
    from netlens.adapters import feature_layout
    from netlens.flat import show_channels
    model = _timm_vit()
    fm = FlatModel(model)
    with fm.record('blocks.1') as rec: model(torch.rand(1, 3, 32, 32))
    t = rec['blocks.1']
    fig = show_channels(t, max_channels=6, layout=feature_layout(model, 'blocks.1', t))
    ims = [a.get_images()[0].get_array() for a in fig.axes if a.get_images()]
    assert len(ims) == 6 and all(im.shape == (4, 4) for im in ims)
    assert torch.equal(torch.as_tensor(ims[4].data), t[0, 5:, 4].reshape(4, 4))
    plt.close(fig)
    fig = show_channels(t[0].T[:, 5:], max_channels=3)                           # (C, T): strips
    assert [a.get_images()[0].get_array().shape for a in fig.axes if a.get_images()] == [(1, 16)] * 3
    plt.close(fig)

# ---- bad requests to FlatModel and its recordings: each error says what to do ----
@pytest.fixture(scope='module')
def model(): return digits_cnn()

@pytest.fixture(scope='module')
def x(): return digits_data('test')[0][:8]

@pytest.fixture
def fm(model): return FlatModel(model)

def test_unknown_layers(fm):
    with pytest.raises(KeyError, match="closest: 'head'"): fm.resolve('haed')
    with pytest.raises(IndexError, match='has 19 layers'): fm[19]
    with pytest.raises(ValueError, match='no layers given'): fm.resolve([])
    with pytest.raises(KeyError, match='no layer of type LSTM'): fm.resolve(nn.LSTM)
    with pytest.raises(KeyError, match='not a submodule'): fm[nn.Linear(2, 2)]
    with pytest.raises(ValueError, match='calls count from 1'): fm['res.relu:0']
    with pytest.raises(KeyError, match='no submodules'): FlatModel(nn.Linear(3, 3))['weight']

def test_bad_models_and_patterns(fm):
    with pytest.raises(TypeError, match='got Tensor'): FlatModel(torch.ones(3))
    with pytest.raises(TypeError, match="FlatModel needs a torch.nn.Module as `model`, got function"): FlatModel(lambda x: x)
    for bad in ('', None): # '' matched every layer as a type pattern
        with pytest.raises(TypeError, match='got'): fm.resolve(bad)
    with pytest.raises(TypeError, match="find takes a module class"): fm.find(3)

def test_recorded_keys(fm, model, x):
    with fm.record(fm.layer_names) as rec: model(x)
    with pytest.raises(KeyError, match='there is no call 3'): rec['res.relu:3']
    with pytest.raises(KeyError, match="unknown recorded layer 'conv4'; closest: 'conv3', 'conv2'"): rec['conv4']

def test_bad_channels(fm, x):
    # channel indices are integers >= 0 (`check_index`, as everywhere)
    with pytest.raises(KeyError, match='there is no call 3'): fm.channel('res.relu:3', 0, x)
    with pytest.raises(IndexError, match='k -1 is out of range: channels count from 0'): fm.channel('res.relu', -1)   # count unknown: still not negative
    with pytest.raises(IndexError, match="k -1 is out of range: layer 'conv3' has 64 channels"): fm.channel('conv3', -1)
    with pytest.raises(TypeError, match='k must be an integer index, got 2.5'): fm.channel('conv3', 2.5)
