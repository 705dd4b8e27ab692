"""The paper's toy experiments (Figures 2 and 3) and a test of its hypothesis, as pure JAX.

Foster et al. (TMLR 2025) argue that a sample the model can infer from its neighbours (low information,
a low-gradient region of input space) barely changes the model when it is removed, while a unique sample
(high information, a high-gradient region) does; and that JiT, by smoothing the model around the forget
sample, moves the model in the same way. This module holds everything the figure scripts
(``experiments/toy_*.py``, ``experiments/hypothesis.py``), the notebooks and the tests share:

* data: :func:`two_moons` (2-D) and :func:`noisy_threshold_1d` (1-D), numpy-generated and seeded;
* models as plain parameter pytrees: an MLP (:func:`init_mlp`, :func:`mlp_apply`) and a 1-D logistic
  model (:func:`init_logistic`, :func:`logistic_logits`, :func:`logistic_prob`);
* full-batch deterministic training with per-sample weights (:func:`train_full_batch`), so that a model
  retrained without a point differs from the original *only* by that point; :func:`leave_one_out`
  trains one such model per removed point in parallel with ``jax.vmap`` over the weight masks;
* the two unlearning updates compared in Figure 2: JiT (:func:`jit_update`, plain SGD on
  :func:`jit_jax.unlearn.jit.jit_value_and_grad`) and "train to mislabel the point"
  (:func:`mislabel_update`);
* the experiments: :func:`sigmoid_experiment` (Figure 3), :func:`boundary_experiment` (Figure 2) and
  :func:`hypothesis_experiment` (alpha, input-gradient norm and kappa against the leave-one-out effect).

Conventions. ``apply_fn(params, x) -> logits`` with ``x`` batch-first, as everywhere in jit-jax.

Noise clipping. The JiT loss clips each noisy input to the batch-global [min, max] of the forget batch
(the authors' code). For one low-dimensional point that range is degenerate (for a 1-D point min = max:
every perturbation is clipped away and the loss is 0), and for a handful of 2-D points it would cut the
noise to a box spanned by the points. The toys therefore call JiT with ``clip=False`` (the inputs here are
unbounded reals, so clipping has no meaning anyway).

JiT on a 1-D monotone function. With the stop-gradient of the authors' code and p = 1, the gradient of
the JiT loss at x is ``-grad_theta f(x) * sign(f') * mean_j sign(xi_j) / |xi_j|`` when f is monotone on
the noise's range: the draws' signs are symmetric, so its expectation is **zero** and it is pure
Monte-Carlo noise (with infinite variance: E[1/|xi|] diverges in one dimension). Figure 3 is therefore
run with both the code's loss (``stop_gradient=True``: the curve moves by a random walk whose size scales
with f'(x)) and the slides' loss without the stop-gradient (``stop_gradient=False``: a deterministic
penalty on the local slope, which flattens the curve). In both, how much the curve moves is proportional
to the slope at the forget points, which is the figure's point. In two or more input dimensions the
stop-gradient loss has a non-zero mean wherever the model is curved, and Figure 2 uses the code's loss.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jit_jax.analysis import curvature, information
from jit_jax.unlearn.jit import jit_value_and_grad

__all__ = [
    "BoundaryConfig",
    "HypothesisConfig",
    "SigmoidConfig",
    "agreement",
    "boundary_experiment",
    "grid_points",
    "hypothesis_experiment",
    "init_logistic",
    "init_mlp",
    "input_gradient_norms",
    "jit_update",
    "leave_one_out",
    "logistic_logits",
    "logistic_prob",
    "mislabel_update",
    "mlp_apply",
    "mlp_fn",
    "noisy_threshold_1d",
    "predict",
    "select_forget_points",
    "sigmoid_experiment",
    "spearman",
    "stack_index",
    "train_full_batch",
    "two_moons",
]

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def two_moons(n: int = 200, *, noise: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles in 2-D, ``n // 2`` points per class plus Gaussian noise.

    Class 0: (cos t, sin t); class 1: (1 - cos t, 0.5 - sin t), t ~ U(0, pi). Returns x (n, 2) float32
    and y (n,) int32, shuffled by a numpy generator seeded with ``seed``.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t = rng.uniform(0.0, np.pi, n)
    x = np.where((np.arange(n) < n0)[:, None],
                 np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1))
    x = x + noise * rng.normal(size=(n, 2))
    y = (np.arange(n) >= n0).astype(np.int32)
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), y[perm]


def noisy_threshold_1d(n: int = 80, *, low: float = -6.0, high: float = 6.0, noise: float = 1.2,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1-D points x ~ U(low, high), labelled y = [x + noise * eps > 0]: two overlapping classes.

    Returns x (n, 1) float32 and y (n,) int32. A logistic model fitted to them has slope ~ 1.7 / noise.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, n)
    y = (x + noise * rng.normal(size=n) > 0).astype(np.int32)
    return x[:, None].astype(np.float32), y


# ------------------------------------------------------------------------------------------------
# Models (plain pytrees)
# ------------------------------------------------------------------------------------------------
def init_mlp(key: jax.Array, sizes: Sequence[int] = (2, 32, 32, 2)) -> list[dict[str, jax.Array]]:
    """MLP parameters: a list of ``{"w": (fan_in, fan_out), "b": (fan_out,)}``, LeCun-normal weights
    and zero biases."""
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size, got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros((b,))}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu}


@functools.cache
def mlp_fn(activation: str = "tanh") -> ApplyFn:
    """``mlp_apply`` with a fixed activation, one function object per activation (a stable static
    argument for the jitted functions here, so they compile once)."""
    return functools.partial(mlp_apply, activation=activation)


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array, activation: str = "tanh"
              ) -> jax.Array:
    """Logits of the MLP for a batch ``x`` (B, d_in) -> (B, d_out)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    act = _ACTIVATIONS[activation]
    h = x
    for layer in params[:-1]:
        h = act(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def init_logistic(w: float = 1.0, b: float = 0.0) -> dict[str, jax.Array]:
    """Parameters of the 1-D logistic model p(y=1 | x) = sigmoid(w x + b)."""
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def logistic_logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Two-class logits [0, w x + b] of a batch x (B, 1): softmax gives [1 - s, s], s = sigmoid."""
    z = params["w"] * x[:, 0] + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], axis=1)


def logistic_prob(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """The sigmoid curve itself, sigmoid(w x + b), shape (B, 1): the output JiT smooths in Figure 3.

    (On the logits [0, w x + b] a linear function of x, JiT's loss is |w| whatever the noise and its
    stop-gradient gradient has mean zero: there is nothing to smooth. The sigmoid is the curved output.)
    """
    return jax.nn.sigmoid(params["w"] * x[:, 0] + params["b"])[:, None]


def predict(apply_fn: ApplyFn, params: Params, x) -> np.ndarray:
    """argmax of the logits, numpy (B,)."""
    return np.asarray(jnp.argmax(apply_fn(params, jnp.asarray(x)), axis=-1))


def stack_index(stacked: Params, i: int) -> Params:
    """The i-th pytree of a pytree whose leaves share a leading axis (e.g. :func:`leave_one_out`)."""
    return jax.tree.map(lambda a: a[i], stacked)


# ------------------------------------------------------------------------------------------------
# Full-batch training and leave-one-out retraining
# ------------------------------------------------------------------------------------------------
def _weighted_ce(apply_fn, params, x, y, weights):
    logp = jax.nn.log_softmax(apply_fn(params, x))
    nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    return jnp.sum(weights * nll) / jnp.sum(weights)


def _l2(params):
    return sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(params))


def _train(apply_fn, params, x, y, weights, steps: int, lr: float, optimizer: str,
           weight_decay: float):
    sched = optax.cosine_decay_schedule(lr, steps)
    tx = optax.adam(sched) if optimizer == "adam" else optax.sgd(sched)
    grad_fn = jax.grad(lambda p: _weighted_ce(apply_fn, p, x, y, weights)
                       + 0.5 * weight_decay * _l2(p))

    def body(carry, _):
        p, s = carry
        updates, s = tx.update(grad_fn(p), s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params


def _check_optimizer(optimizer: str):
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "optimizer"))
def train_full_batch(apply_fn: ApplyFn, params: Params, x, y, *, steps: int, lr: float,
                     weights=None, optimizer: str = "adam", weight_decay: float = 0.0) -> Params:
    """``steps`` full-batch steps of Adam (or plain GD) on the weighted mean cross-entropy plus
    ``weight_decay / 2 * ||params||^2``.

    ``weights`` (n,) (default all ones): the loss is sum_i w_i CE_i / sum_i w_i, so a 0/1 mask is
    exactly training on the subset. Deterministic: the same init, data and weights give the same model,
    so a model retrained with one weight set to 0 differs from the original only by that point.
    """
    _check_optimizer(optimizer)
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    w = jnp.ones(y.shape, x.dtype) if weights is None else jnp.asarray(weights, x.dtype)
    return _train(apply_fn, params, x, y, w, steps, lr, optimizer, weight_decay)


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "optimizer"))
def leave_one_out(apply_fn: ApplyFn, init_params: Params, x, y, indices, *, steps: int, lr: float,
                  optimizer: str = "adam", weight_decay: float = 0.0) -> Params:
    """Retrain from ``init_params`` once per entry of ``indices``, without that training point.

    The k trainings run in parallel (``jax.vmap`` over the k weight masks); the result is one pytree
    whose leaves have a leading axis k (:func:`stack_index` takes one out). Model i equals
    ``train_full_batch(..., weights=mask_i)`` with mask_i all ones but a 0 at ``indices[i]``.
    """
    _check_optimizer(optimizer)
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    idx = jnp.asarray(indices, jnp.int32)
    masks = jnp.ones((idx.shape[0], y.shape[0]), x.dtype).at[jnp.arange(idx.shape[0]), idx].set(0)
    return jax.vmap(lambda w: _train(apply_fn, init_params, x, y, w, steps, lr, optimizer,
                                     weight_decay))(masks)


# ------------------------------------------------------------------------------------------------
# Unlearning updates
# ------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("apply_fn", "num_samples", "steps", "p",
                                             "stop_gradient", "clip", "reduction"))
def jit_update(apply_fn: ApplyFn, params: Params, x_forget, key: jax.Array, *, sigma: float,
               lr: float, num_samples: int = 25, steps: int = 1, p: int = 1,
               stop_gradient: bool = True, clip: bool = False, reduction: str = "sum") -> Params:
    """``steps`` plain-SGD steps on the JiT loss of the forget batch, a fresh noise key per step.

    ``steps=1`` is the authors' algorithm for a forget set that fits in one batch. ``clip`` defaults to
    False here (see the module docstring: the batch-global range of a few low-dimensional points is
    degenerate); everything else is :func:`jit_jax.unlearn.jit.jit_value_and_grad`'s defaults.
    """
    x_forget = jnp.asarray(x_forget)

    def body(prm, k):
        _, g = jit_value_and_grad(apply_fn, prm, x_forget, k, sigma=sigma,
                                  num_samples=num_samples, p=p, stop_gradient=stop_gradient,
                                  clip=clip, reduction=reduction, images_per_forward=None)
        return jax.tree.map(lambda a, b: a - lr * b, prm, g), None

    params, _ = jax.lax.scan(body, params, jax.random.split(key, steps))
    return params


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "num_classes"))
def mislabel_update(apply_fn: ApplyFn, params: Params, x_forget, y_forget, *, lr: float,
                    steps: int, num_classes: int = 2) -> Params:
    """The "train to mislabel the forget sample" baseline: ``steps`` plain-SGD steps on the mean
    cross-entropy of the forget batch against the label ``(y + 1) % num_classes`` (the flipped label
    for two classes)."""
    x_forget = jnp.asarray(x_forget)
    target = (jnp.asarray(y_forget, jnp.int32) + 1) % num_classes
    w = jnp.ones(target.shape, x_forget.dtype)
    grad_fn = jax.grad(lambda prm: _weighted_ce(apply_fn, prm, x_forget, target, w))

    def body(prm, _):
        return jax.tree.map(lambda a, b: a - lr * b, prm, grad_fn(prm)), None

    params, _ = jax.lax.scan(body, params, None, length=steps)
    return params


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------
def grid_points(xlim: tuple[float, float], ylim: tuple[float, float], resolution: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A resolution x resolution grid: (xx, yy, points (resolution**2, 2) float32)."""
    xx, yy = np.meshgrid(np.linspace(*xlim, resolution), np.linspace(*ylim, resolution))
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)


