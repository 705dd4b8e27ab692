"""Table 4 (b), CIFAR-10, random forgetting (83 samples: the authors' ``forget_perc``), ViT,
every method of the table, 3 seeds. Paper scale: ViT-B/16 (pretrained weights needed, not wired
into the runner yet), 8 epochs. CPU twin: a small ViT from scratch on the shared 10k/2k CIFAR-10
subset. Measured result: not run yet.
"""

from common import make

SMALL_VIT = {"patch_size": 4, "hidden": 128, "depth": 4, "heads": 4, "mlp_dim": 256}


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table4_vit", table="table4b", task="random", forget="random:83",
        dataset="npz:{data}", tiny_kind="cifar10",
        paper=dict(model="vit_b16", train=dict(epochs=8, batch_size=64, lr=0.1,
                                                optimizer="sgd", schedule="onecycle")),
        cpu=dict(model="vit", model_opts=SMALL_VIT,
                 train=dict(epochs=30, batch_size=64, lr=1e-3, optimizer="adam",
                            schedule="onecycle", augment="crop_flip")),
        tiny=dict(forget="random:5", model="vit",
                  model_opts={"patch_size": 4, "hidden": 8, "depth": 1, "heads": 2,
                              "mlp_dim": 16}),
    )
