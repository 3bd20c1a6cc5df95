"""ImageNet classification and Pascal VOC segmentation: tasks on torchvision DataLoaders.

`study.tasks.get_task` imports this module for any task other than CIFAR-10; it registers
`'imagenet'` and `'voc'` in `study.tasks.TASKS`.

Image size.  A task object holds its standard size (ImageNet: 224 crop, evaluation resize 256; VOC:
513 crop); a run's `RunConfig.image_size` replaces it (ImageNet: crop S, resize round(S * 256 / 224);
VOC: crop S), so that cheap experiments and tests can use small images.

Reproducible loading.  A train loader's `generator` (a seeded `torch.Generator`, also handed to
`DataLoader(generator=...)`) fixes each epoch completely: at the start of an epoch the sampler
draws the order and one seed per sample from it, and every sample is transformed under its own
seed (torch's global RNG is forked and seeded around the transform).  So the batches depend only
on the generator's state, not on the number of worker processes, and restoring the generator's
state restores an epoch.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from study.config import RunConfig
from study.tasks import TASKS, Loaders, Task


# -- loading plumbing ---------------------------------------------------------------------------
class SeededSampler(Sampler):
    """Yields `(index, seed)`; the order (when shuffling) and the seeds come from `generator`."""

    def __init__(self, n: int, generator: torch.Generator | None = None, shuffle: bool = True):
        self.n, self.generator, self.shuffle = n, generator, shuffle
        self.start = 0  # the next pass yields from this position on (a mid-epoch resume), then 0 again

    def __len__(self):
        return self.n

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).tolist()
            seeds = torch.randint(0, 2 ** 62, (self.n,), generator=self.generator).tolist()
        else:
            order, seeds = range(self.n), [None] * self.n
        start, self.start = self.start, 0
        return iter(list(zip(order, seeds))[start:])


class SampleView(Dataset):
    """`indices` of `base` (which yields raw `(image, target)`), transformed.

    `transform(image)` is applied to the image alone, or `transform(image, target)` jointly when
    `joint`.  A key `(i, seed)` runs the transform under `torch.manual_seed(seed)` in a forked RNG.
    """

    def __init__(self, base, indices: Sequence[int], transform: Callable, joint: bool = False):
        self.base, self.indices = base, [int(i) for i in indices]
        self.transform, self.joint = transform, joint

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.base[self.indices[i]]
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            if self.joint:
                return self.transform(image, target)
            return self.transform(image), target


class DeviceLoader:
    """Wraps a DataLoader: moves batches to `device` (channels-last if asked); exposes `generator`."""

    def __init__(self, loader: DataLoader, device, channels_last: bool = False):
        self.loader, self.device, self.channels_last = loader, torch.device(device), channels_last
        self.generator = loader.generator
        self.dataset = loader.dataset

    def __len__(self):
        return len(self.loader)

    def iter_from(self, start: int):
        """This epoch's batches from index `start` on: the sampler draws the whole epoch's order and
        seeds as usual and skips the first `start` batches' samples, which are not loaded."""
        self.loader.sampler.start = start * self.loader.batch_size
        return iter(self)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.as_tensor(y).to(self.device, non_blocking=True)


def make_loader(view: SampleView, cfg: RunConfig, device, train: bool, batch_size: int | None = None) -> DeviceLoader:
    device = torch.device(device)
    batch_size = batch_size or cfg.batch_size
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(view, batch_size=batch_size, sampler=SeededSampler(len(view), generator, shuffle=train),
                        num_workers=cfg.workers, generator=generator, pin_memory=device.type == "cuda",
                        drop_last=train and len(view) > batch_size)  # no lone last batch for BatchNorm
    return DeviceLoader(loader, device, cfg.channels_last)


