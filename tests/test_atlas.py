"""netlens.atlas against oracles: a brute-force ranking of every activation kept in memory, the classes of the digits
model's logits, hand-computed and analytic receptive fields, and one process against two torch.distributed ranks."""
import os, random, subprocess, sys, tempfile, warnings
from pathlib import Path
import numpy as np, pytest, torch, torch.nn as nn, torch.nn.functional as F
from netlens.atlas import top_activations, receptive_field, feature_atlas, export_atlas, show_top_tokens, TopActivations
from netlens.data import digits_cnn, digits_data, digits_loader
from netlens.flat import FlatModel
from netlens.hooks import ModelSnapshot, hook_count

MODEL = digits_cnn()
X, Y = digits_data('test')
BATCHES = [X[i:i + 64] for i in range(0, len(X), 64)]
LAYERS = ['stem.2', 'res.relu:2', 'conv3', 'head']

def brute(model, batches, layer, k, reduce='max'):
    "Every activation of `layer` kept, reduced per example, ranked by a stable sort of index-ordered values: (values, indices, positions) top and lowest"
    name, _, call = layer.partition(':')
    acts = []
    with FlatModel(model).record(name) as rec, torch.no_grad():
        for b in batches:
            rec.reset(); model(b)
            acts.append(rec[layer if call else name])
    a = torch.cat(acts)                                                         # (N, C, ...)
    flat = a.flatten(2) if a.ndim > 2 else a[..., None]
    v = (flat.amax(2) if reduce == 'max' else flat.mean(2)).T                   # (C, N), columns in index order
    at = flat.argmax(2).T
    out = []
    for desc in (True, False):
        o = v.sort(dim=1, descending=desc, stable=True).indices[:, :k]
        pos = torch.stack(torch.unravel_index(at.gather(1, o), a.shape[2:]), -1) if a.ndim > 2 else o.new_zeros(*o.shape, 0)
        out.append((v.gather(1, o), o, pos))
    return out

@pytest.mark.parametrize('reduce', ['max', 'mean'])
def test_equals_brute_force(reduce):
    snap = ModelSnapshot(MODEL)
    res = top_activations(MODEL, BATCHES, LAYERS, k=7, reduce=reduce, lowest=True, show_progress=False)
    assert list(res) == LAYERS
    for layer in LAYERS:
        (v, i, p), (lv, li, lp) = brute(MODEL, BATCHES, layer, 7, reduce)
        r = res[layer]
        assert isinstance(r, TopActivations) and r.n == 360 and not r.dead.any()
        torch.testing.assert_close(r.values, v, rtol=0, atol=0); assert torch.equal(r.indices, i), layer
        torch.testing.assert_close(r.lowest_values, lv, rtol=0, atol=0); assert torch.equal(r.lowest_indices, li), layer
        assert torch.equal(r.positions, p) and torch.equal(r.lowest_positions, lp), layer
    assert snap.diff(MODEL) == [] and hook_count(MODEL) == 0

def test_logits_top9_are_their_class():
    r = top_activations(MODEL, digits_loader('test'), FlatModel(MODEL).layer_names[-1], k=9, show_progress=False)['head.2']
    assert torch.equal(Y[r.indices], torch.arange(10)[:, None].expand(10, 9))

def test_dead_channel():
    import copy
    m = copy.deepcopy(MODEL)
    with torch.no_grad(): m.conv3.weight[[5, 40]] = 0; m.conv3.bias[[5, 40]] = 0
    r = top_activations(m, BATCHES, ['conv3', 'head'], k=3, lowest=True, show_progress=False)
    assert torch.where(r['conv3'].dead)[0].tolist() == [5, 40] and not r['head'].dead.any()
    assert (r['conv3'].indices[[5, 40]] == -1).all() and (r['conv3'].lowest_indices[[5, 40]] == -1).all()
    assert (r['conv3'].values[[5, 40]] == 0).all() and (r['conv3'].indices[:5] >= 0).all()

