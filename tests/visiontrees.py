"""Tiny generated image trees for the ImageNet (ImageFolder) and Pascal VOC (VOCSegmentation) loaders.

ImageNet and VOC are not available on the test machines: these trees have the real layouts, filled
with seeded random JPEGs and palette PNG label maps (classes 1..20 in blocks, 255 on "boundaries").
Used by tests/test_vision_tasks.py and tests/test_zoo_runs.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("n01", "n02", "n03")

VOC_SIZES = {"2007_000001": (50, 40), "2007_000002": (40, 48), "2007_000003": (36, 36), "2007_000004": (44, 30),
             "2007_000005": (30, 42), "2008_000001": (52, 38), "2008_000002": (40, 40)}
VOC_TRAIN, VOC_VAL = list(VOC_SIZES)[:5], list(VOC_SIZES)[5:]


def jpeg(path, seed, size=(64, 64)):
    """A seeded random RGB image of `size` (width, height)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def imagenet_tree(root: Path, per_class: tuple[int, int] = (6, 2), classes=CLASSES, size=(64, 64)) -> Path:
    """`root/imagenet/{train,val}/<wnid>/*.JPEG`, `per_class` images per class in train and val; returns root."""
    for s, (split, n) in enumerate(zip(("train", "val"), per_class)):
        for c, wnid in enumerate(classes):
            folder = Path(root) / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                jpeg(folder / f"{wnid}_{i}.JPEG", seed=100 * s + 10 * c + i, size=size)
    return Path(root)


def _palette():
    pal = [0] * 768
    for i in range(256):
        pal[3 * i: 3 * i + 3] = [(37 * i) % 256, (91 * i) % 256, (53 * i) % 256]
    return pal


def voc_target(path, seed, size):
    """A palette PNG label map of `size` (width, height): two class blocks and 255 boundary lines."""
    rng = np.random.default_rng(seed)
    w, h = size
    labels = np.zeros((h, w), np.uint8)
    labels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.integers(1, 21)
    labels[h // 2:, : w // 3] = rng.integers(1, 21)
    labels[h // 4, :] = 255  # boundary pixels, as in VOC
    labels[:, 3 * w // 4] = 255
    img = Image.fromarray(labels, mode="P")
    img.putpalette(_palette())
    img.save(path)


def voc_tree(root: Path, sizes: dict[str, tuple[int, int]] = VOC_SIZES, train: list[str] | None = None,
             val: list[str] | None = None) -> Path:
    """`root/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}`
    for images `sizes` (name -> (width, height)); `train`/`val` default to VOC_TRAIN/VOC_VAL; returns root."""
    train = VOC_TRAIN if train is None else train
    val = VOC_VAL if val is None else val
    base = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    for i, (name, size) in enumerate(sizes.items()):
        jpeg(base / "JPEGImages" / f"{name}.jpg", seed=i, size=size)
        voc_target(base / "SegmentationClass" / f"{name}.png", seed=100 + i, size=size)
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(train) + "\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    return Path(root)
