"""netlens.attention against hand computations from the logged queries and keys, the models' own eager weights, and the paper's
rollout and flow; bad input (unknown layers, a model without attention, bad head fusion, maps of two shapes, a query out of range)
gets an error that names the problem."""
import copy, re
import numpy as np, pytest, torch, torch.nn as nn, torchvision
from conftest import tv_case, perturbed
from netlens.trace import log_forward_pass
from netlens.attention import attention_maps, attention_rollout, attention_flow, rollout_map, token_layout
from netlens.hooks import ModelSnapshot, hook_count

TOL = dict(rtol=0, atol=1e-6)

def by_hand(q, k, mask=None, causal=False):
    "softmax(q kᵀ / sqrt(d) + mask), float64; mask: True/1 = the key takes part"
    s = q.double() @ k.double().transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal: s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float('-inf'))
    if mask is not None: s = s.masked_fill(~mask.bool(), float('-inf'))
    return s.softmax(-1)

def logged_qk(model, x):
    "(q, k, attention op) of every scaled_dot_product_attention in a full log"
    log = log_forward_pass(model, x)
    return [(log.entries[op.parents[0]].tensor, log.entries[op.parents[1]].tensor, op) for op in log if op.func_name == 'scaled_dot_product_attention'], log

def check_rows(maps):
    for a in maps.values(): torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), **TOL)

def test_torchvision_vit():
    "vit_b_16 (32 px): 12 maps equal softmax(QKᵀ/√d) from the logged q, k and what MultiheadAttention returns with need_weights"
    _, model, x = tv_case('vit_b_16')
    snap = ModelSnapshot(model)
    maps = attention_maps(model, x)
    assert len(maps) == 12 and all(a.shape == (2, 12, 5, 5) for a in maps.values())
    qk, log = logged_qk(model, x)
    for (q, k, op), (name, a) in zip(qk, maps.items()):
        assert op.module == name
        torch.testing.assert_close(a.double(), by_hand(q, k), **TOL)
        h = log[name.replace('self_attention', 'ln_1')].tensor
        mha = model.get_submodule(name)
        torch.testing.assert_close(a, mha(h, h, h, need_weights=True, average_attn_weights=False)[1], **TOL)
    check_rows(maps)
    assert snap.diff(model) == [] and hook_count(model) == 0 and torch._C._len_torch_function_stack() == 0

def timm_vit():
    from tiny_models import timm_vit_reg
    m = timm_vit_reg(num_classes=10)
    return perturbed(m), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

def test_timm_vit_with_register_tokens():
    "SDPA maps equal the hand computation and timm's own eager attention (fused_attn off on a copy); the rollout map drops 1 + 4 prefix tokens"
    model, x = timm_vit()
    maps = attention_maps(model, x)
    assert list(maps) == ['blocks.0.attn', 'blocks.1.attn'] and maps['blocks.0.attn'].shape == (2, 6, 21, 21)
    for (q, k, _), a in zip(logged_qk(model, x)[0], maps.values()): torch.testing.assert_close(a.double(), by_hand(q, k), **TOL)
    eager = copy.deepcopy(model)
    for b in eager.blocks: b.attn.fused_attn = False
    emaps = attention_maps(eager, x)     # found as the eager softmax
    assert not any(op.func_name == 'scaled_dot_product_attention' for op in log_forward_pass(eager, x, None))
    for a, e in zip(maps.values(), emaps.values()): torch.testing.assert_close(a, e, **TOL)
    check_rows(maps)
    m = rollout_map(model, x)
    assert m.shape == (2, 4, 4)
    torch.testing.assert_close(m.flatten(1), attention_rollout(maps)[:, 0, 5:])

def bert(impl):
    from transformers import BertModel
    from tiny_models import hf_bert
    return hf_bert(BertModel, attn_implementation=impl)

