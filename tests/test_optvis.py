"Feature visualisation on torchvision models: parameterisation equal to Lucent's, objectives read what the layer produced, the model left as it was"
import pytest, torch, torch.nn as nn, torchvision
from conftest import tv_case
from netlens.flat import FlatModel
from netlens.hooks import ModelSnapshot, hook_count
from netlens.core import normalize
from netlens.data import sample_images, digits_cnn
from netlens.optvis import ImageParam, render, channel, neuron, diversity, tv, jitter
from netlens.dream import deep_dream, invert_features, net_dreamer
from netlens.style import style_transfer

@pytest.fixture(scope='module')
def resnet(): return tv_case('resnet18')[1]

@pytest.mark.parametrize('decorrelate', [True, False])
def test_fft_param_equals_lucent(decorrelate):
    "Same spectrum in, same image out: the 1/f scale, the inverse FFT, lucid's magic 4, the colour matrix and the sigmoid"
    from lucent.optvis import param as lparam
    torch.manual_seed(0)
    (spectrum,), image_f = lparam.image(48, h=32, batch=2, decorrelate=decorrelate)
    ours = ImageParam((32, 48), 3, 2, decorrelate=decorrelate)
    with torch.no_grad(): ours.weight.copy_(spectrum)
    torch.testing.assert_close(ours(), image_f(), rtol=1e-5, atol=1e-6)

def test_pixel_param_equals_lucent():
    from lucent.optvis import param as lparam
    torch.manual_seed(0)
    (pixels,), image_f = lparam.image(16, batch=1, fft=False, decorrelate=True)
    ours = ImageParam(16, 3, 1, fft=False)
    with torch.no_grad(): ours.weight.copy_(pixels)
    torch.testing.assert_close(ours(), image_f(), rtol=1e-5, atol=1e-6)

def test_render_on_torchvision_leaves_model_alone(resnet):
    snap = ModelSnapshot(resnet)
    res = render(resnet, channel('layer2.0', 5) - 0.1 * tv(), size=64, steps=12, preprocess='imagenet', seed=0, thresholds=(12,), show_progress=False)
    assert res.history[-1] > res.history[0]
    assert res.images.shape == (1, 3, 64, 64) and 0 <= res.images.min() and res.images.max() <= 1
    assert snap.diff(resnet) == [] and hook_count(resnet) == 0
    assert all(p.grad is None for p in resnet.parameters())

def test_objective_reads_the_value_before_an_inplace_relu(resnet):
    "bn1 is followed by ReLU(inplace=True): the objective sees BatchNorm's output, negative values included"
    p = ImageParam(48, seed=0)
    res = render(resnet, channel('bn1', 3), param=p, steps=1, lr=0., transforms=None, preprocess='imagenet', thresholds=(1,), show_progress=False)
    with torch.no_grad(), FlatModel(resnet).record('bn1') as rec: resnet(normalize(res.images))
    assert (rec['bn1'][:, 3] < 0).any()
    assert res.history[0] == pytest.approx(rec['bn1'][:, 3].mean().item(), rel=1e-5)

def test_render_is_seeded_and_keeps_the_models_mode(resnet):
    resnet.train()
    try:
        snap = ModelSnapshot(resnet)
        a = render(resnet, neuron('layer1', 2), size=32, steps=3, seed=1, show_progress=False)
        b = render(resnet, neuron('layer1', 2), size=32, steps=3, seed=1, show_progress=False)
        assert torch.equal(a, b) and snap.diff(resnet) == []
    finally: resnet.eval()

def test_model_restored_after_an_error_midway(resnet):
    snap = ModelSnapshot(resnet)
    class Boom(Exception): pass
    calls = []
    def fail(run):
        calls.append(1)
        if len(calls) == 3: raise Boom()
        return run['layer1'].mean()
    from netlens.optvis import Objective
    with pytest.raises(Boom): render(resnet, Objective(fail, 'fail', ['layer1']), size=32, steps=10, show_progress=False)
    assert snap.diff(resnet) == [] and hook_count(resnet) == 0 and all(p.requires_grad for p in resnet.parameters())

def test_float64_model():
    torch.manual_seed(0)
    model = digits_cnn().double()
    img = render(model, channel('conv2', 1), size=32, channels=1, steps=4, transforms=[jitter(2)], show_progress=False)
    assert img.dtype == torch.float64

def test_diversity_spreads_a_batch(resnet):
    "Adding diversity makes the images of a batch less alike at that layer"
    def spread(images):
        with torch.no_grad(), FlatModel(resnet).record('layer2') as rec: resnet(normalize(images))
        g = rec['layer2'].flatten(2); g = torch.nn.functional.normalize((g @ g.transpose(1, 2)).flatten(1), dim=1)
        return (g @ g.T)[0, 1].item()
    kw = dict(size=48, batch=2, steps=24, preprocess='imagenet', seed=0, show_progress=False)
    plain = render(resnet, channel('layer2', 7), **kw)
    diverse = render(resnet, channel('layer2', 7) + 20 * diversity('layer2'), **kw)
    assert spread(diverse) < spread(plain)

