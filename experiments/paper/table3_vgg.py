"""Table 3 (a), CIFAR-20 (CIFAR-100 scored on its 20 super-classes), sub-class forgetting of
"rocket" (in "vehicles 2"), the authors' "VGG16" (their code builds torchvision's vgg11 under that
name), every method of the table, 3 seeds.

    python experiments/paper/run.py table3_vgg --scale cpu --data runs/data/cifar100.npz \
        --out runs/paper/table3-vgg-s10

CPU twin: 100 / 50 images per fine class, the CIFAR-layout VGG11 at width 16, 30 epochs of Adam
(common.py). Measured (2026-12-05, 34.7 min alone on 2 cores,
``docs/results/paper/table3_vgg-cpu.md``): the original reaches 46.4% on the super-classes (the
paper's 75.3); retrain distances against the same seed's RTRN: FNTN 21.4, UNSIR 38.8, SSD 43.7,
AMN 44.8, BT 45.1, BDSH 47.2, SCRUB 59.7, JiT 60.6 (the authors' sigma 0.01 takes D_r to chance
on this twin), BSLN 74.5.
"""

from common import CPU_VGG100, CPU_VGG100_TRAIN, make


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table3_vgg", table="table3a", task="subclass", forget="subclass:rocket",
        dataset="npz:{data}", tiny_kind="cifar20",
        paper=dict(model="vgg11_torchvision", data_opts={"target": "coarse"},
                   train=dict(epochs=50, batch_size=64, lr=0.1, optimizer="sgd",
                              schedule="onecycle", augment="crop_flip")),
        cpu=dict(**CPU_VGG100, data_opts={"target": "coarse"},
                 per_class=100, test_per_class=50,
                 train=CPU_VGG100_TRAIN),
        tiny=dict(data_opts={"target": "coarse"}),
    )
