"""Time one JiT step of the authors' PyTorch code and of jit-jax side by side, in one process.

    pip install torch==2.13.0          # in a separate venv that also has jit-jax installed
    python experiments/bench_vs_authors.py --authors-src /path/to/Information-Theoretic-Unlearning/src \
        --batch 1 8 32 --rounds 5

The authors' code is imported from its own checkout, never copied into this project: their
``lipschitz.py`` (the ``Lipschitz.modify_weight`` step, unmodified) and their CIFAR ``resnet.py``
(``resnet18()``). ``lipschitz.py`` imports plotting, logging and model packages that the JiT step
never uses (torchvision, wandb, matplotlib, seaborn, and their ``models.py``, which needs
transformers); any of these that cannot be imported is replaced by an empty stand-in module, and
``torchvision.transforms.v2`` by ``Compose`` = apply in order and ``ToTensor`` = identity (what v2
does to a tensor). Their ``print`` calls inside the step are silenced.

One step = one call of ``modify_weight`` on a one-batch loader: 1 forward with gradient, N = 25
no-grad forwards of noisy copies (a Python loop), 1 backward, 1 SGD step. The jit-jax step is
``jit_value_and_grad`` (defaults: chunks of 32 images per forward, perturbed forwards outside the
differentiated function) plus an optax SGD update, jitted, on our port of the same ResNet18 (CIFAR
stem, same parameter count). Same inputs (random normal, clipped to [-1.9, 2.0]), sigma, lr, N.

Variants, timed round-robin so that machine drift hits them alike (medians, with ratios). A sample
is one step (``--burst 1``, the default: each step follows the other variants' work, with the
caches cold and the other library's threads just released) or the mean of ``--burst K``
consecutive steps of one variant, as a run over a forget set of several batches runs them:
- ``authors_train_t2``: their step as their scripts run it (model in train mode), torch with 2
  threads;
- ``authors_eval_t2`` / ``authors_eval_t1``: the model in eval mode (BatchNorm running statistics,
  as jit-jax's default), with 2 and 1 torch threads;
- ``jitjax``: jit-jax's default step (eval mode), with the default convolution ("auto": on the
  CPU, oneDNN's forward and backward convolutions when available, ``jit_jax/models/onednn.py``);
  ``--conv-impls custom onednn`` times several implementations side by side (suffixed names).
With ``--device cuda`` the authors' step runs on the GPU (train and eval mode, no thread variants)
and jit-jax on JAX's default backend; every torch step ends with ``torch.cuda.synchronize()``.
A 2048^2 float32 JAX matmul is timed before and after each batch size as a calibration of the
machine's state (this 2-core VM has been seen to run at half speed for minutes at a time).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_jit_step import make_step, matmul_gflops  # noqa: E402

from jit_jax.functional import functionalize  # noqa: E402
from jit_jax.models import ModelSpec, layers, onednn  # noqa: E402

UNUSED_BY_THE_STEP = ["torchvision", "torchvision.datasets", "torchvision.models",
                      "torchvision.transforms", "wandb", "matplotlib", "matplotlib.pyplot",
                      "seaborn", "tqdm", "scipy", "scipy.stats"]


def _stand_in(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    def getattr_(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _stand_in(f"{name}.{attr}")

    mod.__dict__["__getattr__"] = getattr_
    return mod


def _vgg11_torchvision_layout():
    """torchvision's ``vgg11()`` architecture (configuration "A": 3x3 convolutions with ReLU,
    64-M-128-M-256-256-M-512-512-M-512-512-M, adaptive 7x7 average pooling, 25088-4096-4096-1000
    classifier with ReLU and dropout 0.5), built from torch.nn for when torchvision cannot be
    imported (PyPI's torchvision does not load beside the CPU build of torch 2.13). Same layers,
    shapes and FLOPs, so the same step cost; the weights' initial values do not matter here."""
    import torch
    import torch.nn as nn

    layers_, c = [], 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers_.append(nn.MaxPool2d(2, 2))
        else:
            layers_ += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers_)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()


