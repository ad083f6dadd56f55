"""The contract every public entry point keeps with bad input.

Each entry point is walked through a catalogue of inputs a fair user may pass by mistake. For every probe the result
is either correct (equal to the result on the clean input where it should be) or an exception raised by netlens
whose message names the argument; never a NaN, and never an error thrown from deep inside torch without netlens'
words. After every probe, returning or raising (a KeyboardInterrupt in the middle of the work included), the model's
parameters, buffers, .grad, modes, requires_grad and hooks, torch's function-mode stack, grad mode and the caller's
RNG are exactly as before.

Entry points are discovered from the modules' `__all__`: a public name must be either probed here or exempted with
the reason (`EXEMPT`), so a new function cannot be forgotten."""
import importlib, inspect, warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
import numpy as np, PIL.Image, pytest, torch, torch.nn as nn, torch.nn.functional as F

import netlens
from netlens.data import digits_cnn, digits_data
from netlens.hooks import ModelSnapshot, hook_count
from netlens.core import keep_buffers
from netlens import attribution as A, similarity as S, landscape as L, optvis as O, dream as D, style as ST, trace as T
from netlens import widgets as W, flat as FL, atlas as AT

MODULES = ['core', 'adapters', 'data', 'hooks', 'flat', 'attribution', 'attribution.gradients', 'attribution.cam', 'attribution.occlusion', 'optvis', 'dream', 'style', 'similarity',
           'landscape', 'trace', 'widgets', 'tour', 'attention', 'distributed', 'atlas']
NETLENS = Path(netlens.__file__).parent

# ---------------------------------------------------------------------------------------------- the fixtures
MODEL = digits_cnn()
_x, _y = digits_data('test')
X = _x[:3].clone()                  # (3, 1, 32, 32) in [0, 1]
TARGET = _y[:3].clone()
MODEL64 = digits_cnn().double()

def tiny_vgg():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
VGG = tiny_vgg()
RGB = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

class Wrapped(nn.Module):
    "The digits model behind a wrapper whose output is `kind`: 'tuple', 'dict' (with logits), 'nologits' (a dict without), or the model's own"
    def __init__(self, m, kind): super().__init__(); self.m, self.kind = m, kind
    def forward(self, x):
        out = self.m(x)
        return (out, out.detach()) if self.kind == 'tuple' else {'logits': out} if self.kind == 'dict' else {'scores': out} if self.kind == 'nologits' else out

class Interrupting(nn.Module):
    "Raises KeyboardInterrupt at its `at`-th forward call, as a user pressing ctrl-C mid-loop"
    def __init__(self, m, at): super().__init__(); self.m, self.at, self.calls = m, at, 0
    def forward(self, x):
        self.calls += 1
        if self.calls >= self.at: raise KeyboardInterrupt
        return self.m(x)

# ---------------------------------------------------------------------------------------------- entry points
@dataclass
class Entry:
    "How to call one entry point: `run(model, x, prefix)` with everything else fixed to small, valid values"
    name: str
    run: Callable
    kind: str                       # what `x` is: 'batch', 'image', 'features', 'data', 'loader', 'none'
    model: nn.Module = None         # the model probed (the digits CNN unless given)
    x: object = None                # the clean input (X unless given)
    arg: str = 'x'                  # the argument name an error about `x` must name
    scores: bool = True             # reads the model's scores (a tuple's first element, a dict's logits; a dict without logits: a clear error)
    per_example: bool = True        # result row i depends on example i only (batch of 1 = first row)
    eval_in_train: bool = False     # runs the model in eval mode for the call: in train mode, exactly the eval-mode result
    finite_only: bool = True        # refuses NaN/Inf input (the tracer logs them: finding NaNs is what it is for)
    empty_ok: bool = False          # an empty batch is a valid input (the tracer and recorder run the model on what they get)
    layer: bool = False             # takes a layer name (`prefix` + 'conv2'); unknown layers must raise KeyError
    extra: list = field(default_factory=list)   # (probe name, call, words the error must contain)

    def __post_init__(self):
        self.model = MODEL if self.model is None else self.model
        self.x = X if self.x is None else self.x