def _random_subset(indices: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= len(indices):
        return np.asarray(indices)
    return np.sort(np.random.default_rng(seed).permutation(np.asarray(indices))[:n])


# -- ImageNet -----------------------------------------------------------------------------------
class ImageNetTask(Task):
    name = "imagenet"
    primary = "acc"
    top5 = True

    def __init__(self, image_size: int = 224, resize_size: int = 256):
        """The standard sizes, used when a run leaves `image_size` unset."""
        self.image_size, self.resize_size = image_size, resize_size

    def sizes(self, cfg: RunConfig) -> tuple[int, int]:
        """(crop, evaluation resize): the standard pair, or `cfg.image_size` and the resize in proportion."""
        from study.data import imagenet

        return imagenet.sizes(cfg.image_size, (self.image_size, self.resize_size))

    def check_data(self, data_root: str) -> None:
        from study.data import imagenet

        imagenet.check(data_root)

    def loaders(self, cfg: RunConfig, data_root: str, device) -> Loaders:
        from study.data import imagenet

        train_folder, val_folder = imagenet.folders(data_root)
        train_idx, val_idx = imagenet.split(train_folder.targets, cfg.val_size, cfg.seed)
        train_idx = imagenet.stratified_subset(train_idx, train_folder.targets, cfg.train_subset, cfg.seed)
        val_idx = imagenet.stratified_subset(val_idx, train_folder.targets, cfg.test_subset, cfg.seed)
        test_idx = imagenet.stratified_subset(np.arange(len(val_folder)), val_folder.targets, cfg.test_subset,
                                              cfg.seed)
        crop, resize = self.sizes(cfg)
        train_tf = imagenet.train_transform(crop)
        eval_tf = imagenet.eval_transform(crop, resize)
        return Loaders(
            train=make_loader(SampleView(train_folder, train_idx, train_tf), cfg, device, train=True),
            val=make_loader(SampleView(train_folder, val_idx, eval_tf), cfg, device, train=False),
            test=make_loader(SampleView(val_folder, test_idx, eval_tf), cfg, device, train=False))


# -- Pascal VOC ---------------------------------------------------------------------------------
IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`[C, C]` int64 counts, rows = true class, columns = predicted; ignored pixels left out."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def segmentation_scores(cm: torch.Tensor) -> dict[str, float]:
    """Pixel accuracy and mean IoU (both in %) from a confusion matrix; classes absent from both
    the targets and the predictions (union 0) are left out of the mean."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    total = cm.sum()
    acc = float(tp.sum() / total) if total > 0 else float("nan")
    miou = float((tp[present] / union[present]).mean()) if present.any() else float("nan")
    return {"acc": 100.0 * acc, "miou": 100.0 * miou}


class VOCTask(Task):
    classifies = False
    name = "voc"
    primary = "miou"
    num_classes = 21

    def __init__(self, crop_size: int = 513, scale_range: tuple[float, float] = (0.5, 2.0)):
        """`crop_size` is the standard size, used when a run leaves `image_size` unset."""
        self.crop_size, self.scale_range = crop_size, scale_range

    def check_data(self, data_root: str) -> None:
        from study.data import voc

        voc.check(data_root)

    def loaders(self, cfg: RunConfig, data_root: str, device) -> Loaders:
        from study.data import voc

        train_set, test_set = voc.dataset(data_root, "train"), voc.dataset(data_root, "val")
        n = len(train_set)
        if not 0 < cfg.val_size < n:
            raise ValueError(f"val_size must be between 1 and {n - 1} for {n} VOC training images, "
                             f"got {cfg.val_size}")
        order = np.random.default_rng(cfg.seed).permutation(n)
        val_idx, train_idx = np.sort(order[:cfg.val_size]), np.sort(order[cfg.val_size:])
        train_idx = _random_subset(train_idx, cfg.train_subset, cfg.seed)
        val_idx = _random_subset(val_idx, cfg.test_subset, cfg.seed)
        test_idx = _random_subset(np.arange(len(test_set)), cfg.test_subset, cfg.seed)
        crop = cfg.image_size or self.crop_size
        train_tf = voc.TrainTransform(crop, self.scale_range)
        eval_tf = voc.EvalTransform(crop)
        return Loaders(
            train=make_loader(SampleView(train_set, train_idx, train_tf, joint=True), cfg, device, train=True),
            val=make_loader(SampleView(train_set, val_idx, eval_tf, joint=True), cfg, device, train=False),
            test=make_loader(SampleView(test_set, test_idx, eval_tf, joint=True), cfg, device, train=False))

    def loss(self, output: torch.Tensor, y: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
        return F.cross_entropy(output, y, ignore_index=IGNORE_INDEX, label_smoothing=cfg.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, autocast=contextlib.nullcontext,
                 tta: bool = False) -> dict[str, float]:
        """Mean per-pixel loss, pixel accuracy (`acc`) and mean IoU (`miou`), in %; label 255 ignored."""
        model.eval()
        cm, loss, pixels = None, 0.0, 0
        for x, y in loader:
            with autocast():
                out = model(x)
            out = out.float()
            loss += float(F.cross_entropy(out, y, ignore_index=IGNORE_INDEX, reduction="sum"))
            pixels += int((y != IGNORE_INDEX).sum())
            batch_cm = confusion_matrix(out.argmax(1), y, out.shape[1])
            cm = batch_cm if cm is None else cm + batch_cm
        if cm is None:
            raise ValueError("evaluation loader is empty")
        return {"loss": loss / max(pixels, 1), **segmentation_scores(cm)}


TASKS["imagenet"] = ImageNetTask()
TASKS["voc"] = VOCTask()
