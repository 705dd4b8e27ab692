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
from jit_jax.train import accuracy, predict


def entropy(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of softmax(logits), per row, computed stably."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(-1)


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> UnlearnResult:
        return cls(**d)


def evaluate_unlearning(model: nnx.Module, ds: Dataset, split: ForgetSplit, *, method: str,
                        runtime: float | None = None, compile_time: float | None = None,
                        zero_shot: bool = False, seed: int | None = None,
                        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                        batch_size: int = 500, extra: dict | None = None) -> UnlearnResult:
    """Score ``model`` on ``split`` of ``ds`` by the protocol above.

    ``preprocess`` maps uint8 NHWC images to model inputs (default: the dataset's normalisation).
    """
    prep = preprocess or (lambda x: normalize(x, ds.mean, ds.std))
    sets = evaluation_sets(ds, split)

    def logits(name):
        return predict(model, prep(sets[name].x), batch_size=batch_size)

    lg = {k: logits(k) for k in ("retain", "forget", "test", "retain_train", "forget_train")}
    for name, v in lg.items():
        bad = int(np.sum(~np.all(np.isfinite(v), axis=-1)))
        if bad:
            raise FloatingPointError(
                f"{method}: the model's outputs contain NaN or inf on {bad} of {len(v)} "
                f"'{name}' samples; the model has diverged and cannot be scored")
    return UnlearnResult(
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
    fmt = "{:.2f}" if col == "runtime" else "{:.1f}"
    s = fmt.format(v)
    if sd is not None and row.get("n", 1) > 1:
        s += " ± " + fmt.format(sd)
    return s


def markdown_table(results: Sequence[UnlearnResult | dict]) -> str:
    """The paper's layout as a markdown table (mean ± sd over repeats of each method)."""
    rows = summarize(results)
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, c) for c in COLUMNS) + " |")
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