m_x = dict(kind='batch', eval_in_train=True)
ENTRIES = [
    Entry('saliency', lambda m, x, p='': A.saliency(m, x, TARGET[:len(x)]), **m_x,
          extra=[('target out of range', lambda: A.saliency(MODEL, X, 10), ['target']),
                 ('bad sign', lambda: A.saliency(MODEL, X, TARGET, sign='up'), ['sign'])]),
    Entry('input_grad', lambda m, x, p='': A.input_grad(m, x, TARGET[:len(x)])[0], **m_x),
    Entry('input_x_gradient', lambda m, x, p='': A.input_x_gradient(m, x, TARGET[:len(x)]), **m_x),
    Entry('guided_backprop', lambda m, x, p='': A.guided_backprop(m, x, TARGET[:len(x)]), **m_x),
    Entry('deconvolution', lambda m, x, p='': A.deconvolution(m, x, TARGET[:len(x)]), **m_x),
    Entry('smooth_grad', lambda m, x, p='': A.smooth_grad(m, x, TARGET[:len(x)], n_samples=4, seed=0), **m_x,
          extra=[('negative stdev', lambda: A.smooth_grad(MODEL, X, TARGET, n_samples=4, stdev=-0.1, seed=0), ['stdev']),
                 ('n_samples 0', lambda: A.smooth_grad(MODEL, X, TARGET, n_samples=0, seed=0), ['n_samples']),
                 ('batch_size 0', lambda: A.smooth_grad(MODEL, X, TARGET, n_samples=4, batch_size=0, seed=0), ['batch_size'])]),
    Entry('integrated_gradients', lambda m, x, p='': A.integrated_gradients(m, x, TARGET[:len(x)], n_steps=4), **m_x,
          extra=[('n_steps 0', lambda: A.integrated_gradients(MODEL, X, TARGET, n_steps=0), ['n_steps']),
                 ('batch_size 0', lambda: A.integrated_gradients(MODEL, X, TARGET, n_steps=4, batch_size=0), ['batch_size']),
                 ('baseline shape', lambda: A.integrated_gradients(MODEL, X, TARGET, baseline=torch.zeros(2, 1, 8, 8), n_steps=4), ['baseline'])]),
    Entry('grad_cam', lambda m, x, p='': A.grad_cam(m, x, TARGET[:len(x)], p + 'conv2'), layer=True, **m_x,
          extra=[('channel out of range', lambda: A.grad_cam(MODEL, X, TARGET, 'conv2', channel=999), ['channel'])]),
    # GradCAM++'s weights g²/(2g² + Σ A g³) amplify float32 rounding (batch 3 vs 1 differ by 1e-3 relative in float32, by 0 in
    # float64): probed on a float64 copy of the digits model, so that "batch of 1 = first row" is a real equality
    Entry('cam', lambda m, x, p='': A.cam(m, x, TARGET[:len(x)], p + 'conv2', method='grad_cam++'), layer=True, model=MODEL64, x=X.double(), **m_x,
          extra=[('unknown method', lambda: A.cam(MODEL, X, TARGET, 'conv2', method='grad_cam+++'), ['grad_cam'])]),
    Entry('guided_grad_cam', lambda m, x, p='': A.guided_grad_cam(m, x, TARGET[:len(x)], p + 'conv2'), layer=True, **m_x),
    Entry('layer_acts_grads', lambda m, x, p='': A.layer_acts_grads(m, x, TARGET[:len(x)], p + 'conv2')[1], layer=True, **m_x),
    Entry('occlusion', lambda m, x, p='': A.occlusion(m, x, TARGET[:len(x)], window=(1, 8, 8), stride=(1, 8, 8)), **m_x,
          extra=[('window larger than x', lambda: A.occlusion(MODEL, X, TARGET, window=(1, 64, 64), stride=(1, 8, 8)), ['window']),
                 ('batch_size 0', lambda: A.occlusion(MODEL, X, TARGET, window=(1, 8, 8), stride=(1, 8, 8), batch_size=0), ['batch_size'])]),
    Entry('AttributionExplorer', lambda m, x, p='': W.AttributionExplorer(m, x, target=int(TARGET[0])).attr, kind='batch', x=X[:1], per_example=False, eval_in_train=True,
          extra=[('target out of range', lambda: W.AttributionExplorer(MODEL, X[:1], target=12), ['target'])]),
    Entry('log_forward_pass', lambda m, x, p='': T.log_forward_pass(m, x).output.detach(), kind='batch', scores=False, finite_only=False, empty_ok=True,
          extra=[('layers_to_save out of range', lambda: T.log_forward_pass(MODEL, X, layers_to_save=[9999]), ['9999']),
                 ('unknown layer to save', lambda: T.log_forward_pass(MODEL, X, layers_to_save=['bogus']), ['bogus'])]),
    Entry('validate_saved_activations', lambda m, x, p='': torch.tensor(bool(T.validate_saved_activations(m, x))), kind='batch',
          scores=False, finite_only=False, empty_ok=True, per_example=False),
    Entry('FlatModel.record', lambda m, x, p='': _record(m, x, p + 'conv2'), kind='batch', scores=False, finite_only=False, empty_ok=True, layer=True),
    # images in [0, 1]
    Entry('deep_dream', lambda m, x, p='': D.deep_dream(m, x, p + 'conv2', octaves=1, steps=2, seed=0, show_progress=False),
          kind='image', arg='image', scores=False, layer=True, per_example=False,
          extra=[('steps 0', lambda: D.deep_dream(MODEL, X, 'conv2', octaves=1, steps=0, show_progress=False), ['steps'])]),
    Entry('invert_features', lambda m, x, p='': D.invert_features(m, x, p + 'conv2', steps=2, seed=0, show_progress=False),
          kind='image', arg='image', scores=False, layer=True, per_example=False,
          extra=[('steps 0', lambda: D.invert_features(MODEL, X, 'conv2', steps=0, show_progress=False), ['steps'])]),
    Entry('style_transfer', lambda m, x, p='': ST.style_transfer(m, x, RGB, content_layers=['relu2_1'], style_layers=['relu1_1'], steps=2,
                                                                 seed=0, show_progress=False),
          kind='image', arg='x', model=VGG, x=RGB, scores=False, per_example=False,
          extra=[('normalised style', lambda: ST.style_transfer(VGG, RGB, (RGB - 0.45) / 0.225, content_layers=['relu2_1'], style_layers=['relu1_1'], steps=2, show_progress=False), ['style']),
                 ('steps 0', lambda: ST.style_transfer(VGG, RGB, RGB, content_layers=['relu2_1'], style_layers=['relu1_1'], steps=0, show_progress=False), ['steps'])]),
    # no input: the model alone
    Entry('render', lambda m, x, p='': O.render(m, O.channel(p + 'conv2', 3), size=16, steps=2, seed=0, show_progress=False),
          kind='none', scores=False, layer=True,
          extra=[('steps 0', lambda: O.render(MODEL, O.channel('conv2', 3), size=16, steps=0, show_progress=False), ['steps']),
                 ('batch 0', lambda: O.render(MODEL, O.channel('conv2', 3), size=16, batch=0, steps=2, show_progress=False), ['batch']),
                 ('channel out of range', lambda: O.render(MODEL, O.channel('conv2', 999), size=16, steps=2, show_progress=False), ['999']),
                 ('class out of range', lambda: O.render(MODEL, O.class_logit(10), size=16, steps=2, show_progress=False), ['10']),
                 ('class of a dict output without logits', lambda: O.render(Wrapped(MODEL, 'nologits'), O.class_logit(3), size=16, steps=2, show_progress=False), ['output='])]),
    Entry('net_dreamer', lambda m, x, p='': D.net_dreamer(m, p + 'conv2', size=16, octaves=1, steps=2, seed=0, show_progress=False),
          kind='none', scores=False, layer=True),
    Entry('class_visualization', lambda m, x, p='': D.class_visualization(m, classes=[1, 2], size=16, steps=2, seed=0, show_progress=False),
          kind='none',
          extra=[('no classes', lambda: D.class_visualization(MODEL, classes=[], size=16, steps=2, show_progress=False), ['classes']),
                 ('class out of range', lambda: D.class_visualization(MODEL, classes=[10], size=16, steps=2, show_progress=False), ['10'])]),
    Entry('channel_visualization', lambda m, x, p='': D.channel_visualization(m, p + 'conv2', ks=[1, 2], size=16, steps=2, seed=0, show_progress=False),
          kind='none', scores=False, layer=True,
          extra=[('no channels', lambda: D.channel_visualization(MODEL, 'conv2', ks=[], size=16, steps=2, show_progress=False), ['ks']),
                 ('batch_size 0', lambda: D.channel_visualization(MODEL, 'conv2', ks=[1], size=16, steps=2, batch_size=0, show_progress=False), ['batch_size'])]),
    Entry('ChannelExplorer', lambda m, x, p='': W.ChannelExplorer(m, layers=[p + 'conv2'], size=16, steps=2).images, kind='none', scores=False, layer=True),
    # (x, y) data, a tensor pair or batches
    Entry('dataset_loss', lambda m, x, p='': L.dataset_loss(m, (x, TARGET[:len(x)]), F.cross_entropy), kind='data', arg='data', per_example=False),
    Entry('landscape1d', lambda m, x, p='': L.landscape1d(m, (x, TARGET[:len(x)]), F.cross_entropy, step_size=1., seed=0, show_progress=False)[1],
          kind='data', arg='data', per_example=False,
          extra=[('step_size 0', lambda: L.landscape1d(MODEL, (X, TARGET), F.cross_entropy, step_size=0., seed=0, show_progress=False), ['step_size'])]),
    Entry('landscape2d', lambda m, x, p='': L.landscape2d(m, (x, TARGET[:len(x)]), F.cross_entropy, step_size=1., seed=0, show_progress=False)[2],
          kind='data', arg='data', per_example=False),
    Entry('fourier_map', lambda m, x, p='': _computed(L.fourier_map(m, (x, TARGET[:len(x)]), max_freq=2, show_progress=False)), kind='data', arg='data',
          per_example=False,
          extra=[('max_freq -1', lambda: L.fourier_map(MODEL, (X, TARGET), max_freq=-1, show_progress=False), ['max_freq']),
                 ('batch_size 0', lambda: L.fourier_map(MODEL, (X, TARGET), max_freq=2, batch_size=0, show_progress=False), ['batch_size'])]),
    Entry('compare_models', lambda m, x, p='': S.compare_models(m, m, [x], [p + 'conv2'], [p + 'conv3'], show_progress=False).matrix,
          kind='loader', arg='loader', x=_x[:8], scores=False, layer=True, per_example=False,   # the unbiased HSIC needs 4 examples a batch
          extra=[('loaders of different lengths', lambda: S.compare_models(MODEL, MODEL, [_x[:8], _x[:8]], ['conv2'], ['conv3'], loader2=[_x[:8]], show_progress=False), ['loader']),
                 ('unknown measure', lambda: S.compare_models(MODEL, MODEL, [_x[:8]], ['conv2'], ['conv3'], measure='ckaa', show_progress=False), ['ckaa'])]),
    Entry('layer_similarity', lambda m, x, p='': S.layer_similarity(m, m, x, p + 'conv2', p + 'conv3'), kind='batch', scores=False,
          layer=True, per_example=False,
          extra=[('a list of layers', lambda: S.layer_similarity(MODEL, MODEL, X, ['conv2', 'conv3'], 'conv3'), ['layer1'])]),
    Entry('intervene', lambda m, x, p='': T.intervene(m, x, {p + 'conv3': lambda o: o * 0.5}).detach(), kind='batch', scores=False,
          finite_only=False, empty_ok=True, layer=True,
          extra=[('unknown op', lambda: T.intervene(MODEL, X, {'bogus': 0.}), ['bogus']),
                 ('replacement shape', lambda: T.intervene(MODEL, X, {'conv3': torch.zeros(3)}), ['shape']),
                 ('unknown function', lambda: T.intervene(MODEL, X, {}, replace_funcs={'rellu': F.gelu}), ['relu'])]),
    Entry('patch_sweep', lambda m, x, p='': T.patch_sweep(m, x, x.flip(0), [p + 'conv2', p + 'res.conv1']), kind='batch', scores=False,
          per_example=False, finite_only=False, layer=True,
          extra=[('no sites', lambda: T.patch_sweep(MODEL, X, X.flip(0), []), ['sites']),
                 ('inputs of different shapes', lambda: T.patch_sweep(MODEL, X, X[:2], ['res']), ['shape'])]),
    Entry('top_activations', lambda m, x, p='': AT.top_activations(m, [x[:5], x[5:]], p + 'conv2', k=3, lowest=True, show_progress=False)[p + 'conv2'].values,
          kind='loader', arg='loader', x=_x[:8], scores=False, layer=True, per_example=False),
    Entry('receptive_field', lambda m, x, p='': torch.tensor([[s.start, s.stop] for s in AT.receptive_field(m, p + 'conv2', (3, 3), (1, 32, 32))]),
          kind='none', scores=False, layer=True),
]