def test_bert_with_padding_mask():
    "BERT (SDPA) with a padded example: maps equal the hand computation with the padding mask and the eager implementation's output_attentions"
    model = bert('sdpa')
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    am = torch.ones(2, 7, dtype=torch.long); am[1, 4:] = 0
    batch = dict(input_ids=ids, attention_mask=am)
    snap = ModelSnapshot(model)
    maps = attention_maps(model, batch)
    assert list(maps) == ['encoder.layer.0.attention.self', 'encoder.layer.1.attention.self']
    for (q, k, _), a in zip(logged_qk(model, batch)[0], maps.values()):
        torch.testing.assert_close(a.double(), by_hand(q, k, am[:, None, None, :]), **TOL)
    assert (maps['encoder.layer.0.attention.self'][1, :, :, 4:] == 0).all()
    eager = copy.deepcopy(model); eager.set_attn_implementation('eager')
    ref = eager(**batch, output_attentions=True).attentions
    for a, r in zip(maps.values(), ref): torch.testing.assert_close(a, r, **TOL)
    emaps = attention_maps(eager, batch)     # the eager softmax, read from the log
    for a, r in zip(emaps.values(), ref): torch.testing.assert_close(a, r, **TOL)
    check_rows(maps)
    assert snap.diff(model) == [] and model.config._attn_implementation == 'sdpa'
    train = copy.deepcopy(model).train()                          # dropout in train mode: the maps of the model in eval mode, exactly
    with torch.no_grad(): assert not torch.equal(train(**batch).last_hidden_state, model(**batch).last_hidden_state)
    snap_t = ModelSnapshot(train)
    for a, r in zip(attention_maps(train, batch).values(), maps.values()): torch.testing.assert_close(a, r, rtol=0, atol=0)
    assert snap_t.diff(train) == []                              # left in train mode
    with pytest.raises(KeyError, match='not attention layers'): attention_maps(train, batch, layers=['bogus'])
    assert snap_t.diff(train) == []                              # also after an error

def gpt2(impl):
    from tiny_models import hf_gpt2
    return hf_gpt2(attn_implementation=impl)

def test_gpt2_causal():
    "GPT-2 (SDPA, is_causal): maps equal the causal hand computation and the eager output_attentions; with a padding mask too"
    model = gpt2('sdpa')
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    maps = attention_maps(model, {'input_ids': ids})
    qk, _ = logged_qk(model, {'input_ids': ids})
    assert all(op._kwargs.get('is_causal') for _, _, op in qk)
    for (q, k, _), a in zip(qk, maps.values()): torch.testing.assert_close(a.double(), by_hand(q, k, causal=True), **TOL)
    eager = copy.deepcopy(model); eager.set_attn_implementation('eager')
    for a, r in zip(maps.values(), eager(input_ids=ids, output_attentions=True).attentions): torch.testing.assert_close(a, r, **TOL)
    check_rows(maps)
    am = torch.ones(2, 6, dtype=torch.long); am[0, 4:] = 0           # right padding: a mask and the causal triangle together
    pmaps = attention_maps(model, dict(input_ids=ids, attention_mask=am))
    for a, r in zip(pmaps.values(), eager(input_ids=ids, attention_mask=am, output_attentions=True).attentions):
        torch.testing.assert_close(a[:, :, :4], r[:, :, :4], **TOL)   # padded queries: implementation-defined rows
    assert rollout_map(model, {'input_ids': ids}, query=-1).shape == (2, 6)

def test_swin_windows():
    "Swin computes its weights eagerly, per window: 12 maps (N·windows, heads, 49, 49) that sum to 1; rollout refuses them"
    torch.manual_seed(0)
    model = perturbed(torchvision.models.swin_t())
    maps = attention_maps(model, torch.rand(1, 3, 32, 32))
    assert len(maps) == 12 and all(a.shape[-2:] == (49, 49) for a in maps.values())
    check_rows(maps)
    with pytest.raises(ValueError, match='one shape'): attention_rollout(maps)

def paper_rollout(maps, fusion):
    "Abnar & Zuidema (2020), float64: A_l = rows-normalised(fuse_heads(W_l) + I); rollout = A_L ... A_1"
    out = None
    for w in maps:
        w = w.double()
        f = {'mean': w.mean(1), 'max': w.max(1).values, 'min': w.min(1).values}[fusion]
        a = f + torch.eye(w.shape[-1], dtype=torch.float64)
        a = a / a.sum(-1, keepdim=True)
        out = a if out is None else torch.einsum('nij,njk->nik', a, out)
    return out

@pytest.mark.parametrize('fusion', ['mean', 'max', 'min'])
def test_rollout_equals_the_paper(fusion):
    "On a two-layer ViT (timm, random init), rollout equals the float64 formula; with residual=False it is the product of fused maps"
    model, x = timm_vit()
    maps = attention_maps(model, x)
    torch.testing.assert_close(attention_rollout(maps, fusion).double(), paper_rollout(list(maps.values()), fusion), rtol=1e-6, atol=1e-7)
    ws = [w.double().mean(1) for w in maps.values()]
    torch.testing.assert_close(attention_rollout(maps, residual=False).double(), ws[1] @ ws[0], rtol=1e-6, atol=1e-7)

