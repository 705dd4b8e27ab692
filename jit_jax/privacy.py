"""Membership attacks beyond the paper's entropy MIA, and U-LiRA's per-example likelihood ratio.

Every attack is fit on the model's outputs for members (the retained training samples) against
non-members (test samples) and then asked about the forget samples. Each reports:

- ``member_rate``: the percentage of forget samples it calls "member" (as the paper's MIA; the
  target is the retrained model's rate, not 0);
- ``auc``: how well its score separates the forget samples (positives) from an equally treated
  set of samples the model never trained on (negatives, held out of the fit). A model that has
  truly forgotten gives about 0.5, as the retrained model does; the original model more.

Attacks (pure functions of logits and labels):

- :func:`feature_attack`: logistic regression (``"lr"``) or an RBF support-vector classifier
  (``"svc"``) on three standardised features per sample: the confidence in the true label ``p_y``,
  the softmax entropy and the modified entropy of Song and Mittal (2021),
  ``-(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``, which uses the label. These are the
  SVC features of "Model sparsity can simplify machine unlearning" and SalUn.
- :func:`threshold_attack`: one threshold on the per-sample loss ``-log p_y``, calibrated on
  members against non-members (the threshold of highest balanced accuracy).
- :func:`lira_scores`: the likelihood-ratio test of LiRA (Carlini et al. 2022) per sample, from
  shadow models trained with and without it: Gaussian fits of the logit-scaled confidence
  ``phi = log(p_y / (1 - p_y))`` over the "in" and the "out" shadows;
  :func:`train_shadows` trains them (see there for the design and its difference from the
  paper-faithful U-LiRA of Hayes et al. 2024).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

__all__ = ["AttackResult", "attack_features", "auc", "confidence", "feature_attack",
           "lira_scores", "logit_confidence", "modified_entropy", "threshold_attack",
           "train_shadows", "ShadowSet"]


def _log_softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (samples, classes); got shape {z.shape}")
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _labels(logits, y) -> np.ndarray:
    y = np.asarray(y)
    n, k = np.shape(logits)
    if y.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match the logits; got shape {y.shape}")
    if n and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}); got values from {y.min()} to {y.max()}")
    return y.astype(np.int64)


def confidence(logits, y) -> np.ndarray:
    """``p_y``, the softmax probability of each sample's label."""
    lp = _log_softmax(logits)
    return np.exp(lp[np.arange(len(lp)), _labels(lp, y)])


def entropy(logits) -> np.ndarray:
    """Shannon entropy (nats) of the softmax, per sample."""
    lp = _log_softmax(logits)
    return -(np.exp(lp) * lp).sum(-1)


def modified_entropy(logits, y) -> np.ndarray:
    """Song and Mittal's modified entropy ``-(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``:
    0 for a confident correct prediction, large for a confident wrong one."""
    lp = _log_softmax(logits)
    y = _labels(lp, y)
    p = np.exp(lp)
    log1m = np.log1p(-np.minimum(p, 1 - 1e-16))  # log(1 - p), finite at p = 1
    rows = np.arange(len(p))
    py, lpy = p[rows, y], lp[rows, y]
    other = -(p * log1m).sum(-1) + p[rows, y] * log1m[rows, y]
    return -(1 - py) * lpy + other


def logit_confidence(logits, y) -> np.ndarray:
    """LiRA's statistic ``log(p_y / (1 - p_y)) = z_y - logsumexp_{i != y} z_i``, computed without
    forming ``1 - p_y`` (stable for confident predictions)."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (samples, classes >= 2); got shape {z.shape}")
    y = _labels(z, y)
    rows = np.arange(len(z))
    zy = z[rows, y]
    rest = z.copy()
    rest[rows, y] = -np.inf
    m = rest.max(-1)
    return zy - (m + np.log(np.exp(rest - m[:, None]).sum(-1)))


def attack_features(logits, y) -> np.ndarray:
    """(samples, 3): confidence, entropy, modified entropy."""
    return np.stack([confidence(logits, y), entropy(logits), modified_entropy(logits, y)], -1)


def auc(positive, negative) -> float:
    """Area under the ROC curve of a score (higher = positive): the Mann-Whitney probability that
    a random positive outscores a random negative, ties counting one half."""
    pos, neg = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUC needs positives and negatives; got {len(pos)} and {len(neg)}")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ValueError("AUC scores contain NaN or inf")
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


@dataclasses.dataclass(frozen=True)
class AttackResult:
    name: str
    member_rate: float  # % of forget samples called "member"
    auc: float | None  # forget samples against held-out non-members, when given

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _balanced_subsample(n_a: int, n_b: int, cap: int, rng) -> tuple[np.ndarray, np.ndarray]:
    k = min(n_a, n_b, cap // 2)
    return rng.choice(n_a, k, replace=False), rng.choice(n_b, k, replace=False)


def feature_attack(member: tuple, nonmember: tuple, target: tuple, heldout: tuple | None = None,
                   *, classifier: str = "lr", max_fit: int = 4000, seed: int = 0) -> AttackResult:
    """The three-feature attack. Each argument is ``(logits, labels)``. ``classifier``: ``"lr"``
    (logistic regression, balanced class weights) or ``"svc"`` (RBF SVC, balanced). Members and
    non-members are subsampled to equal numbers, at most ``max_fit`` in all (an SVC's fit grows
    with the square of its samples)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if classifier not in ("lr", "svc"):
        raise ValueError(f"classifier={classifier!r}; accepted: 'lr', 'svc'")
    fm, fn, ft = (attack_features(*a) for a in (member, nonmember, target))
    if len(fm) == 0 or len(fn) == 0 or len(ft) == 0:
        raise ValueError("the attack needs members, non-members and forget samples; got "
                         f"{len(fm)}, {len(fn)} and {len(ft)}")
    rng = np.random.default_rng(seed)
    im, i_n = _balanced_subsample(len(fm), len(fn), max_fit, rng)
    x = np.concatenate([fm[im], fn[i_n]])
    lab = np.concatenate([np.ones(len(im)), np.zeros(len(i_n))])
    clf = (LogisticRegression(class_weight="balanced") if classifier == "lr"
           else SVC(kernel="rbf", class_weight="balanced"))
    model = make_pipeline(StandardScaler(), clf).fit(x, lab)
    rate = float(100.0 * model.predict(ft).mean())
    area = None
    if heldout is not None:
        fh = attack_features(*heldout)
        area = auc(model.decision_function(ft), model.decision_function(fh))
    return AttackResult(f"mia_{classifier}3", rate, area)