def _computed(m): return m[~m.isnan()]   # fourier_map marks the frequencies it did not compute with NaN

def _record(m, x, name):
    "The user's own forward inside a recording (kept from moving BatchNorm statistics: that forward is the user's choice, not netlens')"
    with FL.FlatModel(m).record([name]) as rec, keep_buffers(m): m(x)
    return rec[name]

# similarity measures: two (n, features) tensors
FEATS = torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
FEATS2 = FEATS @ torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.3 * torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
MEASURES = {n: getattr(S, n) for n in ['linear_cka', 'kernel_cka', 'unbiased_cka', 'cca', 'svcca', 'pwcca', 'procrustes',
                                       'angular_procrustes', 'rsa', 'distance_correlation', 'mutual_knn', 'cknna', 'regression_r2']}
MEASURE_KW = {'mutual_knn': dict(k=3), 'cknna': dict(k=3)}

EXEMPT = {  # public names that take no user data to check, with the reason
    **{n: 'a constant' for n in ['IMAGENET_MEAN', 'IMAGENET_STD', 'DIGITS_SPLITS', 'DIGITS_WEIGHTS', 'SAMPLE_IMAGES', 'IG_QUADRATURES',
                                 'CAM_METHODS', 'COLOR_CORRELATION', 'PRESETS', 'REDUCTIONS', 'MEASURES', 'MEASURE_ALIASES', 'DISTANCES', 'LAYER_METHODS', 'TOUR_PAGES']},
    **{n: 'a result or building-block type, probed through the functions that make it' for n in
       ['ResBlock', 'DigitsCNN', 'Hook', 'Hooks', 'ModelSnapshot', 'annotate_errors', 'Recording', 'Channel', 'Rendered', 'ImageParam',
        'Objective', 'Attribution', 'Dreamed', 'Styled', 'Intervened', 'SimilarityResult', 'TensorOp', 'ModelLog', 'ValidationReport', 'Page', 'relu_rule', 'TopActivations']},
    **{n: 'an objective, a transform or a parameterisation: checked when render runs it (probes above)' for n in
       ['channel', 'neuron', 'layer_activation', 'class_logit', 'class_prob', 'direction', 'diversity', 'tv', 'l1', 'l2', 'feature_distance',
        'pad', 'jitter', 'random_scale', 'random_rotate', 'compose', 'standard_transforms', 'decorrelate_colors', 'correlate_colors']},
    **{n: 'a device, seed or context helper with no user data' for n in
       ['default_device', 'model_device', 'model_dtype', 'to_device', 'eval_mode', 'keep_buffers', 'set_seed', 'seeded', 'frozen',
        'generator', 'guarded', 'avg_pooling', 'default_style_model', 'unknown_key_error', 'blank_input', 'input_channels', 'fig_to_png']},
    **{n: 'an input check itself (tested in nbs/00a_adapters.ipynb)' for n in
       ['check_tensor', 'check_finite', 'check_batch', 'as_images', 'check_count', 'check_number', 'check_scores', 'check_index', 'check_module',
        'unwrap_model', 'to_model_input', 'to_model_images', 'keeps_rng', 'training_modules', 'warn_if_training', 'progress', 'check_layers',
        'check_inputs', 'check_call', 'check_result', 'main_tensor']},
    **{n: 'a plot, figure or static site of a result (takes what the functions above return)' for n in
       ['plot_patch_sweep', 'feature_atlas', 'export_atlas', 'show_top_tokens']},
    **{n: 'a file reader: refusals (pickled objects, other files, versions) tested in tests/test_trace.py' for n in ['load_log']},
    **{n: 'a lock: tested in nbs/02_hooks.ipynb (another thread waits, the same thread nests)' for n in ['model_lock']},
    **{n: 'a plot of a result (takes what the functions above return)' for n in
       ['show_image', 'show_images', 'show_attribution', 'show_attributions', 'attribution_map', 'show_channels', 'plot_landscape',
        'plot_fourier_map', 'show_model_graph']},
    **{n: 'data and the digits model: no user input beyond names and sizes (tests/test_data.py)' for n in
       ['digits_data', 'digits_loader', 'digits_cnn', 'train_digits_cnn', 'sample_image', 'sample_images', 'accuracy']},
    **{n: 'the gallery and its command line (tests/test_readme.py)' for n in ['tour', 'main']},
    **{n: 'a constant' for n in ['DECOMPOSE', 'CHANNEL_METHODS', 'FUSIONS', 'IMAGENETTE_CLASSES', 'TUTORIAL_DATA', 'LABEL_KEYS']},
    **{n: 'a convention of netlens.adapters, itself tested in nbs/00a_adapters.ipynb and through every entry point above' for n in
       ['Layout', 'feature_layout', 'channels_first', 'as_maps', 'num_prefix_tokens', 'token_grid', 'model_output', 'call_model', 'main_input',
        'batch_len', 'map_batch', 'expand_batch', 'with_main_input', 'split_labels', 'model_scores', 'to_model_inputs', 'embedding_name', 'model_input_size', 'resize_to', 'keep_size', 'declared_grids',
        'size_hw', 'image_size', 'resize', 'as_preprocess', 'SCORES_FIX', 'split_batch', 'as_baseline', 'by_example', 'check_examples_dim',
        'feature_width', 'takes_token_ids', 'is_token_ids', 'as_layout', 'split_call']},
    **{n: 'attention needs a transformer, not the digits CNN: inputs, masks, layouts and errors probed in tests/test_attention.py and tests/test_models_matrix.py' for n in
       ['attention_maps', 'sdpa_weights', 'fuse_heads', 'attention_rollout', 'attention_flow', 'token_layout', 'rollout_map', 'attention_layers']},
    **{n: 'torch.distributed plumbing and the dataset runner: probed under torchrun in tests/test_distributed.py' for n in
       ['is_distributed', 'single_process', 'get_rank', 'get_world_size', 'is_main', 'shard_range', 'shard', 'all_gather_object', 'all_ranks',
        'barrier', 'all_reduce_sum', 'all_gather_cat', 'progress_main', 'attribute_loader']},
    **{n: 'tutorial data and weights with an offline fallback: tests/test_data.py' for n in
       ['Tutorial', 'tutorial_setup', 'tutorial_data', 'load_pretrained', 'pretrained_categories']},
    **{n: 'an explorer or its drawing helper: nbs/13_widgets.ipynb and the browser test (tests/test_widgets.py)' for n in
       ['AttentionExplorer', 'colorbar_html', 'display_scale', 'explorer_layers', 'grid_image', 'matrix_image', 'overlay_map',
        'patch_overlay', 'sign_cmap', 'to_png']},
    **{n: 'a plot or summary of a result (takes what the functions above return)' for n in
       ['show_tokens', 'tokens_html', 'token_scores', 'show_attention', 'show_rollout']},
    **{n: 'a helper of an entry point above (same checks run through it)' for n in
       ['per_example', 'target_scores', 'ig_quadrature', 'optimize', 'hook_output', 'hook_outputs', 'hook_count',
        'FlatModel', 'Capture', 'rule_gradient', 'Method', 'METHODS', 'TensorRef', 'fill_refs', 'Run', 'objective_value', 'dataset_examples', 'example_patch', 'patch_strip', 'as_features', 'rbf_gram', 'u_center', 'unbiased_hsic', 'dcka', 'gram', 'style_loss', 'content_loss',
        'vgg_layer_names', 'image_to_tensor', 'tensor_to_image', 'tensor_to_pil', 'normalize', 'denormalize', 'total_variation',
        'normalize_direction', 'random_direction', 'direction_to', 'fourier_basis', 'conjugate']},
}

