"""What the models of one runner output on the forget set's training images: the original, a
method's model, and for BT the incompetent teacher it distilled from (built as BT builds it).

    python experiments/paper/forget_outputs.py runs/paper/table2-vit-pre --method bt --seed 0

Per model: accuracy on the forget images (their label: the class, or the super-class on a
sub-class task), mean probability of that label, mean top probability, mean entropy (against
log C for a uniform output), the three most predicted classes, and for BT's student its
KL(teacher || student) and how often its top class is the teacher's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def top_classes(top: np.ndarray, names, k: int = 3) -> list[tuple[str, int]]:
    """The ``k`` most predicted classes among the argmax predictions ``top``, with counts (ties
    in class order)."""
    classes, counts = np.unique(top, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:k]
    return [(str(names[classes[i]]), int(counts[i])) for i in order]


def describe(logits: np.ndarray, y: np.ndarray, names, teacher: np.ndarray | None = None) -> dict:
    from scipy.special import log_softmax

    from jit_jax.privacy import confidence, entropy

    lp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    top = logits.argmax(-1)
    out = {"accuracy": 100 * float(np.mean(top == y)),
           "p_label": float(np.mean(confidence(logits, y))),
           "p_top": float(np.mean(np.exp(lp.max(-1)))),
           "entropy": float(np.mean(entropy(logits))),
           "top_classes": top_classes(top, names)}
    if teacher is not None:
        lt = log_softmax(np.asarray(teacher, np.float64), axis=-1)
        out["kl_teacher"] = float(np.mean((np.exp(lt) * (lt - lp)).sum(-1)))
        out["agree_teacher"] = 100 * float(np.mean(top == teacher.argmax(-1)))
    return out


def attack_power(member_logits: np.ndarray, nonmember_logits: np.ndarray,
                 forget_logits: np.ndarray) -> dict:
    """The paper's membership attack on one model: its MIA on the forget set, how well it tells
    its own training members (retained training images) from non-members (test images) as a
    ROC AUC (0.5: no better than chance, so the MIA's value says nothing about forgetting), and
    the softmax entropy (mean, sd) of each group, and its operating point: the % of the
    non-members it calls "member" (``fpr``, what the MIA reads on forget images that the model
    treats exactly as unseen ones) and of the members (``tpr``), and its decision point in nats
    (``threshold``: lower entropy reads "member" when members are the more certain)."""
    from sklearn.metrics import roc_auc_score

    from jit_jax.metrics import fit_mia_attack, mia_score
    from jit_jax.privacy import entropy

    clf = fit_mia_attack(member_logits, nonmember_logits)
    h = {k: entropy(v) for k, v in (("member", member_logits), ("nonmember", nonmember_logits),
                                      ("forget", forget_logits))}
    score = clf.predict_proba(np.concatenate([h["member"], h["nonmember"]])[:, None])[:, 1]
    auc = roc_auc_score(np.r_[np.ones(len(h["member"])), np.zeros(len(h["nonmember"]))], score)
    called = {k: 100.0 * float(clf.predict(h[k][:, None]).mean()) for k in ("member", "nonmember")}
    return {"mia": mia_score(member_logits, nonmember_logits, forget_logits), "auc": float(auc),
            "tpr": called["member"], "fpr": called["nonmember"],
            "threshold": float(-clf.intercept_[0] / clf.coef_[0, 0]),
            **{f"entropy_{k}": (float(v.mean()), float(v.std())) for k, v in h.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", help="a runner output folder (holds original/ and METHOD-sSEED/)")
    ap.add_argument("--method", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forget", help="the forget request (default: the runner's results.json); "
                    "for folders of `jit-jax unlearn --out runs/X/METHOD-sSEED` runs")
    ap.add_argument("--attack", action="store_true",
                    help="also the membership attack's power on each model (attack_power)")
    ap.add_argument("--test-share", action="store_true",
                    help="also, per model, the share of every test image (and of the retained "
                         "classes' test images) predicted as the forget label, and the test "
                         "set's most predicted classes")
    args = ap.parse_args(argv)
    from jit_jax import checkpoint, recipes, unlearn
    from jit_jax.cli import load_run
    from jit_jax.data import parse_forget
    from jit_jax.models import ModelSpec
    from jit_jax.train import predict
    from jit_jax.unlearn.distill import incompetent_teacher

    runs = Path(args.runs)
    done = runs / f"{args.method}-s{args.seed}"
    if not (done / "result.json").is_file():
        ap.error(f"{done} holds no finished run (result.json)")
    if args.forget is not None:
        forget = args.forget
    elif (runs / "results.json").is_file():
        forget = json.loads((runs / "results.json").read_text())["config"]["forget"]
    else:
        ap.error(f"{runs}/results.json is missing (the runner writes it with the forget "
                 "request): name the request with --forget")
    model, meta, ds = load_run(runs / "original")
    split = parse_forget(ds, forget, seed=args.seed)
    req = unlearn.Request(model, ds, split, ModelSpec.from_dict(meta["model"]), None,
                          seed=args.seed, preprocess=recipes.preprocess_fn(ds),
                          init_weights=(meta.get("init") or {}).get("vit_weights"))
    x, y = req.forget_inputs().astype(np.float32), ds.train_targets[split.forget_idx]
    names = ds.target_names
    rows = {"original": describe(predict(model, x), y, names)}
    teacher = None
    if args.method == "bt":
        opts = json.loads((done / "result.json").read_text())["extra"]["options"]
        kind = opts.get("teacher", "fresh")
        teacher = predict(incompetent_teacher(req, kind, opts.get("teacher_weights")), x)
        rows[f"teacher ({kind})"] = describe(teacher, y, names)
    models = {"original": model, done.name: checkpoint.restore(done)[0]}
    rtrn = runs / f"rtrn-s{args.seed}"
    if (args.attack or args.test_share) and rtrn.is_dir() and done != rtrn:
        models[rtrn.name] = checkpoint.restore(rtrn)[0]  # the retrained model, scored beside
    rows[done.name] = describe(predict(models[done.name], x), y, names, teacher)

    print(f"{forget}, seed {args.seed}: {len(y)} forget training images, {ds.num_classes} classes "
          f"(uniform entropy {np.log(ds.num_classes):.2f})")
    for name, r in rows.items():
        extra = (f"  KL(teacher||it) {r['kl_teacher']:.3f}, top class the teacher's "
                 f"{r['agree_teacher']:.0f}%" if "kl_teacher" in r else "")
        print(f"{name:24s} accuracy {r['accuracy']:5.1f}%  p(label) {r['p_label']:.3f}  "
              f"p(top) {r['p_top']:.3f}  entropy {r['entropy']:.2f}  most predicted "
              f"{r['top_classes']}{extra}")
    if args.test_share:
        label = int(np.bincount(y).argmax())  # the forget set's label (class or super-class)
        xt = req.preprocess(ds.x_test).astype(np.float32)
        keep = ds.test_targets != label
        for name, m in models.items():
            top = predict(m, xt).argmax(-1)
            print(f"{name:24s} test images predicted {names[label]!r}: "
                  f"{100 * np.mean(top == label):.1f}% of all, "
                  f"{100 * np.mean(top[keep] == label):.1f}% of the other labels'; most predicted "
                  f"{top_classes(top, names)} of {len(top)}")
    if args.attack:
        from jit_jax.data.splits import evaluation_sets

        sets = evaluation_sets(ds, split)
        for name, m in models.items():
            lg = {k: predict(m, req.preprocess(sets[k].x)) for k in
                  ("retain_train", "test", "forget_train")}
            a = attack_power(lg["retain_train"], lg["test"], lg["forget_train"])
            print(f"{name:24s} attack: MIA {a['mia']:.1f}, members against non-members AUC "
                  f"{a['auc']:.3f}, calls {a['tpr']:.1f}% of members and {a['fpr']:.1f}% of "
                  f"non-members 'member' (decision point {a['threshold']:.2f} nats); "
                  f"entropy mean (sd): members {a['entropy_member'][0]:.3f} "
                  f"({a['entropy_member'][1]:.3f}), non-members {a['entropy_nonmember'][0]:.3f} "
                  f"({a['entropy_nonmember'][1]:.3f}), forget {a['entropy_forget'][0]:.3f} "
                  f"({a['entropy_forget'][1]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
