"""The models users bring, by capability: timm (resnet50, vit_small with register tokens, convnext_atto, efficientnet_b0,
swin_tiny) and Hugging Face transformers (ViT, BERT, GPT-2), random init from small configs. Every cell either gives a value
equal to an outside oracle (Captum, plain forward hooks + autograd with the layout undone by hand, a float64 formula) or
refuses with an error raised by netlens that names the fix. No cell may return a plausible wrong result.

The oracles per capability are in ORACLES below; `test_matrix_is_complete` prints the matrix (model x capability -> checked / refused)."""
import collections, warnings
import pytest, torch, torch.nn.functional as F

import captum.attr as captum_attr
from tiny_models import timm_model, timm_vit_reg, timm_swin, hf_vit, hf_bert, hf_gpt2

import netlens.attribution as A
from netlens.adapters import model_output
from netlens.flat import FlatModel
from netlens.optvis import render, channel
from netlens.similarity import compare_models
from netlens.landscape import landscape1d
from netlens.trace import validate_saved_activations
from netlens.attention import attention_maps

ORACLES = {
    'saliency': 'autograd of the selected logits (images); gradient at the embedding output from a plain hook (text)',
    'integrated_gradients': "Captum IntegratedGradients (images); Captum LayerIntegratedGradients on the embeddings with the mask (text)",
    'occlusion': 'Captum Occlusion, same windows (images); refused for token ids',
    'grad_cam': 'GradCAM by hand from plain hooks, the layout undone by hand (Swin permuted, ViT prefix tokens dropped); refused for text',
    'record': 'a plain forward hook',
    'channel': 'feature k sliced by hand from the hooked output, the layout undone by hand',
    'render': "a rendered image of the model's input size that raises the channel objective; refused for token models",
    'compare_models': 'linear CKA in float64 of the hooked features (model with itself, two layers)',
    'landscape1d': 'the loss at the centre equals the hand loss over the data',
    'trace': 'validate_saved_activations (replay of every op)',
    'attention': 'every map a probability row, one per attention layer (padding never attended); CNNs refused',
    'compiled': 'saliency of torch.compile(model) equals the uncompiled result',
}
RESULTS = collections.defaultdict(dict)

# ---------------------------------------------------------------------------------------------- the models
def _cf(kind, prefix=0, grid=None):
    "The hand-written undoing of a layout: (N, ...) -> (N, C, *positions)"
    if kind == 'nchw': return lambda t: t
    if kind == 'nhwc': return lambda t: t.permute(0, 3, 1, 2)
    return lambda t: t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

# name: (builder, kind, layer for GradCAM/channels, its hand layout, second layer for compare_models)
IMAGE = {
    'timm resnet50':        (lambda: timm_model('resnet50'), 'layer3', _cf('nchw'), 'layer4'),
    'timm vit_small+reg':   (timm_vit_reg, 'blocks.1', _cf('tokens', 5, (4, 4)), 'blocks.0'),
    'timm convnext_atto':   (lambda: timm_model('convnext_atto'), 'stages.2', _cf('nchw'), 'stages.1'),
    'timm efficientnet_b0': (lambda: timm_model('efficientnet_b0'), 'blocks.5', _cf('nchw'), 'blocks.3'),
    'timm swin_tiny':       (timm_swin, 'layers.2', _cf('nhwc'), 'layers.1'),
    'HF ViT':               (hf_vit, 'vit.layers.1', _cf('tokens', 1, (4, 4)), 'vit.layers.0'),
}
TEXT = {
    'HF BERT': (lambda: hf_bert(initializer_range=0.3), 'bert.embeddings.word_embeddings', None, 'bert.encoder.layer.1', 'bert.encoder.layer.0'),
    'HF GPT-2': (lambda: hf_gpt2(initializer_range=0.3), 'transformer.wte', lambda o: o.logits[:, -1], 'transformer.h.1', 'transformer.h.0'),
}
CACHE = {}
def model(name):
    if name not in CACHE: CACHE[name] = (IMAGE[name][0] if name in IMAGE else TEXT[name][0])()
    return CACHE[name]

def images(n=3, seed=1): return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
TARGET = torch.tensor([0, 3, 4])

def text_batch(seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids); mask[1, 4:] = 0                    # a padded example
    return {'input_ids': ids, 'attention_mask': mask}

def scores(m, x, output=None): return model_output(m(**x) if isinstance(x, dict) else m(x), output)

def close(a, b, what, tol=1e-4):
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs the oracle's {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"{what}: differs from the oracle by {err:.3g} (scale {b.abs().max().item():.3g})"

def refuses(f, *words):
    "The call raises an error from netlens whose message names one of `words`"
    with pytest.raises((ValueError, TypeError, KeyError, IndexError)) as e: f()
    tb = e.tb
    while tb.tb_next is not None: tb = tb.tb_next
    assert 'netlens' in tb.tb_frame.f_code.co_filename, f"the error came from outside netlens: {e.value!r}"
    assert any(w in str(e.value) for w in words), f"the error does not name {words}: {e.value}"
    return 'refused'