def test_every_public_name_is_probed_or_exempted():
    probed = {e.name.split('.')[0] for e in ENTRIES} | set(MEASURES)
    public = {n for m in MODULES for n in importlib.import_module(f'netlens.{m}').__all__}
    missing = sorted(public - probed - set(EXEMPT))
    assert not missing, f"public names neither probed nor exempted (add them to ENTRIES or EXEMPT with a reason): {missing}"
    stale = sorted((set(EXEMPT) | probed) - public)
    assert not stale, f"names probed or exempted that are no longer public: {stale}"

# The naming table of nbs/00a_adapters.ipynb ("Names: one per idea"): an entry point takes its model(s) first and its input
# (`x`) or data (`loader`) right after; retired names stay retired. adapters' helpers take the input as their subject (the
# model is context), so the order rule is for the entry points of the other modules.
RETIRED = {'data': 'loader', 'content': 'x', 'image': 'x', 'img': 'x', 'normalize': 'unit_norm= or relative='}

def _signatures():
    for m in MODULES:
        mod = importlib.import_module(f'netlens.{m}')
        for n in mod.__all__:
            o = getattr(mod, n)
            f = o if inspect.isfunction(o) else vars(o).get('__init__') if inspect.isclass(o) else None
            if f is None: continue
            yield m, n, [p for p in inspect.signature(f).parameters if p != 'self']

