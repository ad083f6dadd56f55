"The tutorials' path helper: offline by the environment or by a dead network, fast, and it says which path it took"
import socket, time, threading
import pytest, torch
import netlens.data as D

def test_env_forces_offline_without_touching_the_network(monkeypatch, capsys):
    monkeypatch.setenv('NETLENS_OFFLINE', '1')
    monkeypatch.setattr(socket, 'create_connection', lambda *a, **k: pytest.fail('the network was touched'))
    t0 = time.perf_counter()
    tut = D.tutorial_setup(models=['resnet18'], data='cifar10', device='cpu')
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
    tut = D.tutorial_setup(models=['resnet18'], data='imagenette', quiet=True)
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
    with pytest.raises(KeyError, match="closest: 'imagenette'"): D.tutorial_setup(data='imagenet', offline=True)
    with pytest.raises(ValueError, match='n must be an integer >= 1'): D.tutorial_data('cifar10', n=-1)