def test_batch_kinds_agree():
    ref = top_activations(MODEL, BATCHES, ['conv3', 'head'], k=5, lowest=True, show_progress=False)
    kinds = {'(x, y)': [(b, Y[i * 64:(i + 1) * 64]) for i, b in enumerate(BATCHES)],
             'dict': [{'x': b, 'labels': Y[i * 64:(i + 1) * 64]} for i, b in enumerate(BATCHES)],
             'dict, input_key': [{'image': b, 'label': Y[:len(b)]} for b in BATCHES],
             'generator': (b for b in BATCHES), 'DataLoader': digits_loader('test')}
    for what, loader in kinds.items():
        r = top_activations(MODEL, loader, ['conv3', 'head'], k=5, lowest=True, input_key='image' if 'input_key' in what else None, show_progress=False)
        for l in ref:
            for f in ('values', 'indices', 'positions', 'lowest_values', 'lowest_indices', 'dead'):
                assert torch.equal(getattr(r[l], f), getattr(ref[l], f)), (what, l, f)

def test_ties_go_to_the_lower_index():
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU())
    with torch.no_grad(): m[0].weight.copy_(torch.tensor([1., -1.]).view(2, 1, 1, 1))
    xs = torch.rand(10, 1, 3, 3) * 0.5
    xs[[2, 5, 6, 9]] = 0.9                      # equal maps: equal values for both reductions, and a map of ties for argmax
    for bs in (1, 3, 10):
        res = top_activations(m, [xs[i:i + bs] for i in range(0, 10, bs)], ['0', '1'], k=3, lowest=True, show_progress=False)
        r = res['0']
        assert r.indices[0].tolist() == [2, 5, 6] and r.lowest_indices[1].tolist() == [2, 5, 6], bs
        assert r.positions[0].tolist() == [[0, 0]] * 3                              # the first maximum
        assert r.dead.tolist() == [False, False] and res['1'].dead.tolist() == [False, True]   # channel 1 after the ReLU is never positive
        assert res['1'].indices[1].tolist() == [-1] * 3

def test_layouts_sequence_and_nhwc():
    torch.manual_seed(0)
    class Seq(nn.Module):
        def __init__(self): super().__init__(); self.emb, self.mix = nn.Embedding(12, 4), nn.Linear(4, 3)
        def forward(self, ids): return self.mix(self.emb(ids)).mean(1)
    s, ids = Seq(), torch.randint(0, 12, (9, 5))
    r = top_activations(s, [ids[:4], ids[4:]], 'mix', k=2, layout='sequence', show_progress=False)['mix']
    with torch.no_grad(): a = s.mix(s.emb(ids))                                    # (N, T, D): channel = the last dimension
    v, t = a.amax(1), a.argmax(1)
    o = v.T.sort(dim=1, descending=True, stable=True).indices[:, :2]
    assert torch.equal(r.indices, o) and torch.equal(r.positions[..., 0], t.T.gather(1, o))

def test_model_state_rng_and_errors():
    m = digits_cnn(); m.train(); m.conv2.weight.requires_grad_(False)
    snap, rng = ModelSnapshot(m), torch.get_rng_state()
    top_activations(m, BATCHES[:2], 'conv3', k=3, show_progress=False)
    receptive_field(m, 'conv3', (2, 2), (1, 32, 32))
    assert snap.diff(m) == [] and m.training and torch.equal(torch.get_rng_state(), rng) and hook_count(m) == 0
    nan = X[:8].clone(); nan[0, 0, 3, 3] = float('nan')
    bad = [([nan], '(?i)nan'), ([X[:0]], 'empty'), ([(X[:8] * 255).long()], 'float'), ([], 'no batches')]
    for loader, words in bad:
        with pytest.raises((ValueError, TypeError), match=words): top_activations(MODEL, loader, 'conv3', k=2, show_progress=False)
    with pytest.raises(ValueError, match='k'): top_activations(MODEL, BATCHES, 'conv3', k=0)
    with pytest.raises(ValueError, match='reduce'): top_activations(MODEL, BATCHES, 'conv3', reduce='sum')
    with pytest.raises(KeyError, match='bogus'): top_activations(MODEL, BATCHES, 'bogus')
    with pytest.raises(TypeError, match='top_activations'): top_activations('conv3', BATCHES, 'conv3')
    with pytest.raises(ValueError, match='input_size'): receptive_field(MODEL, 'conv3', (0, 0), 32)
    with pytest.raises(ValueError, match='one layer'): receptive_field(MODEL, ['conv2', 'conv3'], (0, 0), (1, 32, 32))
    assert snap.diff(m) == []

