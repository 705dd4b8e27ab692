"""Writes quickstart.ipynb, sigmoid.ipynb, boundary_2d.ipynb, curvature.ipynb and objectives.ipynb
(without outputs) from the cells below.

    .venv/bin/python notebooks/build_notebooks.py

Each notebook's first code cell holds its settings; ``JIT_JAX_SMALL=1`` in the environment shrinks
them (the test suite, ``tests/test_notebooks.py``, runs every notebook that way). The logic lives in
``jit_jax.toys`` / ``jit_jax.toy_plots`` / ``jit_jax.analysis``; the notebooks only call it.
"""

from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


SIGMOID = [
    md("""
# Figure 3: forgetting points on a sigmoid

Foster et al. (TMLR 2025), Figure 3: JiT barely changes a model when the forgotten samples lie where
it is flat, and deforms it where it is steep. Here a logistic model `sigmoid(w x + b)` is fitted to
1-D data, and JiT (`jit_jax.unlearn.jit`, via `jit_jax.toys.jit_update`) is run on its sigmoid
output for the three training points with the lowest slope and, separately, the three with the
highest. Numbers at full settings: `docs/toys.md`.
"""),
    code("""
import os

SMALL = os.environ.get("JIT_JAX_SMALL") == "1"  # quick run (the test suite sets it)

from jit_jax import toys

CONFIG = toys.SigmoidConfig()
if SMALL:
    CONFIG = CONFIG.replace(train_steps=300, jit_seeds=(0, 1))
CONFIG
"""),
    md("""
Two variants of the loss: the authors' code (the perturbed branch under a stop-gradient) and the
slides' formula (no stop-gradient). `clip=False`: one low-dimensional point has a degenerate
batch range, see the `jit_jax.toys` docstring.
"""),
    code("""
results = {
    "authors' loss (stop-gradient)": toys.sigmoid_experiment(CONFIG.replace(stop_gradient=True)),
    "slides' loss (no stop-gradient)": toys.sigmoid_experiment(CONFIG.replace(stop_gradient=False)),
}
for title, res in results.items():
    for region in ("flat", "steep"):
        d = res[region]
        print(f"{title:32s} {region:5s} slope {d['slope']:.4f}  "
              f"max |change| {d['max_change_median']:.2e}  "
              f"at the points {d['forget_change_median']:.2e}")
"""),
    code("""
from jit_jax.toy_plots import plot_sigmoid

plot_sigmoid(results);
"""),
    md("""
## Why the stop-gradient loss is a random walk in one dimension

With the stop-gradient and p = 1 the gradient at x is
`-grad_theta f(x) * sign(f') * mean_j sign(xi_j) / |xi_j|` wherever f is monotone over the noise:
the signs are symmetric, so its mean is zero, and its variance is infinite (E[1/|xi|] diverges in
1-D). Averaging ever more draws does not settle it; without the stop-gradient the gradient is a
steady penalty on the slope.
"""),
    code("""
import jax

from jit_jax.unlearn.jit import jit_value_and_grad

params = results["authors' loss (stop-gradient)"]["params"]
x_steep = results["authors' loss (stop-gradient)"]["steep"]["x_forget"][:1, None]
draws = 2000 if SMALL else 20000
for sg in (True, False):
    grads = [jit_value_and_grad(toys.logistic_prob, params, x_steep, jax.random.key(s), sigma=0.5,
                                num_samples=draws, clip=False, stop_gradient=sg,
                                images_per_forward=None)[1]["w"] for s in range(4)]
    print(f"stop_gradient={sg}: d loss / d w over 4 keys, N={draws}:",
          [round(float(g), 3) for g in grads])
"""),
]

