"""Tests for jit_jax.analysis.information: alpha(x), information labels, radii."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jit_jax.analysis import information as info

# --------------------------------------------------------------------------------------------------
# Brute force references (full float64 distance matrix)
# --------------------------------------------------------------------------------------------------


def _dists(q, p):
    q = np.asarray(q, np.float64).reshape(len(q), -1)
    p = np.asarray(p, np.float64).reshape(len(p), -1)
    return np.sqrt(((q[:, None, :] - p[None, :, :]) ** 2).sum(-1))


def _brute_alpha(q, ql, p, pl, r, self_idx=None):
    inside = _dists(q, p) <= r
    if self_idx is not None:
        rows = np.nonzero(self_idx >= 0)[0]
        inside[rows, self_idx[rows]] = False
    count = inside.sum(1)
    same = (inside & (ql[:, None] == pl[None, :])).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, same / np.maximum(count, 1), np.nan), count


def _safe_radii(d, quantiles=(0.05, 0.2, 0.5, 0.8)):
    """Radii halfway between consecutive distinct distances: no distance near the ball's edge."""
    u = np.unique(d)
    radii = []
    for qt in quantiles:
        i = min(int(qt * (len(u) - 1)), len(u) - 2)
        radii.append(0.5 * (u[i] + u[i + 1]))
    return radii


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, d = 37, 5  # 37: prime, so no chunk size used below divides it
    labels = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, d)) * 1.5
    x = (centres[labels] + rng.normal(size=(n, d))).astype(np.float32)
    return x, labels


# --------------------------------------------------------------------------------------------------
# alpha
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("chunks", [(1, 1), (4, 5), (8, 7), (64, 64), (3, 100)])
@pytest.mark.parametrize("method", ["expand", "exact"])
def test_alpha_matches_brute_force(data, exclude_self, chunks, method):
    x, y = data
    d = _dists(x, x)
    self_idx = np.arange(len(x)) if exclude_self else None
    for r in _safe_radii(d):
        res = info.alpha(
            x, y, x, y, r, exclude_self=exclude_self, chunk_q=chunks[0], chunk_p=chunks[1],
            method=method,
        )  # fmt: skip
        ref_a, ref_c = _brute_alpha(x, y, x, y, r, self_idx)
        np.testing.assert_array_equal(res.count, ref_c)
        np.testing.assert_allclose(res.alpha, ref_a, rtol=1e-6, equal_nan=True)
        assert res.alpha.dtype == np.float32 and res.alpha.shape == (len(x),)


def test_alpha_separate_queries_and_index_exclusion(data):
    x, y = data
    rng = np.random.default_rng(1)
    # 11 queries: 6 are training points (excluded by index), 5 are new points (index -1).
    take = rng.choice(len(x), 6, replace=False)
    new = rng.normal(size=(5, x.shape[1])).astype(np.float32)
    q = np.concatenate([x[take], new])
    ql = np.concatenate([y[take], rng.integers(0, 3, 5)])
    self_idx = np.concatenate([take, -np.ones(5, int)])
    for r in _safe_radii(_dists(q, x)):
        res = info.alpha(q, ql, x, y, r, exclude_self=self_idx, chunk_q=4, chunk_p=6)
        ref_a, ref_c = _brute_alpha(q, ql, x, y, r, self_idx)
        np.testing.assert_array_equal(res.count, ref_c)
        np.testing.assert_allclose(res.alpha, ref_a, rtol=1e-6, equal_nan=True)
        # Without exclusion the training-point queries see themselves: one more neighbour each.
        res_all = info.alpha(q, ql, x, y, r, chunk_q=4, chunk_p=6)
        np.testing.assert_array_equal(res_all.count - res.count, (self_idx >= 0).astype(int))


