"""Input-space curvature of a model around a sample.

For a scalar function f of a *single, unbatched* input x (shape (2,), (H, W, C), ...), d = x.size,

    kappa(x) = ||Hess_x f(x)||_F / ||grad_x f(x)||_2

(the slides' curvature). f is usually built from a classifier with :func:`scalar_fn`: the
log-softmax of the sample's class (default), its logit, or the cross-entropy loss. Derivatives are
always taken with respect to the flattened input, so the Hessian is a (d, d) matrix.

Ways to get ||H||_F, from small to large inputs (CPU timings in ``reference/ecosystem.md`` A.6):

* ``method="hessian"``: ``jax.hessian`` (forward-over-reverse, all d columns at once); exact, O(d^2)
  memory. Right for 2-D toy inputs (vmap it over a whole grid) and for one 32x32x3 image (a 3072 x
  3072 Hessian is 38 MB and ~1 s on CPU).
* ``method="hvp"``: the same exact matrix, one column H e_i at a time by Hessian-vector products
  (``jax.linearize`` of the gradient, i.e. forward-over-reverse, then ``jax.lax.map`` over the
  standard basis with ``batch_size`` columns per step). For the Frobenius norm only the squared
  column norms are kept: O(batch_size * d) memory.
* ``method="hutchinson"``: ||H||_F^2 = E ||H v||^2 for Rademacher v, averaged over ``num_probes``
  HVPs, with a normal-approximation confidence interval (:func:`hutchinson_frobenius_sq`). For
  inputs too large for d HVPs (ResNet-size models).

Any JAX callable works as ``apply_fn`` (batched inputs -> logits). With a Flax NNX model::

    model.eval()          # dropout off, BatchNorm uses its running statistics
    apply_fn = model      # calling an eval-mode nnx module is a pure function of its input
    # or, explicitly functional (e.g. to pass the state around or to jit with it as an argument):
    graphdef, state = nnx.split(model)
    apply_fn = lambda xb: nnx.merge(graphdef, state)(xb)

    stats = curvature_stats(apply_fn, x_forget, y_forget, method="hvp")
    stats["kappa"]        # (n,)

All functions are jit/vmap compatible (``method``, ``kind``, ``num_probes``, ``num_iters``,
``batch_size`` are static Python values; ``label`` and ``key`` may be traced).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jit_jax import prng

__all__ = [
    "HutchinsonEstimate",
    "curvature_stats",
    "gradient_norm",
    "hessian",
    "hessian_frobenius",
    "hutchinson_frobenius_sq",
    "hvp",
    "input_gradient",
    "kappa",
    "scalar_fn",
    "top_eigenvalue",
]

ScalarFn = Callable[[jax.Array], jax.Array]
_KINDS = ("log_softmax", "logit", "loss")


# --------------------------------------------------------------------------------------------------
# The scalar function
# --------------------------------------------------------------------------------------------------


def scalar_fn(apply_fn: Callable, kind: str = "log_softmax", *, label) -> ScalarFn:
    """f(x) for one unbatched x, from a batched ``apply_fn(xb) -> logits`` of shape (B, C).

    kind: "log_softmax" (log p(label | x), the default), "logit" (logits[label]) or "loss"
    (cross-entropy -log p(label | x); its derivatives are those of "log_softmax" negated, so kappa
    is the same).
    label: a Python int or a traced integer scalar (so it can be vmapped together with x).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")

    def f(x):
        logits = apply_fn(x[None])[0]
        if kind == "logit":
            return logits[label]
        logp = jax.nn.log_softmax(logits)[label]
        return logp if kind == "log_softmax" else -logp

    return f


# --------------------------------------------------------------------------------------------------
# First and second derivatives
# --------------------------------------------------------------------------------------------------


def _as_float(x) -> jax.Array:
    """x as a JAX array; integer inputs (e.g. uint8 pixels) become the default float dtype."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float))


def _flat(f: ScalarFn, x):
    """f as a function of the flattened input, and that flat input."""
    x = _as_float(x)
    shape = x.shape
    return (lambda z: f(z.reshape(shape))), x.reshape(-1)


def _linearized_hvp(f: ScalarFn, x):
    """v -> H v on flat (d,) vectors, one linearisation of grad f at x shared by all calls."""
    f_flat, xf = _flat(f, x)
    _, hv = jax.linearize(jax.grad(f_flat), xf)
    return hv, xf


def _map(fn, xs, batch_size):
    """``jax.vmap`` over the leading axis if batch_size is None, else ``lax.map`` in batches."""
    if batch_size is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=batch_size)


def input_gradient(f: ScalarFn, x) -> jax.Array:
    """grad_x f(x), with x's shape."""
    return jax.grad(f)(_as_float(x))


