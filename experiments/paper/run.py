"""Run one paper config: the original model, a retrained model per seed, every method of the
table over the seeds, and a result page with the paper's numbers beside ours.

    python experiments/paper/run.py table2_vgg --scale cpu --data runs/data/cifar100.npz \
        --out runs/paper/table2-vgg
    python experiments/paper/run.py table1_faces --scale tiny --out /tmp/t1   # seconds

Every step goes through the ``jit-jax`` command, and every step's output is a checkpoint folder
under ``--out`` (``original/``, ``rtrn-s<seed>/``, ``<method>-s<seed>/``) holding its
``result.json``. A finished step is never recomputed, so the runner resumes where it stopped and
a twin can run in parts (``--seeds``, ``--methods``). Each method is scored against the RTRN of
its own seed. With the config's ``paper_setting`` the methods run with the authors' settings
(``jit-jax unlearn --paper``; ``docs/protocol.md``).

``--model NAME --model-set KEY=VALUE ... --train-set KEY=VALUE ...`` run a table's task with
another model or recipe (the test tasks of ``--method auto`` on ResNet18 with BatchNorm)::

    python experiments/paper/run.py table2_vgg --scale cpu --data runs/data/cifar100.npz \
        --model resnet18 --model-set width=16 --out runs/paper/table2-r18 --methods bsln auto jit

``--per-class N|all --test-per-class N|all`` resize the twin's class-balanced subset: ``all`` runs
the twin's model and recipe on the paper's data (a scale probe)::

    python experiments/paper/run.py table2_vgg --scale cpu --data runs/data/cifar100.npz \
        --per-class all --test-per-class all --seeds 0 --out runs/paper/table2-vgg-full

Writes ``results.json`` (every run and the summary) and ``results.md``: per method, mean ± sd over
the seeds of D_r, D_f and MIA, the paper's numbers in the adjacent columns, and the retrain
distance (|D_r - RTRN| + |D_f - RTRN| + |MIA - RTRN| against the same seed's RTRN), then every
row and column more than 10 points from the paper, located by the same difference taken relative
to each side's own original (BSLN) and retrained model (RTRN) (:func:`differences`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from common import SCALES, Config, balanced_subset, gkt_rounds, paper_rows, tiny_dataset  # noqa: E402

from jit_jax.cli import main as cli_main  # noqa: E402

COLUMNS = (("retain_acc", "D_r"), ("forget_acc", "D_f"), ("mia", "MIA"))


def load_config(name: str, scale: str = "cpu") -> Config:
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}; accepted: {list(SCALES)}")
    helpers = ("common", "run", "figures", "pretrain_vit", "forget_outputs")  # not configs
    if not (HERE / f"{name}.py").is_file() or name in helpers:
        known = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in helpers)
        raise ValueError(f"unknown config {name!r}; accepted: {known}")
    return importlib.import_module(name).get_config(scale)


class StepFailed(RuntimeError):
    """A jit-jax command of the runner exited with an error (``message``: its last error line)."""

    def __init__(self, argv: list[str], rc: int, message: str):
        super().__init__(f"jit-jax {' '.join(argv)} failed with exit code {rc}: {message}")
        self.message = message


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for st in self.streams:
            st.write(text)
        return len(text)

    def flush(self):
        for st in self.streams:
            st.flush()


def _cli(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(_Tee(sys.stderr, err)):
        rc = cli_main(argv)
    if rc != 0:
        lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
        raise StepFailed(argv, rc, lines[-1][len("error:"):].strip() if lines else "")


def prepare_data(cfg: Config, out: Path, data: Path | None) -> Path:
    """The config's data as ``OUT/data.npz`` (a class-balanced subset, or generated for tiny).
    The subset's sizes are kept beside it (``data.json``): an output folder made with other sizes
    is refused, not reused."""
    path, sizes_path = out / "data.npz", out / "data.json"
    sizes = {"per_class": cfg.per_class, "test_per_class": cfg.test_per_class}
    if path.exists():
        if sizes_path.exists():
            made = json.loads(sizes_path.read_text())
            if made != sizes:
                raise ValueError(
                    f"{out} holds data made with {made} (None: all); this run asks for {sizes}: "
                    "use another --out, or the same --per-class/--test-per-class")
        return path
    if cfg.dataset.startswith("tiny:"):
        arrays = tiny_dataset(cfg.dataset.split(":", 1)[1])
    elif cfg.dataset.startswith("folder:"):
        from jit_jax.data import load_dataset

        if data is None:
            raise ValueError(f"config {cfg.name} at scale {cfg.scale} needs --data (a folder "
                             "with one sub-folder of images per class)")
        ds = load_dataset(f"folder:{data}", **cfg.load_opts)
        arrays = dict(x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                      y_test=ds.y_test, class_names=np.array(ds.class_names))
    else:
        if data is None:
            raise ValueError(f"config {cfg.name} at scale {cfg.scale} needs --data ({cfg.dataset})")
        with np.load(data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if not k.startswith(("src_", "idx_"))}
    arrays = balanced_subset(arrays, cfg.per_class, cfg.test_per_class)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "data.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(path)
    sizes_path.write_text(json.dumps(sizes) + "\n")
    return path


def method_sets(cfg: Config, method: str, n_train: int) -> dict:
    """The options the runner gives ``method`` over the authors' setting: the config's
    ``method_sets``, and for GKT at a scale smaller than the paper's the rounds of
    :func:`common.gkt_rounds` (unless the config sets them). BT's ViT teacher needs no option:
    it takes the backbone the original was fine-tuned from (``--vit-weights``) from the
    original's checkpoint, as RTRN does."""
    sets = dict(cfg.method_sets.get(method, {}))
    if method == "gkt" and "pseudo_batches" not in sets:
        rounds = gkt_rounds(cfg, n_train)
        if rounds is not None:
            sets["pseudo_batches"] = rounds
    return sets