def threshold_attack(member: tuple, nonmember: tuple, target: tuple,
                     heldout: tuple | None = None) -> AttackResult:
    """A threshold on the loss ``-log p_y`` (lower loss = member), placed where the balanced
    accuracy on members against non-members is highest (ties: the lowest such threshold)."""
    def score(a):  # higher = more member-like
        return np.log(np.maximum(confidence(*a), 1e-300))

    sm, sn, st = score(member), score(nonmember), score(target)
    if len(sm) == 0 or len(sn) == 0 or len(st) == 0:
        raise ValueError("the attack needs members, non-members and forget samples")
    cands = np.unique(np.concatenate([sm, sn]))
    # "member" iff score >= t: TPR(t) = P(member score >= t), FPR(t) = P(non-member score >= t)
    sm_sorted, sn_sorted = np.sort(sm), np.sort(sn)
    tpr = 1 - np.searchsorted(sm_sorted, cands, side="left") / len(sm)
    fpr = 1 - np.searchsorted(sn_sorted, cands, side="left") / len(sn)
    t = cands[int(np.argmax(tpr - fpr))]
    rate = float(100.0 * np.mean(st >= t))
    area = auc(st, score(heldout)) if heldout is not None else None
    return AttackResult("mia_threshold", rate, area)


# ------------------------------------------------------------------------------------------------
# LiRA with shadow models
# ------------------------------------------------------------------------------------------------
def lira_scores(phi_target, phi_shadow, in_mask, *, global_variance: bool = True) -> np.ndarray:
    """Per-sample log-likelihood ratio ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)``.

    ``phi_target``: (n,) the evaluated model's logit-scaled confidences; ``phi_shadow``: (K, n)
    the shadow models'; ``in_mask``: (K, n) True where shadow k trained on sample i. Means are per
    sample; the standard deviations are pooled over all samples (LiRA's fixed-variance variant,
    the reliable one with few shadows) unless ``global_variance=False``."""
    phi_t = np.asarray(phi_target, np.float64)
    phi = np.asarray(phi_shadow, np.float64)
    m = np.asarray(in_mask, bool)
    if phi.ndim != 2 or m.shape != phi.shape or phi_t.shape != (phi.shape[1],):
        raise ValueError(f"shapes: phi_target {phi_t.shape}, phi_shadow {phi.shape}, in_mask "
                         f"{m.shape}; accepted: (n,), (K, n), (K, n)")
    n_in, n_out = m.sum(0), (~m).sum(0)
    if np.any(n_in == 0) or np.any(n_out == 0):
        raise ValueError(f"every sample needs in and out shadows; {int(np.sum(n_in == 0))} have "
                         f"no 'in' and {int(np.sum(n_out == 0))} no 'out' shadow (use more)")
    mu_in = np.where(m, phi, 0).sum(0) / n_in
    mu_out = np.where(~m, phi, 0).sum(0) / n_out
    dev_in, dev_out = np.where(m, phi - mu_in, 0), np.where(~m, phi - mu_out, 0)
    if global_variance:
        s_in = np.full_like(mu_in, np.sqrt((dev_in ** 2).sum() / max(m.sum() - 1, 1)))
        s_out = np.full_like(mu_out, np.sqrt((dev_out ** 2).sum() / max((~m).sum() - 1, 1)))
    else:
        s_in = np.sqrt((dev_in ** 2).sum(0) / np.maximum(n_in - 1, 1))
        s_out = np.sqrt((dev_out ** 2).sum(0) / np.maximum(n_out - 1, 1))
    s_in, s_out = np.maximum(s_in, 1e-6), np.maximum(s_out, 1e-6)

    def logpdf(x, mu, s):
        return -0.5 * ((x - mu) / s) ** 2 - np.log(s)  # the common -log(sqrt(2 pi)) cancels

    return logpdf(phi_t, mu_in, s_in) - logpdf(phi_t, mu_out, s_out)