def load_authors(src: Path, model: str = "resnet18"):
    """(model constructor, Lipschitz class) from the authors' ``src`` folder: ``resnet18`` is their
    CIFAR ``resnet.resnet18()``; ``vgg11`` is their ``models.VGG16`` class, which holds
    torchvision's vgg11 plus a 1000 -> 100 layer (with torchvision's own ``vgg11`` when it can be
    imported, else :func:`_vgg11_torchvision_layout`; transformers is stood in when missing)."""
    for f in ("lipschitz.py", "resnet.py"):
        if not (src / f).is_file():
            raise SystemExit(f"error: --authors-src {src} has no {f}; pass the 'src' folder of "
                             f"jwf40/Information-Theoretic-Unlearning")
    added = []
    for name in UNUSED_BY_THE_STEP:
        if name in sys.modules:
            continue
        if name.rpartition(".")[0] in added:  # the parent is a stand-in already
            sys.modules[name] = _stand_in(name)
            added.append(name)
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _stand_in(name)
            added.append(name)
    v2 = types.ModuleType("torchvision.transforms.v2")

    class Compose:
        def __init__(self, fns):
            self.fns = list(fns)

        def __call__(self, x):
            for f in self.fns:
                x = f(x)
            return x

    v2.Compose, v2.ToTensor = Compose, lambda: (lambda x: x)
    saved = {k: sys.modules.get(k) for k in ("torchvision.transforms.v2", "models")}
    sys.modules["torchvision.transforms.v2"] = v2
    if "torchvision.transforms" in added:
        sys.modules["torchvision.transforms"].v2 = v2
    tv_stand_in = {}
    if model == "vgg11" and "torchvision.models" in added:
        tv_stand_in = {k: sys.modules[k] for k in ("torchvision", "torchvision.models")}
        tv_stand_in["torchvision.models"].vgg11 = _vgg11_torchvision_layout
        print("torchvision cannot be imported: the authors' VGG16 class gets vgg11 rebuilt from "
              "torch.nn in torchvision's layout")
    models_stub = types.ModuleType("models")
    models_stub.ViT = type("ViT", (), {})  # only used in an isinstance check
    sys.modules["models"] = models_stub

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    try:
        resnet = load("authors_resnet", src / "resnet.py")
        lipschitz = load("authors_lipschitz", src / "lipschitz.py")
        for name in added:  # lipschitz.py holds them; other imports should not see them
            sys.modules.pop(name, None)
        if model == "vgg11":
            sys.modules["resnet"] = resnet  # their models.py does "from resnet import ..."
            try:  # models.py imports a ViT feature extractor that newer transformers dropped
                import transformers

                if not hasattr(transformers, "ViTFeatureExtractor"):
                    transformers.ViTFeatureExtractor = None  # unused by the VGG
            except ImportError:
                sys.modules["transformers"] = _stand_in("transformers")
            sys.modules.update(tv_stand_in)  # their models.py imports vgg11 from it
            try:
                build = load("authors_models", src / "models.py").VGG16
            finally:
                for k in tv_stand_in:
                    sys.modules.pop(k, None)
            ctor = lambda: build(num_classes=100)  # noqa: E731
        else:
            ctor = resnet.resnet18
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    if added:
        print(f"stand-ins for modules the step does not use: {', '.join(added)}")
    return ctor, lipschitz.Lipschitz


def authors_stepper(resnet18, lipschitz_cls, sigma, lr, n, x_nchw, *, train: bool,
                    device: str = "cpu"):
    import torch

    model = resnet18().to(device)  # their model, 100 classes
    model.train(train)
    params = dict(lower_bound=1, exponent=1, min_layer=-1, max_layer=-1, dampening_constant=1,
                  selection_weighting=1, n_epochs=1, n_samples=n, learning_rate=lr,
                  use_quad_weight=False, ewc_lambda=1, lipschitz_weighting=sigma)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with contextlib.redirect_stdout(io.StringIO()):
        pdr = lipschitz_cls(model, opt, device, params)
    x = torch.from_numpy(x_nchw).to(device)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    n_params = sum(p.numel() for p in model.parameters())

    def step():
        with contextlib.redirect_stdout(io.StringIO()):
            pdr.modify_weight([(x, None, y)])
        if device != "cpu":
            torch.cuda.synchronize()

    return step, n_params


