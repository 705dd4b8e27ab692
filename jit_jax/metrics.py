"""The paper's evaluation: D_r / D_f / test accuracy, the entropy MIA, runtime, retrain distance.

Protocol (the authors' code, ``forget_*_strategies.get_metric_scores``; see docs/protocol.md):

- full class: D_r acc on the **test** images of the retained classes, D_f acc on the **test** images
  of the forgotten class; sub-class: the same on the test images of the other fine classes / of the
  forgotten fine class, scored with the coarse labels; random: D_r acc on the full test set, D_f acc
  on the forgotten **training** samples.
- MIA: each sample's softmax entropy is the only feature; a logistic regression with balanced class
  weights is fit on retained training samples (member, 1) against the whole test set (non-member,
  0); the score is the percentage of forget training samples predicted "member". Lower means more
  forgotten; the target is the retrained model's score, not 0.
- retrain distance: |D_r - D_r^RTRN| + |D_f - D_f^RTRN| + |MIA - MIA^RTRN|, percentage points.

Accuracies are exact fractions over each set (the authors average per-batch accuracies, which differs
only in the last, smaller batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from flax import nnx
from sklearn.linear_model import LogisticRegression

from jit_jax.data import Dataset, normalize
from jit_jax.data.splits import ForgetSplit, evaluation_sets
from jit_jax.privacy import entropy
from jit_jax.train import accuracy, predict


def fit_mia_attack(member_logits: np.ndarray, nonmember_logits: np.ndarray) -> LogisticRegression:
    """The membership attack: a logistic regression (balanced class weights) on the softmax entropy
    alone, fitted to members (label 1) and non-members (label 0). Its decision point in nats is
    ``-intercept_[0] / coef_[0, 0]``."""
    if len(member_logits) == 0 or len(nonmember_logits) == 0:
        raise ValueError("MIA needs both member (retain) and non-member (test) samples")
    x = np.concatenate([entropy(member_logits), entropy(nonmember_logits)])[:, None]
    y = np.concatenate([np.ones(len(member_logits)), np.zeros(len(nonmember_logits))])
    return LogisticRegression(class_weight="balanced", solver="lbfgs").fit(x, y)


def mia_score(member_logits: np.ndarray, nonmember_logits: np.ndarray,
              target_logits: np.ndarray) -> float:
    """% of ``target`` samples an entropy-only logistic regression (balanced) calls "member"."""
    if len(target_logits) == 0:
        raise ValueError("MIA needs at least one forget sample")
    clf = fit_mia_attack(member_logits, nonmember_logits)
    return float(100.0 * clf.predict(entropy(target_logits)[:, None]).mean())


def retrain_distance(result: dict | UnlearnResult, rtrn: dict | UnlearnResult) -> float:
    """|dD_r| + |dD_f| + |dMIA| in percentage points against the retrained model."""
    a = result.to_dict() if isinstance(result, UnlearnResult) else result
    r = rtrn.to_dict() if isinstance(rtrn, UnlearnResult) else rtrn
    return float(sum(abs(a[k] - r[k]) for k in ("retain_acc", "forget_acc", "mia")))


def output_distances(logits, reference_logits) -> dict:
    """How far a model's outputs are from a reference model's (the retrained one) on the same
    samples: the mean KL divergence ``KL(p_ref || p)`` and Jensen-Shannon divergence (nats) of the
    softmax outputs, and the percentage of samples whose argmax agrees."""
    from jit_jax.privacy import _log_softmax

    a, b = _log_softmax(logits), _log_softmax(reference_logits)
    if a.shape != b.shape:
        raise ValueError(f"logits {a.shape} and reference logits {b.shape} differ in shape")
    if len(a) == 0:
        raise ValueError("output distances need at least one sample")
    pa, pb = np.exp(a), np.exp(b)
    kl = (pb * (b - a)).sum(-1)
    lm = np.log(0.5 * (pa + pb))
    js = 0.5 * (pa * (a - lm)).sum(-1) + 0.5 * (pb * (b - lm)).sum(-1)
    return {"kl": float(kl.mean()), "js": float(js.mean()),
            "agreement": float(100.0 * np.mean(a.argmax(-1) == b.argmax(-1)))}


@dataclasses.dataclass(frozen=True)
class RelearnConfig:
    """Relearn time's fine-tuning: SGD (momentum 0.9) at a constant ``lr`` on the forget set in
    batches of ``batch_size`` (reshuffled each pass, from ``seed``), at most ``max_steps``; D_f is
    checked after every step. ``tolerance``: points below the original model's D_f that count as
    returned."""

    lr: float = 0.01
    batch_size: int = 32
    max_steps: int = 100
    tolerance: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"RelearnConfig.lr={self.lr!r}; accepted: a finite number > 0")
        if self.batch_size < 1 or self.max_steps < 1:
            raise ValueError(f"RelearnConfig batch_size={self.batch_size}, max_steps="
                             f"{self.max_steps}; accepted: integers >= 1")


def relearn_steps(model: nnx.Module, x_forget: np.ndarray, y_forget: np.ndarray,
                  x_eval: np.ndarray, y_eval: np.ndarray, target_acc: float,
                  config: RelearnConfig = RelearnConfig()) -> int | None:
    """Steps of fine-tuning ``model`` (a copy; the model is not changed) on the forget set until
    its accuracy on ``(x_eval, y_eval)`` (the D_f set) reaches ``target_acc - tolerance``; 0 if it
    already does, None if ``max_steps`` are not enough. Inputs are model inputs (preprocessed)."""
    import jax.numpy as jnp
    import optax

    from jit_jax.train import cross_entropy

    if len(y_forget) == 0 or len(y_eval) == 0:
        raise ValueError("relearn time needs forget samples and an evaluation set")
    goal = target_acc - config.tolerance
    if accuracy(predict(model, x_eval), y_eval) >= goal:
        return 0
    m = nnx.clone(model)
    m.train()
    opt = nnx.Optimizer(m, optax.sgd(config.lr, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt, x, y):
        grads = nnx.grad(lambda m: cross_entropy(m(x), y).mean())(m)
        opt.update(m, grads)

    rng = np.random.default_rng(config.seed)
    n, b = len(y_forget), min(config.batch_size, len(y_forget))
    order, pos = rng.permutation(n), 0
    for k in range(1, config.max_steps + 1):
        if pos + b > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + b]
        pos += b
        step(m, opt, jnp.asarray(x_forget[idx], jnp.float32), jnp.asarray(y_forget[idx]))
        if accuracy(predict(m, x_eval), y_eval) >= goal:
            return k
    return None


@dataclasses.dataclass
class UnlearnResult:
    """One method on one forget request: the paper's columns, serialisable to JSON."""

    method: str
    task: str  # class | subclass | random
    forget: str  # the request, e.g. "class:3 (3)"
    retain_acc: float
    forget_acc: float
    test_acc: float
    mia: float
    runtime: float | None = None  # seconds, the method alone, compilation excluded
    compile_time: float | None = None
    zero_shot: bool = False
    retrain_distance: float | None = None
    seed: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    #: the further metrics (``evaluate_unlearning(metrics=...)``), flat: name -> number or None
    metrics: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> UnlearnResult:
        return cls(**d)


