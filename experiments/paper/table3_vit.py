"""Table 3 (b), CIFAR-20, sub-class forgetting of "rocket", ViT, every method of the table,
3 seeds. Paper scale: ViT-B/16 fine-tuned 9 epochs from the official ImageNet-21k weights
(``run.py --vit-weights PATH``) on CIFAR upsampled to 224x224. CPU twin: a small ViT from scratch
at 32x32, 100 / 50 images per fine class. Measured (2026-12-05,
``docs/results/paper/table3_vit-cpu.md``; one command alone on 2 cores: 33.7 min): the original
reaches 34.9% test accuracy (the paper's 95.7); retrain distances against the same seed's RTRN:
UNSIR 11.4, FNTN 13.5, BSLN 19.1, BDSH 20.1 (untouched), AMN 21.5, SSD 24.2, BT 37.7, JiT 52.8
(the authors' lr collapses D_r to 5.5). With a pretrained start (``pretrain_vit.py``, then
``--vit-weights``; 47.7% test) BT's MIA reaches the paper's 0.0 at its step count; BT's D_f
does not (12-40 by seed).
"""

from common import CPU_VIT_TRAIN, SMALL_VIT, TINY_VIT, make


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table3_vit", table="table3b", task="subclass", forget="subclass:rocket",
        dataset="npz:{data}", tiny_kind="cifar20",
        paper=dict(model="vit_b16", data_opts={"target": "coarse", "image_size": 224},
                   train=dict(epochs=9, batch_size=64, lr=0.1, optimizer="sgd",
                              schedule="onecycle")),
        cpu=dict(model="vit", model_opts=SMALL_VIT, data_opts={"target": "coarse"},
                 per_class=100, test_per_class=50,
                 train=CPU_VIT_TRAIN),
        tiny=dict(model="vit", model_opts=TINY_VIT, data_opts={"target": "coarse"}),
    )
