"""Bad input to the explorers of netlens.widgets (moved from nbs/13_widgets.ipynb): each is refused with an error that names
the problem and the fix; the model is left as it was"""
import re
import pytest, torch, torch.nn as nn, torchvision
from transformers import GPT2Config, GPT2LMHeadModel
from netlens.core import normalize
from netlens.data import digits_cnn, digits_data, sample_image
from netlens.hooks import ModelSnapshot
from netlens.attention import fuse_heads
from netlens.widgets import AttributionExplorer, ChannelExplorer, AttentionExplorer

@pytest.fixture(scope='module')
def digits():
    model = digits_cnn()
    x, y = digits_data('test')
    snap = ModelSnapshot(model)
    yield model, x[:3]
    assert snap.diff(model) == []

class Pair(nn.Module):
    "A model whose output is a tuple: the image, then the scores"
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return x, self.m(x)

def _nan_at_1(x):
    bad = x[:3].clone(); bad[1, 0, 1, 1] = float('nan')
    return bad

# (what, exception, message, call(model, x)) with x three held-out digits (3, 1, 32, 32) in [0, 1]
CASES = [
    ('normalised', ValueError, 'pass denorm=True', lambda m, x: AttributionExplorer(m, normalize(x[:1], [0.5], [0.2]))),
    ('nan', ValueError, 'at examples [1]', lambda m, x: AttributionExplorer(m, _nan_at_1(x))),
    ('empty', ValueError, 'x is empty', lambda m, x: AttributionExplorer(m, x[:0])),
    ('channels', ValueError, 'the model takes 1', lambda m, x: AttributionExplorer(m, x[:1].expand(1, 3, 32, 32))),
    # the target is a class of the model, never clamped
    ('target-range', IndexError, 'target 12 is out of range: the model has 10 classes', lambda m, x: AttributionExplorer(m, x[:1], target=12)),
    ('target-float', TypeError, 'target must be an integer index, got 2.5', lambda m, x: AttributionExplorer(m, x[:1], target=2.5)),
    ('target-bool', TypeError, 'target must be an integer index', lambda m, x: AttributionExplorer(m, x[:1], target=torch.tensor(True))),
    ('classes', ValueError, 'classes has 3 names, the model has 10', lambda m, x: AttributionExplorer(m, x[:1], classes='abc')),
    ('method', ValueError, 'method must be one of', lambda m, x: AttributionExplorer(m, x[:1], method='gradcam+')),
    # a tuple output: its first tensor, here the image, is not scores
    ('output', ValueError, 'must be scores (N, classes), got shape (1, 1, 32, 32)', lambda m, x: AttributionExplorer(Pair(m), x[:1])),
    ('layer', KeyError, "closest: 'conv3'", lambda m, x: AttributionExplorer(m, x[:1], layers=['conv9'])),
    ('channel-size', ValueError, 'size must be an integer >= 1, got 0', lambda m, x: ChannelExplorer(m, size=0)),
    ('channel-steps', ValueError, 'steps must be an integer >= 1, got 0', lambda m, x: ChannelExplorer(m, size=16, steps=0)),
    ('channel-layer', KeyError, "closest: 'conv3'", lambda m, x: ChannelExplorer(m, layers=['conv9'], size=16, steps=1)),
]

@pytest.mark.parametrize('exc, msg, call', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_attribution_and_channel_explorers_refuse_bad_input(digits, exc, msg, call):
    model, x = digits
    with pytest.raises(exc, match=re.escape(msg)): call(model, x)

@pytest.fixture(scope='module')
def vit():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=37, num_classes=10).eval()
    photos = torch.stack([sample_image(n, size=32) for n in ('chelsea', 'astronaut', 'coffee')])
    return vit, photos

@pytest.fixture(scope='module')
def gpt():
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100)).eval()
    words = 'the cat sat on the mat and purred'.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    batch = {'input_ids': torch.tensor([[vocab[w] for w in words], [vocab[w] for w in words[::-1]]])}
    return gpt, batch, words

def test_attention_explorer_tokens_must_match_the_examples(gpt):
    model, batch, words = gpt
    with pytest.raises(ValueError, match=re.escape('tokens must hold one list of 8 strings per example (2 lists)')):
        AttentionExplorer(model, batch, tokens=words)

@pytest.mark.parametrize('kw, exc, msg', [
    (dict(head=2), ValueError, "head must be a head index 0..1 or one of ('mean', 'max', 'min'), got 2"),
    (dict(query=17), IndexError, 'query'),
    (dict(grid=(3, 3)), ValueError, 'grid=(3, 3) and prefix=1 make 10 tokens, the attention layers have [17]'),
], ids=['head', 'query', 'grid'])
def test_attention_explorer_refuses_bad_arguments(vit, kw, exc, msg):
    model, photos = vit
    with pytest.raises(exc, match=re.escape(msg)): AttentionExplorer(model, photos[:1], **kw)

def test_attention_explorer_refuses_unscaled_images(vit):
    model, photos = vit
    with pytest.raises(ValueError, match=re.escape('divide by 255')): AttentionExplorer(model, photos[:1] * 255)

def test_attention_explorer_needs_attention(digits):
    model, x = digits
    with pytest.raises(ValueError, match=re.escape('ran no attention op')): AttentionExplorer(model, x[:1], grid=(4, 4))

def test_fuse_heads_names_the_head_count():
    with pytest.raises(IndexError, match=re.escape('this layer has 2 heads')): fuse_heads(torch.rand(2, 3, 3), 5)