def agreement(pred_a, pred_b) -> float:
    """Percentage of positions where two prediction arrays agree."""
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"prediction shapes differ: {pred_a.shape} vs {pred_b.shape}")
    return float(100.0 * np.mean(pred_a == pred_b))


def input_gradient_norms(apply_fn: ApplyFn, params: Params, x, y, *, kind: str = "log_softmax",
                         method: str = "hessian") -> dict[str, np.ndarray]:
    """``jit_jax.analysis.curvature.curvature_stats`` of each (x_i, y_i): grad_norm, hess_fro, kappa.

    The scalar is log p(y_i | x_i) by default (saturates deep inside a class: low gradient there).
    """
    stats = curvature.curvature_stats(lambda xb: apply_fn(params, xb), jnp.asarray(x),
                                      jnp.asarray(y, jnp.int32), kind=kind, method=method)
    return {k: np.asarray(v) for k, v in stats.items()}


def select_forget_points(apply_fn: ApplyFn, params: Params, x, y) -> tuple[int, int, np.ndarray]:
    """The low- and high-gradient forget points of Figure 2, by a fixed rule.

    Among the training points the model classifies correctly (a point it has learnt), the one with the
    smallest and the one with the largest ||grad_x log p(y | x)||. Returns (low index, high index,
    the gradient norms of all points).
    """
    g = input_gradient_norms(apply_fn, params, x, y)["grad_norm"]
    correct = predict(apply_fn, params, x) == np.asarray(y)
    if not np.any(correct):
        raise ValueError("the model classifies no training point correctly")
    cand = np.flatnonzero(correct)
    return int(cand[np.argmin(g[cand])]), int(cand[np.argmax(g[cand])]), g


