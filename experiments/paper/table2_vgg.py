"""Table 2 (b), CIFAR-100, full-class forgetting of "rocket", VGG11 in the authors' torchvision
layout (133M parameters at paper scale), every method of the table, 3 seeds.

    python ../shared/data/decode_cifar100.py runs/data/cifar100.npz
    python experiments/paper/run.py table2_vgg --scale cpu --data runs/data/cifar100.npz \
        --out runs/paper/table2-vgg

Paper scale: all 50,000 training images, the authors' 210 epochs of SGD with OneCycle (lr 0.1,
batch 64, the crop/flip augmentation). CPU twin: 100 training / 50 test images per class, the
CIFAR-layout VGG11 at width 16 (the torchvision layout barely learns at this size: common.py), 30
epochs of Adam. Measured (2026-12-05, ``docs/results/paper/table2_vgg-cpu.md``, alone on 2 cores,
one command, 38.5 min): the original reaches 29.5% test accuracy (the paper's 66.3); retrain
distances against the same seed's RTRN: JiT 18.0, FNTN 18.6, BDSH 23.9, UNSIR 35.0, BT 46.3,
AMN 47.1, GKT 52.0 (29 rounds at twin scale: a collapse, as the paper's), SSD 69.8, SCRUB 72.4,
BSLN 83.5, EMMN 113.9.
"""

from common import CPU_VGG100, CPU_VGG100_TRAIN, make


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table2_vgg", table="table2b", task="class", forget="class:rocket",
        dataset="npz:{data}", tiny_kind="cifar100",
        paper=dict(model="vgg11_torchvision", train=dict(epochs=210, batch_size=64, lr=0.1,
                                                         optimizer="sgd", schedule="onecycle",
                                                         augment="crop_flip")),
        cpu=dict(**CPU_VGG100, per_class=100,
                 test_per_class=50, train=CPU_VGG100_TRAIN),
    )
