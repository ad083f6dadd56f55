"""Feature visualisation speed: netlens' render against Lucent's render_vis, with the same settings, in one run.

    python benchmarks/optvis.py [--steps 128] [--size 128] [--reps 3]

A channel objective, the FFT + decorrelated-colour parameterisation, lucid's standard transforms, ImageNet
preprocessing, Adam at 0.05, `steps` steps, on random-init torchvision googlenet and resnet18, CPU: steps per second
of each, and of the floor (the same number of forward + backward passes of the model alone on a fixed image).

Equal work: Lucent's render_vis upsamples every transformed image to 224 px when the image is smaller than 224,
unless it is given `fixed_image_size`, in which case it resizes the transformed image to that size. netlens'
standard transforms end with a bilinear resize back to the image's size (they keep the size), and at 128 px and
above use lucid's pixel counts (pad 12, jitter 8 and 4), as Lucent's do. So both contenders run the same five
transforms and one bilinear resize to `size` (Lucent through `fixed_image_size`), and the model sees size x size
images in both, as it does in the floor. Below 128 px netlens scales the pad and jitters down: use --size 128 or more.
Lucent registers hooks on every module and never removes them, so it gets a fresh copy of the model for every run
(otherwise each call would slow the next).
"""
import argparse, copy, json
import torch, torchvision
from timing import best_of
from netlens.core import normalize
from netlens.optvis import render, channel, standard_transforms

MODELS = {'googlenet': (lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True), 'inception4a', 5),
          'resnet18': (lambda: torchvision.models.resnet18(), 'layer3', 5)}

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--steps', type=int, default=128)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--reps', type=int, default=3)
    a = p.parse_args()
    if a.size < 128: p.error('--size must be at least 128: below it the standard transforms shrink their pad and jitter, which Lucent does not')
    from lucent.optvis import render as lrender, param as lparam, transform as ltransform
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.steps} steps, both resize to {a.size}x{a.size} after the transforms, best of {a.reps}")
    results = {}
    for name, (build, layer, k) in MODELS.items():
        torch.manual_seed(0)
        model = build().eval()
        x = torch.rand(1, 3, a.size, a.size, requires_grad=True)   # the size both contenders resize to after their transforms
        frozen = copy.deepcopy(model).requires_grad_(False)
        def floor():
            for _ in range(a.steps):
                x.grad = None
                frozen(normalize(x))[0].sum().backward()
        def ours(): render(model, channel(layer, k), size=a.size, steps=a.steps, transforms=standard_transforms(),   # ends with the resize to size
                           preprocess='imagenet', show_progress=False, seed=0)
        def lucent():
            m = copy.deepcopy(model)
            lrender.render_vis(m, f"{layer}:{k}", param_f=lambda: lparam.image(a.size), transforms=ltransform.standard_transforms,
                               thresholds=(a.steps,), preprocess=True, show_image=False, progress=False, fixed_image_size=a.size)
        t = best_of({'floor': floor, 'netlens': ours, 'lucent': lucent}, a.reps)
        results[name] = {k_: a.steps / v for k_, v in t.items()}
        r = results[name]
        print(f"{name:10} steps/s: netlens {r['netlens']:.1f}, lucent {r['lucent']:.1f}, floor {r['floor']:.1f}; "
              f"netlens / lucent = {r['netlens'] / r['lucent']:.2f}x, netlens / floor = {r['netlens'] / r['floor']:.2f}")
    print(json.dumps(results))

if __name__ == '__main__': main()