BOUNDARY = [
    md("""
# Figure 2: how the boundary of a 2-D classifier moves

A tanh MLP is trained (full batch, deterministic) on 200 points filling a square, labelled by a wavy
curve with 5% of the labels flipped; the model memorises the flipped points. One training point in a
low-gradient region and one in a high-gradient region (by ||grad_x log p(y|x)||) are forgotten
five ways: the original model, the model retrained without the point (same init and recipe), JiT
from the original, and "train to mislabel the point" from the original, twice: the paper's naive
version (a fixed budget of SGD steps on the flipped label) and a gentle one that stops as soon as
the point is mislabelled. Scores: agreement with the
retrained model and how far the boundary moved, both as % of grid cells. Numbers at full settings:
`docs/toys.md`.
"""),
    code("""
import os

SMALL = os.environ.get("JIT_JAX_SMALL") == "1"  # quick run (the test suite sets it)

from jit_jax import toys

CONFIG = toys.BoundaryConfig()
if SMALL:
    CONFIG = CONFIG.replace(train_steps=1500, resolution=40, num_samples=100)
NUM_VAL = 4 if SMALL else 20  # validation forget points for the settings sweep
CONFIG
"""),
    code("""
setup = toys.boundary_setup(CONFIG)
x, y, g = setup["x"], setup["y"], setup["grad_norm"]
for name in ("low", "high"):
    i = setup[name]
    print(f"{name}-gradient point: index {i}, x = {x[i].round(2)}, label {y[i]}, "
          f"||grad log p|| = {g[i]:.2e}")
"""),
    code("""
res = toys.boundary_experiment(CONFIG, setup=setup)
print(f"{'point':6s} {'method':>15s} {'agreement':>10s} {'moved':>7s} {'p(y|x)':>7s}")
for name in ("low", "high"):
    pt = res["points"][name]
    for m in toys.METHODS:
        print(f"{name:6s} {m:>15s} {pt['agreement'][m]:10.2f} {pt['moved'][m]:7.2f} "
              f"{pt['p_true'][m]:7.3f}")
"""),
    code("""
from jit_jax.toy_plots import plot_boundary

plot_boundary(res);
"""),
    md("""
## How sigma and the learning rates were chosen

`toys.tune_boundary` scores every setting on *other* forget points (validation), never the two
above: sigma is the grid value nearest the information radius, the JiT lr the last one before JiT
moves the boundary more than retraining does on average; the naive mislabel lr the one with the best
agreement among those that mislabel every validation point, the gentle one the one with the best
agreement.
"""),
    code("""
sweep = toys.tune_boundary(CONFIG, setup=setup, num_val=NUM_VAL,
                           sigmas=(0.3,) if SMALL else (0.1, 0.2, 0.3, 0.5))
print(f"original vs retrained: {sweep['original']:.2f}% agreement; radius {sweep['radius']:.2f}")
for (sigma, lr), (agr, mv) in sweep["jit"].items():
    print(f"JiT sigma={sigma} lr={lr:.0e}: agreement {agr:.2f}%, moved {mv:.2f}%")
for lr, (agr, mv, flipped) in sweep["mislabel"].items():
    print(f"naive mislabel lr={lr:.0e}: agreement {agr:.2f}%, moved {mv:.2f}%, "
          f"{flipped:.0f}% of the points mislabelled")
for lr, (agr, mv, steps) in sweep["mislabel_gentle"].items():
    print(f"gentle mislabel lr={lr:.0e}: agreement {agr:.2f}%, moved {mv:.2f}%, {steps:.0f} steps")
sweep["choice"]
"""),
]

