"""Table 4 (b), CIFAR-10, random forgetting (83 samples: the authors' ``forget_perc``), ViT,
every method of the table, 3 seeds. Paper scale: ViT-B/16 from the official weights
(``run.py --vit-weights PATH``), 8 epochs at 224x224. CPU twin: a small ViT from scratch on the
shared 10k/2k CIFAR-10 subset.

    python experiments/paper/run.py table4_vit --scale cpu \
        --data ../shared/data/cifar10_subset_10k_2k.npz --out runs/paper/table4-vit [--metrics full]

Measured (docs/results/paper/table4_vit-cpu.md, 2026-12-02): the original reaches 50.7% test
accuracy (paper 98.9%) and memorises nothing (BSLN's D_f 53.4 = RTRN's 53.0); JiT with the
authors' ViT setting collapses it (D_r 13.0, distance 102.2), at lr 0.001 it reaches distance 6.4.
Re-run alone on 2026-12-05 with one command: 30.1 min, the same numbers.
"""

from common import CPU_VIT_TRAIN, SMALL_VIT, TINY_VIT, make


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table4_vit", table="table4b", task="random", forget="random:83",
        dataset="npz:{data}", tiny_kind="cifar10",
        paper=dict(model="vit_b16", data_opts={"image_size": 224}, train=dict(epochs=8, batch_size=64, lr=0.1,
                                                optimizer="sgd", schedule="onecycle")),
        cpu=dict(model="vit", model_opts=SMALL_VIT,
                 train=CPU_VIT_TRAIN),
        tiny=dict(forget="random:5", model="vit",
                  model_opts=TINY_VIT),
    )
