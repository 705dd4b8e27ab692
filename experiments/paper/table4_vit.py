"""Table 4 (b), CIFAR-10, random forgetting (83 samples: the authors' ``forget_perc``), ViT,
every method of the table, 3 seeds. Paper scale: ViT-B/16 (pretrained weights needed, not wired
into the runner yet), 8 epochs. CPU twin: a small ViT from scratch on the shared 10k/2k CIFAR-10
subset. Measured result: not run yet.
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
