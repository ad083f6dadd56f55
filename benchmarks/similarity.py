"""Similarity speed and memory: netlens' streamed compare_models against torch_cka's CKA.compare, in one run.

    python benchmarks/similarity.py [--n 1024] [--batch 128] [--skip-memory]

resnet18 vs resnet34 (random init, eval), every residual block and the fc layer of each, n images of 3x32x32, batch 128:
  - time of netlens.compare_models and of torch_cka (on deep copies: it leaves hooks and switches modes), same loader,
    both under torch.no_grad (torch_cka's CKA.compare does not turn autograd off, and the copies' parameters require
    grad, so as shipped it records a graph in every forward; compare_models and the floor run without one), after one
    untimed forward of each model on a batch, so that none of the three pays the first touch of that batch size.
    Same work otherwise: one forward per model and batch, float32 features and grams, every layer pair of the matrix.
    torch_cka recomputes model 2's gram and HSIC(L, L) for every layer of model 1 (cka.py, compare) and reads each
    batch twice from the loader (zip(dataloader1, dataloader2) on the same loader): that is its algorithm;
  - both matrices against a float64 minibatch-CKA reference (Nguyen et al.'s estimator on the same batches);
  - peak memory (max RSS of a fresh subprocess) of compare_models with n and with 4n images;
  - svcca and pwcca on (5000, 512) features against a float64 numpy implementation (Google's SVCCA recipe), each after
    a small warm-up call; both keep the same number of directions (99 % of the variance), torch uses
    torch.get_num_threads() threads and numpy its BLAS's own count (set OMP_NUM_THREADS to make them equal).
"""
import argparse, copy, json, resource, subprocess, sys, time, warnings
import numpy as np, torch, torchvision
from torch.utils.data import DataLoader, TensorDataset
from netlens.flat import FlatModel
from netlens.similarity import compare_models, svcca, pwcca, u_center

def models():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval(), torchvision.models.resnet34().eval()

def blocks(m): return [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(m, f'layer{i}')))] + ['fc']

def loader(n, batch):
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.zeros(n)), batch_size=batch)

def reference(m1, m2, l1, l2, dl):
    "float64 minibatch CKA: U-centred float64 grams per batch and layer, HSIC sums over batches"
    kl, kk, ll = 0, 0, 0
    with torch.no_grad():
        for xb, _ in dl:
            with FlatModel(m1).record(l1) as r1: m1(xb)
            with FlatModel(m2).record(l2) as r2: m2(xb)
            G1 = torch.stack([u_center((lambda f: f @ f.T)(r1[k].flatten(1).double() - r1[k].flatten(1).double().mean(0))) for k in l1]).flatten(1)
            G2 = torch.stack([u_center((lambda f: f @ f.T)(r2[k].flatten(1).double() - r2[k].flatten(1).double().mean(0))) for k in l2]).flatten(1)
            c = 1 / (len(xb) * (len(xb) - 3))
            kl, kk, ll = kl + G1 @ G2.T * c, kk + (G1 * G1).sum(1) * c, ll + (G2 * G2).sum(1) * c
    return kl / (kk[:, None] * ll[None]).sqrt()

def peak_rss_mb(n, batch):
    "Resident memory of a fresh process once models and data are loaded, and its high-water mark during compare_models (Linux: peak reset through /proc/self/clear_refs)"
    code = f"""
import sys
sys.path.insert(0, 'benchmarks')
from similarity import models, blocks, loader
from netlens.similarity import compare_models
m1, m2 = models()
dl = loader({n}, {batch})
status = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) / 1024
open('/proc/self/clear_refs', 'w').write('5')
before = status('VmRSS:')
compare_models(m1, m2, dl, blocks(m1), blocks(m2), show_progress=False)
print(before, status('VmHWM:'))
"""
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])

def forward_floor(m1, m2, dl):
    "The two models' forward passes over the loader, nothing else: what any implementation must spend"
    with torch.no_grad():
        for xb, _ in dl: m1(xb); m2(xb)

