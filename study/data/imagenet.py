"""ImageNet (ILSVRC-2012) through torchvision's `ImageFolder`.

Expected layout (the usual one): `<root>/train/<wnid>/*.JPEG` and `<root>/val/<wnid>/*.JPEG`,
where `<root>` is the data root itself or its `imagenet/` folder.  The official validation set
plays the part of the test set; a seeded, class-stratified validation split for model selection
is held out from `train/`.

Augmentation is the standard one (He et al. 2016 / torchvision's reference recipe):
train RandomResizedCrop(224) + horizontal flip, evaluation Resize(256) + CenterCrop(224), both
normalised with the ImageNet statistics.  A run's `image_size` S (`RunConfig.image_size`, for cheap
experiments and tests) scales both: RandomResizedCrop(S), and Resize(round(S * 256 / 224)) +
CenterCrop(S) (`sizes`).  Random transforms draw from torch's global RNG; the loaders in
`study/tasks/loading.py` seed it per sample, so a generator fixes them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from study.data.cifar import DataError, stratified_split

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SIZE, RESIZE_SIZE = 224, 256  # the standard crop and evaluation resize


def sizes(image_size: int | None = None, standard: tuple[int, int] = (IMAGE_SIZE, RESIZE_SIZE)) -> tuple[int, int]:
    """(crop, evaluation resize) for a run's `image_size`: the standard pair for None, else
    `image_size` and the resize in the standard proportion, round(image_size * 256 / 224)."""
    crop, resize = standard
    if image_size is None:
        return crop, resize
    return int(image_size), round(image_size * resize / crop)


def train_transform(image_size: int = 224) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(MEAN, STD)])


def eval_transform(image_size: int = 224, resize_size: int = 256) -> T.Compose:
    return T.Compose([T.Resize(resize_size), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(MEAN, STD)])


def locate(root: str | os.PathLike) -> Path:
    """The folder holding `train/` and `val/`: `root/imagenet` or `root` itself.

    Otherwise `DataError` names the first missing folder (in `root/imagenet` if that exists)."""
    root = Path(root)
    for base in (root / "imagenet", root):
        if (base / "train").is_dir() and (base / "val").is_dir():
            return base
    base = root / "imagenet" if (root / "imagenet").is_dir() else root
    missing = next(base / split for split in ("train", "val") if not (base / split).is_dir())
    raise DataError(f"{missing}: missing (expected an ImageFolder tree, train/ and val/ with one folder of "
                    "images per class, in the data root or its imagenet/ folder)")


def check(root: str | os.PathLike) -> Path:
    """`locate`, then check that train/ and val/ hold the same, non-empty set of class folders.

    Cheap (lists folders, opens no image); raises `DataError` naming the folder at fault."""
    base = locate(root)
    classes = {}
    for split in ("train", "val"):
        folder = base / split
        classes[split] = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        if not classes[split]:
            raise DataError(f"{folder}: holds no class folders (expected an ImageFolder tree, one folder "
                            "of images per class)")
    if classes["train"] != classes["val"]:
        odd = sorted(set(classes["train"]) ^ set(classes["val"]))[0]
        where = "train" if odd in classes["train"] else "val"
        raise DataError(f"{base}: class folder {odd!r} is only in {where}/ (train/ and val/ must hold the "
                        f"same classes)")
    return base


def folders(root: str | os.PathLike) -> tuple[ImageFolder, ImageFolder]:
    """`ImageFolder`s over train/ and val/, without transforms (the loaders apply them)."""
    base = locate(root)
    train, val = ImageFolder(str(base / "train")), ImageFolder(str(base / "val"))
    if train.classes != val.classes:
        raise DataError(f"{base}: train/ and val/ hold different class folders")
    return train, val


def split(targets, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified (train, validation) indices into the training folder."""
    targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if not 0 < val_size < len(targets):
        raise ValueError(f"val_size must be between 1 and {len(targets) - 1} for {len(targets)} training "
                         f"images, got {val_size}")
    train_idx, val_idx = stratified_split(targets, val_size, seed)
    return train_idx.numpy(), val_idx.numpy()


def stratified_subset(indices: np.ndarray, targets, n: int | None, seed: int) -> np.ndarray:
    """A seeded, class-stratified subset of `n` of `indices` (all of them when n is None)."""
    indices = np.asarray(indices)
    if n is None or n >= len(indices):
        return indices
    labels = torch.as_tensor(np.asarray(targets, dtype=np.int64)[indices])
    keep, _ = stratified_split(labels, len(indices) - n, seed)
    return indices[keep.numpy()]
