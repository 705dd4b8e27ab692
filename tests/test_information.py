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
    """Radii halfway between consecutive distinct distances: no distance near the ball's edge
    (checked against the module's guarantee, for any dimension up to 100)."""
    u = np.unique(d)
    radii = []
    for qt in quantiles:
        i = min(int(qt * (len(u) - 1)), len(u) - 2)
        r = 0.5 * (u[i] + u[i + 1])
        assert np.all(np.abs(d**2 - r**2) > _alpha_margin(100) * r**2), "pick another seed"
        radii.append(r)
    return radii


# Rounding bounds (float32, u = 2^-24, gamma_n = n u / (1 - n u); Higham ch. 3). A squared distance
# computed from explicit differences is sum_i (q_i - p_i)^2 (1 + eps_i) with |eps_i| <= gamma_{d+2}
# (difference, square, d - 1 additions in any order, all terms >= 0). The module promises nothing
# less accurate than that (see its docstring), so:
_U32 = 2.0**-24


def _gamma(n, u=_U32):
    return n * u / (1 - n * u)


def _kth_rtol(d):
    """kth_neighbour_distance vs the exact distance: d^2 within gamma_{d+2} (relative), and
    sqrt(1 + t) is within |t| / (2 - |t|) of 1, so the distance is within gamma_{d+3} / 2."""
    return _gamma(d + 3) / 2


def _alpha_margin(d):
    """alpha decides a pair exactly unless its squared distance is within m * r^2 of r^2: r^2 itself
    is rounded (r to float32, squared: gamma_3), and the explicit-difference d^2 is within
    gamma_{d+2} (relative) of the true one, so m = (gamma_{d+2} + gamma_3) / (1 - gamma_{d+2})."""
    return (_gamma(d + 2) + _gamma(3)) / (1 - _gamma(d + 2))


# alpha is float32(same / count) of exact integer counts: one rounding to float32, rel err <= u.
_ALPHA_RTOL = _U32


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
        np.testing.assert_allclose(res.alpha, ref_a, rtol=_ALPHA_RTOL, equal_nan=True)
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
        np.testing.assert_allclose(res.alpha, ref_a, rtol=_ALPHA_RTOL, equal_nan=True)
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
        np.testing.assert_allclose(res.alpha, ref_a, rtol=_ALPHA_RTOL, equal_nan=True)


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
    np.testing.assert_allclose(res.alpha, (freq[y] - 1) / (len(x) - 1), rtol=_ALPHA_RTOL)


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
    for method in ("expand", "exact"):
        got = info.kth_neighbour_distance(
            x, x, k, exclude_self=exclude_self, chunk_q=4, chunk_p=6, method=method
        )
        np.testing.assert_allclose(got, ref, rtol=_kth_rtol(x.shape[1]), atol=0)


def test_choose_radius(data):
    x, _ = data
    d = _dists(x, x)
    np.fill_diagonal(d, np.inf)
    kth = np.sort(d, axis=1)
    # A quantile interpolates two k-th distances (a convex combination of positive values), so it
    # keeps their relative error bound.
    rtol = _kth_rtol(x.shape[1])
    for k, qt in [(1, 0.5), (2, 0.9), (5, 0.1)]:
        r = info.choose_radius(x, quantile=qt, k=k, sample=None, chunk_q=8, chunk_p=5)
        np.testing.assert_allclose(r, np.quantile(kth[:, k - 1], qt), rtol=rtol)
    # A seeded sample: reproducible, and the quantile over exactly those points.
    r1 = info.choose_radius(x, sample=12, seed=3)
    assert r1 == info.choose_radius(x, sample=12, seed=3)
    idx = np.random.default_rng(3).choice(len(x), size=12, replace=False)
    np.testing.assert_allclose(r1, np.quantile(kth[idx, 0], 0.5), rtol=rtol)
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
# Rounding: self-distances, duplicates and near-duplicate clusters against float64
# --------------------------------------------------------------------------------------------------


