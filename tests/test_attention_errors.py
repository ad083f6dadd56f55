"netlens.attention's bad-input errors (moved from nbs/12a_attention.ipynb): each names the problem"
import re
import pytest, torch, torch.nn as nn, torchvision
from netlens.attention import attention_maps, attention_rollout, attention_flow

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
