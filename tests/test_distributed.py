"""netlens.distributed under torchrun: two gloo processes on CPU, launched from the test suite, against one process over
the same data. Two launches in all (each costs seconds of start-up): one killed in the middle of an attribute_loader run,
one that resumes it and checks the helpers, compare_models, landscape2d and fourier_map."""
import json, os, signal, subprocess, sys, textwrap, time
import numpy as np, pytest, torch, torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from netlens.data import digits_cnn, digits_data
from netlens.attribution import saliency
from netlens.distributed import attribute_loader, shard
from netlens.similarity import compare_models
from netlens.landscape import landscape2d, fourier_map

SCRIPT = textwrap.dedent('''
    import atexit, io, json, os, sys, time
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler
    if 'RANK' in os.environ:                                          # under torchrun; else one plain process
        dist.init_process_group('gloo'); atexit.register(dist.destroy_process_group)   # leave the group before exiting
    from netlens.distributed import *
    from netlens.data import digits_cnn, digits_data
    from netlens.attribution import saliency
    from netlens.similarity import compare_models
    from netlens.landscape import landscape2d, fourier_map
    torch.set_num_threads(1)
    r, W, mode = get_rank(), get_world_size(), sys.argv[1]
    model = digits_cnn()
    x, y = digits_data('test')

    def slow_saliency(model, x, target):
        with open(f'calls-{mode}-r{r}.txt', 'a') as f: f.write(f'{len(x)}\\n')
        if mode == 'kill': time.sleep(0.3)
        return saliency(model, x, target)

    ds = TensorDataset(x[:64], y[:64])
    sampler = DistributedSampler(ds, shuffle=False) if W > 1 else None
    if mode == 'kill':                                                   # killed by the test while it runs
        open(f'pid-r{r}.txt', 'w').write(str(os.getpid()))               # torchrun's workers leave its process group
        attribute_loader(model, DataLoader(ds, batch_size=8, sampler=sampler), slow_saliency, targets='label', out='resumed', show_progress=False)
        sys.exit(0)

    class FakeTTY(io.StringIO):
        def isatty(self): return True
    res = dict(world=[r, W, is_distributed(), is_main()])
    res['sum'] = all_reduce_sum(torch.tensor([0.1, 0.2]) * (r + 1)).tolist()
    res['sum_dtype'] = str(all_reduce_sum(torch.tensor([1.0])).dtype)
    res['count'] = int(all_reduce_sum(5 + r))
    res['gather'] = all_gather_cat(torch.full((3 if r == 0 else 1, 2), float(r))).tolist()
    res['gather_empty'] = all_gather_cat(torch.arange(4.).view(2, 2) if r == 1 else torch.zeros(0)).tolist()
    res['shard'] = shard(list(range(7)))
    res['objects'] = all_gather_object({'rank': r})
    res['all_ranks'] = [all_ranks(True), all_ranks(r == 0)]
    try: all_gather_cat(torch.zeros(2, 3 if r == 0 else 4)); res['mismatch'] = None
    except ValueError as e: res['mismatch'] = str(e)
    if r == 0:                                                           # rank 0 alone: no collective may wait for rank 1
        with single_process():
            t = torch.ones(2)
            res['alone'] = [get_world_size(), all_gather_cat(t) is t, landscape2d(model, (x[:8], y[:8]), F.cross_entropy, (-1, 1), (-1, 1), 1., seed=0)[2].shape[0]]
    barrier()

    attribute_loader(model, DataLoader(ds, batch_size=8, sampler=sampler), slow_saliency, targets='label', out='resumed', show_progress=False)

    torch.manual_seed(0); other = digits_cnn(pretrained=False)
    sub = TensorDataset(x[:96], y[:96])
    mine = DataLoader(sub, batch_size=16, sampler=DistributedSampler(sub, shuffle=False))
    forwards = []                                                        # the model's calls on this rank: its share of the work
    model.register_forward_hook(lambda m, i, o: forwards.append(len(i[0])))
    def calls():
        k = len(forwards); forwards.clear(); return k
    err, sys.stderr = sys.stderr, FakeTTY()                              # a terminal on every rank: only rank 0 may draw
    try:
        cka = compare_models(model, other, mine, ['conv2', 'res.conv1', 'conv3'], ['conv3', 'head.2'])
        res['cka'], res['cka_n'] = cka.matrix.tolist(), cka.n_examples
        svcca = compare_models(model, other, mine, ['conv2', 'conv3'], ['conv3'], measure='svcca', reduce='mean')
        res['svcca'], res['svcca_n'] = svcca.matrix.tolist(), svcca.n_examples
        data = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
        calls(); res['landscape'] = landscape2d(model, data, F.cross_entropy, (-1, 1), (-1, 1), 0.5, seed=0)[2].tolist()
        res['landscape_calls'] = calls()
        four = [(x[:8], y[:8]), (x[8:12], y[8:12])]
        res['fourier'] = fourier_map(model, four, max_freq=3, batch_size=64).tolist()
        res['fourier_calls'] = calls()
        res['fourier_ce'] = fourier_map(model, four, metric=F.cross_entropy, max_freq=3, batch_size=64).tolist()
    finally: bars, sys.stderr = sys.stderr.getvalue(), err
    res['progress'] = bars
    with open(f'res-r{r}.json', 'w') as f: json.dump(res, f)
''')