def gradient_norm(f: ScalarFn, x) -> jax.Array:
    """||grad_x f(x)||_2 (over all entries of x)."""
    return jnp.linalg.norm(input_gradient(f, x).reshape(-1))


def hvp(f: ScalarFn, x, v) -> jax.Array:
    """Hessian-vector product H v, x's shape (forward-over-reverse: jvp(grad(f), (x,), (v,)))."""
    x = _as_float(x)
    return jax.jvp(jax.grad(f), (x,), (jnp.asarray(v, x.dtype).reshape(x.shape),))[1]


def hessian(f: ScalarFn, x, method: str = "hessian", batch_size: int | None = None) -> jax.Array:
    """The exact input Hessian as a (d, d) matrix, d = x.size (flattened, row-major).

    method="hessian": ``jax.hessian``. method="hvp": column i is H e_i, computed by HVPs over the
    standard basis with ``lax.map`` (``batch_size`` columns per step; None = all at once, as
    ``jax.hessian``). Both are exact up to rounding; neither is symmetrised.
    """
    if method == "hessian":
        f_flat, xf = _flat(f, x)
        return jax.hessian(f_flat)(xf)
    if method == "hvp":
        hv, xf = _linearized_hvp(f, x)
        d = xf.shape[0]
        cols = _map(lambda i: hv(jax.nn.one_hot(i, d, dtype=xf.dtype)), jnp.arange(d), batch_size)
        return cols.T  # cols[i] = H e_i
    raise ValueError(f"method must be 'hessian' or 'hvp', got {method!r}")


def hessian_frobenius(
    f: ScalarFn, x, method: str = "hessian", batch_size: int | None = None
) -> jax.Array:
    """Exact ||Hess_x f(x)||_F.

    method="hessian" builds the matrix with ``jax.hessian``; method="hvp" sums the squared norms of
    the columns H e_i, ``batch_size`` at a time, never holding the (d, d) matrix: O(batch_size * d)
    memory.
    """
    if method == "hessian":
        return jnp.linalg.norm(hessian(f, x, "hessian"))
    if method == "hvp":
        hv, xf = _linearized_hvp(f, x)
        d = xf.shape[0]
        col_sq = _map(
            lambda i: jnp.sum(hv(jax.nn.one_hot(i, d, dtype=xf.dtype)) ** 2),
            jnp.arange(d),
            batch_size,
        )
        return jnp.sqrt(jnp.sum(col_sq))
    raise ValueError(f"method must be 'hessian' or 'hvp', got {method!r}")


class HutchinsonEstimate(NamedTuple):
    """A Monte Carlo estimate of ||H||_F^2 with its normal-approximation confidence interval."""

    estimate: jax.Array  # mean of ||H v_j||^2 over the probes
    ci_low: jax.Array  # max(0, estimate - z * stderr): the true value is >= 0
    ci_high: jax.Array  # estimate + z * stderr
    stderr: jax.Array  # sample standard deviation (ddof=1) / sqrt(num_probes)
    num_probes: jax.Array


