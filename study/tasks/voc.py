"""Pascal VOC segmentation on torchvision DataLoaders (the loading is `study.tasks.loading`'s):
pixel accuracy and mean IoU from a confusion matrix.

Image size.  The task holds its standard crop (513); a run's `RunConfig.image_size` replaces it.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from study.config import RunConfig
from study.tasks.base import Loaders, Task
from study.tasks.loading import SampleView, make_loader

IGNORE_INDEX = 255


def random_subset(indices: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """`n` of `indices` drawn at random with `seed`, in ascending order (all of them where `n` is None)."""
    if n is None or n >= len(indices):
        return np.asarray(indices)
    return np.sort(np.random.default_rng(seed).permutation(np.asarray(indices))[:n])


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
        train_idx = random_subset(train_idx, cfg.train_subset, cfg.seed)
        val_idx = random_subset(val_idx, cfg.test_subset, cfg.seed)
        test_idx = random_subset(np.arange(len(test_set)), cfg.test_subset, cfg.seed)
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