def test_maps_of_other_sizes_along_the_loader():
    "Batches of other image sizes: positions are kept as flat indices into a map that holds every size, and come out right"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1))
    bs = [torch.randn(4, 1, 5, 7), torch.randn(4, 1, 9, 4), torch.randn(3, 1, 6, 6)]
    r = top_activations(m, bs, '0', k=6, lowest=True, show_progress=False)['0']
    with torch.no_grad(): outs = [o for b in bs for o in m(b)]
    for vals, idx, poss in [(r.values, r.indices, r.positions), (r.lowest_values, r.lowest_indices, r.lowest_positions)]:
        for c in range(3):
            for v, e, p in zip(vals[c], idx[c], poss[c]):
                o = outs[e][c]
                assert o[tuple(p.tolist())] == o.flatten()[o.flatten().argmax()] == v     # the first maximum, even for the lowest ranking

def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16)).eval()

@pytest.mark.parametrize('reduce', ['max', 'mean'])
def test_text_model_neurons_equal_brute_force(reduce):
    "Token batches of other lengths, padding on the right and on the left: the ranking over real tokens only, against every activation kept"
    m, g = _gpt2(), torch.Generator().manual_seed(1)
    batches, per = [], []                                          # per: each example's (acts (T, D) over its real tokens, their positions)
    for n, t in [(5, 10), (7, 14), (6, 8)]:
        ids, mask = torch.randint(0, 100, (n, t), generator=g), torch.ones(n, t, dtype=torch.long)
        mask[1, -3:] = 0; mask[2, :2] = 0; mask[4, 1:4] = 0              # right padding, left padding, a hole
        batches.append({'input_ids': ids, 'attention_mask': mask})
        with FlatModel(m).record('transformer.h.1.mlp.c_fc') as rec, torch.no_grad(): m(input_ids=ids, attention_mask=mask)
        for a, mk in zip(rec['transformer.h.1.mlp.c_fc'], mask.bool()): per.append((a[mk], mk.nonzero().flatten()))
    for layer in ['transformer.h.1.mlp.c_fc', 'transformer.h.0']:
        r = top_activations(m, batches, [layer], k=5, reduce=reduce, lowest=True, show_progress=False)[layer]
        if layer != 'transformer.h.1.mlp.c_fc': assert r.values.shape == (32, 5) and r.positions.shape == (32, 5, 1); continue
        v = torch.stack([a.amax(0) if reduce == 'max' else a.mean(0) for a, _ in per], 1)        # (C, N)
        at = torch.stack([p[a.argmax(0)] for a, p in per], 1)                                       # the first peak, in the padded sequence
        for desc, (vals, idx, pos) in [(True, (r.values, r.indices, r.positions)), (False, (r.lowest_values, r.lowest_indices, r.lowest_positions))]:
            o = v.sort(dim=1, descending=desc, stable=True).indices[:, :5]
            torch.testing.assert_close(vals, v.gather(1, o), rtol=1e-5, atol=1e-6)
            assert torch.equal(idx, o) and torch.equal(pos[..., 0], at.gather(1, o))
    unmasked = top_activations(m, batches, 'transformer.h.1.mlp.c_fc', k=5, reduce=reduce, mask_key=None, show_progress=False)['transformer.h.1.mlp.c_fc']
    assert not torch.equal(unmasked.values, r.values)               # padding changes the ranking when it is not masked
    assert hook_count(m) == 0