def test_deep_dream_on_a_photo_raises_the_layer_every_octave(resnet):
    photo = sample_images(['chelsea'], size=96, imagenet_norm=False)
    snap = ModelSnapshot(resnet)
    out, norms = deep_dream(resnet, photo, 'layer2', octaves=3, steps=6, preprocess='imagenet', seed=0, return_norms=True, show_progress=False)
    with torch.no_grad(), FlatModel(resnet).record('layer2') as rec: resnet(normalize(photo))
    assert (rec['layer2'] ** 2).mean().item() < norms[0] and all(a < b for a, b in zip(norms, norms[1:]))
    assert out.shape == photo.shape and 0 <= out.min() and out.max() <= 1 and snap.diff(resnet) == []

def test_feature_inversion_matches_features(resnet):
    photo = sample_images(['coffee'], size=48, imagenet_norm=False)
    inv = invert_features(resnet, photo, 'layer1', steps=60, preprocess='imagenet', seed=0, show_progress=False)
    fm = FlatModel(resnet)
    def feats(x):
        with torch.no_grad(), fm.record('layer1') as rec: resnet(normalize(x))
        return rec['layer1']
    t = feats(photo)
    err = lambda x: ((feats(x) - t) ** 2).sum() / (t ** 2).sum()
    assert err(inv) < 0.25 * err(ImageParam(48, seed=0)().detach())

def test_net_dreamer_shapes(resnet):
    out = net_dreamer(resnet, 'layer1', size=40, batch=2, octaves=2, steps=2, preprocess='imagenet', seed=0, show_progress=False)
    assert out.shape == (2, 3, 40, 40)

def test_style_transfer_adam_tutorial():
    torch.manual_seed(0)
    net = torchvision.models.vgg11().features.eval()
    content, style = sample_images(['chelsea', 'rocket'], size=48, imagenet_norm=False)
    out, hist = style_transfer(content, style, net, preset='tutorial', optimizer='adam', lr=0.02, steps=60, show_progress=False, return_history=True)
    assert hist['style'][-1] < hist['style'][0] / 3 and out.shape == content.shape
    assert not any(isinstance(m, nn.AvgPool2d) for m in net.modules())

_SCRIPT = r'''
import torch, torch.nn as nn
from netlens.data import digits_cnn
from netlens.optvis import render, channel, jitter
from netlens.dream import deep_dream
from netlens.style import style_transfer
torch.manual_seed(0)
net = nn.Sequential(*[m for k in range(3) for m in (nn.Conv2d(3 if k == 0 else 8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))][:-1]).eval()
c, s = torch.rand(3, 16, 16), torch.rand(3, 16, 16)
for opt in ('lbfgs', 'adam'):
    style_transfer(c, s, net, content_layers=['relu2_1'], style_layers=['relu1_1', 'relu2_1'], steps=3, optimizer=opt)
m = digits_cnn()
render(m, channel('conv2', 1), size=16, steps=3, transforms=[jitter(2)])
deep_dream(m, torch.rand(1, 1, 16, 16), 'res', octaves=2, steps=2)
'''

def _run_script(stderr):
    import subprocess, sys
    return subprocess.run([sys.executable, '-c', _SCRIPT], stdout=subprocess.PIPE, stderr=stderr, timeout=300)

def test_progress_in_a_script_with_stdout_piped():
    "Default show_progress from a script: no exception (style_transfer's bar was updated before it started), nothing in stdout"
    import subprocess
    r = _run_script(subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout == b''
    assert r.stderr == b''                                 # stderr is a pipe too: no bar anywhere

def test_progress_on_a_terminal_goes_to_stderr():
    "With stderr a terminal the bars are drawn there, and stdout still holds nothing"
    import os, pty, fcntl, termios, struct, threading
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))   # a terminal 100 columns wide (a new pty has 0)
    chunks = []
    def drain():                                           # read while the child writes, so a full pty buffer cannot block it
        while True:
            try: chunk = os.read(master, 65536)
            except OSError: return                         # EIO: the child closed the terminal
            if not chunk: return
            chunks.append(chunk)
    reader = threading.Thread(target=drain, daemon=True); reader.start()
    try:
        r = _run_script(slave)
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    err = b''.join(chunks)
    assert r.returncode == 0, err.decode(errors='replace')[-2000:]
    assert r.stdout == b''
    assert b'/3 [' in err, err[-500:]                      # style_transfer's and render's bars, 3 steps each
