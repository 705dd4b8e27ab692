"""Table 2 (b), CIFAR-100, full-class forgetting of "rocket", VGG11 in the authors' torchvision
layout (133M parameters at paper scale), every method of the table, 3 seeds.

    python ../shared/data/decode_cifar100.py runs/data/cifar100.npz
    python experiments/paper/run.py table2_vgg --scale cpu --data runs/data/cifar100.npz \
        --out runs/paper/table2-vgg

Paper scale: all 50,000 training images, the authors' 210 epochs of SGD with OneCycle (lr 0.1,
batch 64, the crop/flip augmentation). CPU twin: 100 training / 50 test images per class, VGG11
torchvision layout at width 16 (its convolutions; the head as the authors'), 30 epochs.
Measured result: not run yet.
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