def test_alpha_nhwc_uint8_and_jax_inputs():
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(29, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 29)
    flat = imgs.reshape(29, -1).astype(np.float32)
    r = _safe_radii(_dists(flat, flat), (0.3,))[0]
    a = info.alpha(imgs, y, imgs, y, r, exclude_self=True, chunk_q=8, chunk_p=8)
    b = info.alpha(flat, y, flat, y, r, exclude_self=True)
    c = info.alpha(jnp.asarray(imgs), jnp.asarray(y), jnp.asarray(imgs), y, r, exclude_self=True)
    ref_a, ref_c = _brute_alpha(imgs, y, imgs, y, r, np.arange(29))
    for res in (a, b, c):
        np.testing.assert_array_equal(res.count, ref_c)
        np.testing.assert_allclose(res.alpha, ref_a, rtol=1e-6, equal_nan=True)


def test_alpha_no_neighbours_is_nan_with_zero_count(data):
    x, y = data
    res = info.alpha(x, y, x, y, 0.0, exclude_self=True)  # nobody else at distance 0
    assert np.all(res.count == 0) and np.all(np.isnan(res.alpha))
    assert np.all(info.information_label(res.alpha, 0.5) == "high")
    # Radius 0 without exclusion: each point is its own only neighbour, alpha = 1.
    res = info.alpha(x, y, x, y, 0.0, method="exact")
    np.testing.assert_array_equal(res.count, 1)
    np.testing.assert_array_equal(res.alpha, 1.0)


def test_alpha_huge_radius_is_class_frequency(data):
    x, y = data
    res = info.alpha(x, y, x, y, 1e6, exclude_self=True, chunk_q=5, chunk_p=9)
    freq = np.bincount(y, minlength=3)
    np.testing.assert_array_equal(res.count, len(x) - 1)
    np.testing.assert_allclose(res.alpha, (freq[y] - 1) / (len(x) - 1), rtol=1e-6)


def test_alpha_tiny_chunks_equal_one_block(data):
    x, y = data
    r = _safe_radii(_dists(x, x), (0.4,))[0]
    one = info.alpha(x, y, x, y, r, exclude_self=True, chunk_q=1024, chunk_p=1024)
    tiny = info.alpha(x, y, x, y, r, exclude_self=True, chunk_q=2, chunk_p=3)
    np.testing.assert_array_equal(one.count, tiny.count)
    np.testing.assert_array_equal(one.alpha, tiny.alpha)


def test_alpha_block_kernel_shapes_and_traces(data, monkeypatch):
    """Memory by construction: the block kernel only ever sees (chunk_q, d) x (chunk_p, d) blocks,
    the last (partial) chunks included, and is traced once for all query chunks."""
    x, y = data
    n, d = x.shape
    seen = []
    original = info._block_counts

    def recording(q, qlab, qself, p, *args, **kwargs):
        seen.append((q.shape, p.shape))
        return original(q, qlab, qself, p, *args, **kwargs)

    monkeypatch.setattr(info, "_block_counts", chex.assert_max_traces(recording, n=1))
    info._alpha_chunk.clear_cache()
    cq, cp = 8, 10  # 37 = 4 * 8 + 5 queries, 37 = 3 * 10 + 7 points: both last chunks partial
    res = info.alpha(x, y, x, y, 2.0, exclude_self=True, chunk_q=cq, chunk_p=cp)
    ref_a, ref_c = _brute_alpha(x, y, x, y, 2.0, np.arange(n))
    np.testing.assert_array_equal(res.count, ref_c)
    assert seen == [((cq, d), (cp, d))]
    # Another number of queries (>= chunk_q) reuses the compiled function: no new trace.
    info.alpha(x[:20], y[:20], x, y, 2.0, chunk_q=cq, chunk_p=cp)
    info.alpha(x[:9], y[:9], x, y, 2.0, chunk_q=cq, chunk_p=cp)
    assert len(seen) == 1
    info._alpha_chunk.clear_cache()


def test_alpha_rejects_bad_inputs(data):
    x, y = data
    with pytest.raises(ValueError, match="dimension"):
        info.alpha(x[:, :3], y, x, y, 1.0)
    with pytest.raises(ValueError, match="exclude_self=True"):
        info.alpha(x[:5], y[:5], x, y, 1.0, exclude_self=True)
    with pytest.raises(ValueError, match="radius"):
        info.alpha(x, y, x, y, -1.0)
    with pytest.raises(ValueError, match="method"):
        info.alpha(x, y, x, y, 1.0, method="cosine")
    with pytest.raises(ValueError, match="integers"):
        info.alpha(x, y.astype(float), x, y, 1.0)


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