def hooked(m, layer, x, grad_of=None, output=None):
    "The output of `layer` on `x` from a plain forward hook, and (with `grad_of` targets) the gradient of the summed target scores w.r.t. it"
    store = []
    def hook(mod, i, o):
        if grad_of is not None: o.retain_grad()
        store.append(o)
    h = m.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad() if grad_of is not None else torch.no_grad():
            s = scores(m, x, output)
            if grad_of is not None: s.gather(1, grad_of[:, None]).sum().backward()
    finally: h.remove()
    m.zero_grad(set_to_none=True)
    a = store[0]
    return (a.detach(), a.grad) if grad_of is not None else a

# ---------------------------------------------------------------------------------------------- image models
@pytest.mark.parametrize('name', IMAGE)
def test_image_model(name):
    m, (_, layer, cf, layer2) = model(name), IMAGE[name]
    x, y = images(), TARGET
    res = RESULTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')               # guided rules without ReLU etc. are not what is checked here
        # saliency
        xr = x.clone().requires_grad_()
        g, = torch.autograd.grad(scores(m, xr).gather(1, y[:, None]).sum(), xr)
        close(A.saliency(m, x, y, sign='all'), g, f'{name} saliency'); res['saliency'] = 'checked'
        # integrated gradients
        ig = captum_attr.IntegratedGradients(lambda t: scores(m, t)).attribute(x, target=y, n_steps=8, method='gausslegendre')
        close(A.integrated_gradients(m, x, y, n_steps=8), ig, f'{name} integrated_gradients'); res['integrated_gradients'] = 'checked'
        # occlusion
        occ = captum_attr.Occlusion(lambda t: scores(m, t)).attribute(x[:1], target=y[:1], sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0.)
        close(A.occlusion(m, x[:1], y[:1], window=(3, 16, 16), stride=(3, 8, 8)), occ, f'{name} occlusion'); res['occlusion'] = 'checked'
        # GradCAM by hand, the layout undone by hand
        acts, grads = hooked(m, layer, x, grad_of=y)
        a, gr = cf(acts), cf(grads)
        ref = (gr.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
        close(A.grad_cam(m, x, y, layer, interpolate=False), ref, f'{name} grad_cam'); res['grad_cam'] = 'checked'
        # record and channel
        fm = FlatModel(m)
        with fm.record(layer) as rec: scores(m, x)
        close(rec[layer], acts, f'{name} record'); res['record'] = 'checked'
        k = 7
        close(fm.channel(layer, k, x)(rec), cf(acts)[:, k], f'{name} channel'); res['channel'] = 'checked'
        # render: the model's input size; the objective rises from the first step to the eighth (on a live channel)
        kr = int(cf(acts).flatten(2).mean((0, 2)).argmax())
        def rendered(steps):
            r = render(m, channel(layer, kr), size=32, steps=steps, seed=0, show_progress=False)
            img = r.images if hasattr(r, 'images') else r
            assert img.shape[-2:] == (32, 32), f'{name} render: size {tuple(img.shape)}'
            return cf(hooked(m, layer, img.detach().float()))[:, kr].mean()
        assert rendered(8) > rendered(1), f'{name} render: channel {kr} did not rise'
        res['render'] = 'checked'
        # compare_models: the model with itself at two layers, against float64 linear CKA
        loader = [(x, y), (images(3, seed=5), TARGET)]
        out = compare_models(m, m, loader, [layer], [layer2], measure='linear_cka', show_progress=False)
        feats = lambda l: torch.cat([hooked(m, l, b).flatten(1) for b, _ in loader]).double()
        X, Y = feats(layer), feats(layer2)
        X, Y = X - X.mean(0), Y - Y.mean(0)
        cka = (Y.T @ X).norm() ** 2 / ((X.T @ X).norm() * (Y.T @ Y).norm())
        close(torch.as_tensor(out.matrix)[0, 0], cka, f'{name} compare_models'); res['compare_models'] = 'checked'
        # landscape: the centre is the model itself
        land = landscape1d(m, loader, x_range=(-0.1, 0.1), step_size=0.1, seed=0, show_progress=False)
        losses = torch.as_tensor(land.losses if hasattr(land, 'losses') else land[1])
        with torch.no_grad(): hand = sum(F.cross_entropy(scores(m, b), t, reduction='sum') for b, t in loader) / 6
        close(losses[len(losses) // 2], hand, f'{name} landscape1d'); res['landscape1d'] = 'checked'
        # trace
        assert validate_saved_activations(m, x[:1]) is True, f'{name} trace'; res['trace'] = 'checked'
        # attention
        if 'vit' in name.lower() or 'swin' in name:
            maps = attention_maps(m, x[:1])
            assert len(maps) in (2, 4), f'{name} attention: {len(maps)} maps'
            for w in maps.values(): close(w.sum(-1), torch.ones(w.shape[:-1]), f'{name} attention rows', 1e-5)
            res['attention'] = 'checked'
        else: res['attention'] = refuses(lambda: attention_maps(m, x[:1]), 'no attention')
        # compiled
        close(A.saliency(torch.compile(m), x, y, sign='all'), g, f'{name} compiled saliency'); res['compiled'] = 'checked'

# ---------------------------------------------------------------------------------------------- language models
def _labels(name, batch):
    return torch.tensor([0, 2, 1]) if name == 'HF BERT' else batch['input_ids'][:, -1]

@pytest.mark.parametrize('name', TEXT)
def test_text_model(name):
    m, (_, emb, output, layer, layer2) = model(name), TEXT[name]
    batch, res = text_batch(), RESULTS[name]
    y = _labels(name, batch)
    fwd = lambda ids, mask: scores(m, {'input_ids': ids, 'attention_mask': mask}, output)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        # saliency through the embedding layer
        acts, grads = hooked(m, emb, batch, grad_of=y, output=output)
        close(A.saliency(m, batch, y, sign='all', layer=emb, output=output), grads, f'{name} saliency'); res['saliency'] = 'checked'
        refuses(lambda: A.saliency(m, batch, y, output=output), 'layer=')
        # layer integrated gradients against Captum, the mask passed
        lig = captum_attr.LayerIntegratedGradients(fwd, m.get_submodule(emb))
        ref = lig.attribute(batch['input_ids'], baselines=torch.zeros_like(batch['input_ids']), target=y,
                            additional_forward_args=(batch['attention_mask'],), n_steps=8, method='gausslegendre')
        close(A.integrated_gradients(m, batch, y, n_steps=8, layer=emb, output=output), ref, f'{name} integrated_gradients')
        res['integrated_gradients'] = 'checked'
        res['occlusion'] = refuses(lambda: A.occlusion(m, batch, y, window=(1,), stride=(1,), output=output), 'token', 'integer', 'layer')
        res['grad_cam'] = refuses(lambda: A.grad_cam(m, batch, y, layer, output=output, interpolate=False), 'layout=')
        fm = FlatModel(m)
        with fm.record(layer) as rec: scores(m, batch, output)
        h = hooked(m, layer, batch, output=output)
        h = h[0] if isinstance(h, tuple) else h
        close(rec[layer] if not isinstance(rec[layer], tuple) else rec[layer][0], h, f'{name} record'); res['record'] = 'checked'
        k = 5
        close(fm.channel(layer, k, batch)(rec), h[..., k], f'{name} channel'); res['channel'] = 'checked'
        res['render'] = refuses(lambda: render(m, channel(layer, k), size=8, steps=1, show_progress=False), 'takes token ids')
        # compare_models with dict batches: the mask reaches the model
        loader = [batch, text_batch(seed=7)]
        out = compare_models(m, m, loader, [layer], [layer2], measure='linear_cka', show_progress=False)
        def feats(l):
            hs = [hooked(m, l, b, output=output) for b in loader]
            return torch.cat([(t[0] if isinstance(t, tuple) else t).flatten(1) for t in hs]).double()
        X, Y = feats(layer), feats(layer2)
        X, Y = X - X.mean(0), Y - Y.mean(0)
        cka = (Y.T @ X).norm() ** 2 / ((X.T @ X).norm() * (Y.T @ Y).norm())
        close(torch.as_tensor(out.matrix)[0, 0], cka, f'{name} compare_models'); res['compare_models'] = 'checked'
        # landscape over (inputs, labels) batches with dict inputs
        data = [(b, _labels(name, b)) for b in loader]
        land = landscape1d(m, data, x_range=(-0.1, 0.1), step_size=0.1, seed=0, show_progress=False, output=output)
        losses = torch.as_tensor(land.losses if hasattr(land, 'losses') else land[1])
        with torch.no_grad(): hand = sum(F.cross_entropy(scores(m, b, output), t, reduction='sum') for b, t in data) / 6
        close(losses[len(losses) // 2], hand, f'{name} landscape1d'); res['landscape1d'] = 'checked'
        assert validate_saved_activations(m, batch) is True, f'{name} trace'; res['trace'] = 'checked'
        maps = attention_maps(m, batch)
        assert len(maps) == 2, f'{name} attention: {len(maps)} maps'
        for w in maps.values():
            close(w.sum(-1), torch.ones(w.shape[:-1]), f'{name} attention rows', 1e-5)
            assert (w[1, :, :, 4:] == 0).all(), f'{name} attention: padding tokens attended'
        res['attention'] = 'checked'
        close(A.saliency(torch.compile(m), batch, y, sign='all', layer=emb, output=output), grads, f'{name} compiled saliency')
        res['compiled'] = 'checked'

def test_matrix_is_complete(capsys):
    "Runs last: every model has a verdict for every capability; the matrix is printed for the closing note"
    names = list(IMAGE) + list(TEXT)
    missing = [(n, c) for n in names for c in ORACLES if c not in RESULTS.get(n, {})]
    with capsys.disabled():
        print('\n' + ' | '.join(['model'] + list(ORACLES)))
        for n in names: print(' | '.join([n] + [RESULTS.get(n, {}).get(c, 'MISSING') for c in ORACLES]))
    assert not missing, f"cells without a verdict (their test failed or did not run): {missing}"