def spearman(a, b) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (scipy), ignoring non-finite pairs."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    res = spearmanr(a[ok], b[ok])
    return float(res.statistic), float(res.pvalue)


# ------------------------------------------------------------------------------------------------
# Figure 3: a sigmoid, forgetting points in its flat and in its steep region
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SigmoidConfig:
    """Figure 3. A logistic model fitted (full-batch Adam) to :func:`noisy_threshold_1d`; JiT is run on
    its sigmoid output (:func:`logistic_prob`) for the ``num_forget`` training points with the lowest
    slope sigmoid'(x) (flat region) and, separately, the ``num_forget`` with the highest (steep region).

    sigma = 0.5 is a quarter of the curve's transition width 4/w ~ 2 (w ~ 1.8 after training); lr and
    steps give a visible change of the steep-region curve without flattening it to a constant
    (w stays well above 0); N = 25 is the authors' default.
    """

    n: int = 80
    noise: float = 1.2
    seed: int = 0
    train_steps: int = 2000
    train_lr: float = 0.05
    num_forget: int = 3
    sigma: float = 0.5
    lr: float = 0.05
    steps: int = 10
    num_samples: int = 25
    p: int = 1
    stop_gradient: bool = True
    jit_seed: int = 0
    grid_size: int = 241

    def replace(self, **kw) -> SigmoidConfig:
        return dataclasses.replace(self, **kw)


