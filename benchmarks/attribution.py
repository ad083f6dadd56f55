"""Attribution speed: netlens against Captum and pytorch-grad-cam on the same work, in one run (CPU or CUDA).

    python benchmarks/attribution.py [--size 224] [--batch 8] [--reps 2] [--skip-occlusion]

resnet18 (random init, eval mode), batch of 8 at 224x224 by default. Each contender runs `reps` times, interleaved,
and keeps its best time. Ratios below 1 mean netlens is faster. Work per row:
  IG          n_steps=50 (gausslegendre), 1 or 6 steps of the batch per forward for both libraries; floor = 50
              forward+backward passes of the batch itself (what IG cannot avoid)
  SmoothGrad  50 noisy samples, 48 per forward for both (Captum: NoiseTunnel(Saliency), nt_samples_batch_size=6)
  GradCAM     layer4, resized to the input (Captum LayerGradCam + LayerAttribution.interpolate; pytorch-grad-cam GradCAM)
  Occlusion   window (3, 15, 15), stride (3, 8, 8), 8 windows per forward for both (64 images)
"""
import argparse
import torch, torchvision
from timing import best_of
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency, LayerGradCam, LayerAttribution, Occlusion
from netlens.attribution import integrated_gradients, smooth_grad, grad_cam, occlusion, input_grad

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--size', type=int, default=224); p.add_argument('--batch', type=int, default=8)
    p.add_argument('--reps', type=int, default=2); p.add_argument('--skip-occlusion', action='store_true')
    a = p.parse_args()
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().to(dev)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.arange(a.batch, device=dev) * 7 % 1000
    n = a.batch
    rows = []

    ig_c = IntegratedGradients(model)
    for steps_per_pass in (1, 6):
        runs = {'netlens': lambda: integrated_gradients(model, x, y, n_steps=50, batch_size=steps_per_pass * n),
                'captum': lambda: ig_c.attribute(x, target=y, n_steps=50, internal_batch_size=steps_per_pass * n)}
        if steps_per_pass == 1: runs['floor'] = lambda: [input_grad(model, x, y) for _ in range(50)]
        t = best_of(runs, a.reps)
        rows.append((f'IG 50, {steps_per_pass} step/pass', t['netlens'], t['captum'], None, t.get('floor')))

    nt = NoiseTunnel(Saliency(model))
    t = best_of({'netlens': lambda: smooth_grad(model, x, y, n_samples=50, batch_size=6 * n),
                 'captum': lambda: nt.attribute(x, nt_type='smoothgrad', nt_samples=50, nt_samples_batch_size=6, stdevs=0.15, target=y, abs=False)}, a.reps)
    rows.append(('SmoothGrad 50', t['netlens'], t['captum'], None, None))

    lgc = LayerGradCam(model, model.layer4)
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    pgc = GradCAM(model=model, target_layers=[model.layer4])
    targets = [ClassifierOutputTarget(int(c)) for c in y]
    t = best_of({'netlens': lambda: grad_cam(model, x, y, 'layer4'),
                 'captum': lambda: LayerAttribution.interpolate(lgc.attribute(x, target=y), x.shape[-2:], 'bilinear'),
                 'grad-cam': lambda: pgc(input_tensor=x, targets=targets)}, max(a.reps, 5))
    rows.append(('GradCAM layer4', t['netlens'], t['captum'], t['grad-cam'], None))

    if not a.skip_occlusion:
        occ = Occlusion(model)
        t = best_of({'netlens': lambda: occlusion(model, x, y, window=(3, 15, 15), stride=(3, 8, 8), batch_size=8 * n),
                     'captum': lambda: occ.attribute(x, target=y, sliding_window_shapes=(3, 15, 15), strides=(3, 8, 8), baselines=0., perturbations_per_eval=8)}, 1)
        rows.append(('Occlusion 15x15/8', t['netlens'], t['captum'], None, None))

    print(f"resnet18, batch {n} x 3 x {a.size} x {a.size}, {dev}, {torch.get_num_threads()} threads, best of interleaved runs, seconds")
    print(f"{'work':<20}{'netlens':>9}{'captum':>9}{'grad-cam':>10}{'floor':>8}{'netlens/captum':>16}{'netlens/grad-cam':>18}{'netlens/floor':>15}")
    f = lambda v: f"{v:>.2f}" if v is not None else '-'
    r = lambda u, v: f"{u / v:.3f}" if v else '-'
    for work, ours, cap, gc, fl in rows:
        print(f"{work:<20}{f(ours):>9}{f(cap):>9}{f(gc):>10}{f(fl):>8}{r(ours, cap):>16}{r(ours, gc):>18}{r(ours, fl):>15}")

if __name__ == '__main__': main()