class _JaxSteps:
    """jit-jax's step variants for one batch, in this process: ``names``, ``compile_s``,
    ``run(name) -> seconds``."""

    def __init__(self, model, batch, variants, conv_impls, sigma, n):
        spec = ModelSpec(model, 100, (32, 32, 3), {})
        fn = functionalize(spec.build(0))
        x = np.random.default_rng(0).normal(size=(batch, 32, 32, 3)).clip(-1.9, 2.0)
        xj = jnp.asarray(x.astype(np.float32))
        self.steps, self.compile_s, self.names = {}, [], []
        for jv, impl in [(jv, impl) for jv in variants for impl in conv_impls]:
            jstep, tx, _ = make_step(fn, jv, sigma, n)
            t = time.perf_counter()
            with layers.conv_impl(impl):
                jstep = jstep.lower(fn.params, tx.init(fn.params), xj,
                                    jax.random.key(0), {}).compile()
            self.compile_s.append(time.perf_counter() - t)
            name = "jitjax" if jv == "chunked" else f"jitjax_{jv}"
            if len(conv_impls) > 1 or impl != "auto":
                name += f"_{layers.resolve_conv_impl(impl)}"
            self.steps[name] = (jstep, (fn.params, tx.init(fn.params)), xj)
            self.names.append(name)
        self.calls = 0

    def run(self, name, burst: int = 1) -> float:
        """Seconds per step: the mean over ``burst`` consecutive steps."""
        jstep, state, xj = self.steps[name]
        t = time.perf_counter()
        for _ in range(burst):
            self.calls += 1
            jax.block_until_ready(jstep(*state, xj, jax.random.key(self.calls), {}))
        return (time.perf_counter() - t) / burst