def sigmoid_experiment(config: SigmoidConfig = SigmoidConfig()) -> dict[str, Any]:
    """Run Figure 3. Returns a dict with the data (``x``, ``y``), the fitted ``params``, the ``grid`` and
    ``curve`` (sigmoid on the grid), and for "flat" and "steep": ``idx`` (forget indices), ``x_forget``,
    ``params``, ``curve`` after JiT, ``max_change`` / ``mean_change`` (max and mean of
    |sigmoid_after - sigmoid_before| over the grid), ``forget_change`` (mean |change| at the forget
    points) and ``slope`` (mean sigmoid'(x) at the forget points before unlearning)."""
    c = config
    x, y = noisy_threshold_1d(c.n, noise=c.noise, seed=c.seed)
    params = train_full_batch(logistic_logits, init_logistic(), x, y, steps=c.train_steps,
                              lr=c.train_lr, weight_decay=c.weight_decay)
    lo, hi = float(x.min()), float(x.max())
    grid = np.linspace(lo, hi, c.grid_size, dtype=np.float32)[:, None]
    curve = np.asarray(logistic_prob(params, grid))[:, 0]
    s = np.asarray(logistic_prob(params, x))[:, 0]
    slope = float(params["w"]) * s * (1 - s)
    order = np.argsort(slope, kind="stable")
    out: dict[str, Any] = {"x": x, "y": y, "params": params, "grid": grid[:, 0], "curve": curve,
                           "config": c}
    for name, idx in (("flat", order[:c.num_forget]), ("steep", order[-c.num_forget:])):
        new = jit_update(logistic_prob, params, x[idx], jax.random.key(c.jit_seed), sigma=c.sigma,
                         lr=c.lr, num_samples=c.num_samples, steps=c.steps, p=c.p,
                         stop_gradient=c.stop_gradient)
        after = np.asarray(logistic_prob(new, grid))[:, 0]
        change = np.abs(after - curve)
        at_forget = np.abs(np.asarray(logistic_prob(new, x[idx]) - logistic_prob(params, x[idx])))
        out[name] = {"idx": idx, "x_forget": x[idx][:, 0], "params": new, "curve": after,
                     "max_change": float(change.max()), "mean_change": float(change.mean()),
                     "forget_change": float(at_forget.mean()), "slope": float(slope[idx].mean())}
    return out


