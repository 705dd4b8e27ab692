"""Table 1, PinsFaceRecognition (105 celebrities), full-class forgetting of class 1 (the
ImageFolder index), VGG11 (torchvision layout), every method of the table, 3 seeds.

Runs on any folder laid out like Pins faces (one sub-folder per person). No faces data is
available here: the smoke test runs it on generated images. As in the authors' code the images
are 32x32 (they resize to 36 and crop 32 when training from scratch) and there is no test split:
the "test" accuracy is on the training images (``test_fraction=0``), which is why the paper's
RTRN scores D_r 100.

    python experiments/paper/run.py table1_faces --scale cpu --data PATH/105_classes_pins_dataset \
        --out runs/paper/table1

Measured result: not run on faces (no data). On a generated stand-in folder
(``standin_faces.py``: 105 synthetic identities x 100 greyscale images; not the paper's data) the
CPU twin took 2719 s: docs/results/paper/table1_faces-standin-cpu.md.
"""

from common import CPU_VGG_TRAIN, make

LOAD = {"image_size": (32, 32), "test_fraction": 0.0}


def get_config(scale: str = "cpu"):
    return make(
        scale, name="table1_faces", table="table1", task="class", forget="class:1",
        dataset="folder:{data}", tiny_kind="faces",
        paper=dict(model="vgg11_torchvision", load_opts=LOAD,
                   train=dict(epochs=250, batch_size=64, lr=0.1, optimizer="sgd",
                              schedule="onecycle", augment="crop_flip")),
        cpu=dict(model="vgg11_torchvision", model_opts={"width": 16}, load_opts=LOAD,
                 train=CPU_VGG_TRAIN),
        paper_train_images=None,  # the twin reads the faces folder whole, as the paper does
    )