def test_one_name_per_idea():
    wrong = []
    for m, n, ps in _signatures():
        models = [p for p in ps if p in ('model', 'model1', 'model2')]
        takes = [p for p in ('x', 'loader') if p in ps]
        if models and takes and m != 'adapters':
            if ps[:len(models)] != models: wrong.append(f"{m}.{n}: the model first, got {ps[:4]}")
            if ps.index(takes[0]) != len(models): wrong.append(f"{m}.{n}: {takes[0]} right after the model, got {ps[:4]}")
        for p in set(ps) & set(RETIRED):
            if models or p == 'normalize': wrong.append(f"{m}.{n}: argument {p!r} is retired, say {RETIRED[p]!r}")
    assert not wrong, wrong

# ---------------------------------------------------------------------------------------------- the probe machinery
COUNTS = Counter()
PER_ENTRY = {}   # entry point -> Counter of its probes' outcomes ('clear errors', 'correct results'), read by test_zzz_counts

def tally(e, outcome):
    COUNTS[outcome] += 1
    PER_ENTRY.setdefault(e.name, Counter())[outcome] += 1

def raised_by_netlens(e) -> bool:
    "`e` was raised by netlens' own code, or carries netlens' note naming the layer of the user's model that failed"
    tb, last = e.__traceback__, None
    while tb is not None: last, tb = tb, tb.tb_next
    if last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(NETLENS): return True
    return any(n.startswith('netlens:') for n in getattr(e, '__notes__', []))

