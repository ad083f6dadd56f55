"""The small random-init models from timm and Hugging Face transformers that the tests probe (nothing downloaded):
one builder each, seeded with 0, in eval mode. Keyword arguments override the config."""
import torch, timm, transformers

def _seeded(build):
    torch.manual_seed(0)
    return build().eval()

def timm_model(name, num_classes=5, **kw): return _seeded(lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **kw))

def timm_vit_reg(num_classes=5):
    "A timm ViT at 32 px: a class token and 4 register tokens, then 16 patch tokens on a 4x4 grid"
    return timm_model('vit_small_patch16_224', num_classes, img_size=32, patch_size=8, depth=2, reg_tokens=4)

def timm_swin(num_classes=5):
    "A timm Swin at 32 px: channels-last (N, H, W, C) stages"
    return timm_model('swin_tiny_patch4_window7_224', num_classes, img_size=32, window_size=2, depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1))

def _hf(cls, config, defaults, cfg): return _seeded(lambda: cls(config(**{**defaults, **cfg})))

def hf_vit(cls=transformers.ViTForImageClassification, **cfg):
    "A Hugging Face ViT at 32 px: one CLS token, 16 patches"
    return _hf(cls, transformers.ViTConfig, dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=37, num_labels=5), cfg)

def hf_bert(cls=transformers.BertForSequenceClassification, **cfg):
    return _hf(cls, transformers.BertConfig, dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                                 vocab_size=100, num_labels=3), cfg)

def hf_gpt2(cls=transformers.GPT2LMHeadModel, **cfg):
    return _hf(cls, transformers.GPT2Config, dict(n_embd=32, n_layer=2, n_head=2, vocab_size=100), cfg)

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
