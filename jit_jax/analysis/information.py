"""Information content of a sample: the neighbourhood label agreement alpha(x).

For a sample x of class c(x), a set of reference points Z (usually the training set) and a radius r,

    B_r(x)   = { z in Z : ||z - x||_2 <= r }                       (a closed ball)
    alpha(x) = |{ z in B_r(x) : c(z) = c(x) }| / |B_r(x)|

x is *low information* if alpha(x) >= tau (its label can be inferred from its neighbours), otherwise
*high information*. Distances are Euclidean in whatever space the arrays live in: raw inputs (NHWC
images are flattened to vectors) or features the caller computed beforehand (pass the features as
``points`` and ``queries``). The space, the radius and the threshold are the caller's choice;
:func:`choose_radius` gives a data-driven radius (a quantile of k-th-nearest-neighbour distances).

Memory. Nothing of size (num_queries, num_points) is ever built. Queries are processed in chunks of
``chunk_q`` rows (a Python loop; the last chunk is zero-padded so every call of the compiled
function has the same shape), and inside one compiled function the points are scanned in chunks of
``chunk_p`` rows. Only one (chunk_q, chunk_p) block of distances exists at a time, plus one
(chunk_p, d) or (chunk_q, d) block of explicit differences (below), so 50,000 CIFAR images
(d = 3072) against themselves need O(chunk_q * chunk_p + (chunk_q + chunk_p) * d) working memory
on top of the data.
The points stay in their own dtype (uint8 images are cast to float32 block by block, never as a
whole), and the last point chunk is not padded either: it is re-read as the *last full window*
``points[n - chunk_p:]`` with the rows already seen masked out. So the function compiles once per
(points shape, chunk sizes), whatever the number of queries (rounded up to a power of two when
smaller than ``chunk_q``).

Distances and what is guaranteed. Write u for the unit roundoff of the compute dtype (2^-24 in
float32, the default; float64 only with x64 on and float64 inputs), gamma_n = n u / (1 - n u), d the
dimension and D = ||x - z||^2 the exact squared distance between the inputs *as the compute dtype
holds them* (uint8 and float32 inputs exactly). Every distance that reaches a result is computed from
explicit differences, r = sum_i (x_i - z_i)^2, so r >= 0, r is exactly 0 when x == z (a point's
distance to itself, and to an exact duplicate), and |r - D| <= gamma_{d+2} D.

* ``method="expand"`` (default) *screens* all pairs with the matrix-product form
  ||a||^2 + ||b||^2 - 2 a.b (one float32 matrix product at Precision.HIGHEST, after subtracting the
  points' mean, clamped at 0), whose rounding error has a derived worst-case bound
  E = coef_d (||a||^2 + ||b||^2) (the derivation is in the comment above the kernels), and
  recomputes with explicit differences whatever the screen cannot decide:

  - :func:`alpha`: a pair whose screened value is within E of r^2 is re-decided from explicit
    differences (per query row of a block, only for rows that have such a pair). A pair is thus
    counted exactly as ``D <= r^2`` whenever |D - r^2| > m r^2, m = (gamma_{d+2} + gamma_3) /
    (1 - gamma_{d+2}) (~3e-6 for d = 48, ~2e-4 for d = 3072 in the worst case; the rounding of r^2
    included), however close the points are to each other (near duplicates included).
  - :func:`kth_neighbour_distance`: the screen keeps k + 8 candidates per query (smallest lower
    bounds), their distances are recomputed from explicit differences, and the answer is
    *verified*: every other point's lower bound must exceed the k-th recomputed distance (with the
    margin of the explicit form). A query that cannot be verified (e.g. more than k + 8 points
    within the screen's error of each other) is recomputed with explicit differences against every
    point. The result equals the k-th smallest explicit-difference distance over all points, so it
    is within gamma_{d+3} / 2 (relative) of the exact distance.

* ``method="exact"`` uses explicit differences for every pair (one query row at a time, a (chunk_p,
  d) temporary): same guarantees, no screen, slower.

The matrix-product bound assumes the product's accumulation is a float32 (or float64) one, in any
order (true on CPU and GPU at Precision.HIGHEST); the bounds are worst case and rarely approached, so
the exact fallbacks are rare on real data.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AlphaResult",
    "alpha",
    "choose_radius",
    "information_label",
    "is_low_information",
    "kth_neighbour_distance",
]

_METHODS = ("expand", "exact")
_EXTRA_CANDIDATES = 8  # kth_neighbour_distance keeps k + this many candidates per query


class AlphaResult(NamedTuple):
    """Result of :func:`alpha`, numpy arrays of shape (num_queries,).

    alpha: fraction of the neighbours within the radius that share the query's label; NaN where the
        query has no neighbour (count == 0), because the ratio 0/0 is undefined.
        :func:`is_low_information` treats NaN as *high* information (nothing to infer the label
        from).
    count: number of neighbours within the radius (int64), self excluded when asked.
    """

    alpha: np.ndarray
    count: np.ndarray


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def _as_2d(x, name: str):
    """(n, ...) -> (n, d), keeping the array's own dtype and memory (a view for numpy)."""
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{name} must have a leading batch axis, got shape {x.shape}")
    n = x.shape[0]
    return x.reshape(n, -1) if x.ndim != 2 else x


