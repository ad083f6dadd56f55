"""Attribution speed: netlens against Captum and pytorch-grad-cam on the same work, in one run (CPU or CUDA).

    python benchmarks/attribution.py [--size 224] [--batch 8] [--reps 2] [--skip-occlusion]

resnet18 (random init, eval mode), batch of 8 at 224x224 by default. Each contender runs `reps` times, interleaved,
and keeps its best time. Ratios below 1 mean netlens is faster. Work per row:
  IG          n_steps=50 (gausslegendre), 1 or 6 steps of the batch per forward for both libraries; floor = 50
              forward+backward passes of the batch itself (what IG cannot avoid)
  SmoothGrad  50 noisy samples, 48 per forward for both (Captum: NoiseTunnel(Saliency), nt_samples_batch_size=6)
  GradCAM     layer4, ReLU, bilinear resize to the input, each map min-max scaled to [0, 1] for all three: pytorch-grad-cam
              always does ReLU + per-image min-max (base_cam.py, scale_cam_image), so netlens and Captum (LayerGradCam with
              relu_attributions=True + LayerAttribution.interpolate) get the same post-processing and all three return the
              same maps (checked). One forward and one backward each; netlens and Captum backpropagate only from the scores
              to layer4, pytorch-grad-cam calls loss.backward() (base_cam.py), which runs the backward through the whole
              network and into every parameter's .grad: that is how it works, not a setting of this script.
              pytorch-grad-cam runs on its own copy of the model: its hooks stay on layer4 until it is released, and
              would otherwise run inside the other contenders' forwards (GradCAM and occlusion).
  Occlusion   window (3, 15, 15), stride (3, 8, 8), 8 windows per forward for both (64 images): 28 x 28 = 784 windows,
              98 forwards of 64 images plus one of the batch itself, for both; one untimed forward of 64 images first
"""
import argparse, copy
import torch, torchvision
from timing import best_of
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency, LayerGradCam, LayerAttribution, Occlusion
from netlens.attribution import integrated_gradients, smooth_grad, grad_cam, occlusion, input_grad

def minmax(m):
    "Each map scaled to [0, 1] as pytorch-grad-cam does (scale_cam_image: minus its min, over its max + 1e-7)"
    m = m - m.flatten(1).amin(1)[:, None, None]
    return m / (1e-7 + m.flatten(1).amax(1)[:, None, None])

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
    pgc_model = copy.deepcopy(model)        # its hooks stay on layer4 until released: keep them out of the other contenders' forwards
    pgc = GradCAM(model=pgc_model, target_layers=[pgc_model.layer4])
    targets = [ClassifierOutputTarget(int(c)) for c in y]
    runs = {'netlens': lambda: minmax(grad_cam(model, x, y, 'layer4')),
            'captum': lambda: minmax(LayerAttribution.interpolate(lgc.attribute(x, target=y, relu_attributions=True), x.shape[-2:], 'bilinear')[:, 0]),
            'grad-cam': lambda: pgc(input_tensor=x, targets=targets)}
    maps = {k: torch.as_tensor(f()).detach().float().cpu() for k, f in runs.items()}
    gap = max((maps[k] - maps['netlens']).abs().max().item() for k in maps)
    t = best_of(runs, max(a.reps, 5))
    rows.append(('GradCAM layer4', t['netlens'], t['captum'], t['grad-cam'], None))
    pgc.activations_and_grads.release()

    if not a.skip_occlusion:
        occ = Occlusion(model)
        with torch.no_grad(): model(x.repeat(8, 1, 1, 1))   # warm-up at the size of an occlusion forward (64 images), for neither in particular
        t = best_of({'netlens': lambda: occlusion(model, x, y, window=(3, 15, 15), stride=(3, 8, 8), batch_size=8 * n),
                     'captum': lambda: occ.attribute(x, target=y, sliding_window_shapes=(3, 15, 15), strides=(3, 8, 8), baselines=0., perturbations_per_eval=8)}, 1)
        rows.append(('Occlusion 15x15/8', t['netlens'], t['captum'], None, None))

    print(f"resnet18, batch {n} x 3 x {a.size} x {a.size}, {dev}, {torch.get_num_threads()} threads, best of interleaved runs, seconds")
    print(f"{'work':<20}{'netlens':>9}{'captum':>9}{'grad-cam':>10}{'floor':>8}{'netlens/captum':>16}{'netlens/grad-cam':>18}{'netlens/floor':>15}")
    f = lambda v: f"{v:>.2f}" if v is not None else '-'
    r = lambda u, v: f"{u / v:.3f}" if v else '-'
    for work, ours, cap, gc, fl in rows:
        print(f"{work:<20}{f(ours):>9}{f(cap):>9}{f(gc):>10}{f(fl):>8}{r(ours, cap):>16}{r(ours, gc):>18}{r(ours, fl):>15}")
    print(f"GradCAM maps of the three contenders agree within {gap:.1e} (all ReLU, bilinear resize, min-max scaled)")

if __name__ == '__main__': main()