def state(model):
    return ModelSnapshot(model), torch.get_rng_state(), np.random.get_state()[1].copy(), torch._C._len_torch_function_stack(), torch.is_grad_enabled()

def check_state(model, before, what):
    snap, rng, nrng, modes, grad = before
    assert snap.diff(model) == [], f"{what}: the model changed: {snap.diff(model)}"
    assert torch.equal(torch.get_rng_state(), rng) and np.array_equal(np.random.get_state()[1], nrng), f"{what}: the caller's RNG moved"
    assert torch._C._len_torch_function_stack() == modes, f"{what}: a torch function mode was left active"
    assert torch.is_grad_enabled() == grad, f"{what}: grad mode changed"

def attempt(e, model, x, what, p=''):
    "Run `e` on (model, x): (result, None) or (None, exception); the state is checked either way"
    before = state(model)
    try:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            out = e.run(model, x, p)
        res = (out, None, ws)
    except (KeyboardInterrupt, AssertionError): raise
    except Exception as err: res = (None, err, [])
    check_state(model, before, what)
    COUNTS['probes'] += 1
    return res

def expect_error(e, model, x, what, words, p=''):
    out, err, _ = attempt(e, model, x, what, p)
    assert err is not None, f"{e.name} / {what}: no error, returned {type(out).__name__} {_summary(out)}"
    assert raised_by_netlens(err), f"{e.name} / {what}: {type(err).__name__} from outside netlens, without its words: {err}"
    msg = str(err).lower()
    assert any(w.lower() in msg for w in words), f"{e.name} / {what}: the error does not name {words}: {err}"
    tally(e, 'clear errors')

def _summary(out):
    t = _tensor(out)
    return '' if t is None else f"shape {tuple(t.shape)}, finite {bool(torch.isfinite(t.float()).all())}"

def _tensor(out):
    if isinstance(out, torch.Tensor): return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor): return out[0]
    return getattr(out, 'images', None)