#: further metrics by name (``evaluate_unlearning(metrics=...)``); "full" is all of them whose
#: inputs are given (``ulira`` needs shadows, ``distances`` a reference, ``relearn`` the original's
#: D_f)
METRICS = ("mia_lr3", "mia_svc3", "mia_threshold", "distances", "relearn", "ulira")
METRIC_PRESETS = {"paper": (), "full": METRICS}


def metric_names(metrics) -> tuple[tuple[str, ...], bool]:
    """(names, explicit): the requested metrics; ``explicit`` when listed by name (then a missing
    input is an error rather than a skip)."""
    if isinstance(metrics, str):
        if metrics in METRIC_PRESETS:
            return METRIC_PRESETS[metrics], False
        metrics = [m for m in metrics.split(",") if m]
    names = tuple(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; accepted: {sorted(METRIC_PRESETS)} or "
                         f"names from {list(METRICS)}")
    return names, True


def heldout_nonmembers(ds: Dataset, split: ForgetSplit, seed: int = 0) -> np.ndarray:
    """Indices into the test set of the held-out non-members the attacks' AUC compares the forget
    samples with: the test images of the forgotten class or sub-class (class/subclass), or a
    seeded random ``min(n_forget, n_test // 2)`` of the test set (random). The attacks are fit on
    the other test images, so these are never seen by the fit."""
    sets = evaluation_sets(ds, split)
    if split.kind != "random":
        return np.asarray(sets["forget"].idx, np.int64)
    n_test = len(ds.y_test)
    k = min(split.n_forget, n_test // 2)
    return np.sort(np.random.default_rng([seed, 7]).choice(n_test, k, replace=False))


def ulira_candidates(ds: Dataset, split: ForgetSplit, seed: int = 0):
    """U-LiRA's candidate pool: the forget training images, then the held-out test images
    (:func:`heldout_nonmembers`); returns ``(x, y, is_forget)`` (uint8 images, targets)."""
    sets = evaluation_sets(ds, split)
    held = heldout_nonmembers(ds, split, seed)
    x = np.concatenate([sets["forget_train"].x, ds.x_test[held]])
    y = np.concatenate([sets["forget_train"].y, np.asarray(ds.test_targets[held], np.int32)])
    is_forget = np.arange(len(y)) < len(sets["forget_train"])
    return x, y, is_forget


def evaluate_unlearning(model: nnx.Module, ds: Dataset, split: ForgetSplit, *, method: str,
                        runtime: float | None = None, compile_time: float | None = None,
                        zero_shot: bool = False, seed: int | None = None,
                        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                        batch_size: int = 500, extra: dict | None = None,
                        metrics="paper", reference: nnx.Module | dict | None = None,
                        original_forget_acc: float | None = None,
                        relearn: RelearnConfig | None = None, shadows=None) -> UnlearnResult:
    """Score ``model`` on ``split`` of ``ds`` by the protocol above, plus ``metrics``:

    - ``"paper"`` (default): the paper's columns only;
    - ``"full"``: also every further metric whose inputs are given (the others are listed in
      ``result.metrics["skipped"]``);
    - a list (or comma-separated names) from :data:`METRICS`: those, an error if an input is
      missing.

    Further metrics (stored flat in ``result.metrics``; rates and agreement in %, AUC in [0, 1]):

    - ``mia_lr3`` / ``mia_svc3``: the three-feature attack (:func:`jit_jax.privacy.feature_attack`)
      with a logistic regression / an RBF SVC: ``<name>`` the forget samples' member rate,
      ``<name>_auc`` forget samples against held-out non-members (:func:`heldout_nonmembers`);
    - ``mia_threshold``: the calibrated loss threshold, rate and AUC alike;
    - ``distances`` (needs ``reference``, the retrained model or :func:`reference_logits` of it):
      ``kl_forget``, ``js_forget``, ``agree_forget`` on the forget training samples and
      ``kl_test``, ``js_test``, ``agree_test`` on the test set (:func:`output_distances`);
    - ``relearn`` (needs ``original_forget_acc``, the untouched model's D_f): ``relearn_steps``,
      steps of fine-tuning on the forget set until D_f is back (:func:`relearn_steps`, settings
      ``relearn``), None when ``max_steps`` did not suffice;
    - ``ulira`` (needs ``shadows``, a :class:`jit_jax.privacy.ShadowSet` from
      :func:`train_ulira_shadows` for this split): ``ulira`` and ``ulira_auc``.

    ``preprocess`` maps uint8 NHWC images to model inputs (default: the dataset's normalisation).
    """
    from jit_jax import privacy

    names, explicit = metric_names(metrics)
    prep = preprocess or (lambda x: normalize(x, ds.mean, ds.std))
    sets = evaluation_sets(ds, split)

    def logits(x):
        return predict(model, prep(x), batch_size=batch_size)

    lg = {k: logits(sets[k].x) for k in ("retain", "forget", "test", "retain_train",
                                         "forget_train")}
    for name, v in lg.items():
        bad = int(np.sum(~np.all(np.isfinite(v), axis=-1)))
        if bad:
            raise FloatingPointError(
                f"{method}: the model's outputs contain NaN or inf on {bad} of {len(v)} "
                f"'{name}' samples; the model has diverged and cannot be scored")
    result = UnlearnResult(
        method=method,
        task=split.kind,
        forget=split.description,
        retain_acc=accuracy(lg["retain"], sets["retain"].y),
        forget_acc=accuracy(lg["forget"], sets["forget"].y),
        test_acc=accuracy(lg["test"], sets["test"].y),
        mia=mia_score(lg["retain_train"], lg["test"], lg["forget_train"]),
        runtime=runtime,
        compile_time=compile_time,
        zero_shot=zero_shot,
        seed=seed,
        extra=dict(extra or {}),
    )
    if not names:
        return result
    needs = {"distances": (reference, "reference= (the retrained model, or --rtrn)"),
             "relearn": (original_forget_acc, "original_forget_acc= (the untouched model's D_f)"),
             "ulira": (shadows, "shadows= (train_ulira_shadows; --shadows N)")}
    skipped = []
    for name in names:
        value, what = needs.get(name, (True, ""))
        if value is None:
            if explicit:
                raise ValueError(f"metric {name!r} needs {what}")
            skipped.append(name)
    todo = [n for n in names if n not in skipped]
    out: dict = {}
    test_idx = np.arange(len(ds.y_test))
    held = heldout_nonmembers(ds, split)
    fit_idx = np.setdiff1d(test_idx, held)
    member = (lg["retain_train"], sets["retain_train"].y)
    nonmember = (lg["test"][fit_idx], sets["test"].y[fit_idx])
    target = (lg["forget_train"], sets["forget_train"].y)
    heldout = (lg["test"][held], sets["test"].y[held])
    for name in todo:
        if name in ("mia_lr3", "mia_svc3"):
            a = privacy.feature_attack(member, nonmember, target, heldout, classifier=name[4:-1])
        elif name == "mia_threshold":
            a = privacy.threshold_attack(member, nonmember, target, heldout)
        elif name == "ulira":
            x_c, y_c, _ = ulira_candidates(ds, split)
            a = shadows.attack(logits(x_c), y_c)
        else:
            a = None
        if a is not None:
            out[name], out[name + "_auc"] = a.member_rate, a.auc
        elif name == "distances":
            ref = reference if isinstance(reference, dict) else reference_logits(
                reference, ds, split, preprocess=prep, batch_size=batch_size)
            for where, key in (("forget", "forget_train"), ("test", "test")):
                d = output_distances(lg[key], ref[key])
                out.update({f"kl_{where}": d["kl"], f"js_{where}": d["js"],
                            f"agree_{where}": d["agreement"]})
        elif name == "relearn":
            cfg = relearn or RelearnConfig()
            out["relearn_steps"] = relearn_steps(
                model, prep(sets["forget_train"].x), sets["forget_train"].y, prep(sets["forget"].x),
                sets["forget"].y, original_forget_acc, cfg)
            out["relearn_max_steps"] = cfg.max_steps
    if skipped:
        out["skipped"] = skipped
    result.metrics = out
    return result


def reference_logits(model: nnx.Module, ds: Dataset, split: ForgetSplit, *,
                     preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                     batch_size: int = 500) -> dict:
    """A reference model's (the retrained one's) logits on the forget training samples and the
    test set, for ``evaluate_unlearning(reference=...)`` across many methods."""
    prep = preprocess or (lambda x: normalize(x, ds.mean, ds.std))
    sets = evaluation_sets(ds, split)
    return {k: predict(model, prep(sets[k].x), batch_size=batch_size)
            for k in ("forget_train", "test")}


def train_ulira_shadows(ds: Dataset, split: ForgetSplit, spec, train_config, *, n_shadows: int = 16,
                        seed: int = 0, cache_dir: str | Path | None = "runs/shadows",
                        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                        init_weights: str | None = None, log=print):
    """U-LiRA's shadow models for ``split``: ``spec`` trained with ``train_config`` (shadow k with
    seed ``train_config.seed + 1000 + k``) on the retained training samples plus a random half of
    :func:`ulira_candidates`; each starts from ``init_weights`` (all but the head) when the
    original was fine-tuned from pretrained ViT weights, as RTRN does. Cached per (dataset,
    model, recipe, initial weights, split, seed) under ``cache_dir`` (see
    :func:`jit_jax.privacy.train_shadows`)."""
    from jit_jax import privacy
    from jit_jax.train import train

    prep = preprocess or (lambda x: normalize(x, ds.mean, ds.std))
    sets = evaluation_sets(ds, split)
    x_c, y_c, is_forget = ulira_candidates(ds, split, seed)
    if init_weights is not None and not Path(init_weights).is_file():
        raise FileNotFoundError(f"the shadows start from the weights the original was fine-tuned "
                                f"from, {init_weights!r}, and that file is missing")

    def fit(x, y, k):
        cfg = train_config.replace(seed=train_config.seed + 1000 + k)
        m = spec.build(seed=cfg.seed)
        if init_weights is not None:
            from jit_jax.models.vit import load_vit_npz

            load_vit_npz(m, init_weights, load_head=False)
        train(m, prep(x), y, cfg, progress=False)
        return lambda xs: predict(m, prep(xs))

    key = {"dataset": ds.name, "n_train": len(ds.y_train), "target": ds.target,
           "model": spec.to_dict(), "recipe": train_config.to_dict(),
           "split": split.description}
    if init_weights is not None:  # by content: a file replaced at the same path is a new start
        import hashlib

        with open(init_weights, "rb") as f:
            key["init_weights_sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    return privacy.train_shadows(sets["retain_train"].x, sets["retain_train"].y, x_c, y_c,
                                 is_forget, fit=fit, n_shadows=n_shadows, seed=seed,
                                 cache_dir=cache_dir, cache_key=key, log=log)


def sanity_warnings(result: UnlearnResult, original: UnlearnResult, num_classes: int) -> list[str]:
    """Warnings a user should see after an unlearning run (empty when nothing looks wrong).

    - the forget set untouched: D_f moved by less than one point from the original model's (on a
      small forget set: not a single prediction changed), so the run did nothing visible;
    - a collapsed model: D_r accuracy below twice chance (100 / num_classes) or below half of the
      original model's.

    Each warning names the options to change. ``original`` is the untouched model scored on the
    same request (``evaluate_unlearning(original_model, ..., method="bsln")``).
    """
    out = []
    m = result.method
    if m == "bsln":
        return out
    tune = (" (JiT: raise --set lr=... in ~2x steps or --set sigma=..., or --set passes=N; "
            "`jit-jax tune` searches them on a validation split)" if m == "jit" else
            " (the method's --set options: a larger lr or more epochs)")
    if abs(result.forget_acc - original.forget_acc) < 1.0:
        out.append(f"{m} left the forget set untouched: D_f accuracy {result.forget_acc:.1f}% vs "
                   f"{original.forget_acc:.1f}% before; change the method's step size{tune}")
    chance = 100.0 / num_classes
    floor = max(2 * chance, 0.5 * original.retain_acc)
    if result.retain_acc < floor:
        lower = (" lower --set lr=... (or --set sigma=...), or run `jit-jax tune`" if m == "jit"
                 else " lower the method's lr or its number of epochs (--set)")
        out.append(f"{m} collapsed the model: D_r accuracy {result.retain_acc:.1f}% (before "
                   f"{original.retain_acc:.1f}%, chance {chance:.1f}%);{lower}")
    return out


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
COLUMNS = ("method", "retain_acc", "forget_acc", "test_acc", "mia", "retrain_distance",
           "runtime", "zero_shot")
HEADERS = ("Method", "D_r acc", "D_f acc", "Test acc", "MIA", "Retrain dist.", "Runtime (s)",
           "Zero-shot")
#: the further metrics' columns (shown when a result has them): key, header
METRIC_COLUMNS = (("mia_lr3", "MIA LR3"), ("mia_lr3_auc", "AUC LR3"), ("mia_svc3", "MIA SVC3"),
                  ("mia_svc3_auc", "AUC SVC3"), ("mia_threshold", "MIA thr."),
                  ("mia_threshold_auc", "AUC thr."), ("ulira", "U-LiRA member"),
                  ("ulira_auc", "U-LiRA AUC"), ("kl_forget", "KL forget"),
                  ("js_forget", "JS forget"), ("agree_forget", "Agree forget"),
                  ("kl_test", "KL test"), ("js_test", "JS test"), ("agree_test", "Agree test"),
                  ("relearn_steps", "Relearn steps"))


def summarize(results: Sequence[UnlearnResult | dict]) -> list[dict]:
    """Group results by method (in first-seen order): mean and sd of every numeric column."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        d = r.to_dict() if isinstance(r, UnlearnResult) else dict(r)
        rows.setdefault(d["method"], []).append(d)
    out = []
    for method, ds_ in rows.items():
        row = {"method": method, "n": len(ds_), "zero_shot": bool(ds_[0].get("zero_shot"))}
        for c in ("retain_acc", "forget_acc", "test_acc", "mia", "retrain_distance", "runtime",
                  "compile_time"):
            vals = [d[c] for d in ds_ if d.get(c) is not None and not _isnan(d[c])]
            if vals:
                row[c] = float(np.mean(vals))
                row[c + "_sd"] = float(np.std(vals))
        for c, _ in METRIC_COLUMNS:
            mets = [d.get("metrics") or {} for d in ds_]
            if c == "relearn_steps":  # not relearned within the budget: counted at the budget
                vals = [m.get("relearn_max_steps") if m.get(c) is None else m[c]
                        for m in mets if "relearn_max_steps" in m]
                if any(m.get(c) is None for m in mets if "relearn_max_steps" in m):
                    row[c + "_capped"] = sum(m.get(c) is None for m in mets
                                             if "relearn_max_steps" in m)
            else:
                vals = [m[c] for m in mets if m.get(c) is not None and not _isnan(m[c])]
            if vals:
                row[c] = float(np.mean(vals))
                row[c + "_sd"] = float(np.std(vals))
        out.append(row)
    return out


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _cell(row: dict, col: str) -> str:
    if col == "method":
        return str(row["method"])
    if col == "zero_shot":
        return "yes" if row.get("zero_shot") else "no"
    if col not in row:
        return "-"
    v, sd = row[col], row.get(col + "_sd")
    fmt = ("{:.2f}" if col == "runtime" else
           "{:.3f}" if col.endswith("_auc") or col[:3] in ("kl_", "js_") else "{:.1f}")
    s = fmt.format(v)
    if sd is not None and row.get("n", 1) > 1:
        s += " ± " + fmt.format(sd)
    if row.get(col + "_capped"):
        s += f" ({row[col + '_capped']} at the cap)"
    return s


def markdown_table(results: Sequence[UnlearnResult | dict]) -> str:
    """The paper's layout as a markdown table (mean ± sd over repeats of each method)."""
    rows = summarize(results)
    extra = [(k, h) for k, h in METRIC_COLUMNS if any(k in r for r in rows)]
    cols = COLUMNS + tuple(k for k, _ in extra)
    heads = HEADERS + tuple(h for _, h in extra)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, c) for c in cols) + " |")
    return "\n".join(lines)


def write_results(path: str | Path, results: Sequence[UnlearnResult | dict], *,
                  context: dict | None = None) -> None:
    """Write ``results`` (each run and the summary) as JSON, and the markdown table beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = [r.to_dict() if isinstance(r, UnlearnResult) else r for r in results]
    payload = {"context": context or {}, "runs": runs, "summary": summarize(results)}
    path.write_text(json.dumps(payload, indent=2))
    path.with_suffix(".md").write_text(markdown_table(results) + "\n")