def np_svcca(x, y, keep=0.99):
    def reduce(a):
        a = a - a.mean(0); U, s, Vt = np.linalg.svd(a, full_matrices=False)
        k = np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep) + 1
        return a @ Vt[:k].T
    def cc(a, b):
        def inv_sqrt(S):
            w, V = np.linalg.eigh(S); return V @ np.diag(w ** -0.5) @ V.T
        return np.linalg.svd(inv_sqrt(a.T @ a) @ a.T @ b @ inv_sqrt(b.T @ b), compute_uv=False)
    return cc(reduce(x), reduce(y)).mean()

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--n', type=int, default=1024); p.add_argument('--batch', type=int, default=128)
    p.add_argument('--skip-memory', action='store_true')
    a = p.parse_args()
    m1, m2 = models()
    dl = loader(a.n, a.batch)
    from torch_cka import CKA
    for what, l1, l2 in [('every residual block and fc', blocks(m1), blocks(m2)),
                         ('every conv layer', [n for n, m in m1.named_modules() if isinstance(m, torch.nn.Conv2d)],
                          [n for n, m in m2.named_modules() if isinstance(m, torch.nn.Conv2d)])]:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            c = CKA(copy.deepcopy(m1), copy.deepcopy(m2), model1_layers=l1, model2_layers=l2)
            xb = next(iter(dl))[0]
            with torch.no_grad():                 # warm-up: one forward of each model (and of torch_cka's copies) at the batch size
                for m in (m1, m2, c.model1, c.model2): m(xb)
            t = time.perf_counter(); forward_floor(m1, m2, dl); t_floor = time.perf_counter() - t
            t = time.perf_counter(); ours = compare_models(m1, m2, dl, l1, l2, show_progress=False); t_ours = time.perf_counter() - t
            with torch.no_grad():                 # as compare_models and the floor: no autograd graph in the forwards
                t = time.perf_counter(); c.compare(dl); t_theirs = time.perf_counter() - t
        theirs = c.export()['CKA'].double()
        ref = reference(m1, m2, l1, l2, dl)
        print(f"compare_models resnet18 vs resnet34, {what} ({len(l1)} x {len(l2)}), {a.n} images 3x32x32, batch {a.batch}, {torch.get_num_threads()} threads")
        print(f"  floor (the two forwards only) {t_floor:6.2f} s")
        print(f"  netlens   {t_ours:7.2f} s   max |error| vs float64 reference {(ours.matrix - ref).abs().max():.2e}   above the floor {t_ours - t_floor:6.2f} s")
        print(f"  torch_cka {t_theirs:7.2f} s   max |error| vs float64 reference {(theirs - ref).abs().max():.2e}   above the floor {t_theirs - t_floor:6.2f} s")
        print(f"  torch_cka / netlens: {t_theirs / t_ours:.1f}x in total, {(t_theirs - t_floor) / max(t_ours - t_floor, 1e-9):.1f}x above the floor")
    if not a.skip_memory:
        b1, p1 = peak_rss_mb(a.n, a.batch); b4, p4 = peak_rss_mb(4 * a.n, a.batch)
        print(f"  peak RSS during compare_models (blocks): {a.n} images {p1:.0f} MB (before: {b1:.0f} MB); {4 * a.n} images {p4:.0f} MB (before: {b4:.0f} MB); "
              f"peak growth {100 * (p4 - p1) / p1:+.1f} %, growth of the increment {100 * ((p4 - b4) - (p1 - b1)) / max(p1 - b1, 1e-9):+.1f} %")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5000, 512, generator=g, dtype=torch.float64); y = torch.tanh(x @ torch.randn(512, 512, generator=g, dtype=torch.float64) / 20) + 0.5 * torch.randn(5000, 512, generator=g, dtype=torch.float64)
    svcca(x[:64, :16], y[:64, :16]); np_svcca(x[:64, :16].numpy(), y[:64, :16].numpy())   # warm-up: first LAPACK calls of each side
    t = time.perf_counter(); s_ours = svcca(x, y).item(); t1 = time.perf_counter() - t
    t = time.perf_counter(); pw = pwcca(x, y).item(); t2 = time.perf_counter() - t
    t = time.perf_counter(); s_np = np_svcca(x.numpy(), y.numpy()); t3 = time.perf_counter() - t
    print(f"svcca (5000, 512) float64: netlens {t1:.2f} s, numpy reference {t3:.2f} s ({t3 / t1:.1f}x), |difference| {abs(s_ours - s_np):.1e}; pwcca netlens {t2:.2f} s")

if __name__ == '__main__': main()