# ------------------------------------------------------------------------------------------------
# Figure 2: a 2-D classifier, forgetting a low- and a high-gradient point
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BoundaryConfig:
    """Figure 2. A tanh MLP 2-32-32-2 trained by full-batch Adam on :func:`two_moons`; forget points
    picked by :func:`select_forget_points`; JiT and the mislabel baseline from the original model,
    one setting for both points (how they were chosen: ``docs/toys.md``)."""

    n: int = 200
    noise: float = 0.2
    data_seed: int = 0
    init_seed: int = 0
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "tanh"
    train_steps: int = 3000
    train_lr: float = 0.01
    weight_decay: float = 3e-4
    sigma: float = 0.3
    lr: float = 0.01
    steps: int = 10
    num_samples: int = 25
    p: int = 1
    jit_seed: int = 0
    mislabel_lr: float = 0.1
    mislabel_steps: int = 10
    resolution: int = 100
    margin: float = 0.5

    def replace(self, **kw) -> BoundaryConfig:
        return dataclasses.replace(self, **kw)


METHODS = ("original", "retrained", "jit", "mislabel")


def boundary_experiment(config: BoundaryConfig = BoundaryConfig(),
                        forget: Sequence[int] | None = None) -> dict[str, Any]:
    """Run Figure 2 (``forget`` overrides the selected points' indices).

    Returns a dict: ``x``, ``y``, ``apply_fn``, ``grid`` (xx, yy), ``grad_norm`` of every training
    point, ``points`` = {"low": ..., "high": ...}, each with ``idx``, ``params`` and ``pred`` (grid
    argmax, shape of xx) per method in :data:`METHODS`, ``agreement`` (% of grid cells agreeing with the
    retrained model, per method) and ``moved`` (% of grid cells whose prediction differs from the
    original's, per method).
    """
    c = config
    x, y = two_moons(c.n, noise=c.noise, seed=c.data_seed)
    apply_fn = mlp_fn(c.activation)
    init = init_mlp(jax.random.key(c.init_seed), (2, *c.hidden, 2))
    params = train_full_batch(apply_fn, init, x, y, steps=c.train_steps, lr=c.train_lr,
                              weight_decay=c.weight_decay)
    low, high, gnorm = select_forget_points(apply_fn, params, x, y)
    if forget is not None:
        low, high = (int(i) for i in forget)
    lo, hi = x.min(0) - c.margin, x.max(0) + c.margin
    xx, yy, pts = grid_points((lo[0], hi[0]), (lo[1], hi[1]), c.resolution)
    retrained = leave_one_out(apply_fn, init, x, y, np.array([low, high]), steps=c.train_steps,
                              lr=c.train_lr, weight_decay=c.weight_decay)
    pred0 = predict(apply_fn, params, pts)
    out: dict[str, Any] = {"x": x, "y": y, "apply_fn": apply_fn, "grid": (xx, yy), "params": params,
                           "grad_norm": gnorm, "config": c, "points": {}}
    for k, (name, i) in enumerate((("low", low), ("high", high))):
        models = {
            "original": params,
            "retrained": stack_index(retrained, k),
            "jit": jit_update(apply_fn, params, x[i:i + 1], jax.random.key(c.jit_seed),
                              sigma=c.sigma, lr=c.lr, num_samples=c.num_samples, steps=c.steps,
                              p=c.p),
            "mislabel": mislabel_update(apply_fn, params, x[i:i + 1], y[i:i + 1],
                                        lr=c.mislabel_lr, steps=c.mislabel_steps),
        }
        preds = {m: predict(apply_fn, prm, pts) for m, prm in models.items()}
        probs = {m: float(jax.nn.softmax(apply_fn(prm, x[i:i + 1]))[0, y[i]])
                 for m, prm in models.items()}
        out["points"][name] = {
            "idx": i, "grad_norm": float(gnorm[i]), "params": models,
            "pred": {m: v.reshape(xx.shape) for m, v in preds.items()},
            "p_true": probs,
            "agreement": {m: agreement(v, preds["retrained"]) for m, v in preds.items()},
            "moved": {m: 100.0 - agreement(v, pred0) for m, v in preds.items()},
        }
    return out


