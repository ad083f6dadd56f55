"""Loss landscape and Fourier heat map: netlens against their floors and against anatome's way, in one run.

    python benchmarks/landscape.py [--steps 21] [--quick]

landscape2d on a steps x steps grid (default 21 x 21, step 0.1 over [-1, 1]^2):
  - floor:      the same number of plain forward passes over the same data (the least any method can do);
  - anatome's way: a deep copy of the model at each grid point, moved along the directions, then evaluated;
  - netlens:    landscape2d (parameters written in place from a saved copy, restored bit for bit).
fourier_map against its floor: one forward per basis image and example, on pre-built perturbed batches.
"""
import argparse, copy
import torch, torch.nn.functional as F, torchvision
from netlens.data import digits_cnn, digits_data
from timing import best_of
from netlens.landscape import fourier_basis, fourier_map, landscape2d, random_direction

def floor(model, x, y, n):
    with torch.no_grad():
        for _ in range(n): F.cross_entropy(model(x), y).item()

def anatome_way(model, x, y, d1, d2, coords):
    "A fresh deep copy per grid point, moved along d1, d2 (how anatome's landscape2d evaluates a grid)"
    out = []
    with torch.no_grad():
        for a, b in coords:
            m = copy.deepcopy(model)
            for p, u, v in zip(m.parameters(), d1, d2): p.add_(a * u + b * v)
            out.append(F.cross_entropy(m(x), y).item())
    return out

def bench_landscape(name, model, x, y, steps):
    model.eval()
    xs = torch.linspace(-1, 1, steps)
    coords = [(a, b) for a in xs.tolist() for b in xs.tolist()]
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    runs = {'floor': lambda: floor(model, x, y, len(coords)),
            'anatome': lambda: anatome_way(model, x, y, d1, d2, coords),
            'netlens': lambda: landscape2d(model, (x, y), F.cross_entropy, (-1, 1), (-1, 1), 2 / (steps - 1), directions=[d1, d2], show_progress=False)}
    t = best_of(runs, REPS)
    return (f"landscape2d {steps}x{steps}", name, len(x), t['floor'], t['anatome'], t['netlens'])

REPS = 2

def bench_fourier(name, model, x, y):
    model.eval()
    h, w = x.shape[-2:]
    freqs = [(i, j) for i in range(h) for j in range(w) if (i, j) <= ((-i) % h, (-j) % w)]
    k = max(1, 2048 // len(x))
    batches = [(x + 4 * fourier_basis(h, w, freqs[s:s + k])[:, None, None]).flatten(0, 1) for s in range(0, len(freqs), k)]
    def fl():
        with torch.no_grad():
            for b in batches: model(b).argmax(-1)
    t = best_of({'floor': fl, 'netlens': lambda: fourier_map(model, (x, y), random_sign=False, show_progress=False, batch_size=2048)}, REPS)
    return ("fourier_map", name, len(x), t['floor'], float('nan'), t['netlens'])

def main():
    global REPS
    p = argparse.ArgumentParser(); p.add_argument('--steps', type=int, default=21); p.add_argument('--quick', action='store_true')
    p.add_argument('--reps', type=int, default=2)
    a = p.parse_args()
    REPS = a.reps
    torch.manual_seed(0)
    x, y = digits_data('all')
    rows = [bench_landscape('digits cnn', digits_cnn(), x[:512], y[:512], a.steps)]
    if not a.quick:
        rn = torchvision.models.resnet18(num_classes=10)
        rows.append(bench_landscape('resnet18 64x64', rn, torch.randn(128, 3, 64, 64), torch.randint(0, 10, (128,)), a.steps))
    rows.append(bench_fourier('digits cnn', digits_cnn(), x[:64], y[:64]))
    print(f"{torch.get_num_threads()} threads, best of {REPS} interleaved runs, seconds (lower is better)")
    print(f"{'work':<22}{'model':<16}{'n':>5}{'floor':>9}{'anatome':>10}{'netlens':>10}{'netlens/floor':>15}{'anatome/netlens':>17}")
    for work, name, n, fl, an, ours in rows:
        print(f"{work:<22}{name:<16}{n:>5}{fl:>9.2f}{an:>10.2f}{ours:>10.2f}{ours / fl:>15.3f}{an / ours:>17.2f}")

if __name__ == '__main__': main()