def test_show_top_tokens():
    m = _gpt2()
    ids = torch.randint(0, 100, (12, 9), generator=torch.Generator().manual_seed(2)); mask = torch.ones_like(ids); mask[::2, 6:] = 0
    batches = [{'input_ids': ids[i:i + 5], 'attention_mask': mask[i:i + 5]} for i in range(0, 12, 5)]
    class Tok:                                                      # a tokenizer as Hugging Face's: convert_ids_to_tokens
        def convert_ids_to_tokens(self, i): return f"<w{i}>"
    top = top_activations(m, batches, 'transformer.h.1.mlp.c_fc', k=3, show_progress=False)['transformer.h.1.mlp.c_fc']
    page = show_top_tokens(m, batches, 'transformer.h.1.mlp.c_fc', 11, k=3, decode=Tok())
    assert page._repr_html_() == page and page.count('<mark') == 3 and '&lt;w' in page and '<w' not in page.replace('<wbr', '')
    for j, row in enumerate(page.split('<tr>')[2:]):
        i, p = int(top.indices[11, j]), int(top.positions[11, j, 0])
        assert row.startswith(f'<td>{i}</td><td>{top.values[11, j].item():.3g}</td>')
        assert f'font-weight:bold">&lt;w{int(ids[i, p])}&gt;</mark>' in row and row.count('&lt;w') == int(mask[i].sum())   # padding is not shown
    with pytest.raises(ValueError, match='sequence layer'): show_top_tokens(MODEL, BATCHES, 'conv3', 0, k=2)
    with pytest.raises(IndexError, match='channel'): show_top_tokens(m, batches, 'transformer.h.1.mlp.c_fc', 128, top=top)

