"""Table 4 (a), CIFAR-10, random forgetting, VGG11 (torchvision layout), every method of the
table, 3 seeds (the forget set changes with the seed).

The table's caption says 100 samples; the authors' script forgets ``forget_perc = 0.00165`` of
the training set, 83 samples, which the paper config uses.

    python experiments/paper/run.py table4_vgg --scale cpu \
        --data ../shared/data/cifar10_subset_10k_2k.npz --out runs/paper/table4-vgg

CPU twin: the shared 10k/2k CIFAR-10 subset, width 16, 20 epochs (about 14 s an epoch on 2
cores), 83 forget samples. Measured result: not run yet.
"""

from common import make


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table4_vgg", table="table4a", task="random", forget="random:83",
        dataset="npz:{data}", tiny_kind="cifar10",
        paper=dict(model="vgg11_torchvision", train=dict(epochs=25, batch_size=64, lr=0.1,
                                                         optimizer="sgd", schedule="onecycle",
                                                         augment="crop_flip")),
        cpu=dict(model="vgg11_torchvision", model_opts={"width": 16},
                 train=dict(epochs=20, batch_size=64, lr=0.05, optimizer="sgd",
                            schedule="onecycle", augment="crop_flip")),
        tiny=dict(forget="random:5"),
    )
