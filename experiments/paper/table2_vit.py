"""Table 2 (a), CIFAR-100, full-class forgetting of "rocket", ViT, every method of the table,
3 seeds.

Paper scale: ViT-B/16 from the official ImageNet-21k weights (``run.py --vit-weights PATH``, the
``.npz`` through ``models.load_vit_npz``), fine-tuned 8 epochs on CIFAR upsampled to 224x224
(``--data-opt image_size=224``, so JiT's noise is added at 224x224 as in the authors' code). CPU twin: a
small ViT trained from scratch at 32x32 on 100 / 50 images per class (no pretrained weights can be
downloaded here). Measured (docs/results/paper/table2_vit-cpu.md, 2026-12-03): the original
reaches 22.2% test accuracy (the paper's 88.9); the authors' JiT setting collapses it (D_r 1.0),
FNTN is closest to retraining (distance 9.7); every method ran over 3 seeds. Re-run alone on
2026-12-05 with one command: 40.1 min, the same numbers but GKT's (51 rounds at twin scale).
With a pretrained start (``pretrain_vit.py``, then ``--vit-weights``; 36.3% test) BT's D_f is
8.0 ± 2.0 (the paper's 4.2).
"""

from common import CPU_VIT_TRAIN, SMALL_VIT, TINY_VIT, make


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table2_vit", table="table2a", task="class", forget="class:rocket",
        dataset="npz:{data}", tiny_kind="cifar100",
        paper=dict(model="vit_b16", data_opts={"image_size": 224}, train=dict(epochs=8, batch_size=64, lr=0.1,
                                                               optimizer="sgd",
                                                               schedule="onecycle")),
        cpu=dict(model="vit", model_opts=SMALL_VIT,
                 per_class=100, test_per_class=50,
                 train=CPU_VIT_TRAIN),
        tiny=dict(model="vit", model_opts=TINY_VIT),
    )
