"""Two image folders of real images cut from scikit-learn's bundled digits (1,797 handwritten digits, 8x8 scans),
for measuring a pretrained start offline: `digits-04` (the digits 0-4) to pretrain on, `digits-59` (5-9, other
classes) to fine-tune on. Each is ROOT/train/<class>/*.png and ROOT/val/<class>/*.png (the digits dataset's fixed
stratified 80/20 split).

    python examples/digits_transfer.py data/transfer
    bench run --datasets digits04=imagefolder:data/transfer/digits-04 --backbones cifar_resnet8 --methods vanilla
    bench run --preset finetune --datasets digits59=imagefolder:data/transfer/digits-59 --backbones cifar_resnet8 \\
        --methods vanilla,dml,pcl pretrained.cifar_resnet8=results/.../deployed.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_folders(root: Path) -> None:
    from bench.data.sources import DATASETS

    split = DATASETS.get("digits").load(None, True), DATASETS.get("digits").load(None, False)
    for name, classes in (("digits-04", range(0, 5)), ("digits-59", range(5, 10))):
        for part, data in zip(("train", "val"), split):
            images, labels = data.images.numpy(), data.labels.numpy()
            for c in classes:
                folder = root / name / part / f"digit{c}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in np.flatnonzero(labels == c):
                    Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0))).save(folder / f"{i}.png")


if __name__ == "__main__":
    write_folders(Path(sys.argv[1] if len(sys.argv) > 1 else "data/transfer"))
