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
``chunk_p`` rows. Only one (chunk_q, chunk_p) block of distances exists at a time, so 50,000 CIFAR
images (d = 3072) against themselves need O(chunk_q * chunk_p) working memory on top of the data.
The points stay in their own dtype (uint8 images are cast to float32 block by block, never as a
whole), and the last point chunk is not padded either: it is re-read as the *last full window*
``points[n - chunk_p:]`` with the rows already seen masked out. So the function compiles once per
(points shape, chunk sizes), whatever the number of queries (rounded up to a power of two when
smaller than ``chunk_q``).

Distances. ``method="expand"`` (default) computes squared distances as ||a||^2 + ||b||^2 - 2 a.b
with a matrix product (full precision; clamped at 0), after subtracting the mean of the points from
both sides: distances are translation-invariant, and centring removes most of the cancellation
error of this form (for uint8 pixels in [0, 255] it matters). In float32 a squared distance is then
exact to a few ulps of ||a - mean||^2 + ||b - mean||^2, so a point whose distance is within ~1e-6
(relative) of r may fall on either side of the ball's edge. ``method="exact"`` forms the
differences a - b explicitly: rounding only in the sum of squares, but a (chunk_q, chunk_p, d)
temporary, so use small chunks with it.
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
# Compiled kernels
# --------------------------------------------------------------------------------------------------


def _sq_dists(qc, pc, method: str):
    """Squared distances between centred blocks qc (cq, d) and pc (cp, d) -> (cq, cp)."""
    if method == "exact":
        diff = qc[:, None, :] - pc[None, :, :]
        return jnp.sum(diff * diff, axis=-1)
    qq = jnp.sum(qc * qc, axis=1)
    pp = jnp.sum(pc * pc, axis=1)
    qp = jnp.matmul(qc, pc.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(qq[:, None] + pp[None, :] - 2.0 * qp, 0.0)


def _block_counts(q, qlab, qself, p, plab, pidx, pvalid, center, r2, method: str):
    """One (chunk_q, chunk_p) block: neighbour and same-label counts per query, shape (cq,) each.

    ``pidx`` are the global indices of the block's points, ``pvalid`` masks rows already counted
    (the re-read last window). A point is a neighbour of query i if it is valid, within the closed
    ball and not query i itself (``qself[i] == pidx``).
    """
    d2 = _sq_dists(q.astype(center.dtype) - center, p.astype(center.dtype) - center, method)
    inside = (d2 <= r2) & pvalid[None, :] & (qself[:, None] != pidx[None, :])
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


@functools.partial(jax.jit, static_argnames=("cp", "method"))
def _alpha_chunk(q, qlab, qself, points, plab, center, r2, *, cp: int, method: str):
    """Counts for one padded query chunk against all points, scanning point windows of cp rows."""
    num_points, d = points.shape
    num_windows, window = _point_windows(num_points, cp)

    def body(i, carry):
        count, same = carry
        start, pidx, pvalid = window(i)
        p = jax.lax.dynamic_slice(points, (start, 0), (cp, d))
        pl = jax.lax.dynamic_slice(plab, (start,), (cp,))
        c, s = _block_counts(q, qlab, qself, p, pl, pidx, pvalid, center, r2, method)
        return count + c, same + s

    zeros = jnp.zeros((q.shape[0],), jnp.int32)
    return jax.lax.fori_loop(0, num_windows, body, (zeros, zeros))


@functools.partial(jax.jit, static_argnames=("k", "cp", "method"))
def _knn_chunk(q, qself, points, center, *, k: int, cp: int, method: str):
    """The k smallest squared distances (ascending, (cq, k)) of a query chunk to all points."""
    num_points, d = points.shape
    num_windows, window = _point_windows(num_points, cp)

    def body(i, best):
        start, pidx, pvalid = window(i)
        p = jax.lax.dynamic_slice(points, (start, 0), (cp, d))
        d2 = _sq_dists(q.astype(center.dtype) - center, p.astype(center.dtype) - center, method)
        keep = pvalid[None, :] & (qself[:, None] != pidx[None, :])
        d2 = jnp.where(keep, d2, jnp.inf)
        neg_top, _ = jax.lax.top_k(-jnp.concatenate([best, d2], axis=1), k)
        return -neg_top

    init = jnp.full((q.shape[0], k), jnp.inf, center.dtype)
    return jax.lax.fori_loop(0, num_windows, body, init)


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
    return queries, points_dev, center, dtype


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
      chunk_q, chunk_p: rows of queries / points per block; working memory O(chunk_q * chunk_p)
        (``method="exact"``: O(chunk_q * chunk_p * d)).
      method: "expand" (matrix-product form, fast) or "exact" (explicit differences); see the
        module docstring.

    The points are moved to the device once per call (a no-op for a jax array already there: pass
    one when calling repeatedly, e.g. for several radii, to avoid copying a large numpy array).

    Returns:
      :class:`AlphaResult` of numpy arrays of shape (m,): alpha (float32, NaN where count == 0) and
      count (int64).
    """
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    queries, points_dev, center, dtype = _prepare(queries, points, method)
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
        out = _alpha_chunk(q, lab, sf, points_dev, plab, center, r2, cp=cp, method=method)
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
    are available. The running k best distances of each query are merged with each point block by
    ``top_k``, so memory stays O(chunk_q * (chunk_p + k)).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries, points_dev, center, _ = _prepare(queries, points, method)
    m, n = queries.shape[0], points_dev.shape[0]
    qself = _self_indices(exclude_self, m, n)
    cq, cp = _chunk_sizes(m, n, chunk_q, chunk_p)
    dummy = np.zeros((m,), np.int32)
    out = np.empty((m,), np.float64)
    pending = []
    for start, stop, q, _, sf in _query_chunks(queries, dummy, qself, cq):
        best = _knn_chunk(q, sf, points_dev, center, k=k, cp=cp, method=method)
        pending.append((start, stop, best[:, k - 1]))
    for start, stop, kth in pending:
        out[start:stop] = np.sqrt(np.asarray(kth)[: stop - start])
    return out


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