def _opts(flag: str, opts: dict) -> list[str]:
    return [a for k, v in opts.items() for a in (flag, f"{k}={v}")]


PRETRAINED_VIT = ("vit_b16", "vit_s16", "vit_ti16")  # the paper's ViT starts from published weights


def run(cfg: Config, out: Path, *, data: Path | None = None, seeds=None, methods=None,
        vit_weights: Path | None = None, metrics: str = "paper", log=print) -> dict:
    out = Path(out).absolute()
    if vit_weights is not None:
        if not cfg.model.startswith("vit"):
            raise ValueError(f"--vit-weights is for the ViT configs; {cfg.name} at scale "
                             f"{cfg.scale} trains {cfg.model}")
        if not Path(vit_weights).is_file():
            raise FileNotFoundError(f"--vit-weights {vit_weights}: no such file")
    elif cfg.model in PRETRAINED_VIT:
        raise ValueError(f"{cfg.name} at scale {cfg.scale} fine-tunes {cfg.model} from the "
                         "published ImageNet-21k weights, as the paper does: pass --vit-weights "
                         "PATH (e.g. ViT-B_16.npz from the vit_jax release)")
    npz = prepare_data(cfg, out, data)
    with np.load(npz) as z:
        n_train = len(z["y_train"])
    orig = out / "original"
    t0 = time.perf_counter()
    if not (orig / "metadata.json").exists():
        resume = _interrupted(orig)
        log(f"[{cfg.name}] training the original ({cfg.model}){' (resuming)' if resume else ''}")
        _cli(["train", "--dataset", f"npz:{npz}", "--model", cfg.model, "--out", str(orig),
              "--no-progress", *(["--resume"] if resume else []),
              *_opts("--model-opt", cfg.model_opts),
              *_opts("--data-opt", cfg.data_opts),
              *(["--vit-weights", str(Path(vit_weights).absolute())] if vit_weights else []),
              *[a for k, v in cfg.train.items() for a in (f"--{k.replace('_', '-')}", str(v))]])
    seeds = list(cfg.seeds if seeds is None else seeds)
    methods = [m for m in (cfg.method_list() if methods is None else methods) if m != "rtrn"]
    for seed in seeds:
        rtrn = out / f"rtrn-s{seed}"
        if not (rtrn / "result.json").exists():
            resume = _interrupted(rtrn)
            log(f"[{cfg.name}] seed {seed}: rtrn{' (resuming)' if resume else ''}")
            _cli(["unlearn", "--checkpoint", str(orig), "--method", "rtrn", "--forget",
                  cfg.forget, "--seed", str(seed), "--out", str(rtrn), "--no-progress",
                  *(["--resume"] if resume else [])])
        for m in methods:
            d = out / f"{m}-s{seed}"
            failed = failed_path(out / f"{m}-s{seed}")
            if (d / "result.json").exists() or failed.exists():
                continue
            sets = method_sets(cfg, m, n_train)
            log(f"[{cfg.name}] seed {seed}: {m}"
                + (f" ({', '.join(f'{k}={v}' for k, v in sets.items())})" if sets else ""))
            argv = ["unlearn", "--checkpoint", str(orig), "--method", m, "--forget", cfg.forget,
                    "--seed", str(seed), "--rtrn", str(rtrn), "--out", str(d), "--no-progress",
                    *(["--paper"] if cfg.paper_setting else []),
                    *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
            run_step(argv, failed, {"method": m, "seed": seed},
                     log=lambda msg, m=m, seed=seed: log(f"[{cfg.name}] seed {seed}: {m} {msg}"))
    if metrics != "paper":
        rescore(cfg, out, seeds, ["rtrn", *methods], log=log)
    summary = summarise(cfg, out, seeds, ["rtrn", *methods])
    meta = json.loads((orig / "metadata.json").read_text())
    last = (meta.get("history") or [{}])[-1]
    summary["original"] = {"train_accuracy": last.get("train_accuracy"),
                           "test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
                           "train_time_s": meta.get("metrics", {}).get("train_time_s"),
                           "epochs": last.get("epoch")}
    summary["method_sets"] = {m: sets for m in methods if (sets := method_sets(cfg, m, n_train))}
    summary["differences"] = differences(summary)
    summary["wall_time_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(markdown(cfg, summary))
    return summary


#: the further metrics the runner adds with --metrics full (U-LiRA needs shadow models and is
#: left to experiments/privacy_table.py)
FURTHER = ["mia_lr3", "mia_svc3", "mia_threshold", "distances", "relearn"]


def rescore(cfg: Config, out: Path, seeds, methods, *, log=print) -> None:
    """The further metrics (``jit_jax.metrics.evaluate_unlearning``: the stronger attacks, output
    distances to the same seed's RTRN, relearn time) for every finished (method, seed), from its
    saved checkpoint, written to ``<method>-s<seed>/metrics.json``; one already there is kept."""
    from jit_jax import recipes
    from jit_jax.cli import load_run
    from jit_jax.data import parse_forget
    from jit_jax.metrics import evaluate_unlearning, reference_logits

    original = ds = prep = None
    for seed in seeds:
        ref = original_df = split = None
        for m in methods:
            d = out / f"{m}-s{seed}"
            if not (d / "result.json").exists() or (d / "metrics.json").exists():
                continue
            if original is None:
                original, _, ds = load_run(out / "original")
                prep = recipes.preprocess_fn(ds)
            if split is None:
                split = parse_forget(ds, cfg.forget, seed=seed)
                ref = reference_logits(load_run(out / f"rtrn-s{seed}")[0], ds, split,
                                       preprocess=prep)
                original_df = evaluate_unlearning(original, ds, split, method="bsln",
                                                  preprocess=prep).forget_acc
            log(f"[{cfg.name}] seed {seed}: further metrics of {m}")
            t = time.perf_counter()
            r = evaluate_unlearning(load_run(d)[0], ds, split, method=m, preprocess=prep,
                                    metrics=FURTHER, reference=ref,
                                    original_forget_acc=original_df)
            (d / "metrics.json").write_text(json.dumps(
                {**r.metrics, "seconds": time.perf_counter() - t}, indent=1) + "\n")


def run_step(argv: list[str], failed: Path, info: dict, *, log=print) -> bool:
    """Run one jit-jax command of a table or sweep. A command that fails (e.g. a method that
    diverges) is a result, not a crash: its error is written to ``failed`` (with ``info`` and the
    command), logged, and False returned; a resumed run sees the file and does not retry it."""
    try:
        _cli(argv)
        return True
    except StepFailed as e:
        log(f"failed: {e.message}")
        failed.write_text(json.dumps({**info, "error": e.message, "command": ["jit-jax", *argv]},
                                     indent=1) + "\n")
        return False


def _interrupted(out: Path) -> bool:
    """Whether the training that writes ``out`` (the original or a seed's RTRN) was interrupted
    with saved epochs, so that the runner continues it (``--resume``) instead of stopping."""
    from jit_jax.checkpoint import saved_epochs
    from jit_jax.cli import _state_dir_of

    return bool(saved_epochs(_state_dir_of(out)))


def failed_path(run_dir: Path) -> Path:
    """Where a failed run (a table's (method, seed), a sweep's grid point) writing ``run_dir`` is
    recorded: beside it, ``<run_dir>.failed.json``. The runner and the sweep skip it on resume
    (the runs are seeded, so a failure repeats); delete the file to try again."""
    return run_dir.with_name(run_dir.name + ".failed.json")


def summarise(cfg: Config, out: Path, seeds, methods) -> dict:
    try:
        paper = paper_rows(cfg.table)
    except ValueError:
        paper = {}
    runs, rows = [], []
    for m in methods:
        per_seed, failures = [], []
        for seed in seeds:
            failed = failed_path(out / f"{m}-s{seed}")
            if failed.exists():
                failures.append(json.loads(failed.read_text()))
                runs.append({"method": m, "seed": seed, "failed": failures[-1]["error"]})
                continue
            res = json.loads((out / f"{m}-s{seed}" / "result.json").read_text())
            if m == "rtrn":
                res["retrain_distance"] = 0.0
            mpath = out / f"{m}-s{seed}" / "metrics.json"
            res.pop("metrics", None)  # result.json's own (empty: the runner scores "paper")
            if mpath.exists():
                res["metrics"] = json.loads(mpath.read_text())
            per_seed.append(res)
            runs.append({"method": m, "seed": seed, **{k: res.get(k) for k in (
                "retain_acc", "forget_acc", "test_acc", "mia", "retrain_distance", "runtime",
                "compile_time")}})
        row = {"method": m, "n": len(per_seed)}
        if failures:
            row["failed"] = {f["seed"]: f["error"] for f in failures}
        for key in ("retain_acc", "forget_acc", "mia", "retrain_distance", "test_acc"):
            vals = [r[key] for r in per_seed if r.get(key) is not None]
            if not vals:
                continue
            row[key] = statistics.fmean(vals)
            row[key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        for key, _ in FURTHER_COLUMNS:
            vals = [r["metrics"].get(key) for r in per_seed if "metrics" in r]
            if key == "relearn_steps":  # not back within the budget: counted at the budget
                vals = [r["metrics"]["relearn_max_steps"] if r["metrics"].get(key) is None
                        else r["metrics"][key] for r in per_seed if "metrics" in r]
            vals = [v for v in vals if v is not None]
            if vals:
                row.setdefault("further", {})[key] = statistics.fmean(vals)
                row["further"][key + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["runtime_median"] = (statistics.median(r["runtime"] or 0.0 for r in per_seed)
                                 if per_seed else None)
        row["zero_shot"] = bool(per_seed[0].get("zero_shot")) if per_seed else None
        if m in paper:
            row["paper"] = {k: paper[m][k] for k in ("retain_acc", "retain_acc_sd",
                                                      "forget_acc", "forget_acc_sd", "mia",
                                                      "mia_sd")}
        rows.append(row)
    return {"config": {k: v for k, v in vars(cfg).items()}, "seeds": seeds, "rows": rows,
            "runs": runs}


def markdown(cfg: Config, summary: dict) -> str:
    head = ["Method"]
    for _, label in COLUMNS:
        head += [label, f"{label} (paper)"]
    head += ["Retrain dist.", "Runtime (s, median)", "Zero-shot"]
    lines = [f"# {cfg.name} ({cfg.table}, scale {cfg.scale})", "",
             f"Forget {cfg.forget}; model {cfg.model} {cfg.model_opts}; seeds {summary['seeds']}; "
             f"method settings: {'the authors (--paper)' if cfg.paper_setting else 'defaults'}; "
             f"images a class: {cfg.per_class or 'all'} training, "
             f"{cfg.test_per_class or 'all'} test.",
             "Paper: Foster et al., TMLR 2025 (numbers from experiments/paper/paper_tables.csv).",
             *[f"Over the authors' setting, {m}: "
               + ", ".join(f"{k}={v}" for k, v in sets.items())
               + (" (GKT's rounds scaled to the original's training, epochs x images, against "
                  "the paper's: experiments/paper/common.py, gkt_rounds)."
                  if m == "gkt" and "pseudo_batches" in sets and
                  "pseudo_batches" not in cfg.method_sets.get(m, {}) else ".")
               for m, sets in summary.get("method_sets", {}).items()],
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    def mean_sd(r, key):
        return f"{r[key]:.1f} ± {r[key + '_sd']:.1f}" if key in r else "failed"

    notes = []
    for r in summary["rows"]:
        name = r["method"]
        if r.get("failed"):
            seeds_failed = sorted(r["failed"])
            name += f" (n={r['n']})"
            notes.append(f"- {r['method']} failed on seed(s) {', '.join(map(str, seeds_failed))}: "
                         + "; ".join(sorted(set(r["failed"].values()))) +
                         (f"; the row is the mean of the other {r['n']}." if r["n"] else "."))
        cells = [name]
        for key, _ in COLUMNS:
            cells.append(mean_sd(r, key))
            p = r.get("paper")
            cells.append(f"{p[key]:.1f} ± {p[key + '_sd']:.1f}" if p else "")
        cells += [mean_sd(r, "retrain_distance"),
                  "" if r["runtime_median"] is None else f"{r['runtime_median']:.2f}",
                  {True: "yes", False: "no", None: ""}[r["zero_shot"]]]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n" + further_markdown(summary) + differences_markdown(summary)


#: the further metrics' columns on a page (``--metrics full``)
FURTHER_COLUMNS = (("mia_lr3", "MIA LR3"), ("mia_lr3_auc", "AUC LR3"), ("mia_svc3", "MIA SVC3"),
                   ("mia_svc3_auc", "AUC SVC3"), ("mia_threshold", "MIA thr."),
                   ("mia_threshold_auc", "AUC thr."), ("kl_forget", "KL forget"),
                   ("js_forget", "JS forget"), ("agree_forget", "Agree forget"),
                   ("js_test", "JS test"), ("agree_test", "Agree test"),
                   ("relearn_steps", "Relearn steps"))


def further_markdown(summary: dict) -> str:
    rows = [r for r in summary["rows"] if r.get("further")]
    if not rows:
        return ""
    lines = ["", "## Further metrics (`--metrics full`)", "",
             "Member rates and agreement in %; AUC: the attack's score on the forget samples "
             "against held-out non-members (0.5: indistinguishable); KL and JS (nats): the "
             "softmax outputs against the same seed's RTRN; relearn: SGD steps on the forget set "
             "(lr 0.01, batch 32, at most 100) until D_f is back at the original's "
             "(docs/metrics.md).", "",
             "| Method | " + " | ".join(h for _, h in FURTHER_COLUMNS) + " |",
             "|---|" + "---|" * len(FURTHER_COLUMNS)]
    for r in rows:
        f = r["further"]
        cells = []
        for key, _ in FURTHER_COLUMNS:
            if key not in f:
                cells.append("")
                continue
            fmt = "{:.3f}" if key.endswith("_auc") or key[:3] in ("kl_", "js_") else "{:.1f}"
            cells.append(fmt.format(f[key]) + " ± " + fmt.format(f[key + "_sd"]))
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def differences(summary: dict, threshold: float = 10.0) -> list[dict]:
    """Every (row, column) where our mean differs from the paper's by more than ``threshold``
    points, with the measurement that locates it: the same difference taken relative to each
    side's own BSLN (the original model) and RTRN (the retrained model). ``cause``:

    - ``"original"``: relative to its original the row is within ``threshold`` of the paper's,
      so the difference is the original model's (our BSLN against the paper's);
    - ``"retrained"``: relative to the retrained model it is within ``threshold`` (the twin's
      scale changes what retraining gives, and the row follows it);
    - ``"method"``: neither; the method itself behaves differently on the twin.
    """
    rows = {r["method"]: r for r in summary["rows"]}
    out = []
    for r in summary["rows"]:
        p = r.get("paper")
        if not p or not r.get("n", 1):
            continue
        for key, label in COLUMNS:
            diff = r[key] - p[key]
            if abs(diff) <= threshold:
                continue
            rel = {}
            for ref in ("bsln", "rtrn"):
                q = rows.get(ref)
                if q is not None and q.get("paper") and q.get("n", 1):
                    rel[ref] = (r[key] - q[key]) - (p[key] - q["paper"][key])
            cause = "method"
            if r["method"] == "bsln" or abs(rel.get("bsln", float("inf"))) <= threshold:
                cause = "original"
            elif r["method"] == "rtrn" or abs(rel.get("rtrn", float("inf"))) <= threshold:
                cause = "retrained"
            out.append({"method": r["method"], "column": label, "ours": r[key], "paper": p[key],
                        "difference": diff, "relative_to_bsln": rel.get("bsln"),
                        "relative_to_rtrn": rel.get("rtrn"), "cause": cause})
    return out


def differences_markdown(summary: dict, threshold: float = 10.0) -> str:
    diffs = differences(summary, threshold)
    if not diffs:
        return f"\nNo row differs from the paper by more than {threshold:g} points.\n"
    rows = {r["method"]: r for r in summary["rows"]}
    lines = ["", f"## Differences of more than {threshold:g} points from the paper", ""]
    for ref, what in (("bsln", "original (BSLN)"), ("rtrn", "retrained model (RTRN)")):
        r = rows.get(ref)
        if r and r.get("paper") and r.get("n", 1):
            gaps = ", ".join(f"{label} {r[k] - r['paper'][k]:+.1f}" for k, label in COLUMNS)
            lines.append(f"- Our {what} against the paper's: {gaps}.")
    o = summary.get("original") or {}
    if o.get("train_accuracy") is not None and o.get("test_accuracy") is not None:
        lines.append(f"- Our original's training accuracy in its last epoch (augmented, train "
                     f"mode) {o['train_accuracy']:.1f}%, test accuracy {o['test_accuracy']:.1f}%: "
                     f"a gap of {o['train_accuracy'] - o['test_accuracy']:+.1f} points. The MIA "
                     "attack can tell training samples from unseen ones only as far as the model "
                     "treats them differently.")
    lines += ["- Each difference below is also taken relative to each side's own BSLN and RTRN "
              "(ours - our BSLN, against the paper's row - the paper's BSLN). Cause "
              "\"original\": relative to its original the row is within "
              f"{threshold:g} points of the paper's, so the difference is the original model's; "
              "\"retrained\": the same relative to the retrained model; \"method\": neither, "
              "the method behaves differently on this twin (see the notes).", "",
              "| Method | Column | Ours | Paper | Difference | Rel. to BSLN | Rel. to RTRN | "
              "Cause |", "|---|---|---|---|---|---|---|---|"]

    def fmt(v):
        return "" if v is None else f"{v:+.1f}"

    for d in diffs:
        lines.append(f"| {d['method']} | {d['column']} | {d['ours']:.1f} | {d['paper']:.1f} | "
                     f"{d['difference']:+.1f} | {fmt(d['relative_to_bsln'])} | "
                     f"{fmt(d['relative_to_rtrn'])} | {d['cause']} |")
    return "\n".join(lines) + "\n"


#: the recipe fields jit-jax train takes as flags (the runner passes the config's ``train`` so)
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "momentum", "weight_decay",
               "augment")


def override(cfg: Config, model: str | None, model_set: list[str],
             train_set: list[str]) -> Config:
    """``cfg`` with another model and/or changed model options and training recipe (typed by the
    model's options and :class:`jit_jax.train.TrainConfig`; unknown names are errors)."""
    from jit_jax.models import option_types
    from jit_jax.options import parse_options
    from jit_jax.train import TrainConfig

    name = model or cfg.model
    types = option_types(name)
    opts = parse_options(model_set, "model", types)
    train = parse_options(train_set, "training", TrainConfig)
    for what, given, accepted in (("model", opts, sorted(types)),
                                  ("training", train, list(TRAIN_FLAGS))):
        unknown = sorted(set(given) - set(accepted))
        if unknown:
            raise ValueError(f"unknown {what} option(s) {unknown} for {name}; accepted: "
                             f"{accepted}")
    if not (model or opts or train):
        return cfg
    return cfg.replace(model=name, model_opts=opts if model else {**cfg.model_opts, **opts},
                       train={**cfg.train, **train})


def images_per_class(cfg: Config, train: str | None, test: str | None) -> Config:
    """``cfg`` with its class-balanced subset resized: ``train``/``test`` images a class, a
    positive integer or ``"all"`` (the whole split, e.g. the paper's data for a scale probe);
    ``None`` keeps the config's."""
    sizes = {}
    for key, value in (("per_class", train), ("test_per_class", test)):
        if value is None:
            continue
        if value == "all":
            sizes[key] = None
            continue
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--{key.replace('_', '-')} {value!r}: accepted: a positive integer "
                             "(images a class) or 'all'")
        sizes[key] = n
    return cfg.replace(**sizes) if sizes else cfg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a config module in experiments/paper (e.g. table2_vgg)")
    p.add_argument("--scale", default="cpu", choices=SCALES)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, help="the dataset .npz the config reads (cpu/paper)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--methods", nargs="+")
    p.add_argument("--vit-weights", type=Path,
                   help="ViT configs at the gpu/paper scale: the published ViT .npz to fine-tune")
    p.add_argument("--model", help="run the table's task with another model of the registry "
                   "(e.g. resnet18): its own output folder, the page names the model")
    p.add_argument("--model-set", nargs="*", default=[],
                   help="model options, KEY=VALUE (e.g. width=16); with --model they replace the "
                        "config's, without it they update them")
    p.add_argument("--train-set", nargs="*", default=[],
                   help="training recipe overrides, KEY=VALUE (jit-jax train's options, e.g. "
                        "epochs=20)")
    p.add_argument("--per-class", metavar="N|all",
                   help="training images a class (the config's class-balanced subset), or all")
    p.add_argument("--test-per-class", metavar="N|all",
                   help="test images a class, or all")
    p.add_argument("--metrics", default="paper", choices=["paper", "full"],
                   help="full: also the stronger attacks, output distances to RTRN and relearn "
                        "time, from each finished run's checkpoint (kept in metrics.json)")
    args = p.parse_args(argv)
    try:  # bad input (names, sizes, missing files): one clear line, exit code 2
        cfg = override(load_config(args.config, args.scale), args.model, args.model_set,
                       args.train_set)
        cfg = images_per_class(cfg, args.per_class, args.test_per_class)
        summary = run(cfg, args.out, data=args.data, seeds=args.seeds, methods=args.methods,
                      vit_weights=args.vit_weights, metrics=args.metrics)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    print(markdown(cfg, summary))
    print(f"wrote {args.out / 'results.md'} ({summary['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
