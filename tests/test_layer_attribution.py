"""Attribution through a layer, dict inputs and model outputs on Hugging Face models (issue 13): netlens against Captum's
LayerIntegratedGradients / LayerGradientXActivation on random-init BERT and GPT-2 from tiny configs; the attention mask follows
its example in every enlarged batch; a ViT's ModelOutput is read as its logits; token ids without a layer get a clear error;
guided backpropagation warns on a model without ReLUs."""
import warnings
import pytest, torch, torch.nn as nn
import tiny_models as tiny
from captum.attr import LayerIntegratedGradients, LayerGradientXActivation
import netlens.attribution as A
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count

def close(a, b, tol=1e-4):
    "Agreement within `tol`, absolute and relative to the largest magnitude; the error is printed for the report"
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    print(f'max abs error {err:.2e} (scale {scale:.2e})')
    assert a.shape == b.shape and scale > 0 and err <= tol * max(1., scale), f"max abs error {err:.3g} vs scale {scale:.3g}"

@pytest.fixture(scope='module')
def bert():
    m = tiny.hf_bert(initializer_range=0.3)   # larger than 0.02: attention far from uniform, so the mask matters
    ids = torch.tensor([[2, 15, 27, 33, 41, 3], [2, 19, 8, 3, 0, 0]])        # example 1 padded
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return m, ids, mask, torch.tensor([1, 2])

def bert_fwd(m): return lambda ids, mask: m(input_ids=ids, attention_mask=mask).logits

@pytest.mark.parametrize('layer', ['bert.embeddings', 'bert.embeddings.word_embeddings'])
def test_bert_layer_integrated_gradients_equal_captum(bert, layer):
    m, ids, mask, y = bert
    snap = ModelSnapshot(m)
    ours, d = A.integrated_gradients(m, {'input_ids': ids, 'attention_mask': mask}, y, layer=layer, n_steps=16, return_delta=True)
    lig = LayerIntegratedGradients(bert_fwd(m), m.get_submodule(layer))
    theirs, dc = lig.attribute(ids, target=y, additional_forward_args=(mask,), n_steps=16, method='gausslegendre', return_convergence_delta=True)
    assert ours.shape == (2, 6, 32)
    close(ours, theirs)
    close(d, dc.to(d.dtype))
    assert snap.diff(m) == [] and hook_count(m) == 0

def test_bert_mask_follows_its_example(bert):
    "The padded example's attribution in the batch (copy-major steps, in chunks) is its attribution alone, and, on its real tokens, that of the unpadded example"
    m, ids, mask, y = bert
    batch = {'input_ids': ids, 'attention_mask': mask}
    full = A.integrated_gradients(m, batch, y, layer='bert.embeddings', n_steps=8, batch_size=6)      # 3 steps per forward
    alone = A.integrated_gradients(m, {'input_ids': ids[1:], 'attention_mask': mask[1:]}, y[1:], layer='bert.embeddings', n_steps=8)
    unpadded = A.integrated_gradients(m, {'input_ids': ids[1:, :4], 'attention_mask': mask[1:, :4]}, y[1:], layer='bert.embeddings', n_steps=8)
    torch.testing.assert_close(full[1:], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full[1:, :4], unpadded, rtol=1e-4, atol=1e-5)
    assert (full[1] - A.integrated_gradients(m, {'input_ids': ids, 'attention_mask': torch.ones_like(mask)}, y, layer='bert.embeddings', n_steps=8)[1]).abs().max() > 1e-2 * full[1].abs().max(), 'the mask matters'

def test_bert_gradient_x_activation_equal_captum(bert):
    m, ids, mask, y = bert
    batch = {'input_ids': ids, 'attention_mask': mask}
    for layer in ('bert.embeddings', 'bert.encoder.layer.0.output'):
        mod = m.get_submodule(layer)
        close(A.input_x_gradient(m, batch, y, layer=layer), LayerGradientXActivation(bert_fwd(m), mod).attribute(ids, target=y, additional_forward_args=(mask,)))
        grad = LayerGradientXActivation(bert_fwd(m), mod, multiply_by_inputs=False).attribute(ids, target=y, additional_forward_args=(mask,))
        close(A.saliency(m, batch, y, layer=layer, abs=False), grad)
        close(A.saliency(m, batch, y, layer=layer), grad.abs())
        close(A.input_grad(m, batch, y, layer=layer)[0], grad)