def _jax_worker(conn):
    """The jit-jax side in its own process: a loop of (command, args) messages."""
    steps = None
    while True:
        cmd, args = conn.recv()
        if cmd == "setup":
            steps = _JaxSteps(*args)
            conn.send((steps.names, steps.compile_s, onednn.status()))
        elif cmd == "run":
            conn.send(steps.run(*args))
        else:
            conn.close()
            return


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors-src", type=Path, required=True,
                   help="the 'src' folder of a checkout of jwf40/Information-Theoretic-Unlearning")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--num-samples", type=int, default=25)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--burst", type=int, default=1,
                   help="steps per timed sample, back to back (the sample is their mean): 1 "
                        "times one step after the other variants' work; more, as a run over a "
                        "forget set of several batches runs them")
    p.add_argument("--model", default="resnet18", choices=["resnet18", "vgg11"],
                   help="vgg11: the authors' torchvision vgg11 + 1000->100 layer against our "
                        "vgg11_torchvision")
    p.add_argument("--jax-variants", nargs="+", default=["chunked"],
                   choices=["chunked", "one_forward"],
                   help="jit-jax step structures to time (bench_jit_step.py)")
    p.add_argument("--conv-impls", nargs="+", default=["auto"],
                   choices=["auto", "xla", "custom", "onednn"],
                   help="jit-jax convolution implementations to time (jit_jax.models.layers; "
                        "auto: oneDNN on the CPU when available)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="torch device of the authors' step (jit-jax uses JAX's default backend); "
                        "on cuda the thread variants are skipped")
    p.add_argument("--same-process", action="store_true",
                   help="run jit-jax in this process too (by default it runs in a process of its "
                        "own: with oneDNN loaded beside torch, torch's step ran 2-3x slower here)")
    args = p.parse_args(argv)
    if args.burst < 1:
        p.error(f"--burst {args.burst}: accepted: an integer >= 1")
    import torch

    worker = conn = None
    if not args.same_process:
        import multiprocessing as mp

        conn, child = mp.get_context("spawn").Pipe()
        worker = mp.get_context("spawn").Process(target=_jax_worker, args=(child,), daemon=True)
        worker.start()

    resnet18, lipschitz_cls = load_authors(args.authors_src.expanduser().resolve(), args.model)
    ours = "resnet18" if args.model == "resnet18" else "vgg11_torchvision"
    spec = ModelSpec(ours, 100, (32, 32, 3), {})
    print(f"torch {torch.__version__} on {args.device} (default threads "
          f"{torch.get_num_threads()}), jax {jax.__version__} {jax.devices()[0].device_kind}; jit-jax {ours} {spec.num_params():,} "
          f"params; N={args.num_samples}, sigma={args.sigma}, lr={args.lr}; convolutions: "
          f"{', '.join(args.conv_impls)}", flush=True)
    rows = []
    for b in args.batch:
        cal0 = matmul_gflops()
        x = np.random.default_rng(0).normal(size=(b, 32, 32, 3)).clip(-1.9, 2.0).astype(np.float32)
        x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        variants = {}
        torch_variants = ((("authors_train_t2", True, 2), ("authors_eval_t2", False, 2),
                           ("authors_eval_t1", False, 1)) if args.device == "cpu" else
                          (("authors_train", True, None), ("authors_eval", False, None)))
        for name, train, threads in torch_variants:
            step, n_params = authors_stepper(resnet18, lipschitz_cls, args.sigma, args.lr,
                                             args.num_samples, x_nchw, train=train,
                                             device=args.device)
            variants[name] = (step, threads)
        as_run = torch_variants[0][0]
        setup = (ours, b, args.jax_variants, args.conv_impls, args.sigma, args.num_samples)
        if worker is not None:
            conn.send(("setup", setup))
            names, compile_s, status = conn.recv()
            for name in names:
                variants[name] = (lambda name=name: conn.send(("run", (name, args.burst)))
                                  or conn.recv(), None)
        else:
            local = _JaxSteps(*setup)
            names, compile_s, status = local.names, local.compile_s, onednn.status()
            for name in names:
                variants[name] = (lambda name=name, local=local: local.run(name, args.burst),
                                  None)
        print(f"B={b}: authors' {args.model} {n_params:,} params; jit-jax compile "
              f"{', '.join(f'{c:.1f}' for c in compile_s)}s (apart)", flush=True)
        print(f"  jit-jax's process: {'its own' if worker else 'this one'}; oneDNN there: "
              f"{status}", flush=True)
        for fn_, threads in variants.values():  # warm-up
            if threads:
                torch.set_num_threads(threads)
            fn_()
        times = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, (fn_, threads) in variants.items():
                if threads:
                    torch.set_num_threads(threads)
                if k.startswith("jitjax"):  # timed in their own process, per step
                    times[k].append(fn_())
                    continue
                t = time.perf_counter()
                for _ in range(args.burst):
                    fn_()
                times[k].append((time.perf_counter() - t) / args.burst)
        cal1 = matmul_gflops()
        med = {k: float(np.median(v)) for k, v in times.items()}
        best_torch = min(v for k, v in med.items() if k.startswith("authors"))
        print(f"B={b}: matmul calibration {cal0:.0f} -> {cal1:.0f} GFLOP/s; a sample is the "
              f"mean of {args.burst} consecutive step(s)")
        for k, v in med.items():
            print(f"  {k:18s} median {v:7.3f}s  {as_run}/this x{med[as_run] / v:5.2f}"
                  f"  best torch/this x{best_torch / v:5.2f}  all {np.round(times[k], 3).tolist()}",
                  flush=True)
        rows.append({"batch": b, "median_s": med, "times": times, "matmul_gflops": [cal0, cal1],
                     "burst": args.burst})
    if worker is not None:
        conn.send(("stop", None))
        worker.join(timeout=30)
    return rows


if __name__ == "__main__":
    main()