def expect_same(e, model, x, ref, what, rows=None, atol=1e-5, p=''):
    "A result equal to `ref` (its first `rows` rows), finite, not attached to any graph; or a clear error"
    out, err, _ = attempt(e, model, x, what, p)
    if err is not None:   # refusing is allowed, if clearly
        assert raised_by_netlens(err), f"{e.name} / {what}: {type(err).__name__} from outside netlens: {err}"
        tally(e, 'clear errors'); return
    t, r = _tensor(out), _tensor(ref)
    assert t is not None, f"{e.name} / {what}: no tensor in the result"
    assert torch.isfinite(t.float()).all(), f"{e.name} / {what}: non-finite result"
    assert t.grad_fn is None and not t.requires_grad, f"{e.name} / {what}: the result is attached to a graph"
    r = r if rows is None else r[:rows]
    assert t.shape == r.shape, f"{e.name} / {what}: shape {tuple(t.shape)} vs {tuple(r.shape)}"
    torch.testing.assert_close(t.float(), r.float(), atol=atol, rtol=1e-4, msg=lambda m: f"{e.name} / {what}: {m}")
    tally(e, 'correct results')

# ---------------------------------------------------------------------------------------------- the catalogue
def variants(x):
    "Clean-valued inputs stored differently: must give the clean result"
    v = {'non-contiguous': x.transpose(-1, -2).contiguous().transpose(-1, -2)}
    if x.ndim == 4: v['channels-last'] = x.contiguous(memory_format=torch.channels_last)
    return v

def bad_values(x, name):
    "Inputs that must be refused: (probe, input, words the error names)"
    nan, inf = x.clone(), x.clone()
    nan[0, 0, 1, 1], inf[-1, 0, 2, 2] = float('nan'), float('inf')
    return [('NaN', nan, [name, 'nan']), ('Inf', inf, [name, 'infinite']), ('empty batch', x[:0], [name, 'empty']),
            ('integer dtype', (x * 255).long(), [name, 'dtype', 'int', 'float'])]

@pytest.mark.parametrize('e', ENTRIES, ids=lambda e: e.name)
def test_contract(e):
    torch.manual_seed(0); np.random.seed(0)
    model, x = e.model, e.x
    ref, err, _ = attempt(e, model, x, 'clean input')
    assert err is None, f"{e.name}: the clean call failed: {err!r}"
    assert torch.isfinite(_tensor(ref).float()).all(), f"{e.name}: the clean result is not finite"
    # stored differently, same values
    if e.kind in ('batch', 'image'):
        for what, v in variants(x).items(): expect_same(e, model, v, ref, what)
        xg = x.clone().requires_grad_()
        expect_same(e, model, xg, ref, 'input that requires grad')
        assert xg.grad is None, f"{e.name}: wrote .grad into the caller's input"
        if e.per_example: expect_same(e, model, x[:1], ref, 'batch of 1', rows=1)
        expect_same(e, model, x.double(), ref, 'float64 input', atol=1e-4)
    # bad values
    if e.kind in ('batch', 'image', 'data', 'loader'):
        for what, v, words in bad_values(x, e.arg):
            if what in ('NaN', 'Inf') and not e.finite_only or what == 'empty batch' and e.empty_ok: continue
            if e.kind == 'image' and what == 'integer dtype': v = v.clamp(0, 255)
            expect_error(e, model, v, what, words)
        if e.kind in ('batch', 'image'): expect_error(e, model, x.flatten(), 'wrong rank (1-D)', [e.arg, 'shape', 'dimension', 'batch'])
    if e.kind == 'image':
        expect_error(e, model, (x - 0.45) / 0.225, 'ImageNet-normalised image', [e.arg, 'denormalize'])
        expect_error(e, model, x * 255, '0..255 floats', [e.arg, '255'])
        expect_same(e, model, (x * 255).round().to(torch.uint8), e.run(model, (x * 255).round() / 255), 'uint8 image', atol=1e-5)
    # the model
    if e.layer:
        expect_error(e, model, x, 'unknown layer', ['bogus'], p='bogus.')
    if e.scores:
        for kind in ('tuple', 'dict'): expect_same(e, Wrapped(model, kind), x, ref, f'{kind} output', p='m.')   # the first element, the logits
        expect_error(e, Wrapped(model, 'nologits'), x, 'dict output without logits', ['output='], p='m.')
    frozen_params = [p for p in model.parameters() if p.requires_grad]
    for p in frozen_params: p.requires_grad_(False)
    try: expect_same(e, model, x, ref, 'frozen parameters')
    finally:
        for p in frozen_params: p.requires_grad_(True)
    model.train()
    try:
        out, err, ws = attempt(e, model, x, 'model in train mode')
        if e.eval_in_train:
            assert err is None, f"{e.name}: failed in train mode: {err!r}"
            torch.testing.assert_close(_tensor(out), _tensor(ref), rtol=0, atol=0, msg=lambda m: f"{e.name} in train mode, not the eval-mode result: {m}")
    finally: model.eval()
    # ctrl-C in the middle of the work: the exception reaches the user, the model is as it was
    for at in (1, 2):
        inter = Interrupting(model, at)
        before = state(model)
        try:
            e.run(inter, x, 'm.' if e.layer else '')
            assert inter.calls < at, f"{e.name}: KeyboardInterrupt at forward {at} was swallowed"   # else the work had fewer forwards
        except KeyboardInterrupt: pass
        check_state(model, before, f'KeyboardInterrupt at forward {at}')
        assert hook_count(inter) == 0, f"{e.name}: hooks left after KeyboardInterrupt"
        COUNTS['interrupts'] += 1
    for what, call, words in e.extra:
        before = state(MODEL) if e.model is MODEL else state(e.model)
        with pytest.raises(Exception) as info: call()
        check_state(e.model, before, what)
        assert raised_by_netlens(info.value), f"{e.name} / {what}: {info.typename} from outside netlens: {info.value}"
        assert any(w.lower() in str(info.value).lower() for w in words), f"{e.name} / {what}: the error does not name {words}: {info.value}"
        COUNTS['probes'] += 1; tally(e, 'clear errors')

