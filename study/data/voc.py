"""Pascal VOC 2012 semantic segmentation through torchvision's `VOCSegmentation`.

Expected layout (the official tarball's): `<root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
ImageSets/Segmentation/{train,val}.txt}`, where `<root>` is the data root itself or its `voc/`
folder.  The official `val` list (1,449 images) is the test set; a seeded validation split for
model selection is held out from the `train` list (1,464 images).

Targets are `int64` class maps with 21 classes and 255 = ignore (object boundaries, padding).
Joint transforms act on the image and its target together:
* train: random scale in [0.5, 2.0] (bilinear image, nearest target), pad to the crop size
  (image with the mean, i.e. 0 after normalisation; target with 255), random crop, random flip;
* eval: fixed size without resampling the labels: pad to `crop_size` x `crop_size` (target 255,
  so padding never counts); an image larger than that (none in VOC, whose images are at most
  500 px) is first scaled down so that its longer side fits.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import VOCSegmentation
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from study.data.cifar import DataError

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as for the ImageNet-pretrained backbones
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 21
IGNORE_INDEX = 255


def locate(root: str | os.PathLike) -> Path:
    """The folder holding `VOCdevkit/VOC2012`: `root` itself or `root/voc`."""
    root = Path(root)
    for base in (root, root / "voc"):
        if (base / "VOCdevkit" / "VOC2012").is_dir():
            return base
    raise DataError(f"{root}: holds no VOCdevkit/VOC2012 (in it or in its voc/ folder)")


def dataset(root: str | os.PathLike, image_set: str) -> VOCSegmentation:
    """VOC 2012 `train` or `val`, without transforms (the loaders apply them)."""
    if image_set not in ("train", "val"):
        raise ValueError(f"image_set must be 'train' or 'val', got {image_set!r}")
    return VOCSegmentation(str(locate(root)), year="2012", image_set=image_set, download=False)


def _to_tensors(image, target) -> tuple[torch.Tensor, torch.Tensor]:
    x = TF.normalize(TF.to_tensor(image.convert("RGB")), MEAN, STD)
    y = torch.from_numpy(np.array(target, dtype=np.int64))  # palette indices; 255 stays 255
    return x, y


def _pad_to(x: torch.Tensor, y: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ph, pw = max(0, height - x.shape[1]), max(0, width - x.shape[2])
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
    return x, y


class TrainTransform:
    """Random scale, pad, random crop and random horizontal flip, applied to image and target alike."""

    def __init__(self, crop_size: int = 513, scale_range: tuple[float, float] = (0.5, 2.0)):
        self.crop_size, self.scale_range = int(crop_size), tuple(scale_range)

    def __call__(self, image, target) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.scale_range
        scale = float(torch.empty(()).uniform_(lo, hi))
        w, h = image.size
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
        image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR)
        target = TF.resize(target, size, interpolation=InterpolationMode.NEAREST)
        x, y = _to_tensors(image, target)
        c = self.crop_size
        x, y = _pad_to(x, y, c, c)
        top = int(torch.randint(0, x.shape[1] - c + 1, ()))
        left = int(torch.randint(0, x.shape[2] - c + 1, ()))
        x, y = x[:, top:top + c, left:left + c], y[top:top + c, left:left + c]
        if bool(torch.rand(()) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


class EvalTransform:
    """Fixed-size evaluation that keeps every label pixel: pad to `crop_size` with ignored pixels."""

    def __init__(self, crop_size: int = 513):
        self.crop_size = int(crop_size)

    def __call__(self, image, target) -> tuple[torch.Tensor, torch.Tensor]:
        w, h = image.size
        c = self.crop_size
        if max(h, w) > c:  # never for VOC 2012 at the default size
            size = [max(1, round(h * c / max(h, w))), max(1, round(w * c / max(h, w)))]
            image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR)
            target = TF.resize(target, size, interpolation=InterpolationMode.NEAREST)
        return _pad_to(*_to_tensors(image, target), c, c)