def test_information_labels():
    a = np.array([1.0, 0.5, 0.49, 0.0, np.nan], np.float32)
    np.testing.assert_array_equal(
        info.is_low_information(a, 0.5), [True, True, False, False, False]
    )
    np.testing.assert_array_equal(
        info.information_label(a, 0.5), ["low", "low", "high", "high", "high"]
    )
    np.testing.assert_array_equal(info.information_label(a, 0.0)[:4], ["low"] * 4)


# --------------------------------------------------------------------------------------------------
# k-NN distances and radius
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_kth_neighbour_distance(data, k, exclude_self):
    x, _ = data
    d = _dists(x, x)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    ref = np.sort(d, axis=1)[:, k - 1]
    got = info.kth_neighbour_distance(x, x, k, exclude_self=exclude_self, chunk_q=4, chunk_p=6)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3 if not exclude_self else 0)


def test_choose_radius(data):
    x, _ = data
    d = _dists(x, x)
    np.fill_diagonal(d, np.inf)
    kth = np.sort(d, axis=1)
    for k, qt in [(1, 0.5), (2, 0.9), (5, 0.1)]:
        r = info.choose_radius(x, quantile=qt, k=k, sample=None, chunk_q=8, chunk_p=5)
        np.testing.assert_allclose(r, np.quantile(kth[:, k - 1], qt), rtol=1e-5)
    # A seeded sample: reproducible, and the quantile over exactly those points.
    r1 = info.choose_radius(x, sample=12, seed=3)
    assert r1 == info.choose_radius(x, sample=12, seed=3)
    idx = np.random.default_rng(3).choice(len(x), size=12, replace=False)
    np.testing.assert_allclose(r1, np.quantile(kth[idx, 0], 0.5), rtol=1e-5)
    # By construction about half the points have a neighbour within the median 1-NN radius.
    r = info.choose_radius(x, sample=None)
    res = info.alpha(x, np.zeros(len(x), int), x, np.zeros(len(x), int), r, exclude_self=True)
    assert abs(np.mean(res.count > 0) - 0.5) < 0.05


def test_choose_radius_rejects_bad_arguments(data):
    x, _ = data
    with pytest.raises(ValueError, match="quantile"):
        info.choose_radius(x, quantile=1.5)
    with pytest.raises(ValueError, match="k="):
        info.choose_radius(x, k=len(x))


# --------------------------------------------------------------------------------------------------
# CIFAR scale (slow)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_alpha_cifar_scale_chunked():
    """50,000 points of dimension 3072 (uint8, as CIFAR), 1,024 of them as queries, in chunks."""
    rng = np.random.default_rng(0)
    n, d, m, classes = 50_000, 3072, 1024, 10
    y = rng.integers(0, classes, n)
    centres = rng.integers(60, 196, size=(classes, d))
    x = np.clip(centres[y] + rng.integers(-60, 61, size=(n, d)), 0, 255).astype(np.uint8)
    r = info.choose_radius(x, k=20, sample=256)
    idx = np.arange(m)
    res = info.alpha(x[:m], y[:m], x, y, r, exclude_self=idx, chunk_q=256, chunk_p=2048)
    assert res.alpha.shape == (m,) and np.all(res.count >= 0)
    assert np.mean(res.count > 0) > 0.5
    # Check 8 queries exactly, skipping any whose distances come within 1e-5 of the ball's edge.
    checked = 0
    for i in range(8):
        di = np.sqrt(((x[i].astype(np.float64) - x.astype(np.float64)) ** 2).sum(1))
        di[i] = np.inf
        if np.any(np.abs(di - r) < 1e-5 * r):
            continue
        inside = di <= r
        assert res.count[i] == inside.sum()
        if inside.any():
            np.testing.assert_allclose(res.alpha[i], np.mean(y[inside] == y[i]), rtol=1e-6)
        checked += 1
    assert checked >= 4
