"""SSD (selective synaptic dampening), one of the methods the paper compares JiT with, as the
authors' harness runs it.

- ``ssd`` (selective synaptic dampening): diagonal importances (mean over batches of the squared
  batch gradient of the cross-entropy, model in eval mode) on D_f and on the whole training set D;
  parameters with ``imp_f > alpha * imp_D`` are multiplied by ``min(lambda * imp_D / imp_f, 1)``.
  (lambda, alpha) per task as the authors' code passes them (:data:`SSD_SETTINGS`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jit_jax.functional import functionalize, rebuild
from jit_jax.train import cross_entropy

if TYPE_CHECKING:
    from jit_jax.unlearn import MethodOutput, Request


#: (task, model family) -> (lambda, alpha) as the authors' code runs SSD (original-code.md 3): the
#: full-class mains hard-code 1/1; "*" is every model that is not a ViT (their VGG values).
SSD_SETTINGS: dict[tuple[str, str], tuple[float, float]] = {
    ("class", "*"): (1.0, 1.0),
    ("class", "vit"): (1.0, 1.0),
    ("subclass", "*"): (6.0, 5.0),
    ("subclass", "vit"): (1.0, 10.0),
    ("random", "*"): (4.0, 10.0),
    ("random", "vit"): (1.0, 3.5),
}


def importances(apply_fn, params, x: np.ndarray, y: np.ndarray, *, batch_size: int = 128,
                seed: int | None = None):
    """Mean over mini-batches of the squared mini-batch gradient of the mean cross-entropy.

    Batches are taken in order (``seed=None``) or after a seeded shuffle; the last, partial batch
    counts as one batch, as with a torch DataLoader. Returns ``(importance pytree, compile time)``.
    """
    n = len(x)
    if n == 0:
        raise ValueError("importances of an empty set")
    b = min(batch_size, n)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)

    @jax.jit
    def add(acc, xb, yb, mask):
        def loss(p):
            ce = cross_entropy(apply_fn(p, xb), yb)
            return jnp.sum(ce * mask) / jnp.sum(mask)

        g = jax.grad(loss)(params)
        return jax.tree.map(lambda a, gg: a + jnp.square(gg), acc, g)

    acc = jax.tree.map(jnp.zeros_like, params)
    batches = [order[s:s + b] for s in range(0, n, b)]

    def padded(idx):
        pad = b - len(idx)
        mask = np.r_[np.ones(len(idx)), np.zeros(pad)].astype(np.float32)
        idx = np.r_[idx, np.full(pad, idx[0])]
        return x[idx], y[idx], mask

    t0 = time.perf_counter()
    step = add.lower(acc, *padded(batches[0])).compile()
    compile_time = time.perf_counter() - t0
    for idx in batches:
        acc = step(acc, *padded(idx))
    return jax.tree.map(lambda a: a / len(batches), acc), compile_time


def dampen(params, imp_full, imp_forget, *, lam: float, alpha: float):
    """SSD's update: where ``imp_forget > alpha * imp_full`` multiply by
    ``min(lam * imp_full / imp_forget, 1)``; elsewhere leave the parameter as it is."""

    def one(p, o, f):
        sel = f > alpha * o
        w = jnp.minimum(lam * o / jnp.where(sel, f, 1.0), 1.0)
        return jnp.where(sel, p * w, p)

    return jax.tree.map(one, params, imp_full, imp_forget)


SSD_FULL_ORDERS = ("shuffled", "retain_then_forget")


def ssd(req: Request, *, lam: float | None = None, alpha: float | None = None,
        batch_size: int = 128, full_order: str = "shuffled") -> MethodOutput:
    """SSD with the authors' (lambda, alpha) for the task unless given.

    ``full_order``: the batches of the importances on the whole training set D, ``"shuffled"``
    (a seeded shuffle, the authors' full-class and random runs) or ``"retain_then_forget"``
    (unshuffled: D_r in dataset order, then D_f; their sub-class loader, where a batch then holds
    nearly one class, which changes the importances)."""
    if full_order not in SSD_FULL_ORDERS:
        raise ValueError(f"SSD full_order {full_order!r}; accepted: {list(SSD_FULL_ORDERS)}")
    from jit_jax.unlearn import MethodOutput

    fam = "vit" if req.spec.name.startswith("vit") else "*"
    d_lam, d_alpha = SSD_SETTINGS[(req.split.kind, fam)]
    lam = d_lam if lam is None else float(lam)
    alpha = d_alpha if alpha is None else float(alpha)
    if not (lam > 0 and alpha > 0):
        raise ValueError(f"SSD needs lam > 0 and alpha > 0, got lam={lam}, alpha={alpha}")
    ds, split = req.dataset, req.split
    fn = functionalize(req.model)  # eval mode, as the authors' code
    # inputs prepared before the clock starts, as for every other method (fixed tensors)
    x_f, y_f = req.inputs(split.forget_idx), ds.train_targets[split.forget_idx]
    if full_order == "retain_then_forget":
        order_d = np.concatenate([split.retain_idx, split.forget_idx])
    else:
        order_d = np.arange(len(ds.train_targets))
    x_d, y_d = req.inputs(order_d), ds.train_targets[order_d]
    t0 = time.perf_counter()
    damp = jax.jit(dampen, static_argnames=("lam", "alpha")).lower(
        fn.params, fn.params, fn.params, lam=lam, alpha=alpha).compile()
    c0 = time.perf_counter() - t0
    imp_f, c1 = importances(fn.apply_fn, fn.params, x_f, y_f, batch_size=batch_size)
    imp_d, c2 = importances(fn.apply_fn, fn.params, x_d, y_d, batch_size=batch_size,
                            seed=None if full_order == "retain_then_forget" else req.seed)
    params = jax.block_until_ready(damp(fn.params, imp_d, imp_f))
    wall = time.perf_counter() - t0 - c0
    selected = sum(int(jnp.sum(f > alpha * o)) for f, o in
                   zip(jax.tree.leaves(imp_f), jax.tree.leaves(imp_d), strict=True))
    total = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(fn.params))
    return MethodOutput(rebuild(fn, params), wall - c1 - c2, c0 + c1 + c2, False,
                        {"config": {"lam": lam, "alpha": alpha, "batch_size": batch_size,
                                    "full_order": full_order},
                         "selected": selected, "num_params": total})
