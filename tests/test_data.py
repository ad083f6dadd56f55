"""netlens.data (nbs/01_data.ipynb): the embedded digits model is retrainable, deterministic and accurate (the oracle: its
test-set accuracy); bad inputs raise a clear error; the tutorials' path helper is offline by the environment or by a dead
network, fast, and says which path it took."""
import torch
from netlens.data import accuracy, digits_cnn, digits_loader, train_digits_cnn
import socket, time, threading
import pytest
import netlens.data as D

def test_shipped_weights_are_accurate():
    assert accuracy(digits_cnn(), digits_loader('test')) >= 0.97

def test_training_is_deterministic_and_accurate():
    rng = torch.get_rng_state()
    a, b = train_digits_cnn(seed=0, show_progress=False), train_digits_cnn(seed=0, show_progress=False)
    assert torch.equal(torch.get_rng_state(), rng), "training leaves the caller's random stream alone"
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert accuracy(a, digits_loader('test')) >= 0.97
    c = train_digits_cnn(seed=1, show_progress=False)
    assert not torch.equal(a.conv3.weight, c.conv3.weight)

def test_accuracy_reads_unsized_loaders_and_restores_each_modules_mode():
    from torch.utils.data import DataLoader, IterableDataset
    from netlens.data import digits_data
    x, y = digits_data('test')
    class Stream(IterableDataset):
        def __iter__(self): return iter(zip(x, y))
    m = digits_cnn()
    acc = accuracy(m, digits_loader('test'))
    assert accuracy(m, DataLoader(Stream(), batch_size=50)) == acc == accuracy(m, ((x[i:i + 50], y[i:i + 50]) for i in range(0, 360, 50)))
    m.res.bn2.train()
    flags = [mod.training for mod in m.modules()]
    accuracy(m, digits_loader('test'))
    assert [mod.training for mod in m.modules()] == flags

def test_counts_are_checked():
    import pytest
    with pytest.raises(ValueError, match='epochs must be an integer >= 1, got 0'): train_digits_cnn(epochs=0)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): train_digits_cnn(batch_size=0)
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): digits_loader(batch_size=0)

def test_accuracy_of_an_empty_loader():
    with pytest.raises(ValueError, match='no examples'): accuracy(digits_cnn(), [])

def test_counts_must_be_positive():
    with pytest.raises(ValueError, match='batch_size must be an integer >= 1, got 0'): digits_loader('test', batch_size=0)
    with pytest.raises(ValueError, match='epochs must be an integer >= 1, got 0'): train_digits_cnn(epochs=0)

def test_env_forces_offline_without_touching_the_network(monkeypatch, capsys):
    monkeypatch.setenv('NETLENS_OFFLINE', '1')
    monkeypatch.setattr(socket, 'create_connection', lambda *a, **k: pytest.fail('the network was touched'))
    t0 = time.perf_counter()
    tut = D.tutorial_setup(models=['resnet18'], dataset='cifar10', device='cpu')
    assert time.perf_counter() - t0 < 1
    assert (tut.online, tut.path, tut.models, tut.data) == (False, 'offline', {}, None)
    out = capsys.readouterr().out
    assert out.startswith('netlens tutorial: offline path on cpu (NETLENS_OFFLINE=1)') and 'digits model' in out

def test_hung_dns_is_abandoned_within_the_timeout(monkeypatch, capsys):
    monkeypatch.delenv('NETLENS_OFFLINE', raising=False)
    release = threading.Event()
    def hang(*a, **k): release.wait(30); raise OSError('never')
    monkeypatch.setattr(socket, 'create_connection', hang)
    t0 = time.perf_counter()
    tut = D.tutorial_setup(models=['resnet18', 'timm:vit_tiny_patch16_224'], timeout=1., device='cpu')
    took = time.perf_counter() - t0
    release.set()
    assert took < 2.5, took                       # the probes run in parallel: one timeout in all, not one per host
    assert not tut.online and 'did not answer within 1 s' in tut.reason
    assert 'download.pytorch.org' in tut.reason and 'huggingface.co' in tut.reason
    assert 'offline path' in capsys.readouterr().out

def test_real_network_attempt_fails_fast(monkeypatch):
    "Here (and in CI) there is no route to the download servers: the default 5 s budget is never exceeded"
    monkeypatch.delenv('NETLENS_OFFLINE', raising=False)
    t0 = time.perf_counter()
    tut = D.tutorial_setup(models=['resnet18'], dataset='imagenette', quiet=True)
    if tut.online: pytest.skip('this machine can download')
    assert time.perf_counter() - t0 < 6

def test_failed_download_falls_back_and_says_why(monkeypatch, capsys):
    monkeypatch.delenv('NETLENS_OFFLINE', raising=False)
    monkeypatch.setattr(D, '_reachable', lambda hosts, timeout=5.: [])         # the servers answer ...
    def broken(name, device='cpu'): raise ConnectionResetError('connection reset mid-download')
    monkeypatch.setattr(D, 'load_pretrained', broken)                           # ... but the download breaks
    prev = socket.getdefaulttimeout()
    tut = D.tutorial_setup(models=['resnet18'], device='cpu')
    assert not tut.online and 'ConnectionResetError' in tut.reason
    assert socket.getdefaulttimeout() == prev                                  # the socket timeout is put back
    assert 'offline path on cpu (the download failed' in capsys.readouterr().out

def test_online_path_uses_the_real_loader(monkeypatch, tmp_path, capsys):
    "torchvision's own loader, fed from its cache (weights put where a download would leave them): the online path and its line"
    import torchvision
    monkeypatch.delenv('NETLENS_OFFLINE', raising=False)
    monkeypatch.setattr(D, '_reachable', lambda hosts, timeout=5.: [])
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    w = torchvision.models.ResNet18_Weights.DEFAULT
    (tmp_path/'hub'/'checkpoints').mkdir(parents=True)
    torch.manual_seed(0); ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path/'hub'/'checkpoints'/w.url.split('/')[-1])
    tut = D.tutorial_setup(models=['resnet18'], device='cpu')
    assert tut.online and tut.path == 'online' and set(tut.models) == {'resnet18'}
    m = tut.models['resnet18']
    assert not m.training and torch.equal(m.fc.weight, ref.fc.weight)
    assert capsys.readouterr().out.strip() == 'netlens tutorial: online path on cpu: resnet18 (pretrained)'
    assert D.pretrained_categories('resnet18')[285] == 'Egyptian cat'

def test_bad_arguments_name_the_fix():
    with pytest.raises(KeyError, match="closest: 'imagenette'"): D.tutorial_setup(dataset='imagenet', offline=True)
    with pytest.raises(ValueError, match='n must be an integer >= 1'): D.tutorial_data('cifar10', n=-1)