@pytest.mark.parametrize('name', list(MEASURES))
def test_measure_contract(name):
    f, kw = MEASURES[name], MEASURE_KW.get(name, {})
    run = lambda X, Y: f(X, Y, **kw)
    ref = run(FEATS, FEATS2)
    assert torch.isfinite(ref).all()
    for what, X_ in variants(FEATS).items(): torch.testing.assert_close(run(X_, FEATS2), ref)
    torch.testing.assert_close(run(FEATS.float(), FEATS2.float()).double(), ref, atol=1e-4, rtol=1e-3)
    Xg = FEATS.clone().requires_grad_()
    assert torch.isfinite(run(Xg, FEATS2)).all() and Xg.grad is None
    nan, inf = FEATS.clone(), FEATS2.clone()
    nan[2, 1], inf[3, 0] = float('nan'), float('inf')
    const = torch.ones_like(FEATS)
    if name == 'regression_r2':   # not symmetric: a constant predictor explains nothing (R² = 0); a constant target is undefined
        assert run(const, FEATS2) == 0
        const_probe = ('constant Y', FEATS, torch.ones_like(FEATS2), ['variance', 'constant'])
    else: const_probe = ('constant X', const, FEATS2, ['variance', 'constant'])
    bad = [('NaN', nan, FEATS2, ['nan']), ('Inf', FEATS, inf, ['infinite', 'inf']), const_probe,
           ('empty', FEATS[:0], FEATS2[:0], ['empty', 'example']), ('one example', FEATS[:1], FEATS2[:1], ['example']),
           ('different n', FEATS, FEATS2[:-1], ['example', 'rows', 'same number']), ('1-D', FEATS[:, 0], FEATS2, ['2', 'shape', 'dimension'])]
    counts = (FEATS * 10).round()      # integer features (counts) are data too: the same value as their float copy
    torch.testing.assert_close(run(counts.long(), FEATS2), run(counts, FEATS2))
    for what, a, b, words in bad:
        with pytest.raises(Exception) as info: run(a, b)
        assert raised_by_netlens(info.value), f"{name} / {what}: {info.typename} from outside netlens: {info.value}"
        assert any(w in str(info.value).lower() for w in words), f"{name} / {what}: the error does not say {words}: {info.value}"
        COUNTS['probes'] += 1; COUNTS['clear errors'] += 1

def test_loaders_may_be_unsized():
    "A generator of batches gives what the list of the same batches gives"
    batches = [_x[:6], _x[6:12]]
    a = S.compare_models(MODEL, MODEL, batches, ['conv2'], ['conv3'], show_progress=False).matrix
    b = S.compare_models(MODEL, MODEL, (b for b in batches), ['conv2'], ['conv3'], show_progress=False).matrix
    assert torch.equal(a, b)

def test_similarity_result_keys():
    res = S.compare_models(MODEL, MODEL, [_x[:8]], ['conv2', 'conv3'], ['conv3'], show_progress=False)
    with pytest.raises(KeyError, match='conv2'): res['conv22', 'conv3']

def test_pil_image_is_accepted():
    img = PIL.Image.fromarray((RGB[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    out = ST.style_transfer(VGG, img, RGB, content_layers=['relu2_1'], style_layers=['relu1_1'], steps=2, seed=0, show_progress=False)
    ref = ST.style_transfer(VGG, torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255, RGB, content_layers=['relu2_1'],
                            style_layers=['relu1_1'], steps=2, seed=0, show_progress=False)
    torch.testing.assert_close(out, ref)

def test_zzz_counts(capsys):
    """Last in the file, so it runs after the catalogue: every entry point probed in this session was refused with a clear
    error at least once and gave its clean result back at least once (an input stored differently, a wrapped output, frozen
    parameters), so none passes its contract vacuously, with every probe refused or every probe skipped by its flags; the
    counts are printed with -s (the closing note quotes them)"""
    if not PER_ENTRY: pytest.skip('no test_contract ran in this session: nothing was counted')
    vacuous = {n: dict(c) for n, c in PER_ENTRY.items() if not (c['clear errors'] and c['correct results'])}
    assert not vacuous, f"entry points whose probes were all refused or all accepted: {vacuous}"
    assert set(PER_ENTRY) <= {e.name for e in ENTRIES}
    assert COUNTS['probes'] >= COUNTS['correct results'] + sum(c['clear errors'] for c in PER_ENTRY.values())
    with capsys.disabled(): print(f"\ncontract suite: {len(ENTRIES)} entry points + {len(MEASURES)} measures; {dict(COUNTS)}")