CURVATURE = [
    md("""
# Information content and input curvature

`jit_jax.analysis` measures the two quantities the paper's argument rests on: the information
content alpha(x) (the share of training points within radius r that share x's label) and the
input-space curvature kappa(x) = ||Hess_x f||_F / ||grad_x f|| of f = log p(y|x). First on the 2-D
toy of Figure 2, then on one 8x8 digit through a small CNN, where the exact Hessian, the
Hessian-vector-product columns and Hutchinson's estimate can be compared.
"""),
    code("""
import os

SMALL = os.environ.get("JIT_JAX_SMALL") == "1"  # quick run (the test suite sets it)

TOY = dict(train_steps=1000, resolution=30) if SMALL else dict(resolution=80)
CNN_EPOCHS = 10  # ~2 s on a CPU
PROBES = (8, 32) if SMALL else (16, 64, 256)
"""),
    code("""
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jit_jax import toys
from jit_jax.analysis import curvature, information

setup = toys.boundary_setup(toys.BoundaryConfig(**TOY))
x, y, f, params = setup["x"], setup["y"], setup["apply_fn"], setup["params"]
xx, yy = setup["grid"]
apply = lambda xb: f(params, xb)

# curvature of log p(predicted class | x) over the grid, exact Hessians (d = 2), vmapped
pred = jnp.argmax(apply(jnp.asarray(setup["points"])), axis=-1)
grid_stats = curvature.curvature_stats(apply, setup["points"], pred, method="hessian")
# information content of the training points
radius = information.choose_radius(x, k=10, sample=None)
alpha = information.alpha(x, y, x, y, radius, exclude_self=True).alpha

fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
for ax, key in zip(axes[:2], ("grad_norm", "kappa")):
    im = ax.pcolormesh(xx, yy, np.log10(np.asarray(grid_stats[key]).reshape(xx.shape) + 1e-12))
    fig.colorbar(im, ax=ax)
    ax.set_title(f"log10 {key} of log p(predicted class | x)")
sc = axes[2].scatter(x[:, 0], x[:, 1], c=alpha, s=14, cmap="viridis")
fig.colorbar(sc, ax=axes[2])
axes[2].set_title(f"alpha(x) of the training points, r = {radius:.2f}")
p1 = np.asarray(jax.nn.softmax(apply(jnp.asarray(setup["points"])))[:, 1]).reshape(xx.shape)
for ax, colour in zip(axes, ("w", "w", "k")):
    ax.contour(xx, yy, p1, levels=[0.5], colors=colour)
"""),
    code("""
stats = toys.input_gradient_norms(f, params, x, y)
print("Spearman(alpha, grad norm) = %.2f (p = %.1g)" % toys.spearman(alpha, stats["grad_norm"]))
print("Spearman(alpha, kappa)     = %.2f (p = %.1g)" % toys.spearman(alpha, stats["kappa"]))
high = np.flatnonzero(information.information_label(alpha, 0.5) == "high")
print("high-information points (alpha < 0.5):", high)
"""),
    md("""
## One digit through a small CNN: exact Hessian, HVP columns, Hutchinson

A 64-pixel input has a 64 x 64 input Hessian: small enough to build exactly, and to check the
column-by-column HVP form and Hutchinson's estimate (with its confidence interval) against it.
"""),
    code("""
from flax import nnx

from jit_jax.data import load_dataset
from jit_jax.data.dataset import normalize
from jit_jax.models.cnn import CNN
from jit_jax.train import TrainConfig, evaluate, train

ds = load_dataset("digits")
xtr, xte = normalize(ds.x_train, ds.mean, ds.std), normalize(ds.x_test, ds.mean, ds.std)
model = CNN(10, xtr.shape[1:], width=8, rngs=nnx.Rngs(0))
recipe = TrainConfig(epochs=CNN_EPOCHS, batch_size=32, optimizer="adam", lr=3e-3,
                     schedule="cosine", weight_decay=0.0, augment="none")
train(model, xtr, ds.y_train, recipe, progress=False)
model.eval()
print("test accuracy: %.1f%%" % evaluate(model, xte, ds.y_test)["accuracy"])
"""),
    code("""
x0, y0 = jnp.asarray(xte[0]), int(ds.y_test[0])
fx = curvature.scalar_fn(model, "log_softmax", label=y0)
H = curvature.hessian(fx, x0, "hessian")
H_hvp = curvature.hessian(fx, x0, "hvp", batch_size=16)
fro = float(jnp.linalg.norm(H))
print(f"Hessian {H.shape}: max |exact - HVP columns| = {float(jnp.max(jnp.abs(H - H_hvp))):.2e}, "
      f"||H||_F = {fro:.4g}, HVP form {float(curvature.hessian_frobenius(fx, x0, 'hvp')):.4g}")
for m in PROBES:
    est = curvature.hutchinson_frobenius_sq(fx, x0, jax.random.key(0), num_probes=m)
    inside = float(est.ci_low) <= fro**2 <= float(est.ci_high)
    print(f"Hutchinson, {m:3d} probes: ||H||_F^2 ~ {float(est.estimate):.4g} "
          f"[{float(est.ci_low):.4g}, {float(est.ci_high):.4g}] "
          f"(exact {fro**2:.4g}, inside: {inside})")
eig = np.linalg.eigvalsh(np.asarray((H + H.T) / 2))
top = float(curvature.top_eigenvalue(fx, x0, jax.random.key(1), "lanczos", num_iters=20))
print(f"top |eigenvalue|: exact {eig[np.argmax(np.abs(eig))]:.4g}, Lanczos (20 HVPs) {top:.4g}")
print(f"kappa(x) = {float(curvature.kappa(fx, x0)):.4g}")
"""),
    code("""
n = 16 if SMALL else 64
cs = curvature.curvature_stats(model, xte[:n], ds.y_test[:n], method="hvp", hvp_batch_size=16)
r_img = information.choose_radius(xtr, k=10)
a_img = information.alpha(xte[:n], ds.y_test[:n], xtr, ds.y_train, r_img).alpha
print("Spearman(alpha, kappa) on %d test digits = %.2f" % (n, toys.spearman(a_img, cs["kappa"])[0]))
plt.scatter(a_img, np.asarray(cs["kappa"]))
plt.xlabel("alpha(x), pixel space"); plt.ylabel("kappa(x)"); plt.yscale("log");
"""),
]

