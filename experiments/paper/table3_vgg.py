"""Table 3 (a), CIFAR-20 (CIFAR-100 scored on its 20 super-classes), sub-class forgetting of
"rocket" (in "vehicles 2"), the authors' "VGG16" (their code builds torchvision's vgg11 under that
name), every method of the table, 3 seeds.

    python experiments/paper/run.py table3_vgg --scale cpu --data runs/data/cifar100.npz \
        --out runs/paper/table3-vgg

CPU twin: 100 / 50 images per fine class, the CIFAR-layout VGG11 at width 16, 30 epochs of Adam
(common.py). Measured (2026-12-02, 55 min on a shared 2-core machine,
``docs/results/paper/table3_vgg-cpu.md``): the original reaches 47.2% on the super-classes (the
paper's 75.3); retrain distances against the same seed's RTRN: FNTN 34.3, SSD 35.4, AMN 38.0, BT
40.8, UNSIR 47.2, BDSH 48.8, SCRUB 55.3, JiT 62.4 (the authors' sigma 0.01 takes D_r to chance on
this twin), BSLN 83.7.
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