@dataclasses.dataclass
class ShadowSet:
    """Shadow models' statistics on a candidate pool: ``phi`` (K, n), ``in_mask`` (K, n), and
    which candidates are forget samples (``is_forget``, the positives) and which held-out ones."""

    phi: np.ndarray
    in_mask: np.ndarray
    is_forget: np.ndarray
    key: str
    train_seconds: float  # the shadows' training time (0 when every one came from the cache)

    @property
    def n_shadows(self) -> int:
        return self.phi.shape[0]

    def attack(self, candidate_logits, candidate_y) -> AttackResult:
        """U-LiRA's AUC for a model, from its logits on the candidates (forget first, as built)."""
        phi_t = logit_confidence(candidate_logits, candidate_y)
        s = lira_scores(phi_t, self.phi, self.in_mask)
        rate = float(100.0 * np.mean(s[self.is_forget] > 0))
        return AttackResult("ulira", rate, auc(s[self.is_forget], s[~self.is_forget]))


def train_shadows(x_retain, y_retain, x_cand, y_cand, is_forget, *,
                  fit: Callable[[np.ndarray, np.ndarray, int], Callable[[np.ndarray], np.ndarray]],
                  n_shadows: int = 16, seed: int = 0, cache_dir: str | Path | None = None,
                  cache_key: dict | None = None, log=print) -> ShadowSet:
    """Train ``n_shadows`` shadow models and record each one's ``phi`` on the candidates.

    Shadow k trains (``fit(x, y, k)`` returns a logits function) on all retained samples plus its
    share of the candidates: each candidate is "in" for exactly ``n_shadows // 2`` shadows, chosen
    at random (from ``seed``) per candidate, so each shadow holds about half of them. The candidates are the forget samples and held-out samples no
    evaluated model trained on. The attack then asks, per candidate, whether a model's ``phi``
    looks like the in-shadows' or the out-shadows'; its AUC separates forget from held-out
    candidates, 0.5 for a model that never saw either (the retrained one).

    This is LiRA applied to unlearned models, with "out" shadows that are retrained models.
    Hayes et al.'s U-LiRA additionally runs the unlearning method on each in-shadow, so that the
    "in" side is the method's own output distribution; that costs one method run per shadow and
    method, and is not done here.

    Cached under ``cache_dir`` per ``cache_key`` (the dataset, model, recipe and seed: the caller's
    dict, hashed with the candidates and the shadow index): a shadow that is there is not
    retrained.
    """
    import time

    if n_shadows < 2:
        raise ValueError(f"n_shadows={n_shadows}; accepted: >= 2 (in and out for each sample)")
    x_cand, y_cand = np.asarray(x_cand), np.asarray(y_cand)
    is_forget = np.asarray(is_forget, bool)
    h = hashlib.sha256(json.dumps(cache_key or {}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(x_cand).tobytes())
    h.update(np.asarray(y_cand, np.int64).tobytes())
    h.update(np.asarray(is_forget).tobytes())
    h.update(f"{seed}".encode())
    key = h.hexdigest()[:16]
    folder = Path(cache_dir) / key if cache_dir is not None else None
    n = len(y_cand)
    # every candidate is "in" for exactly floor(K/2) shadows (a random choice of them per
    # candidate): with independent halves some candidates would have no "in" or no "out" shadow
    rng = np.random.default_rng([seed, n_shadows])
    all_masks = np.zeros((n_shadows, n), bool)
    for i in range(n):
        all_masks[rng.permutation(n_shadows)[: n_shadows // 2], i] = True
    phis, masks, spent = [], [], 0.0
    for k in range(n_shadows):
        mask = all_masks[k]
        path = folder / f"shadow-{k}.npz" if folder is not None else None
        if path is not None and path.exists():
            with np.load(path) as z:
                if np.array_equal(z["in_mask"], mask):
                    phis.append(z["phi"])
                    masks.append(mask)
                    continue
        t0 = time.perf_counter()
        logits_fn = fit(np.concatenate([x_retain, x_cand[mask]]),
                        np.concatenate([y_retain, y_cand[mask]]), k)
        phi = logit_confidence(logits_fn(x_cand), y_cand)
        spent += time.perf_counter() - t0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, phi=phi, in_mask=mask)
            tmp.replace(path)
        phis.append(phi)
        masks.append(mask)
        log(f"  shadow {k + 1}/{n_shadows} trained ({time.perf_counter() - t0:.1f}s)")
    return ShadowSet(np.stack(phis), np.stack(masks), is_forget, key, spent)