def _clusters(rng, sizes, d, spread=1e-3):
    """Clusters of near duplicates: centres uniform in [50, 255] (norms like uint8 pixels), members
    ``spread`` apart; returns float32 points (one cluster after the other)."""
    centres = rng.uniform(50, 255, size=(len(sizes), d))
    members = np.repeat(centres, sizes, axis=0)
    return (members + spread * rng.normal(size=members.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def clusters():
    rng = np.random.default_rng(5)
    # 12 clusters of 1..6 near duplicates (1e-3 apart, so d^2 ~ 1e-4 against norms^2 ~ 1e6) plus
    # an exact duplicate of point 0; d = 48 (a 4x4x3 image).
    x = _clusters(rng, [6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 6], 48)
    return np.concatenate([x, x[:1]])


@pytest.mark.parametrize("method", ["expand", "exact"])
def test_self_distance_and_duplicates_are_exactly_zero(clusters, method):
    x = clusters
    rng = np.random.default_rng(6)
    imgs = rng.integers(0, 256, size=(19, 4, 4, 3), dtype=np.uint8)
    imgs[7] = imgs[3]
    for pts in (x, imgs):
        kw = dict(chunk_q=4, chunk_p=6, method=method)
        np.testing.assert_array_equal(info.kth_neighbour_distance(pts, pts, 1, **kw), 0.0)
        # Excluding itself, an exact duplicate is still at distance exactly 0.
        got = info.kth_neighbour_distance(pts, pts, 1, exclude_self=True, **kw)
        dup = [0, len(x) - 1] if pts is x else [3, 7]
        np.testing.assert_array_equal(got[dup], 0.0)
        assert np.all(got[np.setdiff1d(np.arange(len(pts)), dup)] > 0)
        # Radius 0: exactly itself and its duplicates (no negative or noisy d^2 near 0).
        res = info.alpha(pts, np.zeros(len(pts), int), pts, np.zeros(len(pts), int), 0.0,
                         method=method, chunk_q=8, chunk_p=8)  # fmt: skip
        np.testing.assert_array_equal(res.count, (_dists(pts, pts) == 0).sum(1))


@pytest.mark.parametrize("method", ["expand", "exact"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_kth_near_duplicate_clusters_match_float64(clusters, method, exclude_self):
    x = clusters
    d = _dists(x, x)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    for k in (1, 4, 9):  # inside the clusters (sizes 1..7), and across them
        got = info.kth_neighbour_distance(
            x, x, k, exclude_self=exclude_self, chunk_q=8, chunk_p=16, method=method
        )
        ref = np.sort(d, axis=1)[:, k - 1]
        assert np.all(got >= 0)  # no NaN from a negative squared distance
        np.testing.assert_allclose(got, ref, rtol=_kth_rtol(x.shape[1]), atol=0, err_msg=str(k))


def test_kth_screen_verifies_small_clusters_and_falls_back_on_big_ones(monkeypatch):
    """Both paths of method="expand": clusters no bigger than the candidate list are verified by
    the screen (no exact fallback); a cluster of 40 near duplicates (more than k + extra
    candidates, all within the screen's error bound of each other) must fall back, and both agree
    with float64."""
    redo = []
    original = info._knn_exact_chunk

    def recording(q, *args, **kwargs):
        redo.append(q.shape[0])
        return original(q, *args, **kwargs)

    monkeypatch.setattr(info, "_knn_exact_chunk", recording)
    rng = np.random.default_rng(7)
    d = 48
    small = _clusters(rng, [3, 3, 2, 4, 1, 5], d)
    big = _clusters(rng, [40, 3, 5, 2], d)
    for x, expect_redo in ((small, False), (big, True)):
        dd = _dists(x, x)
        np.fill_diagonal(dd, np.inf)
        for k in (1, 3):
            redo.clear()
            got = info.kth_neighbour_distance(x, x, k, exclude_self=True, chunk_q=8, chunk_p=16)
            np.testing.assert_allclose(got, np.sort(dd, 1)[:, k - 1], rtol=_kth_rtol(d), atol=0)
            assert bool(redo) == expect_redo, (k, redo)


def _radii_through_clusters(dsq, margin, quantiles=(0.1, 0.5, 0.9)):
    """Radii at quantiles of the within-cluster distances (d^2 < 1), each moved, if needed, to the
    middle of the widest gap of its neighbourhood so that no squared distance is within
    ``margin * r^2`` of r^2."""
    within = np.unique(dsq[(dsq > 0) & (dsq < 1)])
    radii = []
    for qt in quantiles:
        i = min(int(qt * (len(within) - 1)), len(within) - 2)
        r2 = 0.5 * (within[i] + within[i + 1])
        assert np.all(np.abs(dsq - r2) > 2 * margin * r2), "pick another seed"
        radii.append(np.sqrt(r2))
    return radii


@pytest.mark.parametrize("method", ["expand", "exact"])
def test_alpha_near_duplicate_clusters_match_float64(clusters, method):
    x = clusters
    y = np.random.default_rng(8).integers(0, 3, len(x))
    dsq = _dists(x, x) ** 2
    for r in _radii_through_clusters(dsq, _alpha_margin(x.shape[1])):
        for exclude_self, self_idx in ((True, np.arange(len(x))), (False, None)):
            res = info.alpha(x, y, x, y, r, exclude_self=exclude_self, chunk_q=8, chunk_p=16,
                             method=method)  # fmt: skip
            ref_a, ref_c = _brute_alpha(x, y, x, y, r, self_idx)
            assert 0 < ref_c.sum() < len(x) ** 2  # the radius cuts through the clusters
            np.testing.assert_array_equal(res.count, ref_c)
            np.testing.assert_allclose(res.alpha, ref_a, rtol=_ALPHA_RTOL, equal_nan=True)


def test_uint8_near_duplicates_match_float64():
    """uint8 images (norms ~ 255 sqrt(d)) whose clusters differ by +-1 in a few pixels."""
    rng = np.random.default_rng(9)
    base = rng.integers(1, 255, size=(6, 8, 8, 3)).astype(np.int16)
    imgs = np.repeat(base, 5, axis=0)
    for i in range(len(imgs)):
        pix = rng.choice(imgs[i].size, size=i % 4, replace=False)
        imgs[i].reshape(-1)[pix] += rng.choice([-1, 1], size=pix.size).astype(np.int16)
    imgs = imgs.astype(np.uint8)
    d = imgs[0].size
    dist = _dists(imgs, imgs)
    np.fill_diagonal(dist, np.inf)
    for k in (1, 5):
        for method in ("expand", "exact"):
            got = info.kth_neighbour_distance(imgs, imgs, k, exclude_self=True, chunk_q=8,
                                              chunk_p=16, method=method)  # fmt: skip
            np.testing.assert_allclose(got, np.sort(dist, 1)[:, k - 1], rtol=_kth_rtol(d), atol=0)
    y = rng.integers(0, 2, len(imgs))
    for r in (1.2, 1.5, 2.1):  # squared distances are integers: r^2 = 1.44, 2.25, 4.41 cut between
        res = info.alpha(imgs, y, imgs, y, r, exclude_self=True, chunk_q=8, chunk_p=16)
        ref_a, ref_c = _brute_alpha(imgs, y, imgs, y, r, np.arange(len(imgs)))
        assert 0 < ref_c.sum()
        np.testing.assert_array_equal(res.count, ref_c)
        np.testing.assert_allclose(res.alpha, ref_a, rtol=_ALPHA_RTOL, equal_nan=True)


def test_screen_error_bound_holds():
    """The derived bound E of the matrix-product screen covers its actual error (float64 truth),
    for near duplicates with large norms and for spread-out data, centred as the module does."""
    rng = np.random.default_rng(10)
    for d in (3, 48, 300):
        for x in (_clusters(rng, [20, 20, 24], d), rng.normal(size=(64, d)).astype(np.float32)):
            xd = jnp.asarray(x)
            c = jnp.mean(xd, axis=0)
            s, e = info._screen(xd - c, xd - c, info._screen_coef(d, jnp.float32))
            dsq = _dists(x, x) ** 2
            assert np.all(np.asarray(s) >= 0)
            assert np.all(np.abs(np.asarray(s, np.float64) - dsq) <= np.asarray(e)), d


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
    # Check queries exactly (integer squared distances, exact for uint8), skipping any with a
    # squared distance within the derived margin of r^2 (there alpha may legitimately differ), until
    # 8 are checked.
    r2, margin = r * r, _alpha_margin(d)
    xi = x.astype(np.int32)
    checked = 0
    for i in range(m):
        di = np.concatenate([((xi[s : s + 5000] - xi[i]) ** 2).sum(1, dtype=np.int64)
                             for s in range(0, n, 5000)]).astype(np.float64)  # fmt: skip
        di[i] = np.inf
        if np.any(np.abs(di - r2) <= margin * r2):
            continue
        inside = di <= r2
        assert res.count[i] == inside.sum()
        if inside.any():
            np.testing.assert_allclose(res.alpha[i], np.mean(y[inside] == y[i]), rtol=_ALPHA_RTOL)
        checked += 1
        if checked == 8:
            break
    assert checked == 8