def hutchinson_frobenius_sq(
    f: ScalarFn,
    x,
    key: jax.Array,
    num_probes: int = 64,
    confidence: float = 0.95,
    batch_size: int | None = None,
) -> HutchinsonEstimate:
    """Estimate ||Hess_x f(x)||_F^2 = E_v ||H v||^2 (v Rademacher) from ``num_probes`` HVPs.

    The probes' HVPs are vmapped (``batch_size`` at a time if given). The interval is
    estimate +- z * sd / sqrt(m), z the two-sided normal quantile of ``confidence``: an asymptotic
    interval, reliable when m is a few tens or more (||H v||^2 is skewed for small m). For
    Rademacher probes the variance of one sample is 2 (||H^2||_F^2 - sum_i (H^2)_ii^2), zero when
    H^2 is diagonal.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 for an error bar, got {num_probes}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    hv, xf = _linearized_hvp(f, x)
    probes = prng.rademacher(key, (num_probes, xf.shape[0]), xf.dtype)
    samples = _map(lambda v: jnp.sum(hv(v) ** 2), probes, batch_size)
    est = jnp.mean(samples)
    stderr = jnp.std(samples, ddof=1) / jnp.sqrt(jnp.asarray(num_probes, samples.dtype))
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    return HutchinsonEstimate(
        estimate=est,
        ci_low=jnp.maximum(est - z * stderr, 0.0),
        ci_high=est + z * stderr,
        stderr=stderr,
        num_probes=jnp.asarray(num_probes, jnp.int32),
    )


# --------------------------------------------------------------------------------------------------
# Top eigenvalue
# --------------------------------------------------------------------------------------------------


def _power(hv, xf, key, num_iters: int):
    """Power iteration; the HVP of each step also gives its iterate's Rayleigh quotient."""

    def body(_, carry):
        v, _ = carry
        w = hv(v)
        nw = jnp.linalg.norm(w)
        v_next = jnp.where(nw > 0, w / jnp.where(nw > 0, nw, 1.0), v)
        return v_next, jnp.vdot(v, w)  # Rayleigh quotient of v: signed

    v0 = jax.random.normal(key, xf.shape, xf.dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    _, rayleigh = jax.lax.fori_loop(0, num_iters, body, (v0, jnp.zeros((), xf.dtype)))
    return rayleigh


def _lanczos(hv, xf, key, num_iters: int):
    d = xf.shape[0]
    k = min(num_iters, d)
    dtype = xf.dtype
    tol = 100 * jnp.finfo(dtype).eps
    # The start vector and one fresh vector per step for restarts, drawn outside the loop.
    draws = prng.normal(key, (k + 1, d), dtype)

    def unit(r):
        n = jnp.linalg.norm(r)
        return r / jnp.where(n > 0, n, 1.0)

    def orth(V, w):  # twice is enough (Kahan-Parlett)
        w = w - V.T @ (V @ w)
        return w - V.T @ (V @ w)

    def body(j, carry):
        V, alphas, betas, v, v_prev, beta_prev = carry
        V = V.at[j].set(v)
        hvv = hv(v)
        a = jnp.vdot(v, hvv)
        w = orth(V, hvv - a * v - beta_prev * v_prev)
        b = jnp.linalg.norm(w)
        # Breakdown (the Krylov space is invariant: repeated eigenvalues, an eigenvector start):
        # restart from a random vector orthogonal to V and decouple the tridiagonal (beta = 0).
        broke = b <= tol * jnp.maximum(jnp.linalg.norm(hvv), jnp.finfo(dtype).tiny)
        fresh = unit(orth(V, draws[j + 1]))
        v_next = jnp.where(broke, fresh, w / jnp.where(broke, 1.0, b))
        b = jnp.where(broke, 0.0, b)
        return V, alphas.at[j].set(a), betas.at[j].set(b), v_next, v, b

    init = (
        jnp.zeros((k, d), dtype),
        jnp.zeros((k,), dtype),
        jnp.zeros((k,), dtype),
        unit(draws[0]),
        jnp.zeros((d,), dtype),
        jnp.zeros((), dtype),
    )
    _, alphas, betas, *_ = jax.lax.fori_loop(0, k, body, init)
    off = betas[:-1]
    T = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    ritz = jnp.linalg.eigvalsh(T)
    return ritz[jnp.argmax(jnp.abs(ritz))]


def top_eigenvalue(
    f: ScalarFn, x, key: jax.Array, method: str = "lanczos", num_iters: int = 20
) -> jax.Array:
    """The largest-magnitude eigenvalue of Hess_x f(x) (signed), from ``num_iters`` HVPs.

    method="power": power iteration (``lax.fori_loop``) from a Gaussian start; returns the Rayleigh
    quotient of the last iterate (num_iters HVPs in all). Converges linearly with ratio
    |lambda_2 / lambda_1| (slow without a spectral gap, no convergence at all when the two extreme
    eigenvalues are +-lambda); the estimate's magnitude is never above the true one.

    method="lanczos": ``min(num_iters, d)`` Lanczos steps with full reorthogonalisation
    (O(num_iters * d) memory; random restart on breakdown), then ``eigvalsh`` of the tridiagonal
    matrix; returns the Ritz value of largest magnitude. Extreme eigenvalues converge much faster
    than with power iteration; Ritz values lie inside [lambda_min, lambda_max] (so the magnitude is
    again underestimated), and with num_iters >= d the result is exact up to rounding.
    """
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    if method not in ("power", "lanczos"):
        raise ValueError(f"method must be 'power' or 'lanczos', got {method!r}")
    hv, xf = _linearized_hvp(f, x)
    if method == "power":
        return _power(hv, xf, key, num_iters)
    return _lanczos(hv, xf, key, num_iters)


# --------------------------------------------------------------------------------------------------
# Curvature
# --------------------------------------------------------------------------------------------------


def _hess_fro(f, x, method, key, num_probes, confidence, batch_size):
    """(||H||_F, extra dict) for any method."""
    if method in ("hessian", "hvp"):
        return hessian_frobenius(f, x, method, batch_size), {}
    if method == "hutchinson":
        if key is None:
            raise ValueError("method='hutchinson' needs a PRNG key")
        est = hutchinson_frobenius_sq(f, x, key, num_probes, confidence, batch_size)
        extra = {
            "hess_fro_sq": est.estimate,
            "hess_fro_sq_ci_low": est.ci_low,
            "hess_fro_sq_ci_high": est.ci_high,
            "hess_fro_sq_stderr": est.stderr,
        }
        return jnp.sqrt(jnp.maximum(est.estimate, 0.0)), extra
    raise ValueError(f"method must be 'hessian', 'hvp' or 'hutchinson', got {method!r}")


def kappa(
    f: ScalarFn,
    x,
    method: str = "hessian",
    *,
    key: jax.Array | None = None,
    num_probes: int = 64,
    batch_size: int | None = None,
) -> jax.Array:
    """kappa(x) = ||Hess_x f(x)||_F / ||grad_x f(x)||.

    ``method``: "hessian" / "hvp" (exact) or "hutchinson" (sqrt of the estimate; needs ``key``).
    Division follows IEEE rules, deliberately: a zero gradient gives +inf when the Hessian is
    non-zero (the limit of the ratio) and NaN when both vanish (undefined, e.g. a constant model).
    No exception is raised.
    """
    fro, _ = _hess_fro(f, x, method, key, num_probes, 0.95, batch_size)
    return fro / gradient_norm(f, x)


def curvature_stats(
    apply_fn: Callable,
    xs,
    labels,
    *,
    kind: str = "log_softmax",
    method: str = "hessian",
    key: jax.Array | None = None,
    num_probes: int = 64,
    confidence: float = 0.95,
    hvp_batch_size: int | None = None,
    batch_size: int | None = None,
    top_eig: str | None = None,
    num_iters: int = 20,
    jit: bool = True,
) -> dict[str, jax.Array]:
    """Gradient norm, Hessian Frobenius norm and kappa of f = scalar_fn(apply_fn, kind, label=y) at
    each x.

    Args:
      apply_fn: batched inputs -> logits (e.g. an eval-mode NNX model; see the module docstring).
      xs: (n, ...) inputs; each xs[i] is one unbatched x.
      labels: (n,) integer classes, or one int for every x (e.g. a fixed class over a 2-D grid).
      kind: see :func:`scalar_fn`.
      method: "hessian", "hvp" (both exact) or "hutchinson" (needs ``key``), see the module
      docstring. key: PRNG key. Point i uses ``k_i = jax.random.split(key, n)[i]``, then
        ``k_fro, k_eig = jax.random.split(k_i)`` for the Hutchinson probes and the eigenvalue start.
      num_probes, confidence: Hutchinson settings.
      hvp_batch_size: HVPs per ``lax.map`` step inside one point ("hvp": basis columns,
        "hutchinson": probes); None = all vmapped at once.
      batch_size: points per ``lax.map`` step (bounds memory to batch_size points' Hessians); None =
        vmap over all n points at once.
      top_eig: None, "power" or "lanczos": also return the top-magnitude eigenvalue (needs ``key``).
      num_iters: HVPs for ``top_eig``.
      jit: compile the whole computation (one compile per call, as apply_fn is closed over).

    Returns:
      dict of (n,) arrays: "value" (f(x)), "grad_norm", "hess_fro", "kappa" (IEEE division, see
      :func:`kappa`); with method="hutchinson" also "hess_fro_sq" and its "hess_fro_sq_ci_low",
      "hess_fro_sq_ci_high", "hess_fro_sq_stderr"; with top_eig also "top_eig".
    """
    xs = _as_float(xs)
    n = xs.shape[0]
    labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if (method == "hutchinson" or top_eig is not None) and key is None:
        raise ValueError("method='hutchinson' and top_eig need a PRNG key")
    keys = jax.random.split(key if key is not None else jax.random.key(0), n)

    def one(args):
        x, y, k = args
        f = scalar_fn(apply_fn, kind, label=y)
        value, g = jax.value_and_grad(f)(x)
        gnorm = jnp.linalg.norm(g.reshape(-1))
        k_fro, k_eig = jax.random.split(k)
        fro, extra = _hess_fro(f, x, method, k_fro, num_probes, confidence, hvp_batch_size)
        out = {"value": value, "grad_norm": gnorm, "hess_fro": fro, "kappa": fro / gnorm, **extra}
        if top_eig is not None:
            out["top_eig"] = top_eigenvalue(f, x, k_eig, top_eig, num_iters)
        return out

    def run(xs, labels, keys):
        return _map(one, (xs, labels, keys), batch_size)

    return (jax.jit(run) if jit else run)(xs, labels, keys)