def _compute_dtype(*arrays):
    """float64 only when x64 is on and an input is float64, else float32 (also for ints, uint8)."""
    if jax.config.jax_enable_x64 and any(
        jnp.issubdtype(a.dtype, jnp.floating) and jnp.dtype(a.dtype).itemsize == 8 for a in arrays
    ):
        return jnp.float64
    return jnp.float32


def _as_labels(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    return y.astype(np.int32)


def _self_indices(exclude_self, num_queries: int, num_points: int) -> np.ndarray:
    """Index into points of each query (-1: not a training point, nothing excluded)."""
    if exclude_self is False or exclude_self is None:
        return np.full((num_queries,), -1, np.int32)
    if exclude_self is True:
        if num_queries != num_points:
            raise ValueError(
                "exclude_self=True means query i is point i, so the counts must match "
                f"({num_queries} queries, {num_points} points); pass an index array otherwise"
            )
        return np.arange(num_queries, dtype=np.int32)
    idx = np.asarray(exclude_self)
    if idx.shape != (num_queries,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"exclude_self must be a bool or an int array of shape ({num_queries},), got "
            f"{idx.dtype} {idx.shape}"
        )
    if np.any(idx >= num_points) or np.any(idx < -1):
        raise ValueError("exclude_self indices must lie in [-1, num_points)")
    return idx.astype(np.int32)


def _chunk_sizes(num_queries: int, num_points: int, chunk_q: int, chunk_p: int) -> tuple[int, int]:
    if chunk_q < 1 or chunk_p < 1:
        raise ValueError(f"chunk sizes must be positive, got chunk_q={chunk_q}, chunk_p={chunk_p}")
    # Few queries: pad to the next power of two rather than to chunk_q (bounded number of compiles).
    cq = min(chunk_q, 1 << max(num_queries - 1, 0).bit_length())
    cp = min(chunk_p, num_points)
    return cq, cp


def _query_chunks(queries, qlab, qself, cq: int):
    """Yield (start, stop, padded queries, labels, self indices), each padded to cq rows."""
    n = queries.shape[0]
    for start in range(0, n, cq):
        stop = min(start + cq, n)
        q, lab, sf = queries[start:stop], qlab[start:stop], qself[start:stop]
        pad = cq - (stop - start)
        if pad:
            q = np.concatenate([np.asarray(q), np.zeros((pad, q.shape[1]), q.dtype)])
            lab = np.concatenate([lab, np.zeros((pad,), lab.dtype)])
            sf = np.concatenate([sf, np.full((pad,), -1, sf.dtype)])
        yield start, stop, q, lab, sf


# --------------------------------------------------------------------------------------------------
# Rounding-error bounds
# --------------------------------------------------------------------------------------------------
#
# Notation: u is the unit roundoff of the compute dtype (2^-24 for float32), gamma_n = n u / (1 - n u)
# (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3: a sum of n terms, or a length-n
# dot product, computed in *any* order, with or without fused multiply-adds, is the exact sum of the
# terms each perturbed by a relative factor (1 + theta), |theta| <= gamma_n). q, p are the inputs as
# the compute dtype holds them (uint8 and float32 are exact in float32), c the centre (any vector of
# the dtype) and D = ||q - p||^2 the true squared distance between them.
#
# Explicit differences, r = fl(sum_i fl(fl(q_i - p_i)^2)): each term is (q_i - p_i)^2 (1 + eps_i),
# |eps_i| <= gamma_3 (one rounding in the difference, squared, one in the square), all terms are
# >= 0, so the sum gives  |r - D| <= gamma_{d+2} D  (relative; r is exactly 0 when q == p).
#
# Screen, s = max(fl(fl(qq + pp) - 2 fl(a.b)), 0) with a = fl(q - c), b = fl(p - c), qq = fl(||a||^2),
# pp = fl(||b||^2) (A = ||a||^2, B = ||b||^2 exact, qq = A (1 + t1), pp = B (1 + t2), |t| <= gamma_d):
#   * dot product (Precision.HIGHEST, a true float32 product): |fl(a.b) - a.b| <= gamma_d sum|a_i b_i|
#     <= gamma_d sqrt(AB) <= gamma_d (A + B) / 2;
#   * so before the two last roundings the error is <= gamma_d (A + B) + gamma_d (A + B), and the
#     addition and subtraction add u |qq + pp| + u |result| <= 4u (A + B) (1 + O(u)) more, because
#     ||a - b||^2 <= 2 (A + B): |s - ||a - b||^2| <= (2 gamma_d + 4u) (A + B) (1 + O(u));
#   * centring: a - b = (q - p) + e with ||e|| <= u (||q - c|| + ||p - c||) <= u (||a|| + ||b||) / (1 - u),
#     so | ||a - b||^2 - D | <= 2 ||q - p|| ||e|| + ||e||^2 <= 4u (A + B) (1 + O(u));
#   * the clamp at 0 only moves s towards D >= 0.
# Hence |s - D| <= (2 gamma_d + 8u)(A + B)(1 + O(u)) <= 2 gamma_{d+6} (A + B): the two spare units
# of gamma (4u) absorb the O(u^2) terms while d u < 0.01. With A + B <= (qq + pp) / (1 - gamma_d), the
# bound used is E = coef * (qq + pp), coef = 2 gamma_{d+6} / (1 - gamma_d) * (1 + 8u), the factor
# (1 + 8u) covering the roundings in evaluating E itself and in the comparisons made with it.
# This is a worst-case bound (typically ~sqrt(d) u is seen): it only decides which pairs are
# certain; every pair it cannot decide is recomputed with explicit differences.


def _unit_roundoff(dtype) -> float:
    return float(jnp.finfo(dtype).eps) / 2


def _gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


def _screen_coef(d: int, dtype) -> float | None:
    """coef of the screen's bound E = coef * (qq + pp) (see above); None when d u is too large for
    the first-order derivation (d >= ~1.6e5 in float32): then only explicit differences are used."""
    u = _unit_roundoff(dtype)
    if (d + 6) * u >= 0.01:
        return None
    return 2.0 * _gamma(d + 6, u) / (1.0 - _gamma(d, u)) * (1.0 + 8.0 * u)


def _verify_coef(d: int, dtype) -> float:
    """c with: a point whose screened lower bound exceeds c * r_k (r_k a computed explicit-difference
    squared distance) is truly farther than the point of r_k: D_k <= r_k / (1 - gamma_{d+2}), and the
    factor (1 + 8u) covers the roundings of the lower bound s - E and of the product c * r_k."""
    u = _unit_roundoff(dtype)
    return (1.0 + 8.0 * u) / (1.0 - _gamma(d + 2, u))


# --------------------------------------------------------------------------------------------------
# Compiled kernels
# --------------------------------------------------------------------------------------------------


def _screen(qc, pc, coef: float):
    """Screened squared distances of centred blocks qc (cq, d), pc (cp, d) and their error bounds.

    Returns (s, E), each (cq, cp): s = ||a||^2 + ||b||^2 - 2 a.b (one matrix product, clamped at
    0) and E with |s - ||q - p||^2| <= E (see the derivation above the kernels).
    """
    qq = jnp.sum(qc * qc, axis=1)
    pp = jnp.sum(pc * pc, axis=1)
    qp = jnp.matmul(qc, pc.T, precision=jax.lax.Precision.HIGHEST)
    s = jnp.maximum(qq[:, None] + pp[None, :] - 2.0 * qp, 0.0)
    return s, coef * (qq[:, None] + pp[None, :])


def _exact_row(qi, pf):
    """Explicit-difference squared distances of one query qi (d,) to a block pf (cp, d) -> (cp,)."""
    diff = pf - qi[None, :]
    return jnp.sum(diff * diff, axis=1)


def _exact_sq_dists(qf, pf):
    """Explicit-difference squared distances (cq, cp), one query row at a time: O(cp * d) memory."""
    return jax.lax.map(lambda qi: _exact_row(qi, pf), qf)


def _block_counts(q, qlab, qself, p, plab, pidx, pvalid, center, r2, method: str, coef=None):
    """One (chunk_q, chunk_p) block: neighbour and same-label counts per query, shape (cq,) each.

    ``pidx`` are the global indices of the block's points, ``pvalid`` masks rows already counted
    (the re-read last window). A point is a neighbour of query i if it is valid, within the closed
    ball and not query i itself (``qself[i] == pidx``).

    ``method="expand"``: the screen decides every pair farther than its error bound E from the
    ball's edge (|s - r2| > E); a query row with an undecided pair recomputes that row's distances
    with explicit differences (a ``lax.cond`` per row, so rows without one cost nothing more, and
    the temporary is one (cp, d) block).
    """
    qf, pf = q.astype(center.dtype), p.astype(center.dtype)
    valid = pvalid[None, :] & (qself[:, None] != pidx[None, :])
    if method == "exact":
        inside = _exact_sq_dists(qf, pf) <= r2
    else:
        s, e = _screen(qf - center, pf - center, coef)
        unsure = (jnp.abs(s - r2) <= e) & valid

        def row(args):
            qi, si, ui = args
            exact = lambda: jnp.where(ui, _exact_row(qi, pf) <= r2, si <= r2)
            return jax.lax.cond(jnp.any(ui), exact, lambda: si <= r2)

        inside = jax.lax.map(row, (qf, s, unsure))
    inside = inside & valid
    same = inside & (qlab[:, None] == plab[None, :])
    return jnp.sum(inside, axis=1, dtype=jnp.int32), jnp.sum(same, axis=1, dtype=jnp.int32)


def _point_windows(num_points: int, cp: int):
    """Number of point windows, and for window i its start and first not-yet-seen index."""
    num_windows = -(-num_points // cp)

    def window(i):
        nominal = i * cp
        start = jnp.minimum(nominal, num_points - cp)  # last window re-reads, never pads
        pidx = start + jnp.arange(cp, dtype=jnp.int32)
        return start, pidx, pidx >= nominal

    return num_windows, window


@functools.partial(jax.jit, static_argnames=("cp", "method", "coef"))
def _alpha_chunk(q, qlab, qself, points, plab, center, r2, *, cp: int, method: str, coef):
    """Counts for one padded query chunk against all points, scanning point windows of cp rows."""
    num_points, d = points.shape
    num_windows, window = _point_windows(num_points, cp)

    def body(i, carry):
        count, same = carry
        start, pidx, pvalid = window(i)
        p = jax.lax.dynamic_slice(points, (start, 0), (cp, d))
        pl = jax.lax.dynamic_slice(plab, (start,), (cp,))
        c, s = _block_counts(q, qlab, qself, p, pl, pidx, pvalid, center, r2, method, coef)
        return count + c, same + s

    zeros = jnp.zeros((q.shape[0],), jnp.int32)
    return jax.lax.fori_loop(0, num_windows, body, (zeros, zeros))


@functools.partial(jax.jit, static_argnames=("k", "cp", "dtype"))
def _knn_exact_chunk(q, qself, points, *, k: int, cp: int, dtype):
    """k-th smallest explicit-difference squared distance (cq,) of a query chunk to all points."""
    num_points, d = points.shape
    num_windows, window = _point_windows(num_points, cp)
    qf = q.astype(dtype)

    def body(i, best):
        start, pidx, pvalid = window(i)
        p = jax.lax.dynamic_slice(points, (start, 0), (cp, d)).astype(dtype)
        keep = pvalid[None, :] & (qself[:, None] != pidx[None, :])
        d2 = jnp.where(keep, _exact_sq_dists(qf, p), jnp.inf)
        neg_top, _ = jax.lax.top_k(-jnp.concatenate([best, d2], axis=1), k)
        return -neg_top

    init = jnp.full((q.shape[0], k), jnp.inf, dtype)
    return jax.lax.fori_loop(0, num_windows, body, init)[:, k - 1]


@functools.partial(jax.jit, static_argnames=("k", "extra", "cp", "coef", "vcoef"))
def _knn_screen_chunk(q, qself, points, center, *, k: int, extra: int, cp: int, coef, vcoef):
    """Screened k-NN of a query chunk: (k-th squared distance (cq,), verified (cq,) bool).

    Pass 1 scans the point windows keeping, per query, the K + 1 = k + extra + 1 smallest *lower
    bounds* s - E of the true squared distance (and their point indices, -1 for none). The first K
    are the candidates; every other point has a lower bound >= the (K+1)-th, L. Pass 2 recomputes
    the candidates' distances with explicit differences (one (cq, d) gather per candidate column)
    and takes their k-th smallest, r_k. The row is verified when L > vcoef * r_k (or no point is
    left outside the candidates): then no non-candidate can be nearer than the k-th candidate, and
    r_k is the explicit-difference k-th distance over *all* points. Unverified rows are recomputed
    by the caller with :func:`_knn_exact_chunk`.
    """
    num_points, d = points.shape
    num_windows, window = _point_windows(num_points, cp)
    kk = k + extra
    qf = q.astype(center.dtype)
    qc = qf - center

    def body(i, carry):
        low, idx = carry
        start, pidx, pvalid = window(i)
        p = jax.lax.dynamic_slice(points, (start, 0), (cp, d))
        s, e = _screen(qc, p.astype(center.dtype) - center, coef)
        keep = pvalid[None, :] & (qself[:, None] != pidx[None, :])
        all_low = jnp.concatenate([low, jnp.where(keep, s - e, jnp.inf)], axis=1)
        all_idx = jnp.concatenate([idx, jnp.where(keep, pidx[None, :], -1)], axis=1)
        neg_top, pos = jax.lax.top_k(-all_low, kk + 1)
        return -neg_top, jnp.take_along_axis(all_idx, pos, axis=1)

    cq = q.shape[0]
    init = (jnp.full((cq, kk + 1), jnp.inf, center.dtype), jnp.full((cq, kk + 1), -1, jnp.int32))
    low, idx = jax.lax.fori_loop(0, num_windows, body, init)

    def refine(j, r):
        c = idx[:, j]
        diff = qf - jnp.take(points, jnp.maximum(c, 0), axis=0).astype(center.dtype)
        return r.at[:, j].set(jnp.where(c >= 0, jnp.sum(diff * diff, axis=1), jnp.inf))

    r = jax.lax.fori_loop(0, kk, refine, jnp.full((cq, kk), jnp.inf, center.dtype))
    kth = -jax.lax.top_k(-r, k)[0][:, k - 1]
    verified = (idx[:, kk] < 0) | (low[:, kk] > vcoef * kth)
    return kth, verified


def _prepare(queries, points, method: str):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    queries, points = _as_2d(queries, "queries"), _as_2d(points, "points")
    if queries.shape[1] != points.shape[1]:
        raise ValueError(
            f"queries and points differ in dimension: {queries.shape[1]} vs {points.shape[1]}"
        )
    if points.shape[0] == 0:
        raise ValueError("points is empty")
    dtype = _compute_dtype(queries, points)
    points_dev = jnp.asarray(points)  # one transfer; the dtype (e.g. uint8) is kept
    center = jnp.mean(points_dev, axis=0, dtype=dtype)
    coef = _screen_coef(points.shape[1], dtype) if method == "expand" else None
    if coef is None:
        method = "exact"  # no usable screen bound (or asked for): explicit differences only
    return queries, points_dev, center, dtype, method, coef


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def alpha(
    queries,
    query_labels,
    points,
    point_labels,
    radius: float,
    *,
    exclude_self=False,
    chunk_q: int = 256,
    chunk_p: int = 2048,
    method: str = "expand",
) -> AlphaResult:
    """Neighbourhood label agreement alpha(x) of each query, computed in memory-bounded chunks.

    Args:
      queries: (m, ...) samples x (NHWC images or vectors; flattened), numpy or jax.
      query_labels: (m,) integer classes c(x).
      points: (n, ...) reference points Z (the training set, or its features), same trailing size.
      point_labels: (n,) integer classes c(z).
      radius: r >= 0; the ball is closed (||z - x|| <= r).
      exclude_self: False (default) counts every point. True: queries *are* the points (m == n,
        query i is point i) and each point is left out of its own ball. An int array (m,):
        ``exclude_self[i]`` is the index in ``points`` of query i, or -1 if it is not a training
        point. Exclusion is by index: other points at distance 0 (duplicates) still count.
      chunk_q, chunk_p: rows of queries / points per block; working memory O(chunk_q * chunk_p +
        chunk_p * d) (the (chunk_p, d) term: explicit differences of one query row at a time).
      method: "expand" (matrix-product screen, exact re-decision near the edge; fast) or "exact"
        (explicit differences for every pair); see the module docstring for the guarantee.

    The points are moved to the device once per call (a no-op for a jax array already there: pass
    one when calling repeatedly, e.g. for several radii, to avoid copying a large numpy array).

    Returns:
      :class:`AlphaResult` of numpy arrays of shape (m,): alpha (float32, NaN where count == 0) and
      count (int64).
    """
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    queries, points_dev, center, dtype, method, coef = _prepare(queries, points, method)
    m, n = queries.shape[0], points_dev.shape[0]
    qlab = _as_labels(query_labels, m, "query_labels")
    plab = jnp.asarray(_as_labels(point_labels, n, "point_labels"))
    qself = _self_indices(exclude_self, m, n)
    r2 = jnp.asarray(radius, dtype) ** 2
    cq, cp = _chunk_sizes(m, n, chunk_q, chunk_p)

    count = np.zeros((m,), np.int64)
    same = np.zeros((m,), np.int64)
    pending = []  # dispatch every chunk first (asynchronous), read back at the end
    for start, stop, q, lab, sf in _query_chunks(queries, qlab, qself, cq):
        out = _alpha_chunk(
            q, lab, sf, points_dev, plab, center, r2, cp=cp, method=method, coef=coef
        )
        pending.append((start, stop, out))
    for start, stop, (c, s) in pending:
        count[start:stop] = np.asarray(c)[: stop - start]
        same[start:stop] = np.asarray(s)[: stop - start]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(count > 0, same / np.maximum(count, 1), np.nan).astype(np.float32)
    return AlphaResult(alpha=frac, count=count)


def is_low_information(alpha_values, tau: float) -> np.ndarray:
    """Boolean (m,): True where alpha >= tau (low information); NaN alpha (no neighbour): False."""
    a = np.asarray(alpha_values)
    with np.errstate(invalid="ignore"):
        return np.asarray(a >= tau)


def information_label(alpha_values, tau: float) -> np.ndarray:
    """String array (m,) of "low" / "high" (see :func:`is_low_information`; NaN alpha -> "high")."""
    return np.where(is_low_information(alpha_values, tau), "low", "high")


def kth_neighbour_distance(
    queries,
    points,
    k: int = 1,
    *,
    exclude_self=False,
    chunk_q: int = 256,
    chunk_p: int = 2048,
    method: str = "expand",
) -> np.ndarray:
    """Euclidean distance from each query to its k-th nearest point (k = 1: the nearest), chunked.

    ``exclude_self`` as in :func:`alpha`. Returns a numpy array (m,); inf where fewer than k points
    are available. The running k + 8 best candidates of each query are merged with each point block
    by ``top_k`` and then recomputed from explicit differences, so memory stays
    O(chunk_q * (chunk_p + k) + chunk_q * d) (``method="exact"`` and the fallback for unverified
    queries: O(chunk_q * (chunk_p + k) + chunk_p * d)). The result is exact up to the rounding of an
    explicit-difference sum (see the module docstring): 0 for a query's distance to itself or to
    an exact duplicate, never negative.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries, points_dev, center, dtype, method, coef = _prepare(queries, points, method)
    m, (n, d) = queries.shape[0], points_dev.shape
    qself = _self_indices(exclude_self, m, n)
    cq, cp = _chunk_sizes(m, n, chunk_q, chunk_p)
    dummy = np.zeros((m,), np.int32)
    kth = np.empty((m,), np.float64)
    verified = np.ones((m,), bool)
    pending = []
    for start, stop, q, _, sf in _query_chunks(queries, dummy, qself, cq):
        if method == "exact":
            out = (_knn_exact_chunk(q, sf, points_dev, k=k, cp=cp, dtype=dtype),)
        else:
            out = _knn_screen_chunk(
                q, sf, points_dev, center, k=k, extra=_EXTRA_CANDIDATES, cp=cp, coef=coef,
                vcoef=_verify_coef(d, dtype),
            )  # fmt: skip
        pending.append((start, stop, out))
    for start, stop, out in pending:
        kth[start:stop] = np.asarray(out[0])[: stop - start]
        if len(out) > 1:
            verified[start:stop] = np.asarray(out[1])[: stop - start]
    # Rows the screen could not verify: explicit differences against every point (same chunking).
    redo = np.nonzero(~verified)[0]
    if redo.size:
        rq = queries[redo] if isinstance(queries, np.ndarray) else queries[jnp.asarray(redo)]
        rcq, _ = _chunk_sizes(redo.size, n, chunk_q, chunk_p)
        for start, stop, q, _, sf in _query_chunks(rq, dummy[: redo.size], qself[redo], rcq):
            out = _knn_exact_chunk(q, sf, points_dev, k=k, cp=cp, dtype=dtype)
            kth[redo[start:stop]] = np.asarray(out)[: stop - start]
    return np.sqrt(kth)


def choose_radius(
    points,
    *,
    quantile: float = 0.5,
    k: int = 1,
    sample: int | None = 2048,
    seed: int = 0,
    chunk_q: int = 256,
    chunk_p: int = 2048,
    method: str = "expand",
) -> float:
    """A data-driven radius: the ``quantile`` of the k-th-nearest-neighbour distances in ``points``.

    The distances are measured for ``sample`` points drawn without replacement (numpy generator
    seeded by ``seed``; ``sample=None`` or >= n uses every point) against *all* points, each
    excluding itself. With k = 1 and quantile = 0.5, half of the sampled points have at least one
    neighbour within r.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    points = _as_2d(points, "points")
    n = points.shape[0]
    if k >= n:
        raise ValueError(f"k={k} needs more than k points, got {n}")
    if sample is None or sample >= n:
        idx = np.arange(n)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    queries = points[idx] if isinstance(points, np.ndarray) else points[jnp.asarray(idx)]
    dist = kth_neighbour_distance(
        queries,
        points,
        k,
        exclude_self=idx.astype(np.int32),
        chunk_q=chunk_q,
        chunk_p=chunk_p,
        method=method,
    )
    return float(np.quantile(dist, quantile))
