"""Pascal VOC 2012 semantic segmentation through torchvision's `VOCSegmentation`.

Expected layout (the official tarball's): `<root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
ImageSets/Segmentation/{train,val}.txt}`, where `<root>` is the data root itself or its `voc/`
folder.  The official `val` list (1,449 images) is the test set; a seeded validation split for
model selection is held out from the `train` list (1,464 images).

Targets are `int64` class maps with 21 classes and 255 = ignore (object boundaries, padding).
Joint transforms act on the image and its target together, at a square `crop_size` C (513 as
standard; a run's `RunConfig.image_size` replaces it, for cheap experiments and tests):
* train: an image larger than C is first scaled so that its longer side fits C (never at C = 513,
  since VOC images are at most 500 px), then random scale in [0.5, 2.0] (bilinear image, nearest
  target), pad to C (image with the mean, i.e. 0 after normalisation; target with 255), random
  C x C crop, random flip;
* eval: fixed size without resampling the labels: pad to C x C (target 255, so padding never
  counts); an image larger than that is first scaled down so that its longer side fits, as in
  training.
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
CROP_SIZE = 513  # the standard crop (DeepLab's)


def locate(root: str | os.PathLike) -> Path:
    """The folder holding `VOCdevkit/VOC2012`: `root` itself or `root/voc`."""
    root = Path(root)
    for base in (root, root / "voc"):
        if (base / "VOCdevkit" / "VOC2012").is_dir():
            return base
    raise DataError(f"{root / 'VOCdevkit' / 'VOC2012'}: missing (expected the VOC 2012 tree, in the data "
                    "root or its voc/ folder)")


def check(root: str | os.PathLike) -> Path:
    """`locate`, then check the folders, both split lists and every image and target they list.

    Cheap (no image is opened); raises `DataError` naming the first missing folder or file."""
    base = locate(root)
    voc = base / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        if not (voc / sub).is_dir():
            raise DataError(f"{voc / sub}: missing (expected the VOC 2012 tree)")
    for split in ("train", "val"):
        listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"{listing}: missing (the list of VOC 2012 {split} images)")
        names = listing.read_text().split()
        if not names:
            raise DataError(f"{listing}: lists no images")
        for name in names:
            for path in (voc / "JPEGImages" / f"{name}.jpg", voc / "SegmentationClass" / f"{name}.png"):
                if not path.is_file():
                    raise DataError(f"{path}: missing (listed in {listing.name})")
    return base


def dataset(root: str | os.PathLike, image_set: str) -> VOCSegmentation:
    """VOC 2012 `train` or `val`, without transforms (the loaders apply them)."""
    if image_set not in ("train", "val"):
        raise ValueError(f"image_set must be 'train' or 'val', got {image_set!r}")
    return VOCSegmentation(str(locate(root)), year="2012", image_set=image_set, download=False)


def _to_tensors(image, target) -> tuple[torch.Tensor, torch.Tensor]:
    x = TF.normalize(TF.to_tensor(image.convert("RGB")), MEAN, STD)
    y = torch.from_numpy(np.array(target, dtype=np.int64))  # palette indices; 255 stays 255
    return x, y


def _fit(image, target, size: int):
    """Scale image (bilinear) and target (nearest) down so that the longer side is `size`, if larger."""
    w, h = image.size
    if max(h, w) <= size:
        return image, target
    new = [max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))]
    return (TF.resize(image, new, interpolation=InterpolationMode.BILINEAR),
            TF.resize(target, new, interpolation=InterpolationMode.NEAREST))


def _pad_to(x: torch.Tensor, y: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ph, pw = max(0, height - x.shape[1]), max(0, width - x.shape[2])
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
    return x, y


class TrainTransform:
    """Fit to `crop_size` (only images larger than it), random scale, pad, random crop and random
    horizontal flip, applied to image and target alike."""

    def __init__(self, crop_size: int = CROP_SIZE, scale_range: tuple[float, float] = (0.5, 2.0)):
        self.crop_size, self.scale_range = int(crop_size), tuple(scale_range)

    def __call__(self, image, target) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.scale_range
        scale = float(torch.empty(()).uniform_(lo, hi))
        w, h = image.size
        scale *= min(1.0, self.crop_size / max(h, w))  # the scale evaluation sees (1 for VOC at 513)
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

    def __init__(self, crop_size: int = CROP_SIZE):
        self.crop_size = int(crop_size)

    def __call__(self, image, target) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.crop_size
        image, target = _fit(image, target, c)  # never for VOC 2012 at the standard size
        return _pad_to(*_to_tensors(image, target), c, c)
