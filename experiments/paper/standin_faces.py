"""Write a generated stand-in for the PinsFaceRecognition folder, for Table 1's runner where no faces
data is available.

    python experiments/paper/standin_faces.py --out runs/data/standin-faces     # 105 x 100 images, seconds
    python experiments/paper/run.py table1_faces --scale cpu --data runs/data/standin-faces \
        --out runs/paper/table1-standin

The images come from :func:`jit_jax.data.synthetic.identities`: each identity is a smooth random
prototype seen with a random shift, brightness, contrast, a distortion field of its own and pixel
noise (greyscale, ``--size`` pixels). Nothing is taken from any real dataset, so a result on this
folder tests the runner and the methods on a face-identification-shaped problem (many classes,
images of one identity alike), not the paper's numbers. The layout is Pins': one sub-folder per
identity (``pins_id000`` ...), PNG files inside, so sorted folder order gives the class index the
authors' ImageFolder gives (Table 1 forgets index 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jit_jax.data.synthetic import identities  # noqa: E402


def write(out: Path, classes: int, per_class: int, size: int, seed: int) -> int:
    """Write the folder; returns the number of images. Refuses a folder that already has files."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out (nothing was written)")
    arrays = identities(num_classes=classes, train_per_class=per_class, test_per_class=1,
                        size=size, seed=seed)
    names = [f"pins_id{c:03d}" for c in range(classes)]  # sorted order = class order
    for c in names:
        (out / c).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(arrays["x_train"], arrays["y_train"], strict=True)):
        Image.fromarray(img[..., 0], mode="L").save(out / names[y] / f"{i:06d}.png")
    return len(arrays["y_train"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", type=int, default=105, help="identities (Pins: 105)")
    p.add_argument("--per-class", type=int, default=100,
                   help="images per identity (Pins: 86-237, about 167 on average)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (the twin's 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = write(args.out, args.classes, args.per_class, args.size, args.seed)
    print(f"wrote {n} images of {args.classes} identities to {args.out}")


if __name__ == "__main__":
    main()