# ------------------------------------------------------------------------------------------------
# The hypothesis: information content and curvature against the leave-one-out effect
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HypothesisConfig:
    """The hypothesis test: for ``num_points`` training points drawn at random (``point_seed``), the
    information content alpha(x) (radius: the median distance to the ``radius_k``-th neighbour,
    :func:`jit_jax.analysis.information.choose_radius`), ||grad_x log p(y|x)|| and kappa(x) of the
    original model, against the leave-one-out effect |p_orig(y|x) - p_loo(y|x)| and the JiT effect
    |p_orig(y|x) - p_jit(y|x)| (JiT on that point alone, :class:`BoundaryConfig`'s JiT settings)."""

    boundary: BoundaryConfig = BoundaryConfig()
    num_points: int = 60
    point_seed: int = 0
    radius_k: int = 10
    radius_quantile: float = 0.5

    def replace(self, **kw) -> HypothesisConfig:
        return dataclasses.replace(self, **kw)


def hypothesis_experiment(config: HypothesisConfig = HypothesisConfig()) -> dict[str, Any]:
    """Run the hypothesis test. Returns a dict of numpy arrays over the chosen points (``idx``,
    ``alpha``, ``grad_norm``, ``kappa``, ``loo_effect``, ``loo_logp_change``, ``jit_effect``), the
    ``radius`` and ``correlations``: {(feature, target): (Spearman rho, p-value)} for features alpha,
    grad_norm, kappa and targets loo_effect, jit_effect (plus (loo_effect, jit_effect))."""
    c, b = config, config.boundary
    x, y = two_moons(b.n, noise=b.noise, seed=b.data_seed)
    apply_fn = mlp_fn(b.activation)
    init = init_mlp(jax.random.key(b.init_seed), (2, *b.hidden, 2))
    params = train_full_batch(apply_fn, init, x, y, steps=b.train_steps, lr=b.train_lr,
                              weight_decay=b.weight_decay)
    m = min(c.num_points, b.n)
    idx = np.sort(np.random.default_rng(c.point_seed).choice(b.n, size=m, replace=False))
    radius = information.choose_radius(x, k=c.radius_k, quantile=c.radius_quantile, sample=None)
    alpha = information.alpha(x[idx], y[idx], x, y, radius, exclude_self=idx.astype(np.int32)).alpha
    stats = input_gradient_norms(apply_fn, params, x[idx], y[idx])
    loo = leave_one_out(apply_fn, init, x, y, idx, steps=b.train_steps, lr=b.train_lr,
                              weight_decay=b.weight_decay)

    def logp_at(prm, xi, yi):
        return jax.nn.log_softmax(apply_fn(prm, xi[None]))[0, yi]

    xs, ys = jnp.asarray(x[idx]), jnp.asarray(y[idx])
    lp0 = jax.vmap(lambda xi, yi: logp_at(params, xi, yi))(xs, ys)
    lp_loo = jax.vmap(logp_at)(loo, xs, ys)
    keys = jax.random.split(jax.random.key(b.jit_seed), m)
    jitted = jax.vmap(lambda xi, k: jit_update(apply_fn, params, xi[None], k, sigma=b.sigma,
                                               lr=b.lr, num_samples=b.num_samples,
                                               steps=b.steps, p=b.p))(xs, keys)
    lp_jit = jax.vmap(logp_at)(jitted, xs, ys)
    res = {
        "idx": idx, "x": x, "y": y, "radius": radius, "alpha": np.asarray(alpha),
        "grad_norm": stats["grad_norm"], "kappa": stats["kappa"],
        "loo_effect": np.abs(np.exp(np.asarray(lp0)) - np.exp(np.asarray(lp_loo))),
        "loo_logp_change": np.asarray(lp_loo - lp0),
        "jit_effect": np.abs(np.exp(np.asarray(lp0)) - np.exp(np.asarray(lp_jit))),
        "config": c,
    }
    corr = {}
    for feat in ("alpha", "grad_norm", "kappa"):
        for target in ("loo_effect", "jit_effect"):
            corr[(feat, target)] = spearman(res[feat], res[target])
    corr[("loo_effect", "jit_effect")] = spearman(res["loo_effect"], res["jit_effect"])
    res["correlations"] = corr
    return res