def _launch(tmp, mode, procs=2):
    "torchrun with `procs` gloo processes (or one plain process) running the script in `mode`, in its own session"
    cmd = ([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(procs)] if procs > 1 else [sys.executable])
    return subprocess.Popen(cmd + ['script.py', mode], cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'}, start_new_session=True)

def _logged(path):
    "Batches logged as finished in one rank's log"
    return sum('"file"' in l for l in path.read_text().splitlines()) if path.exists() else 0

def _kill_midway(tmp, procs, ranks):
    "Start the slow attribute_loader run and kill its whole process group once every rank has finished a batch"
    p = _launch(tmp, 'kill', procs)
    logs = [tmp / 'resumed' / f"log-r{r}.jsonl" for r in range(ranks)]
    t0 = time.time()
    while not all(_logged(l) >= 1 for l in logs):
        if p.poll() is not None: raise AssertionError(f"the run ended before it could be killed:\n{p.stdout.read()}")
        if time.time() - t0 > 90: os.killpg(p.pid, signal.SIGKILL); raise AssertionError("no batch finished in 90 s")
        time.sleep(0.05)
    for r in range(ranks): os.kill(int((tmp / f"pid-r{r}.txt").read_text()), signal.SIGKILL)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return [_logged(l) for l in logs]

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "One thread per process: the 2 cores are shared with the launched processes (two threads each make it 5x slower)"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "Kill a 2-process run mid-way, then launch the run that resumes it and checks the rest; the folder and each rank's results"
    tmp = tmp_path_factory.mktemp('dist')
    (tmp / 'script.py').write_text(SCRIPT)
    done = _kill_midway(tmp, 2, 2)
    assert not (tmp / 'resumed' / 'index.json').exists() and sum(done) < 8     # it was stopped before the end
    p = _launch(tmp, 'all')
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out
    return tmp, done, [json.loads((tmp / f"res-r{r}.json").read_text()) for r in range(2)]

MODEL = digits_cnn()
X, Y = digits_data('test')

def shards(n, bs):
    "Each rank's batches as a DistributedSampler gives them (2 ranks), and all of them in rank order: one process over the same batches"
    ds = TensorDataset(X[:n], Y[:n])
    per = [list(DataLoader(ds, batch_size=bs, sampler=DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False))) for r in range(2)]
    return per, per[0] + per[1]

def test_helpers(run):
    _, _, res = run
    for r, d in enumerate(res):
        assert d['world'] == [r, 2, True, r == 0]
        assert d['sum_dtype'] == 'torch.float64' and d['count'] == 11
        f = torch.tensor([0.1, 0.2])                                    # float32 values, added in float64
        assert d['sum'] == (f.double() + (f * 2).double()).tolist()
        assert d['gather'] == [[0., 0.]] * 3 + [[1., 1.]]
        assert d['gather_empty'] == [[0., 1.], [2., 3.]]
        assert d['shard'] == shard(list(range(7)), rank=r, world_size=2) == [[0, 1, 2, 3], [4, 5, 6]][r]
        assert d['objects'] == [{'rank': 0}, {'rank': 1}] and d['all_ranks'] == [True, False]
        assert 'same shape after the first dimension' in d['mismatch']   # raised on both ranks: none waits for the other
    assert res[0]['alone'] == [1, True, 3] and 'alone' not in res[1]     # single_process(): rank 0 computed all 3 rows alone

def test_share_of_work(run):
    _, _, res = run
    assert [d['landscape_calls'] for d in res] == [13 * 3, 12 * 3]        # 25 grid points (13 + 12), 3 batches each
    assert [d['fourier_calls'] for d in res] == [3, 3]                   # 6 (batch, frequency band) items: 4 + 2 for two batches

def test_progress_on_rank_0_only(run):
    _, _, res = run
    assert '3/3' in res[0]['progress'] and '13/13' in res[0]['progress']   # its 3 batches, its 13 of the 25 grid points
    assert res[1]['progress'] == ''

