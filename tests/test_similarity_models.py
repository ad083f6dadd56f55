"""compare_models, as_features, landscapes and fourier_map on the models users bring: random-init timm and Hugging Face models
from small configs. Oracles: features captured with plain forward hooks from `model(**batch)` and a float64 minibatch CKA
written here; maps permuted and pooled by hand; the loss evaluated by hand at the same points of parameter space."""
import warnings
from copy import deepcopy
import pytest, torch, torch.nn.functional as F
import tiny_models as tiny
from netlens.adapters import feature_layout, Layout
from netlens.similarity import compare_models, as_features, unbiased_hsic, unbiased_cka, linear_cka, layer_similarity
from netlens.landscape import landscape1d, dataset_loss, random_direction, fourier_map
from netlens.hooks import hook_count, ModelSnapshot

bert, hf_vit, swin = tiny.hf_bert, tiny.hf_vit, tiny.timm_swin

def text_batches(pad=True, n=(8, 6), T=9, seed=0):
    "Hugging Face batches: every other sentence padded after 5 tokens (pad id 0, mask 0), with labels"
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in n:
        ids = torch.randint(1, 100, (b, T), generator=g)
        mask = torch.ones_like(ids)
        if pad: mask[::2, 5:] = 0; ids[mask == 0] = 0
        out.append({'input_ids': ids, 'attention_mask': mask, 'labels': torch.randint(0, 3, (b,), generator=g)})
    return out

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
    m, batches = bert(), text_batches()
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
    m, batches = bert(), text_batches(n=(14,))
    x = {k: v for k, v in batches[0].items() if k != 'labels'}
    f = hooked_features(m, ['bert.encoder.layer.1.output', 'classifier'], x)
    want = unbiased_cka(f['bert.encoder.layer.1.output'], f['classifier']).item()
    assert abs(compare_models(m, m, batches, ['bert.encoder.layer.1.output'], ['classifier'], show_progress=False).matrix.item() - want) < 1e-5
    lin = compare_models(m, m, batches, ['bert.encoder.layer.1.output'], ['classifier'], measure='linear_cka', show_progress=False).matrix.item()
    assert abs(lin - linear_cka(f['bert.encoder.layer.1.output'], f['classifier']).item()) < 1e-5
    assert abs(layer_similarity(m, 'bert.encoder.layer.1.output', m, 'classifier', x).item() - lin) < 1e-5

def test_position_embeddings_are_refused_by_name():
    m = bert()
    with pytest.raises(ValueError, match=r"model 1: layer 'bert.embeddings.position_embeddings' outputs shape \(1, 9, 32\) for a batch of 8: its first dimension is not the examples"):
        compare_models(m, m, text_batches(), ['bert.embeddings.position_embeddings'], ['classifier'], show_progress=False)
    gpt2 = tiny.hf_gpt2()
    with pytest.raises(ValueError, match=r"layer 'transformer.wpe' outputs shape \(1, 9, 32\) for a batch of 8"):
        compare_models(gpt2, gpt2, [{k: v for k, v in b.items() if k != 'labels'} for b in text_batches()], show_progress=False)   # every leaf layer that ran
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
    m, x, y = hf_vit(), torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
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
    m, batches = bert(), text_batches()
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
    with pytest.raises(ValueError, match=r"data \(batch 0\) is a dict with keys \['input_ids', 'attention_mask'\] and no 'labels'"):
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