# ---------------------------------------------------------------------------------------------- receptive fields
def analytic(convs, pos, size):
    "The exact field of a chain of convolutions (kernel, stride, padding, dilation): the input indices a unit connects to, walked back layer by layer, each layer's padding dropped; its bounding box per dimension (None: padding only)"
    sizes = [list(size)]
    for k, st, p, d in convs: sizes.append([(n + 2 * p - d * (k - 1) - 1) // st + 1 for n in sizes[-1]])
    box = []
    for dim, q in enumerate(pos):
        seen = {q}
        for (k, st, p, d), n in zip(reversed(convs), reversed(sizes[:-1])):
            seen = {st * o - p + d * t for o in seen for t in range(k)} & set(range(n[dim]))
        if not seen: return None
        box.append(slice(min(seen), max(seen) + 1))
    return tuple(box)

@pytest.mark.parametrize('seed', range(8))
def test_receptive_field_matches_analytic(seed):
    g = random.Random(seed)
    convs = [(g.choice([1, 2, 3, 5]), g.choice([1, 1, 2]), g.choice([0, 1, 2]), g.choice([1, 1, 2])) for _ in range(g.choice([2, 3]))]
    torch.manual_seed(seed)
    layers, c = [], 1
    for k, s, p, d in convs: layers += [nn.Conv2d(c, 4, k, stride=s, padding=p, dilation=d), nn.ReLU()]; c = 4
    m = nn.Sequential(*layers).eval()
    size = (1, 40, 37)
    with torch.no_grad(): h, w = m(torch.zeros(1, *size)).shape[2:]
    for pos in [(0, 0), (h // 2, w // 3), (h - 1, w - 1)]:
        want = analytic(convs, pos, size[1:])
        for method in ('graph', 'gradient'):
            if want is None:                    # a unit that sees only padding: no input reaches it
                with pytest.raises(ValueError, match='zero'): receptive_field(m, str(len(layers) - 1), pos, size, n=16, method=method)
            else: assert receptive_field(m, str(len(layers) - 1), pos, size, n=16, method=method) == want, (convs, pos, method)

def test_receptive_field_by_hand():
    two = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3))
    assert receptive_field(two, '1', (0, 0), (1, 9, 9)) == (slice(0, 5), slice(0, 5))
    assert receptive_field(two, '1', (4, 2), (1, 9, 9)) == (slice(4, 9), slice(2, 7))
    strided = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Conv2d(2, 2, 3))
    assert receptive_field(strided, '1', (0, 0), (1, 11, 11)) == (slice(0, 7), slice(0, 7))
    padded = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    assert receptive_field(padded, '1', (0, 0), (1, 6, 6)) == (slice(0, 3), slice(0, 3))
    assert receptive_field(padded, '1', (2, 5), (1, 6, 6)) == (slice(0, 5), slice(3, 6))

def _resnet18():
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    with torch.no_grad():                       # BatchNorm not the identity and no path silenced by accident
        for bn in [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.2, 0.2); bn.running_var.uniform_(0.5, 2); bn.weight.uniform_(0.5, 1.5); bn.bias.uniform_(-0.1, 0.1)
    return m
RESNET = []

# (input px, layer, position, field size or None where clipped): textbook sizes 7, 11, 43, 99, 211, 435 where the field fits
RESNET_UNITS = [(64, 'conv1', (0, 0), None), (64, 'relu', (16, 16), 7), (64, 'maxpool', (15, 15), None), (96, 'maxpool', (12, 12), 11),
                (96, 'layer1', (12, 12), 43), (96, 'layer1', (23, 0), None), (96, 'layer1.0.relu:1', (5, 7), 19), (160, 'layer2', (10, 10), 99),
                (160, 'layer2', (19, 19), None), (112, 'layer2.0.downsample', (3, 5), 43), (256, 'layer3', (8, 8), 211), (112, 'layer3', (6, 0), None),
                (64, 'layer4', (1, 1), None), (512, 'layer4', (8, 8), 435), (112, 'avgpool', (0, 0), None), (64, 'fc', (), None)]

@pytest.mark.parametrize('px,layer,pos,size', RESNET_UNITS)
def test_graph_field_equals_gradient_support_resnet18(px, layer, pos, size):
    if not RESNET: RESNET.append(_resnet18())
    m = RESNET[0]
    with warnings.catch_warnings():
        warnings.simplefilter('error')          # the graph walk knows every op of a resnet: no fallback
        f = receptive_field(m, layer, pos, (3, px, px))
    assert f == receptive_field(m, layer, pos, (3, px, px), method='gradient', n=2 if px > 200 else 4), (layer, pos)
    sizes = [s.stop - s.start for s in f]
    if size is not None: assert sizes == [size, size]
    elif layer != 'conv1': assert any(s.start == 0 or s.stop == px for s in f)     # clipped at the border

def test_graph_field_equals_gradient_support_digits():
    for layer in FlatModel(MODEL).layer_names:
        with torch.no_grad(), FlatModel(MODEL).record(layer) as rec: MODEL(X[:1])
        shape = rec[next(iter(rec))].shape[2:]
        for pos in {tuple(0 for _ in shape), tuple(s // 2 for s in shape), tuple(s - 1 for s in shape), tuple(min(1, s - 1) for s in shape)}:
            with warnings.catch_warnings():
                warnings.simplefilter('error')
                f = receptive_field(MODEL, layer, pos, (1, 32, 32))
            assert f == receptive_field(MODEL, layer, pos, (1, 32, 32), method='gradient'), (layer, pos)

class _Branches(nn.Module):
    "Two convolutions joined along the channels, gated by a global mean: cat and broadcasting in the graph"
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 5, padding=2, dilation=1), nn.Conv2d(4, 2, 3, stride=2)
        self.pool = nn.AdaptiveMaxPool2d(3)
    def forward(self, x): return self.pool(self.c(torch.cat([self.a(x), self.b(F.avg_pool2d(x, 3, 1, 1))], 1) * torch.sigmoid(x.mean((2, 3), keepdim=True))))

def test_graph_field_cat_adaptive_and_fallback():
    torch.manual_seed(0)
    m = _Branches().eval()
    for layer, pos in [('c', (0, 0)), ('c', (3, 5)), ('a', (0, 11)), ('pool', (1, 2)), ('pool', (0, 0))]:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            f = receptive_field(m, layer, pos, (1, 12, 14))
        assert f == receptive_field(m, layer, pos, (1, 12, 14), method='gradient'), (layer, pos)
    up = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ConvTranspose2d(2, 2, 3, stride=2), nn.Conv2d(2, 2, 3))
    with pytest.warns(UserWarning, match='conv_transpose2d.*gradient'): f = receptive_field(up, '2', (4, 4), (1, 24, 24))
    assert f == receptive_field(up, '2', (4, 4), (1, 24, 24), method='gradient')
    with pytest.raises(ValueError, match='method'): receptive_field(up, '2', (4, 4), (1, 24, 24), method='exact')

@pytest.mark.parametrize('mode,ac', [('nearest', None), ('bilinear', None), ('bilinear', True)])
def test_graph_field_through_interpolation(mode, ac):
    "nn.Upsample by integer and fractional factors and to sizes: the graph's field equals the gradient's support (a neighbour of weight 0 is not read)"
    for i, up in enumerate([dict(scale_factor=2), dict(scale_factor=3), dict(scale_factor=1.5), dict(size=(13, 9)), dict(size=(5, 4))]):
        torch.manual_seed(i)
        m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(mode=mode, align_corners=ac, **up), nn.Conv2d(2, 2, 3))
        with torch.no_grad(): h, w = m(torch.zeros(1, 1, 11, 10)).shape[2:]
        for pos in {(0, 0), (h // 2, w // 3), (h - 1, w - 1), (min(1, h - 1), min(2, w - 1))}:
            with warnings.catch_warnings():
                warnings.simplefilter('error')
                f = receptive_field(m, '2', pos, (1, 11, 10))
            assert f == receptive_field(m, '2', pos, (1, 11, 10), method='gradient', n=4), (up, pos)

# ---------------------------------------------------------------------------------------------- figures and the static atlas
def test_feature_atlas_and_export():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig = feature_atlas(MODEL, digits_loader('test'), 'conv3', channels=[1, 2], k=3)
    assert len(fig.axes) == 2 * 6; plt.close(fig)
    with tempfile.TemporaryDirectory() as d:
        index = export_atlas(MODEL, digits_loader('test'), 'head', Path(d) / 'a', k=3, lowest=False)
        assert sorted(p.name for p in index.parent.iterdir()) == ['channel_0000.png'] + [f'channel_{c:04d}.png' for c in range(1, 10)] + ['index.html']
        assert index.read_text().count('<img ') == 10

# ---------------------------------------------------------------------------------------------- torch.distributed
RANK_SCRIPT = """
import os, torch, torch.distributed as dist
from netlens.atlas import top_activations
from netlens.data import digits_cnn, digits_data
from netlens.distributed import shard_range
dist.init_process_group('gloo')
r, w = dist.get_rank(), dist.get_world_size()
x, _ = digits_data('test')
s = shard_range(len(x), r, w)
mine = x[s.start:s.stop]
res = top_activations(digits_cnn(), [mine[i:i + 50] for i in range(0, len(mine), 50)], ['conv3', 'head'], k=5, lowest=True, show_progress=False)
torch.save({l: (t.values, t.indices, t.positions, t.lowest_values, t.lowest_indices, t.n) for l, t in res.items()}, f'r{r}.pt')
dist.destroy_process_group()
"""

def test_distributed_merge_is_exact(tmp_path):
    "Two gloo processes under torchrun, each streaming its shard, give every rank the one-process result (each rank writes its own file)"
    ref = top_activations(MODEL, [X[i:i + 50] for i in range(0, 360, 50)], ['conv3', 'head'], k=5, lowest=True, show_progress=False)
    (tmp_path / 'script.py').write_text(RANK_SCRIPT)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', 'script.py'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for rank in range(2):
        got = torch.load(tmp_path / f'r{rank}.pt', weights_only=True)
        for l, t in ref.items():
            v, i, p, lv, li, n = got[l]
            assert n == 360 and torch.equal(i, t.indices) and torch.equal(li, t.lowest_indices) and torch.equal(p, t.positions), (rank, l)
            torch.testing.assert_close(v, t.values, rtol=1e-5, atol=1e-5); torch.testing.assert_close(lv, t.lowest_values, rtol=1e-5, atol=1e-5)