def test_compare_models(run):
    _, _, res = run
    torch.manual_seed(0); other = digits_cnn(pretrained=False)
    _, batches = shards(96, 16)
    cka = compare_models(MODEL, other, batches, ['conv2', 'res.conv1', 'conv3'], ['conv3', 'head.2'], show_progress=False)
    svcca = compare_models(MODEL, other, batches, ['conv2', 'conv3'], ['conv3'], measure='svcca', reduce='mean', show_progress=False)
    for d in res:
        assert d['cka_n'] == d['svcca_n'] == 96
        torch.testing.assert_close(torch.tensor(d['cka'], dtype=torch.float64), cka.matrix, rtol=0, atol=1e-6)
        assert d['svcca'] == svcca.matrix.tolist()                       # the same features gathered in the same order
    whole = compare_models(MODEL, other, [(X[:96],)], ['conv2', 'conv3'], ['conv3'], measure='svcca', reduce='mean', show_progress=False)
    torch.testing.assert_close(torch.tensor(res[0]['svcca'], dtype=torch.float64), whole.matrix, rtol=0, atol=1e-5)   # any order: rounding only
    assert (cka.matrix - compare_models(MODEL, other, batches[:3], ['conv2', 'res.conv1', 'conv3'], ['conv3', 'head.2'], show_progress=False).matrix).abs().max() > 1e-3

def test_landscape2d_and_fourier_map(run):
    _, _, res = run
    data = [(X[i:i + 32], Y[i:i + 32]) for i in range(0, 96, 32)]
    L = landscape2d(MODEL, data, F.cross_entropy, (-1, 1), (-1, 1), 0.5, seed=0, show_progress=False)[2]
    four = [(X[:8], Y[:8]), (X[8:12], Y[8:12])]
    fm = fourier_map(MODEL, four, max_freq=3, batch_size=64, show_progress=False)
    fce = fourier_map(MODEL, four, metric=F.cross_entropy, max_freq=3, batch_size=64, show_progress=False)
    for d in res:
        assert torch.equal(torch.tensor(d['landscape']), L)              # every grid point computed as in one process
        assert torch.equal(torch.tensor(d['fourier']).isnan(), fm.isnan())
        torch.testing.assert_close(torch.tensor(d['fourier']), fm, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(torch.tensor(d['fourier_ce']), fce, rtol=0, atol=1e-6, equal_nan=True)

def _maps(folder):
    idx = json.loads((folder / 'index.json').read_text())
    return idx, [np.load(folder / b['file']) for b in idx['batches']]

def test_attribute_loader_resumes_after_kill(run, tmp_path):
    tmp, done, _ = run
    calls = [len(f.read_text().split()) if (f := tmp / f"calls-all-r{r}.txt").exists() else 0 for r in range(2)]
    assert calls == [4 - k for k in done]                               # the resumed run did only what was left
    idx, maps = _maps(tmp / 'resumed')
    assert (idx['world_size'], idx['n_examples'], len(maps)) == (2, 64, 8)
    per, batches = shards(64, 8)
    assert [b['indices'] for b in idx['batches']] == [list(range(r, 64, 2))[i:i + 8] for r in range(2) for i in range(0, 32, 8)]
    ref = attribute_loader(MODEL, batches, saliency, targets='label', out=tmp_path / 'ref', show_progress=False)
    _, ref_maps = _maps(tmp_path / 'ref')
    assert [b['targets'] for b in idx['batches']] == [b['targets'] for b in ref['batches']]
    for a, b in zip(maps, ref_maps): np.testing.assert_array_equal(a, b)   # the same maps as one process over the same batches
    whole = np.concatenate([saliency(MODEL, X[i:i + 16], Y[i:i + 16]).numpy() for i in range(0, 64, 16)])
    by_example = np.concatenate(maps)[np.argsort(sum((b['indices'] for b in idx['batches']), []))]
    np.testing.assert_allclose(by_example, whole, rtol=1e-5, atol=1e-7)   # and, put in dataset order, those of a plain loop

def test_attribute_loader_single_process_resumes_after_kill(tmp_path):
    (tmp_path / 'script.py').write_text(SCRIPT)
    done, = _kill_midway(tmp_path, 1, 1)
    assert 1 <= done < 8
    def slow_saliency(model, x, target):                                 # the same name: the same run, resumed here
        calls.append(len(x)); return saliency(model, x, target)
    calls = []
    ds = TensorDataset(X[:64], Y[:64])
    idx = attribute_loader(MODEL, DataLoader(ds, batch_size=8), slow_saliency, targets='label', out=tmp_path / 'resumed', show_progress=False)
    assert len(calls) == 8 - done and idx['n_examples'] == 64
    attribute_loader(MODEL, DataLoader(ds, batch_size=8), saliency, targets='label', out=tmp_path / 'ref', show_progress=False)
    for a, b in zip(_maps(tmp_path / 'resumed')[1], _maps(tmp_path / 'ref')[1]): np.testing.assert_array_equal(a, b)