def test_bert_token_ids_without_a_layer(bert):
    m, ids, mask, y = bert
    for f in (lambda v: A.saliency(m, v, y), lambda v: A.integrated_gradients(m, v, y, n_steps=2), lambda v: A.input_x_gradient(m, v, y)):
        with pytest.raises(TypeError, match=r"^x holds integer token ids \(torch.int64\), which have no gradient: attribute through a layer, e\.g\. layer='bert.embeddings.word_embeddings'$"): f(ids)
        with pytest.raises(TypeError, match=r"^x\['input_ids'\] holds integer token ids .*layer='bert.embeddings.word_embeddings'"): f({'input_ids': ids, 'attention_mask': mask})
    for name, f in [('smooth_grad', lambda: A.smooth_grad(m, ids, y, n_samples=2)), ('occlusion', lambda: A.occlusion(m, ids, y, window=(1,), stride=(1,))),
                    ('guided_backprop', lambda: A.guided_backprop(m, ids, y))]:
        with pytest.raises(TypeError, match=f"{name} has no layer=; attribute through a layer with saliency, input_x_gradient or integrated_gradients"): f()

def test_token_scores_and_show_tokens(bert):
    m, ids, mask, y = bert
    attr = A.integrated_gradients(m, {'input_ids': ids, 'attention_mask': mask}, y, layer='bert.embeddings', n_steps=4)
    s = A.token_scores(attr)
    torch.testing.assert_close(s, attr.sum(-1))
    h = A.show_tokens([f't{i}' for i in ids[0].tolist()], s[0], html=True)
    assert h.data.count('<mark') == 6 and h._repr_html_() == h.data

@pytest.fixture(scope='module')
def gpt2():
    m = tiny.hf_gpt2()
    return m, torch.tensor([[5, 17, 42, 8, 91], [60, 3, 3, 77, 12]]), torch.tensor([17, 4])

def test_gpt2_last_token_through_wte_equals_captum(gpt2):
    m, ids, y = gpt2
    last = lambda o: o.logits[:, -1]
    ours, d = A.integrated_gradients(m, ids, y, layer='transformer.wte', output=last, n_steps=16, return_delta=True)
    theirs, dc = LayerIntegratedGradients(lambda t: m(t).logits[:, -1], m.transformer.wte).attribute(ids, target=y, n_steps=16, return_convergence_delta=True)
    close(ours, theirs); close(d, dc.to(d.dtype))
    close(A.input_x_gradient(m, ids, y, layer='transformer.wte', output=last), LayerGradientXActivation(lambda t: m(t).logits[:, -1], m.transformer.wte).attribute(ids, target=y))
    with pytest.raises(ValueError, match=r"must be scores \(N, classes\), got shape \(2, 5, 100\).*output=lambda o: o\[:, -1\]"): A.saliency(m, ids, y, layer='transformer.wte')
    with pytest.raises(ValueError, match=r"layer 'transformer.wpe' outputs shape \(1, 5, 32\) for a batch of 2: its first dimension is not the examples"):
        A.saliency(m, ids, y, layer='transformer.wpe', output=last)

@pytest.fixture(scope='module')
def hf_vit():
    return tiny.hf_vit(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 3])

class Logits(nn.Module):
    "The plain wrapper users used to write"
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(x).logits

@pytest.mark.parametrize('method', ['saliency', 'integrated_gradients', 'occlusion', 'smooth_grad', 'input_x_gradient'])
def test_vit_model_output(hf_vit, method):
    "saliency(hf_vit, x, y) used to fail with `'ImageClassifierOutput' object has no attribute 'ndim'`"
    m, x, y = hf_vit
    kw = {'integrated_gradients': dict(n_steps=8), 'occlusion': dict(window=(3, 8, 8), stride=(3, 8, 8)), 'smooth_grad': dict(n_samples=3, seed=0)}.get(method, {})
    f = lambda model, v, **o: getattr(A, method)(model, v, y, **kw, **o)
    ref = f(Logits(m), x)
    assert ref.shape == x.shape and ref.abs().max() > 0
    for r in (f(m, x), f(m, x, output=lambda o: o.logits), f(m, x, output='logits'), f(m, {'pixel_values': x})):
        torch.testing.assert_close(r, ref, rtol=1e-6, atol=1e-7)

def test_vit_layer_integrated_gradients_equal_captum(hf_vit):
    "layer= on float inputs: the baseline (zeros) in input space, the path in the layer's output space"
    m, x, y = hf_vit
    ours = A.integrated_gradients(m, x, y, layer='vit.embeddings', n_steps=8)
    close(ours, LayerIntegratedGradients(lambda t: m(t).logits, m.vit.embeddings).attribute(x, target=y, n_steps=8))
    assert ours.shape == (2, 17, 32)

def test_guided_backprop_warns_without_relu(hf_vit):
    m, x, y = hf_vit
    for f in (A.guided_backprop, A.deconvolution):
        with pytest.warns(UserWarning, match="no ReLU ran in the model's forward pass"): r = f(m, x, y)
        torch.testing.assert_close(r, A.saliency(m, x, y, abs=False), rtol=0, atol=0)
    dm, (dx, dy) = digits_cnn(), digits_data('test')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        A.guided_backprop(dm, dx[:2], dy[:2]); A.deconvolution(dm, dx[:2], dy[:2]); A.smooth_grad(dm, dx[:2], dy[:2], n_samples=2, guided=True)