QUICKSTART = [
    md("""
# Quickstart: forget a digit with JiT

The whole pipeline on sklearn's embedded digits (no download): train the original model, retrain
it without one class (RTRN, the gold standard), run JiT (zero-shot: it sees only the model and the
forget set) and score all three with the paper's metrics. `jit-jax demo` does the same from the
command line.
"""),
    code("""
import os

SMALL = os.environ.get("JIT_JAX_SMALL") == "1"  # quick run (the test suite sets it)

from jit_jax import recipes
from jit_jax.data import load_dataset, parse_forget
from jit_jax.demo import compare, train_original
from jit_jax.metrics import markdown_table
from jit_jax.models import ModelSpec

ds = load_dataset("digits")
spec = ModelSpec("mlp", ds.num_classes, ds.image_shape, {})
config = recipes.train_recipe("digits", "mlp")
if SMALL:
    config = config.replace(epochs=5)
ds, spec, config
"""),
    md("""
Train the original model and choose what to forget: every training image of the digit 3.
"""),
    code("""
model, history = train_original(ds, spec, config)
split = parse_forget(ds, "class:3")
print(f"original trained in {history.train_time:.1f}s; forgetting {split.n_forget} samples")
"""),
    md("""
BSLN (the untouched model), RTRN (retrained on the retained data with the same recipe) and JiT
(the digits defaults of `jit_jax.recipes`, chosen on a validation split). The retrain distance
sums the gaps to RTRN in D_r accuracy, D_f accuracy and MIA.
"""),
    code("""
results = compare(model, ds, split, spec, config, seeds=[0])
print(markdown_table(results))
"""),
    md("""
JiT's options are one flag away: the loss power `p`, the stop-gradient, the clipping, the batch
reduction, the number of noise draws. For example, the slides' squared loss:
"""),
    code("""
squared = compare(model, ds, split, spec, config, seeds=[0], methods=("jit",),
                  method_options={"jit": {"p": 2}}, log=lambda s: None)
print(markdown_table(squared))
"""),
]