def test_flow_equals_an_integer_max_flow():
    "attention_flow (networkx) equals scipy's integer maximum flow on the same graph (capacities scaled by 1e8)"
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow
    model, x = timm_vit()
    maps = attention_maps(model, x)
    got = attention_flow(maps, query=0)
    L, T = len(maps), 21
    for n in range(2):
        layers = [paper_rollout([w[n:n+1]], 'mean')[0].numpy() for w in maps.values()]
        cap = np.zeros(((L + 1) * T, (L + 1) * T), dtype=np.int64)
        for l, a in enumerate(layers): cap[l*T:(l+1)*T, (l+1)*T:(l+2)*T] = np.round(a.T * 1e8)   # edge token j below -> token i above
        for j in range(T):
            ref = maximum_flow(csr_matrix(cap.astype(np.int32)), j, L * T + 0).flow_value / 1e8
            assert abs(got[n, j].item() - ref) < 1e-6, (n, j)
    assert got.shape == (2, T) and (got > 0).all()

def test_layout_and_bad_input():
    model, x = timm_vit()
    s = torch.rand(2, 21)
    torch.testing.assert_close(token_layout(s, model), s[:, 5:].reshape(2, 4, 4))
    assert token_layout(s, prefix=0).shape == (2, 21)
    with pytest.raises(ValueError, match='do not fill'): token_layout(s, model, prefix=1)
    with pytest.raises(ValueError, match=r'\(N, tokens\)'): token_layout(s[0], model)
    with pytest.raises(ValueError, match='no attention op'): attention_maps(nn.Linear(3, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match='finite'): attention_maps(model, x * float('nan'))

def test_hf_vit():
    "Hugging Face ViT (SDPA): maps equal the eager implementation's output_attentions; its config says 1 class token, the rollout map is the 4x4 grid"
    from transformers import ViTModel
    from tiny_models import hf_vit
    model = hf_vit(ViTModel, attn_implementation='sdpa')
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = attention_maps(model, {'pixel_values': x})
    assert len(maps) == 2 and all(a.shape == (2, 2, 17, 17) for a in maps.values())
    for (q, k, _), a in zip(logged_qk(model, x)[0], maps.values()): torch.testing.assert_close(a.double(), by_hand(q, k), **TOL)
    eager = copy.deepcopy(model); eager.set_attn_implementation('eager')
    for a, r in zip(maps.values(), eager(pixel_values=x, output_attentions=True).attentions): torch.testing.assert_close(a, r, **TOL)
    assert rollout_map(model, x).shape == (2, 4, 4)

# ---- bad input: each error names the problem ----
@pytest.fixture(scope='module')
def vit_maps():
    "The notebook's small torchvision ViT (2 layers, 2 heads, 17 tokens), its input and its maps"
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    img = torch.rand(2, 3, 32, 32)
    return vit, img, attention_maps(vit, img)

def test_unknown_layer(vit_maps):
    vit, img, _ = vit_maps
    with pytest.raises(KeyError, match='not attention layers'): attention_maps(vit, img, layers=['encoder.layers.encoder_layer_0'])

def test_model_without_attention():
    with pytest.raises(ValueError, match='ran no attention op'): attention_maps(nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1)), torch.randn(2, 3))

def test_not_a_module(vit_maps):
    _, img, _ = vit_maps
    with pytest.raises(TypeError, match=re.escape('nn.Module')): attention_maps(lambda x: x, img)

def test_unknown_head_fusion(vit_maps):
    with pytest.raises(ValueError, match=re.escape("'mean', 'max' or 'min'")): attention_rollout(vit_maps[2], head_fusion='sum')

def test_maps_of_two_shapes():
    with pytest.raises(ValueError, match='one shape'): attention_rollout([torch.rand(1, 2, 5, 5), torch.rand(1, 2, 3, 3)])

def test_empty_maps():
    with pytest.raises(ValueError, match='empty'): attention_rollout({})

def test_query_out_of_range(vit_maps):
    with pytest.raises(IndexError, match='query'): attention_flow(vit_maps[2], query=17)