OBJECTIVES = [
    md("""
# Writing a zero-shot objective

JiT's update loop (`jit_jax.unlearn.jit.jit_unlearn`) owns batching, padding masks, the optimiser,
passes, compilation, timing and sharding over devices. An *objective* is only the loss it
minimises on a forget batch: a pure function

    loss(apply_fn, params, x, key, *, mask, **options) -> scalar

One function and one registry entry make it a method that `jit-jax unlearn --method NAME`, the
paper runner and `compare` can run. Here: an objective that pushes the forget samples' outputs
towards the uniform distribution (the "I don't know" answer), by maximising the softmax entropy.
"""),
    code("""
import os

SMALL = os.environ.get("JIT_JAX_SMALL") == "1"  # quick run (the test suite sets it)

import jax
import jax.numpy as jnp

from jit_jax import recipes, unlearn
from jit_jax.data import load_dataset, parse_forget
from jit_jax.demo import compare, train_original
from jit_jax.metrics import markdown_table
from jit_jax.models import ModelSpec
from jit_jax.unlearn import objectives

ds = load_dataset("digits")
spec = ModelSpec("mlp", ds.num_classes, ds.image_shape, {})
config = recipes.train_recipe(ds.name, "mlp")
if SMALL:
    config = config.replace(epochs=3)
model, _ = train_original(ds, spec, config)
split = parse_forget(ds, "class:3")
"""),
    md("""
The objective: minus the entropy of each forget sample's prediction, summed over the real rows
of the batch (`mask` is 0 on the padding of the last batch).
"""),
    code("""
def uniform_outputs(apply_fn, params, x, key, *, mask=None):
    logp = jax.nn.log_softmax(apply_fn(params, x))
    neg_entropy = jnp.sum(jnp.exp(logp) * logp, axis=-1)  # (B,)
    if mask is not None:
        neg_entropy = neg_entropy * mask
    return jnp.sum(neg_entropy)


objectives.OBJECTIVES["uniform"] = objectives.Objective(
    "uniform", uniform_outputs, "maximise the entropy of the forget outputs", options={})
unlearn.METHODS["uniform"] = unlearn.Method(
    "uniform", "forget outputs pushed to uniform (zero-shot)", True,
    unlearn.objective_method("uniform"))
"""),
    md("""
It now runs like any method, with the loop's options (`lr`, `batch_size`, `passes`,
`train_mode`) and its own. Beside JiT and the two built-in variants, against the retrained model
of the same seed:
"""),
    code("""
results = compare(model, ds, split, spec, config, seeds=[0],
                  methods=("bsln", "jit", "lipschitz", "uniform"),
                  method_options={"uniform": {"lr": 0.01, "passes": 3},
                                  "lipschitz": {"lr": 1e-3}},
                  log=lambda s: None)
print(markdown_table(results))
"""),
    md("""
The built-in objectives are in `jit_jax/unlearn/objectives.py`, tested against closed forms in
`tests/test_objectives.py`. Their step sizes (and this notebook's) have not been chosen on
validation tasks yet: treat the numbers above as a demonstration of the mechanism, not of the
objectives' quality.
"""),
]


def write(name, cells):
    nb = new_notebook(cells=cells)
    stem = name.removesuffix(".ipynb")
    for i, cell in enumerate(nb.cells):  # stable ids: rebuilding gives the same file
        cell.id = f"{stem}-{i}"
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = os.path.join(HERE, name)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    write("sigmoid.ipynb", SIGMOID)
    write("boundary_2d.ipynb", BOUNDARY)
    write("curvature.ipynb", CURVATURE)
    write("quickstart.ipynb", QUICKSTART)
    write("objectives.ipynb", OBJECTIVES)
